"""funcml.optim: equations, equivalence with torch.optim, schedules, purity, compile, vmap."""

from __future__ import annotations

import math

import pytest
import torch
from torch.func import vmap

from funcml import compiler, optim, random, tree
from funcml.errors import ConfigError, ShapeError

STEPS = 50


def _params(key, dtype=torch.float64):
    """A small model: two matrices that decay by default, a bias and a norm scale that do not."""
    k = random.split(key, 4)
    return {
        "emb": random.normal(k[0], (5, 3), dtype=dtype),
        "lin": {"w": random.normal(k[1], (4, 3), dtype=dtype), "b": random.normal(k[2], (4,), dtype=dtype)},
        "norm": {"scale": 1.0 + 0.1 * random.normal(k[3], (3,), dtype=dtype)},
    }


def _grad_sequence(key, like, steps=STEPS):
    """A fixed sequence of `steps` gradients shaped like `like`: normal noise with a per-leaf
    scale, so that Adam's per-coordinate normalisation and the global norm both matter."""
    named = tree.flatten_with_names(like)
    per_leaf = {name: (0.1 + i) * random.normal(random.fold_in(key, i), (steps, *p.shape), dtype=p.dtype)
                for i, (name, p) in enumerate(named.items())}
    return [tree.unflatten_from_names({n: g[t] for n, g in per_leaf.items()}, like=like) for t in range(steps)]


def _run(tx, params, grads, fused=False):
    """`len(grads)` steps: `update` + `apply_updates`, or (fused) `update_and_apply`."""
    state = tx.init(params)
    for g in grads:
        if fused:
            params, state = optim.update_and_apply(tx, g, state, params)
        else:
            updates, state = tx.update(g, state, params)
            params = optim.apply_updates(params, updates)
    return params, state


VIA = pytest.mark.parametrize("fused", [False, True], ids=["update_then_apply", "fused_apply"])


def _run_torch(make_opt, params, grads, decayed):
    """The same gradients through a torch.optim optimizer; `decayed(name)` picks the decay group."""
    named = {n: torch.nn.Parameter(p.clone()) for n, p in tree.flatten_with_names(params).items()}
    opt = make_opt([n for n in named if decayed(n)], [n for n in named if not decayed(n)], named)
    for g in grads:
        for n, gn in tree.flatten_with_names(g).items():
            named[n].grad = gn.clone()
        opt.step()
    return tree.unflatten_from_names({n: p.detach() for n, p in named.items()}, like=params)


def _assert_close(ours, ref, atol):
    diff = tree.first_difference(ours, ref, rtol=0.0, atol=atol)
    if diff is not None and diff in tree.flatten_with_names(ours):
        gap = (tree.flatten_with_names(ours)[diff] - tree.flatten_with_names(ref)[diff]).abs().max().item()
        diff = f"{diff} (max |difference| {gap:.3g} > {atol})"
    assert diff is None, diff


# --- equivalence with torch.optim -------------------------------------------------------------

@pytest.mark.parametrize("mask, decayed", [
    (None, lambda n: n in ("emb", "lin.w")),                          # default: ndim >= 2
    (("*.b", "emb"), lambda n: n in ("lin.w", "norm.scale")),         # names excluded from decay
], ids=["default_ndim_rule", "excluded_name_patterns"])
@VIA
def test_adamw_matches_torch_adamw_for_50_steps_with_param_groups(key, mask, decayed, fused):
    params = _params(key)
    grads = _grad_sequence(key, params)
    ours, _ = _run(optim.adamw(3e-2, b1=0.8, b2=0.99, eps=1e-8, weight_decay=0.1, mask=mask), params, grads,
                   fused)

    def make(decay, no_decay, named):
        return torch.optim.AdamW([{"params": [named[n] for n in decay]},
                                  {"params": [named[n] for n in no_decay], "weight_decay": 0.0}],
                                 lr=3e-2, betas=(0.8, 0.99), eps=1e-8, weight_decay=0.1)

    ref = _run_torch(make, params, grads, decayed)
    _assert_close(ours, ref, atol=1e-10)
    assert not tree.allclose(ours, params)  # the run really moved the params


