"""Long-form transcription (funcml.asr.longform): cuts at pauses, bounded segments, silence, and
timestamps in the original timeline."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
import torch

from funcml.asr import longform, task
from funcml.errors import RangeError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))


SR = 8000


def _speechlike(seconds: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * SR)) / SR
    return 0.3 * torch.sin(2 * torch.pi * 220 * t) * (1 + 0.3 * torch.randn(len(t), generator=g))


def _with_pauses(n: int, *, word_s: float = 0.5, pause_s: float = 0.4) -> tuple[torch.Tensor, list[int]]:
    """`n` bursts separated by near-silent pauses (-80 dBFS hiss); returns the signal and the
    sample ranges of the pauses' middles."""
    g = torch.Generator().manual_seed(99)
    parts, middles, pos = [], [], 0
    for i in range(n):
        parts.append(_speechlike(word_s, i))
        pos += int(word_s * SR)
        if i < n - 1:
            gap = int(pause_s * SR)
            parts.append(1e-4 * torch.randn(gap, generator=g))
            middles.append(pos + gap // 2)
            pos += gap
    return torch.cat(parts), middles


def test_segments_cover_the_audio_and_are_cut_inside_the_pauses():
    x, middles = _with_pauses(5)
    spans = longform.split_at_pauses(x, SR, max_seconds=6.0)
    assert spans[0][0] == 0 and spans[-1][1] == len(x)
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))                 # contiguous
    assert len(spans) == 5
    for (_, cut), middle in zip(spans, middles):
        assert abs(cut - middle) <= int(0.1 * SR)                                # in the pause


def test_audio_without_pauses_is_cut_to_the_maximum_length():
    x = _speechlike(20.0, 0)
    spans = longform.split_at_pauses(x, SR, max_seconds=3.0)
    assert spans[-1][1] == len(x) and all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    assert all(0 < e - s <= 3 * SR for s, e in spans) and len(spans) >= 7
    with pytest.raises(RangeError, match="max_seconds"):
        longform.split_at_pauses(x, SR, max_seconds=0.0)


def test_silence_and_trimming():
    assert longform.is_silent(torch.zeros(SR), SR)
    assert longform.is_silent(1e-4 * torch.randn(SR, generator=torch.Generator().manual_seed(0)), SR)
    word = torch.cat([torch.zeros(SR // 2), _speechlike(0.5, 1), torch.zeros(SR // 2)])
    assert not longform.is_silent(word, SR)
    start, end = longform.trim_to_speech(word, SR, margin_ms=50.0)
    assert abs(start - (SR // 2 - int(0.05 * SR))) <= SR // 100 and abs(end - (SR + int(0.05 * SR))) <= SR // 100


# The trained speech run is the session's shared one (tests/conftest.py): asr_speech_run.


def test_long_audio_is_transcribed_segment_by_segment_on_the_original_timeline(asr_speech_run):
    cfg, params, tok = task.load_model(asr_speech_run)
    x, _ = _with_pauses(6, word_s=0.6, pause_s=0.5)
    hyp, info = longform.transcribe_long(params, cfg, tok, x, SR, max_seconds=2.0)
    assert len(info["segments"]) == 6 and info["seconds"] == pytest.approx(len(x) / SR, abs=1e-3)
    assert len(hyp.tokens) == len(hyp.starts) == len(hyp.ends) == sum(len(s["tokens"]) for s in info["segments"])
    assert all(0 <= a <= b <= info["seconds"] + 1e-3 for a, b in zip(hyp.starts, hyp.ends))
    assert hyp.starts == sorted(hyp.starts)
    for seg in info["segments"]:                                                 # each token inside its segment
        assert seg["start"] < seg["end"]
    assert hyp.text == " ".join(s["text"].strip() for s in info["segments"] if s["text"].strip())


def test_silence_gives_empty_text_without_running_the_model(asr_speech_run, monkeypatch):
    cfg, params, tok = task.load_model(asr_speech_run)
    monkeypatch.setattr(task, "transcribe_features", lambda *a, **k: pytest.fail("the model ran on silence"))
    hyp, info = longform.transcribe_long(params, cfg, tok, torch.zeros(30 * SR), SR)
    assert hyp.text == "" and hyp.tokens == [] and all(s["silent"] for s in info["segments"])


def test_a_segment_that_fills_the_token_budget_is_reported(asr_speech_run):
    cfg, params, tok = task.load_model(asr_speech_run)
    small = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, max_tokens=1))
    x, _ = _with_pauses(3)
    hyp, info = longform.transcribe_long(params, small, tok, x, SR)
    filled = [i for i, s in enumerate(info["segments"]) if len(s["tokens"]) >= 1]
    assert filled and info["truncated"] == filled          # an untrained model fires on every word-like burst


def test_asr_infer_transcribes_a_long_wav_in_segments(asr_speech_run, tmp_path, capsys):
    import asr_infer
    from funcml.asr import audio

    x, _ = _with_pauses(12, word_s=0.6, pause_s=0.5)                               # 12.7 s
    audio.write_wav(tmp_path / "long.wav", x, SR)
    result = asr_infer.main(["--run", str(asr_speech_run), "--wav", str(tmp_path / "long.wav"), "--json",
                             "--segment-seconds", "3"])
    assert result["segments"] == 12 and result["audio_seconds"] == pytest.approx(len(x) / SR, abs=1e-3)
    assert all(0 <= s <= e <= result["audio_seconds"] for s, e in result["timestamps"])
    assert '"segments": 12' in capsys.readouterr().out


def test_the_longform_benchmark_scores_one_recording_against_its_parts(asr_speech_run, tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks import asr_longform

    out = tmp_path / "longform.json"
    result = asr_longform.main(["--run", str(asr_speech_run), "--minutes", "0.1", "--out", str(out)])
    assert out.is_file() and result["utterances"] >= 2 and result["audio_minutes"] >= 0.1
    assert result["long_form"]["segments"] >= 1 and result["peak_rss_mb"] > 0
    assert result["per_utterance"]["cer"] >= 0 and result["long_form"]["cer"] >= 0
