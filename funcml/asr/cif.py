"""Continuous integrate-and-fire (CIF): the predictor and aligner of Paraformer.

    params = init_cif_predictor(key, d_model=256)
    alpha = cif_weights(params, h, mask)                                  # [B, T] in (0, 1), 0 on padding
    out = cif(h, alpha, mask=mask, target_lengths=ys_lengths)             # training: exactly L_b tokens
    out = cif(h, alpha, mask=mask)                                        # inference: tail 0.45
    loss_qua = quantity_loss(alpha, mask, ys_lengths)                     # |sum_t alpha_t - L|
    start_s, end_s = fire_times(out.fire_positions, frame_shift_s=0.06)   # token timestamps

CIF (Dong & Xu, "CIF: Continuous Integrate-and-Fire for end-to-end speech recognition",
ICASSP 2020, arXiv:1905.11235) gives every encoder frame `h_t` a weight `alpha_t >= 0`, walks
forward accumulating the weights, and *fires* a token each time the accumulated weight
crosses the threshold `beta` (1.0): the token's embedding is the alpha-weighted sum of the
frames it integrated, a frame that straddles a boundary being split between the two tokens.
Paraformer (Gao et al., "Paraformer: fast and accurate parallel transformer for
non-autoregressive end-to-end speech recognition", Interspeech 2022, arXiv:2206.08317) uses
it to predict the number of tokens and their acoustic embeddings for a parallel decoder.

The walk is written here without a loop over time. With the cumulative sums

    c_t = sum_{s <= t} alpha_s,        c_{-1} = 0,

token `n` (0-based) owns the interval `[n beta, (n + 1) beta)` of accumulated weight, and the
part of frame `t` that falls in it is

    w_{n,t} = max(0, min(c_t, (n + 1) beta) - max(c_{t-1}, n beta)),        e_n = sum_t w_{n,t} h_t,

which is exactly the loop's split of a boundary frame into `beta - accumulated` for the token
that fires and the remainder for the next one (and also handles a frame whose weight spans
several tokens). Token `n` fires at the first frame with `c_t >= (n + 1) beta`. The weights are
continuous, piecewise-linear functions of `alpha`, so gradients flow to `alpha` and to `h`
through the min/max/clamp only.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from einops import rearrange

from .. import random
from ..checks import check_dtype, check_shape
from ..errors import ConfigError
from ..nn.layers import conv1d, dense, init_conv1d, init_dense, relu

__all__ = ["CIFOutput", "init_cif_predictor", "cif_weights", "cif", "quantity_loss", "fire_times"]

Params = dict[str, dict[str, torch.Tensor]]


class CIFOutput(NamedTuple):
    """What `cif` returns.

    embeds: `[B, N, D]` (dtype of `h`) the integrated token embeddings; rows `n >= lengths[b]` are 0.
    lengths: `[B]` int64, the number of tokens fired for each item.
    fire_positions: `[B, N]` int64, the frame at which token `n` fired; -1 on padding tokens.
    alpha_scaled: `[B, T]` the weights actually integrated: `alpha` masked, and in training
        rescaled to sum to `target_lengths * threshold`.
    """

    embeds: torch.Tensor
    lengths: torch.Tensor
    fire_positions: torch.Tensor
    alpha_scaled: torch.Tensor


# --------------------------------------------------------------------------- predictor


def init_cif_predictor(key: torch.Tensor, d_model: int, *, kernel_size: int = 3, hidden: int | None = None,
                       dtype: torch.dtype = torch.float32) -> Params:
    """Parameters of the CIF weight predictor (Paraformer's predictor: conv, relu, dense, sigmoid).

    Returns: `{"conv": {"w": [H, D, k], "b": [H]}, "proj": {"w": [H, 1], "b": [1]}}` with
    `D = d_model`, `H = hidden` (default `d_model`), `k = kernel_size`.
    """
    if not isinstance(d_model, int) or d_model < 1:
        raise ConfigError(f"init_cif_predictor: d_model must be a positive int, got {d_model!r}")
    if not isinstance(kernel_size, int) or kernel_size < 1:
        raise ConfigError(f"init_cif_predictor: kernel_size must be a positive int, got {kernel_size!r}")
    hidden = d_model if hidden is None else hidden
    if not isinstance(hidden, int) or hidden < 1:
        raise ConfigError(f"init_cif_predictor: hidden must be a positive int or None, got {hidden!r}")
    k_conv, k_proj = random.split(key)
    return {
        "conv": init_conv1d(k_conv, d_model, hidden, kernel_size, dtype=dtype),
        "proj": init_dense(k_proj, hidden, 1, dtype=dtype),
    }


def cif_weights(params: Params, h: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The CIF weights of each frame:

        alpha_t = sigmoid(w_p . relu(conv1d_k(h)_t) + b_p) * mask_t

    h: `[B, T, D]` encoder output; mask: `[B, T]` bool (True on valid frames; None: all valid).
    Returns alpha: `[B, T]` in (0, 1) on valid frames and exactly 0 on padding. Padded frames
    of `h` are zeroed before the "same"-padded convolution, so an item's weights do not depend
    on how much padding its batch adds.
    """
    dims = check_shape(h, "b t d", name="cif_weights: h")
    check_shape(params["conv"]["w"], "hid d _", name="cif_weights: params['conv']['w']", d=dims["d"])
    if mask is not None:
        check_shape(mask, "b t", name="cif_weights: mask", **dims)
        h = h * mask.unsqueeze(-1).to(h.dtype)
    x = rearrange(h, "b t d -> b d t")                        # conv1d is channels-first
    x = relu(conv1d(params["conv"], x, padding="same"))       # [B, H, T]
    x = rearrange(x, "b hid t -> b t hid")
    alpha = torch.sigmoid(rearrange(dense(params["proj"], x), "b t 1 -> b t"))
    if mask is not None:
        alpha = alpha * mask.to(alpha.dtype)
    return alpha


# --------------------------------------------------------------------------- integrate and fire


def _tolerance(dtype: torch.dtype, threshold: float) -> float:
    """A boundary reached within `sqrt(eps) * beta` counts as reached (float32: 3.5e-4 beta)."""
    return float(torch.finfo(dtype).eps) ** 0.5 * threshold


def cif(h: torch.Tensor, alpha: torch.Tensor, *, mask: torch.Tensor | None = None, threshold: float = 1.0,
        target_lengths: torch.Tensor | None = None, tail_threshold: float = 0.45,
        max_tokens: int | None = None) -> CIFOutput:
    """Integrate the frames `h` with weights `alpha` and fire token embeddings (vectorized CIF).

    Arguments:
        h: `[B, T, D]` float, the encoder output.
        alpha: `[B, T]` float, non-negative weights (from `cif_weights`).
        mask: `[B, T]` bool, True on valid frames, right-padded (None: all valid). Padded frames
            get weight 0, and a token that closes at the end of an item fires at its last valid
            frame (`mask[b].sum() - 1`); without a mask that is frame `T - 1`.
        threshold: `beta > 0`, the weight one token integrates (Paraformer: 1.0).
        target_lengths: `[B]` int, training only: the number of target tokens `L_b`.
        tail_threshold: inference only, `0 <= tail < beta`: the weight of a pseudo-frame with a
            zero hidden state appended after the last valid frame, so that a trailing partial
            token holding at least `beta - tail` fires (Paraformer: 0.45).
        max_tokens: a static number of token slots `N`. None: `N = max_b lengths[b]`, which
            reads a value (a graph break under `torch.compile`); give it for a static shape.
            Tokens beyond `N` are dropped (`lengths` is clipped to `N`).

    Training (`target_lengths` given): the weights are rescaled so that they sum exactly to the
    target, `alpha'_t = alpha_t L_b beta / sum_s alpha_s` (CIF's scaling strategy), and exactly
    `L_b` tokens are produced, whatever float rounding does to `c_T` (public loop
    implementations lose the last token when `c_T` ends a hair below `L_b beta`): token
    `L_b - 1` integrates what is left and closes at the last valid frame. An item whose weights
    are all 0 cannot be rescaled: it gets `L_b` zero embeddings.

    Inference: the number of tokens is `floor((sum_t alpha_t + tail) / beta)` (within the
    rounding tolerance `sqrt(eps) beta`); the tail frame carries no hidden state, so the last
    token's embedding is only what the real frames gave it, and it fires at the last valid frame.

    Returns `CIFOutput(embeds [B, N, D], lengths [B] int64, fire_positions [B, N] int64,
    alpha_scaled [B, T])`; see `CIFOutput`.

    Cost: the weights `w` are a dense `[B, N, T]` tensor and `embeds = einsum("bnt,btd->bnd")`.
    Memory is `B N T` elements per intermediate (a handful are kept for the backward pass):
    B=32, N=200, T=2000 is 12.8M elements, 51 MB each in float32, and `B N T D` multiply-adds
    (6.6 GFLOP at D=512) run as one batched matmul. Everything is computed in at least float32
    and in one graph (no Python loop over time or batch), so it compiles with
    `fullgraph=True` when `max_tokens` is given.
    """
    dims = check_shape(h, "b t d", name="cif: h")
    check_shape(alpha, "b t", name="cif: alpha", **dims)
    check_dtype(h, "float", name="cif: h")
    check_dtype(alpha, "float", name="cif: alpha")
    if not isinstance(threshold, (int, float)) or threshold <= 0:
        raise ConfigError(f"cif: threshold must be a positive number, got {threshold!r}")
    if not isinstance(tail_threshold, (int, float)) or not 0 <= tail_threshold < threshold:
        raise ConfigError(f"cif: tail_threshold must lie in [0, threshold={threshold}), got {tail_threshold!r}")
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 0):
        raise ConfigError(f"cif: max_tokens must be a non-negative int or None, got {max_tokens!r}")
    if target_lengths is not None:
        check_shape(target_lengths, "b", name="cif: target_lengths", **dims)
        check_dtype(target_lengths, "int", name="cif: target_lengths")
    b, t = dims["b"], dims["t"]
    beta = float(threshold)
    dtype = torch.promote_types(alpha.dtype, torch.float32)
    tol = _tolerance(dtype, beta)

    alpha = alpha.to(dtype)
    if mask is not None:
        check_shape(mask, "b t", name="cif: mask", **dims)
        alpha = alpha * mask.to(dtype)
        last_frame = mask.long().sum(-1) - 1                                    # [B]
    else:
        last_frame = torch.full((b,), t - 1, dtype=torch.long, device=h.device)
    last_frame = last_frame.clamp(min=0)

    total = alpha.sum(-1)                                                        # [B]
    if target_lengths is not None:
        lengths = target_lengths.long()
        target = lengths.to(dtype) * beta
        # Rescale so that sum_t alpha'_t = L_b beta; an item whose weights are all 0 stays 0.
        safe_total = torch.where(total > 0, total, torch.ones_like(total))
        alpha = alpha * (torch.where(total > 0, target / safe_total, torch.zeros_like(total))).unsqueeze(-1)
    else:
        lengths = torch.floor((total.detach() + tail_threshold) / beta + tol / beta).long()

    if max_tokens is None:
        n_tokens = int(lengths.max()) if b > 0 else 0
    else:
        n_tokens = max_tokens
    lengths = lengths.clamp(max=n_tokens)

    c = torch.cumsum(alpha, dim=-1)                                              # [B, T]: c_t
    c_prev = torch.cat([torch.zeros_like(c[:, :1]), c[:, :-1]], dim=-1)          # [B, T]: c_{t-1}
    n = torch.arange(n_tokens, device=h.device, dtype=dtype)
    lo = rearrange(n * beta, "n -> 1 n 1")                                       # [1, N, 1]: n beta
    hi = rearrange((n + 1) * beta, "n -> 1 n 1")                                 # [1, N, 1]: (n+1) beta
    c_bnt, c_prev_bnt = rearrange(c, "b t -> b 1 t"), rearrange(c_prev, "b t -> b 1 t")
    valid = torch.arange(n_tokens, device=h.device) < lengths.unsqueeze(-1)     # [B, N]
    w = (torch.minimum(c_bnt, hi) - torch.maximum(c_prev_bnt, lo)).clamp(min=0)  # [B, N, T]: w_{n,t}
    w = w * rearrange(valid, "b n -> b n 1").to(dtype)
    embeds = torch.einsum("bnt,btd->bnd", w.to(h.dtype), h)

    # Fire frame: the first t with c_t >= (n+1) beta (within tol). A token whose boundary is
    # never reached (the last one of training under rounding, or the one the tail fires)
    # closes at the last valid frame. With k_t = floor((c_t + tol) / beta), the tokens completed
    # by frame t (non-decreasing), that first frame is #{t : k_t <= n}: a histogram of k and a
    # cumsum, O(B (T + N)) with no [B, N, T] tensor, and vmap/compile friendly.
    k = torch.floor((c.detach() + tol) / beta).long().clamp(0, n_tokens)         # [B, T]
    hist = torch.zeros(b, n_tokens + 1, dtype=torch.long, device=h.device)
    hist = hist.scatter_add(-1, k, torch.ones_like(k))                           # [B, N+1]
    first = torch.cumsum(hist, dim=-1)[:, :n_tokens]                             # [B, N]
    fire = torch.minimum(first, rearrange(last_frame, "b -> b 1"))
    fire_positions = torch.where(valid, fire, torch.full_like(fire, -1))
    return CIFOutput(embeds, lengths, fire_positions, alpha)


