"""Synthetic segmentation data: random shapes, a pure function of a key.

    cfg = ShapesConfig(mode="multiclass", occlusion_prob=0.3)
    images, masks = shapes_batch(split_key(key, "train"), 32, cfg)   # [32, 3, 64, 64], [32, 64, 64]
    val = shapes_batch(split_key(key, "val"), 256, cfg)              # a fixed validation set

Every image is a background (a base colour, a linear gradient and a smooth value-noise
texture) with 0 to `max` objects painted on it in order, so that a later object occludes an
earlier one. Classes in "multiclass" mode: 0 = background, `i + 1` = `cfg.classes[i]`; in
"binary" mode: 0 = background, 1 = any shape (the same key gives the same picture in both
modes). Optionally a background-coloured patch hides part of one object, and its pixels are
background in the mask too. Then a Gaussian blur and Gaussian pixel noise, clamped to [0, 1].

Geometry. Pixel `(i, j)` is the unit square whose centre is `(y, x) = (i + 0.5, j + 0.5)`; a
pixel belongs to a shape iff its centre passes the shape's inside-test. A shape has a centre
`(cy, cx)`, semi-axes `(a, b)` and an angle `theta`; in its local frame
`u = cos(theta) dx + sin(theta) dy`, `v = -sin(theta) dx + cos(theta) dy` (`dx = x - cx`,
`dy = y - cy`) the tests are

    circle, ellipse:      (u / a)^2 + (v / b)^2 <= 1                    (circle: a = b)
    square, rectangle:    |u| <= a  and  |v| <= b                       (square: a = b)
    triangle:             E_k(u, v) <= 0 for the three edge functions of the triangle
                          (0, -b), (a sqrt(3)/2, b/2), (-a sqrt(3)/2, b/2)  (equilateral for a = b)

with `E_k(p) = (p - V_k) x (V_{k+1} - V_k)` (Pineda, "A parallel algorithm for polygon
rasterization", SIGGRAPH 1988). All three tests are evaluated on `(u / a, v / b)`, where the
triangle's edge tests read `|sqrt(3) u/a| <= v/b + 1` and `v/b <= 1/2`.

Same bits on every device: all randomness comes from `funcml.random` (threefry), the few
per-object sines and cosines are evaluated once in float64 on the CPU, and everything done per
pixel is additions, multiplications, divisions, comparisons and gathers, which IEEE 754 rounds
the same way on every device. Pixel noise is drawn by inverse-CDF lookup from 16 random bits
(`funcml.random.fast_normal`), so it needs no transcendental function per pixel.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange

from .. import config, random
from ..errors import ConfigError

__all__ = [
    "SHAPE_KINDS",
    "ShapesConfig",
    "Scene",
    "split_key",
    "sample_scene",
    "render_scene",
    "shapes_batch",
    "draw_shape",
    "gaussian_blur",
]

SHAPE_KINDS = ("circle", "ellipse", "square", "rectangle", "triangle")
_GEOMETRY = {"circle": 0, "ellipse": 0, "square": 1, "rectangle": 1, "triangle": 2}  # oval, box, triangle
_ELONGATED = ("ellipse", "rectangle")  # kinds with b = aspect * a; the others have b = a
_SPLITS = ("train", "val", "test")
_SQRT3 = math.sqrt(3.0)


@dataclasses.dataclass(frozen=True)
class ShapesConfig:
    """The synthetic shapes distribution (see funcml.seg.shapes); sizes are fractions of min(height, width)."""

    height: int = 64
    """Image height in pixels."""
    width: int = 64
    """Image width in pixels."""
    channels: int = 3
    """1 (grey) or 3 (RGB)."""
    classes: tuple[str, ...] = ("circle", "square", "triangle", "ellipse")
    """Shape kinds drawn, from SHAPE_KINDS; class id i + 1 is classes[i]."""
    mode: Literal["multiclass", "binary"] = "multiclass"
    """Either "multiclass" (len(classes) + 1 classes) or "binary" (shape vs background)."""
    objects: tuple[int, int] = (1, 4)
    """(min, max) objects per image, inclusive, uniform."""
    size: tuple[float, float] = (0.08, 0.2)
    """(min, max) half-extent of an object (circle radius, half side, triangle circumradius), uniform."""
    aspect: tuple[float, float] = (0.45, 0.75)
    """(min, max) of b / a for ellipses and rectangles, uniform."""
    class_weights: tuple[float, ...] | None = None
    """Relative frequency of each kind (class imbalance); None = uniform."""
    rotate: bool = True
    """Draw a uniform angle per object; False = axis-aligned."""
    overlap_prob: float = 0.3
    """Probability that an object is centred on the edge of the previous one (partial occlusion)."""
    occlusion_prob: float = 0.2
    """Probability per image of a background-coloured square hiding about a quarter of one object."""
    min_contrast: float = 0.3
    """Floor on the largest per-channel difference between object and background colour, in [0, 0.5]."""
    gradient: float = 0.2
    """Largest amplitude of the background's linear gradient."""
    texture: float = 0.1
    """Amplitude of the background's value-noise texture."""
    texture_cells: int = 4
    """Cells per side of the texture's coarse grid."""
    noise_std: float = 0.03
    """Standard deviation of the additive Gaussian pixel noise."""
    blur_sigma: float = 0.5
    """Standard deviation (pixels) of the Gaussian blur; 0 = none."""

    def __post_init__(self) -> None:
        config.require_positive_int(self, "height", "width")
        config.require_one_of(self, "channels", (1, 3))
        config.require(len(self.classes) >= 1, self, "classes must name at least one shape kind")
        bad = [c for c in self.classes if c not in SHAPE_KINDS]
        config.require(not bad, self, f"unknown shape kind(s) {bad} in classes; choose from {list(SHAPE_KINDS)}")
        config.require(len(set(self.classes)) == len(self.classes), self,
                       f"classes has duplicates: {list(self.classes)}")
        config.require_one_of(self, "mode", ("multiclass", "binary"))
        config.require_pair(self, "objects", low=0, high=255)
        config.require(self.objects[1] >= 1, self, f"objects must be (min, max) with max >= 1, got {self.objects}")
        config.require_pair(self, "size", "aspect", low=0.0, low_open=True)
        if self.class_weights is not None:
            config.require(len(self.class_weights) == len(self.classes), self,
                           f"class_weights has {len(self.class_weights)} entries for {len(self.classes)} classes "
                           f"{list(self.classes)}")
            config.require(all(w >= 0 for w in self.class_weights) and sum(self.class_weights) > 0, self,
                           f"class_weights must be >= 0 with a positive sum, got {self.class_weights}")
        config.require_in_range(self, 0, 1, "overlap_prob", "occlusion_prob")
        config.require_in_range(self, 0, 0.5, "min_contrast")
        config.require_at_least(self, 0, "gradient", "texture", "noise_std", "blur_sigma")
        config.require_positive_int(self, "texture_cells")

    @property
    def num_classes(self) -> int:
        """Classes in the masks, background included."""
        return 2 if self.mode == "binary" else len(self.classes) + 1

    @property
    def class_names(self) -> tuple[str, ...]:
        return ("background", "shape") if self.mode == "binary" else ("background", *self.classes)

    @property
    def max_objects(self) -> int:
        return self.objects[1]