@VIA
def test_adamw_float32_matches_torch_adamw_up_to_float32_rounding(key, fused):
    params = _params(key, torch.float32)
    grads = _grad_sequence(key, params)
    ours, _ = _run(optim.adamw(1e-2, weight_decay=0.05), params, grads, fused)

    def make(decay, no_decay, named):
        return torch.optim.AdamW([{"params": [named[n] for n in decay]},
                                  {"params": [named[n] for n in no_decay], "weight_decay": 0.0}],
                                 lr=1e-2, weight_decay=0.05)

    ref = _run_torch(make, params, grads, lambda n: n in ("emb", "lin.w"))
    # torch rounds p * (1 - lr wd) - lr u, we round p + (-lr (u + wd p)): over 50 steps the
    # last-bit differences at |p| ~ 2 (ulp 2.4e-7) add up to a few 1e-6
    _assert_close(ours, ref, atol=1e-5)


@VIA
def test_adam_matches_torch_adam_for_50_steps(key, fused):
    params = _params(key)
    grads = _grad_sequence(key, params)
    ours, state = _run(optim.adam(1e-2, b1=0.85, b2=0.995, eps=1e-6), params, grads, fused)
    ref = _run_torch(lambda d, nd, named: torch.optim.Adam(list(named.values()), lr=1e-2, betas=(0.85, 0.995),
                                                           eps=1e-6),
                     params, grads, lambda n: True)
    _assert_close(ours, ref, atol=1e-10)
    assert state[0].count.item() == STEPS


@pytest.mark.parametrize("momentum, nesterov, weight_decay", [
    (0.0, False, 0.0),
    (0.9, False, 0.0),
    (0.9, True, 0.0),
    (0.0, False, 1e-2),
    (0.9, True, 5e-2),
])
def test_sgd_matches_torch_sgd_for_50_steps(key, momentum, nesterov, weight_decay):
    params = _params(key)
    grads = _grad_sequence(key, params)
    ours, _ = _run(optim.sgd(1e-2, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay), params, grads)

    def make(decay, no_decay, named):
        return torch.optim.SGD([{"params": [named[n] for n in decay]},
                                {"params": [named[n] for n in no_decay], "weight_decay": 0.0}],
                               lr=1e-2, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)

    ref = _run_torch(make, params, grads, lambda n: n in ("emb", "lin.w"))
    _assert_close(ours, ref, atol=1e-10)


@pytest.mark.parametrize("max_norm", [1e3, 0.5], ids=["below_threshold", "above_threshold"])
def test_clip_by_global_norm_matches_torch_clip_grad_norm(key, max_norm):
    grads = _grad_sequence(key, _params(key), steps=1)[0]
    clipped, _ = optim.clip_by_global_norm(max_norm).update(grads, optim.EmptyState())

    named = {n: torch.nn.Parameter(torch.zeros_like(g)) for n, g in tree.flatten_with_names(grads).items()}
    for n, g in tree.flatten_with_names(grads).items():
        named[n].grad = g.clone()
    torch_norm = torch.nn.utils.clip_grad_norm_(list(named.values()), max_norm)

    ref = tree.unflatten_from_names({n: p.grad for n, p in named.items()}, like=grads)
    _assert_close(clipped, ref, atol=1e-6 * max_norm)
    assert torch.allclose(optim.global_norm(grads), torch_norm)
    assert optim.global_norm(clipped).item() == pytest.approx(min(max_norm, torch_norm.item()), rel=1e-9)


def test_clip_by_global_norm_leaves_zero_gradients_zero():
    grads = {"w": torch.zeros(2, 2), "b": torch.zeros(2)}
    clipped, _ = optim.clip_by_global_norm(1.0).update(grads, optim.EmptyState())
    assert tree.equal(clipped, grads)


def test_global_norm_is_the_norm_of_all_leaves_together():
    t = {"a": torch.tensor([3.0, 4.0]), "b": {"c": torch.tensor([[12.0]])}, "none": None}
    assert optim.global_norm(t).item() == 13.0


# --- hand-computed steps ---------------------------------------------------------------------

# --- the fused apply of adam / adamw -------------------------------------------------------------

