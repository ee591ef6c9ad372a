"""A second checkpoint backend, orbax-checkpoint, for users who live in the JAX world.

    from funcml import checkpoint_orbax
    checkpoint_orbax.save("/abs/or/relative/ckpts", ts, config=cfg, metrics={"acc": 0.9})   # -> ckpts/<step>/
    ts = checkpoint_orbax.restore("ckpts", like=ts)                    # latest step, checked against `like`
    params = checkpoint_orbax.load_params_numpy("ckpts")               # {"enc.0.w": np.ndarray, ...}

The contents are those of `funcml.checkpoint`, from the same format module
(`funcml.checkpoint_format`): the state's named trees (a TrainState's three) under the same
`tree.flatten_with_names` names, and the same meta (step, root key, loss scale, config,
metrics, library versions). `directory` is the root of an orbax `CheckpointManager`; each
step is a sub-directory `<step>/` with the items `params`, `model_state`, `opt_state` (flat
`{name: np.ndarray}` pytrees, saved with `StandardSave`; an empty tree is left out, as orbax
refuses empty items) and `meta` (`JsonSave`). Orbax writes each step to a temporary
directory and renames it when committed, so a crash never leaves a half-written step.

numpy has no bfloat16, so bf16 leaves are stored as their int16 bit patterns (and float8
leaves as uint8); meta records each leaf's torch dtype, and `restore` views the bits back,
so the round trip is bit-exact. orbax-checkpoint is an optional extra: `pip install funcml[orbax]`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from . import tree
from .checkpoint_format import (as_device, check_state, dtype_from_name, dtype_name, meta_record, mismatches, parts,
                                raise_mismatches, template, tensor_leaves)
from .errors import CheckpointError

__all__ = ["save", "restore", "load_params_numpy"]

_FORMAT = "funcml.checkpoint.orbax"
# torch dtypes numpy cannot hold, stored as integer bit patterns of the same width.
_BIT_VIEWS = {torch.bfloat16: torch.int16, torch.float8_e4m3fn: torch.uint8, torch.float8_e5m2: torch.uint8}


def _ocp():
    """orbax.checkpoint, imported only when this backend is used (it pulls in jax)."""
    try:
        import orbax.checkpoint as ocp
    except ImportError as e:
        raise CheckpointError(f"the orbax checkpoint backend needs orbax-checkpoint, an optional extra ({e}): "
                              "pip install funcml[orbax]") from None
    return ocp


def _manager(directory: Path, *, read_only: bool):
    ocp = _ocp()
    options = ocp.CheckpointManagerOptions(max_to_keep=None, create=not read_only, read_only=read_only,
                                           enable_async_checkpointing=False)
    return ocp.CheckpointManager(directory, options=options)


def _to_numpy(x: torch.Tensor) -> np.ndarray:
    x = x.detach().cpu().contiguous()
    if x.dtype in _BIT_VIEWS:
        x = x.view(_BIT_VIEWS[x.dtype])
    return x.numpy().copy()


def _to_torch(a: np.ndarray, dtype_name: str, device: torch.device) -> torch.Tensor:
    dtype = dtype_from_name(dtype_name)
    x = torch.from_numpy(np.array(a, copy=True))
    if dtype in _BIT_VIEWS:
        x = x.view(dtype)
    return x.to(device)


def save(directory: str | os.PathLike, ts: Any, *, config: Any = None,
         metrics: Mapping[str, Any] | None = None) -> Path:
    """Save `ts` as step `ts.step` of the orbax checkpoint root `directory`.

    Arguments:
        directory: the orbax `CheckpointManager` root (made absolute, as orbax needs).
        ts: the train state (or any `checkpoint_parts` state, `funcml.checkpoint_format`); every
            leaf of its trees (params, model_state, opt_state) a tensor.
        config: a config dataclass or a JSON-able dict; metrics: `{name: number}`.

    Returns:
        The step directory, `directory/<step>`.

    Raises:
        CheckpointError: the step already exists (orbax never overwrites), or orbax is missing.
    """
    ocp = _ocp()
    trees, entries = parts(ts, "save(ts=...)")
    directory = Path(directory).absolute()
    meta = meta_record(_FORMAT, entries, config, metrics)
    named = {t: tensor_leaves(x, f"ts.{t}") for t, x in trees.items()}
    meta["dtypes"] = {t: {n: dtype_name(x.dtype) for n, x in named[t].items()} for t in named}
    meta["trees"] = [t for t in named if named[t]]
    items = {t: ocp.args.StandardSave({n: _to_numpy(x) for n, x in named[t].items()}) for t in meta["trees"]}
    step = meta["step"]
    with _manager(directory, read_only=False) as mngr:
        if step in mngr.all_steps():
            raise CheckpointError(f"orbax checkpoint step {step} already exists under {directory}; "
                                  "delete it or save under another root")
        saved = mngr.save(step, args=ocp.args.Composite(meta=ocp.args.JsonSave(meta), **items), force=True)
        mngr.wait_until_finished()
    if not saved:
        raise CheckpointError(f"orbax declined to save step {step} under {directory}")
    return directory / str(step)


def _open(directory: str | os.PathLike, step: int | None) -> tuple[Any, Any, int, dict[str, Any]]:
    """(orbax module, read-only manager, step, meta) of an existing step; the caller closes the manager."""
    ocp = _ocp()
    directory = Path(directory).absolute()
    if not directory.is_dir():
        raise CheckpointError(f"orbax checkpoint root {directory} does not exist (or is not a directory)")
    mngr = _manager(directory, read_only=True)
    try:
        steps = mngr.all_steps()
        if step is None:
            step = mngr.latest_step()
        if step is None or step not in steps:
            raise CheckpointError(f"no orbax checkpoint {'' if step is None else f'for step {step} '}under "
                                  f"{directory} (steps found: {sorted(steps)})")
        try:
            meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
        except Exception as e:  # noqa: BLE001 - orbax raises many types for a damaged step
            raise CheckpointError(f"the meta item of orbax checkpoint step {step} under {directory} could not "
                                  f"be read ({type(e).__name__}: {e}); restore an earlier step") from None
        if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
            raise CheckpointError(f"orbax checkpoint step {step} under {directory} was not written by "
                                  "funcml.checkpoint_orbax (its meta item lacks format='funcml.checkpoint.orbax')")
    except BaseException:
        mngr.close()
        raise
    return ocp, mngr, step, meta


def _restore_trees(ocp, mngr, step: int, meta: Mapping[str, Any],
                   trees: tuple[str, ...]) -> dict[str, dict[str, np.ndarray]]:
    """`{tree: {name: array}}` for the requested trees; a tree saved empty (left out by orbax) is `{}`."""
    present = [t for t in trees if t in meta["trees"]]
    out: dict[str, dict[str, np.ndarray]] = {t: {} for t in trees}
    if present:
        try:
            restored = mngr.restore(step, args=ocp.args.Composite(**{t: ocp.args.StandardRestore() for t in present}))
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(f"orbax checkpoint step {step} under {mngr.directory} could not be read "
                                  f"({type(e).__name__}: {e}); restore an earlier step") from None
        out.update({t: dict(restored[t]) for t in present})
    return out


def restore(directory: str | os.PathLike, like: Any, *, device: torch.device | str | None = None,
            step: int | None = None) -> Any:
    """Read step `step` (default: the latest) of the orbax root `directory` into `like`'s structure.

    Every name, shape and dtype is checked against `like`, and every difference is listed in
    one CheckpointError, as in `funcml.checkpoint.restore`. Tensors go to `device` (default CPU).
    """
    check_state(like, "restore(like=...)")
    device = as_device(device)
    ocp, mngr, step, meta = _open(directory, step)
    stored = list(meta["dtypes"])
    with mngr:
        arrays = _restore_trees(ocp, mngr, step, meta, tuple(stored))
    plan = template(like, meta, {t: list(arrays[t]) for t in stored}, "restore(like=...)")
    problems = list(plan.problems)
    for t, like_tree in plan.trees.items():
        if t in arrays:
            got = {n: (list(a.shape), meta["dtypes"][t].get(n, str(a.dtype))) for n, a in arrays[t].items()}
            problems += mismatches(f"{t} (orbax)", got, tensor_leaves(like_tree, f"like.{t}"))
    raise_mismatches(Path(directory).absolute() / str(step), problems)
    trees = {t: tree.unflatten_from_names({n: _to_torch(a, meta["dtypes"][t][n], device) for n, a in arrays[t].items()},
                                          like=like_tree)
             for t, like_tree in plan.trees.items()}
    return plan.assemble(trees, meta, device)


def load_params_numpy(directory: str | os.PathLike, *, step: int | None = None) -> dict[str, np.ndarray]:
    """The parameters of step `step` (default: the latest) as `{name: np.ndarray}`, names as in funcml.

    bf16 (and float8) leaves come back as `ml_dtypes` arrays (the dtypes JAX uses), in the
    order the tree flattens.
    """
    import ml_dtypes  # a dependency of jax, hence present with orbax

    ocp, mngr, step, meta = _open(directory, step)
    with mngr:
        arrays = _restore_trees(ocp, mngr, step, meta, ("params",))["params"]
    dtypes = meta["dtypes"]["params"]
    out = {}
    for name in dtypes:
        a = np.asarray(arrays[name])
        if dtype_from_name(dtypes[name]) in _BIT_VIEWS:
            a = a.view(getattr(ml_dtypes, dtypes[name]))
        out[name] = a
    return out
