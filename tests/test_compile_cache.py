"""The compile cache: `funcml.compiler.compile` keeps inductor's caches in the project's cache
folder (`.cache/funcml-compile`, or `$TORCHINDUCTOR_CACHE_DIR` when the user set it), and a new
process reuses what an earlier one compiled.

Each case runs in a fresh Python process: the folder is decided from the environment at import
and torch's caches are per process, so only a new process shows what a user's second run sees.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # benchmarks/ is imported as a package

# Compiles a small pure function with funcml's compiler and reports where torch's caches live
# and whether the FX graph cache was hit.
_SCRIPT = r"""
import json, os, sys
sys.path.insert(0, sys.argv[1])
import torch
from funcml import compiler
from torch._dynamo.utils import counters
from torch._inductor.runtime.cache_dir_utils import cache_dir as torch_cache_dir

def f(x):
    return torch.sin(x) * 2.0 + x.sum()

x = torch.arange(8, dtype=torch.float32)
out = compiler.compile(f)(x)
torch.testing.assert_close(out, f(x))
print(json.dumps({"funcml": str(compiler.cache_dir()), "torch": torch_cache_dir(),
                  "env": os.environ.get("TORCHINDUCTOR_CACHE_DIR"),
                  "fx_hit": counters["inductor"]["fxgraph_cache_hit"],
                  "fx_miss": counters["inductor"]["fxgraph_cache_miss"]}))