def _clip_adamw():
    schedule = optim.warmup_cosine_decay_schedule(0.0, 1e-2, 5, STEPS)
    return optim.chain(optim.clip_by_global_norm(1.0), optim.adamw(schedule, weight_decay=0.1))


def test_fused_apply_equals_update_then_apply_in_params_and_the_whole_state(key):
    params = _params(key, torch.float32)
    grads = _grad_sequence(key, params, steps=20)
    fused_params, fused_state = _run(_clip_adamw(), params, grads, fused=True)
    chain_params, chain_state = _run(_clip_adamw(), params, grads, fused=False)
    assert tree.structure(fused_state) == tree.structure(chain_state)  # checkpoints stay interchangeable
    _assert_close(fused_params, chain_params, atol=2e-6)
    _assert_close(fused_state, chain_state, atol=2e-6)
    assert torch.equal(optim.current_lr(fused_state), optim.current_lr(chain_state))


@pytest.mark.parametrize("layout", ["grad_channels_last", "moments_transposed", "param_channels_last"])
def test_fused_apply_is_right_whatever_the_memory_layout_of_grads_params_and_moments(key, layout):
    # The fused kernel reads memory flat: a grad laid out unlike its param must be re-laid out.
    tx = optim.adamw(1e-2, weight_decay=0.1)
    k = random.split(key, 3)
    params = {"conv": random.normal(k[0], (4, 3, 3, 2)), "mat": random.normal(k[1], (5, 6))}
    grads = {"conv": random.normal(k[2], (4, 3, 3, 2)), "mat": random.normal(k[1], (5, 6)) * 0.5}
    state = tx.init(params)
    state = tx.update(grads, state, params)[1]  # non-zero moments
    if layout == "grad_channels_last":
        grads = {**grads, "conv": grads["conv"].contiguous(memory_format=torch.channels_last)}
    elif layout == "moments_transposed":
        adam = state[0]
        state = (adam._replace(mu={**adam.mu, "mat": adam.mu["mat"].t().contiguous().t()}), *state[1:])
    else:
        params = {**params, "conv": params["conv"].contiguous(memory_format=torch.channels_last)}
    fused_params, fused_state = optim.update_and_apply(tx, grads, state, params)
    updates, chain_state = tx.update(grads, state, params)
    _assert_close(fused_params, optim.apply_updates(params, updates), atol=1e-6)
    _assert_close(fused_state, chain_state, atol=1e-6)


def test_fused_apply_never_writes_to_its_inputs(key):
    tx = _clip_adamw()
    params = _params(key, torch.float32)
    state = tx.init(params)
    state = optim.update_and_apply(tx, _grad_sequence(key, params, steps=1)[0], state, params)[1]
    grads = _grad_sequence(random.fold_in(key, 1), params, steps=1)[0]
    before = tree.tree_map(torch.clone, (grads, state, params))
    new_params, new_state = optim.update_and_apply(tx, grads, state, params)
    assert tree.equal((grads, state, params), before)
    assert not tree.allclose(new_params, params)


def test_fused_apply_falls_back_to_the_chain_inside_vmap_and_under_autograd(key):
    tx = _clip_adamw()
    params = _params(key, torch.float32)
    grads = _grad_sequence(key, params, steps=1)[0]
    state = tx.init(params)
    want = optim.apply_updates(params, tx.update(grads, state, params)[0])
    stacked = tree.tree_map(lambda x: x.unsqueeze(0), (grads, state, params))
    got = vmap(lambda g, s, p: optim.update_and_apply(tx, g, s, p)[0])(*stacked)
    assert tree.equal(tree.tree_map(lambda x: x.squeeze(0), got), want)  # the chain's arithmetic, bit for bit
    live = tree.tree_map(lambda x: x.clone().requires_grad_(), params)
    moved, _ = optim.update_and_apply(tx, grads, state, live)
    assert tree.equal(tree.tree_map(torch.detach, moved), want)
    assert all(x.grad_fn is not None for x in tree.leaves(moved))     # differentiable through the update


