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

The `[N, T]` matrix `w` is never built. Frame `t` covers `[c_{t-1}, c_t]`, so it overlaps only
the token holding `c_{t-1}`, the token holding `c_t`, and the whole tokens in between (a frame
heavier than `beta`): of the `N T` pairs at most `2 T + N` can be nonzero. `cif` finds them by a
binary search of `c` among the boundaries `n beta`, evaluates the formula above on those pairs
only, and sums them with a scatter-add over frames and a gather for the whole tokens:
O(B (T + N) D) work instead of O(B N T D), with the same values and derivatives (`_integrate`).
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
    `D = d_model`, `H = hidden` (default `d_model`), `k = kernel_size`; each from
    `random.fold_in(key, name)`.
    """
    if not isinstance(d_model, int) or d_model < 1:
        raise ConfigError(f"init_cif_predictor: d_model must be a positive int, got {d_model!r}")
    if not isinstance(kernel_size, int) or kernel_size < 1:
        raise ConfigError(f"init_cif_predictor: kernel_size must be a positive int, got {kernel_size!r}")
    hidden = d_model if hidden is None else hidden
    if not isinstance(hidden, int) or hidden < 1:
        raise ConfigError(f"init_cif_predictor: hidden must be a positive int or None, got {hidden!r}")
    return {
        "conv": init_conv1d(random.fold_in(key, "conv"), d_model, hidden, kernel_size, dtype=dtype),
        "proj": init_dense(random.fold_in(key, "proj"), hidden, 1, dtype=dtype),
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


def _pair_weight(z: torch.Tensor, n: torch.Tensor, c_t: torch.Tensor, c_prev_t: torch.Tensor) -> torch.Tensor:
    """`w_{n,t} = max(0, min(c_t, z_{n+1}) - max(c_{t-1}, z_n))` for the pairs `(n, t)` given
    elementwise; `n` in `[-1, N]` (out of range only for pairs that are dropped). z: `[N+1]`."""
    n_max = z.shape[0] - 1
    lo, hi = z[n.clamp(0, n_max)], z[(n + 1).clamp(0, n_max)]
    return (torch.minimum(c_t, hi) - torch.maximum(c_prev_t, lo)).clamp(min=0)


def _integrate(h: torch.Tensor, c: torch.Tensor, c_prev: torch.Tensor, lengths: torch.Tensor,
               n_tokens: int, beta: float) -> torch.Tensor:
    """The token embeddings `e_n = sum_t w_{n,t} h_t`, summed over the `<= 2T + N` pairs `(n, t)`
    where `w` can be nonzero, in O(B (T + N) D).

    h: `[B, T, D]`; c, c_prev: `[B, T]` the cumulative weights `c_t` and `c_{t-1}`, non-decreasing
    (`alpha >= 0`); lengths: `[B]` int64, at most `N = n_tokens`. Returns `[B, N, D]` in
    `promote(h.dtype, float32)`; rows `n >= lengths[b]` are 0.

    With the boundaries `z_k = k beta` (token `n` owns `[z_n, z_{n+1}]`), `w_{n,t}` or one of its
    one-sided derivatives is nonzero only if `z_n <= c_t` and `c_{t-1} <= z_{n+1}`. Each such
    pair is of exactly one kind:

        first_t = the n with z_n <  c_{t-1} <= z_{n+1}     the token that frame t continues
        last_t  = the n with z_n <= c_t     <  z_{n+1}     the token that frame t leaves open
        inside:   c_{t-1} <= z_n  and  z_{n+1} <= c_t       a whole token inside frame t

    (`first_t = last_t` for a frame inside one token: counted once). `first` and `last` are a
    binary search of `c` in `z`; their pairs, two per frame, are scatter-added into the tokens. A
    whole token lies inside at most one frame, the first with `c_t >= z_{n+1}`, i.e. frame
    `#{t : last_t <= n}` (a histogram of `last` and a cumsum, as for the fire positions): it is
    gathered. Every pair evaluates the dense formula itself (`_pair_weight`), so values and the
    min/max/clamp derivatives, ties at exact boundaries included, are those of
    `einsum("bnt,btd->bnd", w, h)`; the search and the formula compare against the same float
    tensor `z`, so rounding can neither lose a pair nor count one twice. Pairs with tokens
    `n >= lengths[b]`, `n = -1` or `n = N` are scattered into a dump row that is dropped.
    """
    b, t, d = h.shape
    acc = torch.promote_types(h.dtype, torch.float32)
    h_rows = rearrange(h.to(acc), "b t d -> (b t) d")                               # [B T, D]: frames as rows
    z = torch.arange(n_tokens + 1, device=h.device, dtype=c.dtype) * beta           # [N+1]: z_k = k beta
    first = torch.searchsorted(z, c_prev.detach().contiguous(), side="left") - 1   # [B, T] in [-1, N]
    last = torch.searchsorted(z, c.detach().contiguous(), side="right") - 1         # [B, T] in [-1, N]
    max_len = rearrange(lengths, "b -> b 1")
    item = rearrange(torch.arange(b, device=h.device), "b -> b 1")

    w_first = _pair_weight(z, first, c, c_prev)                                     # [B, T]
    w_last = _pair_weight(z, last, c, c_prev) * (last != first).to(c.dtype)         # [B, T]
    embeds = torch.zeros(b * (n_tokens + 1), d, dtype=acc, device=h.device)         # [B (N+1), D], row N: dump
    for n, w in ((first, w_first), (last, w_last)):
        slot = torch.where((n >= 0) & (n < max_len), n, torch.full_like(n, n_tokens))
        embeds = torch.index_add(embeds, 0, rearrange(item * (n_tokens + 1) + slot, "b t -> (b t)"),
                                 rearrange(w.to(acc), "b t -> (b t) 1") * h_rows)
    embeds = rearrange(embeds, "(b n) d -> b n d", b=b)[:, :n_tokens]               # [B, N, D]
    if t == 0:                                                                      # a static shape: no frame
        return embeds

    hist = torch.zeros(b, n_tokens + 2, dtype=torch.long, device=h.device)
    hist = hist.scatter_add(-1, last + 1, torch.ones_like(last))                    # [B, N+2]: #{t : last_t = k-1}
    frame = torch.cumsum(hist, dim=-1)[:, 1:n_tokens + 1]                           # [B, N]: first t, c_t >= z_{n+1}
    at = frame.clamp(max=t - 1)
    c_at, c_prev_at = c.gather(1, at), c_prev.gather(1, at)                         # [B, N]
    n = torch.arange(n_tokens, device=h.device)
    inside = (frame < t) & (c_prev_at.detach() <= z[:-1]) & (c_at.detach() >= z[1:])
    inside = inside & (n < max_len)  # implied when alpha >= 0; keeps rows n >= L at 0 for any input
    w_inside = _pair_weight(z, rearrange(n, "n -> 1 n"), c_at, c_prev_at) * inside.to(c.dtype)
    h_at = h_rows.index_select(0, rearrange(item * t + at, "b n -> (b n)"))         # [B N, D]: h_{t_n}
    return embeds + rearrange(w_inside.to(acc), "b n -> b n 1") * rearrange(h_at, "(b n) d -> b n d", b=b)


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

    Cost: O(B (T + N) D) time and memory; no `[B, N, T]` tensor is built. Of the weights
    `w_{n,t}` (module docstring) only the `<= 2 T + N` pairs that can be nonzero are evaluated:
    the tokens holding `c_{t-1}` and `c_t` for every frame (a binary search of `c` among the
    boundaries `n beta`, O(B T log N)), summed by two row scatter-adds of `w h` (`index_add` of
    `[B T, D]` rows), and the whole tokens inside a frame heavier than `beta`, one gathered frame
    each; the backward pass is the same gathers and scatters transposed. Each pair's weight is
    the dense formula itself, so embeddings and gradients equal those of the dense
    `einsum("bnt,btd->bnd", w, h)` up to summation order (~1e-15 relative in float64,
    derivatives at exact boundaries included); in float32 both carry the rounding of the
    cumulative sum, about `eps c_t` per weight. Faster and smaller than the dense form for
    long inputs, a little slower for short ones (measured: see benchmarks/RESULTS.md, section
    "4. CIF").
    The pairs are found assuming `c` is non-decreasing, i.e. `alpha >= 0` as required. On CUDA
    `index_add` accumulates with atomics, so the last bits can vary between runs. Everything is
    computed in at least float32 and in one graph (no Python loop over time or batch), so it
    compiles with `fullgraph=True` when `max_tokens` is given, and works under
    `torch.func.vmap` and `torch.func.grad`.
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
    embeds = _integrate(h, c, c_prev, lengths, n_tokens, beta).to(h.dtype)       # [B, N, D]

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
    valid = torch.arange(n_tokens, device=h.device) < lengths.unsqueeze(-1)     # [B, N]
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
