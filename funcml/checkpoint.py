"""Checkpoints: one directory per step, written atomically, checked on restore.

    ckpt.save("runs/x/checkpoints/step_000000100", ts, config=cfg, metrics={"val_loss": 0.3})
    ts = ckpt.restore("runs/x/checkpoints/step_000000100", like=ts)      # names, shapes, dtypes checked
    params = ckpt.load_params("runs/x/checkpoints/step_000000100")       # no optimizer needed

    mgr = ckpt.CheckpointManager("runs/x/checkpoints", keep_last=3, keep_best=1, best_metric="val_loss", mode="min")
    mgr.save(ts, metrics={"val_loss": 0.3}, config=cfg)
    ts = mgr.restore_latest(like=ts)

The checkpoint modules store named trees and a meta record and never import `funcml.train`:
a state says what its trees and entries are (`checkpoint_parts`) and how it is put back
together (`checkpoint_template`); see `funcml.checkpoint_format`. `TrainState` does both.

Layout of a checkpoint directory (of a TrainState):

    params.safetensors        ts.params       } tensors keyed by `tree.flatten_with_names`
    model_state.safetensors   ts.model_state  } names (`enc.0.conv.w`, `0.mu.enc.w`);
    opt_state.safetensors     ts.opt_state    } an empty tree is an empty file
    meta.json                 format version, step, root key, loss scale, config, metrics,
                              library versions, and per file its SHA-256, size and leaf names
                              in flatten order (safetensors stores them sorted)

Safetensors has no checksum of its own, so a flipped data byte would otherwise load
silently as wrong weights; `restore` and `load_params` verify the SHA-256 recorded in
meta.json before reading.

Crash safety: `save` writes everything into a temporary sibling `.tmp-<name>-<pid>-<random>`,
fsyncs every file and the directory, and only then renames it to its final name, so a
directory under a final name is always complete. `CheckpointManager` removes the temporary
directories that crashed saves leave behind (those whose process is gone) when it starts.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import math
import os
import re
import secrets
import shutil
import struct
import sys
from pathlib import Path
from typing import Any, Literal, Mapping

import safetensors.torch as _st
import torch

from . import tree
from .checkpoint_format import (FORMAT_VERSION, as_device, check_state, dtype_name, mismatches, meta_record, parts,
                                raise_mismatches, template, tensor_leaves)
from .errors import CheckpointError, ConfigError

__all__ = ["save", "restore", "load_params", "load_meta", "CheckpointManager", "FORMAT_VERSION"]

_FORMAT = "funcml.checkpoint"
_META = "meta.json"
_SUFFIX = ".safetensors"
_TMP_PREFIX = ".tmp-"
_STEP_DIR = re.compile(r"^step_(\d+)$")

# safetensors' dtype tags (format spec), for reading headers without loading data.
_ST_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "C64": torch.complex64,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    "U16": torch.uint16, "U32": torch.uint32, "U64": torch.uint64,
}


# --------------------------------------------------------------------------- files


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256_and_fsync(path: Path) -> dict[str, Any]:
    """Checksum the file as written, and force it to disk."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
        os.fsync(f.fileno())
    return {"sha256": h.hexdigest(), "bytes": path.stat().st_size}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _cpu_copies(named: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached contiguous CPU tensors; leaves sharing storage are cloned (safetensors refuses aliases)."""
    out, seen = {}, set()
    for name, x in named.items():
        y = x.detach().cpu().contiguous()
        if y.numel() > 0:
            if y.untyped_storage().data_ptr() in seen:
                y = y.clone()
            seen.add(y.untyped_storage().data_ptr())
        out[name] = y
    return out


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two directories (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    return fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _tmp_sibling(path: Path) -> Path:
    """A fresh empty directory `.tmp-<name>-<pid>-<random>` next to `path` (created with the umask's mode)."""
    while True:
        tmp = path.parent / f"{_TMP_PREFIX}{path.name}-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            tmp.mkdir()
            return tmp
        except FileExistsError:
            continue


def _remove_dir(path: Path) -> None:
    """Delete a checkpoint: rename it to a temporary name first, so that a crash half-way
    through the deletion never leaves a partial directory under a checkpoint's name."""
    trash = _tmp_sibling(path)
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _is_checkpoint(path: Path) -> bool:
    try:
        _read_meta(path)
        return True
    except CheckpointError:
        return False


def save(directory: str | os.PathLike, ts: Any, *, config: Any = None,
         metrics: Mapping[str, Any] | None = None, overwrite: bool = False) -> Path:
    """Write `ts` as a checkpoint directory, atomically.

    Arguments:
        directory: the checkpoint's final path (e.g. `.../step_000000100`); its parent is created.
        ts: the state: a `funcml.train.TrainState` (every leaf of `params`, `model_state` and
            `opt_state` a tensor; `step`, `key` and `loss_scale` go to meta.json), or any object
            with `checkpoint_parts()` (`funcml.checkpoint_format`): each of its named trees
            becomes `<name>.safetensors`, its entries go to meta.json.
        config: a config dataclass (saved via `funcml.config.to_dict`) or a JSON-able dict.
        metrics: `{name: number}` (0-d tensors allowed), e.g. the eval results at this step.
        overwrite: replace an existing checkpoint at `directory` (atomically); without it an
            existing directory is an error and is left untouched.

    Returns:
        The checkpoint's path.

    Everything is written into `.tmp-<name>-<pid>-<random>` beside `directory`, each file is
    fsynced, and the directory is renamed to its final name only when complete. An exception
    during the save removes the temporary directory and leaves `directory` as it was.
    """
    directory = Path(directory)
    trees, entries = parts(ts, "save(ts=...)")
    meta = meta_record(_FORMAT, entries, config, metrics)
    named = {t: tensor_leaves(x, f"ts.{t}") for t, x in trees.items()}
    if directory.exists() and not overwrite:
        raise CheckpointError(f"checkpoint {directory} already exists; pass overwrite=True to replace it, "
                              "or save under another name")
    if directory.exists() and not _is_checkpoint(directory) and (not directory.is_dir() or any(directory.iterdir())):
        raise CheckpointError(f"{directory} exists and is not a funcml checkpoint; refusing to replace it "
                              "even with overwrite=True. Move it away or choose another path")
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(directory)
    try:
        files = {}
        for t in named:
            fname = t + _SUFFIX
            _st.save_file(_cpu_copies(named[t]), str(tmp / fname), metadata={"format": "pt"})
            files[fname] = {**_sha256_and_fsync(tmp / fname), "names": list(named[t])}
        meta["files"] = files
        with open(tmp / _META, "w") as f:
            json.dump(meta, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        if directory.exists():
            if _exchange(tmp, directory):
                _fsync_dir(directory.parent)
                shutil.rmtree(tmp, ignore_errors=True)  # now holds the old checkpoint
                return directory
            _remove_dir(directory)
        os.replace(tmp, directory)
        _fsync_dir(directory.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


# --------------------------------------------------------------------------- reading


def _read_meta(directory: Path) -> dict[str, Any]:
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint directory {directory} does not exist (or is not a directory)")
    path = directory / _META
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: {directory} is not a complete funcml checkpoint. "
                              "Restore an earlier checkpoint (CheckpointManager.latest() returns only complete ones)")
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}): the checkpoint is damaged; "
                              "restore an earlier one") from None
    required = ("format", "format_version", "step", "files")
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT or any(k not in meta for k in required):
        missing = [k for k in required if not isinstance(meta, dict) or k not in meta]
        raise CheckpointError(f"{path} is not a funcml checkpoint's meta.json (missing {missing} or wrong "
                              f"'format'); the checkpoint is damaged, restore an earlier one")
    if meta["format_version"] != FORMAT_VERSION:
        raise CheckpointError(f"{path} has format_version {meta['format_version']}, this funcml reads "
                              f"{FORMAT_VERSION}; use the funcml version in its 'versions' field")
    if not isinstance(meta["files"], dict) or not all(isinstance(r, dict) and {"sha256", "bytes"} <= r.keys()
                                                      for r in meta["files"].values()):
        raise CheckpointError(f"{path}: its 'files' record is malformed; the checkpoint is damaged, "
                              "restore an earlier one")
    return meta