@pytest.mark.parametrize("name,fused", [
    ("adamw", True), ("adam", True), ("clip_then_adamw", True), ("adamw_then_scale", False), ("sgd_momentum", False),
])
def test_update_and_apply_takes_the_fused_kernel_only_when_the_chain_ends_in_adam(key, name, fused):
    # The fused kernel rounds differently from `update` + `apply_updates` (equal to 1e-6, not bit
    # for bit); without it, and in reference mode, update_and_apply is exactly the chain.
    tx = {"adamw": optim.adamw(1e-2), "adam": optim.adam(1e-2),
          "clip_then_adamw": optim.chain(optim.clip_by_global_norm(1.0), optim.adamw(1e-2)),
          "adamw_then_scale": optim.chain(optim.adamw(1e-2), optim.scale(0.5)),
          "sgd_momentum": optim.sgd(1e-2, momentum=0.9)}[name]
    params = {"w": random.normal(key, (64, 33)), "b": random.normal(random.fold_in(key, 1), (33,))}
    grads = tree.tree_map(lambda x: 0.1 * x + 0.01, params)
    state = tx.update(grads, tx.init(params), params)[1]  # non-zero moments
    chain_result = optim.apply_updates(params, tx.update(grads, state, params)[0])
    got, _ = optim.update_and_apply(tx, grads, state, params)
    with compiler.reference_mode("adamw"):
        reference, _ = optim.update_and_apply(tx, grads, state, params)
    assert tree.equal(reference, chain_result)
    assert tree.allclose(got, chain_result, rtol=1e-6, atol=1e-6)
    assert tree.equal(got, chain_result) is not fused


def test_first_adam_step_moves_each_coordinate_by_lr_against_the_gradient_sign():
    params = {"w": torch.zeros(3, dtype=torch.float64)}
    grads = {"w": torch.tensor([2.0, -0.5, 1e-3], dtype=torch.float64)}
    tx = optim.adam(0.1, eps=0.0)
    updates, state = tx.update(grads, tx.init(params), params)
    # m̂_1 = g and v̂_1 = g^2 after bias correction, so u_1 = -lr * g / |g|
    assert torch.allclose(updates["w"], torch.tensor([-0.1, 0.1, -0.1], dtype=torch.float64), rtol=1e-12, atol=0)
    assert torch.allclose(state[0].mu["w"], 0.1 * grads["w"])
    assert torch.allclose(state[0].nu["w"], 0.001 * grads["w"] ** 2)


def test_adamw_decays_by_lr_times_weight_decay_times_param():
    # a zero gradient leaves Adam's direction at 0, so the step is the decay alone: -lr * wd * p
    params = {"w": torch.full((2, 2), 2.0, dtype=torch.float64), "b": torch.full((2,), 2.0, dtype=torch.float64)}
    grads = tree.zeros_like(params)
    tx = optim.adamw(0.5, weight_decay=0.1)
    updates, _ = tx.update(grads, tx.init(params), params)
    assert torch.equal(updates["w"], torch.full((2, 2), -0.1, dtype=torch.float64))
    assert torch.equal(updates["b"], torch.zeros(2, dtype=torch.float64))  # 1-d: not decayed


def test_nesterov_trace_adds_momentum_times_buffer_to_gradient():
    tx = optim.trace(0.5, nesterov=True)
    g = {"w": torch.tensor([1.0, 2.0])}
    state = tx.init(g)
    u1, state = tx.update(g, state)      # b1 = g = [1, 2];  u1 = g + 0.5 b1 = [1.5, 3]
    u2, state = tx.update(g, state)      # b2 = 0.5 b1 + g = [1.5, 3];  u2 = g + 0.5 b2 = [1.75, 3.5]
    assert torch.equal(u1["w"], torch.tensor([1.5, 3.0]))
    assert torch.equal(u2["w"], torch.tensor([1.75, 3.5]))
    assert torch.equal(state.trace["w"], torch.tensor([1.5, 3.0]))


def test_none_leaves_pass_through_init_update_and_apply(key):
    params = {"w": torch.ones(2, 2), "frozen": None}
    tx = optim.chain(optim.clip_by_global_norm(1.0), optim.adamw(0.1), optim.sgd(0.1, momentum=0.9))
    state = tx.init(params)
    updates, state = tx.update({"w": torch.ones(2, 2), "frozen": None}, state, params)
    new = optim.apply_updates(params, updates)
    assert updates["frozen"] is None and new["frozen"] is None
    assert state[1][0].mu["frozen"] is None
    assert new["w"].shape == (2, 2)


