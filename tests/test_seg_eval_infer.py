"""Segmentation pictures (funcml.seg.viz) and the eval / infer command-line tools on a tiny trained run."""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from funcml import random
from funcml.errors import RangeError, ShapeError
from funcml.seg.folder import DEFAULT_PALETTE, save_mask_png, write_example_folder
from funcml.seg.viz import colorize, legend, overlay, overlay_grid, save_overlay_grid

REPO = Path(__file__).resolve().parents[1]


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"_funcml_experiments_{name}", REPO / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


seg_eval = _load_script("seg_eval")
seg_infer = _load_script("seg_infer")

PALETTE = ((0, 0, 0), (200, 0, 100), (40, 50, 60))


def _colors(im: Image.Image) -> set[tuple[int, int, int]]:
    return {tuple(int(v) for v in c) for c in np.asarray(im.convert("RGB")).reshape(-1, 3)}


# ----------------------------------------------------------------------------------------- viz


def test_colorize_maps_ids_to_palette_and_ignore_to_white():
    mask = torch.tensor([[0, 1], [2, 255]])
    rgb = colorize(mask, PALETTE)
    assert rgb.dtype == torch.uint8 and rgb.shape == (2, 2, 3)
    assert rgb.tolist() == [[[0, 0, 0], [200, 0, 100]], [[40, 50, 60], [255, 255, 255]]]


def test_colorize_reuses_the_palette_past_its_end():
    rgb = colorize(torch.tensor([[3, 4]]), PALETTE)
    assert rgb.tolist() == [[list(PALETTE[0]), list(PALETTE[1])]]


def test_colorize_default_palette_is_the_mask_png_palette():
    rgb = colorize(torch.arange(5).reshape(1, 5))
    assert [tuple(c) for c in rgb[0].tolist()] == list(DEFAULT_PALETTE[:5])


def test_overlay_blends_classes_and_leaves_background_and_ignore_uncoloured():
    image = torch.full((3, 2, 2), 0.4)  # 0.4 * 255 = 102
    mask = torch.tensor([[0, 1], [255, 1]])
    im = overlay(image, mask, alpha=0.45, palette=PALETTE, scale=1)
    assert im.mode == "RGB" and im.size == (2, 2)
    px = np.asarray(im)
    # 0.55 * 102 + 0.45 * (200, 0, 100) = (146.1, 56.1, 101.1)
    assert px[0, 1].tolist() == [146, 56, 101] and px[1, 1].tolist() == [146, 56, 101]
    assert px[0, 0].tolist() == [102, 102, 102] and px[1, 0].tolist() == [102, 102, 102]


def test_overlay_accepts_grey_images():
    im = overlay(torch.zeros(1, 4, 6), torch.zeros(4, 6, dtype=torch.int64), scale=2)
    assert im.mode == "RGB" and im.size == (12, 8)


def test_overlay_upscales_small_images_with_nearest():
    image = torch.zeros(3, 16, 16)
    mask = torch.zeros(16, 16, dtype=torch.int64)
    mask[:8] = 1
    im = overlay(image, mask, alpha=1.0, palette=PALETTE)
    assert im.size == (256, 256)
    assert _colors(im) == {PALETTE[1], (0, 0, 0)}  # no interpolated in-between colours


def test_overlay_with_class_names_adds_a_legend_strip_under_the_image():
    names = ("background", "circle", "square")
    plain = overlay(torch.full((3, 64, 64), 0.5), torch.zeros(64, 64, dtype=torch.int64), palette=PALETTE)
    with_legend = overlay(torch.full((3, 64, 64), 0.5), torch.zeros(64, 64, dtype=torch.int64), palette=PALETTE,
                          class_names=names)
    assert with_legend.width == plain.width and with_legend.height > plain.height
    strip = with_legend.crop((0, plain.height, with_legend.width, with_legend.height))
    assert set(PALETTE) <= _colors(strip)  # one swatch per class


def test_overlay_rejects_a_mask_of_another_size():
    with pytest.raises(ShapeError, match="mask"):
        overlay(torch.zeros(3, 4, 4), torch.zeros(4, 5, dtype=torch.int64))


def test_overlay_rejects_images_outside_unit_range():
    with pytest.raises(RangeError, match="image"):
        overlay(torch.full((3, 4, 4), 2.0), torch.zeros(4, 4, dtype=torch.int64))


