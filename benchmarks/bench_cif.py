"""CIF: funcml's linear-time integrate-and-fire vs the dense form it replaced and a per-frame loop.

    python benchmarks/bench_cif.py                                  # B=8, D=256, T in 250 500 1000 2000 (~1 min)
    python benchmarks/bench_cif.py --lengths 250 500 --repeat 5
    python benchmarks/bench_cif.py --device cuda

Three implementations of the same function, forward and forward+backward:

- `cif` (`funcml.asr.cif.cif`, "vec"): the token embeddings summed over the `<= 2 T + N`
  (token, frame) pairs whose weight can be nonzero (binary search of the cumulative weights
  among the token boundaries, scatter-add over frames, a gather for whole tokens inside a frame):
  O(B (T + N) D).
- `cif_dense` ("dense", below): the previous implementation of `cif`, which built the dense
  `[B, N, T]` weights `w_{n,t} = max(0, min(c_t, (n+1) beta) - max(c_{t-1}, n beta))` and took
  `einsum("bnt,btd->bnd", w, h)`: O(B N T D), quadratic in T since N ~ T/4. Same values and
  gradients as `cif` up to summation order (tested in float64 to 1e-12).
- `cif_loop` ("loop", the baseline): the algorithm as CIF's paper states it (Dong & Xu, ICASSP
  2020, Algorithm 1): walk over the frames, accumulate `alpha_t`, and when the accumulated weight
  reaches the threshold `beta` fire the integrated embedding and start the next token with the
  rest of the frame. It is vectorized over the batch only (a Python loop over the T frames, as in
  public Paraformer code).

All run in training mode (weights rescaled to the target lengths `L_b`, exactly `L_b`
tokens) on random `h: [B, T, D]`, `alpha: [B, T]` in `[alpha_min, alpha_max]` (a mean of
0.25: about one token per 4 frames, Paraformer's rate at 60 ms frames) and right-padded
lengths `T_b` in `[0.75 T, T]`. The backward pass is that of `sum(embeds * g)` for a fixed
random `g`. Per T the tables give the median times, the speedups `dense / vec` and
`loop / vec`, the growth of peak memory of a forward+backward, the largest differences between
the implementations in embeddings, fire positions and both gradients, and the error of each
(float32) against a float64 reference (`cif` in float64; `ref_dense_diff` checks that `cif` and
`cif_dense` agree there).

The loop and `cif` split a frame differently when the accumulated weight ends within the rounding
tolerance `sqrt(eps) beta` of a token boundary: the loop then closes the token with exactly
`beta` (its `beta - I` may exceed the frame's weight by up to the tolerance), `cif` with the
exact `min/max` weights, so embeddings may differ by up to `sqrt(eps) beta max|h|` (3.5e-4
`max|h|` in float32). The weights are piecewise linear in alpha and the training rescaling
couples all of an item's alphas, so at such a frame the gradient with respect to alpha takes
the other one-sided value for the whole item: compare gradients by relative norm, not maximum.
`cif` and `cif_dense` evaluate the same weight formula on every pair, so they differ only by
the order of summation.

All lengths and variants are timed round-robin in one process (`common.time_interleaved`).

Writes `--out`, by default a fresh `benchmarks/results/bench_cif-<time>.json`.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import torch
import tyro
from einops import rearrange

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (fresh_results_path, machine_info, markdown_table, measure_peak_memory, start,  # noqa: E402
                               time_interleaved, write_json)
from funcml import random  # noqa: E402
from funcml.asr.cif import CIFOutput, cif  # noqa: E402
from funcml.checks import check_shape  # noqa: E402
from funcml.errors import ConfigError, RangeError, cli_main  # noqa: E402


def _masked_inputs(fn: str, h: torch.Tensor, alpha: torch.Tensor, mask: torch.Tensor | None, threshold: float):
    """The shared opening of `cif_loop` and `cif_dense`: check shapes, and return `(dims, beta,
    dtype, tol, alpha, last_frame)` with alpha in at least float32 and zero on padding, the
    rounding tolerance `sqrt(eps) beta`, and each item's last valid frame (`[B]`, >= 0)."""
    dims = check_shape(h, "b t d", name=f"{fn}: h")
    check_shape(alpha, "b t", name=f"{fn}: alpha", **dims)
    beta = float(threshold)
    dtype = torch.promote_types(alpha.dtype, torch.float32)
    tol = float(torch.finfo(dtype).eps) ** 0.5 * beta
    alpha = alpha.to(dtype)
    if mask is not None:
        alpha = alpha * mask.to(dtype)
        last_frame = mask.long().sum(-1) - 1
    else:
        last_frame = torch.full((dims["b"],), dims["t"] - 1, dtype=torch.long, device=h.device)
    return dims, beta, dtype, tol, alpha, last_frame.clamp(min=0)


