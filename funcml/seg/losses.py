"""Segmentation losses, from the equations: cross-entropy, soft Dice, and their sums.

    loss = ce_dice_loss(logits, masks, ignore_index=255)          # logits [B, K, H, W], masks [B, H, W]
    loss = bce_dice_loss(logits, masks)                           # logits [B, 1, H, W], masks in {0, 1}

Contracts. `logits: [B, K, *S]` float (any spatial dims `S`, usually `(H, W)`), `target: [B, *S]`
int64 class ids in `[0, K)`, or `ignore_index`. Pixels whose target is `ignore_index` (e.g.
the padding of `pad_collate`) take no part in any loss. The losses are computed in at least
float32 and reduced to a scalar.

Edge cases (all tested): a loss is always finite, never NaN. A batch whose pixels are all
ignored gives exactly 0 with zero gradients (where `F.cross_entropy` returns NaN). A class
absent from the target, or never predicted, keeps every term finite.

Targets are not range-checked here (that would read values inside compiled steps): data
enters through `FolderDataset` / `shapes_batch`, which guarantee it, and
`funcml.seg.metrics.confusion_matrix` checks it at evaluation.
"""

from __future__ import annotations

import torch
from einops import rearrange

from ..checks import check_dtype
from ..errors import RangeError, ShapeError

__all__ = [
    "cross_entropy",
    "binary_cross_entropy",
    "soft_dice_loss",
    "binary_dice_loss",
    "ce_dice_loss",
    "bce_dice_loss",
]


def _check_pair(logits: torch.Tensor, target: torch.Tensor) -> None:
    """logits `[B, K, *S]` float, target `[B, *S]`."""
    if not isinstance(logits, torch.Tensor) or logits.dim() < 2:
        raise ShapeError(f"logits: expected shape [B, K, *S], got "
                         f"{list(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__}")
    check_dtype(logits, "float", name="logits")
    want = (logits.shape[0], *logits.shape[2:])
    if not isinstance(target, torch.Tensor) or tuple(target.shape) != want:
        got = list(target.shape) if isinstance(target, torch.Tensor) else type(target).__name__
        raise ShapeError(f"target: expected shape {list(want)} (logits {list(logits.shape)} without the class "
                         f"dim), got {got}")


def _valid(target: torch.Tensor, ignore_index: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(valid: bool like target, safe_target: target with ignored pixels set to class 0)."""
    if ignore_index is None:
        return torch.ones_like(target, dtype=torch.bool), target
    valid = target != ignore_index
    return valid, torch.where(valid, target, torch.zeros_like(target))


def _float(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _safe_div(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den where den > 0, else 0; finite gradients either way."""
    pos = den > 0
    return torch.where(pos, num / torch.where(pos, den, torch.ones_like(den)), torch.zeros_like(num))


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, *, class_weights: torch.Tensor | None = None,
                  ignore_index: int | None = None, label_smoothing: float = 0.0) -> torch.Tensor:
    """Weighted, label-smoothed cross-entropy, averaged over the non-ignored pixels.

    With `log p = log_softmax(logits)` over classes, weights `w` (default 1), smoothing `eps`
    and K classes, a pixel with target `y` costs

        l = (1 - eps) w_y (-log p_y) + (eps / K) sum_k w_k (-log p_k)

    and the loss is `sum_pixels l / sum_pixels w_y` (Szegedy et al., "Rethinking the Inception
    architecture", 2016, for the smoothing). This is `F.cross_entropy` with `reduction="mean"`
    (tested), except that a batch of only ignored pixels gives 0 instead of NaN.

    logits: `[B, K, *S]` float; target: `[B, *S]` int64; class_weights: `[K]`.
    """
    _check_pair(logits, target)
    check_dtype(target, "int", name="target")
    if not 0.0 <= label_smoothing <= 1.0:
        raise RangeError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    k = logits.shape[1]
    x = rearrange(_float(logits), "b k ... -> b k (...)")  # [B, K, P]
    valid, t = _valid(rearrange(target, "b ... -> b (...)"), ignore_index)  # [B, P]
    logp = x - torch.logsumexp(x, dim=1, keepdim=True)
    nll = -torch.gather(logp, 1, t[:, None]).squeeze(1)  # [B, P]
    v = valid.to(x.dtype)
    if class_weights is not None:
        if tuple(class_weights.shape) != (k,):
            raise ShapeError(f"class_weights: expected shape [{k}], got {list(class_weights.shape)}")
        wk = class_weights.to(device=x.device, dtype=x.dtype)
        w = wk[t] * v  # w_y per pixel, 0 where ignored
    else:
        wk, w = None, v
    loss = (1.0 - label_smoothing) * w * nll
    if label_smoothing > 0:
        smooth = -(logp * wk[None, :, None]).sum(1) if wk is not None else -logp.sum(1)
        loss = loss + (label_smoothing / k) * smooth * v
    return _safe_div(loss.sum(), w.sum())


