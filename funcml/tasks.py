"""Plumbing shared by the application trainers (`funcml.seg.task`, `funcml.asr.task`).

    tx = make_optimizer(steps=2000, lr=1e-3, warmup_steps=100, weight_decay=1e-2, grad_clip=1.0)
    run = open_for_resume(cfg.resume, cfg, SegTrainConfig, fields=("model", "data", "seed"))
    ckpt = checkpoint_dir(path, best_metric="val/miou", mode="max", trainer="seg_train")
    paths = write_curves(run, [("loss", "train", "loss", "train loss")])
    idx = epoch_indices(key, n, step, batch_size)

Nothing here knows about a model: a trainer passes its config class, the fields a resumed run
must keep, its best-metric name, and the curves it wants drawn.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import torch

from . import checkpoint, optim, random
from . import config as config_lib
from .errors import CheckpointError, ConfigError, DataError
from .runs import RunDir, open_run

__all__ = ["make_optimizer", "open_for_resume", "checkpoint_dir", "write_curves", "epoch_indices"]


def make_optimizer(*, steps: int, lr: float, warmup_steps: int, weight_decay: float,
                   grad_clip: float) -> optim.GradientTransformation:
    """Clip by global norm (if `grad_clip > 0`), then AdamW with a linear warmup to `lr` over
    `warmup_steps` and cosine decay to 0 at `steps`; weight decay on every leaf (`optim.adamw`'s
    default mask: weights with ndim >= 2)."""
    steps = max(steps, 1)
    warmup = min(warmup_steps, steps)
    schedule = optim.warmup_cosine_decay_schedule(0.0, lr, warmup, steps)
    adamw = optim.adamw(schedule, weight_decay=weight_decay)
    return optim.chain(optim.clip_by_global_norm(grad_clip), adamw) if grad_clip > 0 else adamw


def open_for_resume(path: str | Path, cfg: Any, cfg_cls: type, *, fields: Sequence[str]) -> RunDir:
    """Open the run directory `path` to continue training with `cfg`.

    Raises `DataError` when `path` is not a directory, `CheckpointError` when it has no
    `checkpoints/`, and `ConfigError` naming the first of `fields` whose value differs from
    the run's saved `config.json` (resuming with another model or data would silently mix two
    experiments)."""
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"--resume {path}: no such run directory; pass the folder that a previous run printed "
                        "(runs/<experiment>/<time>-<id>)")
    run = open_run(path)
    if not run.checkpoints.is_dir():
        raise CheckpointError(f"--resume {path}: the run has no checkpoints/ folder to resume from")
    saved_path = path / "config.json"
    if saved_path.is_file():
        saved = config_lib.load(cfg_cls, saved_path)
        for field in fields:
            if getattr(saved, field) != getattr(cfg, field):
                raise ConfigError(f"--resume {path}: the run was trained with a different {field} "
                                  f"({getattr(saved, field)!r}, now {getattr(cfg, field)!r}); resume with its own "
                                  f"config: --config {saved_path} --resume {path}")
    return run


def checkpoint_dir(path: Path, *, best_metric: str, mode: str, trainer: str) -> Path:
    """The checkpoint to load from `path`: `path` itself if it is one (has meta.json), else the
    best checkpoint of the run directory by `best_metric` (`mode` "max"/"min") that verifies, else
    its newest that verifies. Broken checkpoints met on the way are set aside and named on stderr
    (`CheckpointManager.best_verified`), never silently passed over."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path} does not exist; pass a run directory (runs/<experiment>/<time>-<id>) or one of its "
                        "checkpoints/step_* folders")
    if (path / "meta.json").is_file():
        return path
    if (path / "checkpoints").is_dir():
        manager = checkpoint.CheckpointManager(path / "checkpoints", best_metric=best_metric, mode=mode)
        found = manager.best_verified()
        if found is None:
            raise CheckpointError(f"{path}: the run has no complete checkpoint under checkpoints/ (did training "
                                  "reach its first eval?)")
        return found
    raise DataError(f"{path} is neither a run directory (with checkpoints/) nor a checkpoint directory (with "
                    f"meta.json); pass the run folder that {trainer} printed")


