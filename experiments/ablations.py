"""python experiments/ablations.py --list   # every ablation group and the exact commands it runs

    python experiments/ablations.py seg-arch --runs-dir /tmp/funcml-ablations   # one group, then its summary
    python experiments/ablations.py all --runs-dir /tmp/funcml-ablations        # every group, in order
    python experiments/ablations.py asr-glm --list                              # one group's commands
    python experiments/ablations.py seg-loss --smoke --runs-dir /tmp/smoke      # 2 steps per run (tests, CI)

An ablation group is a handful of training runs that differ in one thing (the model, a loss
weight, the data, the precision...). Each run is one command of `experiments/seg_train.py` or
`experiments/asr_train.py` with its own `--experiment` name (`abl-seg-base`, `abl-asr-ctc`, ...),
so it lands in `<runs-dir>/<experiment>/<time>-<id>/`. After its runs, a group is summarized by
`experiments/summarize.py` into `<runs-dir>/summary-<group>/` (summary.md, summary.csv, plots).

The runs execute in this process, one after the other, through each script's own
`main(argv)` with exactly the argv that `--list` prints: a listed command and what ran are the
same (only the interpreter start-up is saved). A run whose experiment folder already holds a
finished run (its `summary.json`) is reused rather than trained again, so the baselines
shared by several groups train once; `--force` trains them again.

Sizes (docs/ABLATIONS.md has the measured results): small enough that one run takes 15-75 s
on one busy CPU core (torch on `--threads 1`), and `all` (21 runs) about 15 minutes.

* Segmentation: the `unet-transformer` / `unet` presets shrunk to 16x16 images of 1-2
  axis-aligned shapes, depth 2, base width 8 (transformer: 2 layers, 4 heads, D = 32 over the
  4x4 bottleneck), batch 16, 300 steps at lr 1e-2, validated on 64 images every 100 steps.
* ASR: the `toy` preset (a 2-layer transformer Paraformer, d_model 64, on the easy toy
  features) for 150 steps, validated on 64 utterances; the input-layer group trains a
  2-layer SAN-M Paraformer (d_model 64) on the synthesized speech (2,000 utterances) for
  250 steps and reports CER on the validation voices.

`--smoke` gives every run tiny values (2 steps, batch 4, small validation sets) to check that
every command still works; its numbers mean nothing. The compile group's compiled run costs
minutes of inductor compilation on a cold cache (see docs/ABLATIONS.md).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shlex
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Literal, NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import tyro  # noqa: E402

from funcml import devices  # noqa: E402
from funcml.errors import ConfigError, cli_main  # noqa: E402

_HERE = Path(__file__).resolve().parent


class Run(NamedTuple):
    """One training run: `python experiments/<script>.py <args> --experiment <experiment> --runs-dir <dir>`."""

    experiment: str
    script: Literal["seg_train", "asr_train"]
    args: tuple[str, ...]
    data: Literal["shapes", "toy", "speech"]


class Group(NamedTuple):
    """Runs that differ in one thing, summarized together on `metrics`."""

    title: str
    runs: tuple[Run, ...]
    metrics: tuple[str, ...]


# The shared sizes (see the module doc). Every seg run starts from one of the presets and
# shrinks it the same way, so a group's runs differ only in the flags that follow.
_SEG_SMALL = ("--data.height", "16", "--data.width", "16", "--model.depth", "2", "--model.base-width", "8",
              "--steps", "300", "--eval-every", "100", "--val-size", "64", "--lr", "1e-2")
_ASR_TOY = ("--steps", "150", "--eval-every", "75")
_ASR_SPEECH = ("--model.encoder.d-model", "64", "--model.encoder.d-ff", "256", "--model.encoder.num-layers", "2",
               "--model.decoder-layers", "1", "--steps", "250", "--eval-every", "125")

_SEG_METRICS = ("val/miou", "val/mdice", "val/pixel_acc")
_ASR_METRICS = ("val/cer", "val/wer", "val/token_acc", "val/length_acc")

# Tiny overrides for --smoke (they replace the run's own values of these flags).
_SMOKE = {
    "shapes": ("--steps", "2", "--eval-every", "2", "--batch-size", "4", "--val-size", "8"),
    "toy": ("--steps", "2", "--eval-every", "2", "--batch-size", "4", "--num-val", "8", "--num-test", "8"),
    "speech": ("--steps", "2", "--eval-every", "2", "--batch-size", "4", "--num-train", "8", "--num-val", "4",
               "--num-test", "4"),
}


def _flags(args: tuple[str, ...]) -> list[list[str]]:
    """`("--a", "1", "--b", "--c", "2", "3")` -> `[["--a", "1"], ["--b"], ["--c", "2", "3"]]`."""
    out: list[list[str]] = []
    for a in args:
        if a.startswith("--") or not out:
            out.append([a])
        else:
            out[-1].append(a)
    return out


def _with(base: tuple[str, ...], flags: tuple[str, ...]) -> tuple[str, ...]:
    """`base` with `flags` applied: a flag already in `base` gets its new value in place, a new
    one is appended, so a listed command never holds the same flag twice."""
    merged = _flags(base)
    for new in _flags(flags):
        same = [i for i, old in enumerate(merged) if old[0] == new[0]]
        if same:
            merged[same[0]] = new
        else:
            merged.append(new)
    return tuple(a for flag in merged for a in flag)


def _seg(name: str, *flags: str, preset: str = "unet-transformer") -> Run:
    return Run(f"abl-seg-{name}", "seg_train", (preset, *_with(_SEG_SMALL, flags)), "shapes")


def _asr(name: str, *flags: str) -> Run:
    return Run(f"abl-asr-{name}", "asr_train", ("toy", *_with(_ASR_TOY, flags)), "toy")


def _speech(name: str, *flags: str) -> Run:
    return Run(f"abl-asr-{name}", "asr_train", ("speech", *_with(_ASR_SPEECH, flags)), "speech")


SEG_BASE = _seg("base")
ASR_BASE = _asr("base")

GROUPS: dict[str, Group] = {
    "seg-arch": Group("U-Net vs U-Net+Transformer (and the transformer removed, its positional encoding kept)", (
        _seg("unet", preset="unet"),
        SEG_BASE,
        _seg("pe-only", "--model.num-layers", "0"),
    ), _SEG_METRICS),
    "seg-size": Group("Depth and width of the U-Net+Transformer", (
        SEG_BASE,
        _seg("width16", "--model.base-width", "16"),
        _seg("depth3", "--model.depth", "3"),
    ), _SEG_METRICS),
    "seg-loss": Group("Loss weights: CE + Dice, CE alone, Dice alone", (
        SEG_BASE,
        _seg("ce-only", "--dice-weight", "0"),
        _seg("dice-only", "--ce-weight", "0"),
    ), _SEG_METRICS),
    "seg-data": Group("Harder data: occluding patches and overlaps, class imbalance (each scored on its own val split)", (
        SEG_BASE,
        _seg("occlusion", "--data.occlusion-prob", "0.5", "--data.overlap-prob", "0.5"),
        _seg("imbalance", "--data.class-weights", "8", "1", "1", "1"),
    ), _SEG_METRICS),
    "asr-encoder": Group("Paraformer encoder blocks: transformer, Conformer, SAN-M", (
        ASR_BASE,
        _asr("conformer", "--model.encoder.block", "conformer"),
        _asr("sanm", "--model.encoder.block", "sanm"),
    ), _ASR_METRICS),
    "asr-glm": Group("With and without the glancing (GLM) sampler", (
        ASR_BASE,
        _asr("no-glm", "--loss.glance-ratio", "0"),
    ), _ASR_METRICS),
    "asr-ctc": Group("With and without an auxiliary CTC loss on the encoder", (
        ASR_BASE,
        _asr("ctc", "--model.ctc", "--loss.ctc-weight", "0.3"),
    ), _ASR_METRICS),
    "asr-tail": Group("CIF tail threshold at inference (training is identical: CIF is given the target lengths)", (
        ASR_BASE,
        _asr("tail0", "--model.tail-threshold", "0"),
        _asr("tail0.25", "--model.tail-threshold", "0.25"),
    ), _ASR_METRICS),
    "asr-input": Group("Speech input: conv2d 4x subsampling of 10 ms log-mels vs LFR (7 frames every 6) + linear", (
        _speech("speech-conv2d"),
        _speech("speech-lfr", "--frontend.use-lfr", "--model.encoder.input-layer", "linear"),
    ), _ASR_METRICS),
    "precision": Group("fp32 vs bf16 autocast, both applications", (
        SEG_BASE,
        _seg("bf16", "--precision", "bf16"),
        ASR_BASE,
        _asr("bf16", "--precision", "bf16"),
    ), ("val/miou", "val/cer")),
    "compile": Group("Eager vs compiled train step (torch.compile, inductor)", (
        SEG_BASE,
        _seg("compiled", "--compile"),
    ), ("val/miou",)),
}


@dataclasses.dataclass(frozen=True)
class AblationsConfig:
    """Run a named group of ablation runs into a runs folder, then summarize them."""

    group: tyro.conf.Positional[Literal[tuple(GROUPS) + ("all",)] | None] = None  # type: ignore[valid-type]
    """The group to run (or to list), or `all`; none with `--list`: every group."""
    list: bool = False
    """Print the group's exact commands (training runs, then the summary) and exit."""
    runs_dir: Path = Path("runs/ablations")
    """Where the runs and the summaries go."""
    smoke: bool = False
    """Append tiny overrides to every run (2 steps): a check that the commands work."""
    force: bool = False
    """Train runs again even when their experiment folder already holds a finished run."""
    threads: int = 1
    """torch intra-op threads for the runs."""
    device: str = "auto"
    """Where the runs compute: auto (CUDA when a GPU is visible, else the CPU), cpu, cuda or cuda:N."""


