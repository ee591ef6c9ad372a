"""The model contract, the registry, the reference MLP and CNN, ensembles and per-example grads."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from funcml import compiler, random, tree
from funcml.errors import ConfigError, PRNGKeyError, ShapeError
from funcml.nn import ensemble, model
from funcml.nn.reference import CNN, MLP, CNNConfig, MLPConfig, apply_cnn, apply_mlp, init_cnn, init_mlp

TINY_MLP = MLPConfig(in_dim=3, hidden=(4, 5), out_dim=2, dropout=0.25)
TINY_CNN = CNNConfig(in_channels=2, channels=(3, 4), num_classes=3)


def _mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (out - y).square().mean()


def _torch_mlp(params, cfg: MLPConfig) -> nn.Sequential:
    """The same MLP in torch.nn, loaded with funcml's params (`nn.Linear` stores `w.T`)."""
    mods = []
    for i in range(len(cfg.hidden) + 1):
        layer = params["layers"][str(i)]
        lin = nn.Linear(*layer["w"].shape, device="meta").to_empty(device="cpu")
        with torch.no_grad():
            lin.weight.copy_(layer["w"].T)
            lin.bias.copy_(layer["b"])
        mods += [lin, nn.ReLU()]
    return nn.Sequential(*mods[:-1])


def _torch_cnn(params, state, cfg: CNNConfig) -> nn.Sequential:
    """The same CNN in torch.nn: [Conv2d(3x3, stride 2, pad 1, no bias), BatchNorm2d, ReLU] * L, pool, Linear."""
    mods, cin = [], cfg.in_channels
    for i, cout in enumerate(cfg.channels):
        block, bn_state = params["blocks"][str(i)], state["blocks"][str(i)]["norm"]
        conv = nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False, device="meta").to_empty(device="cpu")
        bn = nn.BatchNorm2d(cout, device="meta").to_empty(device="cpu")
        with torch.no_grad():
            conv.weight.copy_(block["conv"]["w"])
            bn.weight.copy_(block["norm"]["scale"])
            bn.bias.copy_(block["norm"]["bias"])
            bn.running_mean.copy_(bn_state["mean"])
            bn.running_var.copy_(bn_state["var"])
            bn.num_batches_tracked.zero_()
        mods += [conv, bn, nn.ReLU()]
        cin = cout
    head = nn.Linear(cin, cfg.num_classes, device="meta").to_empty(device="cpu")
    with torch.no_grad():
        head.weight.copy_(params["head"]["w"].T)
        head.bias.copy_(params["head"]["b"])
    return nn.Sequential(*mods, nn.AdaptiveAvgPool2d(1), nn.Flatten(), head)


# ------------------------------------------------------------------------------ MLP


def test_mlp_params_are_numbered_dense_layers(key):
    params, state = init_mlp(key, MLPConfig(in_dim=8, hidden=(32, 32), out_dim=1))
    shapes = {n: list(t.shape) for n, t in tree.flatten_with_names(params).items()}
    assert shapes == {"layers.0.w": [8, 32], "layers.0.b": [32], "layers.1.w": [32, 32], "layers.1.b": [32],
                      "layers.2.w": [32, 1], "layers.2.b": [1]}
    assert state == {}


def test_mlp_apply_equals_torch_linear_relu_stack(key, getkey):
    cfg = MLPConfig(in_dim=8, hidden=(32, 32), out_dim=1)
    params, state = init_mlp(key, cfg)
    x = random.normal(getkey(), (5, 8))
    y, new_state = apply_mlp(params, state, x, cfg)
    assert y.shape == (5, 1) and new_state == {}
    torch.testing.assert_close(y, _torch_mlp(params, cfg)(x))


def test_mlp_rejects_wrong_feature_dim_naming_the_model(key):
    params, state = init_mlp(key, TINY_MLP)
    with pytest.raises(ShapeError, match=r"MLP input x: expected shape \[b=2 d=3\], got \[2, 4\]"):
        apply_mlp(params, state, torch.zeros(2, 4), TINY_MLP)


def test_mlp_config_rejects_bad_values():
    with pytest.raises(ConfigError, match="dropout"):
        MLPConfig(dropout=1.0)
    with pytest.raises(ConfigError, match="activation"):
        MLPConfig(activation="swoosh")
    with pytest.raises(ConfigError, match="hidden must be a tuple"):
        MLPConfig(hidden=[32])


