"""Ensembles: N U-Nets trained by one vmapped step vs N sequential steps.

    python benchmarks/bench_ensemble.py                              # N in 1 4 8, B=16, 32x32 (~2 min)
    python benchmarks/bench_ensemble.py --sizes 1 2 4 --task unet-transformer
    python benchmarks/bench_ensemble.py --device cuda

An ensemble is one train state whose leaves carry a leading member dim N (the layout of
`funcml.nn.ensemble`: params and BatchNorm state from `init_ensemble`, one PRNG key per
member), and one step trains all members at once:

    vstep = torch.func.vmap(train_step.step_fn, in_dims=(TrainState(0, 0, 0, 0, 0, None), None),
                            out_dims=(TrainState(0, 0, 0, 0, 0, None), 0), randomness="error")
    ts, metrics = vstep(ts, batch)                      # every member on the same batch

against the baseline of N ordinary train steps, one per member. Member i of the ensemble is
the single model of seed i, so both must follow the same trajectory (checked over
`--check-steps` steps: the largest differences in the members' losses and parameters are
reported). The batched and the plain kernels round differently, and Adam's normalization
`m / (sqrt(v) + eps)` turns rounding noise in a near-zero gradient (a dead ReLU channel)
into a step of up to `lr`, so parameters may differ by about `2 lr` per step where losses
agree to float32 rounding. Inside vmap the optimizer runs leaf by
leaf (torch's `_foreach_*` kernels have no batching rule), the sequential steps use them.

All sizes are built first and both ways at every size are timed round-robin in one process
(`common.time_interleaved`), so that load from other jobs falls on all of them alike.

Writes `--out`, by default a fresh `benchmarks/results/bench_ensemble-<time>.json`.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any, Literal

import torch
import tyro
from torch.func import vmap

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_train_step import TaskSpec, seg_setup  # noqa: E402
from benchmarks.common import (fresh_results_path, machine_info, markdown_table, measure_peak_memory, start,  # noqa: E402
                               time_interleaved, write_json)
from funcml import random, tree  # noqa: E402
from funcml.errors import ConfigError, NonFiniteError, cli_main  # noqa: E402
from funcml.nn import ensemble  # noqa: E402
from funcml.nn import model as models  # noqa: E402
from funcml.seg.task import make_optimizer  # noqa: E402
from funcml.train import TrainState  # noqa: E402

_MEMBER_DIMS = TrainState(0, 0, 0, 0, 0, None)  # every leaf has a member dim; no fp16 loss scale


class Ensemble:
    """N members of a seg task, as one stacked train state and as N separate ones.

    `vmapped()` is one ensemble step, `sequential()` is N single-model steps; member i is the
    model of seed i in both.
    """

    def __init__(self, task: str, n: int, spec: TaskSpec):
        members = [seg_setup(task, dataclasses.replace(spec, seed=i)) for i in range(n)]
        setup, cfg = members[0]
        self.batch = setup.batch
        self.train_step = setup.train_step
        self.member_states = [m[0].train_state for m in members]
        roots = [random.key(i) for i in range(n)]
        params, model_state = ensemble.init_ensemble(
            models.init, torch.stack([random.fold_in(r, "init") for r in roots]), cfg.model)
        tx = make_optimizer(cfg)
        opt_state = tree.stack([tx.init(p) for p in tree.unstack(params)])
        ts = TrainState(torch.zeros(n, dtype=torch.int64), params, model_state, opt_state,
                        torch.stack([random.fold_in(r, "train") for r in roots]), None)
        self.ts = tree.to(ts, spec.device)
        self.vstep = vmap(self.train_step.step_fn, in_dims=(_MEMBER_DIMS, None), out_dims=(_MEMBER_DIMS, 0),
                          randomness="error")
        self.items = setup.items * n

    def vmapped(self) -> dict:
        self.ts, metrics = self.vstep(self.ts, self.batch)
        if not bool(metrics["finite"].all()):  # one host sync per step, as in make_train_step
            raise NonFiniteError(f"ensemble step {int(self.ts.step.max())}: a member's loss or grads are not finite")
        return metrics

    def sequential(self) -> list[dict]:
        out = [self.train_step(ts, self.batch) for ts in self.member_states]
        self.member_states = [ts for ts, _ in out]
        return [metrics for _, metrics in out]

    def max_param_diff(self) -> float:
        stacked = tree.stack([ts.params for ts in self.member_states])
        return max(float((a - b).abs().max()) for a, b in zip(tree.leaves(self.ts.params), tree.leaves(stacked)))


@dataclasses.dataclass(frozen=True)
class EnsembleBenchConfig:
    """Vmapped ensemble step vs sequential steps (see the module docstring)."""

    sizes: tuple[int, ...] = (1, 4, 8)
    """The ensemble sizes N timed (members trained per step)."""
    task: Literal["unet", "unet-transformer"] = "unet"
    """The segmentation preset every member is a copy of."""
    batch_size: int = 16
    """Images per step (every member trains on the same batch)."""
    image_size: int = 32
    """Side S of the square synthetic shapes images (pixels)."""
    scale: Literal["main", "tiny"] = "main"
    """Model size: "main", the main job's preset model; "tiny", a smoke-test model (depth 2, base width 4,
    1 transformer layer with 2 heads for unet-transformer)."""
    check_steps: int = 2
    """Steps of both ways before timing, to compare the members' losses and params (0: no check)."""
    warmup: int = 2
    """Untimed calls of each variant before timing."""
    repeat: int = 7
    """Timed rounds (one call of each variant per round, order rotating); the median is reported."""
    device: str = "cpu"
    """Torch device: "cpu", "cuda" or "cuda:N" (an unavailable CUDA device is an error)."""
    threads: int = 0
    """torch intra-op threads (0: torch's default; 1 on the shared 2-core machine)."""
    out: Path | None = None
    """The JSON file to write (default: a fresh `benchmarks/results/bench_ensemble-<time>.json`, so the committed
    `bench_ensemble.json` is replaced only when named here)."""


