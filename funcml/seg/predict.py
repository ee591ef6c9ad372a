"""Prediction and evaluation with a trained segmentation model: eval mode, no gradients.

    pred, probs = predict(params, model_state, model_cfg, preprocess(images01, cfg))
    pred, probs = predict_full(params, model_state, model_cfg, x, cfg)     # sliding windows for patch runs
    metrics = evaluate(params, model_state, model_cfg, val_batches(cfg), cfg)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable

import torch

from .. import devices
from ..checks import check_dtype, check_shape
from ..errors import ConfigError
from ..nn import model as models
from .data import class_names, preprocess
from .metrics import confusion_matrix, metrics_from_confusion, per_image_dice
from .sliding import SlidingWindowConfig, sliding_window
from .unet import UNetConfig

if TYPE_CHECKING:
    from .task import SegTrainConfig

__all__ = ["predict", "predict_full", "evaluate"]

PyTree = Any


def predict(params: PyTree, model_state: PyTree, model_cfg: UNetConfig, images_normalized: torch.Tensor, *,
            batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode prediction, without gradients, in batches of `batch_size`.

    images_normalized: `[B, C, H, W]` float (after `preprocess`), C = `model_cfg.in_channels`.
    Returns `pred: [B, H, W]` int64 (argmax class) and `probs: [B, K, H, W]` float32 (softmax).
    The model runs on the params' device (`funcml.devices.of`); the results come back on the images' device.
    """
    check_shape(images_normalized, "b c h w", name="images_normalized", c=model_cfg.in_channels)
    check_dtype(images_normalized, "float", name="images_normalized")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    preds, probs = [], []
    home, device = images_normalized.device, devices.of(params)
    with torch.no_grad():
        for i in range(0, images_normalized.shape[0], batch_size):
            x = devices.put(images_normalized[i:i + batch_size], device)
            logits, _ = models.apply(params, model_state, x, model_cfg, train=False)
            p = torch.softmax(logits.float(), dim=1)  # [b, K, H, W]
            probs.append(p)
            preds.append(p.argmax(dim=1).to(torch.int64))
    if not preds:
        h, w = images_normalized.shape[-2:]
        return (torch.zeros(0, h, w, dtype=torch.int64, device=home),
                torch.zeros(0, model_cfg.num_classes, h, w, dtype=torch.float32, device=home))
    return torch.cat(preds).to(home), torch.cat(probs).to(home)


def predict_full(params: PyTree, model_state: PyTree, model_cfg: UNetConfig, images_normalized: torch.Tensor,
                 train_cfg: SegTrainConfig, *, sliding: SlidingWindowConfig | None = None,
                 window: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Predict full images `[B, C, H, W]` (after `preprocess`) -> `(pred [B, H, W], probs [B, K, H, W])`.

    A run trained on patches (`train_cfg.patch`, or an explicit `window`) predicts by overlapping
    windows of that size blended with a Gaussian importance map (`funcml.seg.sliding`; settings
    `sliding`, default `train_cfg.sliding`); otherwise the whole image goes through the model at once
    (`predict`). This is the one path of `evaluate`, `seg_eval.py` and `seg_infer.py`. The model runs on
    the params' device; the results come back on the images' device.
    """
    window = window or train_cfg.patch
    if window is None:
        return predict(params, model_state, model_cfg, images_normalized)
    check_shape(images_normalized, "b c h w", name="images_normalized", c=model_cfg.in_channels)
    check_dtype(images_normalized, "float", name="images_normalized")
    sw = sliding or train_cfg.sliding

    def probs_fn(x: torch.Tensor) -> torch.Tensor:
        logits, _ = models.apply(params, model_state, x, model_cfg, train=False)
        return torch.softmax(logits.float(), dim=1)

    home = images_normalized.device
    with torch.no_grad():
        probs = sliding_window(probs_fn, devices.put(images_normalized, devices.of(params)), window=window,
                               overlap=sw.overlap, sigma_scale=sw.sigma_scale, batch_size=sw.batch_size, tta=sw.tta)
    return probs.argmax(dim=1).to(torch.int64).to(home), probs.to(home)


def _nan_list(x: torch.Tensor) -> list[float]:
    return [float(v) for v in x.tolist()]


def evaluate(params: PyTree, model_state: PyTree, model_cfg: UNetConfig,
             batches: Iterable[tuple[torch.Tensor, torch.Tensor]], train_cfg: SegTrainConfig, *,
             ignore_index: int | None = None, sliding: SlidingWindowConfig | None = None) -> dict[str, Any]:
    """Dataset-level metrics of the model on `batches` of `(images01 [B, C, H, W] in [0, 1], masks [B, H, W])`.

    Pixels are pooled over all batches into one confusion matrix (`funcml.seg.metrics`), so
    IoU_k = TP_k / (TP_k + FP_k + FN_k) and Dice_k = 2 TP_k / (2 TP_k + FP_k + FN_k) are
    computed once from the totals; classes absent from both prediction and target are NaN and
    left out of the means. `per_image_dice[i]` is image i's Dice averaged over the classes
    present in its prediction or target.

    Returns `per_class_iou`, `per_class_dice` (lists of K floats), `mean_iou`, `mean_dice`,
    `pixel_accuracy` (floats), `per_image_dice` (list), `class_names`, `num_images`. The batches are put on
    the params' device, where the model and the metrics run.
    """
    k = model_cfg.num_classes
    ignore_index = train_cfg.ignore_index if ignore_index is None else ignore_index
    device = devices.of(params)
    cm = torch.zeros(k, k, dtype=torch.int64, device=device)
    image_dice: list[float] = []
    for images, masks in batches:
        images, masks = devices.put((images, masks), device)
        pred, _ = predict_full(params, model_state, model_cfg, preprocess(images, train_cfg), train_cfg,
                               sliding=sliding)
        check_shape(masks, "b h w", name="masks", b=pred.shape[0], h=pred.shape[1], w=pred.shape[2])
        cm = cm + confusion_matrix(pred, masks, k, ignore_index=ignore_index)
        image_dice += _nan_list(torch.nanmean(per_image_dice(pred, masks, k, ignore_index), dim=1))
    m = metrics_from_confusion(cm)
    return {
        "class_names": list(class_names(train_cfg)),
        "per_class_iou": _nan_list(m["iou"]),
        "per_class_dice": _nan_list(m["dice"]),
        "mean_iou": float(m["mean_iou"]),
        "mean_dice": float(m["mean_dice"]),
        "pixel_accuracy": float(m["pixel_accuracy"]),
        "per_image_dice": image_dice,
        "num_images": len(image_dice),
    }
