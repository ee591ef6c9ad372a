"""Data-parallel throughput on CPU: train steps per second with 1 process vs 2 (gloo).

    python benchmarks/dist_bench.py                          # both models, about 2 minutes on 2 cores
    python benchmarks/dist_bench.py --models mlp --steps 10  # a quick look

For each model, the same global batch and the same number of steps are timed in three
layouts: one process with 1 torch thread, one process with 2 threads, and 2 processes with
1 thread each launched by `torchrun --standalone --nproc-per-node 2` (each rank computes the
grads of half the batch, then one all-reduce averages them). The timed region is the train
step only (batches are made beforehand), after `--warmup` steps, between two barriers; the
figure is global-batch steps per second as seen by rank 0.

Models: "unet-transformer", the main job's segmentation model (32x32 shapes, the preset of
`funcml.seg.task`), where compute dominates; "mlp", the 8-32-32-1 reference MLP, where the
per-step overhead (and the collective) dominates. Writes a Markdown table and
`benchmarks/results/dist_bench.json`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Literal

import tyro

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

Model = Literal["unet-transformer", "mlp"]


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    models: tuple[Model, ...] = ("unet-transformer", "mlp")
    """Models timed: "unet-transformer" (the main job's seg model, compute-bound), "mlp" (8-32-32-1, overhead-bound)."""
    steps: int = 30
    """Timed steps per layout."""
    warmup: int = 3
    """Untimed steps before the timed ones, in every layout."""
    batch_size: int = 16
    """The global batch (each of the 2 ranks gets half)."""
    out: Path = ROOT / "benchmarks" / "results" / "dist_bench.json"
    """The JSON file to write."""
    device: str = "cpu"
    """Where each rank computes: cpu, or auto / cuda (rank r on its local GPU, cuda:LOCAL_RANK; NCCL between them)."""
    worker: str = ""
    """Internal: run one timing in this process (`<model>:<json path>`)."""


def _setup(model: str, batch_size: int, steps: int, device: str = "cpu"):
    """`(ts, train_step, batches)`: this rank's shards of `steps` global batches, on `device`."""
    import torch

    from funcml import devices, optim, random
    from funcml.nn import model as models
    from funcml.nn.reference import MLPConfig
    from funcml.seg.losses import ce_dice_loss
    from funcml.seg.shapes import shapes_batch
    from funcml.seg.task import PRESETS, preprocess
    from funcml.train import distributed, init_train_state, make_train_step

    if model == "mlp":
        cfg = MLPConfig(in_dim=8, hidden=(32, 32), out_dim=1)
        w = random.normal(random.key(9), (8,))

        def loss_fn(params, state, batch, key):
            pred, state = models.apply(params, state, batch[0], cfg, key=key, train=True)
            return ((pred[:, 0] - batch[1]) ** 2).mean(), ({}, state)

        def make(i):
            x = random.normal(random.fold_in(random.key(5), i), (batch_size, 8))
            return x, x @ w
    else:
        seg = PRESETS[model][1]
        cfg = seg.model

        def loss_fn(params, state, batch, key):
            logits, state = models.apply(params, state, batch[0], cfg, key=key, train=True)
            return ce_dice_loss(logits, batch[1], ignore_index=255), ({}, state)

        def make(i):
            images, masks = shapes_batch(random.fold_in(random.key(5), i), batch_size, seg.data)
            return preprocess(images, seg), masks
    tx = optim.adamw(1e-3)
    params, state = models.init(random.key(0), cfg)
    where = devices.resolve(device)  # under torchrun with CUDA: the local rank's GPU (set by init_from_env)
    ts = devices.put(init_train_state(params, state, tx, random.key(1)), where)
    batches = [devices.put(distributed.shard(make(i)), where) for i in range(steps)]
    return ts, make_train_step(loss_fn, tx, compile=False), batches, torch


def _worker(spec: str, cfg: BenchConfig) -> None:
    from funcml.train import distributed

    model, out = spec.split(":", 1)
    distributed.init_from_env()
    ts, step, batches, torch = _setup(model, cfg.batch_size, cfg.warmup + cfg.steps, cfg.device)
    for b in batches[:cfg.warmup]:
        ts, m = step(ts, b)
    float(m["loss"])
    distributed.barrier()
    t0 = time.perf_counter()
    for b in batches[cfg.warmup:]:
        ts, m = step(ts, b)
    float(m["loss"])
    distributed.barrier()
    seconds = time.perf_counter() - t0
    if distributed.is_main():
        Path(out).write_text(json.dumps({"seconds": seconds, "steps": cfg.steps, "threads": torch.get_num_threads(),
                                         "world_size": distributed.world_size()}))


def _run(model: str, cfg: BenchConfig, procs: int, threads: int, tmp: Path) -> dict:
    out = tmp / f"{model}-{procs}x{threads}.json"
    args = ["benchmarks/dist_bench.py", "--worker", f"{model}:{out}", "--steps", str(cfg.steps), "--warmup",
            str(cfg.warmup), "--batch-size", str(cfg.batch_size), "--device", cfg.device]
    cmd = [sys.executable, *args] if procs == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(procs), *args]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    r = json.loads(out.read_text())
    return {"model": model, "processes": procs, "threads_per_process": threads,
            "steps_per_s": round(r["steps"] / r["seconds"], 3),
            "ms_per_step": round(1000 * r["seconds"] / r["steps"], 2)}


def main(cfg: BenchConfig) -> int:
    if cfg.worker:
        _worker(cfg.worker, cfg)
        return 0
    if cfg.batch_size % 2:
        raise SystemExit(f"--batch-size {cfg.batch_size} must be even (2 processes share it)")
    from funcml.repro import env_info

    rows = []
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        for model in cfg.models:
            base = None
            for procs, threads in ((1, 1), (1, 2), (2, 1)):
                row = _run(model, cfg, procs, threads, Path(tmp))
                base = base or row["steps_per_s"]
                row["speedup_vs_1x1"] = round(row["steps_per_s"] / base, 2)
                rows.append(row)
                print(f"{model:<17} {procs} proc x {threads} thread(s): {row['steps_per_s']:8.2f} steps/s", flush=True)
    result = {"rows": rows, "batch_size": cfg.batch_size, "steps": cfg.steps, "warmup": cfg.warmup,
              "date": time.strftime("%Y-%m-%d"), "load_average_before": load_before,
              "load_average_after": os.getloadavg(), "cpus": os.cpu_count(), "env": env_info()}
    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    cfg.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n| model | processes x threads | steps/s (global batch {cfg.batch_size}) | ms/step | vs 1x1 |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['processes']} x {r['threads_per_process']} | {r['steps_per_s']:.2f} | "
              f"{r['ms_per_step']:.1f} | {r['speedup_vs_1x1']:.2f}x |")
    print(f"\nwritten {cfg.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(tyro.cli(BenchConfig, description="\n\n".join(__doc__.split("\n\n")[:2]))))
