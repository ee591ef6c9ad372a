"""ASR inference speed: real-time factor of the Paraformer with the audio front end, batch 1 and batched, eager and compiled.

    python benchmarks/bench_asr_infer.py                          # the speech preset's model, 32 synthesized utterances
    python benchmarks/bench_asr_infer.py --run runs/asr-speech/<time>-<id>   # a trained model
    python benchmarks/bench_asr_infer.py --no-compile --batch-sizes 1 8 32

What is timed, per variant, over the same `--num-utts` utterances (synthesized with espeak-ng
from the held-out voices, cached under `--cache-dir`): waveform -> log-mel features (the front
end, `funcml.asr.frontend.features`, one utterance at a time) -> padded batch -> the pure model
(`funcml.nn.model.apply`, eval mode, no grad) -> greedy decoding. RTF = compute seconds / audio
seconds (below 1 is faster than real time); the front end's share is reported separately.

Compiled: the model's forward (`funcml.compiler.compile`, static shapes) runs on batches padded
to a bucket of lengths (`--buckets`, frames): the smallest bucket that holds the batch's longest
utterance, so it compiles once per (batch size, bucket) used, and a short utterance is not
padded to the longest one the service accepts. The `compile_s` column is that one-off cost
(minutes with inductor on a cold cache on 2 cores), `graphs` the number of shapes compiled.
`--buckets 512` pads everything to 512 frames (one graph per batch size), as earlier versions
did. Eager batches are padded only to their longest item (`pad_multiple`). Without `--run` the model is the `speech` preset's
freshly initialized one: the cost is the same as a trained model's up to the number of tokens
CIF fires (at most `max_tokens` slots either way).

Prints a table and writes `--out` (by default a fresh `benchmarks/results/bench_asr_infer-<time>.json`).
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import fresh_results_path, machine_info, markdown_table, start, write_json  # noqa: E402
from funcml import compiler, random, tree  # noqa: E402
from funcml.asr import speech, task  # noqa: E402
from funcml.asr.frontend import features as frontend_features  # noqa: E402
from funcml.asr.paraformer import greedy_decode  # noqa: E402
from funcml.errors import ConfigError, cli_main  # noqa: E402
from funcml.nn import model as models  # noqa: E402


@dataclasses.dataclass(frozen=True)
class AsrInferBenchConfig:
    """Real-time factor of Paraformer inference, front end included."""

    run: Path | None = None
    """A trained ASR run (its best checkpoint); default: the speech preset's initialized model."""
    num_utts: int = 32
    """Utterances (held-out voices) decoded per variant and repeat."""
    batch_sizes: tuple[int, ...] = (1, 8, 32)
    """Batch sizes timed (utterances per forward); each is one eager and one compiled variant."""
    compile: bool = True
    """Also time the compiled forward."""
    buckets: tuple[int, ...] = (128, 256, 384, 512)
    """Padded lengths (frames) of compiled batches: the smallest that holds the batch (a longer
    utterance is an error)."""
    repeat: int = 3
    """Timed passes over the utterances per variant (median reported), after one warm-up pass."""
    tiny: bool = False
    """A one-layer d=16 model (for tests)."""
    cache_dir: Path | None = Path(".cache/funcml-speech")
    """Where the synthesized utterances are cached (keyed by content); None: synthesize, write nothing."""
    threads: int = 1
    """torch intra-op threads (0: torch's default; 1 on the shared 2-core machine)."""
    device: str = "cpu"
    """Torch device: "cpu", "cuda" or "cuda:N" (an unavailable CUDA device is an error)."""
    out: Path | None = None
    """The JSON file to write (default: a fresh `benchmarks/results/bench_asr_infer-<time>.json`, so the committed
    `bench_asr_infer.json` is replaced only when named here)."""


def _model(cfg: AsrInferBenchConfig):
    if cfg.run is not None:
        return task.load_model(cfg.run)
    train_cfg = task.resolve(task.PRESETS["speech"][1])
    if cfg.tiny:
        enc = dataclasses.replace(train_cfg.model.encoder, d_model=16, num_heads=2, d_ff=32, num_layers=1)
        train_cfg = dataclasses.replace(train_cfg, model=dataclasses.replace(train_cfg.model, encoder=enc,
                                                                             decoder_layers=1))
    params, _ = models.init(random.key(0), train_cfg.model)
    return train_cfg, params, task.tokenizer_for(train_cfg)


def _pad(feats: list[torch.Tensor], frames: int) -> dict[str, torch.Tensor]:
    x = torch.zeros(len(feats), frames, feats[0].shape[1])
    for i, f in enumerate(feats):
        x[i, : f.shape[0]] = f
    return {"features": x, "feat_lengths": torch.tensor([f.shape[0] for f in feats], dtype=torch.int64)}


