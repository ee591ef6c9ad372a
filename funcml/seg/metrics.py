"""Segmentation metrics, dataset-level, from a confusion matrix.

    acc = SegMetrics(num_classes=5, ignore_index=255)
    cm = acc.init()
    for images, masks in loader:
        cm = acc.update(cm, logits_fn(images).argmax(1), masks)     # pure: returns a new matrix
    m = acc.compute(cm)                                              # m["mean_iou"], m["iou"], ...

The confusion matrix `cm[t, p]` counts the pixels of true class `t` predicted as `p`; it is
additive, so the matrix of a dataset is the sum of its batches' matrices and the metrics are
computed once from the total (pixels are pooled over the dataset, not averaged per image).
With `TP_k = cm[k, k]`, `FP_k = sum_t cm[t, k] - TP_k`, `FN_k = sum_p cm[k, p] - TP_k`:

    IoU_k  = TP_k / (TP_k + FP_k + FN_k)
    Dice_k = 2 TP_k / (2 TP_k + FP_k + FN_k)
    pixel accuracy = sum_k TP_k / sum cm

Convention: a class absent from both the prediction and the target (TP + FP + FN = 0) has
IoU and Dice NaN (undefined, not 0 and not 1) and is left out of the means: `mean_iou` and
`mean_dice` average over the classes that are present. If no class is present, they are NaN.
"""

from __future__ import annotations

import dataclasses

import torch

from ..checks import check_dtype
from ..errors import ConfigError, RangeError, ShapeError

__all__ = ["confusion_matrix", "metrics_from_confusion", "per_image_dice", "SegMetrics"]


def _check_labels(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int | None) -> torch.Tensor:
    """Check shapes, dtypes and (outside compiled code) values; return the valid-pixel mask."""
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be an int >= 1, got {num_classes!r}")
    for name, t in (("pred", pred), ("target", target)):
        if not isinstance(t, torch.Tensor):
            raise ShapeError(f"{name}: expected a tensor of class ids, got {type(t).__name__}")
        check_dtype(t, "int", name=name)
    if pred.shape != target.shape:
        raise ShapeError(f"pred and target must have the same shape, got pred {list(pred.shape)} and "
                         f"target {list(target.shape)} (take logits.argmax(1) for pred)")
    valid = target != ignore_index if ignore_index is not None else torch.ones_like(target, dtype=torch.bool)
    if not torch.compiler.is_compiling():
        for name, t in (("target", target), ("pred", pred)):
            bad = valid & ((t < 0) | (t >= num_classes))
            if bool(bad.any()):
                idx = tuple(int(i) for i in torch.nonzero(bad)[0])
                allowed = f"[0, {num_classes})" + (f" or ignore_index={ignore_index}" if name == "target" and
                                                   ignore_index is not None else "")
                raise RangeError(f"{name}: {int(bad.sum())} value(s) outside {allowed}, e.g. "
                                 f"{name}[{', '.join(map(str, idx))}] = {int(t[idx])}")
    return valid


def _counts(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, k: int, groups: torch.Tensor | None,
            n_groups: int) -> torch.Tensor:
    """bincount of (group, target, pred) triples over valid pixels: int64 `[n_groups, K, K]`."""
    trash = n_groups * k * k  # ignored pixels land in one extra bin, dropped below
    idx = target.to(torch.int64) * k + pred.to(torch.int64)
    if groups is not None:
        idx = groups * (k * k) + idx
    idx = torch.where(valid, idx, torch.full_like(idx, trash))
    counts = torch.bincount(idx.reshape(-1), minlength=trash + 1)[:trash]
    return counts.reshape(n_groups, k, k)


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int, *,
                     ignore_index: int | None = None) -> torch.Tensor:
    """`cm[t, p]` = number of pixels of true class t predicted as p: int64 `[K, K]`.

    pred, target: int `[B, H, W]` (any equal shapes) with ids in `[0, K)`; target pixels equal
    to `ignore_index` are skipped. A RangeError names an out-of-range id.
    """
    valid = _check_labels(pred, target, num_classes, ignore_index)
    return _counts(pred, target, valid, num_classes, None, 1)[0]


