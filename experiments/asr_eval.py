"""python experiments/asr_eval.py --run runs/asr-speech/20260101-120000-abc12300

Evaluate a trained Paraformer: CER, WER, token accuracy (teacher-forced lengths), length
accuracy (fired token count), real-time factor, and reference / hypothesis pairs.

    python experiments/asr_eval.py --run RUN                      # the test split (held-out voices)
    python experiments/asr_eval.py --run RUN --split val          # the validation split (training voices)
    python experiments/asr_eval.py --run RUN/checkpoints/step_00001200 --num-test 400
    python experiments/asr_eval.py --run RUN --max-cer 0.10       # exit 1 if the CER is above 10%
    python experiments/asr_eval.py --run RUN --manifest data/test.jsonl   # any JSONL manifest or Kaldi data dir

`--run` is a run directory (its best checkpoint by val/cer) or one checkpoint directory. The
splits are those of the run's own config (`funcml.asr.task.val_examples` / `test_examples`);
`--num-test` draws a larger test set from the same held-out voices. `--manifest` scores the
utterances of a manifest instead (transcripts outside the model's vocabulary follow `--oov`),
with per-speaker rates when the manifest names speakers. Writes
`<out>/metrics_<split>.json` (default out: `<run>/eval/`) through a temporary file and a
rename, and prints the table. Mistakes print one line `error: ...` and exit 2.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Literal

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tyro  # noqa: E402

from funcml import checkpoint, devices  # noqa: E402
from funcml.asr import task  # noqa: E402
from funcml.errors import ConfigError, cli_main  # noqa: E402
from funcml.runs import output_dir  # noqa: E402


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Evaluate an ASR run on its test (held-out voices) or validation split."""

    run: Path
    """A run directory (its best checkpoint) or a checkpoint directory."""
    split: Literal["test", "val"] = "test"
    """Which split of the run's data."""
    num_test: int = 0
    """Utterances in the split (0 = the run's num_test / num_val)."""
    batch_size: int = 32
    """Utterances per forward pass."""
    out: Path | None = None
    """Output folder (default: `<run>/eval/`)."""
    max_cer: float | None = None
    """Exit with status 1 when the CER is above this (a target check)."""
    manifest: Path | None = None
    """Score this JSONL manifest or Kaldi data dir instead of a split of the run's own data."""
    oov: Literal["error", "drop", "strip", "unk"] = "error"
    """With --manifest: a transcript with characters / words outside the model's vocabulary is an
    error naming its line, or is dropped, stripped of them, or scored with <unk>."""
    device: str = "auto"
    """Where the model runs: auto (CUDA when a GPU is visible, else the CPU), cpu, cuda or cuda:N."""

    def __post_init__(self) -> None:
        if self.num_test < 0 or self.batch_size < 1:
            raise ConfigError(f"--num-test must be >= 0 and --batch-size >= 1, got {self.num_test} and "
                              f"{self.batch_size}")
        if self.max_cer is not None and not self.max_cer >= 0:
            raise ConfigError(f"--max-cer is a CER (0 = no error allowed), got {self.max_cer}")


def _out_dir(cfg: EvalConfig) -> Path:
    if cfg.out is not None:
        return cfg.out
    run = cfg.run if (cfg.run / "checkpoints").is_dir() else cfg.run.parent.parent
    return run / "eval" if (run / "checkpoints").is_dir() else cfg.run.with_name(cfg.run.name + "-eval")


@cli_main
def main(argv: list[str] | None = None) -> dict:
    cfg = tyro.cli(EvalConfig, args=argv, description="\n\n".join(__doc__.split("\n\n")[:2]))
    if cfg.batch_size < 1 or cfg.num_test < 0:
        raise ConfigError(f"--batch-size must be >= 1 and --num-test >= 0, got {cfg.batch_size}, {cfg.num_test}")
    device = devices.resolve(cfg.device)
    ckpt = task.checkpoint_of(cfg.run)
    print(f"[asr] checkpoint {ckpt} (step {checkpoint.load_meta(ckpt)['step']})", file=sys.stderr)
    train_cfg, params, tok = task.load_model(ckpt, device=device)
    if cfg.num_test:
        field = "num_test" if cfg.split == "test" else "num_val"
        train_cfg = dataclasses.replace(train_cfg, **{field: cfg.num_test})
    if cfg.manifest is not None:
        if train_cfg.data == "toy":
            raise ConfigError(f"{cfg.run} was trained on toy features, not audio; --manifest needs an audio model")
        train_cfg = dataclasses.replace(train_cfg, oov=cfg.oov)
        examples, speakers = task.manifest_examples(train_cfg, cfg.manifest, tok, with_speakers=True)
    else:
        examples = (task.test_examples if cfg.split == "test" else task.val_examples)(train_cfg, tok)
        speakers = None
    m = task.evaluate(params, train_cfg, examples, tok, batch_size=cfg.batch_size, num_examples=10)
    if speakers is not None and any(s is not None for s in speakers):
        m["per_speaker"] = {
            spk: {k: v for k, v in task.evaluate(params, train_cfg, [e for e, s in zip(examples, speakers) if s == spk],
                                                 tok, batch_size=cfg.batch_size, num_examples=0).items()
                  if k in ("cer", "wer", "length_acc", "num_utts")}
            for spk in sorted({s for s in speakers if s is not None})}
    split = "manifest" if cfg.manifest is not None else cfg.split
    m.update(split=split, run=str(cfg.run), data=train_cfg.data,
             **({"manifest": str(cfg.manifest)} if cfg.manifest is not None else {}))
    out = _out_dir(cfg)
    output_dir(out)
    path = out / (f"metrics_{cfg.split}.json" if cfg.manifest is None else f"metrics_{cfg.manifest.stem}.json")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(json.dumps(m, indent=2) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if cfg.manifest is not None:
        print(f"manifest {cfg.manifest} ({m['num_utts']} utterances)")
    else:
        voices = "held-out voices" if train_cfg.data == "speech" and cfg.split == "test" else "training voices"
        print(f"{cfg.split} split ({m['num_utts']} utterances, "
              f"{ {'speech': voices, 'toy': 'toy', 'manifest': 'manifest'}[train_cfg.data]})")
    print(f"CER {100 * m['cer']:.2f}%   WER {100 * m['wer']:.2f}%   token acc {100 * m['token_acc']:.2f}%   "
          f"length acc {100 * m['length_acc']:.2f}%   RTF {m['rtf']:.4f}")
    for spk, r in (m.get("per_speaker") or {}).items():
        print(f"  speaker {spk:<12} CER {100 * r['cer']:6.2f}%   WER {100 * r['wer']:6.2f}%   ({r['num_utts']} utts)")
    for pair in m["examples"][:5]:
        print(f"  ref: {pair['ref']!r}\n  hyp: {pair['hyp']!r}")
    print(f"written {path}")
    if cfg.max_cer is not None and not m["cer"] <= cfg.max_cer:
        print(f"CER {m['cer']:.4f} is above --max-cer {cfg.max_cer}", file=sys.stderr)
        sys.exit(1)
    return m


if __name__ == "__main__":
    main()
