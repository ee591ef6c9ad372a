"""Segmentation as a task: the training config, presets, training and loading (data, prediction and evaluation
re-exported from `funcml.seg.data` and `funcml.seg.predict`).

    python experiments/seg_train.py unet-transformer            # a preset (see PRESETS)
    python experiments/seg_train.py unet --steps 2000 --lr 1e-3

    run, summary = train(cfg)                                     # run dir + fit summary
    cfg, model_cfg, params, model_state = load_model(run.path)    # the best checkpoint
    metrics = evaluate(params, model_state, model_cfg, val_batches(cfg), cfg)

Everything else goes through the core: models from `funcml.nn.model` (`UNetConfig`,
`UNetTransformerConfig`) and the run orchestration `funcml.trainer` (the shared `TrainConfig`
fields, AdamW with warmup + cosine decay, the one loop `funcml.train.fit`, checkpoints ranked by
val/miou, resume, curves, Ctrl-C). This module brings the data, the loss `ce_dice_loss` and the
metrics.

Data (`funcml.seg.data`): shapes generated from the data key per step, or a folder of images
split into training and validation files; prediction and evaluation: `funcml.seg.predict`.
Both are re-exported here.

Keys: `root = key(seed)`; init `fold_in(root, "init")`, train-step `fold_in(root, "train")`
(the step derives `fold_in(., step)`), augmentation `fold_in(root, "augment")`; data
`key(data_seed)`.

Data parallel (`torchrun --standalone --nproc-per-node W experiments/seg_train.py ...`, see
docs/DISTRIBUTED.md): `train` joins the process group, each rank draws its own B/W examples
of step t from the rank-folded keys `shard_key(train_key)` and `shard_key(aug_key)` (a folder
dataset: rows `[r B/W, (r+1) B/W)` of step t's global batch), the grads are averaged, and
only rank 0 writes the run directory. One process is unchanged (`shard_key` is then the identity).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any, Union

import torch
from tyro.conf import subcommand

from .. import devices, random
from ..config import require, require_at_least
from ..errors import ConfigError
from ..nn import model as models
from ..runs import RunDir
from ..train import distributed
from ..trainer import Task, TrainConfig, check_global_batch, load_run, optimizer, train_task
from .data import FolderSplit, class_names, data_key, preprocess, val_batches
from .hybrid import UNetTransformerConfig
from .losses import ce_dice_loss
from .predict import evaluate, predict, predict_full
from .shapes import ShapesConfig, shapes_batch, split_key
from .masks import parse_class_map
from .sliding import SlidingWindowConfig
from .transforms import AugmentConfig, augment
from .unet import UNetConfig

__all__ = ["SegTrainConfig", "PRESETS", "preprocess", "train", "load_model", "predict", "predict_full", "evaluate",
           "val_batches", "class_names", "make_optimizer", "make_loss_fn", "resolve_config", "train_batch_fn", "IGNORE_INDEX",
           "TASK"]

IGNORE_INDEX = 255
PyTree = Any

ModelConfig = Union[Annotated[UNetConfig, subcommand("unet")],
                    Annotated[UNetTransformerConfig, subcommand("unet-transformer")]]


@dataclasses.dataclass(frozen=True)
class SegTrainConfig(TrainConfig, steps=1000, lr=3e-3, weight_decay=1e-4, warmup_steps=50, grad_clip=1.0,
                     eval_every=100, experiment="seg"):
    """Train a U-Net or U-Net+Transformer for semantic segmentation on shapes or a folder of images (see funcml.seg.task)."""

    model: ModelConfig = UNetTransformerConfig()
    """The network (subcommand model:unet or model:unet-transformer)."""
    data: ShapesConfig = ShapesConfig()
    """The synthetic shapes distribution (unused with --folder)."""
    folder: Path | None = None
    """Train on a folder of images/ + masks/ with matching stems instead of shapes (docs/SEG_REAL_DATA.md)."""
    ce_weight: float = 1.0
    """Weight of the cross-entropy term of the loss."""
    dice_weight: float = 1.0
    """Weight of the soft Dice term of the loss."""
    val_size: int = 256
    """Images in the shapes validation split."""
    augment: AugmentConfig = AugmentConfig(hflip_p=0.5)
    """Random crop / flips / rot90 / photometric, and the real-image warps and intensity transforms."""
    mean: tuple[float, ...] | None = None
    """Per-channel normalization mean of images in [0, 1] (None: 0.5 on shapes, measured on a folder's training images)."""
    std: tuple[float, ...] | None = None
    """Per-channel normalization std (None: 0.25 on shapes, measured on a folder's training images)."""
    val_fraction: float = 0.2
    """The held-out fraction of a folder dataset (unless --val-stems)."""
    class_map: str = ""
    """Folder masks: raw mask value -> class id, e.g. `0:1,255:0` (empty: the raw values are the class ids)."""
    ignore_index: int = 255
    """Mask value of unlabelled pixels, left out of the loss and the metrics (-1: none)."""
    folder_size: tuple[int, int] | None = None
    """Resize folder images to (h, w) (bilinear; masks nearest); None keeps every file's own size."""
    patch: tuple[int, int] | None = None
    """Folder data: train on random (h, w) patches of the full images and predict full images by sliding
    windows of this size; None: train on whole images (padded to the largest)."""
    fg_fraction: float = 0.0
    """Share of training patches centred on a foreground pixel (class >= 1); nnU-Net uses 1/3."""
    image_channels: int = 0
    """Folder images: 1 (grey) or 3 (RGB); 0 = from the training images (1 if all are grey); sets model.in_channels."""
    val_stems: tuple[str, ...] = ()
    """Folder data: the file stems held out for validation (default: a random `val_fraction` of the files)."""
    sliding: SlidingWindowConfig = SlidingWindowConfig()
    """Sliding-window prediction of full images (with `patch`): overlap, Gaussian blending, batch, flip TTA."""

    def __post_init__(self) -> None:
        super().__post_init__()  # the shared fields
        require(isinstance(self.model, UNetConfig), self,
                f"model must be a UNetConfig or UNetTransformerConfig, got {type(self.model).__name__}")
        require_at_least(self, 1, "val_size")
        require(self.ce_weight >= 0 and self.dice_weight >= 0 and self.ce_weight + self.dice_weight > 0, self,
                f"ce_weight and dice_weight must be >= 0 with a positive sum, got {self.ce_weight}, {self.dice_weight}")
        require(0.0 < self.val_fraction < 1.0, self, f"val_fraction must be in (0, 1), got {self.val_fraction}")
        c = self.model.in_channels
        require((self.mean is None) == (self.std is None), self,
                f"give both mean and std or neither, got mean={self.mean}, std={self.std}")
        if self.mean is not None and self.std is not None:
            if self.folder is None or self.image_channels:
                require(len(self.mean) == c and len(self.std) == c, self,
                        f"mean and std need one value per input channel (model.in_channels={c}), got mean={self.mean}, "
                        f"std={self.std}")
            require(all(s > 0 for s in self.std), self, f"std must be > 0 per channel, got {self.std}")
        parse_class_map(self.class_map)  # a malformed map fails when the config is made
        require(self.image_channels in (0, 1, 3), self,
                f"image_channels must be 0 (from the images), 1 or 3, got {self.image_channels}")
        require(0.0 <= self.fg_fraction <= 1.0, self, f"fg_fraction must be in [0, 1], got {self.fg_fraction}")
        for name in ("patch", "folder_size"):
            v = getattr(self, name)
            require(v is None or (len(v) == 2 and min(v) >= 1), self, f"{name} must be (h, w) >= 1 or None, got {v}")
        if self.folder is None:  # the `folder` preset sets patch before --folder is given: checked at train start
            require(self.folder_size is None and not self.class_map and not self.val_stems, self,
                    "folder_size, class_map and val_stems apply to --folder data; on shapes use --data.height/--data.width")
            require(self.data.channels == c, self,
                    f"data.channels={self.data.channels} but model.in_channels={c}; make them equal")
            require(self.data.num_classes == self.model.num_classes, self,
                    f"the shapes data has {self.data.num_classes} classes {list(self.data.class_names)} but "
                    f"model.num_classes={self.model.num_classes}; make them equal")


# The main job's data (issue 17): 32x32 images with 1-3 shapes, rotated, overlapping (0.3), an occluding
# patch (0.2) and imbalanced kinds (circle 3 : square 1 : triangle 1 : ellipse 2). Width 12 x 3200 steps is
# the best of the widths and step counts tried within the 4-minute budget (measured: benchmarks/RESULTS.md, "Measurements behind the presets and design choices").
_MAIN_DATA = ShapesConfig(height=32, width=32, objects=(1, 3), size=(0.2, 0.35), rotate=True, overlap_prob=0.3,
                          occlusion_prob=0.2, class_weights=(3.0, 1.0, 1.0, 2.0))
_MAIN_STEPS = 3200


def _preset_unet_transformer() -> SegTrainConfig:
    return SegTrainConfig(
        model=UNetTransformerConfig(in_channels=3, num_classes=5, depth=3, base_width=12, num_layers=2, num_heads=4),
        data=_MAIN_DATA, steps=_MAIN_STEPS, batch_size=16, lr=5e-3, warmup_steps=50, eval_every=500,
        experiment="seg-unet-transformer")


def _preset_unet() -> SegTrainConfig:
    return SegTrainConfig(model=UNetConfig(in_channels=3, num_classes=5, depth=3, base_width=12), data=_MAIN_DATA,
                          steps=_MAIN_STEPS, batch_size=16, lr=5e-3, warmup_steps=50, eval_every=500,
                          experiment="seg-unet")


# Real images (the EM membranes of benchmarks/seg_real.py): native resolution, 128x128 patches, a third of
# them centred on foreground, flips + rotation + scaling + elastic deformation + intensity transforms,
# sliding-window validation with flip TTA; channels and mean/std from the training images.
# Width 8 x 1500 steps was chosen on a validation split of the 15 training slices: it trades width for ~2.5x
# the steps of width 16 in the same 6 minutes; the heavy augmentation is kept for other data (measured:
# benchmarks/RESULTS.md, "Measurements behind the presets and design choices").
_REAL_AUGMENT = AugmentConfig(hflip_p=0.5, vflip_p=0.5, rot90=True, rotate_p=0.3, rotate_deg=45.0, scale_p=0.3,
                              scale=(0.85, 1.2), elastic_p=0.3, elastic_sigma=8.0, elastic_grid=4, noise_p=0.15,
                              noise_std=0.05, blur_p=0.15, blur_sigma=(0.5, 1.0), gamma_p=0.3, gamma=(0.7, 1.5),
                              brightness=0.1, brightness_p=0.3, contrast=0.25, contrast_p=0.3)


def _preset_folder() -> SegTrainConfig:
    # data: a 1-channel binary shapes config matching the model until --folder replaces it (then unused)
    return SegTrainConfig(model=UNetConfig(in_channels=1, num_classes=2, depth=4, base_width=8),
                          data=ShapesConfig(channels=1, classes=("circle",), mode="binary"), steps=1500,
                          batch_size=8, lr=3e-3, warmup_steps=50, eval_every=1500, patch=(128, 128),
                          fg_fraction=1 / 3, augment=_REAL_AUGMENT, sliding=SlidingWindowConfig(tta=True),
                          experiment="seg-folder")


def _preset_tiny() -> SegTrainConfig:
    return SegTrainConfig(
        model=UNetTransformerConfig(in_channels=3, num_classes=5, depth=2, base_width=4, num_layers=1, num_heads=2,
                                    groups=4),
        data=ShapesConfig(height=16, width=16, objects=(1, 2), size=(0.2, 0.35)),
        steps=20, batch_size=8, lr=1e-2, warmup_steps=2, eval_every=10, val_size=16, experiment="seg-tiny")


PRESETS: dict[str, tuple[str, SegTrainConfig]] = {
    "unet-transformer": (
        "python experiments/seg_train.py unet-transformer  -- U-Net (width 12) with a 2-layer transformer "
        "bottleneck on 32x32 rotated, overlapping, occluded, imbalanced shapes (the main job's model)",
        _preset_unet_transformer()),
    "unet": (
        "python experiments/seg_train.py unet  -- the plain U-Net baseline on the same data", _preset_unet()),
    "folder": (
        "python experiments/seg_train.py folder --folder DIR --class-map 0:1,255:0  -- real images at native "
        "resolution: 128x128 patches (1/3 foreground-centred), elastic/rotation/scale/intensity augmentation, "
        "sliding-window + flip-TTA validation; a width-8 U-Net, 2 classes, grey or RGB detected", _preset_folder()),
    "tiny": (
        "python experiments/seg_train.py tiny  -- a seconds-long smoke run (16x16, depth 2, width 4, 1 layer)",
        _preset_tiny()),
}


# --------------------------------------------------------------------------- training


make_optimizer = optimizer  # the core's: clip, then AdamW with warmup + cosine decay over `steps`


def resolve_config(cfg: SegTrainConfig) -> SegTrainConfig:
    """The config with what the data decides filled in: on a folder, the image channels
    (`image_channels`, `model.in_channels`) and `mean` / `std` measured on the training images;
    on shapes the config itself (unset mean / std mean 0.5 / 0.25 per channel). Prints the training
    masks' scan."""
    if cfg.folder is None:
        if cfg.patch is not None:
            raise ConfigError("patch applies to --folder data (the `folder` preset needs --folder DIR); on shapes use "
                              "--augment.crop")
        return cfg
    f = FolderSplit(cfg, report=distributed.is_main())
    model = dataclasses.replace(cfg.model, in_channels=f.channels)
    if cfg.mean is not None and cfg.std is not None:
        if len(cfg.mean) != f.channels or len(cfg.std) != f.channels:
            raise ConfigError(f"--mean/--std need one value per image channel ({f.channels}), got mean={cfg.mean}, "
                              f"std={cfg.std}")
        return dataclasses.replace(cfg, model=model, image_channels=f.channels)
    return dataclasses.replace(cfg, model=model, image_channels=f.channels, mean=f.mean, std=f.std)


def train_batch_fn(cfg: SegTrainConfig, device: torch.device | str = "cpu"):
    """`get_batch(step) -> (x normalized [b, C, H, W], masks [b, H, W])` on `device`, a pure function of
    the step: this rank's `b = B / W` examples (W processes; `b = B` in one). Shapes are rendered and
    augmented on `device` (the few scene parameters are drawn on the host); folder patches are cut on
    the host and put there. The bits are the same on every device."""
    device = torch.device(device)
    world = check_global_batch(cfg.batch_size)
    aug_key = distributed.shard_key(random.fold_in(random.key(cfg.seed), "augment"))
    folder = FolderSplit(cfg) if cfg.folder is not None else None
    train_key = distributed.shard_key(split_key(data_key(cfg), "train"))

    def get_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        if folder is not None:
            images, masks = devices.put(distributed.shard(folder.train_batch(step, cfg.batch_size)),  # same key on
                                        device)                                                    # every rank
        else:
            images, masks = shapes_batch(random.fold_in(train_key, step), cfg.batch_size // world, cfg.data,
                                         device=device)
        images, masks = augment(random.fold_in(aug_key, step), images, masks, cfg.augment)
        return preprocess(images, cfg), masks

    return get_batch



def make_loss_fn(cfg: SegTrainConfig):
    """The training loss `loss_fn(params, model_state, batch, key) -> (loss, ({}, model_state))`:
    `ce_weight * CE + dice_weight * soft Dice` of the model's logits in train mode, on
    `batch = (x normalized [B, C, H, W], masks [B, H, W])` (`cfg.ignore_index` pixels left out)."""

    def loss_fn(params, model_state, batch, key):
        x, masks = batch
        logits, model_state = models.apply(params, model_state, x, cfg.model, key=key, train=True)
        loss = ce_dice_loss(logits, masks, ce_weight=cfg.ce_weight, dice_weight=cfg.dice_weight,
                            ignore_index=cfg.ignore_index)
        return loss, ({}, model_state)

    return loss_fn


_RESUME_FIELDS = ("model", "data", "folder", "seed", "data_seed", "mean", "std", "augment", "class_map", "ignore_index",
                  "folder_size", "patch", "fg_fraction", "val_stems")
TASK = Task("seg", SegTrainConfig, best_metric="val/miou", mode="max", resume_fields=_RESUME_FIELDS,
            curves=(("loss", "train", "loss", "train loss (CE + Dice)"), ("val_miou", "val", "val/miou", "val mean IoU")))
"""Segmentation in the run orchestration (`funcml.trainer`): checkpoints ranked by val/miou."""


def train(cfg: SegTrainConfig, *, progress: bool = True) -> tuple[RunDir, dict[str, Any]]:
    """Train `cfg.model` on shapes (or `cfg.folder`) with `funcml.trainer.train_task`; returns the run and a summary.

    The run directory gets config.json (with the channels and mean/std `resolve_config` measured),
    env.json, metrics.csv/jsonl (train loss every 10 steps, `val/miou`, `val/mdice`,
    `val/pixel_acc` every `eval_every` steps and at the end), checkpoints/ (the best by val/miou and
    the last `keep_last`), plots/loss.png, plots/val_miou.png, summary.json (the loop's) and
    eval.json (`evaluate` of the checkpoint `load_model` picks, on the validation split). With
    `cfg.resume` the same run directory is continued from its latest checkpoint; Ctrl-C saves a
    checkpoint and raises `TrainingInterrupted` naming the resume command.

    Under torchrun every rank trains on its shard; rank 0 alone writes the run directory and
    the others return the same `run` with the loop's summary.
    """
    distributed.init_from_env()  # under torchrun: join the process group (a no-op in one process)
    cfg = resolve_config(cfg)  # channels and mean/std from the data: saved in config.json

    def validate(params, model_state, val) -> dict[str, float]:
        m = evaluate(params, model_state, cfg.model, val, cfg)
        return {"val/miou": m["mean_iou"], "val/mdice": m["mean_dice"], "val/pixel_acc": m["pixel_accuracy"]}

    return train_task(TASK, cfg, data=lambda device: (train_batch_fn(cfg, device), list(val_batches(cfg))),
                      loss_fn=make_loss_fn(cfg), validate=validate,
                      report=lambda params, model_state, val, run: evaluate(params, model_state, cfg.model, val, cfg),
                      progress=progress)


# --------------------------------------------------------------------------- loading


def load_model(path: str | Path, *, device: torch.device | str = "cpu"
               ) -> tuple[SegTrainConfig, UNetConfig, PyTree, PyTree]:
    """Load `(train_cfg, model_cfg, params, model_state)` from a run directory (its best
    checkpoint by val/miou, else its latest) or from one checkpoint directory (`step_*`)
    (`funcml.trainer.load_run`), on `device` (wherever the run was trained).

    Names, shapes and dtypes are checked against a freshly initialized model of the saved
    config; a wrong path is a `DataError`, a missing or corrupt checkpoint a `CheckpointError`.
    """
    cfg, ts, _ = load_run(TASK, path, device=device)
    return cfg, cfg.model, ts.params, ts.model_state
