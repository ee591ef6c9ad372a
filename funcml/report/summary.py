"""Summaries of many runs: one table row per run, a CSV, a Markdown table and comparison plots.

    python experiments/summarize.py --runs runs/seg runs/asr

    paths = find_runs([Path("runs")])             # a run, an experiment folder or the whole tree
    rows = summarize_runs(paths)                  # one flat dict per run
    pngs = write_plots(rows, "runs/summary")      # curves_<metric>.png, compare_<metric>.png
    csv_path, md_path = write_summary(rows, "runs/summary", plots=pngs)

A row's columns, in this order:

    run, experiment, variant, label, status     which run; `variant` is the model config's `_type`
    <hyper-parameters>                          dotted config keys, e.g. `optim.lr`, `model.depth`
    best <m>, final <m>, best step <m>          for every eval metric m, e.g. "val/miou"
    final train loss, steps, wall s, items/s, path

Hyper-parameters: config.json is flattened to dotted keys (a nested config's `_type` tag
becomes the value of its own key, `optim = "AdamWConfig"`; lists become compact JSON). A key
is kept when it takes two or more distinct values among the runs that have it (so runs of
two experiments are not buried under each other's constant settings), and always when it
names the learning rate, the number of steps or the batch size. A key that clashes with a
fixed column gets a `config.` prefix.

Best: the max or min over a run's logged eval values, NaN ignored (NaN if there is no finite
value); its step is the earliest one reaching it. Final: the last logged value. `metric_mode`
says which: names holding "loss" or "error", or a token "cer", "wer", "mse", "mae", "rmse",
"nll", "ppl", "perplexity" (split at non-alphanumerics) are minimized, the others maximized;
`mode={"val/score": "min"}` overrides by name.

Status: "complete", "stopped early" or "interrupted" from summary.json; "running/incomplete"
when there is no readable summary.json (a run in progress or one that crashed). Missing or
malformed files never raise: they leave NaN (shown as "-") in the row, and a partial last line
of metrics.jsonl (a crash mid-write) is skipped.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, Sequence

from ..config import TYPE_TAG
from ..errors import ConfigError, DataError

__all__ = ["find_runs", "summarize_runs", "metric_mode", "markdown_table", "write_summary", "write_plots",
           "INCOMPLETE"]

INCOMPLETE = "running/incomplete"

_RUN_FILES = ("config.json", "env.json", "metrics.jsonl", "summary.json")
_MIN_SUBSTRINGS = ("loss", "error")
_MIN_TOKENS = frozenset({"cer", "wer", "mse", "mae", "rmse", "nll", "ppl", "perplexity"})
# Leaf names of the settings every comparison wants to see, differing or not.
_ALWAYS_KEYS = frozenset({"lr", "learning_rate", "peak_lr", "base_lr", "max_lr", "steps", "num_steps", "max_steps",
                          "total_steps", "train_steps", "batch_size", "global_batch_size"})
_HEAD = ("run", "experiment", "variant", "label", "status")
_TAIL = ("final train loss", "steps", "wall s", "items/s", "path")
_METRIC_PREFIXES = ("best step ", "best ", "final ")
_MD_HIDDEN = ("label", "path")
_NAN = float("nan")


# ----------------------------------------------------------------------------- finding runs

def _is_run(folder: Path) -> bool:
    return any((folder / name).is_file() for name in _RUN_FILES)


def find_runs(roots: Iterable[str | os.PathLike]) -> list[Path]:
    """Every run folder under `roots`, each root a run, an experiment folder or the whole runs/ tree.

    A run folder is one holding config.json, env.json, metrics.jsonl or summary.json; the
    search does not descend into a run. Runs come in root order, sorted by path within a root
    (so by experiment, then by start time), each once.

    Raises:
        DataError: a root does not exist or is not a folder.
    """
    found: list[Path] = []
    seen: set[Path] = set()
    for root in roots:
        root = Path(root)
        if not root.exists():
            raise DataError(f"runs folder {str(root)!r} does not exist; pass a run folder, an experiment folder "
                            "or the runs/ tree, e.g. --runs runs/seg")
        if not root.is_dir():
            raise DataError(f"{str(root)!r} is not a folder; pass a run folder, an experiment folder or the runs/ tree")
        runs = []
        for dirpath, dirnames, _ in os.walk(root):
            here = Path(dirpath)
            if _is_run(here):
                runs.append(here)
                dirnames.clear()
            else:
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for run in sorted(runs):
            if run.resolve() not in seen:
                seen.add(run.resolve())
                found.append(run)
    return found


# ----------------------------------------------------------------------------- reading one run

def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v)


def _csv_value(v: str) -> Any:
    try:
        return float(v) if v != "" else None
    except ValueError:
        return v


def _read_log(run: Path) -> list[dict[str, Any]]:
    """The rows of metrics.jsonl (metrics.csv if there is no jsonl); unreadable lines are skipped."""
    rows: list[dict[str, Any]] = []
    try:  # a file that vanishes or turns unreadable mid-read keeps the rows read so far
        if (run / "metrics.jsonl").is_file():
            for line in (run / "metrics.jsonl").read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(row, dict):
                    rows.append(row)
        elif (run / "metrics.csv").is_file():
            with open(run / "metrics.csv", newline="") as f:
                rows = [{k: (v if k == "split" else _csv_value(v)) for k, v in r.items() if k is not None}
                        for r in csv.DictReader(f)]
    except (OSError, UnicodeDecodeError, csv.Error):
        pass
    return [r for r in rows if _number(r.get("step")) is not None]


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if k == TYPE_TAG:
            if prefix:  # a nested config: its class name is the value of its own key
                out[prefix] = v
            continue
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping) and v:
            out.update(_flatten(v, key))
        elif isinstance(v, (list, tuple, Mapping)):
            out[key] = json.dumps(v, separators=(",", ":"))
        else:
            out[key] = v
    return out


@dataclasses.dataclass(frozen=True)
class _Run:
    path: Path
    config: dict[str, Any]  # flattened
    variant: str
    log: list[dict[str, Any]]
    summary: dict[str, Any] | None


def _load_run(path: Path) -> _Run:
    cfg = _read_json(path / "config.json")
    cfg = cfg if isinstance(cfg, dict) else {}
    model = cfg.get("model")
    variant = model.get(TYPE_TAG) if isinstance(model, dict) else None
    flat = _flatten(cfg)
    if isinstance(variant, str):
        flat.pop("model", None)  # the variant column says it
    summary = _read_json(path / "summary.json")
    return _Run(path, flat, variant if isinstance(variant, str) else "-", _read_log(path),
                summary if isinstance(summary, dict) else None)


def _series(log: Sequence[Mapping[str, Any]], split: str, name: str) -> tuple[list[int], list[float]]:
    steps, values = [], []
    for row in log:
        if row.get("split") == split and name in row and _number(row[name]) is not None:
            steps.append(int(row["step"]))
            values.append(float(row[name]))
    return steps, values


def _metric_names(log: Sequence[Mapping[str, Any]], split: str) -> list[str]:
    names: dict[str, None] = {}
    for row in log:
        if row.get("split") == split:
            names.update({k: None for k, v in row.items()
                          if k not in ("step", "split", "time") and _number(v) is not None})
    return list(names)


def _train_loss_name(log: Sequence[Mapping[str, Any]]) -> str | None:
    names = _metric_names(log, "train")
    if "loss" in names:
        return "loss"
    return next((n for n in names if "loss" in n.lower()), None)


def _eval_names(run: _Run) -> list[str]:
    names = _metric_names(run.log, "val")
    extra = run.summary.get("eval") if run.summary else None
    if isinstance(extra, dict):
        names += [k for k, v in extra.items() if k not in names and _number(v) is not None]
    return names


# ----------------------------------------------------------------------------- the rows

def metric_mode(name: str, overrides: Mapping[str, str] | None = None) -> Literal["max", "min"]:
    """The direction in which metric `name` improves, "max" or "min" (the rule: see the module docstring)."""
    if overrides and name in overrides:
        mode = overrides[name]
        if mode not in ("max", "min"):
            raise ConfigError(f"mode for metric {name!r} must be 'max' or 'min', got {mode!r}")
        return mode  # type: ignore[return-value]
    low = name.lower()
    tokens = set(re.split(r"[^a-z0-9]+", low))
    return "min" if any(s in low for s in _MIN_SUBSTRINGS) or tokens & _MIN_TOKENS else "max"


def _best(steps: Sequence[int], values: Sequence[float], mode: str) -> tuple[float, int | None]:
    best, best_step = _NAN, None
    for s, v in zip(steps, values):
        if math.isnan(v):
            continue
        if best_step is None or (v > best if mode == "max" else v < best):
            best, best_step = v, s
    return best, best_step


def _hparam_keys(configs: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[str]]:
    """(keys to show, the subset of them whose values differ between runs), in config order."""
    values: dict[str, set[str]] = {}
    for cfg in configs:
        for k, v in cfg.items():
            values.setdefault(k, set()).add(json.dumps(v, sort_keys=True))
    differing = [k for k, vs in values.items() if len(vs) > 1]
    shown = [k for k in values if k in differing or k.rsplit(".", 1)[-1] in _ALWAYS_KEYS]
    return shown, differing


def _column(key: str) -> str:
    reserved = key in _HEAD or key in _TAIL or key.startswith(_METRIC_PREFIXES)
    return f"config.{key}" if reserved else key


def _short_names(keys: Sequence[str]) -> dict[str, str]:
    """The fewest trailing dotted components that still tell `keys` apart."""
    short = {}
    for k in keys:
        parts = k.split(".")
        for n in range(1, len(parts) + 1):
            tail = ".".join(parts[-n:])
            if sum(1 for o in keys if o == tail or o.endswith("." + tail)) == 1:
                break
        short[k] = tail
    return short


def _labels(runs: Sequence[_Run]) -> list[str]:
    """Variant and the settings that differ between runs of the same experiment, e.g. "UNet depth=4 lr=3e-4"."""
    experiments = [r.path.parent.name for r in runs]
    differing_in = {exp: _hparam_keys([r.config for r, e in zip(runs, experiments) if e == exp])[1]
                    for exp in set(experiments)}
    labels = []
    for r, exp in zip(runs, experiments):
        differing = differing_in[exp]
        short = _short_names(differing)
        parts = [r.variant[:-6] if r.variant.endswith("Config") and len(r.variant) > 6 else r.variant]
        parts = parts if r.variant != "-" else []
        parts += [f"{short[k]}={_fmt(r.config[k])}" for k in differing if k in r.config]
        label = " ".join(parts) or r.path.name
        labels.append(f"{exp}: {label}" if len(set(experiments)) > 1 else label)
    # The same settings (a rerun): the run id tells them apart.
    return [f"{label} #{r.path.name.rsplit('-', 1)[-1]}" if labels.count(label) > 1 else label
            for r, label in zip(runs, labels)]


def _start_time(run: Path) -> float | None:
    m = re.match(r"(\d{8}-\d{6})", run.name)
    if m is None:
        return None
    try:
        return time.mktime(time.strptime(m.group(1), "%Y%m%d-%H%M%S"))
    except ValueError:
        return None


def _status(summary: Mapping[str, Any] | None) -> str:
    if summary is None:
        return INCOMPLETE
    if summary.get("interrupted"):
        return "interrupted"
    if summary.get("stopped_early"):
        return "stopped early"
    return "complete"


def _keep(name: str, wanted: Sequence[str] | None) -> bool:
    return wanted is None or any(name == w or name.split("/", 1)[-1] == w for w in wanted)


def summarize_runs(paths: Iterable[str | os.PathLike], *, metrics: Sequence[str] | None = None,
                   mode: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """One row (a flat dict, columns in the module docstring's order) per run in `paths`.

    Arguments:
        paths: run folders (from `find_runs`); complete, running and crashed runs all get a row.
        metrics: the eval metrics to keep, by full name ("val/miou") or without the split
            prefix ("miou"); None keeps every eval metric.
        mode: {metric name: "max" | "min"}, overriding `metric_mode`'s rule.

    Raises:
        DataError: a name in `metrics` is logged by none of the runs (the message lists those that are).
    """
    runs = [_load_run(Path(p)) for p in paths]
    all_names: dict[str, None] = {}
    for r in runs:
        all_names.update(dict.fromkeys(_eval_names(r)))
    names = [n for n in all_names if _keep(n, metrics)]
    missing = [w for w in (metrics or ()) if not any(_keep(n, [w]) for n in all_names)]
    if missing:
        raise DataError(f"metric(s) {missing} are logged by none of the {len(runs)} runs; "
                        f"their eval metrics are {list(all_names) or 'none'}")
    shown, _ = _hparam_keys([r.config for r in runs])
    labels = _labels(runs)
    rows = []
    for r, label in zip(runs, labels):
        s = r.summary or {}
        row: dict[str, Any] = {"run": r.path.name, "experiment": r.path.parent.name, "variant": r.variant,
                               "label": label, "status": _status(r.summary)}
        row.update({_column(k): r.config.get(k) for k in shown})
        final_eval = s.get("eval") if isinstance(s.get("eval"), dict) else {}
        for name in names:
            steps, values = _series(r.log, "val", name)
            if not values and _number(final_eval.get(name)) is not None:
                steps, values = [int(_number(s.get("steps")) or 0)], [float(final_eval[name])]
            best, best_step = _best(steps, values, metric_mode(name, mode))
            row[f"best {name}"] = best
            row[f"final {name}"] = values[-1] if values else _NAN
            row[f"best step {name}"] = best_step
        loss_name = _train_loss_name(r.log)
        train_final = s.get("train") if isinstance(s.get("train"), dict) else {}
        loss = _number(train_final.get(loss_name or "loss"))
        if loss is None and loss_name is not None:
            loss = _series(r.log, "train", loss_name)[1][-1]
        row["final train loss"] = _NAN if loss is None else loss
        steps_done = _number(s.get("steps"))
        if steps_done is None and r.log:
            steps_done = max(float(x["step"]) for x in r.log)
        row["steps"] = None if steps_done is None else int(steps_done)
        seconds = _number(s.get("seconds"))
        if seconds is None and r.log:  # still running or crashed: the time up to its last log line
            times = [t for t in (_number(x.get("time")) for x in r.log) if t is not None]
            start = _start_time(r.path) or (min(times) if times else None)
            seconds = max(times) - start if times and start is not None else None
        row["wall s"] = _NAN if seconds is None else seconds
        items = _number(s.get("items_per_s_median"))
        row["items/s"] = _NAN if items is None else items
        row["path"] = str(r.path)
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- tables

def _is_missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _fmt(v: Any) -> str:
    """A table cell: NaN/None as "-", 4 significant digits, whole numbers above 1000."""
    if _is_missing(v):
        return "-"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, int):
        return str(v)
    if math.isinf(v) or v == 0:
        return str(v)
    if abs(v) >= 1000:
        return f"{v:.0f}"
    if abs(v) < 1e-3:  # 0.0003 -> "3e-4", 1.25e-05 -> "1.25e-5"
        mantissa, exponent = f"{v:.2e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return f"{v:.4g}"


def _columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    cols: dict[str, None] = {}
    for row in rows:
        cols.update(dict.fromkeys(row))
    return list(cols)


def _eval_metrics(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    return [c[len("best "):] for c in _columns(rows) if c.startswith("best ") and not c.startswith("best step ")]


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A Markdown table of `rows` without the label, path and best-step columns; numbers right-aligned."""
    cols = [c for c in _columns(rows) if c not in _MD_HIDDEN and not c.startswith("best step ")]
    numeric = {c for c in cols if all(_is_missing(r.get(c)) or (isinstance(r.get(c), (int, float))
                                                                and not isinstance(r.get(c), bool)) for r in rows)}

    def cell(text: str) -> str:
        return text.replace("|", r"\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(c) for c in cols) + " |",
             "|" + "|".join("---:" if c in numeric else ":---" for c in cols) + "|"]
    lines += ["| " + " | ".join(cell(_fmt(r.get(c))) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def _csv_cell(v: Any) -> Any:
    return "" if _is_missing(v) else v


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_summary(rows: Sequence[Mapping[str, Any]], out_dir: str | os.PathLike, *, command: str | None = None,
                  mode: Mapping[str, str] | None = None, plots: Sequence[str | os.PathLike] = ()) -> tuple[Path, Path]:
    """Write `summary.csv` (every column; NaN and missing as empty cells) and `summary.md` to `out_dir`.

    The Markdown file opens with `command` (default: this process's command line), then the
    table (`markdown_table`), which direction "best" takes for each metric, and `plots` as images.
    Returns (csv path, md path).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cols = _columns(rows)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: _csv_cell(row.get(c)) for c in cols})
    csv_path = out / "summary.csv"
    _write_atomic(csv_path, buf.getvalue())

    if command is None:
        command = shlex.join(["python", *sys.argv])
    metrics = _eval_metrics(rows)
    md = ["# Run summary", "", f"Made by `{command}` on {time.strftime('%Y-%m-%d %H:%M:%S')}: {len(rows)} runs.", "",
          markdown_table(rows), ""]
    if metrics:
        highest = [m for m in metrics if metric_mode(m, mode) == "max"]
        lowest = [m for m in metrics if metric_mode(m, mode) == "min"]
        said = ([f"the highest for {', '.join(highest)}"] if highest else []) + \
               ([f"the lowest for {', '.join(lowest)}"] if lowest else [])
        md += [f"Best: the value over a run's evals, {'; '.join(said)}. Final: the last eval. \"-\": not logged.", ""]
    if plots:
        md += ["## Plots", ""]
        for p in plots:
            rel = os.path.relpath(Path(p), out)
            md += [f"![{Path(p).stem}]({rel})", ""]
    md_path = out / "summary.md"
    _write_atomic(md_path, "\n".join(md))
    return csv_path, md_path


# ----------------------------------------------------------------------------- plots

def _file_name(metric: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", metric).strip("_") or "metric"


def _styles(n: int) -> list[dict[str, Any]]:
    from matplotlib import colormaps

    # tab20's light/dark pairs are hard to tell apart: past 10 runs, repeat tab10 with another dash.
    colors = colormaps["tab10"].colors
    dashes = ["-", "--", ":", "-."]
    return [{"color": colors[i % 10], "linestyle": dashes[(i // 10) % len(dashes)]} for i in range(n)]


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)  # no pyplot: nothing global is touched, any process may call this
    return fig


def _legend(ax) -> None:
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=9, frameon=False, borderaxespad=0.0,
              handlelength=2.5)


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=110, bbox_inches="tight", pad_inches=0.15)
    return path


def _curve_plot(rows: Sequence[Mapping[str, Any]], runs: Sequence[_Run], styles: Sequence[Mapping[str, Any]],
                split: str, name: str | None, title: str, ylabel: str, path: Path) -> Path | None:
    """`name` vs step for every run that logged it (None: each run's train loss)."""
    # Tall enough for a one-column legend of every run beside the axes.
    fig = _figure(8.0, max(4.8, 1.0 + 0.2 * sum(1 for r in runs if r.log)))
    ax = fig.add_subplot()
    lows, highs, drawn = [], [], 0
    for row, run, style in zip(rows, runs, styles):
        key = _train_loss_name(run.log) if name is None else name
        steps, values = _series(run.log, split, key) if key else ([], [])
        if not steps:
            continue
        marker = "o" if len(steps) <= 30 else None
        ax.plot(steps, values, label=row["label"], marker=marker, markersize=3.5, linewidth=1.6, **style)
        finite = [v for v in values if math.isfinite(v)]
        lows += [v for v in finite if v > 0]
        highs += finite
        drawn += 1
    if not drawn:
        return None
    if lows and len(lows) == len(highs) and max(highs) / min(lows) > 100:
        ax.set_yscale("log")
    ax.set_title(title, fontsize=12)
    ax.set_xlabel("step", fontsize=10)
    ax.set_ylabel(ylabel, fontsize=10)
    ax.grid(True, alpha=0.3)
    _legend(ax)
    return _save(fig, path)


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _compare_plot(rows: Sequence[Mapping[str, Any]], styles: Sequence[Mapping[str, Any]], metric: str, mode: str,
                  path: Path) -> Path | None:
    best = [row.get(f"best {metric}") for row in rows]
    # Runs of experiments that never log this metric are left out; a run that has not logged it yet is shown.
    experiments = {row["experiment"] for row, v in zip(rows, best) if _finite(v)}
    if not experiments:
        return None
    shown = [i for i, row in enumerate(rows) if row["experiment"] in experiments]
    # barh draws the first item at the bottom: runs without a value, then worst to best.
    missing = [i for i in shown if not _finite(best[i])]
    ranked = sorted((i for i in shown if _finite(best[i])), key=lambda i: best[i], reverse=(mode == "min"))
    order = missing + ranked
    values = [best[i] if _finite(best[i]) else 0.0 for i in order]
    lo, hi = min(0.0, *values), max(0.0, *values)
    span = (hi - lo) or 1.0
    fig = _figure(8.0, 1.3 + 0.38 * len(order))
    ax = fig.add_subplot()
    y = list(range(len(order)))
    ax.barh(y, values, color=[styles[i]["color"] for i in order], height=0.65)
    ax.set_yticks(y, [rows[i]["label"] for i in order], fontsize=9)
    ax.set_xlim(lo - (0.2 * span if lo < 0 else 0.0), hi + 0.2 * span)
    for yi, i, v in zip(y, order, values):
        text = _fmt(best[i]) if _finite(best[i]) else "not logged"
        ax.text(v + 0.01 * span if v >= 0 else v - 0.01 * span, yi, text, va="center",
                ha="left" if v >= 0 else "right", fontsize=9)
    better = "higher" if mode == "max" else "lower"
    ax.set_title(f"best {metric} per run ({better} is better)", fontsize=12)
    ax.set_xlabel(f"best {metric}", fontsize=10)
    ax.grid(True, axis="x", alpha=0.3)
    return _save(fig, path)


def write_plots(rows: Sequence[Mapping[str, Any]], out_dir: str | os.PathLike, *,
                mode: Mapping[str, str] | None = None) -> list[Path]:
    """PNG comparison plots of the runs in `rows` (from `summarize_runs`), written to `out_dir`.

    `curves_train_loss.png`: train loss vs step for every run (log y if it spans more than two
    decades); `curves_<metric>.png`: each eval metric vs step; `compare_<metric>.png`: the best
    value of each eval metric per run, as horizontal bars sorted best first. Legends and bar
    labels are the rows' `label`s (variant and differing hyper-parameters). A plot with nothing
    to draw is not written. Returns the paths written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    import matplotlib

    runs = [_load_run(Path(r["path"])) for r in rows]
    styles = _styles(len(rows))
    written: list[Path | None] = []
    with matplotlib.rc_context({"axes.spines.top": False, "axes.spines.right": False}):
        written.append(_curve_plot(rows, runs, styles, "train", None, "train loss vs step", "train loss",
                                   out / "curves_train_loss.png"))
        for metric in _eval_metrics(rows):
            m = metric_mode(metric, mode)
            better = "higher" if m == "max" else "lower"
            written.append(_curve_plot(rows, runs, styles, "val", metric, f"{metric} vs step ({better} is better)",
                                       metric, out / f"curves_{_file_name(metric)}.png"))
            written.append(_compare_plot(rows, styles, metric, m, out / f"compare_{_file_name(metric)}.png"))
    return [p for p in written if p is not None]
