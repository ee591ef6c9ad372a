"""experiments/main.py's summary file: `--only` merges into it instead of replacing it."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _main_script():
    spec = importlib.util.spec_from_file_location("_funcml_experiments_main", ROOT / "experiments" / "main.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


main_job = _main_script()


def test_only_one_part_keeps_the_other_parts_earlier_result(tmp_path):
    path = tmp_path / "main-summary.json"
    main_job.write_summary(path, {"seg": {"mean_iou": 0.9, "summary": {"big": 1}},
                                  "asr": {"test_cer": 0.05}, "seconds": 500.0})
    written = main_job.write_summary(path, {"seg": {"mean_iou": 0.8}, "seconds": 100.0})
    saved = json.loads(path.read_text())
    assert saved == written == {"seg": {"mean_iou": 0.8}, "asr": {"test_cer": 0.05}, "seconds": 100.0}
    assert [p.name for p in tmp_path.iterdir()] == ["main-summary.json"]      # no temporary left behind


def test_an_unreadable_summary_is_replaced_with_a_message(tmp_path, capsys):
    path = tmp_path / "main-summary.json"
    path.write_text("{not json")
    assert main_job.write_summary(path, {"asr": {"test_cer": 0.1}, "seconds": 1.0}) == {
        "asr": {"test_cer": 0.1}, "seconds": 1.0}
    assert "could not be read" in capsys.readouterr().err
