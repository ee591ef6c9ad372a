"""Shared fixtures. Tests run on 2 CPU cores in CI: keep each file fast, mark long ones `slow`."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from funcml import random

# One intra-op thread. The tests' tensors are tiny: a thread pool buys nothing on them, and on a
# busy 2-core machine each op's OpenMP barrier waits on a descheduled thread (measured: the
# encoder tests took 38.8 s with 2 threads, 6 s with 1; a seg gradcheck was 6x slower). A test
# that needs more threads sets them itself.
torch.set_num_threads(1)

# The default stage compiles with aot_eager: the same Dynamo capture and AOT autograd as
# inductor, checked in seconds. CI's second stage re-runs the `compile` tests with inductor,
# whose C++ code generation costs minutes on a cold cache (see funcml/compiler.py).
os.environ.setdefault("FUNCML_COMPILE_BACKEND", "aot_eager")


@pytest.fixture
def key() -> torch.Tensor:
    """A fixed PRNG key, so every test is deterministic."""
    return random.key(0)


@pytest.fixture
def getkey():
    """A callable that returns a fresh key on each call (`k = getkey()`), deterministically."""
    state = {"key": random.key(1234)}

    def next_key() -> torch.Tensor:
        state["key"], sub = random.split(state["key"])
        return sub

    return next_key


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skipif(True, reason="needs a CUDA device (run on a GPU machine)")
    for item in items:
        if item.get_closest_marker("cuda") is not None:  # the marker, not a parameter id that says "cuda"
            item.add_marker(skip)


# Real data (never part of the project): `../shared/data/` beside the checkout, or the folder
# named by FUNCML_SHARED_DATA. Tests that need it take the `real_data` fixture and skip, saying
# where they looked, when it is absent (CI has `../shared`).
SHARED_DATA = Path(os.environ.get("FUNCML_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture(autouse=True)
def one_thread():
    """Every test, and every fixture set up between tests, runs with the one thread set above: a
    test that sets more (a CLI's `--threads`, the main job) gets one back when it ends."""
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(1)


# Trained tiny runs, one per session: each is trained once, the first time a test asks for it,
# into a session temporary folder. They are shared, so a test only reads them; a test that
# writes into a run (an eval folder, a resumed checkpoint) works on a copy
# (`shutil.copytree(run, tmp_path / "run")`).
# At the end of the session each run must be as it was trained (checked: a test that wrote
# into one fails the session, naming the files).

ROOT = Path(__file__).resolve().parents[1]


def _snapshot(run: Path) -> dict[str, int]:
    return {str(p.relative_to(run)): p.stat().st_size for p in sorted(run.rglob("*")) if p.is_file()}


@contextlib.contextmanager
def _read_only(run: Path):
    before = _snapshot(run)
    yield run
    after = _snapshot(run)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, (f"a test wrote into the shared run {run} (copy it first: "
                         f"shutil.copytree(run, tmp_path / 'run')): {changed[:10]}")


def _asr_train(argv: list[str], runs: Path) -> Path:
    sys.path.insert(0, str(ROOT / "experiments"))
    import asr_train

    asr_train.main([*argv, "--runs-dir", str(runs)])
    (run,) = runs.glob("asr-tiny/*")
    return run


TINY_SPEECH = ["tiny", "--data", "speech", "--num-train", "8", "--num-val", "4", "--num-test", "4",
               "--speech.digits-len", "1", "2", "--spec-augment", "--steps", "3", "--eval-every", "3"]
"""`experiments/asr_train.py` arguments of the shared speech run (`asr_speech_run`)."""


@pytest.fixture(scope="session")
def asr_toy_run(tmp_path_factory) -> Path:
    """`python experiments/asr_train.py tiny`: the ASR tiny preset on toy features (read-only)."""
    with _read_only(_asr_train(["tiny"], tmp_path_factory.mktemp("asr_toy_runs"))) as run:
        yield run


@pytest.fixture(scope="session")
def asr_speech_run(tmp_path_factory) -> Path:
    """The ASR tiny preset on 8 synthesized utterances (digits, 1-2 words, SpecAugment), 3 steps (read-only)."""
    cache = tmp_path_factory.mktemp("asr_speech_cache")
    run = _asr_train([*TINY_SPEECH, "--cache-dir", str(cache)], tmp_path_factory.mktemp("asr_speech_runs"))
    with _read_only(run):
        yield run


@pytest.fixture(scope="session")
def seg_tiny_run(tmp_path_factory) -> Path:
    """The segmentation `tiny` preset (16x16 shapes, U-Net+Transformer) trained for 2 steps (read-only)."""
    from funcml.seg import task

    cfg = dataclasses.replace(task.PRESETS["tiny"][1], steps=2, eval_every=2, val_size=8,
                              runs_dir=tmp_path_factory.mktemp("seg_tiny_runs"))
    run, _ = task.train(cfg, progress=False)
    with _read_only(Path(run.path)) as path:
        yield path


def binary_folder(root: Path, n: int = 4, size: tuple[int, int] = (24, 20), seed: int = 0,
                  values: tuple[int, int] = (0, 255)) -> Path:
    """A folder dataset of `n` grey images with a bright disc (`images/`, `masks/`): masks `values[1]`
    inside the disc, `values[0]` outside (0/255 by default, as EM membrane masks). For the mask-scan
    and real-folder tests."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir(parents=True)
    h, w = size
    yy, xx = np.mgrid[:h, :w]
    for i in range(n):
        cy, cx, r = rng.integers(5, h - 5), rng.integers(5, w - 5), rng.integers(3, 6)
        inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        image = np.where(inside, 200, 60) + rng.integers(0, 20, size=(h, w))
        Image.fromarray(image.astype(np.uint8), "L").save(root / "images" / f"s{i:02d}.png")
        mask = np.where(inside, values[1], values[0]).astype(np.uint8)
        Image.fromarray(mask, "L").save(root / "masks" / f"s{i:02d}.png")
    return root


@pytest.fixture
def real_data():
    """`real_data("fsdd-dev")` -> the folder, or the test is skipped with the path it looked for."""

    def folder(name: str) -> Path:
        path = SHARED_DATA / name
        if not path.is_dir():
            pytest.skip(f"real data {name!r} not found at {path} (set FUNCML_SHARED_DATA to the folder that holds it)")
        return path

    return folder
