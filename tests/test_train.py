"""The pure train step, the loop, resume exactness and run directories."""

from __future__ import annotations

import json

import pytest
import torch

from funcml import compiler, optim, random, tree
from funcml.checkpoint import CheckpointManager
from funcml.errors import ConfigError, NonFiniteError
from funcml.nn import model as models
from funcml.nn.reference import CNNConfig, MLPConfig
from funcml.runs import create_run, open_run, read_metrics
from funcml.train import EarlyStop, fit, init_train_state, make_eval_step, make_train_step

MLP = MLPConfig(in_dim=8, hidden=(32, 32), out_dim=1, dropout=0.1)
W_TRUE = random.normal(random.key(99), (8,))


def regression_batch(step: int, n: int = 64) -> dict:
    x = random.normal(random.fold_in(random.key(5), step), (n, 8))
    return {"x": x, "y": x @ W_TRUE}


def mlp_loss(params, model_state, batch, key, cfg=MLP):
    pred, model_state = models.apply(params, model_state, batch["x"], cfg, key=key, train=True)
    loss = ((pred[:, 0] - batch["y"]) ** 2).mean()
    return loss, ({"mse": loss}, model_state)


def make_state(cfg=MLP, tx=None, seed=0, precision="fp32"):
    tx = tx or optim.adamw(1e-2)
    params, model_state = models.init(random.key(seed), cfg)
    return init_train_state(params, model_state, tx, random.key(seed + 1), precision=precision), tx


def test_fifty_steps_reduce_the_loss_at_least_fivefold():
    ts, tx = make_state()
    step = make_train_step(mlp_loss, tx, compile=False)
    first = None
    for i in range(50):
        ts, m = step(ts, regression_batch(i))
        first = float(m["loss"]) if first is None else first
    assert float(m["loss"]) < first / 5, (first, float(m["loss"]))
    assert int(ts.step) == 50


@pytest.mark.compile
def test_compiled_step_equals_eager_and_never_recompiles():
    tx = optim.chain(optim.clip_by_global_norm(1.0), optim.adamw(optim.warmup_cosine_decay_schedule(0.0, 1e-2, 3, 20)))
    ts0, _ = make_state(tx=tx)
    eager, compiled = make_train_step(mlp_loss, tx, compile=False), make_train_step(mlp_loss, tx, compile=True)
    ts_e, ts_c = ts0, ts0
    for i in range(6):
        if i == 1:
            torch.compiler.set_stance("fail_on_recompile")  # steps 1..5: a recompile is an error
        try:
            ts_c, m_c = compiled(ts_c, regression_batch(i))
        finally:
            torch.compiler.set_stance("default")
        ts_e, m_e = eager(ts_e, regression_batch(i))
        torch.testing.assert_close(m_c["loss"], m_e["loss"], rtol=1e-5, atol=1e-6)
    assert tree.allclose(ts_c.params, ts_e.params, rtol=1e-5, atol=1e-6)
    assert tree.allclose(ts_c.opt_state, ts_e.opt_state, rtol=1e-5, atol=1e-6)


def test_the_step_is_pure_and_leaves_torchs_global_rng_alone():
    ts, tx = make_state()
    before = torch.random.get_rng_state()
    snapshot = tree.tree_map(torch.clone, ts)
    step = make_train_step(mlp_loss, tx, compile=False)
    a, _ = step(ts, regression_batch(0))
    b, _ = step(ts, regression_batch(0))
    assert tree.equal(ts, snapshot), "the input state was mutated"
    assert tree.equal(a, b), "same state and batch must give the same bits"
    assert torch.equal(torch.random.get_rng_state(), before)


def _bn_dropout_cnn_step(tx):
    """A BatchNorm + dropout CNN's eager train step with `tx`, its start state and one batch."""
    cnn = CNNConfig(in_channels=1, channels=(4, 8), num_classes=3, norm="batch", dropout=0.2)
    ts, tx = make_state(cfg=cnn, tx=tx)
    batch = {"x": random.normal(random.key(3), (6, 1, 8, 8)), "y": random.randint(random.key(4), (6,), 0, 3)}

    def ce_loss(params, model_state, batch, key):
        logits, model_state = models.apply(params, model_state, batch["x"], cnn, key=key, train=True)
        loss = torch.nn.functional.cross_entropy(logits, batch["y"])
        return loss, ({"ce": loss}, model_state)

    return ts, make_train_step(ce_loss, tx, compile=False), batch


