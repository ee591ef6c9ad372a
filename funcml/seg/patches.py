"""Training patches from full-resolution images, with foreground oversampling (nnU-Net).

    canvas, masks, sizes = pad_to_canvas(images, masks, min_size=(128, 128), ignore_index=255)
    x, y = sample_patches(key, canvas[idx], masks[idx], sizes[idx], patch=(128, 128), fg_fraction=1/3)

Images of any sizes are stored on one canvas `[N, C, H, W]` (padded at the bottom and right:
image 0, mask `ignore_index`, so padding is never scored) with their own sizes `sizes: [N, 2]`;
a canvas is at least one patch large, so an image smaller than a patch yields a padded patch.

`sample_patches` is a pure function of its key and branch-free (one batched draw, vectorized
gathers; CPU or CUDA). Example i draws four uniforms `(u_fg, u_pick, u_y, u_x)` from
`split(key, B)[i]`:

    random patch:      top = floor(u_y (h_i - ph + 1))                      (clamped to >= 0)
    foreground patch:  the j-th foreground pixel (y, x), j = floor(u_pick n_fg), in raster order;
                       top = clamp(y - ph // 2, 0, max(h_i - ph, 0))         (the patch centred on it)
    foreground if u_fg < fg_fraction and the image has a foreground pixel (n_fg > 0)

(and the same for the columns). Foreground pixels are mask values in `[1, ignore_index)` and
`> ignore_index`: every class but 0, the background. nnU-Net forces a third of each batch
(`oversample_foreground_percent = 0.33`) to be centred on foreground.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange

from .. import random
from ..checks import check_shape
from ..errors import ConfigError

__all__ = ["pad_to_canvas", "sample_patches"]


def pad_to_canvas(images: Sequence[torch.Tensor], masks: Sequence[torch.Tensor], *, min_size: Sequence[int] = (1, 1),
                  ignore_index: int = 255) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stack `[C, H_i, W_i]` images and `[H_i, W_i]` masks on one canvas.

    Returns `canvas [N, C, H, W]` (zeros outside each image), `masks [N, H, W]` (`ignore_index`
    outside) and `sizes [N, 2]` int64 `(H_i, W_i)`, with H, W the largest sizes and at least `min_size`.
    """
    if len(images) == 0 or len(images) != len(masks):
        raise ConfigError(f"pad_to_canvas: need as many masks as images (>= 1), got {len(images)} and {len(masks)}")
    h = max(max(int(im.shape[-2]) for im in images), int(min_size[0]))
    w = max(max(int(im.shape[-1]) for im in images), int(min_size[1]))
    canvas = torch.stack([F.pad(im, (0, w - im.shape[-1], 0, h - im.shape[-2])) for im in images])
    out_masks = torch.stack([F.pad(m, (0, w - m.shape[-1], 0, h - m.shape[-2]), value=ignore_index) for m in masks])
    sizes = torch.tensor([[im.shape[-2], im.shape[-1]] for im in images], dtype=torch.int64)
    return canvas, out_masks, sizes


def sample_patches(key: torch.Tensor, images: torch.Tensor, masks: torch.Tensor, sizes: torch.Tensor, *,
                   patch: Sequence[int], fg_fraction: float = 0.0,
                   ignore_index: int = 255) -> tuple[torch.Tensor, torch.Tensor]:
    """One patch per example (see the module docstring).

    images: `[B, C, H, W]`, masks: `[B, H, W]` int, sizes: `[B, 2]` valid `(h_i, w_i)` of each, with
    `H >= ph` and `W >= pw` (see `pad_to_canvas`). Returns `([B, C, ph, pw], [B, ph, pw])`.
    """
    dims = check_shape(images, "b c h w", name="images")
    b, hh, ww = dims["b"], dims["h"], dims["w"]
    check_shape(masks, "b h w", name="masks", b=b, h=hh, w=ww)
    check_shape(sizes, "b 2", name="sizes", b=b)
    ph, pw = (int(s) for s in patch)
    if ph < 1 or pw < 1 or ph > hh or pw > ww:
        raise ConfigError(f"patch {ph}x{pw} must be >= 1 and fit the canvas {hh}x{ww}; pad with pad_to_canvas first")
    if not 0.0 <= fg_fraction <= 1.0:
        raise ConfigError(f"fg_fraction must be in [0, 1], got {fg_fraction}")
    dev = images.device
    u = torch.func.vmap(lambda k: random.uniform(k, (4,)))(random.split(key, b)).to(torch.float64)  # [B, 4]
    sizes = sizes.to(dev)
    span = (sizes - torch.tensor([ph, pw], device=dev)).clamp_min(0)  # [B, 2] largest top / left
    top_r = torch.floor(u[:, 2] * (span[:, 0] + 1)).to(torch.int64).clamp(max=span[:, 0])
    left_r = torch.floor(u[:, 3] * (span[:, 1] + 1)).to(torch.int64).clamp(max=span[:, 1])

    fg = (masks >= 1) & (masks != ignore_index)  # [B, H, W]
    counts = torch.cumsum(rearrange(fg, "b h w -> b (h w)").to(torch.int64), dim=1)  # [B, H W]
    n_fg = counts[:, -1]
    j = torch.floor(u[:, 1] * n_fg).to(torch.int64).clamp(max=(n_fg - 1).clamp_min(0))
    flat = torch.searchsorted(counts, (j + 1)[:, None]).squeeze(1).clamp(max=hh * ww - 1)  # first count >= j + 1
    cy, cx = flat // ww, flat % ww
    top_f = (cy - ph // 2).clamp(min=0)
    top_f = torch.minimum(top_f, span[:, 0])
    left_f = torch.minimum((cx - pw // 2).clamp(min=0), span[:, 1])
    use_fg = (u[:, 0] < fg_fraction) & (n_fg > 0)
    top = torch.where(use_fg, top_f, top_r)
    left = torch.where(use_fg, left_f, left_r)

    rows = top[:, None] + torch.arange(ph, device=dev)  # [B, ph]
    cols = left[:, None] + torch.arange(pw, device=dev)  # [B, pw]
    bi = torch.arange(b, device=dev)[:, None, None]
    x = rearrange(images[bi, :, rows[:, :, None], cols[:, None, :]], "b h w c -> b c h w")
    return x, masks[bi, rows[:, :, None], cols[:, None, :]]
