"""funcml.seg.losses: hand-computed values, equivalence with torch, and the edge cases."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from funcml import random
from funcml.errors import ShapeError
from funcml.seg.losses import (bce_dice_loss, binary_cross_entropy, binary_dice_loss, ce_dice_loss, cross_entropy,
                               soft_dice_loss)

LOG3 = math.log(3.0)


def _two_by_two():
    """K = 2 logits on a 2x2 image with p(class 1) = [[1/4, 3/4], [3/4, 1/4]], target [[0, 1], [1, 1]]."""
    lo, hi = (LOG3, 0.0), (0.0, LOG3)  # softmax (3/4, 1/4) and (1/4, 3/4)
    logits = torch.tensor([[lo, hi], [hi, lo]], dtype=torch.float64).permute(2, 0, 1)[None]  # [1, 2, 2, 2]
    target = torch.tensor([[[0, 1], [1, 1]]])
    return logits, target


def _random_case(getkey, b=2, k=4, h=5, w=6, dtype=torch.float32):
    logits = 2.0 * random.normal(getkey(), (b, k, h, w), dtype=dtype)
    target = random.randint(getkey(), (b, h, w), 0, k)
    return logits, target


# --- cross-entropy --------------------------------------------------------------------------------

def test_cross_entropy_by_hand_on_two_by_two():
    logits, target = _two_by_two()
    # -log p_y per pixel: -log(3/4), -log(3/4), -log(3/4), -log(1/4).
    want = (3 * -math.log(0.75) - math.log(0.25)) / 4
    assert math.isclose(float(cross_entropy(logits, target)), want, rel_tol=1e-12)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("ignore", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_matches_torch(getkey, weighted, ignore, smoothing):
    logits, target = _random_case(getkey)
    if ignore:
        target = torch.where(random.bernoulli(getkey(), 0.3, target.shape), 255, target)
    weights = torch.tensor([0.5, 1.0, 2.0, 3.0]) if weighted else None
    ours = cross_entropy(logits, target, class_weights=weights, ignore_index=255 if ignore else None,
                         label_smoothing=smoothing)
    theirs = F.cross_entropy(logits, target, weight=weights, ignore_index=255, label_smoothing=smoothing)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_cross_entropy_gradient_matches_torch(getkey):
    logits, target = _random_case(getkey)
    target = torch.where(random.bernoulli(getkey(), 0.2, target.shape), 255, target)
    ours = torch.func.grad(lambda x: cross_entropy(x, target, ignore_index=255, label_smoothing=0.1))(logits)
    theirs = torch.func.grad(lambda x: F.cross_entropy(x, target, ignore_index=255, label_smoothing=0.1))(logits)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-7)


# --- binary cross-entropy -----------------------------------------------------------------------------

@pytest.mark.parametrize("pos_weight", [None, 3.0])
def test_binary_cross_entropy_matches_torch(getkey, pos_weight):
    logits = 4.0 * random.normal(getkey(), (3, 1, 5, 5))
    target = random.randint(getkey(), (3, 5, 5), 0, 2)
    ours = binary_cross_entropy(logits, target, pos_weight=pos_weight)
    pw = None if pos_weight is None else torch.tensor(pos_weight)
    theirs = F.binary_cross_entropy_with_logits(logits[:, 0], target.float(), pos_weight=pw)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)


def test_binary_cross_entropy_skips_ignored_pixels(getkey):
    logits = random.normal(getkey(), (2, 4, 4))
    target = random.randint(getkey(), (2, 4, 4), 0, 2)
    ignored = random.bernoulli(getkey(), 0.4, (2, 4, 4))
    ours = binary_cross_entropy(logits, torch.where(ignored, 255, target), ignore_index=255)
    theirs = F.binary_cross_entropy_with_logits(logits[~ignored], target[~ignored].float())
    torch.testing.assert_close(ours, theirs)


def test_binary_cross_entropy_is_stable_for_huge_logits():
    logits = torch.tensor([[[1e4, -1e4]]])
    assert float(binary_cross_entropy(logits, torch.tensor([[[1, 0]]]))) == 0.0
    assert math.isclose(float(binary_cross_entropy(logits, torch.tensor([[[0, 1]]]))), 1e4, rel_tol=1e-6)


# --- soft Dice -----------------------------------------------------------------------------------------

def test_soft_dice_by_hand_on_two_by_two():
    logits, target = _two_by_two()
    # Class 1: I = 3/4 + 3/4 + 1/4 = 7/4, P = 2, G = 3; class 0: I = 3/4, P = 2, G = 1.
    dice1, dice0 = (2 * 7 / 4 + 1) / (2 + 3 + 1), (2 * 3 / 4 + 1) / (2 + 1 + 1)  # 0.75, 0.625
    assert math.isclose(float(soft_dice_loss(logits, target)), 1 - (dice0 + dice1) / 2, rel_tol=1e-12)
    assert math.isclose(float(soft_dice_loss(logits, target, smooth=0.0)), 1 - (3.5 / 5 + 1.5 / 3) / 2, rel_tol=1e-12)
    assert math.isclose(float(soft_dice_loss(logits, target, exclude_background=True)), 1 - dice1, rel_tol=1e-12)


def test_soft_dice_leaves_out_a_class_absent_from_target_and_prediction():
    logits, target = _two_by_two()
    absent = torch.cat([logits, torch.full((1, 1, 2, 2), -200.0, dtype=torch.float64)], 1)  # class 2: p ~ 0
    torch.testing.assert_close(soft_dice_loss(absent, target), soft_dice_loss(logits, target))


def test_soft_dice_counts_a_class_that_is_only_predicted():
    logits, target = _two_by_two()
    predicted = torch.cat([logits, torch.full((1, 1, 2, 2), -200.0, dtype=torch.float64)], 1)
    predicted[0, 2, 0, 0] = 200.0  # class 2 wins pixel (0, 0), which is class 0 in the target
    # Pixel (0, 0) now has p = (0, 0, 1). Class 2: I = 0, P = 1, G = 0 -> Dice 1/2; class 0:
    # I = 0, P = 1/4 + 1/4 + 3/4, G = 1; class 1: I = 7/4, P = 7/4, G = 3.
    dice0, dice1, dice2 = 1 / (1.25 + 1 + 1), (2 * 7 / 4 + 1) / (1.75 + 3 + 1), 1 / 2
    want = 1 - (dice0 + dice1 + dice2) / 3
    assert math.isclose(float(soft_dice_loss(predicted, target)), want, rel_tol=1e-9)


def test_soft_dice_per_image_averages_over_present_image_class_pairs():
    logits, target = _two_by_two()
    both = torch.cat([logits, logits.flip(1)])  # image 2 predicts the opposite probabilities
    targets = torch.cat([target, target])
    one = float(soft_dice_loss(logits, target))
    two = float(soft_dice_loss(logits.flip(1), target))
    assert math.isclose(float(soft_dice_loss(both, targets, per_image=True)), (one + two) / 2, rel_tol=1e-12)


def test_soft_dice_gradcheck_float64(getkey):
    logits, target = _random_case(getkey, b=2, k=3, h=2, w=3, dtype=torch.float64)
    target = torch.where(random.bernoulli(getkey(), 0.2, target.shape), 255, target)
    logits.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: soft_dice_loss(x, target, ignore_index=255), (logits,))
    assert torch.autograd.gradcheck(lambda x: soft_dice_loss(x, target, ignore_index=255, per_image=True,
                                                             exclude_background=True), (logits,))


def test_binary_dice_by_hand():
    # p = sigmoid(logits) = [3/4, 1/4, 1/2, 1/2]; g = [1, 0, 1, 0]: I = 5/4, P = 2, G = 2.
    logits = torch.tensor([[[LOG3, -LOG3], [0.0, 0.0]]], dtype=torch.float64)
    target = torch.tensor([[[1, 0], [1, 0]]])
    assert math.isclose(float(binary_dice_loss(logits, target)), 1 - (2.5 + 1) / (4 + 1), rel_tol=1e-12)
    assert math.isclose(float(binary_dice_loss(logits[:, None], target, smooth=0.0)), 1 - 2.5 / 4, rel_tol=1e-12)


def test_binary_dice_gradcheck_float64(getkey):
    logits = random.normal(getkey(), (2, 1, 3, 3), dtype=torch.float64).requires_grad_(True)
    target = random.randint(getkey(), (2, 3, 3), 0, 2)
    assert torch.autograd.gradcheck(lambda x: binary_dice_loss(x, target), (logits,))
    assert torch.autograd.gradcheck(lambda x: binary_dice_loss(x, target, per_image=True, smooth=0.0), (logits,))


def test_binary_losses_accept_logits_with_or_without_the_channel_dim(getkey):
    logits = random.normal(getkey(), (2, 1, 4, 4))
    target = random.randint(getkey(), (2, 4, 4), 0, 2)
    assert torch.equal(bce_dice_loss(logits, target), bce_dice_loss(logits[:, 0], target))
    with pytest.raises(ShapeError, match=r"\[B, 1, \*S\]"):
        binary_dice_loss(torch.zeros(2, 2, 4, 4), target)


# --- combined losses ------------------------------------------------------------------------------------

def test_combined_losses_are_weighted_sums(getkey):
    logits, target = _random_case(getkey)
    w = torch.tensor([1.0, 2.0, 1.0, 0.5])
    ce = cross_entropy(logits, target, class_weights=w, label_smoothing=0.05)
    want = 0.3 * ce + 0.7 * soft_dice_loss(logits, target)
    got = ce_dice_loss(logits, target, ce_weight=0.3, dice_weight=0.7, class_weights=w, label_smoothing=0.05)
    torch.testing.assert_close(got, want)
    blogits, btarget = logits[:, :1], (target > 1).long()
    want = 2.0 * binary_cross_entropy(blogits, btarget, pos_weight=2.0) + binary_dice_loss(blogits, btarget)
    torch.testing.assert_close(bce_dice_loss(blogits, btarget, bce_weight=2.0, pos_weight=2.0), want)


def test_target_shape_must_match_logits():
    with pytest.raises(ShapeError, match=r"target: expected shape \[2, 4, 4\]"):
        cross_entropy(torch.zeros(2, 3, 4, 4), torch.zeros(2, 4, 5, dtype=torch.int64))


# --- edge cases: finite, no NaN, zero grads when nothing is labelled ------------------------------------

MULTICLASS = {
    "cross_entropy": lambda x, t: cross_entropy(x, t, ignore_index=255, label_smoothing=0.1,
                                                class_weights=torch.tensor([1.0, 2.0, 3.0])),
    "soft_dice": lambda x, t: soft_dice_loss(x, t, ignore_index=255),
    "soft_dice_smooth0": lambda x, t: soft_dice_loss(x, t, ignore_index=255, smooth=0.0, per_image=True),
    "ce_dice": lambda x, t: ce_dice_loss(x, t, ignore_index=255),
}
BINARY = {
    "bce": lambda x, t: binary_cross_entropy(x, t, pos_weight=2.0, ignore_index=255),
    "binary_dice": lambda x, t: binary_dice_loss(x, t, ignore_index=255),
    "binary_dice_smooth0": lambda x, t: binary_dice_loss(x, t, ignore_index=255, smooth=0.0),
    "bce_dice": lambda x, t: bce_dice_loss(x, t, ignore_index=255),
}


def _value_and_grad(fn, logits, target):
    x = logits.clone().requires_grad_(True)
    loss = fn(x, target)
    (grad,) = torch.autograd.grad(loss, x)
    return loss.detach(), grad


@pytest.mark.parametrize("name", list(MULTICLASS) + list(BINARY))
def test_an_all_ignored_batch_gives_zero_loss_and_zero_grads(getkey, name):
    fn = MULTICLASS.get(name) or BINARY[name]
    k = 3 if name in MULTICLASS else 1
    logits = random.normal(getkey(), (2, k, 4, 4))
    loss, grad = _value_and_grad(fn, logits, torch.full((2, 4, 4), 255))
    assert float(loss) == 0.0
    assert torch.equal(grad, torch.zeros_like(grad))


@pytest.mark.parametrize("name", list(MULTICLASS))
@pytest.mark.parametrize("case", ["empty_target_class", "empty_prediction", "confident_wrong"])
def test_multiclass_losses_stay_finite_on_edge_cases(getkey, name, case):
    target = torch.zeros(2, 4, 4, dtype=torch.int64)  # only class 0: classes 1, 2 are empty
    logits = torch.zeros(2, 3, 4, 4)
    if case == "empty_prediction":
        target[:, :2] = 2
        logits[:, 1] = 5.0  # class 1 everywhere: classes 0 and 2 are never predicted
    elif case == "confident_wrong":
        logits[:, 2] = 1e4
    loss, grad = _value_and_grad(MULTICLASS[name], logits, target)
    assert torch.isfinite(loss) and bool(torch.isfinite(grad).all())


@pytest.mark.parametrize("name", list(BINARY))
@pytest.mark.parametrize("case", ["empty_target_and_prediction", "empty_target", "empty_prediction"])
def test_binary_losses_stay_finite_on_edge_cases(name, case):
    target = torch.zeros(2, 4, 4, dtype=torch.int64)
    logits = torch.full((2, 1, 4, 4), -1e4)
    if case == "empty_target":
        logits = torch.full((2, 1, 4, 4), 3.0)
    elif case == "empty_prediction":
        target[:, 1:3, 1:3] = 1
    loss, grad = _value_and_grad(BINARY[name], logits, target)
    assert torch.isfinite(loss) and bool(torch.isfinite(grad).all())


def test_empty_target_and_empty_prediction_give_zero_dice_loss():
    logits = torch.full((1, 1, 3, 3), -1e4)
    target = torch.zeros(1, 3, 3, dtype=torch.int64)
    assert float(binary_dice_loss(logits, target, smooth=0.0)) == 0.0
    assert float(binary_dice_loss(logits, target)) == 0.0  # p = sigmoid(-1e4) = 0 exactly in float32
