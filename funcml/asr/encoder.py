"""Paraformer's speech encoder: an input layer, sinusoidal positions, and a stack of
transformer, Conformer or SAN-M blocks.

    cfg = EncoderConfig(input_dim=80, block="sanm")
    params = init_encoder(key, cfg)
    h, h_lengths, mask = encode(params, feats, lengths, cfg)              # feats: [B, T, 80] -> h: [B, T', 144]
    h, h_lengths, mask = encode(params, feats, lengths, cfg, key=k, train=True)      # with dropout

The encoder maps features `x: [B, T, F]` with `lengths: [B]` valid frames to

    x   = where(valid, x, 0)                        padded input frames zeroed (NaN padding stays out)
    u   = input_layer(x)                            [B, T', D]
    z_0 = drop(u * sqrt(D) + PE)                    PE[p] = sinusoidal_1d(T', D)[p]
    z_l = block_l(z_{l-1}, mask)                    l = 1 .. L, mask: [B, T'] True on valid frames
    h   = ln_f(z_L) * mask                          padded frames exactly zero

Input layers:

* `"conv2d"` (Dong et al., "Speech-Transformer", ICASSP 2018; ESPnet's Conv2dSubsampling): the
  `[T, F]` feature image goes through two 3x3 convolutions of stride 2 without padding, each
  followed by ReLU, and the `C * F''` features of each output frame are projected to D:

      [B, 1, T, F] -> conv, relu -> [B, C, T1, F1] -> conv, relu -> [B, C, T', F''] -> dense -> [B, T', D]
      T1 = floor((T - 3) / 2) + 1,   T' = floor((T1 - 3) / 2) + 1     (`batching.subsampled_lengths`, factor 4)

  Output frame `t'` reads input frames `4 t' .. 4 t' + 6`, all inside the item when
  `t' < T'_b`: padding never reaches a valid frame, and an item needs at least 7 frames.
* `"linear"`: a dense `F -> D` per frame, for low-frame-rate features (Paraformer stacks 7
  frames every 6, `F = 560`: already 6x shorter), `T' = T`.

Positions: the input layer's output is scaled by `sqrt(D)` before the sinusoids (amplitude 1)
are added, as Vaswani et al. (2017, section 3.4) do for embeddings and as ESPnet's and
FunASR's encoders do for speech.

Blocks (all bidirectional and pre-norm; attention masks padded keys):

* `"transformer"`: `funcml.nn.transformer.encoder_block`:
  `x = x + drop(mha(ln1(x)))`, `y = x + drop(ffn(ln2(x)))`.
* `"conformer"` (Gulati et al., "Conformer: convolution-augmented transformer for speech
  recognition", Interspeech 2020, arXiv:2005.08100), a macaron block:

      x = x + 1/2 drop(ffn1(ln_ffn1(x)))
      x = x + drop(mha(ln_attn(x)))
      x = x + drop(conv(ln_conv(x)))
      x = x + 1/2 drop(ffn2(ln_ffn2(x)))
      y = ln_out(x)
      conv(x) = pw2(swish(ln(dwconv_k(m * glu(pw1(x))))))      glu(a | g) = a * sigmoid(g), m = valid frames

  `pw1: D -> 2D` and `pw2: D -> D` are pointwise convolutions (a dense per frame), `dwconv_k` a
  depthwise convolution of kernel `conv_kernel` with "same" padding. Two deviations from the
  paper: LayerNorm replaces the BatchNorm after the depthwise conv, so that the encoder stays
  stateless and an item's output never depends on the rest of its batch; and positions are the
  absolute sinusoids above rather than relative positional self-attention.
* `"sanm"` (Gao et al., "SAN-M: memory equipped self-attention for end-to-end speech
  recognition", Interspeech 2020, arXiv:2006.01713; the encoder of Paraformer, Gao et al.,
  Interspeech 2022, arXiv:2206.08317): self-attention plus an FSMN memory over its values,

      h = ln1(x)
      V = m * (h W_v + b_v)                                   the attention's own value projection
      M = V + dwconv_k(V)                                     FSMN memory: kernel `fsmn_kernel`, "same", no bias
      x = x + drop(mha(h) + drop(M))
      y = x + drop(ffn(ln2(x)))

  (FunASR's first SAN-M layer reads the 560-dim LFR features directly without a residual;
  here the linear input layer maps them to D first, so every block has the same width.)

Padding: attention masks padded keys, and every convolution over time (`dwconv_k`) sees
padded frames zeroed, while the other operations act frame by frame. So the valid frames of
an item are the same however much padding its batch adds (tested to 1e-5).

Dropout (rate `cfg.dropout`, train mode only) is applied after the positional encoding, to
the attention weights, after the FFN's activation, to the FSMN memory, and to each sublayer
output before its residual add. Keys follow the sub-key rule of `funcml.nn.model`: the
sub-tree at path `P` gets `random.fold_in(key, P)` at init and in apply, so layer `i` is
initialized from and draws its dropout from `fold_in(key, f"layers.{i}")` (adding a layer
changes no other layer), the input layer's convolutions from `fold_in(key, "input.conv1")`,
..., and each dropout site is a named stream (`"input.dropout"`, `"attn.dropout"`, ...).
`encode` reads tensor values only for its range checks, which run where reading is free
(`funcml.checks.host_readable`: eager, on the CPU), so it compiles with `fullgraph=True`, runs
under `torch.func.grad` and never waits for a GPU.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import torch
from einops import rearrange

from .. import random
from ..checks import check_dtype, check_shape, host_readable
from ..config import require, require_in_range, require_one_of, require_positive_int
from ..errors import ConfigError, RangeError
from ..nn.attention import check_heads, init_mha, mha
from ..nn.layers import activation as _activation
from ..nn.layers import (conv2d, dense, depthwise_conv1d, dropout, init_conv2d, init_dense, init_depthwise_conv1d,
                         relu, silu)
from ..nn.model import require_key, subkey
from ..nn.norm import init_layer_norm, layer_norm
from ..nn.posenc import sinusoidal_1d
from ..nn.transformer import encoder_block, ffn, init_encoder_block, init_ffn
from .batching import lengths_to_mask, subsampled_lengths

__all__ = [
    "EncoderConfig",
    "init_encoder", "encoder_lengths", "encode",
    "init_conformer_block", "conformer_block", "init_sanm_block", "sanm_block",
]

_BLOCKS = ("transformer", "conformer", "sanm")
_INPUT_LAYERS = ("conv2d", "linear")
_IMPLS = ("sdpa", "math")
# Two 3x3 stride-2 valid convolutions: 7 -> 3 -> 1 is the shortest input with one output frame.
_CONV2D_MIN_FRAMES = 7


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """The encoder's sizes and variant (see the module doc for the equations)."""

    input_dim: int = 80
    """F, the feature dim of `x: [B, T, F]` (80 log-mels; 560 for 7 x 80 LFR features)."""
    d_model: int = 144
    """D, the residual width (even: the sinusoids come in sin/cos pairs)."""
    num_heads: int = 4
    """H, attention heads (a divisor of D)."""
    d_ff: int = 576
    """The FFN hidden width."""
    num_layers: int = 4
    """L, the number of encoder blocks."""
    block: Literal["transformer", "conformer", "sanm"] = "transformer"
    """The block: transformer, conformer (+ depthwise conv module) or sanm (+ FSMN memory)."""
    input_layer: Literal["conv2d", "linear"] = "conv2d"
    """conv2d (4x time subsampling; needs F >= 7) or linear (no subsampling)."""
    conv_channels: int = 0
    """C of the conv2d subsampling (0 = D)."""
    conv_kernel: int = 15
    """The Conformer depthwise kernel (odd)."""
    fsmn_kernel: int = 11
    """The SAN-M memory kernel (odd)."""
    dropout: float = 0.1
    """The dropout rate used everywhere in train mode, in [0, 1)."""
    impl: Literal["sdpa", "math"] = "sdpa"
    """Attention implementation: sdpa (fused) or math (the equations; same numbers)."""
    activation: str = "relu"
    """The FFN nonlinearity (a name of `funcml.nn.layers.activation`)."""

    def __post_init__(self):
        require_positive_int(self, "input_dim", "d_model", "num_heads", "d_ff", "num_layers")
        require(_is_int(self.conv_channels) and self.conv_channels >= 0, self,
                f"conv_channels must be an int >= 0 (0 = d_model), got {self.conv_channels!r}")
        for field in ("conv_kernel", "fsmn_kernel"):
            value = getattr(self, field)
            require(_is_int(value) and value >= 1 and value % 2 == 1, self,
                    f"{field} must be an odd int >= 1 (a centred 'same' convolution), got {value!r}")
        require_one_of(self, "block", _BLOCKS)
        require_one_of(self, "input_layer", _INPUT_LAYERS)
        require_one_of(self, "impl", _IMPLS)
        require_in_range(self, 0, 1, "dropout", high_open=True)
        check_heads(self.d_model, self.num_heads, "EncoderConfig")
        require(self.d_model % 2 == 0, self,
                f"d_model must be even (sinusoidal positions come in sin/cos pairs), got {self.d_model}")
        require(self.input_layer != "conv2d" or self.input_dim >= _CONV2D_MIN_FRAMES, self,
                f"input_dim={self.input_dim} is too small for input_layer='conv2d', which subsamples the feature "
                f"axis too and needs input_dim >= {_CONV2D_MIN_FRAMES}; use input_layer='linear'")
        try:
            _activation(self.activation)
            unknown = None
        except ConfigError as e:
            unknown = e
        require(unknown is None, self, f"activation: {unknown}")  # raised outside the except: no chained traceback


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# ----------------------------------------------------------------------------------- helpers


