"""Data parallelism (funcml.train.distributed): W processes on one global batch behave as one.

The multi-process tests start 2 CPU processes (gloo on 127.0.0.1, a free port) running this
file as a script (`python tests/test_distributed.py <group> <out>`); each scenario is a
function run both here, in one process (the reference), and by the two ranks, which save
their results for the tests to compare. Every launch has a process-group timeout and a
subprocess timeout, so nothing can hang.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))

from funcml import optim, random, tree  # noqa: E402
from funcml.checkpoint import CheckpointManager  # noqa: E402
from funcml.errors import ConfigError, NonFiniteError, ShapeError  # noqa: E402
from funcml.nn import model as models  # noqa: E402
from funcml.nn.reference import CNNConfig, MLPConfig  # noqa: E402
from funcml.runs import create_run  # noqa: E402
from funcml.seg.losses import cross_entropy  # noqa: E402
from funcml.seg.shapes import ShapesConfig, shapes_batch  # noqa: E402
from funcml.seg.unet import UNetConfig  # noqa: E402
from funcml.train import EarlyStop, distributed, fit, init_train_state, make_train_step  # noqa: E402

WORLD = 2
B = 8  # the global batch
MLP = MLPConfig(in_dim=8, hidden=(16, 16), out_dim=1)
MLP_DROPOUT = MLPConfig(in_dim=8, hidden=(16, 16), out_dim=1, dropout=0.2)
SHAPES = ShapesConfig(height=16, width=16)
UNET = UNetConfig(in_channels=3, num_classes=5, depth=2, base_width=4, norm="group", groups=2)
CNN = CNNConfig(in_channels=1, channels=(4, 8), num_classes=3)
W_TRUE = random.normal(random.key(99), (8,))


# --------------------------------------------------------------------------- scenarios
# Each runs in one process (here) or in every rank (the workers): `distributed.shard` and
# `make_train_step` are then the identity and the single-process step.


def _regression_batch(step: int, nan_at: int | None = None) -> dict:
    x = random.normal(random.fold_in(random.key(5), step), (B, 8))
    if step == nan_at:
        x = x.clone()
        x[B - 1, 0] = float("nan")  # the last row: rank 1's shard
    return {"x": x, "y": x @ W_TRUE}


def _mlp_state(cfg: MLPConfig, tx, seed: int = 0):
    params, model_state = models.init(random.key(seed), cfg)
    return init_train_state(params, model_state, tx, random.key(seed + 1))


def _mlp_loss(cfg: MLPConfig):
    def loss_fn(params, model_state, batch, key):
        pred, model_state = models.apply(params, model_state, batch["x"], cfg, key=key, train=True)
        loss = ((pred[:, 0] - batch["y"]) ** 2).mean()
        return loss, ({"mse": loss}, model_state)

    return loss_fn


def _mlp_tx():
    schedule = optim.warmup_cosine_decay_schedule(0.0, 1e-2, 2, 10)
    return optim.chain(optim.clip_by_global_norm(1.0), optim.adamw(schedule))


def scenario_mlp(steps: int = 5, *, cfg: MLPConfig = MLP, grad_accum: int = 1, compile: bool = False):
    tx = _mlp_tx()
    ts = _mlp_state(cfg, tx)
    step = make_train_step(_mlp_loss(cfg), tx, grad_accum=grad_accum, compile=compile)
    losses = []
    for i in range(steps):
        ts, m = step(ts, distributed.shard(_regression_batch(i)))
        losses.append(float(m["loss"]))
    return {"params": ts.params, "opt_state": ts.opt_state, "losses": losses}


def scenario_mlp_dropout(grad_accum: int = 1):
    return scenario_mlp(cfg=MLP_DROPOUT, grad_accum=grad_accum)


def scenario_unet(steps: int = 3):
    tx = optim.adamw(3e-3)
    params, model_state = models.init(random.key(3), UNET)
    ts = init_train_state(params, model_state, tx, random.key(4))

    def loss_fn(params, model_state, batch, key):
        logits, model_state = models.apply(params, model_state, batch[0], UNET, key=key, train=True)
        return cross_entropy(logits, batch[1]), ({}, model_state)

    step = make_train_step(loss_fn, tx, compile=False)
    for i in range(steps):
        images, masks = shapes_batch(random.fold_in(random.key(6), i), B, SHAPES)
        ts, _ = step(ts, distributed.shard(((images - 0.5) / 0.25, masks)))
    return {"params": ts.params}


def _cnn_batch() -> tuple[torch.Tensor, torch.Tensor]:
    k = random.key(8)
    return random.normal(random.fold_in(k, 0), (B, 1, 8, 8)), random.randint(random.fold_in(k, 1), (B,), 0, 3)


def _cnn_step():
    tx = optim.sgd(0.1)
    params, model_state = models.init(random.key(2), CNN)
    ts = init_train_state(params, model_state, tx, random.key(3))

    def loss_fn(params, model_state, batch, key):
        logits, model_state = models.apply(params, model_state, batch[0], CNN, key=key, train=True)
        return torch.nn.functional.cross_entropy(logits, batch[1]), ({}, model_state)

    return ts, make_train_step(loss_fn, tx, compile=False)


def scenario_cnn_bn():
    ts, step = _cnn_step()
    ts, _ = step(ts, distributed.shard(_cnn_batch()))
    return {"model_state": ts.model_state}


def scenario_nonfinite_skip(steps: int = 3):
    tx = _mlp_tx()
    ts = _mlp_state(MLP, tx)
    step = make_train_step(_mlp_loss(MLP), tx, compile=False, nonfinite="skip")
    skipped = []
    for i in range(steps):
        ts, m = step(ts, distributed.shard(_regression_batch(i, nan_at=1)))
        skipped.append(int(m["skipped"]))
    return {"params": ts.params, "skipped": skipped}


def scenario_nonfinite_raise():
    tx = _mlp_tx()
    ts = _mlp_state(MLP, tx)
    step = make_train_step(_mlp_loss(MLP), tx, compile=False)
    try:
        for i in range(3):
            ts, _ = step(ts, distributed.shard(_regression_batch(i, nan_at=1)))
    except NonFiniteError as e:
        return {"error": type(e).__name__, "message": str(e), "step": int(ts.step)}
    return {"error": None, "step": int(ts.step)}


def scenario_buckets():
    """The mean of 40 leaves per rank, and how many all_reduce calls it took."""
    calls = []
    real = torch.distributed.all_reduce

    def counting(tensor, *args, **kwargs):
        calls.append(tensor.numel())
        return real(tensor, *args, **kwargs)

    r = float(distributed.rank())
    xs = {f"w{i}": torch.full((i + 1, 3), r + i) for i in range(30)}
    xs.update({f"n{i}": torch.full((2,), 10 * i, dtype=torch.int64) for i in range(10)})
    torch.distributed.all_reduce = counting
    try:
        mean = distributed.all_reduce_mean(xs)
        default_calls = list(calls)
        calls.clear()
        small = distributed.all_reduce_mean(xs, bucket_mb=256 / 2**20)  # 256-byte buckets
        small_calls = list(calls)
    finally:
        torch.distributed.all_reduce = real
    unchanged = all(torch.equal(xs[f"w{i}"], torch.full((i + 1, 3), r + i)) for i in range(30))
    return {"mean": mean, "small": small, "default_calls": default_calls, "small_calls": small_calls,
            "input_unchanged": unchanged}


def _fit_parts(cfg: MLPConfig = MLP):
    tx = _mlp_tx()
    val = _regression_batch(1000)

    def eval_fn(ts):
        calls.append(int(ts.step))
        pred, _ = models.apply(ts.params, ts.model_state, val["x"], cfg)
        return {"val/mse": ((pred[:, 0] - val["y"]) ** 2).mean()}

    calls: list[int] = []
    return tx, make_train_step(_mlp_loss(cfg), tx, compile=False), eval_fn, calls


def scenario_fit(root: Path):
    """fit with a run dir and checkpoints: stop early at step 4, resume to 6, compare to 0 -> 6."""
    tx, step, eval_fn, calls = _fit_parts()
    run = distributed.on_main(create_run, root, "dp-fit")
    manager = CheckpointManager(run.checkpoints, best_metric="val/mse", mode="min") if distributed.is_main() else None

    def get_batch(i):
        return distributed.shard(_regression_batch(i))

    # "max" on a falling MSE: the second eval is no improvement, so patience 1 stops at step 4.
    first = fit(_mlp_state(MLP, tx), step, get_batch, num_steps=6, eval_fn=eval_fn, eval_every=2, run=run,
                checkpoints=manager, early_stop=EarlyStop("val/mse", mode="max", patience=1), log_every=1,
                progress=False)
    evals_first = list(calls)
    # Rank 1 starts from another state: resuming must hand it rank 0's checkpoint.
    start = _mlp_state(MLP, tx, seed=0 if distributed.is_main() else 7)
    resumed = fit(start, step, get_batch, num_steps=6, run=run, checkpoints=manager, resume=True, log_every=1,
                  progress=False)
    straight = fit(_mlp_state(MLP, tx), step, get_batch, num_steps=6, progress=False)
    return {"run": str(run.path), "first_steps": first.summary["steps"],
            "stopped_early": first.summary["stopped_early"], "evals": evals_first,
            "resumed_start": resumed.summary["start_step"], "resumed": resumed.ts.params,
            "straight": straight.ts.params}


def scenario_compiled(steps: int = 4):
    """The compiled data-parallel step; a recompile after the first step is an error."""
    tx = _mlp_tx()
    ts = distributed.broadcast(_mlp_state(MLP, tx))
    step = make_train_step(_mlp_loss(MLP), tx, compile=True)
    for i in range(steps):
        if i == 1:
            torch.compiler.set_stance("fail_on_recompile")
        try:
            ts, _ = step(ts, distributed.shard(_regression_batch(i)))
        finally:
            torch.compiler.set_stance("default")
    return {"params": ts.params}


SCENARIOS = {
    "mlp": scenario_mlp,
    "mlp_dropout": scenario_mlp_dropout,
    "mlp_dropout_accum": lambda: scenario_mlp_dropout(grad_accum=2),
    "unet": scenario_unet,
    "cnn_bn": scenario_cnn_bn,
    "nonfinite_skip": scenario_nonfinite_skip,
    "nonfinite_raise": scenario_nonfinite_raise,
    "buckets": scenario_buckets,
}


# --------------------------------------------------------------------------- the worker


def _crash_at_step_2():
    """A fit whose rank 1 fails at step 2."""
    tx, step, _, _ = _fit_parts()

    def get_batch(i):
        if i == 2 and distributed.rank() == 1:
            raise RuntimeError("simulated failure of rank 1 at step 2")
        return distributed.shard(_regression_batch(i))

    fit(_mlp_state(MLP, tx), step, get_batch, num_steps=5, progress=False)


def _worker(group: str, out: Path) -> None:
    torch.set_num_threads(1)
    distributed.init_from_env()
    r = distributed.rank()
    if group == "scenarios":
        results = {name: fn() for name, fn in SCENARIOS.items()}
        results["fit"] = scenario_fit(out / "runs")
        torch.save(results, out / f"rank{r}.pt")
        group = "crash"  # the last scenario breaks the group: rank 1 dies
    elif group == "compiled":
        torch.save(scenario_compiled(), out / f"rank{r}.pt")
        return
    t0 = time.perf_counter()
    try:
        if group == "crash":
            _crash_at_step_2()
        else:  # hang: rank 1 stops responding before the second all-reduce of the grads
            grads = {"w": torch.ones(3)}
            distributed.all_reduce_mean(grads)
            if r == 1:
                time.sleep(60)
            t0 = time.perf_counter()
            distributed.all_reduce_mean(grads)
    except distributed.DistributedError as e:
        (out / f"{group}.rank{r}.json").write_text(json.dumps({"error": str(e), "seconds": time.perf_counter() - t0}))


# --------------------------------------------------------------------------- the launcher


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    # aot_eager even in CI's inductor stage: two ranks compiling with inductor at once on 2
    # cores would take minutes; the graphs are the same.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "FUNCML_COMPILE_BACKEND": "aot_eager"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    env.update(extra)
    return env


class _Launch:
    """WORLD ranks of `python tests/test_distributed.py group out` on 127.0.0.1 and a free port."""

    def __init__(self, group: str, out: Path, *, timeout_s: float):
        self.out, self.procs, self.logs = out, [], []
        port = str(_free_port())
        for r in range(WORLD):
            log = open(out / f"rank{r}.log", "w")
            env = _env(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1",
                       MASTER_PORT=port, FUNCML_DIST_TIMEOUT_S=str(timeout_s))
            self.procs.append(subprocess.Popen([sys.executable, __file__, group, str(out)], env=env, cwd=ROOT,
                                               stdout=log, stderr=subprocess.STDOUT))
            self.logs.append(log)

    def wait(self, wait_s: float = 120, wait_for: int = WORLD) -> list[dict]:
        """Wait at most `wait_s` for the first `wait_for` ranks, then kill any still running."""
        t0 = time.perf_counter()
        results = []
        try:
            for p in self.procs[:wait_for]:
                p.wait(timeout=max(1.0, wait_s - (time.perf_counter() - t0)))
                results.append({"returncode": p.returncode})
        finally:
            self.kill()
        for r, res in enumerate(results):
            res["log"] = (self.out / f"rank{r}.log").read_text()
        return results

    def kill(self) -> None:
        for p, log in zip(self.procs, self.logs):
            if p.poll() is None:
                p.kill()
                p.wait()
            log.close()


def _launch(group: str, out: Path, *, timeout_s: float, wait_s: float = 120) -> list[dict]:
    return _Launch(group, out, timeout_s=timeout_s).wait(wait_s)


@pytest.fixture(scope="module")
def hang_launch(tmp_path_factory):
    """Rank 1 stops responding, rank 0 waits 5 s: started first, so that its idle seconds
    overlap the scenarios' work."""
    launch = _Launch("hang", tmp_path_factory.mktemp("hang"), timeout_s=5)
    yield launch
    launch.kill()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory, hang_launch):
    """The scenarios' results on rank 0 and rank 1; then rank 1 crashes (see the crash test)."""
    out = tmp_path_factory.mktemp("dp")
    procs = _launch("scenarios", out, timeout_s=60)
    for r, p in enumerate(procs):
        assert (out / f"rank{r}.pt").is_file(), f"rank {r} failed:\n{p['log'][-3000:]}"
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)], out, procs


