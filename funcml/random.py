"""Explicit PRNG keys: counter-based, pure, the same bits everywhere.

    key = random.key(0)                       # Tensor[2] int64
    k_init, k_data = random.split(key)        # Tensor[2, 2] -> two keys
    k_step = random.fold_in(key, step)        # step: int or int64 tensor (traceable)
    x = random.normal(k_data, (8, 3))

A key is an int64 tensor of shape `[2]` holding two 32-bit words. Every sampler is a pure
function of its key: there is no hidden state, and torch's global RNG is never read or
advanced. The generator is Threefry-2x32 with 20 rounds (Salmon et al., "Parallel random
numbers: as easy as 1, 2, 3", SC 2011), the block cipher JAX uses, written with plain int64
tensor ops (add, xor, shifts, and a 32-bit mask), so that

* the same key gives bit-identical output in eager mode, under `torch.compile`, under
  `torch.func.vmap` (a batch of keys gives one independent stream per key), and on CPU and
  CUDA;
* `vmap` over keys needs no special support: a key is just a tensor.

Floating samples are made so that this holds for them too: uniforms take the top bits of a
word and scale by a power of two (exact in every dtype); normals and the other transforms
compute in float64 and round once to the output dtype, so a last-bit difference between
two float64 math libraries almost never reaches a float32 result.

Streams are kept apart by a domain word in the counter: sampling uses counters `(0, i)`,
`split` uses `(1, i)`, and `fold_in` uses the data as the counter under a tweaked key. Named
streams: `fold_in(key, "dropout")` hashes the name with 64-bit FNV-1a, which is stable across
runs and machines (Python's `hash` is not).
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import torch

from . import _eager
from .errors import PRNGKeyError

__all__ = [
    "key",
    "split",
    "fold_in",
    "bits",
    "uniform",
    "normal",
    "fast_normal",
    "truncated_normal",
    "bernoulli",
    "randint",
    "permutation",
    "categorical",
    "gumbel",
    "threefry2x32",
    "check_key",
]

Key = torch.Tensor
Shape = int | Sequence[int] | torch.Size

_MASK = 0xFFFFFFFF
_PARITY = 0x1BD11BDA  # Threefry's key-schedule constant
_ROT = ((13, 15, 26, 6), (17, 29, 16, 24))
_DOMAIN_BITS, _DOMAIN_SPLIT = 0, 1
_FOLD_TWEAK = (0x9E3779B9, 0x7F4A7C15)  # golden-ratio and SplitMix constants


def _add(a: torch.Tensor, b) -> torch.Tensor:
    return (a + b) & _MASK


def _rotl(x: torch.Tensor, r: int) -> torch.Tensor:
    return ((x << r) & _MASK) | (x >> (32 - r))


def threefry2x32(k0, k1, x0: torch.Tensor, x1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The Threefry-2x32-20 block function on 32-bit words stored in int64.

    Arguments: key words `k0, k1` and counter words `x0, x1`, all int64 in `[0, 2**32)` and
    broadcastable. Returns the two output words, int64 in `[0, 2**32)`.
    """
    k2 = k0 ^ k1 ^ _PARITY
    ks = (k0, k1, k2)
    x0, x1 = _add(x0, k0), _add(x1, k1)
    for i in range(5):
        for r in _ROT[i % 2]:
            x0 = _add(x0, x1)
            x1 = _rotl(x1, r) ^ x0
        x0 = _add(x0, ks[(i + 1) % 3])
        x1 = _add(_add(x1, ks[(i + 2) % 3]), i + 1)
    return x0, x1


def check_key(k: Key) -> None:
    """Raise PRNGKeyError unless `k` is a key: an int64 tensor of shape [2]."""
    if not isinstance(k, torch.Tensor) or k.dtype != torch.int64 or tuple(k.shape) != (2,):
        got = f"{type(k).__name__}" if not isinstance(k, torch.Tensor) else f"{k.dtype} {list(k.shape)}"
        raise PRNGKeyError(
            f"expected a PRNG key (int64 tensor of shape [2], from funcml.random.key/split), got {got}; "
            "for a batch of keys use torch.func.vmap over the leading dim"
        )


