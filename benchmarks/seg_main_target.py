"""The main job's targets: train + evaluate in under 4 minutes on 2 CPU cores, mean IoU >= 0.85.

    python benchmarks/seg_main_target.py                      # the full check (about 3 minutes)
    python benchmarks/seg_main_target.py --no-check --main-args="--steps 5 --val-size 8"   # smoke

Runs `experiments/main.py` in a fresh process (as `python3 dev.py main` does), times the whole
process, reads the run's `eval.json`, prints a table and writes `benchmarks/results/seg_main_target.json`.
Exits 1 when a target is missed (with --check, the default): the targets live here, not in a
timed unit test.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tyro

ROOT = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class TargetConfig:
    min_miou: float = 0.85
    max_seconds: float = 240.0
    check: bool = True
    """Exit 1 when a target is missed."""
    main_args: str = ""
    """Extra flags for experiments/main.py, as one string: `--main-args="--steps 5"`."""
    out: Path = ROOT / "benchmarks" / "results" / "seg_main_target.json"


def main(cfg: TargetConfig) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, str(ROOT / "experiments" / "main.py"), "--runs-dir", tmp, *shlex.split(cfg.main_args)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        if proc.returncode != 0:
            print(proc.stdout + proc.stderr, file=sys.stderr)
            return proc.returncode
        (eval_json,) = Path(tmp).glob("*/*/eval.json")
        ev = json.loads(eval_json.read_text())
    from funcml.repro import env_info

    result = {"seconds": round(seconds, 1), "mean_iou": ev["mean_iou"], "mean_dice": ev["mean_dice"],
              "pixel_accuracy": ev["pixel_accuracy"], "targets": {"max_seconds": cfg.max_seconds,
                                                                 "min_miou": cfg.min_miou},
              "main_args": cfg.main_args, "date": time.strftime("%Y-%m-%d"), "env": env_info()}
    ok_time, ok_miou = seconds <= cfg.max_seconds, ev["mean_iou"] >= cfg.min_miou
    result["met"] = ok_time and ok_miou
    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    cfg.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"| figure | measured | target | met |\n|---|---|---|---|\n"
          f"| wall time (s) | {seconds:.1f} | <= {cfg.max_seconds:.0f} | {ok_time} |\n"
          f"| mean IoU | {ev['mean_iou']:.4f} | >= {cfg.min_miou} | {ok_miou} |\n"
          f"\nwritten {cfg.out}")
    return 0 if result["met"] or not cfg.check else 1


if __name__ == "__main__":
    sys.exit(main(tyro.cli(TargetConfig)))
