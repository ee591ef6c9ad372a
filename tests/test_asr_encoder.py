"""funcml.asr.encoder: shapes, subsampled lengths, padding invariance, block equations, gradients,
dropout keys, errors, compile."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from funcml import compiler, random, tree
from funcml.asr.batching import subsampled_lengths
from funcml.asr.encoder import (EncoderConfig, conformer_block, encode, encoder_lengths, init_conformer_block,
                                init_encoder, init_sanm_block, sanm_block)
from funcml.errors import ConfigError, PRNGKeyError, RangeError, ShapeError
from funcml.nn.attention import mha
from funcml.nn.layers import dense
from funcml.nn.posenc import sinusoidal_1d
from funcml.nn.transformer import encoder as transformer_encoder
from funcml.nn.transformer import encoder_block

F_IN, D, H, FF = 12, 16, 2, 32
BLOCKS = ["transformer", "conformer", "sanm"]
INPUT_LAYERS = ["conv2d", "linear"]


def _cfg(**overrides) -> EncoderConfig:
    fields = dict(input_dim=F_IN, d_model=D, num_heads=H, d_ff=FF, num_layers=2, conv_channels=4, conv_kernel=3,
                  fsmn_kernel=5, dropout=0.0)
    fields.update(overrides)
    return EncoderConfig(**fields)


def _randomized(params, key, scale=0.3):
    """`params` with every leaf replaced by noise (norm scales around 1), so that every tensor
    (biases included) matters in a comparison."""
    named = tree.flatten_with_names(params)
    noisy = {n: scale * random.normal(random.fold_in(key, n), v.shape, dtype=v.dtype)
             + (1.0 if n.endswith("scale") else 0.0) for n, v in named.items()}
    return tree.unflatten_from_names(noisy, like=params)


def _valid(lengths, t):
    return torch.arange(t)[None, :] < torch.as_tensor(lengths)[:, None]


def _padded_batch(key, lengths, t, f=F_IN, pad=float("nan"), dtype=torch.float32):
    """`[B, t, f]` noise with `pad` after each item's length."""
    x = random.normal(key, (len(lengths), t, f), dtype=dtype)
    return torch.where(_valid(lengths, t)[..., None], x, torch.tensor(pad, dtype=dtype)), torch.tensor(lengths)


# ------------------------------------------------------------------------------- shapes and lengths


@pytest.mark.parametrize("input_layer", INPUT_LAYERS)
@pytest.mark.parametrize("block", BLOCKS)
def test_output_shapes_lengths_and_mask(block, input_layer, key, getkey):
    cfg = _cfg(block=block, input_layer=input_layer)
    x, lengths = _padded_batch(getkey(), [23, 15, 9], 23, pad=0.0)
    h, out_lengths, mask = encode(init_encoder(key, cfg), x, lengths, cfg)
    # conv2d: 23 -> 11 -> 5, 15 -> 7 -> 3, 9 -> 4 -> 1 (floor((L - 3) / 2) + 1, twice)
    want = [5, 3, 1] if input_layer == "conv2d" else [23, 15, 9]
    assert h.shape == (3, max(want), D) and h.dtype == torch.float32
    assert out_lengths.dtype == torch.int64 and out_lengths.tolist() == want
    assert mask.dtype == torch.bool and torch.equal(mask, _valid(want, max(want)))
    assert torch.isfinite(h).all()
    assert (h[~mask] == 0).all() and (h[mask].abs().sum(-1) > 0).all()


def test_encoder_lengths_equal_batching_subsampled_lengths():
    lengths = torch.arange(0, 200)
    assert torch.equal(encoder_lengths(lengths, _cfg(input_layer="conv2d")), subsampled_lengths(lengths, factor=4))
    assert torch.equal(encoder_lengths(lengths, _cfg(input_layer="linear")), lengths)
    assert encoder_lengths(100, _cfg()) == 24  # 100 -> 49 -> 24
    assert (encoder_lengths(7, _cfg()), encoder_lengths(6, _cfg())) == (1, 0)


def test_conv2d_output_length_matches_encoder_lengths(key, getkey):
    cfg = _cfg(num_layers=1)
    params = init_encoder(key, cfg)
    for t in (7, 8, 9, 10, 11, 14, 15, 30):
        h, out_lengths, _ = encode(params, random.normal(getkey(), (1, t, F_IN)), torch.tensor([t]), cfg)
        assert h.shape[1] == out_lengths.item() == encoder_lengths(t, cfg), t


