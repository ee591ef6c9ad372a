"""Functional overhead: funcml's pure U-Net train step vs the same U-Net as a `torch.nn.Module` with `torch.optim`.

    python benchmarks/bench_overhead.py            # B=16, 32x32, the main job's U-Net (1 min + a 5-8 min cold compile)
    python benchmarks/bench_overhead.py --no-compile --batch-size 4 --image-size 64
    python benchmarks/bench_overhead.py --device cuda

Both sides compute the same step from the same weights on the same batch:

    logits = U-Net(x) in train mode (BatchNorm batch statistics, new running statistics)
    loss = CE + soft Dice (funcml.seg.losses.ce_dice_loss, ignore_index 255)
    g = clip_by_global_norm(grad loss, 1.0)
    AdamW with linear warmup + cosine decay, weight decay on ndim >= 2 leaves only

funcml: `funcml.train.make_train_step` (eager, and compiled with `funcml.compiler.compile`).
module: `benchmarks.unet_module.UNetModule` loaded with funcml's weights,
`torch.nn.utils.clip_grad_norm_`, `torch.optim.AdamW` (two parameter groups, foreach kernels)
and `torch.optim.lr_scheduler.LambdaLR` with funcml's schedule. Before timing, `--check-steps`
steps of each are run from the same start and the differences in loss (per step) and the
largest in parameters are reported: the first losses agree to float32 rounding; parameters may
differ by up to about `2 lr` per step, where Adam's `m / (sqrt(v) + eps)` turns rounding noise
in a near-zero gradient (a dead ReLU channel) into a full step of either sign. funcml's eager
AdamW runs torch's fused kernel (`funcml.optim.adamw`'s `apply`), whose last-bit rounding
differs from the module's foreach AdamW, so later losses follow slightly different weights.

Every step on both sides reads its loss on the host once (funcml's step does it to stop at a
non-finite loss). The variants are timed round-robin in one process; the figure of merit is
the ratio of median step times, `funcml / module` (below 1: funcml is faster).

Writes `--out`, by default a fresh `benchmarks/results/bench_overhead-<time>.json`.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any, Literal

import torch
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_train_step import TaskSpec, _Runner, compile_cost, seg_setup  # noqa: E402
from benchmarks.common import (fresh_results_path, machine_info, markdown_table, measure_peak_memory, start,  # noqa: E402
                               time_interleaved, write_json)
from benchmarks.unet_module import UNetModule, to_funcml  # noqa: E402
from funcml import optim, tree  # noqa: E402
from funcml.errors import cli_main  # noqa: E402
from funcml.seg.losses import ce_dice_loss  # noqa: E402
from funcml.seg.task import IGNORE_INDEX, SegTrainConfig  # noqa: E402


class ModuleTrainer:
    """The conventional training step: `loss = trainer.step(batch)` updates the module in place.

    It mirrors `funcml.seg.task.make_optimizer(cfg)` and the seg loss: clip to `cfg.grad_clip`,
    AdamW(`cfg.lr`, betas (0.9, 0.999), eps 1e-8) with `cfg.weight_decay` on ndim >= 2 tensors,
    the learning rate `warmup_cosine_decay_schedule(0, lr, warmup, steps)(t)` at update t.
    """

    def __init__(self, net: UNetModule, cfg: SegTrainConfig):
        self.net, self.cfg = net.train(), cfg
        decay = [p for p in net.parameters() if p.ndim >= 2]
        no_decay = [p for p in net.parameters() if p.ndim < 2]
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                      {"params": no_decay, "weight_decay": 0.0}],
                                     lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8, foreach=True)
        steps = max(cfg.steps, 1)
        schedule = optim.warmup_cosine_decay_schedule(0.0, cfg.lr, min(cfg.warmup_steps, steps), steps)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda t: schedule(t) / cfg.lr)

    def step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> float:
        x, masks = batch
        self.opt.zero_grad(set_to_none=True)
        logits = self.net(x)
        loss = ce_dice_loss(logits, masks, ce_weight=self.cfg.ce_weight, dice_weight=self.cfg.dice_weight,
                            ignore_index=IGNORE_INDEX)
        loss.backward()
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.cfg.grad_clip, foreach=True)
        self.opt.step()
        self.sched.step()
        return float(loss.detach())


@dataclasses.dataclass(frozen=True)
class OverheadConfig:
    """funcml step vs nn.Module step (see the module docstring)."""

    batch_size: int = 16
    """Images per step."""
    image_size: int = 32
    """Side S of the square synthetic shapes images (pixels)."""
    scale: Literal["main", "tiny"] = "main"
    """Model size: "main", the main job's U-Net; "tiny", a smoke-test one (depth 2, base width 4)."""
    compile: bool = True
    """Also time funcml's compiled step (a one-off compile of minutes on 2 CPU cores)."""
    check_steps: int = 3
    """Steps run on both sides from the same weights before timing, to compare their trajectories."""
    warmup: int = 3
    """Untimed steps of each variant before its peak-memory pass and the timing."""
    repeat: int = 15
    """Timed rounds (one call of each variant per round, order rotating); the median is reported."""
    device: str = "cpu"
    """Torch device: "cpu", "cuda" or "cuda:N" (an unavailable CUDA device is an error)."""
    threads: int = 0
    """torch intra-op threads (0: torch's default; 1 on the shared 2-core machine)."""
    out: Path | None = None
    """The JSON file to write (default: a fresh `benchmarks/results/bench_overhead-<time>.json`, so the committed
    `bench_overhead.json` is replaced only when named here)."""


