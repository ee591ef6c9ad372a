"""Each benchmark script runs on a tiny size (the targets themselves are checked by the scripts)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_seg_main_target_runs_on_a_tiny_size(tmp_path):
    out = tmp_path / "target.json"
    proc = subprocess.run(
        [sys.executable, "benchmarks/seg_main_target.py", "--no-check", "--out", str(out),
         "--main-args=--steps 4 --eval-every 2 --val-size 8 --overlays 2 --model.num-layers 1"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert 0.0 <= result["mean_iou"] <= 1.0 and result["seconds"] > 0
    assert "| mean IoU |" in proc.stdout
