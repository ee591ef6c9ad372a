"""The eager fast paths, in one place (private).

Each function here is a drop-in for reference math written elsewhere as plain equations, with
that reference's signature and its numbers (bit for bit, or equal to float rounding where a
fused kernel sums in another order; tests compare the two through `compiler.reference_mode`):

    grad_and_value(f)                   torch.func.grad_and_value(f, has_aux=True)   (train/step.py)
    batch_norm_train(params, state, x)  nn.norm.batch_norm(..., train=True)          (nn/norm.py)
    adamw(...)                          optim.adamw's chain + apply_updates          (optim/aliases.py)
    fold_in(k, hi, lo)                  random.fold_in's Threefry block on tensors   (random.py)

They exist because the main jobs run eager on 2 CPU cores, where functorch's interpreter, ten
small ops per BatchNorm layer, a chain of per-leaf optimizer ops and ~100 tiny tensor ops per
key each cost measurable time (benchmarks/RESULTS.md, "Performance work: before and after" and
"Measurements behind the presets and design choices"). A caller takes one only when its
`*_applies` condition holds, and every condition starts with `compiler.plain_eager(path)`: not
traced by torch.compile, not inside a torch.func transform, not switched off by
`compiler.reference_mode(path)`. Traced, transformed and switched-off calls run the reference.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from . import compiler, tree
from . import random as _random  # a cycle resolved at call time: random imports this module

__all__: list[str] = []  # private: the readable modules call these


# ------------------------------------------------------------------------ gradients ("grad")


def grad_applies(params: Any) -> bool:
    """Plain eager, and params not part of an outer autograd graph (an update being differentiated)."""
    if not compiler.plain_eager("grad"):
        return False
    return not any(x.requires_grad for x in tree.leaves(params) if isinstance(x, torch.Tensor))


def grad_and_value(f: Callable) -> Callable:
    """`torch.func.grad_and_value(f, has_aux=True)` computed with `torch.autograd.grad`.

    `f(params, *args) -> (out, aux)`; returns `(grads, (out, aux))` with grads shaped like
    params (zeros where `out` does not depend on a leaf) and `out`, `aux` detached. It
    differentiates detached copies of the leaves, so the caller's params are untouched and
    the function stays pure from the outside. Same numbers as `torch.func` (same autograd
    formulas), without functorch's interpreter wrapping every op of the forward and the
    backward (about a fifth of an eager U-Net step; benchmarks/RESULTS.md, "Eager gradients
    by `torch.autograd.grad`").
    """

    def grad_and_value_(params: Any, *args: Any) -> tuple[Any, tuple[torch.Tensor, Any]]:
        flat, spec = tree.flatten(params)
        idx = [i for i, x in enumerate(flat) if isinstance(x, torch.Tensor)]
        inputs = list(flat)
        for i in idx:
            inputs[i] = flat[i].detach().requires_grad_()
        with torch.enable_grad():
            out, aux = f(tree.unflatten(spec, inputs), *args)
            wrt = [inputs[i] for i in idx]
            if out.requires_grad:
                gs = torch.autograd.grad(out, wrt, allow_unused=True, materialize_grads=True)
            else:  # the output does not depend on params at all
                gs = [torch.zeros_like(x) for x in wrt]
        grads = list(flat)
        for i, g in zip(idx, gs):
            grads[i] = g
        aux = tree.tree_map(lambda v: v.detach() if isinstance(v, torch.Tensor) else v, aux)
        return tree.unflatten(spec, grads), (out.detach(), aux)

    return grad_and_value_


# ------------------------------------------------------------------- BatchNorm ("batch_norm")


def batch_norm_applies(state: dict[str, torch.Tensor]) -> bool:
    """Plain eager, float32 or float64 running statistics (the kernel's) with no autograd history
    (the caller has checked that `torch.native_batch_norm` takes x with its params)."""
    if not compiler.plain_eager("batch_norm"):
        return False
    mean, var = state["mean"], state["var"]
    return (mean.dtype == var.dtype and mean.dtype in (torch.float32, torch.float64)
            and not mean.requires_grad and not var.requires_grad)


def batch_norm_train(params: dict[str, torch.Tensor], state: dict[str, torch.Tensor], x: torch.Tensor, *,
                     momentum: float, eps: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`nn.norm.batch_norm(params, state, x, train=True, momentum=, eps=)`: the kernel also
    updates the running statistics, on copies made here (the state passed in is never written):
    two clones instead of ~10 small ops per layer."""
    new_state = {"mean": state["mean"].clone(), "var": state["var"].clone()}
    y, _, _ = torch.native_batch_norm(x, params["scale"], params["bias"], new_state["mean"], new_state["var"],
                                      True, momentum, eps)
    return y, new_state


# ----------------------------------------------------------------------------- AdamW ("adamw")


def adamw_applies(*lists: Any) -> bool:
    """Plain eager; one float dtype (float32 or float64) and one cpu/cuda device for every leaf
    of the lists, none with autograd history."""
    if not compiler.plain_eager("adamw"):
        return False
    xs = [x for xs in lists for x in (xs if isinstance(xs, list) else [xs])]
    if not xs:
        return False
    dtype, device = xs[0].dtype, xs[0].device
    return (dtype in (torch.float32, torch.float64) and device.type in ("cpu", "cuda")
            and all(x.dtype == dtype and x.device == device and not x.requires_grad for x in xs))


def adamw(params: list[torch.Tensor], grads: list[torch.Tensor], mu: list[torch.Tensor], nu: list[torch.Tensor],
          step: torch.Tensor, *, lr: torch.Tensor | float, b1: float, b2: float, eps: float,
          weight_decay: list[float]) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """`(new_params, new_mu, new_nu)` of one AdamW step on lists of leaves (`weight_decay[i]` for
    leaf i; 0 for Adam's step only), `step` the new count: `scale_by_adam`, `add_decayed_weights`,
    `scale_by_learning_rate` and `apply_updates`, as torch.optim.AdamW(fused=True) computes them
    (`p (1 - lr wd) - lr m̂ / (sqrt(v̂) + eps)`, `sqrt(v̂) = sqrt(v) / sqrt(1 - b2^t)`).

    It copies params and moments once and runs `torch._fused_adamw_` on the copies: one pass
    that reads p, g, m, v and writes p, m, v, where the chain makes about ten (each a new tensor
    per leaf). The inputs are never written."""
    # The kernel walks the four tensors of a leaf as flat memory: give grads and moments the
    # layout of the param's copy (autograd may return a channels-last grad for a contiguous
    # kernel; a compiled step may hand back moments with other strides).
    new_p = [x.clone() for x in params]
    new_mu, new_nu = ([_copy_as(x, q) for x, q in zip(xs, new_p)] for xs in (mu, nu))
    g = [x if x.stride() == q.stride() else _copy_as(x, q) for x, q in zip(grads, new_p)]
    for wd in set(weight_decay):
        idx = [i for i, d in enumerate(weight_decay) if d == wd]
        torch._fused_adamw_([new_p[i] for i in idx], [g[i] for i in idx], [new_mu[i] for i in idx],
                            [new_nu[i] for i in idx], [], [step] * len(idx), lr=lr, beta1=b1, beta2=b2,
                            weight_decay=wd, eps=eps, amsgrad=False, maximize=False)
    return new_p, new_mu, new_nu


def _copy_as(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A copy of `x` with the strides of `like` (same shape; `like` dense)."""
    return x.clone() if x.stride() == like.stride() else torch.empty_like(like).copy_(x)


# -------------------------------------------------------------------------- keys ("fold_in")


def fold_in_applies(k: torch.Tensor) -> bool:
    """Plain eager, a CPU key (reading its two words is free)."""
    return k.device.type == "cpu" and compiler.plain_eager("fold_in")


def fold_in(k: torch.Tensor, hi: int, lo: int, tweak: tuple[int, int]) -> torch.Tensor:
    """`random.fold_in`'s Threefry block on Python ints instead of ~100 tiny tensor ops: the same
    cipher (`random.threefry2x32` is written for ints and tensors alike), the same bits."""
    k0, k1 = k.tolist()
    y0, y1 = _random.threefry2x32(k0 ^ tweak[0], k1 ^ tweak[1], int(hi), int(lo))
    return torch.tensor([y0, y1], dtype=torch.int64)
