"""Paired transforms for segmentation: the image and its mask always move together.

    image, mask = resize(image, mask, 96)                 # bilinear image, nearest mask
    image, mask = augment(key, image, mask, AugmentConfig(crop=(64, 64), hflip_p=0.5, rot90=True))
    image = normalize(image, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    images, masks = pad_collate([(im0, m0), (im1, m1)], ignore_index=255, multiple_of=16)

Every function takes one example (`image: [C, H, W]` float, `mask: [H, W]` int64) or a batch
(`[B, C, H, W]`, `[B, H, W]`) and returns new tensors; inputs are never modified. Random
transforms are pure functions of their key. On a batch, example `i` gets its own draw from
`random.split(key, B)[i]`: the batched result equals the per-example results stacked
(`f(key, batch)[i] == f(split(key, B)[i], batch[i])`), drawn with `torch.func.vmap` over the
keys and applied vectorized. Geometric transforms move mask pixels without inventing values:
a transformed mask only holds values of the original mask.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange

from .. import config, random
from ..checks import check_dtype, check_shape
from ..errors import ConfigError, ShapeError
from .deform import random_warp
from .intensity import random_intensity

__all__ = [
    "AugmentConfig",
    "resize",
    "normalize",
    "hflip",
    "vflip",
    "random_flip",
    "random_crop",
    "rot90",
    "random_rot90",
    "augment",
    "pad_collate",
]

Pair = tuple[torch.Tensor, torch.Tensor]


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Training-batch augmentation, in this order: crop, flips, rot90, photometric, then the real-image warps and intensity transforms (see funcml.seg.transforms)."""

    crop: tuple[int, int] | None = None
    """(h, w) of a random crop, or None for no crop."""
    hflip_p: float = 0.5
    """Probability of a horizontal flip."""
    vflip_p: float = 0.0
    """Probability of a vertical flip."""
    rot90: bool = False
    """Rotate by a uniform multiple of 90 degrees (a batch must then be square)."""
    brightness: float = 0.0
    """Add a uniform delta in [-brightness, brightness] to the image (then clamped to [0, 1])."""
    contrast: float = 0.0
    """Scale the image about its mean by a uniform factor in [1 - contrast, 1 + contrast]."""
    brightness_p: float = 1.0
    """Probability of the brightness shift (when brightness > 0)."""
    contrast_p: float = 1.0
    """Probability of the contrast change (when contrast > 0)."""
    rotate_p: float = 0.0
    """Probability of a rotation by a uniform angle in [-rotate_deg, rotate_deg] (any angle, not just 90s)."""
    rotate_deg: float = 180.0
    """Largest rotation angle in degrees."""
    scale_p: float = 0.0
    """Probability of an isotropic scaling by a uniform factor in `scale` (> 1 zooms in)."""
    scale: tuple[float, float] = (0.85, 1.25)
    """(min, max) scale factor."""
    elastic_p: float = 0.0
    """Probability of an elastic deformation (U-Net paper: coarse-grid Gaussian displacements, bicubic)."""
    elastic_sigma: float = 10.0
    """Std of the coarse-grid displacements, in pixels."""
    elastic_grid: int = 3
    """Points per side of the coarse displacement grid (>= 2)."""
    noise_p: float = 0.0
    """Probability of additive Gaussian noise with std uniform in [0, noise_std]."""
    noise_std: float = 0.05
    """Largest noise std (images in [0, 1])."""
    blur_p: float = 0.0
    """Probability of a Gaussian blur with std uniform in `blur_sigma` pixels."""
    blur_sigma: tuple[float, float] = (0.5, 1.0)
    """(min, max) blur std in pixels."""
    gamma_p: float = 0.0
    """Probability of a gamma curve x^gamma with log-uniform gamma in `gamma`."""
    gamma: tuple[float, float] = (0.7, 1.5)
    """(min, max) gamma."""

    def __post_init__(self) -> None:
        if self.crop is not None:  # None: no crop
            config.require(isinstance(self.crop, tuple) and len(self.crop) == 2, self,
                           f"crop must be None or (h, w), got {self.crop!r}")
            config.require_positive_int(self, "crop")
        config.require_in_range(self, 0, 1, "hflip_p", "vflip_p", "brightness_p", "contrast_p", "rotate_p", "scale_p",
                                "elastic_p", "noise_p", "blur_p", "gamma_p")
        config.require_at_least(self, 0, "brightness", "rotate_deg", "elastic_sigma", "noise_std")
        config.require_in_range(self, 0, 1, "contrast")
        config.require_at_least(self, 2, "elastic_grid")
        config.require_pair(self, "scale", "gamma", low=0.0, low_open=True)
        config.require_pair(self, "blur_sigma", low=0.0)


