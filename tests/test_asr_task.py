"""The ASR task and its CLIs: train / eval / infer on tiny toy and speech configs, and bad input."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from funcml import config as config_lib
from funcml import random
from funcml.asr import audio, speech, task
from funcml.asr.task import AsrTrainConfig, Example
from funcml.errors import CheckpointError, ConfigError, DataError, ShapeError

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))

import asr_eval  # noqa: E402
import asr_infer  # noqa: E402
import asr_train  # noqa: E402


from conftest import TINY_SPEECH  # noqa: E402  (the shared speech run's arguments)

# The trained runs are the session's shared ones (tests/conftest.py): asr_toy_run, asr_speech_run.


def _error_exit(capsys, fn, argv) -> str:
    with pytest.raises(SystemExit) as e:
        fn(argv)
    assert e.value.code == 2
    return capsys.readouterr().err


# ------------------------------------------------------------------------------ config and data


def test_resolve_fills_vocab_size_and_input_dim_from_the_data():
    cfg = task.resolve(AsrTrainConfig(data="speech"))
    assert cfg.model.vocab_size == task.tokenizer_for(cfg).vocab_size
    assert cfg.model.encoder.input_dim == 80
    lfr = task.resolve(dataclasses.replace(cfg, frontend=dataclasses.replace(cfg.frontend, use_lfr=True)))
    assert lfr.model.encoder.input_dim == 560
    toy = task.resolve(task.PRESETS["tiny"][1])
    assert toy.model.encoder.input_dim == toy.toy.feat_dim


def test_speech_tokenizer_covers_every_word_of_the_corpus():
    tok = task.tokenizer_for(AsrTrainConfig(data="speech"))
    for word in speech.DIGITS + speech.WORDS:
        assert tok.decode(tok.encode(word)) == word


def test_word_tokenizer_covers_every_word_and_is_chosen_by_the_config():
    tok = task.tokenizer_for(AsrTrainConfig(data="speech", tokenizer="word"))
    assert tok.unit == "word" and tok.vocab_size == 5 + len(set(speech.DIGITS + speech.WORDS))
    assert tok.encode("three one four") == [tok.token_to_id(w) for w in ("three", "one", "four")]
    assert task.resolve(AsrTrainConfig(data="speech", tokenizer="word")).model.vocab_size == tok.vocab_size
    with pytest.raises(ConfigError, match="--tokenizer word needs audio"):
        AsrTrainConfig(data="toy", tokenizer="word")


def test_word_run_saves_its_tokenizer_and_decodes_words_joined_by_spaces(tmp_path, capsys):
    asr_train.main([*TINY_SPEECH, "--tokenizer", "word", "--runs-dir", str(tmp_path / "runs"),
                    "--cache-dir", str(tmp_path / "cache")])
    (run,) = (tmp_path / "runs").glob("asr-tiny/*")
    assert json.loads((run / "tokenizer.json").read_text())["format"] == "funcml.WordTokenizer"
    cfg, params, tok = task.load_model(run)
    assert cfg.tokenizer == "word" and tok == task.tokenizer_for(cfg)
    hyp, _, _ = task.transcribe_waveform(params, cfg, tok, *speech.synthesize("four two", voice="en+f3"))
    assert hyp.text == " ".join(hyp.tokens) and all(w in tok.words for w in hyp.tokens)
    m = json.loads((run / "eval.json").read_text())["test"]
    assert 0 <= m["cer"] and 0 <= m["wer"]  # scored on text, words joined by spaces
    assert all(p["hyp"] == " ".join(p["hyp"].split()) for p in m["examples"])


def test_an_old_run_without_a_word_tokenizer_loads_as_char(asr_speech_run):
    saved = json.loads((asr_speech_run / "config.json").read_text())
    assert saved["tokenizer"] == "char"
    del saved["tokenizer"]  # a config written before the field existed
    assert config_lib.from_dict(AsrTrainConfig, saved).tokenizer == "char"
    _, _, tok = task.load_model(asr_speech_run)
    assert tok.unit == "char"


def test_collate_pads_features_to_the_multiple_and_tokens_to_max_tokens():
    cfg = task.resolve(task.PRESETS["tiny"][1])
    ex = [Example(torch.ones(5, 8), [5, 6], "ab", 0.05), Example(2 * torch.ones(17, 8), [7], "c", 0.17)]
    b = task.collate(ex, cfg)
    assert b["features"].shape == (2, 32, 8)
    assert b["feat_lengths"].tolist() == [5, 17] and b["token_lengths"].tolist() == [2, 1]
    assert b["tokens"].shape == (2, cfg.model.max_tokens)
    assert b["tokens"][0, :3].tolist() == [5, 6, 0]
    assert float(b["features"][0, 5:].abs().sum()) == 0


def test_collate_rejects_a_text_longer_than_max_tokens():
    cfg = task.resolve(task.PRESETS["tiny"][1])
    with pytest.raises(DataError, match="max_tokens"):
        task.collate([Example(torch.ones(5, 8), [5] * 17, "a" * 17, 0.05)], cfg)


def test_train_batches_are_a_pure_function_of_the_step():
    cfg = task.resolve(dataclasses.replace(task.PRESETS["tiny"][1], spec_augment=True))
    tok = task.tokenizer_for(cfg)
    a, b = task.train_batch_fn(cfg, tok), task.train_batch_fn(cfg, tok)
    assert all(torch.equal(a(3)[k], b(3)[k]) for k in a(3))
    assert not torch.equal(a(3)["features"], a(4)["features"])


def test_config_rejects_ctc_weight_without_a_ctc_head():
    with pytest.raises(ConfigError, match="--model.ctc"):
        AsrTrainConfig(loss=task.LossConfig(ctc_weight=0.3))


# ---------------------------------------------------------------------------------- train / eval


def test_toy_run_writes_checkpoints_tokenizer_plots_and_eval(asr_toy_run, capsys):
    assert (asr_toy_run / "tokenizer.json").is_file() and (asr_toy_run / "plots" / "val_cer.png").is_file()
    ev = json.loads((asr_toy_run / "eval.json").read_text())
    assert {"val", "test", "checkpoint", "step"} <= set(ev)
    for split in ("val", "test"):
        m = ev[split]
        assert m["num_utts"] == 8 and 0 <= m["token_acc"] <= 1 and m["cer"] >= 0 and m["rtf"] > 0
    cfg, params, tok = task.load_model(asr_toy_run)
    assert cfg.model.vocab_size == tok.vocab_size


def test_eval_cli_writes_metrics_and_checks_a_cer_target(asr_toy_run, tmp_path, capsys):
    m = asr_eval.main(["--run", str(asr_toy_run), "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "metrics_test.json").read_text())
    assert saved["cer"] == m["cer"] and saved["num_utts"] == 8
    with pytest.raises(SystemExit) as e:
        asr_eval.main(["--run", str(asr_toy_run), "--out", str(tmp_path), "--max-cer", "0"])
    assert e.value.code == 1


def test_eval_and_infer_name_a_missing_run(tmp_path, capsys):
    err = _error_exit(capsys, asr_eval.main, ["--run", str(tmp_path / "nope")])
    assert "does not exist" in err
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        task.load_model(tmp_path / "run")


def test_resume_with_another_model_is_refused(asr_toy_run, capsys):
    err = _error_exit(capsys, asr_train.main, ["tiny", "--resume", str(asr_toy_run), "--model.decoder-layers", "2"])
    assert "different model" in err


# ----------------------------------------------------------------------------------------- infer


def test_infer_features_from_npy_and_safetensors(asr_toy_run, tmp_path, capsys):
    feats = torch.randn(40, 8, generator=torch.Generator().manual_seed(0))
    np.save(tmp_path / "f.npy", feats.numpy())
    save_file({"features": feats}, str(tmp_path / "f.safetensors"))
    a = asr_infer.main(["--run", str(asr_toy_run), "--features", str(tmp_path / "f.npy"), "--json"])
    b = asr_infer.main(["--run", str(asr_toy_run), "--features", str(tmp_path / "f.safetensors")])
    assert a["text"] == b["text"] and len(a["timestamps"]) == len(a["tokens"])
    assert all(s < e for s, e in a["timestamps"])


def test_infer_rejects_a_wrong_feature_dimension(asr_toy_run, tmp_path, capsys):
    np.save(tmp_path / "bad.npy", np.zeros((40, 9), dtype=np.float32))
    err = _error_exit(capsys, asr_infer.main, ["--run", str(asr_toy_run), "--features", str(tmp_path / "bad.npy")])
    assert "[T, 8]" in err and "(40, 9)" in err


def test_infer_rejects_nan_features_and_a_bad_extension(asr_toy_run, tmp_path, capsys):
    np.save(tmp_path / "nan.npy", np.full((10, 8), np.nan, dtype=np.float32))
    assert "NaN" in _error_exit(capsys, asr_infer.main,
                                ["--run", str(asr_toy_run), "--features", str(tmp_path / "nan.npy")])
    (tmp_path / "f.txt").write_text("1 2 3")
    assert "unsupported" in _error_exit(capsys, asr_infer.main,
                                        ["--run", str(asr_toy_run), "--features", str(tmp_path / "f.txt")])


def test_infer_needs_exactly_one_input(asr_toy_run, capsys):
    assert "exactly one" in _error_exit(capsys, asr_infer.main, ["--run", str(asr_toy_run)])


def test_infer_on_a_toy_model_refuses_audio(asr_toy_run, capsys):
    assert "toy features" in _error_exit(capsys, asr_infer.main, ["--run", str(asr_toy_run), "--text", "one two"])


def test_speech_run_transcribes_a_wav_with_timestamps_and_a_plot(asr_speech_run, tmp_path, capsys):
    wav, sr = speech.synthesize("four two", voice="en+f3")
    audio.write_wav(tmp_path / "clip.wav", wav, sr)
    out = asr_infer.main(["--run", str(asr_speech_run), "--wav", str(tmp_path / "clip.wav"), "--plot",
                          str(tmp_path / "cif.png")])
    assert (tmp_path / "cif.png").stat().st_size > 1000
    assert len(out["timestamps"]) == len(out["tokens"]) and out["audio_seconds"] > 0.3
    printed = capsys.readouterr().out
    assert "plot written" in printed


def test_speech_run_transcribes_text_synthesized_offline(asr_speech_run, capsys):
    out = asr_infer.main(["--run", str(asr_speech_run), "--text", "nine one", "--json"])
    assert isinstance(out["text"], str) and out["rtf"] > 0


def test_infer_rejects_empty_audio_a_non_wav_file_and_an_unknown_character(asr_speech_run, tmp_path, capsys):
    audio.write_wav(tmp_path / "empty.wav", torch.zeros(0), 16000)
    assert "no audio" in _error_exit(capsys, asr_infer.main, ["--run", str(asr_speech_run), "--wav",
                                                              str(tmp_path / "empty.wav")])
    (tmp_path / "fake.wav").write_bytes(b"this is not a wav file at all")
    assert "WAV" in _error_exit(capsys, asr_infer.main,
                                ["--run", str(asr_speech_run), "--wav", str(tmp_path / "fake.wav")])
    assert "'#'" in _error_exit(capsys, asr_infer.main, ["--run", str(asr_speech_run), "--text", "one # two"])


def test_transcribe_waveform_resamples_any_rate(asr_speech_run):
    cfg, params, tok = task.load_model(asr_speech_run)
    wav, sr = speech.synthesize("three", voice="en+m4")
    hyp8k, feats8k, _ = task.transcribe_waveform(params, cfg, tok, audio.resample(wav, sr, 8000), 8000)
    assert feats8k.shape[1] == 80 and isinstance(hyp8k.text, str)
    with pytest.raises(DataError, match="empty"):
        task.transcribe_waveform(params, cfg, tok, torch.zeros(0), 16000)
    with pytest.raises(ShapeError):
        task.transcribe_features(params, cfg, tok, [torch.zeros(10, 81)])


def test_sim2real_recipes_are_cumulative_and_the_main_job_preset_is_the_channel_recipe():
    speech_cfg = task.PRESETS["speech"][1]
    assert task.sim2real_config("preset") == speech_cfg
    word = task.sim2real_config("word")
    assert word.tokenizer == "word" and word.speech == speech_cfg.speech
    warp = task.sim2real_config("warp")
    assert (warp.tokenizer, warp.speech.sample_rate, warp.frontend.sample_rate) == ("word", 8000, 8000)
    assert warp.speech.reverb_prob == 0.5 and warp.frontend.n_mels == 40 and warp.frontend.lifter == 13
    assert warp.freq_warp == 0.1 and warp.time_masks == speech_cfg.time_masks        # specaug comes after warp
    main_cfg = task.PRESETS["sim2real"][1]
    assert main_cfg == dataclasses.replace(task.sim2real_config("channel"), experiment="asr-sim2real")
    assert set(main_cfg.speech.test_voices).isdisjoint(main_cfg.speech.train_voices)
    with pytest.raises(ConfigError, match="recipe"):
        task.sim2real_config("nope")


def test_a_speech_run_saves_cif_figures_of_validation_utterances(asr_speech_run):
    figures = sorted((asr_speech_run / "plots").glob("cif_*.png"))
    assert [p.name for p in figures] == ["cif_0.png", "cif_1.png", "cif_2.png"]
    assert all(p.stat().st_size > 5000 for p in figures)