def test_legend_wraps_into_more_rows_when_narrow():
    names = ("background", "circle", "square", "triangle", "ellipse")
    wide, narrow = legend(names, width=1000), legend(names, width=60)
    assert wide.width == 1000 and narrow.height > wide.height
    assert set(DEFAULT_PALETTE[:5]) <= _colors(narrow)


def _grid_inputs(n: int, h: int = 16, w: int = 12):
    k = random.key(7)
    images = random.uniform(random.fold_in(k, "x"), (n, 3, h, w))
    masks = random.randint(random.fold_in(k, "y"), (n, h, w), 0, 3)
    preds = random.randint(random.fold_in(k, "p"), (n, h, w), 0, 3)
    return images, masks, preds


def test_grid_width_is_columns_of_scaled_cells_with_padding():
    images, masks, preds = _grid_inputs(2)
    with_gt = overlay_grid(images, masks, preds, ("a", "b", "c"), scale=8, pad=4)
    without_gt = overlay_grid(images, None, preds, ("a", "b", "c"), scale=8, pad=4)
    assert with_gt.width == 3 * 12 * 8 + 4 * 4
    assert without_gt.width == 2 * 12 * 8 + 3 * 4


def test_grid_adds_one_scaled_row_per_image_up_to_max_rows():
    names = ("a", "b", "c")
    heights = {n: overlay_grid(*_grid_inputs(n), names, scale=4, pad=4, max_rows=3).height for n in (1, 2, 3, 5)}
    assert heights[2] - heights[1] == 16 * 4 + 4
    assert heights[5] == heights[3]


def test_grid_cells_hold_the_upscaled_masks():
    images, masks, preds = _grid_inputs(1)
    grid = np.asarray(overlay_grid(images, masks, preds, ("a", "b", "c"), scale=2, pad=4, palette=PALETTE))
    cell_w, top = 12 * 2, None
    expected = np.repeat(np.repeat(colorize(preds[0], PALETTE).numpy(), 2, axis=0), 2, axis=1)
    x0 = 4 + 2 * (cell_w + 4)  # the third column
    for y in range(grid.shape[0] - expected.shape[0]):
        if np.array_equal(grid[y:y + expected.shape[0], x0:x0 + cell_w], expected):
            top = y
            break
    assert top is not None


def test_save_overlay_grid_writes_a_png_and_no_temporary(tmp_path):
    images, masks, preds = _grid_inputs(3)
    path = save_overlay_grid(images, masks, preds, ("a", "b", "c"), tmp_path / "grid.png")
    assert Image.open(path).format == "PNG"
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]


# ----------------------------------------------------------------------------------------- CLIs


# `seg_tiny_run` (tests/conftest.py): the session's shared tiny preset run, one checkpoint (read-only).


@pytest.fixture(scope="module")
def train_cfg(seg_tiny_run):
    from funcml.seg import task

    return task.load_model(seg_tiny_run)[0]


def _exit_2_with_one_line(capsys, main, args) -> str:
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_eval_writes_metrics_files_with_expected_columns(seg_tiny_run, tmp_path, capsys):
    out = tmp_path / "eval"
    seg_eval.main(["--run", str(seg_tiny_run), "--out", str(out), "--batch-size", "8"])
    rows = _read_csv(out / "metrics.csv")
    assert list(rows[0]) == ["class", "IoU", "Dice", "support"]
    names = [r["class"] for r in rows]
    assert names[0] == "background" and names[-1] == "mean"
    for r in rows:
        for col in ("IoU", "Dice"):
            v = float(r[col])
            assert math.isnan(v) or 0.0 <= v <= 1.0
    metrics = json.loads((out / "metrics.json").read_text())
    for m in ("mean_iou", "mean_dice", "pixel_accuracy"):
        assert 0.0 <= metrics[m] <= 1.0
    per_image = _read_csv(out / "per_image_dice.csv")
    assert len(per_image) == metrics["num_images"] > 0
    assert list(per_image[0])[0] == "image" and list(per_image[0])[-1] == "mean_dice"
    printed = capsys.readouterr().out
    assert "background" in printed and "pixel accuracy" in printed