def _zero_padding(x: torch.Tensor, m: torch.Tensor | None) -> torch.Tensor:
    """`x: [B, T, D]` with the frames where `m: [B, T, 1]` is False set to exactly 0."""
    if m is None:
        return x
    return torch.where(m, x, torch.zeros((), dtype=x.dtype, device=x.device))


def _frame_mask(mask: torch.Tensor | None, dims: dict[str, int], where: str) -> torch.Tensor | None:
    """Check `mask: [B, T]` bool (True = valid frame) and return it as `m: [B, T, 1]` (None stays None)."""
    if mask is None:
        return None
    check_shape(mask, "b t", name=f"{where}: mask (valid frames)", b=dims["b"], t=dims["t"])
    check_dtype(mask, torch.bool, name=f"{where}: mask (valid frames)")
    return rearrange(mask, "b t -> b t 1")


def _time_conv(params: dict, x: torch.Tensor) -> torch.Tensor:
    """A depthwise "same" convolution along time of `x: [B, T, D]` -> `[B, T, D]`."""
    y = depthwise_conv1d(params, rearrange(x, "b t d -> b d t"), padding="same")  # conv1d is channels-first
    return rearrange(y, "b d t -> b t d")


# ------------------------------------------------------------------------------ Conformer


def init_conformer_block(key: torch.Tensor, d_model: int, num_heads: int, d_ff: int, *, conv_kernel: int = 15,
                         dtype: torch.dtype = torch.float32) -> dict:
    """Parameters of a Conformer block:

    `{"ln_ffn1", "ffn1", "ln_attn", "attn", "ln_conv", "conv": {"pw1": dense [D, 2D],
    "dw": {"w": [D, 1, k], "b": [D]}, "ln", "pw2": dense [D, D]}, "ln_ffn2", "ffn2", "ln_out"}`,
    each sub-module from `random.fold_in(key, path)` (`"ffn1"`, `"conv.pw1"`, ...).
    """
    k = lambda path: random.fold_in(key, path)  # noqa: E731 - the sub-key rule, eight times
    ln = lambda: init_layer_norm(d_model, dtype=dtype)  # noqa: E731 - five identical norms
    return {
        "ln_ffn1": ln(),
        "ffn1": init_ffn(k("ffn1"), d_model, d_ff, dtype=dtype),
        "ln_attn": ln(),
        "attn": init_mha(k("attn"), d_model, num_heads, dtype=dtype),
        "ln_conv": ln(),
        "conv": {
            "pw1": init_dense(k("conv.pw1"), d_model, 2 * d_model, dtype=dtype),
            "dw": init_depthwise_conv1d(k("conv.dw"), d_model, conv_kernel, bias=True, dtype=dtype),
            "ln": ln(),
            "pw2": init_dense(k("conv.pw2"), d_model, d_model, dtype=dtype),
        },
        "ln_ffn2": ln(),
        "ffn2": init_ffn(k("ffn2"), d_model, d_ff, dtype=dtype),
        "ln_out": ln(),
    }


