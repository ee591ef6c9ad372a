"""Paraformer's non-autoregressive decoder and the glancing (GLM) sampler.

    params = init_nar_decoder(key, vocab_size=32, d_model=144, num_heads=4, d_ff=576, num_layers=2)
    logits = nar_decoder(params, embeds, token_mask, memory, memory_mask, num_heads=4)   # [B, N, V]
    queries, replaced = glance(key, embeds, logits0, targets, token_mask, params["embed"], ratio=0.75)

The decoder (Gao et al., "Paraformer", Interspeech 2022, arXiv:2206.08317, section 2.2) reads
every output position at once. Its queries are the acoustic embeddings that CIF fired, one per
token, plus sinusoidal positions; each block is

    x = x + self_attn(ln1(x), token_mask)                no causal mask: every token sees every other
    x = x + cross_attn(ln2(x), memory, memory_mask)      the encoder output
    x = x + ffn(ln3(x))

(`funcml.nn.transformer.decoder` with `causal=False`), then `logits = dense(ln_f(x))`. Keys
follow the sub-key rule of `funcml.nn.model`: `embed`, `blocks` and `out` are initialized from
`random.fold_in(key, name)`, and the blocks' dropout draws from `fold_in(key, "blocks")`.

Glancing language model (GLM) sampling (Qian et al., "Glancing Transformer for
non-autoregressive neural machine translation", ACL 2021; Paraformer section 2.3). Training
runs the decoder twice. The first pass, without gradients, predicts `y0 = argmax logits0`;
with `W_b = #{n < L_b : y0_{b,n} != y_{b,n}}` wrong tokens, the sampler picks

    K_b = floor(ratio * W_b)

positions uniformly at random among the `L_b` valid ones and replaces their acoustic
embedding by the embedding of the *target* token there, `E[y_{b,n}]`. The second pass, with the
loss, decodes these mixed queries: the worse the first pass, the more ground truth the
decoder glances at, so it learns the dependencies between tokens that a single parallel pass
cannot see. At inference there is one pass over the acoustic embeddings alone.
"""

from __future__ import annotations

import torch
from einops import rearrange

from .. import random
from ..checks import check_dtype, check_shape
from ..errors import ConfigError
from ..nn.layers import dense, embedding, init_dense, init_embedding
from ..nn.model import subkey
from ..nn.posenc import sinusoidal_1d
from ..nn.transformer import decoder as _decoder_stack
from ..nn.transformer import init_decoder as _init_decoder_stack

__all__ = ["init_nar_decoder", "nar_decoder", "glance", "embed_tokens"]


def init_nar_decoder(key: torch.Tensor, *, vocab_size: int, d_model: int, num_heads: int, d_ff: int,
                     num_layers: int, d_memory: int | None = None, dtype: torch.dtype = torch.float32) -> dict:
    """Parameters of the NAR decoder.

    Returns `{"embed": {"table": [V, D]}, "blocks": decoder stack, "out": dense [D, V]}`; `embed`
    is the target-token table the glancing sampler reads (std `D ** -0.5`, the scale of the
    acoustic embeddings), `d_memory` the encoder width (default `d_model`); each entry is
    initialized from `random.fold_in(key, name)`.
    """
    for name, v in (("vocab_size", vocab_size), ("d_model", d_model), ("num_heads", num_heads), ("d_ff", d_ff),
                    ("num_layers", num_layers)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"init_nar_decoder: {name} must be a positive int, got {v!r}")
    return {
        "embed": init_embedding(random.fold_in(key, "embed"), vocab_size, d_model, std=d_model ** -0.5, dtype=dtype),
        "blocks": _init_decoder_stack(random.fold_in(key, "blocks"), num_layers, d_model, num_heads, d_ff,
                                      d_memory=d_memory, dtype=dtype),
        "out": init_dense(random.fold_in(key, "out"), d_model, vocab_size, dtype=dtype),
    }


