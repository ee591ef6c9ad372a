"""U-Net (Ronneberger, Fischer & Brox, "U-Net: Convolutional networks for biomedical image
segmentation", MICCAI 2015), as a pure `(init, apply)` pair with explicit BatchNorm state.

    cfg = UNetConfig(in_channels=3, num_classes=5, depth=3, base_width=16)
    params, state = model.init(key, cfg)
    logits, state = model.apply(params, state, images, cfg, key=k, train=True)   # [B, 3, H, W] -> [B, 5, H, W]

With widths `w_i = base_width * 2^i` and `block(cin, cout) = [conv3x3 -> norm -> act] x 2`:

    encoder, i = 0 .. depth-1:   s_i = block(x_i)                    [B, w_i, H / 2^i, W / 2^i]   (skip i)
                                 x_{i+1} = maxpool2x2(s_i)
    bottleneck:                  z = dropout(block(x_depth))         [B, w_depth, H / 2^depth, W / 2^depth]
    decoder, i = depth-1 .. 0:   u_i = up(z)                         [B, w_i, H / 2^i, W / 2^i]
                                 z = block(concat(s_i, u_i))         (channels: skip first, then up)
    head:                        logits = conv1x1(z)                 [B, num_classes, H, W]

`up` is a transposed conv 2x2 with stride 2 (`upsample="transpose"`) or a 1x1 conv followed
by bilinear x2 interpolation (`upsample="bilinear"`; both maps are linear and the
interpolation weights sum to one, so the 1x1 conv is applied before the interpolation, on
four times fewer pixels, with the same result as after it).

Parameter and state names are stable dotted paths: `enc.{i}.conv1.w`, `enc.{i}.norm1.scale`,
`bottleneck.conv2.w`, `dec.{i}.up.w`, `dec.{i}.conv1.w`, `head.w`; decoder stage `i` works at
the resolution of encoder stage `i` and reads skip `i`. With `norm="batch"` the state holds
the running statistics of every norm site under the same names (`enc.0.norm1.mean`, ...);
otherwise it is `{}`. Convolutions followed by a norm have no bias (the norm's shift takes
its place); with `norm="none"` they have one. Every weight is initialized from
`random.fold_in(key, name)`, so a site's initial value depends only on the key and its name.

Input sizes. The encoder halves H and W `depth` times, so they must be multiples of
`m = 2^depth`. With `pad_mode="pad"` (default) an input whose H or W is not a multiple is
padded at the bottom and right up to the next multiple (`pad_fill="reflect"`, mirror
padding without repeating the edge pixel, or `"zeros"`), and the logits are cropped back to
`[B, num_classes, H, W]`. With `pad_mode="reject"` it raises a `ShapeError` naming the size
and the multiple.

Layout. With `channels_last=True` (default) the input is laid out channels-last once, and
every convolution keeps that layout (faster train steps on CPU; measured: see
benchmarks/RESULTS.md, "channels_last"); shapes and indexing are unchanged, the logits are
`[B, num_classes, H, W]` with channels-last strides.

The encoder and decoder are public (`init_unet_encoder` / `unet_encoder`,
`init_unet_decoder` / `unet_decoder`) so that variants such as
`funcml.seg.hybrid.UNetTransformerConfig` can change the bottleneck and reuse the rest.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F

from .. import config, random
from ..checks import check_dtype, check_shape
from ..errors import ShapeError
from ..nn import model as _model
from ..nn.layers import activation, conv2d, conv_transpose2d, dropout, init_conv2d, init_conv_transpose2d
from ..nn.norm import (batch_norm, group_norm, init_batch_norm, init_group_norm, init_instance_norm,
                       instance_norm)

__all__ = [
    "UNetConfig", "init_unet", "apply_unet", "UNet",
    "init_unet_encoder", "unet_encoder", "init_unet_decoder", "unet_decoder", "prepare_input", "crop_logits",
]

PyTree = Any
_NORMS = ("batch", "group", "instance", "none")
_UPSAMPLES = ("transpose", "bilinear")
_PAD_MODES = ("pad", "reject")
_PAD_FILLS = ("reflect", "zeros")


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    """A U-Net for `num_classes`-way per-pixel classification (see funcml.seg.unet)."""

    in_channels: int = 3
    """C of the input images."""
    num_classes: int = 5
    """K, the logits' channels."""
    depth: int = 3
    """Encoder stages (poolings); H and W are padded to (or must be) multiples of 2^depth."""
    base_width: int = 16
    """Channels of the first stage; stage i has base_width * 2^i, the bottleneck base_width * 2^depth."""
    norm: str = "batch"
    """One of "batch" (running statistics in the state), "group" (`groups` groups), "instance" or "none"."""
    groups: int = 8
    """GroupNorm groups, a divisor of base_width."""
    activation: str = "relu"
    """A name accepted by funcml.nn.layers.activation (relu, gelu, silu, ...)."""
    upsample: str = "transpose"
    """Either "transpose" (transposed conv 2x2, stride 2) or "bilinear" (1x1 conv + bilinear x2)."""
    dropout: float = 0.0
    """Dropout rate on the bottleneck features in train mode (needs a key)."""
    pad_mode: str = "pad"
    """Either "pad" (pad to a multiple of 2^depth, crop the logits back) or "reject"."""
    pad_fill: str = "reflect"
    """How "pad" fills: "reflect" (mirror) or "zeros"."""
    channels_last: bool = True
    """Compute in channels_last memory format (a layout, not a shape: tensors stay [B, C, H, W])."""

    def __post_init__(self):
        config.require_positive_int(self, "in_channels", "num_classes", "depth", "base_width", "groups")
        config.require_one_of(self, "norm", _NORMS)
        config.require_one_of(self, "upsample", _UPSAMPLES)
        config.require_one_of(self, "pad_mode", _PAD_MODES)
        config.require_one_of(self, "pad_fill", _PAD_FILLS)
        config.require_in_range(self, 0, 1, "dropout", high_open=True)
        config.require(isinstance(self.channels_last, bool), self,
                       f"channels_last must be a bool, got {self.channels_last!r}")
        activation(self.activation)  # an unknown name fails when the config is made
        config.require(self.norm != "group" or self.base_width % self.groups == 0, self,
                       f"norm='group' needs base_width={self.base_width} divisible by groups={self.groups} "
                       f"(every stage width is base_width * 2^i); "
                       f"choose groups among the divisors of {self.base_width}")

    def width(self, stage: int) -> int:
        """Channels of encoder/decoder stage `stage` (`stage = depth`: the bottleneck)."""
        return self.base_width * 2**stage

    @property
    def bottleneck_width(self) -> int:
        """Channels of the bottleneck features, `base_width * 2^depth`."""
        return self.width(self.depth)

    @property
    def multiple(self) -> int:
        """`2^depth`: input H and W must be multiples of it (or are padded to one)."""
        return 2**self.depth


