"""A synthetic-trained ASR model on real speech: python benchmarks/asr_real.py FSDD_DIR --run RUN

    python benchmarks/asr_real.py ../shared/data/fsdd-dev --run runs/asr-speech/<time>-<id>
    python benchmarks/asr_real.py ../shared/data/fsdd-dev --run RUN --max-index 9 --strings 60   # a quick look

Scores a run's best checkpoint (by val CER; `funcml.asr.task.load_model`) on a folder of real
recordings named `{digit}_{speaker}_{index}.wav` (the Free Spoken Digit Dataset layout, e.g.
../shared/data/fsdd-dev: 8 kHz, single digits; the transcript is the digit's English word):

- singles: every recording (or those with index <= `--max-index`), one utterance each;
- strings: `--strings` three-digit strings, each three recordings of one speaker (drawn with a
  seeded `numpy` generator, `--seed`; the same speaker in turn) joined with `--gap-ms` of silence.

Audio is read with `funcml.asr.audio.read_wav`, joined at the recordings' rate, resampled to the
run's front-end rate with `funcml.asr.audio.resample`, featurized with the run's front end and
decoded greedily in length-sorted batches. Prints the machine line, a table of CER / WER /
sentence accuracy per speaker for singles and strings, the most frequent confusions and example
errors, and writes JSON (`--out`, default a fresh benchmarks/results/asr_real-<time>.json).
"""

from __future__ import annotations

import dataclasses
import re
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import fresh_results_path, markdown_table, start, write_json  # noqa: E402
from funcml import config  # noqa: E402
from funcml.asr import audio, metrics, task  # noqa: E402
from funcml.asr.frontend import features as frontend_features  # noqa: E402
from funcml.errors import ConfigError, DataError, cli_main  # noqa: E402

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_NAME = re.compile(r"^(\d)_([A-Za-z0-9-]+)_(\d+)\.wav$")


@dataclasses.dataclass(frozen=True)
class RealBenchConfig:
    """Score a trained ASR run on real FSDD-style recordings: singles and joined 3-digit strings."""

    folder: tyro.conf.Positional[Path]
    """A folder of {digit}_{speaker}_{index}.wav recordings (e.g. ../shared/data/fsdd-dev)."""
    run: Path
    """The run directory (its best checkpoint by val CER) or one checkpoint directory."""
    strings: int = 300
    """Three-digit strings to build (0: singles only); spread evenly over the speakers."""
    digits_per_string: int = 3
    """Recordings joined into each string."""
    gap_ms: float = 150.0
    """Silence between the joined recordings, in milliseconds."""
    seed: int = 0
    """Seed of the string draw (numpy's PCG64): the same seed gives the same strings."""
    max_index: int | None = None
    """Use only recordings with index <= this (a quick look; default: all)."""
    batch_size: int = 32
    """Utterances per decoding batch."""
    num_errors: int = 12
    """Example errors to print and store, per set."""
    threads: int = 1
    """torch threads (1 on a shared machine)."""
    device: str = "cpu"
    """Decoding device: auto (CUDA when a GPU is visible, else the CPU), cpu, cuda or cuda:N (the front end runs on
    the host)."""
    out: Path | None = None
    """Where to write the JSON (default: a fresh benchmarks/results/asr_real-<time>.json)."""

    def __post_init__(self):
        if self.strings < 0 or self.digits_per_string < 1 or self.batch_size < 1 or self.num_errors < 0:
            raise ConfigError("--strings and --num-errors must be >= 0, --digits-per-string and --batch-size >= 1")
        if self.gap_ms < 0:
            raise ConfigError(f"--gap-ms must be >= 0, got {self.gap_ms}")


@dataclasses.dataclass(frozen=True)
class Recording:
    """One real recording: `waveform [N]` float32 at `sample_rate`, its word, speaker and file."""

    path: Path
    text: str
    speaker: str
    waveform: torch.Tensor
    sample_rate: int


def read_folder(folder: Path, max_index: int | None = None) -> list[Recording]:
    """The recordings of `folder` named `{digit}_{speaker}_{index}.wav`, sorted by (speaker, digit, index)."""
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder of recordings")
    found = []
    for path in folder.iterdir():
        m = _NAME.match(path.name)
        if m and (max_index is None or int(m[3]) <= max_index):
            found.append(((m[2], int(m[1]), int(m[3])), path))
    if not found:
        raise DataError(f"{folder}: no files named like {{digit}}_{{speaker}}_{{index}}.wav"
                        + (f" with index <= {max_index}" if max_index is not None else ""))
    recs = []
    for (speaker, digit, _), path in sorted(found):
        wav, sr = audio.read_wav(path)
        recs.append(Recording(path, DIGIT_WORDS[digit], speaker, wav.to(torch.float32), sr))
    return recs


def join_strings(recs: Sequence[Recording], n: int, k: int, gap_ms: float, seed: int) -> list[Recording]:
    """`n` utterances of `k` recordings each, one speaker per utterance (the speakers in turn),
    recordings drawn uniformly with numpy's PCG64(`seed`), joined with `gap_ms` of zeros."""
    by_speaker: dict[str, list[Recording]] = {}
    for r in recs:
        by_speaker.setdefault(r.speaker, []).append(r)
    speakers = sorted(by_speaker)
    rng = np.random.Generator(np.random.PCG64(seed))
    out = []
    for i in range(n):
        speaker = speakers[i % len(speakers)]
        pool = by_speaker[speaker]
        picks = [pool[int(j)] for j in rng.integers(0, len(pool), size=k)]
        sr = picks[0].sample_rate
        if any(p.sample_rate != sr for p in picks):
            raise DataError(f"speaker {speaker}: recordings at different sample rates cannot be joined "
                            f"({sorted({p.sample_rate for p in picks})})")
        gap = torch.zeros(int(round(sr * gap_ms / 1000.0)), dtype=torch.float32)
        parts = [picks[0].waveform]
        for p in picks[1:]:
            parts += [gap, p.waveform]
        out.append(Recording(Path("+".join(p.path.name for p in picks)), " ".join(p.text for p in picks), speaker,
                             torch.cat(parts), sr))
    return out


