"""Pre-norm transformer blocks and stacks: composition, torch equivalence, masks, dropout keys."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from funcml import random, tree
from funcml.errors import ConfigError, PRNGKeyError, ShapeError
from funcml.nn.attention import mha
from funcml.nn.norm import layer_norm
from funcml.nn.transformer import (TransformerConfig, decoder, decoder_block, encoder, encoder_block, ffn,
                                   init_decoder, init_decoder_block, init_encoder, init_encoder_block, init_ffn)

B, T, S, D, H, FF = 2, 5, 4, 8, 2, 16


def _randomized(params, key, scale=0.5):
    """`params` with every leaf replaced by noise (layer-norm scales around 1), so that every
    tensor matters in a comparison."""
    named = tree.flatten_with_names(params)
    noisy = {n: scale * random.normal(random.fold_in(key, n), v.shape, dtype=v.dtype)
             + (1.0 if n.endswith("scale") else 0.0) for n, v in named.items()}
    return tree.unflatten_from_names(noisy, like=params)


def _bool(rows):
    return torch.tensor(rows, dtype=torch.bool)


VALID = _bool([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
MEMORY_VALID = _bool([[1, 1, 0, 0], [1, 1, 1, 1]])


@pytest.fixture
def x(getkey):
    return random.normal(getkey(), (B, T, D))


@pytest.fixture
def memory(getkey):
    return random.normal(getkey(), (B, S, D))


@pytest.fixture
def enc_block(key):
    return _randomized(init_encoder_block(key, D, H, FF), random.fold_in(key, "noise"))


@pytest.fixture
def dec_block(key):
    return _randomized(init_decoder_block(key, D, H, FF), random.fold_in(key, "noise"))


# ------------------------------------------------------------------------- composition


def test_ffn_is_dense_gelu_dense(key, x):
    p = _randomized(init_ffn(key, D, FF), key)
    want = F.gelu(x @ p["fc1"]["w"] + p["fc1"]["b"]) @ p["fc2"]["w"] + p["fc2"]["b"]
    torch.testing.assert_close(ffn(p, x), want)


@pytest.mark.parametrize("impl", ["math", "sdpa"])
def test_encoder_block_equals_the_hand_composed_pre_norm_residuals(enc_block, x, impl):
    p = enc_block
    h = x + mha(p["attn"], layer_norm(p["ln1"], x), num_heads=H, mask=VALID, impl="math")
    want = h + ffn(p["ffn"], layer_norm(p["ln2"], h))
    torch.testing.assert_close(encoder_block(p, x, num_heads=H, mask=VALID, impl=impl), want,
                               rtol=1e-5, atol=1e-5)


def test_decoder_block_equals_the_hand_composed_pre_norm_residuals(dec_block, x, memory):
    p = dec_block
    h = x + mha(p["self_attn"], layer_norm(p["ln1"], x), num_heads=H, mask=VALID, causal=True)
    h = h + mha(p["cross_attn"], layer_norm(p["ln2"], h), memory, num_heads=H, mask=MEMORY_VALID)
    want = h + ffn(p["ffn"], layer_norm(p["ln3"], h))
    got = decoder_block(p, x, memory, num_heads=H, self_mask=VALID, memory_mask=MEMORY_VALID, causal=True)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_encoder_stack_is_its_blocks_in_order_then_the_final_norm(key, x):
    params = _randomized(init_encoder(key, 2, D, H, FF), key)
    assert set(params["layers"]) == {"0", "1"}
    h = x
    for i in ("0", "1"):
        h = encoder_block(params["layers"][i], h, num_heads=H, mask=VALID)
    want = layer_norm(params["ln_f"], h)
    torch.testing.assert_close(encoder(params, x, num_heads=H, mask=VALID), want)


def test_decoder_stack_is_its_blocks_in_order_then_the_final_norm(key, x, getkey):
    memory = random.normal(getkey(), (B, S, 6))
    params = _randomized(init_decoder(key, 2, D, H, FF, d_memory=6), key)
    h = x
    for i in ("0", "1"):
        h = decoder_block(params["layers"][i], h, memory, num_heads=H, memory_mask=MEMORY_VALID)
    want = layer_norm(params["ln_f"], h)
    torch.testing.assert_close(decoder(params, x, memory, num_heads=H, memory_mask=MEMORY_VALID), want)


# ------------------------------------------------------------------------- torch equivalence


def _load_mha(m, p):
    m.in_proj_weight.copy_(torch.cat([p[n]["w"].T for n in "qkv"]))
    m.in_proj_bias.copy_(torch.cat([p[n]["b"] for n in "qkv"]))
    m.out_proj.weight.copy_(p["o"]["w"].T)
    m.out_proj.bias.copy_(p["o"]["b"])


def _load_common(m, p, norms):
    m.linear1.weight.copy_(p["ffn"]["fc1"]["w"].T)
    m.linear1.bias.copy_(p["ffn"]["fc1"]["b"])
    m.linear2.weight.copy_(p["ffn"]["fc2"]["w"].T)
    m.linear2.bias.copy_(p["ffn"]["fc2"]["b"])
    for torch_name, ours in norms.items():
        getattr(m, torch_name).weight.copy_(p[ours]["scale"])
        getattr(m, torch_name).bias.copy_(p[ours]["bias"])


@pytest.mark.parametrize("impl", ["math", "sdpa"])
def test_encoder_block_equals_torch_transformer_encoder_layer(enc_block, x, impl):
    m = torch.nn.utils.skip_init(torch.nn.TransformerEncoderLayer, D, H, FF, dropout=0.0, activation="gelu",
                                 batch_first=True, norm_first=True)
    with torch.no_grad():
        _load_mha(m.self_attn, enc_block["attn"])
        _load_common(m, enc_block, {"norm1": "ln1", "norm2": "ln2"})
    want = m.eval()(x, src_key_padding_mask=~VALID)  # torch: True = padding
    torch.testing.assert_close(encoder_block(enc_block, x, num_heads=H, mask=VALID, impl=impl), want,
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", ["math", "sdpa"])
def test_causal_decoder_block_equals_torch_transformer_decoder_layer(dec_block, x, memory, impl):
    m = torch.nn.utils.skip_init(torch.nn.TransformerDecoderLayer, D, H, FF, dropout=0.0, activation="gelu",
                                 batch_first=True, norm_first=True)
    with torch.no_grad():
        _load_mha(m.self_attn, dec_block["self_attn"])
        _load_mha(m.multihead_attn, dec_block["cross_attn"])
        _load_common(m, dec_block, {"norm1": "ln1", "norm2": "ln2", "norm3": "ln3"})
    future = ~torch.ones(T, T, dtype=torch.bool).tril()  # torch: True = do not attend
    want = m.eval()(x, memory, tgt_mask=future, tgt_key_padding_mask=~VALID, memory_key_padding_mask=~MEMORY_VALID)
    got = decoder_block(dec_block, x, memory, num_heads=H, self_mask=VALID, memory_mask=MEMORY_VALID, causal=True,
                        impl=impl)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------- masks


def test_encoder_outputs_at_valid_positions_ignore_padding_content(key, x, getkey):
    params = _randomized(init_encoder(key, 2, D, H, FF), key)
    other = x.clone()
    other[0, 3:] = random.normal(getkey(), (T - 3, D))  # overwrite batch 0's padding
    y, y_other = (encoder(params, v, num_heads=H, mask=VALID) for v in (x, other))
    torch.testing.assert_close(y[0, :3], y_other[0, :3])
    torch.testing.assert_close(y[1], y_other[1])


def test_causal_decoder_outputs_do_not_depend_on_later_positions(key, x, memory, getkey):
    params = _randomized(init_decoder(key, 2, D, H, FF), key)
    later = x.clone()
    later[:, 2:] = random.normal(getkey(), (B, T - 2, D))
    y, y_later = (decoder(params, v, memory, num_heads=H, causal=True) for v in (x, later))
    torch.testing.assert_close(y[:, :2], y_later[:, :2])
    assert not torch.allclose(y[:, 2:], y_later[:, 2:])


# ------------------------------------------------------------------------- gradcheck


# The blocks are checked w.r.t. their inputs: that gradient flows back through every sublayer
# (norms, both attentions with their masks, the FFN, the residuals). Gradients w.r.t. the
# attention parameters are gradchecked in test_nn_attention.py; a full parameter check here
# would cost seconds of finite differences for no new op.


def test_gradcheck_float64_encoder_block(key):
    b, t, d, h, ff = 2, 3, 4, 2, 6
    params = _randomized(init_encoder_block(key, d, h, ff, dtype=torch.float64), key)
    x = random.normal(random.fold_in(key, "x"), (b, t, d), dtype=torch.float64).requires_grad_()
    valid = _bool([[1, 1, 0], [1, 1, 1]])
    assert torch.autograd.gradcheck(lambda x: encoder_block(params, x, num_heads=h, mask=valid), (x,))


def test_gradcheck_float64_decoder_block(key):
    b, t, s, d, h, ff = 2, 3, 2, 4, 2, 6
    params = _randomized(init_decoder_block(key, d, h, ff, d_memory=3, dtype=torch.float64), key)
    x = random.normal(random.fold_in(key, "x"), (b, t, d), dtype=torch.float64).requires_grad_()
    memory = random.normal(random.fold_in(key, "memory"), (b, s, 3), dtype=torch.float64).requires_grad_()
    memory_valid = _bool([[1, 0], [1, 1]])

    def fn(x, memory):
        return decoder_block(params, x, memory, num_heads=h, memory_mask=memory_valid, causal=True)

    assert torch.autograd.gradcheck(fn, (x, memory))


# ------------------------------------------------------------------------- dropout


def test_encoder_dropout_with_the_same_key_gives_the_same_output(key, x):
    params = init_encoder(key, 2, D, H, FF)
    a, b = (encoder(params, x, num_heads=H, dropout_rate=0.3, key=key, train=True) for _ in range(2))
    assert torch.equal(a, b)
    assert not torch.allclose(a, encoder(params, x, num_heads=H))


def test_encoder_gives_layer_i_the_key_folded_with_its_param_path(key, x):
    params = init_encoder(key, 2, D, H, FF)
    h = x
    for i in range(2):
        h = encoder_block(params["layers"][str(i)], h, num_heads=H, dropout_rate=0.3,
                          key=random.fold_in(key, f"layers.{i}"), train=True)
    want = layer_norm(params["ln_f"], h)
    assert torch.equal(encoder(params, x, num_heads=H, dropout_rate=0.3, key=key, train=True), want)


def test_decoder_dropout_with_the_same_key_gives_the_same_output(key, x, memory):
    params = init_decoder(key, 2, D, H, FF)
    a, b = (decoder(params, x, memory, num_heads=H, dropout_rate=0.3, key=key, train=True) for _ in range(2))
    assert torch.equal(a, b)
    assert not torch.allclose(a, decoder(params, x, memory, num_heads=H))


@pytest.mark.parametrize("which", ["ffn", "encoder_block", "decoder_block", "encoder", "decoder"])
def test_missing_key_while_training_with_dropout_raises(key, x, memory, which):
    run = {
        "ffn": lambda: ffn(init_ffn(key, D, FF), x, dropout_rate=0.1, train=True),
        "encoder_block": lambda: encoder_block(init_encoder_block(key, D, H, FF), x, num_heads=H,
                                               dropout_rate=0.1, train=True),
        "decoder_block": lambda: decoder_block(init_decoder_block(key, D, H, FF), x, memory, num_heads=H,
                                               dropout_rate=0.1, train=True),
        "encoder": lambda: encoder(init_encoder(key, 1, D, H, FF), x, num_heads=H, dropout_rate=0.1, train=True),
        "decoder": lambda: decoder(init_decoder(key, 1, D, H, FF), x, memory, num_heads=H, dropout_rate=0.1,
                                   train=True),
    }[which]
    with pytest.raises(PRNGKeyError, match=rf"{which}: train=True with dropout_rate=0.1 needs a PRNG key; "
                                           rf"pass {which}\(\.\.\., key=k, train=True\)"):
        run()


def test_eval_mode_ignores_dropout(key, x, memory):
    enc, dec = init_encoder(key, 2, D, H, FF), init_decoder(key, 2, D, H, FF)
    assert torch.equal(encoder(enc, x, num_heads=H, dropout_rate=0.5), encoder(enc, x, num_heads=H))
    assert torch.equal(decoder(dec, x, memory, num_heads=H, dropout_rate=0.5), decoder(dec, x, memory, num_heads=H))


# ------------------------------------------------------------------------- errors and config


def test_encoder_block_names_x_and_its_shapes_on_a_wrong_feature_dim(enc_block, getkey):
    with pytest.raises(ShapeError, match=r"x: expected shape \[b=2 t=5 d=8\], got \[2, 5, 6\]"):
        encoder_block(enc_block, random.normal(getkey(), (2, 5, 6)), num_heads=H)


def test_decoder_block_names_memory_and_its_shapes_on_a_batch_mismatch(dec_block, x, getkey):
    with pytest.raises(ShapeError, match=r"memory: expected shape \[b=2 s dm=8\], got \[3, 4, 8\]"):
        decoder_block(dec_block, x, random.normal(getkey(), (3, 4, D)), num_heads=H)


def test_transformer_config_is_frozen_and_hashable():
    cfg = TransformerConfig(d_model=8, num_heads=2, d_ff=16, num_layers=2)
    assert (cfg.dropout, cfg.impl) == (0.0, "sdpa")
    assert hash(cfg) == hash(TransformerConfig(8, 2, 16, 2))
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.d_model = 4


@pytest.mark.parametrize("fields, message", [
    (dict(num_heads=3), "d_model=8 is not divisible by num_heads=3"),
    (dict(dropout=1.0), r"dropout must be a number in \[0, 1\), got 1.0"),
    (dict(impl="flash"), "impl must be"),
    (dict(num_layers=0), "num_layers must be a positive int"),
    (dict(activation="nope"), "unknown activation"),
])
def test_transformer_config_rejects_bad_fields(fields, message):
    base = dict(d_model=8, num_heads=2, d_ff=16, num_layers=2)
    with pytest.raises(ConfigError, match=message):
        TransformerConfig(**{**base, **fields})
