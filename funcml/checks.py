"""Tensor contracts, checked at public boundaries.

    dims = check_shape(x, "b c h w", name="x", c=3)      # -> {"b": 8, "c": 3, "h": 64, "w": 64}
    check_shape(mask, "b h w", name="mask", **dims)      # the same b, h, w or a ShapeError

A spec is a space-separated list of dimension names. A name binds to the size it first
meets and must then match; an integer literal (`"b 3 h w"`) fixes the size; `_` accepts any
size; a leading `...` accepts any number of leading dimensions. Shape checks read only
static shapes, so they are free under `torch.compile` and see the per-example shape under
`vmap`. `check_range` and `check_finite` read values: call them outside compiled code.
Checks of values inside a per-step path (lengths, ids) run when `host_readable(x)`: on an
accelerator a read would wait for the device's queue every step, so there the values are
checked where the data is made (on the host, e.g. by `collate`).
"""

from __future__ import annotations

from typing import Any, Iterable

import torch

from .errors import DTypeError, NonFiniteError, RangeError, ShapeError

__all__ = ["check_shape", "check_dtype", "check_range", "check_finite", "check_same_device", "host_readable"]


def _parse(spec: str) -> tuple[bool, list[str]]:
    tokens = spec.split()
    ellipsis = bool(tokens) and tokens[0] == "..."
    tokens = tokens[1:] if ellipsis else tokens
    if "..." in tokens:
        raise ValueError(f"shape spec {spec!r}: '...' may only come first")
    return ellipsis, tokens


def check_shape(x: Any, spec: str, name: str = "x", **known: int) -> dict[str, int]:
    """Check `x.shape` against `spec` and return the bound sizes of its named dimensions.

    Arguments:
        x: the tensor to check.
        spec: e.g. `"b t d"`, `"... c h w"`, `"b 3 h w"`, `"b _ d"`.
        name: the argument's name, used in the error message.
        **known: sizes that named dimensions must have (extra names are allowed, so the
            dict returned by an earlier call can be passed on to bind several tensors).

    Returns: `known` updated with every named dimension of `spec`.

    Raises: ShapeError naming the argument, the expected and the actual shape.
    """
    if not isinstance(x, torch.Tensor):
        raise ShapeError(f"{name}: expected a tensor of shape [{spec}], got {type(x).__name__}")
    ellipsis, tokens = _parse(spec)
    shape = tuple(x.shape)
    bound = dict(known)

    def fail(why: str) -> ShapeError:
        want = " ".join(f"{t}={bound[t]}" if t in bound else t for t in ([("...")] if ellipsis else []) + tokens)
        return ShapeError(f"{name}: expected shape [{want}], got {list(shape)} ({why})")

    if (len(shape) < len(tokens)) if ellipsis else (len(shape) != len(tokens)):
        raise fail(f"rank {len(shape)}, expected {'at least ' if ellipsis else ''}{len(tokens)}")
    tail = shape[len(shape) - len(tokens):] if tokens else ()
    for axis, (tok, size) in enumerate(zip(tokens, tail)):
        if tok == "_":
            continue
        if tok.lstrip("-").isdigit():
            if size != int(tok):
                raise fail(f"dim {axis} is {size}, expected {tok}")
            continue
        if tok in bound and bound[tok] != size:
            raise fail(f"dim {axis} '{tok}' is {size}, expected {bound[tok]}")
        bound[tok] = int(size)
    return bound


def check_dtype(x: torch.Tensor, dtypes: torch.dtype | Iterable[torch.dtype] | str, name: str = "x") -> None:
    """Check that `x.dtype` is one of `dtypes` (a dtype, several, or "float" / "int")."""
    if dtypes == "float":
        ok, want = x.is_floating_point(), "a floating dtype"
    elif dtypes == "int":
        ok, want = (not x.is_floating_point() and not x.is_complex() and x.dtype != torch.bool), "an integer dtype"
    else:
        allowed = (dtypes,) if isinstance(dtypes, torch.dtype) else tuple(dtypes)
        ok, want = x.dtype in allowed, " or ".join(str(d) for d in allowed)
    if not ok:
        raise DTypeError(f"{name}: expected {want}, got {x.dtype}")


def check_range(x: torch.Tensor, low: float | None = None, high: float | None = None, name: str = "x") -> None:
    """Check `low <= x <= high` element-wise; the error gives a count, an offending index and value."""
    if x.numel() == 0:
        return
    for bound, op in ((low, "<"), (high, ">")):
        if bound is None:
            continue
        bad = x < bound if op == "<" else x > bound
        if bool(bad.any()):
            idx = tuple(int(i) for i in torch.nonzero(bad)[0])
            raise RangeError(
                f"{name}: {int(bad.sum())} value(s) out of range [{low}, {high}], e.g. "
                f"{name}[{', '.join(map(str, idx))}] = {x[idx].item()} {op} {bound}"
            )


def check_finite(x: Any, name: str = "x") -> None:
    """Check that a tensor (or every leaf of a pytree) holds no NaN or Inf.

    The error counts NaN and Inf and names the first offending leaf and index.
    """
    from .tree import flatten_with_names

    items = {name: x} if isinstance(x, torch.Tensor) else {
        f"{name}.{k}" if k else name: v for k, v in flatten_with_names(x).items()}
    for leaf_name, t in items.items():
        if not isinstance(t, torch.Tensor) or not (t.is_floating_point() or t.is_complex()):
            continue
        finite = torch.isfinite(t)
        if not bool(finite.all()):
            n_nan, n_inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
            idx = tuple(int(i) for i in torch.nonzero(~finite)[0])
            raise NonFiniteError(
                f"{leaf_name}: {n_nan} NaN and {n_inf} Inf of {t.numel()} values "
                f"(shape {list(t.shape)}); first at index {list(idx)}"
            )


def check_same_device(*tensors: torch.Tensor, names: Iterable[str] | None = None) -> None:
    """Check that every tensor lives on the same device."""
    names = list(names) if names is not None else [f"arg{i}" for i in range(len(tensors))]
    devices = {str(t.device) for t in tensors}
    if len(devices) > 1:
        where = ", ".join(f"{n} on {t.device}" for n, t in zip(names, tensors))
        raise DTypeError(f"tensors must be on one device: {where}")


def host_readable(x: torch.Tensor) -> bool:
    """Whether reading `x`'s values is free: a CPU tensor, outside `torch.compile` tracing and
    `torch.func` transforms (false on CUDA, where a read waits for the device, and on "meta")."""
    if x.device.type != "cpu" or torch.compiler.is_compiling():
        return False
    return not torch._C._functorch.is_functorch_wrapped_tensor(x)
