"""The one run orchestration: what every application's training shares, written once.

An application (`funcml.seg.task`, `funcml.asr.task`) brings its data, model config, loss and
eval metric; this module does the rest of a run:

    @dataclasses.dataclass(frozen=True)
    class MyTrainConfig(TrainConfig, steps=500, lr=1e-3, experiment="my"):   # shared fields, own defaults
        model: MyModelConfig = MyModelConfig()       # (and its attribute docstring, as every field)

    TASK = Task("my", MyTrainConfig, best_metric="val/acc", mode="max", resume_fields=("model", "seed"))

    run, summary = train_task(TASK, cfg, data=lambda: (get_batch, val), loss_fn=loss_fn,
                              validate=validate, report=report)
    cfg, ts, ckpt = load_run(TASK, run.path)            # the best checkpoint, checked against cfg's model

A run, for a config `cfg` (a `TrainConfig`):

    root = key(cfg.seed)
    params, model_state = model.init(fold_in(root, "init"), cfg.model)     # or the given params
    tx = clip_by_global_norm(grad_clip) -> AdamW(warmup + cosine schedule over cfg.steps)
    ts = init_train_state(params, model_state, tx, fold_in(root, "train"))  # the step folds in its number

then `funcml.train.fit` for `cfg.steps` steps on `get_batch(step)`, with `validate` every
`eval_every` steps and at the end, checkpoints ranked by `task.best_metric` (the best one and
the last `keep_last`), early stopping on it after `patience` evaluations without improvement,
the curves `task.curves` under plots/, and `report` of the checkpoint `load_run` picks written
to eval.json. `cfg.resume` continues a run directory from its latest verified checkpoint,
refusing one trained with other `task.resume_fields`. Ctrl-C saves a checkpoint and raises
`TrainingInterrupted` naming the `--resume` command (CLIs exit 130).

Data parallel (under torchrun): every rank trains on its shard (`get_batch` is the
application's), `cfg.batch_size` is the global batch and must divide by the number of
processes; rank 0 alone writes the run directory, validates and reports.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import sys
import time
import typing
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import torch

from . import checkpoint, devices, optim, random
from . import config as config_lib
from .errors import CheckpointError, ConfigError, DataError, TrainingInterrupted
from .nn import model as models
from .runs import RunDir, create_run, open_run
from .train import EarlyStop, TrainState, distributed, fit, init_train_state, make_train_step

__all__ = ["TrainConfig", "Task", "optimizer", "initial_state", "check_global_batch", "train_task",
           "checkpoint_of", "config_of", "load_run", "Prefetched", "make_optimizer", "open_for_resume",
           "checkpoint_dir", "epoch_indices"]

PyTree = Any


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The fields every application's train config shares (its optimizer, its run directory).

    A task config inherits them and names its own defaults in the class statement:
    `class SegTrainConfig(TrainConfig, steps=1000, lr=3e-3, ...)` (`__init_subclass__` redeclares
    those fields with the new defaults; their docstrings and flags stay these)."""

    steps: int = 1000
    """Total optimizer steps (a resumed run continues up to it)."""
    batch_size: int = 16
    """The global batch (a multiple of the number of processes under torchrun)."""
    lr: float = 1e-3
    """Peak AdamW learning rate (linear warmup, then cosine decay to 0 at `steps`)."""
    weight_decay: float = 1e-2
    """AdamW decoupled weight decay on weights with ndim >= 2."""
    warmup_steps: int = 100
    """Linear warmup steps."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0 = off)."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Autocast dtype of the train step (master weights stay fp32); fp16 adds a dynamic loss scale (for CUDA)."""
    device: str = "auto"
    """Where the run computes: auto (CUDA when a GPU is visible, else the CPU), cpu, cuda or cuda:N. Params,
    keys, batches and metrics live there; checkpoints load on any device."""
    compile: bool = False
    """torch.compile the loss and its gradient, the optimizer update staying on torch's fused eager kernels
    (`make_train_step(compile="grads")`: on 2 CPU cores the main job's seg step ran 1.23x eager after a cold
    compile of ~70 s, ~10 s from the cache in .cache/funcml-compile; pays off for long or repeated runs with
    fixed shapes)."""
    eval_every: int = 100
    """Validate (and checkpoint) every this many steps, and at the end."""
    seed: int = 0
    """Model init, dropout and training-time augmentation."""
    data_seed: int = 0
    """The data: generated corpora and validation splits, held-out files, the order of training examples."""
    runs_dir: Path = Path("runs")
    """Runs are written under <runs_dir>/<experiment>/<time>-<id>/."""
    experiment: str = "run"
    """The run's folder name under runs_dir."""
    resume: Path | None = None
    """Continue this run directory from its latest verified checkpoint (same model and data)."""
    resume_step: int | None = None
    """With --resume: continue from this step's checkpoint instead of the newest (later ones are set aside as
    step_*.superseded, never deleted)."""
    patience: int = 0
    """Stop after this many evaluations without a better best metric (seg: val/miou, ASR: val/cer; 0 = never)."""
    keep_last: int = 2
    """Checkpoints kept besides the best."""
    tensorboard: bool = False
    """Also write the logged scalars and, at the end, the run's figures as TensorBoard event files in
    <run>/tensorboard/ (needs the optional extra: pip install 'funcml[tensorboard]')."""

    def __init_subclass__(cls, **defaults: Any) -> None:
        super().__init_subclass__()
        hints = typing.get_type_hints(TrainConfig)
        unknown = sorted(set(defaults) - set(hints))
        if unknown:
            raise TypeError(f"{cls.__name__}: {unknown} are not TrainConfig fields; known: {sorted(hints)}")
        # Annotated class attributes are what @dataclass reads: it keeps the field's place, takes the default.
        cls.__annotations__ = {**{k: hints[k] for k in defaults}, **cls.__dict__.get("__annotations__", {})}
        for name, value in defaults.items():
            setattr(cls, name, value)

    def __post_init__(self) -> None:
        config_lib.require_at_least(self, 0, "eval_every", "warmup_steps", "patience")
        config_lib.require_at_least(self, 1, "steps", "batch_size", "keep_last")
        config_lib.require(self.lr > 0, self, f"lr must be > 0, got {self.lr}")
        config_lib.require(self.weight_decay >= 0 and self.grad_clip >= 0, self,
                           "weight_decay and grad_clip must be >= 0")
        config_lib.require_one_of(self, "precision", ("fp32", "bf16", "fp16"))
        devices.check_name(self.device)
        config_lib.require(self.resume_step is None or (self.resume is not None and self.resume_step >= 0), self,
                           f"resume_step ({self.resume_step}) needs --resume RUN and a step >= 0")


