"""Checkpoints: bit-exact round trips, atomic saves, clear errors, and the manager's pruning."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import safetensors.torch
import torch

from funcml import checkpoint as ckpt
from funcml import random, tree
from funcml.errors import CheckpointError, ConfigError
from funcml.optim import EmptyState
from funcml.optim import ScaleByAdamState as AdamState
from funcml.train import LossScaleState, TrainState

REPO = Path(__file__).resolve().parents[1]




@dataclasses.dataclass(frozen=True)
class TinyConfig:
    lr: float = 3e-4
    widths: tuple[int, ...] = (4, 3)


def make_state(key: torch.Tensor, step: int = 7, *, loss_scale: bool = False) -> TrainState:
    """Nested params (one bf16 leaf), BN-like model state with an int64 counter, Adam-like opt state."""
    k = random.split(key, 6)
    params = {
        "enc": {"0": {"w": random.normal(k[0], (4, 3)), "b": random.normal(k[1], (3,))}},
        "head": {"w": random.normal(k[2], (3, 2)).to(torch.bfloat16)},
    }
    model_state = {"bn": {"mean": random.normal(k[3], (3,)), "var": random.uniform(k[4], (3,), 0.5, 2.0),
                          "num_batches": torch.tensor(11, dtype=torch.int64)}}
    mu = tree.tree_map(lambda p: p * 0.1, params)
    nu = tree.tree_map(lambda p: p * p, params)
    opt_state = (AdamState(count=torch.tensor(5, dtype=torch.int64), mu=mu, nu=nu), EmptyState())
    scale = LossScaleState(torch.tensor(32768.0), torch.tensor(3, dtype=torch.int64)) if loss_scale else None
    return TrainState(step=torch.tensor(step, dtype=torch.int64), params=params, model_state=model_state,
                      opt_state=opt_state, key=random.key(42), loss_scale=scale)


def tmp_dirs(root: Path) -> list[Path]:
    return [p for p in root.iterdir() if p.name.startswith(".tmp-")]


# --------------------------------------------------------------------------- round trip


def test_round_trip_is_bit_identical_with_bf16_int64_and_namedtuple_opt_state(tmp_path, key):
    ts = make_state(key, loss_scale=True)
    ckpt.save(tmp_path / "c", ts)
    like = tree.tree_map(torch.zeros_like, make_state(random.key(1), step=0, loss_scale=True))
    out = ckpt.restore(tmp_path / "c", like)
    assert tree.first_difference(out, ts) is None
    assert type(out.opt_state[0]) is AdamState and type(out.opt_state[1]) is EmptyState
    assert type(out.loss_scale) is LossScaleState
    assert out.params["head"]["w"].dtype == torch.bfloat16
    assert out.model_state["bn"]["num_batches"].dtype == torch.int64


def test_empty_trees_are_written_as_empty_files_and_round_trip(tmp_path, key):
    ts = make_state(key)._replace(model_state={}, opt_state=(EmptyState(),))
    ckpt.save(tmp_path / "c", ts)
    assert (tmp_path / "c" / "model_state.safetensors").is_file()
    assert safetensors.torch.load_file(tmp_path / "c" / "opt_state.safetensors") == {}
    assert tree.equal(ckpt.restore(tmp_path / "c", ts), ts)


def test_restored_tensors_do_not_change_when_the_file_is_rewritten_afterwards(tmp_path, key):
    ts = make_state(key)._replace(params={"w": torch.arange(100_000, dtype=torch.float32)})
    path = ckpt.save(tmp_path / "c", ts)
    out = ckpt.restore(path, ts)
    f = path / "params.safetensors"
    size = f.stat().st_size
    with open(f, "r+b") as fh:  # zero the data in place, as a careless copy tool might
        fh.seek(size - 400_000)
        fh.write(bytes(400_000))
    assert torch.equal(out.params["w"], torch.arange(100_000, dtype=torch.float32))


def test_leaves_sharing_storage_are_saved(tmp_path, key):
    w = random.normal(key, (3, 3))
    ts = make_state(key)._replace(params={"embed": w, "unembed": w}, opt_state=())
    ckpt.save(tmp_path / "c", ts)
    assert tree.equal(ckpt.load_params(tmp_path / "c"), {"embed": w, "unembed": w})


def test_checkpoint_holds_three_safetensors_files_and_meta_json(tmp_path, key):
    path = ckpt.save(tmp_path / "c", make_state(key))
    assert sorted(p.name for p in path.iterdir()) == ["meta.json", "model_state.safetensors",
                                                       "opt_state.safetensors", "params.safetensors"]
    names = set(safetensors.torch.load_file(path / "opt_state.safetensors"))
    assert names == {"0.count", "0.mu.enc.0.w", "0.mu.enc.0.b", "0.mu.head.w", "0.nu.enc.0.w", "0.nu.enc.0.b",
                     "0.nu.head.w"}


def test_meta_json_records_step_key_config_metrics_versions_and_checksums(tmp_path, key):
    path = ckpt.save(tmp_path / "c", make_state(key, step=123, loss_scale=True), config=TinyConfig(),
                     metrics={"val_loss": torch.tensor(0.25), "acc": 0.5})
    meta = ckpt.load_meta(path)
    assert meta["step"] == 123
    assert meta["key"] == [0, 42]
    assert meta["loss_scale"] == {"scale": {"dtype": "float32", "value": 32768.0},
                                  "good_steps": {"dtype": "int64", "value": 3}}
    assert meta["config"] == {"_type": "TinyConfig", "lr": 3e-4, "widths": [4, 3]}
    assert meta["metrics"] == {"val_loss": 0.25, "acc": 0.5}
    assert set(meta["versions"]) == {"funcml", "torch", "numpy", "python"}
    assert meta["versions"]["torch"] == torch.__version__
    for name in ("params.safetensors", "model_state.safetensors", "opt_state.safetensors"):
        data = (path / name).read_bytes()
        assert meta["files"][name]["sha256"] == hashlib.sha256(data).hexdigest()
        assert meta["files"][name]["bytes"] == len(data)
    assert meta["files"]["params.safetensors"]["names"] == ["enc.0.w", "enc.0.b", "head.w"]


def test_save_rejects_a_non_tensor_leaf_before_writing_anything(tmp_path, key):
    ts = make_state(key)._replace(opt_state={"count": 5})
    with pytest.raises(CheckpointError, match=r"ts.opt_state leaf 'count' has type int, not a tensor"):
        ckpt.save(tmp_path / "c", ts)
    assert list(tmp_path.iterdir()) == []


def test_save_rejects_a_config_that_is_neither_dataclass_nor_dict(tmp_path, key):
    with pytest.raises(ConfigError, match="config: expected a config dataclass"):
        ckpt.save(tmp_path / "c", make_state(key), config=["lr", 3e-4])
    assert list(tmp_path.iterdir()) == []


def test_save_refuses_to_overwrite_an_existing_checkpoint(tmp_path, key):
    ckpt.save(tmp_path / "c", make_state(key, step=1))
    with pytest.raises(CheckpointError, match="already exists; pass overwrite=True"):
        ckpt.save(tmp_path / "c", make_state(key, step=2))
    assert ckpt.load_meta(tmp_path / "c")["step"] == 1


def test_overwrite_replaces_the_checkpoint_and_leaves_no_temporary_directory(tmp_path, key, getkey):
    ckpt.save(tmp_path / "c", make_state(key, step=1))
    new = make_state(getkey(), step=2)
    ckpt.save(tmp_path / "c", new, overwrite=True)
    assert tree.equal(ckpt.restore(tmp_path / "c", new), new)
    assert tmp_dirs(tmp_path) == []


def test_overwrite_without_an_atomic_exchange_still_replaces_the_checkpoint(tmp_path, key, getkey, monkeypatch):
    monkeypatch.setattr(ckpt, "_exchange", lambda a, b: False)  # e.g. not Linux
    ckpt.save(tmp_path / "c", make_state(key, step=1))
    new = make_state(getkey(), step=2)
    ckpt.save(tmp_path / "c", new, overwrite=True)
    assert tree.equal(ckpt.restore(tmp_path / "c", new), new)
    assert tmp_dirs(tmp_path) == []


def test_overwrite_refuses_to_replace_a_directory_that_is_not_a_checkpoint(tmp_path, key):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="is not a funcml checkpoint; refusing"):
        ckpt.save(tmp_path / "c", make_state(key), overwrite=True)
    assert (tmp_path / "c" / "notes.txt").read_text() == "mine"


# --------------------------------------------------------------------------- crash safety


def test_exception_inside_the_writer_leaves_the_previous_checkpoint_latest(tmp_path, key, monkeypatch):
    mgr = ckpt.CheckpointManager(tmp_path)
    first = mgr.save(make_state(key, step=1))
    real, calls = safetensors.torch.save_file, []

    def failing_save_file(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", failing_save_file)
    with pytest.raises(OSError, match="No space left"):
        mgr.save(make_state(key, step=2))
    assert len(calls) == 2
    assert mgr.latest() == first and mgr.steps() == [1]
    assert not mgr.path(2).exists()
    assert tmp_dirs(tmp_path) == []


_KILLED_WRITER = textwrap.dedent("""
    import os, sys, time
    import safetensors.torch as st
    import torch
    from funcml import checkpoint, random
    from funcml.train import TrainState

    def half_then_hang(tensors, filename, metadata=None):
        data = st.save(tensors, metadata=metadata)
        with open(filename, "wb") as f:
            f.write(data[: len(data) // 2])
            f.flush()
            print("half-written", flush=True)
            time.sleep(120)
            f.write(data[len(data) // 2:])

    st.save_file = half_then_hang
    ts = TrainState(step=torch.tensor(2), params={"w": torch.arange(4_000_000, dtype=torch.float32)},
                    model_state={}, opt_state=(), key=random.key(0))
    checkpoint.CheckpointManager(sys.argv[1]).save(ts)
""")


def test_sigkill_while_writing_leaves_previous_latest_and_next_manager_removes_the_temp_dir(tmp_path, key):
    mgr = ckpt.CheckpointManager(tmp_path)
    first = mgr.save(make_state(key, step=1))
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(tmp_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "half-written", proc.stderr.read()
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    (stale,) = tmp_dirs(tmp_path)
    assert (stale / "params.safetensors").stat().st_size > 8_000_000
    assert not mgr.path(2).exists()
    assert mgr.latest() == first and mgr.steps() == [1]

    fresh = ckpt.CheckpointManager(tmp_path)
    assert tmp_dirs(tmp_path) == []
    assert fresh.latest() == first
    assert tree.equal(fresh.restore_latest(make_state(key)), make_state(key, step=1))


def test_manager_start_keeps_the_temp_dir_of_a_running_process(tmp_path):
    live = tmp_path / f".tmp-step_000000005-{os.getpid()}-abc123"
    live.mkdir()
    ckpt.CheckpointManager(tmp_path)
    assert live.is_dir()


# --------------------------------------------------------------------------- corruption


@pytest.fixture
def saved(tmp_path, key):
    """A complete checkpoint and the state it holds."""
    ts = make_state(key)
    return ckpt.save(tmp_path / "c", ts), ts


def test_one_flipped_data_byte_fails_the_checksum_naming_the_file(saved):
    path, ts = saved
    f = path / "opt_state.safetensors"
    data = bytearray(f.read_bytes())
    data[-3] ^= 0x01  # inside the last tensor's data, past the header
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"opt_state\.safetensors fails its SHA-256 check.*restore an earlier"):
        ckpt.restore(path, ts)
    # without the checksum the flip would have loaded silently as a wrong value:
    assert not tree.equal(ckpt.restore(path, ts, verify=False), ts)


def test_truncated_file_is_reported_with_its_sizes(saved):
    path, ts = saved
    f = path / "params.safetensors"
    size = f.stat().st_size
    f.write_bytes(f.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match=rf"params\.safetensors is truncated.*{size - 10} bytes on disk, {size}"):
        ckpt.restore(path, ts)


def test_missing_file_is_reported(saved):
    path, ts = saved
    (path / "model_state.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"model_state\.safetensors is missing: the checkpoint is incomplete"):
        ckpt.restore(path, ts)


def test_missing_meta_json_is_reported(saved):
    path, ts = saved
    (path / "meta.json").unlink()
    with pytest.raises(CheckpointError, match=r"meta\.json is missing: .* not a complete funcml checkpoint"):
        ckpt.restore(path, ts)


def test_invalid_meta_json_is_reported(saved):
    path, ts = saved
    (path / "meta.json").write_text('{"format": "funcml.checkpoint", "step": ')
    with pytest.raises(CheckpointError, match=r"meta\.json is not valid JSON"):
        ckpt.restore(path, ts)


def test_meta_json_without_required_fields_is_reported(saved):
    path, ts = saved
    meta = json.loads((path / "meta.json").read_text())
    del meta["files"]
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"missing \['files'\]"):
        ckpt.load_meta(path)


def test_unreadable_safetensors_header_is_reported_even_with_a_matching_checksum(saved):
    path, ts = saved
    f = path / "params.safetensors"
    f.write_bytes(b"\xff" * 64)
    meta = json.loads((path / "meta.json").read_text())
    meta["files"]["params.safetensors"].update(sha256=hashlib.sha256(b"\xff" * 64).hexdigest(), bytes=64)
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"params\.safetensors is not a readable safetensors file"):
        ckpt.restore(path, ts)


def test_missing_directory_is_reported(tmp_path, key):
    with pytest.raises(CheckpointError, match="does not exist"):
        ckpt.restore(tmp_path / "nope", make_state(key))


def test_mismatch_error_lists_every_difference_in_one_message(saved):
    path, ts = saved
    params = {"enc": {"0": {"w": torch.zeros(4, 5), "b": torch.zeros(3)}},  # w: shape
              "head": {"w": torch.zeros(3, 2, dtype=torch.bfloat16), "extra": torch.zeros(1)}}  # extra: missing
    model_state = {"bn": {"mean": torch.zeros(3), "var": torch.zeros(3)}}  # num_batches: unexpected
    opt_state = (ts.opt_state[0]._replace(count=torch.tensor(0.0)), EmptyState())  # count: dtype
    like = ts._replace(params=params, model_state=model_state, opt_state=opt_state)
    with pytest.raises(CheckpointError) as err:
        ckpt.restore(path, like)
    msg = str(err.value)
    assert "(4 problem(s))" in msg
    assert "params.safetensors: 'enc.0.w' has shape [4, 3] in the checkpoint, [4, 5] in `like`" in msg
    assert "params.safetensors: missing 'head.extra' (expected [1] float32)" in msg
    assert "model_state.safetensors: unexpected 'bn.num_batches' ([] int64) is not in `like`" in msg
    assert "opt_state.safetensors: '0.count' has dtype int64 in the checkpoint, float32 in `like`" in msg


def test_loss_scale_presence_mismatch_is_reported(saved):
    path, ts = saved
    like = ts._replace(loss_scale=LossScaleState(torch.tensor(1.0), torch.tensor(0)))
    with pytest.raises(CheckpointError, match="`like` has a loss_scale .* but the checkpoint has none"):
        ckpt.restore(path, like)


def test_restore_requires_a_train_state_like(saved):
    path, ts = saved
    with pytest.raises(CheckpointError, match="expected a funcml.train.TrainState, got dict"):
        ckpt.restore(path, ts._asdict())


# --------------------------------------------------------------------------- load_params


def test_load_params_returns_the_params_alone_as_nested_dicts(saved):
    path, ts = saved
    params = ckpt.load_params(path)
    assert tree.equal(params, ts.params)


def test_load_params_verifies_the_checksum(saved):
    path, _ = saved
    f = path / "params.safetensors"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0x80
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"params\.safetensors fails its SHA-256 check"):
        ckpt.load_params(path)


# --------------------------------------------------------------------------- manager


def save_steps(mgr, key, metrics_by_step):
    for step, metrics in metrics_by_step.items():
        mgr.save(make_state(key, step=step), metrics=metrics)


def test_manager_names_checkpoints_by_zero_padded_step(tmp_path, key):
    path = ckpt.CheckpointManager(tmp_path).save(make_state(key, step=123))
    assert path == tmp_path / "step_000000123"


def test_keep_last_keeps_the_most_recent_steps(tmp_path, key):
    mgr = ckpt.CheckpointManager(tmp_path, keep_last=2)
    save_steps(mgr, key, {s: None for s in (10, 20, 30, 40)})
    assert mgr.steps() == [30, 40]
    assert mgr.latest() == tmp_path / "step_000000040"
    assert mgr.best() is None
    assert tmp_dirs(tmp_path) == []


def test_best_by_max_metric_survives_last_n_pruning(tmp_path, key):
    mgr = ckpt.CheckpointManager(tmp_path, keep_last=2, keep_best=1, best_metric="acc", mode="max")
    save_steps(mgr, key, {1: {"acc": 0.5}, 2: {"acc": 0.9}, 3: {"acc": 0.7}, 4: {"acc": 0.6}, 5: {"acc": 0.8}})
    assert mgr.steps() == [2, 4, 5]
    assert mgr.best() == mgr.path(2)


def test_best_by_min_metric_survives_last_n_pruning(tmp_path, key):
    mgr = ckpt.CheckpointManager(tmp_path, keep_last=1, keep_best=2, best_metric="loss", mode="min")
    save_steps(mgr, key, {1: {"loss": 3.0}, 2: {"loss": 1.0}, 3: {"loss": 2.0}, 4: {"loss": 2.5}, 5: {"loss": 4.0}})
    assert mgr.steps() == [2, 3, 5]
    assert mgr.best() == mgr.path(2)


def test_best_ignores_checkpoints_without_the_metric_and_ties_go_to_the_earlier_step(tmp_path, key):
    mgr = ckpt.CheckpointManager(tmp_path, keep_last=1, keep_best=1, best_metric="acc")
    save_steps(mgr, key, {1: {"acc": 0.5}, 2: {"acc": 0.7}, 3: {"acc": 0.7}, 4: {"loss": 0.1},
                          5: {"acc": float("nan")}})
    assert mgr.steps() == [2, 5]
    assert mgr.best() == mgr.path(2)


def test_a_fresh_manager_on_the_same_root_agrees_on_latest_and_best(tmp_path, key):
    mgr = ckpt.CheckpointManager(tmp_path, keep_last=2, best_metric="loss", mode="min")
    save_steps(mgr, key, {1: {"loss": 0.2}, 2: {"loss": 0.5}, 3: {"loss": 0.4}})
    fresh = ckpt.CheckpointManager(tmp_path, keep_last=2, best_metric="loss", mode="min")
    assert (fresh.latest(), fresh.best(), fresh.steps()) == (mgr.path(3), mgr.path(1), [1, 2, 3])
    fresh.save(make_state(key, step=4), metrics={"loss": 0.3})
    assert fresh.steps() == [1, 3, 4]


def test_latest_and_best_skip_directories_without_a_valid_meta_json(tmp_path, key):
    mgr = ckpt.CheckpointManager(tmp_path, best_metric="acc")
    save_steps(mgr, key, {1: {"acc": 0.1}})
    (tmp_path / "step_000000009").mkdir()  # e.g. copied by hand, incomplete
    broken = tmp_path / "step_000000008"
    broken.mkdir()
    (broken / "meta.json").write_text("{")
    assert mgr.latest() == mgr.path(1) and mgr.best() == mgr.path(1) and mgr.steps() == [1]


def test_restore_latest_returns_the_newest_state(tmp_path, key):
    mgr = ckpt.CheckpointManager(tmp_path)
    save_steps(mgr, key, {1: None, 2: None})
    assert tree.equal(mgr.restore_latest(make_state(key, step=0)), make_state(key, step=2))


def test_restore_latest_without_checkpoints_is_a_clear_error(tmp_path, key):
    with pytest.raises(CheckpointError, match="no complete checkpoint under"):
        ckpt.CheckpointManager(tmp_path).restore_latest(make_state(key))


@pytest.mark.parametrize("kwargs, match", [
    ({"keep_last": 0}, "keep_last must be an int >= 1 or None"),
    ({"keep_best": -1}, "keep_best must be an int >= 0"),
    ({"mode": "best"}, "mode must be 'max' or 'min', got 'best'"),
])
def test_manager_rejects_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        ckpt.CheckpointManager(tmp_path, **kwargs)


# --------------------------------------------------------------------------- recovery


def test_a_step_dir_without_meta_json_is_set_aside_so_that_step_can_be_saved_again(tmp_path, key, capsys):
    mgr = ckpt.CheckpointManager(tmp_path)
    save_steps(mgr, key, {1: None, 2: None})
    (mgr.path(2) / "meta.json").unlink()
    fresh = ckpt.CheckpointManager(tmp_path)  # what a resumed run opens
    assert fresh.steps() == [1] and (tmp_path / "step_000000002.incomplete").is_dir()
    assert "step_000000002" in capsys.readouterr().err
    fresh.save(make_state(key, step=2))  # not "already exists": no dead end
    assert fresh.steps() == [1, 2]


def test_restore_latest_falls_back_past_a_corrupt_newest_checkpoint_and_names_it(tmp_path, key, capsys):
    mgr = ckpt.CheckpointManager(tmp_path)
    save_steps(mgr, key, {1: None, 2: None, 3: None})
    data = mgr.path(3) / "params.safetensors"
    raw = bytearray(data.read_bytes())
    raw[-1] ^= 0xFF
    data.write_bytes(bytes(raw))
    restored = mgr.restore_latest(make_state(key, step=0))
    assert int(restored.step) == 2
    err = capsys.readouterr().err
    assert "skipping step_000000003" in err and "SHA-256" in err
    assert (tmp_path / "step_000000003.corrupt").is_dir()  # kept for inspection, never deleted
    assert mgr.steps() == [1, 2]


def test_best_verified_skips_a_damaged_best_for_the_next_best(tmp_path, key, capsys):
    mgr = ckpt.CheckpointManager(tmp_path, best_metric="acc", keep_last=None)
    save_steps(mgr, key, {1: {"acc": 0.5}, 2: {"acc": 0.9}, 3: {"acc": 0.7}})
    (mgr.path(2) / "opt_state.safetensors").unlink()
    assert mgr.best_verified() == mgr.path(3)
    assert "skipping step_000000002" in capsys.readouterr().err


def test_restore_step_picks_a_checkpoint_explicitly_and_names_the_steps_there_are(tmp_path, key):
    mgr = ckpt.CheckpointManager(tmp_path, keep_last=None)
    save_steps(mgr, key, {1: None, 2: None})
    assert int(mgr.restore_step(1, make_state(key, step=0)).step) == 1
    with pytest.raises(CheckpointError, match=r"no checkpoint of step 5 .* steps \[1, 2\]"):
        mgr.restore_step(5, make_state(key, step=0))


@pytest.mark.parametrize("trial", range(10))
def test_no_dead_end_resume_after_deleting_or_corrupting_the_newest_checkpoint(tmp_path, key, trial):
    """Ten kinds of damage to the newest checkpoint; each time the manager restores the one before
    and can save the damaged step again."""
    mgr = ckpt.CheckpointManager(tmp_path, keep_last=None)
    save_steps(mgr, key, {1: None, 2: None})
    newest = mgr.path(2)
    files = ["meta.json", "params.safetensors", "model_state.safetensors", "opt_state.safetensors"]
    target = newest / files[trial % 4]
    if trial < 4:
        target.unlink()
    elif trial < 8:
        target.write_bytes(target.read_bytes()[: max(1, target.stat().st_size // 2)])
    elif trial == 8:
        target.write_text("")
    else:
        for f in files:
            (newest / f).unlink()
    fresh = ckpt.CheckpointManager(tmp_path, keep_last=None)
    assert int(fresh.restore_latest(make_state(key, step=0)).step) == 1
    fresh.save(make_state(key, step=2))
    assert fresh.steps() == [1, 2]
    assert int(fresh.restore_latest(make_state(key, step=0)).step) == 2


# --------------------------------------------------------------------------- compatibility


def _mlp_run(tx):
    from funcml.nn import model as models
    from funcml.nn.reference import MLPConfig
    from funcml.train import init_train_state, make_train_step

    cfg = MLPConfig(in_dim=4, hidden=(8,), out_dim=1)

    def loss_fn(params, model_state, batch, key):
        pred, model_state = models.apply(params, model_state, batch["x"], cfg, key=key, train=True)
        return ((pred[:, 0] - batch["y"]) ** 2).mean(), ({}, model_state)

    params, model_state = models.init(random.key(0), cfg)
    batches = [{"x": random.normal(random.key(10 + i), (8, 4)), "y": random.normal(random.key(20 + i), (8,))}
               for i in range(4)]
    return init_train_state(params, model_state, tx, random.key(1)), make_train_step(loss_fn, tx, compile=False), batches


def test_a_checkpoint_with_the_bare_optimizer_state_of_older_versions_restores_and_resumes_bit_exactly(tmp_path):
    from funcml import optim

    tx = optim.adamw(1e-2)
    ts0, step, batches = _mlp_run(tx)
    # What funcml wrote before the step's optimizer ran inside optim.apply_if_finite: the bare state.
    old = ts0._replace(opt_state=ts0.opt_state.inner_state)
    for b in batches[:2]:
        old, _ = step(old, b)
    ckpt.save(tmp_path / "old", old)
    assert not any(n.startswith("inner_state") for n in safetensors.torch.load_file(tmp_path / "old" / "opt_state.safetensors"))

    restored = ckpt.restore(tmp_path / "old", like=ts0)
    assert isinstance(restored.opt_state, optim.ApplyIfFiniteState)
    assert tree.equal(restored.opt_state.inner_state, old.opt_state) and tree.equal(restored.params, old.params)
    assert (int(restored.opt_state.total_notfinite), bool(restored.opt_state.last_finite)) == (0, True)
    straight = old
    for b in batches[2:]:
        restored, _ = step(restored, b)
        straight, _ = step(straight, b)
    assert tree.equal(restored.params, straight.params) and tree.equal(restored.opt_state.inner_state, straight.opt_state)


def test_a_checkpoint_of_the_current_layout_round_trips_its_skip_counters(tmp_path):
    from funcml import optim

    ts0, step, batches = _mlp_run(optim.adamw(1e-2))
    bad = {"x": batches[0]["x"], "y": torch.full((8,), float("nan"))}
    ts, _ = step.step_fn(ts0, bad)  # the pure step (no raise): the batch is skipped and counted
    ckpt.save(tmp_path / "new", ts)
    out = ckpt.restore(tmp_path / "new", like=ts0)
    assert tree.equal(out.opt_state, ts.opt_state) and int(out.opt_state.total_notfinite) == 1



def test_the_on_disk_layout_of_a_train_state_is_that_of_older_versions(tmp_path, key):
    path = ckpt.save(tmp_path / "c", make_state(key, loss_scale=True), config=TinyConfig(), metrics={"acc": 0.5})
    meta = json.loads((path / "meta.json").read_text())
    assert list(meta) == ["format", "format_version", "step", "key", "loss_scale", "config", "metrics", "versions",
                          "files"]
    assert (meta["format"], meta["format_version"], meta["step"], meta["key"]) == ("funcml.checkpoint", 1, 7, [0, 42])
    assert meta["loss_scale"] == {"scale": {"dtype": "float32", "value": 32768.0},
                                  "good_steps": {"dtype": "int64", "value": 3}}
    assert list(meta["files"]) == ["params.safetensors", "model_state.safetensors", "opt_state.safetensors"]
    assert meta["files"]["opt_state.safetensors"]["names"][:2] == ["0.count", "0.mu.enc.0.w"]


class EmaState(dict):
    """A state that is not a TrainState: one tree (`ema`) and a step, through the checkpoint protocol."""

    def checkpoint_parts(self):
        return {"ema": self["ema"]}, {"step": self["step"], "decay": 0.99}

    def checkpoint_template(self, meta, stored):
        from funcml.checkpoint_format import Template

        problems = [] if meta.get("decay") == 0.99 else [f"decay {meta.get('decay')} in the checkpoint"]
        return Template({"ema": self["ema"]}, problems,
                        lambda trees, meta, device: EmaState(ema=trees["ema"], step=meta["step"]))


def test_any_state_with_the_checkpoint_protocol_saves_and_restores_its_named_trees(tmp_path, key):
    state = EmaState(ema={"w": random.normal(key, (3, 2)), "n": torch.tensor(4)}, step=3)
    path = ckpt.save(tmp_path / "ema", state)
    assert sorted(p.name for p in path.iterdir()) == ["ema.safetensors", "meta.json"]
    out = ckpt.restore(path, EmaState(ema={"w": torch.zeros(3, 2), "n": torch.tensor(0)}, step=0))
    assert out["step"] == 3 and tree.equal(out["ema"], state["ema"])
    with pytest.raises(CheckpointError, match=r"ema.safetensors: missing 'v' \(expected \[1\] float32\)"):
        ckpt.restore(path, EmaState(ema={"w": torch.zeros(3, 2), "n": torch.tensor(0), "v": torch.zeros(1)}, step=0))
    with pytest.raises(CheckpointError, match="holds a 'ema' tree that `like` does not have"):
        ckpt.restore(path, make_state(key))


def test_rewind_sets_later_checkpoints_aside_and_refuses_a_broken_or_missing_step(tmp_path, key):
    mgr = ckpt.CheckpointManager(tmp_path, keep_last=None)
    save_steps(mgr, key, {1: None, 2: None, 3: None})
    assert mgr.rewind(2) == mgr.path(2)
    assert mgr.steps() == [1, 2] and (tmp_path / "step_000000003.superseded").is_dir()
    with pytest.raises(CheckpointError, match=r"no checkpoint of step 7 .* steps \[1, 2\]"):
        mgr.rewind(7)
    (mgr.path(1) / "params.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="step 1 cannot be restored"):
        mgr.rewind(1)
    assert mgr.steps() == [1, 2]  # nothing moved by a refused rewind