def test_eager_step_is_bit_identical_to_the_torch_func_step_it_replaces():
    # Eagerly the step differentiates with torch.autograd.grad and skips the per-leaf
    # `where` of a finite step; traced or transformed it uses torch.func.grad_and_value and
    # the `where`s. Forcing the second path eagerly must give the same bits.

    ts, step, batch = _bn_dropout_cnn_step(optim.chain(optim.clip_by_global_norm(0.1), optim.adamw(1e-2)))
    eager = [step(ts, batch)]
    eager.append(step(eager[0][0], batch))
    with compiler.reference_mode("grad"):
        func = [step(ts, batch)]
        func.append(step(func[0][0], batch))
    for (e_ts, e_m), (f_ts, f_m) in zip(eager, func):
        assert tree.equal(e_ts._replace(model_state=None), f_ts._replace(model_state=None))
        # BatchNorm's running statistics: updated inside torch's kernel eagerly, from its
        # mean and invstd under torch.func (funcml.nn.norm): equal to float32 rounding.
        assert tree.allclose(e_ts.model_state, f_ts.model_state, rtol=1e-6, atol=1e-7)
        assert all(torch.equal(e_m[k], f_m[k]) for k in ("loss", "ce", "grad_norm"))
        assert not any(v.requires_grad for v in tree.leaves(e_ts)), "the eager step leaked autograd history"


def test_a_param_the_loss_does_not_use_gets_a_zero_gradient_and_only_weight_decay():
    ts, tx = make_state(tx=optim.adamw(1e-2, weight_decay=0.5))
    ts = ts._replace(params={**ts.params, "unused": torch.ones(2, 2)}, opt_state=tx.init({**ts.params,
                                                                                          "unused": torch.ones(2, 2)}))
    step = make_train_step(mlp_loss, tx, compile=False)
    new, m = step(ts, regression_batch(0))
    assert torch.equal(new.opt_state[0].mu["unused"], torch.zeros(2, 2))
    torch.testing.assert_close(new.params["unused"], torch.full((2, 2), 1.0 - 1e-2 * 0.5))


def test_a_loss_that_ignores_every_param_gives_zero_gradients():
    ts, tx = make_state(tx=optim.sgd(0.1))

    def constant_loss(params, model_state, batch, key):
        loss = batch["y"].pow(2).mean()
        return loss, ({}, model_state)

    new, m = make_train_step(constant_loss, tx, compile=False)(ts, regression_batch(0))
    assert float(m["grad_norm"]) == 0.0
    assert tree.equal(new.params, ts.params)


def test_step_key_depends_on_the_step_so_dropout_differs_between_steps():
    ts, tx = make_state()
    step = make_train_step(mlp_loss, tx, compile=False)
    _, m0 = step(ts, regression_batch(0))
    _, m1 = step(ts._replace(step=ts.step + 1), regression_batch(0))
    assert float(m0["loss"]) != float(m1["loss"])


def test_nonfinite_raise_names_the_step_and_the_leaf_and_keeps_params():
    ts, tx = make_state()
    step = make_train_step(mlp_loss, tx, compile=False)
    ts, _ = step(ts, regression_batch(0))
    bad = regression_batch(1)
    bad["y"] = bad["y"].clone()
    bad["y"][3] = float("nan")
    with pytest.raises(NonFiniteError, match=r"non-finite value at step 1: loss = nan.*nonfinite='skip'"):
        step(ts, bad)
    grads_bad = regression_batch(1)
    grads_bad["x"] = grads_bad["x"].clone()
    grads_bad["x"][0, 0] = float("inf")
    with pytest.raises(NonFiniteError, match="step 1"):
        step(ts, grads_bad)


def test_finite_gradients_whose_global_norm_overflows_count_as_nonfinite_with_a_clear_message():
    ts, tx = make_state(tx=optim.sgd(1e-3))

    def huge_loss(params, model_state, batch, key):
        loss = params["layers"]["0"]["w"].sum() * 1e25  # every grad is 1e25: finite, but 1e50 overflows float32
        return loss, ({}, model_state)

    with pytest.raises(NonFiniteError, match=r"every gradient is finite but their global norm inf"):
        make_train_step(huge_loss, tx, compile=False)(ts, regression_batch(0))


