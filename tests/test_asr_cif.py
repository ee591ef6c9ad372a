"""funcml.asr.cif: hand-computed integrate-and-fire, exact fire counts, gradients, padding, compile,
and the linear-time embeddings against the dense formula they replaced."""

from __future__ import annotations

import pytest
import torch
from einops import rearrange
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from funcml import compiler, random
from funcml.asr.cif import CIFOutput, cif, cif_weights, fire_times, init_cif_predictor, quantity_loss
from funcml.errors import ConfigError, DTypeError, ShapeError

HAND_ALPHA = [0.3, 0.4, 0.5, 0.8, 0.5, 0.5]
HAND_EMBEDS = [[0.3, 0.4, 0.3, 0.0, 0.0, 0.0],
               [0.0, 0.0, 0.2, 0.8, 0.0, 0.0],
               [0.0, 0.0, 0.0, 0.0, 0.5, 0.5]]


def _hand_case(dtype=torch.float32):
    """alpha = [.3, .4, .5, .8, .5, .5] (sum 3) over one-hot frames h[t] = e_t."""
    return torch.eye(6, dtype=dtype)[None], torch.tensor([HAND_ALPHA], dtype=dtype)


def _loop_cif(h: torch.Tensor, alpha: torch.Tensor, beta: float, tail: float):
    """The sequential CIF of Dong & Xu (Algorithm 1) for one item, with an inference tail.

    Requires alpha_t <= beta (at most one fire per frame). Returns (embeds [N, D], fires [N]).
    """
    acc, state, embeds, fires = 0.0, torch.zeros_like(h[0]), [], []
    for t in range(h.shape[0]):
        a = float(alpha[t])
        if acc + a < beta:
            acc, state = acc + a, state + a * h[t]
        else:
            part = beta - acc
            embeds.append(state + part * h[t])
            fires.append(t)
            acc, state = a - part, (a - part) * h[t]
    if acc + tail >= beta:
        embeds.append(state)
        fires.append(h.shape[0] - 1)
    empty = torch.zeros(0, h.shape[1], dtype=h.dtype)
    return (torch.stack(embeds) if embeds else empty), torch.tensor(fires, dtype=torch.long)


def _token_weights(alpha: torch.Tensor, **kw) -> CIFOutput:
    """cif over h = ones [B, T, 1]: embeds[b, n, 0] is the total weight token n integrated."""
    return cif(torch.ones(*alpha.shape, 1, dtype=alpha.dtype), alpha, **kw)


def _dense_embeds(h: torch.Tensor, out: CIFOutput, threshold: float = 1.0) -> torch.Tensor:
    """The embeddings as cif computed them before it became linear in T (the reference):

        w_{n,t} = max(0, min(c_t, (n + 1) beta) - max(c_{t-1}, n beta)) [n < L_b],   e = einsum("bnt,btd->bnd", w, h)

    with the dense `[B, N, T]` weights, from cif's own `alpha_scaled` and `lengths` (so gradients
    reach `alpha` through the same rescaling)."""
    alpha, n_tokens = out.alpha_scaled, out.embeds.shape[1]
    c = torch.cumsum(alpha, dim=-1)
    c_prev = torch.cat([torch.zeros_like(c[:, :1]), c[:, :-1]], dim=-1)
    n = torch.arange(n_tokens, dtype=alpha.dtype)
    lo, hi = rearrange(n * threshold, "n -> 1 n 1"), rearrange((n + 1) * threshold, "n -> 1 n 1")
    w = (torch.minimum(rearrange(c, "b t -> b 1 t"), hi) - torch.maximum(rearrange(c_prev, "b t -> b 1 t"), lo))
    valid = torch.arange(n_tokens) < rearrange(out.lengths, "b -> b 1")
    w = w.clamp(min=0) * rearrange(valid, "b n -> b n 1").to(alpha.dtype)
    return torch.einsum("bnt,btd->bnd", w.to(h.dtype), h)


def _embeds_and_grads(embeds_fn, h: torch.Tensor, alpha: torch.Tensor, key: torch.Tensor):
    """`embeds_fn(h, alpha)` and the gradients of `sum(embeds * g)` w.r.t. h and alpha, g ~ N(0, 1)."""
    h, alpha = h.detach().requires_grad_(), alpha.detach().requires_grad_()
    embeds = embeds_fn(h, alpha)
    g = random.normal(key, embeds.shape, dtype=embeds.dtype)
    grad_h, grad_alpha = torch.autograd.grad((embeds * g).sum(), (h, alpha))
    return embeds.detach(), grad_h, grad_alpha


