"""benchmarks/asr_finetune.py end to end on the real FSDD folder, tiny: one fold, a few steps."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import asr_finetune  # noqa: E402

_TINY = ["--speakers", "theo", "--max-index", "1", "--val-indices", "0", "0", "--steps", "2", "--eval-every", "2",
         "--batch-size", "4", "--warmup-steps", "1", "--speed-perturb", "0.9", "--mix-speech", "4",
         "--train-flags=--model.encoder.num-layers 1 --model.encoder.d-model 32 --model.encoder.d-ff 64"]


def test_leave_one_speaker_out_fine_tunes_and_reports_every_mode(real_data, tmp_path, capsys):
    folder = real_data("fsdd-dev")
    common = [str(folder), *_TINY, "--runs-dir", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache")]
    scratch = asr_finetune.main([*common, "--scratch-only", "--out", str(tmp_path / "s.json")])
    (fold,) = scratch["folds"]
    assert fold["held_out"] == "theo" and fold["train_speakers"] == ["jackson", "nicolas"]
    manifests = {k: [json.loads(x) for x in Path(v).read_text().splitlines()] for k, v in fold["manifests"].items()}
    assert {r["speaker"] for r in manifests["test"]} == {"theo"} and len(manifests["test"]) == 20
    assert len(manifests["train"]) == 20 and len(manifests["val"]) == 20  # index 1 for training, 0 for validation
    assert {r["speaker"] for r in manifests["train"]} == {"jackson", "nicolas"}
    # Fine-tune the scratch run: zero-shot and fine-tuned rows, the scratch ablation too.
    out = asr_finetune.main([*common, "--init-from", fold["scratch"]["run"], "--scratch", "--out",
                             str(tmp_path / "f.json")])
    (fold,) = out["folds"]
    for mode in ("zero_shot", "init", "scratch"):
        assert 0 <= fold[mode]["test_cer"] and 0 <= fold[mode]["test_wer"], mode
    assert set(out["mean"]) == {"zero_shot", "init", "scratch"}
    for mode in ("init", "scratch"):  # both train on the real recordings plus the synthesized mix
        saved_cfg = json.loads((Path(fold[mode]["run"]) / "config.json").read_text())
        assert saved_cfg["mix_speech"] == 4 and saved_cfg["speed_perturb"] == [0.9]
    assert json.loads((Path(fold["init"]["run"]) / "config.json").read_text())["init_from"] == scratch["folds"][0][
        "scratch"]["run"]
    saved = json.loads((tmp_path / "f.json").read_text())
    assert saved["folds"][0]["init"]["test_wer"] == fold["init"]["test_wer"]
    printed = capsys.readouterr().out
    assert "| theo | fine-tuned |" in printed and "| mean | from scratch |" in printed


def test_the_benchmark_needs_a_run_or_scratch_only(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        asr_finetune.main([str(tmp_path)])
    assert e.value.code == 2 and "give --init-from RUN" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        asr_finetune.main([str(tmp_path), "--scratch-only", "--out", str(tmp_path / "x.json")])
    assert "at least two speakers" in capsys.readouterr().err