def _same_on_both(ranks, name: str, field: str):
    a, b = ranks[0][name][field], ranks[1][name][field]
    assert tree.equal(a, b), f"{name}.{field} differs between the ranks: {tree.first_difference(a, b)}"
    return a


# --------------------------------------------------------------------------- two processes


def test_two_processes_match_one_process_on_the_global_batch_mlp(ranks):
    results, _, _ = ranks
    dp = _same_on_both(results, "mlp", "params")
    one = scenario_mlp()
    assert tree.allclose(dp, one["params"], rtol=0, atol=1e-6), tree.first_difference(dp, one["params"], atol=1e-6)
    assert tree.allclose(results[0]["mlp"]["opt_state"], one["opt_state"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.tensor(results[0]["mlp"]["losses"]), torch.tensor(one["losses"]),
                               rtol=1e-6, atol=1e-6)


def test_two_processes_match_one_process_on_the_global_batch_unet(ranks):
    results, _, _ = ranks
    dp = _same_on_both(results, "unet", "params")
    one = scenario_unet()["params"]
    assert tree.allclose(dp, one, rtol=0, atol=1e-6), tree.first_difference(dp, one, atol=1e-6)


def test_rank_r_dropout_keys_are_those_of_grad_accum_over_the_global_batch(ranks):
    results, _, _ = ranks
    dp = _same_on_both(results, "mlp_dropout", "params")
    accum = scenario_mlp_dropout(grad_accum=WORLD)["params"]
    plain = scenario_mlp_dropout(grad_accum=1)["params"]
    assert tree.allclose(dp, accum, rtol=0, atol=1e-6), tree.first_difference(dp, accum, atol=1e-6)
    assert not tree.allclose(dp, plain, rtol=0, atol=1e-6), "the ranks' dropout masks must differ from one key's"


def test_ranks_with_grad_accum_match_one_process_accumulating_over_all_their_micro_batches(ranks):
    results, _, _ = ranks
    dp = _same_on_both(results, "mlp_dropout_accum", "params")
    accum = scenario_mlp_dropout(grad_accum=2 * WORLD)["params"]
    assert tree.allclose(dp, accum, rtol=0, atol=1e-6), tree.first_difference(dp, accum, atol=1e-6)


@pytest.mark.slow
def test_compiled_data_parallel_step_matches_eager_and_never_recompiles(tmp_path):
    procs = _launch("compiled", tmp_path, timeout_s=120, wait_s=300)
    for r, p in enumerate(procs):
        assert p["returncode"] == 0, f"rank {r} failed:\n{p['log'][-3000:]}"
    compiled = [torch.load(tmp_path / f"rank{r}.pt")["params"] for r in range(WORLD)]
    assert tree.equal(compiled[0], compiled[1])
    eager = scenario_mlp(steps=4)["params"]
    assert tree.allclose(compiled[0], eager, rtol=1e-5, atol=1e-6), tree.first_difference(compiled[0], eager, atol=1e-6)


def test_batchnorm_state_is_the_mean_of_the_ranks_states(ranks):
    results, _, _ = ranks
    dp = _same_on_both(results, "cnn_bn", "model_state")
    per_shard = []
    for r in range(WORLD):
        ts, step = _cnn_step()
        per_shard.append(step(ts, distributed.shard(_cnn_batch(), rank=r, world_size=WORLD))[0].model_state)
    expected = tree.tree_map(lambda a, b: (a + b) / 2, *per_shard)
    assert tree.allclose(dp, expected, rtol=0, atol=1e-6), tree.first_difference(dp, expected, atol=1e-6)


def test_a_nan_on_one_rank_is_skipped_by_every_rank(ranks):
    results, _, _ = ranks
    assert results[0]["nonfinite_skip"]["skipped"] == results[1]["nonfinite_skip"]["skipped"] == [0, 1, 1]
    dp = _same_on_both(results, "nonfinite_skip", "params")
    one = scenario_nonfinite_skip()["params"]
    assert tree.allclose(dp, one, rtol=0, atol=1e-6)


def test_a_nan_on_one_rank_raises_on_every_rank_naming_the_step(ranks):
    results, _, _ = ranks
    r0, r1 = results[0]["nonfinite_raise"], results[1]["nonfinite_raise"]
    assert r0["error"] == r1["error"] == "NonFiniteError"
    assert r0["step"] == r1["step"] == 1
    assert "step 1" in r0["message"] and "another rank's shard" in r0["message"]
    assert "step 1: loss = nan" in r1["message"]


def test_grads_are_reduced_in_one_collective_per_dtype_not_one_per_leaf(ranks):
    results, _, _ = ranks
    b = results[0]["buckets"]
    assert len(b["default_calls"]) == 2  # float32 and int64: 40 leaves, 2 collectives
    assert sum(b["default_calls"]) == 3 * sum(range(1, 31)) + 2 * 10
    assert len(b["small_calls"]) > 2 and max(b["small_calls"]) <= 256 // 4
    for i in range(30):  # rank r holds r + i: the mean over ranks 0 and 1 is i + 0.5
        torch.testing.assert_close(b["mean"][f"w{i}"], torch.full((i + 1, 3), i + 0.5))
        torch.testing.assert_close(b["small"][f"w{i}"], torch.full((i + 1, 3), i + 0.5))
    assert all(torch.equal(b["mean"][f"n{i}"], torch.full((2,), 10 * i)) for i in range(10))
    assert b["input_unchanged"]


def test_fit_writes_one_run_directory_from_rank_0_only(ranks):
    results, out, _ = ranks
    runs = list((out / "runs" / "dp-fit").iterdir())
    assert len(runs) == 1 and str(runs[0]) == results[0]["fit"]["run"] == results[1]["fit"]["run"]
    rows = [json.loads(line) for line in (runs[0] / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in rows if r["split"] == "train"]
    assert train_steps == [1, 2, 3, 4, 5, 6], "each step is logged once, by rank 0"
    assert sorted(p.name for p in (runs[0] / "checkpoints").iterdir()) == [f"step_00000000{i}" for i in (2, 4, 6)]


def test_fit_evaluates_on_rank_0_and_every_rank_stops_early_together(ranks):
    results, _, _ = ranks
    assert results[0]["fit"]["evals"] == [2, 4, 4] and results[1]["fit"]["evals"] == []  # 4: the final eval
    assert results[0]["fit"]["first_steps"] == results[1]["fit"]["first_steps"] == 4
    assert results[0]["fit"]["stopped_early"] and results[1]["fit"]["stopped_early"]


def test_every_rank_resumes_from_rank_0s_checkpoint_bit_for_bit(ranks):
    results, _, _ = ranks
    assert results[0]["fit"]["resumed_start"] == results[1]["fit"]["resumed_start"] == 4
    resumed = _same_on_both(results, "fit", "resumed")
    assert tree.equal(resumed, results[0]["fit"]["straight"])


def test_a_crashed_rank_makes_the_others_exit_with_a_clear_error(ranks):
    _, out, procs = ranks
    assert procs[1]["returncode"] != 0 and "simulated failure of rank 1 at step 2" in procs[1]["log"]
    assert procs[0]["returncode"] == 0, procs[0]["log"][-2000:]
    report = json.loads((out / "crash.rank0.json").read_text())
    assert "failed on rank 0 of 2" in report["error"] and "another process exited" in report["error"]
    assert report["seconds"] < 30, "the crash must be detected, not waited out until the 60 s timeout"


def test_a_rank_that_stops_responding_times_out_instead_of_hanging(hang_launch):
    procs = hang_launch.wait(wait_s=60, wait_for=1)  # rank 1 sleeps: killed
    assert procs[0]["returncode"] == 0, procs[0]["log"][-2000:]
    report = json.loads((hang_launch.out / "hang.rank0.json").read_text())
    assert "failed on rank 0 of 2" in report["error"] and "within 5 s" in report["error"]
    assert 5 <= report["seconds"] < 20


@pytest.mark.parametrize("trainer, args", [
    ("seg_train", ["--val-size", "8"]),
    ("asr_train", ["--num-val", "8", "--num-test", "8"]),
])
def test_trainers_under_torchrun_write_one_run_directory(tmp_path, trainer, args):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           f"experiments/{trainer}.py", "tiny", "--runs-dir", str(tmp_path), "--steps", "4", "--eval-every", "2",
           "--batch-size", "4", *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(FUNCML_DIST_TIMEOUT_S="60"), capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("run directory") == 1          # rank 0 alone reports
    runs = list((tmp_path / ("seg-tiny" if trainer == "seg_train" else "asr-tiny")).iterdir())
    assert len(runs) == 1, runs
    rows = [json.loads(line) for line in (runs[0] / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "val"] == [2, 4]
    assert (runs[0] / "eval.json").is_file() and (runs[0] / "summary.json").is_file()
    assert sorted(p.name for p in (runs[0] / "checkpoints").iterdir()) == ["step_000000002", "step_000000004"]


# --------------------------------------------------------------------------- one process


def test_init_from_env_is_a_no_op_without_a_world_size(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.init_from_env() is False
    assert not distributed.is_initialized()
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)


def test_init_from_env_is_a_no_op_for_world_size_one(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    assert distributed.init_from_env() is False
    assert not distributed.is_initialized()


def test_init_from_env_without_master_address_says_to_use_torchrun(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    with pytest.raises(ConfigError, match="MASTER_ADDR and MASTER_PORT.*torchrun"):
        distributed.init_from_env()


def test_shard_takes_the_ranks_rows_of_every_leaf():
    batch = {"x": torch.arange(12).reshape(6, 2), "y": torch.arange(6), "scale": torch.tensor(2.0), "name": "b"}
    part = distributed.shard(batch, rank=1, world_size=3)
    assert torch.equal(part["x"], torch.tensor([[4, 5], [6, 7]]))
    assert torch.equal(part["y"], torch.tensor([2, 3]))
    assert torch.equal(part["scale"], torch.tensor(2.0)) and part["name"] == "b"


def test_shard_is_the_batch_itself_in_one_process():
    batch = (torch.zeros(5, 3), torch.zeros(5))
    assert distributed.shard(batch) is batch


def test_shard_rejects_a_global_batch_the_world_size_does_not_divide():
    with pytest.raises(ShapeError, match="global batch size 10 is not divisible by the world size 4"):
        distributed.shard({"x": torch.zeros(10, 2)}, rank=0, world_size=4)


def test_shard_rejects_leaves_with_different_batch_sizes():
    with pytest.raises(ShapeError, match=r"x: 4, y: 6"):
        distributed.shard({"x": torch.zeros(4), "y": torch.zeros(6)}, rank=0, world_size=2)


def test_shard_key_folds_in_the_rank_and_is_the_key_itself_in_one_process(key):
    assert distributed.shard_key(key) is key
    k0, k1 = distributed.shard_key(key, rank=0), distributed.shard_key(key, rank=1)
    assert torch.equal(k1, random.fold_in(key, 1)) and not torch.equal(k0, k1)


def test_collectives_are_the_identity_in_one_process():
    xs = {"a": torch.ones(3), "n": torch.tensor(4)}
    assert distributed.all_reduce_mean(xs) is xs and distributed.broadcast(xs) is xs
    assert distributed.broadcast_object([1, "x"]) == [1, "x"]
    assert distributed.on_main(lambda a, b=0: a + b, 2, b=3) == 5


def test_data_parallel_without_a_process_group_is_a_config_error():
    with pytest.raises(ConfigError, match="init_from_env"):
        make_train_step(_mlp_loss(MLP), _mlp_tx(), compile=False, data_parallel=True)


def test_one_process_step_is_not_data_parallel():
    step = make_train_step(_mlp_loss(MLP), _mlp_tx(), compile=False)
    assert step.data_parallel is False


if __name__ == "__main__":
    _worker(sys.argv[1], Path(sys.argv[2]))