def key(seed: int, device: torch.device | str | None = None) -> Key:
    """A key from an integer seed in `[0, 2**64)`: `[seed >> 32, seed & 0xFFFFFFFF]`."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise PRNGKeyError(f"seed must be a Python int, got {type(seed).__name__} {seed!r}")
    if not 0 <= seed < 2**64:
        raise PRNGKeyError(f"seed must be in [0, 2**64), got {seed}")
    return torch.tensor([seed >> 32, seed & _MASK], dtype=torch.int64, device=device)


def _block(k: Key, domain: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    ctr = torch.arange(n, dtype=torch.int64, device=k.device)
    return threefry2x32(k[0], k[1], torch.full_like(ctr, domain), ctr)


def split(k: Key, n: int = 2) -> Key:
    """`n` new independent keys, shape `[n, 2]`. Do not use `k` itself afterwards."""
    check_key(k)
    if n < 1:
        raise PRNGKeyError(f"split: n must be >= 1, got {n}")
    y0, y1 = _block(k, _DOMAIN_SPLIT, n)
    return torch.stack([y0, y1], dim=-1)


def _name_hash(name: str) -> int:
    """64-bit FNV-1a of the UTF-8 bytes: stable across runs and machines, and plain Python
    integer arithmetic, so torch.compile folds it into a constant."""
    h = 0xCBF29CE484222325
    for byte in name.encode():
        h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def _data_words(data) -> tuple:
    if isinstance(data, str):
        data = _name_hash(data)
    if isinstance(data, bool):
        data = int(data)
    if isinstance(data, int):
        if not 0 <= data < 2**64:
            raise PRNGKeyError(f"fold_in: data must be in [0, 2**64) or a str, got {data}")
        return data >> 32, data & _MASK
    if isinstance(data, torch.Tensor):
        if data.is_floating_point() or data.numel() != 1:
            raise PRNGKeyError(f"fold_in: tensor data must be one integer, got {data.dtype} {list(data.shape)}")
        d = data.reshape(()).to(torch.int64)
        return (d >> 32) & _MASK, d & _MASK
    raise PRNGKeyError(f"fold_in: data must be an int, a str or an integer tensor, got {type(data).__name__}")


def fold_in(k: Key, data: int | str | torch.Tensor) -> Key:
    """A new key that depends on `k` and `data` (an int in `[0, 2**64)`, a name, or a scalar
    integer tensor such as the train step, so that it can be traced without recompiling).

    One Threefry block: the 64-bit data is the counter and the cipher key is `k` with its
    words tweaked by fixed constants, which keeps fold_in's outputs apart from `split` and
    sampling (both of which use `k` itself) while all 2**64 data values stay distinct.
    """
    check_key(k)
    hi, lo = _data_words(data)
    if _eager.fold_in_applies(k):  # the same block on Python ints; traced, vmapped and CUDA calls: tensor ops
        return _eager.fold_in(k, hi, lo, _FOLD_TWEAK)
    y0, y1 = threefry2x32(k[0] ^ _FOLD_TWEAK[0], k[1] ^ _FOLD_TWEAK[1], hi, lo)
    return torch.stack([torch.as_tensor(y0), torch.as_tensor(y1)]).to(device=k.device)


def _shape(shape: Shape) -> tuple[int, ...]:
    if isinstance(shape, int):
        return (shape,)
    return tuple(int(s) for s in shape)


def bits(k: Key, n: int) -> torch.Tensor:
    """`n` random 32-bit words as int64 in `[0, 2**32)`; prefix-stable (`bits(k, 4)[:2] == bits(k, 2)`)."""
    check_key(k)
    y0, y1 = _block(k, _DOMAIN_BITS, (n + 1) // 2)
    return torch.stack([y0, y1], dim=-1).reshape(-1)[:n]


def _uniform01(k: Key, n: int, dtype: torch.dtype) -> torch.Tensor:
    """`n` uniforms in `[0, 1)` of `dtype`, each exactly `m * 2**-p` with p the dtype's precision."""
    if dtype == torch.float64:
        w = bits(k, 2 * n).reshape(n, 2)
        m = (w[:, 0] >> 5) * (1 << 26) + (w[:, 1] >> 6)  # 53 random bits
        return m.to(torch.float64) * 2.0**-53
    p = 1 - round(math.log2(torch.finfo(dtype).eps))  # precision incl. the implicit bit
    m = bits(k, n) >> (32 - p)
    return (m.to(torch.float32) * 2.0**-p).to(dtype)


def _check_float(dtype: torch.dtype, fn: str) -> None:
    if not dtype.is_floating_point:
        raise PRNGKeyError(f"{fn}: dtype must be floating, got {dtype}")


