"""Plot the train-step sweep of `bench_train_step.py`: how the cost grows with batch and image size.

    python benchmarks/plot_sweep.py                                        # results/bench_train_step.json -> .png
    python benchmarks/plot_sweep.py --json my.json --out my.png

Left: milliseconds per step against pixels per batch (`B * S^2`), log-log, one line per
(task, precision, mode) and batch size; a slope of 1 is cost proportional to the pixels.
Right: images/s against the image side S, one line per (task, precision, mode) at the
largest batch size.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS_DIR  # noqa: E402
from funcml.errors import DataError, cli_main  # noqa: E402


def plot_sweep(result: dict[str, Any], out: str | Path) -> Path:
    """Write the two-panel PNG of a `bench_train_step` result dict to `out`; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result.get("rows") or []
    if not rows:
        raise DataError("plot_sweep: the result holds no rows; run bench_train_step.py first")
    lines: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        lines[(r["task"], r["precision"], r["mode"], r["batch"])].append(r)
    fig, (ax_ms, ax_rate) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=100)
    b_max = max(r["batch"] for r in rows)
    for (task, precision, mode, b), rs in sorted(lines.items()):
        rs = sorted(rs, key=lambda r: r["size"])
        label = f"{task} {precision} {mode}"
        style = "-" if mode == "eager" else "--"
        ax_ms.plot([r["batch"] * r["size"] ** 2 for r in rs], [r["ms"] for r in rs], style, marker="o",
                   markersize=3, label=f"{label} B={b}")
        if b == b_max:
            ax_rate.plot([r["size"] for r in rs], [r["items_per_s"] for r in rs], style, marker="o", markersize=3,
                         label=label)
    ax_ms.set(xscale="log", yscale="log", xlabel="pixels per batch (B * S^2)", ylabel="ms per train step")
    sizes = sorted({r["size"] for r in rows})
    ax_rate.set(xscale="log", xlabel="image side S (pixels)", ylabel=f"images/s at B={b_max}")
    ax_rate.set_xticks(sizes, [str(s) for s in sizes])
    ax_rate.minorticks_off()
    for ax in (ax_ms, ax_rate):
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=6)
    machine = result.get("machine", {})
    fig.suptitle(f"train step, {machine.get('cpu', '?')}, {machine.get('torch_threads', '?')} threads, "
                 f"torch {machine.get('torch', '?')}, {machine.get('date', '')}", fontsize=8)
    fig.tight_layout()
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


@dataclasses.dataclass(frozen=True)
class PlotConfig:
    """Plot a bench_train_step result."""

    json: Path = RESULTS_DIR / "bench_train_step.json"
    """A bench_train_step.py result JSON."""
    out: Path | None = None
    """The PNG to write (default: the JSON's path with .png)."""


@cli_main
def main(args: list[str] | None = None) -> Path:
    cfg = tyro.cli(PlotConfig, args=args, description="\n\n".join(__doc__.split("\n\n")[:2]))
    if not cfg.json.is_file():
        raise DataError(f"--json {cfg.json} does not exist; run benchmarks/bench_train_step.py first")
    path = plot_sweep(json.loads(cfg.json.read_text()), cfg.out or cfg.json.with_suffix(".png"))
    print(f"written {path}")
    return path


if __name__ == "__main__":
    main()
