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

Layout (optax's): `base` (the transformation type, states, tree helpers), `transforms` (one
equation each), `wrappers` (transformations of a transformation: `apply_if_finite` skips and
counts non-finite updates, `multi_steps` accumulates gradients over calls), `aliases` (sgd,
adam, adamw), `schedules`; `_foreach` holds the eager list kernels.
"""

from __future__ import annotations

from .aliases import adam, adamw, sgd, update_and_apply
from .base import (EmptyState, GradientTransformation, Schedule, ScaleByAdamState, ScaleByLearningRateState,
                   ScaleByScheduleState, TraceState, apply_updates, decay_mask, global_norm)
from .schedules import (constant_schedule, cosine_decay_schedule, join_schedules, linear_schedule,
                        polynomial_schedule, warmup_cosine_decay_schedule, warmup_linear_decay_schedule)
from .transforms import (add_decayed_weights, chain, clip_by_global_norm, current_lr, identity, scale, scale_by_adam,
                         scale_by_learning_rate, scale_by_schedule, trace)
from .wrappers import ApplyIfFiniteState, MultiStepsState, apply_if_finite, multi_steps

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
    # wrappers
    "apply_if_finite",
    "ApplyIfFiniteState",
    "multi_steps",
    "MultiStepsState",
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
