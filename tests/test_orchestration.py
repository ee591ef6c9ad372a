"""The run orchestration every application shares (funcml.trainer): the shared config fields, a
third application in a few lines, the loader, and Ctrl-C in both applications' CLIs."""

from __future__ import annotations

import dataclasses
import importlib
import shutil
import sys
from pathlib import Path

import pytest
import torch
from tyro._docstrings import get_field_docstring

from funcml import checkpoint, random, tree
from funcml import config as config_lib
from funcml import trainer
from funcml.asr.task import AsrTrainConfig
from funcml.errors import CheckpointError, ConfigError
from funcml.nn import model as models
from funcml.nn.reference import MLPConfig
from funcml.runs import open_run
from funcml.seg.task import TASK as SEG_TASK
from funcml.seg.task import SegTrainConfig
from funcml.trainer import Task, TrainConfig, load_run, train_task

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))  # the CLIs: seg_train, asr_train


# ------------------------------------------------------------------------------ a third application


@dataclasses.dataclass(frozen=True)
class RegressionConfig(TrainConfig, steps=30, lr=3e-2, warmup_steps=2, eval_every=10, experiment="regression"):
    """Fit an MLP to y = sum(x) on generated data: the smallest application of the orchestration."""

    model: MLPConfig = MLPConfig(in_dim=4, hidden=(16,), out_dim=1)
    """The network."""
    val_size: int = 64
    """Validation examples."""


REGRESSION = Task("regression", RegressionConfig, best_metric="val/mse", mode="min",
                  resume_fields=("model", "seed", "data_seed"), curves=(("val_mse", "val", "val/mse", "val MSE"),))


