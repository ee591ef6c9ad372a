"""Data parallelism on `torch.distributed`: one process per device, the same params everywhere.

    torchrun --standalone --nproc-per-node 2 experiments/seg_train.py tiny

    distributed.init_from_env()                  # joins torchrun's group; a no-op in one process
    step = make_train_step(loss_fn, tx)          # data parallel when the group has > 1 process
    batch = distributed.shard(global_batch)      # this rank's rows [r*B/W, (r+1)*B/W)
    result = fit(ts, step, get_batch, ...)       # only rank 0 writes logs and checkpoints

Each of the W processes (ranks) holds the same train state and computes the gradient of
its own shard of the global batch. Before the optimizer update the gradients are averaged
over ranks,

    g = (1 / W) sum_r g_r,        g_r = grad of the rank-r shard's loss,

with `all_reduce(SUM)` followed by a division by W. The pytree is flattened into one
contiguous buffer per dtype, cut into buckets of at most `bucket_mb` MiB, so a small model
costs one collective per step rather than one per leaf. When the loss is a mean over
examples and every shard holds B/W of them, `g` is the gradient of the global batch, so W
processes reproduce one process to float rounding. Batch-level statistics (BatchNorm's
batch mean, a Dice pooled over the batch) are computed per shard, as in PyTorch's DDP.

Keys. Every rank derives the same step key `fold_in(ts.key, ts.step)`; a key for data that
each rank generates itself is `shard_key(key) = fold_in(key, rank)`, so the shards differ
and a rerun with the same number of processes reproduces them. One process keeps its key
unchanged, so a single-process run is bit-identical with or without this module.

Backends: gloo on CPU; when CUDA is available, `"cpu:gloo,cuda:nccl"` (NCCL for CUDA
tensors, gloo for CPU ones). Failures: a collective that fails (another process crashed or
did not arrive within the process-group timeout) raises `DistributedError` naming the
operation, the rank and the timeout, instead of hanging.
"""

from __future__ import annotations

import atexit
import datetime
import os
from typing import Any, Callable, TypeVar

import torch
import torch.distributed as dist
from einops import rearrange

from .. import errors, random, tree
from ..errors import ConfigError, DTypeError, FuncmlError, ShapeError

__all__ = ["DistributedError", "init_from_env", "is_initialized", "rank", "local_rank", "world_size", "is_main",
           "shard_key", "shard", "all_reduce_mean", "broadcast", "broadcast_object", "on_main", "barrier",
           "shutdown", "DEFAULT_TIMEOUT_S"]

T = TypeVar("T")
PyTree = Any

DEFAULT_TIMEOUT_S = 600.0
_TIMEOUT_ENV = "FUNCML_DIST_TIMEOUT_S"
_timeout_s: float | None = None  # the timeout the group was created with, for error messages


class DistributedError(FuncmlError, RuntimeError):
    """A collective failed: another process exited, or did not reach it within the timeout."""


# --------------------------------------------------------------------------- the process group


def _env_int(name: str) -> int:
    value = os.environ.get(name)
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(f"${name}={value!r} must be an integer; launch with torchrun, which sets RANK, "
                          "WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT") from None


