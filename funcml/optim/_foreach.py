"""Lists of leaves: foreach kernels in eager mode, one op per leaf inside torch.func transforms
(foreach ops have no batching rule) and under torch.compile (`compiler.in_transform` is true while
Dynamo traces; inductor fuses the per-leaf ops). Private to funcml.optim."""

from __future__ import annotations

from typing import Any

import torch

from .. import compiler


def _use_foreach() -> bool:
    """False inside a torch.func transform (vmap, grad), whose interpreters have no foreach rules."""
    return not compiler.in_transform()


def _mul(xs: list, y: Any) -> list:
    """xs * y, with y a scalar, a 0-dim tensor or a list."""
    if not xs:
        return []
    if _use_foreach():
        return list(torch._foreach_mul(xs, y))
    ys = y if isinstance(y, list) else [y] * len(xs)
    return [x * yi for x, yi in zip(xs, ys)]


def _div(xs: list, y: Any) -> list:
    """xs / y, with y a scalar, a 0-dim tensor or a list."""
    if not xs:
        return []
    if _use_foreach():
        return list(torch._foreach_div(xs, y))
    ys = y if isinstance(y, list) else [y] * len(xs)
    return [x / yi for x, yi in zip(xs, ys)]


def _add(xs: list, ys: list, alpha: float = 1.0) -> list:
    """xs + alpha * ys."""
    if not xs:
        return []
    if _use_foreach():
        return list(torch._foreach_add(xs, ys, alpha=alpha))
    return [torch.add(x, y, alpha=alpha) for x, y in zip(xs, ys)]


def _add_scalar(xs: list, c: float) -> list:
    if not xs:
        return []
    if _use_foreach():
        return list(torch._foreach_add(xs, c))
    return [x + c for x in xs]


def _lerp(xs: list, ys: list, weight: float) -> list:
    """xs + weight * (ys - xs)."""
    if not xs:
        return []
    if _use_foreach():
        return list(torch._foreach_lerp(xs, ys, weight))
    return [torch.lerp(x, y, weight) for x, y in zip(xs, ys)]


def _addcmul(xs: list, ys: list, zs: list, value: float) -> list:
    """xs + value * ys * zs."""
    if not xs:
        return []
    if _use_foreach():
        return list(torch._foreach_addcmul(xs, ys, zs, value=value))
    return [torch.addcmul(x, y, z, value=value) for x, y, z in zip(xs, ys, zs)]


def _in_place_ok(xs: list) -> bool:
    """In-place foreach ops on `xs` (tensors the caller just made): foreach kernels in use and
    no autograd history that an in-place op would invalidate (a differentiated update)."""
    return bool(xs) and _use_foreach() and not any(x.requires_grad for x in xs)


def _fresh_div(xs: list, y: Any) -> list:
    """xs / y, in place when `_in_place_ok`: only for tensors the caller just made."""
    if _in_place_ok(xs):
        torch._foreach_div_(xs, y)
        return xs
    return _div(xs, y)


def _fresh_add_scalar(xs: list, c: float) -> list:
    """xs + c, in place when `_in_place_ok`: only for tensors the caller just made."""
    if _in_place_ok(xs):
        torch._foreach_add_(xs, c)
        return xs
    return _add_scalar(xs, c)


def _sqrt(xs: list) -> list:
    if not xs:
        return []
    if _use_foreach():
        return list(torch._foreach_sqrt(xs))
    return [torch.sqrt(x) for x in xs]


def _norms(xs: list, dtype: torch.dtype) -> list:
    if not xs:
        return []
    if _use_foreach():
        return list(torch._foreach_norm(xs, 2, dtype=dtype))
    return [torch.linalg.vector_norm(x, dtype=dtype) for x in xs]
