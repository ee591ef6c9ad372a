"""Where a command's tensors live: the one meaning of every `--device` flag.

    device = devices.resolve("auto")          # cuda:0 when a GPU is visible, else cpu
    params = devices.put(params, device)      # every tensor leaf of a pytree, moved
    batch = devices.put(batch, device)        # from pinned host memory without blocking on CUDA
    devices.of(params)                        # the device a computation follows: its params'

Names: "auto" (CUDA when `torch.cuda.is_available()`, else the CPU), "cpu", "cuda" (the
current CUDA device), "cuda:N". The rule every application follows: a computation runs where
its params are; data, keys and metrics are put there (`put`), never the params moved to the data.
Checkpoints are written from CPU copies and restored onto the device asked for, so a run trained
on CUDA loads on a CPU machine and the reverse.
"""

from __future__ import annotations

from typing import Any

import torch

from . import tree
from .errors import ConfigError

__all__ = ["NAMES", "check_name", "resolve", "put", "of", "synchronize", "describe"]

NAMES = ("auto", "cpu", "cuda", "cuda:N")
"""The device names a `--device` flag takes."""


def check_name(name: str, *, flag: str = "--device") -> None:
    """Check the spelling of a device name (`NAMES`) without asking for the device; `ConfigError`
    naming the value and the accepted names otherwise. `resolve` checks that the device exists."""
    if name in ("auto", "cpu", "cuda"):
        return
    if name.startswith("cuda:") and name[5:].isdigit():
        return
    raise ConfigError(f"{flag} {name!r} is not a device name; pass one of auto, cpu, cuda, cuda:N (N = 0, 1, ...)")


def resolve(name: str, *, flag: str = "--device") -> torch.device:
    """The torch device `name` stands for ("auto": `cuda` when CUDA is available, else `cpu`).

    Raises: `ConfigError` for a misspelt name, for "cuda"/"cuda:N" on a machine without a usable
    CUDA device (saying what torch was built with and what to pass instead), or for an index
    past the visible devices.
    """
    check_name(name, flag=flag)
    if name == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        built = f"with CUDA {torch.version.cuda}" if torch.version.cuda else "without CUDA (a CPU wheel)"
        raise ConfigError(f"{flag} {name}: CUDA is not available on this machine (torch {torch.__version__} built "
                          f"{built}, no GPU visible); pass {flag} cpu, or {flag} auto to use a GPU when there is one")
    index = torch.cuda.current_device() if name == "cuda" else int(name[5:])
    count = torch.cuda.device_count()
    if index >= count:
        raise ConfigError(f"{flag} {name}: only {count} CUDA device(s) are visible (cuda:0..cuda:{count - 1})")
    return torch.device("cuda", index)


def put(pytree: Any, device: torch.device | str) -> Any:
    """`pytree` with every tensor leaf on `device` (`funcml.tree.to`: leaves already there are returned as
    they are; host tensors bound for CUDA are copied from pinned memory without blocking, so building
    the next batch overlaps the device's work)."""
    return tree.to(pytree, device)


def of(pytree: Any) -> torch.device:
    """The device of the first tensor leaf of `pytree` (the CPU when it holds none)."""
    for leaf in tree.leaves(pytree):
        if isinstance(leaf, torch.Tensor):
            return leaf.device
    return torch.device("cpu")


def synchronize(device: torch.device | str) -> None:
    """Wait for the device's queued work (a no-op on the CPU, whose ops are synchronous): call it before
    reading a clock."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def describe(device: torch.device | str) -> str:
    """A line for a log: `cpu (2 torch threads)` or `cuda:0 (NVIDIA H200, 139.8 GiB)`."""
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        return f"cuda:{index} ({props.name}, {props.total_memory / 2**30:.1f} GiB)"
    return f"{device.type} ({torch.get_num_threads()} torch thread(s))"