def _as_batch(image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Check the pair and return it batched (`[B, C, H, W]`, `[B, H, W]`) with a flag."""
    if not isinstance(image, torch.Tensor) or image.dim() not in (3, 4):
        got = list(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ShapeError(f"image: expected shape [C, H, W] or [B, C, H, W], got {got}")
    batched = image.dim() == 4
    if batched:
        dims = check_shape(image, "b c h w", name="image")
        check_shape(mask, "b h w", name="mask", b=dims["b"], h=dims["h"], w=dims["w"])
    else:
        dims = check_shape(image, "c h w", name="image")
        check_shape(mask, "h w", name="mask", h=dims["h"], w=dims["w"])
    check_dtype(image, "float", name="image")
    check_dtype(mask, "int", name="mask")
    return (image, mask, True) if batched else (image[None], mask[None], False)


def _unbatch(image: torch.Tensor, mask: torch.Tensor, batched: bool) -> Pair:
    return (image, mask) if batched else (image[0], mask[0])


def _size2(size: int | Sequence[int], name: str = "size") -> tuple[int, int]:
    hw = (size, size) if isinstance(size, int) else tuple(int(s) for s in size)
    if len(hw) != 2 or min(hw) < 1:
        raise ConfigError(f"{name} must be an int or (h, w) with entries >= 1, got {size!r}")
    return hw  # type: ignore[return-value]


def _example_keys(key: torch.Tensor, b: int, batched: bool) -> torch.Tensor:
    """Per-example keys `[B, 2]`: `split(key, B)` for a batch, the key itself for one example."""
    return random.split(key, b) if batched else key[None]


def _draw(keys: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """`fn` applied to every key of `keys: [B, 2]` (vmap): `[B, ...]`."""
    return torch.func.vmap(fn)(keys)


def _nearest_index(n_in: int, n_out: int, device: torch.device) -> torch.Tensor:
    """Source index of each output pixel centre: floor((i + 1/2) n_in / n_out), in exact integers."""
    i = torch.arange(n_out, device=device)
    return ((2 * i + 1) * n_in) // (2 * n_out)


def resize(image: torch.Tensor, mask: torch.Tensor, size: int | Sequence[int]) -> Pair:
    """Resize to `size` (an int for a square, or (h, w)).

    The image is interpolated bilinearly (half-pixel centres, `align_corners=False`); the mask
    takes the nearest source pixel (of each output pixel's centre), so it never holds an
    interpolated class id.
    """
    image, mask, batched = _as_batch(image, mask)
    h, w = _size2(size)
    out = F.interpolate(image, size=(h, w), mode="bilinear", align_corners=False)
    rows = _nearest_index(mask.shape[-2], h, mask.device)
    cols = _nearest_index(mask.shape[-1], w, mask.device)
    return _unbatch(out, mask[:, rows[:, None], cols[None, :]], batched)


def normalize(image: torch.Tensor, mean: Sequence[float] | torch.Tensor,
              std: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """`(image - mean[c]) / std[c]` per channel; `image: [..., C, H, W]` float, mean, std: [C]."""
    dims = check_shape(image, "... c h w", name="image")
    check_dtype(image, "float", name="image")
    # checked on the host when given as numbers (no device round trip per batch)
    std_host = torch.as_tensor(std, dtype=torch.float64, device="cpu") if not isinstance(std, torch.Tensor) else std
    if bool((std_host <= 0).any()):
        raise ConfigError(f"std must be > 0 per channel, got {std_host.tolist()}")
    mean_t = torch.as_tensor(mean, dtype=image.dtype, device=image.device)
    std_t = torch.as_tensor(std, dtype=image.dtype, device=image.device)
    check_shape(mean_t, "c", name="mean", c=dims["c"])
    check_shape(std_t, "c", name="std", c=dims["c"])
    return (image - mean_t[:, None, None]) / std_t[:, None, None]


def hflip(image: torch.Tensor, mask: torch.Tensor) -> Pair:
    """Mirror left-right (the W axis)."""
    _as_batch(image, mask)
    return image.flip(-1), mask.flip(-1)


def vflip(image: torch.Tensor, mask: torch.Tensor) -> Pair:
    """Mirror top-bottom (the H axis)."""
    _as_batch(image, mask)
    return image.flip(-2), mask.flip(-2)


def _random_flip(keys: torch.Tensor, image: torch.Tensor, mask: torch.Tensor, p: float,
                 horizontal: bool, vertical: bool) -> Pair:
    flip = _draw(keys, lambda k: random.uniform(k, (2,)) < p)  # [B, 2]: (horizontal, vertical)
    if horizontal:
        f = flip[:, 0]
        image = torch.where(f[:, None, None, None], image.flip(-1), image)
        mask = torch.where(f[:, None, None], mask.flip(-1), mask)
    if vertical:
        f = flip[:, 1]
        image = torch.where(f[:, None, None, None], image.flip(-2), image)
        mask = torch.where(f[:, None, None], mask.flip(-2), mask)
    return image, mask


def random_flip(key: torch.Tensor, image: torch.Tensor, mask: torch.Tensor, p: float = 0.5, *,
                horizontal: bool = True, vertical: bool = False) -> Pair:
    """Flip left-right with probability `p` (if `horizontal`) and, independently, top-bottom with
    probability `p` (if `vertical`)."""
    image, mask, batched = _as_batch(image, mask)
    keys = _example_keys(key.to(image.device), image.shape[0], batched)
    return _unbatch(*_random_flip(keys, image, mask, p, horizontal, vertical), batched)


def _random_crop(keys: torch.Tensor, image: torch.Tensor, mask: torch.Tensor, size: tuple[int, int]) -> Pair:
    b, _, h, w = image.shape
    ch, cw = size
    if ch > h or cw > w:
        raise ShapeError(f"random_crop: crop size {ch}x{cw} is larger than the image {h}x{w}; "
                         "resize or pad (pad_collate) first")
    corner = _draw(keys, lambda k: random.randint(k, (2,), 0, 2**62))  # [B, 2]; mod bias < span / 2**62
    top, left = corner[:, 0] % (h - ch + 1), corner[:, 1] % (w - cw + 1)
    rows = top[:, None] + torch.arange(ch, device=image.device)  # [B, ch]
    cols = left[:, None] + torch.arange(cw, device=image.device)  # [B, cw]
    bi = torch.arange(b, device=image.device)[:, None, None]
    crop = image[bi, :, rows[:, :, None], cols[:, None, :]]  # advanced dims first: [B, ch, cw, C]
    crop = rearrange(crop, "b h w c -> b c h w")
    return crop, mask[bi, rows[:, :, None], cols[:, None, :]]


def random_crop(key: torch.Tensor, image: torch.Tensor, mask: torch.Tensor, size: int | Sequence[int]) -> Pair:
    """A crop of `size` (int or (h, w)) at a uniform position; a ShapeError if larger than the image."""
    image, mask, batched = _as_batch(image, mask)
    keys = _example_keys(key.to(image.device), image.shape[0], batched)
    return _unbatch(*_random_crop(keys, image, mask, _size2(size)), batched)


def rot90(image: torch.Tensor, mask: torch.Tensor, k: int = 1) -> Pair:
    """Rotate by `k * 90` degrees counter-clockwise (as `torch.rot90` over the (H, W) axes)."""
    _as_batch(image, mask)
    return torch.rot90(image, k, dims=(-2, -1)), torch.rot90(mask, k, dims=(-2, -1))


def _random_rot90(keys: torch.Tensor, image: torch.Tensor, mask: torch.Tensor, batched: bool) -> Pair:
    k = _draw(keys, lambda key: random.randint(key, (), 0, 4))  # [B]
    if not batched:
        return rot90(image, mask, int(k[0]))
    h, w = image.shape[-2:]
    if h != w:
        raise ShapeError(f"random_rot90: a batch must be square to rotate each example by its own "
                         f"angle, got {h}x{w}; crop or resize to a square first")
    images = torch.stack([torch.rot90(image, j, dims=(-2, -1)) for j in range(4)])  # [4, B, C, H, W]
    masks = torch.stack([torch.rot90(mask, j, dims=(-2, -1)) for j in range(4)])  # [4, B, H, W]
    bi = torch.arange(image.shape[0], device=image.device)
    return images[k, bi], masks[k, bi]


def random_rot90(key: torch.Tensor, image: torch.Tensor, mask: torch.Tensor) -> Pair:
    """Rotate by a uniform multiple of 90 degrees; a batch must be square."""
    image, mask, batched = _as_batch(image, mask)
    keys = _example_keys(key.to(image.device), image.shape[0], batched)
    return _unbatch(*_random_rot90(keys, image, mask, batched), batched)


def _photometric(keys: torch.Tensor, image: torch.Tensor, brightness: float, contrast: float,
                 brightness_p: float = 1.0, contrast_p: float = 1.0) -> torch.Tensor:
    u = _draw(keys, lambda k: random.uniform(k, (2,), -1.0, 1.0)).to(image.dtype)  # [B, 2]
    if brightness_p < 1.0 or contrast_p < 1.0:  # a static choice: p = 1 keeps the draws of older runs
        on = _draw(keys, lambda k: random.uniform(random.fold_in(k, "p"), (2,))).to(image.device)  # [B, 2]
        u = u * (on < torch.tensor([brightness_p, contrast_p], device=on.device)).to(u.dtype)
    factor = (1.0 + contrast * u[:, 1])[:, None, None, None]
    delta = (brightness * u[:, 0])[:, None, None, None]
    mean = image.mean(dim=(1, 2, 3), keepdim=True)
    return ((image - mean) * factor + mean + delta).clamp(0.0, 1.0)


def augment(key: torch.Tensor, image: torch.Tensor, mask: torch.Tensor, cfg: AugmentConfig = AugmentConfig()) -> Pair:
    """Crop, flips, rot90, photometric jitter, then the spatial warp (`funcml.seg.deform`) and the
    intensity transforms (`funcml.seg.intensity`) as `cfg` says, each from its own named stream.

    On a batch, example i uses `split(key, B)[i]` for all its draws, so the result equals
    `augment` applied to each example with its key.
    """
    image, mask, batched = _as_batch(image, mask)
    keys = _example_keys(key.to(image.device), image.shape[0], batched)

    def stream(name: str) -> torch.Tensor:
        return _draw(keys, lambda k: random.fold_in(k, name))

    if cfg.crop is not None:
        image, mask = _random_crop(stream("crop"), image, mask, _size2(cfg.crop, "crop"))
    if cfg.hflip_p > 0:
        image, mask = _random_flip(stream("hflip"), image, mask, cfg.hflip_p, True, False)
    if cfg.vflip_p > 0:
        image, mask = _random_flip(stream("vflip"), image, mask, cfg.vflip_p, False, True)
    if cfg.rot90:
        image, mask = _random_rot90(stream("rot90"), image, mask, batched)
    if cfg.rotate_p > 0 or cfg.scale_p > 0 or cfg.elastic_p > 0:
        image, mask = random_warp(stream("warp"), image, mask, rotate_p=cfg.rotate_p, rotate_deg=cfg.rotate_deg,
                                  scale_p=cfg.scale_p, scale=cfg.scale, elastic_p=cfg.elastic_p,
                                  elastic_sigma=cfg.elastic_sigma, elastic_grid=cfg.elastic_grid)
    if cfg.noise_p > 0 or cfg.blur_p > 0 or cfg.gamma_p > 0:
        image = random_intensity(stream("intensity"), image, noise_p=cfg.noise_p, noise_std=cfg.noise_std,
                                 blur_p=cfg.blur_p, blur_sigma=cfg.blur_sigma, gamma_p=cfg.gamma_p, gamma=cfg.gamma)
    if cfg.brightness > 0 or cfg.contrast > 0:
        image = _photometric(stream("color"), image, cfg.brightness, cfg.contrast, cfg.brightness_p, cfg.contrast_p)
    return _unbatch(image, mask, batched)


def pad_collate(items: Sequence[Pair], *, ignore_index: int = 255, multiple_of: int = 1,
                pad_value: float = 0.0) -> Pair:
    """Stack examples of different sizes, padding at the bottom and right.

    items: (image `[C, H_i, W_i]` float, mask `[H_i, W_i]` int64) pairs.
    Returns images `[B, C, H, W]` (padded with `pad_value`) and masks `[B, H, W]` (padded with
    `ignore_index`, which losses and metrics skip), where H, W are the largest sizes rounded up
    to a multiple of `multiple_of` (e.g. a U-Net's total downsampling factor).
    """
    if len(items) == 0:
        raise ShapeError("pad_collate: got no examples")
    if multiple_of < 1:
        raise ConfigError(f"pad_collate: multiple_of must be >= 1, got {multiple_of}")
    c = None
    for i, pair in enumerate(items):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ShapeError(f"pad_collate: items[{i}] must be an (image, mask) pair")
        dims = check_shape(pair[0], "c h w", name=f"items[{i}] image", **({} if c is None else {"c": c}))
        check_shape(pair[1], "h w", name=f"items[{i}] mask", h=dims["h"], w=dims["w"])
        c = dims["c"]
    h = max(im.shape[-2] for im, _ in items)
    w = max(im.shape[-1] for im, _ in items)
    h, w = -(-h // multiple_of) * multiple_of, -(-w // multiple_of) * multiple_of
    images = [F.pad(im, (0, w - im.shape[-1], 0, h - im.shape[-2]), value=pad_value) for im, _ in items]
    masks = [F.pad(m, (0, w - m.shape[-1], 0, h - m.shape[-2]), value=ignore_index) for _, m in items]
    return torch.stack(images), torch.stack(masks)
