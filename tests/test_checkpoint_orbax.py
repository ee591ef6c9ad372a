"""The orbax backend: same contents and names as the safetensors backend, bit-exact round trips."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import safetensors.torch
import torch

from funcml import checkpoint, checkpoint_orbax, random, tree
from funcml.errors import CheckpointError
from funcml.optim import EmptyState
from funcml.optim import ScaleByAdamState as AdamState
from funcml.train import LossScaleState, TrainState

ocp = pytest.importorskip("orbax.checkpoint", reason="orbax-checkpoint is an optional extra: pip install funcml[orbax]")




def make_state(key: torch.Tensor, step: int = 7, *, loss_scale: bool = False) -> TrainState:
    k = random.split(key, 5)
    params = {"enc": {"0": {"w": random.normal(k[0], (4, 3)), "b": random.normal(k[1], (3,))}},
              "head": {"w": random.normal(k[2], (3, 2)).to(torch.bfloat16)}}
    model_state = {"bn": {"mean": random.normal(k[3], (3,)), "var": random.uniform(k[4], (3,), 0.5, 2.0),
                          "num_batches": torch.tensor(11, dtype=torch.int64)}}
    opt_state = (AdamState(count=torch.tensor(5, dtype=torch.int64), mu=tree.tree_map(lambda p: p * 0.1, params),
                           nu=tree.tree_map(lambda p: p * p, params)), EmptyState())
    scale = LossScaleState(torch.tensor(1024.0), torch.tensor(2, dtype=torch.int64)) if loss_scale else None
    return TrainState(step=torch.tensor(step), params=params, model_state=model_state, opt_state=opt_state,
                      key=random.key(42), loss_scale=scale)


def test_round_trip_is_bit_identical_including_bf16(tmp_path, key):
    ts = make_state(key, loss_scale=True)
    path = checkpoint_orbax.save(tmp_path / "orbax", ts, metrics={"acc": 0.5})
    assert path == (tmp_path / "orbax" / "7").absolute() and path.is_dir()
    like = tree.tree_map(torch.zeros_like, make_state(random.key(1), step=0, loss_scale=True))
    out = checkpoint_orbax.restore(tmp_path / "orbax", like)
    assert tree.first_difference(out, ts) is None
    assert type(out.opt_state[0]) is AdamState and out.params["head"]["w"].dtype == torch.bfloat16


def test_names_are_identical_to_the_safetensors_backend(tmp_path, key):
    ts = make_state(key)
    checkpoint_orbax.save(tmp_path / "orbax", ts)
    st_path = checkpoint.save(tmp_path / "st", ts)
    with ocp.CheckpointManager((tmp_path / "orbax").absolute(),
                               options=ocp.CheckpointManagerOptions(read_only=True)) as mngr:
        items = mngr.restore(7, args=ocp.args.Composite(**{t: ocp.args.StandardRestore()
                                                           for t in ("params", "model_state", "opt_state")}))
    for t in ("params", "model_state", "opt_state"):
        assert set(items[t]) == set(safetensors.torch.load_file(st_path / f"{t}.safetensors")), t


def test_bf16_is_stored_as_its_int16_bit_pattern(tmp_path, key):
    ts = make_state(key)
    checkpoint_orbax.save(tmp_path / "orbax", ts)
    with ocp.CheckpointManager((tmp_path / "orbax").absolute(),
                               options=ocp.CheckpointManagerOptions(read_only=True)) as mngr:
        stored = mngr.restore(7, args=ocp.args.Composite(params=ocp.args.StandardRestore())).params["head.w"]
    assert stored.dtype == np.int16
    np.testing.assert_array_equal(stored, ts.params["head"]["w"].view(torch.int16).numpy())


def test_load_params_numpy_gives_numpy_arrays_under_funcml_names(tmp_path, key):
    ts = make_state(key)
    checkpoint_orbax.save(tmp_path / "orbax", ts)
    params = checkpoint_orbax.load_params_numpy(tmp_path / "orbax")
    assert list(params) == ["enc.0.w", "enc.0.b", "head.w"]
    assert all(isinstance(a, np.ndarray) for a in params.values())
    np.testing.assert_array_equal(params["enc.0.w"], ts.params["enc"]["0"]["w"].numpy())
    assert params["head.w"].dtype.name == "bfloat16"
    np.testing.assert_array_equal(params["head.w"].astype(np.float32), ts.params["head"]["w"].float().numpy())


def test_empty_model_state_and_opt_state_round_trip(tmp_path, key):
    ts = make_state(key)._replace(model_state={}, opt_state=(EmptyState(),))
    checkpoint_orbax.save(tmp_path / "orbax", ts)
    assert tree.equal(checkpoint_orbax.restore(tmp_path / "orbax", ts), ts)


def test_restore_reads_the_latest_step_or_the_one_asked_for(tmp_path, key, getkey):
    first, second = make_state(key, step=1), make_state(getkey(), step=2)
    checkpoint_orbax.save(tmp_path / "orbax", first)
    checkpoint_orbax.save(tmp_path / "orbax", second)
    assert tree.equal(checkpoint_orbax.restore(tmp_path / "orbax", first), second)
    assert tree.equal(checkpoint_orbax.restore(tmp_path / "orbax", first, step=1), first)


def test_saving_an_existing_step_is_refused(tmp_path, key):
    checkpoint_orbax.save(tmp_path / "orbax", make_state(key))
    with pytest.raises(CheckpointError, match="step 7 already exists"):
        checkpoint_orbax.save(tmp_path / "orbax", make_state(key))


def test_mismatch_error_lists_every_difference(tmp_path, key):
    ts = make_state(key)
    checkpoint_orbax.save(tmp_path / "orbax", ts)
    like = ts._replace(params={"enc": {"0": {"w": torch.zeros(4, 5), "b": torch.zeros(3)}},
                               "head": {"w": torch.zeros(3, 2)}})
    with pytest.raises(CheckpointError) as err:
        checkpoint_orbax.restore(tmp_path / "orbax", like)
    msg = str(err.value)
    assert "(2 problem(s))" in msg
    assert "params (orbax): 'enc.0.w' has shape [4, 3] in the checkpoint, [4, 5] in `like`" in msg
    assert "params (orbax): 'head.w' has dtype bfloat16 in the checkpoint, float32 in `like`" in msg


def test_missing_root_or_step_is_a_clear_error(tmp_path, key):
    with pytest.raises(CheckpointError, match="does not exist"):
        checkpoint_orbax.restore(tmp_path / "nope", make_state(key))
    checkpoint_orbax.save(tmp_path / "orbax", make_state(key))
    with pytest.raises(CheckpointError, match=r"no orbax checkpoint for step 3 .*steps found: \[7\]"):
        checkpoint_orbax.restore(tmp_path / "orbax", make_state(key), step=3)


def test_missing_orbax_names_the_extra_to_install(tmp_path, key, monkeypatch):
    monkeypatch.setitem(sys.modules, "orbax.checkpoint", None)
    with pytest.raises(CheckpointError, match=r"pip install funcml\[orbax\]"):
        checkpoint_orbax.save(tmp_path / "orbax", make_state(key))


def test_a_bare_optimizer_state_of_older_versions_restores_into_the_wrapped_state(tmp_path, key):
    from funcml import optim

    old = make_state(key)  # opt_state: the bare (AdamState, EmptyState) tuple older versions wrote
    checkpoint_orbax.save(tmp_path / "orbax", old)
    zero = torch.zeros((), dtype=torch.int64)
    like = old._replace(opt_state=optim.ApplyIfFiniteState(zero, torch.tensor(True), zero, old.opt_state))
    out = checkpoint_orbax.restore(tmp_path / "orbax", tree.tree_map(torch.zeros_like, like))
    assert tree.first_difference(out.opt_state.inner_state, old.opt_state) is None
    assert (int(out.opt_state.total_notfinite), bool(out.opt_state.last_finite)) == (0, True)