# ------------------------------------------------------------------------------ CNN


def test_cnn_params_state_and_output_shapes(key, getkey):
    cfg = CNNConfig()
    params, state = init_cnn(key, cfg)
    shapes = {n: list(t.shape) for n, t in tree.flatten_with_names(params).items()}
    assert shapes == {"blocks.0.conv.w": [8, 1, 3, 3], "blocks.0.norm.scale": [8], "blocks.0.norm.bias": [8],
                      "blocks.1.conv.w": [16, 8, 3, 3], "blocks.1.norm.scale": [16], "blocks.1.norm.bias": [16],
                      "head.w": [16, 10], "head.b": [10]}
    assert list(tree.flatten_with_names(state)) == ["blocks.0.norm.mean", "blocks.0.norm.var",
                                                    "blocks.1.norm.mean", "blocks.1.norm.var"]
    logits, _ = apply_cnn(params, state, random.normal(getkey(), (2, 1, 12, 12)), cfg)
    assert logits.shape == (2, 10)


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_cnn_equals_torch_conv_batchnorm_stack(key, getkey, train):
    params, state = init_cnn(key, TINY_CNN)
    # Non-trivial running statistics, so that eval mode is a real check.
    state = tree.tree_map(lambda t: t + random.uniform(getkey(), t.shape, 0.1, 0.5), state)
    x = random.normal(getkey(), (3, 2, 7, 7))
    ref = _torch_cnn(params, state, TINY_CNN).train(train)
    logits, new_state = apply_cnn(params, state, x, TINY_CNN, train=train)
    torch.testing.assert_close(logits, ref(x))
    for i in range(len(TINY_CNN.channels)):
        bn = ref[3 * i + 1]
        torch.testing.assert_close(new_state["blocks"][str(i)]["norm"]["mean"], bn.running_mean)
        torch.testing.assert_close(new_state["blocks"][str(i)]["norm"]["var"], bn.running_var)


def test_cnn_train_mode_returns_new_bn_state_and_keeps_the_input_state(key, getkey):
    params, state = init_cnn(key, TINY_CNN)
    before = tree.tree_map(torch.clone, state)
    _, new_state = apply_cnn(params, state, random.normal(getkey(), (3, 2, 6, 6)), TINY_CNN, train=True)
    assert tree.equal(state, before), "apply modified the state it was given"
    assert tree.structure(new_state) == tree.structure(state)
    assert not torch.equal(new_state["blocks"]["0"]["norm"]["mean"], state["blocks"]["0"]["norm"]["mean"])


def test_cnn_eval_mode_returns_the_state_unchanged(key, getkey):
    params, state = init_cnn(key, TINY_CNN)
    _, new_state = apply_cnn(params, state, random.normal(getkey(), (3, 2, 6, 6)), TINY_CNN, train=False)
    assert tree.equal(new_state, state)


def test_cnn_without_norm_has_conv_bias_and_empty_state(key, getkey):
    cfg = dataclasses.replace(TINY_CNN, norm="none")
    params, state = init_cnn(key, cfg)
    assert state == {} and set(params["blocks"]["0"]) == {"conv"} and "b" in params["blocks"]["0"]["conv"]
    logits, new_state = apply_cnn(params, state, random.normal(getkey(), (1, 2, 5, 5)), cfg, train=True)
    assert logits.shape == (1, 3) and new_state == {}


def test_cnn_rejects_wrong_channel_count_naming_the_model(key):
    params, state = init_cnn(key, TINY_CNN)
    with pytest.raises(ShapeError, match=r"CNN input x: expected shape \[b=1 c=2 h w\], got \[1, 3, 8, 8\]"):
        apply_cnn(params, state, torch.zeros(1, 3, 8, 8), TINY_CNN)


def test_cnn_config_rejects_unknown_norm():
    with pytest.raises(ConfigError, match="^CNNConfig: norm must be one of 'batch', 'none', got 'layer'$"):
        CNNConfig(norm="layer")


# ------------------------------------------------------------------------------ contract


@pytest.mark.parametrize("cfg", [TINY_MLP, TINY_CNN], ids=["mlp", "cnn"])
def test_init_is_a_pure_function_of_the_key(cfg):
    a, b, c = model.init(random.key(7), cfg), model.init(random.key(7), cfg), model.init(random.key(8), cfg)
    assert tree.equal(a, b)
    assert all(not torch.equal(x, y) for x, y in zip(tree.leaves(a[0]), tree.leaves(c[0]))
               if x.unique().numel() > 1), "a different key gave an identical weight"


