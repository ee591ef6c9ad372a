"""experiments/asr_infer.py on many files: a folder or a manifest, length-sorted batches, a JSONL of
transcripts with timestamps and a summary with CER / WER when references exist."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from funcml.asr import audio, task

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))

import asr_infer  # noqa: E402
import asr_train  # noqa: E402

SR = 8000
TEXTS = ["one", "two three", "four", "one two", "three", "five one"]


def _clip(i: int) -> torch.Tensor:
    n = int((0.2 + 0.05 * i) * SR)  # every file has its own length: batches are re-ordered
    t = torch.arange(n, dtype=torch.float64) / SR
    return (0.3 * torch.sin(2 * math.pi * (200 + 40 * i) * t * (1 + t))).float()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    (root / "wavs" / "sub").mkdir(parents=True)
    rows = []
    for i, text in enumerate(TEXTS):
        rel = f"wavs/{'sub/' if i % 2 else ''}u{i}.wav"
        (root / rel).write_bytes(audio.encode_wav(_clip(5 - i), SR, sample_format="float" if i % 3 else "pcm",
                                                  bits=32 if i % 3 else 16))
        rows.append({"audio": rel, "text": text, "speaker": "ab"[i % 2]})
    (root / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.fixture(scope="module")
def run(corpus, tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("runs")
    m = str(corpus / "m.jsonl")
    summary = asr_train.main(["tiny", "--data", "manifest", "--train-manifest", m, "--val-manifest", m,
                              "--batch-size", "4", "--runs-dir", str(runs), "--cache-dir", str(runs / "cache")])
    return Path(summary["run"])


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_folder_is_transcribed_in_batches_like_each_file_alone(run, corpus, tmp_path):
    summary = asr_infer.main(["--run", str(run), "--folder", str(corpus / "wavs"), "--out", str(tmp_path / "o.jsonl"),
                              "--batch-size", "4"])
    rows = _lines(tmp_path / "o.jsonl")
    files = sorted(str(p.resolve()) for p in (corpus / "wavs").rglob("*.wav"))
    assert [r["file"] for r in rows] == files  # input order, sub-folders included
    cfg, params, tok = task.load_model(run)
    for r in rows:
        alone, _, _ = task.transcribe_waveform(params, cfg, tok, *audio.read_audio(r["file"]))
        assert r["text"] == alone.text and r["tokens"] == alone.tokens
        assert r["timestamps"] == [[s, e] for s, e in zip(alone.starts, alone.ends)]
        assert all(0 <= s <= e for s, e in r["timestamps"]) and r["audio_seconds"] > 0.1
    assert summary["files"] == summary["transcribed"] == 6 and "cer" not in summary
    saved = json.loads((tmp_path / "o.jsonl.summary.json").read_text())
    assert saved["audio_seconds"] == summary["audio_seconds"] and saved["rtf"] > 0


def test_a_manifest_gives_references_and_cer_wer_per_speaker(run, corpus, tmp_path, capsys):
    summary = asr_infer.main(["--run", str(run), "--manifest", str(corpus / "m.jsonl"), "--out",
                              str(tmp_path / "m_out.jsonl")])
    rows = _lines(tmp_path / "m_out.jsonl")
    assert [r["ref"] for r in rows] == TEXTS and [r["speaker"] for r in rows] == list("ababab")
    from funcml.asr.metrics import cer, wer
    assert summary["cer"] == pytest.approx(cer(TEXTS, [r["text"] for r in rows]))
    assert summary["wer"] == pytest.approx(wer(TEXTS, [r["text"] for r in rows]))
    assert set(summary["per_speaker"]) == {"a", "b"} and summary["per_speaker"]["a"]["scored"] == 3
    assert "CER" in capsys.readouterr().out


def test_a_bad_file_stops_the_run_or_is_skipped_and_listed(run, corpus, tmp_path, capsys):
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "good.wav").write_bytes(audio.encode_wav(_clip(2), SR))
    (folder / "bad.wav").write_bytes(audio.encode_wav(_clip(2), SR)[:30])
    with pytest.raises(SystemExit) as e:
        asr_infer.main(["--run", str(run), "--folder", str(folder), "--out", str(tmp_path / "x.jsonl")])
    assert e.value.code == 2 and "bad.wav" in capsys.readouterr().err
    summary = asr_infer.main(["--run", str(run), "--folder", str(folder), "--out", str(tmp_path / "x.jsonl"),
                              "--on-error", "skip"])
    rows = {Path(r["file"]).name: r for r in _lines(tmp_path / "x.jsonl")}
    assert summary["skipped"] == 1 and "error" in rows["bad.wav"] and "text" in rows["good.wav"]
    assert "skipped" in capsys.readouterr().err


def test_many_file_inputs_are_exclusive_and_need_audio(run, tmp_path, capsys):
    with pytest.raises(SystemExit):
        asr_infer.main(["--run", str(run), "--folder", str(tmp_path), "--manifest", str(tmp_path / "m.jsonl")])
    assert "give exactly one input" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        asr_infer.main(["--run", str(run), "--folder", str(tmp_path)])
    assert "no audio files" in capsys.readouterr().err