"""


def _compile_in_new_process(cwd: Path, backend: str, cache_env: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
    env.update(FUNCML_COMPILE_BACKEND=backend, OMP_NUM_THREADS="1")
    if cache_env is not None:
        env["TORCHINDUCTOR_CACHE_DIR"] = cache_env
    done = subprocess.run([sys.executable, "-c", _SCRIPT, str(ROOT)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_compile_cache_is_the_project_cache_folder_by_default(tmp_path):
    got = _compile_in_new_process(tmp_path, "eager", None)
    want = tmp_path / ".cache" / "funcml-compile"
    assert want.is_dir()
    assert Path(got["funcml"]) == want
    assert Path(got["torch"]) == want  # where inductor's own lookup now points


def test_compile_cache_follows_torchinductor_cache_dir_when_the_user_sets_it(tmp_path):
    mine = tmp_path / "my-cache"
    got = _compile_in_new_process(tmp_path, "eager", str(mine))
    assert Path(got["funcml"]) == mine and Path(got["torch"]) == mine and got["env"] == str(mine)
    assert not (tmp_path / ".cache").exists()


def test_cache_dir_is_absolute_under_the_working_directory(tmp_path, monkeypatch):
    from funcml import compiler

    monkeypatch.setattr(compiler, "_USER_CACHE_DIR", None)
    monkeypatch.chdir(tmp_path)
    assert compiler.cache_dir() == tmp_path / ".cache" / "funcml-compile"
    assert compiler.cache_dir().is_absolute()


@pytest.mark.slow
def test_second_process_reuses_the_inductor_compile_of_the_first(tmp_path):
    first = _compile_in_new_process(tmp_path, "inductor", None)
    assert first["fx_miss"] >= 1 and first["fx_hit"] == 0
    assert any((tmp_path / ".cache" / "funcml-compile").rglob("*.py"))  # the generated code is on disk
    second = _compile_in_new_process(tmp_path, "inductor", None)
    assert second["fx_hit"] >= 1 and second["fx_miss"] == 0


def test_bench_compile_variants_are_a_base_and_distinct_modifiers():
    from benchmarks.bench_compile import parse_variant
    from funcml.errors import ConfigError

    assert parse_variant("step") == ("step", set())
    assert parse_variant("grads-region-scalar") == ("grads", {"region", "scalar"})
    for bad in ("steps", "grads-fast", "grads-region-region", "region-grads"):
        with pytest.raises(ConfigError, match="--variants"):
            parse_variant(bad)


@pytest.mark.slow
def test_bench_compile_times_a_cold_and_a_warm_process_per_variant(tmp_path):
    from benchmarks import bench_compile

    result = bench_compile.main(args=["--tasks", "seg", "--variants", "grads", "--scale", "tiny", "--backend",
                                      "aot_eager", "--repeat", "2", "--cache-root", str(tmp_path / "caches"),
                                      "--out", str(tmp_path / "c.json")])
    (row,) = result["rows"]
    assert "error" not in row, row
    assert row["cold_s"] > 0 and row["warm_s"] > 0 and row["compiled_ms"] > 0 and row["eager_ms"] > 0
    assert row["graphs"] == 1
    assert json.loads((tmp_path / "c.json").read_text())["rows"][0]["variant"] == "grads"


# --------------------------------------------------------------------------- compile modes of the train step


def _mlp_problem():
    import torch

    from funcml import optim, random
    from funcml.nn import model as models
    from funcml.nn.reference import MLPConfig
    from funcml.train import init_train_state

    cfg = MLPConfig(in_dim=8, hidden=(16,), out_dim=1, dropout=0.1)
    tx = optim.chain(optim.clip_by_global_norm(1.0), optim.adamw(optim.warmup_cosine_decay_schedule(0.0, 1e-2, 3, 20)))
    params, state = models.init(random.key(0), cfg)
    ts = init_train_state(params, state, tx, random.key(1))

    def loss_fn(params, model_state, batch, key):
        pred, model_state = models.apply(params, model_state, batch["x"], cfg, key=key, train=True)
        loss = ((pred[:, 0] - batch["y"]) ** 2).mean()
        return loss, ({"mse": loss}, model_state)

    def batch(i):
        x = random.normal(random.fold_in(random.key(5), i), (32, 8))
        return {"x": x, "y": x.sum(1)}

    return ts, tx, loss_fn, batch, torch


@pytest.mark.compile
def test_compiling_only_the_gradient_equals_the_eager_step_and_never_recompiles():
    from funcml import tree
    from funcml.train import make_train_step

    ts0, tx, loss_fn, batch, torch = _mlp_problem()
    eager, grads = make_train_step(loss_fn, tx, compile=False), make_train_step(loss_fn, tx, compile="grads")
    ts_e, ts_g = ts0, ts0
    for i in range(4):
        if i == 1:
            torch.compiler.set_stance("fail_on_recompile")
        try:
            ts_g, m_g = grads(ts_g, batch(i))
        finally:
            torch.compiler.set_stance("default")
        ts_e, m_e = eager(ts_e, batch(i))
        torch.testing.assert_close(m_g["loss"], m_e["loss"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(m_g["grad_norm"], m_e["grad_norm"], rtol=1e-5, atol=1e-6)
    assert int(ts_g.step) == 4
    assert tree.allclose(ts_g.params, ts_e.params, rtol=1e-5, atol=1e-6)
    assert tree.allclose(ts_g.opt_state, ts_e.opt_state, rtol=1e-5, atol=1e-6)


def test_make_train_step_refuses_an_unknown_compile_mode():
    from funcml.errors import ConfigError
    from funcml.train import make_train_step

    _, tx, loss_fn, _, _ = _mlp_problem()
    with pytest.raises(ConfigError, match="compile must be True, False or 'grads', got 'all'"):
        make_train_step(loss_fn, tx, compile="all")


@pytest.mark.compile
def test_a_region_called_in_a_compiled_forward_gives_the_eager_numbers():
    import torch

    from funcml import compiler

    block = compiler.region(lambda w, x: torch.relu(x @ w) + x)

    def stack(ws, x):
        for w in ws:
            x = block(w, x)
        return x

    ws = [torch.linspace(-1, 1, 64).reshape(8, 8) * (i + 1) for i in range(4)]
    x = torch.linspace(-2, 2, 16).reshape(2, 8)
    torch.testing.assert_close(compiler.compile(stack)(ws, x), stack(ws, x))
