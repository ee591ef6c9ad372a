"""funcml.asr.manifest and the manifest data source: JSONL and Kaldi dirs, errors naming the line,
the vocabulary policies, the content-keyed feature cache, length-bucketed batches, and training,
evaluating and fine-tuning on a manifest."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path

import pytest
import torch

from funcml import random, tree
from funcml.asr import audio, manifest, task
from funcml.asr.batching import length_bucketed_indices
from funcml.asr.frontend import FrontendConfig
from funcml.asr.task import AsrTrainConfig
from funcml.asr.tokenizer import CharTokenizer, WordTokenizer
from funcml.errors import ConfigError, DataError

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))

import asr_eval  # noqa: E402
import asr_train  # noqa: E402
import fsdd_manifest  # noqa: E402

SR = 8000
TEXTS = ["one", "two three", "four", "one two", "three", "five one"]


def _clip(i: int, seconds: float = 0.3) -> torch.Tensor:
    """A distinct chirp per index (deterministic)."""
    n = int(seconds * SR)
    t = torch.arange(n, dtype=torch.float64) / SR
    return (0.3 * torch.sin(2 * math.pi * (200 + 40 * i) * t * (1 + t))).float()


def _write_jsonl(folder: Path, rows: list[dict], name: str = "m.jsonl") -> Path:
    path = folder / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def corpus(tmp_path) -> Path:
    """A folder with wavs/ (several formats and rates) and a JSONL manifest with relative paths."""
    (tmp_path / "wavs").mkdir()
    rows = []
    for i, text in enumerate(TEXTS):
        fmt = [("pcm", 16), ("float", 32), ("pcm", 24)][i % 3]
        sr = [SR, 16000, 22050][i % 3]
        x = audio.resample(_clip(i), SR, sr) if sr != SR else _clip(i)
        (tmp_path / "wavs" / f"u{i}.wav").write_bytes(audio.encode_wav(x, sr, sample_format=fmt[0], bits=fmt[1]))
        rows.append({"audio": f"wavs/u{i}.wav", "text": text, "speaker": "ab"[i % 2]})
    _write_jsonl(tmp_path, rows)
    return tmp_path


# ------------------------------------------------------------------------------ reading


def test_jsonl_paths_are_relative_to_the_manifest_and_text_is_normalized(corpus, tmp_path_factory):
    rows = [json.loads(line) for line in (corpus / "m.jsonl").read_text().splitlines()]
    rows[1]["text"] = "  two   three "
    rows[1]["duration"] = 0.3
    _write_jsonl(corpus, rows)
    utts = manifest.read_manifest(corpus / "m.jsonl")
    assert [u.text for u in utts] == TEXTS
    assert utts[0].audio == (corpus / "wavs" / "u0.wav").resolve() and utts[0].speaker == "a"
    assert utts[1].duration == 0.3 and utts[0].duration is None
    assert utts[2].where == f"{corpus / 'm.jsonl'}:3"


def test_kaldi_dir_reads_wav_scp_text_and_utt2spk(corpus):
    kaldi = corpus / "data" / "train"
    kaldi.mkdir(parents=True)
    (kaldi / "wav.scp").write_text("".join(f"utt{i} {corpus / 'wavs' / f'u{i}.wav'}\n" for i in range(3)))
    (kaldi / "text").write_text("utt2 four\nutt0 one\nutt1 two three\n")
    (kaldi / "utt2spk").write_text("utt0 a\nutt1 b\nutt2 a\n")
    utts = manifest.read_manifest(kaldi)
    assert [(u.id, u.text, u.speaker) for u in utts] == [("utt2", "four", "a"), ("utt0", "one", "a"),
                                                         ("utt1", "two three", "b")]
    assert utts[1].audio == (corpus / "wavs" / "u0.wav").resolve()


@pytest.mark.parametrize("line,fragment", [
    ('{"audio": "wavs/u0.wav", "text": "one"', "m.jsonl:2: not valid JSON"),
    ('["wavs/u0.wav", "one"]', "m.jsonl:2: expected a JSON object, got a list"),
    ('{"audio": "wavs/u0.wav"}', "m.jsonl:2: missing field(s) ['text']"),
    ('{"audio": "wavs/nope.wav", "text": "one"}', "m.jsonl:2: audio file 'wavs/nope.wav' not found"),
    ('{"audio": "wavs/u1.wav", "text": "   "}', "m.jsonl:2: empty transcript"),
    ('{"audio": "wavs/u1.wav", "text": 3}', "m.jsonl:2: \"text\" must be a string"),
    ('{"audio": "wavs/u1.wav", "text": "one", "duration": -1}', "m.jsonl:2: \"duration\" must be"),
    ('{"audio": "wavs/u0.wav", "text": "one"}', "m.jsonl:2: utterance 'wavs/u0.wav' is listed twice (first at line 1)"),
])
def test_a_bad_jsonl_line_is_an_error_naming_the_line(corpus, line, fragment):
    path = corpus / "m.jsonl"
    path.write_text('{"audio": "wavs/u0.wav", "text": "one"}\n' + line + "\n")
    with pytest.raises(DataError) as e:
        manifest.read_manifest(path)
    assert fragment in str(e.value)


def test_bad_kaldi_dirs_name_the_file_and_line(corpus):
    kaldi = corpus / "k"
    kaldi.mkdir()
    (kaldi / "text").write_text("a one\n")
    with pytest.raises(DataError, match="no wav.scp"):
        manifest.read_manifest(kaldi)
    (kaldi / "wav.scp").write_text("b wavs/u0.wav\n")
    with pytest.raises(DataError, match=r"text:1: utterance 'a' has no line in wav.scp"):
        manifest.read_manifest(kaldi)
    (kaldi / "wav.scp").write_text("a sox in.flac -t wav - |\n")
    with pytest.raises(DataError, match=r"wav.scp:1: piped commands are not supported"):
        manifest.read_manifest(kaldi)
    (kaldi / "wav.scp").write_text("a ../wavs/u0.wav\nc ../wavs/u1.wav\n")
    with pytest.raises(DataError, match="1 utterance.* in wav.scp have no transcript.*'c' at wav.scp line 2"):
        manifest.read_manifest(kaldi)


def test_missing_manifest_and_empty_manifest_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="no such file or directory"):
        manifest.read_manifest(tmp_path / "absent.jsonl")
    (tmp_path / "e.jsonl").write_text("\n")
    with pytest.raises(DataError, match="no utterances"):
        manifest.read_manifest(tmp_path / "e.jsonl")


def test_write_jsonl_round_trips_with_relative_paths(corpus):
    utts = manifest.read_manifest(corpus / "m.jsonl")
    out = manifest.write_jsonl(corpus / "copy.jsonl", utts)
    assert json.loads(out.read_text().splitlines()[0])["audio"] == "wavs/u0.wav"
    assert manifest.read_manifest(out) == [u._replace(where=u.where.replace("m.jsonl", "copy.jsonl")) for u in utts]


# ------------------------------------------------------------------------------ vocabulary


def test_out_of_vocabulary_error_names_the_line_and_the_options(corpus):
    utts = manifest.read_manifest(corpus / "m.jsonl")
    tok = CharTokenizer.from_texts(["one two", "four"], use_unk=False)  # no 'h' (three), no 'i', 'v' (five)
    with pytest.raises(DataError, match=r"m.jsonl:2: character 'h' in 'two three' is not in .*--oov drop"):
        manifest.apply_vocabulary(utts, tok)
    kept = manifest.apply_vocabulary(utts, tok, oov="drop")
    assert [u.text for u in kept] == ["one", "four", "one two"]
    stripped = manifest.apply_vocabulary(utts, tok, oov="strip")
    assert [u.text for u in stripped][:2] == ["one", "two tree"]
    assert len(manifest.apply_vocabulary(utts, tok, oov="unk")) == len(utts)


def test_word_vocabulary_policies_work_on_words(corpus):
    utts = manifest.read_manifest(corpus / "m.jsonl")
    tok = WordTokenizer(("one", "two", "four"), use_unk=False)
    with pytest.raises(DataError, match="m.jsonl:2: word 'three'"):
        manifest.apply_vocabulary(utts, tok)
    assert [u.text for u in manifest.apply_vocabulary(utts, tok, oov="strip")] == ["one", "two", "four", "one two",
                                                                                   "one"]


# ------------------------------------------------------------------------------ features and cache


def test_features_are_cached_by_content_and_match_the_uncached_path(corpus, tmp_path):
    utts = manifest.read_manifest(corpus / "m.jsonl")
    fe = FrontendConfig()
    fresh = manifest.load_features(utts, fe, cache_dir=None)
    first = manifest.load_features(utts, fe, cache_dir=tmp_path / "cache")
    files = sorted((tmp_path / "cache" / "features").rglob("*.npz"))
    assert len(files) == len(utts)
    again = manifest.load_features(utts, fe, cache_dir=tmp_path / "cache")
    for (a, sa), (b, sb), (c, sc) in zip(fresh, first, again):
        assert torch.equal(a, b) and torch.equal(b, c) and sa == sb == sc
    assert fresh[0][0].shape[1] == 80 and abs(fresh[0][1] - 0.3) < 1e-6
    # Another front end or other bytes give another key; the same bytes under another name share it.
    data = utts[0].audio.read_bytes()
    assert manifest.feature_key(data, fe) != manifest.feature_key(data, dataclasses.replace(fe, n_mels=40))
    assert manifest.feature_key(data, fe) != manifest.feature_key(data + b"\0", fe)


def test_unreadable_empty_truncated_and_too_short_audio_name_the_manifest_line(corpus):
    wavs = corpus / "wavs"
    (wavs / "text.wav").write_text("not audio")
    (wavs / "empty.wav").write_bytes(b"")
    (wavs / "cut.wav").write_bytes(audio.encode_wav(_clip(0), SR)[:-200])
    (wavs / "short.wav").write_bytes(audio.encode_wav(_clip(0, 0.01), SR))
    (wavs / "nosamples.wav").write_bytes(audio.encode_wav(torch.zeros(0), SR))
    cases = {"text.wav": "unreadable audio: .*not a WAV file", "empty.wav": r"is empty \(0 bytes\)",
             "cut.wav": "the WAV is truncated", "short.wav": "lasts 10.0 ms, too short for one feature frame",
             "nosamples.wav": "unreadable audio: .*no audio samples"}
    for name, fragment in cases.items():
        path = _write_jsonl(corpus, [{"audio": "wavs/u0.wav", "text": "one"}, {"audio": f"wavs/{name}", "text": "x"}],
                            name=f"{name}.jsonl")
        with pytest.raises(DataError, match=f"{name}.jsonl:2: .*{fragment}"):
            manifest.load_features(manifest.read_manifest(path), FrontendConfig(), cache_dir=None)


# ------------------------------------------------------------------------------ batches


def test_length_buckets_hold_similar_lengths_and_cover_each_epoch_once():
    key = random.key(3)
    lengths = torch.randint(10, 500, (130,), generator=torch.Generator().manual_seed(0))
    epoch = [length_bucketed_indices(key, lengths, s, 8, window=4) for s in range(130 // 8)]
    ids = torch.cat(epoch)
    assert ids.unique().numel() == ids.numel() == 16 * 8  # no repeats within an epoch
    spread = sum(int(lengths[b].max() - lengths[b].min()) for b in epoch) / len(epoch)
    assert spread < 0.25 * int(lengths.max() - lengths.min())  # random batches spread ~ 0.8 of the range
    again = length_bucketed_indices(key, lengths, 5, 8, window=4)
    assert torch.equal(again, epoch[5])  # a pure function of the step
    next_epoch = torch.cat([length_bucketed_indices(key, lengths, s, 8, window=4) for s in range(16, 32)])
    assert not torch.equal(next_epoch, ids)  # each epoch has its own order


# ------------------------------------------------------------------------------ training


def _tiny_manifest_args(corpus: Path, tmp_path: Path) -> list[str]:
    return ["tiny", "--data", "manifest", "--train-manifest", str(corpus / "m.jsonl"), "--val-manifest",
            str(corpus / "m.jsonl"), "--test-manifest", str(corpus / "m.jsonl"), "--batch-size", "4",
            "--runs-dir", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache"), "--spec-augment"]


def test_a_manifest_run_builds_its_vocabulary_from_the_training_text_and_scores_the_test_manifest(corpus, tmp_path):
    summary = asr_train.main(_tiny_manifest_args(corpus, tmp_path))
    run = Path(summary["run"])
    cfg, params, tok = task.load_model(run)
    assert cfg.data == "manifest" and tok == CharTokenizer.from_texts(TEXTS, use_unk=False)
    ev = json.loads((run / "eval.json").read_text())
    assert ev["test"]["num_utts"] == len(TEXTS) and ev["test_split"] == f"manifest {corpus / 'm.jsonl'}"
    out = asr_eval.main(["--run", str(run), "--manifest", str(corpus / "m.jsonl"), "--out", str(tmp_path / "ev")])
    assert set(out["per_speaker"]) == {"a", "b"} and out["num_utts"] == len(TEXTS)
    assert (tmp_path / "ev" / "metrics_m.json").is_file()


def test_a_manifest_needs_its_paths_and_enough_utterances(corpus, tmp_path, capsys):
    with pytest.raises(SystemExit):
        asr_train.main(["tiny", "--data", "manifest", "--runs-dir", str(tmp_path)])
    assert "--data manifest needs --train-manifest and --val-manifest" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        asr_train.main([*_tiny_manifest_args(corpus, tmp_path), "--batch-size", "8"])
    assert "has 6 utterances, fewer than --batch-size 8" in capsys.readouterr().err


def test_fine_tuning_starts_from_the_run_params_and_refuses_a_foreign_vocabulary(corpus, tmp_path, capsys):
    src = Path(asr_train.main(_tiny_manifest_args(corpus, tmp_path / "a"))["run"])
    _, src_params, src_tok = task.load_model(src)
    # A one-step fine-tune at lr 1e-12 keeps the params: they came from the run, not from the seed.
    args = [*_tiny_manifest_args(corpus, tmp_path / "b"), "--init-from", str(src), "--seed", "7"]
    run = Path(asr_train.main([*args, "--steps", "1", "--lr", "1e-12", "--eval-every", "1"])["run"])
    cfg, params, tok = task.load_model(run)
    assert tok == src_tok and cfg.model == task.load_model(src)[0].model and cfg.init_from == src
    for a, b in zip(tree.leaves(params), tree.leaves(src_params), strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    from funcml.trainer import initial_state

    fresh, _ = initial_state(cfg)
    assert not all(torch.equal(a, b) for a, b in zip(tree.leaves(fresh.params), tree.leaves(params)))
    # Transcripts with characters the source run never saw: a clear error naming the line.
    other = _write_jsonl(corpus, [{"audio": "wavs/u0.wav", "text": "zebra"}] * 1 +
                         [{"audio": f"wavs/u{i}.wav", "text": "one"} for i in range(1, 6)], name="z.jsonl")
    with pytest.raises(SystemExit):
        asr_train.main([*_tiny_manifest_args(corpus, tmp_path / "c"), "--train-manifest", str(other),
                        "--init-from", str(src)])
    assert "z.jsonl:1: character 'z' in 'zebra' is not in the tokenizer's vocabulary" in capsys.readouterr().err


# ------------------------------------------------------------------------------ FSDD converter


def test_fsdd_converter_writes_a_manifest_per_speaker_selection(tmp_path):
    folder = tmp_path / "fsdd"
    folder.mkdir()
    for name in ("7_theo_3.wav", "0_jackson_12.wav", "3_jackson_49.wav", "README.md"):
        (folder / name).write_bytes(audio.encode_wav(_clip(1), SR))
    out = fsdd_manifest.main([str(folder), "--out", str(tmp_path / "j.jsonl"), "--speakers", "jackson",
                              "--exclude-indices", "45", "49"])
    assert out["utterances"] == 1
    (row,) = [json.loads(line) for line in (tmp_path / "j.jsonl").read_text().splitlines()]
    assert row["text"] == "zero" and row["speaker"] == "jackson"
    utts = manifest.read_manifest(tmp_path / "j.jsonl")
    assert utts[0].audio == (folder / "0_jackson_12.wav").resolve()
    with pytest.raises(SystemExit):
        fsdd_manifest.main([str(folder), "--out", str(tmp_path / "x.jsonl"), "--speakers", "nobody"])


def test_fsdd_converter_on_the_real_folder(real_data, tmp_path):
    folder = real_data("fsdd-dev")
    out = fsdd_manifest.main([str(folder), "--out", str(tmp_path / "theo.jsonl"), "--speakers", "theo"])
    assert out == {"manifest": str(tmp_path / "theo.jsonl"), "utterances": 500, "speakers": {"theo": 500}}
    utts = manifest.read_manifest(tmp_path / "theo.jsonl")
    assert {u.text for u in utts} == set(fsdd_manifest.DIGIT_WORDS)


def test_speed_perturbation_stretches_the_audio_and_is_cached_apart(corpus, tmp_path):
    utts = manifest.read_manifest(corpus / "m.jsonl")[:1]  # 0.3 s at 8 kHz
    fe = FrontendConfig()
    ((base, s1),) = manifest.load_features(utts, fe, cache_dir=tmp_path)
    ((slow, s09),) = manifest.load_features(utts, fe, cache_dir=tmp_path, speed=0.9)
    ((fast, s11),) = manifest.load_features(utts, fe, cache_dir=tmp_path, speed=1.1)
    assert s09 == pytest.approx(s1 / 0.9, abs=2e-4) and s11 == pytest.approx(s1 / 1.1, abs=2e-4)
    assert slow.shape[0] > base.shape[0] > fast.shape[0]
    assert len(list((tmp_path / "features").rglob("*.npz"))) == 3
    cfg = AsrTrainConfig(data="manifest", train_manifest=corpus / "m.jsonl", val_manifest=corpus / "m.jsonl",
                         speed_perturb=(0.9, 1.1), cache_dir=tmp_path)
    train = task.train_examples(task.resolve(cfg))
    assert len(train) == 3 * len(TEXTS) and [e.text for e in train] == TEXTS * 3
    with pytest.raises(ConfigError, match="speed_perturb factors"):
        AsrTrainConfig(speed_perturb=(1.0,))


def test_mix_speech_adds_synthesized_utterances_to_the_real_ones(corpus, tmp_path):
    cfg = AsrTrainConfig(data="manifest", train_manifest=corpus / "m.jsonl", val_manifest=corpus / "m.jsonl",
                         mix_speech=3, cache_dir=tmp_path)
    tok = task.tokenizer_for(AsrTrainConfig(data="speech"))  # spells the manifest's and the corpus's texts
    train = task.train_examples(task.resolve(cfg), tok)
    assert len(train) == len(TEXTS) + 3 and [e.text for e in train[:len(TEXTS)]] == TEXTS
    assert all(e.features.shape[1] == 80 and e.tokens == tok.encode(e.text) for e in train[len(TEXTS):])
    with pytest.raises(ConfigError, match="mix_speech must be >= 0"):
        AsrTrainConfig(mix_speech=-1)
