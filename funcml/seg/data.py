"""Segmentation data: the training batches, the validation split and the input normalization of a
`SegTrainConfig` (on the built-in shapes or a folder of images).

    for images01, masks in val_batches(cfg):   # the fixed validation split
        x = preprocess(images01, cfg)

On the built-in shapes, the batch of step t is a pure function of the data key and t:

    images01, masks = shapes_batch(fold_in(split_key(data_key, "train"), t), B, cfg.data)
    images01, masks = augment(fold_in(aug_key, t), images01, masks, cfg.augment)
    x = (images01 - mean) / std                                   # preprocess

so a run resumed at step k sees exactly the batches of the uninterrupted run. The validation
split is `shapes_batch(split_key(data_key, "val"), val_size, cfg.data)`, fixed by `data_seed`
(independent of the model's `seed`). With `folder=...` the examples come from a
`FolderDataset` (at native size, or `folder_size`): a fraction `val_fraction` of them,
chosen by a permutation from the data key, is held out for validation (`FolderSplit`), and the
training batches walk through epoch-wise permutations of the rest (`fold_in(data_key, epoch)`).
Keys: augmentation `fold_in(key(seed), "augment")`; data `key(data_seed)`.

The training batches of a run (augmented, sharded over processes) are built by
`funcml.seg.task.train_batch_fn`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import torch

from .. import random, trainer
from ..checks import check_dtype, check_shape
from ..errors import ConfigError, DataError
from .folder import FolderDataset
from .masks import check_mask_values, parse_class_map, scan_masks
from .patches import pad_to_canvas, sample_patches
from .shapes import shapes_batch, split_key
from .transforms import normalize

if TYPE_CHECKING:  # the config class is the task's; these functions only read its fields
    from .task import SegTrainConfig

__all__ = ["preprocess", "class_names", "data_key", "FolderSplit", "val_batches"]


def preprocess(images: torch.Tensor, cfg: SegTrainConfig) -> torch.Tensor:
    """Normalize images for the network: `images: [B, C, H, W]` float in [0, 1] ->
    `(images - mean[c]) / std[c]`, float32 `[B, C, H, W]` (C = `cfg.model.in_channels`)."""
    check_shape(images, "b c h w", name="images", c=cfg.model.in_channels)
    check_dtype(images, "float", name="images")
    mean, std = _stats(cfg)
    return normalize(images.to(torch.float32), mean, std)


def _stats(cfg: SegTrainConfig) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if cfg.mean is not None and cfg.std is not None:
        return cfg.mean, cfg.std
    if cfg.folder is not None:
        raise ConfigError("mean/std of a folder run are measured on its training images by resolve_config(cfg) "
                          "(train does it); pass --mean/--std or call funcml.seg.task.resolve_config first")
    c = cfg.model.in_channels
    return (0.5,) * c, (0.25,) * c


def class_names(cfg: SegTrainConfig) -> tuple[str, ...]:
    """The names of the K classes: the shapes' names, or `class_0..` for a folder dataset."""
    names = cfg.data.class_names
    if cfg.folder is None and len(names) == cfg.model.num_classes:
        return tuple(names)
    return tuple(f"class_{k}" for k in range(cfg.model.num_classes))


def data_key(cfg: SegTrainConfig) -> torch.Tensor:
    """The data key `key(data_seed)` (splits, patches, the folder's validation files)."""
    return random.key(cfg.data_seed)


def _is_grey(path: Path) -> bool:
    from .folder import open_image

    return open_image(path).mode in ("1", "L", "LA", "I", "I;16", "F")


