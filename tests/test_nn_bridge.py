"""from_module: any nn.Module as pure `(params, state, apply)`, equal to the module itself."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from funcml import random, tree
from funcml.errors import ShapeError
from funcml.nn.bridge import from_module


def _net(key: torch.Tensor) -> nn.Sequential:
    """Conv2d(2->3, 3x3) -> BatchNorm2d -> ReLU -> Flatten -> Linear(48 -> 5), for x: [B, 2, 6, 6].

    Every parameter and the BatchNorm running statistics are overwritten from `key`, so the
    module does not depend on torch's global RNG (which is forked around construction).
    """
    with torch.random.fork_rng():
        net = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 5))
    named = dict(net.named_parameters()) | {"1.running_mean": net[1].running_mean, "1.running_var": net[1].running_var}
    keys = random.split(key, len(named))
    with torch.no_grad():
        for k, (name, t) in zip(keys, named.items()):
            if name == "1.running_var":
                t.copy_(random.uniform(k, t.shape, 0.5, 2.0))
            else:
                t.copy_(0.5 * random.normal(k, t.shape))
    return net


def _x(key: torch.Tensor) -> torch.Tensor:
    return random.normal(key, (4, 2, 6, 6))


def _snapshot(net: nn.Module) -> tuple:
    return (
        {n: (p, p.detach().clone()) for n, p in net.named_parameters()},
        {n: (b, b.detach().clone()) for n, b in net.named_buffers()},
        [m.training for m in net.modules()],
    )


def _assert_untouched(net: nn.Module, snap: tuple) -> None:
    params, buffers, flags = snap
    for n, p in net.named_parameters():
        assert p is params[n][0], f"parameter {n} was replaced"
        assert torch.equal(p, params[n][1]), f"parameter {n} was modified"
    for n, b in net.named_buffers():
        assert b is buffers[n][0], f"buffer {n} was replaced"
        assert torch.equal(b, buffers[n][1]), f"buffer {n} was modified"
    assert [m.training for m in net.modules()] == flags


def test_params_and_state_are_nested_dicts_with_the_module_names(key):
    net = _net(key)
    params, state, _ = from_module(net)
    assert set(params) == {"0", "1", "4"} and set(params["0"]) == {"weight", "bias"}
    assert list(tree.flatten_with_names(params)) == [n for n, _ in net.named_parameters()]
    assert list(tree.flatten_with_names(state)) == ["1.running_mean", "1.running_var", "1.num_batches_tracked"]
    assert tree.equal(tree.unflatten_from_names(tree.flatten_with_names(params)), params)
    for n, p in net.named_parameters():
        leaf = tree.flatten_with_names(params)[n]
        assert torch.equal(leaf, p) and leaf.data_ptr() != p.data_ptr() and not leaf.requires_grad


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_apply_equals_the_module_forward(key, getkey, train):
    net = _net(key)
    params, state, apply = from_module(net)
    x = _x(getkey())
    ref = copy.deepcopy(net).train(train)
    out, _ = apply(params, state, x, train=train)
    torch.testing.assert_close(out, ref(x), rtol=0, atol=0)


def test_apply_never_mutates_the_module(key, getkey):
    net = _net(key).eval()
    snap = _snapshot(net)
    params, state, apply = from_module(net)
    x = _x(getkey())
    apply(params, state, x, train=True)
    apply(params, state, x, train=False)
    torch.func.grad(lambda p: apply(p, state, x, train=True)[0].sum())(params)
    _assert_untouched(net, snap)
    net.train()
    snap = _snapshot(net)
    apply(params, state, x, train=False)
    _assert_untouched(net, snap)


def test_train_mode_returns_new_running_stats_equal_to_the_module_own(key, getkey):
    net = _net(key)
    params, state, apply = from_module(net)
    state_before = tree.tree_map(torch.clone, state)
    x = _x(getkey())
    ref = copy.deepcopy(net).train()
    ref(x)
    _, new_state = apply(params, state, x, train=True)
    assert tree.equal(new_state, tree.unflatten_from_names(dict(ref.named_buffers())))
    assert int(new_state["1"]["num_batches_tracked"]) == 1
    assert not torch.equal(new_state["1"]["running_mean"], state["1"]["running_mean"])
    assert tree.equal(state, state_before), "the state passed in was modified"


def test_eval_mode_returns_the_state_unchanged(key, getkey):
    net = _net(key)
    params, state, apply = from_module(net)
    _, new_state = apply(params, state, _x(getkey()), train=False)
    assert tree.equal(new_state, state)


def test_grad_wrt_params_equals_autograd_on_the_module(key, getkey):
    net = _net(key)
    params, state, apply = from_module(net)
    x, target = _x(getkey()), random.normal(getkey(), (4, 5))

    def loss(p):
        out, new_state = apply(p, state, x, train=True)
        return (out - target).square().mean(), new_state

    grads, _ = torch.func.grad(loss, has_aux=True)(params)
    ref = copy.deepcopy(net).train()
    (ref(x) - target).square().mean().backward()
    expected = tree.unflatten_from_names({n: p.grad for n, p in ref.named_parameters()})
    assert tree.first_difference(grads, expected, rtol=1e-6, atol=1e-7) is None


def test_apply_with_foreign_param_names_is_a_shape_error(key, getkey):
    params, state, apply = from_module(_net(key))
    bad = {**params, "head": params["4"]}
    del bad["4"]
    with pytest.raises(ShapeError, match=r"missing \['4.weight', '4.bias'\].*unexpected"):
        apply(bad, state, _x(getkey()))


def test_module_without_buffers_has_empty_state(key):
    with torch.random.fork_rng():
        lin = nn.Linear(3, 2)
    params, state, apply = from_module(lin)
    x = random.normal(key, (5, 3))
    out, new_state = apply(params, state, x)
    assert state == {} and new_state == {}
    torch.testing.assert_close(out, lin(x), rtol=0, atol=0)