def test_nonfinite_skip_leaves_every_state_unchanged_and_counts_in_the_optimizer_state():
    ts, tx = make_state()
    step = make_train_step(mlp_loss, tx, compile=False, nonfinite="skip")
    bad = regression_batch(0)
    bad["y"] = torch.full_like(bad["y"], float("nan"))
    new, m = step(ts, bad)
    assert m["skipped"] == 1 and float(m["finite"]) == 0.0
    assert tree.equal(new.params, ts.params) and tree.equal(new.model_state, ts.model_state)
    assert tree.equal(new.opt_state.inner_state, ts.opt_state.inner_state)
    assert (int(new.opt_state.total_notfinite), int(new.opt_state.notfinite_count)) == (1, 1)
    assert int(new.step) == 1  # the step counter moves on, so the next step gets a fresh key
    new, m = step(new, regression_batch(1))
    assert m["skipped"] == 1 and not tree.equal(new.params, ts.params)
    assert (int(new.opt_state.total_notfinite), int(new.opt_state.notfinite_count)) == (1, 0)


def test_the_skip_count_lives_in_the_state_so_a_new_step_function_continues_it():
    ts, tx = make_state()
    bad = regression_batch(0)
    bad["y"] = torch.full_like(bad["y"], float("nan"))
    ts, _ = make_train_step(mlp_loss, tx, compile=False, nonfinite="skip")(ts, bad)
    # a fresh step function (as after a resume) reads the count from the state, not a closure
    ts, m = make_train_step(mlp_loss, tx, compile=False, nonfinite="skip")(ts, bad)
    assert int(m["skipped"]) == 2 and int(ts.opt_state.total_notfinite) == 2


def test_a_state_built_by_hand_from_the_bare_optimizer_still_trains_and_skips():
    ts, tx = make_state()
    bare = ts._replace(opt_state=tx.init(ts.params))
    step = make_train_step(mlp_loss, tx, compile=False, nonfinite="skip")
    good_bare, m_bare = step(bare, regression_batch(0))
    good, _ = step(ts, regression_batch(0))
    assert tree.equal(good_bare.params, good.params) and int(m_bare["skipped"]) == 0
    assert tree.equal(good_bare.opt_state, good.opt_state.inner_state)
    bad = regression_batch(1)
    bad["y"] = torch.full_like(bad["y"], float("nan"))
    new, m = step(bare, bad)
    assert int(m["skipped"]) == 1 and tree.equal(new.opt_state, bare.opt_state) and tree.equal(new.params, bare.params)


def test_fp16_overflow_skips_and_halves_the_scale_then_growth_doubles_it():
    ts, tx = make_state(precision="fp16")
    ts = ts._replace(loss_scale=ts.loss_scale._replace(scale=torch.tensor(2.0**126)))
    step = make_train_step(mlp_loss, tx, compile=False, precision="fp16", growth_interval=2)
    new, m = step(ts, regression_batch(0))  # the scaled grads overflow: skip, not an error
    assert float(new.loss_scale.scale) == 2.0**125 and tree.equal(new.params, ts.params)
    ts = ts._replace(loss_scale=ts.loss_scale._replace(scale=torch.tensor(64.0)))
    ts, _ = step(ts, regression_batch(1))
    assert float(ts.loss_scale.scale) == 64.0 and int(ts.loss_scale.good_steps) == 1
    ts, _ = step(ts, regression_batch(2))
    assert float(ts.loss_scale.scale) == 128.0 and int(ts.loss_scale.good_steps) == 0


def test_fp16_without_a_loss_scale_is_a_clear_error():
    ts, tx = make_state()
    with pytest.raises(ConfigError, match="init_train_state"):
        make_train_step(mlp_loss, tx, compile=False, precision="fp16")(ts, regression_batch(0))


def test_bf16_autocast_trains():
    ts, tx = make_state(cfg=MLPConfig(in_dim=8, hidden=(32,), out_dim=1))
    step = make_train_step(lambda p, s, b, k: mlp_loss(p, s, b, k, MLPConfig(in_dim=8, hidden=(32,), out_dim=1)),
                           tx, compile=False, precision="bf16")
    losses = []
    for i in range(30):
        ts, m = step(ts, regression_batch(i))
        losses.append(float(m["loss"]))
    assert losses[-1] < losses[0] / 3 and ts.params["layers"]["0"]["w"].dtype == torch.float32


def test_grad_accumulation_equals_one_big_batch():
    cfg = MLPConfig(in_dim=8, hidden=(16,), out_dim=1, dropout=0.0)
    loss = lambda p, s, b, k: mlp_loss(p, s, b, k, cfg)  # noqa: E731
    ts, tx = make_state(cfg=cfg, tx=optim.sgd(0.1))
    one, _ = make_train_step(loss, tx, compile=False)(ts, regression_batch(0))
    four, _ = make_train_step(loss, tx, compile=False, grad_accum=4)(ts, regression_batch(0))
    assert tree.allclose(one.params, four.params, rtol=1e-5, atol=1e-7)


