"""funcml.seg.metrics: confusion matrices and the IoU / Dice read from them."""

from __future__ import annotations

import math

import pytest
import torch

from funcml import random
from funcml.errors import RangeError, ShapeError
from funcml.seg.metrics import SegMetrics, confusion_matrix, metrics_from_confusion, per_image_dice

NAN = float("nan")


def _toy():
    """3 classes on a 2x3 image; class 2 is in neither prediction nor target."""
    target = torch.tensor([[[0, 0, 1], [1, 1, 0]]])
    pred = torch.tensor([[[0, 1, 1], [1, 0, 1]]])
    return pred, target


def test_confusion_matrix_by_hand():
    # Target 0 at pixels 0, 1, 5 -> predicted 0, 1, 1; target 1 at pixels 2, 3, 4 -> predicted 1, 1, 0.
    pred, target = _toy()
    want = torch.tensor([[1, 2, 0], [1, 2, 0], [0, 0, 0]])
    cm = confusion_matrix(pred, target, 3)
    assert cm.dtype == torch.int64 and torch.equal(cm, want)


def test_iou_and_dice_by_hand_with_an_absent_class():
    pred, target = _toy()
    m = metrics_from_confusion(confusion_matrix(pred, target, 3))
    # Class 0: TP 1, FP 1, FN 2; class 1: TP 2, FP 2, FN 1; class 2: nothing -> NaN.
    torch.testing.assert_close(m["iou"], torch.tensor([1 / 4, 2 / 5, NAN], dtype=torch.float64), equal_nan=True)
    torch.testing.assert_close(m["dice"], torch.tensor([2 / 5, 4 / 7, NAN], dtype=torch.float64), equal_nan=True)
    assert math.isclose(float(m["mean_iou"]), (1 / 4 + 2 / 5) / 2)  # the NaN class is left out
    assert math.isclose(float(m["mean_dice"]), (2 / 5 + 4 / 7) / 2)
    assert math.isclose(float(m["pixel_accuracy"]), 3 / 6)
    assert torch.equal(m["support"], torch.tensor([3, 3, 0]))


def test_a_class_only_predicted_scores_zero_not_nan():
    target = torch.tensor([[0, 0, 1, 1]])
    pred = torch.tensor([[0, 2, 1, 1]])
    m = metrics_from_confusion(confusion_matrix(pred, target, 3))
    torch.testing.assert_close(m["iou"], torch.tensor([1 / 2, 1.0, 0.0], dtype=torch.float64))
    assert math.isclose(float(m["mean_iou"]), 1.5 / 3)


def test_exclude_background_leaves_class_zero_out_of_the_means():
    pred, target = _toy()
    m = metrics_from_confusion(confusion_matrix(pred, target, 3), exclude_background=True)
    assert math.isclose(float(m["mean_iou"]), 2 / 5)
    assert math.isclose(float(m["mean_dice"]), 4 / 7)


def test_ignored_pixels_are_not_counted_whatever_is_predicted():
    pred, target = _toy()
    padded_target = torch.cat([target, torch.full((1, 2, 2), 255)], dim=2)  # two padded columns
    padded_pred = torch.cat([pred, torch.tensor([[[2, 0], [1, 2]]])], dim=2)
    assert torch.equal(confusion_matrix(padded_pred, padded_target, 3, ignore_index=255),
                       confusion_matrix(pred, target, 3))


def test_accumulating_two_batches_equals_one_big_batch(getkey):
    pred = random.randint(getkey(), (6, 7, 5), 0, 4)
    target = torch.where(random.bernoulli(getkey(), 0.1, (6, 7, 5)), 255, random.randint(getkey(), (6, 7, 5), 0, 4))
    acc = SegMetrics(num_classes=4, ignore_index=255)
    cm = acc.update(acc.update(acc.init(), pred[:2], target[:2]), pred[2:], target[2:])
    whole = confusion_matrix(pred, target, 4, ignore_index=255)
    assert torch.equal(cm, whole)
    for name, value in acc.compute(cm).items():
        torch.testing.assert_close(value, metrics_from_confusion(whole)[name], equal_nan=True)


def test_confusion_matrix_matches_a_pixel_loop(getkey):
    pred = random.randint(getkey(), (2, 4, 5), 0, 3)
    target = torch.where(random.bernoulli(getkey(), 0.2, (2, 4, 5)), 255, random.randint(getkey(), (2, 4, 5), 0, 3))
    want = torch.zeros(3, 3, dtype=torch.int64)
    for t, p in zip(target.flatten().tolist(), pred.flatten().tolist()):
        if t != 255:
            want[t, p] += 1
    assert torch.equal(confusion_matrix(pred, target, 3, ignore_index=255), want)


def test_seg_metrics_update_is_pure():
    pred, target = _toy()
    acc = SegMetrics(num_classes=3)
    cm = acc.init()
    new = acc.update(cm, pred, target)
    assert int(cm.sum()) == 0 and int(new.sum()) == 6


def test_empty_confusion_matrix_gives_nan_means():
    m = metrics_from_confusion(torch.zeros(3, 3, dtype=torch.int64))
    assert all(math.isnan(float(m[k])) for k in ("mean_iou", "mean_dice", "pixel_accuracy"))


def test_per_image_dice_by_hand():
    # Image 0: the toy example; image 1: perfect on class 2 only (classes 0, 1 absent -> NaN).
    pred, target = _toy()
    pred = torch.cat([pred, torch.full((1, 2, 3), 2)])
    target = torch.cat([target, torch.full((1, 2, 3), 2)])
    want = torch.tensor([[2 / 5, 4 / 7, NAN], [NAN, NAN, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(per_image_dice(pred, target, 3), want, equal_nan=True)


def test_out_of_range_ids_are_range_errors_naming_the_value():
    pred, target = _toy()
    bad = target.clone()
    bad[0, 0, 2] = 7
    with pytest.raises(RangeError, match=r"target: 1 value\(s\) outside \[0, 3\) or ignore_index=255, .* = 7"):
        confusion_matrix(pred, bad, 3, ignore_index=255)
    with pytest.raises(RangeError, match=r"pred: .* outside \[0, 3\)"):
        confusion_matrix(pred + 2, target, 3)
    with pytest.raises(ShapeError, match="argmax"):
        confusion_matrix(pred[:, :1], target, 3)
