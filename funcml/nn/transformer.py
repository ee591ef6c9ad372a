"""Pre-norm transformer blocks and stacks (Vaswani et al., "Attention is all you need", 2017;
pre-norm as in Xiong et al., "On layer normalization in the transformer architecture", 2020).

    encoder block:  x = x + drop(mha(ln1(x)))
                    x = x + drop(ffn(ln2(x)))
    decoder block:  x = x + drop(mha(ln1(x)))                       self-attention
                    x = x + drop(mha(ln2(x), memory))               cross-attention
                    x = x + drop(ffn(ln3(x)))
    stack:          x = ln_f(block_{L-1}(... block_0(x)))

    params = init_encoder(key, num_layers=2, d_model=64, num_heads=4, d_ff=256)
    h = encoder(params, x, num_heads=4, mask=valid)                   # x: [B, T, 64]
    dec = init_decoder(key, 2, 64, 4, 256)
    y = decoder(dec, tokens, h, num_heads=4, memory_mask=valid)

With `dropout_rate > 0` and `train=True`, dropout is applied to the attention weights, after
the FFN's activation, and to each sublayer's output before the residual add (as in the
original paper); it needs an explicit `key` (`funcml.nn.model.require_key`).

Keys follow the sub-key rule of `funcml.nn.model`: a sub-tree at path `P` gets
`random.fold_in(key, P)`, at init and in apply. A stack gives layer `i` the key
`fold_in(key, f"layers.{i}")` (so adding a layer changes no other layer's params or dropout
masks), a block gives its sub-modules `fold_in(key, "attn")`, `fold_in(key, "ffn")`, ...,
and draws each dropout from a named stream under its site (`"attn.dropout"`,
`"attn.residual_dropout"`, `"ffn.dropout"`, ...). Masks follow `funcml.nn.attention`:
boolean, True = attend.
"""

from __future__ import annotations

import dataclasses

import torch

from .. import config, random
from ..checks import check_shape
from .attention import check_heads, init_mha, mha
from .layers import activation as _activation
from .layers import dense, dropout, init_dense
from .model import require_key, subkey
from .norm import init_layer_norm, layer_norm