def test_multi_steps_over_two_calls_equals_grad_accum_over_their_concatenated_batch():
    cfg = MLPConfig(in_dim=8, hidden=(16,), out_dim=1, dropout=0.0)
    loss = lambda p, s, b, k: mlp_loss(p, s, b, k, cfg)  # noqa: E731
    b0, b1 = regression_batch(0, n=16), regression_batch(1, n=16)
    ts, tx = make_state(cfg=cfg, tx=optim.multi_steps(optim.adamw(1e-2), every_k=2))
    step = make_train_step(loss, tx, compile=False)
    mid, m = step(ts, b0)
    assert tree.equal(mid.params, ts.params)  # accumulating: no update yet
    two, _ = step(mid, b1)
    ts_a, tx_a = make_state(cfg=cfg, tx=optim.adamw(1e-2))
    both = {k: torch.cat([b0[k], b1[k]]) for k in b0}
    accum, _ = make_train_step(loss, tx_a, compile=False, grad_accum=2)(ts_a, both)
    assert tree.allclose(two.params, accum.params, rtol=1e-5, atol=1e-7)


def test_eval_step_returns_metrics_without_grads():
    ts, _ = make_state()

    def eval_fn(params, model_state, batch):
        pred, _ = models.apply(params, model_state, batch["x"], MLP, train=False)
        return {"mse": ((pred[:, 0] - batch["y"]) ** 2).mean()}

    m = make_eval_step(eval_fn, compile=False)(ts, regression_batch(0))
    assert m["mse"].ndim == 0 and not m["mse"].requires_grad


def _cnn_setup(compile: bool = False):
    cfg = CNNConfig(in_channels=1, channels=(4, 8), num_classes=3, dropout=0.2)

    def loss_fn(params, model_state, batch, key):
        logits, model_state = models.apply(params, model_state, batch["x"], cfg, key=key, train=True)
        loss = torch.nn.functional.cross_entropy(logits, batch["y"])
        return loss, ({"acc": (logits.argmax(-1) == batch["y"]).float().mean()}, model_state)

    def get_batch(step):
        k = random.fold_in(random.key(11), step)
        y = random.randint(k, (8,), 0, 3)
        x = random.normal(random.fold_in(k, 1), (8, 1, 8, 8)) + y[:, None, None, None].float()
        return {"x": x, "y": y}

    tx = optim.adamw(1e-2)
    params, state = models.init(random.key(3), cfg)
    return init_train_state(params, state, tx, random.key(4)), make_train_step(loss_fn, tx, compile=compile), get_batch


def test_resume_from_a_checkpoint_is_bit_identical_to_an_uninterrupted_run(tmp_path):
    ts0, step, get_batch = _cnn_setup()  # dropout + BatchNorm state: key and model state both matter
    straight = fit(ts0, step, get_batch, num_steps=12, progress=False).ts
    manager = CheckpointManager(tmp_path / "ckpt", keep_last=2)
    fit(ts0, step, get_batch, num_steps=6, checkpoints=manager, progress=False)
    fresh, step2, _ = _cnn_setup()  # a new process would rebuild the same `like` tree
    resumed = fit(fresh, step2, get_batch, num_steps=12, checkpoints=manager, resume=True, progress=False).ts
    assert int(resumed.step) == 12
    assert tree.equal(resumed.params, straight.params)
    assert tree.equal(resumed.model_state, straight.model_state)
    assert tree.equal(resumed.opt_state, straight.opt_state)


@pytest.mark.compile
def test_resume_is_bit_identical_with_a_compiled_step_too(tmp_path):
    ts0, step, get_batch = _cnn_setup(compile=True)
    straight = fit(ts0, step, get_batch, num_steps=6, progress=False).ts
    manager = CheckpointManager(tmp_path / "ckpt")
    fit(ts0, step, get_batch, num_steps=3, checkpoints=manager, progress=False)
    resumed = fit(ts0, step, get_batch, num_steps=6, checkpoints=manager, resume=True, progress=False).ts
    assert tree.equal(resumed.params, straight.params) and tree.equal(resumed.opt_state, straight.opt_state)


