"""The train state: one pytree holding everything a training run changes."""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple

import torch

from .. import checkpoint_format as fmt
from ..optim import ApplyIfFiniteState
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

    def checkpoint_parts(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """What a checkpoint stores (`funcml.checkpoint_format`): the trees `params`,
        `model_state`, `opt_state`, and the meta entries `step`, `key`, `loss_scale`."""
        loss_scale = fmt.named_scalars(self.loss_scale) if self.loss_scale is not None else None
        return ({"params": self.params, "model_state": self.model_state, "opt_state": self.opt_state},
                {"step": int(self.step), "key": fmt.scalar_or_list(self.key), "loss_scale": loss_scale})

    def checkpoint_template(self, meta: Mapping[str, Any], stored: Mapping[str, list[str]]) -> fmt.Template:
        """How a checkpoint is read back into a TrainState shaped like this one (`self` is `like`):
        the trees to check, the differences in the key and loss scale, and the assembly."""
        like, migrate = _bare_opt_state(self, stored.get("opt_state", []))
        return fmt.Template({"params": like.params, "model_state": like.model_state, "opt_state": like.opt_state},
                            _meta_problems(meta, like), lambda trees, meta, device: migrate(
                                _assemble(like, trees, meta, device)))


def _meta_problems(meta: Mapping[str, Any], like: TrainState) -> list[str]:
    """Differences in the parts of the state kept in meta.json: the key and the loss scale."""
    out = []
    if "key" not in meta:
        return ["meta.json: no 'key' entry (the checkpoint was not written from a TrainState)"]
    key_shape = list(torch.tensor(meta["key"]).shape)
    if isinstance(like.key, torch.Tensor) and key_shape != list(like.key.shape):
        out.append(f"meta.json: the key has shape {key_shape} in the checkpoint, {list(like.key.shape)} in `like`")
    stored, wanted = meta.get("loss_scale"), like.loss_scale
    if stored is None and wanted is not None:
        out.append("meta.json: `like` has a loss_scale (fp16 training) but the checkpoint has none")
    elif stored is not None and wanted is None:
        out.append("meta.json: the checkpoint has a loss_scale (fp16 training) but `like` has none")
    elif stored is not None:
        got = {n: (list(torch.tensor(v["value"]).shape), v["dtype"]) for n, v in stored.items()}
        out += fmt.mismatches("meta.json loss_scale", got, fmt.tensor_leaves(wanted, "like.loss_scale"))
    return out


def _assemble(like: TrainState, trees: Mapping[str, Any], meta: Mapping[str, Any], device: torch.device) -> TrainState:
    """A TrainState in `like`'s structure from the loaded trees and meta.json's entries."""
    def as_like(value: Any, ref: Any) -> Any:
        if isinstance(ref, torch.Tensor):
            return torch.tensor(value, dtype=ref.dtype, device=device)
        return type(ref)(value) if ref is not None else value

    loss_scale = None
    if like.loss_scale is not None:
        loss_scale = fmt.from_named_scalars(meta["loss_scale"], like.loss_scale, device)
    return like._replace(step=as_like(meta["step"], like.step), key=as_like(meta["key"], like.key),
                         loss_scale=loss_scale, params=trees["params"], model_state=trees["model_state"],
                         opt_state=trees["opt_state"])


def _bare_opt_state(like: TrainState, stored: list[str]) -> tuple[TrainState, Any]:
    """`like` to check a checkpoint against, and a function that brings the restored state to `like`'s form.

    Checkpoints written before the train step ran its optimizer inside `optim.apply_if_finite`
    hold the bare optimizer state: names such as `0.mu.w` where `like` (from
    `init_train_state`) has `inner_state.0.mu.w` and the three counters. Such a checkpoint is
    read into `like.opt_state.inner_state`, and the counters start at zero (no step of that
    run is known to have been skipped). `stored`: the names of the stored opt_state leaves.
    """
    fields = set(ApplyIfFiniteState._fields)
    if not isinstance(like.opt_state, ApplyIfFiniteState) or any(n.split(".", 1)[0] in fields for n in stored):
        return like, lambda ts: ts
    counters = like.opt_state

    def wrap(ts: TrainState) -> TrainState:
        dev = ts.key.device if isinstance(ts.key, torch.Tensor) else None
        zero = torch.zeros((), dtype=counters.notfinite_count.dtype, device=dev)
        return ts._replace(opt_state=ApplyIfFiniteState(zero, torch.ones((), dtype=torch.bool, device=dev),
                                                        zero.clone(), ts.opt_state))

    return like._replace(opt_state=counters.inner_state), wrap
