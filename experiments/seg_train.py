"""python experiments/seg_train.py unet-transformer   # train segmentation (presets: unet, unet-transformer, folder, tiny)

    python experiments/seg_train.py unet --steps 2000 --lr 1e-3
    python experiments/seg_train.py folder --folder ../shared/data/em-membranes --class-map 0:1,255:0
    python experiments/seg_train.py unet-transformer --folder data/cells --folder-size 128 128
    python experiments/seg_train.py unet-transformer --resume runs/seg-unet-transformer/20260101-120000-abc12300
    python experiments/seg_train.py --config runs/seg-unet/<run>/config.json --resume runs/seg-unet/<run> --steps 4000

Trains with funcml's one loop (AdamW, warmup + cosine, clipping, checkpoints ranked by
val/miou), writes the run directory (config.json, metrics.csv, checkpoints/, plots/*.png,
eval.json) and prints where it is with the final validation metrics. Mistakes (a missing
--resume folder, a bad --folder) print one line and exit 2; bad flags print the usage and exit 2.

Folder data (docs/SEG_REAL_DATA.md). Images keep their own size (`--folder-size H W` resizes);
the training masks are scanned first and their raw values printed with their pixel shares;
values that do not fit `--model.num-classes` stop the run with an error naming them and the
`--class-map RAW:CLASS,...` to pass (a 0/255 mask is never read as class 0 + ignore). With
`--patch H W` training samples patches (`--fg-fraction` of them centred on foreground) and
validation predicts full images by sliding windows. Channels and `--mean/--std` come from the
training images unless given, and are saved in the run's config.json.
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
    run, summary = train(cfg, progress=True)
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