# ------------------------------------------------------------------------------------ blocks


def _init_norm(cfg: UNetConfig, channels: int) -> tuple[dict | None, dict | None]:
    if cfg.norm == "batch":
        return init_batch_norm(channels)
    if cfg.norm == "group":
        return init_group_norm(channels), None
    if cfg.norm == "instance":
        return init_instance_norm(channels), None
    return None, None


def _norm(cfg: UNetConfig, params: dict | None, state: dict | None, x: torch.Tensor, train: bool,
          site: str) -> tuple[torch.Tensor, dict | None]:
    if cfg.norm == "batch":
        if state is None:
            raise ShapeError(f"U-Net state: norm='batch' needs running statistics at '{site}', "
                             "found none; pass the state returned by init (or the last apply)")
        return batch_norm(params, state, x, train=train)
    if cfg.norm == "group":
        return group_norm(params, x, groups=cfg.groups), None
    if cfg.norm == "instance":
        return instance_norm(params, x), None
    return x, None


def _init_block(key: torch.Tensor, name: str, cfg: UNetConfig, cin: int, cout: int) -> tuple[dict, dict]:
    """`[conv3x3 -> norm -> act] x 2`: params `{conv1, norm1, conv2, norm2}`, state `{norm1, norm2}`
    (BatchNorm only)."""
    params, state = {}, {}
    for i, c_in in ((1, cin), (2, cout)):
        params[f"conv{i}"] = init_conv2d(random.fold_in(key, f"{name}.conv{i}"), c_in, cout, 3,
                                         bias=cfg.norm == "none")
        norm_params, norm_state = _init_norm(cfg, cout)
        if norm_params is not None:
            params[f"norm{i}"] = norm_params
        if norm_state is not None:
            state[f"norm{i}"] = norm_state
    return params, state


