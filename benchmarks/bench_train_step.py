"""Training-step cost of the segmentation models and the Paraformer: eager vs compiled, fp32 vs bf16, over sizes.

    python benchmarks/bench_train_step.py                                   # the default sweep (see below)
    python benchmarks/bench_train_step.py --tasks unet --batch-sizes 4 16 --image-sizes 32 64 128 --no-compile
    python benchmarks/bench_train_step.py --profile-steps 5 --plot          # + torch.profiler top ops, + PNG
    python benchmarks/bench_train_step.py --device cuda                     # on a GPU machine
    python benchmarks/bench_train_step.py --tasks paraformer --image-sizes 200 400 800 --no-compile  # sizes = frames

For every task (see `TASKS`), batch size B, image size S, precision and mode (eager, or the step
compiled with `funcml.compiler.compile`, backend `$FUNCML_COMPILE_BACKEND`, default inductor) it
reports the median time of one train step after warm-up, images/s, and the peak memory of a
few steps (of each variant alone). All variants of the sweep, and the two matmul peaks below,
are built first and then timed round-robin in one process (`common.time_interleaved`: one step
of each per round), so that bursts of load from other jobs fall on all of them alike and their
ratios stay comparable on a shared machine.

Compute efficiency. The FLOPs of one step (forward, backward; the optimizer's elementwise work
is not counted) come from `torch.utils.flop_counter.FlopCounterMode` on the eager step; the
achieved rate `FLOPs / median time` is given as a fraction of the machine's matmul peak,
measured in the same run, interleaved with the steps, as the median rate of `torch.mm` of two
`n x n` matrices (n = 2048) in float32 and in bfloat16 (`2 n^3` FLOPs each).

The compiled step costs a one-off compile (the `compile_s` column: the first call, compile
included; `second_call_s`: the second call, which recompiles when Dynamo's guards on the
first call's inputs fail on its outputs, e.g. a stride change). On a 2-core CPU a cold
inductor compile of a train step takes minutes, so the compiled variants run at
`--compile-batch-sizes` x `--compile-image-sizes` only. The default sweep with its two cold
compiles takes about 15 minutes; `--no-compile` about 5.

Tasks. `TASKS` maps a name to a builder `TaskSpec -> StepSetup(train_step, train_state, batch,
items)`; adding a model is one function and one entry:

    def _paraformer(spec: TaskSpec) -> StepSetup:
        ...                                    # build (train_step, train_state, batch) for spec
        return StepSetup(train_step, ts, batch, items=spec.batch_size, unit="utterances")

    TASKS["paraformer"] = _paraformer          # spec.size is then the number of frames

Writes `--out`, by default a fresh `benchmarks/results/bench_train_step-<time>.json`, and with `--plot` a PNG beside it
(`plot_sweep.py`).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any, Callable, Literal

import torch
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (fresh_results_path, machine_info, markdown_table, measure_peak_memory, start, time_fn,  # noqa: E402
                               time_interleaved, write_json)
from funcml import random, tree  # noqa: E402
from funcml.errors import ConfigError, cli_main  # noqa: E402
from funcml.nn import model as models  # noqa: E402
from funcml.seg.shapes import shapes_batch, split_key  # noqa: E402
from funcml.seg.task import PRESETS, SegTrainConfig, make_loss_fn, make_optimizer, preprocess  # noqa: E402
from funcml.train import TrainState, init_train_state, make_train_step  # noqa: E402

Precision = Literal["fp32", "bf16"]


# --------------------------------------------------------------------------- task registry


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """What a task builder is asked for."""

    batch_size: int
    """Examples per step."""
    size: int
    """The input size: image side for segmentation, frames for a sequence task."""
    precision: Precision
    """Precision: "fp32", or "bf16" (autocast; params stay fp32)."""
    compile: bool | Literal["grads"]
    """Compile the step with funcml.compiler.compile: True, the whole step; "grads", the loss and its gradient
    (`make_train_step(compile="grads")`)."""
    device: torch.device
    """Where params, state and the batch live."""
    scale: Literal["main", "tiny"] = "main"
    """Model size: "main", the model of the main job's preset; "tiny", a smoke-test model."""
    seed: int = 0
    """Key of the init and of the step's randomness."""


