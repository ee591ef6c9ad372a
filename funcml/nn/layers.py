"""Pure layers: each is a pair `init_<name>(key, ...) -> params` and `<name>(params, x, ...) -> y`.

    params = init_conv2d(key, 3, 16, 3)                  # {"w": [16, 3, 3, 3], "b": [16]}
    y = conv2d(params, x, padding="same")                # x: [B, 3, H, W] -> y: [B, 16, H, W]

`params` is a dict of tensors (a pytree); nothing is stored on a module and nothing is
mutated, so a layer can be differentiated with `torch.func.grad`, batched over stacked
params with `torch.func.vmap`, and compiled. Hyper-parameters that do not live in a tensor
(`stride`, `groups`, ...) are arguments of the apply function. Layouts follow torch
(`F.conv2d`: channels first), except dense weights, which are `[din, dout]` so that the
layer reads `y = x @ w + b`.

Every apply function checks the shapes of its inputs and parameters and raises a
`ShapeError` naming the layer, the argument, the expected and the actual shape, e.g.
`conv2d: x: expected shape [b c=3 h w], got [2, 4, 8, 8] (...)`.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from .. import random
from ..checks import check_dtype, check_shape, host_readable
from ..errors import ConfigError, RangeError, ShapeError
from . import init as _init
from .model import require_key

__all__ = [
    "init_dense",
    "dense",
    "init_conv1d",
    "conv1d",
    "init_conv2d",
    "conv2d",
    "init_depthwise_conv1d",
    "depthwise_conv1d",
    "init_conv_transpose2d",
    "conv_transpose2d",
    "init_embedding",
    "embedding",
    "relu",
    "gelu",
    "silu",
    "leaky_relu",
    "activation",
    "dropout",
]

Params = dict[str, torch.Tensor]
Device = torch.device | str | None
IntOrPair = int | tuple[int, int]


# --------------------------------------------------------------------------- helpers


def _pair(v: IntOrPair, what: str, layer: str) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    if isinstance(v, Sequence) and len(v) == 2 and all(isinstance(i, int) for i in v):
        return (int(v[0]), int(v[1]))
    raise ConfigError(f"{layer}: {what} must be an int or a pair of ints, got {v!r}")


def _check_groups(layer: str, groups: int, **channels: int) -> None:
    if not isinstance(groups, int) or groups < 1:
        raise ConfigError(f"{layer}: groups must be a positive int, got {groups!r}")
    for name, c in channels.items():
        if c % groups:
            raise ConfigError(f"{layer}: {name}={c} is not divisible by groups={groups}")


def _weight(key: torch.Tensor, shape: tuple[int, ...], layout: str, w_init, dtype: torch.dtype,
            device: Device) -> torch.Tensor:
    fan_in, fan_out = _init.fan_in_out(shape, layout)
    return _init.get(w_init)(key, shape, fan_in, fan_out, dtype=dtype, device=device)


def _check_bias(layer: str, params: Params, cout: int) -> torch.Tensor | None:
    b = params.get("b")
    if b is not None:
        check_shape(b, "cout", name=f"{layer}: params['b']", cout=cout)
    return b


def _check_conv_padding(layer: str, padding, stride) -> None:
    if isinstance(padding, str):
        if padding not in ("same", "valid") and not (padding == "causal" and layer.endswith("1d")):
            allowed = "'same', 'valid', 'causal'" if layer.endswith("1d") else "'same', 'valid'"
            raise ConfigError(f"{layer}: padding must be an int, a tuple or one of {allowed}, got {padding!r}")
        strides = (stride,) if isinstance(stride, int) else tuple(stride)
        if padding == "same" and any(s != 1 for s in strides):
            raise ConfigError(f"{layer}: padding='same' needs stride 1, got stride={stride}; "
                              "pass an explicit padding for strided convolutions")


# --------------------------------------------------------------------------- dense


def init_dense(key: torch.Tensor, din: int, dout: int, *, bias: bool = True, w_init: str | Callable = "xavier_uniform",
               dtype: torch.dtype = torch.float32, device: Device = None) -> Params:
    """Parameters of an affine map `R^din -> R^dout`.

    Returns: `{"w": [din, dout], "b": [dout]}` (no `"b"` when `bias=False`); `w` from
    `w_init` (a name of `funcml.nn.init.get` or an initializer), `b` zeros.
    """
    params = {"w": _weight(key, (din, dout), "dense", w_init, dtype, device)}
    if bias:
        params["b"] = _init.zeros((dout,), dtype=dtype, device=device)
    return params


def dense(params: Params, x: torch.Tensor) -> torch.Tensor:
    """`y = x @ w + b`.

    x: `[..., din]` -> y: `[..., dout]`.
    """
    dims = check_shape(params["w"], "din dout", name="dense: params['w']")
    check_shape(x, "... din", name="dense: x", din=dims["din"])
    b = _check_bias("dense", params, dims["dout"])
    return F.linear(x, params["w"].mT, b)


# --------------------------------------------------------------------------- convolutions


def init_conv1d(key: torch.Tensor, cin: int, cout: int, kernel_size: int, *, groups: int = 1, bias: bool = True,
                w_init: str | Callable = "kaiming_uniform", dtype: torch.dtype = torch.float32,
                device: Device = None) -> Params:
    """Parameters of a 1-D convolution.

    Returns: `{"w": [cout, cin // groups, k], "b": [cout]}`; `w` from `w_init` with the
    conv fan-in `cin // groups * k`, `b` zeros.
    """
    _check_groups("init_conv1d", groups, cin=cin, cout=cout)
    params = {"w": _weight(key, (cout, cin // groups, kernel_size), "conv", w_init, dtype, device)}
    if bias:
        params["b"] = _init.zeros((cout,), dtype=dtype, device=device)
    return params


def _conv1d(layer: str, params: Params, x: torch.Tensor, stride: int, padding, dilation: int,
            groups: int) -> torch.Tensor:
    _check_conv_padding(layer, padding, stride)
    wd = check_shape(params["w"], "cout cin_g k", name=f"{layer}: params['w']")
    _check_groups(layer, groups, cout=wd["cout"])
    check_shape(x, "b c t", name=f"{layer}: x", c=wd["cin_g"] * groups)
    b = _check_bias(layer, params, wd["cout"])
    if padding == "causal":
        # Left-pad so that y[t] sees x[<= t] only: (k - 1) * dilation zeros before the start.
        x = F.pad(x, ((wd["k"] - 1) * dilation, 0))
        padding = 0
    return F.conv1d(x, params["w"], b, stride=stride, padding=padding, dilation=dilation, groups=groups)


def conv1d(params: Params, x: torch.Tensor, *, stride: int = 1, padding: int | str = 0, dilation: int = 1,
           groups: int = 1) -> torch.Tensor:
    """1-D cross-correlation (`F.conv1d`):

        y[b, o, t] = b[o] + sum_{i, j} w[o, i, j] * x_pad[b, g(o) * cin_g + i, stride * t + dilation * j]

    x: `[B, cin, T]` -> y: `[B, cout, T']`. `padding`: an int (both sides), `"valid"` (0),
    `"same"` (stride 1 only; T' = T) or `"causal"` (`(k - 1) * dilation` zeros on the left
    only, so `y[t]` depends on `x[<= t]`; T' = T at stride 1).
    """
    return _conv1d("conv1d", params, x, stride, padding, dilation, groups)


def init_depthwise_conv1d(key: torch.Tensor, channels: int, kernel_size: int, *, bias: bool = False,
                          w_init: str | Callable = "kaiming_uniform", dtype: torch.dtype = torch.float32,
                          device: Device = None) -> Params:
    """Parameters of a depthwise 1-D convolution (one filter per channel, as in Conformer).

    Returns: `{"w": [C, 1, k]}` (and `"b": [C]` zeros when `bias=True`).
    """
    return init_conv1d(key, channels, channels, kernel_size, groups=channels, bias=bias, w_init=w_init,
                       dtype=dtype, device=device)


def depthwise_conv1d(params: Params, x: torch.Tensor, *, padding: int | str, stride: int = 1,
                     dilation: int = 1) -> torch.Tensor:
    """Depthwise 1-D convolution: `conv1d` with `groups = C`, each channel filtered alone.

    x: `[B, C, T]` -> y: `[B, C, T']`; `padding` as in `conv1d` (`"same"`, `"causal"`, int).
    """
    wd = check_shape(params["w"], "c 1 k", name="depthwise_conv1d: params['w']")
    check_shape(x, "b c t", name="depthwise_conv1d: x", c=wd["c"])
    return _conv1d("depthwise_conv1d", params, x, stride, padding, dilation, wd["c"])


def init_conv2d(key: torch.Tensor, cin: int, cout: int, kernel_size: IntOrPair, *, groups: int = 1,
                bias: bool = True, w_init: str | Callable = "kaiming_uniform", dtype: torch.dtype = torch.float32,
                device: Device = None) -> Params:
    """Parameters of a 2-D convolution.

    Returns: `{"w": [cout, cin // groups, kh, kw], "b": [cout]}`; `w` from `w_init` with
    the conv fan-in `cin // groups * kh * kw`, `b` zeros.
    """
    _check_groups("init_conv2d", groups, cin=cin, cout=cout)
    kh, kw = _pair(kernel_size, "kernel_size", "init_conv2d")
    params = {"w": _weight(key, (cout, cin // groups, kh, kw), "conv", w_init, dtype, device)}
    if bias:
        params["b"] = _init.zeros((cout,), dtype=dtype, device=device)
    return params


def conv2d(params: Params, x: torch.Tensor, *, stride: IntOrPair = 1, padding: IntOrPair | str = 0,
           dilation: IntOrPair = 1, groups: int = 1) -> torch.Tensor:
    """2-D cross-correlation (`F.conv2d`):

        y[b, o, i, j] = b[o] + sum_{c, u, v} w[o, c, u, v]
                        * x_pad[b, g(o) * cin_g + c, stride * i + dilation * u, stride * j + dilation * v]

    x: `[B, cin, H, W]` -> y: `[B, cout, H', W']`, `H' = floor((H + 2p - d (k - 1) - 1) / s) + 1`.
    `padding`: int or pair, `"valid"`, or `"same"` (stride 1 only).
    """
    _check_conv_padding("conv2d", padding, stride)
    wd = check_shape(params["w"], "cout cin_g kh kw", name="conv2d: params['w']")
    _check_groups("conv2d", groups, cout=wd["cout"])
    check_shape(x, "b c h w", name="conv2d: x", c=wd["cin_g"] * groups)
    b = _check_bias("conv2d", params, wd["cout"])
    return F.conv2d(x, params["w"], b, stride=stride, padding=padding, dilation=dilation, groups=groups)


def init_conv_transpose2d(key: torch.Tensor, cin: int, cout: int, kernel_size: IntOrPair, *, groups: int = 1,
                          bias: bool = True, w_init: str | Callable = "kaiming_uniform",
                          dtype: torch.dtype = torch.float32, device: Device = None) -> Params:
    """Parameters of a 2-D transposed convolution (torch's layout).

    Returns: `{"w": [cin, cout // groups, kh, kw], "b": [cout]}`; `w` from `w_init` with
    fan-in `cin * kh * kw` (see `funcml.nn.init.fan_in_out`), `b` zeros.
    """
    _check_groups("init_conv_transpose2d", groups, cin=cin, cout=cout)
    kh, kw = _pair(kernel_size, "kernel_size", "init_conv_transpose2d")
    params = {"w": _weight(key, (cin, cout // groups, kh, kw), "conv_transpose", w_init, dtype, device)}
    if bias:
        params["b"] = _init.zeros((cout,), dtype=dtype, device=device)
    return params


def conv_transpose2d(params: Params, x: torch.Tensor, *, stride: IntOrPair = 1, padding: IntOrPair = 0,
                     output_padding: IntOrPair = 0, groups: int = 1, dilation: IntOrPair = 1) -> torch.Tensor:
    """2-D transposed convolution (`F.conv_transpose2d`), the adjoint of `conv2d`'s map:
    each input pixel scatters `x[b, c, i, j] * w[c, :, :, :]` to the output at
    `(stride * i + dilation * u - padding, stride * j + dilation * v - padding)`.

    x: `[B, cin, H, W]` -> y: `[B, cout, H', W']`,
    `H' = (H - 1) s - 2p + d (k - 1) + output_padding + 1`.
    """
    if isinstance(padding, str):
        raise ConfigError(f"conv_transpose2d: padding must be an int or a pair of ints, got {padding!r}")
    wd = check_shape(params["w"], "cin cout_g kh kw", name="conv_transpose2d: params['w']")
    _check_groups("conv_transpose2d", groups, cin=wd["cin"])
    check_shape(x, "b c h w", name="conv_transpose2d: x", c=wd["cin"])
    b = _check_bias("conv_transpose2d", params, wd["cout_g"] * groups)
    return F.conv_transpose2d(x, params["w"], b, stride=stride, padding=padding, output_padding=output_padding,
                              groups=groups, dilation=dilation)


# --------------------------------------------------------------------------- embedding


def init_embedding(key: torch.Tensor, vocab: int, dim: int, *, std: float = 1.0, dtype: torch.dtype = torch.float32,
                   device: Device = None) -> Params:
    """A lookup table `{"table": [V, D]}` with entries `~ N(0, std^2)` (torch's default std is 1)."""
    return {"table": _init.normal(key, (vocab, dim), std, dtype=dtype, device=device)}


def embedding(params: Params, ids: torch.Tensor) -> torch.Tensor:
    """`y[..., :] = table[ids[...], :]`.

    ids: `[...]` integer in `[0, V)` -> y: `[..., D]`. An id outside `[0, V)` raises a
    `RangeError` naming it (checked where reading is free, `funcml.checks.host_readable`: eager
    on the CPU; a traced or CUDA call relies on the indexing op's own bounds check).
    """
    dims = check_shape(params["table"], "v d", name="embedding: params['table']")
    if not isinstance(ids, torch.Tensor):
        raise ShapeError(f"embedding: ids: expected an integer tensor, got {type(ids).__name__}")
    check_dtype(ids, "int", name="embedding: ids")
    if ids.numel() and host_readable(ids):
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= dims["v"]:
            bad = lo if lo < 0 else hi
            raise RangeError(f"embedding: ids must lie in [0, {dims['v']}) (the table's vocabulary size), "
                             f"got id {bad}; check the tokenizer's vocab size against the model config")
    return F.embedding(ids, params["table"])


# --------------------------------------------------------------------------- activations


def relu(x: torch.Tensor) -> torch.Tensor:
    """`max(x, 0)`, element-wise (any shape)."""
    return F.relu(x)


def gelu(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """`x * Phi(x)` (Hendrycks & Gimpel, 2016); `approximate="tanh"` uses
    `0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))`. Element-wise (any shape)."""
    if approximate not in ("none", "tanh"):
        raise ConfigError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    return F.gelu(x, approximate=approximate)


def silu(x: torch.Tensor) -> torch.Tensor:
    """`x * sigmoid(x)` (a.k.a. swish; Ramachandran et al., 2017), element-wise (any shape)."""
    return F.silu(x)


def leaky_relu(x: torch.Tensor, negative_slope: float = 0.01) -> torch.Tensor:
    """`x` if `x >= 0` else `negative_slope * x`, element-wise (any shape)."""
    return F.leaky_relu(x, negative_slope)


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": relu,
    "gelu": gelu,
    "gelu_tanh": _gelu_tanh,
    "silu": silu,
    "swish": silu,
    "leaky_relu": leaky_relu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "identity": _identity,
}


def activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The activation function called `name` (for configs): relu, gelu, gelu_tanh, silu,
    swish, leaky_relu, tanh, sigmoid, identity."""
    if name not in _ACTIVATIONS:
        raise ConfigError(f"unknown activation {name!r}; expected one of {sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]


# --------------------------------------------------------------------------- dropout


def dropout(key: torch.Tensor | None, x: torch.Tensor, rate: float, *, train: bool) -> torch.Tensor:
    """Inverted dropout (Srivastava et al., 2014): `y = x * m / (1 - rate)`, `m ~ Bernoulli(1 - rate)`.

    x: `[...]` -> y: same shape. The mask is `funcml.random.bernoulli(key, 1 - rate, x.shape)`,
    so the same key gives the same mask; scaling by `1 / (1 - rate)` keeps `E[y] = x`.
    Identity (returns `x`) when `train` is False or `rate == 0`.

    Raises: `ConfigError` for a rate outside `[0, 1)`; `PRNGKeyError` when training with
    `rate > 0` and no key.
    """
    if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not 0.0 <= rate < 1.0:
        raise ConfigError(f"dropout: rate must be a number in [0, 1), got {rate!r}")
    if not isinstance(x, torch.Tensor):
        raise ShapeError(f"dropout: x: expected a tensor, got {type(x).__name__}")
    if not train or rate == 0.0:
        return x
    require_key(key, train=True, needs_key=True, model="dropout", why=f"rate={rate}", call="dropout")
    keep = 1.0 - rate
    mask = random.bernoulli(key, keep, tuple(x.shape)).to(x.device)
    return torch.where(mask, x / keep, torch.zeros((), dtype=x.dtype, device=x.device))
