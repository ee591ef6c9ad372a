"""Parameter initializers: pure functions of an explicit key.

    w = init.kaiming_uniform(key, (cout, cin, 3, 3), fan_in=cin * 9)
    fan_in, fan_out = init.fan_in_out((din, dout), layout="dense")
    w = init.get("xavier_uniform")(key, (din, dout), fan_in, fan_out, dtype=torch.float32, device=None)

Every sample comes from `funcml.random`, so the same key gives the same bits on any device
and the global RNG is never touched. The gain and bound formulas follow `torch.nn.init`:

* Glorot & Bengio (2010), "Understanding the difficulty of training deep feedforward
  neural networks": `xavier_uniform ~ U(-a, a)`, `a = gain * sqrt(6 / (fan_in + fan_out))`;
  `xavier_normal ~ N(0, std^2)`, `std = gain * sqrt(2 / (fan_in + fan_out))`.
* He et al. (2015), "Delving deep into rectifiers": `kaiming_uniform ~ U(-b, b)`,
  `b = gain * sqrt(3 / fan_in)`; `kaiming_normal ~ N(0, std^2)`, `std = gain / sqrt(fan_in)`,
  with `gain = sqrt(2)` for relu, `sqrt(2 / (1 + a^2))` for leaky_relu, 1 for linear.
"""

from __future__ import annotations

import math
from typing import Protocol, Sequence

import torch

from .. import random
from ..errors import ConfigError, ShapeError

__all__ = [
    "zeros",
    "ones",
    "normal",
    "trunc_normal",
    "uniform",
    "xavier_uniform",
    "xavier_normal",
    "kaiming_uniform",
    "kaiming_normal",
    "gain",
    "fan_in_out",
    "get",
    "Initializer",
]

Shape = int | Sequence[int] | torch.Size
Device = torch.device | str | None


class Initializer(Protocol):
    """The common signature `get(name)` returns and the layers' `w_init=` accepts."""

    def __call__(self, key: torch.Tensor, shape: Shape, fan_in: int, fan_out: int, *,
                 dtype: torch.dtype, device: Device) -> torch.Tensor: ...


def _shape(shape: Shape) -> tuple[int, ...]:
    return (int(shape),) if isinstance(shape, int) else tuple(int(s) for s in shape)


def _to(x: torch.Tensor, device: Device) -> torch.Tensor:
    return x if device is None else x.to(device)


def _check_fan(fn: str, **fans: int) -> None:
    for name, fan in fans.items():
        if not fan > 0:
            raise ConfigError(f"{fn}: {name} must be > 0, got {fan}")


def zeros(shape: Shape, *, dtype: torch.dtype = torch.float32, device: Device = None) -> torch.Tensor:
    """All zeros (biases, the last layer of a residual branch)."""
    return torch.zeros(_shape(shape), dtype=dtype, device=device)


def ones(shape: Shape, *, dtype: torch.dtype = torch.float32, device: Device = None) -> torch.Tensor:
    """All ones (normalization scales)."""
    return torch.ones(_shape(shape), dtype=dtype, device=device)


def normal(key: torch.Tensor, shape: Shape, std: float = 1.0, *, dtype: torch.dtype = torch.float32,
           device: Device = None) -> torch.Tensor:
    """`N(0, std^2)` samples."""
    return _to(std * random.normal(key, _shape(shape), dtype=dtype), device)


def trunc_normal(key: torch.Tensor, shape: Shape, std: float = 0.02, *, lower: float = -2.0, upper: float = 2.0,
                 dtype: torch.dtype = torch.float32, device: Device = None) -> torch.Tensor:
    """`std * z` with `z ~ N(0, 1)` truncated to `[lower, upper]` (bounds in units of `std`).

    This is the BERT / ViT / flax convention: with the default bounds `[-2, 2]` the sample
    standard deviation is `std * sqrt(1 - 2 * 2 * phi(2) / (2 * Phi(2) - 1)) ~= 0.88 * std`.
    (`torch.nn.init.trunc_normal_` takes *absolute* bounds instead.)
    """
    return _to(std * random.truncated_normal(key, _shape(shape), lower, upper, dtype=dtype), device)