def _block(params: dict, state: dict, x: torch.Tensor, cfg: UNetConfig, train: bool,
           name: str) -> tuple[torch.Tensor, dict]:
    """x: `[B, cin, H, W]` -> `([B, cout, H, W], new block state)`."""
    act = activation(cfg.activation)
    new_state = {}
    for i in (1, 2):
        x = conv2d(params[f"conv{i}"], x, padding=1)
        x, s = _norm(cfg, params.get(f"norm{i}"), state.get(f"norm{i}"), x, train, f"{name}.norm{i}")
        if s is not None:
            new_state[f"norm{i}"] = s
        x = act(x)
    return x, new_state


def _sub(state: PyTree, *path: str) -> dict:
    """`state[path[0]][path[1]]...`, or `{}` where the state has no such entry (no BatchNorm)."""
    for p in path:
        state = state.get(p, {}) if isinstance(state, dict) else {}
    return state


# ------------------------------------------------------------------------------------ encoder


def init_unet_encoder(key: torch.Tensor, cfg: UNetConfig) -> tuple[PyTree, PyTree]:
    """Params `{"enc": {"0": block, ..., str(depth-1): block}, "bottleneck": block}` and the
    matching BatchNorm state (`{}` for other norms). Stage `i` maps `w_{i-1} -> w_i`
    channels (`w_{-1} = in_channels`), the bottleneck `w_{depth-1} -> w_depth`."""
    params, state = {"enc": {}}, {"enc": {}}
    cin = cfg.in_channels
    for i in range(cfg.depth):
        params["enc"][str(i)], state["enc"][str(i)] = _init_block(key, f"enc.{i}", cfg, cin, cfg.width(i))
        cin = cfg.width(i)
    params["bottleneck"], state["bottleneck"] = _init_block(key, "bottleneck", cfg, cin, cfg.bottleneck_width)
    return params, (state if cfg.norm == "batch" else {})


def _check_divisible(x: torch.Tensor, cfg: UNetConfig, where: str) -> None:
    h, w = x.shape[-2:]
    m = cfg.multiple
    if h % m or w % m:
        raise ShapeError(
            f"{where}: x: H={h} and W={w} must be multiples of 2^depth = {m} (depth={cfg.depth}), "
            f"got shape {list(x.shape)}; resize or crop the images to a multiple of {m}, or use "
            f"pad_mode='pad' to pad them and crop the logits back")


def unet_encoder(params: PyTree, state: PyTree, x: torch.Tensor, cfg: UNetConfig, *,
                 key: torch.Tensor | None = None,
                 train: bool = False) -> tuple[torch.Tensor, list[torch.Tensor], PyTree]:
    """The contracting path and the bottleneck.

    Arguments:
        params: a dict holding `"enc"` and `"bottleneck"` (other entries are ignored, so the
            whole U-Net's params may be passed).
        state: the matching BatchNorm state (`{}` for other norms).
        x: `[B, in_channels, H, W]` float, H and W multiples of `2^depth`.
        key: needed when `train` and `cfg.dropout > 0`; the bottleneck dropout draws from
            `random.fold_in(key, "bottleneck.dropout")`.

    Returns: `(z, skips, new_state)`: `z: [B, w_depth, H / 2^depth, W / 2^depth]` the
    (dropped-out) bottleneck features, `skips[i]: [B, w_i, H / 2^i, W / 2^i]` for
    `i = 0 .. depth-1`, and the state `{"enc", "bottleneck"}` with new running statistics
    in train mode (the given ones in eval mode).
    """
    _model.require_key(key, train=train, needs_key=cfg.dropout > 0, model="unet_encoder")
    check_shape(x, "b c h w", name="unet_encoder: x", c=cfg.in_channels)
    _check_divisible(x, cfg, "unet_encoder")
    new_state: dict = {"enc": {}}
    skips = []
    for i in range(cfg.depth):
        stage, stage_state = params["enc"][str(i)], _sub(state, "enc", str(i))
        x, new_state["enc"][str(i)] = _block(stage, stage_state, x, cfg, train, f"enc.{i}")
        skips.append(x)  # [B, w_i, H / 2^i, W / 2^i]
        x = F.max_pool2d(x, 2)  # [B, w_i, H / 2^(i+1), W / 2^(i+1)]
    x, new_state["bottleneck"] = _block(params["bottleneck"], _sub(state, "bottleneck"), x, cfg, train, "bottleneck")
    if train and cfg.dropout > 0:
        x = dropout(random.fold_in(key, "bottleneck.dropout"), x, cfg.dropout, train=True)
    if cfg.norm != "batch":
        return x, skips, {}
    if not train:
        return x, skips, {"enc": state["enc"], "bottleneck": state["bottleneck"]}
    return x, skips, new_state


