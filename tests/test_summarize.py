"""Summaries of many runs: rows, best-by-direction, differing settings, CSV/Markdown, plots and the CLI."""

from __future__ import annotations

import csv
import dataclasses
import math
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from funcml.errors import DataError
from funcml.runs import create_run
from funcml.report.summary import (INCOMPLETE, find_runs, markdown_table, metric_mode, summarize_runs, write_plots,
                            write_summary)

REPO = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class TinyNetConfig:
    depth: int = 2
    width: int = 8


@dataclasses.dataclass(frozen=True)
class WideNetConfig:
    width: int = 64


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 0.0


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    model: TinyNetConfig | WideNetConfig = TinyNetConfig()
    optim: OptimConfig = OptimConfig()
    batch_size: int = 8
    seed: int = 0


def fake_run(root, experiment="seg", cfg=TrainConfig(), *, train=(), val=(), summary=None):
    """A run folder as `fit` leaves it: train rows [(step, loss)], val rows [(step, {name: value})]."""
    run = create_run(root, experiment, cfg)
    for step, loss in train:
        run.log(step, {"loss": loss})
    for step, metrics in val:
        run.log(step, metrics, split="val")
    if summary is not None:
        run.write_json("summary.json", {"start_step": 0, "step_ms_median": 1.0, "best": None,
                                        "stopped_early": False, "interrupted": False, **summary})
    return run.path


def complete_summary(**kw):
    return {"steps": 30, "seconds": 12.5, "items_per_s_median": 640.0, "train": {"loss": 0.25},
            "eval": {}, **kw}


VAL = [(10, {"val/miou": 0.5, "val/cer": 0.4}), (20, {"val/miou": 0.8, "val/cer": 0.2}),
       (30, {"val/miou": 0.7, "val/cer": 0.3})]


@pytest.fixture
def two_runs(tmp_path):
    """A complete run and one still running, with different learning rates."""
    done = fake_run(tmp_path, train=[(10, 2.0), (20, 0.5), (30, 0.25)], val=VAL, summary=complete_summary())
    running = fake_run(tmp_path, cfg=TrainConfig(optim=OptimConfig(lr=3e-4)), train=[(10, 3.0), (20, 1.5)],
                       val=VAL[:1])
    return tmp_path, done, running


# ----------------------------------------------------------------------------- find_runs

def test_find_runs_accepts_a_run_an_experiment_folder_and_the_tree(tmp_path):
    a = fake_run(tmp_path, "seg")
    b = fake_run(tmp_path, "asr")
    assert find_runs([a]) == [a]
    assert find_runs([tmp_path / "seg"]) == [a]
    assert find_runs([tmp_path]) == [b, a]  # by experiment, then time
    assert find_runs([tmp_path / "seg", tmp_path]) == [a, b]  # each run once


def test_find_runs_does_not_take_a_summary_folder_for_a_run(tmp_path):
    a = fake_run(tmp_path)
    (tmp_path / "summary").mkdir()
    (tmp_path / "summary" / "summary.csv").write_text("run\n")
    assert find_runs([tmp_path]) == [a]


def test_find_runs_on_a_missing_folder_raises_data_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        find_runs([tmp_path / "nope"])


# ----------------------------------------------------------------------------- rows

def test_complete_run_row_reads_summary_json(two_runs):
    root, done, _ = two_runs
    row = summarize_runs([done])[0]
    assert row["run"] == done.name and row["experiment"] == "seg" and row["path"] == str(done)
    assert row["variant"] == "TinyNetConfig"
    assert row["status"] == "complete"
    assert (row["steps"], row["wall s"], row["items/s"], row["final train loss"]) == (30, 12.5, 640.0, 0.25)


def test_best_is_max_for_miou_and_min_for_cer_final_is_the_last_eval(two_runs):
    _, done, _ = two_runs
    row = summarize_runs([done])[0]
    assert (row["best val/miou"], row["best step val/miou"], row["final val/miou"]) == (0.8, 20, 0.7)
    assert (row["best val/cer"], row["best step val/cer"], row["final val/cer"]) == (0.2, 20, 0.3)


def test_mode_overrides_the_direction_of_a_metric(two_runs):
    _, done, _ = two_runs
    row = summarize_runs([done], mode={"val/miou": "min", "val/cer": "max"})[0]
    assert (row["best val/miou"], row["best val/cer"]) == (0.5, 0.4)


@pytest.mark.parametrize("name, mode", [("val/miou", "max"), ("val/acc", "max"), ("val/cer", "min"),
                                        ("val/wer", "min"), ("val/loss", "min"), ("val/ce_loss", "min"),
                                        ("val/pixel_error", "min"), ("val/lower_bound", "max"),
                                        ("val/precision", "max")])
