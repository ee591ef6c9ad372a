"""Mask values: the `--class-map` flag, a scan of the raw values in a folder's masks, and their checks.

    class_map = parse_class_map("0:1,255:0")       # {raw value: class id}; "" or None: no map
    scan = scan_masks(paths)                         # raw values and their pixel counts, over all files
    print(scan.report(class_map, ignore_index=255))  # "mask values: 0 (21.7%), 255 (78.3%) ..."
    check_mask_values(scan, num_classes=2, class_map=class_map, ignore_index=255)  # DataError or [warnings]

Rules (never a silent reinterpretation):
- Without a map, every raw value must be a class id in `[0, K)` or exactly `ignore_index`. A set
  of values that does not fit (0 and 255 with K = 2) is a `DataError` naming the values found,
  their pixel shares and the flag to pass (`--class-map 0:0,255:1`); in particular a 0/255
  binary mask is refused when `ignore_index` is 255, where it would otherwise train with every
  foreground pixel dropped.
- With a map, every raw value must be a key of the map or `ignore_index`; each map value must be
  a class id in `[0, K)` or `ignore_index`.
- A class that no training pixel holds after the map gives a warning (the model cannot learn it).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..errors import ConfigError, DataError

__all__ = ["parse_class_map", "format_class_map", "MaskScan", "scan_masks", "read_mask_values", "check_mask_values",
           "suggest_class_map"]

_MASK_MODES = ("P", "L", "I", "I;16", "1")


def parse_class_map(text: str | None) -> dict[int, int] | None:
    """`"0:1,255:0"` -> `{0: 1, 255: 0}` (raw mask value : class id); None or "" -> None.

    A malformed entry, a negative number or a raw value given twice is a ConfigError naming it.
    """
    if text is None or not str(text).strip():
        return None
    out: dict[int, int] = {}
    for part in str(text).split(","):
        part = part.strip()
        raw, sep, cls = part.partition(":")
        try:
            if not sep:
                raise ValueError
            r, c = int(raw.strip()), int(cls.strip())
        except ValueError:
            raise ConfigError(f"--class-map: {part!r} is not RAW:CLASS (two integers); write e.g. "
                              "--class-map 0:1,255:0") from None
        if r < 0 or c < 0:
            raise ConfigError(f"--class-map: {part!r} has a negative number; raw values and class ids are >= 0")
        if r in out:
            raise ConfigError(f"--class-map: raw value {r} is mapped twice")
        out[r] = c
    return out


def format_class_map(class_map: Mapping[int, int]) -> str:
    """The flag text of a map: `{0: 1, 255: 0}` -> `"0:1,255:0"`."""
    return ",".join(f"{r}:{c}" for r, c in sorted(class_map.items()))


def read_mask_values(path: Path) -> np.ndarray:
    """The raw values `[H, W]` int64 of a palette or greyscale mask PNG, or a DataError naming the file."""
    from .folder import open_image  # folder imports this module

    im = open_image(path)
    if im.mode not in _MASK_MODES:
        raise DataError(f"{path}: a mask must be a palette (P) or greyscale PNG of class ids, got mode "
                        f"{im.mode}; save it with funcml.seg.save_mask_png")
    return np.asarray(im, dtype=np.int64)


@dataclasses.dataclass(frozen=True)
class MaskScan:
    """Raw mask values over a set of files: `values[i]` covers `counts[i]` pixels; `files` read."""

    values: tuple[int, ...]
    counts: tuple[int, ...]
    files: int

    @property
    def total(self) -> int:
        return int(sum(self.counts))

    def shares(self) -> dict[int, float]:
        """{raw value: fraction of all pixels}."""
        return {v: c / max(1, self.total) for v, c in zip(self.values, self.counts)}

    def describe(self, limit: int = 8) -> str:
        """`0 (21.7%), 255 (78.3%)`, the `limit` most common values first."""
        order = sorted(zip(self.values, self.counts), key=lambda vc: -vc[1])
        text = ", ".join(f"{v} ({100 * c / max(1, self.total):.1f}%)" for v, c in order[:limit])
        return text + (f" and {len(order) - limit} more" if len(order) > limit else "")

    def class_counts(self, num_classes: int, class_map: Mapping[int, int] | None, ignore_index: int) -> list[int]:
        """Pixels of each class id `[0, K)` after the map (values outside are not counted)."""
        out = [0] * num_classes
        for v, c in zip(self.values, self.counts):
            k = class_map.get(v, ignore_index) if class_map is not None else v
            if k != ignore_index and 0 <= k < num_classes:
                out[k] += c
        return out

    def report(self, num_classes: int, class_map: Mapping[int, int] | None, ignore_index: int) -> str:
        """One line for the start of a run: the raw values and, after the map, each class's share."""
        per_class = self.class_counts(num_classes, class_map, ignore_index)
        scored = max(1, sum(per_class))
        classes = ", ".join(f"class {k} {100 * n / scored:.1f}%" for k, n in enumerate(per_class))
        how = f"class map {format_class_map(class_map)}" if class_map is not None else "no class map"
        return (f"mask values in {self.files} training file(s): {self.describe()}; {how}, ignore_index "
                f"{ignore_index}: {classes}")


