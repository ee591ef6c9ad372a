"""U-Net with a transformer at the bottleneck, in the spirit of TransUNet (Chen et al.,
"TransUNet: Transformers make strong encoders for medical image segmentation", 2021): the
convolutional encoder sees local detail, the transformer relates every bottleneck position to
every other one, and the convolutional decoder with skip connections restores the resolution.

    cfg = UNetTransformerConfig(depth=3, base_width=16, num_layers=2, num_heads=4)
    params, state = model.init(key, cfg)
    logits, state = model.apply(params, state, images, cfg, key=k, train=True)   # [B, 3, H, W] -> [B, 5, H, W]

With `z: [B, C, h, w]` the bottleneck features of `funcml.seg.unet.unet_encoder`
(`C = base_width * 2^depth`, `h = H / 2^depth`, `w = W / 2^depth`) and `D = d_model`:

    t = rearrange(z, "b c h w -> b (h w) c")              [B, h*w, C]   token r*w + c is pixel (r, c)
    t = t W_in + b_in                                     [B, h*w, D]   only when D != C
    t = t + P                                             P: [h*w, D], sinusoidal_2d(h, w, D) or a learned table
    t = ln_f(block_{L-1}(... block_0(t)))                 pre-norm encoder blocks (funcml.nn.transformer)
    t = t W_out + b_out                                   [B, h*w, C]   only when D != C
    z = rearrange(t, "b (h w) c -> b c h w", h=h, w=w)    [B, C, h, w]

and then `funcml.seg.unet.unet_decoder`. With `num_layers=0` there is no transformer (and no
`ln_f`): the bottleneck only gets the positional encoding added, an ablation of the
attention. The U-Net parts have the same names and the same initial values as in a
`UNetConfig` model built from the same key and fields; the new parts are `proj_in`,
`proj_out` (dense, `D != C` only), `posenc` (`{"table": [max_tokens, D]}`, learned only) and
`transformer` (`num_layers > 0` only).

The learned table is indexed by token position `r * w + c`, so it belongs to one bottleneck
grid: train and evaluate at one image size (at most `max_tokens` bottleneck positions). The
sinusoidal encoding works at any size.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from einops import rearrange

from .. import config, random
from ..nn import model as _model
from ..nn.layers import dense, init_dense
from ..nn.posenc import init_learned_posenc, learned_posenc, sinusoidal_2d
from ..nn.transformer import encoder, init_encoder
from .unet import (UNetConfig, crop_logits, init_unet_decoder, init_unet_encoder, prepare_input, unet_decoder,
                   unet_encoder)

__all__ = ["UNetTransformerConfig", "init_unet_transformer", "apply_unet_transformer", "UNetTransformer"]

PyTree = Any


@dataclasses.dataclass(frozen=True)
class UNetTransformerConfig(UNetConfig):
    """A U-Net (every UNetConfig field, same meaning) with a transformer at the bottleneck."""

    num_layers: int = 2
    """Pre-norm transformer encoder blocks at the bottleneck (0: none, only the positional encoding)."""
    num_heads: int = 4
    """Attention heads, a divisor of d_model."""
    d_model: int | None = None
    """Token width D (None: the bottleneck width base_width * 2^depth; another value adds C -> D -> C projections)."""
    d_ff: int | None = None
    """FFN hidden width (None: 4 * d_model)."""
    transformer_dropout: float = 0.0
    """Dropout inside the transformer blocks in train mode (attention weights, FFN, residual branches)."""
    posenc: str = "sinusoidal"
    """Either "sinusoidal" (2-D sinusoids, D divisible by 4) or "learned"."""
    max_tokens: int = 256
    """Positions of the learned table (h * w of the bottleneck grid must fit)."""
    impl: str = "sdpa"
    """Attention implementation: "sdpa" (fast) or "math" (the equations)."""

    def __post_init__(self):
        super().__post_init__()
        config.require(_is_int(self.num_layers) and self.num_layers >= 0, self,
                       f"num_layers must be a non-negative int, got {self.num_layers!r}")
        config.require_positive_int(self, "num_heads", "max_tokens")
        for field in ("d_model", "d_ff"):
            if getattr(self, field) is not None:  # None: derived from the bottleneck width
                config.require_positive_int(self, field)
        config.require_in_range(self, 0, 1, "transformer_dropout", high_open=True)
        config.require_one_of(self, "posenc", ("sinusoidal", "learned"))
        config.require_one_of(self, "impl", ("sdpa", "math"))
        config.require(self.token_dim % self.num_heads == 0, self,
                       f"d_model={self.token_dim} is not divisible by num_heads={self.num_heads}; "
                       f"choose num_heads among the divisors of {self.token_dim}")
        config.require(self.posenc != "sinusoidal" or self.token_dim % 4 == 0, self,
                       f"posenc='sinusoidal' needs d_model={self.token_dim} divisible by 4 "
                       "(a sin/cos pair per axis); set d_model or use posenc='learned'")

    @property
    def token_dim(self) -> int:
        """D: `d_model`, or the bottleneck width when it is None."""
        return self.bottleneck_width if self.d_model is None else self.d_model

    @property
    def ffn_dim(self) -> int:
        """The FFN hidden width: `d_ff`, or `4 * D` when it is None."""
        return 4 * self.token_dim if self.d_ff is None else self.d_ff

    @property
    def projects(self) -> bool:
        """Whether tokens are projected `C -> D -> C` (D differs from the bottleneck width C)."""
        return self.token_dim != self.bottleneck_width


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def init_unet_transformer(key: torch.Tensor, cfg: UNetTransformerConfig) -> tuple[PyTree, PyTree]:
    """`(params, state)`: the U-Net's `{"enc", "bottleneck", "dec", "head"}` (from the same
    key, the same values as `funcml.seg.unet.init_unet`), plus `"proj_in": {"w": [C, D], "b"}`,
    `"proj_out": {"w": [D, C], "b"}` when `D != C`, `"posenc": {"table": [max_tokens, D]}`
    when learned, and `"transformer"` (`funcml.nn.transformer.init_encoder`) when
    `num_layers > 0`. The state holds the BatchNorm statistics only (`{}` unless `norm="batch"`).
    """
    enc_params, enc_state = init_unet_encoder(key, cfg)
    dec_params, dec_state = init_unet_decoder(key, cfg)
    c, d = cfg.bottleneck_width, cfg.token_dim
    params = dict(enc_params)
    if cfg.projects:
        params["proj_in"] = init_dense(random.fold_in(key, "proj_in"), c, d)
        params["proj_out"] = init_dense(random.fold_in(key, "proj_out"), d, c)
    if cfg.posenc == "learned":
        params["posenc"] = init_learned_posenc(random.fold_in(key, "posenc"), cfg.max_tokens, d)
    if cfg.num_layers > 0:
        params["transformer"] = init_encoder(random.fold_in(key, "transformer"), cfg.num_layers, d,
                                             cfg.num_heads, cfg.ffn_dim)
    params.update(dec_params)
    return params, {**enc_state, **dec_state}


def _bottleneck_transformer(params: PyTree, z: torch.Tensor, cfg: UNetTransformerConfig, *,
                            key: torch.Tensor | None, train: bool) -> torch.Tensor:
    """z: `[B, C, h, w]` -> `[B, C, h, w]`, the equations of the module docstring."""
    h, w = z.shape[-2:]
    tokens = rearrange(z, "b c h w -> b (h w) c")  # [B, C, h, w] -> [B, h*w, C]
    if cfg.projects:
        tokens = dense(params["proj_in"], tokens)  # [B, h*w, C] -> [B, h*w, D]
    if cfg.posenc == "sinusoidal":
        pe = sinusoidal_2d(h, w, cfg.token_dim, dtype=tokens.dtype, device=tokens.device)  # [h*w, D], row-major
    else:
        pe = learned_posenc(params["posenc"], h * w).to(tokens.dtype)  # [h*w, D]
    tokens = tokens + pe  # [B, h*w, D] + [h*w, D]
    if cfg.num_layers > 0:
        tokens = encoder(params["transformer"], tokens, num_heads=cfg.num_heads,
                         dropout_rate=cfg.transformer_dropout, key=key, train=train, impl=cfg.impl)
    if cfg.projects:
        tokens = dense(params["proj_out"], tokens)  # [B, h*w, D] -> [B, h*w, C]
    return rearrange(tokens, "b (h w) c -> b c h w", h=h, w=w)  # [B, h*w, C] -> [B, C, h, w]


def apply_unet_transformer(params: PyTree, state: PyTree, x: torch.Tensor, cfg: UNetTransformerConfig, *,
                           key: torch.Tensor | None = None, train: bool = False) -> tuple[torch.Tensor, PyTree]:
    """Per-pixel class logits.

    Arguments:
        x: `[B, in_channels, H, W]` float; H, W not multiples of `2^depth` are padded (and
            the logits cropped back) or rejected, as `cfg.pad_mode` says.
        key: needed when `train` and `dropout > 0` or `transformer_dropout > 0` (else
            `PRNGKeyError`); the U-Net draws from `key` itself (its bottleneck dropout is
            `fold_in(key, "bottleneck.dropout")`), the transformer from `fold_in(key, "transformer")`.
        train: BatchNorm uses batch statistics and returns new running statistics; in eval
            mode it uses the running statistics and `state` is returned as given.

    Returns: `(logits: [B, num_classes, H, W], state)`; the input `state` is never modified.
    """
    needs_key = cfg.dropout > 0 or (cfg.transformer_dropout > 0 and cfg.num_layers > 0)
    _model.require_key(key, train=train, needs_key=needs_key, model="UNetTransformer")
    x, size = prepare_input(x, cfg, "UNetTransformer")
    z, skips, enc_state = unet_encoder(params, state, x, cfg, key=key, train=train)
    uses_key = train and key is not None and cfg.transformer_dropout > 0
    t_key = random.fold_in(key, "transformer") if uses_key else None
    z = _bottleneck_transformer(params, z, cfg, key=t_key, train=train)
    logits, dec_state = unet_decoder(params, state, z, skips, cfg, train=train)
    return crop_logits(logits, size), ({**enc_state, **dec_state} if train else state)


UNetTransformer = _model.register(UNetTransformerConfig, init_unet_transformer, apply_unet_transformer)
