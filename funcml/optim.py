"""Optimizers as pure gradient transformations, in the style of optax.

A transformation is a pair of pure functions over pytrees:

    tx = adamw(warmup_cosine_decay_schedule(0.0, 3e-4, 100, 10_000), weight_decay=0.1)
    opt_state = tx.init(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = apply_updates(params, updates)                 # params + updates

Optimizers are built by `chain`-ing small transformations, each of which writes one
equation: `adamw = chain(scale_by_adam, add_decayed_weights, scale_by_learning_rate)`.
States are NamedTuples of tensors (`ScaleByAdamState(count, mu, nu)`), so an optimizer
state is a pytree that checkpoints by name (`opt_state.0.mu.enc.w`).

Contracts:

* Nothing is updated in place: `update` returns new tensors and never writes to `grads`,
  `params` or the incoming state.
* The step count and the learning rate live in the state as tensors (int64 and float32,
  or float64 for float64 params), so `torch.compile(fullgraph=True)` traces an update once
  and never recompiles when the learning rate changes. `current_lr(opt_state)` reads the
  learning rate the last update used, for logging.
* Schedules are pure `step -> value` functions, traceable on int64 tensor steps and also
  callable on Python ints (they then return a Python float).
* Eager updates use torch's `_foreach_*` kernels over the flat list of leaves. Those have no
  `vmap` rule, so inside a `torch.func` transform (e.g. `vmap` over an ensemble's stacked
  params) the same equations run leaf by leaf.
* Weight decay applies by default only to leaves with `ndim >= 2` (matrices and conv
  kernels, not biases or norm scales), the rule of nanoGPT's `configure_optimizers`; see
  `decay_mask`.
"""

from __future__ import annotations

import fnmatch
import math
from typing import Any, Callable, NamedTuple, Sequence

import torch

from . import compiler, tree
from .errors import ConfigError, ShapeError

__all__ = [
    # transformations and their states
    "GradientTransformation",
    "EmptyState",
    "ScaleByAdamState",
    "TraceState",
    "ScaleByLearningRateState",
    "ScaleByScheduleState",
    "identity",
    "scale",
    "scale_by_adam",
    "scale_by_learning_rate",
    "scale_by_schedule",
    "add_decayed_weights",
    "clip_by_global_norm",
    "trace",
    "chain",
    # optimizers
    "sgd",
    "adam",
    "adamw",
    # tree helpers
    "apply_updates",
    "update_and_apply",
    "global_norm",
    "decay_mask",
    "current_lr",
    # schedules
    "Schedule",
    "constant_schedule",
    "linear_schedule",
    "polynomial_schedule",
    "cosine_decay_schedule",
    "warmup_cosine_decay_schedule",
    "warmup_linear_decay_schedule",
    "join_schedules",
]

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
# Lists of leaves: foreach kernels in eager and under torch.compile, one op per leaf inside
# torch.func transforms (foreach ops have no batching rule).


def _use_foreach() -> bool:
    """False inside a torch.func transform (vmap, grad), whose interpreters have no foreach rules."""
    return torch._C._functorch.peek_interpreter_stack() is None


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


# ---------------------------------------------------------------------------------------
# Transformations


def identity() -> GradientTransformation:
    """`u = g`."""

    def init(params):
        return EmptyState()

    def update(grads, state, params=None):
        return grads, state

    return GradientTransformation(init, update)


def scale(step_size: float) -> GradientTransformation:
    """`u = step_size * g`, for a constant Python float (see `scale_by_schedule` otherwise)."""
    step_size = float(step_size)

    def init(params):
        return EmptyState()

    def update(grads, state, params=None):
        gs, rebuild = _tensors(grads)
        return rebuild(_mul(gs, step_size)), state

    return GradientTransformation(init, update)


