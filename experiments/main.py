"""python3 dev.py main   # the README's main job: segmentation and ASR, each trained, evaluated and reported

    python experiments/main.py                                   # both presets (under 10 minutes on 2 CPU cores)
    python experiments/main.py --only seg                        # one application
    python experiments/main.py --seg.steps 20 --asr.steps 20 --runs-dir /tmp/runs   # a quick smoke run
    python experiments/main.py --threads 1                       # torch threads (default: the cores, at most 4)
    python experiments/main.py --device cuda                     # both runs on the GPU (default auto: CUDA if any)

Segmentation: trains `funcml.seg.task.PRESETS["unet-transformer"]` (U-Net with a transformer
bottleneck on hard 32x32 synthetic shapes: 1-3 objects, rotated, overlapping, an occluding
patch, imbalanced kinds), evaluates the best checkpoint on the fixed validation
split, prints per-class IoU / Dice, mean IoU and pixel accuracy, and writes an image / ground
truth / prediction overlay grid into the run's plots/ beside the training curves.

ASR: trains `funcml.asr.task.PRESETS["sim2real"]` (a SAN-M Paraformer with word tokens on 1-3
digit strings synthesized offline with espeak-ng at 8 kHz, 704 voices, room / microphone / noise
augmentation, so that it also hears real people: docs/SIM2REAL.md; the corpus is cached under
`.cache/`), evaluates the best checkpoint (by validation CER) on the test split spoken by
held-out voices, and prints CER, WER, token and length accuracy, real-time factor and a few
transcripts. `python benchmarks/asr_real.py DIR --run RUN` scores it on real recordings.

Every preset field is a flag under `--seg.` or `--asr.` (`--help` lists them all). The
results of both go to `<runs>/main-summary.json` (`--only` replaces its part and keeps the other's).

Threads. The default is one torch thread per available core, at most 4: on an idle 2-core
machine 2 threads ran the whole job in 481 s against 614 s with 1 (benchmarks/RESULTS.md). On a
machine shared with other work pass `--threads 1`: OpenMP's spinning worker threads make small
convolutions many times slower when a core is busy, while one thread degrades gracefully.

Device. `--device auto` (each config's default) trains on CUDA when a GPU is visible, else on the
CPU; `--device cpu|cuda|cuda:N` chooses. The device of each part is printed and written beside its
figures in main-summary.json.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Literal

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import tyro  # noqa: E402

from funcml import devices  # noqa: E402
from funcml.asr import task as asr_task  # noqa: E402
from funcml.errors import ConfigError, cli_main  # noqa: E402
from funcml.seg import task  # noqa: E402
from funcml.seg.viz import save_overlay_grid  # noqa: E402
from funcml.train import distributed  # noqa: E402


@dataclasses.dataclass(frozen=True)
class MainConfig:
    """The main job: train and evaluate the U-Net+Transformer on shapes, then the Paraformer on synthesized speech."""

    seg: task.SegTrainConfig = task.PRESETS["unet-transformer"][1]
    """Segmentation (the `unet-transformer` preset of funcml.seg.task)."""
    asr: asr_task.AsrTrainConfig = asr_task.PRESETS["sim2real"][1]
    """ASR (the `sim2real` preset of funcml.asr.task)."""
    only: Literal["all", "seg", "asr"] = "all"
    """Run both applications, or one."""
    runs_dir: Path | None = None
    """Put both runs under this folder (default: each config's runs_dir, `runs/`)."""
    threads: int | None = None
    """torch intra-op threads (None: the available cores, at most 4; 1 is robust on a busy machine)."""
    overlays: int = 8
    """Validation images in the overlay grid (0 = none)."""
    device: str | None = None
    """Where both runs compute: auto (CUDA when a GPU is visible, else the CPU), cpu, cuda or cuda:N (None: each
    config's --seg.device / --asr.device, both auto by default)."""

    def __post_init__(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {self.threads}")
        if self.overlays < 0:
            raise ConfigError(f"--overlays is a number of images (0 = none), got {self.overlays}")
        if self.device is not None:
            devices.check_name(self.device)


def default_threads() -> int:
    """The available cores (this process's CPU affinity), at most 4: small convolutions gain little beyond."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, 4))


def _fmt(x: float) -> str:
    return "   -  " if x != x else f"{x:.4f}"


def _table(ev: dict) -> str:
    lines = [f"{'class':<12} {'IoU':>7} {'Dice':>7}", "-" * 28]
    for name, iou, dice in zip(ev["class_names"], ev["per_class_iou"], ev["per_class_dice"]):
        lines.append(f"{name:<12} {_fmt(iou):>7} {_fmt(dice):>7}")
    lines.append("-" * 28)
    lines.append(f"{'mean':<12} {_fmt(ev['mean_iou']):>7} {_fmt(ev['mean_dice']):>7}")
    lines.append(f"pixel accuracy {_fmt(ev['pixel_accuracy'])}   ({ev['num_images']} validation images)")
    return "\n".join(lines)


def _overlay_grid(run_path: Path, cfg: task.SegTrainConfig, n: int) -> Path | None:
    """plots/overlays.png: `n` validation images with ground truth and prediction (funcml.seg.viz)."""
    if n <= 0:
        return None
    _, model_cfg, params, state = task.load_model(run_path, device=devices.resolve(cfg.device))
    images, masks = next(task.val_batches(cfg, batch_size=n))
    pred, _ = task.predict(params, state, model_cfg, task.preprocess(images, cfg))
    return save_overlay_grid(images, masks, pred, task.class_names(cfg), run_path / "plots" / "overlays.png",
                             max_rows=n)


def _run_seg(cfg: task.SegTrainConfig, overlays_n: int) -> dict:
    t0 = time.perf_counter()
    run, summary = task.train(cfg, progress=True)
    if not distributed.is_main():  # under torchrun, rank 0 evaluates and reports
        return {"run": str(run.path)}
    overlays = _overlay_grid(run.path, cfg, overlays_n)
    ev = summary["eval_json"]
    m, d = cfg.model, cfg.data
    seconds = time.perf_counter() - t0
    print(f"\n== segmentation: U-Net+Transformer (depth {m.depth}, width {m.base_width}, "
          f"{getattr(m, 'num_layers', 0)} transformer layers) on {d.height}x{d.width} shapes ==")
    print(f"steps {summary['steps']} x batch {cfg.batch_size}, {seconds:.1f} s in all "
          f"({summary['step_ms_median'] or 'n/a'} ms/step median), checkpoint {Path(ev['checkpoint']).name}\n")
    print(_table(ev))
    print(f"\nrun directory   {run.path}")
    print(f"curves          {run.plots / 'loss.png'}, {run.plots / 'val_miou.png'}")
    if overlays is not None:
        print(f"overlays        {overlays}  (image | ground truth | prediction)")
    print(f"metrics         {run.path / 'eval.json'}, {run.path / 'metrics.csv'}")
    return {"run": str(run.path), "seconds": round(seconds, 1), "mean_iou": ev["mean_iou"],
            "mean_dice": ev["mean_dice"], "pixel_accuracy": ev["pixel_accuracy"], "summary": summary}


def _pct(x: float) -> str:
    return "  n/a " if x != x else f"{100 * x:5.1f}%"


def _run_asr(cfg: asr_task.AsrTrainConfig) -> dict:
    t0 = time.perf_counter()
    run, summary = asr_task.train(cfg, progress=True)
    if not distributed.is_main():
        return {"run": str(run.path)}
    ev = summary["eval_json"]
    e = cfg.model.encoder
    seconds = time.perf_counter() - t0
    print(f"\n== ASR: Paraformer ({e.block} encoder, {e.num_layers} layers, d={e.d_model}; "
          f"{cfg.model.decoder_layers} decoder layers) on synthesized speech ({cfg.num_train} utterances) ==")
    print(f"steps {summary['steps']} x batch {cfg.batch_size}, {seconds:.1f} s in all (data {summary['data_seconds']} s, "
          f"{summary['step_ms_median'] or 'n/a'} ms/step median), checkpoint {Path(ev['checkpoint']).name}\n")
    print(f"{'split':<30} {'CER':>7} {'WER':>7} {'tok acc':>8} {'len acc':>8} {'RTF':>7} {'utts':>5}")
    print("-" * 78)
    for split, name in (("val", "val (training voices)"), ("test", f"test ({ev['test_split']})")):
        m = ev[split]
        print(f"{name:<30} {_pct(m['cer']):>7} {_pct(m['wer']):>7} {_pct(m['token_acc']):>8} "
              f"{_pct(m['length_acc']):>8} {m['rtf']:7.4f} {m['num_utts']:>5}")
    print()
    for pair in ev["test"]["examples"][:3]:
        print(f"  ref: {pair['ref']!r}\n  hyp: {pair['hyp']!r}")
    print(f"\nrun directory   {run.path}")
    print(f"curves          {run.plots / 'loss.png'}, {run.plots / 'val_cer.png'}")
    print(f"metrics         {run.path / 'eval.json'}, {run.path / 'metrics.csv'}")
    return {"run": str(run.path), "seconds": round(seconds, 1), "test_cer": ev["test"]["cer"],
            "test_wer": ev["test"]["wer"], "val_cer": ev["val"]["cer"], "summary": summary}


def write_summary(path: Path, result: dict) -> dict:
    """Merge `result` into the summary file at `path` (atomically) and return what was written.

    The parts run now (`seg`, `asr`) replace their earlier entries; a part not run now (`--only`)
    keeps the entry of the run that made it, so `--only seg` never drops an earlier ASR result.
    `seconds` is this invocation's wall time; each part keeps its own `seconds`."""
    merged: dict = {}
    if path.is_file():
        try:
            old = json.loads(path.read_text())
            merged = {k: v for k, v in old.items() if k in ("seg", "asr") and isinstance(v, dict)}
        except (OSError, ValueError):
            print(f"[main] {path} could not be read; writing a new summary", file=sys.stderr)
    for k, v in result.items():
        merged[k] = {kk: vv for kk, vv in v.items() if kk != "summary"} if isinstance(v, dict) else v
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(merged, indent=2) + "\n")
    os.replace(tmp, path)
    return merged


@cli_main
def main(argv: list[str] | None = None) -> dict:
    cfg = tyro.cli(MainConfig, args=argv, description="\n\n".join(__doc__.split("\n\n")[:2]),
                   config=(tyro.conf.AvoidSubcommands,))
    threads = cfg.threads or default_threads()
    torch.set_num_threads(threads)
    if distributed.is_main():
        print(f"[main] {threads} torch thread(s) (--threads; 1 on a busy machine)", file=sys.stderr, flush=True)
    seg_cfg, asr_cfg = cfg.seg, cfg.asr
    if cfg.runs_dir is not None:
        seg_cfg = dataclasses.replace(seg_cfg, runs_dir=cfg.runs_dir)
        asr_cfg = dataclasses.replace(asr_cfg, runs_dir=cfg.runs_dir)
    if cfg.device is not None:
        seg_cfg = dataclasses.replace(seg_cfg, device=cfg.device)
        asr_cfg = dataclasses.replace(asr_cfg, device=cfg.device)
    used = {part: str(devices.resolve(c.device)) for part, c in (("seg", seg_cfg), ("asr", asr_cfg))
            if cfg.only in ("all", part)}  # a missing GPU fails here, before any work
    if distributed.is_main():
        print(f"[main] device: {', '.join(f'{p} {d}' for p, d in used.items())} (--device)", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    result: dict = {}
    if cfg.only in ("all", "seg"):
        result["seg"] = _run_seg(seg_cfg, cfg.overlays)
    if cfg.only in ("all", "asr"):
        result["asr"] = _run_asr(asr_cfg)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    result["threads"] = threads
    for part, dev in used.items():  # beside each part's figures (an --only run keeps the other part's entry)
        result[part]["device"] = dev
    if not distributed.is_main():
        return result
    root = cfg.runs_dir or (seg_cfg.runs_dir if cfg.only != "asr" else asr_cfg.runs_dir)
    write_summary(root / "main-summary.json", result)
    print(f"\n== main job done in {result['seconds']:.1f} s ==")
    if "seg" in result:
        print(f"segmentation    mean IoU {result['seg']['mean_iou']:.4f} on the validation shapes")
    if "asr" in result:
        print(f"ASR             CER {100 * result['asr']['test_cer']:.2f}% on held-out voices "
              f"(WER {100 * result['asr']['test_wer']:.2f}%)")
    print(f"summary         {root / 'main-summary.json'}")
    return result


if __name__ == "__main__":
    main()