# --------------------------------------------------------------------------- loss and timestamps


def quantity_loss(alpha: torch.Tensor, mask: torch.Tensor | None, target_lengths: torch.Tensor) -> torch.Tensor:
    """Paraformer's quantity loss: the mean absolute error between the predicted and the target count,

        L_qua = (1 / B) sum_b | sum_t alpha_{b,t} m_{b,t} - L_b |

    on the *unscaled* weights. alpha: `[B, T]` float; mask: `[B, T]` bool or None (all valid);
    target_lengths: `[B]` int. Returns a scalar (0 for an empty batch).
    """
    dims = check_shape(alpha, "b t", name="quantity_loss: alpha")
    check_dtype(alpha, "float", name="quantity_loss: alpha")
    check_shape(target_lengths, "b", name="quantity_loss: target_lengths", **dims)
    if mask is not None:
        check_shape(mask, "b t", name="quantity_loss: mask", **dims)
        alpha = alpha * mask.to(alpha.dtype)
    err = (alpha.sum(-1) - target_lengths.to(alpha.dtype)).abs()
    return err.sum() / max(dims["b"], 1)


def fire_times(fire_positions: torch.Tensor, frame_shift_s: float, *,
               offset_s: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Token timestamps from the firing frames.

    Token `n` spans frames `[f_{n-1} + 1, f_n]` (`f_{-1} = -1`): it starts right after the
    previous token fired and ends at the end of its own firing frame, so

        start_n = offset + (f_{n-1} + 1) shift,        end_n = offset + (f_n + 1) shift.

    fire_positions: `[B, N]` int (from `cif`; -1 on padding tokens); frame_shift_s: the
    encoder's frame shift in seconds (e.g. 0.06 after 6x subsampling of a 10 ms front-end).
    Returns `(start_s, end_s)`, each `[B, N]` float32 seconds, -1.0 on padding tokens.
    """
    check_shape(fire_positions, "b n", name="fire_times: fire_positions")
    check_dtype(fire_positions, "int", name="fire_times: fire_positions")
    if not isinstance(frame_shift_s, (int, float)) or frame_shift_s <= 0:
        raise ConfigError(f"fire_times: frame_shift_s must be a positive number of seconds, got {frame_shift_s!r}")
    f = fire_positions.long()
    prev = torch.cat([torch.full_like(f[:, :1], -1), f[:, :-1]], dim=-1)       # f_{n-1}
    valid = f >= 0
    start = offset_s + (prev + 1).to(torch.float32) * frame_shift_s
    end = offset_s + (f + 1).to(torch.float32) * frame_shift_s
    pad = torch.full_like(start, -1.0)
    return torch.where(valid, start, pad), torch.where(valid, end, pad)