# --- schedules -----------------------------------------------------------------------------

def test_scheduled_sgd_steps_with_the_hand_computed_lr_and_keeps_it_as_a_tensor():
    sched = optim.warmup_cosine_decay_schedule(init_value=0.0, peak_value=1.0, warmup_steps=4, decay_steps=12,
                                               end_value=0.1)
    tx = optim.sgd(sched)
    params = {"b": torch.zeros(1)}
    state = tx.init(params)
    lrs, logged = [], []
    for _ in range(14):
        updates, state = tx.update({"b": torch.ones(1)}, state, params)
        lrs.append(-updates["b"].item())             # gradient 1: the step is -lr
        lr = optim.current_lr(state)
        assert isinstance(lr, torch.Tensor) and lr.dtype == torch.float32 and lr.shape == ()
        logged.append(lr.item())
    # step 0: init; step 4: end of warmup (peak); step 8: half way through the cosine,
    # 0.1 + 0.9 * (1 + cos(pi/2)) / 2 = 0.55; step 12 and after: end_value
    assert lrs[0] == 0.0
    assert lrs[2] == pytest.approx(0.5)
    assert lrs[4] == pytest.approx(1.0)
    assert lrs[8] == pytest.approx(0.55)
    assert lrs[12] == pytest.approx(0.1) and lrs[13] == pytest.approx(0.1)
    assert logged == lrs


def test_warmup_cosine_decay_matches_the_formula_on_ints_and_int64_tensors():
    init, peak, end, W, D = 1e-4, 3e-3, 2e-4, 10, 50
    sched = optim.warmup_cosine_decay_schedule(init, peak, W, D, end)

    def expected(t):
        if t < W:
            return init + (peak - init) * t / W
        progress = min(t - W, D - W) / (D - W)
        return end + 0.5 * (peak - end) * (1 + math.cos(math.pi * progress))

    steps = list(range(0, 61))
    on_ints = [sched(t) for t in steps]
    on_tensor = sched(torch.tensor(steps, dtype=torch.int64))
    assert all(isinstance(v, float) for v in on_ints)
    assert on_tensor.dtype == torch.float64
    assert on_ints == pytest.approx([expected(t) for t in steps], rel=1e-12, abs=0)
    assert on_tensor.tolist() == on_ints


def test_linear_polynomial_constant_and_warmup_linear_schedules_at_hand_computed_steps():
    lin = optim.linear_schedule(1.0, 0.0, 4)
    assert [lin(t) for t in (0, 1, 2, 4, 9)] == [1.0, 0.75, 0.5, 0.0, 0.0]
    poly = optim.polynomial_schedule(1.0, 0.0, power=2.0, transition_steps=4)
    assert [poly(t) for t in (0, 2, 4, 8)] == [1.0, 0.25, 0.0, 0.0]
    assert optim.constant_schedule(0.3)(7) == 0.3
    wl = optim.warmup_linear_decay_schedule(0.0, 1.0, warmup_steps=2, decay_steps=6, end_value=0.2)
    assert [wl(t) for t in (0, 1, 2, 4, 6, 10)] == pytest.approx([0.0, 0.5, 1.0, 0.6, 0.2, 0.2])
    cos = optim.cosine_decay_schedule(1.0, decay_steps=4, end_value=0.0)
    assert [cos(t) for t in (0, 2, 4, 5)] == pytest.approx([1.0, 0.5, 0.0, 0.0])


def test_join_schedules_restarts_each_piece_at_its_boundary():
    sched = optim.join_schedules([optim.linear_schedule(0.0, 1.0, 4), optim.linear_schedule(1.0, 0.0, 2)], [4])
    assert [sched(t) for t in range(8)] == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0, 0.5, 0.0, 0.0])
    assert sched(torch.tensor(5)).item() == pytest.approx(0.5)


