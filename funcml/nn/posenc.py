"""Positional encodings: fixed sinusoids (1-D and 2-D) and a learned table.

    pe = sinusoidal_1d(T, D)                             # [T, D], added to tokens [B, T, D]
    pe = sinusoidal_2d(H, W, D)                          # [H*W, D], for rearrange(x, "b c h w -> b (h w) c")
    params = init_learned_posenc(key, 512, D)            # {"table": [512, D]}
    pe = learned_posenc(params, T)                       # [T, D]

Sinusoids (Vaswani et al., 2017, "Attention is all you need", section 3.5), for position p
and `i in [0, D/2)`:

    PE[p, 2i]     = sin(p / base^(2i / D))
    PE[p, 2i + 1] = cos(p / base^(2i / D))

They are computed in float64 and rounded once to `dtype`, so that large positions keep their
precision.
"""

from __future__ import annotations

import torch
from einops import rearrange, repeat

from ..checks import check_shape
from ..errors import ConfigError, ShapeError
from . import init as _init

__all__ = ["sinusoidal_1d", "sinusoidal_2d", "init_learned_posenc", "learned_posenc"]

Params = dict[str, torch.Tensor]
Device = torch.device | str | None


def _is_int(v) -> bool:
    # A SymInt is what a size read from a tensor is under torch.compile with dynamic shapes.
    return isinstance(v, (int, torch.SymInt)) and not isinstance(v, bool)


def _check_positive(fn: str, **sizes: int) -> None:
    for name, v in sizes.items():
        if not _is_int(v) or v < 1:
            raise ConfigError(f"{fn}: {name} must be a positive int, got {v!r}")


def _sinusoids(positions: torch.Tensor, dim: int, base: float) -> torch.Tensor:
    """positions: `[T]` float64 -> `[T, dim]` float64, sin/cos interleaved."""
    i = torch.arange(dim // 2, dtype=torch.float64, device=positions.device)
    inv_freq = base ** (-2.0 * i / dim)  # 1 / base^(2i/D)
    angle = positions[:, None] * inv_freq[None, :]  # [T, D/2]
    # [T, D/2, 2] -> [T, D]: channel 2i is the sine, 2i + 1 the cosine.
    return rearrange(torch.stack([torch.sin(angle), torch.cos(angle)], dim=-1), "t i two -> t (i two)")


def sinusoidal_1d(length: int, dim: int, *, base: float = 10000.0, dtype: torch.dtype = torch.float32,
                  device: Device = None) -> torch.Tensor:
    """Sinusoidal encoding of positions `0 .. length - 1`: `[T, D]` (D even).

    `PE[p, 2i] = sin(p / base^(2i/D))`, `PE[p, 2i+1] = cos(p / base^(2i/D))`.
    """
    _check_positive("sinusoidal_1d", length=length, dim=dim)
    if dim % 2:
        raise ConfigError(f"sinusoidal_1d: dim must be even (sin and cos pairs), got {dim}")
    positions = torch.arange(length, dtype=torch.float64, device=device)
    return _sinusoids(positions, dim, base).to(dtype)


def sinusoidal_2d(h: int, w: int, dim: int, *, base: float = 10000.0, dtype: torch.dtype = torch.float32,
                  device: Device = None) -> torch.Tensor:
    """2-D sinusoidal encoding of an `h x w` grid: `[h*w, D]` (D divisible by 4).

    Token `r * w + c` (row-major, as `rearrange(x, "b c h w -> b (h w) c")` orders tokens)
    gets `concat(sinusoidal_1d(h, D/2)[r], sinusoidal_1d(w, D/2)[c])`: the first D/2
    channels encode the row, the last D/2 the column.
    """
    _check_positive("sinusoidal_2d", h=h, w=w, dim=dim)
    if dim % 4:
        raise ConfigError(f"sinusoidal_2d: dim must be divisible by 4 (a sin/cos pair per axis), got {dim}")
    half = dim // 2
    rows = sinusoidal_1d(h, half, base=base, dtype=dtype, device=device)  # [h, D/2]
    cols = sinusoidal_1d(w, half, base=base, dtype=dtype, device=device)  # [w, D/2]
    return torch.cat([repeat(rows, "h d -> (h w) d", w=w), repeat(cols, "w d -> (h w) d", h=h)], dim=-1)


def init_learned_posenc(key: torch.Tensor, length: int, dim: int, *, std: float = 0.02,
                        dtype: torch.dtype = torch.float32, device: Device = None) -> Params:
    """A learned table of `length` positions, `{"table": [T, D]}`, entries `~ N(0, std^2)`."""
    _check_positive("init_learned_posenc", length=length, dim=dim)
    return {"table": _init.normal(key, (length, dim), std, dtype=dtype, device=device)}


def learned_posenc(params: Params, length: int) -> torch.Tensor:
    """The encodings of positions `0 .. length - 1`: `table[:length]`, `[T, D]`.

    Raises: `ShapeError` when `length` exceeds the number of positions in the table.
    """
    dims = check_shape(params["table"], "t d", name="learned_posenc: params['table']")
    if not _is_int(length) or length < 0:
        raise ConfigError(f"learned_posenc: length must be a non-negative int, got {length!r}")
    if length > dims["t"]:
        raise ShapeError(f"learned_posenc: a sequence of length {length} is longer than the table's "
                         f"{dims['t']} positions (params['table'] has shape {[dims['t'], dims['d']]}); "
                         "initialize the table with a larger max length or crop the input")
    return params["table"][:length]