def _padding_mask(frames: list[int], t_max: int) -> torch.Tensor:
    return torch.arange(t_max)[None] < torch.tensor(frames)[:, None]


def _fractions(key: torch.Tensor, shape: tuple[int, ...], values: list[float]) -> torch.Tensor:
    """Weights drawn from `values` (float64)."""
    choices = torch.tensor(values, dtype=torch.float64)
    return choices[random.randint(key, shape, 0, len(values))]


def _hits_a_boundary(out: CIFOutput, beta: float) -> bool:
    """Whether some c_t lands exactly on a token boundary k beta, k >= 1."""
    c = out.alpha_scaled.cumsum(-1) / beta
    return bool(((c == c.round()) & (c >= 1)).any())


# Each case: key -> (h [B, T, D] float64, alpha [B, T] float64, cif keyword arguments); a case checks its premise.

def _case_inference_padded(key):
    k_h, k_a = random.split(key)
    mask = _padding_mask([30, 24, 13, 4], 30)
    alpha = random.uniform(k_a, (4, 30), 0.05, 0.95, dtype=torch.float64) * mask
    return random.normal(k_h, (4, 30, 5), dtype=torch.float64), alpha, {"mask": mask}


def _case_training_padded(key):
    h, alpha, kw = _case_inference_padded(key)
    return h, alpha, {**kw, "target_lengths": torch.tensor([9, 5, 7, 1])}


def _case_training_heavy_frames(key):
    # 6 frames rescaled to 17, 9 and 30 tokens: up to 5 whole tokens inside one frame, and a zero frame.
    k_h, k_a = random.split(key)
    alpha = random.uniform(k_a, (3, 6), 0.2, 1.0, dtype=torch.float64)
    alpha[0, 2] = 0.0
    kw = {"target_lengths": torch.tensor([17, 9, 30])}
    assert cif(torch.zeros(3, 6, 1, dtype=torch.float64), alpha, **kw).alpha_scaled.max() > 4
    return random.normal(k_h, (3, 6, 4), dtype=torch.float64), alpha, kw


def _case_inference_heavy_frames_and_max_tokens(key):
    # Unscaled weights up to 3.5 (as a caller may pass): whole tokens inside frames, truncated at N = 6.
    k_h, k_a = random.split(key)
    alpha = _fractions(k_a, (3, 8), [0.0, 0.3, 1.7, 3.5])
    return random.normal(k_h, (3, 8, 4), dtype=torch.float64), alpha, {"max_tokens": 6}


def _case_inference_binary_fractions(key):
    k_h, k_a = random.split(key)
    alpha = _fractions(k_a, (3, 24), [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 2.0])
    assert _hits_a_boundary(cif(torch.zeros(3, 24, 1, dtype=torch.float64), alpha), 1.0)
    return random.normal(k_h, (3, 24, 4), dtype=torch.float64), alpha, {}


def _case_training_binary_fractions(key):
    # Each item completed to an integer sum S, targets S, 2 S, S: the rescaling is exact (x1, x2),
    # so c_t still lands on boundaries, and padded frames sit exactly on the last boundary.
    h, alpha, _ = _case_inference_binary_fractions(key)
    mask = _padding_mask([24, 20, 17], 24)
    alpha = alpha * mask
    frames = mask.long().sum(-1)
    total = alpha.sum(-1)
    alpha[torch.arange(3), frames - 1] += total.ceil() - total + 1.0
    target = (alpha.sum(-1) * torch.tensor([1.0, 2.0, 1.0])).long()
    kw = {"mask": mask, "target_lengths": target}
    assert _hits_a_boundary(cif(torch.zeros(3, 24, 1, dtype=torch.float64), alpha, **kw), 1.0)
    return h, alpha, kw


def _case_inference_threshold_one_half(key):
    k_h, k_a = random.split(key)
    alpha = _fractions(k_a, (2, 20), [0.0, 0.125, 0.25, 0.5, 0.75])
    kw = {"threshold": 0.5, "tail_threshold": 0.25}
    assert _hits_a_boundary(cif(torch.zeros(2, 20, 1, dtype=torch.float64), alpha, **kw), 0.5)
    return random.normal(k_h, (2, 20, 3), dtype=torch.float64), alpha, kw


