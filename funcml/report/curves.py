"""Training curves of a run directory: one titled PNG per metric (`write_curves`), drawn with
matplotlib, which the library itself never needs (so this lives in `funcml.report`, imported by
the run orchestration only when a run ends).

    paths = write_curves(run, [("loss", "train", "loss", "train loss"), ("val_cer", "val", "val/cer", "val CER")])
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from ..runs import RunDir
from .summary import metric_mode

__all__ = ["write_curves", "ema"]

def ema(values: Sequence[float], weight: float) -> list[float]:
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
    and their best point marked (the direction of `summary.metric_mode`: lowest for CER/WER/loss/
    error metrics, highest otherwise). When the
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
                ax.plot(xs, ema(ys, smoothing), color="tab:blue", linewidth=1.8, label=f"smoothed ({smoothing})")
                ax.legend(loc="best", fontsize=8)
            else:
                ax.plot(xs, ys, color="tab:blue" if split == "train" else "tab:orange", linewidth=1.5,
                        marker="o" if split != "train" and len(pts) < 40 else None, markersize=4)
            if split != "train":
                lower = metric_mode(metric) == "min"
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
