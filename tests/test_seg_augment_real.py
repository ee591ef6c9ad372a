"""Augmentation for real images: rotation, scaling and elastic warps (funcml.seg.deform), noise, blur and
gamma (funcml.seg.intensity), through `AugmentConfig` / `augment`."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from funcml import random
from funcml.errors import ConfigError
from funcml.seg.transforms import AugmentConfig, augment

ALL_ON = AugmentConfig(hflip_p=0.5, vflip_p=0.5, rotate_p=1.0, scale_p=1.0, elastic_p=1.0, noise_p=1.0, blur_p=1.0,
                       gamma_p=1.0, brightness=0.1, contrast=0.2, brightness_p=0.5, contrast_p=0.5)
PROB_FIELDS = ("rotate_p", "scale_p", "elastic_p", "noise_p", "blur_p", "gamma_p")


def _batch(b: int = 4, h: int = 40, w: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    image = random.uniform(random.key(7), (b, 1, h, w))
    mask = (random.uniform(random.key(8), (b, h, w)) * 3).to(torch.int64)
    mask[:, :4] = 255  # an ignore band
    return image, mask


def test_the_same_key_gives_the_same_bits_and_another_key_another_draw():
    image, mask = _batch()
    a = augment(random.key(0), image, mask, ALL_ON)
    b = augment(random.key(0), image, mask, ALL_ON)
    c = augment(random.key(1), image, mask, ALL_ON)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_shapes_and_dtypes_are_kept_and_the_image_stays_in_unit_range():
    image, mask = _batch()
    x, y = augment(random.key(0), image, mask, ALL_ON)
    assert x.shape == image.shape and y.shape == mask.shape and x.dtype == image.dtype and y.dtype == mask.dtype
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0


def test_warped_masks_only_hold_values_of_the_input_mask():
    image, mask = _batch(b=8)
    _, y = augment(random.key(3), image, mask, ALL_ON)
    assert set(torch.unique(y).tolist()) <= {0, 1, 2, 255}


@pytest.mark.parametrize("field", PROB_FIELDS)
def test_each_transform_at_probability_zero_is_the_identity(field):
    image, mask = _batch()
    off = dataclasses.replace(AugmentConfig(hflip_p=0.0), **{field: 0.0})
    x, y = augment(random.key(0), image, mask, off)
    assert torch.equal(x, image) and torch.equal(y, mask)


@pytest.mark.parametrize("field", PROB_FIELDS)
def test_each_transform_at_probability_one_changes_the_image(field):
    image, mask = _batch()
    on = dataclasses.replace(AugmentConfig(hflip_p=0.0), **{field: 1.0})
    x, _ = augment(random.key(0), image, mask, on)
    assert not torch.equal(x, image)


def test_the_image_and_mask_move_together_under_a_warp():
    # The image is its own mask (0/1 blocks): bilinear image and nearest mask must agree away from edges.
    mask = torch.zeros(2, 48, 48, dtype=torch.int64)
    mask[:, 10:30, 12:36] = 1
    image = mask[:, None].to(torch.float32)
    cfg = AugmentConfig(hflip_p=0.0, rotate_p=1.0, scale_p=1.0, elastic_p=1.0, elastic_sigma=3.0)
    x, y = augment(random.key(5), image, mask, cfg)
    crisp = (x[:, 0] < 0.1) | (x[:, 0] > 0.9)
    assert float(crisp.float().mean()) > 0.8
    assert torch.equal((x[:, 0] > 0.5)[crisp], (y == 1)[crisp])


def test_a_batched_call_equals_each_example_with_its_split_key():
    image, mask = _batch(b=3)
    x, y = augment(random.key(9), image, mask, ALL_ON)
    keys = random.split(random.key(9), 3)
    for i in range(3):
        xi, yi = augment(keys[i], image[i], mask[i], ALL_ON)
        torch.testing.assert_close(xi, x[i], rtol=1e-5, atol=1e-5)
        assert torch.equal(yi, y[i])


def test_bad_probabilities_and_ranges_are_config_errors():
    with pytest.raises(ConfigError, match="elastic_p"):
        AugmentConfig(elastic_p=1.5)
    with pytest.raises(ConfigError, match="gamma"):
        AugmentConfig(gamma=(1.5, 0.7))