@dataclasses.dataclass(frozen=True)
class Task:
    """What the orchestration needs to know of an application besides its hooks."""

    name: str
    """Short name: the messages' tag (`[seg] run directory ...`) and the trainer `experiments/<name>_train.py`."""
    config_class: type
    """The application's `TrainConfig` subclass: what `load_run` reads a run's config as."""
    best_metric: str
    """The validation metric that ranks checkpoints and drives early stopping (e.g. val/miou)."""
    mode: Literal["max", "min"]
    """max: higher `best_metric` is better; min: lower is better."""
    resume_fields: tuple[str, ...]
    """Config fields a resumed run must keep (its model and data)."""
    curves: tuple[tuple[str, str, str, str], ...] = (("loss", "train", "loss", "train loss"),)
    """Plots written at the end: `(file_stem, split, metric, y_label)` (`funcml.report.curves.write_curves`)."""


def optimizer(cfg: TrainConfig) -> optim.GradientTransformation:
    """Clip by global norm (if `grad_clip > 0`), then AdamW with warmup + cosine decay over `steps`
    (`make_optimizer` of the config's fields)."""
    return make_optimizer(steps=cfg.steps, lr=cfg.lr, warmup_steps=cfg.warmup_steps,
                          weight_decay=cfg.weight_decay, grad_clip=cfg.grad_clip)


def initial_state(cfg: TrainConfig, params: PyTree | None = None) -> tuple[TrainState, optim.GradientTransformation]:
    """The step-0 train state of `cfg` and its optimizer: a fresh `cfg.model` from `fold_in(key(seed), "init")`
    (or the given `params` with its model state), keyed `fold_in(key(seed), "train")`, with a loss scale
    under fp16; on the CPU (`train_task` puts it on the run's device)."""
    root = random.key(cfg.seed)
    fresh, model_state = models.init(random.fold_in(root, "init"), cfg.model)
    tx = optimizer(cfg)
    return init_train_state(fresh if params is None else params, model_state, tx, random.fold_in(root, "train"),
                            precision=cfg.precision), tx