__all__ = [
    "TransformerConfig",
    "init_ffn", "ffn",
    "init_encoder_block", "encoder_block", "init_decoder_block", "decoder_block",
    "init_encoder", "encoder", "init_decoder", "decoder",
]


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Sizes of a transformer stack, for callers that keep them in a config."""

    d_model: int
    """The residual width D."""
    num_heads: int
    """H, attention heads (a divisor of D)."""
    d_ff: int
    """The FFN hidden width."""
    num_layers: int
    """L, the number of blocks."""
    dropout: float = 0.0
    """The rate used everywhere in train mode."""
    impl: str = "sdpa"
    """sdpa (fused) or math (the equations; see `funcml.nn.attention`)."""
    activation: str = "gelu"
    """The FFN nonlinearity."""

    def __post_init__(self):
        config.require_positive_int(self, "d_model", "num_heads", "d_ff", "num_layers")
        check_heads(self.d_model, self.num_heads, "TransformerConfig")
        config.require_in_range(self, 0, 1, "dropout", high_open=True)
        config.require_one_of(self, "impl", ("sdpa", "math"))
        _activation(self.activation)  # an unknown name fails when the config is made


# -------------------------------------------------------------------------------- feed-forward


def init_ffn(key: torch.Tensor, d_model: int, d_ff: int, *, dtype: torch.dtype = torch.float32) -> dict:
    """`{"fc1": dense [D, d_ff], "fc2": dense [d_ff, D]}`, each from `fold_in(key, name)`."""
    return {"fc1": init_dense(random.fold_in(key, "fc1"), d_model, d_ff, dtype=dtype),
            "fc2": init_dense(random.fold_in(key, "fc2"), d_ff, d_model, dtype=dtype)}


def ffn(params: dict, x: torch.Tensor, *, activation: str = "gelu", dropout_rate: float = 0.0,
        key: torch.Tensor | None = None, train: bool = False) -> torch.Tensor:
    """The position-wise feed-forward network `y = drop(act(x W_1 + b_1)) W_2 + b_2`.

    Arguments:
        x: `[..., D]` float.
        activation: a name accepted by `funcml.nn.layers.activation`.
        dropout_rate, key, train: dropout after the activation (train mode; needs `key`).

    Returns: `[..., D]`.
    """
    require_key(key, train=train, needs_key=dropout_rate > 0, model="ffn",
                why=f"dropout_rate={dropout_rate}", call="ffn")
    check_shape(x, "... d", name="x", d=params["fc1"]["w"].shape[0])
    h = _activation(activation)(dense(params["fc1"], x))
    h = dropout(key, h, dropout_rate, train=train)
    return dense(params["fc2"], h)


# -------------------------------------------------------------------------------------- blocks


def init_encoder_block(key: torch.Tensor, d_model: int, num_heads: int, d_ff: int, *,
                       dtype: torch.dtype = torch.float32) -> dict:
    """`{"ln1": layer norm, "attn": mha, "ln2": layer norm, "ffn": ffn}`; `attn` and `ffn` from
    `fold_in(key, "attn")` and `fold_in(key, "ffn")`."""
    return {
        "ln1": init_layer_norm(d_model, dtype=dtype),
        "attn": init_mha(random.fold_in(key, "attn"), d_model, num_heads, dtype=dtype),
        "ln2": init_layer_norm(d_model, dtype=dtype),
        "ffn": init_ffn(random.fold_in(key, "ffn"), d_model, d_ff, dtype=dtype),
    }


def encoder_block(params: dict, x: torch.Tensor, *, num_heads: int, mask: torch.Tensor | None = None,
                  causal: bool = False, dropout_rate: float = 0.0, key: torch.Tensor | None = None,
                  train: bool = False, impl: str = "sdpa", activation: str = "gelu") -> torch.Tensor:
    """A pre-norm encoder block:

        x = x + drop(mha(ln1(x), mask))
        y = x + drop(ffn(ln2(x)))

    Arguments:
        x: `[B, T, D]` float.
        num_heads: H (static).
        mask: bool, True = attend: `[B, T]` key padding or `[B, T, T]` full.
        causal: also mask future positions.
        dropout_rate, key, train: see the module doc; `key` is needed when training with dropout.
        impl: `"sdpa"` or `"math"` attention.

    Returns: `y: [B, T, D]`.
    """
    require_key(key, train=train, needs_key=dropout_rate > 0, model="encoder_block",
                why=f"dropout_rate={dropout_rate}", call="encoder_block")
    check_shape(x, "b t d", name="x", d=params["ln1"]["scale"].shape[0])
    drop = dict(dropout_rate=dropout_rate, train=train)
    h = mha(params["attn"], layer_norm(params["ln1"], x), num_heads=num_heads, mask=mask, causal=causal,
            key=subkey(key, "attn.dropout"), impl=impl, **drop)
    x = x + dropout(subkey(key, "attn.residual_dropout"), h, dropout_rate, train=train)
    h = ffn(params["ffn"], layer_norm(params["ln2"], x), activation=activation,
            key=subkey(key, "ffn.dropout"), **drop)
    return x + dropout(subkey(key, "ffn.residual_dropout"), h, dropout_rate, train=train)


def init_decoder_block(key: torch.Tensor, d_model: int, num_heads: int, d_ff: int, *,
                       d_memory: int | None = None, dtype: torch.dtype = torch.float32) -> dict:
    """`{"ln1", "self_attn", "ln2", "cross_attn", "ln3", "ffn"}`; `d_memory` is the feature dim
    of the memory the cross-attention reads (default `d_model`); each sub-module from
    `fold_in(key, name)`."""
    return {
        "ln1": init_layer_norm(d_model, dtype=dtype),
        "self_attn": init_mha(random.fold_in(key, "self_attn"), d_model, num_heads, dtype=dtype),
        "ln2": init_layer_norm(d_model, dtype=dtype),
        "cross_attn": init_mha(random.fold_in(key, "cross_attn"), d_model, num_heads, d_kv=d_memory, dtype=dtype),
        "ln3": init_layer_norm(d_model, dtype=dtype),
        "ffn": init_ffn(random.fold_in(key, "ffn"), d_model, d_ff, dtype=dtype),
    }


def decoder_block(params: dict, x: torch.Tensor, memory: torch.Tensor, *, num_heads: int,
                  self_mask: torch.Tensor | None = None, memory_mask: torch.Tensor | None = None,
                  causal: bool = False, dropout_rate: float = 0.0, key: torch.Tensor | None = None,
                  train: bool = False, impl: str = "sdpa", activation: str = "gelu") -> torch.Tensor:
    """A pre-norm decoder block with self- and cross-attention:

        x = x + drop(mha(ln1(x), self_mask, causal))
        x = x + drop(mha(ln2(x), memory, memory_mask))
        y = x + drop(ffn(ln3(x)))

    Arguments:
        x: `[B, T, D]` float, the decoder stream.
        memory: `[B, S, Dm]` float, e.g. the encoder output (already normalized by its `ln_f`).
        num_heads: H (static).
        self_mask: bool, True = attend: `[B, T]` or `[B, T, T]`.
        memory_mask: bool, True = attend: `[B, S]` or `[B, T, S]`.
        causal: mask future positions in self-attention (autoregressive decoding); the
            default False suits non-autoregressive decoders.
        dropout_rate, key, train, impl, activation: as in `encoder_block`.

    Returns: `y: [B, T, D]`.
    """
    require_key(key, train=train, needs_key=dropout_rate > 0, model="decoder_block",
                why=f"dropout_rate={dropout_rate}", call="decoder_block")
    dims = check_shape(x, "b t d", name="x", d=params["ln1"]["scale"].shape[0])
    check_shape(memory, "b s dm", name="memory", b=dims["b"], dm=params["cross_attn"]["k"]["w"].shape[0])
    drop = dict(dropout_rate=dropout_rate, train=train)
    h = mha(params["self_attn"], layer_norm(params["ln1"], x), num_heads=num_heads, mask=self_mask,
            causal=causal, key=subkey(key, "self_attn.dropout"), impl=impl, **drop)
    x = x + dropout(subkey(key, "self_attn.residual_dropout"), h, dropout_rate, train=train)
    h = mha(params["cross_attn"], layer_norm(params["ln2"], x), memory, num_heads=num_heads, mask=memory_mask,
            key=subkey(key, "cross_attn.dropout"), impl=impl, **drop)
    x = x + dropout(subkey(key, "cross_attn.residual_dropout"), h, dropout_rate, train=train)
    h = ffn(params["ffn"], layer_norm(params["ln3"], x), activation=activation,
            key=subkey(key, "ffn.dropout"), **drop)
    return x + dropout(subkey(key, "ffn.residual_dropout"), h, dropout_rate, train=train)


# -------------------------------------------------------------------------------------- stacks


def _num_layers(params: dict) -> int:
    return len(params["layers"])


def init_encoder(key: torch.Tensor, num_layers: int, d_model: int, num_heads: int, d_ff: int, *,
                 dtype: torch.dtype = torch.float32) -> dict:
    """`{"layers": {"0": block, ..., str(L-1): block}, "ln_f": layer norm}`; block `i` is
    initialized from `random.fold_in(key, f"layers.{i}")`."""
    layers = {str(i): init_encoder_block(random.fold_in(key, f"layers.{i}"), d_model, num_heads, d_ff, dtype=dtype)
              for i in range(num_layers)}
    return {"layers": layers, "ln_f": init_layer_norm(d_model, dtype=dtype)}


def encoder(params: dict, x: torch.Tensor, *, num_heads: int, mask: torch.Tensor | None = None,
            causal: bool = False, dropout_rate: float = 0.0, key: torch.Tensor | None = None,
            train: bool = False, impl: str = "sdpa", activation: str = "gelu") -> torch.Tensor:
    """`y = ln_f(block_{L-1}(... block_0(x)))` with `encoder_block`s.

    Arguments: as `encoder_block`; block `i` gets the key `random.fold_in(key, f"layers.{i}")`.

    Returns: `y: [B, T, D]`.
    """
    require_key(key, train=train, needs_key=dropout_rate > 0, model="encoder",
                why=f"dropout_rate={dropout_rate}", call="encoder")
    for i in range(_num_layers(params)):
        x = encoder_block(params["layers"][str(i)], x, num_heads=num_heads, mask=mask, causal=causal,
                          dropout_rate=dropout_rate, key=subkey(key, f"layers.{i}"), train=train, impl=impl,
                          activation=activation)
    return layer_norm(params["ln_f"], x)


def init_decoder(key: torch.Tensor, num_layers: int, d_model: int, num_heads: int, d_ff: int, *,
                 d_memory: int | None = None, dtype: torch.dtype = torch.float32) -> dict:
    """`{"layers": {"0": block, ..., str(L-1): block}, "ln_f": layer norm}` of decoder blocks; block
    `i` is initialized from `random.fold_in(key, f"layers.{i}")`."""
    layers = {str(i): init_decoder_block(random.fold_in(key, f"layers.{i}"), d_model, num_heads, d_ff,
                                         d_memory=d_memory, dtype=dtype)
              for i in range(num_layers)}
    return {"layers": layers, "ln_f": init_layer_norm(d_model, dtype=dtype)}


def decoder(params: dict, x: torch.Tensor, memory: torch.Tensor, *, num_heads: int,
            self_mask: torch.Tensor | None = None, memory_mask: torch.Tensor | None = None,
            causal: bool = False, dropout_rate: float = 0.0, key: torch.Tensor | None = None,
            train: bool = False, impl: str = "sdpa", activation: str = "gelu") -> torch.Tensor:
    """`y = ln_f(block_{L-1}(... block_0(x, memory), memory))` with `decoder_block`s.

    Arguments: as `decoder_block`; block `i` gets the key `random.fold_in(key, f"layers.{i}")`.

    Returns: `y: [B, T, D]`.
    """
    require_key(key, train=train, needs_key=dropout_rate > 0, model="decoder",
                why=f"dropout_rate={dropout_rate}", call="decoder")
    for i in range(_num_layers(params)):
        x = decoder_block(params["layers"][str(i)], x, memory, num_heads=num_heads, self_mask=self_mask,
                          memory_mask=memory_mask, causal=causal, dropout_rate=dropout_rate,
                          key=subkey(key, f"layers.{i}"),
                          train=train, impl=impl, activation=activation)
    return layer_norm(params["ln_f"], x)