def _selected(name: str | None) -> list[str]:
    return list(GROUPS) if name in (None, "all") else [name]


def run_argv(run: Run, runs_dir: Path, smoke: bool, device: str = "auto") -> list[str]:
    """The argv of the run's script (what follows `python experiments/<script>.py`)."""
    argv = (*run.args, "--experiment", run.experiment, "--runs-dir", str(runs_dir),
            *(("--device", device) if device != "auto" else ()))
    return list(_with(argv, _SMOKE[run.data]) if smoke else argv)


def summary_argv(name: str, runs_dir: Path) -> list[str]:
    """The argv of experiments/summarize.py for group `name`."""
    group = GROUPS[name]
    return ["--runs", *(str(runs_dir / r.experiment) for r in group.runs), "--out", str(runs_dir / f"summary-{name}"),
            "--metrics", *group.metrics]


def commands(name: str, runs_dir: Path, smoke: bool = False, device: str = "auto") -> list[str]:
    """The shell commands of group `name`: its runs, then its summary."""
    out = [shlex.join(["python", f"experiments/{r.script}.py", *run_argv(r, runs_dir, smoke, device)])
           for r in GROUPS[name].runs]
    return out + [shlex.join(["python", "experiments/summarize.py", *summary_argv(name, runs_dir)])]