def cif_loop(h: torch.Tensor, alpha: torch.Tensor, *, mask: torch.Tensor | None = None, threshold: float = 1.0,
             target_lengths: torch.Tensor | None = None, tail_threshold: float = 0.45) -> CIFOutput:
    """Continuous integrate-and-fire as a loop over frames (the benchmark's baseline).

    h: `[B, T, D]`; alpha: `[B, T]` >= 0; mask: `[B, T]` bool, right-padded (None: all valid);
    target_lengths: `[B]` int (training: rescale alpha to sum to `L_b beta`, emit `L_b` tokens);
    without it, inference: a trailing partial token fires when its weight plus `tail_threshold`
    reaches `beta`. Returns `CIFOutput` as `funcml.asr.cif.cif` does (same conventions: a token
    closed after the walk fires at the last valid frame; padding tokens are zero, fire at -1).

    With `a_t` the frame's weight, `I` the weight integrated so far and `e` the open token's
    embedding, each frame does

        if I + a_t < beta:  I <- I + a_t,  e <- e + a_t h_t                      (integrate)
        else:               fire e + (beta - I) h_t;  I <- I + a_t - beta,  e <- (I + a_t - beta) h_t

    A boundary reached within `sqrt(eps) beta` counts as reached (as in `cif`). A frame can
    close at most one token, so every (rescaled) weight must be below `beta`.
    """
    dims, beta, dtype, tol, alpha, last_frame = _masked_inputs("cif_loop", h, alpha, mask, threshold)
    b, t_max = dims["b"], dims["t"]
    if target_lengths is not None:
        total = alpha.sum(-1, keepdim=True)
        alpha = alpha * torch.where(total > 0, target_lengths.to(dtype)[:, None] * beta / total.clamp_min(1e-30),
                                    torch.zeros_like(total))
    if t_max and float(alpha.detach().max()) >= beta - tol:
        raise RangeError(f"cif_loop: a frame weight reaches the threshold {beta}; the loop closes at most one "
                          "token per frame (use funcml.asr.cif.cif)")

    integrate = torch.zeros(b, dtype=dtype, device=h.device)  # I: weight of the open token
    frame = torch.zeros(b, dims["d"], dtype=dtype, device=h.device)  # e: the open token's embedding
    fired, fires = [], []
    # One unbind, not T slices `h[:, t]`: each slice's backward would write a zero-filled
    # [B, T, D] gradient, making the loop's backward O(T^2) (4-5x slower at T = 1000).
    hs, alphas = h.to(dtype).unbind(1), alpha.unbind(1)
    for t in range(t_max):
        a, h_t = alphas[t], hs[t]
        fire = integrate + a >= beta - tol  # [B]
        cur = torch.where(fire, beta - integrate, a)  # the part of frame t that closes the open token
        closed = frame + cur[:, None] * h_t
        fired.append(torch.where(fire[:, None], closed, torch.zeros_like(closed)))
        fires.append(fire)
        frame = torch.where(fire[:, None], (a - cur)[:, None] * h_t, closed)
        integrate = torch.where(fire, integrate + a - beta, integrate + a)

    fire_bt = torch.stack(fires, 1) if fires else torch.zeros(b, 0, dtype=torch.bool, device=h.device)
    embeds_btd = torch.stack(fired, 1) if fired else h.new_zeros(b, 0, dims["d"], dtype=dtype)
    items, positions = [], []
    for i in range(b):  # gather item i's fired tokens, then close the open one if it counts
        pos = torch.nonzero(fire_bt[i]).flatten()
        emb = embeds_btd[i, pos]
        if target_lengths is not None:
            want = int(target_lengths[i])
            close = pos.numel() < want
        else:
            want = None
            close = bool(integrate[i] + tail_threshold >= beta - tol)
        if close:
            emb = torch.cat([emb, frame[i][None]])
            pos = torch.cat([pos, last_frame[i][None]])
        if want is not None:
            emb, pos = emb[:want], pos[:want]
        items.append(emb)
        positions.append(pos)
    lengths = torch.tensor([len(p) for p in positions], dtype=torch.long, device=h.device)
    n = int(lengths.max()) if b else 0
    embeds = torch.stack([torch.cat([e, e.new_zeros(n - len(e), dims["d"])]) for e in items]) if b else \
        h.new_zeros(0, 0, dims["d"])
    fire_positions = torch.stack([torch.cat([p, p.new_full((n - len(p),), -1)]) for p in positions]) if b else \
        torch.zeros(0, 0, dtype=torch.long, device=h.device)
    return CIFOutput(embeds.to(h.dtype), lengths, fire_positions, alpha)


