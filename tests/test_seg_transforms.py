"""funcml.seg.transforms: image and mask move together; pure; one draw per example."""

from __future__ import annotations

import pytest
import torch

from funcml import random
from funcml.errors import ConfigError, ShapeError
from funcml.seg.transforms import (AugmentConfig, augment, hflip, normalize, pad_collate, random_crop, random_flip,
                                   random_rot90, resize, rot90, vflip)

H, W = 6, 8
MARK = (1, 2)  # (row, col) of the marker pixel


def _marked(h=H, w=W, at=MARK, batch=None):
    """An image whose channel 0 is 1 only at `at`, and a mask that is class 3 only there."""
    image = torch.zeros(3, h, w)
    mask = torch.zeros(h, w, dtype=torch.int64)
    image[0, at[0], at[1]] = 1.0
    mask[at] = 3
    image[1] = torch.arange(h * w, dtype=torch.float32).reshape(h, w)  # a distinct value per pixel
    if batch is not None:
        return image.expand(batch, -1, -1, -1).clone(), mask.expand(batch, -1, -1).clone()
    return image, mask


def _where(t):
    return [tuple(int(i) for i in ix) for ix in t.nonzero()]


def _assert_aligned(image, mask):
    """The marker sits at the same place in image channel 0 and the mask."""
    assert _where(image[..., 0, :, :] == 1.0) == _where(mask == 3)
    assert len(_where(mask == 3)) == (mask.shape[0] if mask.dim() == 3 else 1)


# --- deterministic transforms: hand-computed marker positions --------------------------------------

def test_hflip_moves_the_marker_to_the_mirrored_column():
    image, mask = hflip(*_marked())
    assert _where(mask == 3) == [(1, W - 1 - 2)]
    _assert_aligned(image, mask)


def test_vflip_moves_the_marker_to_the_mirrored_row():
    image, mask = vflip(*_marked())
    assert _where(mask == 3) == [(H - 1 - 1, 2)]
    _assert_aligned(image, mask)


@pytest.mark.parametrize("k, expected", [(1, (W - 1 - 2, 1)), (2, (H - 1 - 1, W - 1 - 2)), (3, (2, H - 1 - 1))])
def test_rot90_moves_the_marker_counter_clockwise(k, expected):
    image, mask = rot90(*_marked(), k)
    assert _where(mask == 3) == [expected]
    assert image.shape[-2:] == mask.shape == ((W, H) if k % 2 else (H, W))
    _assert_aligned(image, mask)


def test_resize_mask_takes_the_nearest_pixel_by_centre():
    mask = torch.tensor([[0, 1], [2, 3]])
    _, up = resize(torch.zeros(1, 2, 2), mask, 4)
    assert torch.equal(up, mask.repeat_interleave(2, 0).repeat_interleave(2, 1))
    big = torch.arange(16).reshape(4, 4)
    _, down = resize(torch.zeros(1, 4, 4), big, (2, 2))
    assert torch.equal(down, torch.tensor([[5, 7], [13, 15]]))  # source centres floor((i + 0.5) * 2) = 1, 3


def test_resize_never_invents_class_ids(getkey):
    mask = random.randint(getkey(), (2, 13, 17), 0, 5) * 10  # ids 0, 10, ..., 40
    image = random.uniform(getkey(), (2, 3, 13, 17))
    for size in (7, (29, 11), (64, 64)):
        out_image, out_mask = resize(image, mask, size)
        assert out_mask.dtype == torch.int64
        assert set(out_mask.unique().tolist()) <= set(mask.unique().tolist())
        assert out_image.shape[-2:] == out_mask.shape[-2:] == ((size, size) if isinstance(size, int) else size)


def test_resize_image_is_bilinear():
    image = torch.tensor([[[0.0, 1.0], [2.0, 3.0]]])
    out, _ = resize(image, torch.zeros(2, 2, dtype=torch.int64), 4)
    # Half-pixel centres: output x = 0.25, 0.75, 1.25, 1.75 in input pixels -> weights clamp at the edges.
    assert torch.allclose(out[0, 0], torch.tensor([0.0, 0.25, 0.75, 1.0]))
    assert torch.allclose(out[0, :, 0], torch.tensor([0.0, 0.5, 1.5, 2.0]))


def test_normalize_per_channel_by_hand():
    image = torch.tensor([1.0, 0.5, 0.0]).reshape(3, 1, 1).expand(3, 2, 2)
    out = normalize(image, (0.5, 0.5, 0.5), (0.25, 0.5, 1.0))
    assert torch.equal(out[:, 0, 0], torch.tensor([2.0, 0.0, -0.5]))
    with pytest.raises(ShapeError, match="mean"):
        normalize(image, (0.5, 0.5), (1.0, 1.0, 1.0))


# --- random transforms -----------------------------------------------------------------------------

def test_random_flip_with_p_one_flips_and_p_zero_does_not(key):
    image, mask = _marked()
    assert torch.equal(random_flip(key, image, mask, 1.0)[1], hflip(image, mask)[1])
    assert torch.equal(random_flip(key, image, mask, 1.0, horizontal=False, vertical=True)[1], vflip(image, mask)[1])
    assert torch.equal(random_flip(key, image, mask, 0.0, vertical=True)[1], mask)


def test_random_flip_draws_independently_per_example(key):
    image, mask = _marked(batch=64)
    out_image, out_mask = random_flip(key, image, mask, 0.5)
    flipped = out_mask[:, 1, W - 1 - 2] == 3
    assert 10 < int(flipped.sum()) < 54
    _assert_aligned(out_image, out_mask)