def _case_training_threshold_not_a_binary_fraction(key):
    # beta = 0.3 and weights in tenths: boundaries n * 0.3 and sums of tenths meet within rounding.
    k_h, k_a = random.split(key)
    alpha = _fractions(k_a, (2, 30), [0.0, 0.1, 0.2, 0.3, 0.6])
    kw = {"threshold": 0.3, "tail_threshold": 0.1, "target_lengths": torch.tensor([11, 8])}
    return random.normal(k_h, (2, 30, 3), dtype=torch.float64), alpha, kw


def _case_training_max_tokens_truncation(key):
    h, alpha, kw = _case_training_padded(key)
    return h, alpha, {**kw, "max_tokens": 4}


def _case_inference_max_tokens_truncation(key):
    h, alpha, kw = _case_inference_padded(key)
    return h, alpha, {**kw, "max_tokens": 3}


def _case_training_all_zero_item(key):
    k_h, k_a = random.split(key)
    alpha = random.uniform(k_a, (3, 12), 0.1, 0.9, dtype=torch.float64)
    alpha[1] = 0.0
    return random.normal(k_h, (3, 12, 4), dtype=torch.float64), alpha, {"target_lengths": torch.tensor([4, 3, 5])}


def _case_inference_all_zero_items(key):
    h, alpha, _ = _case_training_all_zero_item(key)
    alpha[2] = 0.0
    return h, alpha, {"max_tokens": 5}


DENSE_CASES = {name[len("_case_"):]: fn for name, fn in globals().items() if name.startswith("_case_")}


class _LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an op returns (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.numel = max([self.numel] + [x.numel() for x in tree_leaves(out) if isinstance(x, torch.Tensor)])
        return out


# --- hand-computed ---------------------------------------------------------------------------------

def test_cif_hand_computed_inference_fires_three_tokens_at_frames_2_3_5():
    h, alpha = _hand_case()
    out = cif(h, alpha)
    assert out.lengths.tolist() == [3]
    torch.testing.assert_close(out.embeds, torch.tensor([HAND_EMBEDS]), atol=1e-6, rtol=0)
    assert out.fire_positions.tolist() == [[2, 3, 5]]
    assert out.lengths.dtype == out.fire_positions.dtype == torch.int64


def test_cif_hand_computed_training_gives_the_same_three_tokens():
    h, alpha = _hand_case()
    out = cif(h, alpha, target_lengths=torch.tensor([3]))
    assert out.lengths.tolist() == [3]
    torch.testing.assert_close(out.embeds, torch.tensor([HAND_EMBEDS]), atol=1e-6, rtol=0)
    assert out.fire_positions.tolist() == [[2, 3, 5]]
    torch.testing.assert_close(out.alpha_scaled, alpha)


def test_cif_training_rescales_alphas_to_the_target_length():
    # alpha sums to 3; a target of 6 doubles every weight: c = .6, 1.4, 2.4, 4.0, 5.0, 6.0.
    h, alpha = _hand_case()
    out = cif(h, alpha, target_lengths=torch.tensor([6]))
    torch.testing.assert_close(out.alpha_scaled, 2 * alpha)
    assert out.lengths.tolist() == [6]
    assert out.fire_positions.tolist() == [[1, 2, 3, 3, 4, 5]]
    # Scaled alpha = .6, .8, 1.0, 1.6, 1.0, 1.0: frame 1 gives .4 to token 0 and .4 to token 1, ...
    want = torch.tensor([[0.6, 0.4, 0, 0, 0, 0],
                         [0, 0.4, 0.6, 0, 0, 0],
                         [0, 0, 0.4, 0.6, 0, 0],
                         [0, 0, 0, 1.0, 0, 0],
                         [0, 0, 0, 0, 1.0, 0],
                         [0, 0, 0, 0, 0, 1.0]])
    torch.testing.assert_close(out.embeds[0], want, atol=1e-6, rtol=0)


def test_cif_frame_heavier_than_threshold_is_split_over_several_tokens():
    # Two frames rescaled to 1.5 each (target 3): e_0 = h_0, e_1 = .5 h_0 + .5 h_1, e_2 = h_1.
    h = torch.eye(2)[None]
    out = cif(h, torch.tensor([[0.1, 0.1]]), target_lengths=torch.tensor([3]))
    torch.testing.assert_close(out.embeds[0], torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]]))
    assert out.fire_positions.tolist() == [[0, 1, 1]]


