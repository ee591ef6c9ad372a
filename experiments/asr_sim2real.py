"""python experiments/asr_sim2real.py FSDD_DIR --recipe voices   # the sim-to-real ablation, one recipe a call

    python experiments/asr_sim2real.py ../shared/data/fsdd-dev --recipe word --runs-dir runs
    python experiments/asr_sim2real.py ../shared/data/fsdd-dev --recipe channel --steps 600 --table runs/sim2real.jsonl
    python experiments/asr_sim2real.py ../shared/data/fsdd-dev --recipe warp --print-flags   # the flags only

Trains the speech preset (`funcml.asr.task.PRESETS["speech"]`, synthetic espeak-ng data only)
changed by one named recipe (`funcml.asr.task.sim2real_config`; the main job's `sim2real` preset
is the `channel` recipe), then scores the run on real recordings with
benchmarks/asr_real.py (singles and joined 3-digit strings, per speaker) and appends one row
(recipe, steps, ms/step, wall seconds, held-out espeak CER/WER, real CER/WER) to `--table`.
The recipes are cumulative, each adding one lever to the one before it (see docs/SIM2REAL.md):

    preset   the speech preset as it is (character tokens, 16 kHz, 3-6 digits, 9 voices)
    word     + word tokens (one token per digit word)
    short8k  + 1-3 digit strings (real isolated digits are single words) and 8 kHz audio and front end
    voices   + every English espeak-ng language x 88 variants, rate 100-260 wpm, pitch 10-90, intonation
             10-90, word gaps 0-200 ms
    channel  + formant warp 0.85-1.2, speed 0.9/1.0/1.1, reverb (half), EQ 8 dB, coloured / babble noise
             at 5-35 dB, band limits (high-pass 0-300 Hz, low-pass 3-4 kHz)
    mels40   + 40 mel bins from 60 Hz (was 80 from 20 Hz): a spectral envelope that no longer resolves
             the low harmonics of the synthesizer's pitch
    lifter   + cepstral smoothing: each log-mel frame keeps its first 13 cepstral coefficients
             (`--frontend.lifter 13`), the envelope without the synthesizer's fine structure
    warp     + a fresh mel-axis warp of U(0.9, 1.1) per utterance and step (`--freq-warp 0.1`)
    specaug  + SpecAugment 3 time masks of <= 15 frames, 2 frequency masks of <= 8 of the 40 mel bins
             (was 2 x 10 frames, 2 x 10 of 80 bins)
    more     + 4000 training utterances (was 1500)

`--print-flags` prints the recipe as `experiments/main.py --asr.*` flags (the main job with that
recipe instead of its own) and exits.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import tyro

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import asr_real  # noqa: E402
from funcml import config, devices  # noqa: E402
from funcml.asr import task  # noqa: E402
from funcml.errors import ConfigError, cli_main  # noqa: E402

RECIPES = task.SIM2REAL_RECIPES


@dataclasses.dataclass(frozen=True)
class Sim2RealConfig:
    """Train one sim-to-real recipe on synthetic speech and score it on real recordings."""

    folder: tyro.conf.Positional[Path]
    """A folder of {digit}_{speaker}_{index}.wav recordings (e.g. ../shared/data/fsdd-dev)."""
    recipe: str = "specaug"
    """One of preset, word, short8k, voices, channel, mels40, specaug, more (cumulative; see the module doc)."""
    steps: int | None = None
    """Training steps (default: the preset's 1000); fewer for a quick screen."""
    num_train: int | None = None
    """Training utterances (default: the recipe's)."""
    runs_dir: Path = Path("runs")
    """Where the run directory goes."""
    table: Path | None = None
    """Append the result row (JSON) to this file."""
    strings: int = 300
    """Three-digit strings to score (see benchmarks/asr_real.py)."""
    print_flags: bool = False
    """Print the recipe as experiments/main.py flags and exit."""
    check_run: Path | None = None
    """Train nothing: score this existing run (held-out espeak checks and real recordings)."""
    device: str = "auto"
    """Where the run trains and is scored: auto (CUDA when a GPU is visible, else the CPU), cpu, cuda or cuda:N."""

    def __post_init__(self):
        if self.recipe not in RECIPES:
            raise ConfigError(f"--recipe: expected one of {', '.join(RECIPES)}, got {self.recipe!r}")
        devices.check_name(self.device)


recipe_config = task.sim2real_config


def heldout_checks(run: Path, device: str = "cpu") -> dict[str, dict[str, float]]:
    """The run's held-out espeak voices, two ways: its own test split ("own": the run's speech config,
    augmentations included) and the preset's test split ("preset": 3-6 digit strings, white noise
    15-35 dB, no other augmentation) at the run's sample rate. CER / WER / length accuracy of each.
    The model runs on `device` (a `--device` name)."""
    cfg, params, tok = task.load_model(run, device=devices.resolve(device))
    preset = dataclasses.replace(task.PRESETS["speech"][1].speech, sample_rate=cfg.speech.sample_rate)
    out = {}
    for name, c in (("own", cfg), ("preset", dataclasses.replace(cfg, speech=preset))):
        m = task.evaluate(params, c, task.test_examples(c, tok), tok)
        out[name] = {k: m[k] for k in ("cer", "wer", "length_acc", "num_utts")}
    return out


def main_flags(cfg: task.AsrTrainConfig) -> list[str]:
    """`cfg` as `--asr.*` flags of experiments/main.py: every field that differs from its default (the sim2real preset)."""
    base = config.to_dict(task.PRESETS["sim2real"][1])
    new = config.to_dict(cfg)
    flags: list[str] = []

    def walk(a: dict, b: dict, prefix: str) -> None:
        for k, v in b.items():
            if not prefix and k == "experiment":
                continue
            if isinstance(v, dict):
                walk(a.get(k) or {}, v, f"{prefix}{k}.")
            elif a.get(k) != v:
                flag = "--asr." + (prefix + k).replace("_", "-")
                vals = v if isinstance(v, (list, tuple)) else [v]
                flags.extend([flag, *(str(x) for x in vals)])

    walk(base, new, "")
    return flags


@cli_main
def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = tyro.cli(Sim2RealConfig, args=argv, description="\n\n".join(__doc__.split("\n\n")[:2]))
    cfg = recipe_config(args.recipe)
    if args.steps is not None:
        cfg = dataclasses.replace(cfg, steps=args.steps, eval_every=max(1, min(cfg.eval_every, args.steps)))
    if args.num_train is not None:
        cfg = dataclasses.replace(cfg, num_train=args.num_train)
    if args.print_flags:
        print(shlex.join(main_flags(cfg)))
        return {}
    if args.check_run is not None:
        path = args.check_run
        summary = json.loads((path / "summary.json").read_text()) if (path / "summary.json").is_file() else {}
        summary.setdefault("data_seconds", None)
        cfg, wall = task.load_model(path)[0], None
    else:
        cfg = dataclasses.replace(cfg, runs_dir=args.runs_dir, experiment=f"asr-sim2real-{args.recipe}",
                                  device=args.device)
        t0 = time.perf_counter()
        run, summary = task.train(cfg, progress=True)
        wall = round(time.perf_counter() - t0, 1)
        path = run.path
    real = asr_real.main([str(args.folder), "--run", str(path), "--strings", str(args.strings),
                          "--out", str(path / "asr_real.json"), "--device", args.device])
    held = heldout_checks(path, args.device)
    print(f"held-out espeak voices: own test split CER {100 * held['own']['cer']:.1f}%, "
          f"preset test split CER {100 * held['preset']['cer']:.1f}% (WER {100 * held['preset']['wer']:.1f}%)")
    row = {"recipe": args.recipe, "run": str(path), "steps": summary.get("steps"), "num_train": cfg.num_train,
           "step_ms_median": summary.get("step_ms_median"), "data_s": summary.get("data_seconds"),
           "train_s": summary.get("seconds"), "wall_s": wall,
           "espeak_test_cer": held["own"]["cer"], "espeak_test_wer": held["own"]["wer"],
           "espeak_preset_test_cer": held["preset"]["cer"], "espeak_preset_test_wer": held["preset"]["wer"],
           "real_wer": real["singles"]["all"]["wer"], "real_cer": real["singles"]["all"]["cer"],
           "real_wer_speakers": {s: v["wer"] for s, v in real["singles"]["speakers"].items()},
           "strings_wer": real["strings"]["all"]["wer"] if "strings" in real else None,
           "strings_cer": real["strings"]["all"]["cer"] if "strings" in real else None}
    print(json.dumps(row))
    if args.table is not None:
        args.table.parent.mkdir(parents=True, exist_ok=True)
        with args.table.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
    return row


if __name__ == "__main__":
    main()