def _conformer_conv(params: dict, x: torch.Tensor, m: torch.Tensor | None) -> torch.Tensor:
    """`pw2(swish(ln(dwconv(m * glu(pw1(x))))))`, x: `[B, T, D]` -> `[B, T, D]`."""
    a, g = dense(params["pw1"], x).chunk(2, dim=-1)  # [B, T, D] each
    h = _zero_padding(a * torch.sigmoid(g), m)       # GLU; padded frames must not enter the conv
    h = _time_conv(params["dw"], h)
    return dense(params["pw2"], silu(layer_norm(params["ln"], h)))


def conformer_block(params: dict, x: torch.Tensor, *, num_heads: int, mask: torch.Tensor | None = None,
                    dropout_rate: float = 0.0, key: torch.Tensor | None = None, train: bool = False,
                    impl: str = "sdpa", activation: str = "swish") -> torch.Tensor:
    """A Conformer block (Gulati et al., 2020), with LayerNorm in the convolution module:

        x = x + 1/2 drop(ffn1(ln_ffn1(x)))
        x = x + drop(mha(ln_attn(x), mask))
        x = x + drop(pw2(swish(ln(dwconv(m * glu(pw1(ln_conv(x))))))))
        x = x + 1/2 drop(ffn2(ln_ffn2(x)))
        y = ln_out(x)

    Arguments:
        x: `[B, T, D]` float.
        num_heads: H (static).
        mask: `[B, T]` bool, True on valid frames (the attention's key-padding mask, and `m`,
            which zeroes padded frames before the depthwise convolution); None = all valid.
        dropout_rate, key, train: dropout as in `funcml.nn.transformer.encoder_block`.
        impl: `"sdpa"` or `"math"` attention. activation: the FFNs' nonlinearity (the paper: swish).

    Returns: `y: [B, T, D]`.
    """
    require_key(key, train=train, needs_key=dropout_rate > 0, model="conformer_block",
                why=f"dropout_rate={dropout_rate}", call="conformer_block")
    dims = check_shape(x, "b t d", name="conformer_block: x", d=params["ln_attn"]["scale"].shape[0])
    m = _frame_mask(mask, dims, "conformer_block")
    drop = dict(dropout_rate=dropout_rate, train=train)

    def residual(name: str, h: torch.Tensor) -> torch.Tensor:
        return dropout(subkey(key, f"{name}.residual_dropout"), h, dropout_rate, train=train)

    h = ffn(params["ffn1"], layer_norm(params["ln_ffn1"], x), activation=activation,
            key=subkey(key, "ffn1.dropout"), **drop)
    x = x + 0.5 * residual("ffn1", h)
    h = mha(params["attn"], layer_norm(params["ln_attn"], x), num_heads=num_heads, mask=mask,
            key=subkey(key, "attn.dropout"), impl=impl, **drop)
    x = x + residual("attn", h)
    x = x + residual("conv", _conformer_conv(params["conv"], layer_norm(params["ln_conv"], x), m))
    h = ffn(params["ffn2"], layer_norm(params["ln_ffn2"], x), activation=activation,
            key=subkey(key, "ffn2.dropout"), **drop)
    x = x + 0.5 * residual("ffn2", h)
    return layer_norm(params["ln_out"], x)


