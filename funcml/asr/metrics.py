"""Recognition metrics: edit distance, CER / WER, token and length accuracy, real-time factor.

    edit_distance("kitten", "sitting")            # 3
    edit_ops("kitten", "sitting")                 # EditOps(substitutions=2, deletions=0, insertions=1)
    cer(["abc", "de"], ["abd", "de"])             # 1 / 5 = 0.2
    wer(["the cat sat"], ["the bat sat down"])    # (1 sub + 1 ins) / 3 words

Edit distance (Levenshtein, "Binary codes capable of correcting deletions, insertions and
reversals", 1966) between a reference `r` (length n) and a hypothesis `h` (length m) is the
least number of substitutions S, deletions D (a reference unit missing from h) and
insertions I (an extra unit in h) that turn `r` into `h`, by the recurrence

    d[i, 0] = i,   d[0, j] = j
    d[i, j] = min(d[i-1, j-1] + [r_i != h_j],  d[i-1, j] + 1,  d[i, j-1] + 1)

computed row by row in O(n m) time and O(m) memory (two rows). `edit_ops` carries the counts
(S, D, I) of one optimal alignment along; among alignments of equal cost it prefers, at each
cell, a match or substitution, then a deletion, then an insertion, so its split is
deterministic (any optimal split has the same S + D + I).

Error rates are corpus-level: the edits of every utterance are summed and divided by the
total reference length N (characters for CER, words for WER),

    ER = (S + D + I) / N,

not averaged per utterance, so long utterances weigh more (as in NIST sclite). The ratio can
exceed 1 (insertions). Edge cases, by convention:

* an empty hypothesis costs one deletion per reference unit (ER = 1 for that utterance);
* an empty reference costs one insertion per hypothesis unit;
* if the whole corpus has N = 0 reference units, ER = (S + D + I) / max(N, 1), i.e. the
  number of inserted units: 0.0 when every hypothesis is empty too (a perfect result),
  never NaN or infinity, so that it can be logged and averaged.

CER counts every character of the text as given, spaces included (space is a token, see
`funcml.asr.tokenizer`); `ignore_spaces=True` removes them first. WER splits on whitespace
(`str.split()`), so repeated, leading and trailing spaces do not make empty words.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from ..checks import check_dtype, check_shape
from ..errors import DataError, RangeError, ShapeError

__all__ = ["EditOps", "ErrorCounts", "edit_distance", "edit_ops", "error_counts", "cer", "wer", "token_accuracy",
           "length_accuracy", "real_time_factor"]


class EditOps(NamedTuple):
    """The operations of an optimal alignment; their sum is the edit distance."""

    substitutions: int
    deletions: int
    insertions: int


class ErrorCounts(NamedTuple):
    """Corpus totals: additive over utterances and batches (`sum` them, then `rate`)."""

    substitutions: int
    deletions: int
    insertions: int
    ref_len: int

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def rate(self) -> float:
        """(S + D + I) / max(N, 1) (see the module docstring for N = 0)."""
        return self.errors / max(self.ref_len, 1)

    def __add__(self, other):  # type: ignore[override]
        return ErrorCounts(*(a + b for a, b in zip(self, other)))


def _as_sequence(x, name: str) -> Sequence:
    if isinstance(x, torch.Tensor):
        check_shape(x, "n", name=name)
        return x.tolist()
    if not isinstance(x, Sequence):
        raise DataError(f"{name}: expected a sequence (str, list or 1-D tensor), got {type(x).__name__}")
    return x


def edit_distance(ref: Sequence, hyp: Sequence) -> int:
    """The Levenshtein distance between two sequences (strings, lists of words or ids, 1-D tensors).

    Units are compared with `==`; the cost of a substitution, deletion and insertion is 1.
    """
    r, h = _as_sequence(ref, "ref"), _as_sequence(hyp, "hyp")
    prev = list(range(len(h) + 1))  # d[i-1, :]
    for i, ri in enumerate(r, start=1):
        cur = [i] + [0] * len(h)  # d[i, :]
        for j, hj in enumerate(h, start=1):
            cur[j] = min(prev[j - 1] + (ri != hj), prev[j] + 1, cur[j - 1] + 1)
        prev = cur
    return prev[-1]


def edit_ops(ref: Sequence, hyp: Sequence) -> EditOps:
    """The (substitutions, deletions, insertions) of one optimal alignment of `hyp` to `ref`.

    Same recurrence as `edit_distance`, each cell holding `(cost, S, D, I)`; ties prefer the
    diagonal (match / substitution), then a deletion, then an insertion.
    """
    r, h = _as_sequence(ref, "ref"), _as_sequence(hyp, "hyp")
    prev = [(j, 0, 0, j) for j in range(len(h) + 1)]  # row 0: j insertions
    for i, ri in enumerate(r, start=1):
        cur = [(i, 0, i, 0)] + [None] * len(h)  # column 0: i deletions
        for j, hj in enumerate(h, start=1):
            c, s, d, n = prev[j - 1]
            best = (c, s, d, n) if ri == hj else (c + 1, s + 1, d, n)
            c, s, d, n = prev[j]
            if c + 1 < best[0]:
                best = (c + 1, s, d + 1, n)
            c, s, d, n = cur[j - 1]
            if c + 1 < best[0]:
                best = (c + 1, s, d, n + 1)
            cur[j] = best
        prev = cur
    _, s, d, n = prev[-1]
    return EditOps(s, d, n)


def _pairs(refs, hyps) -> list[tuple]:
    refs = [refs] if isinstance(refs, str) else list(refs)
    hyps = [hyps] if isinstance(hyps, str) else list(hyps)
    if len(refs) != len(hyps):
        raise ShapeError(f"refs and hyps must hold the same number of utterances, got {len(refs)} refs and "
                         f"{len(hyps)} hyps")
    for name, texts in (("refs", refs), ("hyps", hyps)):
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise DataError(f"{name}[{i}]: expected a str, got {type(t).__name__} (decode token ids first)")
    return list(zip(refs, hyps))


def error_counts(refs: Sequence[str] | str, hyps: Sequence[str] | str, *, unit: str = "char",
                 ignore_spaces: bool = False) -> ErrorCounts:
    """Total (S, D, I, N) over a corpus, with `unit` "char" or "word" (see the module docstring).

    A single str is taken as a corpus of one utterance.
    """
    if unit not in ("char", "word"):
        raise DataError(f"error_counts: unit must be 'char' or 'word', got {unit!r}")
    s = d = n = length = 0
    for ref, hyp in _pairs(refs, hyps):
        if unit == "word":
            r, h = ref.split(), hyp.split()
        elif ignore_spaces:
            r, h = ref.replace(" ", ""), hyp.replace(" ", "")
        else:
            r, h = ref, hyp
        ops = edit_ops(r, h)
        s, d, n, length = s + ops.substitutions, d + ops.deletions, n + ops.insertions, length + len(r)
    return ErrorCounts(s, d, n, length)


def cer(refs: Sequence[str] | str, hyps: Sequence[str] | str, *, ignore_spaces: bool = False) -> float:
    """Corpus character error rate `sum(S + D + I) / max(sum(len(ref)), 1)`, spaces counted
    unless `ignore_spaces`."""
    return error_counts(refs, hyps, unit="char", ignore_spaces=ignore_spaces).rate


def wer(refs: Sequence[str] | str, hyps: Sequence[str] | str) -> float:
    """Corpus word error rate `sum(S + D + I) / max(sum(words(ref)), 1)`, words = `str.split()`."""
    return error_counts(refs, hyps, unit="word").rate


def token_accuracy(pred: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The fraction of valid positions where the predicted token equals the target.

        acc = sum(mask * [pred == target]) / sum(mask)

    Arguments:
        pred: `[B, N]` integer token ids, or `[B, N, V]` floating logits (argmax over V).
        targets: `[B, N]` integer token ids.
        mask: `[B, N]` bool, True = a position to score (e.g. `lengths_to_mask(lengths)`);
            None scores every position.

    Returns: a 0-dim float32 tensor; NaN if no position is valid (nothing to score).
    Traceable (no host sync), so it can live inside a compiled eval step.
    """
    dims = check_shape(targets, "b n", name="targets")
    check_dtype(targets, "int", name="targets")
    if pred.is_floating_point():
        check_shape(pred, "b n v", name="pred (logits)", **dims)
        pred = pred.argmax(dim=-1)
    else:
        check_shape(pred, "b n", name="pred (token ids)", **dims)
    correct = pred == targets
    if mask is None:
        return correct.float().mean() if correct.numel() else torch.tensor(float("nan"))
    check_shape(mask, "b n", name="mask", **dims)
    check_dtype(mask, torch.bool, name="mask (True = valid)")
    return (correct & mask).sum().float() / mask.sum().float()