def _max_diff(a: Any, b: Any) -> float:
    return max((float((x - y).abs().max()) for x, y in zip(tree.leaves(a), tree.leaves(b))), default=0.0)


@cli_main
def main(args: list[str] | None = None) -> dict[str, Any]:
    cfg = tyro.cli(OverheadConfig, args=args, description="\n\n".join(__doc__.split("\n\n")[:2]))
    device, info = start(cfg.device, cfg.threads)

    spec = TaskSpec(cfg.batch_size, cfg.image_size, "fp32", False, device, cfg.scale)
    setup, seg_cfg = seg_setup("unet", spec)
    ts0 = setup.train_state
    trainer = ModuleTrainer(UNetModule.from_funcml(seg_cfg.model, ts0.params, ts0.model_state, device), seg_cfg)

    # Same math: the two trajectories from the same start.
    funcml_runner = _Runner(setup)
    loss_diffs = []
    for _ in range(cfg.check_steps):
        metrics = funcml_runner()
        loss_diffs.append(abs(float(metrics["loss"]) - trainer.step(setup.batch)))
    loss_diff = max(loss_diffs, default=0.0)
    ts = funcml_runner.ts
    params_m, state_m = to_funcml(trainer.net, ts.params, ts.model_state)
    agreement = {"steps": cfg.check_steps, "max_abs_loss_diff": loss_diff, "abs_loss_diffs": loss_diffs,
                 "max_abs_param_diff": _max_diff(ts.params, params_m),
                 "max_abs_bn_state_diff": _max_diff(ts.model_state, state_m)}
    print(f"after {cfg.check_steps} steps from the same start: max |loss diff| {loss_diff:.2e}, "
          f"max |param diff| {agreement['max_abs_param_diff']:.2e}", flush=True)

    variants = {"module-eager": lambda: trainer.step(setup.batch), "funcml-eager": funcml_runner}
    compile_info: dict[str, Any] = {}
    if cfg.compile:
        compiled_setup, _ = seg_setup("unet", dataclasses.replace(spec, compile=True))
        compiled = _Runner(compiled_setup)
        compile_info = compile_cost(compiled, device)
        variants["funcml-compiled"] = compiled
    memory = {}
    for name, fn in variants.items():
        for _ in range(cfg.warmup):
            fn()
        memory[name] = measure_peak_memory(fn, device, calls=2)
    timings = time_interleaved(variants, warmup=0, repeat=cfg.repeat, device=device)
    base = timings["module-eager"].median_s
    rows = [{"variant": name, "ms": 1e3 * t.median_s, "images_per_s": cfg.batch_size / t.median_s,
             "ratio": t.median_s / base, "peak_mb": memory[name]["peak_mb"], "delta_mb": memory[name]["delta_mb"],
             **({k: compile_info[k] for k in ("compile_s", "second_call_s")} if name == "funcml-compiled" else {}),
             "timing": t.to_dict()}
            for name, t in timings.items()]
    result = {"benchmark": "overhead", "machine": info, "config": dataclasses.asdict(cfg),
              "model": setup.model, "agreement": agreement, "rows": rows, "compile": compile_info,
              "ratios": {r["variant"]: r["ratio"] for r in rows},
              "load_average_end": machine_info(device)["load_average"]}
    path = write_json(result, cfg.out or fresh_results_path("bench_overhead"))
    print(markdown_table(rows, {"variant": "variant", "ms": "ms/step", "images_per_s": "images/s",
                                "ratio": "time / module", "peak_mb": "peak MB", "delta_mb": "step MB",
                                "compile_s": "compile s", "second_call_s": "2nd call s"}))
    print(f"\nwritten {path}")
    return result


if __name__ == "__main__":
    main()