def test_random_crop_cuts_the_same_window_from_image_and_mask(getkey):
    image, mask = _marked(batch=16)
    for _ in range(3):
        out_image, out_mask = random_crop(getkey(), image, mask, (4, 5))
        assert out_image.shape == (16, 3, 4, 5) and out_mask.shape == (16, 4, 5)
        # Channel 1 holds each pixel's flat index: it tells where every window came from.
        top = (out_image[:, 1, 0, 0] // W).long()
        left = (out_image[:, 1, 0, 0] % W).long()
        for b in range(16):
            assert torch.equal(out_image[b], image[b, :, top[b]:top[b] + 4, left[b]:left[b] + 5])
            assert torch.equal(out_mask[b], mask[b, top[b]:top[b] + 4, left[b]:left[b] + 5])


def test_random_crop_larger_than_the_image_is_a_shape_error(key):
    with pytest.raises(ShapeError, match="larger than the image"):
        random_crop(key, *_marked(), (H + 1, W))


def test_random_rot90_keeps_pairs_aligned_and_uses_every_angle(key):
    image, mask = _marked(h=6, w=6, batch=32)
    out_image, out_mask = random_rot90(key, image, mask)
    _assert_aligned(out_image, out_mask)
    positions = {tuple(ix.tolist()) for ix in (out_mask == 3).nonzero()[:, 1:]}
    assert positions == {(1, 2), (3, 1), (4, 3), (2, 4)}  # the marker under k = 0, 1, 2, 3


def test_random_rot90_of_a_non_square_batch_is_a_shape_error(key):
    with pytest.raises(ShapeError, match="must be square"):
        random_rot90(key, *_marked(batch=2))


def test_batched_augment_equals_per_example_augment_with_split_keys(key):
    cfg = AugmentConfig(crop=(4, 4), hflip_p=0.5, vflip_p=0.5, rot90=True, brightness=0.1, contrast=0.2)
    image, mask = _marked(batch=5)
    image = image / 48.0  # into [0, 1]
    out_image, out_mask = augment(key, image, mask, cfg)
    keys = random.split(key, 5)
    for b in range(5):
        one_image, one_mask = augment(keys[b], image[b], mask[b], cfg)
        assert torch.equal(out_mask[b], one_mask)
        torch.testing.assert_close(out_image[b], one_image)


def test_augment_is_deterministic_and_moves_the_pair_together(key):
    cfg = AugmentConfig(crop=(5, 5), hflip_p=0.5, vflip_p=0.5, rot90=True)
    image, mask = _marked(batch=32)
    a = augment(key, image, mask, cfg)
    b = augment(key, image, mask, cfg)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    kept = (a[1] == 3).flatten(1).any(1)  # examples whose crop kept the marker
    assert 0 < int(kept.sum()) < 32
    assert torch.equal((a[0][:, 0] == 1.0), (a[1] == 3))


def test_photometric_jitter_changes_only_the_image(key):
    image, mask = _marked(batch=4)
    image = image / 48.0
    out_image, out_mask = augment(key, image, mask, AugmentConfig(hflip_p=0.0, brightness=0.2, contrast=0.3))
    assert torch.equal(out_mask, mask)
    assert not torch.equal(out_image, image)
    assert out_image.min() >= 0 and out_image.max() <= 1


def test_transforms_do_not_modify_their_inputs(key):
    image, mask = _marked(batch=4)
    image_copy, mask_copy = image.clone(), mask.clone()
    cfg = AugmentConfig(crop=(4, 4), hflip_p=1.0, vflip_p=1.0, rot90=True, brightness=0.5, contrast=0.5)
    for fn in (lambda: hflip(image, mask), lambda: vflip(image, mask), lambda: rot90(image, mask, 1),
               lambda: resize(image, mask, 3), lambda: normalize(image, (1, 1, 1), (2, 2, 2)),
               lambda: random_flip(key, image, mask, 1.0, vertical=True), lambda: random_crop(key, image, mask, 3),
               lambda: augment(key, image, mask, cfg), lambda: pad_collate([(image[0], mask[0])], multiple_of=4)):
        fn()
        assert torch.equal(image, image_copy) and torch.equal(mask, mask_copy)


def test_mismatched_image_and_mask_is_a_shape_error():
    with pytest.raises(ShapeError, match="mask"):
        hflip(torch.zeros(3, 4, 4), torch.zeros(4, 5, dtype=torch.int64))
    with pytest.raises(ConfigError, match="hflip_p"):
        AugmentConfig(hflip_p=1.5)


# --- pad_collate --------------------------------------------------------------------------------------

def test_pad_collate_pads_masks_with_ignore_index_and_images_with_zero():
    a = (torch.ones(3, 2, 3), torch.ones(2, 3, dtype=torch.int64))
    b = (torch.full((3, 4, 1), 0.5), torch.full((4, 1), 2, dtype=torch.int64))
    images, masks = pad_collate([a, b], ignore_index=255, multiple_of=4)
    assert images.shape == (2, 3, 4, 4) and masks.shape == (2, 4, 4)
    assert torch.equal(masks[0, :2, :3], a[1])
    assert bool((masks[0, 2:] == 255).all()) and bool((masks[0, :, 3:] == 255).all())
    assert torch.equal(masks[1, :, :1], b[1]) and bool((masks[1, :, 1:] == 255).all())
    assert torch.equal(images[0, :, :2, :3], a[0]) and float(images[0].sum()) == a[0].sum()
    assert torch.equal(images[1, :, :, :1], b[0]) and float(images[1, :, :, 1:].abs().sum()) == 0.0


def test_pad_collate_rejects_mixed_channels():
    with pytest.raises(ShapeError, match=r"items\[1\] image"):
        pad_collate([(torch.zeros(3, 2, 2), torch.zeros(2, 2, dtype=torch.int64)),
                     (torch.zeros(1, 2, 2), torch.zeros(2, 2, dtype=torch.int64))])