def _examples(key: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = random.normal(key, (n, 4))  # [n, 4]
    return x, x.sum(-1, keepdim=True)  # [n, 1]


def _mse(params, model_state, val, cfg: RegressionConfig) -> dict[str, float]:
    x, y = val
    with torch.no_grad():
        pred, _ = models.apply(params, model_state, x, cfg.model, train=False)
    return {"val/mse": float(((pred - y) ** 2).mean())}


def train_regression(cfg: RegressionConfig):
    data_key = random.key(cfg.data_seed)

    def loss_fn(params, model_state, batch, key):
        x, y = batch
        pred, model_state = models.apply(params, model_state, x, cfg.model, key=key, train=True)
        return ((pred - y) ** 2).mean(), ({}, model_state)

    def data(device):  # host batches: train_task puts them on the run's device
        def get_batch(step: int):
            return _examples(random.fold_in(data_key, step), cfg.batch_size)

        return get_batch, _examples(random.fold_in(data_key, "val"), cfg.val_size)

    return train_task(REGRESSION, cfg, data=data, loss_fn=loss_fn,
                      validate=lambda p, s, val: _mse(p, s, val, cfg),
                      report=lambda p, s, val, run: _mse(p, s, val, cfg), progress=False)


@pytest.fixture(scope="module")
def regression_run(tmp_path_factory):
    cfg = RegressionConfig(runs_dir=tmp_path_factory.mktemp("runs"))
    run, summary = train_regression(cfg)
    return cfg, run, summary


def test_a_third_application_trains_through_the_shared_orchestration(regression_run):
    cfg, run, summary = regression_run
    vals = [r["val/mse"] for r in run.metrics("val")]
    assert [r["step"] for r in run.metrics("val")] == [10, 20, 30]
    assert vals[-1] < vals[0] and summary["steps"] == cfg.steps
    assert summary["eval_json"]["val/mse"] == pytest.approx(min(vals))  # eval.json scores the best checkpoint
    assert (run.plots / "val_mse.png").is_file() and (run.path / "config.json").is_file()


def test_load_run_restores_the_best_checkpoint_of_its_config_class(regression_run):
    cfg, run, _ = regression_run
    loaded_cfg, ts, ckpt = load_run(REGRESSION, run.path)
    assert loaded_cfg == cfg and ckpt.name == "step_000000030"  # the lowest val/mse here is the last
    assert tree.equal(ts.params, checkpoint.load_params(ckpt))
    with pytest.raises(CheckpointError, match="its config is not a SegTrainConfig"):
        load_run(SEG_TASK, run.path)


def test_resume_of_a_third_application_is_bit_identical(regression_run, tmp_path):
    cfg, run, _ = regression_run
    copy = tmp_path / "interrupted"
    shutil.copytree(run.path, copy)
    shutil.rmtree(copy / "checkpoints" / "step_000000030")  # as if killed before the last save
    _, summary = train_regression(dataclasses.replace(cfg, resume=copy))
    assert summary["start_step"] == 20 and summary["steps"] == 30
    final = "checkpoints/step_000000030"
    assert tree.equal(checkpoint.load_params(copy / final), checkpoint.load_params(run.path / final))


def test_resume_step_continues_from_an_older_checkpoint_bit_for_bit_and_sets_the_later_ones_aside(
        regression_run, tmp_path):
    """`--resume RUN --resume-step 20`: step 30 renamed `.superseded` (never deleted), the metrics rows
    past 20 dropped, the run retrained to the same bits, and config.json keeps no resume_step."""
    cfg, run, _ = regression_run
    copy = tmp_path / "rewound"
    shutil.copytree(run.path, copy)
    assert checkpoint.CheckpointManager(copy / "checkpoints").steps() == [20, 30]  # keep_last 2
    _, summary = train_regression(dataclasses.replace(cfg, resume=copy, resume_step=20))
    assert summary["start_step"] == 20 and summary["steps"] == 30
    assert (copy / "checkpoints" / "step_000000030.superseded").is_dir()
    final = "checkpoints/step_000000030"
    assert tree.equal(checkpoint.load_params(copy / final), checkpoint.load_params(run.path / final))
    assert [r["step"] for r in open_run(copy).metrics("val")] == [10, 20, 30]  # no duplicated rows
    assert config_lib.load(RegressionConfig, copy / "config.json").resume_step is None


def test_resume_step_without_its_checkpoint_names_the_steps_there_are(regression_run, tmp_path):
    cfg, run, _ = regression_run
    copy = tmp_path / "rewound"
    shutil.copytree(run.path, copy)
    with pytest.raises(CheckpointError, match=r"no checkpoint of step 15 .* steps \[20, 30\]"):
        train_regression(dataclasses.replace(cfg, resume=copy, resume_step=15))
    with pytest.raises(ConfigError, match="resume_step .* needs --resume"):
        dataclasses.replace(cfg, resume_step=20)


# ------------------------------------------------------------------------------ the shared config fields


def test_each_task_config_keeps_its_own_defaults_of_the_shared_fields():
    seg, asr = SegTrainConfig(), AsrTrainConfig()
    assert (seg.steps, seg.lr, seg.weight_decay, seg.warmup_steps, seg.grad_clip, seg.eval_every, seg.experiment) == (
        1000, 3e-3, 1e-4, 50, 1.0, 100, "seg")
    assert (asr.steps, asr.lr, asr.weight_decay, asr.warmup_steps, asr.grad_clip, asr.eval_every, asr.experiment) == (
        2000, 1e-3, 1e-2, 100, 5.0, 200, "asr")
    assert (seg.batch_size, seg.keep_last, seg.precision) == (asr.batch_size, asr.keep_last, asr.precision)


def test_the_shared_fields_keep_one_docstring_in_every_task_config():
    for name in ("steps", "lr", "experiment", "patience"):
        doc = get_field_docstring(TrainConfig, name, ())
        assert doc and get_field_docstring(SegTrainConfig, name, ()) == doc == get_field_docstring(
            AsrTrainConfig, name, ())


def test_an_old_flat_config_file_loads_with_the_shared_fields(tmp_path):
    saved = config_lib.to_dict(SegTrainConfig(steps=7, lr=0.5, experiment="old"))
    assert {"steps", "lr", "batch_size", "resume"} <= set(saved)  # flat, as before the shared base
    back = config_lib.from_dict(SegTrainConfig, {k: saved[k] for k in reversed(list(saved))})  # any order
    assert (back.steps, back.lr, back.experiment) == (7, 0.5, "old")


@pytest.mark.parametrize("cls,kw,message", [
    (SegTrainConfig, {"lr": 0.0}, "SegTrainConfig: lr must be > 0, got 0.0"),
    (AsrTrainConfig, {"batch_size": 0}, "AsrTrainConfig: batch_size must be >= 1, got 0"),
    (SegTrainConfig, {"precision": "fp8"}, "SegTrainConfig: precision must be one of 'fp32', 'bf16', 'fp16', got 'fp8'"),
    (AsrTrainConfig, {"steps": 0}, "AsrTrainConfig: steps must be >= 1, got 0"),
    (SegTrainConfig, {"grad_clip": -1.0}, "SegTrainConfig: weight_decay and grad_clip must be >= 0"),
])
def test_bad_shared_fields_are_config_errors_naming_the_task_config(cls, kw, message):
    with pytest.raises(ConfigError) as info:
        cls(**kw)
    assert str(info.value) == message


def test_a_task_config_naming_an_unknown_shared_field_fails_when_defined():
    with pytest.raises(TypeError, match=r"\['stepz'\] are not TrainConfig fields"):
        @dataclasses.dataclass(frozen=True)
        class Typo(TrainConfig, stepz=3):
            pass


# ------------------------------------------------------------------------------ Ctrl-C in both applications


@pytest.mark.parametrize("script,args,experiment", [
    ("seg_train", ["tiny", "--steps", "6", "--val-size", "4"], "seg-tiny"),
    ("asr_train", ["tiny"], "asr-tiny"),
])
def test_ctrl_c_saves_a_checkpoint_and_exits_130_with_the_resume_command(script, args, experiment, tmp_path, capsys,
                                                                          monkeypatch):
    real = trainer.make_train_step

    def interrupting(*a, **kw):
        step = real(*a, **kw)

        def wrapped(ts, batch):
            if int(ts.step) == 2:  # Ctrl-C during the third step
                raise KeyboardInterrupt
            return step(ts, batch)
        return wrapped

    monkeypatch.setattr(trainer, "make_train_step", interrupting)
    with pytest.raises(SystemExit) as exit_info:
        importlib.import_module(script).main([*args, "--runs-dir", str(tmp_path)])
    assert exit_info.value.code == 130
    err = capsys.readouterr().err
    (run,) = (tmp_path / experiment).iterdir()
    assert f"interrupted: training stopped at step 2 with a checkpoint saved; continue with --resume {run}" in err
    assert [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("step_")] == ["step_000000002"]
    assert not (run / "eval.json").exists()