# ---------------------------------------------------------------------------------- SAN-M


def init_sanm_block(key: torch.Tensor, d_model: int, num_heads: int, d_ff: int, *, fsmn_kernel: int = 11,
                    dtype: torch.dtype = torch.float32) -> dict:
    """Parameters of a SAN-M block: `{"ln1", "attn": mha, "fsmn": {"w": [D, 1, k]}, "ln2", "ffn"}`
    (the FSMN memory is a depthwise convolution without bias); `attn`, `fsmn` and `ffn` from
    `random.fold_in(key, name)`."""
    return {
        "ln1": init_layer_norm(d_model, dtype=dtype),
        "attn": init_mha(random.fold_in(key, "attn"), d_model, num_heads, dtype=dtype),
        "fsmn": init_depthwise_conv1d(random.fold_in(key, "fsmn"), d_model, fsmn_kernel, bias=False, dtype=dtype),
        "ln2": init_layer_norm(d_model, dtype=dtype),
        "ffn": init_ffn(random.fold_in(key, "ffn"), d_model, d_ff, dtype=dtype),
    }


def sanm_block(params: dict, x: torch.Tensor, *, num_heads: int, mask: torch.Tensor | None = None,
               dropout_rate: float = 0.0, key: torch.Tensor | None = None, train: bool = False,
               impl: str = "sdpa", activation: str = "relu") -> torch.Tensor:
    """A SAN-M block (Gao et al., 2020, arXiv:2006.01713): self-attention with an FSMN memory.

        h = ln1(x)
        V = m * (h W_v + b_v)                 m = valid frames; W_v, b_v = params["attn"]["v"]
        M = m * drop(V + dwconv_k(V))         FSMN memory, "same" padding, no bias
        x = x + drop(mha(h, mask) + M)
        y = x + drop(ffn(ln2(x)))

    V is the attention's own value projection, computed once more beside `mha` (one D x D
    matmul) so that attention keeps its fused sdpa path.

    Arguments:
        x: `[B, T, D]` float.
        num_heads: H (static).
        mask: `[B, T]` bool, True on valid frames (key padding, and `m`); None = all valid.
        dropout_rate, key, train, impl, activation: as `funcml.nn.transformer.encoder_block`.

    Returns: `y: [B, T, D]`.
    """
    require_key(key, train=train, needs_key=dropout_rate > 0, model="sanm_block",
                why=f"dropout_rate={dropout_rate}", call="sanm_block")
    dims = check_shape(x, "b t d", name="sanm_block: x", d=params["ln1"]["scale"].shape[0])
    m = _frame_mask(mask, dims, "sanm_block")
    drop = dict(dropout_rate=dropout_rate, train=train)
    h = layer_norm(params["ln1"], x)
    attn = mha(params["attn"], h, num_heads=num_heads, mask=mask, key=subkey(key, "attn.dropout"), impl=impl,
               **drop)
    v = _zero_padding(dense(params["attn"]["v"], h), m)                           # [B, T, D]
    memory = dropout(subkey(key, "fsmn.dropout"), v + _time_conv(params["fsmn"], v), dropout_rate, train=train)
    memory = _zero_padding(memory, m)
    x = x + dropout(subkey(key, "attn.residual_dropout"), attn + memory, dropout_rate, train=train)
    h = ffn(params["ffn"], layer_norm(params["ln2"], x), activation=activation, key=subkey(key, "ffn.dropout"),
            **drop)
    return x + dropout(subkey(key, "ffn.residual_dropout"), h, dropout_rate, train=train)