def cif_dense(h: torch.Tensor, alpha: torch.Tensor, *, mask: torch.Tensor | None = None, threshold: float = 1.0,
              target_lengths: torch.Tensor | None = None, tail_threshold: float = 0.45,
              max_tokens: int | None = None) -> CIFOutput:
    """The previous implementation of `funcml.asr.cif.cif` (dense weights), kept for comparison.

    Arguments and result as `cif`. With `c_t = sum_{s <= t} alpha_s` it builds the `[B, N, T]`
    weights of token n on frame t,

        w_{n,t} = max(0, min(c_t, (n + 1) beta) - max(c_{t-1}, n beta)) [n < L_b],     e = einsum("bnt,btd->bnd", w, h),

    so it costs `B N T` elements per intermediate and `B N T D` multiply-adds (one batched matmul):
    quadratic in T. Lengths and fire positions are computed as in `cif` (O(B (T + N))).
    """
    dims, beta, dtype, tol, alpha, last_frame = _masked_inputs("cif_dense", h, alpha, mask, threshold)
    b = dims["b"]
    total = alpha.sum(-1)
    if target_lengths is not None:
        lengths = target_lengths.long()
        safe_total = torch.where(total > 0, total, torch.ones_like(total))
        scale = torch.where(total > 0, lengths.to(dtype) * beta / safe_total, torch.zeros_like(total))
        alpha = alpha * scale.unsqueeze(-1)
    else:
        lengths = torch.floor((total.detach() + tail_threshold) / beta + tol / beta).long()
    n_tokens = (int(lengths.max()) if b > 0 else 0) if max_tokens is None else max_tokens
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

    k = torch.floor((c.detach() + tol) / beta).long().clamp(0, n_tokens)         # [B, T]: tokens done by t
    hist = torch.zeros(b, n_tokens + 1, dtype=torch.long, device=h.device).scatter_add(-1, k, torch.ones_like(k))
    fire = torch.minimum(torch.cumsum(hist, dim=-1)[:, :n_tokens], rearrange(last_frame, "b -> b 1"))
    fire_positions = torch.where(valid, fire, torch.full_like(fire, -1))
    return CIFOutput(embeds, lengths, fire_positions, alpha)


