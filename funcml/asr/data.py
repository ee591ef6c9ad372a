"""ASR data: the `Example` record, utterances from the synthesized corpus, the toy features or a
manifest, and the padded batches the model takes.

    ex = speech_examples(cfg, "val", 100, tok)          # Examples: features [T, F], tokens, text, seconds
    batch = collate(ex[:16], cfg)                       # features [B, T, F], feat_lengths, tokens, token_lengths

Data keys: `data_key(cfg, split) = fold_in(key(data_seed), split)`, so every split is fixed by
`data_seed` and independent of the model's `seed`. Which split a run trains and validates on,
and the tokenizer, are `funcml.asr.task`'s business (`train_examples`, `val_examples`, ...).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal, NamedTuple, Sequence

import torch

from .. import random
from ..checks import check_shape
from ..errors import ConfigError, DataError
from . import audio as audio_lib
from . import manifest as manifest_lib
from .frontend import features as frontend_features
from .paraformer import frame_shift_seconds
from .speech import make_corpus
from .tokenizer import Tokenizer
from .toy import toy_batch

if TYPE_CHECKING:  # the config class is the task's; these functions only read its fields
    from .task import AsrTrainConfig

__all__ = ["Example", "feature_dim", "frame_shift", "data_key", "speech_examples", "toy_examples", "manifest_path",
           "manifest_examples", "collate"]


class Example(NamedTuple):
    """One utterance: `features [T, F]` float32, `tokens` (ids, no specials), `text`, `seconds` of audio."""

    features: torch.Tensor
    tokens: list[int]
    text: str
    seconds: float


def feature_dim(cfg: AsrTrainConfig) -> int:
    """F of the model's input: the toy `feat_dim`, or the front end's (80, or 560 with LFR)."""
    return cfg.toy.feat_dim if cfg.data == "toy" else cfg.frontend.feature_dim


def frame_shift(cfg: AsrTrainConfig) -> float:
    """Seconds per encoder frame (toy features count as 10 ms frames)."""
    hop = 10.0 if cfg.data == "toy" else cfg.frontend.hop_ms
    n = cfg.frontend.lfr_n if (cfg.data != "toy" and cfg.frontend.use_lfr) else 1
    return frame_shift_seconds(hop, n, cfg.model.encoder)


def data_key(cfg: AsrTrainConfig, split: str) -> torch.Tensor:
    """The key of a data split: `fold_in(key(data_seed), split)`."""
    return random.fold_in(random.key(cfg.data_seed), split)


def speech_examples(cfg: AsrTrainConfig, split: str, n: int, tok: Tokenizer) -> list[Example]:
    """`n` synthesized utterances of split `split` (the test split: the held-out voices) as log-mel Examples."""
    voices = "test" if split == "test" else "train"
    utts = make_corpus(data_key(cfg, split), n, cfg.speech, split=voices, cache_dir=cfg.cache_dir,
                       progress=True)
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # per-utterance tensors are small; one thread is faster on a busy machine
    try:
        out = []
        for u in utts:
            wav = u.waveform if u.sample_rate == cfg.frontend.sample_rate else audio_lib.resample(
                u.waveform, u.sample_rate, cfg.frontend.sample_rate)
            out.append(Example(frontend_features(wav, cfg.frontend), tok.encode(u.text), u.text,
                               u.waveform.numel() / u.sample_rate))
        return out
    finally:
        torch.set_num_threads(before)


def toy_examples(cfg: AsrTrainConfig, key: torch.Tensor, n: int, tok: Tokenizer) -> list[Example]:
    """`n` toy utterances drawn from `key` as Examples (10 ms frames)."""
    b = toy_batch(key, n, cfg.toy, tok)
    out = []
    for i in range(n):
        t, l_ = int(b["feat_lengths"][i]), int(b["token_lengths"][i])
        out.append(Example(b["features"][i, :t], b["tokens"][i, :l_].tolist(), b["texts"][i], t * 0.01))
    return out


def manifest_path(cfg: AsrTrainConfig, split: Literal["train", "val"]) -> Path:
    """The training or validation manifest of a manifest run (a `ConfigError` when it is not given)."""
    path = cfg.train_manifest if split == "train" else cfg.val_manifest
    if path is None:
        raise ConfigError("--data manifest needs --train-manifest and --val-manifest (JSONL files or Kaldi data "
                          "dirs; see docs/ASR_REAL_DATA.md)")
    return path


def manifest_examples(cfg: AsrTrainConfig, path: Path, tok: Tokenizer, *, with_speakers: bool = False,
                      speeds: Sequence[float] = (1.0,)) -> list[Example] | tuple[list[Example], list[str | None]]:
    """The utterances of one manifest (JSONL or Kaldi dir) as Examples: transcripts checked against
    `tok` under `cfg.oov`, features through the content-keyed cache under `cfg.cache_dir`.
    `with_speakers` also returns each example's speaker (None where the manifest gives none);
    `speeds` lists the speed factors to load every utterance at (speed perturbation), in turn."""
    utts = manifest_lib.apply_vocabulary(manifest_lib.read_manifest(path), tok, oov=cfg.oov)
    n_max = cfg.model.max_tokens - int(cfg.model.predict_eos)
    ids = []
    for u in utts:
        ids.append(tok.encode(u.text))
        if len(ids[-1]) > n_max:
            raise DataError(f"{u.where}: {u.text!r} has {len(ids[-1])} tokens but the model has max_tokens="
                            f"{cfg.model.max_tokens}; raise --model.max-tokens or split the utterance")
    examples = []
    for speed in speeds:
        loaded = manifest_lib.load_features(utts, cfg.frontend, cache_dir=cfg.cache_dir, speed=speed)
        examples += [Example(f, t, u.text, s) for u, t, (f, s) in zip(utts, ids, loaded)]
    speakers = [u.speaker for u in utts] * len(speeds)
    return (examples, speakers) if with_speakers else examples


def collate(examples: Sequence[Example], cfg: AsrTrainConfig) -> dict[str, torch.Tensor]:
    """Pad a list of examples into a batch:

        features [B, T, F] float32 (T = longest, rounded up to pad_multiple; zeros after each length)
        feat_lengths [B] int64, tokens [B, N] int64 (N = model.max_tokens, pad id 0), token_lengths [B] int64

    A text with more than `max_tokens` tokens (one fewer with `predict_eos`) is a DataError."""
    if not examples:
        raise DataError("collate: no examples")
    f = examples[0].features.shape[-1]
    n_max = cfg.model.max_tokens - int(cfg.model.predict_eos)
    for i, e in enumerate(examples):
        check_shape(e.features, "t f", name=f"examples[{i}].features", f=f)
        if len(e.tokens) > n_max:
            raise DataError(f"collate: {e.text!r} has {len(e.tokens)} tokens but the model has "
                            f"max_tokens={cfg.model.max_tokens}" + (" (one kept for <eos>)" if cfg.model.predict_eos
                                                                   else "") + "; raise --model.max-tokens")
        if len(e.tokens) == 0:
            raise DataError(f"collate: examples[{i}] has an empty transcript")
    lengths = torch.tensor([e.features.shape[0] for e in examples], dtype=torch.int64)
    t = int(lengths.max())
    t = -(-t // cfg.pad_multiple) * cfg.pad_multiple
    feats = torch.zeros(len(examples), t, f, dtype=torch.float32)
    tokens = torch.zeros(len(examples), cfg.model.max_tokens, dtype=torch.int64)
    for i, e in enumerate(examples):
        feats[i, : e.features.shape[0]] = e.features
        tokens[i, : len(e.tokens)] = torch.tensor(e.tokens, dtype=torch.int64)
    return {"features": feats, "feat_lengths": lengths, "tokens": tokens,
            "token_lengths": torch.tensor([len(e.tokens) for e in examples], dtype=torch.int64)}
