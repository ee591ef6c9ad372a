"""funcml.seg.unet and funcml.seg.hybrid: shapes, padding, input contracts, BatchNorm state,
gradients, compile, the token conversion, keys and the registry."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from funcml import compiler, random, tree
from funcml.errors import ConfigError, DTypeError, PRNGKeyError, ShapeError
from funcml.nn import model
from funcml.nn.layers import dropout
from funcml.nn.posenc import sinusoidal_1d
from funcml.seg.hybrid import UNetTransformer, UNetTransformerConfig, apply_unet_transformer, init_unet_transformer
from funcml.seg.unet import UNet, UNetConfig, apply_unet, init_unet, unet_decoder, unet_encoder

TINY = UNetConfig(in_channels=2, num_classes=3, depth=2, base_width=2, norm="group", groups=2)
TINY_HYBRID = UNetTransformerConfig(in_channels=2, num_classes=3, depth=1, base_width=4, norm="group", groups=2,
                                    num_layers=1, num_heads=2)


def _unet_fields(cfg: UNetTransformerConfig) -> UNetConfig:
    """The plain U-Net with the same U-Net fields as a hybrid config."""
    return UNetConfig(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(UNetConfig)})


def _randomized(params, key, scale=0.3):
    """`params` with noise added to every leaf (so zero-initialized biases and unit norm scales
    are generic values, and no ReLU input sits exactly on its kink)."""
    named = tree.flatten_with_names(params)
    keys = random.split(key, len(named))
    return tree.unflatten_from_names(
        {n: v + scale * random.normal(k, v.shape, dtype=v.dtype) for k, (n, v) in zip(keys, named.items())},
        like=params)


def _images(key, b=2, c=2, h=8, w=8, dtype=torch.float32):
    return random.normal(key, (b, c, h, w), dtype=dtype)


# ------------------------------------------------------------------------------------ shapes


@pytest.mark.parametrize("upsample", ["transpose", "bilinear"])
@pytest.mark.parametrize("norm", ["batch", "group", "instance", "none"])
def test_unet_logits_are_num_classes_by_input_size_for_every_norm_and_upsample(getkey, norm, upsample):
    cfg = dataclasses.replace(TINY, norm=norm, upsample=upsample)
    params, state = init_unet(getkey(), cfg)
    x = _images(getkey(), h=8, w=12)
    for train in (False, True):
        logits, _ = apply_unet(params, state, x, cfg, train=train)
        assert logits.shape == (2, 3, 8, 12) and logits.dtype == torch.float32


@pytest.mark.parametrize("d_model, posenc", [(None, "sinusoidal"), (12, "learned"), (8, "sinusoidal")])
@pytest.mark.parametrize("norm", ["batch", "group", "instance", "none"])
def test_hybrid_logits_are_num_classes_by_input_size_for_every_norm(getkey, norm, d_model, posenc):
    cfg = dataclasses.replace(TINY_HYBRID, norm=norm, d_model=d_model, posenc=posenc, max_tokens=32)
    params, state = init_unet_transformer(getkey(), cfg)
    assert ("proj_in" in params) == (d_model not in (None, cfg.bottleneck_width))
    x = _images(getkey(), h=8, w=12)
    for train in (False, True):
        logits, _ = apply_unet_transformer(params, state, x, cfg, train=train)
        assert logits.shape == (2, 3, 8, 12)


def test_stage_widths_double_and_norm_sites_have_stable_names(key):
    cfg = UNetConfig(in_channels=3, num_classes=4, depth=2, base_width=4, norm="batch")
    params, state = init_unet(key, cfg)
    shapes = {n: tuple(v.shape) for n, v in tree.flatten_with_names(params).items()}
    assert shapes["enc.0.conv1.w"] == (4, 3, 3, 3) and shapes["enc.1.conv2.w"] == (8, 8, 3, 3)
    assert shapes["bottleneck.conv1.w"] == (16, 8, 3, 3)
    assert shapes["dec.1.up.w"] == (16, 8, 2, 2) and shapes["dec.1.conv1.w"] == (8, 16, 3, 3)
    assert shapes["dec.0.conv1.w"] == (4, 8, 3, 3) and shapes["head.w"] == (4, 4, 1, 1)
    assert "enc.0.conv1.b" not in shapes, "a conv followed by BatchNorm needs no bias"
    sites = [f"{s}.norm{i}" for s in ("enc.0", "enc.1", "bottleneck", "dec.0", "dec.1") for i in (1, 2)]
    assert sorted(tree.flatten_with_names(state)) == sorted(f"{s}.{v}" for s in sites for v in ("mean", "var"))


def test_norm_none_gives_biased_convs_and_an_empty_state(key):
    params, state = init_unet(key, dataclasses.replace(TINY, norm="none"))
    assert state == {} and "b" in params["enc"]["0"]["conv1"] and "norm1" not in params["enc"]["0"]


# ------------------------------------------------------------------------------------ padding


@pytest.mark.parametrize("fill, mode", [("reflect", "reflect"), ("zeros", "constant")])
def test_odd_sizes_are_padded_bottom_right_and_the_logits_cropped_back(getkey, fill, mode):
    cfg = dataclasses.replace(TINY, pad_fill=fill)  # depth 2: multiples of 4
    params, state = init_unet(getkey(), cfg)
    params = _randomized(params, getkey())
    x = _images(getkey(), h=7, w=10)
    logits, _ = apply_unet(params, state, x, cfg)
    padded, _ = apply_unet(params, state, F.pad(x, (0, 2, 0, 1), mode=mode), cfg)  # 8 x 12
    assert logits.shape == (2, 3, 7, 10)
    torch.testing.assert_close(logits, padded[..., :7, :10], rtol=0, atol=0)


def test_pad_mode_reject_names_the_size_and_the_multiple(key):
    cfg = dataclasses.replace(TINY, pad_mode="reject")
    params, state = init_unet(key, cfg)
    with pytest.raises(ShapeError, match=r"UNet \(pad_mode='reject'\): x: H=7 and W=8 must be multiples of "
                                         r"2\^depth = 4 \(depth=2\)"):
        apply_unet(params, state, _images(key, h=7, w=8), cfg)
    assert apply_unet(params, state, _images(key, h=8, w=12), cfg)[0].shape == (2, 3, 8, 12)


def test_reflect_padding_wider_than_the_image_is_a_shape_error_and_zeros_work(key):
    cfg = dataclasses.replace(TINY, depth=3)  # multiples of 8: a 3-pixel image needs 5 rows of padding
    params, state = init_unet(key, cfg)
    x = _images(key, h=3, w=8)
    with pytest.raises(ShapeError, match=r"too small to reflect-pad to a multiple of 8.*pad_fill='zeros'"):
        apply_unet(params, state, x, cfg)
    zeros = dataclasses.replace(cfg, pad_fill="zeros")
    assert apply_unet(params, state, x, zeros)[0].shape == (2, 3, 3, 8)


# ------------------------------------------------------------------------------------ contracts


@pytest.mark.parametrize("cfg, name", [(TINY, "UNet"), (TINY_HYBRID, "UNetTransformer")])
def test_input_of_the_wrong_shape_or_dtype_names_the_model_and_both_shapes(key, cfg, name):
    params, state = model.init(key, cfg)
    with pytest.raises(ShapeError, match=rf"^{name}: x: expected shape \[b=2 c=2 h w\], got \[2, 3, 8, 8\]"):
        model.apply(params, state, _images(key, c=3), cfg)
    with pytest.raises(ShapeError, match=rf"^{name}: x: expected shape \[b c=2 h w\], got \[2, 8, 8\]"):
        model.apply(params, state, random.normal(key, (2, 8, 8)), cfg)
    with pytest.raises(DTypeError, match=rf"^{name}: x: expected a floating dtype, got torch.int64"):
        model.apply(params, state, torch.zeros(2, 2, 8, 8, dtype=torch.int64), cfg)


def test_configs_reject_inconsistent_fields():
    with pytest.raises(ConfigError, match=r"base_width=6 divisible by groups=4"):
        UNetConfig(base_width=6, norm="group", groups=4)
    with pytest.raises(ConfigError,
                       match=r"^UNetConfig: norm must be one of 'batch', 'group', 'instance', 'none', got 'layer'$"):
        UNetConfig(norm="layer")
    with pytest.raises(ConfigError, match=r"^UNetConfig: depth must be a positive int, got 0$"):
        UNetConfig(depth=0)
    with pytest.raises(ConfigError, match=r"d_model=12 is not divisible by num_heads=8"):
        UNetTransformerConfig(d_model=12, num_heads=8)
    with pytest.raises(ConfigError, match=r"posenc='sinusoidal' needs d_model=6 divisible by 4"):
        UNetTransformerConfig(d_model=6, num_heads=2)
    assert UNetTransformerConfig().token_dim == 128 and UNetTransformerConfig().ffn_dim == 512


def test_learned_posenc_rejects_a_grid_with_more_tokens_than_its_table(key):
    cfg = dataclasses.replace(TINY_HYBRID, posenc="learned", max_tokens=8)
    params, state = init_unet_transformer(key, cfg)
    assert apply_unet_transformer(params, state, _images(key, h=4, w=8), cfg)[0].shape == (2, 3, 4, 8)
    with pytest.raises(ShapeError, match=r"a sequence of length 16 is longer than the table's 8 positions"):
        apply_unet_transformer(params, state, _images(key, h=8, w=8), cfg)


# ------------------------------------------------------------------------------------ BatchNorm state


def test_train_mode_returns_new_running_statistics_and_never_mutates_the_state(getkey):
    cfg = dataclasses.replace(TINY, norm="batch", channels_last=False)
    params, state = init_unet(getkey(), cfg)
    before = tree.tree_map(torch.clone, state)
    x = _images(getkey())
    _, new_state = apply_unet(params, state, x, cfg, train=True)
    assert tree.equal(state, before)
    assert tree.structure(new_state) == tree.structure(state)
    # The first site by hand: momentum 0.1 from mean 0, var 1; torch's unbiased batch variance.
    h = F.conv2d(x, params["enc"]["0"]["conv1"]["w"], padding=1)
    var, mean = torch.var_mean(h, dim=(0, 2, 3), correction=1)
    torch.testing.assert_close(new_state["enc"]["0"]["norm1"]["mean"], 0.1 * mean)
    torch.testing.assert_close(new_state["enc"]["0"]["norm1"]["var"], 0.9 + 0.1 * var)
    for name, v in tree.flatten_with_names(new_state).items():
        assert not torch.equal(v, tree.flatten_with_names(state)[name]), name


def test_eval_mode_uses_the_running_statistics_and_returns_the_state_as_given(getkey):
    cfg = dataclasses.replace(TINY, norm="batch")
    params, state = init_unet(getkey(), cfg)
    x = _images(getkey(), b=3)
    _, trained = apply_unet(params, state, x, cfg, train=True)
    out, returned = apply_unet(params, trained, x, cfg)
    assert returned is trained
    # No batch statistics in eval mode: each image's logits do not depend on the rest of the batch.
    torch.testing.assert_close(out[:1], apply_unet(params, trained, x[:1], cfg)[0], rtol=1e-5, atol=1e-6)
    train_out, _ = apply_unet(params, trained, x, cfg, train=True)
    assert not torch.allclose(train_out[:1], apply_unet(params, trained, x[:1], cfg, train=True)[0])
    assert not torch.allclose(out, apply_unet(params, state, x, cfg)[0])


def test_batch_norm_without_its_running_statistics_names_the_missing_site(key):
    cfg = dataclasses.replace(TINY, norm="batch")
    params, _ = init_unet(key, cfg)
    with pytest.raises(ShapeError, match=r"norm='batch' needs running statistics at 'enc.0.norm1'"):
        apply_unet(params, {}, _images(key), cfg)


# ------------------------------------------------------------------------------------ gradients


def _gradcheck_wrt_params(noise_key, apply_fn, params, state, x, cfg, **kw) -> bool:
    """gradcheck in float64 of `sum(logits * r)` (a fixed random projection, so one backward
    pass gives the whole gradient) w.r.t. every param leaf."""
    params = _randomized(tree.cast(params, torch.float64), noise_key, scale=0.1)
    named = tree.flatten_with_names(params)
    names = list(named)
    r = random.normal(random.fold_in(noise_key, "projection"), (x.shape[0], cfg.num_classes, *x.shape[2:]),
                      dtype=torch.float64)

    def f(*leaves):
        logits, _ = apply_fn(tree.unflatten_from_names(dict(zip(names, leaves)), like=params), state, x, cfg, **kw)
        return (logits * r).sum()

    inputs = tuple(t.detach().requires_grad_() for t in named.values())
    return torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-5)


def test_unet_passes_gradcheck_wrt_params(getkey):
    cfg = dataclasses.replace(TINY, depth=1, upsample="bilinear")
    params, state = init_unet(getkey(), cfg)
    x = _images(getkey(), h=7, w=8, dtype=torch.float64)  # 7 rows: the padding and the crop are differentiated too
    assert _gradcheck_wrt_params(getkey(), apply_unet, params, state, x, cfg)


def test_unet_passes_gradcheck_wrt_params_with_batch_norm_in_train_mode(getkey):
    cfg = dataclasses.replace(TINY, depth=1, norm="batch")
    params, state = init_unet(getkey(), cfg)
    x = _images(getkey(), dtype=torch.float64)
    assert _gradcheck_wrt_params(getkey(), apply_unet, params, tree.cast(state, torch.float64), x, cfg, train=True)


def test_hybrid_passes_gradcheck_wrt_params(getkey):
    cfg = dataclasses.replace(TINY_HYBRID, base_width=1, groups=1, d_model=4, d_ff=4)  # C = 2 projected to D = 4
    params, state = init_unet_transformer(getkey(), cfg)
    x = _images(getkey(), dtype=torch.float64)
    assert _gradcheck_wrt_params(getkey(), apply_unet_transformer, params, state, x, cfg)


def _assert_compiled_forward_and_grad_equal_eager(params, state, x, cfg):
    """One compiled graph holds the train-mode forward (logits and new state, as the aux
    output) and the `torch.func.grad` of a loss through it, as the train step compiles them.

    In float64, so that a difference means the compiled math differs, not float32 rounding:
    inductor fuses the softmax and the reductions in another order, which moved float32
    gradients by up to 5e-6 of their leaf's largest value (past rtol=1e-5 near zero); in
    float64 the two agree to ~1e-14."""
    params, state, x = (tree.cast(t, torch.float64) for t in (params, state, x))

    def loss(p, s, x):
        logits, s = model.apply(p, s, x, cfg, train=True)
        return logits.square().mean(), (logits, s)

    def grad_and_outputs(p, s, x):
        return torch.func.grad(loss, has_aux=True)(p, s, x)  # (grads, (logits, new state))

    got, want = compiler.compile(grad_and_outputs)(params, state, x), grad_and_outputs(params, state, x)
    assert tree.first_difference(got, want, rtol=1e-10, atol=1e-10) is None


@pytest.mark.compile
def test_unet_compiled_fullgraph_equals_eager_forward_and_grad(getkey):
    """BatchNorm in train mode, reflect padding and the crop in one graph. Compile time on 2
    CPU cores: ~3 s with aot_eager; with inductor 37 s on a cold cache, ~5 s warm."""
    cfg = dataclasses.replace(TINY, depth=1, norm="batch")
    params, state = init_unet(getkey(), cfg)
    _assert_compiled_forward_and_grad_equal_eager(params, state, _images(getkey(), h=7, w=8), cfg)


@pytest.mark.compile
def test_hybrid_compiled_fullgraph_equals_eager_forward_and_grad(getkey):
    """Tokens, sinusoidal posenc and an sdpa transformer layer in one graph. Compile time on 2
    CPU cores: ~4 s with aot_eager; with inductor 21-50 s on a cold cache, ~5 s warm."""
    cfg = dataclasses.replace(TINY_HYBRID, base_width=2, norm="none")
    params, state = init_unet_transformer(getkey(), cfg)
    _assert_compiled_forward_and_grad_equal_eager(_randomized(params, getkey()), state, _images(getkey()), cfg)


# ------------------------------------------------------------------------------------ token conversion


def test_hybrid_init_gives_the_unet_parts_the_values_of_the_plain_unet(key):
    params, _ = init_unet_transformer(key, TINY_HYBRID)
    unet, _ = init_unet(key, _unet_fields(TINY_HYBRID))
    assert tree.equal({k: params[k] for k in unet}, unet)
    assert set(params) - set(unet) == {"transformer"}


def test_hybrid_without_layers_and_a_zero_learned_table_equals_the_unet_exactly(getkey):
    """Tokens there and back (`b c h w -> b (h w) c -> b c h w`) are the identity, bit for bit."""
    cfg = dataclasses.replace(TINY_HYBRID, num_layers=0, posenc="learned", max_tokens=32)
    params, state = init_unet_transformer(getkey(), cfg)
    params = _randomized(params, getkey())
    params["posenc"] = {"table": torch.zeros_like(params["posenc"]["table"])}
    unet = {k: v for k, v in params.items() if k != "posenc"}
    x = _images(getkey(), h=8, w=12)
    got, _ = apply_unet_transformer(params, state, x, cfg)
    want, _ = apply_unet(unet, state, x, _unet_fields(cfg))
    assert torch.equal(got, want)


def test_sinusoidal_posenc_is_added_to_bottleneck_pixel_r_c_as_token_r_times_w_plus_c(getkey):
    """With no layers, the hybrid is the U-Net with `PE[r * w + c]` added at bottleneck pixel
    `(r, c)`: rows in the first D/2 channels, columns in the last D/2 (a 4 x 6 grid, so a
    transposed grid would not even fit)."""
    cfg = dataclasses.replace(TINY_HYBRID, num_layers=0, channels_last=False)  # C = D = 8
    params, state = init_unet_transformer(getkey(), cfg)
    params = _randomized(params, getkey())
    x = _images(getkey(), h=8, w=12)
    got, _ = apply_unet_transformer(params, state, x, cfg)

    rows, cols = sinusoidal_1d(4, 4), sinusoidal_1d(6, 4)  # [h, D/2], [w, D/2]
    pe = torch.cat([rows.T[:, :, None].expand(4, 4, 6), cols.T[:, None, :].expand(4, 4, 6)])  # [D, h, w]
    z, skips, _ = unet_encoder(params, state, x, cfg)
    want, _ = unet_decoder(params, state, z + pe, skips, cfg)
    torch.testing.assert_close(got, want)


# ------------------------------------------------------------------------------------ keys, determinism


@pytest.mark.parametrize("cfg", [dataclasses.replace(TINY, dropout=0.5),
                                 dataclasses.replace(TINY_HYBRID, transformer_dropout=0.3)])
def test_same_key_gives_the_same_params_and_the_same_dropout_bits(cfg):
    params, state = model.init(random.key(7), cfg)
    again, _ = model.init(random.key(7), cfg)
    other, _ = model.init(random.key(8), cfg)
    assert tree.equal(params, again) and not tree.equal(params, other)
    x = _images(random.key(9))
    a, _ = model.apply(params, state, x, cfg, key=random.key(1), train=True)
    b, _ = model.apply(params, state, x, cfg, key=random.key(1), train=True)
    c, _ = model.apply(params, state, x, cfg, key=random.key(2), train=True)
    assert torch.equal(a, b) and not torch.allclose(a, c)


@pytest.mark.parametrize("cfg", [dataclasses.replace(TINY, dropout=0.5),
                                 dataclasses.replace(TINY_HYBRID, transformer_dropout=0.3),
                                 dataclasses.replace(TINY_HYBRID, dropout=0.3)])
def test_training_with_dropout_and_no_key_is_a_prng_key_error(key, cfg):
    params, state = model.init(key, cfg)
    with pytest.raises(PRNGKeyError, match=r"train=True with dropout needs a PRNG key"):
        model.apply(params, state, _images(key), cfg, train=True)
    model.apply(params, state, _images(key), cfg)  # evaluation needs no key


def test_bottleneck_dropout_draws_from_the_named_stream_and_is_off_in_eval(getkey):
    cfg = dataclasses.replace(TINY, dropout=0.5, channels_last=False)
    params, state = init_unet(getkey(), cfg)
    x, k = _images(getkey()), getkey()
    got, _ = apply_unet(params, state, x, cfg, key=k, train=True)
    z, skips, _ = unet_encoder(params, state, x, dataclasses.replace(cfg, dropout=0.0), train=True)
    z = dropout(random.fold_in(k, "bottleneck.dropout"), z, 0.5, train=True)
    torch.testing.assert_close(got, unet_decoder(params, state, z, skips, cfg, train=True)[0], rtol=0, atol=0)
    eval_out, _ = apply_unet(params, state, x, cfg, key=k)
    assert torch.equal(eval_out, apply_unet(params, state, x, dataclasses.replace(cfg, dropout=0.0))[0])


def test_models_are_dispatched_by_exact_config_class_through_the_registry(key):
    assert model.get(TINY) is UNet and model.get(TINY_HYBRID) is UNetTransformer
    for cfg, init_fn, apply_fn in [(TINY, init_unet, apply_unet),
                                   (TINY_HYBRID, init_unet_transformer, apply_unet_transformer)]:
        params, state = model.init(key, cfg)
        assert tree.equal(params, init_fn(key, cfg)[0])
        x = _images(key)
        assert torch.equal(model.apply(params, state, x, cfg)[0], apply_fn(params, state, x, cfg)[0])