def test_eval_defaults_to_run_eval_and_keeps_other_files(seg_tiny_run, tmp_path):
    run = Path(shutil.copytree(seg_tiny_run, tmp_path / "run"))  # this test writes into the run
    out = run / "eval"
    out.mkdir(exist_ok=True)
    (out / "notes.txt").write_text("keep me")
    seg_eval.main(["--run", str(run)])
    assert (out / "notes.txt").read_text() == "keep me"
    assert {"metrics.json", "metrics.csv", "per_image_dice.csv"} <= {p.name for p in out.iterdir()}
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_eval_on_a_folder_dataset_scores_every_file(seg_tiny_run, train_cfg, tmp_path):
    folder = write_example_folder(tmp_path / "ds", random.key(3), 5, train_cfg.data)
    seg_eval.main(["--run", str(seg_tiny_run), "--folder", str(folder), "--out", str(tmp_path / "out")])
    per_image = _read_csv(tmp_path / "out" / "per_image_dice.csv")
    assert [r["image"] for r in per_image] == ["0000", "0001", "0002", "0003", "0004"]
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert sum(c["support"] for c in metrics["per_class"].values()) == 5 * 16 * 16


def test_eval_missing_run_exits_2_with_one_line(tmp_path, capsys):
    err = _exit_2_with_one_line(capsys, seg_eval.main, ["--run", str(tmp_path / "nope")])
    assert "does not exist" in err


def test_eval_folder_image_without_mask_exits_2(seg_tiny_run, train_cfg, tmp_path, capsys):
    folder = write_example_folder(tmp_path / "ds", random.key(3), 2, train_cfg.data)
    (folder / "masks" / "0001.png").unlink()
    err = _exit_2_with_one_line(capsys, seg_eval.main, ["--run", str(seg_tiny_run), "--folder", str(folder),
                                                         "--out", str(tmp_path / "out")])
    assert "0001" in err and "no mask" in err
    assert not (tmp_path / "out").exists()


def test_eval_folder_class_id_out_of_range_exits_2(seg_tiny_run, train_cfg, tmp_path, capsys):
    folder = write_example_folder(tmp_path / "ds", random.key(3), 2, train_cfg.data)
    save_mask_png(torch.full((16, 16), 9), folder / "masks" / "0000.png")
    err = _exit_2_with_one_line(capsys, seg_eval.main, ["--run", str(seg_tiny_run), "--folder", str(folder),
                                                         "--out", str(tmp_path / "out")])
    assert "[9]" in err and "num_classes=5" in err and "--class-map" in err


def test_eval_draws_a_confusion_matrix_and_per_class_bars_beside_the_metrics(seg_tiny_run, tmp_path):
    out = tmp_path / "eval"
    seg_eval.main(["--run", str(seg_tiny_run), "--out", str(out)])
    for name in ("confusion_matrix.png", "per_class.png"):
        with Image.open(out / name) as im:
            assert im.format == "PNG" and im.size[0] > 300 and im.size[1] > 200
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_eval_saves_the_confusion_matrix_every_figure_comes_from(seg_tiny_run, train_cfg, tmp_path):
    seg_eval.main(["--run", str(seg_tiny_run), "--out", str(tmp_path / "eval")])
    m = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    cm = torch.tensor(m["confusion_matrix"])
    k = len(m["class_names"])
    assert cm.shape == (k, k) and cm.dtype == torch.int64
    assert int(cm.sum()) == m["num_images"] * 16 * 16  # every pixel of the shapes split, none ignored
    assert cm.sum(1).tolist() == [m["per_class"][n]["support"] for n in m["class_names"]]
    assert float(cm.diagonal().sum()) / float(cm.sum()) == pytest.approx(m["pixel_accuracy"], abs=1e-12)
    c64 = cm.to(torch.float64)
    tp, fp, fn = c64.diagonal(), c64.sum(0) - c64.diagonal(), c64.sum(1) - c64.diagonal()
    for c, name in enumerate(m["class_names"]):
        if tp[c] + fp[c] + fn[c] > 0:
            assert m["per_class"][name]["iou"] == pytest.approx(float(tp[c] / (tp[c] + fp[c] + fn[c])), abs=1e-12)


def test_eval_figures_equal_the_task_evaluation(seg_tiny_run, train_cfg, tmp_path):
    from funcml.seg import task

    seg_eval.main(["--run", str(seg_tiny_run), "--out", str(tmp_path / "eval")])
    m = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    _, model_cfg, params, state = task.load_model(seg_tiny_run)
    want = task.evaluate(params, state, model_cfg, task.val_batches(train_cfg), train_cfg)
    assert (m["mean_iou"], m["mean_dice"], m["pixel_accuracy"]) == (want["mean_iou"], want["mean_dice"],
                                                                    want["pixel_accuracy"])
    per_image = [float(r["mean_dice"]) for r in _read_csv(tmp_path / "eval" / "per_image_dice.csv")]
    assert per_image == pytest.approx(want["per_image_dice"], abs=1e-12, nan_ok=True)