def test_metric_mode_minimizes_loss_cer_wer_error_and_maximizes_the_rest(name, mode):
    assert metric_mode(name) == mode


def test_nan_evals_are_ignored_by_best_but_kept_as_final(tmp_path):
    path = fake_run(tmp_path, val=[(10, {"val/miou": 0.6}), (20, {"val/miou": float("nan")})])
    row = summarize_runs([path])[0]
    assert row["best val/miou"] == 0.6 and row["best step val/miou"] == 10
    assert math.isnan(row["final val/miou"])


def test_running_run_gets_a_row_from_its_metrics(two_runs):
    _, _, running = two_runs
    row = summarize_runs([running])[0]
    assert row["status"] == INCOMPLETE
    assert row["steps"] == 20 and row["final train loss"] == 1.5
    assert row["best val/miou"] == 0.5 and math.isnan(row["items/s"])
    assert row["wall s"] >= 0.0


def test_crashed_runs_with_empty_or_broken_files_get_an_incomplete_row(tmp_path):
    empty = fake_run(tmp_path)
    (empty / "metrics.jsonl").write_text("")
    broken = fake_run(tmp_path, train=[(10, 2.0)])
    with open(broken / "metrics.jsonl", "a") as f:
        f.write('{"step": 20, "split": "tr')  # killed mid-write
    (broken / "summary.json").write_text("{not json")
    (broken / "config.json").write_text("")
    rows = summarize_runs([empty, broken])
    assert [r["status"] for r in rows] == [INCOMPLETE, INCOMPLETE]
    assert rows[0]["steps"] is None and math.isnan(rows[0]["final train loss"])
    assert rows[1]["steps"] == 10 and rows[1]["final train loss"] == 2.0 and rows[1]["variant"] == "-"


def test_early_stopped_and_interrupted_runs_say_so(tmp_path):
    stopped = fake_run(tmp_path, summary=complete_summary(stopped_early=True))
    interrupted = fake_run(tmp_path, summary=complete_summary(interrupted=True))
    assert [r["status"] for r in summarize_runs([stopped, interrupted])] == ["stopped early", "interrupted"]


# ----------------------------------------------------------------------------- hyper-parameters and labels

def test_differing_hyperparameters_are_kept_and_constant_ones_dropped(tmp_path):
    a = fake_run(tmp_path, cfg=TrainConfig())
    b = fake_run(tmp_path, cfg=TrainConfig(model=TinyNetConfig(depth=4), optim=OptimConfig(lr=3e-4)))
    rows = summarize_runs([a, b])
    hparams = [c for c in rows[0] if "." in c or c == "batch_size"]
    assert hparams == ["model.depth", "optim.lr", "batch_size"]  # batch size shown although equal
    assert [(r["model.depth"], r["optim.lr"], r["batch_size"]) for r in rows] == [(2, 1e-3, 8), (4, 3e-4, 8)]
    assert "seed" not in rows[0] and "model.width" not in rows[0] and "optim.weight_decay" not in rows[0]


def test_labels_name_the_variant_and_the_differing_settings(tmp_path):
    a = fake_run(tmp_path, cfg=TrainConfig(optim=OptimConfig(lr=3e-4)))
    b = fake_run(tmp_path, cfg=TrainConfig(model=WideNetConfig()))
    rows = summarize_runs([a, b])
    assert [r["variant"] for r in rows] == ["TinyNetConfig", "WideNetConfig"]
    assert [r["label"] for r in rows] == ["TinyNet width=8 lr=3e-4", "WideNet width=64 lr=0.001"]


def test_reruns_with_identical_settings_get_distinct_labels(tmp_path):
    a, b = fake_run(tmp_path), fake_run(tmp_path)
    labels = [r["label"] for r in summarize_runs([a, b])]
    assert labels == [f"TinyNet #{a.name.rsplit('-', 1)[1]}", f"TinyNet #{b.name.rsplit('-', 1)[1]}"]


def test_a_config_key_clashing_with_a_fixed_column_gets_a_config_prefix(tmp_path):
    @dataclasses.dataclass(frozen=True)
    class StepsConfig:
        steps: int = 100

    path = fake_run(tmp_path, cfg=StepsConfig(), summary=complete_summary(steps=40))
    row = summarize_runs([path])[0]
    assert (row["config.steps"], row["steps"]) == (100, 40)


def test_metrics_filter_keeps_only_the_named_eval_metrics(two_runs):
    _, done, _ = two_runs
    row = summarize_runs([done], metrics=["miou"])[0]
    assert "best val/miou" in row and not any("cer" in c for c in row)


