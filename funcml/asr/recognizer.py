"""Transcribe audio with a trained run in one call: the run's front end, any rate, any length.

    rec = Recognizer.load("runs/asr-speech/20260101-120000-abc12300")
    t = rec("clip.wav")                       # a Transcript: text, token_ids, tokens, starts, ends (s)
    t = rec(waveform, 44100)                  # waveform: [N] float, resampled to rec.sample_rate
    t, info = rec.transcribe_long(waveform, 44100)   # always in segments; info["segments"], ["truncated"]
    rec.export("asr.pt2")                     # the Paraformer's pure apply, torch.export (funcml.export)

`load` reads the run's best checkpoint by val/cer (else its latest; or the checkpoint directory
given) with its tokenizer (`funcml.asr.task.load_model`). A call does what the training's front
end did:

    x = resample(waveform, sample_rate -> cfg.frontend.sample_rate)    # funcml.asr.audio.resample
    feats = features(x, cfg.frontend)                                  # log-mel (+ LFR, normalization)
    transcript = greedy_decode(apply(params, feats))                   # CIF fires, NAR decoder

Length. Audio of at most `segment_seconds` (6 s, about what the model was trained on) is one
utterance: the call equals `funcml.asr.task.transcribe_waveform`, except that audio with no 10 ms
frame above `silence_db` dBFS (-50) gets an empty transcript without running the model (a model
fed silence invents words; `funcml.asr.longform.is_silent`, as the service does). Longer audio is cut at pauses
into segments of at most `segment_seconds` (`funcml.asr.longform.transcribe_long`: each trimmed
to its speech, silent ones skipped), with every token's times on the original timeline; a segment
whose transcript filled the model's token budget is named in `info["truncated"]` of
`transcribe_long` (the call itself returns only the transcript).

Inputs. A path (str or os.PathLike) is read with `funcml.asr.audio.read_audio` (WAV of any PCM or
float format; FLAC / OGG / MP3 with `soundfile`; channels averaged) at its own rate, so no
`sample_rate` is given with it; a tensor is `[N]` float with its `sample_rate` (Hz, an int > 0).
Mistakes raise funcml.errors types naming the value: a missing file (DataError), a rate <= 0
(RangeError), a tensor of another shape (ShapeError), a toy-feature run (ConfigError: it has no
audio front end), a run without checkpoints (CheckpointError).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .. import devices
from ..checks import check_shape
from ..errors import ConfigError, DataError, RangeError, ShapeError
from . import audio as audio_lib
from .longform import is_silent, transcribe_long
from .paraformer import Transcript
from .task import AsrTrainConfig, load_model, transcribe_waveform

__all__ = ["Recognizer"]

PyTree = Any


class Recognizer:
    """A trained Paraformer with its front end and tokenizer: `rec(waveform, sample_rate) -> Transcript`.

    Build it with `Recognizer.load(run)`, or from what `funcml.asr.task.load_model` returns:
    `Recognizer(train_cfg, params, tokenizer)`. Immutable; calls never change it.
    """

    def __init__(self, train_cfg: AsrTrainConfig, params: PyTree, tokenizer: Any, *, segment_seconds: float = 6.0,
                 silence_db: float = -50.0):
        if train_cfg.data == "toy":
            raise ConfigError("Recognizer: this run was trained on toy features, not audio, so it has no audio front "
                              "end; transcribe its features with funcml.asr.task.transcribe_features")
        if not segment_seconds >= 0.5:
            raise RangeError(f"segment_seconds: expected >= 0.5, got {segment_seconds}")
        self.train_cfg = train_cfg
        self.params = params
        self.tokenizer = tokenizer
        self.segment_seconds = float(segment_seconds)
        self.silence_db = float(silence_db)

    @classmethod
    def load(cls, run: str | os.PathLike, *, segment_seconds: float = 6.0, silence_db: float = -50.0,
             device: str | torch.device = "cpu") -> "Recognizer":
        """Load a run directory (its best checkpoint by val/cer, else its latest) or one checkpoint
        directory; the model runs on `device` (a torch device or a `--device` name: auto, cpu, cuda,
        cuda:N; the front end runs on the host). Raises DataError for a path that does not exist,
        CheckpointError for a run without a usable checkpoint, ConfigError for a run trained on toy
        features."""
        path = Path(run)
        if not path.exists():
            raise DataError(f"Recognizer.load: {path} does not exist; pass a run directory (runs/<experiment>/"
                            "<time>-<id>) or one of its checkpoints/step_* directories")
        where = devices.resolve(device) if isinstance(device, str) else torch.device(device)
        train_cfg, params, tokenizer = load_model(path, device=where)
        return cls(train_cfg, params, tokenizer, segment_seconds=segment_seconds, silence_db=silence_db)

    @property
    def device(self) -> torch.device:
        """Where the model runs (its params' device)."""
        return devices.of(self.params)

    @property
    def sample_rate(self) -> int:
        """The front end's sample rate (Hz); other rates are resampled to it."""
        return self.train_cfg.frontend.sample_rate

    def waveform(self, audio: str | os.PathLike | torch.Tensor, sample_rate: int | None = None
                 ) -> tuple[torch.Tensor, int]:
        """An input as `(waveform [N] float32, sample_rate)`: a file read at its own rate, or a
        tensor with its rate (checked)."""
        if isinstance(audio, (str, os.PathLike)):
            if sample_rate is not None:
                raise ConfigError(f"sample_rate={sample_rate} was given with the file {audio}; a file is read at "
                                  "its own rate, so leave sample_rate out")
            return audio_lib.read_audio(audio)
        if not isinstance(audio, torch.Tensor):
            raise DataError(f"audio: expected a path or a [N] waveform tensor, got {type(audio).__name__}")
        if sample_rate is None:
            raise ConfigError("sample_rate: a waveform tensor needs its sample rate in Hz, e.g. rec(waveform, 16000)")
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate <= 0:
            raise RangeError(f"sample_rate: expected an int > 0 (Hz), got {sample_rate!r}")
        if audio.dim() == 2 and audio.shape[0] in (1, 2) and audio.shape[1] > 2:
            raise ShapeError(f"waveform: expected one channel [N], got {list(audio.shape)}; average the channels "
                             "first (waveform.mean(0)) or pass the file's path")
        check_shape(audio, "n", name="waveform")
        if not audio.is_floating_point():
            raise DataError(f"waveform: expected float samples in [-1, 1], got {audio.dtype}; divide integer PCM by "
                            "its full scale (32768 for int16)")
        return audio.to(torch.float32), sample_rate

    def __call__(self, audio: str | os.PathLike | torch.Tensor, sample_rate: int | None = None) -> Transcript:
        """The transcript of one recording (see the module doc: one utterance up to `segment_seconds`,
        else segments cut at pauses)."""
        wav, rate = self.waveform(audio, sample_rate)
        if wav.numel() > self.segment_seconds * rate:
            return self.transcribe_long(wav, rate)[0]
        if is_silent(wav, rate, silence_db=self.silence_db):
            return Transcript("", [], [], [], [])
        hyp, _, _ = transcribe_waveform(self.params, self.train_cfg, self.tokenizer, wav, rate)
        return hyp

    def transcribe_long(self, audio: str | os.PathLike | torch.Tensor, sample_rate: int | None = None, **kwargs: Any
                        ) -> tuple[Transcript, dict[str, Any]]:
        """`funcml.asr.longform.transcribe_long` with segments of at most `segment_seconds`, whatever the
        length: `(transcript, info)` with `info["segments"]` and `info["truncated"]`; `kwargs` go to it
        (`silence_db`, `min_pause_ms`, `pause_db`, `margin_ms`, `batch_size`)."""
        wav, rate = self.waveform(audio, sample_rate)
        kwargs.setdefault("silence_db", self.silence_db)
        return transcribe_long(self.params, self.train_cfg, self.tokenizer, wav, rate,
                               max_seconds=self.segment_seconds, **kwargs)

    def export(self, path: str | os.PathLike | None = None, *, frames: int = 600, batch: int = 1):
        """The Paraformer's pure apply, `{"features": [batch, frames, F], "feat_lengths": [batch]} ->
        ParaformerOutput` (logits, fired token lengths, CIF weights, fire positions, ...), as a
        `torch.export.ExportedProgram` with the params baked in (`funcml.export.export_model`),
        saved with `torch.export.save` when `path` is given. Specialized to `frames` feature frames
        (pad shorter utterances, pass their true `feat_lengths`); the front end and the greedy
        decoding stay in Python (`funcml.asr.frontend.features`, `funcml.asr.task.decode`)."""
        from ..export import export_model

        if batch < 1 or frames < 1:
            raise RangeError(f"Recognizer.export: batch and frames must be >= 1, got batch={batch}, frames={frames}")
        f = self.train_cfg.model.encoder.input_dim
        example = {"features": torch.zeros(batch, frames, f),
                   "feat_lengths": torch.full((batch,), frames, dtype=torch.int64)}
        return export_model(self.params, {}, self.train_cfg.model, example, path=path)

