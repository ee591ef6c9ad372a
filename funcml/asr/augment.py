"""Waveform augmentations for synthetic speech: pure functions of a key, batched, branch-free.

    y = speed(x, 1.1, sr)                                             # Kaldi speed perturbation
    y = band_limit(x, sr, low_hz=300.0, high_hz=3400.0)               # telephone band
    y = reverb(x, sr, rt60=0.4, wet=0.5, key=k)                       # a synthetic room
    y = add_noise(x, coloured_noise(sr, x.shape, beta=1.0, key=k), snr_db=20.0)   # pink noise at 20 dB
    y = add_noise(x, babble_noise(sr, x.shape, talkers=4, key=k), snr_db=15.0)
    y = random_eq(x, sr, max_db=6.0, key=k)                           # microphone colouring

Every function takes `x: [N]` or `[B, N]` float and returns the same shape and dtype; the
per-utterance strengths are floats or `[B]` tensors (one per row); randomness comes only from the
keyword-only `key` (same key -> same bits), and strength zero is the identity (up to the float
rounding of an FFT round trip). `speed` is the exception that changes the length. The
definitions (`X[k] = rfft(x, n=M)[k]` at frequencies `f_k = k sr / M`, `M` the power of two
>= 2N, so that the circular wrap of filtering falls in the discarded padding; the noise is
`funcml.random.fast_normal`, Gaussian to +-4.2 sigma):

- speed perturbation (Ko et al., Interspeech 2015): the waveform is read at `alpha` times its
  rate, `y(t) = x(alpha t)`: duration / alpha, every frequency (pitch and formants) x alpha.
- band limit: `Y[k] = X[k] 1[low <= f_k <= high]`, a zero-phase brick wall.
- reverberation: a synthetic impulse response, exponentially decaying Gaussian noise with
  energy decay time RT60 (Schroeder's model of a diffuse late field),
      h[0] = 1,  h[n] = e[n] 10^(-3 n / (RT60 sr)) / sqrt(sum_m (e[m] 10^(-3 m / (RT60 sr)))^2),  n >= 1,
  `e ~ N(0, 1)`; `y = (1 - wet) x + wet (x * h) sqrt(P_x / P_{x*h})` (the reverberant part scaled
  to the power of `x`).
- coloured noise: `N[k] = W[k] max(f_k, f_1)^(-beta / 2)` for white Gaussian `W`, so the power
  spectrum falls as `1 / f^beta` (beta 0 white, 1 pink, 2 brown), scaled to unit power.
- babble-like noise: speech-shaped (pink, band 100-3400 Hz) noise of `talkers` independent
  streams, each amplitude-modulated by a syllable-rate envelope `m_j(t) = |low-pass_{4 Hz}(z_j)|`,
  summed and scaled to unit power; the modulation is what makes it speech-like rather than
  stationary.
- additive noise at an exact SNR: `y = x + n sqrt(P_x / (10^(snr/10) P_n))`, `P` the mean power.
- random EQ: a smooth random gain curve in dB over log frequency,
      G(f) = max_db sum_{j=1..J} a_j cos(pi j u(f)) / sqrt(J),   u(f) = log(f / f_lo) / log(f_hi / f_lo) in [0, 1],
  `a_j ~ U(-1, 1)`, `Y[k] = X[k] 10^(G(f_k) / 20)` (zero phase).
- gain: `y = 10^(g / 20) x`.
"""

from __future__ import annotations

import math
from fractions import Fraction

import torch

from .. import random
from ..checks import check_shape
from ..errors import RangeError, ShapeError
from .audio import resample

__all__ = ["speed", "band_limit", "reverb", "coloured_noise", "babble_noise", "add_noise", "random_eq", "gain"]


def _rows(x: torch.Tensor, name: str = "x") -> torch.Tensor:
    """`x` as `[B, N]` float (a view of `[N]` as `[1, N]`); checks the shape."""
    check_shape(x, "... n", name=name)
    if x.dim() not in (1, 2) or not x.is_floating_point():
        raise ShapeError(f"{name}: expected a float waveform [N] or [B, N], got {x.dtype} {list(x.shape)}")
    if x.shape[-1] < 1:
        raise ShapeError(f"{name}: the waveform is empty (0 samples)")
    return x if x.dim() == 2 else x[None]


