"""Specification of funcml.nn.layers, funcml.nn.init and funcml.nn.posenc."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.autograd import gradcheck

from funcml import random, tree
from funcml.errors import ConfigError, DTypeError, PRNGKeyError, RangeError, ShapeError
from funcml.nn import init, layers, posenc

F64 = torch.float64


def _normal(key, *shape, dtype=torch.float32):
    return random.normal(key, shape, dtype=dtype)


def _torch_module(cls, *args, **kwargs):
    # skip_init: no draw from the global RNG; every weight is then loaded from our params.
    return nn.utils.skip_init(cls, *args, **kwargs)


def _assert_gradcheck(fn, params: dict, x: torch.Tensor, *, x_grad: bool = True) -> None:
    """gradcheck `fn(params, x)` w.r.t. every parameter and (if `x_grad`) the input."""
    names = sorted(params)

    def flat(*args):
        return fn(dict(zip(names, args[: len(names)])), args[len(names)])

    inputs = [params[n].detach().clone().requires_grad_() for n in names]
    inputs.append(x.detach().clone().requires_grad_(x_grad))
    assert gradcheck(flat, tuple(inputs), eps=1e-6, atol=1e-5)


# =========================================================================== init


def test_fan_in_out_of_dense_weight_is_din_dout():
    assert init.fan_in_out((3, 5), "dense") == (3, 5)


def test_fan_in_out_of_conv_weight_counts_the_kernel():
    # w: [cout=8, cin/groups=4, 3, 5] -> fan_in = 4 * 15, fan_out = 8 * 15
    assert init.fan_in_out((8, 4, 3, 5), "conv") == (60, 120)


def test_fan_in_out_of_conv_matches_torch():
    w = torch.empty(8, 4, 3, 5)
    assert init.fan_in_out(w.shape, "conv") == nn.init._calculate_fan_in_and_fan_out(w)


def test_fan_in_out_of_conv_transpose_counts_input_channels_as_fan_in():
    # w: [cin=6, cout/groups=2, 3, 3]: each output of a stride-1 transposed conv sums 6 * 9 products.
    assert init.fan_in_out((6, 2, 3, 3), "conv_transpose") == (54, 18)


def test_fan_in_out_rejects_unknown_layout():
    with pytest.raises(ConfigError, match="layout"):
        init.fan_in_out((3, 3), "dense_transposed")


@pytest.mark.parametrize("nonlinearity,a", [("relu", 0.0), ("leaky_relu", 0.2), ("linear", 0.0), ("tanh", 0.0)])
def test_gain_matches_torch_calculate_gain(nonlinearity, a):
    param = a if nonlinearity == "leaky_relu" else None
    assert init.gain(nonlinearity, a) == pytest.approx(nn.init.calculate_gain(nonlinearity, param))


# A large sample: the sample std of 40k values is within ~0.4% (one standard error) of the true one.
_SHAPE = (200, 200)


def _check_uniform(w: torch.Tensor, bound: float) -> None:
    assert float(w.abs().max()) <= bound
    assert float(w.abs().max()) > 0.999 * bound
    assert float(w.std()) == pytest.approx(bound / math.sqrt(3.0), rel=0.02)
    assert float(w.mean()) == pytest.approx(0.0, abs=0.02 * bound)


def _check_normal(w: torch.Tensor, std: float) -> None:
    assert float(w.std()) == pytest.approx(std, rel=0.02)
    assert float(w.mean()) == pytest.approx(0.0, abs=0.02 * std)


def test_xavier_uniform_bound_is_gain_sqrt_6_over_fan_sum(key):
    w = init.xavier_uniform(key, _SHAPE, 300, 400, gain=2.0)
    _check_uniform(w, 2.0 * math.sqrt(6.0 / 700))


def test_xavier_normal_std_is_gain_sqrt_2_over_fan_sum(key):
    w = init.xavier_normal(key, _SHAPE, 300, 400, gain=0.5)
    _check_normal(w, 0.5 * math.sqrt(2.0 / 700))


@pytest.mark.parametrize("nonlinearity,a", [("relu", 0.0), ("leaky_relu", 0.2), ("linear", 0.0)])
def test_kaiming_uniform_bound_is_gain_sqrt_3_over_fan_in(key, nonlinearity, a):
    w = init.kaiming_uniform(key, _SHAPE, 300, nonlinearity, a)
    gain = nn.init.calculate_gain(nonlinearity, a if nonlinearity == "leaky_relu" else None)
    _check_uniform(w, gain * math.sqrt(3.0 / 300))


@pytest.mark.parametrize("nonlinearity,a", [("relu", 0.0), ("leaky_relu", 0.2), ("linear", 0.0)])
def test_kaiming_normal_std_is_gain_over_sqrt_fan_in(key, nonlinearity, a):
    w = init.kaiming_normal(key, _SHAPE, 300, nonlinearity, a)
    gain = nn.init.calculate_gain(nonlinearity, a if nonlinearity == "leaky_relu" else None)
    _check_normal(w, gain / math.sqrt(300))


def test_normal_has_the_requested_std(key):
    _check_normal(init.normal(key, _SHAPE, 0.3), 0.3)


def test_uniform_lies_in_minus_bound_bound(key):
    _check_uniform(init.uniform(key, _SHAPE, 0.7), 0.7)


def test_trunc_normal_is_truncated_at_two_std_with_the_truncated_std(key):
    std = 0.02
    w = init.trunc_normal(key, _SHAPE, std)
    assert float(w.abs().max()) <= 2 * std
    # Variance of N(0, 1) truncated to [-2, 2]: 1 - 2 * 2 * phi(2) / (2 * Phi(2) - 1).
    phi2 = math.exp(-2.0) / math.sqrt(2 * math.pi)
    mass = math.erf(2 / math.sqrt(2))
    _check_normal(w, std * math.sqrt(1 - 4 * phi2 / mass))


def test_zeros_and_ones_have_the_shape_and_dtype():
    assert torch.equal(init.zeros((2, 3), dtype=F64), torch.zeros(2, 3, dtype=F64))
    assert torch.equal(init.ones(4), torch.ones(4))


@pytest.mark.parametrize("name", ["normal", "trunc_normal", "xavier_uniform", "xavier_normal",
                                  "kaiming_uniform", "kaiming_normal", "lecun_normal"])
def test_initializer_same_key_same_bits_different_keys_differ(name):
    fn = init.get(name)
    a = fn(random.key(3), (16, 8), 16, 8, dtype=torch.float32, device=None)
    b = fn(random.key(3), (16, 8), 16, 8, dtype=torch.float32, device=None)
    c = fn(random.key(4), (16, 8), 16, 8, dtype=torch.float32, device=None)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_get_returns_a_callable_unchanged():
    def custom(key, shape, fan_in, fan_out, *, dtype, device):
        return torch.full(shape, 0.5, dtype=dtype)

    assert init.get(custom) is custom
    params = layers.init_dense(random.key(0), 2, 3, w_init=custom)
    assert torch.equal(params["w"], torch.full((2, 3), 0.5))


def test_get_unknown_initializer_raises_config_error_listing_names():
    with pytest.raises(ConfigError, match="unknown initializer 'glorot'.*xavier_uniform"):
        init.get("glorot")


def test_initializers_never_touch_the_global_rng(key):
    before = torch.random.get_rng_state()
    layers.init_conv2d(key, 3, 4, 3)
    layers.init_dense(key, 3, 4)
    init.trunc_normal(key, (5,))
    assert torch.equal(before, torch.random.get_rng_state())


# =========================================================================== dense


def test_init_dense_has_din_dout_weight_and_zero_bias(key):
    params = layers.init_dense(key, 3, 5)
    assert params["w"].shape == (3, 5) and params["w"].dtype == torch.float32
    assert torch.equal(params["b"], torch.zeros(5))


def test_init_dense_without_bias_has_no_b_key(key):
    assert set(layers.init_dense(key, 3, 5, bias=False)) == {"w"}


def test_init_dense_same_key_same_bits_different_keys_differ():
    a, b = layers.init_dense(random.key(0), 4, 4), layers.init_dense(random.key(0), 4, 4)
    c = layers.init_dense(random.key(1), 4, 4)
    assert torch.equal(a["w"], b["w"])
    assert not torch.equal(a["w"], c["w"])


def test_dense_computes_x_w_plus_b_by_hand():
    params = {"w": torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]), "b": torch.tensor([0.5, -1.0])}
    x = torch.tensor([[1.0, 0.0, -1.0]])
    # [1*1 + 0*3 - 1*5, 1*2 + 0*4 - 1*6] + b = [-4, -4] + [0.5, -1]
    assert torch.equal(layers.dense(params, x), torch.tensor([[-3.5, -5.0]]))


def test_dense_matches_nn_linear_on_leading_dims(getkey):
    params = layers.init_dense(getkey(), 6, 4)
    params["b"] = _normal(getkey(), 4)
    x = _normal(getkey(), 2, 3, 6)
    lin = _torch_module(nn.Linear, 6, 4)
    lin.load_state_dict({"weight": params["w"].T, "bias": params["b"]})
    torch.testing.assert_close(layers.dense(params, x), lin(x), atol=1e-5, rtol=1e-5)


def test_dense_without_bias_matches_nn_linear(getkey):
    params = layers.init_dense(getkey(), 6, 4, bias=False)
    x = _normal(getkey(), 5, 6)
    lin = _torch_module(nn.Linear, 6, 4, bias=False)
    lin.load_state_dict({"weight": params["w"].T})
    torch.testing.assert_close(layers.dense(params, x), lin(x), atol=1e-5, rtol=1e-5)


def test_dense_under_vmap_over_stacked_params_equals_a_loop(getkey):
    members = [layers.init_dense(getkey(), 3, 2) for _ in range(3)]
    x = _normal(getkey(), 5, 3)
    ys = torch.func.vmap(layers.dense, in_dims=(0, None))(tree.stack(members), x)
    torch.testing.assert_close(ys, torch.stack([layers.dense(p, x) for p in members]), atol=1e-6, rtol=1e-6)


def test_dense_gradcheck(getkey):
    params = layers.init_dense(getkey(), 3, 2, dtype=F64)
    _assert_gradcheck(layers.dense, params, _normal(getkey(), 2, 3, dtype=F64))


# =========================================================================== convolutions

_CONV2D_CASES = [
    dict(stride=1, padding=0, dilation=1, groups=1),
    dict(stride=2, padding=1, dilation=1, groups=1),
    dict(stride=1, padding="same", dilation=2, groups=1),
    dict(stride=(2, 1), padding=(0, 2), dilation=(1, 2), groups=2),
    dict(stride=1, padding=1, dilation=1, groups=4),
]


@pytest.mark.parametrize("cfg", _CONV2D_CASES, ids=str)
def test_conv2d_matches_nn_conv2d(getkey, cfg):
    params = layers.init_conv2d(getkey(), 4, 8, (3, 2), groups=cfg["groups"])
    params["b"] = _normal(getkey(), 8)
    x = _normal(getkey(), 2, 4, 9, 7)
    conv = _torch_module(nn.Conv2d, 4, 8, (3, 2), **cfg)
    conv.load_state_dict({"weight": params["w"], "bias": params["b"]})
    torch.testing.assert_close(layers.conv2d(params, x, **cfg), conv(x), atol=1e-5, rtol=1e-5)


def test_init_conv2d_weight_layout_is_cout_cin_over_groups_kh_kw(key):
    params = layers.init_conv2d(key, 6, 4, (3, 5), groups=2)
    assert params["w"].shape == (4, 3, 3, 5) and params["b"].shape == (4,)


def test_init_conv2d_rejects_channels_not_divisible_by_groups(key):
    with pytest.raises(ConfigError, match="cin=5 is not divisible by groups=2"):
        layers.init_conv2d(key, 5, 4, 3, groups=2)


def test_conv2d_same_padding_with_stride_raises_config_error(key):
    params = layers.init_conv2d(key, 3, 4, 3)
    with pytest.raises(ConfigError, match="padding='same' needs stride 1"):
        layers.conv2d(params, torch.zeros(1, 3, 8, 8), stride=2, padding="same")


def test_conv2d_under_vmap_over_stacked_params_equals_a_loop(getkey):
    members = [layers.init_conv2d(getkey(), 2, 4, 3, groups=2) for _ in range(3)]
    x = _normal(getkey(), 2, 2, 5, 5)
    ys = torch.func.vmap(lambda p: layers.conv2d(p, x, padding=1, groups=2))(tree.stack(members))
    expected = torch.stack([layers.conv2d(p, x, padding=1, groups=2) for p in members])
    torch.testing.assert_close(ys, expected, atol=1e-6, rtol=1e-6)


def test_conv2d_gradcheck(getkey):
    params = layers.init_conv2d(getkey(), 2, 2, 2, dtype=F64)
    params["b"] = _normal(getkey(), 2, dtype=F64)
    x = _normal(getkey(), 1, 2, 4, 3, dtype=F64)
    _assert_gradcheck(lambda p, x: layers.conv2d(p, x, stride=2, padding=1), params, x)


_CONV1D_CASES = [
    dict(stride=1, padding=0, dilation=1, groups=1),
    dict(stride=2, padding=2, dilation=1, groups=2),
    dict(stride=1, padding="same", dilation=3, groups=1),
]


@pytest.mark.parametrize("cfg", _CONV1D_CASES, ids=str)
def test_conv1d_matches_nn_conv1d(getkey, cfg):
    params = layers.init_conv1d(getkey(), 4, 6, 3, groups=cfg["groups"])
    params["b"] = _normal(getkey(), 6)
    x = _normal(getkey(), 2, 4, 11)
    conv = _torch_module(nn.Conv1d, 4, 6, 3, **cfg)
    conv.load_state_dict({"weight": params["w"], "bias": params["b"]})
    torch.testing.assert_close(layers.conv1d(params, x, **cfg), conv(x), atol=1e-5, rtol=1e-5)


def test_conv1d_causal_padding_keeps_length_and_never_looks_ahead(getkey):
    params = layers.init_conv1d(getkey(), 2, 3, 4)
    x = _normal(getkey(), 1, 2, 10)
    y = layers.conv1d(params, x, padding="causal", dilation=2)
    x_future = x.clone()
    x_future[..., 6:] += 1.0  # change only t >= 6
    y_future = layers.conv1d(params, x_future, padding="causal", dilation=2)
    assert y.shape == (1, 3, 10)
    assert torch.equal(y[..., :6], y_future[..., :6])
    assert not torch.equal(y[..., 6:], y_future[..., 6:])


def test_conv1d_gradcheck(getkey):
    params = layers.init_conv1d(getkey(), 2, 3, 3, dtype=F64)
    params["b"] = _normal(getkey(), 3, dtype=F64)
    _assert_gradcheck(lambda p, x: layers.conv1d(p, x, padding="causal"), params,
                      _normal(getkey(), 2, 2, 5, dtype=F64))


def test_init_depthwise_conv1d_has_one_filter_per_channel_and_no_bias(key):
    params = layers.init_depthwise_conv1d(key, 5, 3)
    assert set(params) == {"w"} and params["w"].shape == (5, 1, 3)


def test_depthwise_conv1d_matches_grouped_nn_conv1d(getkey):
    params = layers.init_depthwise_conv1d(getkey(), 4, 5)
    x = _normal(getkey(), 2, 4, 9)
    conv = _torch_module(nn.Conv1d, 4, 4, 5, padding="same", groups=4, bias=False)
    conv.load_state_dict({"weight": params["w"]})
    torch.testing.assert_close(layers.depthwise_conv1d(params, x, padding="same"), conv(x), atol=1e-5, rtol=1e-5)


def test_depthwise_conv1d_gradcheck(getkey):
    params = layers.init_depthwise_conv1d(getkey(), 2, 3, bias=True, dtype=F64)
    _assert_gradcheck(lambda p, x: layers.depthwise_conv1d(p, x, padding=1), params,
                      _normal(getkey(), 1, 2, 4, dtype=F64))


_CONVT_CASES = [
    dict(stride=1, padding=0, output_padding=0, groups=1, dilation=1),
    dict(stride=2, padding=1, output_padding=1, groups=1, dilation=1),
    dict(stride=2, padding=0, output_padding=0, groups=2, dilation=2),
]


@pytest.mark.parametrize("cfg", _CONVT_CASES, ids=str)
def test_conv_transpose2d_matches_nn_conv_transpose2d(getkey, cfg):
    params = layers.init_conv_transpose2d(getkey(), 4, 6, 3, groups=cfg["groups"])
    params["b"] = _normal(getkey(), 6)
    x = _normal(getkey(), 2, 4, 5, 4)
    conv = _torch_module(nn.ConvTranspose2d, 4, 6, 3, **cfg)
    conv.load_state_dict({"weight": params["w"], "bias": params["b"]})
    torch.testing.assert_close(layers.conv_transpose2d(params, x, **cfg), conv(x), atol=1e-5, rtol=1e-5)


def test_init_conv_transpose2d_weight_layout_is_cin_cout_over_groups_kh_kw(key):
    params = layers.init_conv_transpose2d(key, 4, 6, (2, 3), groups=2)
    assert params["w"].shape == (4, 3, 2, 3) and params["b"].shape == (6,)


def test_conv_transpose2d_stride_2_doubles_the_resolution(key):
    params = layers.init_conv_transpose2d(key, 3, 2, 2)
    assert layers.conv_transpose2d(params, torch.zeros(1, 3, 5, 7), stride=2).shape == (1, 2, 10, 14)


def test_conv_transpose2d_gradcheck(getkey):
    params = layers.init_conv_transpose2d(getkey(), 2, 2, 2, dtype=F64)
    params["b"] = _normal(getkey(), 2, dtype=F64)
    _assert_gradcheck(lambda p, x: layers.conv_transpose2d(p, x, stride=2), params,
                      _normal(getkey(), 1, 2, 2, 3, dtype=F64))


# =========================================================================== embedding


def test_embedding_looks_up_rows_of_the_table():
    params = {"table": torch.arange(12.0).reshape(4, 3)}
    ids = torch.tensor([[3, 0], [1, 1]])
    y = layers.embedding(params, ids)
    assert y.shape == (2, 2, 3)
    assert torch.equal(y[0, 0], torch.tensor([9.0, 10.0, 11.0]))
    assert torch.equal(y[1, 1], torch.tensor([3.0, 4.0, 5.0]))


def test_embedding_matches_nn_embedding(getkey):
    params = layers.init_embedding(getkey(), 10, 4)
    ids = random.randint(getkey(), (3, 5), 0, 10)
    emb = _torch_module(nn.Embedding, 10, 4)
    emb.load_state_dict({"weight": params["table"]})
    torch.testing.assert_close(layers.embedding(params, ids), emb(ids), atol=1e-5, rtol=1e-5)


def test_init_embedding_std_is_the_requested_std(key):
    _check_normal(layers.init_embedding(key, 400, 100, std=0.5)["table"], 0.5)


@pytest.mark.parametrize("bad", [10, -1])
def test_embedding_out_of_range_id_raises_range_error_naming_it(bad):
    params = {"table": torch.zeros(10, 2)}
    with pytest.raises(RangeError, match=rf"ids must lie in \[0, 10\).*got id {bad}"):
        layers.embedding(params, torch.tensor([0, bad, 3]))


def test_embedding_float_ids_raise_dtype_error():
    with pytest.raises(DTypeError, match="embedding: ids"):
        layers.embedding({"table": torch.zeros(10, 2)}, torch.tensor([1.0]))


def test_embedding_under_vmap_over_stacked_tables_equals_a_loop(getkey):
    tables = _normal(getkey(), 3, 6, 2)
    ids = torch.tensor([[0, 5], [2, 2]])
    out = torch.func.vmap(lambda t: layers.embedding({"table": t}, ids))(tables)
    assert torch.equal(out, torch.stack([layers.embedding({"table": t}, ids) for t in tables]))


def test_embedding_gradcheck_wrt_table(getkey):
    params = layers.init_embedding(getkey(), 4, 3, dtype=F64)
    _assert_gradcheck(layers.embedding, params, torch.tensor([[0, 3, 3]]), x_grad=False)


# =========================================================================== activations


def test_activations_match_torch_functional(getkey):
    x = _normal(getkey(), 64)
    torch.testing.assert_close(layers.relu(x), F.relu(x))
    torch.testing.assert_close(layers.gelu(x), F.gelu(x))
    torch.testing.assert_close(layers.gelu(x, approximate="tanh"), F.gelu(x, approximate="tanh"))
    torch.testing.assert_close(layers.silu(x), x * torch.sigmoid(x))
    torch.testing.assert_close(layers.leaky_relu(x, 0.2), torch.where(x >= 0, x, 0.2 * x))


def test_leaky_relu_default_slope_is_0_01():
    assert torch.equal(layers.leaky_relu(torch.tensor([-2.0, 3.0])), torch.tensor([-0.02, 3.0]))


def test_activation_looks_up_functions_by_name():
    x = torch.tensor([-1.0, 0.5])
    assert layers.activation("relu") is layers.relu
    assert torch.equal(layers.activation("gelu_tanh")(x), F.gelu(x, approximate="tanh"))
    assert torch.equal(layers.activation("identity")(x), x)


def test_activation_unknown_name_raises_config_error_listing_names():
    with pytest.raises(ConfigError, match="unknown activation 'mish'.*relu"):
        layers.activation("mish")


def test_gelu_rejects_unknown_approximation():
    with pytest.raises(ConfigError, match="approximate"):
        layers.gelu(torch.zeros(2), approximate="erf")


# =========================================================================== dropout


def test_dropout_same_key_same_mask(key):
    x = torch.ones(4, 32)
    assert torch.equal(layers.dropout(key, x, 0.5, train=True), layers.dropout(key, x, 0.5, train=True))


def test_dropout_different_keys_give_different_masks():
    x = torch.ones(4, 32)
    a = layers.dropout(random.key(1), x, 0.5, train=True)
    b = layers.dropout(random.key(2), x, 0.5, train=True)
    assert not torch.equal(a, b)


def test_dropout_in_eval_is_the_identity_and_needs_no_key():
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    assert layers.dropout(None, x, 0.5, train=False) is x


def test_dropout_with_rate_zero_is_the_identity_even_in_training():
    x = torch.ones(3)
    assert layers.dropout(None, x, 0.0, train=True) is x


def test_dropout_keeps_a_fraction_1_minus_rate_scaled_by_its_inverse(key):
    x = torch.ones(50_000)
    y = layers.dropout(key, x, 0.3, train=True)
    kept = y != 0
    assert float(kept.float().mean()) == pytest.approx(0.7, abs=0.01)
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1 / 0.7))


def test_dropout_preserves_the_expected_value(key):
    x = torch.full((50_000,), 2.0)
    assert float(layers.dropout(key, x, 0.5, train=True).mean()) == pytest.approx(2.0, rel=0.02)


def test_dropout_mask_is_bernoulli_of_the_key(key):
    x = torch.ones(5, 7)
    expected = random.bernoulli(key, 0.75, (5, 7)).float() / 0.75
    assert torch.equal(layers.dropout(key, x, 0.25, train=True), expected)


def test_dropout_missing_key_in_training_raises_prng_key_error():
    with pytest.raises(PRNGKeyError, match=r"dropout: train=True with rate=0.1 needs a PRNG key; pass dropout\("):
        layers.dropout(None, torch.ones(3), 0.1, train=True)


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5])
def test_dropout_rate_outside_0_1_raises_config_error(key, rate):
    with pytest.raises(ConfigError, match=r"rate must be a number in \[0, 1\)"):
        layers.dropout(key, torch.ones(3), rate, train=True)


def test_dropout_under_vmap_over_keys_equals_a_loop(key):
    keys = random.split(key, 3)
    x = torch.ones(16)
    batched = torch.func.vmap(lambda k: layers.dropout(k, x, 0.5, train=True))(keys)
    assert torch.equal(batched, torch.stack([layers.dropout(k, x, 0.5, train=True) for k in keys]))


def test_dropout_gradient_is_mask_over_keep_rate(key):
    x = torch.ones(50, requires_grad=True)
    y = layers.dropout(key, x, 0.4, train=True)
    (g,) = torch.autograd.grad(y.sum(), x)
    assert torch.equal(g, (y != 0).float() / 0.6)


# =========================================================================== shape errors

_SHAPE_ERROR_CASES = {
    # case: (call, fragments the message must contain: layer and argument, expected, actual)
    "dense": (lambda k: layers.dense(layers.init_dense(k, 4, 3), torch.zeros(2, 5)),
              ["dense: x: expected shape [... din=4]", "got [2, 5]"]),
    "dense_bias": (lambda k: layers.dense({"w": torch.zeros(4, 3), "b": torch.zeros(2)}, torch.zeros(4)),
                   ["dense: params['b']: expected shape [cout=3]", "got [2]"]),
    "conv2d": (lambda k: layers.conv2d(layers.init_conv2d(k, 3, 2, 3), torch.zeros(2, 4, 8, 8)),
               ["conv2d: x: expected shape [b", "c=3 h w]", "got [2, 4, 8, 8]"]),
    "conv2d_rank": (lambda k: layers.conv2d(layers.init_conv2d(k, 3, 2, 3), torch.zeros(3, 8, 8)),
                    ["conv2d: x: expected shape [b c=3 h w]", "got [3, 8, 8]"]),
    "conv1d": (lambda k: layers.conv1d(layers.init_conv1d(k, 3, 2, 3), torch.zeros(2, 5, 8)),
               ["conv1d: x: expected shape [b", "c=3 t]", "got [2, 5, 8]"]),
    "depthwise_conv1d": (lambda k: layers.depthwise_conv1d(layers.init_depthwise_conv1d(k, 4, 3),
                                                            torch.zeros(2, 3, 8), padding="same"),
                         ["depthwise_conv1d: x: expected shape [b", "c=4 t]", "got [2, 3, 8]"]),
    "conv_transpose2d": (lambda k: layers.conv_transpose2d(layers.init_conv_transpose2d(k, 4, 2, 2),
                                                            torch.zeros(1, 2, 3, 3)),
                         ["conv_transpose2d: x: expected shape [b", "c=4 h w]", "got [1, 2, 3, 3]"]),
    "embedding": (lambda k: layers.embedding({"table": torch.zeros(5)}, torch.tensor([0])),
                  ["embedding: params['table']: expected shape [v d]", "got [5]"]),
    "learned_posenc": (lambda k: posenc.learned_posenc({"table": torch.zeros(2, 3, 4)}, 2),
                       ["learned_posenc: params['table']: expected shape [t d]", "got [2, 3, 4]"]),
}


@pytest.mark.parametrize("case", sorted(_SHAPE_ERROR_CASES))
def test_shape_error_names_the_layer_and_both_shapes(key, case):
    call, fragments = _SHAPE_ERROR_CASES[case]
    with pytest.raises(ShapeError) as info:
        call(key)
    for fragment in fragments:
        assert fragment in str(info.value)


# =========================================================================== positional encodings


def test_sinusoidal_1d_position_0_is_sin_0_cos_1():
    pe = posenc.sinusoidal_1d(4, 8)
    assert torch.equal(pe[0, 0::2], torch.zeros(4))
    assert torch.equal(pe[0, 1::2], torch.ones(4))


def test_sinusoidal_1d_known_entries():
    pe = posenc.sinusoidal_1d(4, 8, dtype=F64)
    # D = 8: channel pair i = 1 has frequency 1 / 10000^(2/8) = 1/10.
    assert float(pe[1, 0]) == pytest.approx(math.sin(1.0), abs=1e-12)
    assert float(pe[1, 1]) == pytest.approx(math.cos(1.0), abs=1e-12)
    assert float(pe[3, 2]) == pytest.approx(math.sin(0.3), abs=1e-12)
    assert float(pe[3, 3]) == pytest.approx(math.cos(0.3), abs=1e-12)


def test_sinusoidal_1d_matches_the_formula_everywhere():
    length, dim, base = 7, 6, 100.0
    pe = posenc.sinusoidal_1d(length, dim, base=base, dtype=F64)
    for p in range(length):
        for i in range(dim // 2):
            angle = p / base ** (2 * i / dim)
            assert float(pe[p, 2 * i]) == pytest.approx(math.sin(angle), abs=1e-12)
            assert float(pe[p, 2 * i + 1]) == pytest.approx(math.cos(angle), abs=1e-12)


def test_sinusoidal_1d_has_the_requested_shape_and_dtype():
    pe = posenc.sinusoidal_1d(5, 4, dtype=torch.bfloat16)
    assert pe.shape == (5, 4) and pe.dtype == torch.bfloat16


def test_sinusoidal_1d_odd_dim_raises_config_error():
    with pytest.raises(ConfigError, match="dim must be even"):
        posenc.sinusoidal_1d(4, 5)


def test_sinusoidal_2d_halves_are_the_1d_encodings_of_row_and_column():
    h, w, dim = 3, 4, 8
    pe = posenc.sinusoidal_2d(h, w, dim)
    rows, cols = posenc.sinusoidal_1d(h, dim // 2), posenc.sinusoidal_1d(w, dim // 2)
    assert pe.shape == (h * w, dim)
    for r in range(h):
        for c in range(w):
            assert torch.equal(pe[r * w + c, : dim // 2], rows[r])
            assert torch.equal(pe[r * w + c, dim // 2:], cols[c])


def test_sinusoidal_2d_token_order_matches_einops_flattening():
    h, w, dim = 2, 3, 4
    rows, cols = posenc.sinusoidal_1d(h, dim // 2), posenc.sinusoidal_1d(w, dim // 2)
    # An image whose pixel (r, c) holds concat(row r, column c), flattened as the models do.
    grid = torch.cat([rows[:, None, :].expand(h, w, -1), cols[None, :, :].expand(h, w, -1)], dim=-1)
    image = rearrange(grid, "h w d -> 1 d h w")
    tokens = rearrange(image, "b c h w -> b (h w) c")[0]
    assert torch.equal(posenc.sinusoidal_2d(h, w, dim), tokens)


def test_sinusoidal_2d_dim_not_divisible_by_4_raises_config_error():
    with pytest.raises(ConfigError, match="divisible by 4"):
        posenc.sinusoidal_2d(2, 2, 6)


def test_learned_posenc_returns_the_first_length_rows(key):
    params = posenc.init_learned_posenc(key, 10, 4)
    assert params["table"].shape == (10, 4)
    assert torch.equal(posenc.learned_posenc(params, 6), params["table"][:6])


def test_init_learned_posenc_same_key_same_bits_different_keys_differ():
    a = posenc.init_learned_posenc(random.key(0), 8, 4)["table"]
    b = posenc.init_learned_posenc(random.key(0), 8, 4)["table"]
    c = posenc.init_learned_posenc(random.key(1), 8, 4)["table"]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_learned_posenc_longer_than_the_table_raises_shape_error(key):
    params = posenc.init_learned_posenc(key, 10, 4)
    with pytest.raises(ShapeError, match="length 11 is longer than the table's 10 positions"):
        posenc.learned_posenc(params, 11)


def test_learned_posenc_gradcheck_wrt_table(key):
    params = posenc.init_learned_posenc(key, 5, 2, dtype=F64)
    _assert_gradcheck(lambda p, n: posenc.learned_posenc(p, int(n)), params, torch.tensor(3), x_grad=False)
