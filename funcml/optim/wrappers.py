"""Wrappers: transformations that take a transformation (optax's `apply_if_finite`, `MultiSteps`).

    tx = apply_if_finite(adamw(3e-4))              # a NaN/Inf update is skipped and counted
    tx = multi_steps(adamw(3e-4), every_k=4)       # one update every 4 calls, on the mean gradient

Both keep their bookkeeping in their state, as tensors, so it is checkpointed with the
optimizer and a resumed run goes on counting where it stopped; both are branch-free
(`where` on a flag, no data-dependent Python control flow), so they trace into one graph.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from .. import compiler, tree
from ..errors import ConfigError
from .aliases import update_and_apply
from .base import GradientTransformation, PyTree, _device, _global_norm, _tensors


class ApplyIfFiniteState(NamedTuple):
    """The state of `apply_if_finite` (optax's `ApplyIfFiniteState`, same fields).

    notfinite_count: int64 scalar, non-finite updates in a row (0 after a finite one).
    last_finite: bool scalar, whether the last update was finite.
    total_notfinite: int64 scalar, non-finite updates since `init`; never reset.
    inner_state: the wrapped transformation's state.
    """

    notfinite_count: torch.Tensor
    last_finite: torch.Tensor
    total_notfinite: torch.Tensor
    inner_state: Any


class MultiStepsState(NamedTuple):
    """The state of `multi_steps` (optax's `MultiStepsState`, without `skip_state`).

    mini_step: int64 scalar, calls since the last emitted update, in `[0, every_k)`.
    gradient_step: int64 scalar, updates emitted so far.
    inner_state: the wrapped transformation's state (it changes only when an update is emitted).
    acc_grads: the running mean of the gradients of this round, like params.
    """

    mini_step: torch.Tensor
    gradient_step: torch.Tensor
    inner_state: Any
    acc_grads: PyTree


def _acc_dtype(p: torch.Tensor) -> torch.dtype:
    """The accumulator's dtype: float64 for float64 params, float32 otherwise (bf16/fp16 grads too)."""
    return torch.float64 if p.dtype == torch.float64 else torch.float32


def _select(flag: torch.Tensor, new: Any, old: Any) -> Any:
    """`where(flag, new, old)` leaf by leaf (a NaN in the unselected branch does not leak)."""
    return tree.tree_map(lambda n, o: torch.where(flag, n, o), new, old)


def apply_if_finite(inner: GradientTransformation, max_consecutive_errors: int | None = None
                    ) -> GradientTransformation:
    """Skip updates whose gradients hold a NaN or an Inf, and count them in the state.

    With `finite = isfinite(||g||_2)` (a NaN or Inf anywhere makes the global norm non-finite,
    and so does a norm beyond float32's range) and `n` the non-finite updates in a row
    including this one:

        accept = finite or n > max_consecutive_errors
        u, s_inner = inner.update(g, s_inner)  if accept  else  0, s_inner (unchanged)

    optax's semantics: after more than `max_consecutive_errors` non-finite updates in a row
    the wrapper gives up and lets the update through. `None` (the default, which optax does
    not have) never gives up: a non-finite update is never applied. The state is
    `ApplyIfFiniteState(notfinite_count, last_finite, total_notfinite, inner_state)`.

    `update` and `apply` take an optional keyword `finite`: a bool scalar the caller computed
    already, used instead of `isfinite(||g||)`. The train step passes
    `isfinite(loss) & isfinite(||g||)`, so that a NaN loss with finite gradients is skipped too
    and the global norm it logs is not computed twice. `apply` (the fused path of `inner`,
    e.g. AdamW's) writes `where(accept, new, old)` per leaf, except eagerly on an accepted
    update, which keeps the new values as they are (bit-identical, no extra pass).
    """
    if max_consecutive_errors is not None and (isinstance(max_consecutive_errors, bool)
                                               or not isinstance(max_consecutive_errors, int)
                                               or max_consecutive_errors < 0):
        raise ConfigError(f"apply_if_finite: max_consecutive_errors must be an int >= 0 or None, "
                          f"got {max_consecutive_errors!r}")

    def init(params):
        dev = _device(_tensors(params)[0])
        zero = torch.zeros((), dtype=torch.int64, device=dev)
        return ApplyIfFiniteState(zero, torch.ones((), dtype=torch.bool, device=dev), zero.clone(),
                                  inner.init(params))

    def decide(grads, state, finite):
        if finite is None:
            finite = torch.isfinite(_global_norm(_tensors(grads)[0]))
        finite = finite.to(device=state.notfinite_count.device)
        count = torch.where(finite, torch.zeros_like(state.notfinite_count), state.notfinite_count + 1)
        accept = finite if max_consecutive_errors is None else finite | (count > max_consecutive_errors)
        total = state.total_notfinite + (~finite).to(state.total_notfinite.dtype)
        return accept, lambda inner_state: ApplyIfFiniteState(count, finite, total, inner_state)

    def update(grads, state, params=None, *, finite=None):
        accept, new_state = decide(grads, state, finite)
        updates, inner_state = inner.update(grads, state.inner_state, params)
        updates = tree.tree_map(lambda u: torch.where(accept, u, torch.zeros_like(u)), updates)
        return updates, new_state(_select(accept, inner_state, state.inner_state))

    def apply(grads, state, params, *, finite=None):
        accept, new_state = decide(grads, state, finite)
        new_params, inner_state = update_and_apply(inner, grads, state.inner_state, params)
        if compiler.plain_eager() and accept.device.type == "cpu" and bool(accept):
            return new_params, new_state(inner_state)  # the host reads the flag: no `where` per leaf (on a GPU
            # the read would wait for the step each time, so the selects run there)
        return _select(accept, new_params, params), new_state(_select(accept, inner_state, state.inner_state))

    return GradientTransformation(init, update, apply)


def multi_steps(inner: GradientTransformation, every_k: int) -> GradientTransformation:
    """Accumulate gradients over `every_k` calls and update once (optax's `MultiSteps`).

    Call t (from 0) adds its gradient to the round's running mean (Welford's form, optax's):

        a <- a + (g_t - a) / (m + 1),   m = t mod every_k
        u_t = inner.update(a) if m = every_k - 1 (then a <- 0)  else  0 (inner state unchanged)

    so the emitted update is the inner transformation's on the mean gradient of the last
    `every_k` calls: a batch `every_k` times larger than fits in one call. Every call returns
    updates (zeros in between), so `apply_updates` stays the same. A train step that splits
    one batch into micro-batches inside one call is `make_train_step(..., grad_accum=k)`;
    this wrapper accumulates across calls (and across `ts.step`s, each with its own key).
    """
    if isinstance(every_k, bool) or not isinstance(every_k, int) or every_k < 1:
        raise ConfigError(f"multi_steps: every_k must be an int >= 1, got {every_k!r}")

    def init(params):
        dev = _device(_tensors(params)[0])
        zero = torch.zeros((), dtype=torch.int64, device=dev)
        return MultiStepsState(zero, zero.clone(), inner.init(params),
                               tree.tree_map(lambda p: torch.zeros_like(p, dtype=_acc_dtype(p)), params))

    def update(grads, state, params=None):
        m = state.mini_step
        acc = tree.tree_map(lambda g, a: a + (g.to(a.dtype) - a) / (m + 1).to(a.dtype), grads, state.acc_grads)
        updates, inner_state = inner.update(tree.tree_map(lambda a, g: a.to(g.dtype), acc, grads),
                                            state.inner_state, params)
        emit = m == every_k - 1
        updates = tree.tree_map(lambda u: torch.where(emit, u, torch.zeros_like(u)), updates)
        return updates, MultiStepsState(
            torch.where(emit, torch.zeros_like(m), m + 1),
            state.gradient_step + emit.to(state.gradient_step.dtype),
            _select(emit, inner_state, state.inner_state),
            tree.tree_map(lambda a: torch.where(emit, torch.zeros_like(a), a), acc))

    return GradientTransformation(init, update)