def transcribe_all(recs: Sequence[Recording], cfg: task.AsrTrainConfig, params, tok,
                   batch_size: int) -> list[str]:
    """Greedy transcripts of `recs` (in their order), decoded in length-sorted batches."""
    feats = []
    for r in recs:
        wav = r.waveform if r.sample_rate == cfg.frontend.sample_rate else audio.resample(
            r.waveform, r.sample_rate, cfg.frontend.sample_rate)
        feats.append(frontend_features(wav, cfg.frontend))
    order = sorted(range(len(recs)), key=lambda i: feats[i].shape[0])
    hyps: list[str] = [""] * len(recs)
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        out, _ = task.transcribe_features(params, cfg, tok, [feats[i] for i in idx])
        for i, h in zip(idx, out):
            hyps[i] = h.text
    return hyps


def score(recs: Sequence[Recording], hyps: Sequence[str], num_errors: int) -> dict[str, Any]:
    """CER / WER / sentence accuracy overall and per speaker, word confusions, example errors."""
    def rates(items):
        refs = [recs[i].text for i in items]
        hs = [hyps[i] for i in items]
        return {"n": len(items), "cer": metrics.cer(refs, hs), "wer": metrics.wer(refs, hs),
                "sent_acc": sum(r == h for r, h in zip(refs, hs)) / len(items)}

    allidx = list(range(len(recs)))
    out = {"all": rates(allidx),
           "speakers": {s: rates([i for i in allidx if recs[i].speaker == s]) for s in sorted({r.speaker for r in recs})}}
    conf: Counter = Counter()
    for r, h in zip(recs, hyps):
        rw, hw = r.text.split(), h.split()
        if len(rw) == len(hw):
            conf.update((a, b) for a, b in zip(rw, hw) if a != b)
        elif r.text != h:
            conf[(r.text, h or "<empty>")] += 1
    out["confusions"] = [{"ref": a, "hyp": b, "count": c} for (a, b), c in conf.most_common(10)]
    out["errors"] = [{"file": str(r.path.name), "ref": r.text, "hyp": h}
                     for r, h in zip(recs, hyps) if r.text != h][:num_errors]
    return out


def _rows(name: str, s: dict) -> list[dict]:
    rows = [{"set": name, "speaker": "all", **s["all"]}]
    rows += [{"set": name, "speaker": sp, **v} for sp, v in s["speakers"].items()]
    return [{**r, "cer": f"{100 * r['cer']:.1f}", "wer": f"{100 * r['wer']:.1f}",
             "sent_acc": f"{100 * r['sent_acc']:.1f}"} for r in rows]


@cli_main
def main(args: list[str] | None = None) -> dict[str, Any]:
    cfg = tyro.cli(RealBenchConfig, args=args, description="\n\n".join(__doc__.split("\n\n")[:2]))
    device, info = start(cfg.device, cfg.threads)
    run_cfg, params, tok = task.load_model(cfg.run, device=device)
    if run_cfg.data == "toy":
        raise ConfigError(f"--run {cfg.run}: that run was trained on toy features, not audio")
    t0 = time.perf_counter()
    singles = read_folder(cfg.folder, cfg.max_index)
    strings = join_strings(singles, cfg.strings, cfg.digits_per_string, cfg.gap_ms, cfg.seed) if cfg.strings else []
    with torch.no_grad():
        hyp_singles = transcribe_all(singles, run_cfg, params, tok, cfg.batch_size)
        hyp_strings = transcribe_all(strings, run_cfg, params, tok, cfg.batch_size) if strings else []
    seconds = time.perf_counter() - t0
    result = {"singles": score(singles, hyp_singles, cfg.num_errors)}
    if strings:
        result["strings"] = score(strings, hyp_strings, cfg.num_errors)
    rows = _rows("singles", result["singles"]) + (_rows(f"{cfg.digits_per_string}-digit", result["strings"])
                                                   if strings else [])
    print(f"run {cfg.run} ({run_cfg.tokenizer} tokens, front end {run_cfg.frontend.sample_rate} Hz), "
          f"{len(singles)} recordings + {len(strings)} strings in {seconds:.1f} s")
    print(markdown_table(rows, {"set": "set", "speaker": "speaker", "n": "n", "cer": "CER %", "wer": "WER %",
                                "sent_acc": "utt acc %"}))
    for name, s in result.items():
        conf = ", ".join(f"{c['ref']}->{c['hyp']} x{c['count']}" for c in s["confusions"][:6])
        print(f"{name}: top confusions: {conf or 'none'}")
        for e in s["errors"][:4]:
            print(f"  {e['file']}: {e['ref']!r} -> {e['hyp']!r}")
    payload = {"machine": info, "config": config.to_dict(cfg), "run_config": config.to_dict(run_cfg),
               "seconds": round(seconds, 1), **result}
    out = write_json(payload, cfg.out or fresh_results_path("asr_real"))
    print(f"wrote {out}")
    return payload


if __name__ == "__main__":
    main()
