"""Shared fixtures. Tests run on 2 CPU cores in CI: keep each file fast, mark long ones `slow`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

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
        if "cuda" in item.keywords:
            item.add_marker(skip)


# Real data (never part of the project): `../shared/data/` beside the checkout, or the folder
# named by FUNCML_SHARED_DATA. Tests that need it take the `real_data` fixture and skip, saying
# where they looked, when it is absent (CI has `../shared`).
SHARED_DATA = Path(os.environ.get("FUNCML_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture
def real_data():
    """`real_data("fsdd-dev")` -> the folder, or the test is skipped with the path it looked for."""

    def folder(name: str) -> Path:
        path = SHARED_DATA / name
        if not path.is_dir():
            pytest.skip(f"real data {name!r} not found at {path} (set FUNCML_SHARED_DATA to the folder that holds it)")
        return path

    return folder