@dataclasses.dataclass
class StepSetup:
    """A ready-to-run training step: `ts, metrics = train_step(ts, batch)`.

    items: examples per step (images/s = items / seconds); unit: what an example is.
    model: a JSON-able description of the model (config fields, parameter count).
    """

    train_step: Callable[[TrainState, Any], tuple[TrainState, dict]]
    train_state: TrainState
    batch: Any
    items: int
    unit: str = "images"
    model: dict[str, Any] = dataclasses.field(default_factory=dict)


_TINY_MODEL = dict(depth=2, base_width=4, groups=4)


def seg_setup(preset: str, spec: TaskSpec) -> tuple[StepSetup, SegTrainConfig]:
    """The train step of the seg preset `preset` ("unet", "unet-transformer") at `spec`'s sizes:
    the preset's model (or a tiny one), optimizer (AdamW, warmup + cosine, clipping) and loss,
    one batch of `spec.batch_size` shapes images of `spec.size x spec.size`, preprocessed."""
    base = PRESETS[preset][1]
    model_cfg = base.model
    if spec.scale == "tiny":
        extra = dict(num_layers=1, num_heads=2) if hasattr(model_cfg, "num_layers") else {}
        model_cfg = dataclasses.replace(model_cfg, **_TINY_MODEL, **extra)
    data = dataclasses.replace(base.data, height=spec.size, width=spec.size)
    cfg = dataclasses.replace(base, model=model_cfg, data=data, batch_size=spec.batch_size, precision=spec.precision,
                              compile=bool(spec.compile), seed=spec.seed)
    root = random.key(cfg.seed)
    params, model_state = models.init(random.fold_in(root, "init"), cfg.model)
    tx = make_optimizer(cfg)
    ts = init_train_state(params, model_state, tx, random.fold_in(root, "train"))
    images, masks = shapes_batch(random.fold_in(split_key(random.key(cfg.data_seed), "train"), 0), spec.batch_size,
                                 cfg.data)
    batch = (preprocess(images, cfg), masks)
    step = make_train_step(make_loss_fn(cfg), tx, precision=cfg.precision, compile=spec.compile)
    model = {"type": type(cfg.model).__name__, **dataclasses.asdict(cfg.model), "params": tree.num_params(params)}
    setup = StepSetup(step, tree.to(ts, spec.device), tree.to(batch, spec.device), items=spec.batch_size,
                      unit="images", model=model)
    return setup, cfg


