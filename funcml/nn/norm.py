"""Normalization layers: LayerNorm, GroupNorm, InstanceNorm and a functional BatchNorm.

    params = init_layer_norm(512)                        # {"scale": ones[512], "bias": zeros[512]}
    y = layer_norm(params, x)                            # x: [..., 512]

    params, state = init_batch_norm(64)                  # state: {"mean": zeros[64], "var": ones[64]}
    y, state = batch_norm(params, state, x, train=True)  # x: [B, 64, H, W]; returns NEW running stats

All of them compute, over a set S of positions that depends on the layer,

    y = (x - mean_S(x)) / sqrt(var_S(x) + eps) * scale + bias      (var biased: divide by |S|)

with one `scale` and `bias` per feature (LayerNorm: the last dim; the others: the channel
dim C of `[B, C, ...]`):

* LayerNorm (Ba et al., 2016): S = the last dim of each position.
* GroupNorm (Wu & He, 2018): S = the channels of one group and all spatial positions, per sample.
* InstanceNorm (Ulyanov et al., 2016): S = the spatial positions of one channel, per sample
  (GroupNorm with one channel per group).
* BatchNorm (Ioffe & Szegedy, 2015): S = the batch and spatial positions of one channel.
  Its running statistics are explicit state, taken and returned, never mutated.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..checks import check_shape
from .. import _eager
from ..errors import ConfigError, ShapeError
from . import init as _init

__all__ = [
    "init_layer_norm",
    "layer_norm",
    "init_group_norm",
    "group_norm",
    "init_instance_norm",
    "instance_norm",
    "init_batch_norm",
    "batch_norm",
]

Params = dict[str, torch.Tensor]
Device = torch.device | str | None


def _affine(dim: int, dtype: torch.dtype, device: Device) -> Params:
    return {"scale": _init.ones((dim,), dtype=dtype, device=device),
            "bias": _init.zeros((dim,), dtype=dtype, device=device)}


def _affine_dim(layer: str, params: Params) -> int:
    """The feature size of `params` ({"scale": [C], "bias": [C]})."""
    dims = check_shape(params["scale"], "c", name=f"{layer}: params['scale']")
    check_shape(params["bias"], "c", name=f"{layer}: params['bias']", **dims)
    return dims["c"]


def _check_channels_first(layer: str, x: torch.Tensor, channels: int, min_rank: int = 2) -> None:
    """Check `x: [B, C, ...]` with `C = channels` and rank >= `min_rank`."""
    if not isinstance(x, torch.Tensor) or x.ndim < min_rank:
        got = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        spec = f"b c={channels}" + " _" * (min_rank - 2) + " ..."
        raise ShapeError(f"{layer}: x: expected shape [{spec}] (rank >= {min_rank}), got {got}")
    check_shape(x, "b c" + " _" * (x.ndim - 2), name=f"{layer}: x", c=channels)


def _per_channel(v: torch.Tensor, ndim: int) -> torch.Tensor:
    # [C] -> [C, 1, ..., 1]: broadcasts against the trailing ndim - 1 dims of [B, C, ...].
    return v.reshape(v.shape + (1,) * (ndim - 2))


def _check_eps(layer: str, eps: float) -> None:
    if not eps > 0:
        raise ConfigError(f"{layer}: eps must be > 0, got {eps}")


# --------------------------------------------------------------------------- LayerNorm


def init_layer_norm(dim: int, *, dtype: torch.dtype = torch.float32, device: Device = None) -> Params:
    """`{"scale": ones[D], "bias": zeros[D]}`."""
    return _affine(dim, dtype, device)


def layer_norm(params: Params, x: torch.Tensor, *, eps: float = 1e-5) -> torch.Tensor:
    """LayerNorm over the last dim: `y = (x - mean(x)) / sqrt(var(x) + eps) * scale + bias`.

    x: `[..., D]` -> y: `[..., D]`; mean and (biased) var over D, per position.
    """
    _check_eps("layer_norm", eps)
    d = _affine_dim("layer_norm", params)
    check_shape(x, "... d", name="layer_norm: x", d=d)
    return F.layer_norm(x, (d,), params["scale"], params["bias"], eps)


# --------------------------------------------------------------------------- GroupNorm / InstanceNorm


def init_group_norm(channels: int, *, dtype: torch.dtype = torch.float32, device: Device = None) -> Params:
    """`{"scale": ones[C], "bias": zeros[C]}`."""
    return _affine(channels, dtype, device)


def group_norm(params: Params, x: torch.Tensor, *, groups: int, eps: float = 1e-5) -> torch.Tensor:
    """GroupNorm: the C channels are split into `groups` groups of `C / groups` consecutive
    channels; each (sample, group) is normalized over its channels and spatial positions,
    then `* scale[c] + bias[c]`.

    x: `[B, C, ...]` -> y: same shape.
    """
    _check_eps("group_norm", eps)
    c = _affine_dim("group_norm", params)
    _check_channels_first("group_norm", x, c)
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1 or c % groups:
        raise ConfigError(f"group_norm: groups must be a positive divisor of C={c}, got {groups!r}")
    return F.group_norm(x, groups, params["scale"], params["bias"], eps)


def init_instance_norm(channels: int, *, dtype: torch.dtype = torch.float32, device: Device = None) -> Params:
    """`{"scale": ones[C], "bias": zeros[C]}`."""
    return _affine(channels, dtype, device)


def instance_norm(params: Params, x: torch.Tensor, *, eps: float = 1e-5) -> torch.Tensor:
    """InstanceNorm: each (sample, channel) normalized over its spatial positions, then
    `* scale[c] + bias[c]` (as `nn.InstanceNorm2d(C, affine=True)`; no running statistics).

    x: `[B, C, *spatial]` (at least one spatial dim) -> y: same shape.
    """
    _check_eps("instance_norm", eps)
    c = _affine_dim("instance_norm", params)
    _check_channels_first("instance_norm", x, c, min_rank=3)
    return F.group_norm(x, c, params["scale"], params["bias"], eps)


# --------------------------------------------------------------------------- BatchNorm


def init_batch_norm(channels: int, *, dtype: torch.dtype = torch.float32,
                    device: Device = None) -> tuple[Params, dict[str, torch.Tensor]]:
    """`(params, state)`: params `{"scale": ones[C], "bias": zeros[C]}`, running statistics
    state `{"mean": zeros[C], "var": ones[C]}`."""
    state = {"mean": _init.zeros((channels,), dtype=dtype, device=device),
             "var": _init.ones((channels,), dtype=dtype, device=device)}
    return _affine(channels, dtype, device), state


def batch_norm(params: Params, state: dict[str, torch.Tensor], x: torch.Tensor, *, train: bool,
               momentum: float = 0.1, eps: float = 1e-5) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """BatchNorm over the batch and spatial dims, per channel (Ioffe & Szegedy, 2015).

    x: `[B, C, ...]` -> `(y, new_state)`, y of x's shape.

    Training: with `mu`, `sigma^2` the mean and biased variance of channel c over the
    `n = B * prod(spatial)` values of the batch,

        y = (x - mu) / sqrt(sigma^2 + eps) * scale + bias
        new_mean = (1 - momentum) * mean + momentum * mu
        new_var  = (1 - momentum) * var  + momentum * sigma^2 * n / (n - 1)    (unbiased, as torch)

    Gradients flow through `mu` and `sigma^2`; the new running statistics are detached.
    Evaluation: `y = (x - mean) / sqrt(var + eps) * scale + bias` and the state is returned
    unchanged (a new dict holding the same tensors). `state` is never mutated. y has x's
    dtype; the statistics are computed in at least float32.

    Training runs torch's fused kernel, `torch.native_batch_norm`: two passes over x forward
    and two backward, where the same formula written with `var_mean` and elementwise ops takes
    about ten (measured: see benchmarks/RESULTS.md, "Performance work: before and after"). Eagerly the
    kernel also updates the running statistics, on copies of `state` made for the purpose
    (`funcml._eager.batch_norm_train`);
    traced or inside a torch.func transform it gets no running statistics and the new state
    is computed from the `mu` and `1 / sqrt(sigma^2 + eps)` it returns (equal to float32
    rounding; nothing is mutated either way).
    It has batching rules, so it is correct under `torch.func.vmap` over stacked params and
    state (an ensemble) and under `torch.func.grad`. Inputs whose dtype the kernel does not
    take with these params (float64 x with float32 params, say) use the same formula
    written with plain reductions (`_batch_norm_reference`).
    """
    _check_eps("batch_norm", eps)
    if not 0.0 <= momentum <= 1.0:
        raise ConfigError(f"batch_norm: momentum must be in [0, 1], got {momentum}")
    c = _affine_dim("batch_norm", params)
    for name in ("mean", "var"):
        check_shape(state[name], "c", name=f"batch_norm: state['{name}']", c=c)
    _check_channels_first("batch_norm", x, c)
    ndim = x.ndim
    if not train:
        scale, bias = _per_channel(params["scale"], ndim), _per_channel(params["bias"], ndim)
        inv_std = torch.rsqrt(_per_channel(state["var"], ndim) + eps)
        y = (x - _per_channel(state["mean"], ndim)) * inv_std * scale + bias
        return y.to(x.dtype), dict(state)

    n = x.numel() // c
    if n < 2:
        raise ShapeError(f"batch_norm: training needs more than one value per channel to estimate a variance, "
                         f"got x of shape {list(x.shape)}; use a batch of at least 2 (or train=False)")
    if _fused_ok(x, params["scale"]) and _eager.batch_norm_applies(state):  # the kernel updates copies of the stats
        return _eager.batch_norm_train(params, state, x, momentum=momentum, eps=eps)
    if _fused_ok(x, params["scale"]):
        # y, the batch mean and 1 / sqrt(sigma^2 + eps), statistics in float32 for bf16/fp16 x.
        y, mu, invstd = torch.native_batch_norm(x, params["scale"], params["bias"], None, None, True, 0.0, eps)
        mu, var = mu.detach(), (invstd.detach().pow(-2) - eps).clamp(min=0.0)
    else:
        y, mu, var = _batch_norm_reference(params, x, eps)
    new_state = {
        "mean": ((1.0 - momentum) * state["mean"] + momentum * mu).to(state["mean"].dtype),
        "var": ((1.0 - momentum) * state["var"] + momentum * var * (n / (n - 1))).to(state["var"].dtype),
    }
    return y, new_state


def _fused_ok(x: torch.Tensor, scale: torch.Tensor) -> bool:
    """Whether `torch.native_batch_norm` takes x with these params: the same float dtype,
    or a half-precision x with float32 params (autocast's mixed case)."""
    return x.dtype == scale.dtype or (x.dtype in (torch.bfloat16, torch.float16) and scale.dtype == torch.float32)


def _batch_norm_reference(params: Params, x: torch.Tensor, eps: float
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training BatchNorm from plain reductions: `(y, mu [C], sigma^2 [C])`, the statistics
    detached and in at least float32. The fused path's fallback, and its reference in tests."""
    ndim = x.ndim
    scale, bias = _per_channel(params["scale"], ndim), _per_channel(params["bias"], ndim)
    stat_dtype = torch.promote_types(x.dtype, torch.float32)
    var, mu = torch.var_mean(x.to(stat_dtype), dim=(0,) + tuple(range(2, ndim)), correction=0, keepdim=True)
    y = ((x.to(stat_dtype) - mu) * torch.rsqrt(var + eps) * scale + bias).to(x.dtype)
    return y, mu.detach().reshape(-1), var.detach().reshape(-1)