def scale_by_adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> GradientTransformation:
    """Adam's direction (Kingma & Ba, "Adam: A Method for Stochastic Optimization", 2015).

    At step t = 1, 2, ... with gradient g_t, elementwise:

        m_t = b1 * m_{t-1} + (1 - b1) * g_t
        v_t = b2 * v_{t-1} + (1 - b2) * g_t^2
        m̂_t = m_t / (1 - b1^t)
        v̂_t = v_t / (1 - b2^t)
        u_t = m̂_t / (sqrt(v̂_t) + eps)

    with m_0 = v_0 = 0. This is the direction of `torch.optim.Adam` (eps added after the
    square root); multiply by `-lr` (`scale_by_learning_rate`) to descend.

    State: `ScaleByAdamState(count, mu, nu)`, count int64 = t - 1 before the update.
    """
    if not 0.0 <= b1 < 1.0 or not 0.0 <= b2 < 1.0:
        raise ConfigError(f"scale_by_adam: b1 and b2 must be in [0, 1), got b1={b1}, b2={b2}")
    if eps < 0.0:
        raise ConfigError(f"scale_by_adam: eps must be >= 0, got {eps}")

    def init(params):
        ps, _ = _tensors(params)
        return ScaleByAdamState(_zero_count(ps), tree.zeros_like(params), tree.zeros_like(params))

    def update(grads, state, params=None):
        g, rebuild, mu_prev = _tensors_like(grads, state.mu, "grads", "the optimizer state (params at init)")
        count = state.count + 1
        t = count.to(torch.float64)
        # Bias corrections in float64, as torch.optim.Adam computes them in Python floats, then
        # cast once to the leaves' dtype (the kernels would cast them per leaf).
        dtype = g[0].dtype if g else torch.float32
        bc1 = (1.0 - torch.pow(b1, t)).to(dtype)
        bc2_sqrt = torch.sqrt(1.0 - torch.pow(b2, t)).to(dtype)
        mu = _lerp(mu_prev, g, 1.0 - b1)
        nu = _addcmul(_mul(tree.leaves(state.nu), b2), g, g, 1.0 - b2)
        # u = (m / bc1) / (sqrt(v) / sqrt(bc2) + eps), torch.optim.Adam's order of operations;
        # `_fresh` ops work in place on tensors created here (never on the inputs).
        denom = _fresh_add_scalar(_fresh_div(_sqrt(nu), bc2_sqrt), eps)
        u = _fresh_div(_div(mu, denom), bc1)
        return rebuild(u), ScaleByAdamState(count, rebuild(mu), rebuild(nu))

    return GradientTransformation(init, update)


def scale_by_learning_rate(lr: float | Schedule) -> GradientTransformation:
    """`u_t = -lr_t * g_t`, descent with a constant or scheduled learning rate.

    lr: a Python float, or a schedule `step -> value` evaluated at the update's step
        (0 for the first update).

    State: `ScaleByLearningRateState(count, lr)`. The learning rate is a tensor in the state
    (float32, or float64 for float64 params), so a compiled update never recompiles for a
    new value; for a constant lr the update reads it from the state, so replacing it
    (`state._replace(lr=...)`) changes the rate without rebuilding the optimizer.
    """
    if not callable(lr):
        lr = float(lr)
        if lr < 0.0:
            raise ConfigError(f"scale_by_learning_rate: lr must be >= 0, got {lr}")

    def init(params):
        ps, _ = _tensors(params)
        count, dtype = _zero_count(ps), _scalar_dtype(ps)
        value = lr(count).to(dtype) if callable(lr) else torch.tensor(lr, dtype=dtype, device=count.device)
        return ScaleByLearningRateState(count, value)

    def update(grads, state, params=None):
        g, rebuild = _tensors(grads)
        value = lr(state.count).to(state.lr.dtype) if callable(lr) else state.lr
        return rebuild(_mul(g, -value)), ScaleByLearningRateState(state.count + 1, value)

    return GradientTransformation(init, update)


