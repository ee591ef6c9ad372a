"""Intensity augmentation for real images (the image only; the mask is untouched).

    image = random_intensity(keys, image, cfg)      # keys [B, 2], image [B, C, H, W] in [0, 1]

Each transform is applied to example i with its own probability, from `keys[i]`, in this order
(nnU-Net's order: noise and blur, then the intensity curve):

    noise       x + sigma z,  z ~ N(0, 1) per pixel,  sigma ~ U[0, noise_std]         (noise_p)
    blur        x * G_sigma (separable Gaussian, reflect padding), sigma ~ U[blur_sigma]   (blur_p)
    gamma       x^gamma,  log gamma ~ U[log gamma_lo, log gamma_hi]                      (gamma_p)

then the image is clamped to [0, 1] (brightness and contrast live in `funcml.seg.transforms`).
Everything is computed for the whole batch (a transform not drawn for an example has its identity
parameters: sigma 0, a delta kernel, gamma 1),
so the code has no data-dependent branch and runs batched on any device.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange

from .. import random

__all__ = ["random_intensity", "gaussian_kernels"]


def gaussian_kernels(sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """Normalized 1-D Gaussians `[B, 2 radius + 1]` of std `sigma: [B]`; sigma 0 gives a delta."""
    t = torch.arange(-radius, radius + 1, dtype=torch.float32, device=sigma.device)
    safe = sigma.clamp_min(1e-6)[:, None]
    k = torch.exp(-(t[None] ** 2) / (2 * safe**2))
    return k / k.sum(dim=1, keepdim=True)


def random_intensity(keys: torch.Tensor, image: torch.Tensor, *, noise_p: float = 0.0, noise_std: float = 0.0,
                     blur_p: float = 0.0, blur_sigma: tuple[float, float] = (0.5, 1.0), gamma_p: float = 0.0,
                     gamma: tuple[float, float] = (1.0, 1.0)) -> torch.Tensor:
    """Transform a batch `[B, C, H, W]` (see the module docstring); example i draws from `keys[i]`."""
    b, c, h, w = image.shape
    dev, dtype = image.device, image.dtype
    u = torch.func.vmap(lambda k: random.uniform(random.fold_in(k, "intensity"), (6,)))(keys).to(dev, torch.float32)
    x = image
    if noise_p > 0 and noise_std > 0:
        sigma = torch.where(u[:, 0] < noise_p, noise_std * u[:, 1], torch.zeros_like(u[:, 1]))
        z = torch.func.vmap(lambda k: random.fast_normal(random.fold_in(k, "noise"), (c, h, w)))(keys).to(dev, dtype)
        x = x + sigma[:, None, None, None].to(dtype) * z
    if blur_p > 0:
        sigma = torch.where(u[:, 2] < blur_p, blur_sigma[0] + (blur_sigma[1] - blur_sigma[0]) * u[:, 3],
                            torch.zeros_like(u[:, 3]))
        radius = max(1, math.ceil(3 * blur_sigma[1]))
        k = gaussian_kernels(sigma, radius).to(dtype)  # [B, K]
        k = k.repeat_interleave(c, dim=0)  # [B C, K]: one kernel per (example, channel) group
        flat = rearrange(x, "b c h w -> 1 (b c) h w")
        flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="reflect"), k[:, None, None, :], groups=b * c)
        flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="reflect"), k[:, None, :, None], groups=b * c)
        x = rearrange(flat, "1 (b c) h w -> b c h w", b=b)
    if gamma_p > 0:
        lo, hi = math.log(gamma[0]), math.log(gamma[1])
        g = torch.where(u[:, 4] < gamma_p, torch.exp(lo + (hi - lo) * u[:, 5]), torch.ones_like(u[:, 5]))
        x = x.clamp(0.0, 1.0) ** g[:, None, None, None].to(dtype)
    return x.clamp(0.0, 1.0)