# ------------------------------------------------------------------------------------ decoder


def init_unet_decoder(key: torch.Tensor, cfg: UNetConfig) -> tuple[PyTree, PyTree]:
    """Params `{"dec": {"0": {"up", <block>}, ..., str(depth-1): ...}, "head": conv1x1}` and the
    matching BatchNorm state `{"dec": ...}` (`{}` for other norms).

    Stage `i` up-samples `w_{i+1} -> w_i` channels (`up`: a transposed conv 2x2
    `{"w": [w_{i+1}, w_i, 2, 2], "b"}` or a 1x1 conv `{"w": [w_i, w_{i+1}, 1, 1], "b"}`), then
    its block maps the concatenation `2 w_i -> w_i`; the head maps `w_0 -> num_classes`.
    """
    params, state = {"dec": {}}, {"dec": {}}
    for i in range(cfg.depth):
        cin, cout = cfg.width(i + 1), cfg.width(i)
        up_key = random.fold_in(key, f"dec.{i}.up")
        if cfg.upsample == "transpose":
            up = init_conv_transpose2d(up_key, cin, cout, 2)
        else:
            up = init_conv2d(up_key, cin, cout, 1)
        block, state["dec"][str(i)] = _init_block(key, f"dec.{i}", cfg, 2 * cout, cout)
        params["dec"][str(i)] = {"up": up, **block}
    params["head"] = init_conv2d(random.fold_in(key, "head"), cfg.width(0), cfg.num_classes, 1,
                                 w_init="xavier_uniform")
    return params, (state if cfg.norm == "batch" else {})


def _upsample(params: dict, x: torch.Tensor, cfg: UNetConfig) -> torch.Tensor:
    """x: `[B, w_{i+1}, h, w]` -> `[B, w_i, 2h, 2w]`."""
    if cfg.upsample == "transpose":
        return conv_transpose2d(params, x, stride=2)
    x = conv2d(params, x)  # 1x1 conv first: it commutes with the interpolation, on 4x fewer pixels
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


def unet_decoder(params: PyTree, state: PyTree, z: torch.Tensor, skips: list[torch.Tensor], cfg: UNetConfig, *,
                 train: bool = False) -> tuple[torch.Tensor, PyTree]:
    """The expanding path and the 1x1 head.

    Arguments:
        params: a dict holding `"dec"` and `"head"` (other entries are ignored).
        state: the matching BatchNorm state (`{}` for other norms).
        z: `[B, w_depth, h, w]` float, the bottleneck features.
        skips: `depth` tensors, `skips[i]: [B, w_i, h 2^(depth-i), w 2^(depth-i)]`.

    Returns: `(logits: [B, num_classes, h 2^depth, w 2^depth], new_state)`, the state
    `{"dec": ...}` with new running statistics in train mode (the given ones in eval mode).
    """
    dims = check_shape(z, "b c h w", name="unet_decoder: z", c=cfg.bottleneck_width)
    if len(skips) != cfg.depth:
        raise ShapeError(f"unet_decoder: skips: expected {cfg.depth} tensors (one per encoder stage), "
                         f"got {len(skips)}")
    stage_states = {}
    for i in reversed(range(cfg.depth)):
        scale = 2 ** (cfg.depth - i)
        check_shape(skips[i], "b c h w", name=f"unet_decoder: skips[{i}]", b=dims["b"], c=cfg.width(i),
                    h=dims["h"] * scale, w=dims["w"] * scale)
        stage = params["dec"][str(i)]
        up = _upsample(stage["up"], z, cfg)  # [B, w_{i+1}, h_i / 2, w_i / 2] -> [B, w_i, h_i, w_i]
        z = torch.cat([skips[i], up], dim=1)  # [B, 2 w_i, h_i, w_i]
        z, stage_states[str(i)] = _block(stage, _sub(state, "dec", str(i)), z, cfg, train, f"dec.{i}")
    logits = conv2d(params["head"], z)  # [B, num_classes, H, W]
    if cfg.norm != "batch":
        return logits, {}
    if not train:
        return logits, {"dec": state["dec"]}
    # Stages ran deepest first; the state keeps init's order so that its tree structure is unchanged.
    return logits, {"dec": {str(i): stage_states[str(i)] for i in range(cfg.depth)}}


