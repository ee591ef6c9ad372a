"""A segmentation dataset from a folder of images and PNG masks.

    root/images/<stem>.png|jpg|jpeg       the images (any mode; converted to RGB or grey)
    root/masks/<stem>.png                 class ids: palette indices (mode "P") or grey values

    ds = FolderDataset("data/cells", num_classes=3, image_size=(128, 128))
    image, mask = ds[0]                    # [C, H, W] float32 in [0, 1], [H, W] int64

A mask pixel holds a class id in `[0, num_classes)`, or `ignore_index` (not scored). If the
files store other values (say 0 and 255 for a binary mask), `class_map={0: 0, 255: 1}` maps
raw values to class ids; with a map, every raw value must be a key of it or `ignore_index`.
Problems raise `funcml.errors.DataError` naming the file and what to do: missing folders, an
image without a mask, a corrupt file, sizes that differ, a class id out of range.
`write_example_folder` writes such a folder from synthetic shapes (for tests and demos).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .. import random
from ..errors import DataError
from .shapes import ShapesConfig, shapes_batch
from .transforms import resize

__all__ = ["FolderDataset", "list_images", "open_image", "read_image", "save_mask_png", "write_example_folder", "DEFAULT_PALETTE",
           "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# Class 0 black, then well-separated colours; ids past the list reuse it.
DEFAULT_PALETTE = ((0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
                   (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
                   (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0))
_IGNORE_COLOR = (255, 255, 255)


def open_image(path: Path) -> Image.Image:
    """Open and fully decode an image, or a DataError naming the file."""
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: cannot read the image ({type(e).__name__}: {e}); "
                        "replace or remove the corrupt file") from None


_BITS_16 = ("I;16", "I;16L", "I;16B", "I;16N")


def read_image(path: Path, channels: int) -> torch.Tensor:
    """An image file as `[C, H, W]` float32 in [0, 1], C = `channels` (1 grey, 3 RGB).

    8-bit files (grey, palette, RGB, RGBA, ...) are converted by Pillow and divided by 255.
    16-bit grey files (modes "I;16*" and "I", as microscopes and scanners write them) are
    divided by 65535: Pillow's own 8-bit conversion clips them, which turns a typical
    16-bit image white. Float files ("F") must already lie in [0, 1]. A 3-channel read of a
    grey file repeats the grey. Raises DataError naming the file for an unreadable file, an
    integer image above 65535 or a float image outside [0, 1].
    """
    if channels not in (1, 3):
        raise DataError(f"{path}: channels must be 1 (grey) or 3 (RGB), got {channels}")
    im = open_image(path)
    if im.mode in _BITS_16 or im.mode in ("I", "F"):
        values = np.asarray(im, dtype=np.float64)
        if im.mode == "F":
            lo, hi = float(values.min()), float(values.max())
            if lo < 0.0 or hi > 1.0 or not np.isfinite(values).all():
                raise DataError(f"{path}: a float image must hold values in [0, 1], this one spans [{lo:g}, {hi:g}]; "
                                "rescale it (or save it as 8- or 16-bit)")
        else:
            if values.min() < 0 or values.max() > 65535:
                raise DataError(f"{path}: a {im.mode} image with values in [{values.min():g}, {values.max():g}]; "
                                "only 8-bit and 16-bit (0..65535) integer images are read")
            values = values / 65535.0
        grey = torch.from_numpy(values.astype(np.float32))[None]
        return grey.expand(channels, -1, -1).contiguous()
    im = im.convert("RGB" if channels == 3 else "L")
    pixels = np.asarray(im, dtype=np.uint8).reshape(im.height, im.width, channels)
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1).to(torch.float32) / 255.0


def list_images(directory: Path) -> list[Path]:
    """The image files of `directory` (by suffix, sorted), with unique stems.

    Raises DataError when there are none or two share a stem (`a.png`, `a.jpg`): their masks
    and outputs are keyed by stem and would collide.
    """
    images = sorted(p for p in Path(directory).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise DataError(f"{directory}: no images ({', '.join('*' + s for s in IMAGE_SUFFIXES)})")
    by_stem: dict[str, Path] = {}
    for p in images:
        if p.stem in by_stem:
            raise DataError(f"{directory}: two images share the name {p.stem!r} ({by_stem[p.stem].name}, {p.name}); "
                            "keep one")
        by_stem[p.stem] = p
    return images


class FolderDataset:
    """Images and masks from `root/images` and `root/masks`, matched by file stem.

    Arguments:
        root: the dataset folder.
        num_classes: K; mask class ids must lie in [0, K) (or be `ignore_index`).
        image_size: None to keep each file's size, or an int / (h, w) to resize to (bilinear
            image, nearest mask).
        class_map: optional {raw mask value: class id}.
        ignore_index: the mask value that marks unlabelled pixels.
        channels: 3 (RGB) or 1 (grey); images are converted.

    `ds[i] -> (image [C, H, W] float32 in [0, 1], mask [H, W] int64)`; `ds.stems` lists the
    file stems in order (sorted). Folders are checked when the dataset is made; file contents
    when an item is read (`ds.validate()` reads them all).
    """

    def __init__(self, root: str | Path, *, num_classes: int, image_size: int | Sequence[int] | None = None,
                 class_map: Mapping[int, int] | None = None, ignore_index: int = 255, channels: int = 3) -> None:
        self.root = Path(root)
        if not isinstance(num_classes, int) or num_classes < 1:
            raise DataError(f"num_classes must be an int >= 1, got {num_classes!r}")
        if channels not in (1, 3):
            raise DataError(f"channels must be 1 or 3, got {channels}")
        self.num_classes, self.ignore_index, self.channels = num_classes, ignore_index, channels
        self.image_size = image_size
        self.class_map = dict(class_map) if class_map is not None else None
        if self.class_map is not None:
            bad = {r: c for r, c in self.class_map.items() if not (0 <= c < num_classes or c == ignore_index)}
            if bad:
                raise DataError(f"class_map maps to class ids outside [0, {num_classes}): {bad}")

        if not self.root.is_dir():
            raise DataError(f"dataset folder {self.root} does not exist (expected {self.root}/images and "
                            f"{self.root}/masks)")
        self.image_dir, self.mask_dir = self.root / "images", self.root / "masks"
        for d in (self.image_dir, self.mask_dir):
            if not d.is_dir():
                raise DataError(f"{self.root}: missing folder {d.name}/ (expected {self.root}/images/<name>.png|jpg "
                                f"and {self.root}/masks/<name>.png)")
        images = list_images(self.image_dir)
        missing = [p for p in images if not (self.mask_dir / f"{p.stem}.png").is_file()]
        if missing:
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            raise DataError(f"image {missing[0]} has no mask {self.mask_dir / (missing[0].stem + '.png')}{more}; "
                            "add the mask or remove the image")
        self._images = images

    @property
    def stems(self) -> list[str]:
        return [p.stem for p in self._images]

    @property
    def image_paths(self) -> list[Path]:
        """The image files, in the order of `stems`."""
        return list(self._images)

    @property
    def mask_paths(self) -> list[Path]:
        """The mask files `masks/<stem>.png`, in the order of `stems`."""
        return [self.mask_dir / f"{p.stem}.png" for p in self._images]

    def __len__(self) -> int:
        return len(self._images)

    def _mask_values(self, path: Path) -> np.ndarray:
        im = open_image(path)
        if im.mode not in ("P", "L", "I", "I;16", "1"):
            raise DataError(f"{path}: a mask must be a palette (P) or greyscale PNG of class ids, got mode "
                            f"{im.mode}; save it with funcml.seg.save_mask_png")
        raw = np.asarray(im, dtype=np.int64)
        if self.class_map is None:
            return raw
        lut_keys = np.array(sorted(self.class_map), dtype=np.int64)
        unknown = np.setdiff1d(np.unique(raw), np.append(lut_keys, self.ignore_index))
        if unknown.size:
            raise DataError(f"{path}: raw mask value(s) {unknown.tolist()} are not in class_map "
                            f"{self.class_map} (nor ignore_index={self.ignore_index})")
        out = np.full_like(raw, self.ignore_index)
        for r, c in self.class_map.items():
            out[raw == r] = c
        return out

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} examples")
        image_path = self._images[i]
        mask_path = self.mask_dir / f"{image_path.stem}.png"
        image = read_image(image_path, self.channels)
        values = self._mask_values(mask_path)
        if values.shape != tuple(image.shape[1:]):
            raise DataError(f"{image_path} is {image.shape[2]}x{image.shape[1]} but its mask {mask_path} is "
                            f"{values.shape[1]}x{values.shape[0]} (width x height); they must match")
        bad = (values != self.ignore_index) & ((values < 0) | (values >= self.num_classes))
        if bad.any():
            ys, xs = np.nonzero(bad)
            raise DataError(f"{mask_path}: class id {int(values[ys[0], xs[0]])} at (row {ys[0]}, col {xs[0]}) is "
                            f"outside [0, {self.num_classes}) (ignore_index={self.ignore_index}); "
                            f"bad values {np.unique(values[bad]).tolist()}; fix num_classes or pass class_map")
        mask = torch.from_numpy(values.copy())
        if self.image_size is not None:
            image, mask = resize(image, mask, self.image_size)
        return image, mask

    def validate(self) -> None:
        """Read every example; the first problem raises its DataError."""
        for i in range(len(self)):
            self[i]


def save_mask_png(mask: torch.Tensor, path: str | Path, palette: Sequence[Sequence[int]] | None = None) -> None:
    """Write `mask: [H, W]` int class ids (0..255) as a palette PNG (index = class id).

    palette: RGB triples for ids 0, 1, ...; default `DEFAULT_PALETTE` (id 255, the usual
    ignore_index, is white). Viewers show colours; `FolderDataset` reads the indices.
    """
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2:
        raise DataError(f"mask: expected an [H, W] tensor, got "
                        f"{list(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__}")
    values = mask.detach().to("cpu", torch.int64)
    if values.numel() and (int(values.min()) < 0 or int(values.max()) > 255):
        raise DataError(f"{path}: a palette PNG holds ids in [0, 255], got [{int(values.min())}, {int(values.max())}]")
    colors = list(palette) if palette is not None else [DEFAULT_PALETTE[i % len(DEFAULT_PALETTE)] for i in range(255)]
    colors = (colors + [(0, 0, 0)] * 256)[:256]
    if palette is None:
        colors[255] = _IGNORE_COLOR
    h, w = values.shape
    im = Image.frombytes("P", (w, h), values.numpy().astype(np.uint8).tobytes())
    im.putpalette([int(v) for rgb in colors for v in rgb])
    im.save(Path(path), format="PNG")


def write_example_folder(root: str | Path, key: torch.Tensor, n: int, cfg: ShapesConfig = ShapesConfig()) -> Path:
    """Write `n` shapes examples as `root/images/0000.png` and `root/masks/0000.png`, ...

    Images are 8-bit PNGs (RGB or grey as `cfg.channels`), masks palette PNGs. Refuses to write
    into a non-empty `images/` or `masks/` folder. Returns `root`.
    """
    root = Path(root)
    image_dir, mask_dir = root / "images", root / "masks"
    for d in (image_dir, mask_dir):
        if d.is_dir() and any(d.iterdir()):
            raise DataError(f"{d} is not empty; write the example dataset into a new folder")
    image_dir.mkdir(parents=True, exist_ok=True)
    mask_dir.mkdir(parents=True, exist_ok=True)
    images, masks = shapes_batch(random.fold_in(key, "example_folder"), n, cfg)
    pixels = (images * 255.0).round().to(torch.uint8)
    for i in range(n):
        arr = pixels[i].permute(1, 2, 0).numpy()
        Image.fromarray(arr[..., 0] if cfg.channels == 1 else arr).save(image_dir / f"{i:04d}.png")
        save_mask_png(masks[i], mask_dir / f"{i:04d}.png")
    return root