def uniform(key: torch.Tensor, shape: Shape, bound: float, *, dtype: torch.dtype = torch.float32,
            device: Device = None) -> torch.Tensor:
    """`U(-bound, bound)` samples."""
    if not bound > 0:
        raise ConfigError(f"uniform: bound must be > 0, got {bound}")
    return _to(random.uniform(key, _shape(shape), -bound, bound, dtype=dtype), device)


def gain(nonlinearity: str = "linear", a: float = 0.0) -> float:
    """The recommended gain of `torch.nn.init.calculate_gain`.

    linear / conv / sigmoid: 1; tanh: 5/3; relu: sqrt(2); leaky_relu: sqrt(2 / (1 + a^2))
    with `a` the negative slope; selu: 3/4.
    """
    gains = {"linear": 1.0, "conv": 1.0, "sigmoid": 1.0, "tanh": 5.0 / 3.0, "relu": math.sqrt(2.0), "selu": 0.75}
    if nonlinearity == "leaky_relu":
        return math.sqrt(2.0 / (1.0 + a * a))
    if nonlinearity not in gains:
        raise ConfigError(f"gain: unknown nonlinearity {nonlinearity!r}; expected one of "
                          f"{sorted([*gains, 'leaky_relu'])}")
    return gains[nonlinearity]


def xavier_uniform(key: torch.Tensor, shape: Shape, fan_in: int, fan_out: int, gain: float = 1.0, *,
                   dtype: torch.dtype = torch.float32, device: Device = None) -> torch.Tensor:
    """Glorot uniform: `U(-a, a)`, `a = gain * sqrt(6 / (fan_in + fan_out))`."""
    _check_fan("xavier_uniform", fan_in=fan_in, fan_out=fan_out)
    return uniform(key, shape, gain * math.sqrt(6.0 / (fan_in + fan_out)), dtype=dtype, device=device)


def xavier_normal(key: torch.Tensor, shape: Shape, fan_in: int, fan_out: int, gain: float = 1.0, *,
                  dtype: torch.dtype = torch.float32, device: Device = None) -> torch.Tensor:
    """Glorot normal: `N(0, std^2)`, `std = gain * sqrt(2 / (fan_in + fan_out))`."""
    _check_fan("xavier_normal", fan_in=fan_in, fan_out=fan_out)
    return normal(key, shape, gain * math.sqrt(2.0 / (fan_in + fan_out)), dtype=dtype, device=device)


def kaiming_uniform(key: torch.Tensor, shape: Shape, fan_in: int, nonlinearity: str = "relu", a: float = 0.0, *,
                    dtype: torch.dtype = torch.float32, device: Device = None) -> torch.Tensor:
    """He uniform (fan-in mode): `U(-b, b)`, `b = gain(nonlinearity, a) * sqrt(3 / fan_in)`."""
    _check_fan("kaiming_uniform", fan_in=fan_in)
    return uniform(key, shape, gain(nonlinearity, a) * math.sqrt(3.0 / fan_in), dtype=dtype, device=device)


def kaiming_normal(key: torch.Tensor, shape: Shape, fan_in: int, nonlinearity: str = "relu", a: float = 0.0, *,
                   dtype: torch.dtype = torch.float32, device: Device = None) -> torch.Tensor:
    """He normal (fan-in mode): `N(0, std^2)`, `std = gain(nonlinearity, a) / sqrt(fan_in)`."""
    _check_fan("kaiming_normal", fan_in=fan_in)
    return normal(key, shape, gain(nonlinearity, a) / math.sqrt(fan_in), dtype=dtype, device=device)


