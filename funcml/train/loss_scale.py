"""Dynamic loss scaling for fp16 training (Micikevicius et al., "Mixed Precision Training", 2018).

fp16 gradients underflow to 0 below ~6e-8; multiplying the loss by a large factor S before
differentiation shifts them into range, and dividing the gradients by S after restores them:

    g = grad(S * loss) / S
    S <- S / 2 (at least 1)   on a step whose gradients overflow (that update is skipped)
    S <- 2 S                  after `growth_interval` finite steps in a row

The state is `LossScaleState(scale, good_steps)`, kept in `TrainState.loss_scale` (so a
resumed run continues with the scale it had); every function here is pure and branch-free.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from .. import tree

__all__ = ["LossScaleState", "init_loss_scale", "unscale_grads", "update_loss_scale"]


class LossScaleState(NamedTuple):
    """Dynamic loss scaling for fp16 (Micikevicius et al., 2018).

    scale: float32 scalar, the current factor the loss is multiplied by.
    good_steps: int64 scalar, finite steps since the scale last changed; after
        `growth_interval` of them the scale doubles, and any overflow halves it.
    """

    scale: torch.Tensor
    good_steps: torch.Tensor


def init_loss_scale(scale: float = 2.0**15, *, device: torch.device | str | None = None) -> LossScaleState:
    """A fresh `LossScaleState`: `scale` (float32) and no good steps yet, on `device`."""
    return LossScaleState(torch.tensor(float(scale), dtype=torch.float32, device=device),
                          torch.zeros((), dtype=torch.int64, device=device))


def unscale_grads(grads: Any, state: LossScaleState) -> Any:
    """`g / S` leaf by leaf: the gradients of the unscaled loss."""
    return tree.tree_map(lambda g: g / state.scale, grads)


def update_loss_scale(state: LossScaleState, finite: torch.Tensor, growth_interval: int) -> LossScaleState:
    """The next scale after a step whose gradients were `finite` (a bool scalar tensor).

    finite, `good_steps + 1 >= growth_interval`: `S <- 2 S`, `good_steps <- 0`;
    finite otherwise: `good_steps <- good_steps + 1`; not finite: `S <- max(S / 2, 1)`, `good_steps <- 0`.
    """
    grow = finite & (state.good_steps + 1 >= growth_interval)
    scale = torch.where(finite, torch.where(grow, state.scale * 2, state.scale), torch.clamp(state.scale / 2, min=1.0))
    good = torch.where(finite & ~grow, state.good_steps + 1, torch.zeros_like(state.good_steps))
    return LossScaleState(scale, good)
