"""python3 dev.py main   # the README's main job: train the U-Net+Transformer on shapes, evaluate, report

    python experiments/main.py                       # the `unet-transformer` preset of funcml.seg.task
    python experiments/main.py --steps 20 --val-size 16 --runs-dir /tmp/runs   # a quick smoke run
    python experiments/main.py --threads 2           # torch threads (default 1, see below)

Trains `funcml.seg.task.PRESETS["unet-transformer"]` (every field can be overridden by a flag,
e.g. `--lr`, `--model.num-layers`, `--data.height`) through funcml's one loop, evaluates the
best checkpoint on the fixed validation split, prints per-class IoU / Dice, mean IoU and
pixel accuracy as a table, writes an image / ground truth / prediction overlay grid into the
run's plots/ (funcml.seg.viz) beside the training curves, and says where everything is.

Threads. The default is one torch thread: on a small machine shared with other work, OpenMP's
spinning worker threads make small convolutions many times slower when a core is busy, while
one thread degrades gracefully; on an idle machine `--threads 2` is faster.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Annotated

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import tyro  # noqa: E402

from funcml.errors import ConfigError, cli_main  # noqa: E402
from funcml.seg import task  # noqa: E402
from funcml.seg.viz import save_overlay_grid  # noqa: E402


@dataclasses.dataclass(frozen=True)
class MainConfig:
    """The main job: train and evaluate the U-Net+Transformer on synthetic shapes."""

    train: Annotated[task.SegTrainConfig, tyro.conf.arg(name="")] = task.PRESETS["unet-transformer"][1]
    threads: int = 1
    """torch intra-op threads (1 is robust on a shared 2-core machine)."""
    overlays: int = 8
    """Validation images in the overlay grid (0 = none)."""


def _fmt(x: float) -> str:
    return "   -  " if x != x else f"{x:.4f}"


def _table(ev: dict) -> str:
    lines = [f"{'class':<12} {'IoU':>7} {'Dice':>7}", "-" * 28]
    for name, iou, dice in zip(ev["class_names"], ev["per_class_iou"], ev["per_class_dice"]):
        lines.append(f"{name:<12} {_fmt(iou):>7} {_fmt(dice):>7}")
    lines.append("-" * 28)
    lines.append(f"{'mean':<12} {_fmt(ev['mean_iou']):>7} {_fmt(ev['mean_dice']):>7}")
    lines.append(f"pixel accuracy {_fmt(ev['pixel_accuracy'])}   ({ev['num_images']} validation images)")
    return "\n".join(lines)


def _overlay_grid(run_path: Path, cfg: task.SegTrainConfig, n: int) -> Path | None:
    """plots/overlays.png: `n` validation images with ground truth and prediction (funcml.seg.viz)."""
    if n <= 0:
        return None
    _, model_cfg, params, state = task.load_model(run_path)
    images, masks = next(task.val_batches(cfg, batch_size=n))
    pred, _ = task.predict(params, state, model_cfg, task.preprocess(images, cfg))
    return save_overlay_grid(images, masks, pred, task.class_names(cfg), run_path / "plots" / "overlays.png",
                             max_rows=n)


@cli_main
def main(argv: list[str] | None = None) -> dict:
    cfg = tyro.cli(MainConfig, args=argv, description=__doc__.splitlines()[0],
                   config=(tyro.conf.AvoidSubcommands,))
    if cfg.threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {cfg.threads}")
    torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    run, summary = task.train(cfg.train, progress=sys.stderr.isatty())
    overlays = _overlay_grid(run.path, cfg.train, cfg.overlays)
    ev = summary["eval_json"]
    m = cfg.train.model
    d = cfg.train.data
    print(f"\n== main job: U-Net+Transformer (depth {m.depth}, width {m.base_width}, "
          f"{getattr(m, 'num_layers', 0)} transformer layers) on {d.height}x{d.width} shapes ==")
    print(f"steps {summary['steps']} x batch {cfg.train.batch_size}, {time.perf_counter() - t0:.1f} s in all "
          f"({summary['step_ms_median'] or 'n/a'} ms/step median), checkpoint {Path(ev['checkpoint']).name}\n")
    print(_table(ev))
    print(f"\nrun directory   {run.path}")
    print(f"curves          {run.plots / 'loss.png'}, {run.plots / 'val_miou.png'}")
    if overlays is not None:
        print(f"overlays        {overlays}  (image | ground truth | prediction)")
    print(f"metrics         {run.path / 'eval.json'}, {run.path / 'metrics.csv'}")
    return summary


if __name__ == "__main__":
    main()
