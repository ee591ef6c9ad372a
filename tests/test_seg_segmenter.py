"""funcml.seg.Segmenter: a trained run's model with its preprocessing, `seg(image) -> [H, W]` ids,
equal bit for bit to the task's own evaluation path (`preprocess` + `predict_full`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from funcml import random
from funcml.errors import CheckpointError, DataError, DTypeError, RangeError, ShapeError
from funcml.seg import Segmenter, task
from funcml.seg.folder import read_image, write_example_folder
from funcml.seg.metrics import confusion_matrix, metrics_from_confusion
from funcml.seg.shapes import ShapesConfig
from funcml.seg.unet import UNetConfig


# `seg_tiny_run` (tests/conftest.py): the session's shared tiny preset run (U-Net+Transformer, 2 steps).


@pytest.fixture(scope="module")
def patch_run(tmp_path_factory) -> Path:
    """A grey folder run trained on 16x16 patches (predicts full images by sliding windows), 2 steps."""
    root = tmp_path_factory.mktemp("pairs")
    write_example_folder(root, random.key(4), 4, ShapesConfig(height=24, width=28, channels=1, classes=("circle",),
                                                            mode="binary"))
    cfg = dataclasses.replace(task.PRESETS["folder"][1], model=UNetConfig(in_channels=1, num_classes=2, depth=2,
                                                                          base_width=4),
                              folder=root, steps=2, eval_every=2, batch_size=2, patch=(16, 16), warmup_steps=1,
                              runs_dir=tmp_path_factory.mktemp("runs"))
    run, _ = task.train(cfg, progress=False)
    return run.path


def _reference(run: Path, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What evaluate does to one image `[C, H, W]` in [0, 1]: preprocess, then predict_full."""
    train_cfg, model_cfg, params, state = task.load_model(run)
    pred, probs = task.predict_full(params, state, model_cfg, task.preprocess(image[None], train_cfg), train_cfg)
    return pred[0], probs[0]


def test_a_val_image_is_segmented_bit_for_bit_like_the_task_evaluation_path(seg_tiny_run):
    seg = Segmenter.load(seg_tiny_run)
    train_cfg, *_ = task.load_model(seg_tiny_run)
    images, _ = next(task.val_batches(train_cfg, batch_size=4))
    for image in images:
        mask = seg(image)
        want_pred, want_probs = _reference(seg_tiny_run, image)
        assert mask.dtype == torch.int64 and mask.shape == image.shape[-2:]
        assert torch.equal(mask, want_pred)
        assert torch.equal(seg.probs(image), want_probs)


def test_the_masks_of_the_validation_split_give_the_metrics_of_evaluate(seg_tiny_run):
    seg = Segmenter.load(seg_tiny_run)
    train_cfg, model_cfg, params, state = task.load_model(seg_tiny_run)
    cm = torch.zeros(seg.num_classes, seg.num_classes, dtype=torch.int64)
    for images, masks in task.val_batches(train_cfg):
        preds = torch.stack(seg(list(images)))
        cm += confusion_matrix(preds, masks, seg.num_classes, ignore_index=train_cfg.ignore_index)
    ours = metrics_from_confusion(cm)
    theirs = task.evaluate(params, state, model_cfg, task.val_batches(train_cfg), train_cfg)
    assert float(ours["mean_iou"]) == theirs["mean_iou"]
    assert float(ours["pixel_accuracy"]) == theirs["pixel_accuracy"]


def test_an_image_of_another_size_is_resized_to_the_training_size_and_the_mask_back(seg_tiny_run):
    seg = Segmenter.load(seg_tiny_run)
    assert seg.input_size == (16, 16)
    image = random.uniform(random.key(7), (3, 24, 20))
    mask = seg(image)
    assert mask.shape == (24, 20)
    small = F.interpolate(image[None], size=(16, 16), mode="bilinear", align_corners=False)[0].clamp(0, 1)
    _, probs = _reference(seg_tiny_run, small)
    back = F.interpolate(probs[None], size=(24, 20), mode="nearest-exact")[0]
    assert torch.equal(mask, back.argmax(0))
    assert torch.equal(seg.probs(image).argmax(0), mask)


def test_a_path_is_read_with_the_runs_channels_like_read_image(seg_tiny_run, tmp_path):
    rgb = (np.arange(18 * 22 * 3).reshape(18, 22, 3) * 7 % 256).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    seg = Segmenter.load(seg_tiny_run)
    assert torch.equal(seg(tmp_path / "a.png"), seg(read_image(tmp_path / "a.png", 3)))
    assert torch.equal(seg(str(tmp_path / "a.png")), seg(torch.from_numpy(rgb).permute(2, 0, 1).contiguous()))


def test_a_grey_hw_tensor_is_repeated_to_the_runs_channels(seg_tiny_run):
    seg = Segmenter.load(seg_tiny_run)
    grey = random.uniform(random.key(3), (16, 16))
    assert torch.equal(seg(grey), seg(grey.expand(3, 16, 16)))


def test_a_patch_trained_run_segments_any_size_by_sliding_windows_bit_for_bit(patch_run):
    seg = Segmenter.load(patch_run)
    assert seg.input_size is None and seg.channels == 1
    image = random.uniform(random.key(5), (1, 37, 23))
    want_pred, want_probs = _reference(patch_run, image)
    assert torch.equal(seg(image), want_pred)
    assert torch.equal(seg.probs(image), want_probs)
    train_cfg, model_cfg, params, state = task.load_model(patch_run)
    tta = dataclasses.replace(train_cfg.sliding, tta=True)
    pred, _ = task.predict_full(params, state, model_cfg, task.preprocess(image[None], train_cfg), train_cfg,
                                sliding=tta)
    assert torch.equal(Segmenter.load(patch_run, tta=True)(image), pred[0])


def test_a_wrong_channel_count_is_a_shape_error_naming_the_shape(seg_tiny_run):
    with pytest.raises(ShapeError, match=r"C=3.*got \[1, 16, 16\]"):
        Segmenter.load(seg_tiny_run)(torch.zeros(1, 16, 16))


def test_values_outside_0_1_and_int_dtypes_are_errors(seg_tiny_run):
    seg = Segmenter.load(seg_tiny_run)
    with pytest.raises(RangeError, match="image"):
        seg(torch.full((3, 16, 16), 2.0))
    with pytest.raises(DTypeError, match="int64"):
        seg(torch.zeros(3, 16, 16, dtype=torch.int64))


def test_a_missing_image_file_is_a_data_error_naming_it(seg_tiny_run, tmp_path):
    with pytest.raises(DataError, match="nope.png"):
        Segmenter.load(seg_tiny_run)(tmp_path / "nope.png")


def test_a_missing_run_and_a_run_without_checkpoints_are_errors_naming_the_path(tmp_path):
    with pytest.raises(DataError, match="no-such-run"):
        Segmenter.load(tmp_path / "no-such-run")
    (tmp_path / "empty-run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(CheckpointError, match="empty-run"):
        Segmenter.load(tmp_path / "empty-run")