def length_accuracy(pred_lengths: torch.Tensor, target_lengths: torch.Tensor) -> torch.Tensor:
    """The fraction of utterances whose predicted token count equals the target count.

    Arguments:
        pred_lengths: `[B]` integer, or floating (e.g. a CIF predictor's `sum(alpha)`), which is
            rounded to the nearest integer (halves to even) first.
        target_lengths: `[B]` integer.

    Returns: a 0-dim float32 tensor (NaN for B = 0).
    """
    dims = check_shape(target_lengths, "b", name="target_lengths")
    check_shape(pred_lengths, "b", name="pred_lengths", **dims)
    check_dtype(target_lengths, "int", name="target_lengths")
    if pred_lengths.is_floating_point():
        pred_lengths = torch.round(pred_lengths)
    return (pred_lengths.to(torch.int64) == target_lengths.to(torch.int64)).float().mean()


def real_time_factor(compute_seconds: float, audio_seconds: float) -> float:
    """RTF = compute time / audio duration; below 1 is faster than real time."""
    compute_seconds, audio_seconds = float(compute_seconds), float(audio_seconds)
    if not audio_seconds > 0:
        raise RangeError(f"real_time_factor: audio_seconds must be > 0, got {audio_seconds}")
    if not compute_seconds >= 0:
        raise RangeError(f"real_time_factor: compute_seconds must be >= 0, got {compute_seconds}")
    return compute_seconds / audio_seconds