def test_constant_lr_is_read_from_the_state_so_replacing_it_changes_the_step():
    tx = optim.sgd(0.1)
    params = {"b": torch.zeros(1)}
    lr_state = tx.init(params)[-1]
    state = (optim.EmptyState(), lr_state._replace(lr=torch.tensor(0.25)))
    updates, state = tx.update({"b": torch.ones(1)}, state, params)
    assert updates["b"].item() == -0.25
    assert optim.current_lr(state).item() == 0.25


# --- purity, compile, vmap ---------------------------------------------------------------

def _full_tx():
    """Every stateful transformation and a schedule in one chain (for coverage, not a recipe)."""
    sched = optim.warmup_cosine_decay_schedule(0.0, 1e-2, 2, 10, 1e-3)
    return optim.chain(optim.clip_by_global_norm(1.0), optim.trace(0.9, nesterov=True),
                       optim.adamw(sched, weight_decay=0.1))


def _step(tx):
    def step(grads, state, params):
        updates, state = tx.update(grads, state, params)
        return optim.apply_updates(params, updates), state
    return step


def test_update_leaves_grads_state_and_params_unchanged(key):
    tx = _full_tx()
    params = _params(key, torch.float32)
    g0, grads = _grad_sequence(key, params, steps=2)
    state = tx.update(g0, tx.init(params), params)[1]   # a non-trivial state
    copies = tree.tree_map(torch.clone, (grads, state, params))
    new_params, new_state = _step(tx)(grads, state, params)
    assert tree.equal((grads, state, params), copies)
    assert not tree.allclose(new_params, params) and not tree.allclose(new_state, state)


@pytest.mark.compile
def test_compiled_update_equals_eager_and_does_not_recompile_as_lr_changes(key):
    tx = _full_tx()
    step = _step(tx)
    compiled = compiler.compile(step)
    params = {"w": random.normal(key, (4, 3)), "b": torch.zeros(4)}
    grads = _grad_sequence(key, params, steps=4)
    eager_p, eager_s = comp_p, comp_s = params, tx.init(params)
    for t, g in enumerate(grads):
        eager_p, eager_s = step(g, eager_s, eager_p)
        # the step count and the scheduled lr are tensors in the state: one graph serves every step
        with torch._dynamo.config.patch(error_on_recompile=t > 0):
            comp_p, comp_s = compiled(g, comp_s, comp_p)
        _assert_close((comp_p, comp_s), (eager_p, eager_s), atol=1e-6)
    assert optim.current_lr(comp_s).item() == pytest.approx(optim.current_lr(eager_s).item())
    assert comp_s[2][2].count.item() == 4


def test_vmap_over_three_stacked_members_equals_a_loop(key):
    tx = _full_tx()
    step = _step(tx)
    members = [_params(k, torch.float32) for k in random.split(key, 3)]
    grads = [_grad_sequence(random.fold_in(key, i), p, steps=3) for i, p in enumerate(members)]

    params, state = tree.stack(members), vmap(tx.init)(tree.stack(members))
    for t in range(3):
        params, state = vmap(step)(tree.stack([g[t] for g in grads]), state, params)

    looped = []
    for p, gs in zip(members, grads):
        s = tx.init(p)
        for g in gs:
            p, s = step(g, s, p)
        looped.append((p, s))
    _assert_close(params, tree.stack([p for p, _ in looped]), atol=1e-6)
    _assert_close(state, tree.stack([s for _, s in looped]), atol=1e-6)


# --- masks ---------------------------------------------------------------------------------

def _named_tree():
    return {"emb": torch.zeros(5, 3), "blk": {"0": {"attn": {"w": torch.zeros(3, 3), "b": torch.zeros(3)},
                                                    "norm": {"scale": torch.zeros(3)}},
                                              "1": {"conv": {"w": torch.zeros(2, 2, 3, 3), "b": torch.zeros(2)}}},
            "head": {"w": torch.zeros(3, 7), "b": torch.zeros(7)}, "frozen": None}


def test_decay_mask_default_decays_only_leaves_with_ndim_at_least_2():
    assert optim.decay_mask(_named_tree()) == {
        "emb": True, "blk": {"0": {"attn": {"w": True, "b": False}, "norm": {"scale": False}},
                             "1": {"conv": {"w": True, "b": False}}},
        "head": {"w": True, "b": False}, "frozen": None}