def check_global_batch(batch_size: int) -> int:
    """The number of processes W, after checking that the global `batch_size` is a multiple of it
    (`ConfigError` with the nearest multiple otherwise)."""
    world = distributed.world_size()
    if batch_size % world:
        raise ConfigError(f"batch_size={batch_size} is the global batch and must be a multiple of the number "
                          f"of processes ({world}); pass --batch-size {world * max(1, batch_size // world)}")
    return world


def train_task(task: Task, cfg: TrainConfig, *, data: Callable[[torch.device], tuple[Callable[[int], Any], Any]],
               loss_fn: Callable, validate: Callable[[PyTree, PyTree, Any], dict[str, float]],
               report: Callable[[PyTree, PyTree, Any, RunDir], dict[str, Any]],
               params: PyTree | None = None, on_run: Callable[[RunDir], None] | None = None,
               progress: bool = True) -> tuple[RunDir, dict[str, Any]]:
    """Train `cfg` (already resolved from its data) as a run of `task`; returns the run and a summary.

    Hooks (the application's own):
        data: `(device) -> (get_batch, val)`: `get_batch(step) -> batch`, this rank's share of step `step`'s
            global batch, a pure function of the step, made on `device` where it can be (batches still on
            the host are put there); `val`, the validation data the other hooks take. Called after a resume
            is checked and before the run directory is made.
        loss_fn: `(params, model_state, batch, key) -> (loss, (metrics, model_state))` (`make_train_step`).
        validate: `(params, model_state, val) -> {"val/...": float}`, holding `task.best_metric`.
        report: `(params, model_state, val, run) -> dict`, written to eval.json with the checkpoint and
            its step, of the checkpoint `load_run` picks (it may also write figures under `run.plots`).
        params: start from these params (fine-tuning) instead of a fresh init; the optimizer is new.
        on_run: `run -> None`, on rank 0 once the run directory exists (e.g. to save a tokenizer).

    The run directory gets config.json, env.json, metrics.csv/jsonl, checkpoints/, the curves,
    summary.json and eval.json. The summary is `fit`'s plus `data_seconds`, `plots`, `eval_json`
    and `run`. Raises `TrainingInterrupted` (a checkpoint saved) on Ctrl-C.
    """
    device = devices.resolve(cfg.device)
    ts, tx = initial_state(cfg, params)
    ts = devices.put(ts, device)
    # what the run records: the step to continue from is a one-off choice (saved, it would rewind every later
    # `--config RUN/config.json --resume RUN`)
    record = dataclasses.replace(cfg, resume_step=None)
    run = None
    if cfg.resume is not None:
        run = distributed.on_main(open_for_resume, cfg.resume, cfg, task.config_class, fields=task.resume_fields)
    check_global_batch(cfg.batch_size)
    t0 = time.perf_counter()
    make_batch, val = data(device)

    def on_device(step: int) -> Any:
        return devices.put(make_batch(step), device)

    # On CUDA the next batch is made while the device runs this step (the host waits for it anyway)
    get_batch = Prefetched(on_device) if device.type == "cuda" else on_device

    data_s = time.perf_counter() - t0
    if run is None:
        run = distributed.on_main(create_run, cfg.runs_dir, cfg.experiment, config=cfg)
    else:
        distributed.on_main(config_lib.save, record, run.path / "config.json")
    if on_run is not None:
        distributed.on_main(on_run, run)
    if cfg.tensorboard and distributed.is_main():
        run.enable_tensorboard()
    if distributed.is_main():
        print(f"[{task.name}] run directory: {run.path} (data ready in {data_s:.1f} s; device "
              f"{devices.describe(device)})", file=sys.stderr)

    main = distributed.is_main()
    manager = checkpoint.CheckpointManager(run.checkpoints, keep_last=cfg.keep_last, keep_best=1,
                                           best_metric=task.best_metric, mode=task.mode) if main else None
    early = EarlyStop(task.best_metric, mode=task.mode, patience=cfg.patience) if cfg.patience > 0 else None
    step = make_train_step(loss_fn, tx, precision=cfg.precision, compile="grads" if cfg.compile else False)
    result = fit(ts, step, get_batch,
                 num_steps=cfg.steps, eval_fn=lambda ts: validate(ts.params, ts.model_state, val),
                 eval_every=cfg.eval_every, run=run, checkpoints=manager, config=record,
                 resume=cfg.resume is not None, resume_step=cfg.resume_step,
                 early_stop=early, progress=progress, desc=cfg.experiment)
    summary = {**result.summary, "data_seconds": round(data_s, 1)}
    if summary["interrupted"]:
        raise TrainingInterrupted(f"training stopped at step {summary['steps']} with a checkpoint saved; "
                                  f"continue with --resume {run.path}")
    if manager is None:  # not rank 0
        return run, {**summary, "run": str(run.path)}
    from .report.curves import write_curves  # matplotlib, only when a run ends

    summary["plots"] = [str(p) for p in write_curves(run, task.curves)]
    if manager.latest() is not None:
        _, best, ckpt = load_run(task, run.path, device=device)
        metrics = {**report(best.params, best.model_state, val, run), "checkpoint": str(ckpt),
                   "step": checkpoint.load_meta(ckpt)["step"]}
        run.write_json("eval.json", metrics)
        summary["eval_json"] = metrics
        summary["plots"] += [str(p) for p in sorted(run.plots.glob("*.png")) if str(p) not in summary["plots"]]
    if cfg.tensorboard:
        run.log_figures(summary["steps"])
        run.close()
        summary["tensorboard"] = str(run.path / "tensorboard")
    summary["run"] = str(run.path)
    return run, summary


