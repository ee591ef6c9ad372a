"""The package's layering: what `import funcml` pulls in, and which way the imports run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _modules_after(code: str) -> list[str]:
    """The names in `sys.modules` after running `code` in a fresh interpreter."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_funcml_loads_neither_matplotlib_nor_the_report_package():
    loaded = _modules_after("import funcml")
    assert "funcml" in loaded
    assert not [m for m in loaded if m == "matplotlib" or m.startswith("matplotlib.")]
    assert not [m for m in loaded if m.startswith("funcml.report")]