def test_a_metric_no_run_logs_is_a_data_error_listing_the_logged_ones(two_runs):
    _, done, _ = two_runs
    with pytest.raises(DataError, match=r"\['bleu'\].*val/miou"):
        summarize_runs([done], metrics=["bleu"])


# ----------------------------------------------------------------------------- files

def test_summary_csv_has_every_column_and_one_row_per_run(two_runs, tmp_path):
    root, done, running = two_runs
    rows = summarize_runs([done, running])
    csv_path, _ = write_summary(rows, tmp_path / "out", command="python experiments/summarize.py")
    with open(csv_path, newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == list(rows[0])
    assert [r["run"] for r in table] == [done.name, running.name]
    assert [r["status"] for r in table] == ["complete", INCOMPLETE]
    assert float(table[0]["best val/miou"]) == 0.8 and float(table[1]["optim.lr"]) == 3e-4
    assert table[1]["items/s"] == ""  # NaN: an empty cell


def test_summary_markdown_opens_with_the_command_and_shows_nan_as_a_dash(two_runs, tmp_path):
    _, done, running = two_runs
    rows = summarize_runs([done, running])
    _, md_path = write_summary(rows, tmp_path / "out", command="python experiments/summarize.py --runs runs/seg")
    text = md_path.read_text()
    assert "`python experiments/summarize.py --runs runs/seg`" in text.split("\n| run")[0]
    lines = [line for line in text.splitlines() if line.startswith("|")]
    assert len(lines) == 2 + 2  # header, alignment, one line per run
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    running_cells = dict(zip(header, (c.strip() for c in lines[3].strip("|").split("|"))))
    assert running_cells["items/s"] == "-" and running_cells["optim.lr"] == "3e-4"
    assert running_cells["status"] == INCOMPLETE
    assert "path" not in header and "label" not in header


def test_markdown_rounds_numbers_to_four_significant_digits(tmp_path):
    rows = [{"run": "r", "a": 0.867891, "b": 1234.5678, "c": 0.00025, "d": 7, "e": float("nan")}]
    cells = markdown_table(rows).splitlines()[2].strip("|").split("|")
    assert [c.strip() for c in cells] == ["r", "0.8679", "1235", "2.5e-4", "7", "-"]


def test_plots_are_valid_pngs_named_for_their_metric(two_runs, tmp_path):
    _, done, running = two_runs
    rows = summarize_runs([done, running])
    paths = write_plots(rows, tmp_path / "out")
    names = sorted(p.name for p in paths)
    assert names == ["compare_val_cer.png", "compare_val_miou.png", "curves_train_loss.png",
                     "curves_val_cer.png", "curves_val_miou.png"]
    for p in paths:
        with Image.open(p) as im:
            im.verify()
        with Image.open(p) as im:
            assert im.format == "PNG" and im.width > 400 and im.height > 200


# ----------------------------------------------------------------------------- CLI

def _cli(*args):
    return subprocess.run([sys.executable, str(REPO / "experiments" / "summarize.py"), *args], capture_output=True,
                          text=True, cwd=REPO, timeout=120)


def test_cli_prints_the_table_writes_the_files_and_exits_0(two_runs, tmp_path):
    root, done, running = two_runs
    proc = _cli("--runs", str(root / "seg"), "--out", str(tmp_path / "report"), "--no-plots")
    assert proc.returncode == 0, proc.stderr
    table = [line for line in proc.stdout.splitlines() if line.startswith("|")]
    assert table[0].startswith("| run | experiment | variant | status |") and len(table) == 4
    rows = table[2:]  # both runs start in the same second: their order is the random run ids'
    assert any(done.name in r and "complete" in r for r in rows)
    assert any(running.name in r and "running/incomplete" in r for r in rows)
    assert (tmp_path / "report" / "summary.csv").is_file() and (tmp_path / "report" / "summary.md").is_file()
    assert str(tmp_path / "report") in proc.stdout


def test_cli_on_a_missing_folder_exits_2_with_a_one_line_error(tmp_path):
    proc = _cli("--runs", str(tmp_path / "missing"))
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error: ")
    assert "missing" in proc.stderr and "Traceback" not in proc.stderr


def test_cli_refuses_a_metric_both_maximized_and_minimized(tmp_path):
    proc = _cli("--runs", str(tmp_path), "--maximize", "cer", "--minimize", "cer", "wer")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    text = " ".join(proc.stderr.replace("│", " ").split())  # tyro frames config errors in a box
    assert "--maximize and --minimize both name ['cer']: say once which way is better for each metric" in text