def load_meta(directory: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint's meta.json as a dict (step, key, loss_scale, config, metrics, versions, files)."""
    return _read_meta(Path(directory))


def _check_file(directory: Path, meta: Mapping[str, Any], fname: str, verify: bool) -> Path:
    """The file's path once it exists, has the recorded size and (with `verify`) the recorded SHA-256."""
    path = directory / fname
    record = meta["files"].get(fname)
    if record is None:
        raise CheckpointError(f"{directory / _META} has no record of {fname}: the checkpoint is damaged; "
                              "restore an earlier one")
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: the checkpoint is incomplete; restore an earlier one")
    size = path.stat().st_size
    if size != record["bytes"]:
        raise CheckpointError(f"{path} is truncated or damaged: {size} bytes on disk, {record['bytes']} written; "
                              "restore an earlier checkpoint")
    if verify and _sha256(path) != record["sha256"]:
        raise CheckpointError(f"{path} fails its SHA-256 check (the data on disk changed after it was written): "
                              "the checkpoint is corrupt; restore an earlier one")
    return path


def _read_header(path: Path) -> dict[str, tuple[list[int], str]]:
    """`{name: (shape, dtype name)}` from a safetensors header, without reading the data."""
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > path.stat().st_size - 8:
                raise ValueError(f"header length {n} exceeds the file")
            header = json.loads(f.read(n))
        header.pop("__metadata__", None)
        return {name: (list(v["shape"]), dtype_name(_ST_DTYPES.get(v["dtype"], v["dtype"])))
                for name, v in header.items()}
    except (OSError, ValueError, struct.error, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e}); "
                              "restore an earlier checkpoint") from None