def fan_in_out(shape: Shape, layout: str = "dense") -> tuple[int, int]:
    """`(fan_in, fan_out)` of a weight of the given layout.

    * `"dense"`: `w: [..., din, dout]` (leading dims are stacked layers) -> `(din, dout)`.
    * `"conv"`: `w: [cout, cin / groups, *kernel]` -> `(cin / groups * k, cout * k)` with
      `k = prod(kernel)`, as `torch.nn.init` computes it.
    * `"conv_transpose"`: `w: [cin, cout / groups, *kernel]` -> `(cin * k, cout / groups * k)`:
      each output position of a stride-1 transposed convolution sums `cin * k` products, so
      that is its fan-in. (`torch.nn.init` reads this layout as if it were `"conv"`, i.e. with
      fan-in and fan-out swapped.)
    """
    shape = _shape(shape)
    if layout == "dense":
        if len(shape) < 2:
            raise ShapeError(f"fan_in_out: a dense weight needs shape [... din dout], got {list(shape)}")
        return shape[-2], shape[-1]
    if layout in ("conv", "conv_transpose"):
        if len(shape) < 3:
            raise ShapeError(f"fan_in_out: a {layout} weight needs shape [c0 c1 *kernel], got {list(shape)}")
        k = math.prod(shape[2:])
        if layout == "conv":
            return shape[1] * k, shape[0] * k
        return shape[0] * k, shape[1] * k
    raise ConfigError(f"fan_in_out: unknown layout {layout!r}; expected 'dense', 'conv' or 'conv_transpose'")


_BY_NAME: dict[str, Initializer] = {
    "zeros": lambda key, shape, fan_in, fan_out, *, dtype, device: zeros(shape, dtype=dtype, device=device),
    "ones": lambda key, shape, fan_in, fan_out, *, dtype, device: ones(shape, dtype=dtype, device=device),
    "normal": lambda key, shape, fan_in, fan_out, *, dtype, device: normal(key, shape, dtype=dtype, device=device),
    "trunc_normal": lambda key, shape, fan_in, fan_out, *, dtype, device: trunc_normal(
        key, shape, dtype=dtype, device=device),
    "xavier_uniform": lambda key, shape, fan_in, fan_out, *, dtype, device: xavier_uniform(
        key, shape, fan_in, fan_out, dtype=dtype, device=device),
    "xavier_normal": lambda key, shape, fan_in, fan_out, *, dtype, device: xavier_normal(
        key, shape, fan_in, fan_out, dtype=dtype, device=device),
    "kaiming_uniform": lambda key, shape, fan_in, fan_out, *, dtype, device: kaiming_uniform(
        key, shape, fan_in, dtype=dtype, device=device),
    "kaiming_normal": lambda key, shape, fan_in, fan_out, *, dtype, device: kaiming_normal(
        key, shape, fan_in, dtype=dtype, device=device),
    "lecun_normal": lambda key, shape, fan_in, fan_out, *, dtype, device: kaiming_normal(
        key, shape, fan_in, "linear", dtype=dtype, device=device),
}


def get(name: str | Initializer) -> Initializer:
    """Look an initializer up by name, with its default hyper-parameters.

    Names: zeros, ones, normal (std 1), trunc_normal (std 0.02), xavier_uniform,
    xavier_normal, kaiming_uniform, kaiming_normal (relu gain), lecun_normal (linear gain).
    A callable `(key, shape, fan_in, fan_out, *, dtype, device) -> Tensor` is returned as is,
    so `w_init=` accepts custom initializers (e.g. a `functools.partial` wrapper).
    """
    if callable(name):
        return name
    if name not in _BY_NAME:
        raise ConfigError(f"unknown initializer {name!r}; expected one of {sorted(_BY_NAME)} "
                          "or a callable (key, shape, fan_in, fan_out, *, dtype, device) -> Tensor")
    return _BY_NAME[name]

