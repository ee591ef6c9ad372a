"""The pure train step: `train_step(ts, batch) -> (ts, metrics)`, and its eval twin.

    def loss_fn(params, model_state, batch, key):
        logits, model_state = model.apply(params, model_state, batch["x"], cfg, key=key, train=True)
        loss = cross_entropy(logits, batch["y"])
        return loss, ({"acc": accuracy(logits, batch["y"])}, model_state)

    train_step = make_train_step(loss_fn, optim.adamw(1e-3), precision="bf16")
    ts, metrics = train_step(ts, batch)

The step follows big_vision's `update_fn`: the step key is `fold_in(ts.key, ts.step)`, so a
run resumed from a saved step replays the same randomness; gradients come from
`torch.func.grad_and_value(loss_fn, has_aux=True)` when the step is compiled or transformed
(vmap over an ensemble), and from `torch.autograd.grad` on detached copies of the params when
it runs eagerly (`funcml._eager.grad_and_value`: the same numbers without functorch's per-op
overhead); the optimizer is an
optax-style transformation; nothing is updated in place. The whole step is compiled as one graph
(`funcml.compiler.compile`: `torch.compile(fullgraph=True)`), optimizer included.

Non-finite values. The optimizer runs inside `optim.apply_if_finite` (its state is
`ts.opt_state`, built by `init_train_state`): with `finite = isfinite(loss) & isfinite(||g||)`
a step with a NaN/Inf loss or gradient leaves params, model state and the inner optimizer
state exactly as they were (branch-free, `where(finite, new, old)` per leaf, so the compiled
graph has no data-dependent control flow), and the wrapper counts it in
`ts.opt_state.total_notfinite`, which is checkpointed with the run. Then `nonfinite="skip"`
goes on (`metrics["skipped"]` is that count), and `nonfinite="raise"` (the default) raises
`NonFiniteError` naming the step and the first non-finite leaf (found by re-running the
gradient eagerly, once, on the failing batch). A state built by hand with the bare
`tx.init(params)` works too; the step then wraps it for the one update and `skipped` counts
that step alone.

Precision. Params stay float32 (master weights). "bf16" runs the loss under
`torch.autocast(dtype=bfloat16)`. "fp16" also autocasts, and keeps a dynamic loss scale in
`ts.loss_scale` (`funcml.train.loss_scale`): the loss is multiplied by the scale before
differentiation and the grads divided after; an overflow skips the update (never an error)
and halves the scale, and `growth_interval` finite steps in a row double it.

Gradient accumulation. `grad_accum=k` splits the batch of one call into k micro-batches and
averages their gradients before the one update (micro-batch i gets the key
`fold_in(step_key, i)`); to accumulate across calls instead, wrap the optimizer in
`optim.multi_steps(tx, every_k)`.

Data parallel (`funcml.train.distributed`). With W processes each rank passes its shard of
the global batch; the step is split in two compiled graphs around one collective:

    g_r, loss_r, metrics_r, state_r = local_grads(ts, shard_r)      # compiled
    g, loss, metrics, state = (1 / W) sum_r (...)                    # all_reduce, 1 buffer per dtype
    ts, metrics = update(ts, g, loss, metrics, state)                # compiled, as above

The averaged loss and grads decide `finite`, so all ranks skip or raise together; float
model state (BatchNorm running statistics) is averaged too, so the ranks never drift apart.
Rank r's micro-batch i gets the key `fold_in(step_key, r * grad_accum + i)`: W ranks with
`grad_accum=A` see the keys and rows of one process with `grad_accum=W*A` on the global
batch, and without randomness in the loss they match one process with `grad_accum=1`.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Literal

import torch

from .. import _eager, compiler, optim, random, tree
from ..checks import check_finite
from ..errors import ConfigError, NonFiniteError, ShapeError
from . import distributed
from . import loss_scale as _loss_scale
from .state import TrainState

__all__ = ["make_train_step", "make_eval_step", "init_train_state", "LossFn", "Precision"]

Precision = Literal["fp32", "bf16", "fp16"]
LossFn = Callable[[Any, Any, Any, torch.Tensor], tuple[torch.Tensor, tuple[dict, Any]]]
_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def init_train_state(params: Any, model_state: Any, tx: optim.GradientTransformation, key: torch.Tensor, *,
                     precision: Precision = "fp32", init_loss_scale: float = 2.0**15) -> TrainState:
    """A step-0 TrainState for `make_train_step(loss_fn, tx, ...)`.

    Its `opt_state` is `optim.apply_if_finite(tx).init(params)`: tx's state inside an
    `ApplyIfFiniteState` that counts non-finite steps. Under fp16 it carries a
    `LossScaleState` starting at `init_loss_scale`.
    """
    dev = key.device
    loss_scale = _loss_scale.init_loss_scale(init_loss_scale, device=dev) if precision == "fp16" else None
    return TrainState(torch.zeros((), dtype=torch.int64, device=dev), params, model_state,
                      optim.apply_if_finite(tx).init(params), key, loss_scale)


def _autocast(precision: Precision, device_type: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=_AUTOCAST[precision])


def _split_micro(batch: Any, n: int) -> list[Any]:
    """Split every tensor leaf of `batch` along dim 0 into `n` equal micro-batches."""
    sizes = {x.shape[0] for x in tree.leaves(batch) if isinstance(x, torch.Tensor) and x.ndim > 0}
    if len(sizes) != 1:
        raise ShapeError(f"grad_accum: batch leaves disagree on the batch dim: {sorted(sizes)}")
    (b,) = sizes
    if b % n:
        raise ShapeError(f"grad_accum={n} must divide the batch size {b}")
    return [tree.tree_map(lambda x, i=i: x[i * (b // n):(i + 1) * (b // n)] if x.ndim > 0 else x, batch)
            for i in range(n)]


def make_train_step(loss_fn: LossFn, tx: optim.GradientTransformation, *, precision: Precision = "fp32",
                    grad_accum: int = 1, compile: bool | Literal["grads"] = True,
                    nonfinite: Literal["raise", "skip"] = "raise",
                    growth_interval: int = 200, data_parallel: bool | None = None
                    ) -> Callable[[TrainState, Any], tuple[TrainState, dict]]:
    """Build `train_step(ts, batch) -> (ts, metrics)`.

    Arguments:
        loss_fn: `(params, model_state, batch, key) -> (loss, (metrics, model_state))`, pure.
        tx: the optimizer (an `optim.GradientTransformation`; put clipping in its chain).
        precision: "fp32", "bf16" (autocast) or "fp16" (autocast + dynamic loss scaling; the
            state must come from `init_train_state(..., precision="fp16")`).
        grad_accum: split the batch into this many micro-batches and average their grads
            (micro-batch i uses the key `fold_in(step_key, i)`; model state is threaded).
        compile: True: wrap the step in `torch.compile(fullgraph=True)`; "grads": compile only the
            loss and its gradient (forward and backward) and run the optimizer update eagerly, on
            torch's fused kernels (measured on the main job's seg step, benchmarks/bench_compile.py:
            a third to a half of the whole step's cold compile, 69 s against 192 s on 2 cores, a
            third of its warm one, 10 s against 30 s; 1.23-1.39x eager, the whole step 1.02-1.36x);
            False: eager.
        nonfinite: "raise" or "skip" (see the module docstring); either way the step runs its
            optimizer as `optim.apply_if_finite(tx)`, whose state `init_train_state` builds.
        data_parallel: average grads over the processes of the `torch.distributed` group
            (see "Data parallel" in the module docstring); None: on when a group with more
            than one process is initialized (`funcml.train.distributed.init_from_env`).

    Metrics (tensors, no host sync): the loss_fn's metrics averaged over micro-batches (and
    ranks), `loss`, `grad_norm` (before clipping), `lr`, `finite` (1.0 or 0.0), `skipped` (int64: the
    steps skipped as non-finite so far, `ts.opt_state.total_notfinite`), `loss_scale` (fp16).
    The returned function has `step_fn` (the uncompiled single-process step) and
    `data_parallel` (whether it averages over processes) attributes.
    """
    if precision not in ("fp32", "bf16", "fp16"):
        raise ConfigError(f"precision must be 'fp32', 'bf16' or 'fp16', got {precision!r}")
    if nonfinite not in ("raise", "skip"):
        raise ConfigError(f"nonfinite must be 'raise' or 'skip', got {nonfinite!r}")
    if grad_accum < 1:
        raise ConfigError(f"grad_accum must be >= 1, got {grad_accum}")
    if compile not in (True, False, "grads"):
        raise ConfigError(f"compile must be True, False or 'grads', got {compile!r}")
    compile_update = compile is True
    if data_parallel is None:
        data_parallel = distributed.world_size() > 1
    elif data_parallel and not distributed.is_initialized():
        raise ConfigError("data_parallel=True needs a torch.distributed process group: call "
                          "funcml.train.distributed.init_from_env() in a script launched with torchrun")

    def scaled_loss(params, model_state, batch, key, scale):
        with _autocast(precision, key.device.type):
            loss, (metrics, new_state) = loss_fn(params, model_state, batch, key)
        loss = loss.float()
        return loss * scale if scale is not None else loss, (loss, metrics, new_state)

    grad_fn = torch.func.grad_and_value(scaled_loss, has_aux=True)
    eager_grad_fn = _eager.grad_and_value(scaled_loss)  # the same numbers, eagerly without functorch

    guard = optim.apply_if_finite(tx)

    def grads_and_aux(ts: TrainState, batch: Any, micro_offset: int | None = None):
        """`micro_offset`: under data parallelism, the global index of this rank's first
        micro-batch (`rank * grad_accum`); micro-batch i then uses `fold_in(step_key, offset + i)`."""
        step_key = random.fold_in(ts.key, ts.step)
        scale = ts.loss_scale.scale if ts.loss_scale is not None else None
        grad_fn_ = eager_grad_fn if _eager.grad_applies(ts.params) else grad_fn
        if grad_accum == 1 and micro_offset is None:
            grads, (_, (loss, metrics, new_state)) = grad_fn_(ts.params, ts.model_state, batch, step_key, scale)
        else:
            grads, loss, metrics, new_state = _accumulate(grad_fn_, ts, batch, step_key, scale, grad_accum,
                                                          micro_offset or 0)
        if scale is not None:
            grads = _loss_scale.unscale_grads(grads, ts.loss_scale)
        return grads, loss, metrics, new_state

    def update(ts: TrainState, grads: Any, loss: torch.Tensor, metrics: dict, new_model_state: Any
               ) -> tuple[TrainState, dict]:
        loss_finite = torch.isfinite(loss)
        # One reduction instead of an isfinite per leaf: a NaN or Inf anywhere makes the global
        # norm NaN or Inf (so does a norm beyond float32's range, ~1.8e19: a step to skip too).
        grad_norm = optim.global_norm(grads)
        finite = loss_finite & torch.isfinite(grad_norm)
        wrapped = isinstance(ts.opt_state, optim.ApplyIfFiniteState)
        opt_state = ts.opt_state if wrapped else _lift(ts.opt_state, finite.device)
        new_params, new_opt_state = guard.apply(grads, opt_state, ts.params, finite=finite)
        skipped = new_opt_state.total_notfinite
        if not wrapped:
            new_opt_state = new_opt_state.inner_state
        if not (_eager.grad_applies(ts.params) and finite.device.type == "cpu" and bool(finite)):  # eager, finite: as is
            new_model_state = tree.tree_map(lambda n, o: torch.where(finite, n, o), new_model_state, ts.model_state)
        loss_scale = ts.loss_scale
        if loss_scale is not None:
            loss_scale = _loss_scale.update_loss_scale(loss_scale, finite, growth_interval)
        new_ts = TrainState(ts.step + 1, new_params, new_model_state, new_opt_state, ts.key, loss_scale)
        out = {k: (v.detach().float() if isinstance(v, torch.Tensor) else v) for k, v in dict(metrics).items()}
        out.update(loss=loss.detach(), grad_norm=grad_norm.detach(),
                   lr=optim.current_lr(new_opt_state).detach().float() if _has_lr(ts.opt_state) else torch.tensor(0.0),
                   finite=finite.float(), loss_finite=loss_finite.float(), skipped=skipped)
        if ts.loss_scale is not None:
            out["loss_scale"] = ts.loss_scale.scale
        return new_ts, out

    def step(ts: TrainState, batch: Any) -> tuple[TrainState, dict]:
        return update(ts, *grads_and_aux(ts, batch))

    if data_parallel:
        offset = distributed.rank() * grad_accum

        def local_grads(ts: TrainState, batch: Any):
            grads, loss, metrics, new_state = grads_and_aux(ts, batch, offset)
            return grads, loss, {k: _as_float(v) for k, v in dict(metrics).items()}, new_state

        # The all-reduce runs between two compiled graphs: a collective inside a fullgraph
        # region is not portable across backends.
        local_grads_c = compiler.compile(local_grads) if compile else local_grads
        update_c = compiler.compile(update) if compile_update else update

        def compiled(ts: TrainState, batch: Any) -> tuple[TrainState, dict]:
            # Loss, metrics and model state travel with the grads (one buffer per dtype), so
            # every rank sees the same finite flag and takes the same skip-or-raise decision.
            return update_c(ts, *distributed.all_reduce_mean(local_grads_c(ts, batch)))

        def describe(ts: TrainState, batch: Any) -> str:
            return _describe_nonfinite(lambda t, b: grads_and_aux(t, b, offset), ts, batch, data_parallel=True)
    else:
        if compile == "grads":
            grads_c = compiler.compile(grads_and_aux)

            def compiled(ts: TrainState, batch: Any) -> tuple[TrainState, dict]:
                return update(ts, *grads_c(ts, batch))
        else:
            compiled = compiler.compile(step) if compile else step

        def describe(ts: TrainState, batch: Any) -> str:
            return _describe_nonfinite(grads_and_aux, ts, batch)

    def train_step(ts: TrainState, batch: Any) -> tuple[TrainState, dict]:
        if precision == "fp16" and ts.loss_scale is None:
            raise ConfigError("precision='fp16' needs a loss scale in the train state: "
                              "build it with init_train_state(..., precision='fp16')")
        new_ts, metrics = compiled(ts, batch)
        if compile:
            new_ts = tree.tree_map(_restride_like, new_ts, ts)
        # One host sync per step: the price of stopping at the first bad step. An fp16
        # overflow (finite loss, overflowing grads) is the loss scale's business: skipped.
        if nonfinite == "raise" and not bool(metrics["finite"]):
            if not (ts.loss_scale is not None and bool(metrics["loss_finite"])):
                raise NonFiniteError(describe(ts, batch))
        return new_ts, metrics

    train_step.step_fn = step  # the uncompiled pure single-process step, for tests and vmap
    train_step.data_parallel = data_parallel
    return train_step


def _lift(opt_state: Any, device: torch.device) -> optim.ApplyIfFiniteState:
    """A bare optimizer state (built by hand with `tx.init`) inside a fresh `ApplyIfFiniteState`."""
    zero = torch.zeros((), dtype=torch.int64, device=device)
    return optim.ApplyIfFiniteState(zero, torch.ones((), dtype=torch.bool, device=device), zero, opt_state)


def _accumulate(grad_fn: Callable, ts: TrainState, batch: Any, step_key: torch.Tensor, scale: Any, n: int,
                offset: int) -> tuple[Any, torch.Tensor, dict, Any]:
    """`grad_accum`: the mean gradient, loss and metrics of `n` equal micro-batches of `batch`.

    Micro-batch i uses the key `fold_in(step_key, offset + i)`; the model state is threaded
    through them in order (BatchNorm's running statistics see every micro-batch).
    """
    grads, losses, metric_list, new_state = None, [], [], ts.model_state
    for i, micro in enumerate(_split_micro(batch, n)):
        g, (_, (l_i, m_i, new_state)) = grad_fn(ts.params, new_state, micro, random.fold_in(step_key, offset + i),
                                                scale)
        grads = g if grads is None else tree.tree_map(torch.add, grads, g)
        losses.append(l_i)
        metric_list.append(m_i)
    grads = tree.tree_map(lambda g: g / n, grads)
    metrics = tree.tree_map(lambda *ms: torch.stack([m.float() for m in ms]).mean(), *metric_list)
    return grads, torch.stack(losses).mean(), metrics, new_state


def _restride_like(new: Any, old: Any) -> Any:
    """`new` viewed with `old`'s strides when they differ only on size-1 dims, else `new`.

    Inductor may hand a leaf back with other strides on its size-1 dims than it went in with
    (a 1x1 conv kernel `[K, C, 1, 1]` comes out channels-last, `(C, 1, C, C)` instead of
    `(C, 1, 1, 1)`): the same memory, but Dynamo guards on strides, so the next call would
    recompile the whole step once. The view costs nothing and keeps one graph.
    """
    if not isinstance(new, torch.Tensor) or not isinstance(old, torch.Tensor):
        return new
    if new.shape != old.shape or new.stride() == old.stride():
        return new
    if all(a == b or n == 1 for a, b, n in zip(new.stride(), old.stride(), new.shape)):
        return new.as_strided(old.shape, old.stride())
    return new


def _as_float(v: Any) -> Any:
    return v.float() if isinstance(v, torch.Tensor) else v


def _has_lr(opt_state: Any) -> bool:
    try:
        optim.current_lr(opt_state)
        return True
    except Exception:  # noqa: BLE001 - optimizers without a learning rate (e.g. a bare scale)
        return False


def _describe_nonfinite(grads_and_aux, ts: TrainState, batch: Any, data_parallel: bool = False) -> str:
    step = int(ts.step)
    grads, loss, _, _ = grads_and_aux(ts, batch)
    where = f"loss = {float(loss)}"
    if bool(torch.isfinite(loss)):
        try:
            check_finite(grads, name="grads")
            if data_parallel:
                where = (f"on another rank's shard (this rank's loss {float(loss):.6g} and grads are finite; "
                         "the grads are averaged over ranks)")
            else:
                where = (f"loss = {float(loss):.6g}; every gradient is finite but their global norm "
                         f"{float(optim.global_norm(grads))} is not (it overflows float32)")
        except NonFiniteError as e:
            where = f"loss = {float(loss):.6g}, {e}"
    return (f"non-finite value at step {step}: {where}. The update was not applied and params are those of "
            "step {step}; lower the learning rate, clip gradients, check the inputs for NaN, or pass "
            "nonfinite='skip' to count and skip such steps").replace("{step}", str(step))


def make_eval_step(eval_fn: Callable[[Any, Any, Any], dict], *, precision: Precision = "fp32",
                   compile: bool = True) -> Callable[[TrainState, Any], dict]:
    """Build `eval_step(ts, batch) -> metrics` from a pure `eval_fn(params, model_state, batch)`; no grads."""

    def step(params, model_state, batch):
        with torch.no_grad(), _autocast(precision, next(iter(tree.leaves(params))).device.type):
            return eval_fn(params, model_state, batch)

    compiled = compiler.compile(step) if compile else step

    def eval_step(ts: TrainState, batch: Any) -> dict:
        return compiled(ts.params, ts.model_state, batch)

    return eval_step