def test_fit_logs_evaluates_checkpoints_and_summarizes(tmp_path):
    ts0, step, get_batch = _cnn_setup()
    run = create_run(tmp_path / "runs", "unit", config=MLP)
    manager = CheckpointManager(run.checkpoints, keep_last=1, keep_best=1, best_metric="val/acc", mode="max")
    evals = {"n": 0}

    def eval_fn(ts):
        evals["n"] += 1
        return {"val/acc": 0.1 * evals["n"]}

    res = fit(ts0, step, get_batch, num_steps=10, eval_fn=eval_fn, eval_every=4, log_every=2, run=run,
              checkpoints=manager, progress=False)
    assert evals["n"] == 3  # steps 4, 8 and the end
    rows = read_metrics(run.path)
    assert [r["step"] for r in rows if r["split"] == "train"] == [2, 4, 6, 8, 10]
    assert [r["step"] for r in rows if r["split"] == "val"] == [4, 8, 10]
    header = (run.path / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"step", "split", "loss", "acc", "val/acc"} <= set(header)
    summary = json.loads((run.path / "summary.json").read_text())
    assert summary["steps"] == 10 and summary["eval"]["val/acc"] == pytest.approx(0.3)
    assert manager.steps() == [10] and manager.best().name.endswith("10")
    assert res.summary["items_per_s_median"] > 0


def test_early_stop_stops_after_patience_evals_without_improvement():
    ts0, step, get_batch = _cnn_setup()
    res = fit(ts0, step, get_batch, num_steps=100, eval_fn=lambda ts: {"val/acc": 0.5}, eval_every=2,
              early_stop=EarlyStop("val/acc", patience=2), progress=False)
    assert res.summary["stopped_early"] and res.summary["steps"] == 6
    assert res.summary["best"] == {"metric": "val/acc", "value": 0.5, "step": 2}


def test_ctrl_c_saves_a_checkpoint_and_returns_cleanly(tmp_path):
    ts0, step, get_batch = _cnn_setup()

    def interrupted_step(ts, batch):
        if int(ts.step) == 3:
            raise KeyboardInterrupt
        return step(ts, batch)

    manager = CheckpointManager(tmp_path / "ckpt")
    res = fit(ts0, interrupted_step, get_batch, num_steps=10, checkpoints=manager, progress=False)
    assert res.summary["interrupted"] and manager.steps() == [3] and int(res.ts.step) == 3


def test_run_ids_are_unique_within_one_second(tmp_path):
    paths = {create_run(tmp_path, "same").path for _ in range(20)}
    assert len(paths) == 20
    run = open_run(next(iter(paths)))
    assert (run.path / "env.json").exists() and run.checkpoints.is_dir() and run.plots.is_dir()


def test_open_run_on_a_plain_folder_says_what_to_pass(tmp_path):
    from funcml.errors import DataError

    with pytest.raises(DataError, match="not a funcml run directory"):
        open_run(tmp_path)


def test_metrics_csv_widens_its_header_when_a_new_metric_appears(tmp_path):
    run = create_run(tmp_path, "csv")
    run.log(1, {"loss": 1.0})
    run.log(2, {"loss": 0.5, "acc": 0.9})
    lines = (run.path / "metrics.csv").read_text().splitlines()
    assert lines[0].split(",")[-1] == "acc" and len(lines) == 3
    assert lines[1].endswith(",1.0,") and lines[2].endswith(",0.5,0.9")


def test_restride_like_views_an_output_with_the_input_strides_when_only_size_one_dims_differ():
    from funcml.train.step import _restride_like

    old = torch.zeros(5, 16, 1, 1)                                       # strides (16, 1, 1, 1)
    new = torch.arange(80.0).reshape(5, 1, 1, 16).permute(0, 3, 1, 2)    # channels-last: (16, 1, 16, 16)
    out = _restride_like(new, old)
    assert out.stride() == old.stride() and out.data_ptr() == new.data_ptr() and torch.equal(out, new)
    transposed = torch.zeros(3, 4).t()                                   # a real layout difference
    assert _restride_like(transposed, torch.zeros(4, 3)) is transposed
    assert _restride_like(None, None) is None