def test_cif_threshold_other_than_one_integrates_beta_per_token():
    # beta = 0.5 over the hand case: c = .3, .7, 1.2, 2.0, ... -> a token every 0.5 of weight.
    h, alpha = _hand_case()
    out = _token_weights(alpha, threshold=0.5, target_lengths=torch.tensor([6]))
    torch.testing.assert_close(out.embeds[0, :, 0], torch.full((6,), 0.5))
    assert out.fire_positions.tolist() == [[1, 2, 3, 3, 4, 5]]


def test_cif_matches_the_sequential_loop_of_the_paper(getkey):
    h = random.normal(getkey(), (40, 3), dtype=torch.float64)
    alpha = random.uniform(getkey(), (40,), 0.05, 0.95, dtype=torch.float64)
    want_embeds, want_fires = _loop_cif(h, alpha, beta=1.0, tail=0.45)
    out = cif(h[None], alpha[None])
    assert out.lengths.tolist() == [len(want_fires)]
    torch.testing.assert_close(out.embeds[0], want_embeds)
    assert out.fire_positions[0].tolist() == want_fires.tolist()


# --- exact number of fires ------------------------------------------------------------------------

def test_cif_fires_exact_count_under_float32_rounding():
    # 7/13 in float32, summed 13 times, is not exactly 7: the count must still be 7.
    alpha = torch.full((1, 13), 7 / 13, dtype=torch.float32)
    out = _token_weights(alpha, target_lengths=torch.tensor([7]))
    assert out.alpha_scaled.cumsum(-1)[0, -1].item() < 7.0  # the shortfall a plain `c_t >= 7` test misses
    assert out.lengths.tolist() == [7]
    assert out.fire_positions[0, -1].item() == 12
    torch.testing.assert_close(out.embeds[0, :, 0], torch.ones(7), atol=1e-5, rtol=0)


def test_cif_inference_without_tail_counts_a_sum_short_of_L_by_rounding_as_L():
    alpha = torch.full((1, 13), 7 / 13, dtype=torch.float32)
    out = _token_weights(alpha, tail_threshold=0.0)
    assert out.lengths.tolist() == [7]
    assert out.fire_positions[0, -1].item() == 12


def test_cif_fires_exact_count_for_random_alphas_scaled_to_L_in_float32():
    short = 0
    for seed in range(20):
        k_len, k_frames, k_alpha = random.split(random.key(seed), 3)
        lengths = random.randint(k_len, (8,), 1, 60)
        frames = lengths * 2 + random.randint(k_frames, (8,), 0, 80)              # >= 2 frames per token
        t_max = int(frames.max())
        mask = torch.arange(t_max)[None] < frames[:, None]
        alpha = random.uniform(k_alpha, (8, t_max), 0.01, 1.0) * mask
        # Already scaled to L in float32 (as a caller would), and scaled again by cif.
        alpha = alpha * (lengths / alpha.sum(-1))[:, None]
        for kw in ({"target_lengths": lengths}, {"target_lengths": lengths, "max_tokens": 60}):
            out = _token_weights(alpha, mask=mask, **kw)
            short += int((out.alpha_scaled.cumsum(-1)[:, -1] < lengths).sum())
            assert out.lengths.tolist() == lengths.tolist(), f"seed {seed}"
            last = out.embeds[torch.arange(8), lengths - 1, 0]
            torch.testing.assert_close(last, torch.ones(8), atol=1e-4, rtol=0)
            assert out.fire_positions[torch.arange(8), lengths - 1].tolist() == (frames - 1).tolist()
    assert short > 0  # some cases do end a hair below L: the rounding failure is exercised


def test_cif_training_every_token_integrates_exactly_threshold(getkey):
    alpha = random.uniform(getkey(), (3, 50), 0.0, 1.0)
    lengths = torch.tensor([5, 17, 30])
    out = _token_weights(alpha, target_lengths=lengths)
    for b, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(out.embeds[b, :n, 0], torch.ones(n), atol=1e-5, rtol=0)
        assert (out.embeds[b, n:] == 0).all()
        assert (out.fire_positions[b, n:] == -1).all()
        assert out.fire_positions[b, :n].diff().ge(0).all()


