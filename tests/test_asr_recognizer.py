"""funcml.asr.Recognizer: a trained run with its front end, `rec(waveform, sample_rate) -> Transcript`,
equal to `transcribe_waveform` for one utterance and to `transcribe_long` for long audio."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from funcml.asr import Recognizer, Transcript, audio, frontend, longform, task
from funcml.nn import model as models
from funcml.errors import CheckpointError, ConfigError, DataError, RangeError, ShapeError

SR = 8000
TEXTS = ["one", "two three", "four", "one two"]


def _clip(i: int, seconds: float = 0.3) -> torch.Tensor:
    t = torch.arange(int(seconds * SR), dtype=torch.float64) / SR
    return (0.3 * torch.sin(2 * math.pi * (200 + 40 * i) * t * (1 + t))).float()


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """The `tiny` preset on a 4-utterance manifest of 8 kHz WAVs (a 16 kHz front end), 2 steps, seed 1
    (whose model fires tokens on every test clip, so the comparisons cover decoding and times)."""
    root = tmp_path_factory.mktemp("corpus")
    rows = []
    for i, text in enumerate(TEXTS):
        audio.write_wav(root / f"u{i}.wav", _clip(i), SR)
        rows.append({"audio": f"u{i}.wav", "text": text})
    (root / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    runs = tmp_path_factory.mktemp("runs")
    cfg = dataclasses.replace(task.PRESETS["tiny"][1], data="manifest", train_manifest=root / "m.jsonl",
                              val_manifest=root / "m.jsonl", steps=2, eval_every=2, seed=1, runs_dir=runs,
                              cache_dir=runs / "cache")
    result, _ = task.train(cfg, progress=False)
    return result.path


def test_a_waveform_is_transcribed_like_transcribe_waveform(run):
    rec = Recognizer.load(run)
    cfg, params, tok = task.load_model(run)
    assert rec.sample_rate == cfg.frontend.sample_rate == 16000
    for i in range(3):
        wave = _clip(i, 0.25 + 0.1 * i)
        want, _, _ = task.transcribe_waveform(params, cfg, tok, wave, SR)
        assert rec(wave, SR) == want  # text, token ids, tokens, starts, ends
        assert want.token_ids  # the 2-step model fires tokens: the comparison covers decoding and times


def test_silence_gets_an_empty_transcript_without_the_model(run):
    rec = Recognizer.load(run)
    quiet = 1e-4 * _clip(0)  # about -83 dBFS
    empty = Transcript("", [], [], [], [])
    assert rec(quiet, SR) == empty and rec(torch.zeros(SR // 4), SR) == empty
    cfg, params, tok = task.load_model(run)
    assert task.transcribe_waveform(params, cfg, tok, quiet, SR)[0].token_ids  # what the model alone would say
    loud = Recognizer.load(run, silence_db=-100.0)(quiet, SR)
    assert loud == task.transcribe_waveform(params, cfg, tok, quiet, SR)[0]


def test_a_path_is_read_at_its_own_rate(run, tmp_path):
    audio.write_wav(tmp_path / "c.wav", _clip(2), SR)
    rec = Recognizer.load(run)
    assert rec(tmp_path / "c.wav") == rec(*audio.read_audio(tmp_path / "c.wav"))
    with pytest.raises(ConfigError, match="sample_rate=8000"):
        rec(tmp_path / "c.wav", 8000)


def test_audio_longer_than_segment_seconds_goes_through_longform(run):
    rec = Recognizer.load(run, segment_seconds=0.5)
    cfg, params, tok = task.load_model(run)
    gap = torch.zeros(int(0.4 * SR))
    wave = torch.cat([_clip(0, 0.3), gap, _clip(1, 0.3), gap, _clip(3, 0.3)])  # 1.7 s with two pauses
    want, info = longform.transcribe_long(params, cfg, tok, wave, SR, max_seconds=0.5)
    got = rec(wave, SR)
    assert got == want and len(info["segments"]) >= 3 and got.token_ids
    assert got.starts == sorted(got.starts) and all(0 <= s <= 1.7 for s in got.starts)
    t, info2 = rec.transcribe_long(wave, SR)
    assert t == want and info2 == info


def test_the_exported_paraformer_gives_the_apply_outputs_on_padded_front_end_features(run, tmp_path):
    rec = Recognizer.load(run)
    rec.export(tmp_path / "asr.pt2", frames=40, batch=2)
    ep = torch.export.load(tmp_path / "asr.pt2")
    feats = [frontend.features(audio.resample(_clip(i, 0.2 + 0.1 * i), SR, 16000), rec.train_cfg.frontend)
             for i in range(2)]
    lengths = torch.tensor([f.shape[0] for f in feats])
    x = {"features": torch.stack([torch.nn.functional.pad(f, (0, 0, 0, 40 - f.shape[0])) for f in feats]),
         "feat_lengths": lengths}
    assert int(lengths.max()) <= 40
    want, _ = models.apply(rec.params, {}, x, rec.train_cfg.model, train=False)
    got = ep.module()(x)  # ParaformerOutput._asdict()
    assert set(got) == set(want._fields)
    for name in ("logits", "alpha", "enc"):
        torch.testing.assert_close(got[name], getattr(want, name), atol=1e-5, rtol=0)
    for name in ("token_lengths", "token_mask", "fire_positions", "enc_lengths", "enc_mask"):
        assert torch.equal(got[name], getattr(want, name)), name
    assert int(want.token_lengths.min()) > 0  # CIF fired: the comparison covers the decoder


def test_a_sample_rate_that_is_not_a_positive_int_is_a_range_error_naming_it(run):
    rec = Recognizer.load(run)
    for bad in (0, -16000, 16000.0):
        with pytest.raises(RangeError, match=f"got {bad!r}"):
            rec(_clip(0), bad)
    with pytest.raises(ConfigError, match="sample rate"):
        rec(_clip(0))


def test_a_stereo_or_integer_waveform_is_an_error_saying_what_to_do(run):
    rec = Recognizer.load(run)
    with pytest.raises(ShapeError, match=r"\[2, 2400\].*mean\(0\)"):
        rec(torch.stack([_clip(0), _clip(1)]), SR)
    with pytest.raises(DataError, match="int16"):
        rec((_clip(0) * 32767).to(torch.int16), SR)


def test_a_missing_file_run_or_checkpoint_is_an_error_naming_the_path(run, tmp_path):
    with pytest.raises(DataError, match="nope.wav"):
        Recognizer.load(run)(tmp_path / "nope.wav")
    with pytest.raises(DataError, match="no-such-run"):
        Recognizer.load(tmp_path / "no-such-run")
    (tmp_path / "empty-run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(CheckpointError, match="empty-run"):
        Recognizer.load(tmp_path / "empty-run")


def test_a_run_trained_on_toy_features_is_refused_with_the_way_out(run):
    cfg, params, tok = task.load_model(run)
    with pytest.raises(ConfigError, match="transcribe_features"):
        Recognizer(dataclasses.replace(cfg, data="toy"), params, tok)
