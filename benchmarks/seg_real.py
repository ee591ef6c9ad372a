"""python benchmarks/seg_real.py ../shared/data/em-membranes   # EM membranes: train on 15 slices, score 5 at full size

    python benchmarks/seg_real.py DIR                         # the `folder` preset, 500 steps (about 6 minutes)
    python benchmarks/seg_real.py DIR --steps 20 --out /tmp/smoke.json   # a smoke run
    python benchmarks/seg_real.py DIR --set augment.elastic-p=0 --set fg-fraction=0   # an ablation

The real-data check of `funcml.seg` (issue 17). The split is fixed: the slices `em00`..`em14`
(sorted file stems, the first 15) are the training set, `em15`..`em19` the held-out test set
(`--test-stems`). The `folder` preset (`funcml.seg.task.PRESETS["folder"]`: native resolution,
128x128 patches with a third centred on membrane, elastic / rotation / scale / intensity
augmentation, a 2-class U-Net with channels and mean/std from the training slices) is trained
with `--class-map 0:1,255:0` (membrane = class 1), and validated only once, at the end (no
checkpoint is picked on the test slices). Then the model scores the 5 test slices at their
full 512x512 resolution:

    whole image       the model on each full slice at once
    sliding window    128x128 windows, overlap 0.5, Gaussian importance blending (the preset's)
    + flip TTA        the same with mirrored windows averaged

and for each: membrane IoU = TP / (TP + FP + FN) and Dice = 2 TP / (2 TP + FP + FN) of class 1,
pooled over all test pixels, and pixel error = wrong pixels / all pixels (the ISBI 2012 /
U-Net paper's "pixel error"). Prints the table with training steps, wall time and ms/step
(median), and writes JSON (`--out`, default `benchmarks/results/seg_real-<time>.json`).
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import tyro  # noqa: E402

from benchmarks.common import fresh_results_path, machine_line, markdown_table, start, write_json  # noqa: E402
from funcml import config  # noqa: E402
from funcml.errors import ConfigError, DataError, cli_main  # noqa: E402
from funcml.seg import task  # noqa: E402
from funcml.seg.metrics import confusion_matrix  # noqa: E402
from funcml.seg.sliding import SlidingWindowConfig  # noqa: E402

TEST_STEMS = ("em15", "em16", "em17", "em18", "em19")


@dataclasses.dataclass(frozen=True)
class SegRealConfig:
    """Train the `folder` preset on 15 EM slices and score 5 held-out slices at full resolution."""

    folder: tyro.conf.Positional[Path]
    """The EM folder (images/emNN.png, masks/emNN.png with 0 = membrane, 255 = cell)."""
    steps: int = 500
    """Training steps (the preset's 500 take about 6 minutes on one thread of an idle 2-core machine)."""
    test_stems: tuple[str, ...] = TEST_STEMS
    """The held-out slices (file stems); every other file is trained on."""
    class_map: str = "0:1,255:0"
    """Raw mask value -> class id (membrane = class 1)."""
    set: tuple[str, ...] = ()
    """Preset overrides as `field=value` in the CLI's spelling, e.g. `augment.elastic-p=0` (an ablation)."""
    threads: int = 1
    """torch threads."""
    seed: int = 0
    """Model / augmentation seed."""
    out: Path | None = None
    """JSON output (default benchmarks/results/seg_real-<time>.json)."""
    runs_dir: Path | None = None
    """Where the run goes (default: a temporary folder, deleted afterwards)."""


def _scores(cm: torch.Tensor) -> dict[str, float]:
    """Membrane (class 1) IoU and Dice and the pixel error from `cm[t, p]`."""
    cm = cm.to(torch.float64)
    tp, fp, fn = cm[1, 1], cm[0, 1], cm[1, 0]
    return {"membrane_iou": float(tp / (tp + fp + fn)), "membrane_dice": float(2 * tp / (2 * tp + fp + fn)),
            "pixel_error": float((cm.sum() - cm.diagonal().sum()) / cm.sum())}


def _score(params, state, model_cfg, train_cfg, pairs, *, window, sliding) -> dict[str, float]:
    cm = torch.zeros(2, 2, dtype=torch.int64)
    t0 = time.perf_counter()
    for image, mask in pairs:
        x = task.preprocess(image[None], train_cfg)
        if window is None:
            pred, _ = task.predict(params, state, model_cfg, x)
        else:
            pred, _ = task.predict_full(params, state, model_cfg, x, train_cfg, sliding=sliding, window=window)
        cm += confusion_matrix(pred, mask[None], 2, ignore_index=train_cfg.ignore_index)
    return {**_scores(cm), "seconds": round(time.perf_counter() - t0, 2)}


def _overrides(cfg: task.SegTrainConfig, sets: tuple[str, ...]) -> tuple[task.SegTrainConfig, list[str]]:
    args = []
    for item in sets:
        name, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected field=value, e.g. augment.elastic-p=0")
        args += [f"--{name}", *value.split()]
    if not args:
        return cfg, args
    return tyro.cli(task.SegTrainConfig, args=args, default=cfg), args


@cli_main
def main(cfg: SegRealConfig) -> dict[str, Any]:
    if not cfg.folder.is_dir():
        raise DataError(f"{cfg.folder} does not exist; pass the EM folder (e.g. ../shared/data/em-membranes)")
    device, info = start("cpu", cfg.threads)
    base = task.PRESETS["folder"][1]
    tmp = tempfile.TemporaryDirectory() if cfg.runs_dir is None else None
    runs_dir = Path(tmp.name) if tmp is not None else cfg.runs_dir
    train_cfg = dataclasses.replace(base, folder=cfg.folder, class_map=cfg.class_map, val_stems=cfg.test_stems,
                                    steps=cfg.steps, eval_every=max(1, cfg.steps), seed=cfg.seed,
                                    runs_dir=runs_dir, experiment="seg-real")
    train_cfg, override_args = _overrides(train_cfg, cfg.set)
    try:
        t0 = time.perf_counter()
        run, summary = task.train(train_cfg, progress=sys.stderr.isatty())
        wall = time.perf_counter() - t0
        saved, model_cfg, params, state = task.load_model(run.path)
        folder = task._Folder(saved)
        pairs, n_train = folder.val_pairs(), len(folder.train_idx)
        sw = saved.sliding
        rows = [
            {"prediction": "whole image", **_score(params, state, model_cfg, saved, pairs, window=None, sliding=sw)},
            {"prediction": f"sliding window {saved.patch[0]}x{saved.patch[1]}, overlap {sw.overlap}",
             **_score(params, state, model_cfg, saved, pairs, window=saved.patch, sliding=sw)},
            {"prediction": "sliding window + flip TTA",
             **_score(params, state, model_cfg, saved, pairs, window=saved.patch,
                      sliding=dataclasses.replace(sw, tta=True))},
        ]
    finally:
        if tmp is not None:
            tmp.cleanup()
    train_info = {"steps": summary["steps"], "train_wall_s": round(wall, 1), "loop_seconds": summary["seconds"],
                  "ms_per_step_median": summary["step_ms_median"], "batch_size": saved.batch_size,
                  "patch": list(saved.patch), "overrides": list(cfg.set)}
    print(f"\nEM membranes: trained on {n_train} slices, scored on {len(pairs)} "
          f"({', '.join(cfg.test_stems)}) at full resolution")
    print(f"training: {train_info['steps']} steps x batch {saved.batch_size} of {saved.patch[0]}x{saved.patch[1]} "
          f"patches, {wall:.1f} s wall ({summary['step_ms_median']} ms/step median), overrides {list(cfg.set)}\n")
    print(markdown_table(rows, {"prediction": "prediction", "membrane_iou": "membrane IoU",
                                "membrane_dice": "membrane Dice", "pixel_error": "pixel error",
                                "seconds": "predict s"}))
    payload = {"benchmark": "seg_real", "folder": str(cfg.folder), "test_stems": list(cfg.test_stems),
               "train": train_info, "results": rows, "config": config.to_dict(saved), "machine": info,
               "machine_line": machine_line(info)}
    out = write_json(payload, cfg.out or fresh_results_path("seg_real"))
    print(f"\nwritten {out}")
    return payload


if __name__ == "__main__":
    main(tyro.cli(SegRealConfig))