class Prefetched:
    """`get_batch(step)` that also starts making batch `step + 1` in a background thread, so that it is
    ready when the loop asks for it. `fn` must be a pure function of the step (every `get_batch` of
    a run is): a prefetched batch is the one `fn(step + 1)` returns, and a step out of order is made
    on the spot."""

    def __init__(self, fn: Callable[[int], Any]):
        self.fn = fn
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="funcml-prefetch")
        self._next: tuple[int, concurrent.futures.Future] | None = None

    def __call__(self, step: int) -> Any:
        ahead, self._next = self._next, None
        batch = ahead[1].result() if ahead is not None and ahead[0] == step else self.fn(step)
        self._next = (step + 1, self._pool.submit(self.fn, step + 1))
        return batch


def checkpoint_of(task: Task, path: str | Path) -> Path:
    """The checkpoint `load_run(task, path)` reads: `path` itself when it is a checkpoint directory, else the
    run directory's best verified checkpoint by `task.best_metric` (else its latest verified one)."""
    return checkpoint_dir(Path(path), best_metric=task.best_metric, mode=task.mode, trainer=f"{task.name}_train")


def config_of(task: Task, ckpt: Path) -> Any:
    """The `task.config_class` config saved in checkpoint `ckpt`'s meta.json (`CheckpointError` when it holds
    none or another kind)."""
    meta = checkpoint.load_meta(ckpt)
    if not meta.get("config"):
        raise CheckpointError(f"{ckpt}: meta.json holds no config; it was not written by funcml.{task.name} training")
    try:
        return config_lib.from_dict(task.config_class, meta["config"])
    except ConfigError as e:
        raise CheckpointError(f"{ckpt}: its config is not a {task.config_class.__name__} ({e})") from None


def load_run(task: Task, path: str | Path, *, device: torch.device | str = "cpu") -> tuple[Any, TrainState, Path]:
    """`(cfg, train_state, ckpt)` of a run directory (its best checkpoint, see `checkpoint_of`) or of one
    checkpoint directory (`step_*`), its tensors on `device` (wherever the run was trained). Names, shapes
    and dtypes are checked against `initial_state(cfg)`; a wrong path is a `DataError`, a missing or
    corrupt checkpoint a `CheckpointError`."""
    ckpt = checkpoint_of(task, path)
    cfg = config_of(task, ckpt)
    like, _ = initial_state(cfg)
    return cfg, checkpoint.restore(ckpt, like, device=device), ckpt