def _binary_inputs(logits: torch.Tensor, target: torch.Tensor, ignore_index: int | None):
    """`(x, t, valid)`: float logits, targets as x's dtype with ignored pixels set to 0, and the
    valid-pixel mask (ignore_index applies to integer targets only)."""
    x, target = _binary_pair(logits, target)
    x = _float(x)
    if ignore_index is not None and not target.is_floating_point():
        valid = target != ignore_index
        return x, torch.where(valid, target, torch.zeros_like(target)).to(x.dtype), valid
    return x, target.to(x.dtype), torch.ones_like(target, dtype=torch.bool)


def binary_cross_entropy(logits: torch.Tensor, target: torch.Tensor, pos_weight: float | torch.Tensor | None = None,
                         ignore_index: int | None = None) -> torch.Tensor:
    """Sigmoid cross-entropy with a positive-class weight, averaged over non-ignored pixels.

    With `t` in [0, 1] and `s(x) = log(1 + exp(-x))` (computed stably as
    `log1p(exp(-|x|)) + max(-x, 0)`), a pixel costs

        l = -[pw t log sigmoid(x) + (1 - t) log(1 - sigmoid(x))] = (1 - t) x + (1 + (pw - 1) t) s(x)

    as `F.binary_cross_entropy_with_logits` (tested). An all-ignored batch gives 0.

    logits: `[B, 1, *S]` or `[B, *S]` float; target: `[B, *S]` int (0, 1 or ignore_index) or
    float in [0, 1].
    """
    x, t, valid = _binary_inputs(logits, target, ignore_index)
    softplus_neg = torch.log1p(torch.exp(-x.abs())) + (-x).clamp_min(0)  # log(1 + exp(-x))
    if pos_weight is None:
        weight = 1.0
    else:
        weight = 1.0 + (torch.as_tensor(pos_weight, dtype=x.dtype, device=x.device) - 1.0) * t
    loss = (1.0 - t) * x + weight * softplus_neg
    v = valid.to(x.dtype)
    return _safe_div((loss * v).sum(), v.sum())


