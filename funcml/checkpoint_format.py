"""What a checkpoint holds, shared by both backends (`funcml.checkpoint`: safetensors files;
`funcml.checkpoint_orbax`): named trees, a meta record, and the checks on restore.

A checkpoint stores a *state* as named pytrees of tensors plus a few JSON entries:

    trees, entries = parts(ts)            # {"params": ..., "model_state": ..., "opt_state": ...},
                                          # {"step": 7, "key": [0, 42], "loss_scale": None}
    meta = meta_record(FORMAT, entries, config, metrics)      # what meta.json holds
    plan = template(like, meta, stored_names)                 # on restore: the trees to check
    problems = plan.problems + mismatches(...)                # against, then plan.assemble(...)

A state is any object with two methods (`funcml.train.TrainState` has them; the checkpoint
modules never import `funcml.train`):

    state.checkpoint_parts() -> (trees, entries)
        trees: `{name: pytree}`, every leaf a tensor; each becomes one stored tree (a
            `<name>.safetensors` file, or an orbax item) keyed by `tree.flatten_with_names`.
        entries: JSON-able values for meta.json; "step" (an int) is required, as checkpoint
            directories and orbax steps are named by it.
    like.checkpoint_template(meta, stored) -> Template(trees, problems, assemble)
        meta: the stored meta record; stored: `{tree name: [leaf names]}` as found on disk.
        trees: the `{name: pytree}` the stored trees must match by name, shape and dtype (a
            state that reads older layouts may choose them from `stored`); problems: the
            differences in the meta entries, one line each; assemble(trees, meta, device):
            the state from the loaded trees (each already in the structure of `trees`).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple

import numpy as np
import torch

from . import config as _config
from . import tree
from .errors import CheckpointError, ConfigError

__all__ = ["FORMAT_VERSION", "Template", "check_state", "parts", "template", "meta_record", "tensor_leaves",
           "mismatches", "raise_mismatches", "dtype_name", "dtype_from_name", "named_scalars", "from_named_scalars",
           "scalar_or_list", "as_device"]

FORMAT_VERSION = 1


class Template(NamedTuple):
    """What `like.checkpoint_template(meta, stored)` returns (see the module docstring)."""

    trees: dict[str, Any]
    problems: list[str]
    assemble: Callable[[dict[str, Any], Mapping[str, Any], torch.device], Any]


def check_state(state: Any, what: str) -> None:
    """A CheckpointError naming `what` unless `state` has `checkpoint_parts` and `checkpoint_template`."""
    methods = (getattr(state, "checkpoint_parts", None), getattr(state, "checkpoint_template", None))
    if not all(callable(m) for m in methods):
        raise CheckpointError(f"{what}: expected a funcml.train.TrainState, got {type(state).__name__} "
                              "(any object with checkpoint_parts() and checkpoint_template() methods works; "
                              "see funcml.checkpoint_format)")


def parts(state: Any, what: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """`state.checkpoint_parts()`, checked: `(trees, entries)` with an int `entries["step"]`."""
    check_state(state, what)
    trees, entries = state.checkpoint_parts()
    if not isinstance(entries.get("step"), int):
        raise CheckpointError(f"{what}: checkpoint_parts() must give an int 'step' entry, got {entries.get('step')!r}")
    return dict(trees), dict(entries)


def template(like: Any, meta: Mapping[str, Any], stored: Mapping[str, list[str]], what: str) -> Template:
    """`like.checkpoint_template(meta, stored)`, plus a problem per tree stored but not wanted or wanted but absent."""
    check_state(like, what)
    plan = like.checkpoint_template(meta, stored)
    problems = list(plan.problems)
    problems += [f"the checkpoint has no {t!r} tree, which `like` has" for t in plan.trees if t not in stored]
    problems += [f"the checkpoint holds a {t!r} tree that `like` does not have" for t in stored if t not in plan.trees]
    return plan._replace(problems=problems)


def dtype_name(dtype: torch.dtype | str) -> str:
    """`torch.bfloat16 -> "bfloat16"`: how meta records and mismatch messages name a dtype."""
    return str(dtype).removeprefix("torch.")


def dtype_from_name(name: str) -> torch.dtype:
    """`"bfloat16" -> torch.bfloat16`; an unknown name is a CheckpointError."""
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise CheckpointError(f"unknown dtype {name!r} in a checkpoint")
    return dtype


def scalar_or_list(x: torch.Tensor | int) -> Any:
    """A tensor as a Python number or nested list (JSON-able); a number as itself."""
    return x.detach().cpu().tolist() if isinstance(x, torch.Tensor) else x


def named_scalars(t: Any) -> dict[str, dict[str, Any]]:
    """A small tree of tensors as `{name: {"dtype": ..., "value": ...}}`, for meta.json."""
    return {name: {"dtype": dtype_name(x.dtype), "value": scalar_or_list(x)}
            for name, x in tree.flatten_with_names(t).items()}


def from_named_scalars(entries: Mapping[str, Mapping[str, Any]], like: Any, device: torch.device) -> Any:
    """The inverse of `named_scalars`, in `like`'s structure."""
    named = {n: torch.tensor(v["value"], dtype=dtype_from_name(v["dtype"]), device=device) for n, v in entries.items()}
    return tree.unflatten_from_names(named, like=like)