# ------------------------------------------------------------------------------------ model


def prepare_input(x: torch.Tensor, cfg: UNetConfig, model: str) -> tuple[torch.Tensor, tuple[int, int]]:
    """Check `x: [B, in_channels, H, W]` float, pad H, W up to multiples of `2^depth` (bottom
    and right) or reject them, as `cfg.pad_mode` and `cfg.pad_fill` say, and lay it out as
    `cfg.channels_last` says (every conv output then follows that layout). Errors name `model`.

    Returns: `(x: [B, in_channels, H', W'], (H, W))`, the prepared input and the original size
    for `crop_logits`. Raises: ShapeError for a wrong shape, a size `pad_mode="reject"` refuses
    or one too small to reflect-pad; DTypeError for a non-float x.
    """
    check_shape(x, "b c h w", name=f"{model}: x", c=cfg.in_channels)
    check_dtype(x, "float", name=f"{model}: x")
    h, w = x.shape[-2:]
    m = cfg.multiple
    pad_h, pad_w = -h % m, -w % m
    if pad_h or pad_w:
        if cfg.pad_mode == "reject":
            _check_divisible(x, cfg, f"{model} (pad_mode='reject')")
        if cfg.pad_fill == "reflect" and (pad_h >= h or pad_w >= w):
            raise ShapeError(
                f"{model}: x: shape {list(x.shape)} is too small to reflect-pad to a multiple of {m} "
                f"(padding must be smaller than the size); use pad_fill='zeros' or a larger image")
        mode = "reflect" if cfg.pad_fill == "reflect" else "constant"
        x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)  # [B, C, H + pad_h, W + pad_w]
    if cfg.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, (h, w)


def crop_logits(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """`logits: [B, K, H', W']` -> `[B, K, H, W]` with `(H, W) = size`: undoes `prepare_input`'s
    padding (bottom and right); the same tensor when nothing was padded."""
    h, w = size
    if logits.shape[-2:] == (h, w):
        return logits
    return logits[..., :h, :w]  # [B, K, H + pad_h, W + pad_w] -> [B, K, H, W]


def init_unet(key: torch.Tensor, cfg: UNetConfig) -> tuple[PyTree, PyTree]:
    """`(params, state)` of the U-Net: params `{"enc", "bottleneck", "dec", "head"}`, state the
    BatchNorm running statistics under the same names (`{}` unless `norm="batch"`)."""
    enc_params, enc_state = init_unet_encoder(key, cfg)
    dec_params, dec_state = init_unet_decoder(key, cfg)
    return {**enc_params, **dec_params}, {**enc_state, **dec_state}


def apply_unet(params: PyTree, state: PyTree, x: torch.Tensor, cfg: UNetConfig, *,
               key: torch.Tensor | None = None, train: bool = False) -> tuple[torch.Tensor, PyTree]:
    """Per-pixel class logits.

    Arguments:
        x: `[B, in_channels, H, W]` float; H, W not multiples of `2^depth` are padded (and
            the logits cropped back) or rejected, as `cfg.pad_mode` says.
        key: needed when `train` and `cfg.dropout > 0` (else `PRNGKeyError`).
        train: BatchNorm uses batch statistics and returns new running statistics; in eval
            mode it uses the running statistics and `state` is returned as given.

    Returns: `(logits: [B, num_classes, H, W], state)`; the input `state` is never modified.
    """
    _model.require_key(key, train=train, needs_key=cfg.dropout > 0, model="UNet")
    x, size = prepare_input(x, cfg, "UNet")
    z, skips, enc_state = unet_encoder(params, state, x, cfg, key=key, train=train)
    logits, dec_state = unet_decoder(params, state, z, skips, cfg, train=train)
    return crop_logits(logits, size), ({**enc_state, **dec_state} if train else state)


UNet = _model.register(UNetConfig, init_unet, apply_unet)