def scale_by_schedule(schedule: Schedule) -> GradientTransformation:
    """`u_t = s(t) * g_t` with `s` a schedule of the update's step (0 for the first update).

    State: `ScaleByScheduleState(count, value)`, `value` the factor the last update used.
    """
    if not callable(schedule):
        raise ConfigError(f"scale_by_schedule: expected a schedule `step -> value`, got {schedule!r}")

    def init(params):
        ps, _ = _tensors(params)
        count = _zero_count(ps)
        return ScaleByScheduleState(count, schedule(count).to(_scalar_dtype(ps)))

    def update(grads, state, params=None):
        g, rebuild = _tensors(grads)
        value = schedule(state.count).to(state.value.dtype)
        return rebuild(_mul(g, value)), ScaleByScheduleState(state.count + 1, value)

    return GradientTransformation(init, update)


def add_decayed_weights(weight_decay: float, mask: Mask = None) -> GradientTransformation:
    """`u = g + weight_decay * p` on the leaves the mask selects, `u = g` elsewhere.

    Before Adam's scaling this is L2 regularisation (torch.optim.SGD's `weight_decay`);
    after it and before `scale_by_learning_rate` it is decoupled weight decay
    (Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019): the step is
    `p <- p - lr * (u_adam + wd * p)`, i.e. torch.optim.AdamW's `p <- p * (1 - lr * wd)`.

    mask: which leaves decay.
        None: `decay_mask(params)`, the leaves with `ndim >= 2`;
        a sequence of name patterns: leaves whose names match are EXCLUDED
            (`decay_mask(params, exclude=mask)`), e.g. `("*.b", "*norm*")`;
        a pytree of Python bools shaped like params, or a callable `params -> such a tree`.
    """
    weight_decay = float(weight_decay)
    if weight_decay < 0.0:
        raise ConfigError(f"add_decayed_weights: weight_decay must be >= 0, got {weight_decay}")

    def init(params):
        return EmptyState()

    def update(grads, state, params=None):
        if weight_decay == 0.0:
            return grads, state
        if params is None:
            raise ConfigError("add_decayed_weights: update needs params (call tx.update(grads, state, params))")
        g, rebuild, p = _tensors_like(grads, params, "grads", "params")
        decay = [x.ndim >= 2 for x in p] if mask is None else _resolve_mask(mask, params)
        idx = [i for i, d in enumerate(decay) if d]
        decayed = _add([g[i] for i in idx], [p[i] for i in idx], alpha=weight_decay)
        u = list(g)
        for i, x in zip(idx, decayed):
            u[i] = x
        return rebuild(u), state

    return GradientTransformation(init, update)


def clip_by_global_norm(max_norm: float) -> GradientTransformation:
    """Rescale the whole tree so that its global norm is at most `max_norm`:

        u = g * max_norm / max(||g||, max_norm),   ||g|| = sqrt(sum_i ||g_i||^2)

    (Pascanu et al., "On the difficulty of training recurrent neural networks", 2013). This
    is `torch.nn.utils.clip_grad_norm_` except that torch divides by `||g|| + 1e-6`, a
    relative difference below 1e-6 / ||g||; a zero gradient stays zero.
    """
    max_norm = float(max_norm)
    if not max_norm > 0.0:
        raise ConfigError(f"clip_by_global_norm: max_norm must be > 0, got {max_norm}")

    def init(params):
        return EmptyState()

    def update(grads, state, params=None):
        g, rebuild = _tensors(grads)
        if not g:
            return grads, state
        norm = _global_norm(g)
        factor = max_norm / torch.clamp(norm, min=max_norm)
        return rebuild(_mul(g, factor)), state

    return GradientTransformation(init, update)


def trace(momentum: float, nesterov: bool = False) -> GradientTransformation:
    """Heavy-ball momentum, as in torch.optim.SGD (dampening 0):

        b_t = momentum * b_{t-1} + g_t,   b_0 = 0
        u_t = b_t                          (nesterov=False)
        u_t = g_t + momentum * b_t         (nesterov=True; Sutskever et al., ICML 2013)

    State: `TraceState(trace)`, the buffer b.
    """
    momentum = float(momentum)
    if not 0.0 <= momentum <= 1.0:
        raise ConfigError(f"trace: momentum must be in [0, 1], got {momentum}")
    if nesterov and momentum == 0.0:
        raise ConfigError("trace: nesterov momentum needs momentum > 0")

    def init(params):
        return TraceState(tree.zeros_like(params))

    def update(grads, state, params=None):
        g, rebuild, buf_prev = _tensors_like(grads, state.trace, "grads", "the optimizer state (params at init)")
        buf = _add(_mul(buf_prev, momentum), g)
        u = _add(g, buf, alpha=momentum) if nesterov else buf
        return rebuild(u), TraceState(rebuild(buf))

    return GradientTransformation(init, update)


