"""Transformations: each writes one equation of an optimizer (optax's `transform` module)."""

from __future__ import annotations

from typing import Any

import torch

from .. import tree
from ..errors import ConfigError, ShapeError
from ._foreach import _add, _addcmul, _div, _fresh_add_scalar, _fresh_div, _lerp, _mul, _sqrt
from .base import (EmptyState, GradientTransformation, Mask, Schedule, ScaleByAdamState, ScaleByLearningRateState,
                   ScaleByScheduleState, TraceState, _global_norm, _resolve_mask, _scalar_dtype, _tensors,
                   _tensors_like, _zero_count)

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
