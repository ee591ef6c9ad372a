"""Audio I/O and resampling, from scratch on the standard library and torch.

    x, sr = read_audio("clip.wav")            # x: [N] float32, mono (channels averaged)
    x, sr = read_wav("clip.wav")              # the same, WAV only
    x, sr = decode_wav(data, name="upload")   # WAV bytes already in memory
    y = resample(x, sr, 16000)                # windowed-sinc, [ceil(N * 16000 / sr)]
    write_wav("out.wav", y, 16000)            # 16-bit PCM, written atomically
    data = encode_wav(x, 16000, sample_format="float", bits=32)   # any format read_wav reads

WAV (RIFF/WAVE, parsed here chunk by chunk): integer PCM (format tag 1; 8-bit unsigned,
16/24/32-bit signed, scaled to [-1, 1)), IEEE float (tag 3; 32 or 64-bit, values as stored)
and WAVE_FORMAT_EXTENSIBLE (tag 0xFFFE) whose sub-format is either of those; any number of
channels (averaged to mono) and any sample rate. Compressed WAV (A-law, mu-law, ADPCM, ...),
an empty file, a file without a `fmt ` or `data` chunk, or one with no samples is a
`DataError` that names the file. A file shorter than its `data` chunk says (a truncated copy
or upload) is decoded as far as it goes with a `TruncatedAudioWarning` naming how much is
missing, or is a `DataError` with `truncated="error"`; a `data` size of 0xFFFFFFFF (written
by streaming tools that could not seek back) means "to the end of the file".

Other formats (FLAC, OGG/Vorbis, MP3, ...) are read by `read_audio` through the optional
package `soundfile` (its wheels carry libsndfile): `pip install soundfile`. Without it, a
non-WAV file is a DataError that says so.

Resampling (band-limited interpolation; Smith, "Digital Audio Resampling Home Page", 2002).
Output sample `j` sits at input time `t_j = j * sr_in / sr_out` and is

    y[j] = sum_k x[k] h(t_j - k),   h(d) = c sinc(c d) w(d / W),   |d| < W

with cutoff `c = rolloff * min(1, sr_out / sr_in)` (cycles per input sample, relative to
Nyquist; below 1 it also low-passes against aliasing when downsampling), a Hann window
`w(u) = (1 + cos(pi u)) / 2`, and half-width `W = zeros / c` input samples. With
`sr_out / sr_in = L / M` in lowest terms, `t_j - floor(t_j)` takes only `L` values, so the
kernel is tabulated once per phase (a polyphase filter bank `[L, 2W]`) and gathered.
When that bank would be large (`L` and `M` coprime and big, e.g. 44,101 Hz -> 16 kHz has
`L = 16000`, `M = 44101`: a 5.6 GB bank), the same `h(t_j - k)` is evaluated directly for
blocks of outputs instead: memory `O(block * 2W)`, whatever the two rates; the outputs are
the same to float64 rounding.
"""

from __future__ import annotations

import math
import os
import struct
import tempfile
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from einops import rearrange

from ..checks import check_shape
from ..errors import DataError, RangeError

__all__ = ["read_audio", "read_wav", "decode_wav", "encode_wav", "write_wav", "resample", "AudioError",
           "TruncatedAudioWarning", "SOUNDFILE_HINT"]

WAVE_FORMAT_PCM, WAVE_FORMAT_IEEE_FLOAT, WAVE_FORMAT_EXTENSIBLE = 0x0001, 0x0003, 0xFFFE
# The sub-format GUIDs of WAVE_FORMAT_EXTENSIBLE end with this (KSDATAFORMAT_SUBTYPE_*).
_GUID_TAIL = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
_KNOWN_TAGS = {0x0002: "Microsoft ADPCM", 0x0006: "A-law", 0x0007: "mu-law", 0x0011: "IMA ADPCM", 0x0055: "MP3",
               0x0031: "GSM 6.10"}
_UNKNOWN_SIZE = 0xFFFFFFFF
SOUNDFILE_HINT = "pip install soundfile"


