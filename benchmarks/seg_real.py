"""python benchmarks/seg_real.py ../shared/data/em-membranes   # EM membranes: train on 15 slices, score 5 at full size

    python benchmarks/seg_real.py DIR                         # the `folder` preset (about 6 minutes on 2 cores)
    python benchmarks/seg_real.py DIR --steps 20 --out /tmp/smoke.json   # a smoke run
    python benchmarks/seg_real.py DIR --ablation patches      # one row of the recipe ablation (see ABLATION)
    python benchmarks/seg_real.py DIR --set augment.elastic-p=0 --set fg-fraction=0   # any other override

The real-data check of `funcml.seg` (issue 17). The split is fixed: the slices `em00`..`em14`
(sorted file stems, the first 15) are the training set, `em15`..`em19` the held-out test set
(`--test-stems`). The `folder` preset (`funcml.seg.task.PRESETS["folder"]`: native resolution,
128x128 patches with a third centred on membrane, elastic / rotation / scale / intensity
augmentation, a 2-class width-8 U-Net with channels and mean/std from the training slices) is trained
with `--class-map 0:1,255:0` (membrane = class 1), and validated only once, at the end (no
checkpoint is picked on the test slices). Then the model scores the 5 test slices at their
full 512x512 resolution:

    whole image       the model on each full slice at once
    sliding window    128x128 windows, overlap 0.5, Gaussian importance blending
    + flip TTA        the same with mirrored windows averaged (the preset's validation)

and for each: membrane IoU = TP / (TP + FP + FN) and Dice = 2 TP / (2 TP + FP + FN) of class 1,
pooled over all test pixels, and pixel error = wrong pixels / all pixels (the ISBI 2012 /
U-Net paper's "pixel error"). Prints the table with training steps, wall time and ms/step
(median), and writes JSON (`--out`, default `benchmarks/results/seg_real-<time>.json`).
`--ablation ROW` trains one row of the recipe ablation (`ABLATION`: whole-images, patches,
fg-sampling, elastic, recipe; each adds one component to the row before it).
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import tyro  # noqa: E402

from benchmarks.common import fresh_results_path, machine_line, markdown_table, start, write_json  # noqa: E402
from funcml import config  # noqa: E402
from funcml.errors import ConfigError, DataError, cli_main  # noqa: E402
from funcml.seg import task  # noqa: E402
from funcml.seg.data import FolderSplit  # noqa: E402
from funcml.seg.metrics import confusion_matrix  # noqa: E402
from funcml.seg.transforms import AugmentConfig  # noqa: E402

TEST_STEMS = ("em15", "em16", "em17", "em18", "em19")

ABLATION = {
    "whole-images": "class map fixed: whole 512x512 slices at native resolution (batch 1), flips and rot90 only",
    "patches": "+ random 128x128 patches (the preset's batch), flips and rot90 only",
    "fg-sampling": "+ the preset's share of patches centred on membrane pixels",
    "elastic": "+ elastic deformation (the preset's elastic_p, sigma, grid)",
    "recipe": "+ rotation, scaling and intensity transforms: the `folder` preset as it is",
}
"""The cumulative rows of the ablation (`--ablation ROW`); sliding windows and TTA are the
prediction rows of every run."""


def ablation_config(cfg: task.SegTrainConfig, row: str) -> task.SegTrainConfig:
    """The preset `cfg` with the components after `row` of `ABLATION` turned off."""
    if row not in ABLATION:
        raise ConfigError(f"--ablation {row!r}: choose one of {list(ABLATION)}")
    rank = list(ABLATION).index(row)
    if rank >= list(ABLATION).index("recipe"):
        return cfg
    aug = cfg.augment
    light = AugmentConfig(hflip_p=aug.hflip_p, vflip_p=aug.vflip_p, rot90=aug.rot90)
    if rank >= list(ABLATION).index("elastic"):
        light = dataclasses.replace(light, elastic_p=aug.elastic_p, elastic_sigma=aug.elastic_sigma,
                                    elastic_grid=aug.elastic_grid)
    fg = cfg.fg_fraction if rank >= list(ABLATION).index("fg-sampling") else 0.0
    if row == "whole-images":
        return dataclasses.replace(cfg, patch=None, batch_size=1, fg_fraction=0.0, augment=light)
    return dataclasses.replace(cfg, fg_fraction=fg, augment=light)


@dataclasses.dataclass(frozen=True)
class SegRealConfig:
    """Train the `folder` preset on 15 EM slices and score 5 held-out slices at full resolution."""

    folder: tyro.conf.Positional[Path]
    """The EM folder (images/emNN.png, masks/emNN.png with 0 = membrane, 255 = cell)."""
    steps: int | None = None
    """Training steps (None: the preset's, sized for 6 minutes on 2 idle cores)."""
    test_stems: tuple[str, ...] = TEST_STEMS
    """The held-out slices (file stems); every other file is trained on."""
    class_map: str = "0:1,255:0"
    """Raw mask value -> class id (membrane = class 1)."""
    ablation: Literal["whole-images", "patches", "fg-sampling", "elastic", "recipe"] = "recipe"
    """One row of the recipe ablation (each adds one component to the row before it; see ABLATION)."""
    set: tuple[str, ...] = ()
    """Preset overrides as `field=value` in the CLI's spelling, e.g. `augment.elastic-p=0` (an ablation)."""
    threads: int = 2
    """torch threads (the target is 2 cores; pass 1 on a shared machine)."""
    seed: int = 0
    """Model / augmentation seed."""
    device: str = "cpu"
    """Where the run trains and is scored: auto (CUDA when a GPU is visible, else the CPU), cpu, cuda or cuda:N."""
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
    device, info = start(cfg.device, cfg.threads)
    base = task.PRESETS["folder"][1]
    steps = base.steps if cfg.steps is None else cfg.steps
    tmp = tempfile.TemporaryDirectory() if cfg.runs_dir is None else None
    runs_dir = Path(tmp.name) if tmp is not None else cfg.runs_dir
    train_cfg = dataclasses.replace(base, folder=cfg.folder, class_map=cfg.class_map, val_stems=cfg.test_stems,
                                    steps=steps, eval_every=max(1, steps), seed=cfg.seed,
                                    runs_dir=runs_dir, experiment="seg-real", device=cfg.device)
    train_cfg, override_args = _overrides(ablation_config(train_cfg, cfg.ablation), cfg.set)
    try:
        t0 = time.perf_counter()
        run, summary = task.train(train_cfg, progress=True)
        wall = time.perf_counter() - t0
        saved, model_cfg, params, state = task.load_model(run.path, device=device)
        folder = FolderSplit(saved)
        pairs, n_train = folder.val_pairs(), len(folder.train_idx)
        sw = saved.sliding
        win = saved.patch or base.patch  # the whole-images row predicts with the preset's window too
        rows = [
            {"prediction": "whole image", **_score(params, state, model_cfg, saved, pairs, window=None, sliding=sw)},
            {"prediction": f"sliding window {win[0]}x{win[1]}, overlap {sw.overlap}",
             **_score(params, state, model_cfg, saved, pairs, window=win, sliding=dataclasses.replace(sw, tta=False))},
            {"prediction": "sliding window + flip TTA",
             **_score(params, state, model_cfg, saved, pairs, window=win,
                      sliding=dataclasses.replace(sw, tta=True))},
        ]
    finally:
        if tmp is not None:
            tmp.cleanup()
    train_info = {"steps": summary["steps"], "train_wall_s": round(wall, 1), "loop_seconds": summary["seconds"],
                  "ms_per_step_median": summary["step_ms_median"], "batch_size": saved.batch_size,
                  "patch": list(saved.patch) if saved.patch else None, "ablation": cfg.ablation,
                  "overrides": list(cfg.set)}
    print(f"\nEM membranes: trained on {n_train} slices, scored on {len(pairs)} "
          f"({', '.join(cfg.test_stems)}) at full resolution")
    size = f"{saved.patch[0]}x{saved.patch[1]} patches" if saved.patch else "whole images"
    print(f"ablation row {cfg.ablation!r}: {ABLATION[cfg.ablation]}")
    print(f"training: {train_info['steps']} steps x batch {saved.batch_size} of {size}, {wall:.1f} s wall "
          f"({summary['step_ms_median']} ms/step median), overrides {list(cfg.set)}\n")
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
