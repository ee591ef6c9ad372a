"""What compiling the main job's train steps costs and buys: cold and warm compile, compiled vs eager.

    python benchmarks/bench_compile.py --threads 1                          # the default rows (~40 min on 2 cores)
    python benchmarks/bench_compile.py --tasks seg --variants step grads    # some rows

For every task and variant, two fresh Python processes run one after the other on one cache folder
(`--cache-root/<task>-<variant>`, emptied first):

1. cold: the folder is empty; the first call of the compiled step (Dynamo tracing, AOTAutograd,
   inductor code generation, the C++ compiler) is timed, then the second call (a recompile would
   show there);
2. warm: the folder holds what the cold process wrote (funcml's compile cache, `funcml.compiler`);
   the first call is timed again (Dynamo still traces in every new process; AOTAutograd and
   inductor read their results from the cache), then the compiled and the eager step are timed
   round-robin (`common.time_interleaved`), `--repeat` rounds, medians.

Tasks (the main job's models and batch sizes, built by `benchmarks/bench_train_step.py`):
`seg`, the U-Net+Transformer of `funcml.seg.task.PRESETS["unet-transformer"]`, B=16, 32x32;
`asr`, the Paraformer of `funcml.asr.task.PRESETS["sim2real"]`, B=16 utterances of `--asr-frames`
frames.

A variant is a base and optional modifiers joined by "-" (`grads-region-scalar`):

* `step`: the whole train step compiled (`make_train_step(compile=True)`: forward, backward,
  clipping, AdamW, the non-finite guard in one graph), funcml's compiled mode;
* `grads`: only the loss and its gradient compiled (`make_train_step(compile="grads")`), the
  optimizer update eager (torch's fused AdamW);
* `blocks`: the step eager, each repeated block compiled on its own (`funcml.compiler.compile`
  of the U-Net's conv block and the transformer blocks; seg: 7 conv blocks of distinct shapes and
  2 transformer layers, asr: 4 SAN-M encoder and 2 decoder layers), the regional compilation of
  torch's tutorial: one compiled block serves every layer of the same shapes;
* `-region`: every transformer block (seg: the 2 bottleneck layers; asr: the 4 SAN-M encoder and 2
  decoder layers) wrapped in `funcml.compiler.region`, so the compiler traces one block and reuses
  it for the others (the model files do not use `region` yet: this script wraps the blocks for
  its run). On torch 2.13 this fails inside the train step's `torch.func.grad_and_value`
  ("Expected FakeTensor"), which the row records;
* `-scalar`: inductor's C++ kernels without SIMD (`torch._inductor.config.cpp.simdlen = 1`):
  plain loops, quicker for the C++ compiler than the vectorized templates, slower to run;
* `-dynamic`: compiled with `dynamic=True` (one graph for every batch shape: the main job's ASR
  batches are padded to 16-frame multiples, so a static graph recompiles for each length bucket).

Phases (from `torch._dynamo.utils.compilation_time_metrics`): `dynamo` (bytecode tracing),
`aot` (AOTAutograd, inductor's work inside it excluded), `inductor` (lowering, scheduling, code
generation), `cc` (waiting for the C++ compiler's workers). A variant that fails to compile is a
row with its error.

Writes `--out` (default a fresh `benchmarks/results/bench_compile-<time>.json`) and prints a
markdown table.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Literal

import torch
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (fresh_results_path, machine_info, machine_line, markdown_table,  # noqa: E402
                               resolve_device, write_json)
from funcml.errors import ConfigError, cli_main  # noqa: E402

BASES = ("step", "grads", "blocks")
"""What is compiled: the whole step, or the loss and its gradient (see the module docstring)."""
MODIFIERS = ("region", "scalar", "dynamic")
"""Optional modifiers of a variant (see the module docstring)."""


def parse_variant(variant: str) -> tuple[str, set[str]]:
    """`"grads-region-scalar"` -> `("grads", {"region", "scalar"})`; a `ConfigError` for an unknown part."""
    base, *mods = variant.split("-")
    bad = [m for m in mods if m not in MODIFIERS]
    if base not in BASES or bad or len(set(mods)) != len(mods):
        raise ConfigError(f"--variants: {variant!r} is not a base ({', '.join(BASES)}) followed by distinct "
                          f"modifiers from ({', '.join(MODIFIERS)}), joined by '-', e.g. grads-region")
    return base, set(mods)

_PHASES = {"dynamo": ("bytecode_tracing",), "inductor": ("GraphLowering.run", "GraphLowering.codegen"),
           "cc": ("async_compile.wait",), "compile_fx": ("compile_fx_inner",), "aot_all": ("create_aot_dispatcher_function",)}


@dataclasses.dataclass(frozen=True)
class CompileBenchConfig:
    """Cold and warm compile of the main job's train steps (see the module docstring)."""

    tasks: tuple[Literal["seg", "asr"], ...] = ("seg", "asr")
    """seg: the main job's U-Net+Transformer step; asr: its Paraformer step."""
    variants: tuple[str, ...] = ("step", "grads", "grads-scalar", "blocks", "grads-region")
    """Compile variants: a base (step, grads) and modifiers (region, scalar, dynamic) joined by '-'."""
    batch_size: int = 16
    """Examples per step (the main job's 16)."""
    asr_frames: int = 160
    """Frames of every utterance of the ASR batch."""
    repeat: int = 20
    """Timed rounds of compiled vs eager in the warm process (medians)."""
    cache_root: Path = Path("/tmp/funcml-bench-compile")
    """Each task/variant gets the compile cache folder `<cache-root>/<task>-<variant>`, emptied first."""
    scale: Literal["main", "tiny"] = "main"
    """Model size: "main", the main job's models; "tiny", smoke-test models (for checking the script)."""
    backend: str = "inductor"
    """The compile backend of the measuring processes (`$FUNCML_COMPILE_BACKEND`)."""
    device: str = "cpu"
    """Torch device of the steps: "cpu", "cuda" or "cuda:N" (inductor then generates Triton kernels)."""
    threads: int = 1
    """torch intra-op threads of the measuring processes (1 on the shared 2-core machine)."""
    timeout: int = 1800
    """Seconds allowed to one measuring process."""
    out: Path | None = None
    """The JSON to write (default: a fresh `benchmarks/results/bench_compile-<time>.json`)."""

    def __post_init__(self) -> None:
        for v in self.variants:
            parse_variant(v)
        for name in ("batch_size", "asr_frames", "repeat", "threads", "timeout"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")


# --------------------------------------------------------------------------- the measuring process


def _wrap_blocks_in_regions() -> None:
    """Wrap the transformer blocks in `funcml.compiler.region`, for this process."""
    from funcml import compiler

    for site in _block_sites()[:3]:
        setattr(*site, compiler.region(getattr(*site)))


def _block_sites() -> list[tuple[Any, str]]:
    """(module, name) of the repeated blocks, which the models look up by module global at each call."""
    from funcml.asr import encoder as asr_encoder
    from funcml.nn import transformer
    from funcml.seg import unet

    return [(transformer, "encoder_block"), (transformer, "decoder_block"), (asr_encoder, "sanm_block"),
            (unet, "_block")]


_PLAIN_BLOCKS: dict[tuple[Any, str], Any] = {}


def _compile_blocks(on: bool) -> None:
    """Compile the repeated blocks on their own (`on`), or put the plain ones back, for this process."""
    from funcml import compiler

    for site in _block_sites():
        plain = _PLAIN_BLOCKS.setdefault(site, getattr(*site))
        setattr(*site, compiler.compile(plain) if on else plain)


def _build(task: str, mode: bool | str, batch: int, frames: int, scale: str, device: torch.device):
    """`(train_step, train_state, batch)` of `task`, with `make_train_step(compile=mode)`."""
    from benchmarks.bench_train_step import TaskSpec, paraformer_setup, seg_setup

    spec = TaskSpec(batch, 32 if task == "seg" else frames, "fp32", mode, device, scale)
    setup = seg_setup("unet-transformer", spec)[0] if task == "seg" else paraformer_setup(spec, "sim2real")
    return setup.train_step, setup.train_state, setup.batch


def _phases() -> dict[str, float]:
    from torch._dynamo.utils import compilation_time_metrics

    out = {k: sum(sum(compilation_time_metrics.get(n, [])) for n in names) for k, names in _PHASES.items()}
    out["aot"] = max(0.0, out.pop("aot_all") - out.pop("compile_fx"))
    return out


def measure(task: str, variant: str, phase: str, batch: int, frames: int, repeat: int,
            scale: str = "main", device: str = "cpu") -> dict[str, Any]:
    """In this process: the first two calls of the compiled step and, when `phase == "warm"`,
    compiled vs eager step times. Returns a JSON-able dict."""
    from torch._dynamo.utils import counters

    from benchmarks.common import time_interleaved
    from funcml import compiler

    base, mods = parse_variant(variant)
    if "region" in mods:
        _wrap_blocks_in_regions()
    if "scalar" in mods:
        import torch._inductor.config as inductor_config

        inductor_config.cpp.simdlen = 1
    if "dynamic" in mods:
        plain = compiler.compile
        compiler.compile = lambda fn, **kw: plain(fn, **{**kw, "dynamic": True})
    if base == "blocks":
        _compile_blocks(True)
    mode = {"grads": "grads", "step": True, "blocks": False}[base]
    dev = torch.device(device)
    step, ts, b = _build(task, mode, batch, frames, scale, dev)
    out: dict[str, Any] = {"task": task, "variant": variant, "phase": phase}
    from benchmarks.common import synchronize

    try:
        t0 = time.perf_counter()
        ts1, _ = step(ts, b)
        synchronize(dev)
        t1 = time.perf_counter()
        step(ts1, b)
        synchronize(dev)
        t2 = time.perf_counter()
    except Exception as e:  # noqa: BLE001 - a variant that does not compile is a result
        out["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
        return out
    out.update(first_call_s=t1 - t0, second_call_s=t2 - t1, **_phases(),
               fx_cache_hits=counters["inductor"]["fxgraph_cache_hit"],
               fx_cache_misses=counters["inductor"]["fxgraph_cache_miss"],
               aot_cache_hits=counters["aot_autograd"]["autograd_cache_hit"],
               graphs=counters["stats"]["unique_graphs"])
    if phase == "warm":
        if base == "blocks":
            _compile_blocks(False)  # the eager twin runs the plain blocks
        eager, ts_e, b_e = _build(task, False, batch, frames, scale, dev)
        state = {"c": ts1, "e": ts_e}

        def run_compiled():
            state["c"], _ = step(state["c"], b)

        def run_eager():
            state["e"], _ = eager(state["e"], b_e)

        t = time_interleaved({"compiled": run_compiled, "eager": run_eager}, warmup=2, repeat=repeat, device=dev)
        out.update(compiled_ms=t["compiled"].median_s * 1e3, eager_ms=t["eager"].median_s * 1e3)
    return out


# --------------------------------------------------------------------------- the driver


def _run_child(cfg: CompileBenchConfig, task: str, variant: str, phase: str, cache: Path,
               device: torch.device) -> dict[str, Any]:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache), "OMP_NUM_THREADS": str(cfg.threads),
           "FUNCML_COMPILE_BACKEND": cfg.backend}
    code = ("import json, sys, torch; sys.path.insert(0, sys.argv[1]); torch.set_num_threads(int(sys.argv[2])); "
            "from benchmarks.bench_compile import measure; "
            "print('RESULT ' + json.dumps(measure(sys.argv[3], sys.argv[4], sys.argv[5], int(sys.argv[6]), "
            "int(sys.argv[7]), int(sys.argv[8]), sys.argv[9], sys.argv[10])))")
    root = str(Path(__file__).resolve().parents[1])
    args = [sys.executable, "-c", code, root, str(cfg.threads), task, variant, phase, str(cfg.batch_size),
            str(cfg.asr_frames), str(cfg.repeat), cfg.scale, str(device)]
    t0 = time.perf_counter()
    try:
        done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=cfg.timeout)
    except subprocess.TimeoutExpired:
        return {"task": task, "variant": variant, "phase": phase, "error": f"timed out after {cfg.timeout} s"}
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1][:300]
        return {"task": task, "variant": variant, "phase": phase, "error": f"exit {done.returncode}: {tail}"}
    result = json.loads(lines[-1][len("RESULT "):])
    result["process_s"] = time.perf_counter() - t0
    return result


