"""Audio I/O and resampling, from scratch on the standard library and torch.

    x, sr = read_wav("clip.wav")              # x: [N] float32 in [-1, 1], mono
    y = resample(x, sr, 16000)                # windowed-sinc, [ceil(N * 16000 / sr)]
    write_wav("out.wav", y, 16000)            # 16-bit PCM, written atomically

`read_wav` accepts uncompressed integer PCM (8-bit unsigned, 16/24/32-bit signed) and
averages channels to mono; anything else is a `DataError` that names the file.

Resampling (band-limited interpolation; Smith, "Digital Audio Resampling Home Page", 2002).
Output sample `j` sits at input time `t_j = j * sr_in / sr_out` and is

    y[j] = sum_k x[k] h(t_j - k),   h(d) = c sinc(c d) w(d / W),   |d| < W

with cutoff `c = rolloff * min(1, sr_out / sr_in)` (cycles per input sample, relative to
Nyquist; below 1 it also low-passes against aliasing when downsampling), a Hann window
`w(u) = (1 + cos(pi u)) / 2`, and half-width `W = zeros / c` input samples. With
`sr_out / sr_in = L / M` in lowest terms, `t_j - floor(t_j)` takes only `L` values, so the
kernel is tabulated once per phase (a polyphase filter bank `[L, 2W]`) and gathered.
"""

from __future__ import annotations

import math
import os
import tempfile
import wave
from pathlib import Path

import numpy as np
import torch
from einops import rearrange

from ..checks import check_shape
from ..errors import DataError, RangeError

__all__ = ["read_wav", "write_wav", "resample"]

_DTYPES = {2: np.int16, 4: np.int32}


