"""Bad numeric flags are refused when the command line is parsed: exit 2 and a message naming the
flag, before any work (no run directory, no output)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"_funcml_cli_{name}", ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


CASES = [
    ("main", ["--overlays", "-1"], "--overlays"),
    ("main", ["--threads", "0"], "--threads"),
    ("main", ["--asr.steps", "0"], "steps must be >= 1"),
    ("asr_train", ["tiny", "--steps", "0"], "steps must be >= 1"),
    ("asr_train", ["tiny", "--freq-warp", "1.5"], "freq_warp"),
    ("asr_eval", ["--run", "RUN", "--max-cer", "-1"], "--max-cer"),
    ("asr_eval", ["--run", "RUN", "--batch-size", "0"], "--batch-size"),
    ("asr_infer", ["--run", "RUN", "--batch-size", "0"], "--batch-size"),
    ("asr_infer", ["--run", "RUN", "--text", "one", "--rate", "0"], "--rate"),
    ("seg_train", ["tiny", "--steps", "0"], "steps must be >= 1"),
    ("seg_train", ["tiny", "--batch-size", "0"], "batch_size must be >= 1"),
    ("seg_infer", ["--run", "RUN", "--input", "x.png", "--alpha", "1.5"], "--alpha"),
    ("seg_infer", ["--run", "RUN", "--input", "x.png", "--batch-size", "0"], "--batch-size"),
    ("seg_infer", ["--run", "RUN", "--input", "x.png", "--overlap", "1"], "--overlap"),
]


@pytest.mark.parametrize("script,argv,needle", CASES, ids=[f"{s}:{' '.join(a[-2:])}" for s, a, _ in CASES])
def test_a_bad_numeric_flag_exits_2_naming_it(script, argv, needle, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    module = _script(script)
    with pytest.raises(SystemExit) as exit_info:
        module.main(argv)
    assert exit_info.value.code == 2
    err = " ".join(capsys.readouterr().err.replace("│", " ").split())   # tyro's box, unwrapped
    assert needle in err
    assert not any(tmp_path.iterdir())                            # nothing written


def test_output_dir_names_the_flag_and_the_file_in_the_way(tmp_path):
    from funcml.errors import DataError
    from funcml.runs import output_dir

    (tmp_path / "f").write_text("")
    with pytest.raises(DataError, match=r"--out .*/f/sub: .*/f is a file, not a folder"):
        output_dir(tmp_path / "f" / "sub")
    assert output_dir(tmp_path / "a" / "b").is_dir()


def test_seg_infer_refuses_an_out_that_is_a_file_before_predicting(tmp_path, capsys, monkeypatch):
    """--out pointing at a file stops at once (exit 2, naming it), not with a traceback after the work."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run").mkdir()
    (tmp_path / "taken").write_text("keep me")
    module = _script("seg_infer")
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--run", "run", "--input", "nothing.png", "--out", "taken/pred"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--out taken/pred" in err and "is a file" in err
    assert (tmp_path / "taken").read_text() == "keep me"

