"""Segmentation: data, transforms, U-Net and U-Net+Transformer, losses, metrics, training.

    python experiments/seg_train.py unet-transformer        # train (see funcml.seg.task.PRESETS)
    python experiments/seg_eval.py --run RUN                # evaluate a run or checkpoint
    python experiments/seg_infer.py --run RUN --input DIR   # masks and overlays
    python experiments/seg_train.py folder --folder DIR --class-map 0:1,255:0   # real images (docs/SEG_REAL_DATA.md)

    from funcml.seg import shapes_batch, ShapesConfig, split_key, ce_dice_loss, confusion_matrix
    images, masks = shapes_batch(split_key(key, "train"), 32, ShapesConfig())
    loss = ce_dice_loss(logits, masks, ignore_index=255)
    cm = confusion_matrix(logits.argmax(1), masks, num_classes=5, ignore_index=255)
    metrics_from_confusion(cm)["mean_iou"]

    mask = Segmenter.load(run)("photo.png")                  # a trained run, its preprocessing, any size
"""

from . import deform, folder, hybrid, intensity, losses, masks, metrics, patches, shapes, sliding, task, transforms, unet, viz
from .folder import FolderDataset, save_mask_png, write_example_folder
from .losses import (bce_dice_loss, binary_cross_entropy, binary_dice_loss, ce_dice_loss, cross_entropy,
                     soft_dice_loss)
from .metrics import SegMetrics, confusion_matrix, metrics_from_confusion, per_image_dice
from .shapes import Scene, ShapesConfig, draw_shape, render_scene, sample_scene, shapes_batch, split_key
from .hybrid import UNetTransformerConfig, apply_unet_transformer, init_unet_transformer
from .segmenter import Segmenter
from .task import PRESETS, SegTrainConfig, evaluate, load_model, predict, predict_full, resolve_config, train
from .masks import MaskScan, check_mask_values, parse_class_map, scan_masks
from .patches import pad_to_canvas, sample_patches
from .sliding import SlidingWindowConfig, gaussian_importance, sliding_window, window_starts
from .deform import random_warp
from .intensity import random_intensity
from .unet import UNetConfig, apply_unet, init_unet
from .viz import colorize, legend, overlay, overlay_grid, save_overlay_grid
from .transforms import (AugmentConfig, augment, hflip, normalize, pad_collate, random_crop, random_flip,
                         random_rot90, resize, rot90, vflip)

__all__ = [
    "Segmenter",
    "folder", "hybrid", "losses", "metrics", "shapes", "task", "transforms", "unet", "viz",
    "deform", "intensity", "masks", "patches", "sliding",
    "predict_full", "resolve_config", "MaskScan", "check_mask_values", "parse_class_map", "scan_masks",
    "pad_to_canvas", "sample_patches", "SlidingWindowConfig", "gaussian_importance", "sliding_window",
    "window_starts", "random_warp", "random_intensity",
    "UNetConfig", "init_unet", "apply_unet", "UNetTransformerConfig", "init_unet_transformer",
    "apply_unet_transformer", "SegTrainConfig", "PRESETS", "train", "evaluate", "load_model", "predict",
    "colorize", "legend", "overlay", "overlay_grid", "save_overlay_grid",
    "ShapesConfig", "Scene", "shapes_batch", "sample_scene", "render_scene", "draw_shape", "split_key",
    "FolderDataset", "save_mask_png", "write_example_folder",
    "AugmentConfig", "augment", "resize", "normalize", "hflip", "vflip", "random_flip", "random_crop",
    "rot90", "random_rot90", "pad_collate",
    "soft_dice_loss", "binary_dice_loss", "cross_entropy", "binary_cross_entropy", "ce_dice_loss",
    "bce_dice_loss",
    "confusion_matrix", "metrics_from_confusion", "per_image_dice", "SegMetrics",
]
