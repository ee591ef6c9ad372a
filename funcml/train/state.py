"""The train state: one pytree holding everything a training run changes."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from .loss_scale import LossScaleState

__all__ = ["TrainState", "LossScaleState"]


class TrainState(NamedTuple):
    """`step, params, model_state, opt_state, key` (+ `loss_scale` for fp16), all tensors.

    step: int64 scalar; the step key is `random.fold_in(key, step)`, so a run resumed from
        a checkpoint replays exactly the same randomness.
    params: the model's parameter pytree (float32 master weights).
    model_state: non-trained model state (e.g. BatchNorm running statistics), maybe `{}`.
    opt_state: the optimizer's state pytree (NamedTuples of tensors); from `init_train_state`,
        an `optim.ApplyIfFiniteState` around the optimizer's own state, which counts the steps
        skipped as non-finite (`total_notfinite`).
    key: the run's root PRNG key, int64 `[2]`; never advanced, only folded with the step.
    loss_scale: `LossScaleState` under fp16 (`funcml.train.loss_scale`), else None.
    """

    step: torch.Tensor
    params: Any
    model_state: Any
    opt_state: Any
    key: torch.Tensor
    loss_scale: LossScaleState | None = None