class AudioError(DataError):
    """A file or upload that is not readable audio; `reason` says which kind of problem, for
    callers that map it to their own codes (the HTTP service): "empty" (0 bytes), "not_wav",
    "damaged" (a broken header or chunk), "compressed", "sample_width", "no_samples",
    "truncated", "non_finite"."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


class TruncatedAudioWarning(UserWarning):
    """A WAV file holds fewer sample bytes than its header announces (decoded as far as it goes)."""


def _decode_pcm(frames: bytes, width: int) -> np.ndarray:
    """Integer PCM bytes -> float64 in [-1, 1). 8-bit WAV is unsigned, wider is signed."""
    if width == 1:
        return (np.frombuffer(frames, dtype=np.uint8).astype(np.float64) - 128.0) / 128.0
    if width == 3:
        b = np.frombuffer(frames, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        v = np.where(v >= 1 << 23, v - (1 << 24), v)
        return v.astype(np.float64) / float(1 << 23)
    v = np.frombuffer(frames, dtype=np.dtype({2: np.int16, 4: np.int32}[width]).newbyteorder("<"))
    return v.astype(np.float64) / float(1 << (8 * width - 1))


def _decode_float(frames: bytes, width: int) -> np.ndarray:
    return np.frombuffer(frames, dtype=np.dtype({4: np.float32, 8: np.float64}[width]).newbyteorder("<")
                         ).astype(np.float64)


def _format_name(tag: int) -> str:
    return f"format tag 0x{tag:04X}" + (f" ({_KNOWN_TAGS[tag]})" if tag in _KNOWN_TAGS else "")


def _sniff(data: bytes) -> str | None:
    """The container of a non-WAV file from its first bytes, for error messages."""
    for magic, name in ((b"fLaC", "FLAC"), (b"OggS", "OGG"), (b"ID3", "MP3"), (b"\xff\xfb", "MP3"),
                        (b"\xff\xf3", "MP3"), (b"FORM", "AIFF"), (b"RIFX", "big-endian WAV (RIFX)")):
        if data.startswith(magic):
            return name
    return None


def decode_wav(data: bytes, *, name: str = "<bytes>",
               truncated: Literal["warn", "error"] = "warn") -> tuple[torch.Tensor, int]:
    """Decode the bytes of a WAV file (see the module docstring for the formats).

    Returns: `(waveform [N] float32, sample_rate)`; channels are averaged. Integer PCM lies in
    [-1, 1); float WAV keeps its stored values (nominally in [-1, 1]).

    Raises: DataError naming `name` for anything that is not a readable, uncompressed WAV
        with samples, or non-finite float samples; for a truncated file, see `truncated`.
    """
    if len(data) == 0:
        raise AudioError(f"{name}: the file is empty (0 bytes); expected a WAV file", reason="empty")
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        kind = _sniff(data)
        what = f"{kind} audio, not a WAV file" if kind else "not a WAV file (no RIFF/WAVE header)"
        hint = (f"; read it with read_audio after `{SOUNDFILE_HINT}`, or convert it to WAV" if kind else
                "; convert it to WAV (e.g. sox in.xxx out.wav)")
        raise AudioError(f"{name}: {what}{hint}", reason="not_wav")
    fmt, pcm, pos = None, None, 12
    while pos + 8 <= len(data):
        cid, size = data[pos:pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        body = pos + 8
        if cid == b"fmt ":
            if size < 16 or body + size > len(data):
                raise AudioError(f"{name}: the WAV 'fmt ' chunk is {size} bytes (at least 16 needed) or cut short",
                                 reason="damaged")
            fmt = data[body:body + size]
        elif cid == b"data":
            declared = len(data) - body if size == _UNKNOWN_SIZE else size
            pcm = data[body:body + declared]
            if len(pcm) < declared:
                msg = (f"{name}: the WAV is truncated: its header announces {declared} bytes of samples but the "
                       f"file holds {len(pcm)} ({len(pcm) / max(declared, 1):.1%})")
                if truncated == "error":
                    raise AudioError(msg + "; re-copy or re-export the file", reason="truncated")
                warnings.warn(msg + "; decoding the samples that are there", TruncatedAudioWarning, stacklevel=2)
            break
        pos = body + size + (size & 1)  # chunks are padded to an even size
    if fmt is None:
        raise AudioError(f"{name}: the WAV has no 'fmt ' chunk before its samples; the file is damaged",
                         reason="damaged")
    if pcm is None:
        raise AudioError(f"{name}: the WAV has no 'data' chunk (no audio samples); the file is damaged or empty",
                         reason="no_samples")
    tag, channels, sr, _, block, bits = struct.unpack_from("<HHIIHH", fmt)
    if tag == WAVE_FORMAT_EXTENSIBLE:
        if len(fmt) < 40 or fmt[26:40] != _GUID_TAIL:
            raise AudioError(f"{name}: WAVE_FORMAT_EXTENSIBLE with an unknown sub-format; convert it to PCM WAV",
                             reason="damaged")
        tag = struct.unpack_from("<H", fmt, 24)[0]
    if tag not in (WAVE_FORMAT_PCM, WAVE_FORMAT_IEEE_FLOAT):
        raise AudioError(f"{name}: compressed WAV ({_format_name(tag)}) is not supported; convert it to PCM "
                         f"(sox in.wav -e signed -b 16 out.wav), or read it with read_audio after `{SOUNDFILE_HINT}`",
                         reason="compressed")
    if channels < 1 or sr <= 0 or block < 1 or block % channels:
        raise AudioError(f"{name}: invalid WAV header ({channels} channels, sample rate {sr} Hz, "
                         f"block align {block})", reason="damaged")
    width = block // channels
    ok = (1, 2, 3, 4) if tag == WAVE_FORMAT_PCM else (4, 8)
    if width not in ok:
        kind = "integer PCM: 8, 16, 24 or 32-bit" if tag == WAVE_FORMAT_PCM else "IEEE float: 32 or 64-bit"
        raise AudioError(f"{name}: unsupported sample width {8 * width} bits ({bits} declared); expected {kind}",
                         reason="sample_width")
    usable = len(pcm) // block * block
    if usable == 0:
        raise AudioError(f"{name}: the file holds no audio samples (0 frames)", reason="no_samples")
    decode = _decode_pcm if tag == WAVE_FORMAT_PCM else _decode_float
    x = decode(pcm[:usable], width).reshape(-1, channels).mean(axis=1)
    if not np.isfinite(x).all():
        raise AudioError(f"{name}: the float WAV holds {int((~np.isfinite(x)).sum())} NaN or infinite samples",
                         reason="non_finite")
    return torch.from_numpy(x.astype(np.float32)), int(sr)


def read_wav(path: str | os.PathLike, *, truncated: Literal["warn", "error"] = "warn") -> tuple[torch.Tensor, int]:
    """Read a WAV file as mono float32 (see `decode_wav`).

    Returns: `(waveform [N] float32, sample_rate)`; several channels are averaged.

    Raises: DataError naming the file if it is missing or unreadable, or as in `decode_wav`.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such audio file")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read the file ({e.strerror or e})") from None
    return decode_wav(data, name=str(path), truncated=truncated)


