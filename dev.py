#!/usr/bin/env python3
"""Set up funcml in `.venv/` (pinned by constraints.txt) and run its jobs.

    python3 dev.py main            # set up, train + evaluate on the built-in data
    python3 dev.py test            # set up (dev extra), run the default test suite
    python3 dev.py test -m slow    # the slow stage (CI runs it second)
    python3 dev.py setup [EXTRAS]  # only set up, e.g. `python3 dev.py setup dev`

Needs only Python >= 3.11 and pip. The install is repeated only when pyproject.toml or
constraints.txt change (a stamp file in .venv records what was installed).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PY = VENV / "bin" / "python"
MAIN_EXTRAS = "speech"
TEST_EXTRAS = "dev"


def _fingerprint(extras: str) -> str:
    h = hashlib.sha256(extras.encode())
    for name in ("pyproject.toml", "constraints.txt"):
        h.update((ROOT / name).read_bytes())
    return h.hexdigest()


def setup(extras: str) -> None:
    if sys.version_info < (3, 11):
        sys.exit(f"funcml needs Python >= 3.11, this is {sys.version.split()[0]}")
    if not PY.exists():
        print(f"[dev] creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    stamp = VENV / f".funcml-{extras or 'base'}"
    want = _fingerprint(extras)
    if stamp.exists() and stamp.read_text() == want:
        return
    target = f".[{extras}]" if extras else "."
    print(f"[dev] installing funcml{target[1:]} with constraints.txt (first time: a few minutes)", flush=True)
    cmd = [str(PY), "-m", "pip", "install", "--disable-pip-version-check", "-q",
           "-c", str(ROOT / "constraints.txt"), "-e", target]
    env = dict(os.environ, PIP_CONSTRAINT=str(ROOT / "constraints.txt"))
    subprocess.run(cmd, cwd=ROOT, check=True, env=env)
    stamp.write_text(want)


def run(argv: list[str]) -> int:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([str(PY), *argv], cwd=ROOT, env=env).returncode


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in ("main", "test", "setup"):
        print(__doc__)
        return 2
    job, rest = sys.argv[1], sys.argv[2:]
    if job == "setup":
        setup(rest[0] if rest else TEST_EXTRAS)
        return 0
    if job == "main":
        setup(MAIN_EXTRAS)
        return run(["experiments/main.py", *rest])
    setup(TEST_EXTRAS)
    # The default stage leaves out tests marked slow; `-m slow` (or any -m) replaces that.
    marker = [] if any(a == "-m" or a.startswith("-m") for a in rest) else ["-m", "not slow"]
    return run(["-m", "pytest", *marker, *rest])


if __name__ == "__main__":
    sys.exit(main())