def _binary_pair(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Accept logits `[B, 1, *S]` or `[B, *S]`; return logits `[B, *S]` and the target."""
    if isinstance(logits, torch.Tensor) and isinstance(target, torch.Tensor) and logits.dim() == target.dim() + 1:
        if logits.shape[1] != 1:
            raise ShapeError(f"logits: binary losses take one channel, expected shape [B, 1, *S], "
                             f"got {list(logits.shape)}")
        logits = logits[:, 0]
    if not isinstance(logits, torch.Tensor) or not isinstance(target, torch.Tensor) or logits.shape != target.shape:
        raise ShapeError(f"logits [B, 1, *S] or [B, *S] and target [B, *S] must agree, got "
                         f"{list(getattr(logits, 'shape', []))} and {list(getattr(target, 'shape', []))}")
    check_dtype(logits, "float", name="logits")
    return logits, target


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, *, ignore_index: int | None = None,
                   smooth: float = 1.0, exclude_background: bool = False, per_image: bool = False) -> torch.Tensor:
    """1 - mean soft Dice over classes (Milletari et al., "V-Net", 2016), with softmax probabilities.

    With `p = softmax(logits)` over classes, one-hot target `g` and the valid-pixel mask `v`,
    summed over the batch and pixels (or over the pixels of each image if `per_image`):

        I_k = sum p_k g_k v,   P_k = sum p_k v,   G_k = sum g_k v
        Dice_k = (2 I_k + smooth) / (P_k + G_k + smooth)
        loss = 1 - mean_{k present} Dice_k

    Convention: class `k` is *present* when it occurs in the target (`G_k > 0`) or in the
    prediction (`argmax` of the logits, on valid pixels). A class absent from both is left out
    of the mean: it has nothing to segment, and counting it (Dice ~ 1) would dilute the loss.
    A class in the target but never predicted, or predicted but not in the target, counts (its
    Dice is small, its gradient pulls toward the target). `exclude_background` also leaves out
    class 0. If no class is present (e.g. all pixels ignored) the loss is 0 with zero gradients.

    logits: `[B, K, *S]` float; target: `[B, *S]` int64. Returns a scalar.
    """
    _check_pair(logits, target)
    check_dtype(target, "int", name="target")
    k = logits.shape[1]
    x = rearrange(_float(logits), "b k ... -> b k (...)")  # [B, K, P]
    valid, t = _valid(rearrange(target, "b ... -> b (...)"), ignore_index)  # [B, P]
    classes = torch.arange(k, device=x.device)[None, :, None]  # [1, K, 1]
    v = valid[:, None]  # [B, 1, P]
    p = torch.softmax(x, dim=1) * v.to(x.dtype)
    g = ((t[:, None] == classes) & v).to(x.dtype)  # one-hot target, 0 where ignored
    predicted = (x.argmax(1, keepdim=True) == classes) & v
    dims = (2,) if per_image else (0, 2)
    inter, p_sum, g_sum = (p * g).sum(dims), p.sum(dims), g.sum(dims)  # [K] or [B, K]
    den = p_sum + g_sum + smooth
    dice = torch.where(den > 0, (2.0 * inter + smooth) / torch.where(den > 0, den, torch.ones_like(den)),
                       torch.ones_like(den))
    present = (g_sum > 0) | predicted.any(dim=dims)
    if exclude_background:
        present = present & (torch.arange(k, device=x.device) > 0)
    present = present.to(x.dtype)
    return _safe_div(((1.0 - dice) * present).sum(), present.sum())


def binary_dice_loss(logits: torch.Tensor, target: torch.Tensor, *, ignore_index: int | None = None,
                     smooth: float = 1.0, per_image: bool = False) -> torch.Tensor:
    """1 - soft Dice of the foreground, with sigmoid probabilities.

        Dice = (2 sum p g v + smooth) / (sum p v + sum g v + smooth),   p = sigmoid(logits)

    summed over the batch and pixels (or per image, then averaged, if `per_image`). An empty
    target with an empty prediction gives Dice near 1 through `smooth` (exactly 1 when all
    pixels are ignored, or when `smooth = 0` and both sums are 0), so the loss stays finite.

    logits: `[B, 1, *S]` or `[B, *S]` float; target: `[B, *S]` in {0, 1} (or ignore_index).
    """
    x, g, valid = _binary_inputs(logits, target, ignore_index)
    x, g, v = (rearrange(a, "b ... -> b (...)") for a in (x, g, valid.to(x.dtype)))
    p = torch.sigmoid(x) * v
    g = g * v
    dims = (1,) if per_image else (0, 1)
    inter, p_sum, g_sum = (p * g).sum(dims), p.sum(dims), g.sum(dims)
    den = p_sum + g_sum + smooth
    dice = torch.where(den > 0, (2.0 * inter + smooth) / torch.where(den > 0, den, torch.ones_like(den)),
                       torch.ones_like(den))
    return (1.0 - dice).mean()


def ce_dice_loss(logits: torch.Tensor, target: torch.Tensor, *, ce_weight: float = 1.0, dice_weight: float = 1.0,
                 class_weights: torch.Tensor | None = None, ignore_index: int | None = None,
                 label_smoothing: float = 0.0, smooth: float = 1.0, exclude_background: bool = False) -> torch.Tensor:
    """`ce_weight * cross_entropy + dice_weight * soft_dice_loss` (same contracts)."""
    ce = cross_entropy(logits, target, class_weights=class_weights, ignore_index=ignore_index,
                       label_smoothing=label_smoothing)
    dice = soft_dice_loss(logits, target, ignore_index=ignore_index, smooth=smooth,
                          exclude_background=exclude_background)
    return ce_weight * ce + dice_weight * dice


def bce_dice_loss(logits: torch.Tensor, target: torch.Tensor, *, bce_weight: float = 1.0, dice_weight: float = 1.0,
                  pos_weight: float | torch.Tensor | None = None, ignore_index: int | None = None,
                  smooth: float = 1.0) -> torch.Tensor:
    """`bce_weight * binary_cross_entropy + dice_weight * binary_dice_loss` (same contracts)."""
    bce = binary_cross_entropy(logits, target, pos_weight=pos_weight, ignore_index=ignore_index)
    dice = binary_dice_loss(logits, target, ignore_index=ignore_index, smooth=smooth)
    return bce_weight * bce + dice_weight * dice
