"""Segment images with a trained run in one call: the run's own preprocessing, any image size.

    seg = Segmenter.load("runs/seg-unet-transformer/20260101-120000-abc12300")
    mask = seg("photo.png")                   # [H, W] int64 class ids, the image's own size
    mask = seg(image)                         # image: [C, H, W] or [H, W] float in [0, 1]
    p = seg.probs(image)                      # [K, H, W] float32, mask == p.argmax(0)
    seg.export("seg.pt2")                     # the pure apply, torch.export (funcml.export)

`load` reads the run's best checkpoint by val/miou (else its latest; or the checkpoint directory
given) with `funcml.seg.task.load_model`, and every call does what the training and
`funcml.seg.task.evaluate` did to an image:

    x = (image - mean[c]) / std[c]            # task.preprocess: the run's channels, mean and std
    probs = predict_full(x)                   # task.predict_full: softmax of the logits

At which size. A run trained on patches (`patch`, e.g. the `folder` preset) predicts every image
at its own size by overlapping windows of the patch size, blended with a Gaussian importance map
(`funcml.seg.sliding`, the run's `sliding` settings unless `sliding=` is given). A folder run
trained on whole images at their own size does the same without windows (the model pads H and W
up to a multiple of `2^depth`). Other runs learned their scales at one size, `input_size` (the
shapes' `data.height x data.width`, or a folder run's `folder_size`): an image of another size
is resized to it (bilinear, half-pixel centres, as `funcml.seg.transforms.resize`), predicted,
and the probabilities are brought back to the image's size by nearest neighbour (each output
pixel takes the model pixel under its centre), as `experiments/seg_infer.py` does, so the mask
always has the input's size and `mask == probs.argmax(0)`.

Inputs. A path (str or os.PathLike) is read with `funcml.seg.folder.read_image` in the run's
channels (grey files are repeated to RGB for an RGB model, 16-bit files divided by 65535); a
tensor is `[C, H, W]` with C the run's channels, or `[H, W]` (a grey image, repeated to C
channels), float in [0, 1] or uint8 (divided by 255). A list of either segments each in turn and
returns a list. Mistakes raise funcml.errors types naming the value: a wrong channel count
(ShapeError), values outside [0, 1] or non-finite (RangeError / NonFiniteError), a file that does
not exist or cannot be read (DataError), a run without checkpoints (CheckpointError).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Sequence, Union

import torch
import torch.nn.functional as F

from .. import devices
from ..checks import check_finite, check_range
from ..errors import ConfigError, DataError, DTypeError, ShapeError
from .folder import read_image
from .sliding import SlidingWindowConfig
from .task import SegTrainConfig, class_names, load_model, predict_full, preprocess
from .unet import UNetConfig

__all__ = ["Segmenter", "input_size"]

PyTree = Any
Image = Union[str, os.PathLike, torch.Tensor]


def input_size(train_cfg: SegTrainConfig) -> tuple[int, int] | None:
    """The `(h, w)` a run's model sees whole images at, or None when it predicts every image at its
    own size (a patch-trained run: sliding windows; a folder run trained at the files' own sizes)."""
    if train_cfg.patch is not None:
        return None
    if train_cfg.folder is not None:
        return tuple(train_cfg.folder_size) if train_cfg.folder_size is not None else None
    return (train_cfg.data.height, train_cfg.data.width)


class Segmenter:
    """A trained segmentation model with its preprocessing: `seg(image) -> [H, W] int64 class ids`.

    Build it with `Segmenter.load(run)`, or from what `funcml.seg.task.load_model` returns:
    `Segmenter(train_cfg, params, model_state)`. Immutable; calls never change it.
    """

    def __init__(self, train_cfg: SegTrainConfig, params: PyTree, model_state: PyTree, *,
                 sliding: SlidingWindowConfig | None = None):
        self.train_cfg = train_cfg
        self.params = params
        self.model_state = model_state
        self.sliding = sliding if sliding is not None else train_cfg.sliding

    @classmethod
    def load(cls, run: str | os.PathLike, *, sliding: SlidingWindowConfig | None = None,
             tta: bool | None = None, device: str | torch.device = "cpu") -> "Segmenter":
        """Load a run directory (its best checkpoint by val/miou, else its latest) or one checkpoint
        directory (`.../checkpoints/step_*`). `sliding` replaces the run's sliding-window settings
        (patch-trained runs); `tta=True` adds flip test-time augmentation to them (4x compute);
        `device` (a torch device or a `--device` name: auto, cpu, cuda, cuda:N) is where the model
        runs (results come back on the CPU).
        Raises DataError for a path that does not exist, CheckpointError for a run without a
        usable checkpoint."""
        path = Path(run)
        if not path.exists():
            raise DataError(f"Segmenter.load: {path} does not exist; pass a run directory (runs/<experiment>/"
                            "<time>-<id>) or one of its checkpoints/step_* directories")
        where = devices.resolve(device) if isinstance(device, str) else torch.device(device)
        train_cfg, _, params, model_state = load_model(path, device=where)
        sw = sliding if sliding is not None else train_cfg.sliding
        if tta is not None:
            sw = dataclasses.replace(sw, tta=tta)
        return cls(train_cfg, params, model_state, sliding=sw)

    @property
    def device(self) -> torch.device:
        """Where the model runs (its params' device)."""
        return devices.of(self.params)

    @property
    def model_cfg(self) -> UNetConfig:
        """The model's config (a `UNetConfig` or `UNetTransformerConfig`)."""
        return self.train_cfg.model

    @property
    def channels(self) -> int:
        """Input channels the model takes (1 grey, 3 RGB)."""
        return self.model_cfg.in_channels

    @property
    def num_classes(self) -> int:
        """K, the number of classes (ids `0..K-1`)."""
        return self.model_cfg.num_classes

    @property
    def class_names(self) -> tuple[str, ...]:
        """The K class names (the shapes' names, or `class_0..` for a folder run)."""
        return class_names(self.train_cfg)

    @property
    def input_size(self) -> tuple[int, int] | None:
        """`(h, w)` images are resized to before the model, or None (predicted at their own size)."""
        return input_size(self.train_cfg)

    # ------------------------------------------------------------------ inputs

    def image(self, image: Image) -> torch.Tensor:
        """An input as the model's `[C, H, W]` float32 in [0, 1] (see the module doc for what is accepted)."""
        if isinstance(image, (str, os.PathLike)):
            path = Path(image)
            if not path.is_file():
                raise DataError(f"{path}: no such image file; pass an image path (.png, .jpg, .jpeg) or a "
                                "[C, H, W] tensor")
            return read_image(path, self.channels)
        if not isinstance(image, torch.Tensor):
            raise DataError(f"image: expected a path or a [C, H, W] / [H, W] tensor, got {type(image).__name__}")
        if image.dtype == torch.uint8:
            image = image.to(torch.float32) / 255.0
        elif not image.is_floating_point():
            raise DTypeError(f"image: expected float values in [0, 1] or uint8, got {image.dtype}")
        if image.dim() == 2:
            image = image.unsqueeze(0).expand(self.channels, -1, -1)
        if image.dim() != 3 or image.shape[0] != self.channels:
            raise ShapeError(f"image: expected [C, H, W] with C={self.channels} (the run's channels) or [H, W], "
                             f"got {list(image.shape)}")
        if image.shape[1] < 1 or image.shape[2] < 1:
            raise ShapeError(f"image: H and W must be >= 1, got {list(image.shape)}")
        check_finite(image, name="image")
        check_range(image, 0.0, 1.0, name="image")
        return image.to(torch.float32)

    # ------------------------------------------------------------------ prediction

    def probs(self, image: Image) -> torch.Tensor:
        """Class probabilities `[K, H, W]` float32 (softmax) at the image's own size."""
        x = self.image(image)
        h, w = x.shape[-2:]
        size = self.input_size
        if size is not None and (h, w) != tuple(size):
            x = F.interpolate(x[None], size=tuple(size), mode="bilinear", align_corners=False)[0].clamp(0.0, 1.0)
        _, p = predict_full(self.params, self.model_state, self.model_cfg, preprocess(x[None], self.train_cfg),
                            self.train_cfg, sliding=self.sliding)
        p = p[0]
        if p.shape[-2:] != (h, w):  # back to the image's size: the model pixel under each output pixel's centre
            p = F.interpolate(p[None], size=(h, w), mode="nearest-exact")[0]
        return p

    def __call__(self, image: Image | Sequence[Image]) -> torch.Tensor | list[torch.Tensor]:
        """`[H, W]` int64 class ids of one image (a list of masks for a list of images)."""
        if isinstance(image, (list, tuple)):
            return [self(i) for i in image]
        return self.probs(image).argmax(dim=0).to(torch.int64)

    # ------------------------------------------------------------------ export

    def export(self, path: str | os.PathLike | None = None, *, size: tuple[int, int] | None = None,
               batch: int = 1):
        """The model's pure apply, `x normalized [batch, C, h, w] -> logits [batch, K, h, w]`, as a
        `torch.export.ExportedProgram` with the params baked in (`funcml.export.export_model`),
        saved to `path` with `torch.export.save` when given. The program is specialized to that
        shape: `size` defaults to the patch size (what sliding windows feed the model) or
        `input_size`; a run that predicts at every image's own size needs `size`."""
        from ..export import export_model

        size = size or self.train_cfg.patch or self.input_size
        if size is None:
            raise ConfigError("Segmenter.export: this run predicts every image at its own size; pass size=(h, w)")
        if batch < 1 or min(size) < 1:
            raise ConfigError(f"Segmenter.export: batch and size must be >= 1, got batch={batch}, size={size}")
        example = torch.zeros(batch, self.channels, *size)
        return export_model(self.params, self.model_state, self.model_cfg, example, path=path)