# ------------------------------------------------------------------ run plumbing (optimizer, resume, lookup, order)


def make_optimizer(*, steps: int, lr: float, warmup_steps: int, weight_decay: float,
                   grad_clip: float) -> optim.GradientTransformation:
    """Clip by global norm (if `grad_clip > 0`), then AdamW with a linear warmup to `lr` over
    `warmup_steps` and cosine decay to 0 at `steps`; weight decay on every leaf (`optim.adamw`'s
    default mask: weights with ndim >= 2)."""
    steps = max(steps, 1)
    warmup = min(warmup_steps, steps)
    schedule = optim.warmup_cosine_decay_schedule(0.0, lr, warmup, steps)
    adamw = optim.adamw(schedule, weight_decay=weight_decay)
    return optim.chain(optim.clip_by_global_norm(grad_clip), adamw) if grad_clip > 0 else adamw


def open_for_resume(path: str | Path, cfg: Any, cfg_cls: type, *, fields: Sequence[str]) -> RunDir:
    """Open the run directory `path` to continue training with `cfg`.

    Raises `DataError` when `path` is not a directory, `CheckpointError` when it has no
    `checkpoints/`, and `ConfigError` naming the first of `fields` whose value differs from
    the run's saved `config.json` (resuming with another model or data would silently mix two
    experiments)."""
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"--resume {path}: no such run directory; pass the folder that a previous run printed "
                        "(runs/<experiment>/<time>-<id>)")
    run = open_run(path)
    if not run.checkpoints.is_dir():
        raise CheckpointError(f"--resume {path}: the run has no checkpoints/ folder to resume from")
    saved_path = path / "config.json"
    if saved_path.is_file():
        saved = config_lib.load(cfg_cls, saved_path)
        for field in fields:
            if getattr(saved, field) != getattr(cfg, field):
                raise ConfigError(f"--resume {path}: the run was trained with a different {field} "
                                  f"({getattr(saved, field)!r}, now {getattr(cfg, field)!r}); resume with its own "
                                  f"config: --config {saved_path} --resume {path}")
    return run


def checkpoint_dir(path: Path, *, best_metric: str, mode: str, trainer: str) -> Path:
    """The checkpoint to load from `path`: `path` itself if it is one (has meta.json), else the
    best checkpoint of the run directory by `best_metric` (`mode` "max"/"min") that verifies, else
    its newest that verifies. Broken checkpoints met on the way are set aside and named on stderr
    (`CheckpointManager.best_verified`), never silently passed over."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path} does not exist; pass a run directory (runs/<experiment>/<time>-<id>) or one of its "
                        "checkpoints/step_* folders")
    if (path / "meta.json").is_file():
        return path
    if (path / "checkpoints").is_dir():
        manager = checkpoint.CheckpointManager(path / "checkpoints", best_metric=best_metric, mode=mode)
        found = manager.best_verified()
        if found is None:
            raise CheckpointError(f"{path}: the run has no complete checkpoint under checkpoints/ (did training "
                                  "reach its first eval?)")
        return found
    raise DataError(f"{path} is neither a run directory (with checkpoints/) nor a checkpoint directory (with "
                    f"meta.json); pass the run folder that {trainer} printed")


def epoch_indices(key: torch.Tensor, n: int, step: int, batch_size: int) -> torch.Tensor:
    """The example indices of batch `step` when walking a dataset of `n` items epoch by epoch.

    Global example `g = step * B + i` is position `g mod n` of the permutation of epoch
    `g // n`, `permutation(fold_in(key, epoch), n)`: a pure function of `(key, step)`, so a
    resumed run sees the batches of the uninterrupted one. Returns `[B]` int64.
    """
    if n < 1:
        raise DataError(f"epoch_indices: the dataset is empty (n={n})")
    if batch_size < 1:
        raise ConfigError(f"epoch_indices: batch_size must be >= 1, got {batch_size}")
    g = torch.arange(step * batch_size, (step + 1) * batch_size)
    epochs = torch.unique(g // n).tolist()
    perms = {e: random.permutation(random.fold_in(key, e), n) for e in epochs}
    return torch.stack([perms[int(e)][int(p)] for e, p in zip(g // n, g % n)])
