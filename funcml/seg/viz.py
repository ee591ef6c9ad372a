"""Pictures of segmentations: coloured masks, overlays with a legend, image / truth / prediction grids.

    rgb = colorize(mask)                                          # [H, W] ids -> [H, W, 3] uint8
    im = overlay(image, mask, class_names=names)                  # PIL image, legend strip underneath
    save_overlay_grid(images, masks, preds, names, "eval/grid.png")

Colours come from a palette, `palette[k]` for class `k` (`funcml.seg.folder.DEFAULT_PALETTE` by
default, the same colours as the palette PNGs of `save_mask_png`); ids past the palette's end
reuse it from the start. Pixels equal to `ignore_index` are white in a coloured mask and left
uncoloured in an overlay. An overlay blends each coloured pixel as

    out = (1 - alpha) * image + alpha * colour

and leaves the background class (`background=0`) uncoloured, so the picture shows through.
Small images are upscaled with NEAREST (whole pixels, no blur) so that 16x16 or 64x64 inputs stay
readable. Text uses Pillow's built-in font (`ImageFont.load_default(size=...)`, no font files).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ..checks import check_dtype, check_range, check_shape
from ..errors import ConfigError, DataError, ShapeError
from .folder import DEFAULT_PALETTE

__all__ = ["colorize", "overlay", "legend", "overlay_grid", "save_overlay_grid", "save_image_atomic",
           "save_confusion_matrix", "save_per_class_scores", "IGNORE_COLOR"]

IGNORE_COLOR = (255, 255, 255)
_FONT_SIZE = 14
_MIN_FONT_SIZE = 8
_SWATCH = 12
_TEXT = (20, 20, 20)
_PAPER = (255, 255, 255)
_OVERLAY_MIN_SIDE = 256  # overlays of smaller images are upscaled (integer factor) to at least this


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # Pillow < 10.1 or no FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _text_size(font, text: str) -> tuple[int, int]:
    left, top, right, bottom = font.getbbox(text)
    return right - left, bottom - top


def _palette_array(palette: Sequence[Sequence[int]] | None, n: int) -> np.ndarray:
    """`[n, 3]` uint8: the colours of ids 0 .. n-1 (the palette repeats past its end)."""
    colors = list(DEFAULT_PALETTE if palette is None else palette)
    if not colors:
        raise ConfigError("palette: expected at least one (r, g, b) colour, got an empty palette")
    arr = np.asarray(colors, dtype=np.int64)
    if arr.ndim != 2 or arr.shape[1] != 3 or arr.min() < 0 or arr.max() > 255:
        raise ConfigError(f"palette: expected (r, g, b) triples of ints in [0, 255], got {colors[:4]}...")
    return arr[np.arange(n) % len(arr)].astype(np.uint8)


def _mask_array(mask: torch.Tensor, name: str) -> np.ndarray:
    check_shape(mask, "h w", name=name)
    check_dtype(mask, "int", name=name)
    values = mask.detach().to("cpu", torch.int64).numpy()
    if values.size and values.min() < 0:
        raise DataError(f"{name}: class ids must be >= 0, got {int(values.min())}")
    return values


def _image_array(image: torch.Tensor, name: str) -> np.ndarray:
    """`image: [C, H, W]` float in [0, 1], C in {1, 3} -> uint8 `[H, W, 3]`."""
    dims = check_shape(image, "c h w", name=name)
    if dims["c"] not in (1, 3):
        raise ShapeError(f"{name}: expected 1 or 3 channels, got shape {list(image.shape)}")
    check_dtype(image, "float", name=name)
    check_range(image, 0.0, 1.0, name=name)
    rgb = image.detach().to("cpu", torch.float32).expand(3, -1, -1)
    return (rgb * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()


def colorize(mask: torch.Tensor, palette: Sequence[Sequence[int]] | None = None, *,
             ignore_index: int | None = 255) -> torch.Tensor:
    """Colour a mask: `mask: [H, W]` int class ids -> `[H, W, 3]` uint8 RGB.

    Pixel `(i, j)` gets `palette[mask[i, j] % len(palette)]`; pixels equal to `ignore_index` get
    `IGNORE_COLOR` (white).
    """
    values = _mask_array(mask, "mask")
    lut = _palette_array(palette, int(values.max()) + 1 if values.size else 1)
    rgb = lut[values]
    if ignore_index is not None:
        rgb[values == ignore_index] = IGNORE_COLOR
    return torch.from_numpy(rgb)


def legend(class_names: Sequence[str], palette: Sequence[Sequence[int]] | None = None, *, width: int = 0,
           font_size: int = _FONT_SIZE) -> Image.Image:
    """A legend strip: one colour swatch and name per class, left to right, wrapped into rows.

    Entries flow into rows no wider than `width` pixels (an entry wider than `width` gets a row
    of its own, so the strip can be wider than `width`). Returns an RGB image on white.
    """
    if not class_names:
        raise ConfigError("legend: class_names is empty; pass one name per class")
    font = _font(font_size)
    colors = _palette_array(palette, len(class_names))
    gap, pad = max(6, font_size // 2), 4
    line_h = max(_SWATCH, font_size) + 4
    entries = [(k, f"{k} {name}", _SWATCH + 4 + _text_size(font, f"{k} {name}")[0]) for k, name in
               enumerate(class_names)]
    rows: list[list[tuple[int, str, int]]] = [[]]
    x = pad
    for entry in entries:
        if rows[-1] and x + entry[2] + pad > width:
            rows.append([])
            x = pad
        rows[-1].append(entry)
        x += entry[2] + gap
    strip_w = max(width, max(pad + sum(e[2] for e in r) + gap * (len(r) - 1) + pad for r in rows))
    strip = Image.new("RGB", (strip_w, pad + line_h * len(rows) + pad), _PAPER)
    draw = ImageDraw.Draw(strip)
    for r, row in enumerate(rows):
        x, y = pad, pad + r * line_h
        for k, text, w in row:
            sy = y + (line_h - _SWATCH) // 2
            draw.rectangle([x, sy, x + _SWATCH - 1, sy + _SWATCH - 1], fill=tuple(int(c) for c in colors[k]),
                           outline=(90, 90, 90))
            draw.text((x + _SWATCH + 4, y + line_h // 2), text, fill=_TEXT, font=font, anchor="lm")
            x += w + gap
    return strip


def _stack_below(top: Image.Image, bottom: Image.Image) -> Image.Image:
    out = Image.new("RGB", (max(top.width, bottom.width), top.height + bottom.height), _PAPER)
    out.paste(top, (0, 0))
    out.paste(bottom, (0, top.height))
    return out


def overlay(image: torch.Tensor, mask: torch.Tensor, *, alpha: float = 0.45,
            palette: Sequence[Sequence[int]] | None = None, class_names: Sequence[str] | None = None,
            ignore_index: int | None = 255, background: int | None = 0, scale: int | None = None) -> Image.Image:
    """The image with a semi-transparent coloured mask, and a legend strip under it.

    Arguments:
        image: `[C, H, W]` float in [0, 1], C = 1 or 3.
        mask: `[H, W]` int class ids.
        alpha: opacity of the colours, in [0, 1]: `out = (1 - alpha) image + alpha colour`.
        palette: colours per class id (default `DEFAULT_PALETTE`).
        class_names: names for the legend; None draws no legend.
        ignore_index: pixels with this value are left uncoloured.
        background: the class left uncoloured (the picture shows through); None colours all.
        scale: integer NEAREST upscaling; None picks the smallest factor that makes the longer
            side at least 256 pixels (1 for larger images).

    Returns an RGB `PIL.Image`: the overlay, `(W scale, H scale)` pixels, with the legend strip
    under it (the strip widens the picture when one legend entry is wider than the image).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha must be in [0, 1], got {alpha}")
    rgb = _image_array(image, "image")
    values = _mask_array(mask, "mask")
    if values.shape != rgb.shape[:2]:
        raise ShapeError(f"mask: expected the image's size {list(rgb.shape[:2])}, got {list(values.shape)}")
    colors = colorize(mask, palette, ignore_index=None).numpy().astype(np.float32)
    painted = values >= 0
    if ignore_index is not None:
        painted &= values != ignore_index
    if background is not None:
        painted &= values != background
    blend = (1.0 - alpha) * rgb.astype(np.float32) + alpha * colors
    out = np.where(painted[..., None], np.round(blend), rgb).astype(np.uint8)
    h, w = values.shape
    if scale is None:
        scale = max(1, math.ceil(_OVERLAY_MIN_SIDE / max(h, w)))
    if not isinstance(scale, int) or scale < 1:
        raise ConfigError(f"scale must be an int >= 1, got {scale!r}")
    picture = Image.fromarray(out, "RGB").resize((w * scale, h * scale), Image.Resampling.NEAREST)
    if class_names is None:
        return picture
    return _stack_below(picture, legend(class_names, palette, width=picture.width))