def _load(script: str) -> ModuleType:
    """Import `experiments/<script>.py` (not a package) as a module, once."""
    mod_name = f"_funcml_experiments_{script}"
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    spec = importlib.util.spec_from_file_location(mod_name, _HERE / f"{script}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    spec.loader.exec_module(module)
    return module


def finished_run(experiment_dir: Path) -> Path | None:
    """The latest run under `experiment_dir` that finished (wrote a summary.json, not interrupted)."""
    if not experiment_dir.is_dir():
        return None
    for run in sorted(experiment_dir.iterdir(), reverse=True):
        summary = run / "summary.json"
        if summary.is_file():
            try:
                if not json.loads(summary.read_text()).get("interrupted"):
                    return run
            except (OSError, json.JSONDecodeError):
                continue
    return None


def _run_group(name: str, cfg: AblationsConfig, done: set[str]) -> Path:
    group = GROUPS[name]
    print(f"\n== {name}: {group.title} ==", flush=True)
    for i, run in enumerate(group.runs, 1):
        argv = run_argv(run, cfg.runs_dir, cfg.smoke, cfg.device)
        command = shlex.join(["python", f"experiments/{run.script}.py", *argv])
        previous = finished_run(cfg.runs_dir / run.experiment)
        if run.experiment in done or (previous is not None and not cfg.force):
            print(f"[ablations] ({i}/{len(group.runs)}) reusing {previous}: {command}", flush=True)
            continue
        print(f"[ablations] ({i}/{len(group.runs)}) {command}", flush=True)
        t0 = time.perf_counter()
        _load(run.script).main(argv)
        done.add(run.experiment)
        print(f"[ablations] {run.experiment} took {time.perf_counter() - t0:.1f} s", flush=True)
    _load("summarize").main(summary_argv(name, cfg.runs_dir))
    return cfg.runs_dir / f"summary-{name}" / "summary.md"


@cli_main
def main(argv: list[str] | None = None) -> list[Path]:
    cfg = tyro.cli(AblationsConfig, args=argv, description="\n\n".join(__doc__.split("\n\n")[:2]))
    if cfg.threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {cfg.threads}")
    devices.check_name(cfg.device)
    names = _selected(cfg.group)
    if cfg.list:
        for name in names:
            print(f"# {name}: {GROUPS[name].title}")
            print("\n".join(commands(name, cfg.runs_dir, cfg.smoke, cfg.device)) + "\n")
        return []
    if cfg.group is None:
        raise ConfigError(f"name a group to run ({', '.join(GROUPS)}, or all), or pass --list to see the commands")
    torch.set_num_threads(cfg.threads)
    done: set[str] = set()
    summaries = [_run_group(name, cfg, done) for name in names]
    print("\nsummaries:\n" + "\n".join(f"  {p}" for p in summaries))
    return summaries


if __name__ == "__main__":
    main()
