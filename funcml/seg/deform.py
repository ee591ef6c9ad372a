"""Spatial augmentation for real images: elastic deformation, rotation and scaling in one resampling.

    image, mask = random_warp(keys, image, mask, cfg)      # keys [B, 2], image [B, C, H, W], mask [B, H, W]

Every output pixel p (in pixel units, centred: `p = (x - c_x, y - c_y)`) reads the input at

    q = S^-1 R(-theta) p + c + d(p)

with a rotation by `theta ~ U[-rotate_deg, rotate_deg]` (probability `rotate_p`), an isotropic
scale `s ~ U[scale]` (probability `scale_p`; s > 1 zooms in) and an elastic displacement field
`d` (probability `elastic_p`): as in the U-Net paper (Ronneberger et al. 2015, section 3.1),
random displacements on a coarse `g x g` grid drawn from `N(0, elastic_sigma^2)` pixels and
interpolated bicubically to every pixel, a smooth random deformation. The image is sampled
bilinearly, the mask with NEAREST (so it only holds values of the input mask: class ids and
`ignore_index` are never blended), both with reflection at the borders. One `grid_sample` per
tensor for the whole batch: branch-free, batched, on any device; an example for which no
transform was drawn is returned unchanged (bit for bit).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .. import random

__all__ = ["random_warp"]


def random_warp(keys: torch.Tensor, image: torch.Tensor, mask: torch.Tensor, *, rotate_p: float = 0.0,
                rotate_deg: float = 180.0, scale_p: float = 0.0, scale: tuple[float, float] = (1.0, 1.0),
                elastic_p: float = 0.0, elastic_sigma: float = 10.0,
                elastic_grid: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Warp a batch (see the module docstring); example i draws from `keys[i]`.

    keys: `[B, 2]`; image: `[B, C, H, W]` float; mask: `[B, H, W]` int. Returns the same shapes.
    """
    b, _, h, w = image.shape
    dev = image.device
    u = torch.func.vmap(lambda k: random.uniform(random.fold_in(k, "warp"), (5,)))(keys).to(dev, torch.float32)
    on_rot, on_scale, on_el = u[:, 0] < rotate_p, u[:, 1] < scale_p, u[:, 2] < elastic_p
    theta = torch.where(on_rot, (2 * u[:, 3] - 1) * math.radians(rotate_deg), torch.zeros_like(u[:, 3]))
    s = torch.where(on_scale, scale[0] + (scale[1] - scale[0]) * u[:, 4], torch.ones_like(u[:, 4]))
    g = max(2, int(elastic_grid))
    coarse = torch.func.vmap(lambda k: random.normal(random.fold_in(k, "elastic"), (2, g, g)))(keys).to(dev)
    coarse = coarse * (elastic_sigma * on_el.to(torch.float32))[:, None, None, None]  # [B, 2, g, g] pixels
    disp = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True)  # [B, 2, H, W]: (dx, dy)

    ys = torch.arange(h, dtype=torch.float32, device=dev) - (h - 1) / 2
    xs = torch.arange(w, dtype=torch.float32, device=dev) - (w - 1) / 2
    py, px = torch.meshgrid(ys, xs, indexing="ij")  # [H, W]
    cos, sin = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]
    qx = (cos * px[None] - sin * py[None]) / s[:, None, None] + (w - 1) / 2 + disp[:, 0]
    qy = (sin * px[None] + cos * py[None]) / s[:, None, None] + (h - 1) / 2 + disp[:, 1]
    grid = torch.stack([(2 * qx + 1) / w - 1, (2 * qy + 1) / h - 1], dim=-1)  # [B, H, W, 2], align_corners=False

    warped = F.grid_sample(image, grid.to(image.dtype), mode="bilinear", padding_mode="reflection",
                           align_corners=False)
    warped_mask = F.grid_sample(mask[:, None].to(torch.float32), grid, mode="nearest", padding_mode="reflection",
                                align_corners=False)[:, 0].round().to(mask.dtype)
    moved = on_rot | on_scale | on_el
    return (torch.where(moved[:, None, None, None], warped, image),
            torch.where(moved[:, None, None], warped_mask, mask))