def test_eval_scores_a_folder_run_at_its_folder_size(tmp_path):
    from funcml.seg import task
    from funcml.seg.shapes import ShapesConfig
    from funcml.seg.unet import UNetConfig

    data = ShapesConfig(height=20, width=24, channels=1, classes=("circle",), mode="binary")
    train = write_example_folder(tmp_path / "train", random.key(1), 4, data)
    cfg = dataclasses.replace(task.PRESETS["folder"][1], folder=train, folder_size=(16, 16), patch=None, steps=1,
                              eval_every=1, batch_size=2, warmup_steps=1,
                              model=UNetConfig(in_channels=1, num_classes=2, depth=2, base_width=4),
                              runs_dir=tmp_path / "runs")
    run, _ = task.train(cfg, progress=False)
    other = write_example_folder(tmp_path / "other", random.key(2), 3, data)  # 20x24 files
    seg_eval.main(["--run", str(run.path), "--folder", str(other), "--out", str(tmp_path / "eval")])
    m = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert sum(map(sum, m["confusion_matrix"])) == 3 * 16 * 16  # resized to the training size, not data's 20x24


def test_confusion_matrix_picture_rejects_a_matrix_that_is_not_square_or_names_that_do_not_fit(tmp_path):
    from funcml.seg.viz import save_confusion_matrix

    with pytest.raises(ShapeError, match=r"\[2, 3\]"):
        save_confusion_matrix(torch.zeros(2, 3, dtype=torch.int64), ["a", "b"], tmp_path / "cm.png")
    with pytest.raises(ShapeError, match="expected 2 names"):
        save_confusion_matrix(torch.zeros(2, 2, dtype=torch.int64), ["a"], tmp_path / "cm.png")
    assert not list(tmp_path.iterdir())


def test_pictures_of_a_class_without_pixels_are_drawn(tmp_path):
    from funcml.seg.viz import save_confusion_matrix, save_per_class_scores

    cm = torch.tensor([[5, 1, 0], [2, 7, 0], [0, 0, 0]])
    assert save_confusion_matrix(cm, ["bg", "a", "b"], tmp_path / "cm.png").is_file()
    assert save_per_class_scores([0.6, 0.7, float("nan")], [0.75, 0.8, float("nan")], ["bg", "a", "b"],
                                 tmp_path / "pc.png").is_file()
    with pytest.raises(ShapeError, match="one value per class"):
        save_per_class_scores([0.5], [0.5, 0.5], ["bg", "a"], tmp_path / "x.png")


def _infer_folder(tmp_path: Path, train_data, n: int = 3, size: tuple[int, int] = (20, 24)) -> Path:
    """An example folder whose images are `size` (w, h), unlike the 16x16 the model was trained on."""
    cfg = dataclasses.replace(train_data, width=size[0], height=size[1])
    return write_example_folder(tmp_path / "ds", random.key(11), n, cfg)


def test_infer_on_a_folder_with_masks_writes_masks_overlays_and_grid(seg_tiny_run, train_cfg, tmp_path):
    folder = _infer_folder(tmp_path, train_cfg.data)
    out = tmp_path / "pred"
    seg_infer.main(["--run", str(seg_tiny_run), "--input", str(folder / "images"), "--masks", str(folder / "masks"),
                    "--out", str(out)])
    for stem in ("0000", "0001", "0002"):
        with Image.open(out / f"{stem}_mask.png") as im:
            assert im.mode == "P" and im.size == (20, 24)
            ids = np.asarray(im)
        assert ids.min() >= 0 and ids.max() < train_cfg.model.num_classes
        with Image.open(out / f"{stem}_overlay.png") as ov:
            assert ov.width >= 20 and ov.height > 24
    with Image.open(out / "grid.png") as grid:
        assert grid.width == 3 * 16 * 4 + 4 * 4  # image | ground truth | prediction at the training size