def _load_file(path: Path, device: torch.device) -> dict[str, torch.Tensor]:
    """Tensors that own their memory: a memory-mapped CPU tensor would change (or SIGBUS) if the
    file were later rewritten or truncated, so read with pread rather than mmap."""
    try:
        try:
            return _st.load_file(str(path), device=str(device), backend="pread")
        except TypeError:  # safetensors < 0.8 has no `backend`: copy out of the mapping
            return {n: x.clone() for n, x in _st.load_file(str(path), device=str(device)).items()}
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error type for a bad file
        raise CheckpointError(f"{path} could not be read ({e}); restore an earlier checkpoint") from None


def restore(directory: str | os.PathLike, like: Any, *, device: torch.device | str | None = None,
            verify: bool = True) -> Any:
    """Read a checkpoint into a TrainState (or any `checkpoint_template` state) shaped like `like`.

    Arguments:
        directory: a checkpoint directory written by `save`.
        like: a TrainState with the expected structure (e.g. freshly initialised); only its
            tree structure, names, shapes and dtypes are used, never its values.
        device: where the tensors go (default CPU).
        verify: check every file's SHA-256 against meta.json first (reads each file once more).

    Returns:
        A TrainState with `like`'s structure (NamedTuples and all) and the checkpoint's values.

    Raises:
        CheckpointError: a missing or invalid meta.json; a missing, truncated, corrupt or
            unreadable file (named); or any difference from `like` — every missing and
            unexpected name and every shape and dtype difference, per file, in one message.
    """
    directory = Path(directory)
    check_state(like, "restore(like=...)")
    device = as_device(device)
    meta = _read_meta(directory)
    paths = {t: _check_file(directory, meta, t + _SUFFIX, verify) for t in _stored_trees(meta)}
    headers = {t: _read_header(p) for t, p in paths.items()}
    plan = template(like, meta, {t: list(h) for t, h in headers.items()}, "restore(like=...)")
    problems = list(plan.problems)
    for t, like_tree in plan.trees.items():
        if t in headers:
            problems += mismatches(t + _SUFFIX, headers[t], tensor_leaves(like_tree, f"like.{t}"))
    raise_mismatches(directory, problems)
    trees = {t: tree.unflatten_from_names(_load_file(paths[t], device), like=like_tree)
             for t, like_tree in plan.trees.items()}
    return plan.assemble(trees, meta, device)


def _stored_trees(meta: Mapping[str, Any]) -> list[str]:
    """The names of the trees a checkpoint holds, from its meta.json's file records."""
    return [f.removesuffix(_SUFFIX) for f in meta["files"] if f.endswith(_SUFFIX)]


def load_params(directory: str | os.PathLike, *, device: torch.device | str | None = None,
                verify: bool = True) -> dict[str, Any]:
    """The parameters alone, as nested dicts rebuilt from their names (`enc.0.w` -> `p["enc"]["0"]["w"]`).

    No model or optimizer is needed; params.safetensors' SHA-256 is checked (with `verify`).
    """
    directory = Path(directory)
    meta = _read_meta(directory)
    path = _check_file(directory, meta, "params" + _SUFFIX, verify)
    named = _load_file(path, as_device(device))
    order = meta["files"]["params" + _SUFFIX].get("names") or []
    if sorted(order) == sorted(named):  # the tree's own flatten order, which safetensors does not keep
        named = {n: named[n] for n in order}
    return tree.unflatten_from_names(named)


