"""Variable-length batches: padding, validity masks, and the lengths after subsampling.

    x, lengths = pad_sequences([feats_a, feats_b])        # [2, T_max, F], [2] int64
    valid = lengths_to_mask(lengths)                      # [2, T_max] bool, True = a real frame
    mask = attention_mask(lengths, causal=False)          # [2, T_max, T_max] bool, True = attend
    lfr_lengths(lengths, m=7, n=6)                        # frames after low frame rate stacking
    subsampled_lengths(lengths, factor=4)                 # frames after two stride-2 convolutions
    idx = length_bucketed_indices(key, lengths, step, 16)  # [16] example ids of training batch `step`

Convention (the same as `funcml.nn.attention`): a mask is boolean and **True means valid**
(attend to / score this position). A padded sequence occupies positions `0 .. length - 1`
of its row; the rest is padding.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from .. import random
from ..checks import check_dtype, check_shape, host_readable
from ..errors import ConfigError, DTypeError, RangeError, ShapeError
from ..nn.attention import make_attention_mask

__all__ = ["pad_sequences", "lengths_to_mask", "attention_mask", "subsampled_lengths", "lfr_lengths",
           "length_bucketed_indices"]

Lengths = torch.Tensor | int


def pad_sequences(seqs: Sequence[torch.Tensor], *, pad_value: float = 0.0,
                  max_len: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack sequences of different lengths into one padded batch.

    Arguments:
        seqs: B tensors `[T_i, *rest]` with the same `rest`, dtype and device (features
            `[T_i, F]`, or token ids `[T_i]`).
        pad_value: the value written after each sequence.
        max_len: the padded length T (default: the longest `T_i`); must be `>= max T_i`.

    Returns: `x: [B, T, *rest]` (`x[b, :T_b] = seqs[b]`, `x[b, T_b:] = pad_value`) and
    `lengths: [B] int64`. The inputs are not modified.
    """
    if isinstance(seqs, torch.Tensor) or len(seqs) == 0:
        raise ShapeError("pad_sequences: expected a non-empty list of tensors [T_i, ...], got "
                         + ("a tensor (already a batch?)" if isinstance(seqs, torch.Tensor) else "an empty list"))
    first = seqs[0]
    for i, s in enumerate(seqs):
        if not isinstance(s, torch.Tensor) or s.ndim < 1:
            got = f"shape {list(s.shape)}" if isinstance(s, torch.Tensor) else type(s).__name__
            raise ShapeError(f"pad_sequences: seqs[{i}] must be a tensor [T_i, ...], got {got}")
        if s.shape[1:] != first.shape[1:]:
            raise ShapeError(f"pad_sequences: seqs[{i}] has shape {list(s.shape)}, expected [T_i, "
                             f"{', '.join(map(str, first.shape[1:]))}] like seqs[0]")
        if s.dtype != first.dtype or s.device != first.device:
            raise DTypeError(f"pad_sequences: seqs[{i}] is {s.dtype} on {s.device}, seqs[0] is {first.dtype} on "
                             f"{first.device}")
    lengths = torch.tensor([s.shape[0] for s in seqs], dtype=torch.int64, device=first.device)
    longest = int(lengths.max())
    t = longest if max_len is None else max_len
    if t < longest:
        raise ShapeError(f"pad_sequences: max_len={max_len} is shorter than the longest sequence ({longest})")
    x = torch.full((len(seqs), t, *first.shape[1:]), pad_value, dtype=first.dtype, device=first.device)
    for b, s in enumerate(seqs):
        x[b, : s.shape[0]] = s
    return x, lengths


def lengths_to_mask(lengths: torch.Tensor, max_len: int | None = None) -> torch.Tensor:
    """The validity mask of a padded batch: `mask[b, t] = t < lengths[b]`.

    Arguments:
        lengths: `[B]` integer, each in `[0, max_len]`.
        max_len: T (default `max(lengths)`, which reads the values: pass it inside compiled code and on a GPU).

    Returns: `[B, T]` bool, True = a valid position.
    """
    check_shape(lengths, "b", name="lengths")
    check_dtype(lengths, "int", name="lengths")
    if max_len is None:
        max_len = int(lengths.max()) if lengths.numel() else 0
    if lengths.numel() and host_readable(lengths):
        lo, hi = int(lengths.min()), int(lengths.max())
        if lo < 0 or hi > max_len:
            raise RangeError(f"lengths: expected values in [0, max_len={max_len}], got min {lo} and max {hi}")
    positions = torch.arange(max_len, device=lengths.device)
    return positions[None, :] < lengths[:, None]


def attention_mask(q_lengths: torch.Tensor, kv_lengths: torch.Tensor | None = None, *, causal: bool = False,
                   q_len: int | None = None, kv_len: int | None = None) -> torch.Tensor:
    """A full attention mask from sequence lengths, True = query t may attend to key s:

        mask[b, t, s] = (t < q_lengths[b]) & (s < kv_lengths[b]) & (s <= t if causal)

    A padding query's row is all False; `funcml.nn.attention.mha` outputs zeros there.

    Arguments:
        q_lengths: `[B]` integer, valid queries per row.
        kv_lengths: `[B]` integer, valid keys per row (None: `q_lengths`, self-attention).
        causal: also mask keys after the query (top-left aligned).
        q_len, kv_len: the padded Tq and Tk (default: the largest length; pass them inside
            compiled code, and whenever the batch is padded beyond its longest sequence).

    Returns: `[B, Tq, Tk]` bool.
    """
    dims = check_shape(q_lengths, "b", name="q_lengths")
    if kv_lengths is None:
        kv_lengths, kv_len = q_lengths, (q_len if kv_len is None else kv_len)
    check_shape(kv_lengths, "b", name="kv_lengths", **dims)
    q_valid = lengths_to_mask(q_lengths, q_len)
    kv_valid = lengths_to_mask(kv_lengths, kv_len)
    return make_attention_mask(q_valid, kv_valid, causal)


