"""Optimizers built from the transformations (optax's `alias` module): sgd, adam, adamw, and the
fused eager apply of adam / adamw."""

from __future__ import annotations

from typing import Any, Callable

from .. import _eager, tree
from .base import (GradientTransformation, Mask, PyTree, Schedule, ScaleByAdamState, ScaleByLearningRateState,
                   _resolve_mask, _tensors_like, apply_updates)
from .transforms import add_decayed_weights, chain, scale_by_adam, scale_by_learning_rate, trace

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

    Eagerly, on float leaves of one dtype and device, it is `funcml._eager.adamw`: torch's fused
    AdamW kernel on copies of params and moments, one pass where the chain makes about ten ops
    per leaf; the inputs are never written. In a traced or transformed context (torch.compile,
    vmap), or when a leaf carries autograd history (an update being differentiated), it is the
    chain's update followed by `apply_updates`. Both compute
    `p (1 - lr wd) - lr m̂ / (sqrt(v̂) + eps)` with `sqrt(v̂) = sqrt(v) / sqrt(1 - b2^t)`,
    torch.optim.AdamW(fused=True)'s arithmetic.
    """

    def apply(grads, state, params):
        if not isinstance(state, tuple) or len(state) != (3 if decay_state else 2):
            return update_and_apply(inner._replace(apply=None), grads, state, params)  # the chain's own error
        adam_s, lr_s = state[0], state[-1]
        params_flat = tree.flatten(params)
        g, rebuild, ps = _tensors_like(grads, params, "grads", "params", like_flat=params_flat)
        mu, _, _ = _tensors_like(adam_s.mu, params, "the optimizer state's mu", "params", like_flat=params_flat)
        nu, _, _ = _tensors_like(adam_s.nu, params, "the optimizer state's nu", "params", like_flat=params_flat)
        if not _eager.adamw_applies(g, ps, mu, nu, lr_s.lr):
            return update_and_apply(inner._replace(apply=None), grads, state, params)
        count = adam_s.count + 1
        value = lr(lr_s.count).to(lr_s.lr.dtype) if callable(lr) else lr_s.lr
        decay = ([x.ndim >= 2 for x in ps] if mask is None else _resolve_mask(mask, params)) if weight_decay \
            else [False] * len(ps)
        new_p, new_mu, new_nu = _eager.adamw(ps, g, mu, nu, count.to(lr_s.lr.dtype), lr=value, b1=b1, b2=b2,
                                             eps=eps, weight_decay=[weight_decay if d else 0.0 for d in decay])
        new_adam = ScaleByAdamState(count, rebuild(new_mu), rebuild(new_nu))
        new_lr = ScaleByLearningRateState(lr_s.count + 1, value)
        return rebuild(new_p), ((new_adam, state[1], new_lr) if decay_state else (new_adam, new_lr))

    return apply
