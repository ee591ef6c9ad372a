"""Sliding-window inference (funcml.seg.sliding, task.predict_full)."""

from __future__ import annotations

import pytest
import torch

from funcml import random
from funcml.errors import ConfigError
from funcml.seg.sliding import gaussian_importance, sliding_window, window_starts


def test_window_starts_cover_the_axis_from_zero_to_the_end():
    assert window_starts(512, 128, 0.5) == [0, 64, 128, 192, 256, 320, 384]
    assert window_starts(100, 128, 0.5) == [0]
    s = window_starts(300, 128, 0.25)
    assert s[0] == 0 and s[-1] == 300 - 128 and all(b - a <= 96 for a, b in zip(s, s[1:]))


def test_gaussian_importance_peaks_at_the_centre_and_is_positive_everywhere():
    g = gaussian_importance((32, 16))
    assert g.shape == (32, 16) and float(g.max()) == pytest.approx(1.0, abs=1e-3)
    assert float(g.min()) > 0 and float(g[0, 0]) < float(g[16, 8])
    assert torch.allclose(g, g.flip(0).flip(1), atol=1e-6)


@pytest.mark.parametrize("size", [(37, 53), (16, 16), (9, 40), (128, 96)])
@pytest.mark.parametrize("tta", [False, True])
def test_a_pointwise_function_stitched_equals_the_function_on_the_full_image(size, tta):
    x = random.normal(random.key(0), (2, 3, *size))
    w = random.normal(random.key(1), (4, 3))

    def fn(t):  # a 1x1 convolution: each pixel on its own
        return torch.einsum("kc,nchw->nkhw", w, t)

    out = sliding_window(fn, x, window=(16, 24), overlap=0.5, batch_size=3, tta=tta)
    assert out.shape == (2, 4, *size)
    torch.testing.assert_close(out, fn(x), rtol=1e-5, atol=1e-5)


def test_blend_weights_sum_to_the_gaussian_total_of_all_windows():
    ones = torch.ones(1, 1, 40, 40)
    count = sliding_window(lambda t: t, ones, window=(16, 16), overlap=0.5, sigma_scale=0.0)
    torch.testing.assert_close(count, ones)  # uniform weights: the average of ones is one


def test_overlapping_windows_weight_the_window_centres_most():
    # fn returns the window-local row index: the blended value at a pixel is a weighted average of
    # its positions in the windows that cover it, pulled toward the window centre (7.5) by the Gaussian.
    x = torch.zeros(1, 1, 48, 16)

    def local_row(t):
        return torch.arange(16.0)[None, None, :, None].expand(t.shape[0], 1, 16, 16)

    g = sliding_window(local_row, x, window=(16, 16), overlap=0.5)
    u = sliding_window(local_row, x, window=(16, 16), overlap=0.5, sigma_scale=0.0)
    mid = g[0, 0, 8:40, 0]  # pixels covered by two windows
    assert float((mid - 7.5).abs().mean()) < float((u[0, 0, 8:40, 0] - 7.5).abs().mean())


def test_a_bad_overlap_is_a_config_error():
    with pytest.raises(ConfigError, match="overlap"):
        sliding_window(lambda t: t, torch.zeros(1, 1, 8, 8), window=(4, 4), overlap=1.0)
