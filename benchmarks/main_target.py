"""The main job's targets: segmentation + ASR in under 10 minutes on 2 CPU cores, mean IoU >= 0.85 on
the hard shapes within 4 minutes, CER <= 10% on the held-out voices within 6 minutes.

    python benchmarks/main_target.py                       # the full check (about 9 minutes)
    python benchmarks/main_target.py --main-args="--only asr"   # one application (its targets only)
    python benchmarks/main_target.py --no-check --main-args="--seg.steps 5 --asr.steps 5"   # smoke

Runs `experiments/main.py` in a fresh process (as `python3 dev.py main` does), times the whole
process, reads `main-summary.json`, prints a table and writes `benchmarks/results/main_target.json`.
Exits 1 when a target is missed (with --check, the default): the targets live here, not in a
timed unit test. Each part must also finish in its own budget (segmentation 4 minutes, ASR 6).
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
    """Target: segmentation mean IoU at least this (0..1)."""
    max_cer: float = 0.10
    """Target: ASR CER on the held-out voices at most this (a fraction: 0.10 is 10%)."""
    max_seconds: float = 600.0
    """The whole main job (both applications, data synthesis included)."""
    max_seg_seconds: float = 240.0
    """Target: the segmentation part alone within this many seconds."""
    max_asr_seconds: float = 360.0
    """Target: the ASR part alone within this many seconds."""
    check: bool = True
    """Exit 1 when a target is missed."""
    device: str = "auto"
    """The main job's --device: auto (CUDA when a GPU is visible, else the CPU), cpu, cuda or cuda:N."""
    main_args: str = ""
    """Extra flags for experiments/main.py, as one string: `--main-args="--seg.steps 5"`."""
    out: Path = ROOT / "benchmarks" / "results" / "main_target.json"
    """The JSON file to write."""


def main(cfg: TargetConfig) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, str(ROOT / "experiments" / "main.py"), "--runs-dir", tmp, "--device", cfg.device,
               *shlex.split(cfg.main_args)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        if proc.returncode != 0:
            print(proc.stdout + proc.stderr, file=sys.stderr)
            return proc.returncode
        summary = json.loads((Path(tmp) / "main-summary.json").read_text())
    from funcml.repro import env_info

    rows = [("wall time (s)", seconds, f"<= {cfg.max_seconds:.0f}", seconds <= cfg.max_seconds)]
    if "seg" in summary:
        rows.append(("seg time (s)", summary["seg"]["seconds"], f"<= {cfg.max_seg_seconds:.0f}",
                     summary["seg"]["seconds"] <= cfg.max_seg_seconds))
        rows.append(("seg mean IoU", summary["seg"]["mean_iou"], f">= {cfg.min_miou}",
                     summary["seg"]["mean_iou"] >= cfg.min_miou))
    if "asr" in summary:
        a = summary["asr"]
        rows.append(("ASR time (s)", a["seconds"], f"<= {cfg.max_asr_seconds:.0f}", a["seconds"] <= cfg.max_asr_seconds))
        rows.append(("ASR CER, held-out voices", a["test_cer"], f"<= {cfg.max_cer}", a["test_cer"] <= cfg.max_cer))
    result = {"seconds": round(seconds, 1), "summary": summary, "main_args": cfg.main_args,
              "targets": {"max_seconds": cfg.max_seconds, "min_miou": cfg.min_miou, "max_cer": cfg.max_cer,
                          "max_seg_seconds": cfg.max_seg_seconds,
                          "max_asr_seconds": cfg.max_asr_seconds},
              "met": all(r[3] for r in rows), "date": time.strftime("%Y-%m-%d"), "env": env_info()}
    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    cfg.out.write_text(json.dumps(result, indent=2) + "\n")
    print("| figure | measured | target | met |\n|---|---|---|---|")
    for name, value, target, ok in rows:
        print(f"| {name} | {value:.4f} | {target} | {ok} |" if value < 10 else f"| {name} | {value:.1f} | {target} | {ok} |")
    print(f"\nwritten {cfg.out}")
    return 0 if result["met"] or not cfg.check else 1


if __name__ == "__main__":
    sys.exit(main(tyro.cli(TargetConfig, description="\n\n".join(__doc__.split("\n\n")[:2]))))