_LOWER_IS_BETTER = ("cer", "wer", "loss", "error", "err")


def _ema(values: Sequence[float], weight: float) -> list[float]:
    """Exponential moving average with bias correction (TensorBoard's smoothing): s_t = w s_{t-1} + (1-w) x_t,
    divided by 1 - w^t."""
    out, s = [], 0.0
    for t, x in enumerate(values, 1):
        s = weight * s + (1 - weight) * x
        out.append(s / (1 - weight ** t))
    return out


def write_curves(run: RunDir, curves: Sequence[tuple[str, str, str, str]], *, smoothing: float = 0.9) -> list[Path]:
    """One titled PNG per `(file_stem, split, metric, y_label)` under `run.plots`: the metric of the
    rows of that split in the run's metrics log, against the step. Train curves are drawn raw (faint)
    and smoothed (an exponential moving average, weight `smoothing`); validation curves with markers
    and their best point marked (lowest for CER/WER/loss/error metrics, highest otherwise). When the
    train rows log them, `lr.png` (the learning-rate schedule) and `grad_norm.png` are added."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = run.metrics()
    name = run.path.parent.name or "run"
    curves = list(curves)
    stems = {c[0] for c in curves}
    for extra, label in (("lr", "learning rate"), ("grad_norm", "gradient norm (before clipping)")):
        if extra not in stems and any(r.get("split") == "train" and isinstance(r.get(extra), (int, float))
                                      for r in rows):
            curves.append((extra, "train", extra, label))
    out = []
    for stem, split, metric, ylabel in curves:
        pts = [(r["step"], r[metric]) for r in rows
               if r.get("split") == split and isinstance(r.get(metric), (int, float)) and math.isfinite(r[metric])]
        fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
        if pts:
            xs, ys = zip(*pts)
            if split == "train" and metric not in ("lr",) and len(pts) > 5:
                ax.plot(xs, ys, color="tab:blue", alpha=0.25, linewidth=1, label="raw")
                ax.plot(xs, _ema(ys, smoothing), color="tab:blue", linewidth=1.8, label=f"smoothed ({smoothing})")
                ax.legend(loc="best", fontsize=8)
            else:
                ax.plot(xs, ys, color="tab:blue" if split == "train" else "tab:orange", linewidth=1.5,
                        marker="o" if split != "train" and len(pts) < 40 else None, markersize=4)
            if split != "train":
                lower = any(k in metric.lower() for k in _LOWER_IS_BETTER)
                i = min(range(len(ys)), key=lambda j: (ys[j] if lower else -ys[j], xs[j]))
                ax.plot([xs[i]], [ys[i]], marker="*", markersize=14, color="tab:red", linestyle="none",
                        label=f"best {ys[i]:.4g} at step {xs[i]}")
                ax.legend(loc="best", fontsize=8)
        else:
            ax.text(0.5, 0.5, f"no {split} rows with {metric!r} yet", ha="center", va="center",
                    transform=ax.transAxes, color="gray")
        ax.set_title(f"{name}: {ylabel}", fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = run.plots / f"{stem}.png"
        fig.savefig(path)
        plt.close(fig)
        out.append(path)
    return out


def epoch_indices(key: torch.Tensor, n: int, step: int, batch_size: int) -> torch.Tensor:
    """The example indices of batch `step` when walking a dataset of `n` items epoch by epoch.

    Global example `g = step * B + i` is position `g mod n` of the permutation of epoch
    `g // n`, `permutation(fold_in(key, epoch), n)`: a pure function of `(key, step)`, so a
    resumed run sees the batches of the uninterrupted one. Returns `[B]` int64.
    """
    if n < 1:
        raise DataError(f"epoch_indices: the dataset is empty (n={n})")
    if batch_size < 1:
        raise ConfigError(f"epoch_indices: batch_size must be >= 1, got {batch_size}")
    g = torch.arange(step * batch_size, (step + 1) * batch_size)
    epochs = torch.unique(g // n).tolist()
    perms = {e: random.permutation(random.fold_in(key, e), n) for e in epochs}
    return torch.stack([perms[int(e)][int(p)] for e, p in zip(g // n, g % n)])