# --------------------------------------------------------------------------------- encoder


def _conv_channels(cfg: EncoderConfig) -> int:
    return cfg.conv_channels or cfg.d_model


def _input_width(cfg: EncoderConfig) -> int:
    """The dense projection's input width: `C * F''` after conv2d subsampling, else F."""
    if cfg.input_layer == "conv2d":
        return _conv_channels(cfg) * subsampled_lengths(cfg.input_dim, factor=4)
    return cfg.input_dim


def _init_block(key: torch.Tensor, cfg: EncoderConfig, dtype: torch.dtype) -> dict:
    sizes = (cfg.d_model, cfg.num_heads, cfg.d_ff)
    if cfg.block == "conformer":
        return init_conformer_block(key, *sizes, conv_kernel=cfg.conv_kernel, dtype=dtype)
    if cfg.block == "sanm":
        return init_sanm_block(key, *sizes, fsmn_kernel=cfg.fsmn_kernel, dtype=dtype)
    return init_encoder_block(key, *sizes, dtype=dtype)


def init_encoder(key: torch.Tensor, cfg: EncoderConfig, *, dtype: torch.dtype = torch.float32) -> dict:
    """Parameters of the encoder:

        {"input": {"conv1": conv2d [C, 1, 3, 3], "conv2": conv2d [C, C, 3, 3], "proj": dense [C F'', D]}
                   (conv2d; F'' = subsampled_lengths(F, factor=4))   or   {"proj": dense [F, D]} (linear),
         "layers": {"0": block, ..., str(L-1): block},
         "ln_f": layer norm [D]}

    Every sub-tree at path `P` is initialized from `random.fold_in(key, P)` (`"input.conv1"`,
    `"input.proj"`, `"layers.{i}"`). For `block="transformer"`, `{"layers", "ln_f"}` is exactly a
    `funcml.nn.transformer.init_encoder` stack from the same key.
    """
    if not isinstance(cfg, EncoderConfig):
        raise ConfigError(f"init_encoder: cfg must be an EncoderConfig, got {type(cfg).__name__}")
    d, c = cfg.d_model, _conv_channels(cfg)
    proj = init_dense(random.fold_in(key, "input.proj"), _input_width(cfg), d, dtype=dtype)
    if cfg.input_layer == "conv2d":
        input_layer = {"conv1": init_conv2d(random.fold_in(key, "input.conv1"), 1, c, 3, dtype=dtype),
                       "conv2": init_conv2d(random.fold_in(key, "input.conv2"), c, c, 3, dtype=dtype), "proj": proj}
    else:
        input_layer = {"proj": proj}
    return {
        "input": input_layer,
        "layers": {str(i): _init_block(random.fold_in(key, f"layers.{i}"), cfg, dtype) for i in range(cfg.num_layers)},
        "ln_f": init_layer_norm(d, dtype=dtype),
    }


