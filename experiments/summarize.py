"""python experiments/summarize.py --runs runs/seg runs/asr

Aggregate funcml runs into one table and comparison plots:

    python experiments/summarize.py                                   # every run under runs/
    python experiments/summarize.py --runs runs/seg --metrics val/miou --out reports/seg

writes `summary.csv` (every column), `summary.md` (a readable table, the command on top),
`curves_<metric>.png` and `compare_<metric>.png` to `--out` (default `<first root>/summary`),
and prints the table. A root may be one run, an experiment folder or the whole runs/ tree;
runs still in progress or crashed get a row with status "running/incomplete". See
`funcml.report.summary` for the columns and how "best" is chosen.
"""

from __future__ import annotations

import dataclasses
import shlex
import sys
from pathlib import Path

from funcml import config
from funcml.errors import ConfigError, DataError, cli_main
from funcml.runs import output_dir
from funcml.report.summary import find_runs, markdown_table, summarize_runs, write_plots, write_summary


@dataclasses.dataclass(frozen=True)
class SummarizeConfig:
    """Summarize funcml runs into summary.csv, summary.md and comparison plots."""

    runs: tuple[Path, ...] = (Path("runs"),)
    """Run folders, experiment folders or runs/ trees to summarize."""
    out: Path | None = None
    """Where the summary goes (default: `<first of --runs>/summary`)."""
    metrics: tuple[str, ...] = ()
    """Eval metrics to keep, e.g. `val/miou val/cer` or `miou`; none given: every eval metric."""
    maximize: tuple[str, ...] = ()
    """Metrics whose best is their highest value, overriding the rule (names with loss, error, cer, wer: lowest)."""
    minimize: tuple[str, ...] = ()
    """Metrics whose best is their lowest value, e.g. `val/score`."""
    plots: bool = True
    """Write the PNG plots."""

    def __post_init__(self) -> None:
        both = sorted(set(self.maximize) & set(self.minimize))
        if both:
            raise ConfigError(f"--maximize and --minimize both name {both}: say once which way is better for "
                              "each metric")


@cli_main
def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else list(argv)
    cfg = config.cli(SummarizeConfig, args=args, prog="experiments/summarize.py")
    if not cfg.runs:
        raise DataError("--runs needs at least one folder, e.g. --runs runs/seg")
    paths = find_runs(cfg.runs)
    if not paths:
        raise DataError(f"no runs found under {', '.join(map(str, cfg.runs))}: a run folder holds config.json, "
                        "env.json or metrics.jsonl (see funcml.runs.create_run)")
    mode = {**{m: "max" for m in cfg.maximize}, **{m: "min" for m in cfg.minimize}}
    rows = summarize_runs(paths, metrics=cfg.metrics or None, mode=mode)
    out = output_dir(cfg.out if cfg.out is not None else cfg.runs[0] / "summary")
    plots = write_plots(rows, out, mode=mode) if cfg.plots else []
    command = shlex.join(["python", "experiments/summarize.py", *args])
    csv_path, md_path = write_summary(rows, out, command=command, mode=mode, plots=plots)
    print(markdown_table(rows))
    print(f"\n{len(rows)} runs: wrote {csv_path}, {md_path}" + (f" and {len(plots)} plots" if plots else "")
          + f" to {out}/")


if __name__ == "__main__":
    main()
