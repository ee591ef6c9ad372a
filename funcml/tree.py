"""Pytrees: nested dicts, lists, tuples and NamedTuples of tensors.

Every other module of funcml goes through this one, so the backend (torch's own pytree,
the one `torch.func` uses) can change in one place. `None` is kept as an empty node: it is
passed through by `tree_map` and is not a leaf.

Names: `flatten_with_names` joins the path of each leaf with dots (`enc.0.conv.w`): dict
keys, NamedTuple field names and sequence indices. For layer stacks use dict keys "0", "1"
so that names stay stable. Names are the keys of checkpoints.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
import torch.utils._pytree as _pt

from .errors import ShapeError

__all__ = [
    "tree_map",
    "leaves",
    "flatten",
    "unflatten",
    "structure",
    "flatten_with_names",
    "unflatten_from_names",
    "num_params",
    "num_bytes",
    "cast",
    "to",
    "allclose",
    "equal",
    "first_difference",
    "stack",
    "unstack",
    "zeros_like",
]

PyTree = Any


def _is_none(x: Any) -> bool:
    return x is None


def tree_map(fn: Callable[..., Any], tree: PyTree, *rest: PyTree, is_leaf: Callable[[Any], bool] | None = None) -> PyTree:
    """Apply `fn` to every leaf of `tree` (and the matching leaves of `rest`); `None` stays `None`."""

    def leaf_fn(x, *xs):
        return None if x is None else fn(x, *xs)

    def leaf_pred(x):
        return x is None or (is_leaf is not None and is_leaf(x))

    return _pt.tree_map(leaf_fn, tree, *rest, is_leaf=leaf_pred)


def flatten(tree: PyTree) -> tuple[list[Any], Any]:
    """Return `(leaves, treedef)`; `unflatten(treedef, leaves)` rebuilds the tree."""
    return _pt.tree_flatten(tree)


def unflatten(treedef: Any, leaves_: Iterable[Any]) -> PyTree:
    """Rebuild a tree from a treedef (from `flatten` or `structure`) and its leaves in flatten order."""
    return _pt.tree_unflatten(list(leaves_), treedef)


def structure(tree: PyTree) -> Any:
    """The structure of `tree` without its leaves (a treedef): equal for trees that differ only in leaf values."""
    return _pt.tree_structure(tree)


def leaves(tree: PyTree) -> list[Any]:
    """The leaves of `tree` in flatten order, without `None`."""
    return [x for x in _pt.tree_leaves(tree) if x is not None]


def _key_str(entry: Any) -> str:
    if isinstance(entry, _pt.MappingKey):
        k = str(entry.key)
        if "." in k:
            raise ShapeError(f"pytree dict key {k!r} contains '.', which would make leaf names ambiguous")
        return k
    if isinstance(entry, _pt.SequenceKey):
        return str(entry.idx)
    if isinstance(entry, _pt.GetAttrKey):
        return entry.name
    return str(entry)


def flatten_with_names(tree: PyTree) -> dict[str, Any]:
    """Map each leaf's dot-joined path to the leaf, in flatten order (`None` left out).

    >>> flatten_with_names({"enc": {"0": {"w": w0}}, "head": {"b": b}})
    {"enc.0.w": w0, "head.b": b}
    """
    pairs, _ = _pt.tree_flatten_with_path(tree)
    return {".".join(_key_str(k) for k in path): x for path, x in pairs if x is not None}


def unflatten_from_names(named: dict[str, Any], like: PyTree | None = None) -> PyTree:
    """Rebuild a tree from `{dotted.name: leaf}`.

    With `like`, the result has the structure of `like` (NamedTuples, lists and all) and the
    names must be exactly those of `like`; the error lists what is missing and what is extra.
    Without it, the result is nested dicts.
    """
    if like is not None:
        want = flatten_with_names(like)
        missing = [n for n in want if n not in named]
        extra = [n for n in named if n not in want]
        if missing or extra:
            raise ShapeError(f"names do not match the tree: missing {missing}, unexpected {extra}")
        pairs, treedef = _pt.tree_flatten_with_path(like)
        new = [None if x is None else named[".".join(_key_str(k) for k in path)] for path, x in pairs]
        return _pt.tree_unflatten(new, treedef)
    out: dict[str, Any] = {}
    for name, x in named.items():
        parts = name.split(".")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ShapeError(f"name {name!r} clashes with a leaf at {p!r}")
        if parts[-1] in node:
            raise ShapeError(f"name {name!r} is given twice or clashes with a subtree")
        node[parts[-1]] = x
    return out


def num_params(tree: PyTree) -> int:
    """Total number of elements over all tensor leaves."""
    return sum(x.numel() for x in leaves(tree) if isinstance(x, torch.Tensor))


def num_bytes(tree: PyTree) -> int:
    """Total storage of all tensor leaves, in bytes."""
    return sum(x.numel() * x.element_size() for x in leaves(tree) if isinstance(x, torch.Tensor))


def cast(tree: PyTree, dtype: torch.dtype, *, only_floating: bool = True) -> PyTree:
    """Cast tensor leaves to `dtype`; by default only floating leaves (integer counters stay)."""

    def f(x):
        if not isinstance(x, torch.Tensor) or (only_floating and not x.is_floating_point()):
            return x
        return x.to(dtype)

    return tree_map(f, tree)


def to(tree: PyTree, device: torch.device | str) -> PyTree:
    """Move every tensor leaf to `device` (leaves already there are returned as they are). Host tensors
    bound for CUDA are copied from pinned memory without blocking the host; the copy is ordered
    before any later kernel on the current stream, as every CUDA copy is."""
    device = torch.device(device)
    to_cuda = device.type == "cuda"

    def move(x: Any) -> Any:
        if not isinstance(x, torch.Tensor) or x.device == device:
            return x
        if to_cuda and x.device.type == "cpu":
            return x.pin_memory().to(device, non_blocking=True)
        return x.to(device)

    return tree_map(move, tree)


def zeros_like(tree: PyTree) -> PyTree:
    """A tree of the same structure with every tensor leaf replaced by `torch.zeros_like(leaf)`."""
    return tree_map(torch.zeros_like, tree)


def first_difference(a: PyTree, b: PyTree, *, rtol: float = 0.0, atol: float = 0.0) -> str | None:
    """Name of the first leaf where `a` and `b` differ (structure, shape, dtype or value), or None.

    With the default tolerances values must be bit-identical (NaN equal to NaN).
    """
    na, nb = flatten_with_names(a), flatten_with_names(b)
    if list(na) != list(nb):
        missing = [k for k in na if k not in nb] + [k for k in nb if k not in na]
        return f"<structure: {missing[:5] or 'order differs'}>"
    for name, x in na.items():
        y = nb[name]
        if isinstance(x, torch.Tensor) != isinstance(y, torch.Tensor):
            return name
        if not isinstance(x, torch.Tensor):
            if x != y:
                return name
            continue
        if x.shape != y.shape or x.dtype != y.dtype:
            return name
        if rtol == 0.0 and atol == 0.0:
            if not torch.equal(x, y) and not (x.is_floating_point() and
                                              torch.equal(torch.isnan(x), torch.isnan(y)) and
                                              torch.equal(x.nan_to_num(), y.nan_to_num())):
                return name
        elif not torch.allclose(x, y, rtol=rtol, atol=atol, equal_nan=True):
            return name
    return None


def equal(a: PyTree, b: PyTree) -> bool:
    """Same structure, names, shapes, dtypes and bit-identical values."""
    return first_difference(a, b) is None


def allclose(a: PyTree, b: PyTree, *, rtol: float = 1e-5, atol: float = 1e-8) -> bool:
    """Same structure, shapes and dtypes, and values within `torch.allclose` tolerances."""
    return first_difference(a, b, rtol=rtol, atol=atol) is None


def stack(trees: list[PyTree]) -> PyTree:
    """Stack N trees of the same structure into one whose leaves have a leading dim N (for vmap)."""
    if not trees:
        raise ShapeError("stack: need at least one tree")
    return tree_map(lambda *xs: torch.stack(xs), trees[0], *trees[1:])


def unstack(tree: PyTree) -> list[PyTree]:
    """Inverse of `stack`: split the leading dim of every leaf into a list of trees."""
    ls, treedef = flatten(tree)
    tensors = [x for x in ls if x is not None]
    if not tensors:
        return []
    n = tensors[0].shape[0]
    if any(x.shape[0] != n for x in tensors):
        raise ShapeError(f"unstack: leaves disagree on the leading dim: {sorted({x.shape[0] for x in tensors})}")
    return [unflatten(treedef, [None if x is None else x[i] for x in ls]) for i in range(n)]
