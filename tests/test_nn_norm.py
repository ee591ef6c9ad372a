"""Specification of funcml.nn.norm: LayerNorm, GroupNorm, InstanceNorm, functional BatchNorm."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.autograd import gradcheck

from funcml import random, tree
from funcml.errors import ConfigError, ShapeError
from funcml.nn import norm

F64 = torch.float64
TOL = dict(atol=1e-5, rtol=1e-5)


def _normal(key, *shape, dtype=torch.float32):
    return random.normal(key, shape, dtype=dtype)


def _affine(getkey, dim, dtype=torch.float32):
    """Non-trivial scale and bias, so that a swapped or ignored parameter shows."""
    return {"scale": 1.0 + 0.5 * _normal(getkey(), dim, dtype=dtype), "bias": _normal(getkey(), dim, dtype=dtype)}


def _plain_batch_norm(params, x, eps=1e-5):
    """Training BatchNorm written from its equation, `(y, mu [C], sigma^2 [C])`, statistics over
    every axis but the channels, in at least float32: the oracle of the fused kernel."""
    dims = (0, *range(2, x.ndim))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    xf = x.to(torch.promote_types(x.dtype, torch.float32))
    mu, var = xf.mean(dims), ((xf - xf.mean(dims, keepdim=True)) ** 2).mean(dims)
    y = (xf - mu.reshape(shape)) / torch.sqrt(var.reshape(shape) + eps) * params["scale"].reshape(shape) \
        + params["bias"].reshape(shape)
    return y.to(x.dtype), mu.detach(), var.detach()


def _bn_state(getkey, dim, dtype=torch.float32):
    return {"mean": _normal(getkey(), dim, dtype=dtype), "var": 0.5 + random.uniform(getkey(), (dim,), dtype=dtype)}


def _torch_module(cls, *args, **kwargs):
    return nn.utils.skip_init(cls, *args, **kwargs)


def _load_affine(module, params):
    with torch.no_grad():
        module.weight.copy_(params["scale"])
        module.bias.copy_(params["bias"])
    return module


def _assert_gradcheck(fn, tensors: dict) -> None:
    """gradcheck `fn(**tensors)` w.r.t. every tensor in `tensors`."""
    names = sorted(tensors)

    def flat(*args):
        return fn(**dict(zip(names, args)))

    assert gradcheck(flat, tuple(tensors[n].detach().clone().requires_grad_() for n in names), eps=1e-6, atol=1e-5)


# =========================================================================== init


def test_init_layer_norm_is_scale_ones_bias_zeros():
    params = norm.init_layer_norm(3)
    assert torch.equal(params["scale"], torch.ones(3)) and torch.equal(params["bias"], torch.zeros(3))


def test_init_group_and_instance_norm_have_per_channel_scale_and_bias():
    for params in (norm.init_group_norm(6), norm.init_instance_norm(6)):
        assert set(params) == {"scale", "bias"}
        assert torch.equal(params["scale"], torch.ones(6)) and torch.equal(params["bias"], torch.zeros(6))


def test_init_batch_norm_state_is_mean_zero_var_one():
    params, state = norm.init_batch_norm(4)
    assert torch.equal(params["scale"], torch.ones(4)) and torch.equal(params["bias"], torch.zeros(4))
    assert torch.equal(state["mean"], torch.zeros(4)) and torch.equal(state["var"], torch.ones(4))


# =========================================================================== LayerNorm


def test_layer_norm_by_hand():
    x = torch.tensor([[1.0, 2.0, 3.0, 6.0]])  # mean 3, biased var (4 + 1 + 0 + 9) / 4 = 3.5
    y = norm.layer_norm(norm.init_layer_norm(4), x, eps=0.5)  # sqrt(3.5 + 0.5) = 2
    torch.testing.assert_close(y, torch.tensor([[-1.0, -0.5, 0.0, 1.5]]))


def test_layer_norm_matches_nn_layer_norm(getkey):
    params = _affine(getkey, 8)
    x = _normal(getkey(), 2, 5, 8)
    ln = _load_affine(_torch_module(nn.LayerNorm, 8), params)
    torch.testing.assert_close(norm.layer_norm(params, x), ln(x), **TOL)


def test_layer_norm_gradcheck(getkey):
    params = _affine(getkey, 4, F64)
    x = _normal(getkey(), 2, 4, dtype=F64)
    _assert_gradcheck(lambda scale, bias, x: norm.layer_norm({"scale": scale, "bias": bias}, x),
                      {**params, "x": x})


# =========================================================================== GroupNorm / InstanceNorm


def test_group_norm_matches_nn_group_norm(getkey):
    params = _affine(getkey, 6)
    x = _normal(getkey(), 2, 6, 4, 3)
    gn = _load_affine(_torch_module(nn.GroupNorm, 3, 6), params)
    torch.testing.assert_close(norm.group_norm(params, x, groups=3), gn(x), **TOL)


def test_group_norm_with_one_group_normalizes_each_sample_over_everything(getkey):
    x = _normal(getkey(), 2, 4, 3)
    y = norm.group_norm(norm.init_group_norm(4), x, groups=1, eps=1e-12)
    flat = y.reshape(2, -1)
    torch.testing.assert_close(flat.mean(1), torch.zeros(2), atol=1e-6, rtol=0)
    torch.testing.assert_close(flat.var(1, correction=0), torch.ones(2), atol=1e-5, rtol=0)


def test_group_norm_groups_not_dividing_channels_raises_config_error():
    with pytest.raises(ConfigError, match="groups must be a positive divisor of C=6, got 4"):
        norm.group_norm(norm.init_group_norm(6), torch.zeros(2, 6, 3), groups=4)


def test_group_norm_gradcheck(getkey):
    params = _affine(getkey, 4, F64)
    x = _normal(getkey(), 2, 4, 3, dtype=F64)
    _assert_gradcheck(lambda scale, bias, x: norm.group_norm({"scale": scale, "bias": bias}, x, groups=2),
                      {**params, "x": x})


def test_instance_norm_matches_nn_instance_norm2d_affine(getkey):
    params = _affine(getkey, 3)
    x = _normal(getkey(), 2, 3, 5, 4)
    inorm = _load_affine(_torch_module(nn.InstanceNorm2d, 3, affine=True), params)
    torch.testing.assert_close(norm.instance_norm(params, x), inorm(x), **TOL)


def test_instance_norm_without_spatial_dims_raises_shape_error():
    with pytest.raises(ShapeError, match=r"instance_norm: x: expected shape \[b c=3 _ \.\.\.\].*got \[2, 3\]"):
        norm.instance_norm(norm.init_instance_norm(3), torch.zeros(2, 3))


def test_instance_norm_gradcheck(getkey):
    params = _affine(getkey, 2, F64)
    x = _normal(getkey(), 2, 2, 3, dtype=F64)
    _assert_gradcheck(lambda scale, bias, x: norm.instance_norm({"scale": scale, "bias": bias}, x),
                      {**params, "x": x})


# =========================================================================== BatchNorm


def _torch_bn(params, state, momentum=0.1):
    bn = _load_affine(_torch_module(nn.BatchNorm2d, params["scale"].shape[0], momentum=momentum), params)
    with torch.no_grad():
        bn.running_mean.copy_(state["mean"])
        bn.running_var.copy_(state["var"])
        bn.num_batches_tracked.zero_()
    return bn


def test_batch_norm_train_matches_nn_batch_norm2d_including_running_stats(getkey):
    params, state = _affine(getkey, 3), _bn_state(getkey, 3)
    x = _normal(getkey(), 4, 3, 5, 2) * 2.0 + 1.0
    bn = _torch_bn(params, state, momentum=0.2).train()
    y, new_state = norm.batch_norm(params, state, x, train=True, momentum=0.2)
    torch.testing.assert_close(y, bn(x), **TOL)
    torch.testing.assert_close(new_state["mean"], bn.running_mean, **TOL)
    torch.testing.assert_close(new_state["var"], bn.running_var, **TOL)


def test_batch_norm_eval_matches_nn_batch_norm2d_and_keeps_the_state(getkey):
    params, state = _affine(getkey, 3), _bn_state(getkey, 3)
    x = _normal(getkey(), 4, 3, 5, 2)
    bn = _torch_bn(params, state).eval()
    y, new_state = norm.batch_norm(params, state, x, train=False)
    torch.testing.assert_close(y, bn(x), **TOL)
    assert tree.equal(new_state, state)


def test_batch_norm_on_b_c_inputs_matches_nn_batch_norm1d(getkey):
    params, state = _affine(getkey, 4), _bn_state(getkey, 4)
    x = _normal(getkey(), 6, 4)
    bn = _load_affine(_torch_module(nn.BatchNorm1d, 4), params)
    with torch.no_grad():
        bn.running_mean.copy_(state["mean"])
        bn.running_var.copy_(state["var"])
    y, new_state = norm.batch_norm(params, state, x, train=True)
    torch.testing.assert_close(y, bn.train()(x), **TOL)
    torch.testing.assert_close(new_state["var"], bn.running_var, **TOL)


def test_batch_norm_running_var_update_uses_the_unbiased_variance():
    params, state = norm.init_batch_norm(1)
    x = torch.tensor([1.0, 3.0]).reshape(2, 1)  # mean 2, biased var 1, unbiased var 2
    _, new_state = norm.batch_norm(params, state, x, train=True, momentum=0.5)
    torch.testing.assert_close(new_state["mean"], torch.tensor([1.0]))  # 0.5 * 0 + 0.5 * 2
    torch.testing.assert_close(new_state["var"], torch.tensor([1.5]))  # 0.5 * 1 + 0.5 * 2


def test_batch_norm_does_not_mutate_params_or_state(getkey):
    params, state = _affine(getkey, 3), _bn_state(getkey, 3)
    params_before, state_before = tree.tree_map(torch.clone, params), tree.tree_map(torch.clone, state)
    x = _normal(getkey(), 4, 3, 2, 2)
    _, new_state = norm.batch_norm(params, state, x, train=True)
    assert tree.equal(state, state_before) and tree.equal(params, params_before)
    assert new_state is not state and not tree.equal(new_state, state)


def test_batch_norm_under_vmap_over_three_stacked_members_equals_a_loop(getkey):
    members = [(_affine(getkey, 3), _bn_state(getkey, 3)) for _ in range(3)]
    params = tree.stack([p for p, _ in members])
    state = tree.stack([s for _, s in members])
    xs = _normal(getkey(), 3, 4, 3, 2, 2)

    ys, new_states = torch.func.vmap(lambda p, s, x: norm.batch_norm(p, s, x, train=True))(params, state, xs)

    for i, (p, s) in enumerate(members):
        y, new_s = norm.batch_norm(p, s, xs[i], train=True)
        torch.testing.assert_close(ys[i], y, **TOL)
        assert tree.allclose(tree.unstack(new_states)[i], new_s, atol=1e-6)


def test_batch_norm_under_vmap_in_eval_equals_a_loop(getkey):
    members = [(_affine(getkey, 2), _bn_state(getkey, 2)) for _ in range(3)]
    params, state = tree.stack([p for p, _ in members]), tree.stack([s for _, s in members])
    x = _normal(getkey(), 4, 2, 3)  # shared by every member
    ys, _ = torch.func.vmap(lambda p, s: norm.batch_norm(p, s, x, train=False))(params, state)
    for i, (p, s) in enumerate(members):
        torch.testing.assert_close(ys[i], norm.batch_norm(p, s, x, train=False)[0], **TOL)


def test_batch_norm_grad_under_torch_func_matches_nn_batch_norm2d_backward(getkey):
    params, state = _affine(getkey, 3), _bn_state(getkey, 3)
    x = _normal(getkey(), 4, 3, 2, 2)
    target = _normal(getkey(), 4, 3, 2, 2)

    def loss(p, x):
        y, _ = norm.batch_norm(p, state, x, train=True)
        return ((y - target) ** 2).sum()

    grads, grad_x = torch.func.grad(loss, argnums=(0, 1))(params, x)

    bn = _torch_bn(params, state).train()
    x_ref = x.clone().requires_grad_()
    ((bn(x_ref) - target) ** 2).sum().backward()
    torch.testing.assert_close(grads["scale"], bn.weight.grad, **TOL)
    torch.testing.assert_close(grads["bias"], bn.bias.grad, **TOL)
    torch.testing.assert_close(grad_x, x_ref.grad, **TOL)


def test_batch_norm_new_state_carries_no_gradient(getkey):
    params, state = _affine(getkey, 2), _bn_state(getkey, 2)
    x = _normal(getkey(), 3, 2).requires_grad_()
    _, new_state = norm.batch_norm(params, state, x, train=True)
    assert not new_state["mean"].requires_grad and not new_state["var"].requires_grad


def test_batch_norm_train_gradcheck(getkey):
    params, state = _affine(getkey, 2, F64), _bn_state(getkey, 2, F64)
    x = _normal(getkey(), 3, 2, 2, dtype=F64)
    _assert_gradcheck(lambda scale, bias, x: norm.batch_norm({"scale": scale, "bias": bias}, state, x,
                                                             train=True)[0], {**params, "x": x})


def test_batch_norm_eval_gradcheck(getkey):
    params, state = _affine(getkey, 2, F64), _bn_state(getkey, 2, F64)
    x = _normal(getkey(), 3, 2, 2, dtype=F64)
    _assert_gradcheck(lambda scale, bias, x: norm.batch_norm({"scale": scale, "bias": bias}, state, x,
                                                             train=False)[0], {**params, "x": x})


def test_batch_norm_training_on_one_value_per_channel_raises_shape_error():
    params, state = norm.init_batch_norm(3)
    with pytest.raises(ShapeError, match="more than one value per channel"):
        norm.batch_norm(params, state, torch.zeros(1, 3), train=True)


def test_batch_norm_keeps_bfloat16_inputs_in_bfloat16(getkey):
    params, state = norm.init_batch_norm(2)
    x = _normal(getkey(), 4, 2, 3).to(torch.bfloat16)
    y, new_state = norm.batch_norm(params, state, x, train=True)
    assert y.dtype == torch.bfloat16 and new_state["var"].dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_batch_norm_fused_kernel_equals_the_plain_formula_in_value_and_state(getkey, dtype):
    params, state = norm.init_batch_norm(3)
    params = _affine(getkey, 3)
    x = (_normal(getkey(), 5, 3, 4, 4) * 3.0 + 2.0).to(dtype)
    y, new_state = norm.batch_norm(params, state, x, train=True, momentum=0.3)
    y_ref, mu, var = _plain_batch_norm(params, x)
    assert y.dtype == dtype and new_state["var"].dtype == torch.float32
    torch.testing.assert_close(y.float(), y_ref.float(), atol=1e-5 if dtype == torch.float32 else 2e-2, rtol=0)
    torch.testing.assert_close(new_state["mean"], 0.7 * state["mean"] + 0.3 * mu, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(new_state["var"], 0.7 * state["var"] + 0.3 * var * (80 / 79), atol=1e-6, rtol=1e-5)


def test_batch_norm_fused_kernel_gradients_equal_the_plain_formula_in_float64(getkey):
    params, state = _affine(getkey, 3, F64), _bn_state(getkey, 3, F64)
    x, g = _normal(getkey(), 4, 3, 3, 2, dtype=F64), _normal(getkey(), 4, 3, 3, 2, dtype=F64)

    def fused(p, x):
        return (norm.batch_norm(p, state, x, train=True)[0] * g).sum()

    def plain(p, x):
        return (_plain_batch_norm(p, x)[0] * g).sum()

    got = torch.func.grad(fused, argnums=(0, 1))(params, x)
    want = torch.func.grad(plain, argnums=(0, 1))(params, x)
    assert tree.allclose(got, want, atol=1e-10, rtol=1e-10)


def test_batch_norm_running_variance_of_a_constant_channel_is_not_negative():
    params, state = norm.init_batch_norm(2)
    x = torch.full((4, 2, 3, 3), 7.0)  # sigma^2 = 0 exactly; 1/invstd^2 - eps may round below 0
    _, new_state = norm.batch_norm(params, state, x, train=True, momentum=1.0)
    assert bool((new_state["var"] >= 0).all())
    torch.testing.assert_close(new_state["mean"], torch.full((2,), 7.0))


def test_batch_norm_float64_input_with_float32_params_uses_the_plain_formula(getkey):
    params, state = norm.init_batch_norm(2)
    x = _normal(getkey(), 4, 2, 3, dtype=F64)
    y, _ = norm.batch_norm(params, state, x, train=True)
    assert y.dtype == F64
    torch.testing.assert_close(y, _plain_batch_norm(params, x)[0], atol=1e-12, rtol=0)


# =========================================================================== shape errors


@pytest.mark.parametrize("call,fragments", [
    (lambda: norm.layer_norm(norm.init_layer_norm(4), torch.zeros(2, 5)),
     ["layer_norm: x: expected shape [... d=4]", "got [2, 5]"]),
    (lambda: norm.group_norm(norm.init_group_norm(4), torch.zeros(2, 3, 5), groups=2),
     ["group_norm: x: expected shape [b", "c=4 _]", "got [2, 3, 5]"]),
    (lambda: norm.instance_norm(norm.init_instance_norm(4), torch.zeros(2, 3, 5, 5)),
     ["instance_norm: x: expected shape [b", "c=4 _ _]", "got [2, 3, 5, 5]"]),
    (lambda: norm.batch_norm(*norm.init_batch_norm(4), torch.zeros(2, 3, 5, 5), train=True),
     ["batch_norm: x: expected shape [b", "c=4 _ _]", "got [2, 3, 5, 5]"]),
    (lambda: norm.batch_norm(*norm.init_batch_norm(4), torch.zeros(4), train=True),
     ["batch_norm: x: expected shape [b c=4 ...]", "got [4]"]),
    (lambda: norm.batch_norm(norm.init_batch_norm(4)[0], norm.init_batch_norm(3)[1], torch.zeros(2, 4), train=True),
     ["batch_norm: state['mean']: expected shape [c=4]", "got [3]"]),
    (lambda: norm.layer_norm({"scale": torch.ones(4), "bias": torch.zeros(3)}, torch.zeros(2, 4)),
     ["layer_norm: params['bias']: expected shape [c=4]", "got [3]"]),
], ids=["layer_norm", "group_norm", "instance_norm", "batch_norm", "batch_norm_rank", "batch_norm_state",
        "layer_norm_params"])
def test_shape_error_names_the_layer_and_both_shapes(call, fragments):
    with pytest.raises(ShapeError) as info:
        call()
    for fragment in fragments:
        assert fragment in str(info.value)