def _ratios(cm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class IoU and Dice (float64, NaN where TP + FP + FN = 0) of `cm: [..., K, K]`."""
    cm = cm.to(torch.float64)
    tp = torch.diagonal(cm, dim1=-2, dim2=-1)
    fp = cm.sum(-2) - tp
    fn = cm.sum(-1) - tp
    union = tp + fp + fn
    nan = torch.full_like(tp, float("nan"))
    iou = torch.where(union > 0, tp / union.clamp_min(1), nan)
    dice = torch.where(union > 0, 2 * tp / (union + tp).clamp_min(1), nan)
    return iou, dice


def metrics_from_confusion(cm: torch.Tensor, *, exclude_background: bool = False) -> dict[str, torch.Tensor]:
    """Metrics of a (dataset-level) confusion matrix `cm: [K, K]`.

    Returns a dict of float64 tensors:
        iou, dice: `[K]`, NaN for a class absent from both prediction and target;
        mean_iou, mean_dice: scalars, the mean over classes that are not NaN (and not class 0
            if `exclude_background`); NaN if there is none;
        pixel_accuracy: scalar, correct pixels / all counted pixels (NaN if none);
        support: `[K]` int64, pixels of each true class.
    """
    if not isinstance(cm, torch.Tensor) or cm.dim() != 2 or cm.shape[0] != cm.shape[1]:
        raise ShapeError(f"cm: expected a square confusion matrix [K, K], got "
                         f"{list(cm.shape) if isinstance(cm, torch.Tensor) else type(cm).__name__}")
    iou, dice = _ratios(cm)
    keep = slice(1, None) if exclude_background else slice(None)
    total = cm.sum().to(torch.float64)
    correct = torch.diagonal(cm).sum().to(torch.float64)
    accuracy = torch.where(total > 0, correct / total.clamp_min(1), torch.full_like(total, float("nan")))
    return {
        "iou": iou,
        "dice": dice,
        "mean_iou": torch.nanmean(iou[keep]),
        "mean_dice": torch.nanmean(dice[keep]),
        "pixel_accuracy": accuracy,
        "support": cm.sum(1).to(torch.int64),
    }


def per_image_dice(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                   ignore_index: int | None = None) -> torch.Tensor:
    """Dice of every class in every image: float64 `[B, K]`, NaN where the class is absent from
    both the image's prediction and target (for distributions and per-image reports).

    pred, target: int `[B, *S]`.
    """
    valid = _check_labels(pred, target, num_classes, ignore_index)
    if pred.dim() < 1:
        raise ShapeError(f"pred: expected shape [B, *S], got {list(pred.shape)}")
    b = pred.shape[0]
    groups = torch.arange(b, device=pred.device).reshape(b, *([1] * (pred.dim() - 1))).expand(pred.shape)
    return _ratios(_counts(pred, target, valid, num_classes, groups, b))[1]


@dataclasses.dataclass(frozen=True)
class SegMetrics:
    """A pure accumulator: the state is the confusion matrix, passed in and returned.

        cm = m.init(); cm = m.update(cm, pred, target); m.compute(cm)
    """

    num_classes: int
    ignore_index: int | None = None
    exclude_background: bool = False

    def init(self, device: torch.device | str | None = None) -> torch.Tensor:
        """An empty confusion matrix, int64 `[K, K]`."""
        return torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64, device=device)

    def update(self, cm: torch.Tensor, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """`cm + confusion_matrix(pred, target)` (a new tensor)."""
        return cm + confusion_matrix(pred, target, self.num_classes, ignore_index=self.ignore_index)

    def compute(self, cm: torch.Tensor) -> dict[str, torch.Tensor]:
        """`metrics_from_confusion(cm)`."""
        return metrics_from_confusion(cm, exclude_background=self.exclude_background)
