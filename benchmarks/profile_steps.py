"""Where the time of an eager train step goes: `torch.profiler` over the main job's two steps.

    python benchmarks/profile_steps.py --threads 1                    # seg and ASR, 5 profiled steps each
    python benchmarks/profile_steps.py --tasks seg --steps 10 --top 30

Steps (built by `benchmarks/bench_train_step.py`'s `seg_setup` and `paraformer_setup`, eager, fp32):

* `seg`: the main job's segmentation step (`funcml.seg.task.PRESETS["unet-transformer"]`: U-Net
  width 12, depth 3, 2-layer transformer bottleneck; AdamW + clipping; CE + Dice), B=16, 32x32.
* `asr`: the main job's ASR step (`funcml.asr.task.PRESETS["sim2real"]`: SAN-M Paraformer, 4
  encoder and 2 decoder layers, glancing, CE + quantity loss; AdamW + clipping), B=16 utterances of
  `--asr-frames` frames (random features, 3 word tokens each).

For each step: `--warmup` untimed steps, then `--steps` steps under the profiler, each inside
`record_function("train_step")`, so the step's own CPU time is known. Reported per step: the top
ops by self CPU time, and the step split into kinds of work by self CPU time:

* `compute`: convolutions, matmuls, attention, fused norm and optimizer kernels (`COMPUTE`),
* `layout`: copies and layout changes (`LAYOUT`: `copy_`, `contiguous`, `clone`, `cat`, `permute`, ...),
* `elementwise`: every other aten op (pointwise ops and small reductions: in norms, losses, the
  optimizer's arithmetic, the RNG),
* `outside ops`: the step's time not inside any op: Python (pytree walks, shape checks, funcml's
  own code) and the dispatcher between ops.

The profiler adds a few microseconds to every op, so `outside ops` and `elementwise` are upper
bounds; the profiled step is slower than an unprofiled one (both are printed).

Writes `--out` (default `benchmarks/results/profile_steps.json`) and the tables as markdown beside it.
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Literal

import torch
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_train_step import TaskSpec, paraformer_setup, seg_setup  # noqa: E402
from benchmarks.common import RESULTS_DIR, markdown_table, start, write_json  # noqa: E402
from funcml.errors import ConfigError, cli_main  # noqa: E402

COMPUTE = ("conv", "mm", "addmm", "bmm", "baddbmm", "linear", "matmul", "scaled_dot_product", "native_batch_norm",
           "batch_norm", "native_layer_norm", "layer_norm", "_fused_adamw", "max_pool", "_foreach_norm",
           "cudnn", "mkldnn")
"""Substrings of the op names counted as `compute` (the model's and optimizer's math kernels)."""

LAYOUT = ("aten::copy_", "aten::contiguous", "aten::clone", "aten::cat", "aten::stack", "aten::permute",
          "aten::transpose", "aten::_to_copy", "aten::to", "aten::expand", "aten::as_strided", "aten::reshape",
          "aten::view", "aten::_unsafe_view", "aten::t", "aten::unsqueeze", "aten::squeeze", "aten::slice",
          "aten::select", "aten::split", "aten::chunk", "aten::narrow", "aten::unbind", "aten::flatten",
          "aten::constant_pad_nd", "aten::pad", "aten::empty", "aten::empty_like", "aten::empty_strided",
          "aten::zeros", "aten::zeros_like", "aten::ones_like", "aten::full", "aten::fill_", "aten::zero_",
          "aten::resize_", "aten::detach", "aten::alias", "aten::lift_fresh", "aten::new_empty",
          "aten::new_zeros", "aten::index_select", "aten::gather", "aten::scatter", "aten::index",
          "aten::repeat", "aten::roll", "aten::flip", "aten::col2im", "aten::im2col")
"""Ops counted as `layout` (data movement and layout changes, no arithmetic)."""

STEP_LABEL = "train_step"

_SPECS = {"seg": ("unet-transformer", 32), "asr": ("paraformer-sim2real", None)}
_BUILDERS = {"seg": lambda spec: seg_setup("unet-transformer", spec)[0],
             "asr": lambda spec: paraformer_setup(spec, "sim2real")}


def kind_of(op: str) -> str:
    """The kind of work an op is: "compute", "layout" or "elementwise" (see the module doc)."""
    if op in LAYOUT:
        return "layout"
    name = op.removeprefix("aten::")
    if op.startswith("aten::") and any(c in name for c in COMPUTE):
        return "compute"
    return "elementwise"


@dataclasses.dataclass(frozen=True)
class ProfileConfig:
    """Profile the main job's eager train steps (see the module docstring)."""

    tasks: tuple[Literal["seg", "asr"], ...] = ("seg", "asr")
    """The steps to profile: seg (U-Net+Transformer), asr (Paraformer)."""
    batch_size: int = 16
    """Examples per step (the main job's 16)."""
    asr_frames: int = 160
    """Frames (10 ms) of every utterance of the ASR batch: 1-3 digit strings at 8 kHz pad to 96-208."""
    warmup: int = 3
    """Untimed steps before profiling."""
    steps: int = 5
    """Profiled steps."""
    timed: int = 10
    """Unprofiled steps timed after profiling (their median is the step's real time)."""
    top: int = 20
    """Ops in the top table."""
    device: str = "cpu"
    """Torch device: "cpu", "cuda" or "cuda:N"."""
    threads: int = 1
    """torch intra-op threads (1 on the shared 2-core machine; 0: torch's default)."""
    out: Path = RESULTS_DIR / "profile_steps.json"
    """The JSON to write; the markdown tables go beside it (`.md`)."""

    def __post_init__(self) -> None:
        for name in ("batch_size", "asr_frames", "steps", "timed", "top"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise ConfigError(f"--warmup must be >= 0, got {self.warmup}")


def profile_task(name: str, cfg: ProfileConfig, device: torch.device) -> dict[str, Any]:
    """Profile one task's eager step: top ops, kinds of work, profiled and unprofiled step times."""
    from torch.profiler import ProfilerActivity, profile, record_function

    builder, size = _SPECS[name]
    setup = _BUILDERS[name](TaskSpec(cfg.batch_size, size or cfg.asr_frames, "fp32", False, device))
    ts = setup.train_state

    def one(ts):
        ts, metrics = setup.train_step(ts, setup.batch)
        return ts

    for _ in range(cfg.warmup):
        ts = one(ts)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(cfg.steps):
            with record_function(STEP_LABEL):
                ts = one(ts)
    times = []
    for _ in range(cfg.timed):
        t0 = time.perf_counter()
        ts = one(ts)
        times.append(time.perf_counter() - t0)

    events = prof.key_averages()
    step_ev = next(e for e in events if e.key == STEP_LABEL)
    n = cfg.steps
    step_us = step_ev.cpu_time_total / n
    ops = [e for e in events if e.key != STEP_LABEL]
    kinds = {"compute": 0.0, "layout": 0.0, "elementwise": 0.0}
    for e in ops:
        kinds[kind_of(e.key)] += e.self_cpu_time_total / n
    in_ops = sum(kinds.values())
    kinds["outside ops"] = max(0.0, step_us - in_ops)
    top = sorted(ops, key=lambda e: e.self_cpu_time_total, reverse=True)[:cfg.top]
    return {
        "task": name, "model": builder, "batch": cfg.batch_size, "size": size or cfg.asr_frames,
        "profiled_ms_per_step": step_us / 1e3, "unprofiled_ms_per_step": statistics.median(times) * 1e3,
        "ops_per_step": sum(e.count for e in ops) / n,
        "kinds": [{"kind": k, "ms_per_step": v / 1e3, "share": v / step_us} for k, v in kinds.items()],
        "top_ops": [{"op": e.key, "kind": kind_of(e.key), "self_ms_per_step": e.self_cpu_time_total / n / 1e3,
                     "share": e.self_cpu_time_total / n / step_us, "calls_per_step": e.count / n} for e in top],
    }


def _markdown(info: dict[str, Any], results: list[dict[str, Any]], command: str) -> str:
    from benchmarks.common import machine_line

    parts = [f"Command: `{command}`", "", machine_line(info), ""]
    for r in results:
        parts += [f"### {r['task']}: {r['model']}, B={r['batch']}, size {r['size']}, eager fp32", "",
                  f"Step {r['unprofiled_ms_per_step']:.1f} ms unprofiled (median), {r['profiled_ms_per_step']:.1f} ms "
                  f"profiled; {r['ops_per_step']:.0f} ops per step.", "",
                  markdown_table(r["kinds"], {"kind": "kind of work", "ms_per_step": "ms/step", "share": "share"}), "",
                  markdown_table(r["top_ops"], {"op": "op", "kind": "kind", "self_ms_per_step": "self ms/step",
                                                "share": "share", "calls_per_step": "calls/step"}), ""]
    return "\n".join(parts)


@cli_main
def main(args: list[str] | None = None) -> dict[str, Any]:
    """Profile every task of `--tasks`; print and write the tables; returns the payload."""
    cfg = tyro.cli(ProfileConfig, args=args, description="\n\n".join(__doc__.split("\n\n")[:2]))
    device, info = start(cfg.device, cfg.threads)
    results = [profile_task(t, cfg, device) for t in cfg.tasks]
    command = "python benchmarks/profile_steps.py " + " ".join(sys.argv[1:] if args is None else args)
    text = _markdown(info, results, command.strip())
    print(text, flush=True)
    payload = {"machine": info, "config": dataclasses.asdict(cfg), "results": results}
    write_json(payload, cfg.out)
    cfg.out.with_suffix(".md").write_text(text + "\n")
    print(f"wrote {cfg.out} and {cfg.out.with_suffix('.md')}")
    return payload


if __name__ == "__main__":
    main()
