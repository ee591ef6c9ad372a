"""Bring any `torch.nn.Module` into the functional world.

    params, state, apply = from_module(net)
    out, state = apply(params, state, x, train=True)             # net itself is not touched
    grads = torch.func.grad(lambda p: loss(apply(p, state, x)[0], y))(params)

`params` are the module's named parameters and `state` its buffers (BatchNorm's
`running_mean`, `running_var`, `num_batches_tracked`), both as detached clones in nested
dicts: the parameter `"0.weight"` is `params["0"]["weight"]`, so
`funcml.tree.flatten_with_names(params)` gives back exactly the module's own names (those of
its `state_dict`) and `unflatten_from_names` round-trips. The forward runs through
`torch.func.functional_call`, so it composes with `torch.func.grad`, `vmap` and
`torch.compile`.

What stays outside funcml's key discipline: randomness inside the module itself (e.g.
`nn.Dropout` in train mode) draws from torch's global generator, which funcml cannot key.
For reproducible training, use modules without their own randomness (or funcml's layers).
"""

from __future__ import annotations

from typing import Any, Callable

from torch import nn
from torch.func import functional_call

from ..errors import ShapeError
from ..tree import flatten_with_names, unflatten_from_names

__all__ = ["from_module"]

PyTree = Any
BridgeApply = Callable[..., tuple[Any, PyTree]]


def _check_names(kind: str, got: dict[str, Any], want: list[str]) -> None:
    if set(got) != set(want):
        missing = [n for n in want if n not in got]
        extra = [n for n in got if n not in want]
        raise ShapeError(
            f"from_module apply: {kind} do not match the module: missing {missing}, unexpected {extra}; "
            f"pass the {kind} returned by from_module (or a tree with the same names)")


def from_module(module: nn.Module) -> tuple[PyTree, PyTree, BridgeApply]:
    """Split `module` into `(params, state, apply)`.

    Arguments:
        module: any `nn.Module`. It is captured by `apply` (not copied) and is never
            mutated: its parameters, buffers and `.training` flags are the same after every
            call. Tied parameters appear once, under their first name.

    Returns:
        params: nested dict of detached clones of `module.named_parameters()`.
        state: nested dict of detached clones of `module.named_buffers()` (`{}` if none).
        apply: `apply(params, state, *args, train=False, **kwargs) -> (out, new_state)`,
            which runs `module(*args, **kwargs)` with these params and buffers, every
            submodule in train mode when `train` else eval mode. The buffers are cloned
            before the call, so in-place updates (BatchNorm's running statistics in train
            mode) land on the clones, which come back as `new_state`; the `state` passed in
            is never modified. Differentiable w.r.t. `params` under `torch.func.grad`.
    """
    if not isinstance(module, nn.Module):
        raise ShapeError(f"from_module: expected a torch.nn.Module, got {type(module).__name__}")
    param_names = [n for n, _ in module.named_parameters()]
    buffer_names = [n for n, _ in module.named_buffers()]
    params = unflatten_from_names({n: p.detach().clone() for n, p in module.named_parameters()})
    state = unflatten_from_names({n: b.detach().clone() for n, b in module.named_buffers()})

    def apply(params: PyTree, state: PyTree, *args: Any, train: bool = False, **kwargs: Any) -> tuple[Any, PyTree]:
        named_params = flatten_with_names(params)
        named_state = flatten_with_names(state)
        _check_names("params", named_params, param_names)
        _check_names("state", named_state, buffer_names)
        # In-place buffer updates (BatchNorm in train mode) must hit copies, not the caller's state.
        new_state = {n: b.clone() for n, b in named_state.items()}
        flags = [(m, m.training) for m in module.modules()]
        try:
            module.train(train)
            out = functional_call(module, (named_params, new_state), args, kwargs, tie_weights=True, strict=True)
        finally:
            for m, flag in flags:
                m.training = flag
        return out, unflatten_from_names(new_state)

    return params, state, apply
