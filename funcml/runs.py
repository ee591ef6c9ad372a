"""Run directories: one folder per run, the single way funcml records an experiment.

    runs/<experiment>/<YYYYmmdd-HHMMSS>-<id>/
        config.json     the frozen config (funcml.config.save)
        env.json        versions, device, git commit (funcml.repro.env_info)
        metrics.csv     one row per logged step (wide; columns grow as new metrics appear)
        metrics.jsonl   the same rows as JSON lines, with the split ("train" / "val")
        summary.json    final figures, written by the loop at the end
        checkpoints/    funcml.checkpoint.CheckpointManager's root
        plots/          PNG figures
        tensorboard/    optional: the same scalars and figures as TensorBoard event files
                        (`RunDir.enable_tensorboard`; the CSV/JSONL stay the source of truth)

The id is random per process plus a counter, so two runs started in the same second (even
in the same process) never share a folder; creation uses `mkdir(exist_ok=False)`.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import os
import time
import uuid
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from . import config as config_lib
from .errors import ConfigError, DataError
from .repro import env_info

__all__ = ["RunDir", "create_run", "open_run", "read_metrics", "output_dir"]

_counter = itertools.count()


def _scalar(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        v = v.detach()
        return float(v) if v.numel() == 1 else [float(x) for x in v.flatten()]
    if isinstance(v, (int, float, str, bool)) or v is None:
        return v
    return str(v)


class RunDir:
    """A run's folder and its metric logs. Create with `create_run`, reopen with `open_run`."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.checkpoints = self.path / "checkpoints"
        self.plots = self.path / "plots"
        self._csv_fields: list[str] | None = None
        self._tb = None

    def enable_tensorboard(self) -> Path:
        """Mirror every later `log` row (and `log_figures`) into TensorBoard event files under
        `<run>/tensorboard/`; returns that folder. Needs the optional package tensorboard
        (`pip install 'funcml[tensorboard]'`): a `ConfigError` saying so without it."""
        if self._tb is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ConfigError("--tensorboard needs the optional package tensorboard: "
                                  "pip install 'funcml[tensorboard]' (or leave out --tensorboard; "
                                  "metrics.csv / metrics.jsonl are always written)") from None
            self._tb = SummaryWriter(log_dir=str(self.path / "tensorboard"))
        return self.path / "tensorboard"

    def log_figures(self, step: int, paths: Sequence[str | os.PathLike] | None = None) -> list[str]:
        """Add PNG figures (default: every `plots/*.png`) to TensorBoard as images at `step`, tagged
        `plots/<file stem>`; a no-op without `enable_tensorboard`. Returns the tags written."""
        if self._tb is None:
            return []
        import numpy as np
        from PIL import Image

        tags = []
        for path in sorted(self.plots.glob("*.png")) if paths is None else [Path(p) for p in paths]:
            with Image.open(path) as im:
                pixels = np.asarray(im.convert("RGB"))
            tag = f"plots/{path.stem}"
            self._tb.add_image(tag, pixels, int(step), dataformats="HWC")
            tags.append(tag)
        self._tb.flush()
        return tags

    def close(self) -> None:
        """Flush and close the TensorBoard writer, if any (the CSV/JSONL files need no closing)."""
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def log(self, step: int, metrics: Mapping[str, Any], *, split: str = "train") -> dict[str, Any]:
        """Append one row (`step`, `split`, `time`, metrics as floats) to metrics.jsonl and metrics.csv."""
        row = {"step": int(step), "split": split, "time": round(time.time(), 3)}
        row.update({k: _scalar(v) for k, v in metrics.items()})
        with open(self.path / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row, allow_nan=True) + "\n")
        self._append_csv(row)
        if self._tb is not None:
            for k, v in row.items():
                if k not in ("step", "split", "time") and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(k if "/" in k else f"{split}/{k}", v, int(step))
        return row

    def drop_rows_after(self, step: int) -> int:
        """Remove the metrics rows logged after `step` (a resumed run logs those steps again); returns how many.

        Both files are rewritten through a temporary file and a rename, so a crash leaves the old or the new one."""
        jsonl = self.path / "metrics.jsonl"
        if not jsonl.exists():
            return 0
        rows = read_metrics(self.path)
        keep = [r for r in rows if int(r.get("step", 0)) <= step]
        if len(keep) == len(rows):
            return 0
        tmp = jsonl.with_suffix(".jsonl.tmp")
        with open(tmp, "w") as f:
            for r in keep:
                f.write(json.dumps(r, allow_nan=True) + "\n")
        os.replace(tmp, jsonl)
        if self._csv_fields is None and (self.path / "metrics.csv").exists():
            with open(self.path / "metrics.csv", newline="") as f:
                self._csv_fields = next(csv.reader(f), None)
        self._write_csv(keep, self._csv_fields or list(dict.fromkeys(k for r in keep for k in r)))
        return len(rows) - len(keep)

    def _append_csv(self, row: dict[str, Any]) -> None:
        path = self.path / "metrics.csv"
        flat = {k: v for k, v in row.items() if not isinstance(v, list)}
        if self._csv_fields is None and path.exists():
            with open(path, newline="") as f:
                self._csv_fields = next(csv.reader(f), None)
        if self._csv_fields is None or any(k not in self._csv_fields for k in flat):
            # A new column: rewrite the (small) file with the widened header.
            fields = list(self._csv_fields or []) + [k for k in flat if k not in (self._csv_fields or [])]
            rows = read_metrics(self.path) if path.exists() else []
            self._write_csv(rows[:-1] if rows and rows[-1] == row else rows, fields)
        with open(path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self._csv_fields, extrasaction="ignore").writerow(flat)

    def _write_csv(self, rows: list[dict[str, Any]], fields: list[str]) -> None:
        """Replace metrics.csv by `rows` under the header `fields` (through a temporary file and a rename)."""
        path = self.path / "metrics.csv"
        tmp = path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
            w.writeheader()
            for r in rows:
                w.writerow({k: v for k, v in r.items() if not isinstance(v, list)})
        os.replace(tmp, path)
        self._csv_fields = fields

    def write_json(self, name: str, data: Any) -> Path:
        """Write `data` as JSON to `<run>/<name>` atomically (NaN written as NaN)."""
        path = self.path / name
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(data, indent=2, default=_scalar) + "\n")
        os.replace(tmp, path)
        return path

    def metrics(self, split: str | None = None) -> list[dict[str, Any]]:
        """The rows of the run's metrics.jsonl, or only those of one `split` ("train" or "val")."""
        rows = read_metrics(self.path)
        return [r for r in rows if split is None or r.get("split") == split]


