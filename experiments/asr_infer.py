"""python experiments/asr_infer.py --run RUN --wav speech.wav   # transcribe, with per-token timestamps

    python experiments/asr_infer.py --run RUN --wav clip.wav --plot cif.png     # + spectrogram / CIF figure
    python experiments/asr_infer.py --run RUN --text "four two seven" --voice en+f3   # synthesize, then transcribe
    python experiments/asr_infer.py --run RUN --features feats.npy              # [T, F] float features
    python experiments/asr_infer.py --run RUN --features feats.safetensors --json

Input (exactly one): `--wav` an audio file (WAV: PCM 8/16/24/32-bit or float 32/64-bit,
WAVE_FORMAT_EXTENSIBLE, any channels, any sample rate: resampled to the front end's; FLAC /
OGG / MP3 with the optional package soundfile), `--text` a sentence synthesized offline with espeak-ng (the training
vocabulary's characters only), or `--features` a `[T, F]` matrix in `.npy` or `.safetensors`
(the tensor named `features`, or the only tensor) already in the model's feature space.
Prints the text and one line per token `start-end  token` in seconds (from CIF's firing
frames), or a JSON object with `--json`. Mistakes (a missing file, a non-WAV file, empty
audio, a wrong feature dimension, an unknown character) print one line `error: ...`, exit 2.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import tyro  # noqa: E402

from funcml.asr import audio, speech, task  # noqa: E402
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


@cli_main
def main(argv: list[str] | None = None) -> dict:
    cfg = tyro.cli(InferConfig, args=argv, description=__doc__.splitlines()[0])
    given = [name for name in ("wav", "features", "text") if getattr(cfg, name) is not None]
    if len(given) != 1:
        raise ConfigError(f"give exactly one input: --wav, --features or --text (got {given or 'none'})")
    train_cfg, params, tok = task.load_model(cfg.run)
    t0 = time.perf_counter()
    if cfg.features is not None:
        feats = load_features(cfg.features)
        (hyp,), out = task.transcribe_features(params, train_cfg, tok, [feats])
        seconds = feats.shape[0] * 0.01
    else:
        if train_cfg.data != "speech":
            raise ConfigError(f"{cfg.run} was trained on toy features, not audio; give it --features")
        if cfg.text is not None:
            tok.encode(cfg.text.lower())  # an unknown character fails here, naming it
            wav, sr = speech.synthesize(cfg.text.lower(), voice=cfg.voice, rate=cfg.rate)
        else:
            wav, sr = audio.read_audio(cfg.wav)
        hyp, feats, out = task.transcribe_waveform(params, train_cfg, tok, wav, sr)
        seconds = wav.numel() / sr
    compute = time.perf_counter() - t0
    result = {"text": hyp.text, "tokens": hyp.tokens, "timestamps": [[s, e] for s, e in zip(hyp.starts, hyp.ends)],
              "audio_seconds": round(seconds, 3), "rtf": round(compute / seconds, 4) if seconds > 0 else None}
    if cfg.plot is not None:
        shift = train_cfg.frontend.hop_ms / 1000 * (train_cfg.frontend.lfr_n if train_cfg.frontend.use_lfr else 1)
        save_cif_plot(feats, out.alpha[0, : int(out.enc_lengths[0])], out.fire_positions[0], hyp.tokens, cfg.plot,
                      feature_shift_s=shift, frame_shift_s=task.frame_shift(train_cfg), title=repr(hyp.text))
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
