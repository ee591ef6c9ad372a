"""RunDir's optional TensorBoard mirror: the same scalars as metrics.jsonl, and the run's figures."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from PIL import Image

from funcml.errors import ConfigError
from funcml.runs import create_run

pytest.importorskip("tensorboard", reason="the optional extra funcml[tensorboard] is not installed")


def _events(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def test_scalars_and_figures_mirror_the_run(tmp_path):
    run = create_run(tmp_path, "exp")
    folder = run.enable_tensorboard()
    run.log(1, {"loss": 2.5, "lr": 1e-3})
    run.log(2, {"loss": 1.5, "lr": 2e-3})
    run.log(2, {"val/miou": 0.25, "note": "text is not a scalar"}, split="val")
    Image.fromarray(np.full((12, 20, 3), 200, dtype=np.uint8)).save(run.plots / "loss.png")
    assert run.log_figures(2) == ["plots/loss"]
    run.close()

    acc = _events(folder)
    assert sorted(acc.Tags()["scalars"]) == ["train/loss", "train/lr", "val/miou"]
    assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == [(1, 2.5), (2, 1.5)]
    assert [(e.step, pytest.approx(e.value)) for e in acc.Scalars("val/miou")] == [(2, 0.25)]
    (image,) = acc.Images("plots/loss")
    assert (image.step, image.width, image.height) == (2, 20, 12)
    # the CSV/JSONL stay the source of truth
    assert [r["loss"] for r in run.metrics("train")] == [2.5, 1.5]


def test_without_enable_nothing_is_written(tmp_path):
    run = create_run(tmp_path, "exp")
    run.log(1, {"loss": 1.0})
    assert run.log_figures(1) == []
    assert not (run.path / "tensorboard").exists()


def test_missing_package_is_a_config_error_naming_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    run = create_run(tmp_path, "exp")
    with pytest.raises(ConfigError, match=r"pip install 'funcml\[tensorboard\]'"):
        run.enable_tensorboard()


def test_a_training_run_with_tensorboard_writes_its_scalars_and_figures(tmp_path):
    """`--tensorboard` on a task config: the run's train and val scalars and its plots/ as event files."""
    import dataclasses

    from funcml.seg import task

    cfg = dataclasses.replace(task.PRESETS["tiny"][1], steps=2, eval_every=1, runs_dir=tmp_path, tensorboard=True)
    run, summary = task.train(cfg, progress=False)
    assert summary["tensorboard"] == str(run.path / "tensorboard")
    acc = _events(run.path / "tensorboard")
    scalars = acc.Tags()["scalars"]
    assert "val/miou" in scalars and "train/loss" in scalars
    assert [e.step for e in acc.Scalars("val/miou")] == [r["step"] for r in run.metrics("val")]
    assert {f"plots/{p.stem}" for p in run.plots.glob("*.png")} <= set(acc.Tags()["images"])