def _check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be an int >= 1, got {value!r}")


def _check_lengths(lengths: Lengths) -> None:
    if isinstance(lengths, torch.Tensor):
        check_dtype(lengths, "int", name="lengths")
        if lengths.numel() and host_readable(lengths) and int(lengths.min()) < 0:
            raise RangeError(f"lengths: expected values >= 0, got min {int(lengths.min())}")
    elif isinstance(lengths, bool) or not isinstance(lengths, int) or lengths < 0:
        raise RangeError(f"lengths: expected an int >= 0 or an integer tensor, got {lengths!r}")


def subsampled_lengths(lengths: Lengths, *, factor: int = 4, kernel: int = 3, stride: int = 2,
                       padding: int = 0) -> Lengths:
    """Sequence lengths after a stack of strided convolutions (conv2d subsampling).

    `factor = stride ** n_layers` (factor 4 with stride 2: two convolutions). Each layer maps
    a length L to the number of full windows,

        L' = floor((L + 2 * padding - kernel) / stride) + 1      (0 if L + 2 * padding < kernel)

    so with the defaults (kernel 3, stride 2, no padding) `L -> floor((L - 3) / 2) + 1`,
    twice: 100 -> 49 -> 24.

    Arguments:
        lengths: an int or an integer tensor of any shape, each >= 0.
        factor: the total subsampling factor, a power of `stride` (1 = unchanged).

    Returns: the same type and shape as `lengths`.
    """
    for name, v in (("factor", factor), ("kernel", kernel), ("stride", stride)):
        _check_positive(name, v)
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ConfigError(f"padding must be an int >= 0, got {padding!r}")
    n_layers = round(math.log(factor, stride)) if stride > 1 else 0
    if stride ** n_layers != factor:
        raise ConfigError(f"subsampled_lengths: factor={factor} is not a power of stride={stride}")
    _check_lengths(lengths)
    for _ in range(n_layers):
        span = lengths + 2 * padding - kernel
        if isinstance(lengths, torch.Tensor):
            lengths = torch.where(span >= 0, torch.div(span, stride, rounding_mode="floor") + 1, 0)
        else:
            lengths = span // stride + 1 if span >= 0 else 0
    return lengths


def lfr_lengths(lengths: Lengths, m: int = 7, n: int = 6) -> Lengths:
    """Frames after low frame rate (LFR) stacking: `ceil(L / n)`.

    LFR (Paraformer: Gao et al., "Paraformer: Fast and Accurate Parallel Transformer for
    Non-autoregressive End-to-End Speech Recognition", Interspeech 2022; FunASR front-end)
    concatenates `m` consecutive frames every `n` frames, padding the ends by repeating the
    first and last frames, so output `i` exists for every start `i * n < L`: there are
    `ceil(L / n)` outputs whatever `m` is (`m` is checked and documents the pairing).

    Arguments:
        lengths: an int or an integer tensor of any shape, each >= 0.

    Returns: the same type and shape as `lengths`.
    """
    _check_positive("m", m)
    _check_positive("n", n)
    _check_lengths(lengths)
    if isinstance(lengths, torch.Tensor):
        return torch.div(lengths + (n - 1), n, rounding_mode="floor")
    return -(-lengths // n)


def length_bucketed_indices(key: torch.Tensor, lengths: torch.Tensor, step: int, batch_size: int, *,
                            window: int = 50) -> torch.Tensor:
    """The example ids of training batch `step` when batching by length, epoch by epoch.

    With N examples and B = `batch_size`, epoch `e` has `N // B` batches (the `N mod B`
    examples left over differ from epoch to epoch):

        perm  = permutation(fold_in(key, e), N)
        perm is cut into windows of `window * B` ids; each window is sorted by length (stable)
        and cut into batches of B (a last partial batch is dropped)
        the batches are visited in the order permutation(fold_in(fold_in(key, e), "order"), N // B)

    so a batch holds utterances of similar length (little padding) while the epoch still sees
    the data in a random order. A pure function of `(key, lengths, step)`: a resumed run
    replays the same batches.

    Arguments:
        key: the data key; lengths: `[N]` int, each example's frame count; step >= 0.

    Returns: `[B]` int64.
    """
    check_shape(lengths, "n", name="lengths")
    check_dtype(lengths, "int", name="lengths")
    n = lengths.shape[0]
    _check_positive("batch_size", batch_size)
    _check_positive("window", window)
    if n < batch_size:
        raise RangeError(f"length_bucketed_indices: {n} examples are fewer than one batch of {batch_size}")
    if step < 0:
        raise RangeError(f"length_bucketed_indices: step must be >= 0, got {step}")
    per_epoch = n // batch_size
    epoch, k = divmod(step, per_epoch)
    epoch_key = random.fold_in(key, epoch)
    perm = random.permutation(epoch_key, n)
    span = window * batch_size
    chunks = []
    for start in range(0, n, span):
        ids = perm[start:start + span]
        chunks.append(ids[torch.sort(lengths[ids], stable=True).indices])
    batches = torch.cat(chunks)[: per_epoch * batch_size].reshape(per_epoch, batch_size)
    order = random.permutation(random.fold_in(epoch_key, "order"), per_epoch)
    return batches[int(order[k])].to(torch.int64)
