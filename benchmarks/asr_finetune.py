"""Fine-tuning on real speech, leave one speaker out: python benchmarks/asr_finetune.py FSDD_DIR --init-from RUN

    python benchmarks/asr_finetune.py ../shared/data/fsdd-dev --init-from runs/asr-speech/<time>-<id>
    python benchmarks/asr_finetune.py ../shared/data/fsdd-dev --init-from RUN --scratch    # + the no-init ablation
    python benchmarks/asr_finetune.py ../shared/data/fsdd-dev --scratch-only                # from scratch alone

For each speaker of a folder of `{digit}_{speaker}_{index}.wav` recordings (FSDD, e.g.
../shared/data/fsdd-dev with jackson, nicolas, theo), one fold: the other speakers' recordings
with index outside `--val-indices` are the training manifest, those inside it the validation
manifest (it picks the best checkpoint), and every recording of the held-out speaker is the
test manifest (experiments/fsdd_manifest.py writes them). Each fold runs
`experiments/asr_train.py manifest --init-from RUN` (params of RUN's best checkpoint, a new
optimizer; RUN's model, front end and tokenizer) with this script's `--steps`, `--lr`, ...,
speed perturbation of the recordings (`--speed-perturb`) and `--mix-speech` synthesized digit
strings mixed in (so that fine-tuning keeps hearing many voices), and, with `--scratch`, the
same training from a fresh init (the ablation: what the
synthetic pre-training is worth). Before fine-tuning, RUN itself is scored on the held-out
speaker (zero-shot).

Prints the machine, one row per fold and mode (held-out speaker CER / WER, val CER, steps,
ms/step, wall seconds) and the mean, and writes `--out` (default: a fresh
benchmarks/results/asr_finetune-<time>.json). Runs go under `--runs-dir`.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))

from benchmarks.common import fresh_results_path, markdown_table, start, write_json  # noqa: E402
from funcml import config, devices  # noqa: E402
from funcml.asr import manifest, task  # noqa: E402
from funcml.errors import ConfigError, DataError, cli_main  # noqa: E402

import fsdd_manifest  # noqa: E402


@dataclasses.dataclass(frozen=True)
class FinetuneBenchConfig:
    """Leave-one-speaker-out fine-tuning of a Paraformer on FSDD-style recordings."""

    folder: tyro.conf.Positional[Path]
    """A folder of {digit}_{speaker}_{index}.wav recordings (e.g. ../shared/data/fsdd-dev)."""
    init_from: Path | None = None
    """The run to fine-tune (its best checkpoint), e.g. the main job's ASR run."""
    scratch: bool = False
    """Also train each fold from a fresh init (the ablation)."""
    scratch_only: bool = False
    """Only the from-scratch runs (no --init-from needed)."""
    speakers: tuple[str, ...] = ()
    """Held-out speakers, one fold each (default: every speaker in the folder)."""
    val_indices: tuple[int, int] = (45, 49)
    """Recording indices [LO, HI] of the training speakers kept for validation."""
    max_index: int | None = None
    """Use only recordings with index <= this (a quick run; default: all)."""
    steps: int = 600
    """Training steps per fold and mode."""
    lr: float = 1e-3
    """Peak learning rate (AdamW, warmup + cosine)."""
    warmup_steps: int = 40
    """Linear warmup steps."""
    batch_size: int = 16
    """Utterances per step."""
    eval_every: int = 100
    """Validate (and checkpoint) every this many steps; the best val CER's checkpoint is tested."""
    speed_perturb: tuple[float, ...] = (0.9, 1.1)
    """Speed perturbation of the training recordings (empty: none)."""
    mix_speech: int = 1500
    """Synthesized digit strings (the speech corpus's training voices) mixed into each fold's training
    set (0: real recordings only); the scratch runs get them too with word tokens (a vocabulary of
    digit words spells them; one of characters from single digits has no space)."""
    mix_digits_len: tuple[int, int] = (1, 3)
    """Digit-string lengths of the mixed synthesized utterances (FSDD holds single digits)."""
    tokenizer: str | None = None
    """Token unit of the from-scratch runs, "char" or "word" (default: the --init-from run's, else "word");
    fine-tuning always uses the run's."""
    train_flags: str = ""
    """More experiments/asr_train.py flags for every fold, written with '=': --train-flags="--max-freq 27"."""
    seed: int = 0
    """The --seed of every fold's asr_train.py run (init, dropout, glancing, SpecAugment keys)."""
    threads: int = 1
    """torch threads (1 on the shared machine)."""
    device: str = "cpu"
    """Where the fold runs train and are scored: auto (CUDA when a GPU is visible, else the CPU), cpu, cuda or cuda:N."""
    runs_dir: Path = Path("runs/asr-finetune")
    """Where the manifests and the fold runs go."""
    cache_dir: Path = Path(".cache/funcml-speech")
    """The content-keyed feature cache (shared by the folds)."""
    out: Path | None = None
    """The JSON to write (default: a fresh benchmarks/results/asr_finetune-<time>.json)."""


