"""funcml.seg.shapes: a pure, vectorized, pixel-exact synthetic segmentation dataset."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from funcml import random
from funcml.errors import ConfigError
from funcml.seg import shapes as S
from funcml.seg.shapes import Scene, ShapesConfig, draw_shape, render_scene, sample_scene, shapes_batch, split_key

SMALL = ShapesConfig(height=32, width=32)
CLEAN = ShapesConfig(noise_std=0.0, blur_sigma=0.0, gradient=0.0, texture=0.0)


def _scene(objects, *, h=64, w=64, background=(0.2, 0.4, 0.6), patch=None) -> Scene:
    """A hand-made scene of one image: objects = [(kind index, (cy, cx), (a, b), angle, colour)]."""
    m = len(objects)
    t = torch.tensor
    return Scene(
        kind=t([[o[0] for o in objects]]), active=torch.ones(1, m, dtype=torch.bool),
        center=t([[list(o[1]) for o in objects]], dtype=torch.float32),
        size=t([[list(o[2]) for o in objects]], dtype=torch.float32),
        angle=t([[float(o[3]) for o in objects]]), color=t([[list(o[4]) for o in objects]]),
        background=t([list(background)]), gradient=torch.zeros(1, 2), texture=torch.zeros(1, 3, 5, 5),
        patch_active=t([patch is not None]),
        patch_center=t([list(patch[0]) if patch else [0.0, 0.0]]),
        patch_size=t([list(patch[1]) if patch else [1.0, 1.0]]))


# --- determinism and purity ---------------------------------------------------------------

def test_same_key_gives_identical_bits(key):
    a_img, a_mask = shapes_batch(key, 8, SMALL)
    b_img, b_mask = shapes_batch(key, 8, SMALL)
    assert torch.equal(a_img, b_img) and torch.equal(a_mask, b_mask)


def test_different_keys_give_different_batches(key):
    a_img, a_mask = shapes_batch(key, 8, SMALL)
    b_img, b_mask = shapes_batch(random.fold_in(key, 1), 8, SMALL)
    assert not torch.equal(a_img, b_img) and not torch.equal(a_mask, b_mask)


def test_global_torch_rng_is_untouched(key):
    before = torch.random.get_rng_state()
    shapes_batch(key, 4, SMALL)
    assert torch.equal(torch.random.get_rng_state(), before)


def test_split_keys_are_fixed_and_distinct(key):
    train, val, test = (split_key(key, s) for s in ("train", "val", "test"))
    assert torch.equal(val, split_key(key, "val"))
    assert len({tuple(k.tolist()) for k in (train, val, test)}) == 3
    with pytest.raises(ConfigError, match="split must be one of"):
        split_key(key, "validation")


@pytest.mark.cuda
def test_same_bits_on_cuda_as_on_cpu(key):
    cpu = shapes_batch(key, 8, ShapesConfig())
    gpu = shapes_batch(key, 8, ShapesConfig(), device="cuda")
    assert torch.equal(cpu[0], gpu[0].cpu()) and torch.equal(cpu[1], gpu[1].cpu())


# --- contract ----------------------------------------------------------------------------------

@pytest.mark.parametrize("channels", [1, 3])
def test_batch_shapes_dtypes_and_ranges(key, channels):
    cfg = dataclasses.replace(SMALL, channels=channels)
    images, masks = shapes_batch(key, 5, cfg)
    assert images.shape == (5, channels, 32, 32) and images.dtype == torch.float32
    assert masks.shape == (5, 32, 32) and masks.dtype == torch.int64
    assert images.min() >= 0 and images.max() <= 1
    assert masks.min() >= 0 and masks.max() < cfg.num_classes


def test_config_rejects_unknown_kind_and_mismatched_weights():
    with pytest.raises(ConfigError, match="unknown shape kind"):
        ShapesConfig(classes=("circle", "hexagon"))
    with pytest.raises(ConfigError, match="class_weights has 2 entries for 4 classes"):
        ShapesConfig(class_weights=(1.0, 2.0))


def test_num_classes_and_names_follow_mode():
    assert ShapesConfig().num_classes == 5
    assert ShapesConfig().class_names == ("background", "circle", "square", "triangle", "ellipse")
    assert ShapesConfig(mode="binary").num_classes == 2


# --- geometry, by hand -------------------------------------------------------------------------

def test_axis_aligned_square_covers_exactly_its_pixel_block():
    # Half side 8 around (32, 32): pixel centres i + 0.5 in [24, 40] -> rows and columns 24..39.
    got = draw_shape("square", (32, 32), 8, 0.0, 64, 64)
    want = torch.zeros(64, 64, dtype=torch.bool)
    want[24:40, 24:40] = True
    assert torch.equal(got, want)


def test_small_circle_is_a_four_by_four_block_without_corners():
    # Radius 2 around (4, 4): centre offsets (+-0.5, +-1.5) are inside (2.5 <= 4), (1.5, 1.5) is not (4.5).
    got = draw_shape("circle", (4, 4), 2, 0.0, 8, 8)
    want = torch.zeros(8, 8, dtype=torch.bool)
    want[2:6, 2:6] = True
    for i, j in ((2, 2), (2, 5), (5, 2), (5, 5)):
        want[i, j] = False
    assert torch.equal(got, want)


def test_rectangle_semi_axes_follow_the_local_frame():
    # a = 6 along x (columns 26..37), b = 3 along y (rows 29..34); rotating by 90 degrees swaps them.
    flat = draw_shape("rectangle", (32, 32), (6, 3), 0.0, 64, 64)
    upright = draw_shape("rectangle", (32, 32), (6, 3), math.pi / 2, 64, 64)
    want = torch.zeros(64, 64, dtype=torch.bool)
    want[29:35, 26:38] = True
    assert torch.equal(flat, want)
    assert torch.equal(upright, want.T)


def test_square_rotated_45_degrees_is_a_diamond():
    diamond = draw_shape("square", (32, 32), 8, math.pi / 4, 64, 64)
    assert diamond[32, 42]  # centre offset (0.5, 10.5): u = 7.8, v = -7.1, inside
    assert not diamond[39, 39]  # the unrotated square's corner (7.5, 7.5): u = 10.6, outside
    assert abs(int(diamond.sum()) - 256) <= 16  # area (2 * 8)^2


def test_ellipse_extents_along_its_axes():
    e = draw_shape("ellipse", (32, 32), (10, 4), 0.0, 64, 64)
    rows, cols = e.any(1).nonzero().flatten(), e.any(0).nonzero().flatten()
    assert (int(rows.min()), int(rows.max())) == (28, 35)  # |y - 32| <= 4 at pixel centres
    assert (int(cols.min()), int(cols.max())) == (22, 41)  # |x - 32| <= 10
    assert abs(int(e.sum()) - math.pi * 40) <= 8


def test_triangle_points_up_and_is_symmetric():
    # Circumradius 16 at (32, 32), angle 0: apex at y = 16, base at y = 40. At height y the
    # half width is 16 sqrt(3)/2 * (y - 16) / 24: 0.29 at y = 16.5 (no pixel centre, those
    # sit at x - 32 = +-0.5), 0.87 at 17.5 (two pixels), 13.57 at 39.5 (28 pixels).
    t = draw_shape("triangle", (32, 32), 16, 0.0, 64, 64)
    rows = t.any(1).nonzero().flatten()
    assert (int(rows.min()), int(rows.max())) == (17, 39)
    widths = t.sum(1)[17:40]
    assert bool((widths[1:] >= widths[:-1]).all())  # widens from apex to base
    assert (int(widths[0]), int(widths[-1])) == (2, 28)
    assert torch.equal(t, t.flip(1))
    assert abs(int(t.sum()) - 3 * math.sqrt(3) / 4 * 16**2) <= 12  # area of the equilateral triangle


# --- rendering: masks and images aligned ----------------------------------------------------------

def test_mask_equals_the_drawn_shapes_and_colour_differs_exactly_there():
    objects = [(0, (16, 16), (6, 6), 0.0, (0.9, 0.1, 0.1)),    # circle
               (1, (16, 48), (6, 6), 0.3, (0.1, 0.9, 0.1)),    # square, rotated
               (2, (46, 32), (10, 10), 0.0, (0.9, 0.9, 0.1))]  # triangle
    images, masks = render_scene(_scene(objects), CLEAN)
    want = torch.zeros(64, 64, dtype=torch.int64)
    for cls, (kind, c, ab, angle, _) in zip((1, 2, 3), objects):
        want[draw_shape(("circle", "square", "triangle")[kind], c, ab, angle, 64, 64)] = cls
    assert torch.equal(masks[0], want)
    background = torch.tensor([0.2, 0.4, 0.6])[:, None, None]
    differs = (images[0] != background).any(0)
    assert torch.equal(differs, want > 0)


def test_generated_images_differ_from_background_exactly_on_the_mask(key):
    cfg = dataclasses.replace(CLEAN, occlusion_prob=0.5)
    scene = sample_scene(key, 16, cfg)
    images, masks = render_scene(scene, cfg)
    background = scene.background[:, :, None, None]
    assert torch.equal((images != background).any(1), masks > 0)


def test_objects_keep_the_contrast_floor(key):
    cfg = dataclasses.replace(CLEAN, min_contrast=0.3)
    scene = sample_scene(key, 32, cfg)
    images, masks = render_scene(scene, cfg)
    contrast = (images - scene.background[:, :, None, None]).abs().amax(1)
    assert float(contrast[masks > 0].min()) >= 0.3 - 1e-6


def test_a_later_object_occludes_an_earlier_one():
    first, second = (1, (32, 28), (8, 8), 0.0, (1.0, 0.0, 0.0)), (1, (32, 36), (8, 8), 0.0, (0.0, 0.0, 1.0))
    images, masks = render_scene(_scene([first, second]), CLEAN)
    overlap = draw_shape("square", (32, 28), 8, 0.0, 64, 64) & draw_shape("square", (32, 36), 8, 0.0, 64, 64)
    assert overlap.sum() > 0
    assert torch.equal(images[0, :, overlap], torch.tensor([0.0, 0.0, 1.0])[:, None].expand(3, int(overlap.sum())))


def test_occlusion_patch_hides_part_of_an_object_in_image_and_mask(key):
    cfg = dataclasses.replace(CLEAN, objects=(1, 1), occlusion_prob=1.0, overlap_prob=0.0)
    scene = sample_scene(key, 16, cfg)
    _, unoccluded = render_scene(scene._replace(patch_active=torch.zeros(16, dtype=torch.bool)), cfg)
    images, masks = render_scene(scene, cfg)
    visible, full = (masks > 0).sum((1, 2)), (unoccluded > 0).sum((1, 2))
    assert bool((visible < full).all()) and bool((visible > 0).all())  # partly, not wholly, hidden
    hidden = (unoccluded > 0) & (masks == 0)
    assert torch.equal(images.permute(0, 2, 3, 1)[hidden],
                       S._background(scene, 64, 64, cfg.texture_cells).permute(0, 2, 3, 1)[hidden])


def test_overlap_prob_makes_later_objects_cover_earlier_ones(key):
    cfg = dataclasses.replace(CLEAN, objects=(2, 2), overlap_prob=1.0, occlusion_prob=0.0)
    scene = sample_scene(key, 64, cfg)
    cos, sin = S._cos_sin(scene.angle)
    geometry = torch.tensor([S._GEOMETRY[k] for k in cfg.classes])[scene.kind]
    inside = S._inside(geometry, scene.center, scene.size, cos, sin, 64, 64)  # [N, 2, H, W]
    overlapped = (inside[:, 0] & inside[:, 1]).any((1, 2))
    assert float(overlapped.float().mean()) > 0.9


def test_noise_has_the_configured_std(key):
    cfg = dataclasses.replace(CLEAN, noise_std=0.05)
    scene = _scene([(0, (0, 0), (1, 1), 0.0, (0.5, 0.5, 0.5))], background=(0.5, 0.5, 0.5))
    scene = scene._replace(active=torch.zeros(1, 1, dtype=torch.bool))
    images, _ = render_scene(scene, cfg, key=key)
    noise = images - 0.5
    assert abs(float(noise.mean())) < 0.005 and abs(float(noise.std()) - 0.05) < 0.0025


def test_gaussian_blur_impulse_response_is_the_normalised_kernel():
    sigma, r = 0.8, 3  # radius ceil(3 sigma)
    impulse = torch.zeros(1, 9, 9)
    impulse[0, 4, 4] = 1.0
    taps = torch.exp(-torch.arange(-r, r + 1, dtype=torch.float64) ** 2 / (2 * sigma**2))
    taps = taps / taps.sum()
    want = torch.zeros(9, 9, dtype=torch.float64)
    want[1:8, 1:8] = taps[:, None] * taps[None, :]
    got = S.gaussian_blur(impulse, sigma)
    torch.testing.assert_close(got[0].double(), want, atol=1e-7, rtol=0)
    flat = torch.full((2, 3, 8, 8), 0.25)
    torch.testing.assert_close(S.gaussian_blur(flat, 1.5), flat)
    x = random.uniform(random.key(5), (1, 1, 16, 16))
    interior = F.conv2d(x, (taps[:, None] * taps[None, :]).float()[None, None])
    torch.testing.assert_close(S.gaussian_blur(x, sigma)[..., r:-r, r:-r], interior, atol=1e-6, rtol=0)


# --- class frequencies -----------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["multiclass", "binary"])
def test_object_kinds_follow_the_class_weights(key, mode):
    weights = (4.0, 2.0, 1.0, 1.0)
    cfg = ShapesConfig(class_weights=weights, mode=mode)
    scene = sample_scene(key, 2000, cfg)
    kinds = scene.kind[scene.active]
    freq = torch.bincount(kinds, minlength=4).double() / kinds.numel()
    torch.testing.assert_close(freq, torch.tensor(weights, dtype=torch.float64) / 8, atol=0.015, rtol=0)


def test_a_zero_weight_class_never_appears_in_the_masks(key):
    cfg = dataclasses.replace(SMALL, class_weights=(1.0, 1.0, 0.0, 1.0))
    _, masks = shapes_batch(key, 64, cfg)
    counts = torch.bincount(masks.flatten(), minlength=5)
    assert counts[3] == 0 and bool((counts[[0, 1, 2, 4]] > 0).all())


def test_images_contain_each_class_as_often_as_its_weight_says(key):
    # One object per image, nothing hidden, every object covers some pixel centre (a >= 2.4):
    # the share of images showing class k is weight_k / sum(weights).
    weights = (4.0, 2.0, 1.0, 1.0)
    cfg = dataclasses.replace(CLEAN, height=24, width=24, objects=(1, 1), size=(0.1, 0.2), occlusion_prob=0.0,
                              class_weights=weights)
    _, masks = shapes_batch(key, 2000, cfg)
    shown = torch.stack([(masks == c).flatten(1).any(1) for c in range(1, 5)], 1)  # [N, 4]
    assert bool((shown.sum(1) == 1).all())
    freq = shown.double().mean(0)
    torch.testing.assert_close(freq, torch.tensor(weights, dtype=torch.float64) / 8, atol=0.035, rtol=0)


def test_binary_mode_is_the_foreground_of_the_multiclass_batch(key):
    images, masks = shapes_batch(key, 8, SMALL)
    b_images, b_masks = shapes_batch(key, 8, dataclasses.replace(SMALL, mode="binary"))
    assert torch.equal(images, b_images)
    assert torch.equal(b_masks, (masks > 0).long())
    assert set(b_masks.unique().tolist()) == {0, 1}
