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

import contextlib
import os
import threading
from typing import Callable, Iterator, TypeVar

import torch

__all__ = ["compile", "backend", "plain_eager", "reference_mode", "FAST_PATHS"]

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


FAST_PATHS = ("grad", "batch_norm", "adamw", "fold_in")
"""The fast eager paths, by name: the train step's `autograd.grad`, BatchNorm's in-kernel
statistics, the fused AdamW apply, `fold_in` on Python ints."""


def plain_eager(path: str | None = None) -> bool:
    """Whether this call runs in plain eager mode: not traced by `torch.compile`, not inside a
    `torch.func` transform (vmap, grad), and (for a named fast `path`, one of `FAST_PATHS`) not
    switched off by `reference_mode`. The fast eager paths of funcml take it as their
    condition; traced and transformed calls keep the general (reference) path."""
    off = getattr(_REFERENCE, "off", ())
    if path is not None and path in off:
        return False
    return not torch.compiler.is_compiling() and torch._C._functorch.peek_interpreter_stack() is None


_REFERENCE = threading.local()


@contextlib.contextmanager
def reference_mode(*paths: str) -> Iterator[None]:
    """Run the reference path of the named fast eager paths (all of `FAST_PATHS` when none is
    named) inside this block, exactly as under `torch.compile` or `vmap`: "grad" differentiates
    the train step with `torch.func`, "batch_norm" computes the statistics by the plain formula,
    "adamw" runs the chain of transformations, "fold_in" runs tensor ops. For tests that compare
    a fast path with the math it replaces, and for debugging a suspected fast-path bug. Per
    thread; nests.

        with compiler.reference_mode("grad"):
            ts_ref, metrics_ref = train_step(ts, batch)
    """
    from .errors import ConfigError

    unknown = [p for p in paths if p not in FAST_PATHS]
    if unknown:
        raise ConfigError(f"reference_mode: unknown fast path(s) {unknown}; the fast paths are {list(FAST_PATHS)}")
    before = getattr(_REFERENCE, "off", ())
    _REFERENCE.off = tuple(set(before) | set(paths or FAST_PATHS))
    try:
        yield
    finally:
        _REFERENCE.off = before
