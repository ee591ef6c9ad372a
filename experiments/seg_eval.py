"""python experiments/seg_eval.py --run runs/seg/20260101-120000-abc12300

Evaluate a trained segmentation model: per-class IoU and Dice, their means, pixel accuracy,
and the Dice of every image.

    python experiments/seg_eval.py --run RUN                                  # the shapes validation split
    python experiments/seg_eval.py --run RUN/checkpoints/step_00001000 --batch-size 32
    python experiments/seg_eval.py --run RUN --folder data/cells --out reports/cells
    python experiments/seg_eval.py --run RUN --folder ../shared/data/em-membranes --tta   # a patch-trained run

`--run` is a run directory (its best checkpoint is used) or one checkpoint directory. Without
`--folder` the model is scored on the validation split of the data it was trained on
(`funcml.seg.task.val_batches`); with `--folder` on a folder dataset (`root/images/<stem>.png`,
`root/masks/<stem>.png`, see `funcml.seg.folder`), whose masks must hold class ids in
`[0, num_classes)` of the run's model (or `--ignore-index`) after `--class-map` (default: the
run's own map and ignore index, so a run trained with `--class-map 0:1,255:0` reads the same
files the same way); the masks are scanned first and values that do not fit are an error naming
them and the flag to pass (`funcml.seg.masks`). A run trained on patches (`--patch`) scores every
file at its own size by sliding windows of the patch size blended with a Gaussian importance map
(`--overlap`, `--tta` for flip test-time augmentation; `funcml.seg.task.predict_full`). Other
runs resize folder images to the training size (bilinear; masks nearest) and score there (the
shapes' height x width, or a folder run's `--folder-size`; a folder run trained at the files' own
sizes scores them at theirs, `funcml.seg.segmenter.input_size`);
`--no-resize` scores every file at its own size (the model pads H and W up to a multiple of
`2^depth` and crops its logits back).

Writes to `--out` (default `<run>/eval/`; for a checkpoint `<run>/checkpoints/<name>`, the run's
`eval/`; for a checkpoint elsewhere, `<checkpoint>-eval/`):

    metrics.json         means, pixel accuracy, per-class figures (NaN written as null) and the
                         confusion matrix `confusion_matrix[t][p]` (pixels of true class t
                         predicted as p) that all of them are computed from
    metrics.csv          one row per class: class, IoU, Dice, support; then the row `mean`
    per_image_dice.csv   one row per image: its id (file stem or index) and its Dice averaged over
                         the classes present in its target or prediction
    confusion_matrix.png the matrix row-normalized (each cell: % of the true class's pixels and
                         the count; the diagonal is each class's recall), class names on the axes
    per_class.png        per-class IoU and Dice bars with their values and means

and prints the per-class table. Metrics are dataset-level (`funcml.seg.metrics`): a class absent
from both targets and predictions has no IoU or Dice (shown as "-", written as NaN / null) and is
left out of the means. Each file is written to a temporary name and renamed, so an existing
output folder keeps its other files and never holds a half-written one. Mistakes (a missing run,
a folder without masks, a class id out of range) print one line `error: ...` and exit with 2.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import torch

from funcml import config, devices
from funcml.checks import check_shape
from funcml.errors import ConfigError, DataError, cli_main
from funcml.seg import task, viz
from funcml.seg.metrics import confusion_matrix, metrics_from_confusion, per_image_dice
from funcml.seg.segmenter import input_size
from funcml.seg.folder import FolderDataset
from funcml.seg.masks import check_mask_values, parse_class_map, scan_masks


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Evaluate a segmentation run on its validation split or on a folder dataset."""

    run: Path
    """A run directory (its best checkpoint) or a checkpoint directory."""
    folder: Path | None = None
    """A folder dataset (images/ and masks/) to evaluate on instead of the shapes validation split."""
    out: Path | None = None
    """Output folder (default: `<run>/eval/`)."""
    batch_size: int = 64
    """Images per forward pass."""
    resize: bool = True
    """Resize folder images (bilinear) and masks (nearest) to the training size; off: score at each file's size."""
    ignore_index: int | None = None
    """Mask value of unlabelled pixels (not scored); default: the run's (255)."""
    class_map: str | None = None
    """Raw mask value -> class id for --folder masks, e.g. `0:1,255:0`; default: the run's; "" for none."""
    overlap: float | None = None
    """Sliding windows (patch-trained runs): overlap fraction; default: the run's (0.5)."""
    tta: bool = False
    """Sliding windows: also predict mirrored windows and average (flip test-time augmentation, 4x compute)."""
    device: str = "auto"
    """Where the model runs: auto (CUDA when a GPU is visible, else the CPU), cpu, cuda or cuda:N."""