# ------------------------------------------------------------------------------- padding


@pytest.mark.parametrize("input_layer", INPUT_LAYERS)
@pytest.mark.parametrize("block", BLOCKS)
def test_padded_batch_equals_per_item_results(block, input_layer, key, getkey):
    cfg = _cfg(block=block, input_layer=input_layer)
    params = _randomized(init_encoder(key, cfg), getkey())
    x, lengths = _padded_batch(getkey(), [26, 17, 11], 26, pad=3.0)
    h, out_lengths, _ = encode(params, x, lengths, cfg)
    for b, n in enumerate(lengths.tolist()):
        alone, alone_lengths, _ = encode(params, x[b:b + 1, :n], lengths[b:b + 1], cfg)
        assert alone.shape[1] == out_lengths[b] == alone_lengths[0]
        torch.testing.assert_close(h[b, :out_lengths[b]], alone[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("block", BLOCKS)
def test_nan_in_padded_input_frames_never_reaches_the_output(block, key, getkey):
    cfg = _cfg(block=block)
    params = _randomized(init_encoder(key, cfg), getkey())
    k = getkey()
    x_nan, lengths = _padded_batch(k, [20, 12], 20, pad=float("nan"))
    x_zero, _ = _padded_batch(k, [20, 12], 20, pad=0.0)
    h_nan, _, _ = encode(params, x_nan, lengths, cfg)
    h_zero, _, _ = encode(params, x_zero, lengths, cfg)
    assert torch.isfinite(h_nan).all()
    torch.testing.assert_close(h_nan, h_zero, rtol=0, atol=0)


# ------------------------------------------------------------------------------- equations


def test_conv2d_input_scaled_positions_and_transformer_blocks_compose_as_documented(key, getkey):
    cfg = _cfg(block="transformer", input_layer="conv2d")
    params = _randomized(init_encoder(key, cfg), getkey())
    x, lengths = _padded_batch(getkey(), [19, 13], 19, pad=0.0)
    p = params["input"]
    u = F.relu(F.conv2d(x[:, None], p["conv1"]["w"], p["conv1"]["b"], stride=2))     # [B, C, 9, 5]
    u = F.relu(F.conv2d(u, p["conv2"]["w"], p["conv2"]["b"], stride=2))              # [B, C, 4, 2]
    u = rearrange(u, "b c t f -> b t (c f)") @ p["proj"]["w"] + p["proj"]["b"]        # [B, 4, D]
    z = u * math.sqrt(D) + sinusoidal_1d(4, D)
    mask = _valid([4, 2], 4)
    want = transformer_encoder({"layers": params["layers"], "ln_f": params["ln_f"]}, z, num_heads=H, mask=mask,
                               activation=cfg.activation)
    h, _, got_mask = encode(params, x, lengths, cfg)
    assert torch.equal(got_mask, mask)
    torch.testing.assert_close(h, want * mask[..., None], rtol=1e-5, atol=1e-5)


def _ln(p, x):
    return F.layer_norm(x, x.shape[-1:], p["scale"], p["bias"])


def _ffn(p, x, act):
    return act(x @ p["fc1"]["w"] + p["fc1"]["b"]) @ p["fc2"]["w"] + p["fc2"]["b"]


def _dwconv(w, x, bias=None):
    """Depthwise "same" conv along time of `x: [B, T, D]` with `w: [D, 1, k]` (k odd)."""
    y = F.conv1d(rearrange(x, "b t d -> b d t"), w, bias, padding=w.shape[-1] // 2, groups=w.shape[0])
    return rearrange(y, "b d t -> b t d")


def test_conformer_block_equals_the_hand_composed_macaron_block(key, getkey):
    p = _randomized(init_conformer_block(key, D, H, FF, conv_kernel=5), getkey())
    x = random.normal(getkey(), (2, 7, D))
    valid = _valid([7, 4], 7)
    m = valid[..., None].float()
    h = x + 0.5 * _ffn(p["ffn1"], _ln(p["ln_ffn1"], x), F.silu)
    h = h + mha(p["attn"], _ln(p["ln_attn"], h), num_heads=H, mask=valid, impl="math")
    c = p["conv"]
    g = F.glu(_ln(p["ln_conv"], h) @ c["pw1"]["w"] + c["pw1"]["b"], dim=-1) * m
    g = F.silu(_ln(c["ln"], _dwconv(c["dw"]["w"], g, c["dw"]["b"])))
    h = h + g @ c["pw2"]["w"] + c["pw2"]["b"]
    h = h + 0.5 * _ffn(p["ffn2"], _ln(p["ln_ffn2"], h), F.silu)
    want = _ln(p["ln_out"], h)
    got = conformer_block(p, x, num_heads=H, mask=valid, activation="swish")
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_sanm_block_equals_attention_plus_fsmn_memory_plus_ffn(key, getkey):
    p = _randomized(init_sanm_block(key, D, H, FF, fsmn_kernel=5), getkey())
    x = random.normal(getkey(), (2, 7, D))
    valid = _valid([7, 4], 7)
    m = valid[..., None].float()
    h = _ln(p["ln1"], x)
    v = (h @ p["attn"]["v"]["w"] + p["attn"]["v"]["b"]) * m
    memory = (v + _dwconv(p["fsmn"]["w"], v)) * m
    h = x + mha(p["attn"], h, num_heads=H, mask=valid, impl="math") + memory
    want = h + _ffn(p["ffn"], _ln(p["ln2"], h), F.relu)
    torch.testing.assert_close(sanm_block(p, x, num_heads=H, mask=valid), want, rtol=1e-5, atol=1e-5)


def test_sanm_memory_sums_each_value_with_its_kernel_window_by_hand(key):
    # D = 2, kernel 3 with taps (a, b, c) per channel: M_t = V_t + a V_{t-1} + b V_t + c V_{t+1},
    # V zero outside the item. Attention and FFN are switched off (zero output projections),
    # so y = x + M.
    p = init_sanm_block(key, 2, 1, 4, fsmn_kernel=3)
    p["attn"]["o"] = {"w": torch.zeros(2, 2), "b": torch.zeros(2)}
    p["ffn"]["fc2"] = {"w": torch.zeros(4, 2), "b": torch.zeros(2)}
    p["attn"]["v"] = {"w": torch.eye(2), "b": torch.zeros(2)}                 # V = ln1(x)
    p["fsmn"]["w"] = torch.tensor([[[1.0, 2.0, 3.0]], [[0.5, 0.0, -1.0]]])    # [D, 1, 3]
    x = torch.tensor([[[1.0, -1.0], [3.0, 1.0], [-2.0, 2.0], [9.0, 9.0]]])   # [1, 4, 2], frame 3 is padding
    # ln1 of a pair (u, w) with u != w is (+1, -1) or (-1, +1) (up to eps): V_0 = (1, -1),
    # V_1 = (1, -1), V_2 = (-1, 1), V_3 = 0 (padding).
    v = torch.tensor([[1.0, -1.0], [1.0, -1.0], [-1.0, 1.0]])
    want = torch.empty(3, 2)
    for t in range(3):
        window = [v[s] if 0 <= s < 3 else torch.zeros(2) for s in (t - 1, t, t + 1)]
        want[t] = v[t] + sum(p["fsmn"]["w"][:, 0, j] * window[j] for j in range(3))
    y = sanm_block(p, x, num_heads=1, mask=torch.tensor([[True, True, True, False]]))
    torch.testing.assert_close(y[0, :3] - x[0, :3], want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(y[0, 3], x[0, 3])  # a padded frame gets no memory


# ------------------------------------------------------------------------------- gradients


_GRAD_LEAF = {"transformer": "layers.0.attn.q.w", "conformer": "layers.0.conv.dw.w", "sanm": "layers.0.fsmn.w"}


def _gradcheck_encoder(cfg, key, x, lengths):
    params = _randomized(init_encoder(key, cfg, dtype=torch.float64), random.fold_in(key, "noise"))
    named = tree.flatten_with_names(params)
    name = _GRAD_LEAF[cfg.block]
    w = named[name].clone().requires_grad_()

    def fn(x, w):
        p = tree.unflatten_from_names({**named, name: w}, like=params)
        return encode(p, x, lengths, cfg)[0]

    assert torch.autograd.gradcheck(fn, (x.requires_grad_(), w))


@pytest.mark.parametrize("block", BLOCKS)
def test_gradcheck_float64_through_each_block_kind(block, key):
    # Gradients w.r.t. the input and the block's own temporal weights (attention query, conformer
    # depthwise conv, FSMN memory), with one padded item so the masks are on the path.
    cfg = _cfg(input_dim=3, d_model=4, num_heads=2, d_ff=6, num_layers=1, block=block, input_layer="linear")
    x, lengths = _padded_batch(random.fold_in(key, "x"), [5, 3], 5, f=3, pad=0.0, dtype=torch.float64)
    _gradcheck_encoder(cfg, key, x, lengths)


def test_gradcheck_float64_through_the_conv2d_input_layer(key):
    cfg = _cfg(input_dim=7, d_model=4, num_heads=2, d_ff=6, num_layers=1, conv_channels=2, block="sanm")
    x, lengths = _padded_batch(random.fold_in(key, "x"), [11, 7], 11, f=7, pad=0.0, dtype=torch.float64)
    _gradcheck_encoder(cfg, key, x, lengths)


def test_torch_func_grad_matches_autograd_in_train_mode(key, getkey):
    cfg = _cfg(block="sanm", dropout=0.2)
    params = init_encoder(key, cfg)
    x, lengths = _padded_batch(getkey(), [20, 13], 20, pad=0.0)
    k = getkey()

    def loss(params):
        h, _, _ = encode(params, x, lengths, cfg, key=k, train=True)
        return h.square().sum()

    grads = torch.func.grad(loss)(params)
    leaves = tree.leaves(params)
    leaves = [t.clone().requires_grad_() for t in leaves]
    want = torch.autograd.grad(loss(tree.unflatten(tree.structure(params), leaves)), leaves)
    assert tree.allclose(grads, tree.unflatten(tree.structure(params), list(want)), rtol=1e-5, atol=1e-6)
    assert all(torch.isfinite(g).all() for g in tree.leaves(grads))


# ------------------------------------------------------------------------------- dropout keys


@pytest.mark.parametrize("block", BLOCKS)
def test_train_mode_same_key_gives_the_same_bits(block, key, getkey):
    cfg = _cfg(block=block, dropout=0.3)
    params = init_encoder(key, cfg)
    x, lengths = _padded_batch(getkey(), [20, 13], 20, pad=0.0)
    k = getkey()
    a, _, _ = encode(params, x, lengths, cfg, key=k, train=True)
    b, _, _ = encode(params, x, lengths, cfg, key=k.clone(), train=True)
    assert torch.equal(a, b)


@pytest.mark.parametrize("block", BLOCKS)
def test_train_mode_different_keys_give_different_outputs(block, key, getkey):
    cfg = _cfg(block=block, dropout=0.3)
    params = init_encoder(key, cfg)
    x, lengths = _padded_batch(getkey(), [20, 13], 20, pad=0.0)
    a, _, mask = encode(params, x, lengths, cfg, key=getkey(), train=True)
    b, _, _ = encode(params, x, lengths, cfg, key=getkey(), train=True)
    assert not torch.allclose(a[mask], b[mask])


def test_train_mode_draws_input_dropout_and_layer_keys_from_the_documented_streams(key, getkey):
    cfg = _cfg(block="transformer", input_layer="linear", dropout=0.3)
    params = init_encoder(key, cfg)
    x, lengths = _padded_batch(getkey(), [9, 6], 9, pad=0.0)
    k = getkey()
    valid = _valid([9, 6], 9)
    z = dense(params["input"]["proj"], x) * math.sqrt(D) + sinusoidal_1d(9, D)
    keep = random.bernoulli(random.fold_in(k, "input.dropout"), 0.7, z.shape)
    z = torch.where(keep, z / 0.7, 0.0)
    for i in range(2):
        z = encoder_block(params["layers"][str(i)], z, num_heads=H, mask=valid, dropout_rate=0.3,
                          key=random.fold_in(k, f"layers.{i}"), train=True, activation="relu")
    want = _ln(params["ln_f"], z) * valid[..., None]
    got, _, _ = encode(params, x, lengths, cfg, key=k, train=True)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_eval_mode_needs_no_key_and_ignores_one(key, getkey):
    cfg = _cfg(block="conformer", dropout=0.3)
    params = init_encoder(key, cfg)
    x, lengths = _padded_batch(getkey(), [20, 13], 20, pad=0.0)
    without, _, _ = encode(params, x, lengths, cfg)
    with_key, _, _ = encode(params, x, lengths, cfg, key=getkey(), train=False)
    assert torch.equal(without, with_key)


def test_train_mode_with_dropout_and_no_key_raises_prng_key_error(key, getkey):
    cfg = _cfg(dropout=0.1)
    x, lengths = _padded_batch(getkey(), [8], 8, pad=0.0)
    with pytest.raises(PRNGKeyError, match="key"):
        encode(init_encoder(key, cfg), x, lengths, cfg, train=True)


# ------------------------------------------------------------------------------- errors


def test_wrong_feature_dim_raises_shape_error_naming_x_and_the_expected_f(key, getkey):
    cfg = _cfg()
    with pytest.raises(ShapeError, match=r"x: expected shape \[b=2 t=20 f=12\], got \[2, 20, 10\]"):
        encode(init_encoder(key, cfg), random.normal(getkey(), (2, 20, 10)), torch.tensor([20, 20]), cfg)


def test_input_shorter_than_seven_frames_raises_range_error(key, getkey):
    cfg = _cfg()
    params = init_encoder(key, cfg)
    with pytest.raises(RangeError, match=r"T=6 frames .* at least 7 frames"):
        encode(params, random.normal(getkey(), (1, 6, F_IN)), torch.tensor([6]), cfg)


def test_an_item_shorter_than_seven_frames_raises_range_error_naming_it(key, getkey):
    cfg = _cfg()
    params = init_encoder(key, cfg)
    with pytest.raises(RangeError, match=r"lengths\[1\]=5: .* at least 7 frames"):
        encode(params, random.normal(getkey(), (2, 20, F_IN)), torch.tensor([20, 5]), cfg)


@pytest.mark.parametrize("bad", [0, 21])
def test_lengths_outside_one_to_t_raise_range_error(bad, key, getkey):
    cfg = _cfg(input_layer="linear")
    with pytest.raises(RangeError, match=rf"lengths: expected values in \[1, T=20\].*{bad}"):
        encode(init_encoder(key, cfg), random.normal(getkey(), (2, 20, F_IN)), torch.tensor([bad, 10]), cfg)


@pytest.mark.parametrize("field, value", [
    ("d_model", 0), ("num_layers", -1), ("input_dim", 2.5), ("conv_channels", -1),
    ("conv_kernel", 4), ("fsmn_kernel", 0), ("block", "lstm"), ("input_layer", "conv1d"),
    ("impl", "flash"), ("dropout", 1.0), ("activation", "mish"),
])
def test_bad_config_values_raise_config_error_naming_field_and_value(field, value):
    with pytest.raises(ConfigError, match=rf"EncoderConfig: {field}\b.*{value!r}"):
        _cfg(**{field: value})


def test_d_model_not_divisible_by_heads_or_odd_raises_config_error():
    with pytest.raises(ConfigError, match="d_model=16 is not divisible by num_heads=3"):
        _cfg(num_heads=3)
    with pytest.raises(ConfigError, match="d_model must be even.*15"):
        _cfg(d_model=15, num_heads=5)


def test_conv2d_input_layer_with_too_few_features_raises_config_error():
    with pytest.raises(ConfigError, match="input_dim=6 .* input_dim >= 7"):
        _cfg(input_dim=6, input_layer="conv2d")
    assert _cfg(input_dim=6, input_layer="linear").input_dim == 6


def test_params_of_another_block_kind_raise_config_error(key, getkey):
    params = init_encoder(key, _cfg(block="sanm"))
    with pytest.raises(ConfigError, match="cfg.block='conformer'"):
        encode(params, random.normal(getkey(), (1, 8, F_IN)), torch.tensor([8]), _cfg(block="conformer"))


# ------------------------------------------------------------------------------- compile


@pytest.mark.compile
def test_compiled_sanm_conv2d_encode_matches_eager(key, getkey):
    # Eval mode and one layer keep the cost to Dynamo tracing one block: it traces einops, the
    # checks and (in train mode) the Threefry PRNG in Python, ~15 s more per block with dropout.
    cfg = _cfg(block="sanm", input_layer="conv2d", num_layers=1, dropout=0.2)
    params = _randomized(init_encoder(key, cfg), getkey())
    x, lengths = _padded_batch(getkey(), [21, 14], 21, pad=0.0)

    def run(params, x, lengths):
        return encode(params, x, lengths, cfg)

    got = compiler.compile(run)(params, x, lengths)
    want = run(params, x, lengths)
    assert got[0].shape == (2, 4, D)
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)
    assert torch.equal(got[1], want[1]) and torch.equal(got[2], want[2])