def _decode(frames: bytes, width: int) -> np.ndarray:
    """Integer PCM bytes -> float64 in [-1, 1). 8-bit WAV is unsigned, wider is signed."""
    if width == 1:
        return (np.frombuffer(frames, dtype=np.uint8).astype(np.float64) - 128.0) / 128.0
    if width == 3:
        b = np.frombuffer(frames, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        v = np.where(v >= 1 << 23, v - (1 << 24), v)
        return v.astype(np.float64) / float(1 << 23)
    v = np.frombuffer(frames, dtype=np.dtype(_DTYPES[width]).newbyteorder("<"))
    return v.astype(np.float64) / float(1 << (8 * width - 1))


def read_wav(path: str | os.PathLike) -> tuple[torch.Tensor, int]:
    """Read a PCM WAV file as mono float32.

    Returns: `(waveform [N] float32 in [-1, 1], sample_rate)`; several channels are averaged.

    Raises: DataError naming the file if it is missing or unreadable, not a WAV file,
        compressed, of an unsupported sample width, or holds no samples.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such audio file")
    try:
        with wave.open(str(path), "rb") as f:
            channels, width, sr, n = f.getnchannels(), f.getsampwidth(), f.getframerate(), f.getnframes()
            comp = f.getcomptype()
            frames = f.readframes(n)
    except wave.Error as e:
        raise DataError(f"{path}: not a readable PCM WAV file ({e}); convert it to 16-bit PCM WAV") from None
    except (EOFError, OSError) as e:
        raise DataError(f"{path}: cannot read the file ({e})") from None
    if comp != "NONE":
        raise DataError(f"{path}: compressed WAV ({comp}) is not supported; convert it to 16-bit PCM")
    if width not in (1, 2, 3, 4):
        raise DataError(f"{path}: unsupported sample width {8 * width} bits; expected 8, 16, 24 or 32-bit PCM")
    if channels < 1 or sr <= 0:
        raise DataError(f"{path}: invalid header ({channels} channels, sample rate {sr})")
    usable = len(frames) // (width * channels) * width * channels
    if usable == 0:
        raise DataError(f"{path}: the file holds no audio samples (0 frames)")
    x = _decode(frames[:usable], width).reshape(-1, channels).mean(axis=1)
    return torch.from_numpy(x.astype(np.float32)), int(sr)


def write_wav(path: str | os.PathLike, waveform: torch.Tensor, sample_rate: int) -> None:
    """Write `waveform: [N]` float (values clipped to [-1, 1]) as mono 16-bit PCM.

    The file is written to a temporary name in the same folder and renamed when complete, so
    an existing file is never left half-written.
    """
    check_shape(waveform, "n", name="waveform")
    if sample_rate <= 0:
        raise RangeError(f"sample_rate: expected a positive integer, got {sample_rate}")
    pcm = np.round(waveform.detach().to(torch.float64).clamp(-1.0, 1.0).cpu().numpy() * 32767.0).astype("<i2")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh, wave.open(fh, "wb") as f:
            f.setnchannels(1)
            f.setsampwidth(2)
            f.setframerate(int(sample_rate))
            f.writeframes(pcm.tobytes())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _kernel_bank(up: int, down: int, zeros: int, rolloff: float) -> tuple[torch.Tensor, int]:
    """Polyphase bank `h[p, i] = h(p / up - (i - W + 1))`, `p < up`, `i < 2W` (float64)."""
    cutoff = rolloff * min(1.0, up / down)
    half = math.ceil(zeros / cutoff)
    frac = torch.arange(up, dtype=torch.float64)[:, None] / up
    offsets = torch.arange(-half + 1, half + 1, dtype=torch.float64)[None, :]
    d = frac - offsets                                           # [up, 2W]: t_j - k
    window = torch.where(d.abs() < half, 0.5 * (1.0 + torch.cos(math.pi * d / half)), torch.zeros_like(d))
    return cutoff * torch.sinc(cutoff * d) * window, half


def resample(waveform: torch.Tensor, orig_sr: int, new_sr: int, *, zeros: int = 16,
             rolloff: float = 0.945) -> torch.Tensor:
    """Resample `waveform: [N]` (or `[B, N]`) from `orig_sr` to `new_sr` Hz (see the module doc).

    Returns `[ceil(N * new_sr / orig_sr)]` (or `[B, ...]`) in the input's floating dtype;
    samples past either end count as zero.
    """
    check_shape(waveform, "... n", name="waveform")
    if waveform.dim() > 2:
        raise RangeError(f"waveform: expected [N] or [B, N], got {list(waveform.shape)}")
    if orig_sr <= 0 or new_sr <= 0:
        raise RangeError(f"resample: sample rates must be positive, got {orig_sr} -> {new_sr}")
    if orig_sr == new_sr:
        return waveform.clone()
    g = math.gcd(int(orig_sr), int(new_sr))
    up, down = int(new_sr) // g, int(orig_sr) // g
    bank, half = _kernel_bank(up, down, zeros, rolloff)                # [up, 2W]
    # Output j = q * up + p reads x[q * down + base_p + i - W + 1], i < 2W, with
    # base_p = (p * down) // up: one strided correlation with `up` output channels.
    p = torch.arange(up)
    base = (p * down) // up
    width = int(base[-1]) + 2 * half
    weight = torch.zeros(up, width, dtype=torch.float64)
    cols = base[:, None] + torch.arange(2 * half)[None, :]
    weight[p[:, None], cols] = bank[(p * down) % up]                    # phase of output p is (p * down) % up
    n = waveform.shape[-1]
    n_out = -(-n * up // down)
    n_q = -(-n_out // up)
    x = rearrange(waveform.to(torch.float64), "... n -> (...) 1 n")
    right = max(0, (n_q - 1) * down + width - (n + half - 1))
    x = torch.nn.functional.pad(x, (half - 1, right))
    y = torch.nn.functional.conv1d(x, weight[:, None, :], stride=down)[..., :n_q]   # [B, up, n_q]
    y = rearrange(y, "b p q -> b (q p)")[:, :n_out]
    y = y.reshape(*waveform.shape[:-1], n_out)
    return y.to(waveform.dtype if waveform.is_floating_point() else torch.float32)