class Scene(NamedTuple):
    """What `render_scene` paints: N images with up to M objects each (CPU or any device).

    kind: [N, M] int64, index into `cfg.classes` (multiclass class id = kind + 1).
    active: [N, M] bool, whether object m exists.
    center: [N, M, 2] float32, (cy, cx) in pixels.
    size: [N, M, 2] float32, semi-axes (a, b) in pixels.
    angle: [N, M] float32, radians.
    color: [N, M, C] float32 in [0, 1].
    background: [N, C] float32 in [0, 1], the base background colour.
    gradient: [N, 2] float32, (gy, gx): the background changes by gy from top to bottom and
        by gx from left to right.
    texture: [N, C, G + 1, G + 1] float32, value-noise samples at the coarse grid's corners,
        interpolated bilinearly over the image.
    patch_active: [N] bool; patch_center: [N, 2]; patch_size: [N, 2] float32, (half height,
        half width) of the occluding background patch.
    """

    kind: torch.Tensor
    active: torch.Tensor
    center: torch.Tensor
    size: torch.Tensor
    angle: torch.Tensor
    color: torch.Tensor
    background: torch.Tensor
    gradient: torch.Tensor
    texture: torch.Tensor
    patch_active: torch.Tensor
    patch_center: torch.Tensor
    patch_size: torch.Tensor