def _row(cold: dict[str, Any], warm: dict[str, Any]) -> dict[str, Any]:
    row = {"task": cold["task"], "variant": cold["variant"]}
    if "error" in cold or "error" in warm:
        row["error"] = cold.get("error") or warm.get("error")
        return row
    row.update(cold_s=cold["first_call_s"], cold_second_s=cold["second_call_s"], dynamo_s=cold["dynamo"],
               aot_s=cold["aot"], inductor_s=cold["inductor"], cc_s=cold["cc"], warm_s=warm["first_call_s"],
               warm_dynamo_s=warm["dynamo"], warm_fx_hits=warm["fx_cache_hits"], warm_fx_misses=warm["fx_cache_misses"],
               graphs=cold["graphs"], compiled_ms=warm["compiled_ms"], eager_ms=warm["eager_ms"],
               speedup=warm["eager_ms"] / warm["compiled_ms"])
    return row


COLUMNS = {"task": "task", "variant": "variant", "cold_s": "cold s", "cold_second_s": "2nd call s",
           "dynamo_s": "dynamo s", "aot_s": "aot s", "inductor_s": "inductor s", "cc_s": "C++ wait s",
           "warm_s": "warm s", "warm_fx_hits": "warm FX hits", "graphs": "graphs", "compiled_ms": "compiled ms/step",
           "eager_ms": "eager ms/step", "speedup": "eager / compiled", "error": "error"}