def encoder_lengths(lengths: torch.Tensor | int, cfg: EncoderConfig) -> torch.Tensor | int:
    """The number of encoder frames of inputs with `lengths` frames: T -> T'.

    conv2d: `batching.subsampled_lengths(lengths, factor=4)` (`floor((floor((T - 3) / 2) + 1 - 3) / 2) + 1`,
    0 below 7 frames); linear: `lengths` unchanged. An int or integer tensor in, the same out.
    """
    return subsampled_lengths(lengths, factor=4 if cfg.input_layer == "conv2d" else 1)


def _input_layer(params: dict, x: torch.Tensor, cfg: EncoderConfig) -> torch.Tensor:
    """x: `[B, T, F]` -> `[B, T', D]`."""
    if cfg.input_layer == "linear":
        return dense(params["proj"], x)
    h = rearrange(x, "b t f -> b 1 t f")              # one input channel: the time x frequency image
    h = relu(conv2d(params["conv1"], h, stride=2))    # [B, C, T1, F1]
    h = relu(conv2d(params["conv2"], h, stride=2))    # [B, C, T', F'']
    return dense(params["proj"], rearrange(h, "b c t f -> b t (c f)"))


_BLOCK_KEYS = {
    "transformer": {"ln1", "attn", "ln2", "ffn"},
    "conformer": {"ln_ffn1", "ffn1", "ln_attn", "attn", "ln_conv", "conv", "ln_ffn2", "ffn2", "ln_out"},
    "sanm": {"ln1", "attn", "fsmn", "ln2", "ffn"},
}


def _check_params(params: dict, cfg: EncoderConfig) -> None:
    if not isinstance(params, dict) or set(params) != {"input", "layers", "ln_f"}:
        got = sorted(params) if isinstance(params, dict) else type(params).__name__
        raise ConfigError(f"encode: params must be init_encoder's dict with keys ['input', 'layers', 'ln_f'], "
                          f"got {got}")
    n = len(params["layers"])
    if n != cfg.num_layers:
        raise ConfigError(f"encode: params hold {n} layers but cfg.num_layers={cfg.num_layers}; "
                          "initialize params with init_encoder(key, cfg) for this cfg")
    want = _BLOCK_KEYS[cfg.block]
    got = set(params["layers"]["0"])
    if got != want:
        raise ConfigError(f"encode: params['layers']['0'] has keys {sorted(got)}, which are not a "
                          f"cfg.block={cfg.block!r} block (expected {sorted(want)})")
    check_shape(params["input"]["proj"]["w"], "din d", name="encode: params['input']['proj']['w']",
                din=_input_width(cfg), d=cfg.d_model)