def test_dropout_output_is_a_pure_function_of_the_key(key, getkey):
    params, state = init_mlp(key, TINY_MLP)
    x = random.normal(getkey(), (6, 3))
    k1, k2 = random.split(getkey())
    y1, _ = apply_mlp(params, state, x, TINY_MLP, key=k1, train=True)
    y1_again, _ = apply_mlp(params, state, x, TINY_MLP, key=k1.clone(), train=True)
    y2, _ = apply_mlp(params, state, x, TINY_MLP, key=k2, train=True)
    assert torch.equal(y1, y1_again)
    assert not torch.equal(y1, y2)


def test_eval_mode_ignores_dropout_and_needs_no_key(key, getkey):
    params, state = init_mlp(key, TINY_MLP)
    x = random.normal(getkey(), (6, 3))
    y_nokey, _ = apply_mlp(params, state, x, TINY_MLP)
    y_key, _ = apply_mlp(params, state, x, TINY_MLP, key=getkey())
    no_dropout = dataclasses.replace(TINY_MLP, dropout=0.0)
    assert torch.equal(y_nokey, y_key)
    assert torch.equal(y_nokey, apply_mlp(params, state, x, no_dropout, train=True)[0])


@pytest.mark.parametrize("cfg", [TINY_MLP, dataclasses.replace(TINY_CNN, dropout=0.5)], ids=["mlp", "cnn"])
def test_train_with_dropout_and_no_key_is_a_prng_key_error(key, cfg):
    params, state = model.init(key, cfg)
    x = torch.zeros(2, 3) if isinstance(cfg, MLPConfig) else torch.zeros(2, 2, 4, 4)
    name = "MLP" if isinstance(cfg, MLPConfig) else "CNN"
    with pytest.raises(PRNGKeyError, match=f"{name}: train=True with dropout needs a PRNG key"):
        model.apply(params, state, x, cfg, train=True)


def test_init_and_train_apply_leave_torch_global_rng_untouched(key, getkey):
    cnn = dataclasses.replace(TINY_CNN, dropout=0.5)
    before = torch.random.get_rng_state()
    params, state = model.init(key, TINY_MLP)
    model.apply(params, state, random.normal(getkey(), (4, 3)), TINY_MLP, key=getkey(), train=True)
    params, state = model.init(key, cnn)
    model.apply(params, state, random.normal(getkey(), (2, 2, 4, 4)), cnn, key=getkey(), train=True)
    assert torch.equal(torch.random.get_rng_state(), before)


# ------------------------------------------------------------------------------ registry


@dataclasses.dataclass(frozen=True)
class _AffineConfig:
    dim: int = 3


def _init_affine(key, cfg):
    return {"w": random.normal(key, (cfg.dim,))}, {}


def _apply_affine(params, state, x, cfg, *, key=None, train=False):
    return x * params["w"], state


def test_registry_routes_by_config_class(key, getkey):
    assert model.get(MLPConfig()) is MLP and MLP == model.Model(init_mlp, apply_mlp)
    assert model.get(CNNConfig) is CNN
    assert {MLPConfig, CNNConfig} <= set(model.registered())
    x = random.normal(getkey(), (2, 3))
    params, state = model.init(key, TINY_MLP)
    assert tree.equal((params, state), init_mlp(key, TINY_MLP))
    assert torch.equal(model.apply(params, state, x, TINY_MLP)[0], apply_mlp(params, state, x, TINY_MLP)[0])


def test_registering_a_variant_makes_the_dispatchers_route_to_it(key):
    affine = model.register(_AffineConfig, _init_affine, _apply_affine)
    assert model.register(_AffineConfig, _init_affine, _apply_affine) == affine  # idempotent
    params, state = model.init(key, _AffineConfig())
    out, _ = model.apply(params, state, torch.ones(2, 3), _AffineConfig())
    assert torch.equal(out, params["w"].expand(2, 3))


def test_registering_a_second_model_for_a_class_is_a_config_error():
    with pytest.raises(ConfigError, match="MLPConfig already has a model"):
        model.register(MLPConfig, _init_affine, _apply_affine)


