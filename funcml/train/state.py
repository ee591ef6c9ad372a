"""The train state: one pytree holding everything a training run changes."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

__all__ = ["TrainState", "LossScaleState"]


class LossScaleState(NamedTuple):
    """Dynamic loss scaling for fp16 (Micikevicius et al., 2018).

    scale: float32 scalar, the current factor the loss is multiplied by.
    good_steps: int64 scalar, finite steps since the scale last changed; after
        `growth_interval` of them the scale doubles, and any overflow halves it.
    """

    scale: torch.Tensor
    good_steps: torch.Tensor


class TrainState(NamedTuple):
    """`step, params, model_state, opt_state, key` (+ `loss_scale` for fp16), all tensors.

    step: int64 scalar; the step key is `random.fold_in(key, step)`, so a run resumed from
        a checkpoint replays exactly the same randomness.
    params: the model's parameter pytree (float32 master weights).
    model_state: non-trained model state (e.g. BatchNorm running statistics), maybe `{}`.
    opt_state: the optimizer's state pytree (NamedTuples of tensors).
    key: the run's root PRNG key, int64 `[2]`; never advanced, only folded with the step.
    loss_scale: `LossScaleState` under fp16, else None.
    """

    step: torch.Tensor
    params: Any
    model_state: Any
    opt_state: Any
    key: torch.Tensor
    loss_scale: LossScaleState | None = None