def _per_row(v, b: int, name: str, dtype=torch.float64) -> torch.Tensor:
    """A float or `[B]` tensor as a `[B, 1]` float64 column."""
    t = torch.as_tensor(v, dtype=dtype)
    if t.dim() == 0:
        t = t.expand(b)
    if t.shape != (b,):
        raise ShapeError(f"{name}: expected a number or one value per row ([{b}]), got shape {list(t.shape)}")
    return t[:, None]


def _freqs(n_fft: int, sample_rate: int) -> torch.Tensor:
    """`[n_fft // 2 + 1]` bin frequencies `f_k = k sr / n_fft` in Hz (float64)."""
    return torch.arange(n_fft // 2 + 1, dtype=torch.float64) * sample_rate / n_fft


def _fft_len(n: int) -> int:
    """The FFT length used to filter `n` samples: the power of two >= 2n (fast, and the circular wrap
    of a zero-phase filter falls in the discarded padding)."""
    return 1 << (2 * n - 1).bit_length()


def _filter(x: torch.Tensor, response: torch.Tensor) -> torch.Tensor:
    """Zero-phase filtering of `x: [B, N]` by a real `response: [B or 1, M // 2 + 1]`, `M = _fft_len(N)`."""
    n = x.shape[-1]
    m = _fft_len(n)
    spec = torch.fft.rfft(x.to(torch.float64), n=m)
    return torch.fft.irfft(spec * response, n=m)[..., :n]


def _check_rate(sample_rate: int) -> None:
    if sample_rate <= 0:
        raise RangeError(f"sample_rate: expected a positive number of Hz, got {sample_rate}")


def speed(x: torch.Tensor, factor: float, sample_rate: int) -> torch.Tensor:
    """Speed perturbation `y(t) = x(factor t)`: `[..., N] -> [..., ceil(N / factor)]`.

    The waveform is resampled from `sample_rate * factor` to `sample_rate` (funcml's windowed-sinc
    resampler), so `factor = 1.1` is 10% faster and 10% higher in pitch and formants. `factor` is
    rounded to a ratio of small integers (denominator <= 200, i.e. 0.5% steps), which keeps the
    resampler's filter bank small; it must lie in [0.5, 2].
    """
    _rows(x)
    _check_rate(sample_rate)
    if not 0.5 <= factor <= 2.0:
        raise RangeError(f"speed: factor must lie in [0.5, 2] (1 = unchanged), got {factor}")
    ratio = Fraction(float(factor)).limit_denominator(200)
    if ratio == 1:
        return x.clone()
    y = resample(x.to(torch.float64), ratio.numerator, ratio.denominator)
    return y.to(x.dtype)


def band_limit(x: torch.Tensor, sample_rate: int, *, low_hz=0.0, high_hz=None) -> torch.Tensor:
    """Keep only frequencies in `[low_hz, high_hz]` (per row: floats or `[B]`): a zero-phase brick
    wall, `Y[k] = X[k] 1[low <= f_k <= high]`. `high_hz=None` is Nyquist; `(0, None)` is the identity."""
    r = _rows(x)
    _check_rate(sample_rate)
    b, n = r.shape
    nyq = sample_rate / 2.0
    low = _per_row(low_hz, b, "low_hz")
    high = _per_row(nyq if high_hz is None else high_hz, b, "high_hz")
    if bool((low < 0).any()) or bool((high <= low).any()) or bool((high > nyq).any()):
        raise RangeError(f"band_limit: need 0 <= low_hz < high_hz <= Nyquist ({nyq} Hz), got low_hz={low_hz}, "
                         f"high_hz={high_hz}")
    f = _freqs(_fft_len(n), sample_rate)[None, :]
    keep = ((f >= low) & (f <= high)).to(torch.float64)
    return _filter(r, keep).to(x.dtype).reshape(x.shape)


def _impulse_response(key: torch.Tensor, b: int, length: int, rt60: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """`[B, length]` float64: `h[0] = 1` and a unit-energy exponentially decaying noise tail."""
    e = random.fast_normal(key, (b, length)).to(torch.float64)
    n = torch.arange(length, dtype=torch.float64)[None, :]
    tail = e * 10.0 ** (-3.0 * n / (rt60 * sample_rate))
    tail[:, 0] = 0.0
    tail = tail / tail.pow(2).sum(-1, keepdim=True).clamp_min(1e-30).sqrt()
    tail[:, 0] = 1.0
    return tail


def reverb(x: torch.Tensor, sample_rate: int, *, rt60, wet, key: torch.Tensor,
           max_seconds: float = 1.0) -> torch.Tensor:
    """Simulated room reverberation with a synthetic impulse response (see the module doc).

    Arguments:
        x: `[N]` or `[B, N]` float waveforms.
        rt60: reverberation time in seconds (> 0; float or `[B]`), the time the tail takes to
            decay by 60 dB.
        wet: the reverberant share in `[0, 1]` (float or `[B]`); 0 is the identity.
        key: draws the impulse responses' noise.
        max_seconds: the impulse response is cut at `min(max_seconds, 2 RT60_max)`.

    Returns: the same shape and dtype; the output keeps the input's length (the tail past the
    end is dropped); the reverberant part is scaled to the input's mean power.
    """
    r = _rows(x)
    _check_rate(sample_rate)
    b, n = r.shape
    rt = _per_row(rt60, b, "rt60")
    w = _per_row(wet, b, "wet")
    if bool((rt <= 0).any()) or bool((w < 0).any()) or bool((w > 1).any()):
        raise RangeError(f"reverb: need rt60 > 0 and 0 <= wet <= 1, got rt60={rt60}, wet={wet}")
    length = max(2, int(min(max_seconds, 2.0 * float(rt.max())) * sample_rate))
    h = _impulse_response(key, b, length, rt, sample_rate)
    m = 1 << (n + length - 1).bit_length()                      # a fast FFT length with no wrap into [0, N)
    xd = r.to(torch.float64)
    y = torch.fft.irfft(torch.fft.rfft(xd, n=m) * torch.fft.rfft(h, n=m), n=m)[..., :n]
    p_x = xd.pow(2).mean(-1, keepdim=True)
    p_y = y.pow(2).mean(-1, keepdim=True).clamp_min(1e-30)
    out = (1.0 - w) * xd + w * y * torch.sqrt(p_x / p_y)
    return out.to(x.dtype).reshape(x.shape)


def coloured_noise(sample_rate: int, shape, *, beta, key: torch.Tensor) -> torch.Tensor:
    """Gaussian noise of unit mean power whose power spectrum falls as `1 / f^beta`.

    `shape` is `[N]` or `[B, N]`; `beta` a float or `[B]` (0 white, 1 pink, 2 brown). Bins below
    the first nonzero frequency use its level (no infinite DC). Returns float32 of `shape`.
    """
    _check_rate(sample_rate)
    shape = tuple(shape)
    if len(shape) not in (1, 2) or shape[-1] < 1:
        raise ShapeError(f"coloured_noise: shape must be [N] or [B, N] with N >= 1, got {list(shape)}")
    b, n = (1, shape[0]) if len(shape) == 1 else shape
    bt = _per_row(beta, b, "beta")
    if bool((bt < 0).any()):
        raise RangeError(f"coloured_noise: beta must be >= 0, got {beta}")
    white = random.fast_normal(key, (b, n)).to(torch.float64)
    f = _freqs(_fft_len(n), sample_rate)[None, :].clamp_min(sample_rate / _fft_len(n))
    y = _filter(white, f.pow(-bt / 2.0))
    y = y / y.pow(2).mean(-1, keepdim=True).clamp_min(1e-30).sqrt()
    return y.to(torch.float32).reshape(shape)


def babble_noise(sample_rate: int, shape, *, talkers: int = 4, key: torch.Tensor,
                 syllable_hz: float = 4.0) -> torch.Tensor:
    """Babble-like noise of unit mean power (see the module doc): `talkers` speech-shaped noise
    streams, each amplitude-modulated by a syllable-rate envelope, summed. `shape` `[N]` or
    `[B, N]`; returns float32 of `shape`."""
    _check_rate(sample_rate)
    shape = tuple(shape)
    if len(shape) not in (1, 2) or shape[-1] < 1:
        raise ShapeError(f"babble_noise: shape must be [N] or [B, N] with N >= 1, got {list(shape)}")
    if talkers < 1:
        raise RangeError(f"babble_noise: talkers must be >= 1, got {talkers}")
    b, n = (1, shape[0]) if len(shape) == 1 else shape
    k_src, k_env = random.split(key)
    src = coloured_noise(sample_rate, (b * talkers, n), beta=1.0, key=k_src).to(torch.float64)
    src = band_limit(src, sample_rate, low_hz=min(100.0, sample_rate / 4), high_hz=min(3400.0, sample_rate / 2))
    z = random.fast_normal(k_env, (b * talkers, n)).to(torch.float64)
    f = _freqs(_fft_len(n), sample_rate)[None, :]
    env = _filter(z, (f <= syllable_hz).to(torch.float64)).abs()
    y = (src * env).reshape(b, talkers, n).sum(1)
    y = y / y.pow(2).mean(-1, keepdim=True).clamp_min(1e-30).sqrt()
    return y.to(torch.float32).reshape(shape)


def add_noise(x: torch.Tensor, noise: torch.Tensor, snr_db) -> torch.Tensor:
    """`x + noise` scaled so that the SNR is exactly `snr_db` (float or `[B]`) on each row:
    `y = x + n sqrt(P_x / (10^(snr/10) P_n))`. `noise` has `x`'s shape; `snr_db=inf` is the identity."""
    r = _rows(x)
    if noise.shape != x.shape:
        raise ShapeError(f"add_noise: noise must have the waveform's shape {list(x.shape)}, got {list(noise.shape)}")
    nz = _rows(noise, "noise").to(torch.float64)
    s = _per_row(snr_db, r.shape[0], "snr_db")
    p_x = r.to(torch.float64).pow(2).mean(-1, keepdim=True)
    p_n = nz.pow(2).mean(-1, keepdim=True).clamp_min(1e-30)
    scale = torch.sqrt(p_x / (10.0 ** (s / 10.0) * p_n))
    return (r.to(torch.float64) + scale * nz).to(x.dtype).reshape(x.shape)


def random_eq(x: torch.Tensor, sample_rate: int, *, max_db, key: torch.Tensor, bands: int = 4,
              f_lo: float = 50.0) -> torch.Tensor:
    """A smooth random equalizer (see the module doc): gain `G(f)` dB, a sum of `bands` cosines
    over log frequency from `f_lo` to Nyquist with `|G| <= max_db` (float or `[B]`; 0 is the identity)."""
    r = _rows(x)
    _check_rate(sample_rate)
    b, n = r.shape
    top = _per_row(max_db, b, "max_db")
    if bool((top < 0).any()) or bands < 1 or not 0 < f_lo < sample_rate / 2:
        raise RangeError(f"random_eq: need max_db >= 0, bands >= 1 and 0 < f_lo < Nyquist, got max_db={max_db}, "
                         f"bands={bands}, f_lo={f_lo}")
    a = random.uniform(key, (b, bands), -1.0, 1.0, dtype=torch.float64)                  # [B, J]
    f = _freqs(_fft_len(n), sample_rate).clamp(f_lo, sample_rate / 2)
    u = torch.log(f / f_lo) / math.log(sample_rate / 2 / f_lo)                             # [K] in [0, 1]
    j = torch.arange(1, bands + 1, dtype=torch.float64)
    curve = torch.cos(math.pi * j[:, None] * u[None, :])                                  # [J, K]
    g_db = top * (a @ curve) / math.sqrt(bands)                                           # [B, K]
    return _filter(r, 10.0 ** (g_db.clamp(-top, top) / 20.0)).to(x.dtype).reshape(x.shape)


def gain(x: torch.Tensor, db) -> torch.Tensor:
    """`10^(db / 20) x` (db a float or `[B]`)."""
    r = _rows(x)
    g = _per_row(db, r.shape[0], "db")
    return (r.to(torch.float64) * 10.0 ** (g / 20.0)).to(x.dtype).reshape(x.shape)