def test_register_needs_a_frozen_dataclass():
    @dataclasses.dataclass
    class Mutable:
        dim: int = 3

    with pytest.raises(ConfigError, match="frozen dataclass"):
        model.register(Mutable, _init_affine, _apply_affine)


def test_unknown_config_is_a_config_error_listing_the_registered_classes(key):
    @dataclasses.dataclass(frozen=True)
    class Unregistered:
        dim: int = 1

    with pytest.raises(ConfigError, match=r"no model is registered for config class Unregistered; "
                                          r"registered: \[.*MLPConfig, CNNConfig.*\]"):
        model.init(key, Unregistered())


# ------------------------------------------------------------------------------ gradients, compile


def _gradcheck_wrt_params(noise_key, apply_fn, params, state, x, cfg, **kw) -> bool:
    """gradcheck w.r.t. every param leaf, in float64. The leaves are shifted by noise so that
    the zero-initialized biases put no ReLU input exactly on its kink (where the finite
    difference sees slope 1/2 and autograd 0)."""
    named = tree.flatten_with_names(tree.cast(params, torch.float64))
    keys = random.split(noise_key, len(named))
    named = {n: t + 0.1 * random.normal(k, t.shape, dtype=t.dtype) for k, (n, t) in zip(keys, named.items())}
    names = list(named)

    def f(*leaves):
        return apply_fn(tree.unflatten_from_names(dict(zip(names, leaves))), state, x, cfg, **kw)[0]

    inputs = tuple(t.detach().requires_grad_() for t in named.values())
    return torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-5)


def test_mlp_apply_passes_gradcheck_wrt_params(key, getkey):
    params, state = init_mlp(key, TINY_MLP)
    x = random.normal(getkey(), (3, 3), dtype=torch.float64)
    assert _gradcheck_wrt_params(getkey(), apply_mlp, params, state, x, TINY_MLP, key=getkey(), train=True)


def test_cnn_apply_passes_gradcheck_wrt_params_in_train_mode(key, getkey):
    cfg = dataclasses.replace(TINY_CNN, channels=(2, 3))
    params, state = init_cnn(key, cfg)
    state = tree.cast(state, torch.float64)
    x = random.normal(getkey(), (2, 2, 5, 5), dtype=torch.float64)
    assert _gradcheck_wrt_params(getkey(), apply_cnn, params, state, x, cfg, train=True)


@pytest.mark.compile
def test_mlp_compiled_fullgraph_matches_eager_forward_and_grad(key, getkey):
    """One compiled graph gives the forward (as aux) and the `torch.func.grad` of the loss.

    Compile time on 2 CPU cores: ~5 s with a warm inductor cache, ~30 s cold on a busy
    machine. Without dropout: with it, the Threefry key math makes inductor compile for
    minutes on CPU (the numbers still agree bit for bit), far over this file's budget.
    """
    cfg = dataclasses.replace(TINY_MLP, dropout=0.0)
    params, state = init_mlp(key, cfg)
    x, y = random.normal(getkey(), (6, 3)), random.normal(getkey(), (6, 2))

    def loss(p, x, y):
        out, _ = model.apply(p, {}, x, cfg, train=True)
        return _mse(out, y), out

    def grad_and_forward(p, x, y):
        return torch.func.grad(loss, has_aux=True)(p, x, y)

    grads_c, out_c = compiler.compile(grad_and_forward)(params, x, y)
    grads_e, out_e = grad_and_forward(params, x, y)
    torch.testing.assert_close(out_c, out_e, rtol=1e-5, atol=1e-5)
    assert tree.first_difference(grads_c, grads_e, rtol=1e-5, atol=1e-5) is None


# ------------------------------------------------------------------------------ ensembles


def test_init_ensemble_by_vmap_equals_a_loop_and_members_differ(getkey):
    keys = random.split(getkey(), 3)
    stacked = ensemble.init_ensemble(init_cnn, keys, TINY_CNN)
    assert tree.equal(stacked, ensemble.init_ensemble(init_cnn, keys, TINY_CNN, method="loop"))
    assert tree.equal(stacked, tree.stack([init_cnn(k, TINY_CNN) for k in keys]))
    w = stacked[0]["blocks"]["0"]["conv"]["w"]
    assert w.shape == (3, 3, 2, 3, 3) and not torch.equal(w[0], w[1]) and not torch.equal(w[1], w[2])
    var = stacked[1]["blocks"]["0"]["norm"]["var"]
    assert var.stride(0) != 0, "members of the BatchNorm state share one storage"