def paraformer_setup(spec: TaskSpec, preset: str = "speech") -> StepSetup:
    """The train step of an ASR preset's Paraformer (SAN-M encoder, glancing, CE + quantity loss;
    `preset` "speech", or "sim2real", the main job's) on one batch of `spec.batch_size` utterances
    of `spec.size` log-mel frames (10 ms each; random features; random tokens per utterance:
    `min(max_tokens, T // 10)` characters for "speech", about the rate of the synthesized digit
    strings, 3 words for "sim2real", its longest digit string). `scale="tiny"`: a one-layer d=16 model."""
    from funcml.asr import task as asr_task
    from funcml.asr.paraformer import paraformer_loss
    from funcml.trainer import make_optimizer as make_tx

    base = asr_task.resolve(asr_task.PRESETS[preset][1])
    model_cfg = base.model
    if spec.scale == "tiny":
        enc = dataclasses.replace(model_cfg.encoder, d_model=16, num_heads=2, d_ff=32, num_layers=1)
        model_cfg = dataclasses.replace(model_cfg, encoder=enc, decoder_layers=1)
    cfg = dataclasses.replace(base, model=model_cfg, batch_size=spec.batch_size, precision=spec.precision,
                              compile=bool(spec.compile), seed=spec.seed)
    root = random.key(cfg.seed)
    params, model_state = models.init(random.fold_in(root, "init"), cfg.model)
    tx = make_tx(steps=cfg.steps, lr=cfg.lr, warmup_steps=cfg.warmup_steps, weight_decay=cfg.weight_decay,
                 grad_clip=cfg.grad_clip)
    ts = init_train_state(params, model_state, tx, random.fold_in(root, "train"))
    b, t, n = spec.batch_size, spec.size, model_cfg.max_tokens
    k_x, k_y = random.split(random.key(cfg.data_seed))
    length = max(1, min(n, t // 10 if base.tokenizer == "char" else 3))
    tokens = torch.where(torch.arange(n) < length, random.randint(k_y, (b, n), 5, model_cfg.vocab_size), 0)
    batch = {"features": random.normal(k_x, (b, t, model_cfg.encoder.input_dim)),
             "feat_lengths": torch.full((b,), t, dtype=torch.int64), "tokens": tokens,
             "token_lengths": torch.full((b,), length, dtype=torch.int64)}

    def loss_fn(p, s, batch, key):
        loss, m = paraformer_loss(p, batch, cfg.model, cfg.loss, key=key, train=True)
        return loss, (m, s)

    step = make_train_step(loss_fn, tx, precision=cfg.precision, compile=spec.compile)
    model = {"type": "ParaformerConfig", "encoder": dataclasses.asdict(model_cfg.encoder),
             "decoder_layers": model_cfg.decoder_layers, "params": tree.num_params(params)}
    return StepSetup(step, tree.to(ts, spec.device), tree.to(batch, spec.device), items=b, unit="utterances",
                     model=model)


TaskBuilder = Callable[[TaskSpec], StepSetup]
TASKS: dict[str, TaskBuilder] = {
    "unet": lambda spec: seg_setup("unet", spec)[0],
    "unet-transformer": lambda spec: seg_setup("unet-transformer", spec)[0],
    "paraformer": paraformer_setup,     # spec.size = frames (T); run it with --tasks paraformer --image-sizes 200 400
}


# --------------------------------------------------------------------------- measurements


class _Runner:
    """Calls the step on its own, threaded train state: `runner()` is one training step."""

    def __init__(self, setup: StepSetup):
        self.setup, self.ts = setup, setup.train_state

    def __call__(self) -> dict:
        self.ts, metrics = self.setup.train_step(self.ts, self.setup.batch)
        return metrics


def _cpu_sdpa_flops(query, key, value, *args, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query, key, value)


def _cpu_sdpa_backward_flops(grad_out, query, key, value, *args, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_backward_flop_count

    return sdpa_backward_flop_count(grad_out, query, key, value)


def step_flops(setup: StepSetup) -> dict[str, Any]:
    """FLOPs of one eager step by `FlopCounterMode`: `{"total": int, "by_op": {op: int}}`.

    torch's counter knows the CUDA attention kernels; the CPU one (`sdpa` on CPU) is added
    here with torch's own attention formulas. The step is pure, so counting it leaves
    `setup.train_state` as it was."""
    from torch.utils.flop_counter import FlopCounterMode

    aten = torch.ops.aten
    custom = {aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops,
              aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward_flops}
    with FlopCounterMode(display=False, custom_mapping=custom) as counter:
        setup.train_step(setup.train_state, setup.batch)
    by_op = {str(op): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
    return {"total": int(counter.get_total_flops()), "by_op": by_op}


def _graphs_compiled() -> int | None:
    try:
        from torch._dynamo.utils import counters

        return int(counters["stats"]["unique_graphs"])
    except Exception:  # noqa: BLE001 - a private counter; the figure is informative only
        return None


def compile_cost(runner: Callable[[], Any], device: torch.device) -> dict[str, Any]:
    """Time the first two calls of a compiled step separately (the first compiles; the second
    recompiles if the outputs' strides or guards differ from the inputs'), and count the graphs
    Dynamo compiled meanwhile."""
    before = _graphs_compiled()
    first = time_fn(runner, warmup=0, repeat=1, device=device).median_s
    second = time_fn(runner, warmup=0, repeat=1, device=device).median_s
    after = _graphs_compiled()
    graphs = after - before if before is not None and after is not None else None
    return {"compile_s": first, "second_call_s": second, "graphs_compiled": graphs}


def profile_step(setup: StepSetup, steps: int, top: int = 15) -> dict[str, Any]:
    """torch.profiler over `steps` steps (after 2 warm-up steps): the `top` ops by self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    runner = _Runner(setup)
    for _ in range(2):
        runner()
    on_cuda = any(isinstance(x, torch.Tensor) and x.is_cuda for x in tree.leaves(setup.batch))
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            runner()
    events = prof.key_averages()
    total_us = sum(e.self_cpu_time_total for e in events) or 1.0
    rows = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return {
        "steps": steps,
        "self_cpu_ms_per_step_total": total_us / 1e3 / steps,
        "top_ops": [{"op": e.key, "self_cpu_ms_per_step": e.self_cpu_time_total / 1e3 / steps,
                     "share": e.self_cpu_time_total / total_us, "calls_per_step": e.count / steps}
                    for e in rows],
    }


# --------------------------------------------------------------------------- CLI


@dataclasses.dataclass(frozen=True)
class TrainBenchConfig:
    """Train-step sweep (see the module docstring)."""

    tasks: tuple[str, ...] = ("unet", "unet-transformer")
    """Names in TASKS: unet, unet-transformer, paraformer."""
    batch_sizes: tuple[int, ...] = (4, 16)
    """Batch sizes B of the eager sweep."""
    image_sizes: tuple[int, ...] = (32, 64)
    """Sizes S of the eager sweep: image side (pixels), or frames for paraformer."""
    precisions: tuple[Precision, ...] = ("fp32", "bf16")
    """Precisions of the eager sweep: "fp32", "bf16"."""
    compile: bool = True
    """Also time the compiled step, at --compile-batch-sizes x --compile-image-sizes."""
    compile_batch_sizes: tuple[int, ...] = (16,)
    """Batch sizes of the compiled variants (each one is a compile of minutes on 2 cores)."""
    compile_image_sizes: tuple[int, ...] = (32,)
    """Sizes of the compiled variants."""
    compile_precisions: tuple[Precision, ...] = ("fp32",)
    """Precisions compiled (each is one more compile)."""
    scale: Literal["main", "tiny"] = "main"
    """Model size: "main", the presets' models; "tiny", smoke-test models."""
    warmup: int = 3
    """Untimed steps of each variant before its peak-memory pass."""
    repeat: int = 10
    """Timed rounds (one call of each variant per round, order rotating); the median is reported."""
    memory_steps: int = 2
    """Steps of each variant's peak-memory pass."""
    matmul_size: int = 2048
    """n of the n x n torch.mm whose rate is the machine's peak (fp32 and bf16)."""
    profile_steps: int = 0
    """torch.profiler over this many steps of --profile-task, eager fp32 (0: off)."""
    profile_task: str = "unet-transformer"
    """The task profiled (a name in TASKS)."""
    profile_batch: int = 16
    """Batch size of the profiled step."""
    profile_size: int = 32
    """Size (image side or frames) of the profiled step."""
    plot: bool = False
    """Also write a PNG of the sweep beside the JSON (plot_sweep.py)."""
    device: str = "cpu"
    """Torch device: "cpu", "cuda" or "cuda:N" (an unavailable CUDA device is an error)."""
    threads: int = 0
    """torch intra-op threads (0: torch's default; 1 on the shared 2-core machine)."""
    out: Path | None = None
    """The JSON file to write (default: a fresh `benchmarks/results/bench_train_step-<time>.json`, so the committed
    `bench_train_step.json` is replaced only when named here)."""


def _check(cfg: TrainBenchConfig) -> None:
    for t in (*cfg.tasks, *((cfg.profile_task,) if cfg.profile_steps else ())):
        if t not in TASKS:
            raise ConfigError(f"unknown task {t!r}; TASKS has {sorted(TASKS)}")
    for name in ("batch_sizes", "image_sizes"):
        if not getattr(cfg, name) or min(getattr(cfg, name)) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} needs positive values, got {getattr(cfg, name)}")
    if not cfg.precisions:
        raise ConfigError("--precisions needs at least one of fp32, bf16")


@dataclasses.dataclass
class _Variant:
    task: str
    batch: int
    size: int
    precision: str
    compiled: bool
    runner: _Runner
    flops: dict[str, Any]
    first_calls: dict[str, Any]
    memory: dict[str, Any] = dataclasses.field(default_factory=dict)


def _build_variants(cfg: TrainBenchConfig, device: torch.device) -> list[_Variant]:
    """Every (task, B, S, precision, mode) of the sweep, built, compiled (first two calls timed)
    and FLOP-counted."""
    variants = []
    for task in cfg.tasks:
        for b in cfg.batch_sizes:
            for s in cfg.image_sizes:
                modes = [(p, False) for p in cfg.precisions]
                if cfg.compile and b in cfg.compile_batch_sizes and s in cfg.compile_image_sizes:
                    modes += [(p, True) for p in cfg.compile_precisions]
                for precision, compiled in modes:
                    spec = TaskSpec(b, s, precision, compiled, device, cfg.scale)
                    runner = _Runner(TASKS[task](spec))
                    first_calls = compile_cost(runner, device) if compiled else {}
                    flops = step_flops(TASKS[task](dataclasses.replace(spec, compile=False)))
                    variants.append(_Variant(task, b, s, precision, compiled, runner, flops, first_calls))
                    print(f"built {task} B={b} S={s} {precision} {'compiled' if compiled else 'eager'}: "
                          f"{flops['total'] / 1e9:.3g} GFLOP/step"
                          + (f", first calls {first_calls['compile_s']:.1f} s + {first_calls['second_call_s']:.1f} s"
                             if compiled else ""), flush=True)
    return variants


def _matmul_runner(device: torch.device, n: int, dtype: torch.dtype) -> Callable[[], Any]:
    k1, k2 = random.split(random.key(0))
    a = random.uniform(k1, (n, n), -1.0, 1.0).to(device=device, dtype=dtype)
    b = random.uniform(k2, (n, n), -1.0, 1.0).to(device=device, dtype=dtype)
    return lambda: torch.mm(a, b)


def _name(v: _Variant) -> str:
    return f"{v.task} B={v.batch} S={v.size} {v.precision} {'compiled' if v.compiled else 'eager'}"


def _measure(cfg: TrainBenchConfig, device: torch.device) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Build every variant; measure each one's peak memory alone; then time all of them and the
    two `torch.mm` peaks round-robin, so that load changes on a shared machine fall on all alike."""
    variants = _build_variants(cfg, device)
    for v in variants:
        for _ in range(cfg.warmup):
            v.runner()
        v.memory = measure_peak_memory(v.runner, device, calls=cfg.memory_steps)
    mm = {"fp32": _matmul_runner(device, cfg.matmul_size, torch.float32),
          "bf16": _matmul_runner(device, cfg.matmul_size, torch.bfloat16)}
    fns = {f"mm-{k}": fn for k, fn in mm.items()} | {_name(v): v.runner for v in variants}
    timings = time_interleaved(fns, warmup=1, repeat=cfg.repeat, device=device)
    peak = {k: {"n": cfg.matmul_size, "median_s": timings[f"mm-{k}"].median_s,
                "flops_per_s": 2 * cfg.matmul_size**3 / timings[f"mm-{k}"].median_s} for k in mm}
    rows = []
    for v in variants:
        t = timings[_name(v)]
        flops = v.flops["total"]
        rate = flops / t.median_s
        setup = v.runner.setup
        rows.append({
            "task": v.task, "batch": v.batch, "size": v.size, "precision": v.precision,
            "mode": "compiled" if v.compiled else "eager",
            "ms": 1e3 * t.median_s, "items_per_s": setup.items / t.median_s, "unit": setup.unit,
            "gflop": flops / 1e9, "gflops_per_s": rate / 1e9, "peak_fraction": rate / peak[v.precision]["flops_per_s"],
            "peak_mb": v.memory["peak_mb"], "delta_mb": v.memory["delta_mb"], "memory_kind": v.memory["kind"],
            "compile_s": v.first_calls.get("compile_s"), "second_call_s": v.first_calls.get("second_call_s"),
            "graphs_compiled": v.first_calls.get("graphs_compiled"), "timing": t.to_dict(),
            "flops_by_op": v.flops["by_op"], "params": setup.model.get("params"), "model": setup.model,
        })
    return rows, peak


_COLUMNS = {"task": "task", "batch": "B", "size": "S", "precision": "precision", "mode": "mode", "ms": "ms/step",
            "items_per_s": "images/s", "gflop": "GFLOP/step", "gflops_per_s": "GFLOP/s",
            "peak_fraction": "of mm peak", "peak_mb": "peak MB", "delta_mb": "step MB", "compile_s": "compile s",
            "second_call_s": "2nd call s"}


@cli_main
def main(args: list[str] | None = None) -> dict[str, Any]:
    cfg = tyro.cli(TrainBenchConfig, args=args, description="\n\n".join(__doc__.split("\n\n")[:2]))
    _check(cfg)
    device, info = start(cfg.device, cfg.threads)
    rows, peak = _measure(cfg, device)
    print(f"torch.mm peak at n={cfg.matmul_size}: fp32 {peak['fp32']['flops_per_s'] / 1e9:.1f} GFLOP/s, "
          f"bf16 {peak['bf16']['flops_per_s'] / 1e9:.1f} GFLOP/s", flush=True)
    profile = None
    if cfg.profile_steps > 0:
        spec = TaskSpec(cfg.profile_batch, cfg.profile_size, "fp32", False, device, cfg.scale)
        profile = profile_step(TASKS[cfg.profile_task](spec), cfg.profile_steps)
        profile.update(task=cfg.profile_task, batch=cfg.profile_batch, size=cfg.profile_size)
    result = {"benchmark": "train_step", "machine": info, "config": dataclasses.asdict(cfg), "matmul_peak": peak,
              "rows": rows, "profile": profile, "load_average_end": list(machine_info(device)["load_average"])}
    path = write_json(result, cfg.out or fresh_results_path("bench_train_step"))
    print("\n" + markdown_table(rows, _COLUMNS))
    if profile is not None:
        print(f"\ntorch.profiler, {profile['task']} B={profile['batch']} S={profile['size']} eager fp32, "
              f"{profile['self_cpu_ms_per_step_total']:.1f} ms self CPU per step:")
        print(markdown_table(profile["top_ops"], {"op": "op", "self_cpu_ms_per_step": "ms/step", "share": "share",
                                                  "calls_per_step": "calls/step"}))
    if cfg.plot:
        from benchmarks.plot_sweep import plot_sweep

        result["plot"] = str(plot_sweep(result, path.with_suffix(".png")))
        write_json(result, path)
    print(f"\nwritten {path}" + (f" and {result['plot']}" if cfg.plot else ""))
    return result


if __name__ == "__main__":
    main()
