"""The README's main job: train and evaluate on the built-in data, then print a summary.

    python3 dev.py main                 # from a fresh clone: sets up .venv, then runs this
    python experiments/main.py --steps 50

Until the segmentation and ASR trainers exist, the main job trains the reference CNN of
`funcml.nn.reference` on a built-in synthetic task (which of 4 shape classes is in a 32x32
image, from `funcml.seg.shapes`), through the same pure train step, loop, checkpoints and
run directory that the applications use.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch

from funcml import config, optim, random
from funcml.checkpoint import CheckpointManager
from funcml.errors import cli_main
from funcml.nn import model as models
from funcml.nn.reference import CNNConfig
from funcml.runs import create_run
from funcml.seg.shapes import ShapesConfig, shapes_batch, split_key
from funcml.train import fit, init_train_state, make_eval_step, make_train_step


@dataclasses.dataclass(frozen=True)
class MainConfig:
    """Core demo: classify the largest shape in a synthetic image with the reference CNN."""

    steps: int = 300
    batch_size: int = 32
    lr: float = 3e-3
    seed: int = 0
    eval_every: int = 100
    compile: bool = False
    """Compile the train step (inductor: a one-off cost of a minute or more on 2 CPU cores)."""
    runs_dir: Path = Path("runs")
    model: CNNConfig = CNNConfig(in_channels=3, channels=(16, 32, 64), num_classes=4, dropout=0.1)
    data: ShapesConfig = ShapesConfig(height=32, width=32, objects=(1, 1), size=(0.2, 0.35), occlusion_prob=0.0)


def make_batch(key: torch.Tensor, n: int, data: ShapesConfig) -> dict[str, torch.Tensor]:
    images, masks = shapes_batch(key, n, data)
    # Label: the shape class covering most pixels (background excluded).
    counts = torch.nn.functional.one_hot(masks.flatten(1), data.num_classes).sum(1)[:, 1:]
    return {"x": images, "y": counts.argmax(-1)}


@cli_main
def main(argv: list[str] | None = None) -> dict:
    cfg = config.cli(MainConfig, args=argv, description=__doc__.splitlines()[0])
    torch.set_num_threads(max(1, torch.get_num_threads()))
    root = random.key(cfg.seed)
    k_init, k_train, k_data = random.split(root, 3)
    params, state = models.init(k_init, cfg.model)
    tx = optim.chain(optim.clip_by_global_norm(1.0),
                     optim.adamw(optim.warmup_cosine_decay_schedule(0.0, cfg.lr, cfg.steps // 10, cfg.steps)))

    def loss_fn(params, model_state, batch, key):
        logits, model_state = models.apply(params, model_state, batch["x"], cfg.model, key=key, train=True)
        loss = torch.nn.functional.cross_entropy(logits, batch["y"])
        return loss, ({"acc": (logits.argmax(-1) == batch["y"]).float().mean()}, model_state)

    def eval_fn(params, model_state, batch):
        logits, _ = models.apply(params, model_state, batch["x"], cfg.model, train=False)
        return {"acc": (logits.argmax(-1) == batch["y"]).float().mean()}

    ts = init_train_state(params, state, tx, k_train)
    train_step = make_train_step(loss_fn, tx, compile=cfg.compile)
    eval_step = make_eval_step(eval_fn, compile=False)
    val = make_batch(split_key(k_data, "val"), 512, cfg.data)
    train_key = split_key(k_data, "train")
    run = create_run(cfg.runs_dir, "core-demo", config=cfg)
    manager = CheckpointManager(run.checkpoints, keep_last=1, best_metric="val/acc", mode="max")
    print(f"[main] run directory: {run.path}", file=sys.stderr)
    result = fit(ts, train_step, lambda step: make_batch(random.fold_in(train_key, step), cfg.batch_size, cfg.data),
                 num_steps=cfg.steps, eval_fn=lambda ts: {"val/acc": eval_step(ts, val)["acc"]},
                 eval_every=cfg.eval_every, run=run, checkpoints=manager, config=cfg, desc="core-demo")
    s = result.summary
    print("\n== core demo: reference CNN on synthetic shapes (4 classes) ==")
    print(f"steps            {s['steps']}")
    print(f"train loss       {s['train'].get('loss', float('nan')):.4f}")
    print(f"val accuracy     {s['eval'].get('val/acc', float('nan')):.4f}  (512 held-out images)")
    print(f"throughput       {s['items_per_s_median']} images/s (median), {s['seconds']:.1f} s in all")
    print(f"run directory    {run.path}  (metrics.csv, summary.json, checkpoints/)")
    return s


if __name__ == "__main__":
    main()
