"""Sliding-window inference with Gaussian importance blending (the nnU-Net / MONAI method).

    probs = sliding_window(lambda x: softmax(model(x)), images, window=(128, 128), overlap=0.5, tta=True)
    # images: [B, C, H, W] of any H, W; probs: [B, K, H, W]

A network trained on patches is applied to overlapping windows of the full image; each window's
output is weighted by a Gaussian importance map `g` centred on the window (outputs near a
window's border, which saw less context, count less) and the weighted outputs are averaged:

    g(y, x) = exp(-((y - c_y)^2 / (2 s_y^2) + (x - c_x)^2 / (2 s_x^2))),  s = sigma_scale * window
    out(p) = sum_w g_w(p) f(window_w)(p) / sum_w g_w(p)

(`g` is scaled to max 1 and floored at its smallest positive value so that no pixel gets a zero
weight; Isensee et al., nnU-Net, Nature Methods 2021; MONAI `sliding_window_inference` with
`mode="gaussian"`, `sigma_scale=0.125`). Window starts along an axis of length n with window w
and target step `w (1 - overlap)`: `k = ceil((n - w) / step) + 1` windows, evenly spread so that
the first starts at 0 and the last ends at n (nnU-Net's `compute_steps_for_sliding_window`). An
axis shorter than the window is covered by one window of the axis' length (a U-Net pads it to its
multiple internally). With `tta=True` every window is also run mirrored left-right, top-bottom
and both, and the four un-mirrored outputs are averaged (nnU-Net's mirroring). Windows run in
batches of `batch_size`; memory is the output `[B, K, H, W]`, one weight map `[H, W]` and one
batch of windows, whatever the image size.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import torch

from .. import config
from ..checks import check_shape
from ..errors import ConfigError, ShapeError

__all__ = ["SlidingWindowConfig", "gaussian_importance", "window_starts", "sliding_window"]

_FLIPS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-2, -1))


@dataclasses.dataclass(frozen=True)
class SlidingWindowConfig:
    """How full images are predicted by overlapping windows (`funcml.seg.sliding`)."""

    overlap: float = 0.5
    """Fraction of a window shared with its neighbour, in [0, 1) (nnU-Net: 0.5)."""
    sigma_scale: float = 0.125
    """Std of the Gaussian importance map as a fraction of the window (nnU-Net, MONAI: 1/8); 0 = uniform weights."""
    batch_size: int = 8
    """Windows per forward pass."""
    tta: bool = False
    """Also predict the left-right, top-bottom and both-way mirrored windows and average (4x the compute)."""

    def __post_init__(self) -> None:
        config.require_in_range(self, 0, 1, "overlap", high_open=True)
        config.require_at_least(self, 0, "sigma_scale")
        config.require_positive_int(self, "batch_size")


def gaussian_importance(window: Sequence[int], sigma_scale: float = 0.125, *,
                        device: torch.device | str | None = None) -> torch.Tensor:
    """The importance map `[h, w]` float32 (see the module docstring); `sigma_scale=0`: all ones."""
    h, w = (int(s) for s in window)
    if sigma_scale == 0:
        return torch.ones(h, w, device=device)
    axes = []
    for n in (h, w):
        pos = torch.arange(n, dtype=torch.float64, device=device) - (n - 1) / 2
        axes.append(torch.exp(-pos**2 / (2 * (sigma_scale * n) ** 2)))
    g = axes[0][:, None] * axes[1][None, :]
    g = g / g.max()
    g = torch.clamp(g, min=float(g[g > 0].min()))
    return g.to(torch.float32)


def window_starts(n: int, window: int, overlap: float) -> list[int]:
    """Start offsets of the windows along an axis of length `n` (see the module docstring)."""
    if n < 1 or window < 1:
        raise ShapeError(f"window_starts: need n >= 1 and window >= 1, got n={n}, window={window}")
    if n <= window:
        return [0]
    step = max(1.0, window * (1.0 - overlap))
    k = math.ceil((n - window) / step) + 1
    actual = (n - window) / (k - 1)
    return [int(round(actual * i)) for i in range(k)]


def sliding_window(fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, *, window: Sequence[int],
                   overlap: float = 0.5, sigma_scale: float = 0.125, batch_size: int = 8,
                   tta: bool = False) -> torch.Tensor:
    """Blend `fn` over overlapping windows of `images: [B, C, H, W]` -> `[B, K, H, W]` float32.

    fn: `[n, C, h, w] -> [n, K, h, w]` (e.g. softmax probabilities of a model in eval mode), for
    windows of size `(h, w) = min(window, (H, W))`. Blending is linear, so a pointwise `fn`
    (one that maps each pixel on its own) gives exactly `fn(images)`.
    """
    dims = check_shape(images, "b c h w", name="images")
    SlidingWindowConfig(overlap=overlap, sigma_scale=sigma_scale, batch_size=batch_size)  # validates
    if len(window) != 2 or min(int(s) for s in window) < 1:
        raise ConfigError(f"window must be (h, w) >= 1, got {tuple(window)}")
    if dims["b"] == 0:
        raise ShapeError("sliding_window: got no images (B = 0)")
    hh, ww = dims["h"], dims["w"]
    wh, wwid = min(int(window[0]), hh), min(int(window[1]), ww)
    corners = [(y, x) for y in window_starts(hh, wh, overlap) for x in window_starts(ww, wwid, overlap)]
    g = gaussian_importance((wh, wwid), sigma_scale, device=images.device)
    weight = torch.zeros(hh, ww, dtype=torch.float32, device=images.device)
    for y, x in corners:
        weight[y:y + wh, x:x + wwid] += g
    out: torch.Tensor | None = None
    flips = _FLIPS if tta else ((),)
    for b in range(dims["b"]):
        for i in range(0, len(corners), batch_size):
            chunk = corners[i:i + batch_size]
            x_win = torch.stack([images[b, :, y:y + wh, x:x + wwid] for y, x in chunk])  # [n, C, wh, ww]
            pred = None
            for f in flips:
                p = fn(x_win.flip(f) if f else x_win).to(torch.float32)
                check_shape(p, "n k h w", name="fn output", n=len(chunk), h=wh, w=wwid)
                p = p.flip(f) if f else p
                pred = p if pred is None else pred + p
            pred = pred / len(flips)
            if out is None:
                out = torch.zeros(dims["b"], pred.shape[1], hh, ww, dtype=torch.float32, device=images.device)
            for (y, x), p in zip(chunk, pred):
                out[b, :, y:y + wh, x:x + wwid] += p * g
    assert out is not None
    return out / weight
