"""Each benchmark script runs on a tiny size (the targets themselves are checked by the scripts)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_main_target_runs_on_a_tiny_size(tmp_path):
    out = tmp_path / "target.json"
    args = ("--main-args=--seg.steps 4 --seg.eval-every 2 --seg.val-size 8 --overlays 2 --seg.model.num-layers 1 "
            "--asr.steps 2 --asr.eval-every 2 --asr.num-train 8 --asr.num-val 4 --asr.num-test 4 "
            "--asr.speech.digits-len 1 2 --asr.model.encoder.num-layers 1 --asr.model.decoder-layers 1 "
            f"--asr.cache-dir {tmp_path / 'cache'}")
    proc = subprocess.run([sys.executable, "benchmarks/main_target.py", "--no-check", "--out", str(out), args],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert 0.0 <= result["summary"]["seg"]["mean_iou"] <= 1.0 and result["seconds"] > 0
    assert result["summary"]["asr"]["test_cer"] >= 0
    assert "| seg mean IoU |" in proc.stdout and "| ASR CER, held-out voices |" in proc.stdout