def init_from_env(*, timeout_s: float | None = None, backend: str | None = None) -> bool:
    """Join the process group described by torchrun's environment; returns whether one is active.

    Reads `WORLD_SIZE`, `RANK`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`. Without
    `WORLD_SIZE`, or with `WORLD_SIZE=1`, nothing happens (one process) and it returns False;
    when a group is already initialized it is kept.

    Arguments:
        timeout_s: how long a collective waits for the other processes before it fails
            (default `$FUNCML_DIST_TIMEOUT_S`, else 600 s). It must exceed the longest work
            rank 0 does alone (evaluation, checkpoint writing) while the others wait.
        backend: default "gloo" on CPU, "cpu:gloo,cuda:nccl" when CUDA is available (each
            process then uses the GPU `LOCAL_RANK`).
    """
    global _timeout_s
    if is_initialized():
        return True
    if os.environ.get("WORLD_SIZE") in (None, "", "1"):
        return False
    size, rank_ = _env_int("WORLD_SIZE"), _env_int("RANK")
    local = _env_int("LOCAL_RANK") if os.environ.get("LOCAL_RANK") else 0
    if size < 1 or not 0 <= rank_ < size:
        raise ConfigError(f"RANK={rank_} and WORLD_SIZE={size}: need 0 <= RANK < WORLD_SIZE")
    missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(v)]
    if missing:
        raise ConfigError(f"WORLD_SIZE={size} is set but {' and '.join(missing)} is not; launch with "
                          "`torchrun --nproc-per-node N ...`, which sets them")
    if not dist.is_available():
        raise ConfigError(f"WORLD_SIZE={size} asks for {size} processes but this torch build has no "
                          "torch.distributed; install a standard torch wheel")
    if timeout_s is None:
        try:
            timeout_s = float(os.environ.get(_TIMEOUT_ENV, DEFAULT_TIMEOUT_S))
        except ValueError:
            raise ConfigError(f"${_TIMEOUT_ENV}={os.environ[_TIMEOUT_ENV]!r} must be a number of seconds") from None
    if not timeout_s > 0:
        raise ConfigError(f"timeout_s must be > 0, got {timeout_s}")
    if backend is None:
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    if "nccl" in backend and torch.cuda.is_available():
        torch.cuda.set_device(local)
    try:
        dist.init_process_group(backend, init_method="env://", rank=rank_, world_size=size,
                                 timeout=datetime.timedelta(seconds=timeout_s))
    except RuntimeError as e:
        raise DistributedError(
            f"rank {rank_} of {size} could not join the process group at {os.environ['MASTER_ADDR']}:"
            f"{os.environ['MASTER_PORT']} within {timeout_s:g} s ({e}); check that all {size} processes were "
            "started with the same MASTER_ADDR/MASTER_PORT and that the port is reachable") from e
    _timeout_s = timeout_s
    atexit.register(shutdown)
    return True


def is_initialized() -> bool:
    """Whether a process group is active in this process."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank in the group, 0 without one."""
    return _group_rank()


def _group_rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def _group_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def local_rank() -> int:
    """This process's rank on its machine (`$LOCAL_RANK`), 0 without a group."""
    return int(os.environ.get("LOCAL_RANK", 0)) if is_initialized() else 0


def world_size() -> int:
    """The number of processes W in the group, 1 without one."""
    return _group_size()


def is_main() -> bool:
    """Whether this process is rank 0, the one that writes run directories and checkpoints."""
    return rank() == 0


def shutdown() -> None:
    """Leave the process group (registered at exit by `init_from_env`); a no-op without one
    (a failed collective has already torn it down)."""
    if is_initialized():
        dist.destroy_process_group()


class _Collective:
    """Turn a failed collective into a DistributedError that says what to look for."""

    def __init__(self, what: str):
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, exc, tb) -> bool:
        if exc is not None and isinstance(exc, RuntimeError) and not isinstance(exc, FuncmlError):
            where = f"rank {rank()} of {world_size()}"
            # Tear the broken group down now: left to the interpreter's exit, gloo's
            # connection threads sometimes abort the process ("terminate called ...").
            try:
                dist.destroy_process_group()
            except Exception:  # noqa: BLE001 - the group is already broken; the error below is the news
                pass
            timeout = f"{_timeout_s:g} s" if _timeout_s is not None else "the group's timeout"
            raise DistributedError(
                f"{self.what} failed on {where}: another process exited or did not reach "
                f"it within {timeout} ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}). Look for the "
                "first error in the other ranks' output; raise the timeout with "
                f"init_from_env(timeout_s=...) or ${_TIMEOUT_ENV} if rank 0's evaluation takes longer") from exc
        return False


def barrier() -> None:
    """Wait until every process reaches this point (a no-op in one process)."""
    if world_size() > 1:
        with _Collective("barrier"):
            dist.barrier()


# --------------------------------------------------------------------------- keys and shards


