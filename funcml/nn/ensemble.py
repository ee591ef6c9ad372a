"""Ensembles of models and per-example gradients, by `torch.func.vmap` over pytrees.

    keys = random.split(key, 5)                                         # [N=5, 2]
    params, state = init_ensemble(init_mlp, keys, cfg)                  # every leaf [5, ...]
    out, state = apply_ensemble(apply_mlp, params, state, x, cfg, keys=step_keys, train=True)  # out [5, B, ...]

    grad_fn = ensemble_grad_and_value(loss_fn, args_in_dims=(0, None, 0))   # (state, batch, keys)
    grads, loss = grad_fn(params, state, batch, step_keys)              # grads [5, ...], loss [5]

    g = per_example_grads(loss_fn, params, (x, y))                      # every leaf [B, ...]

An ensemble is one pytree whose leaves carry a leading member dim `N` (`funcml.tree.stack`
of N members; `funcml.tree.unstack` gives them back), so a whole ensemble trains in one
vmapped step. Members draw their randomness from their own key (row `i` of `keys [N, 2]`),
so dropout masks are independent across members, and member `i` computes exactly what a
single model with key `keys[i]` would. vmap runs with `randomness="error"`: a model that
reaches for torch's global RNG fails loudly instead of sharing one stream across members.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch.func import grad, grad_and_value, vmap

from .. import tree
from ..errors import ConfigError, PRNGKeyError, ShapeError

__all__ = ["init_ensemble", "apply_ensemble", "ensemble_grad_and_value", "per_example_grads"]

PyTree = Any


def _check_keys(keys: Any, name: str = "keys") -> int:
    if not isinstance(keys, torch.Tensor) or keys.dtype != torch.int64 or keys.dim() != 2 or keys.shape[1] != 2:
        got = f"{keys.dtype} {list(keys.shape)}" if isinstance(keys, torch.Tensor) else type(keys).__name__
        raise PRNGKeyError(f"{name}: expected a batch of PRNG keys, int64 [N, 2] "
                           f"(e.g. funcml.random.split(key, N)), got {got}")
    return int(keys.shape[0])


def _leading_dim(t: PyTree, name: str) -> int | None:
    sizes = {}
    for leaf_name, x in tree.flatten_with_names(t).items():
        if isinstance(x, torch.Tensor):
            if x.dim() == 0:
                raise ShapeError(f"{name}.{leaf_name}: expected a leading {name} dim, got a scalar")
            sizes.setdefault(int(x.shape[0]), leaf_name)
    if len(sizes) > 1:
        detail = ", ".join(f"{n} (e.g. {leaf})" for n, leaf in sizes.items())
        raise ShapeError(f"{name}: leaves disagree on the leading dim: {detail}")
    return next(iter(sizes), None)


def _materialize(t: PyTree) -> PyTree:
    # vmap broadcasts outputs that do not depend on the key (BatchNorm's ones and zeros) with
    # `expand`, i.e. N views of one storage; give every member its own memory.
    return tree.tree_map(lambda x: x.contiguous() if isinstance(x, torch.Tensor) else x, t)


def init_ensemble(init_fn: Callable[[torch.Tensor, Any], tuple[PyTree, PyTree]], keys: torch.Tensor, cfg: Any, *,
                  method: str = "vmap") -> tuple[PyTree, PyTree]:
    """Initialize `N` members, one per key, as stacked `(params, state)`.

    Arguments:
        init_fn: `init(key, cfg) -> (params, state)` of the model contract.
        keys: `[N, 2]` int64, one key per member.
        cfg: the model config (shared by all members).
        method: "vmap" (default) traces `init_fn` once with `torch.func.vmap` over the keys:
            funcml's initializers are plain tensor ops on the key, so this works and gives
            the same values as initializing the members one by one. "loop" calls `init_fn`
            per key and `funcml.tree.stack`s the results: the fallback for an init that vmap
            cannot trace (one that reads values with `.item()` or branches on them).

    Returns: `(params, state)` with every leaf `[N, *leaf_shape]`, each member in its own memory.
    """
    n = _check_keys(keys)
    if method == "vmap":
        params, state = vmap(lambda k: init_fn(k, cfg), randomness="error")(keys)
        return _materialize(params), _materialize(state)
    if method == "loop":
        members = [init_fn(keys[i], cfg) for i in range(n)]
        return tree.stack([m[0] for m in members]), tree.stack([m[1] for m in members])
    raise ConfigError(f"init_ensemble: method must be 'vmap' or 'loop', got {method!r}")


def apply_ensemble(apply_fn: Callable[..., tuple[Any, PyTree]], params: PyTree, state: PyTree, x: Any, cfg: Any, *,
                   keys: torch.Tensor | None = None, train: bool = False,
                   in_dims_x: int | None | PyTree = None) -> tuple[Any, PyTree]:
    """Run every member on its inputs: `out[i], state[i] = apply_fn(params[i], state[i], x(i), cfg,
    key=keys[i], train=train)`.

    Arguments:
        apply_fn: `apply(params, state, x, cfg, *, key, train) -> (out, state)`.
        params, state: stacked members, every leaf `[N, ...]` (from `init_ensemble`).
        x: the inputs; shared by all members when `in_dims_x` is None (default), or one per
            member along dim `in_dims_x` (e.g. `x: [N, B, ...]` with `in_dims_x=0`); a pytree
            of in-dims is accepted for a pytree `x`, as in `torch.func.vmap`.
        keys: `[N, 2]` int64, one key per member (independent dropout), or None.
        train: passed to every member.

    Returns: `(out, state)` with a leading member dim `N` on every leaf.
    """
    n = _leading_dim(params, "params")
    if n is None:
        raise ShapeError("apply_ensemble: params has no tensor leaves, so there is no member dim to map over")
    if keys is not None:
        nk = _check_keys(keys)
        if nk != n:
            raise PRNGKeyError(f"apply_ensemble: keys has {nk} rows but the ensemble has {n} members; "
                               f"pass one key per member (random.split(key, {n}))")

    def member(p, s, xi, k):
        return apply_fn(p, s, xi, cfg, key=k, train=train)

    return vmap(member, in_dims=(0, 0, in_dims_x, None if keys is None else 0), randomness="error")(
        params, state, x, keys)


def ensemble_grad_and_value(loss_fn: Callable[..., Any], *, args_in_dims: tuple[int | None, ...],
                            has_aux: bool = False) -> Callable[..., tuple[PyTree, Any]]:
    """Build `f(params, *args) -> (grads, value)`, the gradient of every member's own loss.

    Arguments:
        loss_fn: `loss_fn(params, *args) -> loss` (a scalar), or `-> (loss, aux)` with `has_aux`.
        args_in_dims: one entry per argument after `params`: 0 when the argument is per member
            (model state, keys `[N, 2]`, per-member batches), None when it is shared by all
            members (a common batch). Required, because getting it wrong silently shares
            dropout keys or data across members.
        has_aux: as in `torch.func.grad_and_value`.

    Returns: a function of stacked `params` (leaves `[N, ...]`) returning
        `grads` (params-shaped, leaves `[N, ...]`, `grads[i] = d loss_i / d params[i]`) and
        `value` = `loss [N]`, or `(loss [N], aux)` with a leading `N` on aux's leaves:
        the layout of `torch.func.grad_and_value`, one row per member.
    """
    dims = tuple(args_in_dims)
    per_member = vmap(grad_and_value(loss_fn, has_aux=has_aux), in_dims=(0, *dims), randomness="error")

    def grad_fn(params: PyTree, *args: Any) -> tuple[PyTree, Any]:
        if len(args) != len(dims):
            raise ConfigError(f"ensemble_grad_and_value: got {len(args)} argument(s) after params but "
                              f"args_in_dims={dims} describes {len(dims)}")
        return per_member(params, *args)

    return grad_fn


def per_example_grads(loss_fn: Callable[[PyTree, PyTree], Any], params: PyTree, batch: PyTree, *,
                      has_aux: bool = False, keep_batch_dim: bool = True) -> PyTree:
    """The gradient of the loss of each example on its own, for all examples at once.

    `g[b] = d loss_fn(params, batch[b:b+1]) / d params`, computed as
    `vmap(grad(loss_fn), in_dims=(None, 0))` (Goodfellow, 2015, "Efficient per-example
    gradient computations"; the torch.func recipe): `params` are shared, the batch is split
    along its leading dim, and each example is handed to `loss_fn` as a batch of one.

    Arguments:
        loss_fn: `loss_fn(params, batch) -> loss` (a scalar), written for an ordinary batch,
            or `-> (loss, aux)` with `has_aux`.
        params: the parameter pytree (not stacked).
        batch: a pytree whose tensor leaves all have the leading batch dim `B`.
        keep_batch_dim: if True (default), each example reaches `loss_fn` with a batch dim of
            1 (`x[b:b+1]`), so a model that checks `[B, ...]` inputs works unchanged. If
            False, it reaches `loss_fn` without it (`x[b]`), e.g. when the batch holds
            per-example keys `[B, 2]` that must arrive as keys `[2]`.

    Returns: a params-shaped tree whose every leaf is `[B, *param_shape]`; with `has_aux`,
        `(grads, aux)` with a leading `B` on aux's leaves. With a mean-reduced loss,
        `mean_b g[b]` is the gradient of the loss of the whole batch.

    A model whose output for one example depends on the others (BatchNorm in train mode)
    has no per-example gradient: call it with `train=False` inside `loss_fn`.
    """
    if _leading_dim(batch, "batch") is None:
        raise ShapeError("per_example_grads: batch has no tensor leaves to split into examples")

    def one_example(p: PyTree, example: PyTree) -> Any:
        if keep_batch_dim:
            example = tree.tree_map(lambda t: t.unsqueeze(0) if isinstance(t, torch.Tensor) else t, example)
        return loss_fn(p, example)

    return vmap(grad(one_example, has_aux=has_aux), in_dims=(None, 0), randomness="error")(params, batch)
