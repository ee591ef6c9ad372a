"""The U-Net of `funcml.seg.unet` written as a conventional `torch.nn.Module`: a reference for
`bench_overhead.py`, not part of the library.

    net = UNetModule.from_funcml(cfg, params, state)          # funcml's weights, same math
    logits = net(x)                                           # x: [B, C, H, W] -> [B, K, H, W]
    params, state = to_funcml(net, like_params, like_state)   # and back, e.g. after training

It computes what `funcml.seg.unet.apply_unet` computes (see that module's docstring for the
equations): the same blocks `[conv3x3 -> norm -> act] x 2`, max-pooling, transposed-conv (or
1x1 conv + bilinear) up-sampling, skip-first concatenation, 1x1 head, bottom/right padding to
a multiple of `2^depth` and cropping back, the channels-last layout. The submodules carry
funcml's names, so a parameter's name is funcml's with torch's leaf names:

    funcml  enc.0.conv1.w   enc.0.norm1.scale   enc.0.norm1.bias   dec.1.up.b   (state) enc.0.norm1.mean
    module  enc.0.conv1.weight   enc.0.norm1.weight   enc.0.norm1.bias   dec.1.up.bias   enc.0.norm1.running_mean

The module is built on the meta device and only ever receives funcml's weights
(`from_funcml`), so it never draws from torch's global RNG. Dropout (which would need torch's
RNG) and the U-Net+Transformer are not reproduced.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from funcml import tree  # noqa: E402
from funcml.checks import check_shape  # noqa: E402
from funcml.errors import ConfigError, ShapeError  # noqa: E402
from funcml.seg.unet import UNetConfig  # noqa: E402

__all__ = ["UNetModule", "funcml_to_state_dict", "to_funcml"]

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "swish": nn.SiLU}
# funcml leaf name -> torch leaf name, for params and for BatchNorm state.
_PARAM_LEAVES = {"w": "weight", "b": "bias", "scale": "weight", "bias": "bias"}
_STATE_LEAVES = {"mean": "running_mean", "var": "running_var"}


def _norm(cfg: UNetConfig, channels: int) -> nn.Module | None:
    if cfg.norm == "batch":
        return nn.BatchNorm2d(channels, eps=1e-5, momentum=0.1)
    if cfg.norm == "group":
        return nn.GroupNorm(cfg.groups, channels, eps=1e-5)
    if cfg.norm == "instance":
        return nn.InstanceNorm2d(channels, eps=1e-5, affine=True, track_running_stats=False)
    return None


class _Block(nn.Module):
    """`[conv3x3 -> norm -> act] x 2`: `[B, cin, H, W] -> [B, cout, H, W]`."""

    def __init__(self, cfg: UNetConfig, cin: int, cout: int):
        super().__init__()
        bias = cfg.norm == "none"
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=bias)
        self.norm1 = _norm(cfg, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=bias)
        self.norm2 = _norm(cfg, cout)
        self.act = _ACTIVATIONS[cfg.activation]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv, norm in ((self.conv1, self.norm1), (self.conv2, self.norm2)):
            x = conv(x)
            if norm is not None:
                x = norm(x)
            x = self.act(x)
        return x


class _DecoderStage(_Block):
    """Up-sample `[B, w_{i+1}, h, w] -> [B, w_i, 2h, 2w]`, concatenate after the skip, then the block."""

    def __init__(self, cfg: UNetConfig, cin: int, cout: int):
        super().__init__(cfg, 2 * cout, cout)
        self.upsample = cfg.upsample
        self.up = nn.ConvTranspose2d(cin, cout, 2, stride=2) if cfg.upsample == "transpose" else nn.Conv2d(cin, cout, 1)

    def forward(self, z: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        up = self.up(z)
        if self.upsample == "bilinear":
            up = F.interpolate(up, scale_factor=2, mode="bilinear", align_corners=False)
        return super().forward(torch.cat([skip, up], dim=1))  # [B, 2 w_i, H_i, W_i]


class UNetModule(nn.Module):
    """`funcml.seg.unet` as an `nn.Module`; `forward(x: [B, C, H, W]) -> logits [B, K, H, W]`.

    Train/eval mode is the module's (`net.train()` / `net.eval()`): BatchNorm uses batch
    statistics and updates its running buffers in train mode, as `apply_unet(train=True)`
    returns new ones.
    """

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        if type(cfg) is not UNetConfig:
            raise ConfigError(f"UNetModule reproduces UNetConfig only, got {type(cfg).__name__}")
        if cfg.dropout > 0:
            raise ConfigError(f"UNetModule: dropout={cfg.dropout} would draw from torch's global RNG and could "
                              "not match funcml's keyed masks; use dropout=0")
        if cfg.activation not in _ACTIVATIONS:
            raise ConfigError(f"UNetModule: activation {cfg.activation!r} is not reproduced; "
                              f"use one of {sorted(_ACTIVATIONS)}")
        self.cfg = cfg
        self.enc = nn.ModuleDict()
        cin = cfg.in_channels
        for i in range(cfg.depth):
            self.enc[str(i)] = _Block(cfg, cin, cfg.width(i))
            cin = cfg.width(i)
        self.bottleneck = _Block(cfg, cin, cfg.bottleneck_width)
        self.dec = nn.ModuleDict({str(i): _DecoderStage(cfg, cfg.width(i + 1), cfg.width(i))
                                  for i in range(cfg.depth)})
        self.head = nn.Conv2d(cfg.width(0), cfg.num_classes, 1)

    @classmethod
    def from_funcml(cls, cfg: UNetConfig, params: Any, state: Any,
                    device: torch.device | str | None = None) -> "UNetModule":
        """A module holding copies of funcml's `params` and BatchNorm `state` (built on the meta
        device, so no initializer runs)."""
        with torch.device("meta"):
            net = cls(cfg)
        net = net.to_empty(device=device if device is not None else "cpu")
        net.load_state_dict(funcml_to_state_dict(params, state), strict=True)
        return net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        check_shape(x, "b c h w", name="UNetModule: x", c=cfg.in_channels)
        h, w = x.shape[-2:]
        pad_h, pad_w = -h % cfg.multiple, -w % cfg.multiple
        if pad_h or pad_w:
            if cfg.pad_mode == "reject":
                raise ShapeError(f"UNetModule: x: H={h} and W={w} must be multiples of {cfg.multiple}")
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="reflect" if cfg.pad_fill == "reflect" else "constant")
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        skips = []
        for i in range(cfg.depth):
            x = self.enc[str(i)](x)
            skips.append(x)  # [B, w_i, H / 2^i, W / 2^i]
            x = F.max_pool2d(x, 2)
        z = self.bottleneck(x)  # [B, w_depth, H / 2^depth, W / 2^depth]
        for i in reversed(range(cfg.depth)):
            z = self.dec[str(i)](z, skips[i])
        logits = self.head(z)  # [B, K, H + pad_h, W + pad_w]
        return logits[..., :h, :w]


def funcml_to_state_dict(params: Any, state: Any) -> dict[str, torch.Tensor]:
    """funcml's `(params, state)` of a U-Net as the `state_dict` of `UNetModule` (copies).

    Leaf names map `w -> weight`, `b -> bias`, `scale -> weight`, `mean -> running_mean`,
    `var -> running_var`; every BatchNorm gets `num_batches_tracked = 0` (unused: momentum is set).
    """
    sd: dict[str, torch.Tensor] = {}
    for name, value in tree.flatten_with_names(params).items():
        site, leaf = name.rsplit(".", 1)
        sd[f"{site}.{_PARAM_LEAVES[leaf]}"] = value.detach().clone()
    for name, value in tree.flatten_with_names(state).items():
        site, leaf = name.rsplit(".", 1)
        sd[f"{site}.{_STATE_LEAVES[leaf]}"] = value.detach().clone()
        sd.setdefault(f"{site}.num_batches_tracked", torch.zeros((), dtype=torch.long, device=value.device))
    return sd


def to_funcml(net: UNetModule, like_params: Any, like_state: Any) -> tuple[Any, Any]:
    """The module's weights and BatchNorm buffers as funcml `(params, state)` shaped like the given ones."""
    sd = net.state_dict()

    def take(like: Any, leaves: dict[str, str]) -> Any:
        named = {}
        for name in tree.flatten_with_names(like):
            site, leaf = name.rsplit(".", 1)
            named[name] = sd[f"{site}.{leaves[leaf]}"].detach().clone()
        return tree.unflatten_from_names(named, like)

    return take(like_params, _PARAM_LEAVES), take(like_state, _STATE_LEAVES)
