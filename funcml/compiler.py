"""One place where funcml calls `torch.compile`.

    step = compiler.compile(step)          # fullgraph=True, static shapes

The backend is `inductor` (torch's default, generated C++/Triton kernels) unless the
environment variable `FUNCML_COMPILE_BACKEND` names another, e.g. `aot_eager`: the same
Dynamo graph capture and AOT autograd, run with eager kernels. That is how the default test
stage checks tracing (one graph, no recompiles, same numbers) in seconds; inductor's code
generation costs minutes on a cold cache on 2 CPU cores, so its tests run in CI's second
stage (`FUNCML_COMPILE_BACKEND=inductor python3 dev.py test -m "slow or compile"`).

einops. funcml writes every layout change with `einops.rearrange`; einops 0.8 no longer tells
Dynamo that its ops are traceable as single calls, so Dynamo would trace einops' Python (its
parsing and caching) at every call site. `compile` registers them once
(`einops._torch_specific.allow_ops_in_compiled_graph`): measured on the Paraformer train step
(aot_eager, 2 busy cores), tracing went from 156 s to 107 s.
"""

from __future__ import annotations

import os
from typing import Callable, TypeVar

import torch

__all__ = ["compile", "backend", "plain_eager"]

F = TypeVar("F", bound=Callable)


def backend() -> str:
    """The compile backend in force: `$FUNCML_COMPILE_BACKEND`, else "inductor"."""
    return os.environ.get("FUNCML_COMPILE_BACKEND", "inductor")


_EINOPS_REGISTERED = False


def _register_einops() -> None:
    global _EINOPS_REGISTERED
    if not _EINOPS_REGISTERED:
        from einops._torch_specific import allow_ops_in_compiled_graph

        allow_ops_in_compiled_graph()
        _EINOPS_REGISTERED = True


def compile(fn: F, *, fullgraph: bool = True, dynamic: bool | None = False) -> F:  # noqa: A001 - mirrors torch.compile
    """`torch.compile(fn, fullgraph=fullgraph, dynamic=dynamic, backend=backend())`, with einops'
    ops registered with Dynamo first (see the module doc)."""
    _register_einops()
    return torch.compile(fn, fullgraph=fullgraph, dynamic=dynamic, backend=backend())


def plain_eager() -> bool:
    """Whether this call runs in plain eager mode: not traced by `torch.compile` and not inside
    a `torch.func` transform (vmap, grad). The fast eager paths of funcml (the train step's
    `autograd.grad`, BatchNorm's in-kernel statistics, the fused AdamW, `fold_in` on Python
    ints) take it as their condition; traced and transformed calls keep the general path."""
    return not torch.compiler.is_compiling() and torch._C._functorch.peek_interpreter_stack() is None
