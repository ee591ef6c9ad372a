"""The transformation type, the optimizer states, and the tree helpers every transformation uses."""

from __future__ import annotations

import fnmatch
from typing import Any, Callable, NamedTuple, Sequence

import torch

from .. import tree
from ..errors import ConfigError, ShapeError
from ._foreach import _add, _norms

PyTree = Any
Schedule = Callable[[Any], Any]
"""`step -> value`: int64 tensor step -> float64 tensor, or Python int -> Python float."""

Mask = PyTree | Callable[[PyTree], PyTree] | Sequence[str] | str | None


class GradientTransformation(NamedTuple):
    """A pair of pure functions, and an optional fused third.

    init: `params -> state`.
    update: `(grads, state, params) -> (updates, state)`; `params` may be None for
        transformations that do not read them (all but `add_decayed_weights`).
    apply: None, or `(grads, state, params) -> (new_params, state)`, the same step as
        `apply_updates(params, update(grads, state, params)[0])` (equal up to float rounding)
        done in fewer passes over memory; `adam` and `adamw` have one (torch's fused Adam
        kernel, eagerly), and `chain` has one when its last transformation does. Call
        `update_and_apply`, which uses it when present.
    """

    init: Callable[[PyTree], Any]
    update: Callable[[PyTree, Any, PyTree], tuple[PyTree, Any]]
    apply: Callable[[PyTree, Any, PyTree], tuple[PyTree, Any]] | None = None


class EmptyState(NamedTuple):
    """The state of a stateless transformation (no leaves)."""


class ScaleByAdamState(NamedTuple):
    """count: int64 scalar, the number of updates done (t after step t);
    mu, nu: the first and second moment estimates m_t, v_t, pytrees like params."""

    count: torch.Tensor
    mu: PyTree
    nu: PyTree


class TraceState(NamedTuple):
    """trace: the momentum buffer, like params."""

    trace: PyTree


class ScaleByLearningRateState(NamedTuple):
    """count: int64 scalar, updates done; lr: the learning rate the last update used
    (`schedule(0)` before the first), a float scalar tensor."""

    count: torch.Tensor
    lr: torch.Tensor


class ScaleByScheduleState(NamedTuple):
    """count: int64 scalar, updates done; value: the factor the last update used."""

    count: torch.Tensor
    value: torch.Tensor


# ---------------------------------------------------------------------------------------
# Trees


def _tensors(t: PyTree) -> tuple[list[torch.Tensor], Callable[[list], PyTree]]:
    """The non-None leaves of `t`, and a function that puts a new list back in their place."""
    return _leaves_and_rebuild(*tree.flatten(t))


def _leaves_and_rebuild(flat: list, spec: Any) -> tuple[list[torch.Tensor], Callable[[list], PyTree]]:
    """`_tensors` of a tree already flattened into `(flat, spec)`."""
    where = [i for i, x in enumerate(flat) if x is not None]

    def rebuild(new: list) -> PyTree:
        out: list[Any] = [None] * len(flat)
        for i, x in zip(where, new):
            out[i] = x
        return tree.unflatten(spec, out)

    return [flat[i] for i in where], rebuild


def _tensors_like(t: PyTree, like: PyTree, name: str, like_name: str, *, like_flat: tuple | None = None
                  ) -> tuple[list[torch.Tensor], Callable[[list], PyTree], list[torch.Tensor]]:
    """`_tensors(t)` plus the tensor leaves of `like`, after `_check_like(t, like, ...)`; each
    tree is flattened once (the update runs every step, and flattening is Python work);
    `like_flat`: `tree.flatten(like)` when the caller has it already."""
    flat, spec = tree.flatten(t)
    flat_l, spec_l = like_flat if like_flat is not None else tree.flatten(like)
    _check_like(t, like, name, like_name, flat=(flat, spec, flat_l, spec_l))
    xs, rebuild = _leaves_and_rebuild(flat, spec)
    return xs, rebuild, [x for x in flat_l if x is not None]


def _check_like(t: PyTree, like: PyTree, name: str, like_name: str, *, flat: tuple | None = None) -> None:
    """Raise a ShapeError unless `t` has the structure, None leaves and shapes of `like`
    (`flat`: both trees already flattened, `(leaves, spec, like_leaves, like_spec)`)."""
    flat, spec, flat_l, spec_l = flat if flat is not None else (*tree.flatten(t), *tree.flatten(like))
    same = spec == spec_l and all((a is None) == (b is None) for a, b in zip(flat, flat_l))
    if same:
        for a, b in zip(flat, flat_l):
            if a is not None and (not isinstance(a, torch.Tensor) or a.shape != b.shape):
                same = False
                break
    if same:
        return
    named, named_l = tree.flatten_with_names(t), tree.flatten_with_names(like)
    missing = [k for k in named_l if k not in named]
    extra = [k for k in named if k not in named_l]
    if missing or extra:
        raise ShapeError(f"{name} does not have the structure of {like_name}: "
                         f"missing {missing[:5]}, unexpected {extra[:5]}")
    for k, a in named.items():
        b = named_l[k]
        if not isinstance(a, torch.Tensor):
            raise ShapeError(f"{name}.{k}: expected a tensor of shape {list(b.shape)}, got {type(a).__name__}")
        if a.shape != b.shape:
            raise ShapeError(f"{name}.{k}: expected shape {list(b.shape)} (as in {like_name}), got {list(a.shape)}")
    raise ShapeError(f"{name} does not have the structure of {like_name} (order or container types differ)")