def scan_masks(paths: Sequence[Path]) -> MaskScan:
    """Count every raw value over the mask files `paths` (each read once)."""
    totals: dict[int, int] = {}
    for p in paths:
        values, counts = np.unique(read_mask_values(Path(p)), return_counts=True)
        for v, c in zip(values.tolist(), counts.tolist()):
            totals[v] = totals.get(v, 0) + c
    keys = sorted(totals)
    return MaskScan(tuple(keys), tuple(totals[k] for k in keys), len(paths))


def suggest_class_map(values: Sequence[int], num_classes: int) -> str:
    """A map for the flag message: the sorted raw values to ids 0, 1, ... (when they fit in K)."""
    vals = sorted(values)
    if len(vals) > num_classes:
        return ",".join(f"{v}:{min(i, num_classes - 1)}" for i, v in enumerate(vals))
    return ",".join(f"{v}:{i}" for i, v in enumerate(vals))


def check_mask_values(scan: MaskScan, *, num_classes: int, class_map: Mapping[int, int] | None,
                      ignore_index: int, where: str = "the masks") -> list[str]:
    """Refuse raw values that do not fit (DataError, see the module docstring); return warnings.

    Returns one warning per class id in `[0, K)` that no pixel holds after the map.
    """
    found = f"{where} hold the values {scan.describe()}"
    if class_map is None:
        outside = [v for v in scan.values if v != ignore_index and not 0 <= v < num_classes]
        if outside:
            raise DataError(f"{found}: {outside} do not fit num_classes={num_classes} (class ids 0..{num_classes - 1}, "
                            f"ignore_index={ignore_index}); pass --class-map "
                            f"{suggest_class_map(scan.values, num_classes)} (raw value:class id) or fix num_classes")
        if num_classes >= 2 and set(scan.values) == {0, ignore_index}:
            raise DataError(f"{found}: with num_classes={num_classes} and ignore_index={ignore_index} every "
                            f"{ignore_index} pixel would be left out of training (a 0/{ignore_index} binary mask?); "
                            f"pass --class-map 0:0,{ignore_index}:1 (or 0:1,{ignore_index}:0 when 0 is the "
                            f"foreground), or --ignore-index -1 if {ignore_index} really marks unlabelled pixels")
    else:
        bad_ids = {r: c for r, c in class_map.items() if c != ignore_index and not 0 <= c < num_classes}
        if bad_ids:
            raise DataError(f"--class-map maps to class ids outside [0, {num_classes}): {bad_ids}")
        unknown = [v for v in scan.values if v not in class_map and v != ignore_index]
        if unknown:
            raise DataError(f"{found}: {unknown} are not in --class-map {format_class_map(class_map)} "
                            f"(nor ignore_index={ignore_index}); add them, e.g. --class-map "
                            f"{format_class_map({**class_map, **{v: ignore_index for v in unknown}})}")
    counts = scan.class_counts(num_classes, class_map, ignore_index)
    return [f"class {k} never appears in {where} (after the class map); the model cannot learn it. "
            f"Check --class-map / --model.num-classes" for k, n in enumerate(counts) if n == 0]