def test_apply_ensemble_with_dropout_equals_a_loop_over_members(getkey):
    keys, step_keys = random.split(getkey(), 3), random.split(getkey(), 3)
    params, state = ensemble.init_ensemble(init_mlp, keys, TINY_MLP)
    x = random.normal(getkey(), (5, 3))
    out, _ = ensemble.apply_ensemble(apply_mlp, params, state, x, TINY_MLP, keys=step_keys, train=True)
    loop = torch.stack([apply_mlp(p, {}, x, TINY_MLP, key=k, train=True)[0]
                        for p, k in zip(tree.unstack(params), step_keys)])
    assert out.shape == (3, 5, 2)
    torch.testing.assert_close(out, loop, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(out[0], out[1]) and not torch.allclose(out[1], out[2])


def test_apply_ensemble_with_per_member_inputs_and_bn_state_equals_a_loop(getkey):
    keys = random.split(getkey(), 2)
    params, state = ensemble.init_ensemble(init_cnn, keys, TINY_CNN)
    xs = random.normal(getkey(), (2, 3, 2, 6, 6))  # [N, B, C, H, W]
    out, new_state = ensemble.apply_ensemble(apply_cnn, params, state, xs, TINY_CNN, train=True, in_dims_x=0)
    loop = [apply_cnn(p, s, x, TINY_CNN, train=True) for p, s, x in zip(tree.unstack(params), tree.unstack(state), xs)]
    torch.testing.assert_close(out, torch.stack([o for o, _ in loop]), rtol=1e-6, atol=1e-6)
    assert tree.allclose(new_state, tree.stack([s for _, s in loop]), rtol=1e-6, atol=1e-6)


def test_apply_ensemble_needs_one_key_per_member(getkey):
    params, state = ensemble.init_ensemble(init_mlp, random.split(getkey(), 3), TINY_MLP)
    with pytest.raises(PRNGKeyError, match="keys has 2 rows but the ensemble has 3 members"):
        ensemble.apply_ensemble(apply_mlp, params, state, torch.zeros(1, 3), TINY_MLP,
                                keys=random.split(getkey(), 2), train=True)


def test_ensemble_grad_and_value_equals_per_member_grads(getkey):
    params, state = ensemble.init_ensemble(init_mlp, random.split(getkey(), 3), TINY_MLP)
    x, y, step_keys = random.normal(getkey(), (5, 3)), random.normal(getkey(), (5, 2)), random.split(getkey(), 3)

    def loss_fn(p, batch, k):
        out, _ = apply_mlp(p, {}, batch[0], TINY_MLP, key=k, train=True)
        return _mse(out, batch[1])

    grads, loss = ensemble.ensemble_grad_and_value(loss_fn, args_in_dims=(None, 0))(params, (x, y), step_keys)
    members = [torch.func.grad_and_value(loss_fn)(p, (x, y), k) for p, k in zip(tree.unstack(params), step_keys)]
    assert loss.shape == (3,)
    torch.testing.assert_close(loss, torch.stack([v for _, v in members]), rtol=1e-6, atol=1e-6)
    assert tree.allclose(grads, tree.stack([g for g, _ in members]), rtol=1e-6, atol=1e-6)


def test_per_example_grads_equal_a_loop_of_single_example_grads(key, getkey):
    cfg = dataclasses.replace(TINY_MLP, dropout=0.0)
    params, _ = init_mlp(key, cfg)
    x, y = random.normal(getkey(), (4, 3)), random.normal(getkey(), (4, 2))

    def loss_fn(p, batch):
        return _mse(apply_mlp(p, {}, batch[0], cfg)[0], batch[1])

    grads = ensemble.per_example_grads(loss_fn, params, (x, y))
    loop = tree.stack([torch.func.grad(loss_fn)(params, (x[i:i + 1], y[i:i + 1])) for i in range(4)])
    assert tree.flatten_with_names(grads)["layers.0.w"].shape == (4, 3, 4)
    assert tree.allclose(grads, loop, rtol=1e-6, atol=1e-6)
    full = torch.func.grad(loss_fn)(params, (x, y))
    assert tree.allclose(tree.tree_map(lambda g: g.mean(0), grads), full, rtol=1e-5, atol=1e-6)
