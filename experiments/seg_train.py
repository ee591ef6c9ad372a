"""python experiments/seg_train.py unet-transformer   # train segmentation (presets: unet, unet-transformer, tiny)

    python experiments/seg_train.py unet --steps 2000 --lr 1e-3
    python experiments/seg_train.py unet-transformer --folder data/cells --data.height 128 --data.width 128
    python experiments/seg_train.py unet-transformer --resume runs/seg-unet-transformer/20260101-120000-abc12300
    python experiments/seg_train.py --config runs/seg-unet/<run>/config.json --resume runs/seg-unet/<run> --steps 4000

Trains with funcml's one loop (AdamW, warmup + cosine, clipping, checkpoints ranked by
val/miou), writes the run directory (config.json, metrics.csv, checkpoints/, plots/*.png,
eval.json) and prints where it is with the final validation metrics. Mistakes (a missing
--resume folder, a bad --folder) print one line and exit 2; bad flags print the usage and exit 2.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from funcml import config  # noqa: E402
from funcml.errors import cli_main  # noqa: E402
from funcml.train import distributed  # noqa: E402
from funcml.seg.task import PRESETS, SegTrainConfig, train  # noqa: E402


def _fmt(x: float) -> str:
    return "  n/a " if x != x else f"{x:.4f}"


@cli_main
def main(argv: list[str] | None = None) -> dict:
    cfg = config.cli(SegTrainConfig, presets=PRESETS, args=argv, description=__doc__.splitlines()[0])
    run, summary = train(cfg, progress=sys.stderr.isatty())
    if not distributed.is_main():  # under torchrun, rank 0 reports
        return summary
    ev = summary.get("eval_json") or {}
    print(f"run directory   {run.path}")
    print(f"steps           {summary['steps']} ({summary['seconds']:.1f} s, "
          f"{summary['step_ms_median'] or 'n/a'} ms/step median)")
    print(f"train loss      {summary['train'].get('loss', float('nan')):.4f}")
    if ev:
        print(f"val mean IoU    {_fmt(ev['mean_iou'])}   mean Dice {_fmt(ev['mean_dice'])}   "
              f"pixel accuracy {_fmt(ev['pixel_accuracy'])}   "
              f"({ev['num_images']} images, {Path(ev['checkpoint']).name})")
        for name, iou, dice in zip(ev["class_names"], ev["per_class_iou"], ev["per_class_dice"]):
            print(f"  {name:<12} IoU {_fmt(iou)}  Dice {_fmt(dice)}")
    print(f"plots           {run.plots}")
    return summary


if __name__ == "__main__":
    main()