def test_decay_mask_patterns_exclude_matching_names_and_replace_the_ndim_rule():
    assert optim.decay_mask(_named_tree(), exclude=("*.b", "emb", "blk.1.*")) == {
        "emb": False, "blk": {"0": {"attn": {"w": True, "b": False}, "norm": {"scale": True}},
                              "1": {"conv": {"w": False, "b": False}}},
        "head": {"w": True, "b": False}, "frozen": None}


@pytest.mark.parametrize("form", ["patterns", "callable", "tree"])
def test_add_decayed_weights_accepts_patterns_callables_and_bool_trees(form):
    params = {"w": torch.ones(2, 2), "norm": {"scale": torch.ones(2)}, "b": torch.ones(2)}
    mask = {"patterns": ("b", "*norm*"),
            "callable": lambda p: {"w": True, "norm": {"scale": False}, "b": False},
            "tree": {"w": True, "norm": {"scale": False}, "b": False}}[form]
    updates, _ = optim.add_decayed_weights(0.5, mask).update(tree.zeros_like(params), optim.EmptyState(), params)
    assert tree.equal(updates, {"w": torch.full((2, 2), 0.5), "norm": {"scale": torch.zeros(2)}, "b": torch.zeros(2)})


def test_mask_with_missing_leaves_is_a_shape_error_naming_them():
    params = {"w": torch.ones(2, 2), "b": torch.ones(2)}
    with pytest.raises(ShapeError, match="missing \\['b'\\]"):
        optim.add_decayed_weights(0.1, {"w": True}).update(params, optim.EmptyState(), params)


def test_mask_with_tensor_leaves_is_a_config_error():
    params = {"w": torch.ones(2, 2)}
    with pytest.raises(ConfigError, match="Python bools"):
        optim.add_decayed_weights(0.1, {"w": torch.tensor(True)}).update(params, optim.EmptyState(), params)


# --- errors --------------------------------------------------------------------------------

def test_grads_of_the_wrong_shape_are_a_shape_error_naming_the_leaf():
    params = {"lin": {"w": torch.ones(2, 3)}}
    tx = optim.adam(1e-3)
    with pytest.raises(ShapeError, match=r"grads\.lin\.w: expected shape \[2, 3\].*got \[3, 2\]"):
        tx.update({"lin": {"w": torch.ones(3, 2)}}, tx.init(params), params)


@pytest.mark.parametrize("make", [
    lambda: optim.adam(-1e-3),
    lambda: optim.adamw(1e-3, b1=1.0),
    lambda: optim.sgd(1e-3, nesterov=True),
    lambda: optim.clip_by_global_norm(0.0),
    lambda: optim.add_decayed_weights(-0.1),
    lambda: optim.warmup_cosine_decay_schedule(0.0, 1.0, warmup_steps=10, decay_steps=5),
    lambda: optim.join_schedules([optim.constant_schedule(1.0)], [3]),
    lambda: optim.linear_schedule(1.0, 0.0, transition_steps=0),
], ids=["negative_lr", "b1_one", "nesterov_without_momentum", "zero_max_norm", "negative_decay",
        "decay_shorter_than_warmup", "schedules_boundaries_mismatch",
        "zero_transition_steps"])
def test_bad_hyperparameters_are_config_errors(make):
    with pytest.raises(ConfigError):
        make()


def test_current_lr_without_a_learning_rate_is_a_config_error():
    with pytest.raises(ConfigError, match="no learning rate"):
        optim.current_lr(optim.scale_by_adam().init({"w": torch.ones(2)}))


# ------------------------------------------------------------------------------ wrappers


def _nan_like(grads):
    """`grads` with one NaN in its first leaf."""
    flat, spec = tree.flatten(grads)
    flat = [x.clone() for x in flat]
    flat[0].view(-1)[0] = float("nan")
    return tree.unflatten(spec, flat)


