"""python experiments/seg_infer.py --run runs/seg/20260101-120000-abc12300 --input photos/ --out predictions/

Segment images with a trained model and draw the results.

    python experiments/seg_infer.py --run RUN --input image.png --out pred/
    python experiments/seg_infer.py --run RUN --input data/cells/images --masks data/cells/masks --out pred/

`--run` is a run directory (its best checkpoint) or a checkpoint directory; `--input` one image
(.png, .jpg, .jpeg) or a folder of them. For each image `<stem>` it writes to `--out`
(default `<run>/infer/`):

    <stem>_mask.png      the predicted class ids as a palette PNG (`funcml.seg.save_mask_png`),
                         the input's size; `FolderDataset` and PIL read the ids back
    <stem>_overlay.png   the image with the prediction blended in (`--alpha`) and a legend
    grid.png             image | prediction for the first `--max-rows` images, or
                         image | ground truth | prediction with `--masks`

Sizes. Every image is converted to the model's channels (RGB or grey). A run trained on patches
(`--patch`, e.g. the `folder` preset) predicts every image at its own size by overlapping windows
of the patch size blended with a Gaussian importance map (`--overlap`, `--tta`; the same
`funcml.seg.task.predict_full` as `seg_eval.py`), so any size works in bounded memory. Other runs
resize every image to the training size (bilinear, half-pixel centres), the size the model learned its scales at; the
predicted mask is resized back to the image's own size with NEAREST (each output pixel takes the
class of the model pixel under its centre), so masks and overlays have the input's size. The grid
shows the images, masks and predictions at the training size, or for a patch-trained run at the
first image's size shrunk to at most 256 pixels a side (grid.png stays under about 800 pixels wide).

`--masks DIR` holds ground-truth masks `<stem>.png` (class ids, as `FolderDataset` reads them)
for every input image, read through the run's `--class-map` (or `--class-map`); they are drawn in
the grid only (use `seg_eval.py --folder` for scores).

Files in the input folder whose suffix is not an image suffix (say a README) are skipped with a
warning on stderr; a file with an image suffix that cannot be decoded is an error. Mistakes (a
missing run or input, an unreadable image, a mask missing for some stem, a mask of another size
or with an out-of-range id) print one line `error: ...` and exit with 2. Files are written to a
temporary name and renamed, so an existing output folder is never left half-written.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from funcml import config, devices
from funcml.errors import ConfigError, DataError, cli_main
from funcml.runs import output_dir
from funcml.seg import task
from funcml.seg.folder import IMAGE_SUFFIXES, list_images, open_image, read_image, save_mask_png
from funcml.seg.masks import format_class_map, parse_class_map
from funcml.seg.segmenter import input_size
from funcml.seg.viz import overlay, save_image_atomic, save_overlay_grid


@dataclasses.dataclass(frozen=True)
class InferConfig:
    """Predict masks for images and draw overlays with a trained segmentation model."""

    run: Path
    """A run directory (its best checkpoint) or a checkpoint directory."""
    input: Path
    """One image file (.png, .jpg, .jpeg) or a folder of images."""
    out: Path | None = None
    """Output folder (default: `<run>/infer/`)."""
    masks: Path | None = None
    """Optional folder of ground-truth masks `<stem>.png`, drawn in the grid."""
    alpha: float = 0.45
    """Opacity of the prediction colours in the overlays, in [0, 1]."""
    batch_size: int = 16
    """Images per forward pass."""
    max_rows: int = 8
    """Rows (images) in grid.png."""
    ignore_index: int | None = None
    """Mask value of unlabelled pixels (left uncoloured); default: the run's (255)."""
    class_map: str | None = None
    """Raw value -> class id for the --masks files, e.g. `0:1,255:0`; default: the run's; "" for none."""
    overlap: float | None = None
    """Sliding windows (patch-trained runs): overlap fraction; default: the run's (0.5)."""
    tta: bool = False
    """Sliding windows: also predict mirrored windows and average (flip test-time augmentation, 4x compute)."""
    device: str = "auto"
    """Where the model runs: auto (CUDA when a GPU is visible, else the CPU), cpu, cuda or cuda:N."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"--alpha must be in [0, 1], got {self.alpha}")
        if self.batch_size < 1 or self.max_rows < 1:
            raise ConfigError(f"--batch-size and --max-rows must be >= 1, got {self.batch_size} and {self.max_rows}")
        if self.overlap is not None and not 0.0 <= self.overlap < 1.0:
            raise ConfigError(f"--overlap must be in [0, 1), got {self.overlap}")


def _default_out(run: Path) -> Path:
    if (run / "config.json").is_file() or (run / "env.json").is_file():
        return run / "infer"
    if run.parent.name == "checkpoints":
        return run.parent.parent / "infer"
    return run.with_name(f"{run.name}-infer")


def _list_inputs(path: Path) -> list[Path]:
    if not path.exists():
        raise DataError(f"--input {path} does not exist; pass an image file or a folder of images")
    if path.is_file():
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise DataError(f"--input {path} is not an image (expected {', '.join(IMAGE_SUFFIXES)})")
        return [path]
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    skipped = [p.name for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]
    if skipped:
        more = f" and {len(skipped) - 3} more" if len(skipped) > 3 else ""
        print(f"warning: skipping {len(skipped)} non-image file(s) in {path}: {', '.join(skipped[:3])}{more}",
              file=sys.stderr)
    return list_images(path)


def _read_mask(path: Path, size: tuple[int, int], num_classes: int, ignore_index: int,
               class_map: dict[int, int] | None = None) -> torch.Tensor:
    """`[H, W]` int64 class ids (raw values through `class_map`), checked against the image's size and the class range."""
    im = open_image(path)
    if im.mode not in ("P", "L", "I", "I;16", "1"):
        raise DataError(f"{path}: a mask must be a palette (P) or greyscale PNG of class ids, got mode {im.mode}")
    values = torch.from_numpy(np.asarray(im, dtype=np.int64).copy())
    if class_map is not None:
        unknown = sorted(set(torch.unique(values).tolist()) - set(class_map) - {ignore_index})
        if unknown:
            raise DataError(f"{path}: raw mask values {unknown} are not in --class-map {format_class_map(class_map)} "
                            f"(nor ignore_index={ignore_index})")
        mapped = torch.full_like(values, ignore_index)
        for raw, cls in class_map.items():
            mapped[values == raw] = cls
        values = mapped
    if tuple(values.shape) != size:
        raise DataError(f"{path} is {values.shape[1]}x{values.shape[0]} but its image is {size[1]}x{size[0]} "
                        "(width x height); they must match")
    bad = (values != ignore_index) & ((values < 0) | (values >= num_classes))
    if bool(bad.any()):
        raise DataError(f"{path}: class ids {torch.unique(values[bad]).tolist()} are outside [0, {num_classes}) "
                        f"(ignore_index={ignore_index})")
    return values