@cli_main
def main(args: list[str] | None = None) -> dict[str, Any]:
    cfg = tyro.cli(AsrInferBenchConfig, args=args, description="\n\n".join(__doc__.split("\n\n")[:2]))
    if cfg.num_utts < 1 or not cfg.batch_sizes or min(cfg.batch_sizes) < 1 or cfg.repeat < 1:
        raise ConfigError(f"--num-utts, --batch-sizes and --repeat must be positive, got {cfg.num_utts}, "
                          f"{cfg.batch_sizes}, {cfg.repeat}")
    device, info = start(cfg.device, cfg.threads)
    train_cfg, params, tok = _model(cfg)
    if train_cfg.data != "speech":
        raise ConfigError(f"--run {cfg.run} was trained on toy features; this benchmark needs a speech model")
    params = tree.to(params, device)
    utts = speech.make_corpus(random.key(123), cfg.num_utts, train_cfg.speech, split="test", cache_dir=cfg.cache_dir)
    audio_s = sum(u.waveform.numel() / u.sample_rate for u in utts)
    shift = task.frame_shift(train_cfg)

    def front_end() -> list[torch.Tensor]:
        return [frontend_features(u.waveform, train_cfg.frontend) for u in utts]

    t0 = time.perf_counter()
    feats = front_end()
    fe_s = time.perf_counter() - t0
    longest = max(f.shape[0] for f in feats)
    if not cfg.buckets or min(cfg.buckets) < 1:
        raise ConfigError(f"--buckets must be positive frame counts, got {cfg.buckets}")
    buckets = sorted(set(cfg.buckets))
    if cfg.compile and longest > buckets[-1]:
        raise ConfigError(f"the longest utterance has {longest} frames > the largest of --buckets {cfg.buckets}")
    shapes: set[tuple[int, int]] = set()

    def eager_forward(x):
        return models.apply(params, {}, x, train_cfg.model, train=False)[0]

    compiled_forward = compiler.compile(eager_forward) if cfg.compile else None

    def run_once(b: int, compiled: bool) -> float:
        """One pass over all utterances: front end + batches of b + decode; returns seconds."""
        start = time.perf_counter()
        fs = front_end()
        with torch.no_grad():
            for i in range(0, len(fs), b):
                group = fs[i:i + b]
                if compiled:
                    frames = next(n for n in buckets if n >= max(f.shape[0] for f in group))
                    shapes.add((b, frames))
                    x = tree.to(_pad(group + [group[-1]] * (b - len(group)), frames), device)
                    out = compiled_forward(x)
                else:
                    batch = task.collate([task.Example(f, [0], "", 0.0) for f in group], train_cfg)
                    x = tree.to({"features": batch["features"], "feat_lengths": batch["feat_lengths"]}, device)
                    out = eager_forward(x)
                greedy_decode(out, tok, frame_shift_s=shift)
        return time.perf_counter() - start

    rows = []
    for mode in ("eager", "compiled") if cfg.compile else ("eager",):
        for b in cfg.batch_sizes:
            t_first = time.perf_counter()
            run_once(b, mode == "compiled")                      # warm-up (and the compile)
            first_s = time.perf_counter() - t_first
            times = [run_once(b, mode == "compiled") for _ in range(cfg.repeat)]
            med = statistics.median(times)
            rows.append({"mode": mode, "batch": b, "seconds": med, "rtf": med / audio_s,
                         "utts_per_s": len(utts) / med, "frontend_share": fe_s / med,
                         "compile_s": first_s - med if mode == "compiled" else None,
                         "graphs": len({sh for sh in shapes if sh[0] == b}) if mode == "compiled" else None,
                         "times_s": times})
            print(f"{mode} batch {b}: RTF {med / audio_s:.4f}", flush=True)
    result = {"benchmark": "asr_infer", "machine": info, "config": dataclasses.asdict(cfg),
              "model": {"encoder": dataclasses.asdict(train_cfg.model.encoder), "params": tree.num_params(params),
                        "trained": cfg.run is not None},
              "utterances": len(utts), "audio_seconds": audio_s, "frontend_seconds": fe_s, "rows": rows,
              "load_average_end": machine_info(device)["load_average"]}
    path = write_json(result, cfg.out or fresh_results_path("bench_asr_infer"))
    print(markdown_table(rows, {"mode": "mode", "batch": "batch", "rtf": "RTF (front end included)",
                                "utts_per_s": "utterances/s", "frontend_share": "front-end share",
                                "compile_s": "compile s", "graphs": "graphs"}))
    print(f"{len(utts)} utterances, {audio_s:.1f} s of audio; front end alone {fe_s:.3f} s; written {path}")
    return result


if __name__ == "__main__":
    main()