# --- inference tail and silence -------------------------------------------------------------------

@pytest.mark.parametrize("total, want", [(2.6, 3), (2.5, 2)])
def test_cif_inference_tail_fires_a_trailing_partial_token(total, want):
    alpha = torch.full((1, 10), total / 10)
    out = _token_weights(alpha, tail_threshold=0.45)
    assert out.lengths.tolist() == [want]
    if want == 3:  # the tail token holds the 0.6 of real weight left and fires at the last frame
        torch.testing.assert_close(out.embeds[0, :, 0], torch.tensor([1.0, 1.0, 0.6]), atol=1e-5, rtol=0)
        assert out.fire_positions[0, -1].item() == 9


def test_cif_tail_token_fires_at_last_valid_frame_not_on_padding():
    alpha = torch.tensor([[0.5, 0.5, 0.6, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True, False, False]])
    out = _token_weights(alpha, mask=mask)
    assert out.lengths.tolist() == [2]
    assert out.fire_positions.tolist() == [[1, 2]]


def test_cif_silence_fires_no_token_and_returns_empty_embeds():
    alpha = torch.full((2, 30), 1e-3)
    out = cif(torch.ones(2, 30, 4), alpha)
    assert out.lengths.tolist() == [0, 0]
    assert out.embeds.shape == (2, 0, 4)
    assert out.fire_positions.shape == (2, 0)


def test_cif_silence_with_max_tokens_gives_only_padding_tokens():
    out = cif(torch.ones(2, 30, 4), torch.zeros(2, 30), max_tokens=5)
    assert out.lengths.tolist() == [0, 0]
    assert out.embeds.shape == (2, 5, 4) and out.embeds.abs().max().item() == 0.0
    assert (out.fire_positions == -1).all()


def test_cif_max_tokens_truncates_and_clips_lengths():
    h, alpha = _hand_case()
    out = cif(h, alpha, max_tokens=2)
    assert out.lengths.tolist() == [2]
    torch.testing.assert_close(out.embeds, torch.tensor([HAND_EMBEDS[:2]]), atol=1e-6, rtol=0)


# --- batching and padding -------------------------------------------------------------------------

@pytest.mark.parametrize("train", [False, True])
def test_cif_padded_batch_equals_per_item_results(getkey, train):
    frames, lengths, t_max = [9, 17, 12], [4, 7, 5], 20
    mask = torch.arange(t_max)[None] < torch.tensor(frames)[:, None]
    h = random.normal(getkey(), (3, t_max, 5))
    alpha = random.uniform(getkey(), (3, t_max), 0.2, 0.9) * mask
    kw = {"target_lengths": torch.tensor(lengths)} if train else {}
    out = cif(h, alpha, mask=mask, **kw)
    for b, t_b in enumerate(frames):
        kw_b = {"target_lengths": torch.tensor(lengths[b:b + 1])} if train else {}
        one = cif(h[b:b + 1, :t_b], alpha[b:b + 1, :t_b], **kw_b)
        n = one.lengths.item()
        assert out.lengths[b].item() == n
        torch.testing.assert_close(out.embeds[b, :n], one.embeds[0], atol=1e-6, rtol=1e-6)
        assert (out.embeds[b, n:] == 0).all()
        assert out.fire_positions[b, :n].tolist() == one.fire_positions[0].tolist()
        torch.testing.assert_close(out.alpha_scaled[b, :t_b], one.alpha_scaled[0])


def test_cif_padded_frames_never_contribute_even_with_nonzero_alpha(getkey):
    h = random.normal(getkey(), (1, 8, 3))
    alpha = torch.full((1, 8), 0.7)
    mask = torch.arange(8)[None] < 5
    out = cif(h, alpha, mask=mask, target_lengths=torch.tensor([3]))
    one = cif(h[:, :5], alpha[:, :5], target_lengths=torch.tensor([3]))
    torch.testing.assert_close(out.embeds, one.embeds)
    assert out.alpha_scaled[0, 5:].abs().max().item() == 0.0


