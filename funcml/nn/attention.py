"""Multi-head attention, written from the equations (Vaswani et al., "Attention is all you
need", NeurIPS 2017):

    Q = x W_q + b_q,   K = c W_k + b_k,   V = c W_v + b_v          (c = context, or x itself)
    head_h = softmax(Q_h K_h^T / sqrt(d_head) + M) V_h              M = 0 where attended, -inf elsewhere
    y = concat(head_1, ..., head_H) W_o + b_o

    params = init_mha(key, d_model=64, num_heads=4)
    y = mha(params, x, num_heads=4, mask=valid)                 # self-attention, x: [B, T, 64]
    cross = init_mha(key, d_model=64, num_heads=4, d_kv=32)
    y = mha(cross, x, memory, num_heads=4, mask=memory_valid)   # memory: [B, S, 32]

Masks are boolean and **True means attend** (a valid position), the opposite of
`nn.MultiheadAttention`'s `key_padding_mask`. A query row whose every key is masked (e.g. a
padding query under `make_attention_mask(q_valid, ...)`) has nothing to attend to: its
weights and its output are defined to be zero, on both paths, with zero (finite) gradients
through it, where the plain equation would give 0/0 = NaN.

Two implementations give the same numbers (tested to 1e-5 in float32):
`impl="math"` writes the equation out; `impl="sdpa"` (the default, fast path) calls
`F.scaled_dot_product_attention`. Attention dropout always runs on the math path with an
explicit key, because sdpa's own `dropout_p` draws from torch's global RNG, which funcml
never uses; so does `return_weights=True`, since sdpa does not return the weights.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange

from .. import random
from ..checks import check_dtype, check_shape
from ..errors import ConfigError, ShapeError
from .layers import dense, dropout, init_dense
from .model import require_key

__all__ = ["init_mha", "mha", "make_attention_mask", "check_heads"]

_IMPLS = ("sdpa", "math")


def check_heads(d_model: int, num_heads: int, where: str) -> int:
    """`d_head = d_model // num_heads`, or a `ConfigError` naming `where` when `num_heads` is not
    a positive int or does not divide `d_model` (the check every attention config makes)."""
    if not isinstance(num_heads, int) or num_heads < 1:
        raise ConfigError(f"{where}: num_heads must be a positive int, got {num_heads!r}")
    if d_model % num_heads:
        raise ConfigError(
            f"{where}: d_model={d_model} is not divisible by num_heads={num_heads}; "
            f"choose num_heads among the divisors of {d_model}"
        )
    return d_model // num_heads


def init_mha(key: torch.Tensor, d_model: int, num_heads: int, *, d_kv: int | None = None,
             bias: bool = True, dtype: torch.dtype = torch.float32) -> dict:
    """Parameters of multi-head attention.

    Arguments:
        key: PRNG key.
        d_model: the query (and output) feature dim D; a multiple of `num_heads`.
        num_heads: H; each head has `d_head = D // H` features.
        d_kv: the feature dim of the context (keys and values) for cross-attention;
            defaults to `d_model`.
        bias: whether the four projections have biases.

    Returns: `{"q": dense [D, D], "k": dense [Dkv, D], "v": dense [Dkv, D], "o": dense [D, D]}`
    (dense params are `{"w": [din, dout], "b": [dout]}`, Xavier-uniform weights), each
    projection from `random.fold_in(key, name)`.

    Raises: ConfigError if `d_model % num_heads != 0`.
    """
    check_heads(d_model, num_heads, "init_mha")
    d_kv = d_model if d_kv is None else d_kv
    sizes = {"q": (d_model, d_model), "k": (d_kv, d_model), "v": (d_kv, d_model), "o": (d_model, d_model)}
    return {name: init_dense(random.fold_in(key, name), din, dout, bias=bias, dtype=dtype)
            for name, (din, dout) in sizes.items()}


def _causal_mask(t: int, s: int, device: torch.device) -> torch.Tensor:
    """`[T, S]` bool, True where key j <= query i (top-left aligned, as sdpa's `is_causal`)."""
    return torch.arange(s, device=device)[None, :] <= torch.arange(t, device=device)[:, None]


def make_attention_mask(q_valid: torch.Tensor | None = None, kv_valid: torch.Tensor | None = None,
                        causal: bool = False, *, q_len: int | None = None,
                        kv_len: int | None = None) -> torch.Tensor:
    """A full attention mask `[B, T, S]` bool, True = query t may attend to key s.

        mask[b, t, s] = q_valid[b, t] & kv_valid[b, s] & (s <= t if causal)

    Arguments:
        q_valid: `[B, T]` bool, True for real (non-padding) queries; None = all valid.
            A padding query gets an all-False row, so `mha` outputs zeros there.
        kv_valid: `[B, S]` bool, True for real keys; None = all valid.
        causal: also mask keys after the query (`s > t`).
        q_len, kv_len: T and S when the tensor that would give them is None (T defaults
            to S and S to T, as in self-attention).

    Returns: `[B, T, S]` bool (`[1, T, S]` when both `q_valid` and `kv_valid` are None).
    """
    dims: dict[str, int] = {}
    for arg, name, spec in ((q_valid, "q_valid", "b t"), (kv_valid, "kv_valid", "b s")):
        if arg is not None:
            dims = check_shape(arg, spec, name=name, **dims)
            check_dtype(arg, torch.bool, name=name)
    t, s = dims.get("t", q_len), dims.get("s", kv_len)
    t, s = (s if t is None else t), (t if s is None else s)
    if t is None or s is None:
        raise ShapeError("make_attention_mask: give q_valid, kv_valid, or q_len/kv_len to fix the mask's [T, S]")
    for given, bound, name in ((q_len, t, "q_len"), (kv_len, s, "kv_len")):
        if given is not None and given != bound:
            raise ShapeError(f"make_attention_mask: {name}={given} but the valid masks give {bound}")
    ref = q_valid if q_valid is not None else kv_valid
    device = ref.device if ref is not None else None
    mask = torch.ones(dims.get("b", 1), t, s, dtype=torch.bool, device=device)
    if q_valid is not None:
        mask = mask & q_valid[:, :, None]
    if kv_valid is not None:
        mask = mask & kv_valid[:, None, :]
    if causal:
        mask = mask & _causal_mask(t, s, mask.device)
    return mask


def _valid_mask(mask: torch.Tensor | None, causal: bool, dims: dict[str, int],
                device: torch.device) -> torch.Tensor | None:
    """The combined mask, `[B|1, T|1, S]` bool (True = attend), or None if nothing is masked."""
    valid = None
    if mask is not None:
        check_dtype(mask, torch.bool, name="mask (True = attend)")
        if mask.ndim == 2:
            check_shape(mask, "b s", name="mask (key padding)", **dims)
            valid = rearrange(mask, "b s -> b 1 s")
        elif mask.ndim == 3:
            check_shape(mask, "_ t s", name="mask (full)", **dims)
            if mask.shape[0] not in (1, dims["b"]):
                raise ShapeError(
                    f"mask (full): expected shape [b={dims['b']} (or 1), t={dims['t']}, s={dims['s']}], "
                    f"got {list(mask.shape)}"
                )
            valid = mask
        else:
            raise ShapeError(
                f"mask: expected a key-padding mask [b={dims['b']}, s={dims['s']}] or a full mask "
                f"[b={dims['b']}, t={dims['t']}, s={dims['s']}], got {list(mask.shape)}"
            )
    if causal:
        tri = _causal_mask(dims["t"], dims["s"], device)[None]
        valid = tri if valid is None else valid & tri
    return valid


def mha(params: dict, x: torch.Tensor, context: torch.Tensor | None = None, *, num_heads: int,
        mask: torch.Tensor | None = None, causal: bool = False, dropout_rate: float = 0.0,
        key: torch.Tensor | None = None, train: bool = False, impl: str = "sdpa",
        return_weights: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Multi-head scaled dot-product attention.

        Q, K, V = x W_q + b_q, c W_k + b_k, c W_v + b_v;   split into H heads of d = D / H
        A = softmax(Q K^T / sqrt(d) + M)       M[t, s] = 0 if mask[t, s] else -inf
        y = merge_heads(dropout(A) V) W_o + b_o

    Arguments:
        params: from `init_mha`.
        x: `[B, T, D]` float, the queries.
        context: `[B, S, Dkv]` float, the keys and values; None = self-attention (`x`).
        num_heads: H (static; must divide D).
        mask: bool, True = attend: a key-padding mask `[B, S]` or a full mask `[B, T, S]`
            (or `[1, T, S]`, broadcast over the batch); None = attend everywhere.
        causal: also mask keys after the query (key s > query t, top-left aligned).
        dropout_rate: dropout on the attention weights A, applied only when `train`.
        key: PRNG key for that dropout; required when `train` and `dropout_rate > 0`.
        train: training mode (dropout on).
        impl: `"sdpa"` (`F.scaled_dot_product_attention`, the fast path) or `"math"`.
            Dropout and `return_weights` always take the math path (see the module doc).
        return_weights: also return A (before dropout).

    Returns: `y: [B, T, D]`, or `(y, A: [B, H, T, S])` with `return_weights=True`. Rows of A
    sum to 1, except query rows with no key to attend to, where A and y are zero.

    Raises: ShapeError (names the argument and both shapes), DTypeError for a non-bool mask,
    ConfigError for a bad `num_heads` or `impl`, PRNGKeyError for a missing dropout key.
    """
    if impl not in _IMPLS:
        raise ConfigError(f"mha: impl must be one of {_IMPLS}, got {impl!r}")
    d_model = params["q"]["w"].shape[1]
    d_head = check_heads(d_model, num_heads, "mha")
    dims = check_shape(x, "b t d", name="x", d=params["q"]["w"].shape[0])
    check_dtype(x, "float", name="x")
    if context is None:
        context = x
    else:
        check_dtype(context, "float", name="context")
    dims = check_shape(context, "b s dkv", name="context", **dims, dkv=params["k"]["w"].shape[0])
    use_dropout = train and dropout_rate > 0
    require_key(key, train=train, needs_key=dropout_rate > 0, model="mha", why=f"dropout_rate={dropout_rate}",
                call="mha")
    valid = _valid_mask(mask, causal, dims, x.device)

    # A query row with no valid key would be softmax over all -inf = NaN. Let such rows attend
    # everywhere (finite numbers), then multiply their weights and output by zero: the result
    # is exactly zero and no NaN can reach the gradients.
    # A causal mask alone never empties a row (key 0 is always visible); only a user mask can.
    guard = mask is not None
    attend = valid
    if guard:
        row_valid = valid.any(dim=-1)  # [B|1, T|1]
        attend = valid | ~row_valid[..., None]
    q = rearrange(dense(params["q"], x), "b t (h d) -> b h t d", h=num_heads)
    k = rearrange(dense(params["k"], context), "b s (h d) -> b h s d", h=num_heads)
    v = rearrange(dense(params["v"], context), "b s (h d) -> b h s d", h=num_heads)
    scale = 1.0 / math.sqrt(d_head)

    weights = None
    if impl == "math" or return_weights or use_dropout:
        logits = torch.einsum("bhtd,bhsd->bhts", q, k) * scale  # [B, H, T, S]
        if attend is not None:
            logits = logits.masked_fill(~rearrange(attend, "b t s -> b 1 t s"), float("-inf"))
        weights = torch.softmax(logits, dim=-1)
        if guard:
            weights = weights * rearrange(row_valid, "b t -> b 1 t 1").to(weights.dtype)
        attn = dropout(key, weights, dropout_rate, train=train)
        out = torch.einsum("bhts,bhsd->bhtd", attn, v)  # [B, H, T, d]
    else:
        # sdpa's dropout_p would draw from the global RNG: dropout never takes this path.
        sdpa_mask = rearrange(attend, "b t s -> b 1 t s") if guard else None
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=sdpa_mask, dropout_p=0.0, is_causal=causal and not guard,
            scale=scale)  # [B, H, T, d]
    y = dense(params["o"], rearrange(out, "b h t d -> b t (h d)"))
    if guard:
        y = y * rearrange(row_valid, "b t -> b t 1").to(y.dtype)
    return (y, weights) if return_weights else y