def chain(*txs: GradientTransformation) -> GradientTransformation:
    """Apply `txs` in order, each to the updates of the one before; the state is the tuple
    of their states."""
    for i, tx in enumerate(txs):
        if not isinstance(tx, GradientTransformation):
            raise ConfigError(f"chain: argument {i} is {type(tx).__name__}, expected a GradientTransformation")

    def init(params):
        return tuple(tx.init(params) for tx in txs)

    def check(state):
        if not isinstance(state, tuple) or len(state) != len(txs):
            raise ShapeError(f"chain: expected a state tuple of {len(txs)} entries (from this chain's init), "
                             f"got {type(state).__name__} of {len(state) if isinstance(state, tuple) else '?'}")

    def update(grads, state, params=None):
        check(state)
        new_state = []
        for tx, s in zip(txs, state):
            grads, s = tx.update(grads, s, params)
            new_state.append(s)
        return grads, tuple(new_state)

    def apply(grads, state, params):
        # every transformation's update but the last, then the last one's fused apply
        check(state)
        new_state = []
        for tx, s in zip(txs[:-1], state[:-1]):
            grads, s = tx.update(grads, s, params)
            new_state.append(s)
        new_params, s = txs[-1].apply(grads, state[-1], params)
        return new_params, tuple(new_state + [s])

    return GradientTransformation(init, update, apply if txs and txs[-1].apply is not None else None)


def current_lr(opt_state: Any) -> torch.Tensor:
    """The learning rate the last update used (before the first: the first one's), a tensor.

    Reads the first `ScaleByLearningRateState` in the state (of `sgd`, `adam`, `adamw` or
    any chain with `scale_by_learning_rate`). Under vmap over an ensemble it has shape [N].
    """
    found = _find_lr(opt_state)
    if found is None:
        raise ConfigError("current_lr: the optimizer state holds no learning rate "
                          "(build the optimizer with scale_by_learning_rate, as sgd/adam/adamw do)")
    return found


def _find_lr(state: Any) -> torch.Tensor | None:
    if isinstance(state, ScaleByLearningRateState):
        return state.lr
    if isinstance(state, (ScaleByAdamState, TraceState, torch.Tensor)):
        return None  # params-shaped moments: no learning rate inside
    children = state.values() if isinstance(state, dict) else state if isinstance(state, (tuple, list)) else ()
    for child in children:
        found = _find_lr(child)
        if found is not None:
            return found
    return None


# ---------------------------------------------------------------------------------------
# Optimizers


def sgd(lr: float | Schedule, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0,
        mask: Mask = None) -> GradientTransformation:
    """Stochastic gradient descent with torch.optim.SGD's semantics (dampening 0):

        d_t = g_t + weight_decay * p_{t-1}          (coupled L2, on the masked leaves)
        b_t = momentum * b_{t-1} + d_t
        p_t = p_{t-1} - lr_t * b_t                  (or lr_t * (d_t + momentum * b_t), nesterov)

    Unlike torch's single group, weight decay applies only where `mask` says (default:
    leaves with ndim >= 2; see `add_decayed_weights`).
    """
    txs = [add_decayed_weights(weight_decay, mask)]
    if momentum != 0.0 or nesterov:
        txs.append(trace(momentum, nesterov))
    txs.append(scale_by_learning_rate(lr))
    return chain(*txs)