def test_infer_predicts_a_native_size_folder_run_at_each_image_size_as_the_segmenter_does(tmp_path, monkeypatch):
    """A folder run trained on whole images at their own size (no patches, no --folder-size) is not
    squeezed to the unused shapes size: seg_infer's masks equal funcml.seg.Segmenter's."""
    from funcml.seg import Segmenter, task
    from funcml.seg.shapes import ShapesConfig
    from funcml.seg.unet import UNetConfig

    data = ShapesConfig(height=24, width=24, channels=1, classes=("circle",), mode="binary")  # square: rot90
    train = write_example_folder(tmp_path / "train", random.key(1), 4, data)
    cfg = dataclasses.replace(task.PRESETS["folder"][1], folder=train, patch=None, steps=1, eval_every=1,
                              batch_size=2, warmup_steps=1,
                              model=UNetConfig(in_channels=1, num_classes=2, depth=2, base_width=4),
                              runs_dir=tmp_path / "runs")
    run, _ = task.train(cfg, progress=False)
    other = write_example_folder(tmp_path / "other", random.key(2), 2, dataclasses.replace(data, height=28, width=36))
    seen, predict_full = [], task.predict_full

    def recording(params, state, model_cfg, images, *args, **kwargs):
        seen.append(tuple(images.shape[-2:]))
        return predict_full(params, state, model_cfg, images, *args, **kwargs)

    monkeypatch.setattr(task, "predict_full", recording)
    seg_infer.main(["--run", str(run.path), "--input", str(other / "images"), "--out", str(tmp_path / "pred")])
    monkeypatch.undo()
    assert seen == [(28, 36), (28, 36)]  # the model saw each image at its own size
    seg = Segmenter.load(run.path)
    for stem in ("0000", "0001"):
        with Image.open(tmp_path / "pred" / f"{stem}_mask.png") as im:
            got = torch.from_numpy(np.asarray(im).astype(np.int64))
        assert got.shape == (28, 36)
        assert torch.equal(got, seg(other / "images" / f"{stem}.png"))


def test_infer_on_one_image_without_masks_draws_two_columns(seg_tiny_run, train_cfg, tmp_path):
    folder = _infer_folder(tmp_path, train_cfg.data, n=1)
    out = tmp_path / "pred"
    seg_infer.main(["--run", str(seg_tiny_run), "--input", str(folder / "images" / "0000.png"), "--out", str(out)])
    assert sorted(p.name for p in out.iterdir()) == ["0000_mask.png", "0000_overlay.png", "grid.png"]
    with Image.open(out / "grid.png") as grid:
        assert grid.width == 2 * 16 * 4 + 3 * 4


def test_infer_skips_non_image_files_with_a_warning(seg_tiny_run, train_cfg, tmp_path, capsys):
    folder = _infer_folder(tmp_path, train_cfg.data, n=1)
    (folder / "images" / "README.txt").write_text("not an image")
    seg_infer.main(["--run", str(seg_tiny_run), "--input", str(folder / "images"), "--out", str(tmp_path / "pred")])
    assert "README.txt" in capsys.readouterr().err
    assert (tmp_path / "pred" / "0000_mask.png").is_file()


def test_infer_missing_input_exits_2(seg_tiny_run, tmp_path, capsys):
    err = _exit_2_with_one_line(capsys, seg_infer.main, ["--run", str(seg_tiny_run), "--input", str(tmp_path / "nope"),
                                                          "--out", str(tmp_path / "pred")])
    assert "does not exist" in err


def test_infer_corrupt_image_exits_2(seg_tiny_run, tmp_path, capsys):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    err = _exit_2_with_one_line(capsys, seg_infer.main, ["--run", str(seg_tiny_run), "--input", str(tmp_path / "bad.png"),
                                                          "--out", str(tmp_path / "pred")])
    assert "bad.png" in err and "cannot read" in err


def test_infer_missing_mask_stem_exits_2(seg_tiny_run, train_cfg, tmp_path, capsys):
    folder = _infer_folder(tmp_path, train_cfg.data, n=2)
    (folder / "masks" / "0001.png").unlink()
    err = _exit_2_with_one_line(capsys, seg_infer.main, ["--run", str(seg_tiny_run), "--input", str(folder / "images"),
                                                          "--masks", str(folder / "masks"), "--out", str(tmp_path / "p")])
    assert "0001" in err


def test_eval_script_missing_run_prints_one_line_and_exits_2(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "experiments" / "seg_eval.py"), "--run", str(tmp_path / "nope")],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "does not exist" in lines[0]