@cli_main
def main(args: list[str] | None = None) -> dict[str, Any]:
    """Measure every task x variant of the config; print the table; write the JSON."""
    cfg = tyro.cli(CompileBenchConfig, args=args, description="\n\n".join(__doc__.split("\n\n")[:2]))
    device = resolve_device(cfg.device)
    torch.set_num_threads(cfg.threads)
    info = machine_info(device)
    info["command"] = "python benchmarks/bench_compile.py " + " ".join(sys.argv[1:] if args is None else args)
    print(machine_line(info), flush=True)
    rows, raw = [], []
    for task in cfg.tasks:
        for variant in cfg.variants:
            cache = cfg.cache_root / f"{task}-{variant}"
            shutil.rmtree(cache, ignore_errors=True)
            cache.mkdir(parents=True)
            cold = _run_child(cfg, task, variant, "cold", cache, device)
            warm = _run_child(cfg, task, variant, "warm", cache, device) if "error" not in cold else cold
            raw += [cold, warm]
            rows.append(_row(cold, warm))
            r = rows[-1]
            print(f"{task} {variant}: " + (r["error"] if "error" in r else
                  f"cold {r['cold_s']:.1f} s, warm {r['warm_s']:.1f} s, compiled {r['compiled_ms']:.1f} ms, "
                  f"eager {r['eager_ms']:.1f} ms"), flush=True)
    info["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    cols = {k: v for k, v in COLUMNS.items() if any(k in r for r in rows)}
    print(markdown_table(rows, cols))
    out = cfg.out or fresh_results_path("bench_compile")
    write_json({"machine": info, "config": dataclasses.asdict(cfg), "rows": rows, "processes": raw}, out)
    print(f"wrote {out}")
    return {"rows": rows, "out": str(out)}


if __name__ == "__main__":
    main()