def _manifests(cfg: FinetuneBenchConfig, held_out: str, speakers: list[str], folder: Path) -> dict[str, Path]:
    others = tuple(s for s in speakers if s != held_out)
    lo, hi = cfg.val_indices
    top = cfg.max_index
    paths = {}
    for split, kw in (("train", dict(speakers=others, exclude_indices=(lo, hi))),
                      ("val", dict(speakers=others, indices=(lo, hi))),
                      ("test", dict(speakers=(held_out,)))):
        sel = fsdd_manifest.FsddConfig(cfg.folder, folder / f"{split}.jsonl", **kw)
        rows = [r for r in fsdd_manifest.fsdd_rows(sel)
                if top is None or int(re.match(r"\d+_[^_]+_(\d+)", Path(r["audio"]).name)[1]) <= top]
        if not rows:
            raise DataError(f"fold {held_out}: the {split} manifest is empty (check --val-indices / --max-index)")
        paths[split] = manifest.write_jsonl(sel.out, rows)
    return paths


def _train(cfg: FinetuneBenchConfig, paths: dict[str, Path], runs: Path, init: bool) -> dict[str, Any]:
    args = ["manifest", "--train-manifest", str(paths["train"]), "--val-manifest", str(paths["val"]),
            "--test-manifest", str(paths["test"]), "--steps", str(cfg.steps), "--lr", str(cfg.lr),
            "--warmup-steps", str(cfg.warmup_steps), "--batch-size", str(cfg.batch_size),
            "--eval-every", str(cfg.eval_every), "--seed", str(cfg.seed), "--runs-dir", str(runs),
            "--cache-dir", str(cfg.cache_dir), "--speed-perturb", *map(str, cfg.speed_perturb), "--device", cfg.device]
    unit = cfg.tokenizer or (task.load_model(cfg.init_from)[0].tokenizer if cfg.init_from is not None else "word")
    args += ["--init-from", str(cfg.init_from)] if init else ["--tokenizer", unit]
    if cfg.mix_speech and (init or unit == "word"):
        args += ["--mix-speech", str(cfg.mix_speech), "--speech.digits-len", *map(str, cfg.mix_digits_len)]
    args += shlex.split(cfg.train_flags)
    train_cfg = config.cli(task.AsrTrainConfig, presets=task.PRESETS, args=args)
    t0 = time.perf_counter()
    run, summary = task.train(train_cfg, progress=False)
    ev = summary["eval_json"]
    return {"run": str(run.path), "test_cer": ev["test"]["cer"], "test_wer": ev["test"]["wer"],
            "test_length_acc": ev["test"]["length_acc"], "val_cer": ev["val"]["cer"], "val_wer": ev["val"]["wer"],
            "best_step": ev["step"], "steps": summary["steps"], "step_ms_median": summary["step_ms_median"],
            "wall_s": round(time.perf_counter() - t0, 1), "examples": ev["test"]["examples"][:3]}


