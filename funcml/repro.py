"""Reproducibility: what ran where, deterministic kernels, and a check that a function is pure.

    info = repro.env_info()                      # saved as env.json beside every run
    with repro.deterministic():                  # or repro.set_deterministic(True)
        ...
    report = repro.check_reproducible(step, ts, batch)
    assert report.ok, report
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from . import tree

__all__ = ["env_info", "git_commit", "set_deterministic", "deterministic", "check_reproducible", "ReproReport"]


def git_commit(path: str | os.PathLike | None = None) -> str | None:
    """The commit of the git checkout holding `path` (default: this package), `+dirty` if changed."""
    cwd = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=5)
        return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def env_info() -> dict[str, Any]:
    """Versions, device and machine facts for `env.json` and benchmark tables."""
    from . import __version__

    info: dict[str, Any] = {
        "funcml": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(),
        "cuda": torch.version.cuda,
        "git_commit": git_commit(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_count"] = torch.cuda.device_count()
    return info


@dataclasses.dataclass(frozen=True)
class _DetState:
    algorithms: bool
    warn_only: bool
    cudnn_deterministic: bool
    cudnn_benchmark: bool
    cublas_workspace: str | None


def set_deterministic(enabled: bool = True, *, warn_only: bool = False) -> _DetState:
    """Turn deterministic kernels on or off in one call; returns the previous settings.

    Sets `torch.use_deterministic_algorithms`, cuDNN's deterministic/benchmark flags and
    `CUBLAS_WORKSPACE_CONFIG` (needed by deterministic cuBLAS). Pass the returned value to
    `_restore` (or use the `deterministic()` context manager) to undo.
    """
    prev = _DetState(
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
        os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    )
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
    torch.backends.cudnn.deterministic = enabled
    torch.backends.cudnn.benchmark = not enabled and prev.cudnn_benchmark
    return prev


def _restore(prev: _DetState) -> None:
    torch.use_deterministic_algorithms(prev.algorithms, warn_only=prev.warn_only)
    torch.backends.cudnn.deterministic = prev.cudnn_deterministic
    torch.backends.cudnn.benchmark = prev.cudnn_benchmark
    if prev.cublas_workspace is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    else:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = prev.cublas_workspace


@contextlib.contextmanager
def deterministic(enabled: bool = True, *, warn_only: bool = False) -> Iterator[None]:
    """Context manager form of `set_deterministic`; restores the previous settings on exit."""
    prev = set_deterministic(enabled, warn_only=warn_only)
    try:
        yield
    finally:
        _restore(prev)


@dataclasses.dataclass(frozen=True)
class ReproReport:
    """Outcome of `check_reproducible`: `ok`, and where the two runs first differ."""

    ok: bool
    first_difference: str | None = None
    max_abs_diff: float | None = None

    def __str__(self) -> str:
        if self.ok:
            return "reproducible: both runs gave bit-identical outputs"
        return f"not reproducible: first difference at {self.first_difference!r} (max |diff| {self.max_abs_diff})"


def check_reproducible(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> ReproReport:
    """Run `fn(*args, **kwargs)` twice and compare the output pytrees bit for bit.

    Also catches functions that mutate their inputs: the arguments are deep-copied per run.
    """
    import copy

    out1 = fn(*copy.deepcopy(args), **copy.deepcopy(kwargs))
    out2 = fn(*copy.deepcopy(args), **copy.deepcopy(kwargs))
    name = tree.first_difference(out1, out2)
    if name is None:
        return ReproReport(True)
    a, b = tree.flatten_with_names(out1), tree.flatten_with_names(out2)
    diff = None
    if name in a and isinstance(a[name], torch.Tensor) and a[name].shape == b[name].shape:
        diff = float((a[name].double() - b[name].double()).abs().nan_to_num(float("inf")).max())
    return ReproReport(False, name, diff)