def test_a_resumed_run_logs_each_step_once(tmp_path):
    """Rows logged after the restored checkpoint belong to the lost part of the run: they are dropped,
    so metrics.jsonl has one row per (step, split) after a resume."""
    from funcml.runs import create_run

    ts0, step, get_batch = _cnn_setup()
    run = create_run(tmp_path / "runs", "resume")
    manager = CheckpointManager(run.checkpoints, keep_last=None)
    fit(ts0, step, get_batch, num_steps=4, checkpoints=manager, ckpt_every=2, log_every=1, run=run, progress=False)
    # The process died after step 4's rows were logged but before its checkpoint became valid.
    (manager.path(4) / "meta.json").unlink()
    fresh, step2, _ = _cnn_setup()
    fit(fresh, step2, get_batch, num_steps=6, checkpoints=CheckpointManager(run.checkpoints, keep_last=None),
        ckpt_every=2, log_every=1, run=run, resume=True, progress=False)
    rows = [(r["step"], r["split"]) for r in run.metrics()]
    assert rows == [(s, "train") for s in range(1, 7)]
    csv_steps = [line.split(",")[0] for line in (run.path / "metrics.csv").read_text().splitlines()[1:]]
    assert csv_steps == [str(s) for s in range(1, 7)]


@pytest.mark.parametrize("where", ["root", "experiment"])
def test_a_runs_folder_that_is_a_file_is_a_clear_error_and_the_file_is_kept(tmp_path, where):
    from funcml.errors import DataError
    from funcml.runs import create_run

    path = tmp_path / "runs" if where == "root" else tmp_path / "runs" / "exp"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("notes")
    with pytest.raises(DataError, match=f"runs folder {path} is a file, not a folder; pass --runs-dir"):
        create_run(tmp_path / "runs", "exp")
    assert path.read_text() == "notes"


def test_reference_mode_runs_every_fast_path_as_its_reference_equal_to_rounding():
    """The whole eager fast path (autograd grads, in-kernel BatchNorm statistics, fused AdamW) against the
    reference math it replaces, switched by `compiler.reference_mode()` rather than by patching."""
    ts, step, batch = _bn_dropout_cnn_step(optim.adamw(1e-2))
    fast, _ = step(step(ts, batch)[0], batch)
    assert compiler.plain_eager("adamw")
    with compiler.reference_mode():
        assert not any(compiler.plain_eager(p) for p in compiler.FAST_PATHS)
        ref, _ = step(step(ts, batch)[0], batch)
    assert compiler.plain_eager("adamw")  # switched back on leaving the block
    assert tree.allclose(fast, ref, rtol=1e-5, atol=1e-6)


def test_plain_eager_is_off_inside_compile_and_transforms_and_in_transform_names_that_half():
    """The one definition each fast path checks: eager outside, not eager under vmap / grad (whose
    interpreters lack the eager-only kernels) nor under torch.compile; `in_transform` is its transform
    half, which Dynamo's tracing also turns on (so the optimizer's foreach lists run per leaf there)."""
    seen = {}

    def probe(x):
        seen.setdefault("inside", (compiler.plain_eager(), compiler.in_transform()))
        return x.sum()

    assert compiler.plain_eager() and not compiler.in_transform()
    torch.func.vmap(probe)(torch.ones(3, 2))
    assert seen.pop("inside") == (False, True)
    torch.func.grad(probe)(torch.ones(2))
    assert seen.pop("inside") == (False, True)

    def traced(x):
        return x * (1.0 if compiler.plain_eager() else 2.0) + (10.0 if compiler.in_transform() else 0.0)

    assert torch.equal(compiler.compile(traced)(torch.ones(2)), torch.full((2,), 12.0))


def test_reference_mode_rejects_an_unknown_path_by_name():
    with pytest.raises(ConfigError, match=r"unknown fast path\(s\) \['fused'\]; the fast paths are"):
        with compiler.reference_mode("fused"):
            pass


def test_write_curves_draws_titled_plots_with_the_best_marked_and_adds_lr_and_grad_norm(tmp_path):
    import math

    from PIL import Image

    from funcml.report.curves import ema, write_curves

    run = create_run(tmp_path / "runs", "demo")
    for s in range(10, 101, 10):
        run.log(s, {"loss": 1.0 / s, "lr": 1e-3, "grad_norm": 0.5}, split="train")
        run.log(s, {"val/cer": abs(math.sin(s))}, split="val")
    paths = write_curves(run, [("loss", "train", "loss", "train loss"), ("val_cer", "val", "val/cer", "val CER")])
    assert [p.name for p in paths] == ["loss.png", "val_cer.png", "lr.png", "grad_norm.png"]
    assert all(Image.open(p).size == (600, 360) for p in paths)
    # the smoothing is TensorBoard's debiased EMA: a constant series stays constant
    assert ema([2.0, 2.0, 2.0], 0.9) == pytest.approx([2.0, 2.0, 2.0])
    assert ema([0.0, 1.0], 0.5) == pytest.approx([0.0, 0.5 / 0.75])
