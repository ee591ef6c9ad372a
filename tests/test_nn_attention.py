"""Multi-head attention: the math and sdpa paths, masks, torch equivalence, gradients, dropout."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from funcml import random, tree
from funcml.errors import ConfigError, DTypeError, PRNGKeyError, ShapeError
from funcml.nn.attention import init_mha, make_attention_mask, mha

B, T, S, D, H = 2, 5, 4, 8, 2


def _randomized(params, key, scale=0.5):
    """`params` with every leaf (biases included) replaced by normal noise, so that every
    tensor matters in a comparison."""
    named = tree.flatten_with_names(params)
    noisy = {n: scale * random.normal(random.fold_in(key, n), v.shape, dtype=v.dtype) for n, v in named.items()}
    return tree.unflatten_from_names(noisy, like=params)


def _bool(rows):
    return torch.tensor(rows, dtype=torch.bool)


@pytest.fixture
def self_params(key):
    return _randomized(init_mha(key, D, H), random.fold_in(key, "noise"))


@pytest.fixture
def cross_params(key):
    return _randomized(init_mha(key, D, H, d_kv=6), random.fold_in(key, "noise"))


@pytest.fixture
def x(getkey):
    return random.normal(getkey(), (B, T, D))


@pytest.fixture
def context(getkey):
    return random.normal(getkey(), (B, S, 6))


# Masks over [B, T, S] cross-attention (T=5 queries, S=4 keys); True = attend.
KV_VALID = _bool([[1, 1, 1, 0], [1, 1, 1, 1]])
FULL_MASK = make_attention_mask(_bool([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]]), KV_VALID)

MASK_CASES = {
    "no_mask": dict(),
    "key_padding": dict(mask=KV_VALID),
    "full": dict(mask=FULL_MASK),
    "causal": dict(causal=True),
    "causal_and_padding": dict(mask=KV_VALID, causal=True),
}


# ------------------------------------------------------------------------- math == sdpa


@pytest.mark.parametrize("case", MASK_CASES)
def test_math_and_sdpa_paths_agree_in_cross_attention(cross_params, x, context, case):
    kw = MASK_CASES[case]
    y_math = mha(cross_params, x, context, num_heads=H, impl="math", **kw)
    y_sdpa = mha(cross_params, x, context, num_heads=H, impl="sdpa", **kw)
    assert y_math.shape == (B, T, D)
    torch.testing.assert_close(y_math, y_sdpa, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_math_and_sdpa_paths_agree_in_self_attention_with_padding(self_params, x, causal):
    valid = _bool([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    y_math = mha(self_params, x, num_heads=H, mask=valid, causal=causal, impl="math")
    y_sdpa = mha(self_params, x, num_heads=H, mask=valid, causal=causal, impl="sdpa")
    torch.testing.assert_close(y_math, y_sdpa, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------- hand-made values


def _identity_projections(d, d_kv, heads):
    """Q = x, K = context[..., :d], V = context[..., d:], y = merged heads (no biases)."""
    eye = torch.eye(d)
    return {
        "q": {"w": eye.clone(), "b": torch.zeros(d)},
        "k": {"w": torch.cat([eye, torch.zeros(d_kv - d, d)]), "b": torch.zeros(d)},
        "v": {"w": torch.cat([torch.zeros(d_kv - d, d), eye]), "b": torch.zeros(d)},
        "o": {"w": eye.clone(), "b": torch.zeros(d)},
    }


def test_single_head_attention_matches_a_hand_computed_softmax():
    # q = 1, keys 0 and ln 3: weights softmax([0, ln 3]) = [1/4, 3/4]; values 4 and 8 -> 7.
    params = _identity_projections(1, 2, 1)
    x = torch.tensor([[[1.0]]])
    context = torch.tensor([[[0.0, 4.0], [math.log(3.0), 8.0]]])
    for impl in ("math", "sdpa"):
        y = mha(params, x, context, num_heads=1, impl=impl)
        torch.testing.assert_close(y, torch.tensor([[[7.0]]]))
    _, weights = mha(params, x, context, num_heads=1, return_weights=True)
    torch.testing.assert_close(weights, torch.tensor([[[[0.25, 0.75]]]]))


def test_a_masked_key_is_left_out_of_the_hand_computed_softmax():
    # The same as above with the second key masked: all weight on value 4.
    params = _identity_projections(1, 2, 1)
    x = torch.tensor([[[1.0]]])
    context = torch.tensor([[[0.0, 4.0], [math.log(3.0), 8.0]]])
    for impl in ("math", "sdpa"):
        y = mha(params, x, context, num_heads=1, mask=_bool([[1, 0]]), impl=impl)
        torch.testing.assert_close(y, torch.tensor([[[4.0]]]))


@pytest.mark.parametrize("impl", ["math", "sdpa"])
@pytest.mark.parametrize("masked", [False, True])
def test_equals_torch_sdpa_on_hand_made_q_k_v(getkey, impl, masked):
    q = random.normal(getkey(), (B, H, T, D // H))
    k = random.normal(getkey(), (B, H, S, D // H))
    v = random.normal(getkey(), (B, H, S, D // H))
    mask = FULL_MASK if masked else None
    # Rows of FULL_MASK that are all False are NaN in torch's sdpa and zero here: compare the others.
    rows = FULL_MASK.any(-1) if masked else torch.ones(B, T, dtype=torch.bool)
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=None if mask is None else mask[:, None])
    x = rearrange(q, "b h t d -> b t (h d)")
    context = torch.cat([rearrange(k, "b h s d -> b s (h d)"), rearrange(v, "b h s d -> b s (h d)")], dim=-1)
    y = mha(_identity_projections(D, 2 * D, H), x, context, num_heads=H, mask=mask, impl=impl)
    torch.testing.assert_close(y[rows], rearrange(want, "b h t d -> b t (h d)")[rows], rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------- nn.MultiheadAttention


def _torch_mha(params, num_heads, d_kv=None):
    """An `nn.MultiheadAttention` holding `params` (torch keeps `[dout, din]` weights)."""
    d = params["q"]["w"].shape[1]
    m = torch.nn.utils.skip_init(torch.nn.MultiheadAttention, d, num_heads, batch_first=True, kdim=d_kv, vdim=d_kv)
    with torch.no_grad():
        if m._qkv_same_embed_dim:
            m.in_proj_weight.copy_(torch.cat([params[n]["w"].T for n in "qkv"]))
        else:
            for n in "qkv":
                getattr(m, f"{n}_proj_weight").copy_(params[n]["w"].T)
        m.in_proj_bias.copy_(torch.cat([params[n]["b"] for n in "qkv"]))
        m.out_proj.weight.copy_(params["o"]["w"].T)
        m.out_proj.bias.copy_(params["o"]["b"])
    return m.eval()


@pytest.mark.parametrize("impl", ["math", "sdpa"])
def test_self_attention_equals_torch_multihead_attention(self_params, x, impl):
    valid = _bool([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    causal = ~torch.ones(T, T, dtype=torch.bool).tril()  # torch: True = do not attend
    want, want_w = _torch_mha(self_params, H)(x, x, x, key_padding_mask=~valid, attn_mask=causal,
                                               average_attn_weights=False)
    y, w = mha(self_params, x, num_heads=H, mask=valid, causal=True, impl=impl, return_weights=True)
    torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(w, want_w, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mha(self_params, x, num_heads=H, mask=valid, causal=True, impl=impl), want,
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", ["math", "sdpa"])
def test_cross_attention_equals_torch_multihead_attention(cross_params, x, context, impl):
    want, _ = _torch_mha(cross_params, H, d_kv=6)(x, context, context, key_padding_mask=~KV_VALID)
    y = mha(cross_params, x, context, num_heads=H, mask=KV_VALID, impl=impl)
    torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------- fully masked rows


# Query 1 of batch 0 and the whole of batch 1 have no key to attend to.
EMPTY_ROWS_MASK = torch.ones(B, T, S, dtype=torch.bool)
EMPTY_ROWS_MASK[0, 1] = False
EMPTY_ROWS_MASK[1] = False


@pytest.mark.parametrize("impl", ["math", "sdpa"])
def test_fully_masked_query_rows_output_zeros(cross_params, x, context, impl):
    y = mha(cross_params, x, context, num_heads=H, mask=EMPTY_ROWS_MASK, impl=impl)
    assert torch.isfinite(y).all()
    assert torch.equal(y[0, 1], torch.zeros(D))
    assert torch.equal(y[1], torch.zeros(T, D))
    assert y[0, 0].abs().sum() > 0


@pytest.mark.parametrize("impl", ["math", "sdpa"])
def test_a_fully_padded_batch_element_outputs_zeros(cross_params, x, context, impl):
    kv_valid = _bool([[1, 1, 0, 0], [0, 0, 0, 0]])
    y = mha(cross_params, x, context, num_heads=H, mask=kv_valid, impl=impl)
    assert torch.equal(y[1], torch.zeros(T, D))
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("impl", ["math", "sdpa"])
def test_fully_masked_rows_give_zero_and_finite_gradients(cross_params, x, context, impl):
    x, context = x.requires_grad_(), context.requires_grad_()
    params = tree.tree_map(lambda p: p.requires_grad_(), cross_params)
    y = mha(params, x, context, num_heads=H, mask=EMPTY_ROWS_MASK, impl=impl)
    grads = torch.autograd.grad(y.square().sum(), [x, context, *tree.leaves(params)])
    assert all(torch.isfinite(g).all() for g in grads)
    gx, gc = grads[:2]
    assert torch.equal(gx[0, 1], torch.zeros(D))  # the empty query row
    assert torch.equal(gx[1], torch.zeros(T, D))
    assert torch.equal(gc[1], torch.zeros(S, 6))  # keys nobody attends to
    assert gx[0, 0].abs().sum() > 0


def test_returned_weights_sum_to_one_and_to_zero_on_fully_masked_rows(cross_params, x, context):
    _, w = mha(cross_params, x, context, num_heads=H, mask=EMPTY_ROWS_MASK, return_weights=True)
    assert w.shape == (B, H, T, S)
    want = EMPTY_ROWS_MASK.any(-1).float()[:, None, :].expand(B, H, T)
    torch.testing.assert_close(w.sum(-1), want)
    assert torch.equal(w[~EMPTY_ROWS_MASK[:, None].expand(B, H, T, S)], torch.zeros(int((~EMPTY_ROWS_MASK).sum()) * H))


def test_causal_weights_are_zero_above_the_diagonal(self_params, x):
    _, w = mha(self_params, x, num_heads=H, causal=True, return_weights=True)
    above = torch.ones(T, T, dtype=torch.bool).triu(1)
    assert torch.equal(w[..., above], torch.zeros(B, H, int(above.sum())))
    assert (w[..., ~above] > 0).all()
    torch.testing.assert_close(w.sum(-1), torch.ones(B, H, T))


def test_causal_outputs_do_not_depend_on_later_positions(self_params, x, getkey):
    later = x.clone()
    later[:, 3:] = random.normal(getkey(), (B, T - 3, D))
    y, y_later = (mha(self_params, v, num_heads=H, causal=True) for v in (x, later))
    torch.testing.assert_close(y[:, :3], y_later[:, :3])
    assert not torch.allclose(y[:, 3:], y_later[:, 3:])


# ------------------------------------------------------------------------- make_attention_mask


def test_make_attention_mask_combines_query_key_and_causal_masks():
    mask = make_attention_mask(_bool([[1, 1, 0]]), _bool([[1, 0, 1]]), causal=True)
    want = _bool([[[1, 0, 0],
                   [1, 0, 0],
                   [0, 0, 0]]])
    assert torch.equal(mask, want)


def test_make_attention_mask_without_valid_masks_is_causal_of_the_given_lengths():
    assert torch.equal(make_attention_mask(causal=True, q_len=3, kv_len=2), _bool([[[1, 0], [1, 1], [1, 1]]]))
    assert torch.equal(make_attention_mask(kv_valid=_bool([[1, 0]]), q_len=3), _bool([[[1, 0]] * 3]))


# ------------------------------------------------------------------------- gradcheck


@pytest.mark.parametrize("impl", ["math", "sdpa"])
def test_gradcheck_float64_with_padding_and_causal_masks(key, impl):
    b, t, d, h = 2, 3, 4, 2
    params = _randomized(init_mha(key, d, h, dtype=torch.float64), random.fold_in(key, "noise"))
    names = list(tree.flatten_with_names(params))
    x = random.normal(random.fold_in(key, "x"), (b, t, d), dtype=torch.float64).requires_grad_()
    valid = _bool([[1, 1, 0], [1, 1, 1]])

    def f(x, *leaves):
        p = tree.unflatten_from_names(dict(zip(names, leaves)), like=params)
        return mha(p, x, num_heads=h, mask=valid, causal=True, impl=impl)

    leaves = [p.detach().requires_grad_() for p in tree.flatten_with_names(params).values()]
    assert torch.autograd.gradcheck(f, (x, *leaves))


# ------------------------------------------------------------------------- dropout


def test_attention_dropout_with_the_same_key_gives_the_same_output(self_params, x, key):
    a, b = (mha(self_params, x, num_heads=H, dropout_rate=0.5, key=key, train=True) for _ in range(2))
    assert torch.equal(a, b)


def test_attention_dropout_with_another_key_gives_another_output(self_params, x, getkey):
    a, b = (mha(self_params, x, num_heads=H, dropout_rate=0.5, key=getkey(), train=True) for _ in range(2))
    assert not torch.allclose(a, b)


def test_attention_dropout_takes_the_math_path_from_the_key(self_params, x, key):
    kw = dict(num_heads=H, dropout_rate=0.5, key=key, train=True)
    assert torch.equal(mha(self_params, x, impl="sdpa", **kw), mha(self_params, x, impl="math", **kw))


def test_attention_dropout_drops_weights_and_rescales_the_rest(key):
    # Identity projections, one query and 64 equal keys with value 1: each weight is 1/64 and
    # survives as (1/64) / (1 - rate), so y = (kept keys) / 64 / (1 - rate).
    params = _identity_projections(1, 2, 1)
    x, context = torch.zeros(1, 1, 1), torch.cat([torch.zeros(1, 64, 1), torch.ones(1, 64, 1)], dim=-1)
    y = mha(params, x, context, num_heads=1, dropout_rate=0.25, key=key, train=True)
    kept = random.bernoulli(key, 0.75, (1, 1, 1, 64)).sum()
    torch.testing.assert_close(y, (kept / 64 / 0.75).reshape(1, 1, 1))


def test_missing_key_while_training_with_dropout_raises(self_params, x):
    with pytest.raises(PRNGKeyError, match="key"):
        mha(self_params, x, num_heads=H, dropout_rate=0.1, train=True)


def test_eval_mode_ignores_dropout(self_params, x):
    y = mha(self_params, x, num_heads=H, dropout_rate=0.5, train=False)
    assert torch.equal(y, mha(self_params, x, num_heads=H))


# ------------------------------------------------------------------------- errors


def test_init_mha_rejects_heads_that_do_not_divide_d_model(key):
    with pytest.raises(ConfigError, match="d_model=10 is not divisible by num_heads=3"):
        init_mha(key, 10, 3)


def test_mha_rejects_heads_that_do_not_divide_d_model(self_params, x):
    with pytest.raises(ConfigError, match="num_heads=3"):
        mha(self_params, x, num_heads=3)


def test_wrong_query_feature_dim_names_x_and_both_shapes(self_params, getkey):
    with pytest.raises(ShapeError, match=r"x: expected shape \[b=2 t=5 d=8\], got \[2, 5, 7\]"):
        mha(self_params, random.normal(getkey(), (2, 5, 7)), num_heads=H)


def test_context_with_another_batch_size_names_context(cross_params, x, getkey):
    with pytest.raises(ShapeError, match=r"context: expected shape \[b=2 s dkv=6\], got \[3, 4, 6\]"):
        mha(cross_params, x, random.normal(getkey(), (3, 4, 6)), num_heads=H)


def test_mask_of_the_wrong_length_names_mask_and_both_shapes(cross_params, x, context):
    with pytest.raises(ShapeError, match=r"mask \(key padding\): expected shape \[b=2 s=4\], got \[2, 5\]"):
        mha(cross_params, x, context, num_heads=H, mask=torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(ShapeError, match=r"mask: .*got \[2, 5, 4, 1\]"):
        mha(cross_params, x, context, num_heads=H, mask=torch.ones(2, 5, 4, 1, dtype=torch.bool))


def test_non_boolean_mask_is_rejected(cross_params, x, context):
    with pytest.raises(DTypeError, match="mask"):
        mha(cross_params, x, context, num_heads=H, mask=torch.ones(2, 4))


def test_unknown_impl_is_rejected(self_params, x):
    with pytest.raises(ConfigError, match="impl"):
        mha(self_params, x, num_heads=H, impl="flash")
