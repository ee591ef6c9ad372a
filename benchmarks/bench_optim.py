"""The optimizer update alone: funcml's clip + AdamW (fused `apply` and the plain chain) vs torch.optim.AdamW.

    python benchmarks/bench_optim.py                   # the main job's U-Net params (483k in 50 leaves), one thread
    python benchmarks/bench_optim.py --scale tiny --repeat 5
    python benchmarks/bench_optim.py --device cuda

Every variant does one step of `clip_by_global_norm(1.0)` then AdamW (lr 1e-3, weight decay 0.01
on leaves with ndim >= 2) on the same params and gradients (fixed random values shaped like the
U-Net's leaves, all contiguous as torch.optim's AccumulateGrad would leave them):

    funcml-fused      optim.update_and_apply(tx, grads, state, params): torch's fused AdamW kernel
                      on copies of params and moments (pure: the inputs are not written)
    funcml-chain      tx.update + optim.apply_updates: the transformations one by one, foreach
                      kernels, every result a new tensor (what runs under vmap and before the
                      fused `apply`)
    torch-foreach     clip_grad_norm_ + torch.optim.AdamW(foreach=True).step(), in place
    torch-fused       clip_grad_norm_ + torch.optim.AdamW(fused=True).step(), in place

Each funcml call starts from the same state (a pure function: no state to reset); the torch
optimizers step their own state in place, which changes nothing in the cost. The variants are
timed round-robin (`common.time_interleaved`); before timing, one step of each funcml variant
and of torch-foreach are compared (largest parameter difference).

Writes `--out`, by default a fresh `benchmarks/results/bench_optim-<time>.json`.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any, Literal

import torch
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_train_step import TaskSpec, seg_setup  # noqa: E402
from benchmarks.common import fresh_results_path, machine_info, markdown_table, start, time_interleaved, write_json  # noqa: E402
from funcml import optim, random, tree  # noqa: E402
from funcml.errors import cli_main  # noqa: E402


@dataclasses.dataclass(frozen=True)
class OptimBenchConfig:
    """One clip + AdamW step, funcml (fused and chain) vs torch.optim (foreach and fused)."""

    scale: Literal["main", "tiny"] = "main"
    """The U-Net whose params are updated: the main job's (483k params) or a tiny one."""
    lr: float = 1e-3
    """AdamW learning rate of every variant."""
    weight_decay: float = 0.01
    """AdamW weight decay (on leaves with ndim >= 2 only)."""
    warmup: int = 3
    """Untimed calls of each variant before timing."""
    repeat: int = 30
    """Timed rounds (one call of each variant per round, order rotating); the median is reported."""
    device: str = "cpu"
    """Torch device: "cpu", "cuda" or "cuda:N" (an unavailable CUDA device is an error)."""
    threads: int = 1
    """torch intra-op threads (0: torch's default; 1, the default, on the shared machine)."""
    out: Path | None = None
    """The JSON file to write (default: a fresh `benchmarks/results/bench_optim-<time>.json`, so the committed
    `bench_optim.json` is replaced only when named here)."""


def _torch_step(params: list[torch.Tensor], grads: list[torch.Tensor], decay: list[bool], cfg: OptimBenchConfig,
                **kind: bool):
    """A closure stepping torch.optim.AdamW (two groups: decay on ndim >= 2) after clipping to 1.0."""
    ps = [torch.nn.Parameter(p.detach().clone()) for p in params]
    for p, g in zip(ps, grads):
        p.grad = g.clone()
    opt = torch.optim.AdamW([{"params": [p for p, d in zip(ps, decay) if d]},
                             {"params": [p for p, d in zip(ps, decay) if not d], "weight_decay": 0.0}],
                            lr=cfg.lr, weight_decay=cfg.weight_decay, **kind)

    def step() -> list[torch.Tensor]:
        torch.nn.utils.clip_grad_norm_(ps, 1.0, foreach=True)
        opt.step()
        return ps

    return step


@cli_main
def main(args: list[str] | None = None) -> dict[str, Any]:
    cfg = tyro.cli(OptimBenchConfig, args=args, description="\n\n".join(__doc__.split("\n\n")[:2]))
    device, info = start(cfg.device, cfg.threads)

    setup, _ = seg_setup("unet", TaskSpec(2, 16, "fp32", False, device, cfg.scale))
    params = setup.train_state.params
    names = list(tree.flatten_with_names(params))
    keys = random.split(random.key(0), len(names))
    grads = tree.unflatten_from_names(
        {n: random.normal(k, p.shape).to(device) * 1e-2 for k, (n, p) in zip(keys, tree.flatten_with_names(params).items())},
        like=params)
    tx = optim.chain(optim.clip_by_global_norm(1.0), optim.adamw(cfg.lr, weight_decay=cfg.weight_decay))
    state = tx.init(params)
    leaves_p, leaves_g = tree.leaves(params), tree.leaves(grads)
    decay = [p.ndim >= 2 for p in leaves_p]

    def fused():
        return optim.update_and_apply(tx, grads, state, params)

    def chain():
        updates, new_state = tx.update(grads, state, params)
        return optim.apply_updates(params, updates), new_state

    variants = {"funcml-fused": fused, "funcml-chain": chain,
                "torch-foreach": _torch_step(leaves_p, leaves_g, decay, cfg, foreach=True),
                "torch-fused": _torch_step(leaves_p, leaves_g, decay, cfg, fused=True)}
    reference = _torch_step(leaves_p, leaves_g, decay, cfg, foreach=True)()
    agreement = {name: max(float((a - b.detach()).abs().max())
                           for a, b in zip(tree.leaves(fn()[0]), reference))
                 for name, fn in (("funcml-fused", fused), ("funcml-chain", chain))}
    timings = time_interleaved(variants, warmup=cfg.warmup, repeat=cfg.repeat, device=device)
    base = timings["torch-foreach"].median_s
    rows = [{"variant": name, "ms": 1e3 * t.median_s, "ratio": t.median_s / base,
             "max_abs_param_diff_vs_torch": agreement.get(name), "timing": t.to_dict()}
            for name, t in timings.items()]
    result = {"benchmark": "optim", "machine": info, "config": dataclasses.asdict(cfg),
              "params": tree.num_params(params), "leaves": len(leaves_p), "rows": rows,
              "load_average_end": machine_info(device)["load_average"]}
    path = write_json(result, cfg.out or fresh_results_path("bench_optim"))
    print(markdown_table(rows, {"variant": "variant", "ms": "ms/step", "ratio": "time / torch-foreach",
                                "max_abs_param_diff_vs_torch": "max abs param diff vs torch-foreach, 1 step"}))
    print(f"{tree.num_params(params)} params in {len(leaves_p)} leaves; written {path}")
    return result


if __name__ == "__main__":
    main()
