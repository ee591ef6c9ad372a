"""Mask values on real-style folders (funcml.seg.masks, task's folder path): 0/255 masks, --class-map,
the scan at the start of training, and the errors that replace the silent 255-as-ignore."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from funcml import config
from funcml.errors import ConfigError, DataError
from funcml.seg.masks import (check_mask_values, format_class_map, parse_class_map, scan_masks)
from funcml.seg.task import SegTrainConfig, resolve_config, train
from funcml.seg.unet import UNetConfig

from conftest import binary_folder


def _cfg(folder: Path, runs: Path, **kw) -> SegTrainConfig:
    base = dict(model=UNetConfig(in_channels=1, num_classes=2, depth=2, base_width=4), folder=folder, steps=2,
                batch_size=2, eval_every=2, runs_dir=runs, experiment="t", lr=1e-2, warmup_steps=1)
    return SegTrainConfig(**{**base, **kw})


def test_parse_class_map_reads_raw_to_class_pairs_and_round_trips():
    assert parse_class_map("0:1,255:0") == {0: 1, 255: 0}
    assert parse_class_map(" 3 : 2 ") == {3: 2}
    assert parse_class_map("") is None and parse_class_map(None) is None
    assert format_class_map({255: 0, 0: 1}) == "0:1,255:0"


@pytest.mark.parametrize("text", ["0-1", "a:1", "0:1,0:2", "0:-1", "0:1,"])
def test_parse_class_map_names_a_malformed_entry(text):
    with pytest.raises(ConfigError, match="class-map"):
        parse_class_map(text)


def test_scan_counts_every_raw_value_over_all_files(tmp_path):
    folder = binary_folder(tmp_path / "ds", n=3)
    scan = scan_masks(sorted((folder / "masks").iterdir()))
    assert scan.values == (0, 255) and scan.files == 3 and scan.total == 3 * 24 * 20
    masks = [np.asarray(Image.open(p)) for p in sorted((folder / "masks").iterdir())]
    assert scan.counts[1] == sum(int((m == 255).sum()) for m in masks)
    assert "0 (" in scan.describe() and "255 (" in scan.describe()


def test_a_0_255_mask_without_a_map_is_an_error_naming_the_values_and_the_flag(tmp_path):
    scan = scan_masks(sorted((binary_folder(tmp_path / "ds") / "masks").iterdir()))
    with pytest.raises(DataError) as e:
        check_mask_values(scan, num_classes=2, class_map=None, ignore_index=255)
    msg = str(e.value)
    assert "0 (" in msg and "255 (" in msg and "--class-map 0:0,255:1" in msg


def test_values_outside_the_classes_without_a_map_are_an_error_with_a_suggested_map(tmp_path):
    scan = scan_masks(sorted((binary_folder(tmp_path / "ds", values=(0, 128)) / "masks").iterdir()))
    with pytest.raises(DataError, match=r"\[128\].*--class-map 0:0,128:1"):
        check_mask_values(scan, num_classes=2, class_map=None, ignore_index=255)


def test_a_raw_value_missing_from_the_map_is_an_error(tmp_path):
    scan = scan_masks(sorted((binary_folder(tmp_path / "ds") / "masks").iterdir()))
    with pytest.raises(DataError, match=r"\[255\] are not in --class-map 0:1"):
        check_mask_values(scan, num_classes=2, class_map={0: 1}, ignore_index=-1)


def test_a_class_no_pixel_holds_is_a_warning(tmp_path):
    scan = scan_masks(sorted((binary_folder(tmp_path / "ds") / "masks").iterdir()))
    warnings = check_mask_values(scan, num_classes=3, class_map={0: 0, 255: 1}, ignore_index=-1)
    assert len(warnings) == 1 and "class 2 never appears" in warnings[0]
    assert check_mask_values(scan, num_classes=2, class_map={0: 1, 255: 0}, ignore_index=255) == []


def test_training_on_0_255_masks_without_a_map_stops_before_any_step(tmp_path):
    folder = binary_folder(tmp_path / "ds")
    with pytest.raises(DataError, match="--class-map"):
        train(_cfg(folder, tmp_path / "runs"), progress=False)
    assert not (tmp_path / "runs").exists()  # nothing written


def test_class_map_flag_is_saved_in_the_run_config_and_scores_the_foreground(tmp_path, capsys):
    folder = binary_folder(tmp_path / "ds")
    run, summary = train(_cfg(folder, tmp_path / "runs", class_map="0:0,255:1"), progress=False)
    saved = config.load(SegTrainConfig, run.path / "config.json")
    assert saved.class_map == "0:0,255:1" and saved.ignore_index == 255
    err = capsys.readouterr().err
    assert "mask values in" in err and "class 1" in err
    ev = summary["eval_json"]
    assert not np.isnan(ev["per_class_iou"][1])  # class 1 is scored, not dropped as ignore


def test_grey_images_get_one_channel_and_measured_mean_std_saved_with_the_run(tmp_path):
    folder = binary_folder(tmp_path / "ds")
    cfg = _cfg(folder, tmp_path / "runs", class_map="0:0,255:1", model=UNetConfig(in_channels=3, num_classes=2,
                                                                                    depth=2, base_width=4))
    resolved = resolve_config(cfg)
    assert resolved.model.in_channels == 1 and resolved.image_channels == 1
    pixels = np.concatenate([np.asarray(Image.open(p), dtype=np.float64).ravel() / 255
                             for p in sorted((folder / "images").iterdir())])
    # the training split holds all but one file: the statistics are close to those of every file
    assert resolved.mean[0] == pytest.approx(pixels.mean(), abs=0.05)
    assert resolved.std[0] == pytest.approx(pixels.std(), abs=0.05)


def test_val_stems_hold_out_the_named_files_and_an_unknown_stem_is_an_error(tmp_path):
    folder = binary_folder(tmp_path / "ds")
    with pytest.raises(DataError, match="nope"):
        resolve_config(_cfg(folder, tmp_path / "runs", class_map="0:0,255:1", val_stems=("nope",)))
    from funcml.seg.data import FolderSplit

    f = FolderSplit(resolve_config(_cfg(folder, tmp_path / "runs", class_map="0:0,255:1", val_stems=("s03",))))
    assert f.val_idx.tolist() == [3] and f.train_idx.tolist() == [0, 1, 2]


def test_class_map_on_shapes_data_is_a_config_error():
    with pytest.raises(ConfigError, match="folder"):
        SegTrainConfig(class_map="0:1")
