"""The log-mel front-end of Paraformer, written from the equations in torch.

    cfg = FrontendConfig(use_lfr=True)                       # 80 mels, 25 ms / 10 ms, LFR 7/6
    feats = features(waveform, cfg)                          # [N] -> [ceil(T / 6), 560]
    feats = spec_augment(key, feats, num_time_masks=2, max_time=10, num_freq_masks=2, max_freq=27)

`log_mel` (Davis & Mermelstein, 1980; the HTK book, ch. 5):

    pre-emphasis   y[n] = x[n] - a x[n-1]        (y[0] = x[0])
    framing        frame t = y[t*hop : t*hop + win],  T = 1 + (N - win) // hop   (no padding)
    window         Hamming w[i] = 0.54 - 0.46 cos(2 pi i / (win - 1))  (or Hann, or none)
    power          P[t, k] = |FFT_nfft(w * frame_t)[k]|^2,  k = 0 .. nfft/2
    mel            E[t, m] = sum_k H[m, k] P[t, k]
    log            log(max(E, floor))

Mel filterbank `H` (HTK mel scale): `mel(f) = 2595 log10(1 + f / 700)`. `n_mels + 2` points are
spaced evenly in mel from `mel(fmin)` to `mel(fmax)`, mapped back to Hz as `f_0 < ... <
f_{M+1}`; filter `m` (1-based centre `f_m`) is the triangle

    H[m, k] = (f_k - f_{m-1}) / (f_m - f_{m-1})   for f_{m-1} <= f_k <= f_m
            = (f_{m+1} - f_k) / (f_{m+1} - f_m)   for f_m <= f_k <= f_{m+1},   0 elsewhere

on the FFT bin frequencies `f_k = k sr / nfft`, with peak 1 at its centre (HTK, not Slaney's
area normalization), so a pure tone gives most energy to the filter whose centre is nearest.

Low frame rate (LFR, Paraformer; Gao et al., "Paraformer", Interspeech 2022, as in FunASR):
`m` consecutive frames are stacked and the window advances `n` frames, giving
`ceil(T / n)` frames of `m * F` features. Frame `i` stacks frames `i*n - (m-1)//2 ... i*n -
(m-1)//2 + m - 1`; indices before 0 repeat the first frame (the left pad of `(m-1)//2` copies)
and indices past `T - 1` repeat the last frame.

Cepstral smoothing (`lifter = K > 0`; the liftering of MFCC front ends, Juang et al., 1987): with
the orthonormal DCT-II `D: [M, M]` over the mel axis, `D[q, m] = s_q cos(pi q (m + 1/2) / M)`
(`s_0 = sqrt(1/M)`, else `sqrt(2/M)`), the log-mel frame `e` becomes `D^T diag(1[q < K]) D e`:
the same `M` values with the fine spectral structure (pitch harmonics, a synthesizer's
signature) removed and the envelope (formants, the phonetic content) kept.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from einops import rearrange

from .. import random
from ..checks import check_shape, host_readable
from ..config import require, require_one_of, require_positive_int
from ..errors import ConfigError, RangeError, ShapeError

__all__ = [
    "FrontendConfig", "hz_to_mel", "mel_to_hz", "mel_filterbank", "mel_centers", "log_mel", "lfr", "normalize",
    "global_stats", "features", "spec_augment", "num_frames", "cepstral_smooth", "warp_frequency",
]


@dataclasses.dataclass(frozen=True)
class FrontendConfig:
    """Front-end settings (defaults: FunASR's Paraformer front end, without dither; see the module doc)."""

    sample_rate: int = 16000
    """Audio is resampled to this rate (Hz) before the front end."""
    n_mels: int = 80
    """Mel filters (features per 10 ms frame)."""
    win_ms: float = 25.0
    """Analysis window length in ms (win = sample_rate * win_ms / 1000 samples)."""
    hop_ms: float = 10.0
    """Frame shift in ms."""
    n_fft: int = 512
    """FFT size (>= the window in samples)."""
    preemphasis: float = 0.97
    """Pre-emphasis coefficient a: y[n] = x[n] - a x[n-1] (0 = off)."""
    window: str = "hamming"
    """The analysis window: "hamming", "hann" or "none"."""
    fmin: float = 20.0
    """Lowest mel filter edge in Hz."""
    fmax: float | None = None
    """Highest mel filter edge in Hz (None: Nyquist)."""
    lfr_m: int = 7
    """LFR: frames stacked."""
    lfr_n: int = 6
    """LFR: frames advanced (60 ms output frames with 6)."""
    use_lfr: bool = False
    """Stack frames (Paraformer's low frame rate input); pair with --model.encoder.input-layer linear."""
    normalize: str = "utterance"
    """Feature normalization: "utterance" (per-utterance mean / variance per feature), "global" (dataset statistics) or "none"."""
    log_floor: float = 1e-10
    """log(max(E, log_floor)) keeps silence finite."""
    lifter: int = 0
    """Keep the first `lifter` cepstral coefficients of each log-mel frame (cepstral smoothing, see
    the module doc); 0 keeps the log-mel frame as it is."""

    def __post_init__(self):
        require_one_of(self, "window", ("hamming", "hann", "none"))
        require_one_of(self, "normalize", ("utterance", "global", "none"))
        require(self.win_length <= self.n_fft, self,
                f"n_fft={self.n_fft} is shorter than the window ({self.win_length} samples)")
        require_positive_int(self, "n_mels", "lfr_m", "lfr_n")
        require(self.hop_length >= 1, self,
                f"hop_ms must give a hop of >= 1 sample, got hop_ms={self.hop_ms} ({self.hop_length} samples)")
        require(0 <= self.fmin < (self.fmax or self.sample_rate / 2) <= self.sample_rate / 2, self,
                f"need 0 <= fmin < fmax <= sample_rate / 2, got fmin={self.fmin}, fmax={self.fmax}")
        require(0 <= self.lifter <= self.n_mels, self,
                f"lifter must be 0 (off) .. n_mels={self.n_mels} coefficients, got {self.lifter}")

    @property
    def win_length(self) -> int:
        return int(round(self.sample_rate * self.win_ms / 1000))

    @property
    def hop_length(self) -> int:
        return int(round(self.sample_rate * self.hop_ms / 1000))

    @property
    def feature_dim(self) -> int:
        """Features per output frame: `n_mels`, or `lfr_m * n_mels` with LFR."""
        return self.n_mels * (self.lfr_m if self.use_lfr else 1)


def hz_to_mel(f):
    """HTK mel: `2595 log10(1 + f / 700)` (a float or a tensor)."""
    return 2595.0 * (torch.log10(1.0 + f / 700.0) if isinstance(f, torch.Tensor) else math.log10(1.0 + f / 700.0))


def mel_to_hz(m):
    """The inverse of `hz_to_mel`: `700 (10^(m / 2595) - 1)`."""
    return 700.0 * ((10.0 ** (m / 2595.0)) - 1.0)


def _edges(n_mels: int, sample_rate: int, fmin: float, fmax: float | None) -> torch.Tensor:
    fmax = sample_rate / 2 if fmax is None else fmax
    mels = torch.linspace(hz_to_mel(float(fmin)), hz_to_mel(float(fmax)), n_mels + 2, dtype=torch.float64)
    f = mel_to_hz(mels)                                                      # [n_mels + 2] Hz
    f[0], f[-1] = fmin, fmax                  # exact ends: the mel round trip is off by ~1e-12 Hz
    return f


def mel_centers(n_mels: int, sample_rate: int, fmin: float = 20.0, fmax: float | None = None) -> torch.Tensor:
    """Centre frequencies `f_1 .. f_M` in Hz of the filters of `mel_filterbank`: `[n_mels]` float64."""
    return _edges(n_mels, sample_rate, fmin, fmax)[1:-1]


def mel_filterbank(n_mels: int, n_fft: int, sample_rate: int, fmin: float = 20.0,
                   fmax: float | None = None) -> torch.Tensor:
    """Triangular HTK mel filters `H: [n_mels, n_fft // 2 + 1]` float32 (see the module doc)."""
    if fmax is not None and fmax > sample_rate / 2:
        raise RangeError(f"fmax: expected <= sample_rate / 2 = {sample_rate / 2}, got {fmax}")
    f = _edges(n_mels, sample_rate, fmin, fmax)
    fk = torch.arange(n_fft // 2 + 1, dtype=torch.float64) * sample_rate / n_fft    # [K]
    lo, mid, hi = f[:-2, None], f[1:-1, None], f[2:, None]                            # [M, 1]
    rise = (fk[None, :] - lo) / (mid - lo)
    fall = (hi - fk[None, :]) / (hi - mid)
    return torch.clamp(torch.minimum(rise, fall), min=0.0).to(torch.float32)


def _window(cfg: FrontendConfig, dtype: torch.dtype, device) -> torch.Tensor:
    n = cfg.win_length
    if cfg.window == "none":
        return torch.ones(n, dtype=dtype, device=device)
    i = torch.arange(n, dtype=torch.float64, device=device)
    a = 0.54 if cfg.window == "hamming" else 0.5
    return (a - (1 - a) * torch.cos(2 * math.pi * i / (n - 1))).to(dtype)


def num_frames(num_samples: int, cfg: FrontendConfig = FrontendConfig()) -> int:
    """`1 + (N - win) // hop` frames for `N >= win` samples, else 0."""
    return 0 if num_samples < cfg.win_length else 1 + (num_samples - cfg.win_length) // cfg.hop_length


def log_mel(waveform: torch.Tensor, cfg: FrontendConfig = FrontendConfig()) -> torch.Tensor:
    """Log-mel filterbank energies.

    Arguments:
        waveform: `[N]` or `[B, N]` float, at `cfg.sample_rate`, `N >= win` samples.

    Returns: `[T, n_mels]` (or `[B, T, n_mels]`) float32, `T = 1 + (N - win) // hop`.
    """
    check_shape(waveform, "... n", name="waveform")
    if waveform.dim() not in (1, 2) or not waveform.is_floating_point():
        raise ShapeError(f"waveform: expected float [N] or [B, N], got {waveform.dtype} {list(waveform.shape)}")
    n = waveform.shape[-1]
    if n < cfg.win_length:
        raise ShapeError(f"waveform: expected at least one window of {cfg.win_length} samples "
                         f"({cfg.win_ms} ms at {cfg.sample_rate} Hz), got {n}")
    x = waveform.to(torch.float32)
    if cfg.preemphasis:
        x = torch.cat([x[..., :1], x[..., 1:] - cfg.preemphasis * x[..., :-1]], dim=-1)
    frames = x.unfold(-1, cfg.win_length, cfg.hop_length)                     # [..., T, win]
    frames = frames * _window(cfg, frames.dtype, frames.device)
    power = torch.fft.rfft(frames, n=cfg.n_fft).abs().pow(2)                 # [..., T, n_fft/2 + 1]
    fb = mel_filterbank(cfg.n_mels, cfg.n_fft, cfg.sample_rate, cfg.fmin, cfg.fmax).to(power.device)
    mel = torch.einsum("...tk,mk->...tm", power, fb)
    return torch.log(torch.clamp(mel, min=cfg.log_floor))


def lfr(features: torch.Tensor, m: int = 7, n: int = 6) -> torch.Tensor:
    """Low-frame-rate stacking (see the module doc).

    Arguments:
        features: `[T, F]` (or `[B, T, F]`, all `T` frames valid), `T >= 1`.

    Returns: `[ceil(T / n), m * F]` (or `[B, ...]`); output frame `i` is the concatenation of
    input frames `clamp(i*n - (m-1)//2 + j, 0, T-1)` for `j = 0 .. m-1`.
    """
    dims = check_shape(features, "... t f", name="features")
    if features.dim() not in (2, 3) or dims["t"] < 1:
        raise ShapeError(f"features: expected [T, F] or [B, T, F] with T >= 1, got {list(features.shape)}")
    if m < 1 or n < 1:
        raise RangeError(f"lfr: m and n must be >= 1, got m={m}, n={n}")
    t = dims["t"]
    t_out = -(-t // n)
    idx = torch.arange(t_out)[:, None] * n + torch.arange(m)[None, :] - (m - 1) // 2
    idx = idx.clamp(0, t - 1).to(features.device)                              # [T_out, m]
    stacked = features[..., idx, :]                                            # [..., T_out, m, F]
    return rearrange(stacked, "... t m f -> ... t (m f)")


def _valid_mask(features: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """`[..., T, 1]` bool: frame `t` of row `b` is valid iff `t < lengths[b]`."""
    t = features.shape[-2]
    if lengths is None:
        return torch.ones(*features.shape[:-1], 1, dtype=torch.bool, device=features.device)
    if features.dim() != 3:
        raise ShapeError(f"lengths: given for a batch, so features must be [B, T, F], got {list(features.shape)}")
    check_shape(lengths, "b", name="lengths", b=features.shape[0])
    if host_readable(lengths) and (bool((lengths < 1).any()) or bool((lengths > t).any())):
        raise RangeError(f"lengths: expected values in [1, {t}], got {lengths.tolist()}")
    return (torch.arange(t, device=features.device)[None, :] < lengths[:, None].to(features.device))[..., None]


def normalize(features: torch.Tensor, lengths: torch.Tensor | None = None, mode: str = "utterance",
              stats: tuple[torch.Tensor, torch.Tensor] | None = None, eps: float = 1e-5) -> torch.Tensor:
    """Mean/variance normalization per feature: `(x - mu) / sqrt(var + eps)`.

    Arguments:
        features: `[T, F]` or `[B, T, F]` (padded; `lengths: [B]` int gives the valid frames).
        mode: "utterance" (mu, var over each utterance's valid frames), "global" (`stats =
            (mean [F], var [F])`, e.g. from `global_stats`), or "none" (returned unchanged).

    Returns: the same shape; padded frames are set to 0.
    """
    dims = check_shape(features, "... t f", name="features")
    if mode == "none":
        return features
    valid = _valid_mask(features, lengths)
    if mode == "utterance":
        count = valid.sum(-2, keepdim=True).to(features.dtype)                        # [..., 1, 1]
        mu = torch.where(valid, features, 0.0).sum(-2, keepdim=True) / count
        var = torch.where(valid, (features - mu) ** 2, 0.0).sum(-2, keepdim=True) / count
    elif mode == "global":
        if stats is None:
            raise ConfigError("normalize(mode='global') needs stats=(mean, var); compute them with global_stats")
        mu, var = stats
        check_shape(mu, "f", name="stats[0] (mean)", f=dims["f"])
        check_shape(var, "f", name="stats[1] (var)", f=dims["f"])
    else:
        raise ConfigError(f"mode: expected 'utterance', 'global' or 'none', got {mode!r}")
    return torch.where(valid, (features - mu) / torch.sqrt(var + eps), 0.0)


def global_stats(features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature mean and (population) variance over all frames of `[T_i, F]` tensors: `([F], [F])`."""
    if not features:
        raise ShapeError("features: expected at least one [T, F] tensor")
    f = check_shape(features[0], "t f", name="features[0]")["f"]
    for i, x in enumerate(features):
        check_shape(x, "t f", name=f"features[{i}]", f=f)
    allx = torch.cat([x.to(torch.float64) for x in features])
    return allx.mean(0).to(torch.float32), allx.var(0, unbiased=False).to(torch.float32)


def features(waveform: torch.Tensor, cfg: FrontendConfig = FrontendConfig(),
             stats: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """The whole front-end for one utterance: `log_mel`, then `lfr` if `cfg.use_lfr`, then
    `normalize(mode=cfg.normalize)`. `waveform: [N]` -> `[T', cfg.feature_dim]` float32."""
    check_shape(waveform, "n", name="waveform")
    x = log_mel(waveform, cfg)
    if cfg.lifter:
        x = cepstral_smooth(x, cfg.lifter)
    if cfg.use_lfr:
        x = lfr(x, cfg.lfr_m, cfg.lfr_n)
    return normalize(x, mode=cfg.normalize, stats=stats)


def _dct_matrix(m: int) -> torch.Tensor:
    q = torch.arange(m, dtype=torch.float64)[:, None]
    i = torch.arange(m, dtype=torch.float64)[None, :]
    d = torch.cos(math.pi * q * (i + 0.5) / m) * math.sqrt(2.0 / m)
    d[0] = math.sqrt(1.0 / m)
    return d                                                                   # [M, M], orthonormal


def cepstral_smooth(log_mels: torch.Tensor, keep: int) -> torch.Tensor:
    """Cepstral smoothing along the last axis (see the module doc): `[..., M] -> [..., M]`,
    `D^T diag(1[q < keep]) D e` with the orthonormal DCT-II `D`. `keep = M` is the identity."""
    m = log_mels.shape[-1]
    if not 1 <= keep <= m:
        raise RangeError(f"keep: expected 1 .. {m} (the mel bins), got {keep}")
    d = _dct_matrix(m)[:keep]
    smooth = (d.T @ d).to(device=log_mels.device, dtype=log_mels.dtype)      # [M, M], symmetric projection
    return log_mels @ smooth


def warp_frequency(key: torch.Tensor, features: torch.Tensor, *, max_warp: float) -> torch.Tensor:
    """Random frequency-axis warping of mel features (vocal-tract-length perturbation in the mel
    domain; Jaitly & Hinton, 2013), a pure function of `key`.

    Row `b` draws `a_b ~ U(1 - max_warp, 1 + max_warp)` and becomes `y[b, t, f] = x[b, t, f / a_b]`,
    linearly interpolated between bins and clamped to the last bin: `a > 1` moves the spectral
    envelope (formants) up, as a shorter vocal tract does. `features: [T, F]` or `[B, T, F]` float
    (F mel bins, not LFR-stacked); returns a new tensor of the same shape. `max_warp=0` is the identity.
    """
    check_shape(features, "... t f", name="features")
    if not 0.0 <= max_warp < 1.0:
        raise RangeError(f"max_warp: expected a fraction in [0, 1), got {max_warp}")
    single = features.dim() == 2
    x = features[None] if single else features
    b, _, f = x.shape
    u = random.uniform(key, (b,), dtype=torch.float64).to(x.device)
    alpha = 1.0 + max_warp * (2.0 * u - 1.0)                                       # [B]
    src = torch.arange(f, dtype=torch.float64, device=x.device)[None, :] / alpha[:, None]
    src = src.clamp(0.0, f - 1)                                                    # [B, F]
    lo = src.floor().to(torch.int64)
    hi = (lo + 1).clamp(max=f - 1)
    w = (src - lo).to(x.dtype)[:, None, :]                                         # [B, 1, F]
    idx_lo = lo[:, None, :].expand(b, x.shape[1], f)
    idx_hi = hi[:, None, :].expand(b, x.shape[1], f)
    y = torch.gather(x, 2, idx_lo) * (1 - w) + torch.gather(x, 2, idx_hi) * w
    return y[0] if single else y


def _spans(k: torch.Tensor, count: int, max_width: int, extent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` spans per row: width `w ~ U{0..min(max_width, L)}`, start `~ U{0..L-w}`; `[B, count]` each."""
    k_w, k_s = random.split(k)
    u_w = random.uniform(k_w, (extent.shape[0], count), dtype=torch.float64)
    u_s = random.uniform(k_s, (extent.shape[0], count), dtype=torch.float64)
    cap = torch.clamp(extent[:, None], max=max_width)
    width = torch.floor(u_w * (cap + 1)).to(torch.int64)
    start = torch.floor(u_s * (extent[:, None] - width + 1)).to(torch.int64)
    return start, width


def spec_augment(key: torch.Tensor, features: torch.Tensor, *, num_time_masks: int = 2, max_time: int = 10,
                 num_freq_masks: int = 2, max_freq: int = 27, lengths: torch.Tensor | None = None,
                 mask_value: float = 0.0) -> torch.Tensor:
    """SpecAugment time and frequency masking (Park et al., Interspeech 2019), a pure function of `key`.

    Each row gets `num_time_masks` masks of width `w ~ U{0 .. min(max_time, L)}` frames at a
    start `s ~ U{0 .. L - w}` (`L` = its length, from `lengths` or `T`), and `num_freq_masks`
    masks of width `U{0 .. min(max_freq, F)}` features likewise; masked entries become
    `mask_value`. Masks may overlap. No time warping.

    Arguments:
        key: a funcml.random key; the same key gives the same masks.
        features: `[T, F]` or `[B, T, F]` float; `lengths: [B]` int for padded batches.

    Returns: a new tensor of the same shape (the input is not modified).
    """
    check_shape(features, "... t f", name="features")
    if features.dim() not in (2, 3):
        raise ShapeError(f"features: expected [T, F] or [B, T, F], got {list(features.shape)}")
    if min(num_time_masks, max_time, num_freq_masks, max_freq) < 0:
        raise RangeError("spec_augment: mask counts and widths must be >= 0")
    x = features if features.dim() == 3 else features[None]
    b, t, f = x.shape
    dev = x.device                                   # the draws run there too: the same bits on every device
    valid = _valid_mask(x, lengths)[..., 0]                                            # [B, T]
    extent_t = valid.sum(-1)
    k_t, k_f = random.split(key.to(dev))
    ts, tw = _spans(k_t, num_time_masks, max_time, extent_t)                          # [B, nt]
    fs, fw = _spans(k_f, num_freq_masks, max_freq, torch.full((b,), f, dtype=torch.int64, device=dev))
    pos_t = torch.arange(t, device=dev)[None, None, :]
    pos_f = torch.arange(f, device=dev)[None, None, :]
    mask_t = ((pos_t >= ts[..., None]) & (pos_t < (ts + tw)[..., None])).any(1)      # [B, T]
    mask_f = ((pos_f >= fs[..., None]) & (pos_f < (fs + fw)[..., None])).any(1)      # [B, F]
    mask = mask_t[:, :, None] | mask_f[:, None, :]
    y = torch.where(mask, torch.as_tensor(mask_value, dtype=x.dtype, device=x.device), x)
    return y if features.dim() == 3 else y[0]