def uniform(k: Key, shape: Shape = (), minval: float = 0.0, maxval: float = 1.0, *,
            dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> torch.Tensor:
    """Uniform samples in `[minval, maxval)`."""
    check_key(k)
    _check_float(dtype, "uniform")
    shape = _shape(shape)
    u = _uniform01(k, math.prod(shape), dtype).reshape(shape)
    if (minval, maxval) != (0.0, 1.0):
        u = minval + (maxval - minval) * u
        hi = torch.tensor(maxval, dtype=dtype, device=u.device)
        u = torch.minimum(u, torch.nextafter(hi, torch.tensor(minval, dtype=dtype, device=u.device)))
    return u.to(device) if device is not None else u


def normal(k: Key, shape: Shape = (), *, dtype: torch.dtype = torch.float32,
           device: torch.device | str | None = None) -> torch.Tensor:
    """Standard normal samples (Box-Muller in float64, rounded once to `dtype`)."""
    check_key(k)
    _check_float(dtype, "normal")
    shape = _shape(shape)
    n = math.prod(shape)
    m = (n + 1) // 2
    u = _uniform01(k, 2 * m, torch.float64).reshape(m, 2)
    radius = torch.sqrt(-2.0 * torch.log1p(-u[:, 0]))  # 1 - u in (0, 1]: log is finite
    theta = (2.0 * math.pi) * u[:, 1]
    z = torch.stack([radius * torch.cos(theta), radius * torch.sin(theta)], dim=-1).reshape(-1)[:n]
    z = z.to(dtype).reshape(shape)
    return z.to(device) if device is not None else z


@functools.lru_cache(maxsize=8)
def _normal_quantiles(device: str) -> torch.Tensor:
    """`[65536]` float32 constant: the standard-normal quantiles `Phi^-1((i + 1/2) / 2**16)`."""
    p = (torch.arange(65536, dtype=torch.float64) + 0.5) / 65536.0
    return (math.sqrt(2.0) * torch.erfinv(2.0 * p - 1.0)).to(torch.float32).to(device)


def fast_normal(k: Key, shape: Shape = ()) -> torch.Tensor:
    """Approximately standard-normal float32 noise by inverse-CDF table lookup.

    Each 32-bit word gives two 16-bit indices into the 65536 quantiles
    `Phi^-1((i + 1/2) / 2**16)`: four times fewer Threefry words than `normal` and no
    transcendental function per sample. The values are discrete (65536 levels) and the tails
    stop at about +-4.2 sigma: right for noise in generated data, not for initializers or
    statistics that need the tails. Same bits on every device.
    """
    check_key(k)
    shape = _shape(shape)
    n = math.prod(shape)
    words = bits(k, (n + 1) // 2)
    idx = torch.stack([words >> 16, words & 0xFFFF], dim=-1).reshape(-1)[:n]
    return _normal_quantiles(str(k.device))[idx].reshape(shape)


def truncated_normal(k: Key, shape: Shape = (), lower: float = -2.0, upper: float = 2.0, *,
                     dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> torch.Tensor:
    """Standard normal samples conditioned on `lower <= z <= upper` (inverse-CDF method)."""
    check_key(k)
    _check_float(dtype, "truncated_normal")
    if not lower < upper:
        raise PRNGKeyError(f"truncated_normal: need lower < upper, got {lower}, {upper}")
    shape = _shape(shape)
    u = _uniform01(k, math.prod(shape), torch.float64)
    cdf_lo, cdf_hi = (0.5 * (1.0 + math.erf(b / math.sqrt(2.0))) for b in (lower, upper))
    p = cdf_lo + u * (cdf_hi - cdf_lo)
    z = math.sqrt(2.0) * torch.erfinv(2.0 * p - 1.0)
    z = torch.clamp(z, lower, upper).to(dtype).reshape(shape)
    return z.to(device) if device is not None else z


def bernoulli(k: Key, p: float | torch.Tensor = 0.5, shape: Shape | None = None) -> torch.Tensor:
    """Boolean samples, True with probability `p` (`shape` defaults to `p`'s shape)."""
    check_key(k)
    if shape is None:
        shape = tuple(p.shape) if isinstance(p, torch.Tensor) else ()
    u = uniform(k, shape, dtype=torch.float32)
    return u < p


def _bits62(k: Key, n: int) -> torch.Tensor:
    w = bits(k, 2 * n).reshape(n, 2)
    return ((w[:, 0] & 0x3FFFFFFF) << 32) | w[:, 1]


def randint(k: Key, shape: Shape, low: int, high: int, *, dtype: torch.dtype = torch.int64,
            device: torch.device | str | None = None) -> torch.Tensor:
    """Integers uniform in `[low, high)` (62 random bits reduced modulo the span: bias < span / 2**62)."""
    check_key(k)
    if not high > low:
        raise PRNGKeyError(f"randint: need high > low, got low={low}, high={high}")
    shape = _shape(shape)
    v = _bits62(k, math.prod(shape)) % (high - low) + low
    v = v.to(dtype).reshape(shape)
    return v.to(device) if device is not None else v


def permutation(k: Key, x: int | torch.Tensor) -> torch.Tensor:
    """A random permutation of `range(x)`, or of a tensor's rows (dim 0)."""
    check_key(k)
    n = x if isinstance(x, int) else x.shape[0]
    perm = torch.argsort(_bits62(k, n), stable=True)
    return perm if isinstance(x, int) else x[perm]


def gumbel(k: Key, shape: Shape = (), *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard Gumbel samples `-log(-log(u))`, computed in float64."""
    check_key(k)
    shape = _shape(shape)
    u = _uniform01(k, math.prod(shape), torch.float64).clamp_min(2.0**-53)
    return (-torch.log(-torch.log(u))).to(dtype).reshape(shape)


def categorical(k: Key, logits: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Samples of class indices from unnormalized `logits` along `dim` (Gumbel-max)."""
    check_key(k)
    g = gumbel(k, logits.shape, dtype=torch.float64).to(logits.device)
    return torch.argmax(logits.to(torch.float64) + g, dim=dim)