def test_cif_vmaps_over_a_leading_batch_of_batches(getkey):
    h = random.normal(getkey(), (3, 2, 10, 4))
    alpha = random.uniform(getkey(), (3, 2, 10), 0.1, 0.9)
    lengths = torch.tensor([[2, 4], [3, 3], [5, 1]])
    out = torch.func.vmap(lambda h, a, L: cif(h, a, target_lengths=L, max_tokens=6))(h, alpha, lengths)
    for i in range(3):
        one = cif(h[i], alpha[i], target_lengths=lengths[i], max_tokens=6)
        torch.testing.assert_close(out.embeds[i], one.embeds)
        assert torch.equal(out.fire_positions[i], one.fire_positions)


# --- gradients ------------------------------------------------------------------------------------

@pytest.mark.parametrize("train", [False, True])
def test_cif_gradcheck_wrt_alpha_and_h_in_float64(getkey, train):
    h = random.normal(getkey(), (2, 7, 3), dtype=torch.float64).requires_grad_()
    alpha = random.uniform(getkey(), (2, 7), 0.1, 0.9, dtype=torch.float64).requires_grad_()
    kw = {"target_lengths": torch.tensor([3, 4])} if train else {}
    assert torch.autograd.gradcheck(lambda h, a: cif(h, a, **kw).embeds, (h, alpha))


def test_cif_gradcheck_with_whole_tokens_inside_frames_in_float64(getkey):
    h = random.normal(getkey(), (2, 4, 3), dtype=torch.float64).requires_grad_()
    alpha = random.uniform(getkey(), (2, 4), 0.2, 1.0, dtype=torch.float64).requires_grad_()
    lengths = torch.tensor([9, 6])
    assert cif(h, alpha, target_lengths=lengths).alpha_scaled.max() > 2  # some frame holds a whole token
    assert torch.autograd.gradcheck(lambda h, a: cif(h, a, target_lengths=lengths).embeds, (h, alpha))


def test_cif_gradient_reaches_every_frame_through_alpha(getkey):
    h = random.normal(getkey(), (1, 12, 4))
    alpha = random.uniform(getkey(), (1, 12), 0.1, 0.9).requires_grad_()
    cif(h, alpha, target_lengths=torch.tensor([4])).embeds.square().sum().backward()
    assert torch.isfinite(alpha.grad).all() and (alpha.grad != 0).all()


# --- linear-time embeddings: the dense formula they replaced is the spec ------------------------------

@pytest.mark.parametrize("case", sorted(DENSE_CASES))
def test_cif_embeds_and_gradients_equal_the_dense_formula_in_float64(case):
    h, alpha, kw = DENSE_CASES[case](random.key(sorted(DENSE_CASES).index(case)))
    beta = kw.get("threshold", 1.0)
    got = _embeds_and_grads(lambda h, a: cif(h, a, **kw).embeds, h, alpha, random.key(99))
    want = _embeds_and_grads(lambda h, a: _dense_embeds(h, cif(h, a, **kw), beta), h, alpha, random.key(99))
    assert got[0].shape == want[0].shape and got[0].shape[1] > 0
    for name, g, w in zip(("embeds", "d/dh", "d/dalpha"), got, want):
        torch.testing.assert_close(g, w, atol=1e-12, rtol=0, msg=lambda m, name=name: f"{name}: {m}")


def test_cif_several_whole_tokens_inside_one_frame_by_hand():
    # c = .25, 3.75, 4: frame 1 ends token 0, holds tokens 1 and 2 whole, and starts token 3.
    out = cif(torch.eye(3)[None], torch.tensor([[0.25, 3.5, 0.25]]), target_lengths=torch.tensor([4]))
    want = torch.tensor([[0.25, 0.75, 0.0], [0.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.75, 0.25]])
    torch.testing.assert_close(out.embeds[0], want)
    assert out.fire_positions.tolist() == [[1, 1, 1, 2]]


def test_cif_tokens_past_the_count_get_exactly_zero_even_inside_a_heavy_frame():
    # Inference: c = .2, 3.3, floor(3.3 + .45) = 3 tokens; the .3 left in frame 1 (token 3) is dropped.
    out = cif(torch.eye(2)[None], torch.tensor([[0.2, 3.1]]), max_tokens=5)
    assert out.lengths.tolist() == [3]
    torch.testing.assert_close(out.embeds[0, :3], torch.tensor([[0.2, 0.8], [0.0, 1.0], [0.0, 1.0]]))
    assert out.embeds[0, 3:].abs().max().item() == 0.0


