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
(`einops._torch_specific.allow_ops_in_compiled_graph`), which cuts Dynamo's tracing of the
Paraformer train step by about a third (benchmarks/RESULTS.md, "einops registered with Dynamo").

Compile cache. Inductor keeps what it compiled (the FX graph cache: generated C++ and the built
libraries; the AOTAutograd cache: the joint forward/backward graphs) on disk, keyed by the graph,
the torch version and the config, so a second process that compiles the same step finds it there
and skips code generation (the warm compile: Dynamo still traces the Python once per process).
`compile` points those caches at `cache_dir()`: `$TORCHINDUCTOR_CACHE_DIR` when the user set it,
else `.cache/funcml-compile` under the working directory, beside the speech corpus cache
(`.cache/funcml-speech`), instead of torch's default `/tmp/torchinductor_<user>`, which a reboot
empties. Delete the folder to start cold. torch's "mega-cache"
(`torch.compiler.save_cache_artifacts` / `load_cache_artifacts`) serializes the same caches to
bytes for another machine; on one machine the folder is already the persistent form, so funcml
does not use it.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import torch

__all__ = ["compile", "region", "backend", "cache_dir", "plain_eager", "in_transform", "reference_mode", "FAST_PATHS", "CACHE_DIR"]

F = TypeVar("F", bound=Callable)


def backend() -> str:
    """The compile backend in force: `$FUNCML_COMPILE_BACKEND`, else "inductor"."""
    return os.environ.get("FUNCML_COMPILE_BACKEND", "inductor")


CACHE_DIR = Path(".cache/funcml-compile")
"""The compile cache's folder when `$TORCHINDUCTOR_CACHE_DIR` is not set, relative to the working directory."""

_ENV = "TORCHINDUCTOR_CACHE_DIR"
# Read once, at import: torch itself writes its default folder into this variable the first time
# it looks the folder up, after which "set by the user" could no longer be told apart.
_USER_CACHE_DIR = os.environ.get(_ENV)


def cache_dir() -> Path:
    """The folder of the compile cache (absolute): `$TORCHINDUCTOR_CACHE_DIR` if the user set it
    (before importing funcml), else `CACHE_DIR` under the current working directory."""
    return Path(_USER_CACHE_DIR if _USER_CACHE_DIR else CACHE_DIR).absolute()


def _use_cache_dir() -> None:
    """Point inductor's on-disk caches at `cache_dir()` (torch reads the variable at every lookup)."""
    folder = cache_dir()
    if os.environ.get(_ENV) != str(folder):
        folder.mkdir(parents=True, exist_ok=True)
        os.environ[_ENV] = str(folder)


_EINOPS_REGISTERED = False


def _register_einops() -> None:
    global _EINOPS_REGISTERED
    if not _EINOPS_REGISTERED:
        from einops._torch_specific import allow_ops_in_compiled_graph

        allow_ops_in_compiled_graph()
        _EINOPS_REGISTERED = True


def compile(fn: F, *, fullgraph: bool = True, dynamic: bool | None = False) -> F:  # noqa: A001 - mirrors torch.compile
    """`torch.compile(fn, fullgraph=fullgraph, dynamic=dynamic, backend=backend())`, with einops'
    ops registered with Dynamo first and the compile cache in `cache_dir()` (see the module doc)."""
    _register_einops()
    _use_cache_dir()
    return torch.compile(fn, fullgraph=fullgraph, dynamic=dynamic, backend=backend())


def region(fn: F) -> F:
    """Mark `fn` as a compile region (`torch.compiler.nested_compile_region`): inside a compiled
    function, the first call of `fn` is traced and compiled and later calls with inputs of the
    same shapes, dtypes and strides reuse it instead of being traced again, so a stack of L
    identical blocks costs about one block's compile. In eager mode `fn` runs as it is.

        block = compiler.region(encoder_block)   # every layer of the stack is one region

    Not yet usable inside a train step: on torch 2.13, tracing a region inside
    `torch.func.grad_and_value` (how a compiled funcml step differentiates) fails with
    "AssertionError: Expected FakeTensor" (benchmarks/bench_compile.py, variants `-region`). It
    works in forward-only compiled functions (evaluation, inference).
    """
    return torch.compiler.nested_compile_region(fn)


FAST_PATHS = ("grad", "batch_norm", "adamw", "fold_in")
"""The fast eager paths, by name: the train step's `autograd.grad`, BatchNorm's in-kernel
statistics, the fused AdamW apply, `fold_in` on Python ints (all in `funcml/_eager.py`)."""


def plain_eager(path: str | None = None) -> bool:
    """Whether this call runs in plain eager mode: not traced by `torch.compile`, not inside a
    `torch.func` transform (vmap, grad), and (for a named fast `path`, one of `FAST_PATHS`) not
    switched off by `reference_mode`. The fast eager paths of funcml take it as their
    condition; traced and transformed calls keep the general (reference) path."""
    off = getattr(_REFERENCE, "off", ())
    if path is not None and path in off:
        return False
    return not torch.compiler.is_compiling() and not in_transform()


def in_transform() -> bool:
    """Whether this call runs inside a `torch.func` transform (vmap, grad, jvp), whose
    interpreters have no rules for some eager-only ops (foreach kernels, in-place updates of
    the statistics). Also true while `torch.compile` traces (on torch 2.13 Dynamo reports an
    interpreter on functorch's stack, tested), so code gated on it runs its plain per-leaf form
    there, which inductor fuses. The transform half of `plain_eager`."""
    return torch._C._functorch.peek_interpreter_stack() is not None


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