class FolderSplit:
    """A folder dataset, loaded once into memory at its own size (or `folder_size`), split into
    train / val indices (`val_stems`, else a permutation from the data key). The training masks
    are scanned and checked first (`funcml.seg.masks`); with `report=True` the scan and any
    warnings are printed to stderr."""

    def __init__(self, cfg: SegTrainConfig, *, report: bool = False):
        assert cfg.folder is not None
        if not Path(cfg.folder).is_dir():
            raise DataError(f"--folder {cfg.folder} does not exist; pass a folder with images/ and masks/")
        k, class_map = cfg.model.num_classes, parse_class_map(cfg.class_map)

        def dataset(channels: int) -> FolderDataset:
            return FolderDataset(cfg.folder, num_classes=k, image_size=cfg.folder_size, class_map=class_map,
                                 ignore_index=cfg.ignore_index, channels=channels)

        ds = dataset(3)
        n = len(ds)
        if n < 2:
            raise DataError(f"{cfg.folder}: needs at least 2 examples (one to train on, one to validate), got {n}")
        if cfg.val_stems:
            unknown = [s for s in cfg.val_stems if s not in ds.stems]
            if unknown:
                raise DataError(f"--val-stems {unknown} are not files of {cfg.folder}/images (stems: "
                                f"{ds.stems[:5]}...)")
            val = torch.tensor([i for i, s in enumerate(ds.stems) if s in cfg.val_stems], dtype=torch.int64)
            train = torch.tensor([i for i, s in enumerate(ds.stems) if s not in cfg.val_stems], dtype=torch.int64)
            if len(train) == 0:
                raise DataError(f"--val-stems holds every file of {cfg.folder}; leave some to train on")
            self.val_idx, self.train_idx = val, train
        else:
            perm = random.permutation(random.fold_in(data_key(cfg), "folder_split"), n)
            n_val = min(n - 1, max(1, round(cfg.val_fraction * n)))
            self.val_idx, self.train_idx = perm[:n_val], perm[n_val:]
        train_masks = [ds.mask_paths[i] for i in self.train_idx.tolist()]
        scan = scan_masks(train_masks)
        warnings = check_mask_values(scan, num_classes=k, class_map=class_map, ignore_index=cfg.ignore_index,
                                     where=f"the training masks of {cfg.folder}")
        self.channels = cfg.image_channels or (
            1 if all(_is_grey(ds.image_paths[i]) for i in self.train_idx.tolist()) else 3)
        if self.channels != 3:
            ds = dataset(self.channels)
        if report:
            print(f"[seg] {scan.report(k, class_map, cfg.ignore_index)}", file=sys.stderr)
            for w in warnings:
                print(f"warning: {w}", file=sys.stderr)
        pairs = [ds[i] for i in range(n)]
        self.images = [p[0] for p in pairs]  # each [C, H_i, W_i] in [0, 1]
        self.masks = [p[1] for p in pairs]  # each [H_i, W_i]
        train_pixels = torch.cat([self.images[i].flatten(1) for i in self.train_idx.tolist()], dim=1)  # [C, P]
        self.mean = tuple(float(v) for v in train_pixels.mean(dim=1))
        self.std = tuple(max(float(v), 1e-3) for v in train_pixels.std(dim=1))
        patch = cfg.patch or (1, 1)
        self.canvas, self.canvas_masks, self.sizes = pad_to_canvas(
            [self.images[i] for i in self.train_idx.tolist()], [self.masks[i] for i in self.train_idx.tolist()],
            min_size=patch, ignore_index=cfg.ignore_index)
        self.key = split_key(data_key(cfg), "train")
        self.patch_key = random.fold_in(self.key, "patch")
        self.cfg = cfg

    def train_batch(self, step: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Example `g = step * B + i` is training image `g mod n` of the permutation of epoch `g // n`
        (`funcml.trainer.epoch_indices`); with `patch`, one patch of it (`sample_patches` with the key
        `fold_in(patch_key, step)`), else the whole image on the padded canvas."""
        idx = trainer.epoch_indices(self.key, len(self.train_idx), step, batch_size)
        images, masks = self.canvas[idx], self.canvas_masks[idx]
        if self.cfg.patch is None:
            return images, masks
        return sample_patches(random.fold_in(self.patch_key, step), images, masks, self.sizes[idx],
                              patch=self.cfg.patch, fg_fraction=self.cfg.fg_fraction,
                              ignore_index=self.cfg.ignore_index)

    def val_pairs(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The validation `(image [C, H, W] in [0, 1], mask [H, W])` pairs at their own sizes."""
        return [(self.images[i], self.masks[i]) for i in self.val_idx.tolist()]


def val_batches(train_cfg: SegTrainConfig, batch_size: int = 64) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The validation split in batches of `(images01 [b, C, H, W] in [0, 1], masks [b, H, W] int64)`:
    `val_size` shapes from `split_key(data_key, "val")`, or the held-out part of the folder."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if train_cfg.folder is not None:  # full images, consecutive ones of equal size batched together
        batch: list[tuple[torch.Tensor, torch.Tensor]] = []
        for image, mask in FolderSplit(train_cfg).val_pairs():
            if batch and (len(batch) == batch_size or image.shape != batch[0][0].shape):
                yield torch.stack([b[0] for b in batch]), torch.stack([b[1] for b in batch])
                batch = []
            batch.append((image, mask))
        if batch:
            yield torch.stack([b[0] for b in batch]), torch.stack([b[1] for b in batch])
        return
    else:
        images, masks = shapes_batch(split_key(data_key(train_cfg), "val"), train_cfg.val_size, train_cfg.data)
    for i in range(0, images.shape[0], batch_size):
        yield images[i:i + batch_size], masks[i:i + batch_size]
