"""Segmentation training end to end (funcml.seg.task, experiments/seg_train.py, experiments/main.py).

Every test uses a tiny config (16x16 images, depth 2, width 4, one transformer layer) so the
whole file runs in well under a minute on 2 cores.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from funcml import checkpoint, config, random, tree
from funcml.errors import CheckpointError, DataError
from funcml.nn import model as models
from funcml.seg.hybrid import UNetTransformerConfig
from funcml.seg.losses import ce_dice_loss
from funcml.seg.shapes import ShapesConfig, shapes_batch, split_key
from funcml.seg.task import (PRESETS, SegTrainConfig, evaluate, load_model, predict, preprocess, train,
                             val_batches)
from funcml.seg.unet import UNetConfig

ROOT = Path(__file__).resolve().parents[1]
DATA = ShapesConfig(height=16, width=16, objects=(1, 2), size=(0.25, 0.4))
# The smoke config: one large shape on a plain background, shape vs background, cross-entropy only.
EASY_DATA = ShapesConfig(height=16, width=16, objects=(1, 1), size=(0.3, 0.45), mode="binary", occlusion_prob=0.0,
                         overlap_prob=0.0, noise_std=0.0, texture=0.0, gradient=0.0)
TINY_MODELS = {
    "unet": UNetConfig(in_channels=3, num_classes=5, depth=2, base_width=4),
    "unet-transformer": UNetTransformerConfig(in_channels=3, num_classes=5, depth=2, base_width=4, num_layers=1,
                                              num_heads=2),
}
SMOKE_STEPS = 60
SMOKE_FACTOR = 2.0  # measured: 2.9x (unet), 2.5x (unet-transformer)


def tiny_config(model: UNetConfig, runs_dir: Path, **kw) -> SegTrainConfig:
    base = dict(model=model, data=DATA, steps=SMOKE_STEPS, batch_size=8, lr=1e-2, warmup_steps=5,
                eval_every=20, val_size=16, runs_dir=runs_dir, experiment="test")
    return SegTrainConfig(**{**base, **kw})


@pytest.fixture(scope="module", params=sorted(TINY_MODELS))
def trained(request, tmp_path_factory):
    """(cfg, run, summary) of a 60-step run of each variant on the easy binary config."""
    model = dataclasses.replace(TINY_MODELS[request.param], num_classes=2)
    cfg = tiny_config(model, tmp_path_factory.mktemp(f"runs-{request.param}"), data=EASY_DATA, lr=2e-2,
                      dice_weight=0.0)
    run, summary = train(cfg, progress=False)
    return cfg, run, summary


def _loss(params, state, cfg: SegTrainConfig, images, masks) -> float:
    with torch.no_grad():
        logits, _ = models.apply(params, state, preprocess(images, cfg), cfg.model, train=False)
    return float(ce_dice_loss(logits, masks, ce_weight=cfg.ce_weight, dice_weight=cfg.dice_weight))


def test_loss_falls_at_least_twofold_in_60_steps_on_an_easy_config(trained):
    cfg, run, _ = trained
    images, masks = next(val_batches(cfg))
    init_params, init_state = models.init(random.fold_in(random.key(cfg.seed), "init"), cfg.model)
    _, _, params, state = load_model(run.path)
    before, after = _loss(init_params, init_state, cfg, images, masks), _loss(params, state, cfg, images, masks)
    assert after < before / SMOKE_FACTOR, (before, after)


def test_run_dir_holds_config_metrics_eval_plots_and_checkpoints(trained):
    cfg, run, summary = trained
    assert config.load(SegTrainConfig, run.path / "config.json") == cfg
    header = (run.path / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"step", "split", "loss", "val/miou", "val/mdice", "val/pixel_acc"} <= set(header)
    ev = json.loads((run.path / "eval.json").read_text())
    assert ev["class_names"] == ["background", "shape"]
    assert len(ev["per_class_iou"]) == len(ev["per_class_dice"]) == 2
    assert len(ev["per_image_dice"]) == ev["num_images"] == cfg.val_size
    assert 0.0 <= ev["mean_iou"] <= 1.0 and 0.0 <= ev["pixel_accuracy"] <= 1.0
    for name in ("loss.png", "val_miou.png"):
        assert (run.plots / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    steps = checkpoint.CheckpointManager(run.checkpoints).steps()
    assert SMOKE_STEPS in steps and len(steps) <= cfg.keep_last + 1
    assert summary["steps"] == SMOKE_STEPS and summary["eval"]["val/miou"] == pytest.approx(
        run.metrics("val")[-1]["val/miou"])


def test_eval_json_scores_the_checkpoint_load_model_returns(trained):
    cfg, run, _ = trained
    ev = json.loads((run.path / "eval.json").read_text())
    _, model_cfg, params, state = load_model(run.path)
    again = evaluate(params, state, model_cfg, val_batches(cfg, batch_size=5), cfg)
    assert again["mean_iou"] == pytest.approx(ev["mean_iou"], abs=1e-12)
    assert again["per_image_dice"] == pytest.approx(ev["per_image_dice"], nan_ok=True)


def test_resume_continues_the_step_count_and_matches_the_uninterrupted_run_bit_for_bit(trained, tmp_path):
    cfg, run, _ = trained
    copy = tmp_path / "interrupted"
    shutil.copytree(run.path, copy)
    shutil.rmtree(copy / "checkpoints" / f"step_{SMOKE_STEPS:09d}")  # as if killed before the last save
    resumed_from = checkpoint.CheckpointManager(copy / "checkpoints").latest()
    start = checkpoint.load_meta(resumed_from)["step"]
    assert 0 < start < SMOKE_STEPS

    _, summary = train(dataclasses.replace(cfg, resume=copy), progress=False)

    assert summary["start_step"] == start and summary["steps"] == SMOKE_STEPS
    final = f"step_{SMOKE_STEPS:09d}"
    got = checkpoint.load_params(copy / "checkpoints" / final)
    want = checkpoint.load_params(run.checkpoints / final)
    assert tree.equal(got, want), tree.first_difference(got, want)


def test_resume_refuses_a_run_trained_with_another_model(trained, tmp_path):
    cfg, run, _ = trained
    other = dataclasses.replace(cfg.model, base_width=8)
    with pytest.raises(Exception, match="different model"):
        train(dataclasses.replace(cfg, model=other, resume=run.path), progress=False)


def test_load_model_from_a_run_dir_takes_the_best_checkpoint(trained):
    cfg, run, _ = trained
    train_cfg, model_cfg, params, state = load_model(run.path)
    best = checkpoint.CheckpointManager(run.checkpoints, best_metric="val/miou").best()
    assert train_cfg == cfg and model_cfg == cfg.model
    assert tree.equal(params, checkpoint.load_params(best))
    assert set(tree.flatten_with_names(state)) == set(tree.flatten_with_names(models.init(random.key(0), cfg.model)[1]))


def test_load_model_from_a_checkpoint_dir(trained):
    cfg, run, _ = trained
    ckpt = run.checkpoints / f"step_{SMOKE_STEPS:09d}"
    train_cfg, model_cfg, params, _ = load_model(ckpt)
    assert train_cfg == cfg and model_cfg == cfg.model
    assert tree.equal(params, checkpoint.load_params(ckpt))


def test_load_model_names_a_wrong_path(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_model(tmp_path / "nope")
    with pytest.raises(DataError, match="neither a run directory"):
        load_model(tmp_path)
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        load_model(tmp_path / "run")


def test_evaluate_on_perfect_predictions_gives_miou_one_and_nan_for_absent_classes(key):
    model = TINY_MODELS["unet"]
    cfg = SegTrainConfig(model=model, data=DATA)
    params, state = models.init(key, model)
    images, _ = shapes_batch(split_key(key, "val"), 6, DATA)
    pred, probs = predict(params, state, model, preprocess(images, cfg))
    perfect = pred.clone()
    perfect[0, :3, :] = 255  # ignored pixels do not count
    m = evaluate(params, state, model, [(images[:4], perfect[:4]), (images[4:], perfect[4:])], cfg)
    assert m["mean_iou"] == 1.0 and m["mean_dice"] == 1.0 and m["pixel_accuracy"] == 1.0
    assert m["per_image_dice"] == [1.0] * 6
    present = set(pred.unique().tolist())
    for k in range(5):
        assert (m["per_class_iou"][k] == 1.0) if k in present else math.isnan(m["per_class_iou"][k])
    assert probs.shape == (6, 5, 16, 16) and torch.allclose(probs.sum(1), torch.ones(6, 16, 16))


def test_evaluate_counts_every_wrong_pixel(key):
    model = TINY_MODELS["unet"]
    cfg = SegTrainConfig(model=model, data=DATA)
    params, state = models.init(key, model)
    images, _ = shapes_batch(split_key(key, "val"), 2, DATA)
    pred, _ = predict(params, state, model, preprocess(images, cfg))
    target = pred.clone()
    target[1] = torch.where(pred[1] == 4, 3, 4)  # image 1: every pixel wrong
    m = evaluate(params, state, model, [(images, target)], cfg)
    assert m["pixel_accuracy"] == pytest.approx(0.5)
    assert m["per_image_dice"][0] == 1.0 and m["per_image_dice"][1] == 0.0


def test_val_batches_are_the_fixed_validation_split(key):
    cfg = tiny_config(TINY_MODELS["unet"], Path("unused"), val_size=10)
    batches = list(val_batches(cfg, batch_size=4))
    assert [b[0].shape[0] for b in batches] == [4, 4, 2]
    images, masks = shapes_batch(split_key(random.key(cfg.data_seed), "val"), 10, cfg.data)
    assert torch.equal(torch.cat([b[0] for b in batches]), images)
    assert torch.equal(torch.cat([b[1] for b in batches]), masks)


def test_preprocess_normalizes_per_channel():
    cfg = SegTrainConfig(model=TINY_MODELS["unet"], data=DATA, mean=(0.5, 0.0, 1.0), std=(0.5, 1.0, 0.25))
    x = torch.full((1, 3, 2, 2), 0.5)
    out = preprocess(x, cfg)
    assert out.dtype == torch.float32
    assert out[0, :, 0, 0].tolist() == [0.0, 0.5, -2.0]


def test_training_on_a_folder_holds_out_a_validation_fraction(tmp_path):
    from funcml.seg.folder import write_example_folder

    write_example_folder(tmp_path / "ds", random.key(3), 10, DATA)
    cfg = tiny_config(TINY_MODELS["unet"], tmp_path / "runs", folder=tmp_path / "ds", steps=4, eval_every=2,
                      val_fraction=0.3)
    run, summary = train(cfg, progress=False)
    ev = json.loads((run.path / "eval.json").read_text())
    assert ev["num_images"] == 3 and ev["class_names"] == [f"class_{k}" for k in range(5)]
    assert summary["steps"] == 4


def test_presets_start_with_their_command_and_build():
    assert {"unet", "unet-transformer"} <= set(PRESETS)
    for name, (description, cfg) in PRESETS.items():
        assert description.startswith(f"python experiments/seg_train.py {name}")
        assert isinstance(cfg, SegTrainConfig)
    assert type(PRESETS["unet"][1].model) is UNetConfig
    assert type(PRESETS["unet-transformer"][1].model) is UNetTransformerConfig


def test_cli_in_a_subprocess_runs_the_tiny_preset(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    args = ["tiny", "--steps", "4", "--eval-every", "2", "--val-size", "4", "--runs-dir", str(tmp_path)]
    r = subprocess.run([sys.executable, "experiments/seg_train.py", *args], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "run directory" in r.stdout and "val mean IoU" in r.stdout
    (run,) = (tmp_path / "seg-tiny").iterdir()
    assert (run / "eval.json").is_file()


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"_funcml_experiments_{name}", ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def test_cli_bad_flag_exits_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        _load_script("seg_train").main(["tiny", "--no-such-flag", "1"])
    assert exit_info.value.code == 2
    assert "--no-such-flag" in capsys.readouterr().err


def test_cli_missing_resume_folder_is_a_one_line_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _load_script("seg_train").main(["tiny", "--resume", str(tmp_path / "missing"), "--runs-dir", str(tmp_path)])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --resume") and "no such run directory" in lines[0]
    assert not (tmp_path / "seg-tiny").exists()


def test_main_job_shrunk_by_flags_prints_both_tables_and_writes_overlays(tmp_path, capsys):
    main_job = _load_script("main")
    before = torch.get_num_threads()
    summary = main_job.main([
        "--seg.steps", "4", "--seg.eval-every", "2", "--seg.val-size", "4", "--seg.batch-size", "4",
        "--seg.data.height", "16", "--seg.data.width", "16", "--seg.model.depth", "2", "--seg.model.base-width", "4",
        "--seg.model.num-layers", "1", "--seg.model.num-heads", "2", "--overlays", "2",
        "--asr.num-train", "8", "--asr.num-val", "4", "--asr.num-test", "4", "--asr.steps", "2",
        "--asr.eval-every", "2", "--asr.speech.digits-len", "1", "2", "--asr.model.encoder.num-layers", "1",
        "--asr.model.encoder.d-model", "16", "--asr.model.encoder.d-ff", "32", "--asr.model.decoder-layers", "1",
        "--asr.cache-dir", str(tmp_path / "cache"), "--runs-dir", str(tmp_path)])
    torch.set_num_threads(before)
    out = capsys.readouterr().out
    assert "mean" in out and "triangle" in out and "overlays" in out
    assert "held-out voices" in out and "CER" in out
    run = Path(summary["seg"]["run"])
    assert (run / "plots" / "overlays.png").is_file() and (run / "plots" / "val_miou.png").is_file()
    saved = json.loads((tmp_path / "main-summary.json").read_text())
    assert saved["seg"]["mean_iou"] == summary["seg"]["mean_iou"]
    assert 0 <= saved["asr"]["test_cer"] and Path(saved["asr"]["run"]).is_dir()


@pytest.mark.compile
def test_compiled_unet_train_step_compiles_once_and_equals_eager(tmp_path):
    # Inductor returns the 1x1 head kernel [K, C, 1, 1] (and its Adam moments) channels-last,
    # with other strides on the size-1 dims; make_train_step views them back, so the second
    # call does not recompile (CI's inductor stage checks this; aot_eager keeps strides).
    from funcml.seg.task import make_loss_fn
    from funcml.train import make_train_step
    from funcml.trainer import initial_state

    cfg = tiny_config(TINY_MODELS["unet"], tmp_path, steps=10)
    ts0, tx = initial_state(cfg)
    eager = make_train_step(make_loss_fn(cfg), tx, compile=False)
    compiled = make_train_step(make_loss_fn(cfg), tx, compile=True)
    images, masks = shapes_batch(random.key(0), 4, DATA)
    batch = (preprocess(images, cfg), masks)
    ts_e = ts_c = ts0
    for i in range(3):
        if i == 1:
            torch.compiler.set_stance("fail_on_recompile")
        try:
            ts_c, m_c = compiled(ts_c, batch)
        finally:
            torch.compiler.set_stance("default")
        ts_e, m_e = eager(ts_e, batch)
        torch.testing.assert_close(m_c["loss"], m_e["loss"], rtol=1e-4, atol=1e-5)
    assert tree.allclose(ts_c.model_state, ts_e.model_state, rtol=1e-4, atol=1e-5)
