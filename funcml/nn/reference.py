"""Two small reference models, so that the core (train step, checkpoints, ensembles) can be
tested before the applications exist: an MLP and a small CNN with BatchNorm state.

    params, state = model.init(key, MLPConfig(in_dim=8, hidden=(32, 32), out_dim=1))
    y, state = model.apply(params, state, x, cfg)                  # x: [B, 8] -> y: [B, 1]

    params, state = model.init(key, CNNConfig(in_channels=1, channels=(8, 16), num_classes=10))
    logits, state = model.apply(params, state, images, cfg, key=k, train=True)   # [B, 1, H, W] -> [B, 10]

Both follow the contract of `funcml.nn.model` and are registered there.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from einops import reduce

from .. import config, random
from ..checks import check_shape
from . import model as _model
from .layers import activation, conv2d, dense, dropout, init_conv2d, init_dense, relu
from .norm import batch_norm, init_batch_norm

__all__ = ["MLPConfig", "init_mlp", "apply_mlp", "MLP", "CNNConfig", "init_cnn", "apply_cnn", "CNN"]

PyTree = Any


# ---------------------------------------------------------------------------------------- MLP


@dataclasses.dataclass(frozen=True)
class MLPConfig:
    """A multi-layer perceptron `in_dim -> hidden... -> out_dim`."""

    in_dim: int = 8
    """Input features."""
    hidden: tuple[int, ...] = (32, 32)
    """Widths of the hidden layers (`()` gives a linear model)."""
    out_dim: int = 1
    """Output features."""
    activation: str = "relu"
    """A name accepted by `funcml.nn.layers.activation`."""
    dropout: float = 0.0
    """Rate applied after every hidden activation in train mode (needs a key)."""

    def __post_init__(self):
        config.require_positive_int(self, "in_dim", "out_dim")
        config.require(isinstance(self.hidden, tuple), self,
                       f"hidden must be a tuple (configs are hashable), got {self.hidden!r}")
        config.require_positive_int(self, "hidden")  # () passes: a linear model
        config.require_in_range(self, 0, 1, "dropout", high_open=True)
        activation(self.activation)  # an unknown name fails here, when the config is made


def init_mlp(key: torch.Tensor, cfg: MLPConfig) -> tuple[PyTree, PyTree]:
    """Params `{"layers": {"0": {"w": [in_dim, h0], "b": [h0]}, "1": ..., str(L-1): ...}}`, state `{}`.

    Layer `i` is initialized from `random.fold_in(key, f"layers.{i}")`.
    """
    dims = (cfg.in_dim, *cfg.hidden, cfg.out_dim)
    layers = {str(i): init_dense(random.fold_in(key, f"layers.{i}"), din, dout)
              for i, (din, dout) in enumerate(zip(dims[:-1], dims[1:]))}
    return {"layers": layers}, {}


def apply_mlp(params: PyTree, state: PyTree, x: torch.Tensor, cfg: MLPConfig, *,
              key: torch.Tensor | None = None, train: bool = False) -> tuple[torch.Tensor, PyTree]:
    """`h_0 = x; h_{i+1} = dropout(act(h_i W_i + b_i))` for hidden layers, `y = h_L W_L + b_L`.

    Arguments:
        x: `[B, in_dim]` floating.
        key: needed when `train` and `cfg.dropout > 0`; layer `i` draws its mask from
            `random.fold_in(key, f"layers.{i}.dropout")`.

    Returns: `(y: [B, out_dim], state)` with `state` returned as given (the MLP has none).
    """
    _model.require_key(key, train=train, needs_key=cfg.dropout > 0, model="MLP")
    check_shape(x, "b d", name="MLP input x", d=cfg.in_dim)
    act = activation(cfg.activation)
    n = len(cfg.hidden) + 1
    h = x
    for i in range(n):
        h = dense(params["layers"][str(i)], h)
        if i < n - 1:
            h = act(h)
            if cfg.dropout > 0 and train:
                h = dropout(random.fold_in(key, f"layers.{i}.dropout"), h, cfg.dropout, train=True)
    return h, state


# ---------------------------------------------------------------------------------------- CNN


@dataclasses.dataclass(frozen=True)
class CNNConfig:
    """A small image classifier: one block per entry of `channels`, each
    `conv3x3(stride 2) -> BatchNorm -> ReLU` (so every block halves H and W), then a global
    average pool, dropout, and a dense head to `num_classes` logits."""

    in_channels: int = 1
    """Input image channels."""
    channels: tuple[int, ...] = (8, 16)
    """Output channels of each block."""
    num_classes: int = 10
    """Logits of the head."""
    norm: str = "batch"
    """batch (BatchNorm with running statistics in the state; the conv has no bias) or none (a conv bias, state {})."""
    dropout: float = 0.0
    """Rate applied before the head in train mode (needs a key)."""

    def __post_init__(self):
        config.require_positive_int(self, "in_channels", "num_classes")
        config.require(isinstance(self.channels, tuple) and len(self.channels) > 0, self,
                       f"channels must be a non-empty tuple of ints, got {self.channels!r}")
        config.require_positive_int(self, "channels")
        config.require_one_of(self, "norm", ("batch", "none"))
        config.require_in_range(self, 0, 1, "dropout", high_open=True)


def init_cnn(key: torch.Tensor, cfg: CNNConfig) -> tuple[PyTree, PyTree]:
    """Params `{"blocks": {"0": {"conv": {"w": [c0, in_channels, 3, 3]}, "norm": {...}}, ...},
    "head": {"w": [c_last, num_classes], "b": [num_classes]}}`; with norm="batch" the state is
    `{"blocks": {"0": {"norm": {running stats}}, ...}}`, else `{}`. Each weight is initialized
    from `random.fold_in(key, path)`: `"blocks.{i}.conv"`, `"head"`.
    """
    use_bn = cfg.norm == "batch"
    blocks, states = {}, {}
    cin = cfg.in_channels
    for i, cout in enumerate(cfg.channels):
        blocks[str(i)] = {"conv": init_conv2d(random.fold_in(key, f"blocks.{i}.conv"), cin, cout, 3, bias=not use_bn)}
        if use_bn:
            blocks[str(i)]["norm"], bn_state = init_batch_norm(cout)
            states[str(i)] = {"norm": bn_state}
        cin = cout
    params = {"blocks": blocks, "head": init_dense(random.fold_in(key, "head"), cin, cfg.num_classes)}
    return params, ({"blocks": states} if use_bn else {})


def apply_cnn(params: PyTree, state: PyTree, x: torch.Tensor, cfg: CNNConfig, *,
              key: torch.Tensor | None = None, train: bool = False) -> tuple[torch.Tensor, PyTree]:
    """Logits of a batch of images.

    Arguments:
        x: `[B, in_channels, H, W]` floating.
        key: needed when `train` and `cfg.dropout > 0`; the head's dropout draws from
            `random.fold_in(key, "head.dropout")`.
        train: BatchNorm normalizes with batch statistics and returns updated running
            statistics; otherwise it uses the running statistics and the state comes back as given.

    Returns: `(logits: [B, num_classes], state)`; the input `state` is never modified.
    """
    _model.require_key(key, train=train, needs_key=cfg.dropout > 0, model="CNN")
    check_shape(x, "b c h w", name="CNN input x", c=cfg.in_channels)
    use_bn = cfg.norm == "batch"
    new_blocks = {}
    h = x
    for i in range(len(cfg.channels)):
        block = params["blocks"][str(i)]
        h = conv2d(block["conv"], h, stride=2, padding=1)  # [B, c_i, ceil(H/2), ceil(W/2)]
        if use_bn:
            h, bn_state = batch_norm(block["norm"], state["blocks"][str(i)]["norm"], h, train=train)
            new_blocks[str(i)] = {"norm": bn_state}
        h = relu(h)
    h = reduce(h, "b c h w -> b c", "mean")  # global average pool
    if cfg.dropout > 0 and train:
        h = dropout(random.fold_in(key, "head.dropout"), h, cfg.dropout, train=True)
    logits = dense(params["head"], h)
    return logits, ({"blocks": new_blocks} if use_bn else state)


MLP = _model.register(MLPConfig, init_mlp, apply_mlp)
CNN = _model.register(CNNConfig, init_cnn, apply_cnn)
