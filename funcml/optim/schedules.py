"""Schedules: pure `step -> value`. Formulas are written on float64 tensors, with torch.where and
clamp instead of Python branches, so they trace under torch.compile and vmap."""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from ..errors import ConfigError
from .base import Schedule

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
    return _warmup_then(init_value, peak_value, warmup_steps,
                        cosine_decay_schedule(peak_value, max(decay_steps - warmup_steps, 1), end_value))


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
    return _warmup_then(init_value, peak_value, warmup_steps,
                        linear_schedule(peak_value, end_value, max(decay_steps - warmup_steps, 1)))


def _warmup_then(init_value: float, peak_value: float, warmup_steps: int, after: Schedule) -> Schedule:
    """Linear warmup from `init_value` to `peak_value` over `warmup_steps`, then `after` restarted at 0."""
    return join_schedules([linear_schedule(init_value, peak_value, max(warmup_steps, 1)), after], [warmup_steps])


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
