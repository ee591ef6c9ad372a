"""The one training loop every application uses.

    result = fit(ts, train_step, get_batch, num_steps=2000,
                 eval_fn=evaluate, eval_every=250, run=run, checkpoints=manager,
                 early_stop=EarlyStop("val/miou", mode="max", patience=4))
    result.ts, result.summary

Data comes from `get_batch(step) -> batch`, a function of the step number (for generated
data: `shapes_batch(fold_in(data_key, step), ...)`; for a dataset: an epoch permutation
from a key). So a run resumed at step k sees exactly the batches it would have seen, and
with the step key `fold_in(ts.key, ts.step)` it reproduces the uninterrupted run bit for bit.

The loop: progress (`funcml.train.progress`: a bar with loss, throughput and the latest
validation metric in a terminal, plain lines every ~15 s and at each eval anywhere else);
metrics logged every `log_every` steps to the run directory; eval every `eval_every` steps and at the end; a checkpoint at every eval
(ranked by the eval metrics) and every `ckpt_every` steps; resume from the latest
checkpoint; early stop on an eval metric; Ctrl-C saves a checkpoint and returns cleanly
with `summary["interrupted"] = True`; a final summary written to `summary.json`.

Data parallel (`funcml.train.distributed`, on when a process group with W > 1 processes is
active): `get_batch(step)` returns this rank's shard, and `train_step` averages the grads.
Only rank 0 writes (metrics, checkpoints, summary, progress bar, messages); the other ranks
may pass the same `run` and `checkpoints` or None. Rank 0 restores the checkpoint when
resuming, and its state is broadcast, so every rank starts from the same one. `eval_fn`
runs on rank 0 alone and its metrics are broadcast, so that every rank takes the same
eval, checkpoint and early-stop decisions (`on_eval` is called on rank 0 only).
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import sys
import time
from typing import TYPE_CHECKING, Any, Callable, Literal

import torch

from ..checkpoint import CheckpointManager
from ..checkpoint import restore as restore_checkpoint
from ..errors import ConfigError
from . import distributed
from .progress import Progress
from .state import TrainState

if TYPE_CHECKING:
    from ..runs import RunDir

__all__ = ["fit", "FitResult", "EarlyStop"]


@dataclasses.dataclass(frozen=True)
class EarlyStop:
    """Stop when `metric` (an eval metric name) has not improved by `min_delta` for `patience` evals."""

    metric: str
    """The eval metric to watch, e.g. val/miou."""
    mode: Literal["max", "min"] = "max"
    """max: higher is better; min: lower is better."""
    patience: int = 5
    """Evaluations without improvement before stopping."""
    min_delta: float = 0.0
    """The smallest change that counts as an improvement."""

    def improved(self, value: float, best: float | None) -> bool:
        """Whether `value` beats `best` by more than `min_delta` in the direction of `mode`; any non-NaN value
        beats a missing or NaN best."""
        if best is None or math.isnan(best):
            return not math.isnan(value)
        return value > best + self.min_delta if self.mode == "max" else value < best - self.min_delta


@dataclasses.dataclass
class FitResult:
    ts: TrainState
    summary: dict[str, Any]


def _floats(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            out[k] = float(v)
        elif isinstance(v, (int, float)):
            out[k] = float(v)
    return out


def _batch_size(batch: Any) -> int | None:
    from ..tree import leaves

    for x in leaves(batch):
        if isinstance(x, torch.Tensor) and x.ndim > 0:
            return int(x.shape[0])
    return None


def fit(ts: TrainState, train_step: Callable[[TrainState, Any], tuple[TrainState, dict]],
        get_batch: Callable[[int], Any], *, num_steps: int,
        eval_fn: Callable[[TrainState], dict[str, Any]] | None = None, eval_every: int = 0,
        run: RunDir | None = None, checkpoints: CheckpointManager | None = None, ckpt_every: int = 0,
        config: Any = None, log_every: int = 10, resume: bool = False, resume_step: int | None = None,
        early_stop: EarlyStop | None = None,
        progress: bool = True, desc: str = "train", on_eval: Callable[[int, dict], None] | None = None,
        data_parallel: bool | None = None) -> FitResult:
    """Train from `ts` up to step `num_steps` (see the module docstring).

    Arguments:
        ts: the start state (used as the `like` tree when resuming).
        train_step: from `make_train_step`.
        get_batch: `step -> batch`.
        num_steps: the total number of steps of the run (a resumed run continues to it).
        eval_fn: `ts -> {name: value}` (e.g. {"val/miou": 0.8}); run every `eval_every` steps and at the end.
        run: where metrics and the summary go (None: nothing written).
        checkpoints: a `CheckpointManager` (None: no checkpoints).
        resume: continue from `checkpoints.latest_verified()` when there is one.
        resume_step: with `resume`, continue from this step's checkpoint instead (`CheckpointManager.rewind`:
            later checkpoints are set aside as `step_*.superseded`, never deleted).
        progress: report progress on stderr (a bar in a terminal, plain lines elsewhere); False: silent.
        early_stop: stop on an eval metric that stopped improving.
        data_parallel: None: on when a process group with more than one process is active
            (see the module docstring); False: every process behaves as a single one.
    """
    if num_steps < 0:
        raise ConfigError(f"num_steps must be >= 0, got {num_steps}")
    dp = distributed.world_size() > 1 if data_parallel is None else data_parallel
    main = not dp or distributed.is_main()
    if not main:  # only rank 0 writes
        run, checkpoints = None, None
    world = distributed.world_size() if dp else 1

    def restore() -> None:
        nonlocal ts
        if resume and checkpoints is not None:
            if resume_step is not None:
                path = checkpoints.rewind(resume_step)
            else:
                path = checkpoints.latest_verified()  # broken newer checkpoints are set aside, and named
            if path is None:
                return
            ts = restore_checkpoint(path, ts, device=ts.key.device)
            print(f"[fit] resumed from {path} at step {int(ts.step)}", file=sys.stderr)
            if run is not None:  # rows logged past the checkpoint belong to the lost part of the run
                run.drop_rows_after(int(ts.step))

    if dp:
        distributed.on_main(restore)  # a failed restore stops every rank
        ts = distributed.broadcast(ts, src=0)
    else:
        restore()
    start = int(ts.step)
    t_start = time.perf_counter()
    window_t, window_items, window_steps = time.perf_counter(), 0, 0
    throughputs: list[float] = []
    step_times: list[float] = []
    last_train: dict[str, float] = {}
    last_eval: dict[str, float] = {}
    best_value: float | None = None
    best_step: int | None = None
    evals_without_improvement = 0
    stopped_early = interrupted = False
    # What the progress shows as "best": the early-stop metric, else the checkpoints' ranking metric.
    if early_stop is not None:
        monitor = EarlyStop(early_stop.metric, early_stop.mode)
    elif checkpoints is not None and getattr(checkpoints, "best_metric", None):
        monitor = EarlyStop(checkpoints.best_metric, checkpoints.mode)
    else:
        monitor = None
    shown_best: tuple[float | None, int | None] = (None, None)
    reporter = Progress(num_steps, start, desc, enabled=progress and main)

    def do_eval(step: int) -> dict[str, float]:
        nonlocal best_value, best_step, evals_without_improvement, last_eval, shown_best
        if eval_fn is None:
            metrics = {}
        elif dp:
            metrics = distributed.on_main(lambda: _floats(eval_fn(ts)))
        else:
            metrics = _floats(eval_fn(ts))
        last_eval = metrics
        if run is not None and metrics:
            run.log(step, metrics, split="val")
        if early_stop is not None and early_stop.metric in metrics:
            value = metrics[early_stop.metric]
            if early_stop.improved(value, best_value):
                best_value, best_step, evals_without_improvement = value, step, 0
            else:
                evals_without_improvement += 1
        if on_eval is not None and main:
            on_eval(step, metrics)
        value = metrics.get(monitor.metric) if monitor is not None else None
        if value is not None and monitor.improved(value, shown_best[0]):
            shown_best = (metrics[monitor.metric], step)
        reporter.eval(step, metrics, (monitor.metric, *shown_best) if monitor is not None else None)
        return metrics

    def save(step: int, metrics: dict[str, float]) -> None:
        if checkpoints is not None and step not in checkpoints.steps():
            checkpoints.save(ts, metrics={**last_train, **metrics}, config=config)

    step = start
    try:
        while step < num_steps:
            batch = get_batch(step)
            ts, metrics = train_step(ts, batch)
            step += 1
            window_items += (_batch_size(batch) or 0) * world
            window_steps += 1
            if step % log_every == 0 or step == num_steps:
                last_train = _floats(metrics)  # the host sync of the window
                now = time.perf_counter()
                elapsed = now - window_t
                if step - window_steps > start:  # the first window holds the compile: not a sample
                    throughputs.append(window_items / elapsed)
                    step_times.append(elapsed / window_steps)
                window_t, window_items, window_steps = now, 0, 0
                if run is not None:
                    run.log(step, last_train, split="train")
                reporter.train(step, last_train.get("loss", float("nan")), throughputs[-1] if throughputs else None)
            reporter.update(1)
            is_eval = eval_fn is not None and eval_every > 0 and step % eval_every == 0 and step < num_steps
            if is_eval:
                save(step, do_eval(step))
                if early_stop is not None and evals_without_improvement >= early_stop.patience:
                    stopped_early = True
                    if main:
                        print(f"[fit] early stop at step {step}: {early_stop.metric} has not improved for "
                              f"{early_stop.patience} evals (best {best_value} at step {best_step})", file=sys.stderr)
                    break
            elif ckpt_every > 0 and step % ckpt_every == 0:
                save(step, {})
    except KeyboardInterrupt:
        interrupted = True
        if main:
            print(f"\n[fit] interrupted at step {step}: saving a checkpoint", file=sys.stderr)
    finally:
        reporter.close()
    if not interrupted and eval_fn is not None:
        do_eval(step)
    if step > start or interrupted:
        save(step, last_eval)
    summary = {
        "steps": step,
        "start_step": start,
        "seconds": round(time.perf_counter() - t_start, 3),
        "items_per_s_median": round(statistics.median(throughputs), 2) if throughputs else None,
        "step_ms_median": round(1000 * statistics.median(step_times), 3) if step_times else None,
        "train": last_train,
        "eval": last_eval,
        "best": {"metric": early_stop.metric, "value": best_value, "step": best_step} if early_stop else None,
        "stopped_early": stopped_early,
        "interrupted": interrupted,
    }
    if run is not None:
        run.write_json("summary.json", summary)
    return FitResult(ts, summary)
