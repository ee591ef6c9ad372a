"""Long-form ASR: python benchmarks/asr_longform.py --run RUN --minutes 10   # one long recording vs its parts

    python benchmarks/asr_longform.py --run runs/asr-sim2real/<time>-<id> --minutes 10
    python benchmarks/asr_longform.py --run RUN --minutes 1 --pause-s 0.3 --out /tmp/longform.json

Synthesizes held-out-voice utterances of the run's own corpus (its test voices and settings)
until they fill `--minutes`, scores each one alone (per-utterance CER / WER), then joins them
with `--pause-s` of faint noise (-80 dBFS) into one recording and transcribes it with
`funcml.asr.longform.transcribe_long` (cut at pauses, segments of at most `--segment-seconds`).
Prints both error rates, the ratio of the CERs, the number of segments, segments that filled the
token budget, compute time and the process's peak resident memory; writes JSON (`--out`, default a
fresh benchmarks/results/asr_longform-<time>.json).
"""

from __future__ import annotations

import dataclasses
import resource
import sys
import time
from pathlib import Path

import torch
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import fresh_results_path, start, write_json  # noqa: E402
from funcml import random  # noqa: E402
from funcml.asr import audio, longform, metrics, speech, task  # noqa: E402
from funcml.errors import ConfigError, cli_main  # noqa: E402


@dataclasses.dataclass(frozen=True)
class LongformConfig:
    """One long synthesized recording transcribed in segments, against its utterances one by one."""

    run: Path
    """A trained speech ASR run (its best checkpoint)."""
    minutes: float = 10.0
    """Length of the long recording (utterances are added until it is reached)."""
    pause_s: float = 0.4
    """Faint-noise pause between the utterances, seconds."""
    segment_seconds: float = 6.0
    """The longest segment transcribe_long passes to the model."""
    seed: int = 123
    """Key of the synthesized utterances (the test voices of the run's corpus)."""
    threads: int = 1
    """torch threads."""
    device: str = "cpu"
    """Where the model runs: auto (CUDA when a GPU is visible, else the CPU), cpu, cuda or cuda:N."""
    out: Path | None = None
    """The JSON to write (default: a fresh benchmarks/results/asr_longform-<time>.json)."""

    def __post_init__(self) -> None:
        if not (self.minutes > 0 and self.pause_s >= 0 and self.segment_seconds >= 0.5):
            raise ConfigError(f"--minutes must be > 0, --pause-s >= 0 and --segment-seconds >= 0.5; got "
                              f"{self.minutes}, {self.pause_s}, {self.segment_seconds}")


@cli_main
def main(argv: list[str] | None = None) -> dict:
    cfg = tyro.cli(LongformConfig, args=argv, description="\n\n".join(__doc__.split("\n\n")[:2]))
    device, machine = start(cfg.device, cfg.threads)
    train_cfg, params, tok = task.load_model(cfg.run, device=device)
    if train_cfg.data != "speech":
        raise ConfigError(f"--run {cfg.run}: needs a model trained on synthesized speech (data=speech)")
    rate = train_cfg.frontend.sample_rate
    per_utt = 0.8 if train_cfg.speech.digits_len[1] <= 3 else 2.0          # a low guess of seconds per utterance
    n = max(1, int(cfg.minutes * 60 / (per_utt + cfg.pause_s)))
    g = random.key(cfg.seed + 1)
    pieces, refs, hyps, total, synth_s, alone_s = [], [], [], 0, 0.0, 0.0
    target = cfg.minutes * 60 * rate
    for batch in range(1000):                          # corpora of n utterances until the recording is long enough
        t0 = time.perf_counter()
        utts = speech.make_corpus(random.fold_in(random.key(cfg.seed), batch), n, train_cfg.speech, split="test",
                                  cache_dir=train_cfg.cache_dir)
        synth_s += time.perf_counter() - t0
        t1 = time.perf_counter()
        for u in utts:
            w = u.waveform if u.sample_rate == rate else audio.resample(u.waveform, u.sample_rate, rate)
            h, _, _ = task.transcribe_waveform(params, train_cfg, tok, w, rate)
            refs.append(u.text)
            hyps.append(h.text)
            gap = 1e-4 * random.normal(random.fold_in(g, len(refs)), (int(cfg.pause_s * rate),))
            pieces += [w, gap]
            total += len(w) + len(gap)
            if total >= target:
                break
        alone_s += time.perf_counter() - t1
        if total >= target:
            break
    long = torch.cat(pieces)
    t2 = time.perf_counter()
    hyp, info = longform.transcribe_long(params, train_cfg, tok, long, rate, max_seconds=cfg.segment_seconds)
    long_s = time.perf_counter() - t2
    ref_long = " ".join(refs)
    result = {
        "audio_minutes": round(len(long) / rate / 60, 2), "utterances": len(refs),
        "per_utterance": {"cer": metrics.cer(refs, hyps), "wer": metrics.wer(refs, hyps), "seconds": round(alone_s, 1)},
        "long_form": {"cer": metrics.cer([ref_long], [hyp.text]), "wer": metrics.wer([ref_long], [hyp.text]),
                      "segments": len(info["segments"]), "truncated": len(info["truncated"]),
                      "seconds": round(long_s, 1), "rtf": round(long_s / (len(long) / rate), 4)},
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "synthesis_seconds": round(synth_s, 1),
    }
    result["cer_ratio"] = round(result["long_form"]["cer"] / max(result["per_utterance"]["cer"], 1e-9), 3)
    print(f"{result['audio_minutes']} min of audio, {len(refs)} utterances of held-out voices")
    print(f"per utterance: CER {100 * result['per_utterance']['cer']:.2f}%  WER {100 * result['per_utterance']['wer']:.2f}%")
    print(f"long form:     CER {100 * result['long_form']['cer']:.2f}%  WER {100 * result['long_form']['wer']:.2f}%  "
          f"({result['long_form']['segments']} segments, {result['long_form']['truncated']} filled the token budget, "
          f"{long_s:.1f} s, RTF {result['long_form']['rtf']})")
    print(f"CER ratio {result['cer_ratio']}  peak RSS {result['peak_rss_mb']} MB")
    out = cfg.out or fresh_results_path("asr_longform")
    write_json({"machine": machine, "config": dataclasses.asdict(cfg), **result}, out)
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