def _fitting_font(text: str, width: int):
    for size in range(_FONT_SIZE, _MIN_FONT_SIZE - 1, -1):
        font = _font(size)
        if _text_size(font, text)[0] <= width:
            return font
    return _font(_MIN_FONT_SIZE)


def overlay_grid(images: torch.Tensor, gts: torch.Tensor | None, preds: torch.Tensor, class_names: Sequence[str], *,
                 max_rows: int = 8, scale: int = 4, pad: int = 4, palette: Sequence[Sequence[int]] | None = None,
                 ignore_index: int | None = 255, max_cell: int = 256) -> Image.Image:
    """A grid, one row per image: image | ground truth | prediction (image | prediction without `gts`).

    Arguments:
        images: `[N, C, H, W]` float in [0, 1]; gts: `[N, H, W]` int or None; preds: `[N, H, W]` int.
        class_names: one name per class, for the legend under the grid.
        max_rows: at most this many rows (the first images).
        scale: integer NEAREST upscaling of every cell.
        pad: white pixels between and around cells.
        max_cell: the longer side of a cell is at most this many pixels: larger (or upscaled) images
            are shrunk to it (image bilinear, masks NEAREST), so a grid of 512x512 slices stays
            about `k * max_cell` wide.

    Layout, with `n = min(N, max_rows)` rows and `k` = 3 (or 2) columns of cells of size
    `(W s, H s)`: width `k W s + (k + 1) pad` (or the legend's width if wider), height
    `title + n (H s + pad) + pad + legend`; columns are titled.
    """
    dims = check_shape(images, "n c h w", name="images")
    check_shape(preds, "n h w", name="preds", n=dims["n"], h=dims["h"], w=dims["w"])
    if gts is not None:
        check_shape(gts, "n h w", name="gts", n=dims["n"], h=dims["h"], w=dims["w"])
    if not isinstance(max_rows, int) or max_rows < 1:
        raise ConfigError(f"max_rows must be an int >= 1, got {max_rows!r}")
    if not isinstance(scale, int) or scale < 1:
        raise ConfigError(f"scale must be an int >= 1, got {scale!r}")
    if dims["n"] == 0:
        raise DataError("overlay_grid: no images to draw")
    if not isinstance(max_cell, int) or max_cell < 8:
        raise ConfigError(f"max_cell must be an int >= 8, got {max_cell!r}")
    n, h, w = min(dims["n"], max_rows), dims["h"] * scale, dims["w"] * scale
    if max(h, w) > max_cell:
        shrink = max_cell / max(h, w)
        h, w = max(1, round(h * shrink)), max(1, round(w * shrink))
    titles = ["image", "ground truth", "prediction"] if gts is not None else ["image", "prediction"]
    k = len(titles)
    fonts = [_fitting_font(t, w) for t in titles]
    title_h = max(_text_size(f, t)[1] for f, t in zip(fonts, titles)) + 2 * pad + 4
    grid_w = k * w + (k + 1) * pad
    strip = legend(class_names, palette, width=grid_w)
    canvas = Image.new("RGB", (max(grid_w, strip.width), title_h + n * (h + pad) + pad + strip.height), _PAPER)
    draw = ImageDraw.Draw(canvas)
    for c, (title, font) in enumerate(zip(titles, fonts)):
        draw.text((pad + c * (w + pad) + w // 2, title_h // 2), title, fill=_TEXT, font=font, anchor="mm")
    for r in range(n):
        picture = Image.fromarray(_image_array(images[r], f"images[{r}]"), "RGB")
        smooth = picture.width > w  # shrinking: bilinear for the picture, masks stay NEAREST
        cells = [picture.resize((w, h), Image.Resampling.BILINEAR) if smooth else picture]
        if gts is not None:
            cells.append(Image.fromarray(colorize(gts[r], palette, ignore_index=ignore_index).numpy(), "RGB"))
        cells.append(Image.fromarray(colorize(preds[r], palette, ignore_index=ignore_index).numpy(), "RGB"))
        y = title_h + r * (h + pad)
        for c, cell in enumerate(cells):
            canvas.paste(cell.resize((w, h), Image.Resampling.NEAREST), (pad + c * (w + pad), y))
    canvas.paste(strip, (0, title_h + n * (h + pad) + pad))
    return canvas


def save_image_atomic(image: Image.Image, path: str | os.PathLike) -> Path:
    """Save a PIL image as PNG through a temporary sibling and a rename (never a half-written file)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        image.save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def save_overlay_grid(images: torch.Tensor, gts: torch.Tensor | None, preds: torch.Tensor,
                      class_names: Sequence[str], path: str | os.PathLike, *, max_rows: int = 8, scale: int = 4,
                      pad: int = 4, palette: Sequence[Sequence[int]] | None = None,
                      ignore_index: int | None = 255, max_cell: int = 256) -> Path:
    """Write `overlay_grid(...)` (same arguments) as a PNG at `path`, atomically; returns the path."""
    grid = overlay_grid(images, gts, preds, class_names, max_rows=max_rows, scale=scale, pad=pad, palette=palette,
                        ignore_index=ignore_index, max_cell=max_cell)
    return save_image_atomic(grid, path)


# ------------------------------------------------------------------ evaluation charts (matplotlib)


def _pyplot():
    import matplotlib  # imported here: `import funcml` stays free of matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_figure(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")
    try:
        fig.savefig(tmp, format="png", bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def save_confusion_matrix(cm: torch.Tensor, class_names: Sequence[str], path: str | os.PathLike, *,
                          title: str = "confusion matrix") -> Path:
    """Draw the confusion matrix `cm: [K, K]` int (`cm[t, p]` pixels of true class t predicted as p,
    `funcml.seg.metrics.confusion_matrix`) row-normalized as a PNG at `path`, atomically.

    Cell (t, p) is coloured and labelled with `cm[t, p] / sum_p' cm[t, p']`, the share of class t's
    pixels predicted as p (in %, with the pixel count underneath), so the diagonal is each class's
    recall; a class with no true pixels has an empty row marked "no pixels". The axes are labelled
    with the class names and the row sums (support).
    """
    if not isinstance(cm, torch.Tensor) or cm.dim() != 2 or cm.shape[0] != cm.shape[1]:
        raise ShapeError(f"cm: expected a square confusion matrix [K, K], got "
                         f"{list(cm.shape) if isinstance(cm, torch.Tensor) else type(cm).__name__}")
    k = cm.shape[0]
    if len(class_names) != k:
        raise ShapeError(f"class_names: expected {k} names (one per row of cm), got {len(class_names)}")
    counts = cm.detach().cpu().to(torch.int64).numpy()
    support = counts.sum(axis=1)
    share = np.divide(counts, support[:, None], out=np.zeros(counts.shape, dtype=np.float64),
                      where=support[:, None] > 0)
    plt = _pyplot()
    side = max(4.5, 1.0 + 0.95 * k)
    fig, ax = plt.subplots(figsize=(side + 1.2, side), dpi=100)
    im = ax.imshow(share * 100, cmap="Blues", vmin=0, vmax=100)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="% of the true class's pixels")
    small = 7 if k > 6 else 9
    for t in range(k):
        for p in range(k):
            if support[t] == 0:
                if p == 0:
                    ax.text((k - 1) / 2, t, "no pixels", ha="center", va="center", color="gray", fontsize=small)
                continue
            colour = "white" if share[t, p] > 0.6 else "black"
            ax.text(p, t, f"{100 * share[t, p]:.1f}%\n({counts[t, p]})", ha="center", va="center", color=colour,
                    fontsize=small)
    ax.set_xticks(range(k), [str(n) for n in class_names], rotation=30, ha="right")
    ax.set_yticks(range(k), [f"{n} ({s})" for n, s in zip(class_names, support)])
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class (pixels)")
    ax.set_title(f"{title}\nrow-normalized: % of each true class's pixels", fontsize=10)
    fig.tight_layout()
    try:
        return _save_figure(fig, path)
    finally:
        plt.close(fig)


def save_per_class_scores(iou: Sequence[float], dice: Sequence[float], class_names: Sequence[str],
                          path: str | os.PathLike, *, title: str = "per-class scores") -> Path:
    """Draw per-class IoU and Dice as grouped bars (with their values, and the mean over the classes
    that have one as dashed lines) as a PNG at `path`, atomically. A NaN score (a class absent from
    both targets and predictions) is drawn as "n/a" and left out of the means, as in
    `funcml.seg.metrics.metrics_from_confusion`."""
    k = len(class_names)
    if len(iou) != k or len(dice) != k:
        raise ShapeError(f"iou and dice need one value per class ({k}), got {len(iou)} and {len(dice)}")
    iou_a = np.asarray([float(v) for v in iou], dtype=np.float64)
    dice_a = np.asarray([float(v) for v in dice], dtype=np.float64)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6.0, 1.0 + 1.1 * k), 4.0), dpi=100)
    x = np.arange(k)
    width = 0.38
    for offset, values, label, colour in ((-width / 2, iou_a, "IoU", "tab:blue"),
                                          (width / 2, dice_a, "Dice", "tab:orange")):
        shown = np.nan_to_num(values, nan=0.0)
        bars = ax.bar(x + offset, shown, width, label=label, color=colour)
        for bar, v in zip(bars, values):
            ax.text(bar.get_x() + bar.get_width() / 2, (0.0 if math.isnan(v) else v) + 0.01,
                    "n/a" if math.isnan(v) else f"{v:.2f}", ha="center", va="bottom", fontsize=8)
        if not np.isnan(values).all():
            mean = float(np.nanmean(values))
            ax.axhline(mean, color=colour, linestyle="--", linewidth=1, label=f"mean {label} {mean:.3f}")
    ax.set_xticks(x, [str(n) for n in class_names], rotation=20 if k > 6 else 0)
    ax.set_ylim(0, 1.3)  # room for the legend above the bars
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_xlabel("class")
    ax.set_ylabel("score (dataset-level)")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper center", fontsize=8, ncol=4, frameon=False)
    fig.tight_layout()
    try:
        return _save_figure(fig, path)
    finally:
        plt.close(fig)