def _zero_shot(cfg: FinetuneBenchConfig, test: Path) -> dict[str, Any]:
    train_cfg, params, tok = task.load_model(cfg.init_from, device=devices.resolve(cfg.device))
    m = task.evaluate(params, dataclasses.replace(train_cfg, cache_dir=cfg.cache_dir),
                      task.manifest_examples(dataclasses.replace(train_cfg, cache_dir=cfg.cache_dir), test, tok), tok,
                      num_examples=3)
    return {"test_cer": m["cer"], "test_wer": m["wer"], "test_length_acc": m["length_acc"], "examples": m["examples"]}


@cli_main
def main(args: list[str] | None = None) -> dict[str, Any]:
    cfg = tyro.cli(FinetuneBenchConfig, args=args, description="\n\n".join(__doc__.split("\n\n")[:2]))
    if cfg.init_from is None and not cfg.scratch_only:
        raise ConfigError("give --init-from RUN (the run to fine-tune), or --scratch-only for the from-scratch runs")
    _, info = start(cfg.device, cfg.threads)
    found = sorted({m[2] for p in cfg.folder.glob("*.wav") if (m := re.match(r"^(\d)_([^_]+)_(\d+)\.wav$", p.name))}
                   ) if cfg.folder.is_dir() else []
    if len(found) < 2:
        raise DataError(f"{cfg.folder}: need recordings {{digit}}_{{speaker}}_{{index}}.wav of at least two speakers, "
                        f"found {found}")
    held = list(cfg.speakers or found)
    unknown = sorted(set(held) - set(found))
    if unknown:
        raise ConfigError(f"--speakers {unknown} are not in {cfg.folder} (it has {found})")
    modes = ([] if cfg.scratch_only else ["init"]) + (["scratch"] if cfg.scratch or cfg.scratch_only else [])
    rows, folds = [], []
    for spk in held:
        fold_dir = cfg.runs_dir / f"heldout-{spk}"
        paths = _manifests(cfg, spk, found, fold_dir / "manifests")
        fold = {"held_out": spk, "train_speakers": [s for s in found if s != spk],
                "manifests": {k: str(v) for k, v in paths.items()}}
        if cfg.init_from is not None:
            fold["zero_shot"] = _zero_shot(cfg, paths["test"])
            rows.append({"held out": spk, "mode": "zero-shot", "CER": 100 * fold["zero_shot"]["test_cer"],
                         "WER": 100 * fold["zero_shot"]["test_wer"]})
        for mode in modes:
            r = _train(cfg, paths, fold_dir / mode, init=mode == "init")
            fold[mode] = r
            rows.append({"held out": spk, "mode": "fine-tuned" if mode == "init" else "from scratch",
                         "CER": 100 * r["test_cer"], "WER": 100 * r["test_wer"], "val CER": 100 * r["val_cer"],
                         "best step": r["best_step"], "ms/step": r["step_ms_median"], "wall s": r["wall_s"]})
            print(f"[asr_finetune] held out {spk}, {mode}: CER {100 * r['test_cer']:.2f}%  WER "
                  f"{100 * r['test_wer']:.2f}%  ({r['wall_s']} s)", flush=True)
        folds.append(fold)
    mean = {}
    for mode in (["zero_shot"] if cfg.init_from is not None else []) + modes:
        mean[mode] = {k: statistics.mean(f[mode][k] for f in folds) for k in ("test_cer", "test_wer")}
        mean[mode]["worst_wer"] = max(f[mode]["test_wer"] for f in folds)
        name = {"init": "fine-tuned", "scratch": "from scratch"}.get(mode, "zero-shot")
        rows.append({"held out": "mean", "mode": name,
                     "CER": 100 * mean[mode]["test_cer"], "WER": 100 * mean[mode]["test_wer"]})
    print(markdown_table(rows, {k: k for k in ("held out", "mode", "CER", "WER", "val CER", "best step", "ms/step",
                                               "wall s")}))
    payload = {"machine": info, "config": config.to_dict(cfg), "folds": folds, "mean": mean}
    out = write_json(payload, cfg.out or fresh_results_path("asr_finetune"))
    print(f"written {out}")
    return payload


if __name__ == "__main__":
    main()