def test_cif_frames_exactly_on_a_boundary_split_nothing():
    # alpha = .5 each: c lands on 1, 2, 3; every token is two whole frames.
    out = cif(torch.eye(6)[None], torch.full((1, 6), 0.5))
    assert out.lengths.tolist() == [3] and out.fire_positions.tolist() == [[1, 3, 5]]
    want = torch.tensor([[0.5, 0.5, 0, 0, 0, 0], [0, 0, 0.5, 0.5, 0, 0], [0, 0, 0, 0, 0.5, 0.5]])
    torch.testing.assert_close(out.embeds[0], want, atol=0, rtol=0)


def test_cif_never_builds_a_tokens_by_frames_tensor(getkey):
    b, t, d = 2, 600, 2
    h = random.normal(getkey(), (b, t, d)).requires_grad_()
    alpha = random.uniform(getkey(), (b, t), 0.05, 0.45).requires_grad_()
    probe = _LargestTensor()
    with probe:
        out = cif(h, alpha, target_lengths=torch.tensor([150, 140]))
        out.embeds.square().sum().backward()
    n = out.embeds.shape[1]
    assert probe.numel <= b * (t + n + 2) * d  # O(B (T + N) D); B N T = 180000 here
    dense_probe = _LargestTensor()
    with dense_probe:
        _dense_embeds(h, out)
    assert dense_probe.numel >= b * n * t  # the probe does see the [B, N, T] weights of the dense form


def test_cif_func_grad_under_vmap_equals_per_item_autograd(getkey):
    h = random.normal(getkey(), (3, 2, 9, 4), dtype=torch.float64)
    alpha = _fractions(getkey(), (3, 2, 9), [0.0, 0.25, 0.5, 1.5, 2.25])
    lengths = torch.tensor([[2, 4], [3, 9], [6, 1]])
    g = random.normal(getkey(), (3, 2, 10, 4), dtype=torch.float64)

    def loss(h, alpha, lengths, g):
        return (cif(h, alpha, target_lengths=lengths, max_tokens=10).embeds * g).sum()

    grad_h, grad_alpha = torch.func.vmap(torch.func.grad(loss, argnums=(0, 1)))(h, alpha, lengths, g)
    for i in range(3):
        hi, ai = h[i].clone().requires_grad_(), alpha[i].clone().requires_grad_()
        want = torch.autograd.grad(loss(hi, ai, lengths[i], g[i]), (hi, ai))
        torch.testing.assert_close(grad_h[i], want[0], atol=1e-12, rtol=0)
        torch.testing.assert_close(grad_alpha[i], want[1], atol=1e-12, rtol=0)


# --- compile --------------------------------------------------------------------------------------

@pytest.mark.compile
def test_cif_compiled_training_matches_eager_with_static_shape(getkey):
    h = random.normal(getkey(), (2, 11, 4))
    alpha = random.uniform(getkey(), (2, 11), 0.1, 0.9)
    mask = torch.arange(11)[None] < torch.tensor([[11], [8]])
    lengths = torch.tensor([5, 3])

    def step(h, alpha, mask, lengths):
        return tuple(cif(h, alpha, mask=mask, target_lengths=lengths, max_tokens=6))

    got = compiler.compile(step)(h, alpha, mask, lengths)
    want = step(h, alpha, mask, lengths)
    assert got[0].shape == (2, 6, 4)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-6, rtol=1e-6)


@pytest.mark.compile
def test_cif_compiled_gradients_match_eager_with_whole_tokens_inside_frames_and_exact_boundaries(getkey):
    h = random.normal(getkey(), (2, 8, 3))
    alpha = torch.tensor([[0.5, 0.25, 0.25, 2.0, 0.0, 0.5, 0.25, 0.25], [0.1, 0.3, 0.0, 1.2, 0.4, 0.3, 0.6, 0.2]])
    g = random.normal(getkey(), (2, 6, 3))

    def loss(h, alpha):
        out = cif(h, alpha, max_tokens=6)  # inference: 4 and 3 tokens
        return (out.embeds * g).sum(), out.embeds

    step = torch.func.grad_and_value(loss, argnums=(0, 1), has_aux=True)
    (got_grads, (_, got_embeds)), (want_grads, (_, want_embeds)) = compiler.compile(step)(h, alpha), step(h, alpha)
    torch.testing.assert_close(got_embeds, want_embeds, atol=1e-6, rtol=1e-6)
    for got, want in zip(got_grads, want_grads):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