# --------------------------------------------------------------------------- manager


def _why_broken(directory: Path) -> str | None:
    """Why the checkpoint at `directory` cannot be restored (meta.json, a file's size or SHA-256), or None."""
    try:
        meta = _read_meta(directory)
        for t in _stored_trees(meta):
            _check_file(directory, meta, t + _SUFFIX, verify=True)
    except CheckpointError as e:
        return str(e)
    return None


def _set_aside(path: Path, label: str, why: str | None) -> Path | None:
    """Rename a broken checkpoint `step_N` to `step_N.<label>` (`.<label>-2`, ... if taken) and say so on stderr."""
    target = path.with_name(f"{path.name}.{label}")
    n = 2
    while target.exists():
        target, n = path.with_name(f"{path.name}.{label}-{n}"), n + 1
    try:
        os.replace(path, target)
    except OSError as e:
        print(f"[checkpoint] skipping {path}: {why} (could not move it aside: {e})", file=sys.stderr)
        return None
    print(f"[checkpoint] skipping {path.name}, moved aside to {target}: {why}", file=sys.stderr)
    return target


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class CheckpointManager:
    """Checkpoints of one run under `root/step_000000123/`: keeps the last N and the best K.

    Arguments:
        root: the run's checkpoint folder (created).
        keep_last: how many of the most recent checkpoints (by step) to keep; None keeps all.
        keep_best: how many of the best checkpoints by `metrics[best_metric]` to keep, besides
            the last ones; a checkpoint kept as best is never deleted by last-N pruning.
        best_metric: the metric that ranks checkpoints; None keeps no best. Checkpoints saved
            without this metric (or with a NaN) are not candidates for best.
        mode: "max" (higher is better) or "min". Ties go to the earlier step.

    The manager holds no state of its own: the metrics live in each checkpoint's meta.json, so
    a new process on the same root sees the same latest() and best(). On start it removes the
    temporary directories (`.tmp-*`) that crashed saves left behind, unless their process is
    still running.
    """

    def __init__(self, root: str | os.PathLike, *, keep_last: int | None = 3, keep_best: int = 1,
                 best_metric: str | None = None, mode: Literal["max", "min"] = "max"):
        if keep_last is not None and (not isinstance(keep_last, int) or keep_last < 1):
            raise ConfigError(f"CheckpointManager: keep_last must be an int >= 1 or None (keep all), got {keep_last!r}")
        if not isinstance(keep_best, int) or keep_best < 0:
            raise ConfigError(f"CheckpointManager: keep_best must be an int >= 0, got {keep_best!r}")
        if mode not in ("max", "min"):
            raise ConfigError(f"CheckpointManager: mode must be 'max' or 'min', got {mode!r}")
        self.root = Path(root)
        self.keep_last, self.keep_best, self.best_metric, self.mode = keep_last, keep_best, best_metric, mode
        self.root.mkdir(parents=True, exist_ok=True)
        self._remove_stale_tmp()
        for p in self.root.iterdir():
            if _STEP_DIR.match(p.name) and p.is_dir() and not _is_checkpoint(p):
                # A save is renamed into place complete, so a step_* without a readable meta.json was
                # damaged afterwards: set it aside, or every later save of that step would be refused.
                _set_aside(p, "incomplete", _why_broken(p))

    def __repr__(self) -> str:
        return (f"CheckpointManager({str(self.root)!r}, keep_last={self.keep_last}, keep_best={self.keep_best}, "
                f"best_metric={self.best_metric!r}, mode={self.mode!r})")

    def _remove_stale_tmp(self) -> None:
        for p in self.root.iterdir():
            if not p.name.startswith(_TMP_PREFIX) or not p.is_dir():
                continue
            parts = p.name.rsplit("-", 2)
            if len(parts) == 3 and parts[1].isdigit():
                pid = int(parts[1])
                if pid != os.getpid() and not _pid_alive(pid):
                    shutil.rmtree(p, ignore_errors=True)

    def path(self, step: int) -> Path:
        """Where the checkpoint of `step` lives (whether or not it exists)."""
        return self.root / f"step_{int(step):09d}"

    def _complete(self) -> list[tuple[int, Path, dict[str, Any]]]:
        """(step, path, meta) of every complete checkpoint, by step."""
        out = []
        for p in self.root.iterdir():
            m = _STEP_DIR.match(p.name)
            if m is None:
                continue
            try:
                out.append((int(m.group(1)), p, _read_meta(p)))
            except CheckpointError:
                continue
        return sorted(out, key=lambda c: c[0])

    def steps(self) -> list[int]:
        """Steps of the complete checkpoints, ascending."""
        return [s for s, _, _ in self._complete()]

    def latest(self) -> Path | None:
        """The complete checkpoint with the highest step, or None."""
        ckpts = self._complete()
        return ckpts[-1][1] if ckpts else None

    def _ranked(self, ckpts: list[tuple[int, Path, dict[str, Any]]]) -> list[tuple[int, Path, dict[str, Any]]]:
        """Checkpoints with a finite `best_metric`, best first (ties: earlier step first)."""
        if self.best_metric is None:
            return []
        scored = []
        for c in ckpts:
            v = (c[2].get("metrics") or {}).get(self.best_metric)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v):
                scored.append((-v if self.mode == "max" else v, c[0], c))
        return [c for _, _, c in sorted(scored, key=lambda s: (s[0], s[1]))]

    def best(self) -> Path | None:
        """The complete checkpoint with the best `metrics[best_metric]`, or None."""
        ranked = self._ranked(self._complete())
        return ranked[0][1] if ranked else None

    def save(self, ts: Any, *, metrics: Mapping[str, Any] | None = None, config: Any = None,
             overwrite: bool = False) -> Path:
        """Save `ts` as `root/step_<ts.step>` (see `funcml.checkpoint.save`), then prune."""
        path = save(self.path(int(ts.step)), ts, config=config, metrics=metrics, overwrite=overwrite)
        self._prune()
        return path

    def _prune(self) -> None:
        ckpts = self._complete()
        keep = {c[0] for c in (ckpts if self.keep_last is None else ckpts[-self.keep_last:])}
        keep |= {c[0] for c in self._ranked(ckpts)[:self.keep_best]}
        for step, path, _ in ckpts:
            if step not in keep:
                _remove_dir(path)

    def latest_verified(self) -> Path | None:
        """The newest checkpoint whose meta.json and files verify (sizes and SHA-256), or None.

        Newer checkpoints that fail are set aside as `step_*.corrupt` (never deleted), with a
        message on stderr naming each and why, so that a resumed run can save those steps again."""
        for _, path, _ in reversed(self._complete()):
            why = _why_broken(path)
            if why is None:
                return path
            _set_aside(path, "corrupt", why)
        return None

    def best_verified(self) -> Path | None:
        """The best checkpoint by `best_metric` that verifies, else the newest that does (see
        `latest_verified`); broken ones met on the way are set aside and named on stderr."""
        for _, path, _ in self._ranked(self._complete()):
            why = _why_broken(path)
            if why is None:
                return path
            _set_aside(path, "corrupt", why)
        return self.latest_verified()

    def rewind(self, step: int) -> Path:
        """Make the checkpoint of `step` the newest, to continue a run from it: it must exist and
        verify (else a CheckpointError listing the steps there are, or saying why it is broken); every
        later checkpoint is set aside as `step_*.superseded` (renamed, never deleted, named on stderr),
        so that the continued run can save those steps again. Returns its path."""
        path = self.path(step)
        if not path.is_dir():
            raise CheckpointError(f"no checkpoint of step {step} under {self.root}; the run has steps "
                                  f"{self.steps() or 'none'}")
        why = _why_broken(path)
        if why is not None:
            raise CheckpointError(f"the checkpoint of step {step} cannot be restored: {why}; the run has steps "
                                  f"{self.steps()}")
        for later, later_path, _ in self._complete():
            if later > step:
                _set_aside(later_path, "superseded", f"continuing from step {step}")
        return path

    def restore_step(self, step: int, like: Any, *, device: torch.device | str | None = None) -> Any:
        """Restore the checkpoint of `step` (a CheckpointError listing the steps there are if it has none)."""
        path = self.path(step)
        if not path.is_dir():
            raise CheckpointError(f"no checkpoint of step {step} under {self.root}; the run has steps "
                                  f"{self.steps() or 'none'}")
        return restore(path, like, device=device)

    def restore_latest(self, like: Any, *, device: torch.device | str | None = None) -> Any:
        """`restore(self.latest_verified(), like)`: the newest checkpoint that verifies (broken newer ones
        are set aside and named on stderr); a CheckpointError when there is none."""
        path = self.latest_verified()
        if path is None:
            raise CheckpointError(f"no complete checkpoint under {self.root}; start from a fresh state "
                                  "(check `manager.latest() is None` first)")
        return restore(path, like, device=device)