def shard_key(key: torch.Tensor, *, rank: int | None = None) -> torch.Tensor:
    """This rank's key for data it generates itself: `fold_in(key, rank)`.

    `key` unchanged in a single process (so one process reproduces a run made without this
    module); with an explicit `rank`, always `fold_in(key, rank)`.
    """
    random.check_key(key)
    if rank is None:
        if world_size() == 1:
            return key
        rank = _group_rank()
    return random.fold_in(key, rank)


def shard(batch: PyTree, *, rank: int | None = None, world_size: int | None = None) -> PyTree:
    """This rank's slice of a global batch: rows `[r * B/W, (r+1) * B/W)` of every tensor leaf.

    batch: a pytree whose tensor leaves share the leading (batch) dim `B`; 0-d tensors and
        non-tensor leaves are passed through. `rank`, `world_size` default to the group's.
    Returns the same structure with leading dim `B / W` (the batch itself when W = 1).

    Raises ShapeError when the leaves disagree on `B` or when W does not divide `B`.
    """
    r = _group_rank() if rank is None else rank
    w = _group_size() if world_size is None else world_size
    if not 0 <= r < w:
        raise ConfigError(f"shard: rank={r} must be in [0, world_size={w})")
    if w == 1:
        return batch
    named = {n: x for n, x in tree.flatten_with_names(batch).items() if isinstance(x, torch.Tensor) and x.ndim > 0}
    sizes = {int(x.shape[0]) for x in named.values()}
    if len(sizes) > 1:
        dims = ", ".join(f"{n}: {x.shape[0]}" for n, x in named.items())
        raise ShapeError(f"shard: the batch leaves disagree on the batch dim ({dims}); every tensor needs the "
                         "same leading size B")
    if not sizes:
        return batch
    (b,) = sizes
    if b % w:
        raise ShapeError(f"shard: the global batch size {b} is not divisible by the world size {w}; use a "
                         f"global batch that is a multiple of the number of processes (e.g. {w * max(1, b // w)})")
    n = b // w
    return tree.tree_map(lambda x: x[r * n:(r + 1) * n] if isinstance(x, torch.Tensor) and x.ndim > 0 else x,
                         batch)


# --------------------------------------------------------------------------- collectives on pytrees


def _groups(xs: list[torch.Tensor]) -> dict[tuple[torch.dtype, torch.device], list[int]]:
    """Leaf indices grouped by (dtype, device), in first-seen order (the same on every rank)."""
    groups: dict[tuple[torch.dtype, torch.device], list[int]] = {}
    for i, x in enumerate(xs):
        groups.setdefault((x.dtype, x.device), []).append(i)
    return groups