def _write_atomic(path: Path, text: str) -> Path:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _default_out(run: Path) -> Path:
    if (run / "config.json").is_file() or (run / "env.json").is_file():
        return run / "eval"
    if run.parent.name == "checkpoints":
        return run.parent.parent / "eval"
    return run.with_name(f"{run.name}-eval")


def _run_name(run: Path) -> str:
    """`<experiment>/<time>-<id>` of a run (or of a checkpoint's run) for titles."""
    run = run.resolve()
    if run.parent.name == "checkpoints":
        return f"{run.parent.parent.parent.name}/{run.parent.parent.name} ({run.name})"
    return f"{run.parent.name}/{run.name}"


def _floats(x: Any) -> list[float]:
    return [float(v) for v in torch.as_tensor(x, dtype=torch.float64).reshape(-1)]


def _json_number(x: float) -> float | None:
    return None if math.isnan(x) else x


def _fmt(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.4f}"


def _folder_batches(ds: FolderDataset, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Consecutive examples in batches of at most `batch_size`; a new batch starts where the size changes."""
    images: list[torch.Tensor] = []
    masks: list[torch.Tensor] = []
    for i in range(len(ds)):
        image, mask = ds[i]
        if images and (len(images) == batch_size or image.shape != images[0].shape):
            yield torch.stack(images), torch.stack(masks)
            images, masks = [], []
        images.append(image)
        masks.append(mask)
    if images:
        yield torch.stack(images), torch.stack(masks)


def _evaluate(params: Any, model_state: Any, model_cfg: Any, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
              train_cfg: Any, ignore_index: int, sliding: Any) -> tuple[torch.Tensor, list[float]]:
    """The dataset's confusion matrix `cm [K, K]` int64 (`cm[t, p]`: pixels of true class t predicted
    as p, `ignore_index` pixels left out) and each image's Dice averaged over its classes present.

    The same prediction path and metrics as `funcml.seg.task.evaluate` (preprocess, `predict_full`,
    `funcml.seg.metrics`), kept here because the pictures and metrics.json need the matrix itself
    (tests/test_seg_eval_infer.py checks the two give the same figures)."""
    k = model_cfg.num_classes
    cm = torch.zeros(k, k, dtype=torch.int64)
    image_dice: list[float] = []
    for images, masks in batches:
        pred, _ = task.predict_full(params, model_state, model_cfg, task.preprocess(images, train_cfg), train_cfg,
                                    sliding=sliding)
        check_shape(masks, "b h w", name="masks", b=pred.shape[0], h=pred.shape[1], w=pred.shape[2])
        cm = cm + confusion_matrix(pred, masks, k, ignore_index=ignore_index)
        image_dice += _floats(torch.nanmean(per_image_dice(pred, masks, k, ignore_index), dim=1))
    return cm, image_dice


def _table(names: Sequence[str], iou: Sequence[float], dice: Sequence[float], support: Sequence[int],
           means: dict[str, float]) -> str:
    rows = [(n, _fmt(i), _fmt(d), str(s)) for n, i, d, s in zip(names, iou, dice, support)]
    footer = [("mean", _fmt(means["mean_iou"]), _fmt(means["mean_dice"]), str(sum(support)))]
    header = ("class", "IoU", "Dice", "support")
    widths = [max(len(r[c]) for r in [header, *rows, *footer]) for c in range(4)]

    def line(r: Sequence[str]) -> str:
        return "  ".join([r[0].ljust(widths[0])] + [v.rjust(w) for v, w in zip(r[1:], widths[1:])])

    rule = "-" * len(line(header))
    out = [line(header), rule, *map(line, rows), rule, *map(line, footer),
           f"pixel accuracy: {_fmt(means['pixel_accuracy'])}"]
    if any(math.isnan(v) for v in [*iou, *dice]):
        out.append('"-": the class is absent from both targets and predictions; it is excluded from the means.')
    return "\n".join(out)


def _csv(rows: Iterable[Sequence[Any]]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


@cli_main
def main(args: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if args is None else list(args)
    cfg = config.cli(EvalConfig, args=argv, prog="experiments/seg_eval.py")
    if cfg.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {cfg.batch_size}")
    if not cfg.run.exists():
        raise DataError(f"--run {cfg.run} does not exist; pass a run directory (e.g. runs/seg/20260101-120000-"
                        "abc12300) or one of its checkpoints/ directories")
    train_cfg, model_cfg, params, model_state = task.load_model(cfg.run, device=devices.resolve(cfg.device))
    k = model_cfg.num_classes
    ignore_index = train_cfg.ignore_index if cfg.ignore_index is None else cfg.ignore_index
    sliding = dataclasses.replace(train_cfg.sliding, tta=cfg.tta,
                                  **({} if cfg.overlap is None else {"overlap": cfg.overlap}))

    if cfg.folder is not None:
        if train_cfg.patch is not None:
            size = train_cfg.folder_size  # native size (or the run's folder_size), sliding windows
        else:
            size = input_size(train_cfg) if cfg.resize else None  # shapes: data.height x width; folder: folder_size
        class_map = parse_class_map(train_cfg.class_map if cfg.class_map is None else cfg.class_map)
        ds = FolderDataset(cfg.folder, num_classes=k, image_size=size, ignore_index=ignore_index,
                           channels=model_cfg.in_channels, class_map=class_map)
        for warning in check_mask_values(scan_masks(ds.mask_paths), num_classes=k, class_map=class_map,
                                         ignore_index=ignore_index, where=f"the masks of {cfg.folder}"):
            print(f"warning: {warning}", file=sys.stderr)
        batches: Iterable = _folder_batches(ds, cfg.batch_size)
        ids: list[str] | None = ds.stems
        source = str(cfg.folder)
    else:
        batches, ids, source = task.val_batches(train_cfg, batch_size=cfg.batch_size), None, "validation split"
    cm, per_image = _evaluate(params, model_state, model_cfg, batches, train_cfg, ignore_index, sliding)
    if not per_image:
        raise DataError(f"no images to evaluate in {source}")
    m = metrics_from_confusion(cm)

    names = [str(n) for n in task.class_names(train_cfg)]
    iou, dice = _floats(m["iou"]), _floats(m["dice"])
    support = [int(s) for s in m["support"]]  # pixels of each true class (ignored pixels left out)
    means = {"mean_iou": float(m["mean_iou"]), "mean_dice": float(m["mean_dice"]),
             "pixel_accuracy": float(m["pixel_accuracy"])}
    ids = ids if ids is not None else [str(i) for i in range(len(per_image))]
    if len(ids) != len(per_image):
        raise DataError(f"evaluate returned {len(per_image)} per-image scores for {len(ids)} images")

    out = cfg.out if cfg.out is not None else _default_out(cfg.run)
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "run": str(cfg.run), "data": source, "num_images": len(per_image), "num_classes": k,
        "ignore_index": ignore_index, "class_names": names,
        "sliding_window": ({"window": list(train_cfg.patch), **dataclasses.asdict(sliding)}
                           if train_cfg.patch is not None else None),
        **{m: _json_number(v) for m, v in means.items()},
        "per_class": {n: {"iou": _json_number(i), "dice": _json_number(d), "support": s}
                      for n, i, d, s in zip(names, iou, dice, support)},
        "confusion_matrix": cm.tolist(),
        "note": "IoU/Dice null: the class is absent from both targets and predictions; excluded from the means. "
                "confusion_matrix[t][p]: pixels of true class t predicted as p (rows: class_names; ignored pixels "
                "left out), the matrix every figure here is computed from",
    }
    _write_atomic(out / "metrics.json", json.dumps(report, indent=2) + "\n")
    rows = [("class", "IoU", "Dice", "support"), *zip(names, iou, dice, support),
            ("mean", means["mean_iou"], means["mean_dice"], sum(support))]
    _write_atomic(out / "metrics.csv", _csv(rows))
    image_rows = [("image", "mean_dice"), *zip(ids, per_image)]
    _write_atomic(out / "per_image_dice.csv", _csv(image_rows))
    label = f"{_run_name(cfg.run)} on {source} ({len(per_image)} images)"
    viz.save_confusion_matrix(cm, names, out / "confusion_matrix.png", title=f"{label}\nconfusion matrix")
    viz.save_per_class_scores(iou, dice, names, out / "per_class.png",
                              title=f"{label}\nper-class IoU and Dice (pixels pooled over the dataset)")

    print(f"{cfg.run} on {source}: {len(per_image)} images, {k} classes")
    print(_table(names, iou, dice, support, means))
    print(f"wrote metrics.json, metrics.csv, per_image_dice.csv, confusion_matrix.png, per_class.png to {out}/")
    return report


if __name__ == "__main__":
    main()