def split_key(root_key: torch.Tensor, split: str) -> torch.Tensor:
    """The key of a named data split: `fold_in(root_key, split)`, split in {"train", "val", "test"}."""
    if split not in _SPLITS:
        raise ConfigError(f"split must be one of {list(_SPLITS)}, got {split!r}")
    return random.fold_in(root_key, split)


# Columns of the per-object uniform block [N, M, _OBJ_COLS] (the colour takes the last C).
_U_KIND, _U_SIZE, _U_ASPECT, _U_ANGLE, _U_CY, _U_CX, _U_OVERLAP, _U_DIR = range(8)
_OBJ_COLS = 8
# Columns of the per-image uniform block [N, _IMG_COLS + C] (the background colour takes the last C).
_U_COUNT, _U_GRAD_AMP, _U_GRAD_DIR, _U_PATCH, _U_PATCH_OBJ, _U_PATCH_SY, _U_PATCH_SX = range(7)
_IMG_COLS = 7


def _cos_sin(angle: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin in float64 on the CPU, rounded once to float32: the same bits on every device."""
    a = angle.detach().to("cpu", torch.float64)
    return torch.cos(a).to(torch.float32), torch.sin(a).to(torch.float32)


def sample_scene(key: torch.Tensor, n: int, cfg: ShapesConfig = ShapesConfig()) -> Scene:
    """Draw the parameters of `n` images (on the CPU; small). A pure function of `key`."""
    if n < 0:
        raise ConfigError(f"n must be >= 0, got {n}")
    key = key.to("cpu")
    k_obj, k_img, k_tex = random.split(key, 3)
    m, c = cfg.max_objects, cfg.channels
    h, w = float(cfg.height), float(cfg.width)
    u = random.uniform(k_obj, (n, m, _OBJ_COLS + c))
    ui = random.uniform(k_img, (n, _IMG_COLS + c))

    lo, hi = cfg.objects
    count = (ui[:, _U_COUNT] * (hi - lo + 1)).floor().to(torch.int64).clamp_max(hi - lo) + lo
    active = torch.arange(m) < count[:, None]

    weights = torch.tensor(cfg.class_weights or (1.0,) * len(cfg.classes), dtype=torch.float64)
    cdf = torch.cumsum(weights / weights.sum(), 0).to(torch.float32)
    cdf = torch.cat([cdf[:-1], torch.ones(1)])  # exactly 1 at the end, so every u < 1 finds a class
    kind = torch.searchsorted(cdf, u[..., _U_KIND].contiguous(), right=True)

    short = min(h, w)
    a = short * (cfg.size[0] + (cfg.size[1] - cfg.size[0]) * u[..., _U_SIZE])
    aspect = cfg.aspect[0] + (cfg.aspect[1] - cfg.aspect[0]) * u[..., _U_ASPECT]
    elongated = torch.tensor([k in _ELONGATED for k in cfg.classes])[kind]
    b = torch.where(elongated, a * aspect, a)
    angle = (2 * math.pi) * u[..., _U_ANGLE] if cfg.rotate else torch.zeros(n, m)

    # Centres keep the shape inside the image where it fits.
    cy = a + (h - 2 * a).clamp_min(0) * u[..., _U_CY]
    cx = a + (w - 2 * a).clamp_min(0) * u[..., _U_CX]
    cy = torch.where(h - 2 * a > 0, cy, torch.full_like(cy, h / 2))
    cx = torch.where(w - 2 * a > 0, cx, torch.full_like(cx, w / 2))
    # Overlap: object i sits on the edge of object i - 1 (a loop over the few object slots).
    ocos, osin = _cos_sin((2 * math.pi) * u[..., _U_DIR])
    overlap = u[..., _U_OVERLAP] < cfg.overlap_prob
    ys, xs = [cy[:, 0]], [cx[:, 0]]
    for i in range(1, m):
        oy = (ys[-1] + a[:, i - 1] * osin[:, i]).clamp(0, h)
        ox = (xs[-1] + a[:, i - 1] * ocos[:, i]).clamp(0, w)
        ys.append(torch.where(overlap[:, i], oy, cy[:, i]))
        xs.append(torch.where(overlap[:, i], ox, cx[:, i]))
    center = torch.stack([torch.stack(ys, 1), torch.stack(xs, 1)], dim=-1)

    background = ui[:, _IMG_COLS:]
    color = _contrast_floor(u[..., _OBJ_COLS:], background, cfg.min_contrast)

    gcos, gsin = _cos_sin((2 * math.pi) * ui[:, _U_GRAD_DIR])
    gamp = cfg.gradient * ui[:, _U_GRAD_AMP]
    gradient = torch.stack([gamp * gsin, gamp * gcos], dim=-1)
    g = cfg.texture_cells
    texture = cfg.texture * (random.uniform(k_tex, (n, c, g + 1, g + 1)) - 0.5)

    # The patch covers the quadrant of one object (chosen uniformly among the drawn ones)
    # from its centre outwards, towards a random diagonal: about a quarter of the object.
    patch_active = (ui[:, _U_PATCH] < cfg.occlusion_prob) & (count > 0)
    which = (ui[:, _U_PATCH_OBJ] * count).floor().to(torch.int64).clamp(0, m - 1)
    obj_center = center[torch.arange(n), which]
    half = 0.8 * a[torch.arange(n), which]
    sy = torch.where(ui[:, _U_PATCH_SY] < 0.5, -1.0, 1.0)
    sx = torch.where(ui[:, _U_PATCH_SX] < 0.5, -1.0, 1.0)
    patch_center = obj_center + torch.stack([sy, sx], -1) * half[:, None]
    patch_size = torch.stack([half, half], -1)

    return Scene(kind=kind, active=active, center=center, size=torch.stack([a, b], -1), angle=angle,
                 color=color, background=background, gradient=gradient, texture=texture,
                 patch_active=patch_active, patch_center=patch_center, patch_size=patch_size)


def _contrast_floor(color: torch.Tensor, background: torch.Tensor, floor: float) -> torch.Tensor:
    """Push the channel farthest from the background to at least `floor` away from it.

    color: [N, M, C], background: [N, C]. A colour whose largest |color - background| over
    channels is below `floor` gets that channel set to `bg + floor` (or `bg - floor` where that
    would leave [0, 1]; one of the two always fits since floor <= 0.5).
    """
    bg = background[:, None, :]
    diff = (color - bg).abs()
    far = F.one_hot(diff.argmax(-1), color.shape[-1]).bool()
    weak = diff.amax(-1, keepdim=True) < floor
    pushed = torch.where(bg + floor <= 1.0, bg + floor, bg - floor)
    return torch.where(far & weak, pushed, color)


def _inside(geometry: torch.Tensor, center: torch.Tensor, size: torch.Tensor, cos: torch.Tensor,
            sin: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Inside-tests of objects against the pixel centres.

    geometry: [...] int64 (0 oval, 1 box, 2 triangle); center, size: [..., 2]; cos, sin: [...].
    Returns [..., H, W] bool.
    """
    dev = center.device
    ys = (torch.arange(h, device=dev, dtype=torch.float32) + 0.5)[:, None]  # [H, 1]
    xs = (torch.arange(w, device=dev, dtype=torch.float32) + 0.5)[None, :]  # [1, W]
    e = (...,) + (None, None)
    cy, cx, a, b, c, s = center[..., 0][e], center[..., 1][e], size[..., 0][e], size[..., 1][e], cos[e], sin[e]
    dy, dx = ys - cy, xs - cx  # [..., H, 1], [..., 1, W]
    ua = (c * dx + s * dy) / a  # [..., H, W], the local frame scaled to the unit shape
    vb = (c * dy - s * dx) / b
    oval = ua * ua + vb * vb <= 1.0
    box = (ua.abs() <= 1.0) & (vb.abs() <= 1.0)
    # The edge functions of the unit triangle (0, -1), (r, 1/2), (-r, 1/2), r = sqrt(3)/2,
    # divided by their positive factors: E_01 <= 0 <=> sqrt(3) u <= v + 1, E_20 <= 0 <=>
    # -sqrt(3) u <= v + 1, E_12 <= 0 <=> v <= 1/2.
    tri = ((_SQRT3 * ua).abs() <= vb + 1.0) & (vb <= 0.5)
    g = geometry[e]
    return (oval & (g == 0)) | (box & (g == 1)) | (tri & (g == 2))


def draw_shape(kind: str, center: Sequence[float], size: float | Sequence[float], angle: float, h: int, w: int,
               *, device: torch.device | str | None = None) -> torch.Tensor:
    """The pixels of one shape: bool `[H, W]`, the same test `shapes_batch` paints with.

    kind: one of `SHAPE_KINDS`; center: (cy, cx) in pixels; size: the half-extent `a` or the
    semi-axes `(a, b)` (circle, square and triangle use `b = a` when given one number);
    angle: radians. See the module docstring for the inside-tests.
    """
    if kind not in _GEOMETRY:
        raise ConfigError(f"kind must be one of {list(SHAPE_KINDS)}, got {kind!r}")
    ab = (float(size), float(size)) if isinstance(size, (int, float)) else tuple(float(s) for s in size)
    if len(ab) != 2 or min(ab) <= 0:
        raise ConfigError(f"size must be a positive number or (a, b), got {size!r}")
    cos, sin = _cos_sin(torch.tensor(float(angle)))
    return _inside(torch.tensor(_GEOMETRY[kind], device=device),
                   torch.tensor([float(center[0]), float(center[1])], device=device),
                   torch.tensor(ab, device=device), cos.to(device), sin.to(device), h, w)


def _lerp_axis(t: torch.Tensor, n: int, cells: int, dim: int) -> torch.Tensor:
    """Linear interpolation of `t`'s `cells + 1` corner values along `dim` onto `n` pixel centres."""
    pos = (torch.arange(n, device=t.device, dtype=torch.float32) + 0.5) * (cells / n)
    i0 = pos.floor().to(torch.int64).clamp_max(cells - 1)
    frac = pos - i0.to(torch.float32)
    shape = [1] * t.dim()
    shape[dim] = n
    frac = frac.reshape(shape)
    return t.index_select(dim, i0) * (1.0 - frac) + t.index_select(dim, i0 + 1) * frac


def _background(scene: Scene, h: int, w: int, cells: int) -> torch.Tensor:
    """The background [N, C, H, W]: base colour + linear gradient + value-noise texture, in [0, 1]."""
    dev = scene.background.device
    ys = ((torch.arange(h, device=dev, dtype=torch.float32) + 0.5) / h - 0.5)[:, None]  # [H, 1]
    xs = ((torch.arange(w, device=dev, dtype=torch.float32) + 0.5) / w - 0.5)[None, :]  # [1, W]
    gy, gx = scene.gradient[:, 0, None, None], scene.gradient[:, 1, None, None]
    ramp = gy * ys + gx * xs  # [N, H, W]
    tex = _lerp_axis(_lerp_axis(scene.texture, w, cells, 3), h, cells, 2)  # [N, C, G+1, W] -> [N, C, H, W]
    bg = scene.background[:, :, None, None] + ramp[:, None] + tex
    return bg.clamp(0.0, 1.0)


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """A separable Gaussian blur of `image: [..., H, W]` with edge replication.

    G(x) = exp(-x^2 / (2 sigma^2)) / Z on the taps |x| <= ceil(3 sigma), normalised to sum 1,
    applied along H then W as a fixed-order sum of shifted copies (no convolution kernel
    whose summation order could depend on the device). sigma <= 0 returns `image`.
    """
    if sigma <= 0:
        return image
    r = max(1, math.ceil(3.0 * sigma))
    taps = torch.exp(-(torch.arange(-r, r + 1, dtype=torch.float64) ** 2) / (2.0 * sigma * sigma))
    taps = (taps / taps.sum()).to(torch.float32).tolist()
    lead = image.shape[:-2]
    x = image.reshape(-1, 1, *image.shape[-2:])  # [L, 1, H, W]
    h, w = x.shape[-2:]
    xp = F.pad(x, (0, 0, r, r), mode="replicate")
    x = sum(t * xp[:, :, i:i + h, :] for i, t in enumerate(taps))
    xp = F.pad(x, (r, r, 0, 0), mode="replicate")
    x = sum(t * xp[:, :, :, i:i + w] for i, t in enumerate(taps))
    return x.reshape(*lead, h, w)


def render_scene(scene: Scene, cfg: ShapesConfig = ShapesConfig(), *, key: torch.Tensor | None = None,
                 device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Paint a scene: images `[N, C, H, W]` float32 in [0, 1] and masks `[N, H, W]` int64.

    Objects are painted in slot order (a later one covers an earlier one), then the occluding
    patch (background colour, mask 0), then the blur and the noise (`key` is needed only when
    `cfg.noise_std > 0`). Vectorized over images, objects and pixels.
    """
    device = torch.device(device) if device is not None else scene.background.device
    cos, sin = (t.to(device) for t in _cos_sin(scene.angle))  # where the scene was drawn (the host)
    scene = Scene(*(t.to(device) for t in scene))
    n, m = scene.kind.shape
    h, w, c = cfg.height, cfg.width, cfg.channels
    if m > 255:
        raise ConfigError(f"render_scene paints at most 255 objects per image, the scene has {m} slots")
    if scene.color.shape[-1] != c:
        raise ConfigError(f"scene has {scene.color.shape[-1]} colour channels, cfg.channels is {c}")

    geometry = torch.tensor([_GEOMETRY[k] for k in cfg.classes], device=device)[scene.kind]
    inside = _inside(geometry, scene.center, scene.size, cos, sin, h, w)  # [N, M, H, W]
    # The topmost object at each pixel: the largest (slot + 1) of the active objects covering it.
    rank = ((torch.arange(m, device=device) + 1) * scene.active).to(torch.uint8)[:, :, None, None]
    level = (inside.to(torch.uint8) * rank).amax(dim=1) if m > 0 else torch.zeros(n, h, w, dtype=torch.uint8,
                                                                                  device=device)
    fg = level > 0  # [N, H, W]
    top = (level.to(torch.int64) - 1).clamp_min(0)

    label = torch.gather(scene.kind + 1, 1, rearrange(top, "n h w -> n (h w)"))
    mask = torch.where(fg, rearrange(label, "n (h w) -> n h w", h=h), 0)
    color = torch.gather(rearrange(scene.color, "n m c -> n c m"), 2,
                         rearrange(top, "n h w -> n 1 (h w)").expand(n, c, h * w))
    color = rearrange(color, "n c (h w) -> n c h w", h=h)
    bg = _background(scene, h, w, cfg.texture_cells)
    image = torch.where(fg[:, None], color, bg)

    patch = _inside(torch.ones(n, dtype=torch.int64, device=device), scene.patch_center, scene.patch_size,
                    torch.ones(n, device=device), torch.zeros(n, device=device), h, w)
    patch = patch & scene.patch_active[:, None, None]
    image = torch.where(patch[:, None], bg, image)
    mask = torch.where(patch, 0, mask)

    image = gaussian_blur(image, cfg.blur_sigma)
    if cfg.noise_std > 0:
        if key is None:
            raise ConfigError("render_scene: cfg.noise_std > 0 needs a key for the pixel noise")
        image = image + cfg.noise_std * random.fast_normal(key.to(device), (n, c, h, w))
    image = image.clamp(0.0, 1.0)
    if cfg.mode == "binary":
        mask = (mask > 0).to(torch.int64)
    return image, mask


def shapes_batch(key: torch.Tensor, n: int, cfg: ShapesConfig = ShapesConfig(), *,
                 device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` random images and their masks, a pure function of `key`.

    Returns:
        images: `[N, C, H, W]` float32 in [0, 1] (not normalized).
        masks: `[N, H, W]` int64 class ids in [0, cfg.num_classes).

    The same key gives the same bits on any device; torch's global RNG is not touched.
    """
    scene = sample_scene(random.fold_in(key, "scene"), n, cfg)
    return render_scene(scene, cfg, key=random.fold_in(key, "noise"), device=device)