# --- predictor, loss, timestamps, errors ----------------------------------------------------------

def test_cif_predictor_weights_in_unit_interval_and_zero_on_padding(getkey):
    params = init_cif_predictor(getkey(), 8, kernel_size=3, hidden=16)
    assert params["conv"]["w"].shape == (16, 8, 3) and params["proj"]["w"].shape == (16, 1)
    h = random.normal(getkey(), (2, 10, 8))
    mask = torch.arange(10)[None] < torch.tensor([[10], [6]])
    alpha = cif_weights(params, h, mask)
    assert alpha.shape == (2, 10)
    assert ((alpha[mask] > 0) & (alpha[mask] < 1)).all()
    assert alpha[~mask].abs().max().item() == 0.0


def test_cif_predictor_item_weights_do_not_depend_on_padding(getkey):
    params = init_cif_predictor(getkey(), 8)
    h = random.normal(getkey(), (1, 10, 8))
    mask = torch.arange(10)[None] < 6
    torch.testing.assert_close(cif_weights(params, h, mask)[:, :6], cif_weights(params, h[:, :6]))


def test_cif_predictor_init_is_deterministic_in_the_key(key):
    a, b = init_cif_predictor(key, 8), init_cif_predictor(key, 8)
    assert all(torch.equal(a[m][p], b[m][p]) for m in a for p in a[m])


def test_quantity_loss_by_hand():
    alpha = torch.tensor([[0.5, 0.5, 0.9, 0.7], [0.6, 0.6, 0.6, 0.6]])
    mask = torch.tensor([[True, True, True, False], [True, True, True, True]])
    # item 0: |1.9 - 3| = 1.1 (the padded 0.7 is ignored); item 1: |2.4 - 2| = 0.4.
    got = quantity_loss(alpha, mask, torch.tensor([3, 2]))
    torch.testing.assert_close(got, torch.tensor(0.75))


def test_quantity_loss_uses_unscaled_alphas_and_has_sign_gradient():
    alpha = torch.tensor([[0.5, 0.5]], requires_grad=True)
    quantity_loss(alpha, None, torch.tensor([2])).backward()
    torch.testing.assert_close(alpha.grad, torch.tensor([[-1.0, -1.0]]))


def test_fire_times_by_hand():
    fires = torch.tensor([[2, 3, 5], [1, -1, -1]])
    start, end = fire_times(fires, frame_shift_s=0.06)
    torch.testing.assert_close(start, torch.tensor([[0.0, 0.18, 0.24], [0.0, -1.0, -1.0]]))
    torch.testing.assert_close(end, torch.tensor([[0.18, 0.24, 0.36], [0.12, -1.0, -1.0]]))


def test_fire_times_of_cif_output_tile_the_utterance():
    h, alpha = _hand_case()
    start, end = fire_times(cif(h, alpha).fire_positions, frame_shift_s=0.1, offset_s=1.0)
    torch.testing.assert_close(start, torch.tensor([[1.0, 1.3, 1.4]]))
    torch.testing.assert_close(end, torch.tensor([[1.3, 1.4, 1.6]]))


def test_cif_rejects_mismatched_alpha_shape_naming_the_argument():
    with pytest.raises(ShapeError, match="cif: alpha"):
        cif(torch.zeros(2, 5, 3), torch.zeros(2, 6))


def test_cif_rejects_float_target_lengths():
    with pytest.raises(DTypeError, match="target_lengths"):
        cif(torch.zeros(1, 5, 3), torch.zeros(1, 5), target_lengths=torch.tensor([2.0]))


@pytest.mark.parametrize("kw", [{"threshold": 0.0}, {"tail_threshold": 1.0}, {"tail_threshold": -0.1},
                                {"max_tokens": -1}])
def test_cif_rejects_bad_settings(kw):
    with pytest.raises(ConfigError):
        cif(torch.zeros(1, 5, 3), torch.zeros(1, 5), **kw)