def read_audio(path: str | os.PathLike, *,
               truncated: Literal["warn", "error"] = "warn") -> tuple[torch.Tensor, int]:
    """Read any audio file as mono float32: WAV here (`read_wav`), other formats (FLAC, OGG,
    MP3, ...) through the optional package `soundfile`.

    Returns: `(waveform [N] float32, sample_rate)`; several channels are averaged.

    Raises: DataError naming the file if it is missing, unreadable or empty, or (a non-WAV
        file) when `soundfile` is not installed, saying `pip install soundfile`.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such audio file")
    try:
        with open(path, "rb") as fh:
            head = fh.read(12)
    except OSError as e:
        raise DataError(f"{path}: cannot read the file ({e.strerror or e})") from None
    if len(head) == 0:
        raise DataError(f"{path}: the file is empty (0 bytes); expected an audio file")
    kind = _sniff(head)
    if (head[:4] == b"RIFF" and head[8:12] == b"WAVE") or (kind is None and path.suffix.lower() in (".wav", ".wave")):
        return read_wav(path, truncated=truncated)  # a .wav that is not one gets read_wav's "not a WAV file"
    return _read_soundfile(path, kind or path.suffix.lstrip(".").upper() or "non-WAV")


def _read_soundfile(path: Path, kind: str) -> tuple[torch.Tensor, int]:
    """A non-WAV file through soundfile (libsndfile), imported only when needed."""
    try:
        import soundfile
    except ImportError:
        raise DataError(f"{path}: reading {kind} audio needs the optional package soundfile ({SOUNDFILE_HINT}); "
                        "without it, convert the file to WAV (e.g. sox in.flac out.wav)") from None
    try:
        x, sr = soundfile.read(str(path), dtype="float64", always_2d=True)
    except Exception as e:  # noqa: BLE001 - libsndfile's errors are the user's file
        raise DataError(f"{path}: not a readable audio file ({type(e).__name__}: {e})") from None
    if x.shape[0] == 0:
        raise DataError(f"{path}: the file holds no audio samples (0 frames)")
    return torch.from_numpy(x.mean(axis=1).astype(np.float32)), int(sr)


def encode_wav(waveform: torch.Tensor, sample_rate: int, *, sample_format: Literal["pcm", "float"] = "pcm",
               bits: int = 16, extensible: bool = False) -> bytes:
    """The bytes of a WAV file holding `waveform: [N]` (mono) or `[C, N]` (C channels).

    `sample_format="pcm"` with `bits` 8 (unsigned), 16, 24 or 32 (values clipped to [-1, 1]
    and rounded), or `"float"` with `bits` 32 or 64 (values as given); `extensible` writes a
    WAVE_FORMAT_EXTENSIBLE header (40-byte `fmt `) instead of the plain one.
    """
    if waveform.dim() == 1:
        waveform = waveform[None]
    check_shape(waveform, "c n", name="waveform")
    if sample_rate <= 0:
        raise RangeError(f"sample_rate: expected a positive integer, got {sample_rate}")
    ok = {"pcm": (8, 16, 24, 32), "float": (32, 64)}
    if sample_format not in ok or bits not in ok[sample_format]:
        raise RangeError(f"encode_wav: {sample_format!r} with {bits} bits is not a WAV format this writes "
                         f"(pcm: 8/16/24/32, float: 32/64)")
    x = rearrange(waveform.detach().to(torch.float64).cpu(), "c n -> n c").numpy()
    if sample_format == "float":
        frames = x.astype("<f4" if bits == 32 else "<f8").tobytes()
        tag = WAVE_FORMAT_IEEE_FLOAT
    else:
        scale = float(1 << (bits - 1))
        v = np.clip(np.round(np.clip(x, -1.0, 1.0) * scale), -scale, scale - 1).astype(np.int64)
        if bits == 8:
            frames = (v + 128).astype(np.uint8).tobytes()
        elif bits == 24:
            frames = np.ascontiguousarray(v.astype("<i4")).view(np.uint8).reshape(*v.shape, 4)[..., :3].tobytes()
        else:
            frames = v.astype("<i2" if bits == 16 else "<i4").tobytes()
        tag = WAVE_FORMAT_PCM
    channels, block = waveform.shape[0], waveform.shape[0] * bits // 8
    fmt = struct.pack("<HHIIHH", WAVE_FORMAT_EXTENSIBLE if extensible else tag, channels, int(sample_rate),
                      int(sample_rate) * block, block, bits)
    if extensible:
        fmt += struct.pack("<HHI", 22, bits, 0) + struct.pack("<H", tag) + _GUID_TAIL
    elif tag == WAVE_FORMAT_IEEE_FLOAT:
        fmt += struct.pack("<H", 0)  # cbSize, required for non-PCM formats
    pad = b"\x00" if len(frames) % 2 else b""
    body = (b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(frames))
            + frames + pad)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def write_wav(path: str | os.PathLike, waveform: torch.Tensor, sample_rate: int, *,
              sample_format: Literal["pcm", "float"] = "pcm", bits: int = 16) -> None:
    """Write `waveform: [N]` float as a mono WAV (default 16-bit PCM, values clipped to [-1, 1];
    any format of `encode_wav`).

    The file is written to a temporary name in the same folder and renamed when complete, so
    an existing file is never left half-written.
    """
    check_shape(waveform, "n", name="waveform")
    data = encode_wav(waveform, sample_rate, sample_format=sample_format, bits=bits)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
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


_MAX_BANK = 1 << 20           # polyphase weights (float64) above this: the direct path (8 MB)
_DIRECT_ELEMENTS = 1 << 19    # kernel values per block of the direct path (4 MB per float64 temporary)


def _resample_direct(waveform: torch.Tensor, up: int, down: int, zeros: int, rolloff: float) -> torch.Tensor:
    """`resample` by evaluating `h(t_j - k)` for blocks of outputs: `t_j = j down / up` split into
    `floor` and fraction with integer arithmetic, the 2W taps around it gathered; bounded memory."""
    cutoff = rolloff * min(1.0, up / down)
    half = math.ceil(zeros / cutoff)
    n = waveform.shape[-1]
    n_out = -(-n * up // down)
    x = rearrange(waveform.to(torch.float64), "... n -> (...) n")
    x = torch.nn.functional.pad(x, (half - 1, half + 1))                    # x[k] at column k + half - 1
    offsets = torch.arange(-half + 1, half + 1, dtype=torch.int64)         # [2W]: k - floor(t_j)
    out = torch.empty(x.shape[0], n_out, dtype=torch.float64)
    block = max(64, _DIRECT_ELEMENTS // (2 * half * x.shape[0]))
    for start in range(0, n_out, block):
        j = torch.arange(start, min(start + block, n_out), dtype=torch.int64)
        base = (j * down) // up                                            # floor(t_j)
        frac = ((j * down) % up).to(torch.float64) / up                    # t_j - floor(t_j)
        d = frac[:, None] - offsets[None, :].to(torch.float64)             # [J, 2W]: t_j - k
        window = torch.where(d.abs() < half, 0.5 * (1.0 + torch.cos(math.pi * d / half)), torch.zeros_like(d))
        h = cutoff * torch.sinc(cutoff * d) * window
        cols = (base[:, None] + offsets[None, :] + half - 1).clamp(0, x.shape[1] - 1)
        out[:, start:start + len(j)] = (x[:, cols] * h[None]).sum(-1)
    y = out.reshape(*waveform.shape[:-1], n_out)
    return y.to(waveform.dtype if waveform.is_floating_point() else torch.float32)


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
    cutoff = rolloff * min(1.0, up / down)
    if up * (down + 2 * math.ceil(zeros / cutoff)) > _MAX_BANK:             # the bank below is [up, ~down + 2W]
        return _resample_direct(waveform, up, down, zeros, rolloff)
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