def _device(xs: list[torch.Tensor]) -> torch.device:
    return xs[0].device if xs else torch.device("cpu")


def _scalar_dtype(xs: list[torch.Tensor]) -> torch.dtype:
    """float64 if any leaf is float64, else float32: the dtype of counters' float companions."""
    return torch.float64 if any(x.dtype == torch.float64 for x in xs) else torch.float32


def _zero_count(xs: list[torch.Tensor]) -> torch.Tensor:
    return torch.zeros((), dtype=torch.int64, device=_device(xs))


def apply_updates(params: PyTree, updates: PyTree) -> PyTree:
    """Return `params + updates` leaf by leaf (updates cast to each param's dtype).

    Arguments:
        params: a pytree of float tensors (None leaves stay None).
        updates: a pytree of the same structure and shapes, e.g. from `tx.update`.
    """
    us, rebuild, ps = _tensors_like(updates, params, "updates", "params")  # same structure: one rebuild serves
    us = [u if u.dtype == p.dtype else u.to(p.dtype) for u, p in zip(us, ps)]
    return rebuild(_add(ps, us))


def global_norm(t: PyTree) -> torch.Tensor:
    """`sqrt(sum_i ||x_i||^2)` over every tensor leaf, a 0-dim tensor.

    Computed in float32 (float64 if any leaf is float64), also for bf16/fp16 leaves; 0 for
    a tree without leaves.
    """
    return _global_norm(_tensors(t)[0])


def _global_norm(xs: list[torch.Tensor]) -> torch.Tensor:
    dtype = _scalar_dtype(xs)
    if not xs:
        return torch.zeros((), dtype=dtype)
    return torch.linalg.vector_norm(torch.stack(_norms(xs, dtype)))


def decay_mask(params: PyTree, exclude: Sequence[str] | str | None = None) -> PyTree:
    """Which leaves weight decay applies to: a pytree of Python bools shaped like `params`.

    Without `exclude`, a leaf decays iff `ndim >= 2` (weight matrices, embeddings and conv
    kernels decay; biases and norm scales do not), as in nanoGPT. With `exclude`, a sequence
    of shell patterns (`fnmatch.fnmatchcase`) over the leaf names of
    `tree.flatten_with_names`, every leaf decays except those whose full dotted name matches
    a pattern; the `ndim` rule is then not used. `"*.b"` matches `"head.b"` but not a
    top-level `"b"`: write `("b", "*.b")` for both.

    Under `vmap` over stacked params, call it on one member's params (the update does so
    itself when the mask is left to its default).

        decay_mask({"lin": {"w": w, "b": b}, "norm": {"scale": s}})
        # {"lin": {"w": True, "b": False}, "norm": {"scale": False}}
        decay_mask(params, exclude=("*.b", "*norm*"))
    """
    flat, spec = tree.flatten(params)
    if exclude is None:
        return tree.unflatten(spec, [None if x is None else x.ndim >= 2 for x in flat])
    patterns = (exclude,) if isinstance(exclude, str) else tuple(exclude)
    if not all(isinstance(p, str) for p in patterns):
        raise ConfigError(f"decay_mask: exclude must be a sequence of name patterns (str), got {exclude!r}")
    names = iter(tree.flatten_with_names(params))
    out = []
    for x in flat:
        if x is None:
            out.append(None)
        else:
            name = next(names)
            out.append(not any(fnmatch.fnmatchcase(name, p) for p in patterns))
    return tree.unflatten(spec, out)


def _resolve_mask(mask: Mask, params: PyTree) -> list[bool]:
    """The mask as a list of bools aligned with `_tensors(params)`."""
    if mask is None:
        m = decay_mask(params)
    elif isinstance(mask, str) or (isinstance(mask, (list, tuple)) and not _is_namedtuple(mask)
                                   and all(isinstance(p, str) for p in mask)):
        m = decay_mask(params, exclude=mask)
    elif callable(mask):
        m = mask(params)
    else:
        m = mask
    flat, spec = tree.flatten(m)
    flat_p, spec_p = tree.flatten(params)
    if spec != spec_p or any((a is None) != (b is None) for a, b in zip(flat, flat_p)):
        named, named_p = tree.flatten_with_names(m), tree.flatten_with_names(params)
        raise ShapeError(f"weight-decay mask does not have the structure of params: "
                         f"missing {[k for k in named_p if k not in named][:5]}, "
                         f"unexpected {[k for k in named if k not in named_p][:5]}")
    bad = [x for x in flat if x is not None and not isinstance(x, bool)]
    if bad:
        raise ConfigError(f"weight-decay mask leaves must be Python bools, got {type(bad[0]).__name__}; "
                          f"use decay_mask(params, exclude=...) or a callable returning bools")
    return [x for x in flat if x is not None]


def _is_namedtuple(x: Any) -> bool:
    return isinstance(x, tuple) and hasattr(x, "_fields")