def _resize_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """`[C, H, W] -> [C, h, w]`, bilinear with half-pixel centres (as `funcml.seg.transforms.resize`)."""
    if tuple(image.shape[-2:]) == size:
        return image
    return F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0].clamp(0.0, 1.0)


def _resize_ids(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """`[H, W]` ids -> `[h, w]`: each output pixel takes the id of the source pixel under its centre."""
    if tuple(mask.shape) == size:
        return mask
    out = F.interpolate(mask[None, None].to(torch.float32), size=size, mode="nearest-exact")
    return out[0, 0].round().to(mask.dtype)


@cli_main
def main(args: Sequence[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if args is None else list(args)
    cfg = config.cli(InferConfig, args=argv, prog="experiments/seg_infer.py")
    if not cfg.run.exists():
        raise DataError(f"--run {cfg.run} does not exist; pass a run directory (e.g. runs/seg/20260101-120000-"
                        "abc12300) or one of its checkpoints/ directories")
    device = devices.resolve(cfg.device)
    out = output_dir(cfg.out if cfg.out is not None else _default_out(cfg.run), create=False)  # before the work
    paths = _list_inputs(cfg.input)
    if cfg.masks is not None:
        if not cfg.masks.is_dir():
            raise DataError(f"--masks {cfg.masks} is not a folder; pass the folder holding <stem>.png masks")
        missing = [p.stem for p in paths if not (cfg.masks / f"{p.stem}.png").is_file()]
        if missing:
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            raise DataError(f"--masks {cfg.masks}: no mask {missing[0]}.png for image {missing[0]}{more}; "
                            "add the masks or leave out --masks")

    train_cfg, model_cfg, params, model_state = task.load_model(cfg.run, device=device)
    k, channels = model_cfg.num_classes, model_cfg.in_channels
    ignore_index = train_cfg.ignore_index if cfg.ignore_index is None else cfg.ignore_index
    class_map = parse_class_map(train_cfg.class_map if cfg.class_map is None else cfg.class_map)
    names = list(task.class_names(train_cfg))

    images = [read_image(p, channels) for p in paths]
    gts = ([_read_mask(cfg.masks / f"{p.stem}.png", tuple(x.shape[-2:]), k, ignore_index, class_map)
            for p, x in zip(paths, images)] if cfg.masks is not None else None)
    size = input_size(train_cfg)
    if size is None:  # each image at its own size (sliding windows for a patch-trained run); the grid shrunk
        sliding = dataclasses.replace(train_cfg.sliding, tta=cfg.tta,
                                      **({} if cfg.overlap is None else {"overlap": cfg.overlap}))
        full = [task.predict_full(params, model_state, model_cfg, task.preprocess(x[None], train_cfg), train_cfg,
                                  sliding=sliding)[0][0] for x in images]
        h0, w0 = images[0].shape[-2:]
        shrink = min(1.0, 256 / max(h0, w0))
        size = (max(1, round(h0 * shrink)), max(1, round(w0 * shrink)))
        small = torch.stack([_resize_image(x, size) for x in images])
        pred_small = torch.stack([_resize_ids(p, size) for p in full])
    else:
        small = torch.stack([_resize_image(x, size) for x in images])  # [N, C, h, w], the model's size
        preds = []
        for i in range(0, len(images), cfg.batch_size):
            pred, _ = task.predict(params, model_state, model_cfg,
                                   task.preprocess(small[i:i + cfg.batch_size], train_cfg))
            preds.append(pred)
        pred_small = torch.cat(preds)  # [N, h, w] int64
        full = [None] * len(images)

    output_dir(out)
    written = []
    for path, image, p, p_full in zip(paths, images, pred_small, full):
        mask = p_full if p_full is not None else _resize_ids(p, tuple(image.shape[-2:]))  # the image's own size
        tmp = out / f".{path.stem}_mask.png.tmp"
        try:
            save_mask_png(mask, tmp)
            tmp.replace(out / f"{path.stem}_mask.png")
        finally:
            tmp.unlink(missing_ok=True)
        save_image_atomic(overlay(image, mask, alpha=cfg.alpha, class_names=names, ignore_index=ignore_index),
                          out / f"{path.stem}_overlay.png")
        written.append(path.stem)
    gt_small = torch.stack([_resize_ids(g, size) for g in gts]) if gts is not None else None
    save_overlay_grid(small, gt_small, pred_small, names, out / "grid.png", max_rows=cfg.max_rows,
                      ignore_index=ignore_index)
    print(f"{len(written)} image(s): wrote <stem>_mask.png and <stem>_overlay.png for each, and grid.png, to {out}/")
    return {"out": str(out), "stems": written}


if __name__ == "__main__":
    main()