@pytest.mark.parametrize("fused", [False, True])
def test_apply_if_finite_skips_and_counts_a_nan_update_and_equals_the_inner_optimizer_otherwise(fused):
    params = _params(random.key(0), dtype=torch.float32)
    grads = _grad_sequence(random.key(1), params, steps=4)
    inner = optim.adamw(1e-2)
    bad = _nan_like(grads[1])
    wrapped = _run(optim.apply_if_finite(inner), params, [grads[0], bad, grads[1], grads[2]], fused=fused)
    plain = _run(inner, params, [grads[0], grads[1], grads[2]], fused=fused)
    assert tree.equal(wrapped[0], plain[0])  # the NaN update changed nothing, not even Adam's count
    assert tree.equal(wrapped[1].inner_state, plain[1])

    tx = optim.apply_if_finite(inner)
    state = tx.init(params)
    counts = []
    for g in (grads[0], bad, bad, grads[1]):
        _, state = optim.update_and_apply(tx, g, state, params) if fused else tx.update(g, state, params)
        counts.append((int(state.notfinite_count), bool(state.last_finite), int(state.total_notfinite)))
    assert counts == [(0, True, 0), (1, False, 1), (2, False, 2), (0, True, 2)]
    assert int(state.inner_state[0].count) == 2


def test_apply_if_finite_gives_up_after_max_consecutive_errors_as_optax_does():
    params = {"w": torch.ones(3)}
    nan = {"w": torch.tensor([1.0, float("nan"), 1.0])}
    tx = optim.apply_if_finite(optim.sgd(0.1), max_consecutive_errors=1)
    state = tx.init(params)
    u1, state = tx.update(nan, state, params)  # 1 in a row: not more than 1, rejected
    assert torch.equal(u1["w"], torch.zeros(3))
    u2, state = tx.update(nan, state, params)  # 2 in a row > 1: accepted
    assert torch.isnan(u2["w"][1]) and int(state.notfinite_count) == 2


def test_apply_if_finite_takes_the_callers_finite_flag():
    params = {"w": torch.ones(3)}
    tx = optim.apply_if_finite(optim.sgd(0.1))
    u, state = tx.update({"w": torch.ones(3)}, tx.init(params), params, finite=torch.tensor(False))
    assert torch.equal(u["w"], torch.zeros(3)) and int(state.total_notfinite) == 1


def test_apply_if_finite_compiles_to_the_eager_numbers():
    params = _params(random.key(0), dtype=torch.float32)
    grads = _grad_sequence(random.key(1), params, steps=2)
    tx = optim.apply_if_finite(optim.adamw(1e-2))
    step = compiler.compile(lambda g, s, p: optim.update_and_apply(tx, g, s, p))
    state = tx.init(params)
    for g in (grads[0], _nan_like(grads[1])):
        (p_c, s_c), (p_e, s_e) = step(g, state, params), optim.update_and_apply(tx, g, state, params)
        assert tree.allclose(p_c, p_e, rtol=1e-6, atol=1e-7) and tree.equal(s_c.total_notfinite, s_e.total_notfinite)
        params, state = p_e, s_e


def test_multi_steps_updates_every_k_calls_with_the_inner_update_of_the_mean_gradient():
    params = _params(random.key(0))
    grads = _grad_sequence(random.key(1), params, steps=6)
    inner = optim.adam(1e-2)
    tx = optim.multi_steps(inner, every_k=3)
    state, p = tx.init(params), params
    emitted = []
    for g in grads:
        u, state = tx.update(g, state, p)
        emitted.append(any(bool(x.abs().sum() > 0) for x in tree.leaves(u)))
        p = optim.apply_updates(p, u)
    assert emitted == [False, False, True, False, False, True]
    assert (int(state.mini_step), int(state.gradient_step)) == (0, 2)
    mean = lambda gs: tree.tree_map(lambda *xs: torch.stack(xs).mean(0), *gs)  # noqa: E731
    expected, expected_state = _run(inner, params, [mean(grads[:3]), mean(grads[3:])])
    assert tree.allclose(p, expected, rtol=1e-10, atol=1e-12)
    assert tree.allclose(state.inner_state, expected_state, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_wrappers_reject_bad_arguments_by_name(bad):
    with pytest.raises(ConfigError, match="every_k"):
        optim.multi_steps(optim.sgd(0.1), every_k=bad)
    if bad != 0:
        with pytest.raises(ConfigError, match="max_consecutive_errors"):
            optim.apply_if_finite(optim.sgd(0.1), max_consecutive_errors=bad)