def nar_decoder(params: dict, queries: torch.Tensor, token_mask: torch.Tensor, memory: torch.Tensor,
                memory_mask: torch.Tensor, *, num_heads: int, dropout_rate: float = 0.0,
                key: torch.Tensor | None = None, train: bool = False, impl: str = "sdpa",
                activation: str = "relu") -> torch.Tensor:
    """Decode all token positions in parallel.

    Arguments:
        queries: `[B, N, D]` float, the acoustic embeddings (or GLM-mixed ones).
        token_mask: `[B, N]` bool, True on the positions that hold a token.
        memory: `[B, T, Dm]` float, the encoder output; memory_mask: `[B, T]` bool, True on valid frames.
        num_heads, dropout_rate, key, train, impl, activation: as `funcml.nn.transformer.decoder`
            (the stack draws its dropout from `fold_in(key, "blocks")`).

    Returns `logits: [B, N, V]` (float32 or the autocast dtype); rows of padded positions are
    computed but meaningless (mask them in the loss).
    """
    dims = check_shape(queries, "b n d", name="nar_decoder: queries", d=params["embed"]["table"].shape[1])
    check_shape(token_mask, "b n", name="nar_decoder: token_mask", b=dims["b"], n=dims["n"])
    check_dtype(token_mask, torch.bool, name="nar_decoder: token_mask")
    check_shape(memory, "b t dm", name="nar_decoder: memory", b=dims["b"])
    check_shape(memory_mask, "b t", name="nar_decoder: memory_mask", b=dims["b"], t=memory.shape[1])
    pos = sinusoidal_1d(dims["n"], dims["d"], dtype=queries.dtype, device=queries.device)
    x = queries + rearrange(pos, "n d -> 1 n d")
    # A query row with no valid key at all (a padded position) attends to nothing and gets
    # zeros from funcml attention, so padded positions never produce NaNs.
    x = _decoder_stack(params["blocks"], x, memory, num_heads=num_heads, self_mask=token_mask,
                       memory_mask=memory_mask, causal=False, dropout_rate=dropout_rate, key=subkey(key, "blocks"),
                       train=train, impl=impl, activation=activation)
    return dense(params["out"], x)


def embed_tokens(params: dict, tokens: torch.Tensor) -> torch.Tensor:
    """The decoder's target embeddings `E[y]`: `tokens [B, N] int -> [B, N, D]`."""
    return embedding(params["embed"], tokens)


def glance(key: torch.Tensor, queries: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor,
           token_mask: torch.Tensor, target_embeds: torch.Tensor, *, ratio: float = 0.75
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """The glancing sampler: mix target embeddings into the acoustic ones (see the module doc).

    Arguments:
        key: a funcml key (the random positions).
        queries: `[B, N, D]` the acoustic embeddings of the first pass.
        logits: `[B, N, V]` the first pass's logits (read without gradient).
        targets: `[B, N]` int target ids (anything on padded positions).
        token_mask: `[B, N]` bool, True on the `L_b` valid positions.
        target_embeds: `[B, N, D]` the embeddings `E[targets]`.
        ratio: in [0, 1]; `K_b = floor(ratio * wrong_b)` positions are replaced.

    Returns `(mixed [B, N, D], replaced [B, N] bool)`. The choice is branch-free (a random
    score per position, ranked; the `K_b` lowest valid ones are replaced), so it compiles.
    """
    random.check_key(key)
    dims = check_shape(queries, "b n d", name="glance: queries")
    check_shape(logits, "b n v", name="glance: logits", b=dims["b"], n=dims["n"])
    check_shape(targets, "b n", name="glance: targets", b=dims["b"], n=dims["n"])
    check_shape(token_mask, "b n", name="glance: token_mask", b=dims["b"], n=dims["n"])
    check_shape(target_embeds, "b n d", name="glance: target_embeds", **dims)
    if not isinstance(ratio, (int, float)) or not 0.0 <= ratio <= 1.0:
        raise ConfigError(f"glance: ratio must be in [0, 1], got {ratio!r}")
    pred = logits.detach().argmax(-1)
    wrong = ((pred != targets) & token_mask).sum(-1)                                  # [B]
    k = torch.floor(wrong.to(torch.float32) * ratio).long()                           # [B]: K_b
    scores = random.uniform(key, token_mask.shape, device=queries.device)
    scores = torch.where(token_mask, scores, torch.full_like(scores, 2.0))            # padding ranks last
    rank = torch.argsort(torch.argsort(scores, dim=-1), dim=-1)                       # rank of each position
    replaced = (rank < rearrange(k, "b -> b 1")) & token_mask
    mixed = torch.where(rearrange(replaced, "b n -> b n 1"), target_embeds.to(queries.dtype), queries)
    return mixed, replaced
