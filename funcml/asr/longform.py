"""Long-form transcription: audio of any length in bounded memory, cut at pauses.

    text, info = transcribe_long(params, cfg, tokenizer, waveform, sample_rate, max_seconds=6.0)

A Paraformer decodes at most `max_tokens` tokens per utterance (a static shape) and was trained
on utterances of a few seconds, so long audio is cut into segments of at most `max_seconds`
and each is transcribed on its own; the texts are joined and every token's timestamps are moved
to the original timeline. Memory is that of one batch of segments, whatever the length.

Where to cut (`split_at_pauses`). With 10 ms frames of energy `e_t = 10 log10(mean x^2)` dB and
the speech level `r` = the 95th percentile of `e`, a frame is quiet when `e_t < r - pause_db`
(35 dB); every run of at least `min_pause_ms` (300 ms) quiet frames inside the audio is a pause,
cut in its middle, so that each segment is one stretch of speech as the model heard in training.
A segment still longer than `L` = `max_seconds` is cut further: a window `[s, s + L)` ends at the
quietest frame of its second half, `argmin_{t in [s + L/2, s + L)} e_t`.

Each segment is trimmed to its speech (`trim_to_speech`: the frames within 35 dB of its loudest,
plus 20 ms each side), as the training utterances were: a model trained on noisy clips reads a
long, nearly digital silence around a word badly (measured: +100 ms of -80 dBFS hiss each side
doubles the CER), so the defaults keep little of it. Silence (`is_silent`). A segment whose loudest frame is below `silence_db` dBFS (default -50)
holds no speech: it gets no tokens and is not passed to the model (a model fed pure silence or
a faint hiss invents words, as CIF fires on any input). A transcript that fills the model's token
budget may have been cut by it: `info["truncated"]` names those segments, never silently.
"""

from __future__ import annotations

from typing import Any

import torch

from ..checks import check_finite, check_shape
from ..errors import ConfigError, DataError, RangeError
from . import audio as audio_lib
from .frontend import features as frontend_features
from .paraformer import Transcript

__all__ = ["frame_energy_db", "split_at_pauses", "trim_to_speech", "is_silent", "transcribe_long"]

_FRAME_S = 0.010