@cli_main
def main(args: list[str] | None = None) -> dict[str, Any]:
    cfg = tyro.cli(EnsembleBenchConfig, args=args, description="\n\n".join(__doc__.split("\n\n")[:2]))
    if not cfg.sizes or min(cfg.sizes) < 1:
        raise ConfigError(f"--sizes needs positive ensemble sizes, got {cfg.sizes}")
    device, info = start(cfg.device, cfg.threads)
    spec = TaskSpec(cfg.batch_size, cfg.image_size, "fp32", False, device, cfg.scale)
    ensembles, checks, memory = {}, {}, {}
    for n in cfg.sizes:
        ens = ensembles[n] = Ensemble(cfg.task, n, spec)
        loss_diff = 0.0
        for _ in range(cfg.check_steps):
            v_loss = ens.vmapped()["loss"]
            s_loss = torch.stack([m["loss"] for m in ens.sequential()])
            loss_diff = max(loss_diff, float((v_loss - s_loss).abs().max()))
        checks[n] = {"max_abs_loss_diff": loss_diff if cfg.check_steps else None,
                     "max_abs_param_diff": ens.max_param_diff() if cfg.check_steps else None}
        for kind in ("vmapped", "sequential"):
            memory[f"{kind} N={n}"] = measure_peak_memory(getattr(ens, kind), device, calls=1)
        print(f"N={n}: built; max |loss diff| {loss_diff:.1e}, max |param diff| {checks[n]['max_abs_param_diff']}",
              flush=True)
    # All sizes and both ways round-robin, so that load from other jobs falls on all alike.
    fns = {f"{kind} N={n}": getattr(ens, kind) for n, ens in ensembles.items() for kind in ("vmapped", "sequential")}
    times = time_interleaved(fns, warmup=cfg.warmup, repeat=cfg.repeat, device=device)
    rows = []
    for n, ens in ensembles.items():
        v, s = times[f"vmapped N={n}"].median_s, times[f"sequential N={n}"].median_s
        rows.append({"N": n, "vmapped_ms": 1e3 * v, "sequential_ms": 1e3 * s, "speedup": s / v,
                     "vmapped_images_per_s": ens.items / v, "sequential_images_per_s": ens.items / s,
                     "vmapped_delta_mb": memory[f"vmapped N={n}"]["delta_mb"],
                     "sequential_delta_mb": memory[f"sequential N={n}"]["delta_mb"],
                     "memory": {k: memory[f"{k} N={n}"] for k in ("vmapped", "sequential")}, **checks[n],
                     "timings": {k: times[f"{k} N={n}"].to_dict() for k in ("vmapped", "sequential")}})
    result = {"benchmark": "ensemble", "machine": info, "config": dataclasses.asdict(cfg), "rows": rows,
              "load_average_end": machine_info(device)["load_average"]}
    path = write_json(result, cfg.out or fresh_results_path("bench_ensemble"))
    print(markdown_table(rows, {"N": "N", "vmapped_ms": "vmapped ms/step", "sequential_ms": "sequential ms/step",
                                "speedup": "speedup", "vmapped_images_per_s": "vmapped model-images/s",
                                "sequential_images_per_s": "sequential model-images/s",
                                "vmapped_delta_mb": "vmapped MB", "sequential_delta_mb": "sequential MB",
                                "max_abs_loss_diff": "max loss diff", "max_abs_param_diff": "max param diff"}))
    print(f"\nwritten {path}")
    return result


if __name__ == "__main__":
    main()