def read_metrics(run_path: str | os.PathLike) -> list[dict[str, Any]]:
    """All rows of a run's metrics.jsonl (an empty list if it has none yet)."""
    path = Path(run_path) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def output_dir(path: str | os.PathLike, flag: str = "--out", *, create: bool = True) -> Path:
    """Create the output folder `path` (and its parents) and return it; a `DataError` naming `flag`
    when it, or a parent, is a file. `create=False` only checks (a command checks its --out
    before the work and creates it when it writes)."""
    path = Path(path)
    for p in (path, *path.parents):
        if p.exists() and not p.is_dir():
            raise DataError(f"{flag} {path}: {p} is a file, not a folder; pass a folder (it is created if missing)")
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def create_run(root: str | os.PathLike, experiment: str, config: Any = None) -> RunDir:
    """Make `root/experiment/<YYYYmmdd-HHMMSS>-<id>/` with config.json, env.json, checkpoints/, plots/."""
    if not experiment or "/" in experiment or experiment.startswith("."):
        raise DataError(f"experiment name {experiment!r} must be a plain folder name")
    parent = Path(root) / experiment
    for p in (Path(root), parent):
        if p.exists() and not p.is_dir():
            raise DataError(f"runs folder {p} is a file, not a folder; pass --runs-dir with a folder (it is created "
                            "if missing)")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create the runs folder {parent}: {e.strerror or e}; pass --runs-dir with a folder "
                        "you can write to") from None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    while True:
        run_id = f"{uuid.uuid4().hex[:6]}{next(_counter):02d}"
        path = parent / f"{stamp}-{run_id}"
        try:
            path.mkdir(exist_ok=False)
            break
        except FileExistsError:
            continue
    run = RunDir(path)
    run.checkpoints.mkdir()
    run.plots.mkdir()
    if config is not None:
        config_lib.save(config, path / "config.json")
    run.write_json("env.json", env_info())
    return run


def open_run(path: str | os.PathLike) -> RunDir:
    """Reopen an existing run directory (to resume, evaluate or summarize it)."""
    path = Path(path)
    if not (path / "env.json").exists() and not (path / "config.json").exists():
        raise DataError(f"{path} is not a funcml run directory (no config.json or env.json); "
                        "pass the folder that `train` printed, e.g. runs/seg/20260101-120000-abc12300")
    return RunDir(path)


def nan_to_none(x: float) -> float | None:
    return None if isinstance(x, float) and math.isnan(x) else x