def frame_energy_db(waveform: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """Energy of 10 ms frames in dB relative to full scale: `[N] -> [ceil(N / hop)]` float32,
    `10 log10(mean(x^2) + 1e-12)` (a full-scale sine is about -3 dB; digital silence -120)."""
    check_shape(waveform, "n", name="waveform")
    hop = max(1, round(sample_rate * _FRAME_S))
    n = waveform.numel()
    frames = torch.nn.functional.pad(waveform.to(torch.float64), (0, -n % hop)).reshape(-1, hop)
    return (10.0 * torch.log10(frames.pow(2).mean(-1) + 1e-12)).to(torch.float32)


def split_at_pauses(waveform: torch.Tensor, sample_rate: int, *, max_seconds: float, min_pause_ms: float = 300.0,
                    pause_db: float = 35.0) -> list[tuple[int, int]]:
    """Contiguous segments `[(start, end), ...]` (samples) covering `waveform: [N]`, cut in the
    middle of every pause and then to at most `max_seconds` (see the module doc)."""
    check_shape(waveform, "n", name="waveform")
    if not max_seconds >= 4 * _FRAME_S:
        raise RangeError(f"max_seconds: expected at least {4 * _FRAME_S} s, got {max_seconds}")
    n = waveform.numel()
    if n == 0:
        return []
    hop = max(1, round(sample_rate * _FRAME_S))
    energy = frame_energy_db(waveform, sample_rate)
    quiet = energy < float(torch.quantile(energy, 0.95)) - pause_db                       # [frames] bool
    cuts, run = [], 0
    min_frames = max(1, round(min_pause_ms / 1000 / _FRAME_S))
    for f, q in enumerate(quiet.tolist() + [False]):
        if q:
            run += 1
            continue
        if run >= min_frames and f - run > 0 and f < len(quiet):                          # inner pauses only
            cuts.append((f - run // 2) * hop)
        run = 0
    bounds = [0, *cuts, n]
    limit = int(max_seconds * sample_rate)
    segments = []
    for a, b in zip(bounds, bounds[1:]):
        start = a
        while b - start > limit:                                                          # too long: the window rule
            lo, hi = (start + limit // 2) // hop + 1, (start + limit) // hop
            f = lo + int(torch.argmin(energy[lo:hi])) if hi > lo else hi
            cut = min(start + limit, max(start + 1, f * hop))
            segments.append((start, cut))
            start = cut
        segments.append((start, b))
    return segments


def trim_to_speech(waveform: torch.Tensor, sample_rate: int, *, pause_db: float = 35.0,
                   margin_ms: float = 20.0) -> tuple[int, int]:
    """`(start, end)` samples of the speech in `waveform: [N]`: from the first to the last 10 ms frame
    within `pause_db` of its loudest, widened by `margin_ms` each side (the model was trained on
    utterances that start and end with the voice, not with long silence)."""
    energy = frame_energy_db(waveform, sample_rate)
    hop = max(1, round(sample_rate * _FRAME_S))
    loud = (energy >= float(energy.max()) - pause_db).nonzero().flatten()
    margin = int(margin_ms / 1000 * sample_rate)
    return max(0, int(loud[0]) * hop - margin), min(waveform.numel(), (int(loud[-1]) + 1) * hop + margin)


def is_silent(waveform: torch.Tensor, sample_rate: int, *, silence_db: float = -50.0) -> bool:
    """True when no 10 ms frame of `waveform` reaches `silence_db` dBFS (no speech to transcribe)."""
    return waveform.numel() == 0 or float(frame_energy_db(waveform, sample_rate).max()) < silence_db


def transcribe_long(params: Any, cfg: Any, tokenizer: Any, waveform: torch.Tensor, sample_rate: int, *,
                    max_seconds: float = 6.0, silence_db: float = -50.0, min_pause_ms: float = 300.0,
                    pause_db: float = 35.0, margin_ms: float = 20.0,
                    batch_size: int = 8) -> tuple[Transcript, dict[str, Any]]:
    """Transcribe `waveform: [N]` (any length, any rate) segment by segment (see the module doc).

    Returns the joined `Transcript` (timestamps in seconds of the original audio) and `info`:
    `segments` (a list of `{start, end, text, tokens, silent}`, seconds), `truncated` (indices of
    segments whose transcript filled the token budget), `seconds` (the audio's length).
    """
    from .task import transcribe_features  # task imports this module's users; import late

    if cfg.data == "toy":
        raise ConfigError("transcribe_long: this model was trained on toy features, not audio")
    check_shape(waveform, "n", name="waveform")
    if waveform.numel() == 0:
        raise DataError("waveform: the audio is empty (0 samples)")
    check_finite(waveform, name="waveform")
    if batch_size < 1:
        raise RangeError(f"batch_size: expected >= 1, got {batch_size}")
    rate = cfg.frontend.sample_rate
    x = waveform.to(torch.float32)
    if sample_rate != rate:
        x = audio_lib.resample(x, sample_rate, rate)
    spans = split_at_pauses(x, rate, max_seconds=max_seconds, min_pause_ms=min_pause_ms, pause_db=pause_db)
    budget = cfg.model.max_tokens - (1 if cfg.model.predict_eos else 0)
    min_samples = cfg.frontend.win_length
    pieces: list[dict[str, Any]] = []
    todo: list[tuple[int, torch.Tensor]] = []
    for i, (s, e) in enumerate(spans):
        silent = e - s < min_samples or is_silent(x[s:e], rate, silence_db=silence_db)
        if not silent:
            a, b = trim_to_speech(x[s:e], rate, pause_db=pause_db, margin_ms=margin_ms)
            s, e = s + a, s + max(b, a + min_samples)
        pieces.append({"start": s / rate, "end": e / rate, "text": "", "tokens": [], "silent": silent})
        if not silent:
            todo.append((i, x[s:e]))
    words: list[str] = []
    ids: list[int] = []
    starts: list[float] = []
    ends: list[float] = []
    truncated: list[int] = []
    hyps: dict[int, Transcript] = {}
    for b in range(0, len(todo), batch_size):
        chunk = todo[b:b + batch_size]
        feats = [frontend_features(seg, cfg.frontend) for _, seg in chunk]
        out, _ = transcribe_features(params, cfg, tokenizer, feats)
        hyps.update({i: h for (i, _), h in zip(chunk, out)})
    for i, piece in enumerate(pieces):
        hyp = hyps.get(i)
        if hyp is None:
            continue
        offset = piece["start"]
        piece["text"], piece["tokens"] = hyp.text, list(hyp.tokens)
        if len(hyp.token_ids) >= budget:
            truncated.append(i)
        words.extend(hyp.tokens)
        ids.extend(hyp.token_ids)
        starts.extend(round(t + offset, 3) for t in hyp.starts)
        ends.extend(round(t + offset, 3) for t in hyp.ends)
    text = " ".join(p["text"].strip() for p in pieces if p["text"].strip())    # segments meet at pauses
    info = {"segments": pieces, "truncated": truncated, "seconds": round(x.numel() / rate, 3)}
    return Transcript(text, ids, words, starts, ends), info