def _buckets(flat: torch.Tensor, bucket_mb: float) -> list[torch.Tensor]:
    """Contiguous views of `flat: [N]`, each at most `bucket_mb` MiB (at least one element)."""
    per = max(1, int(bucket_mb * 2**20) // flat.element_size())
    return list(flat.split(per)) if flat.numel() else []


def _on_flat(tree_: PyTree, what: str, fn: Callable[[torch.Tensor, list[torch.Tensor]], None],
             finish: Callable[[torch.Tensor], torch.Tensor], bucket_mb: float) -> PyTree:
    """Pack the tensor leaves into one flat buffer per dtype, run `fn(flat, buckets)` (the
    collective, in place on the buffer we own), apply `finish`, and unpack into the tree."""
    if not bucket_mb > 0:
        raise ConfigError(f"bucket_mb must be > 0, got {bucket_mb}")
    leaves, treedef = tree.flatten(tree_)
    is_t = [isinstance(x, torch.Tensor) for x in leaves]
    tensors = [x for x, t in zip(leaves, is_t) if t]
    out = list(tensors)
    for (dtype, _), idx in _groups(tensors).items():
        transport = torch.uint8 if dtype == torch.bool else dtype
        flat = torch.cat([rearrange(tensors[i].detach().to(transport), "... -> (...)") for i in idx])  # [sum numel]
        with _Collective(what):
            fn(flat, _buckets(flat, bucket_mb))
        flat = finish(flat).to(dtype)
        for i, part in zip(idx, flat.split([tensors[i].numel() for i in idx])):
            out[i] = part.view(tensors[i].shape)
    it = iter(out)
    return tree.unflatten(treedef, [next(it) if t else x for x, t in zip(leaves, is_t)])


def all_reduce_mean(tree_: PyTree, *, bucket_mb: float = 25.0) -> PyTree:
    """The mean over ranks of every tensor leaf: `(1 / W) sum_r x_r` (identity in one process).

    One flat buffer per dtype, all-reduced (SUM) in buckets of at most `bucket_mb` MiB, then
    divided by W. Floating leaves get the exact mean up to rounding; integer leaves the
    rounded-down mean (exact when the ranks agree, as counters do). Non-tensor leaves are
    returned unchanged. Every rank must call it with the same tree structure, shapes and
    dtypes. Returns new tensors; the inputs are not modified.
    """
    w = world_size()
    if w == 1:
        return tree_
    for x in tree.leaves(tree_):
        if isinstance(x, torch.Tensor) and x.dtype == torch.bool:
            raise DTypeError("all_reduce_mean: a bool leaf has no mean; cast it to float first")

    def reduce_(flat: torch.Tensor, buckets: list[torch.Tensor]) -> None:
        works = [dist.all_reduce(b, op=dist.ReduceOp.SUM, async_op=True) for b in buckets]
        for work in works:
            work.wait()

    def mean(flat: torch.Tensor) -> torch.Tensor:
        if flat.is_floating_point() or flat.is_complex():
            return flat / w
        return torch.div(flat, w, rounding_mode="floor")

    return _on_flat(tree_, "all_reduce_mean", reduce_, mean, bucket_mb)


def broadcast(tree_: PyTree, *, src: int = 0, bucket_mb: float = 25.0) -> PyTree:
    """Rank `src`'s values of every tensor leaf, on every rank (identity in one process).

    Every rank passes a tree of the same structure, shapes and dtypes (its own values are
    ignored except on `src`). Used by `fit` so that all ranks start from the same state.
    """
    if world_size() == 1:
        return tree_

    def bcast(flat: torch.Tensor, buckets: list[torch.Tensor]) -> None:
        works = [dist.broadcast(b, src=src, async_op=True) for b in buckets]
        for work in works:
            work.wait()

    return _on_flat(tree_, f"broadcast from rank {src}", bcast, lambda flat: flat, bucket_mb)


def broadcast_object(obj: T, *, src: int = 0) -> T:
    """Rank `src`'s picklable `obj` on every rank (identity in one process)."""
    if world_size() == 1:
        return obj
    box = [obj if rank() == src else None]
    with _Collective(f"broadcast_object from rank {src}"):
        dist.broadcast_object_list(box, src=src)
    return box[0]  # type: ignore[return-value]


def _remote_error(name: str, message: str) -> Exception:
    cls = getattr(errors, name, None)
    text = f"{message} (raised on rank 0)"
    if isinstance(cls, type) and issubclass(cls, FuncmlError):
        return cls(text)
    return DistributedError(f"rank 0 failed with {name}: {text}")


def on_main(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run `fn(*args, **kwargs)` on rank 0 only and return its (picklable) result on every rank.

    For work that must happen once: creating the run directory, restoring a checkpoint,
    evaluating. If `fn` raises on rank 0, rank 0 re-raises it and every other rank raises the
    same funcml error type (else `DistributedError`) with its message, so that all processes
    stop together instead of waiting for one that has failed. In one process: `fn(...)`.
    """
    if world_size() == 1:
        return fn(*args, **kwargs)
    if is_main():
        try:
            result = fn(*args, **kwargs)
        except Exception as e:
            broadcast_object(("error", type(e).__name__, str(e)))
            raise
        broadcast_object(("ok", result))
        return result
    payload = broadcast_object(None)
    if payload[0] == "error":
        raise _remote_error(payload[1], payload[2])
    return payload[1]

