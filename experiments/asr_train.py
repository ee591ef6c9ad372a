"""python experiments/asr_train.py sim2real   # train a Paraformer (presets: sim2real, speech, toy, tiny, manifest)

    python experiments/asr_train.py sim2real --steps 2000          # the main job's ASR, longer
    python experiments/asr_train.py speech --steps 2000 --model.encoder.block conformer
    python experiments/asr_train.py speech --frontend.use-lfr --model.encoder.input-layer linear   # LFR input
    python experiments/asr_train.py speech --model.ctc --loss.ctc-weight 0.3 --loss.glance-ratio 0
    python experiments/asr_train.py toy --toy.noise 0.6
    python experiments/asr_train.py speech --resume runs/asr-speech/20260101-120000-abc12300
    python experiments/asr_train.py speech --tokenizer word          # one token per word
    python experiments/asr_train.py manifest --train-manifest train.jsonl --val-manifest val.jsonl   # your recordings
    python experiments/asr_train.py manifest --train-manifest ... --val-manifest ... --init-from RUN   # fine-tune
    python experiments/asr_train.py --config runs/asr-speech/<run>/config.json --resume runs/asr-speech/<run>

Trains with funcml's one loop (AdamW, warmup + cosine, clipping, checkpoints ranked by
val/cer), writes the run directory (config.json, tokenizer.json, metrics.csv, checkpoints/,
plots/*.png, eval.json with the val and test CER) and prints where it is with the final
metrics. On speech data the test split is spoken by voices held out from training; on
manifest data it is --test-manifest (if given). Manifests: JSONL lines {"audio": "a.wav",
"text": "three one four"} (paths relative to the manifest) or Kaldi data dirs (wav.scp + text);
see docs/ASR_REAL_DATA.md.
Mistakes print one line `error: ...` and exit 2; bad flags print the usage and exit 2.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from funcml import config  # noqa: E402
from funcml.asr.task import PRESETS, AsrTrainConfig, train  # noqa: E402
from funcml.errors import cli_main  # noqa: E402
from funcml.train import distributed  # noqa: E402


def _pct(x: float) -> str:
    return "  n/a " if x != x else f"{100 * x:5.1f}%"


def report(summary: dict) -> None:
    """Print the eval.json part of a training summary: CER / WER / accuracies per split, examples."""
    ev = summary.get("eval_json") or {}
    if not ev:
        return
    print(f"checkpoint      {Path(ev['checkpoint']).name} (step {ev['step']})")
    print(f"{'split':<28} {'CER':>7} {'WER':>7} {'tok acc':>8} {'len acc':>8} {'RTF':>7} {'utts':>5}")
    for split, name in (("val", "val (training voices)" if ev["test_split"] == "held-out voices" else "val"),
                        ("test", f"test ({ev['test_split']})")):
        m = ev[split]
        if m is None:
            continue
        print(f"{name:<28} {_pct(m['cer']):>7} {_pct(m['wer']):>7} {_pct(m['token_acc']):>8} "
              f"{_pct(m['length_acc']):>8} {m['rtf']:7.4f} {m['num_utts']:>5}")
    for pair in (ev["test"] or ev["val"])["examples"][:3]:
        print(f"  ref: {pair['ref']!r}\n  hyp: {pair['hyp']!r}")


@cli_main
def main(argv: list[str] | None = None) -> dict:
    cfg = config.cli(AsrTrainConfig, presets=PRESETS, args=argv, description="\n\n".join(__doc__.split("\n\n")[:2]))
    run, summary = train(cfg, progress=True)
    if not distributed.is_main():  # under torchrun, rank 0 reports
        return summary
    print(f"run directory   {run.path}")
    print(f"steps           {summary['steps']} ({summary['seconds']:.1f} s, "
          f"{summary['step_ms_median'] or 'n/a'} ms/step median; data {summary['data_seconds']} s)")
    print(f"train loss      {summary['train'].get('loss', float('nan')):.4f}")
    report(summary)
    print(f"plots           {run.plots}")
    return summary


if __name__ == "__main__":
    main()