def adam(lr: float | Schedule, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> GradientTransformation:
    """Adam (Kingma & Ba, 2015), as torch.optim.Adam without weight decay:

        p_t = p_{t-1} - lr_t * m̂_t / (sqrt(v̂_t) + eps)      (see `scale_by_adam`)

    `apply` (see `GradientTransformation`): torch's fused Adam kernel in eager mode.
    """
    inner = chain(scale_by_adam(b1, b2, eps), scale_by_learning_rate(lr))
    return inner._replace(apply=_fused_adam_apply(inner, lr, b1, b2, eps, 0.0, None, decay_state=False))


def adamw(lr: float | Schedule, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, weight_decay: float = 1e-2,
          mask: Mask = None) -> GradientTransformation:
    """AdamW (Loshchilov & Hutter, ICLR 2019), as torch.optim.AdamW:

        p_t = p_{t-1} - lr_t * (m̂_t / (sqrt(v̂_t) + eps) + weight_decay * p_{t-1})

    on the leaves `mask` selects (default: ndim >= 2); the others take Adam's step only.
    As in torch (also under an LR scheduler), the decay is scaled by the current lr_t.

    `apply` (see `GradientTransformation`): torch's fused AdamW kernel in eager mode.
    """
    inner = chain(scale_by_adam(b1, b2, eps), add_decayed_weights(weight_decay, mask), scale_by_learning_rate(lr))
    return inner._replace(apply=_fused_adam_apply(inner, lr, b1, b2, eps, float(weight_decay), mask,
                                                  decay_state=True))


def update_and_apply(tx: GradientTransformation, grads: PyTree, state: Any, params: PyTree) -> tuple[PyTree, Any]:
    """`(new_params, new_state)`: `apply_updates(params, updates)` with `updates, new_state =
    tx.update(grads, state, params)`, through `tx.apply` when the transformation has one."""
    if tx.apply is not None:
        return tx.apply(grads, state, params)
    updates, state = tx.update(grads, state, params)
    return apply_updates(params, updates), state


def _fused_adam_apply(inner: GradientTransformation, lr: float | Schedule, b1: float, b2: float, eps: float,
                      weight_decay: float, mask: Mask, *, decay_state: bool) -> Callable:
    """The `apply` of `adam` / `adamw`: `inner` is their chain, whose state it reads and writes.

    Eagerly, on float leaves of one dtype and device, it copies params and moments once and
    runs `torch._fused_adamw_` on the copies: one pass that reads p, g, m, v and writes p, m,
    v, where the chain makes about ten (each a new tensor per leaf). The inputs are never
    written. In a traced or transformed context (torch.compile, vmap), or when a leaf
    carries autograd history (an update being differentiated), it is the chain's update
    followed by `apply_updates`. The kernel computes `p (1 - lr wd) - lr m̂ / (sqrt(v̂) + eps)`
    with `sqrt(v̂) = sqrt(v) / sqrt(1 - b2^t)`, torch.optim.AdamW(fused=True)'s arithmetic.
    """

    def apply(grads, state, params):
        if not isinstance(state, tuple) or len(state) != (3 if decay_state else 2):
            return update_and_apply(inner._replace(apply=None), grads, state, params)  # the chain's own error
        adam_s, lr_s = state[0], state[-1]
        params_flat = tree.flatten(params)
        g, rebuild, ps = _tensors_like(grads, params, "grads", "params", like_flat=params_flat)
        mu, _, _ = _tensors_like(adam_s.mu, params, "the optimizer state's mu", "params", like_flat=params_flat)
        nu, _, _ = _tensors_like(adam_s.nu, params, "the optimizer state's nu", "params", like_flat=params_flat)
        if not _fused_ok(g, ps, mu, nu, lr_s.lr):
            return update_and_apply(inner._replace(apply=None), grads, state, params)
        count = adam_s.count + 1
        value = lr(lr_s.count).to(lr_s.lr.dtype) if callable(lr) else lr_s.lr
        # The kernel walks the four tensors of a leaf as flat memory: give grads and moments
        # the layout of the param's copy (autograd may return a channels-last grad for a
        # contiguous kernel; a compiled step may hand back moments with other strides).
        new_p = [x.clone() for x in ps]
        new_mu, new_nu = ([_copy_as(x, q) for x, q in zip(xs, new_p)] for xs in (mu, nu))
        g = [x if x.stride() == q.stride() else _copy_as(x, q) for x, q in zip(g, new_p)]
        step = count.to(lr_s.lr.dtype)
        decay = ([x.ndim >= 2 for x in ps] if mask is None else _resolve_mask(mask, params)) if weight_decay \
            else [False] * len(ps)
        for wd in {weight_decay if d else 0.0 for d in decay}:
            idx = [i for i, d in enumerate(decay) if (weight_decay if d else 0.0) == wd]
            torch._fused_adamw_([new_p[i] for i in idx], [g[i] for i in idx], [new_mu[i] for i in idx],
                                [new_nu[i] for i in idx], [], [step] * len(idx), lr=value, beta1=b1, beta2=b2,
                                weight_decay=wd, eps=eps, amsgrad=False, maximize=False)
        new_adam = ScaleByAdamState(count, rebuild(new_mu), rebuild(new_nu))
        new_lr = ScaleByLearningRateState(lr_s.count + 1, value)
        return rebuild(new_p), ((new_adam, state[1], new_lr) if decay_state else (new_adam, new_lr))

    return apply


def _copy_as(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A copy of `x` with the strides of `like` (same shape; `like` dense)."""
    return x.clone() if x.stride() == like.stride() else torch.empty_like(like).copy_(x)


def _fused_ok(*lists: Any) -> bool:
    """Whether the fused Adam kernel may run: eager (not traced, not inside a torch.func
    transform), one float dtype and device type cpu/cuda for every leaf, no autograd history."""
    if not compiler.plain_eager():
        return False
    xs = [x for xs in lists for x in (xs if isinstance(xs, list) else [xs])]
    if not xs:
        return False
    dtype, device = xs[0].dtype, xs[0].device
    return (dtype in (torch.float32, torch.float64) and device.type in ("cpu", "cuda")
            and all(x.dtype == dtype and x.device == device and not x.requires_grad for x in xs))


# ---------------------------------------------------------------------------------------
# Schedules: pure `step -> value`. Formulas are written on float64 tensors, with torch.where
# and clamp instead of Python branches, so they trace under torch.compile and vmap.


def _schedule(formula: Callable[[torch.Tensor], torch.Tensor]) -> Schedule:
    """Wrap a formula over float64 step tensors into a schedule that also takes Python ints."""

    def schedule(step):
        if isinstance(step, torch.Tensor):
            return formula(step.to(torch.float64))
        return float(formula(torch.tensor(float(step), dtype=torch.float64)))

    return schedule


def _check_steps(fn: str, minimum: int = 0, **steps: int) -> None:
    for name, n in steps.items():
        if not isinstance(n, int) or isinstance(n, bool) or n < minimum:
            raise ConfigError(f"{fn}: {name} must be an int >= {minimum}, got {n!r}")


def constant_schedule(value: float) -> Schedule:
    """`lr(t) = value`."""
    value = float(value)
    return _schedule(lambda t: torch.full_like(t, value))


def linear_schedule(init_value: float, end_value: float, transition_steps: int) -> Schedule:
    """`lr(t) = init + (end - init) * min(t, T) / T`, then `end` for t >= T."""
    _check_steps("linear_schedule", 1, transition_steps=transition_steps)
    T = transition_steps
    return _schedule(lambda t: init_value + (end_value - init_value) * torch.clamp(t / T, 0.0, 1.0))


def polynomial_schedule(init_value: float, end_value: float, power: float, transition_steps: int) -> Schedule:
    """`lr(t) = end + (init - end) * (1 - min(t, T) / T)^power`; power 1 is `linear_schedule`."""
    _check_steps("polynomial_schedule", 1, transition_steps=transition_steps)
    T = transition_steps
    return _schedule(lambda t: end_value + (init_value - end_value) * (1.0 - torch.clamp(t / T, 0.0, 1.0)) ** power)


def cosine_decay_schedule(init_value: float, decay_steps: int, end_value: float = 0.0) -> Schedule:
    """Cosine annealing (Loshchilov & Hutter, "SGDR", ICLR 2017), without restarts:

        lr(t) = end + (init - end) * (1 + cos(pi * min(t, D) / D)) / 2
    """
    _check_steps("cosine_decay_schedule", 1, decay_steps=decay_steps)
    D = decay_steps

    def formula(t):
        progress = torch.clamp(t / D, 0.0, 1.0)
        return end_value + (init_value - end_value) * 0.5 * (1.0 + torch.cos(math.pi * progress))

    return _schedule(formula)


def warmup_cosine_decay_schedule(init_value: float, peak_value: float, warmup_steps: int, decay_steps: int,
                                 end_value: float = 0.0) -> Schedule:
    """Linear warmup to `peak_value`, then cosine decay to `end_value` (as optax's).

    `decay_steps` D is the length of the whole schedule, warmup W included:

        lr(t) = init + (peak - init) * t / W                                 t < W
        lr(t) = end + (peak - end) * (1 + cos(pi * (t - W) / (D - W))) / 2   W <= t <= D
        lr(t) = end                                                          t > D
    """
    _check_steps("warmup_cosine_decay_schedule", warmup_steps=warmup_steps, decay_steps=decay_steps)
    if decay_steps < warmup_steps:
        raise ConfigError(f"warmup_cosine_decay_schedule: decay_steps ({decay_steps}) is the total length, "
                          f"warmup included, and must be >= warmup_steps ({warmup_steps})")
    W, L = warmup_steps, max(decay_steps - warmup_steps, 1)

    def formula(t):
        warm = init_value + (peak_value - init_value) * t / max(W, 1)
        progress = torch.clamp((t - W) / L, 0.0, 1.0)
        decay = end_value + (peak_value - end_value) * 0.5 * (1.0 + torch.cos(math.pi * progress))
        return torch.where(t < W, warm, decay)

    return _schedule(formula)


def warmup_linear_decay_schedule(init_value: float, peak_value: float, warmup_steps: int, decay_steps: int,
                                 end_value: float = 0.0) -> Schedule:
    """Linear warmup to `peak_value`, then linear decay to `end_value`; D = total length:

        lr(t) = init + (peak - init) * t / W                   t < W
        lr(t) = peak + (end - peak) * min(t - W, D - W) / (D - W)   t >= W
    """
    _check_steps("warmup_linear_decay_schedule", warmup_steps=warmup_steps, decay_steps=decay_steps)
    if decay_steps < warmup_steps:
        raise ConfigError(f"warmup_linear_decay_schedule: decay_steps ({decay_steps}) is the total length, "
                          f"warmup included, and must be >= warmup_steps ({warmup_steps})")
    W, L = warmup_steps, max(decay_steps - warmup_steps, 1)

    def formula(t):
        warm = init_value + (peak_value - init_value) * t / max(W, 1)
        decay = peak_value + (end_value - peak_value) * torch.clamp((t - W) / L, 0.0, 1.0)
        return torch.where(t < W, warm, decay)

    return _schedule(formula)


def join_schedules(schedules: Sequence[Schedule], boundaries: Sequence[int]) -> Schedule:
    """Run `schedules[0]` until `boundaries[0]`, then `schedules[1]` (restarted at step 0),
    and so on: for `b_{i-1} <= t < b_i`, `lr(t) = schedules[i](t - b_{i-1})`.
    """
    schedules, boundaries = list(schedules), list(boundaries)
    if len(schedules) != len(boundaries) + 1:
        raise ConfigError(f"join_schedules: need one more schedule than boundaries, "
                          f"got {len(schedules)} schedules and {len(boundaries)} boundaries")
    _check_steps("join_schedules", **{f"boundaries[{i}]": b for i, b in enumerate(boundaries)})
    if boundaries != sorted(boundaries):
        raise ConfigError(f"join_schedules: boundaries must be increasing, got {boundaries}")

    def formula(t):
        value = schedules[0](t)
        for b, s in zip(boundaries, schedules[1:]):
            value = torch.where(t >= b, s(t - b), value)
        return value

    return _schedule(formula)
