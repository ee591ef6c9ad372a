"""Patch sampling from full-resolution images (funcml.seg.patches)."""

from __future__ import annotations

import pytest
import torch

from funcml import random
from funcml.errors import ConfigError
from funcml.seg.patches import pad_to_canvas, sample_patches


def _coords(h: int, w: int, b: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose pixel value encodes its position: channel 0 = row, channel 1 = column."""
    rows = torch.arange(h, dtype=torch.float32)[:, None].expand(h, w)
    cols = torch.arange(w, dtype=torch.float32)[None, :].expand(h, w)
    image = torch.stack([rows, cols])[None].expand(b, 2, h, w).clone()
    return image, torch.zeros(b, h, w, dtype=torch.int64)


def test_patches_are_contiguous_crops_of_the_image_with_their_masks():
    image, mask = _coords(40, 30, b=6)
    mask = (image[:, 0] + image[:, 1]).to(torch.int64) % 3
    x, y = sample_patches(random.key(0), image, mask, torch.tensor([[40, 30]] * 6), patch=(16, 8))
    assert x.shape == (6, 2, 16, 8) and y.shape == (6, 16, 8)
    top, left = x[:, 0, 0, 0], x[:, 1, 0, 0]
    assert torch.equal(x[:, 0], top[:, None, None] + torch.arange(16.0)[None, :, None].expand(6, 16, 8))
    assert torch.equal(x[:, 1], left[:, None, None] + torch.arange(8.0)[None, None, :].expand(6, 16, 8))
    assert torch.equal(y, (x[:, 0] + x[:, 1]).to(torch.int64) % 3)
    assert int(top.max()) <= 40 - 16 and int(left.max()) <= 30 - 8


def test_the_same_key_gives_the_same_patches_and_another_key_others():
    image, mask = _coords(64, 64, b=8)
    sizes = torch.tensor([[64, 64]] * 8)
    a = sample_patches(random.key(1), image, mask, sizes, patch=(16, 16))
    b = sample_patches(random.key(1), image, mask, sizes, patch=(16, 16))
    c = sample_patches(random.key(2), image, mask, sizes, patch=(16, 16))
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], c[0])


def test_foreground_patches_are_centred_on_foreground_pixels():
    image, mask = _coords(64, 64, b=32)
    mask[:, 50, 10] = 1  # one foreground pixel per image
    x, y = sample_patches(random.key(3), image, mask, torch.tensor([[64, 64]] * 32), patch=(16, 16), fg_fraction=1.0)
    assert bool((y == 1).any(dim=(1, 2)).all())
    assert torch.equal(x[:, 0, 0, 0], torch.full((32,), 42.0)) and torch.equal(x[:, 1, 0, 0], torch.full((32,), 2.0))


def test_fg_fraction_sets_the_share_of_foreground_patches():
    image, mask = _coords(128, 128, b=600)
    mask[:, 0:4, 0:4] = 1  # a corner a random 16x16 patch rarely touches
    _, y = sample_patches(random.key(4), image, mask, torch.tensor([[128, 128]] * 600), patch=(16, 16),
                          fg_fraction=1 / 3)
    share = float((y == 1).any(dim=(1, 2)).to(torch.float32).mean())
    assert 0.28 < share < 0.40  # 1/3 forced, plus the ~1% of random ones that reach the corner


def test_an_image_smaller_than_the_patch_is_padded_with_ignore():
    small = torch.ones(1, 5, 7)
    canvas, masks, sizes = pad_to_canvas([small], [torch.zeros(5, 7, dtype=torch.int64)], min_size=(8, 8),
                                         ignore_index=255)
    assert canvas.shape == (1, 1, 8, 8) and sizes.tolist() == [[5, 7]]
    x, y = sample_patches(random.key(0), canvas, masks, sizes, patch=(8, 8), ignore_index=255)
    assert int((y == 0).sum()) == 35 and int((y == 255).sum()) == 64 - 35 and float(x.sum()) == 35.0


def test_a_patch_larger_than_the_canvas_is_a_config_error():
    image, mask = _coords(8, 8)
    with pytest.raises(ConfigError, match="patch 16x16"):
        sample_patches(random.key(0), image, mask, torch.tensor([[8, 8]]), patch=(16, 16))