def make_inputs(key: torch.Tensor, b: int, t: int, d: int, *, alpha_range: tuple[float, float] = (0.05, 0.45),
                dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Random CIF inputs: `h [B, T, D]` normal, `alpha [B, T]` uniform in `alpha_range`, lengths `T_b`
    uniform in `[0.75 T, T]` (item 0 full), `mask [B, T]`, target lengths `L_b = max(1, round(sum alpha))`,
    and `g [B, N, D]` (N = max L_b) for the backward pass."""
    k_h, k_a, k_len, k_g = random.split(key, 4)
    h = random.normal(k_h, (b, t, d), dtype=dtype)
    alpha = random.uniform(k_a, (b, t), *alpha_range, dtype=dtype)
    frames = random.randint(k_len, (b,), max(1, (3 * t) // 4), t + 1)
    frames = torch.cat([torch.tensor([t]), frames[1:]]) if b else frames
    mask = torch.arange(t)[None, :] < frames[:, None]
    target_lengths = torch.round((alpha * mask).sum(-1)).long().clamp(min=1)
    g = random.normal(k_g, (b, int(target_lengths.max()) if b else 0, d), dtype=dtype)
    out = {"h": h, "alpha": alpha, "mask": mask, "target_lengths": target_lengths, "g": g}
    return {k: v.to(device) for k, v in out.items()}


def _forward(fn, inp: dict[str, torch.Tensor]) -> CIFOutput:
    return fn(inp["h"], inp["alpha"], mask=inp["mask"], target_lengths=inp["target_lengths"])


def _forward_backward(fn, inp: dict[str, torch.Tensor]) -> tuple[CIFOutput, torch.Tensor, torch.Tensor]:
    h = inp["h"].detach().requires_grad_(True)
    alpha = inp["alpha"].detach().requires_grad_(True)
    out = fn(h, alpha, mask=inp["mask"], target_lengths=inp["target_lengths"])
    n = out.embeds.shape[1]
    (out.embeds * inp["g"][:, :n]).sum().backward()
    return out, h.grad, alpha.grad


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        return float("inf")
    return float((a.detach().double() - b.detach().double()).abs().max()) if a.numel() else 0.0


def _rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    """`||a - b|| / ||b||` (0 when both are 0)."""
    a, b = a.detach().double(), b.detach().double()
    den = float(b.norm())
    return float((a - b).norm()) / den if den > 0 else float((a - b).norm())


IMPLEMENTATIONS = {"vec": cif, "dense": cif_dense, "loop": cif_loop}


def compare(inp: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Run the three implementations (forward + backward) and report how far apart they are, and
    how far each is from a float64 reference (`cif` in float64, where they agree to ~1e-12;
    `ref_dense_diff` is the largest difference between `cif` and `cif_dense` there).

    Keys without a prefix compare `cif` with the loop, `dense_*` `cif` with `cif_dense`, and
    `{vec,dense,loop}_err_*` each implementation with the reference."""
    runs = {name: _forward_backward(fn, inp) for name, fn in IMPLEMENTATIONS.items()}
    ref_inp = {k: v.double() if v.is_floating_point() else v for k, v in inp.items()}
    ref, gh_r, ga_r = _forward_backward(cif, ref_inp)
    ref_d, gh_rd, ga_rd = _forward_backward(cif_dense, ref_inp)
    (vec, gh_v, ga_v), (loop, gh_l, ga_l), (dense, gh_d, ga_d) = runs["vec"], runs["loop"], runs["dense"]
    out = {
        "lengths_equal": bool(torch.equal(vec.lengths, loop.lengths)),
        "fire_positions_equal": vec.fire_positions.shape == loop.fire_positions.shape
        and bool(torch.equal(vec.fire_positions, loop.fire_positions)),
        "max_abs_embeds_diff": _max_abs(vec.embeds, loop.embeds),
        "max_abs_grad_h_diff": _max_abs(gh_v, gh_l),
        "max_abs_grad_alpha_diff": _max_abs(ga_v, ga_l),
        "rel_grad_h_diff": _rel_l2(gh_l, gh_v),
        "rel_grad_alpha_diff": _rel_l2(ga_l, ga_v),
        "dense_fire_positions_equal": bool(torch.equal(vec.fire_positions, dense.fire_positions)),
        "dense_max_abs_embeds_diff": _max_abs(vec.embeds, dense.embeds),
        "dense_max_abs_grad_h_diff": _max_abs(gh_v, gh_d),
        "dense_max_abs_grad_alpha_diff": _max_abs(ga_v, ga_d),
        "dense_rel_grad_alpha_diff": _rel_l2(ga_d, ga_v),
        "ref_dense_diff": max(_max_abs(ref.embeds, ref_d.embeds), _max_abs(gh_r, gh_rd), _max_abs(ga_r, ga_rd)),
        "max_abs_embeds": float(ref.embeds.detach().abs().max()) if ref.embeds.numel() else 0.0,
        "max_abs_grad_alpha": float(ga_r.abs().max()),
    }
    for name, (o, gh, ga) in runs.items():
        out[f"{name}_err_embeds"] = _max_abs(o.embeds, ref.embeds)
        out[f"{name}_err_grad_h"] = _max_abs(gh, gh_r)
        out[f"{name}_err_grad_alpha"] = _max_abs(ga, ga_r)
        out[f"{name}_rel_err_grad_alpha"] = _rel_l2(ga, ga_r)
    return out


@dataclasses.dataclass(frozen=True)
class CIFBenchConfig:
    """Linear-time CIF vs the dense form and the per-frame loop (see the module docstring)."""

    batch_size: int = 8
    """B: sequences per batch."""
    dim: int = 256
    """D: the hidden size of the encoder frames summed into token embeddings."""
    lengths: tuple[int, ...] = (250, 500, 1000, 2000)
    """The frame counts T swept (one row each)."""
    alpha_min: float = 0.05
    """Lower end of the uniform range of the per-frame weights alpha (0 <= alpha_min <= alpha_max)."""
    alpha_max: float = 0.45
    """Upper end of that range (< 1); the mean weight sets how many tokens fire (about T * mean alpha)."""
    warmup: int = 2
    """Untimed calls of each variant before timing."""
    repeat: int = 7
    """Timed rounds (one call of each variant per round, order rotating); the median is reported."""
    seed: int = 0
    """Key of the random inputs (folded with T, so each length has its own)."""
    device: str = "cpu"
    """Torch device: "cpu", "cuda" or "cuda:N" (an unavailable CUDA device is an error)."""
    threads: int = 0
    """torch intra-op threads (0: torch's default; 1 on the shared 2-core machine)."""
    out: Path | None = None
    """The JSON file to write (default: a fresh `benchmarks/results/bench_cif-<time>.json`, so the committed
    `bench_cif.json` is replaced only when named here)."""


@cli_main
def main(args: list[str] | None = None) -> dict[str, Any]:
    cfg = tyro.cli(CIFBenchConfig, args=args, description="\n\n".join(__doc__.split("\n\n")[:2]))
    if not 0 <= cfg.alpha_min <= cfg.alpha_max < 1.0:
        raise ConfigError(f"need 0 <= alpha_min <= alpha_max < 1, got {cfg.alpha_min}, {cfg.alpha_max}")
    if not cfg.lengths or min(cfg.lengths) < 1 or cfg.batch_size < 1 or cfg.dim < 1:
        raise ConfigError(f"lengths, batch_size and dim must be positive, got {cfg.lengths}, {cfg.batch_size}, "
                          f"{cfg.dim}")
    device, info = start(cfg.device, cfg.threads)
    inputs, agreement, memory, fns = {}, {}, {}, {}
    names = [f"{impl}_{mode}" for mode in ("fwd", "fwd_bwd") for impl in IMPLEMENTATIONS]
    for t in cfg.lengths:
        inp = inputs[t] = make_inputs(random.fold_in(random.key(cfg.seed), t), cfg.batch_size, t, cfg.dim,
                                      alpha_range=(cfg.alpha_min, cfg.alpha_max), device=device)
        agreement[t] = compare(inp)
        for impl, fn in IMPLEMENTATIONS.items():
            variants = {f"{impl}_fwd": lambda inp=inp, fn=fn: _forward(fn, inp),
                        f"{impl}_fwd_bwd": lambda inp=inp, fn=fn: _forward_backward(fn, inp)}
            for name, variant in variants.items():
                memory[t, name] = measure_peak_memory(variant, device, calls=1)
                fns[f"T={t} {name}"] = variant
        print(f"T={t}: tokens and fires equal (loop, dense): {agreement[t]['fire_positions_equal']}, "
              f"{agreement[t]['dense_fire_positions_equal']}; max |embeds diff| vs loop "
              f"{agreement[t]['max_abs_embeds_diff']:.1e}, vs dense {agreement[t]['dense_max_abs_embeds_diff']:.1e}",
              flush=True)
    # Every T and variant round-robin, so that load from other jobs falls on all alike.
    times = time_interleaved(fns, warmup=cfg.warmup, repeat=cfg.repeat, device=device)
    rows = []
    for t, inp in inputs.items():
        ms = {name: 1e3 * times[f"T={t} {name}"].median_s for name in names}
        rows.append({"T": t, "B": cfg.batch_size, "D": cfg.dim, "tokens_max": int(inp["target_lengths"].max()),
                     **{f"{name}_ms": v for name, v in ms.items()},
                     "speedup_fwd": ms["loop_fwd"] / ms["vec_fwd"],
                     "speedup_fwd_bwd": ms["loop_fwd_bwd"] / ms["vec_fwd_bwd"],
                     "speedup_dense_fwd": ms["dense_fwd"] / ms["vec_fwd"],
                     "speedup_dense_fwd_bwd": ms["dense_fwd_bwd"] / ms["vec_fwd_bwd"],
                     **agreement[t],
                     **{f"{impl}_fwd_bwd_delta_mb": memory[t, f"{impl}_fwd_bwd"]["delta_mb"]
                        for impl in IMPLEMENTATIONS},
                     "memory": {name: memory[t, name] for name in names},
                     "timings": {name: times[f"T={t} {name}"].to_dict() for name in names}})
    result = {"benchmark": "cif", "machine": info, "config": dataclasses.asdict(cfg), "rows": rows,
              "load_average_end": machine_info(device)["load_average"]}
    path = write_json(result, cfg.out or fresh_results_path("bench_cif"))
    print(markdown_table(rows, {"T": "T", "tokens_max": "N", "vec_fwd_ms": "vec fwd ms",
                                "dense_fwd_ms": "dense fwd ms", "loop_fwd_ms": "loop fwd ms",
                                "speedup_dense_fwd": "dense/vec fwd", "speedup_fwd": "loop/vec fwd",
                                "vec_fwd_bwd_ms": "vec fwd+bwd ms",
                                "dense_fwd_bwd_ms": "dense fwd+bwd ms", "loop_fwd_bwd_ms": "loop fwd+bwd ms",
                                "speedup_dense_fwd_bwd": "dense/vec fwd+bwd", "speedup_fwd_bwd": "loop/vec fwd+bwd",
                                "vec_fwd_bwd_delta_mb": "vec MB", "dense_fwd_bwd_delta_mb": "dense MB",
                                "loop_fwd_bwd_delta_mb": "loop MB"}))
    print()
    print(markdown_table(rows, {"T": "T", "fire_positions_equal": "same fires (loop)",
                                "dense_fire_positions_equal": "same fires (dense)",
                                "ref_dense_diff": "f64 vec-dense diff",
                                "dense_max_abs_embeds_diff": "embeds diff dense",
                                "max_abs_embeds_diff": "embeds diff loop", "vec_err_embeds": "vec embeds err",
                                "dense_err_embeds": "dense embeds err", "loop_err_embeds": "loop embeds err",
                                "dense_max_abs_grad_h_diff": "d/dh diff dense", "rel_grad_h_diff": "d/dh rel diff loop",
                                "vec_rel_err_grad_alpha": "vec d/dalpha rel err",
                                "dense_rel_err_grad_alpha": "dense d/dalpha rel err",
                                "loop_rel_err_grad_alpha": "loop d/dalpha rel err"}))
    print(f"\nwritten {path}")
    return result


if __name__ == "__main__":
    main()
