"""python experiments/asr_infer.py --run RUN --wav speech.wav   # transcribe, with per-token timestamps

    python experiments/asr_infer.py --run RUN --wav clip.wav --plot cif.png     # + spectrogram / CIF figure
    python experiments/asr_infer.py --run RUN --text "four two seven" --voice en+f3   # synthesize, then transcribe
    python experiments/asr_infer.py --run RUN --features feats.npy              # [T, F] float features
    python experiments/asr_infer.py --run RUN --features feats.safetensors --json
    python experiments/asr_infer.py --run RUN --folder recordings/ --out runs/out.jsonl       # many files
    python experiments/asr_infer.py --run RUN --manifest test.jsonl --out runs/out.jsonl     # + CER / WER

Input (exactly one): `--wav` an audio file (WAV: PCM 8/16/24/32-bit or float 32/64-bit,
WAVE_FORMAT_EXTENSIBLE, any channels, any sample rate: resampled to the front end's; FLAC /
OGG / MP3 with the optional package soundfile), `--text` a sentence synthesized offline with espeak-ng (the training
vocabulary's characters only), or `--features` a `[T, F]` matrix in `.npy` or `.safetensors`
(the tensor named `features`, or the only tensor) already in the model's feature space.
Prints the text and one line per token `start-end  token` in seconds (from CIF's firing
frames), or a JSON object with `--json`. Audio of any length: longer than `--segment-seconds`
(6 s) it is cut at pauses and transcribed segment by segment (funcml.asr.longform), timestamps
in the original timeline; silence gives empty text; a segment that fills the model's token
budget is reported on stderr (`truncated_segments` in the JSON), never cut silently. Mistakes (a missing file, a non-WAV file, empty
audio, a wrong feature dimension, an unknown character) print one line `error: ...`, exit 2.

Many files: `--folder` (every .wav/.flac/.ogg/.mp3 under it, recursively) or `--manifest` (a
JSONL manifest or Kaldi data dir, whose transcripts become references) are transcribed in
batches of `--batch-size` utterances sorted by length (little padding). Writes `--out`
(JSONL, one line per file in input order: `file`, `text`, `tokens`, `timestamps` [[start_s,
end_s], ...], `audio_seconds`, plus `ref` / `speaker` from a manifest, or `error` for a file
skipped under `--on-error skip`) and `<out>.summary.json` (files, audio seconds, compute
seconds, RTF, and CER / WER against the references, per speaker too), and prints the summary.
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

import numpy as np  # noqa: E402
import torch  # noqa: E402
import tyro  # noqa: E402

from funcml import checkpoint, devices  # noqa: E402
from funcml.asr import audio, longform, manifest, speech, task  # noqa: E402
from funcml.asr.metrics import cer, wer  # noqa: E402
from funcml.asr.viz import save_cif_plot  # noqa: E402
from funcml.errors import ConfigError, DataError, cli_main  # noqa: E402


@dataclasses.dataclass(frozen=True)
class InferConfig:
    """Transcribe one WAV file, a feature file or a synthesized sentence with a trained Paraformer."""

    run: Path
    """A run directory (its best checkpoint) or a checkpoint directory."""
    wav: Path | None = None
    """An audio file (WAV; FLAC / OGG / MP3 with soundfile installed)."""
    features: Path | None = None
    """A [T, F] feature matrix (.npy or .safetensors)."""
    text: str | None = None
    """A sentence to synthesize with espeak-ng and transcribe."""
    voice: str = "en+f3"
    """espeak-ng voice for --text (en+f3 is one of the held-out test voices)."""
    rate: int = 160
    """Speaking rate for --text, words per minute."""
    plot: Path | None = None
    """Write a PNG of the log-mel spectrogram with the CIF weights and firing positions under it."""
    json: bool = False
    """Print one JSON object instead of text."""
    folder: Path | None = None
    """Transcribe every audio file under this folder (recursively), in length-sorted batches."""
    manifest: Path | None = None
    """Transcribe the utterances of a JSONL manifest or Kaldi data dir; its texts are the references."""
    out: Path | None = None
    """With --folder / --manifest: the JSONL to write (default: transcripts.jsonl in the current folder)."""
    batch_size: int = 16
    """With --folder / --manifest: utterances per forward pass."""
    segment_seconds: float = 6.0
    """--wav / --text audio longer than this is transcribed in segments cut at pauses (funcml.asr.longform),
    with timestamps in the original timeline; silence gives empty text."""
    on_error: Literal["stop", "skip"] = "stop"
    """With --folder / --manifest: a file that cannot be read stops the run (exit 2), or is skipped and
    listed with its error in the output."""
    device: str = "auto"
    """Where the model runs: auto (CUDA when a GPU is visible, else the CPU), cpu, cuda or cuda:N."""

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {self.batch_size}")
        if not self.segment_seconds >= 0.5:
            raise ConfigError(f"--segment-seconds must be >= 0.5, got {self.segment_seconds}")
        if not 20 <= self.rate <= 500:
            raise ConfigError(f"--rate is espeak's words per minute, 20-500; got {self.rate}")


def load_features(path: Path) -> torch.Tensor:
    """A `[T, F]` float tensor from `.npy` or `.safetensors` (key `features`, or the only tensor)."""
    if not path.is_file():
        raise DataError(f"--features {path}: no such file")
    if path.suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except Exception as e:
            raise DataError(f"--features {path}: not a readable .npy file ({type(e).__name__}: {e})") from None
        if not np.issubdtype(arr.dtype, np.floating):
            raise DataError(f"--features {path}: expected float features, got dtype {arr.dtype}")
        return torch.from_numpy(np.ascontiguousarray(arr)).to(torch.float32)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise DataError(f"--features {path}: not a readable safetensors file ({e})") from None
        if "features" in tensors:
            return tensors["features"].to(torch.float32)
        if len(tensors) == 1:
            return next(iter(tensors.values())).to(torch.float32)
        raise DataError(f"--features {path}: holds {sorted(tensors)}; name the tensor 'features'")
    raise DataError(f"--features {path}: unsupported file type {path.suffix!r}; use .npy or .safetensors")


AUDIO_SUFFIXES = (".wav", ".wave", ".flac", ".ogg", ".mp3")


def _folder_utterances(folder: Path) -> list[manifest.Utterance]:
    if not folder.is_dir():
        raise DataError(f"--folder {folder}: no such folder")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise DataError(f"--folder {folder}: no audio files ({', '.join(AUDIO_SUFFIXES)}) under it")
    return [manifest.Utterance(p.resolve(), "", None, None, str(p), str(p)) for p in files]


def _scores(rows: list[dict]) -> dict:
    scored = [r for r in rows if r.get("ref") is not None and "error" not in r]
    if not scored:
        return {}
    out = {"cer": cer([r["ref"] for r in scored], [r["text"] for r in scored]),
           "wer": wer([r["ref"] for r in scored], [r["text"] for r in scored]), "scored": len(scored)}
    speakers = sorted({r["speaker"] for r in scored if r.get("speaker") is not None})
    if speakers:
        out["per_speaker"] = {s: _scores([{**r, "speaker": None} for r in scored if r.get("speaker") == s])
                              for s in speakers}
    return out


def transcribe_many(cfg: "InferConfig", train_cfg, params, tok) -> dict:
    """Transcribe --folder / --manifest in length-sorted batches; write the JSONL and the summary."""
    if cfg.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {cfg.batch_size}")
    if train_cfg.data == "toy":
        raise ConfigError(f"{cfg.run} was trained on toy features, not audio; --folder / --manifest need an audio "
                          "model")
    utts = _folder_utterances(cfg.folder) if cfg.folder is not None else manifest.read_manifest(cfg.manifest)
    t0 = time.perf_counter()
    feats: list = [None] * len(utts)
    rows: list[dict] = []
    for i, u in enumerate(utts):
        row = {"file": str(u.audio)}
        if cfg.manifest is not None:
            row.update(ref=u.text, **({"speaker": u.speaker} if u.speaker is not None else {}))
        try:
            (feats[i],) = manifest.load_features([u], train_cfg.frontend, cache_dir=None)
        except DataError as e:
            if cfg.on_error == "stop":
                raise
            row["error"] = str(e)
        rows.append(row)
    frontend_s = time.perf_counter() - t0
    order = sorted((i for i in range(len(utts)) if feats[i] is not None), key=lambda i: feats[i][0].shape[0])
    t1 = time.perf_counter()
    for start in range(0, len(order), cfg.batch_size):
        group = order[start:start + cfg.batch_size]
        hyps, _ = task.transcribe_features(params, train_cfg, tok, [feats[i][0] for i in group])
        for i, h in zip(group, hyps):
            rows[i].update(text=h.text, tokens=h.tokens, timestamps=[[s, e] for s, e in zip(h.starts, h.ends)],
                           audio_seconds=round(feats[i][1], 3))
    model_s = time.perf_counter() - t1
    out = cfg.out or Path("transcripts.jsonl")
    out.parent.mkdir(parents=True, exist_ok=True)
    audio_s = sum(feats[i][1] for i in order)
    summary = {"run": str(cfg.run), "input": str(cfg.folder or cfg.manifest), "files": len(utts),
               "transcribed": len(order), "skipped": len(utts) - len(order), "audio_seconds": round(audio_s, 3),
               "frontend_seconds": round(frontend_s, 3), "model_seconds": round(model_s, 3),
               "rtf": round((frontend_s + model_s) / audio_s, 5) if audio_s > 0 else None,
               "batch_size": cfg.batch_size, **_scores(rows), "out": str(out)}
    for path, text in ((out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)),
                       (out.with_name(out.name + ".summary.json"), json.dumps(summary, indent=2) + "\n")):
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    print(f"{len(order)} of {len(utts)} files transcribed ({audio_s:.1f} s of audio, RTF {summary['rtf']}) "
          f"-> {out}")
    if "cer" in summary:
        print(f"CER {100 * summary['cer']:.2f}%   WER {100 * summary['wer']:.2f}%   "
              f"({summary['scored']} with references)")
        for spk, r in summary.get("per_speaker", {}).items():
            print(f"  speaker {spk:<12} CER {100 * r['cer']:6.2f}%   WER {100 * r['wer']:6.2f}%   ({r['scored']} utts)")
    for r in rows:
        if "error" in r:
            print(f"skipped {r['file']}: {r['error']}", file=sys.stderr)
    return summary


@cli_main
def main(argv: list[str] | None = None) -> dict:
    cfg = tyro.cli(InferConfig, args=argv, description="\n\n".join(__doc__.split("\n\n")[:2]))
    given = [name for name in ("wav", "features", "text", "folder", "manifest") if getattr(cfg, name) is not None]
    if len(given) != 1:
        raise ConfigError(f"give exactly one input: --wav, --features, --text, --folder or --manifest "
                          f"(got {given or 'none'})")
    device = devices.resolve(cfg.device)
    ckpt = task.checkpoint_of(cfg.run)
    print(f"[asr] checkpoint {ckpt} (step {checkpoint.load_meta(ckpt)['step']})", file=sys.stderr)
    train_cfg, params, tok = task.load_model(ckpt, device=device)
    if cfg.folder is not None or cfg.manifest is not None:
        return transcribe_many(cfg, train_cfg, params, tok)
    t0 = time.perf_counter()
    if cfg.features is not None:
        feats = load_features(cfg.features)
        (hyp,), out = task.transcribe_features(params, train_cfg, tok, [feats])
        raw, seconds = hyp, feats.shape[0] * 0.01
    else:
        if train_cfg.data == "toy":
            raise ConfigError(f"{cfg.run} was trained on toy features, not audio; give it --features")
        if cfg.text is not None:
            tok.encode(cfg.text.lower())  # an unknown character fails here, naming it
            wav, sr = speech.synthesize(cfg.text.lower(), voice=cfg.voice, rate=cfg.rate)
        else:
            wav, sr = audio.read_audio(cfg.wav)
        seconds = wav.numel() / sr
        if cfg.plot is not None and seconds > cfg.segment_seconds:
            raise ConfigError(f"--plot draws one segment: the audio lasts {seconds:.1f} s, more than "
                              f"--segment-seconds {cfg.segment_seconds:g}")
        hyp, info = longform.transcribe_long(params, train_cfg, tok, wav, sr, max_seconds=cfg.segment_seconds)
        feats = out = None
        if cfg.plot is not None:        # the model's view of the whole clip: features, CIF weights and fires
            raw, feats, out = task.transcribe_waveform(params, train_cfg, tok, wav, sr)
    compute = time.perf_counter() - t0
    result = {"text": hyp.text, "tokens": hyp.tokens, "timestamps": [[s, e] for s, e in zip(hyp.starts, hyp.ends)],
              "audio_seconds": round(seconds, 3), "rtf": round(compute / seconds, 4) if seconds > 0 else None}
    if cfg.features is None:
        result["segments"] = len(info["segments"])
        if info["truncated"]:
            result["truncated_segments"] = [[info["segments"][i]["start"], info["segments"][i]["end"]]
                                            for i in info["truncated"]]
            print(f"warning: {len(info['truncated'])} segment(s) filled the model's token budget "
                  f"({train_cfg.model.max_tokens}) and may be cut: {result['truncated_segments']} s; lower "
                  "--segment-seconds", file=sys.stderr)
    if cfg.plot is not None and feats is not None:
        shift = train_cfg.frontend.hop_ms / 1000 * (train_cfg.frontend.lfr_n if train_cfg.frontend.use_lfr else 1)
        save_cif_plot(feats, out.alpha[0, : int(out.enc_lengths[0])], out.fire_positions[0], raw.tokens, cfg.plot,
                      feature_shift_s=shift, frame_shift_s=task.frame_shift(train_cfg), title=repr(raw.text))
        result["plot"] = str(cfg.plot)
    if cfg.json:
        print(json.dumps(result))
    else:
        print(hyp.text)
        for tkn, (s, e) in zip(hyp.tokens, result["timestamps"]):
            print(f"  {s:6.2f}-{e:6.2f}  {tkn if tkn != ' ' else '<space>'}")
        if "plot" in result:
            print(f"plot written to {cfg.plot}")
    return result


if __name__ == "__main__":
    main()