def _check_lengths(lengths: torch.Tensor, dims: dict[str, int], cfg: EncoderConfig) -> None:
    check_shape(lengths, "b", name="lengths", b=dims["b"])
    check_dtype(lengths, "int", name="lengths")
    t = dims["t"]
    conv2d_input = cfg.input_layer == "conv2d"
    if conv2d_input and t < _CONV2D_MIN_FRAMES:
        raise RangeError(f"x: T={t} frames is too short for conv2d subsampling, which needs at least "
                         f"{_CONV2D_MIN_FRAMES} frames to produce one output frame; drop shorter utterances "
                         "or use input_layer='linear'")
    if lengths.numel() == 0 or not host_readable(lengths):
        return
    lo, hi = int(lengths.min()), int(lengths.max())
    if lo < 1 or hi > t:
        raise RangeError(f"lengths: expected values in [1, T={t}] (the valid frames of each item of x: [B, T, F]), "
                         f"got min {lo} and max {hi}")
    if conv2d_input and lo < _CONV2D_MIN_FRAMES:
        b = int(torch.argmin(lengths))
        raise RangeError(f"lengths[{b}]={lo}: conv2d subsampling needs at least {_CONV2D_MIN_FRAMES} frames per "
                         "item (shorter items have T' = 0 encoder frames); drop shorter utterances or use "
                         "input_layer='linear'")


def encode(params: dict, x: torch.Tensor, lengths: torch.Tensor, cfg: EncoderConfig, *,
           key: torch.Tensor | None = None, train: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Encode a padded batch of features (see the module doc for the equations).

    Arguments:
        params: from `init_encoder(key, cfg)`.
        x: `[B, T, F]` float, `F = cfg.input_dim`; frames `t >= lengths[b]` are padding (any
            values, even NaN: they are zeroed first).
        lengths: `[B]` int64, the valid frames of each item, in `[1, T]` (conv2d: `>= 7`).
        cfg: the `EncoderConfig` (static).
        key: PRNG key for dropout; required when `train` and `cfg.dropout > 0`.
        train: training mode (dropout on).

    Returns: `(h, out_lengths, mask)`: `h: [B, T', D]` float (x's dtype outside autocast), after
    the final layer norm and exactly 0 on padded frames; `out_lengths: [B]` int64 =
    `encoder_lengths(lengths, cfg)`; `mask: [B, T']` bool, True on valid frames.

    Raises: ShapeError for a wrong feature dim (names `x` and the expected F) or lengths of
    the wrong size; RangeError for lengths outside `[1, T]` or an input too short for conv2d
    subsampling (fewer than 7 frames; value checks run eagerly on the CPU only); ConfigError when
    `params` do not match `cfg`; PRNGKeyError for a missing dropout key.
    """
    if not isinstance(cfg, EncoderConfig):
        raise ConfigError(f"encode: cfg must be an EncoderConfig, got {type(cfg).__name__}")
    require_key(key, train=train, needs_key=cfg.dropout > 0, model="encode", why=f"dropout={cfg.dropout}",
                call="encode")
    dims = check_shape(x, "b t f", name="x", f=cfg.input_dim)
    check_dtype(x, "float", name="x")
    _check_lengths(lengths, dims, cfg)
    _check_params(params, cfg)

    x = _zero_padding(x, rearrange(lengths_to_mask(lengths, dims["t"]), "b t -> b t 1"))
    u = _input_layer(params["input"], x, cfg)                                # [B, T', D]
    t_out, d = u.shape[1], cfg.d_model
    out_lengths = encoder_lengths(lengths, cfg)
    mask = lengths_to_mask(out_lengths, t_out)                               # [B, T']
    pe = sinusoidal_1d(t_out, d, dtype=u.dtype, device=u.device)
    z = u * math.sqrt(d) + rearrange(pe, "t d -> 1 t d")
    z = dropout(subkey(key, "input.dropout"), z, cfg.dropout, train=train)

    block = {"transformer": encoder_block, "conformer": conformer_block, "sanm": sanm_block}[cfg.block]
    for i in range(cfg.num_layers):
        z = block(params["layers"][str(i)], z, num_heads=cfg.num_heads, mask=mask, dropout_rate=cfg.dropout,
                  key=subkey(key, f"layers.{i}"), train=train, impl=cfg.impl, activation=cfg.activation)
    h = _zero_padding(layer_norm(params["ln_f"], z), rearrange(mask, "b t -> b t 1"))
    return h, out_lengths, mask
