"""Real-image folders end to end: a patch-trained run with a class map, evaluated and inferred at full
resolution by sliding windows (seg_eval.py, seg_infer.py), and the EM benchmark on the real folder."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from funcml import config
from funcml.seg.task import PRESETS, SegTrainConfig, load_model, train
from funcml.seg.unet import UNetConfig
from conftest import binary_folder

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


seg_eval = _load("seg_eval_real", ROOT / "experiments" / "seg_eval.py")
seg_infer = _load("seg_infer_real", ROOT / "experiments" / "seg_infer.py")


@pytest.fixture(scope="module")
def patch_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    folder = binary_folder(root / "ds", n=5, size=(40, 36))
    cfg = SegTrainConfig(model=UNetConfig(in_channels=3, num_classes=2, depth=2, base_width=4), folder=folder,
                         class_map="0:0,255:1", patch=(16, 16), fg_fraction=1 / 3, steps=4, batch_size=4,
                         eval_every=4, lr=1e-2, warmup_steps=1, val_stems=("s04",), runs_dir=root / "runs",
                         experiment="t", augment=PRESETS["folder"][1].augment)
    run, summary = train(cfg, progress=False)
    return folder, run.path, summary


def test_a_patch_run_saves_its_resolved_channels_stats_and_patch(patch_run):
    _, run, summary = patch_run
    saved = config.load(SegTrainConfig, run / "config.json")
    assert saved.model.in_channels == 1 and saved.image_channels == 1 and saved.patch == (16, 16)
    assert saved.mean is not None and len(saved.mean) == 1 and saved.std[0] > 0
    assert summary["eval_json"]["num_images"] == 1


def test_seg_eval_scores_full_size_files_with_the_runs_class_map(patch_run, tmp_path, capsys):
    folder, run, _ = patch_run
    report = seg_eval.main(["--run", str(run), "--folder", str(folder), "--out", str(tmp_path / "ev")])
    assert report["num_images"] == 5 and report["sliding_window"]["window"] == [16, 16]
    per_class = report["per_class"]
    assert per_class["class_0"]["support"] + per_class["class_1"]["support"] == 5 * 40 * 36  # full size


def test_seg_eval_with_tta_gives_another_prediction_path(patch_run, tmp_path):
    folder, run, _ = patch_run
    report = seg_eval.main(["--run", str(run), "--folder", str(folder), "--out", str(tmp_path / "ev"), "--tta",
                            "--overlap", "0.25"])
    assert report["sliding_window"]["tta"] is True and report["sliding_window"]["overlap"] == 0.25


def test_seg_infer_writes_full_size_masks_and_a_small_grid(patch_run, tmp_path):
    folder, run, _ = patch_run
    out = tmp_path / "pred"
    seg_infer.main(["--run", str(run), "--input", str(folder / "images"), "--masks", str(folder / "masks"),
                    "--out", str(out)])
    mask = Image.open(out / "s00_mask.png")
    assert mask.size == (36, 40)
    assert set(torch.unique(torch.tensor(np.asarray(mask).ravel().tolist())).tolist()) <= {0, 1}
    assert Image.open(out / "grid.png").width < 1200


def test_the_folder_preset_without_folder_is_a_clear_error(tmp_path):
    from funcml.errors import ConfigError

    cfg = PRESETS["folder"][1]
    with pytest.raises(ConfigError, match="--folder"):
        train(SegTrainConfig(**{**cfg.__dict__, "runs_dir": tmp_path}), progress=False)


@pytest.mark.slow
def test_em_benchmark_runs_end_to_end_on_the_real_folder(real_data, tmp_path):
    folder = real_data("em-membranes")
    bench = _load("seg_real_bench", ROOT / "benchmarks" / "seg_real.py")
    out = tmp_path / "em.json"
    payload = bench.main(bench.SegRealConfig(folder=folder, steps=2, out=out, runs_dir=tmp_path / "runs"))
    saved = json.loads(out.read_text())
    assert saved["train"]["steps"] == 2 and saved["config"]["class_map"] == "0:1,255:0"
    assert saved["config"]["model"]["in_channels"] == 1 and saved["test_stems"] == ["em15", "em16", "em17", "em18",
                                                                                    "em19"]
    assert [r["prediction"].split()[0] for r in payload["results"]] == ["whole", "sliding", "sliding"]
    for row in payload["results"]:
        assert 0.0 <= row["membrane_iou"] <= 1.0 and 0.0 <= row["pixel_error"] <= 1.0


def test_em_ablation_rows_add_one_component_each():
    bench = _load("seg_real_bench_rows", ROOT / "benchmarks" / "seg_real.py")
    preset = PRESETS["folder"][1]
    rows = {name: bench.ablation_config(preset, name) for name in bench.ABLATION}
    assert rows["recipe"] == preset
    whole, patches, fg, elastic = rows["whole-images"], rows["patches"], rows["fg-sampling"], rows["elastic"]
    assert whole.patch is None and whole.batch_size == 1 and whole.fg_fraction == 0.0
    assert patches.patch == preset.patch and patches.batch_size == preset.batch_size and patches.fg_fraction == 0.0
    assert fg.fg_fraction == preset.fg_fraction and fg.augment == patches.augment
    assert fg.augment.elastic_p == 0.0 and fg.augment.rotate_p == 0.0 and fg.augment.gamma_p == 0.0
    assert elastic.augment.elastic_p == preset.augment.elastic_p > 0 and elastic.augment.rotate_p == 0.0
    assert elastic.augment.noise_p == 0.0 and preset.augment.rotate_p > 0 and preset.augment.noise_p > 0


def test_em_ablation_row_names_are_checked():
    from funcml.errors import ConfigError

    bench = _load("seg_real_bench_rows2", ROOT / "benchmarks" / "seg_real.py")
    with pytest.raises(ConfigError, match="whole-images"):
        bench.ablation_config(PRESETS["folder"][1], "dropout")