def _versions() -> dict[str, str]:
    """The library subset of `repro.env_info()` (without its git and hardware probes)."""
    from . import __version__

    return {"funcml": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": sys.version.split()[0]}


def _jsonable(value: Any, what: str) -> Any:
    """`value` as plain JSON types; 0-d tensors and numpy scalars become Python numbers."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise CheckpointError(f"{what}: a tensor of shape {list(value.shape)} is not a scalar; "
                                  "pass metrics as numbers (e.g. `loss.item()`)")
        return value.item()
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, f"{what}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, f"{what}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Path):
        return str(value)
    raise CheckpointError(f"{what}: a {type(value).__name__} cannot be stored in meta.json; "
                          "use numbers, strings, lists and dicts")


def _config_dict(config: Any) -> dict[str, Any] | None:
    if config is None:
        return None
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return _config.to_dict(config)
    if isinstance(config, Mapping):
        return _jsonable(config, "config")
    raise ConfigError(f"config: expected a config dataclass or a JSON-able dict, got {type(config).__name__}")


def meta_record(fmt: str, entries: Mapping[str, Any], config: Any, metrics: Mapping[str, Any] | None
                ) -> dict[str, Any]:
    """The backend-independent part of the meta record: format, version, the state's entries,
    config, metrics and library versions (checked to be JSON-able before anything is written)."""
    import json

    meta = {
        "format": fmt,
        "format_version": FORMAT_VERSION,
        **_jsonable(dict(entries), "checkpoint entries"),
        "config": _config_dict(config),
        "metrics": _jsonable(dict(metrics or {}), "metrics"),
        "versions": _versions(),
    }
    json.dumps(meta)  # fail here, before anything is written, if something is not JSON-able
    return meta


def tensor_leaves(t: Any, where: str) -> dict[str, torch.Tensor]:
    """`tree.flatten_with_names(t)`, every leaf checked to be a tensor (`where` names the tree in errors)."""
    named = tree.flatten_with_names(t)
    for leaf, x in named.items():
        if not isinstance(x, torch.Tensor):
            raise CheckpointError(f"{where} leaf {leaf!r} has type {type(x).__name__}, not a tensor; "
                                  "checkpoints store tensor leaves only (wrap numbers in torch.tensor)")
    return named


def mismatches(where: str, got: Mapping[str, tuple[list[int], str]], like: Mapping[str, torch.Tensor]) -> list[str]:
    """Every difference between stored `{name: (shape, dtype name)}` and the leaves of `like`."""
    out = []
    for name, x in like.items():
        if name not in got:
            out.append(f"{where}: missing {name!r} (expected {list(x.shape)} {dtype_name(x.dtype)})")
    for name, (shape, dtype) in got.items():
        if name not in like:
            out.append(f"{where}: unexpected {name!r} ({shape} {dtype}) is not in `like`")
            continue
        x = like[name]
        if list(shape) != list(x.shape):
            out.append(f"{where}: {name!r} has shape {list(shape)} in the checkpoint, {list(x.shape)} in `like`")
        if dtype != dtype_name(x.dtype):
            out.append(f"{where}: {name!r} has dtype {dtype} in the checkpoint, {dtype_name(x.dtype)} in `like`")
    return out


def raise_mismatches(directory: Path, problems: list[str]) -> None:
    """One CheckpointError listing every problem, or nothing when there is none."""
    if problems:
        lines = "\n  ".join(problems)
        raise CheckpointError(
            f"checkpoint {directory} does not match `like` ({len(problems)} problem(s)):\n  {lines}\n"
            "Build `like` from the model and optimizer config that wrote the checkpoint (its config is in "
            "meta.json), or use load_params() to read the parameters alone.")


def as_device(device: torch.device | str | None) -> torch.device:
    """`device` as a torch.device (None: CPU)."""
    return torch.device("cpu") if device is None else torch.device(device)
