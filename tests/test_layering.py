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


# Above the train package: the run orchestration and the applications (they train models).
_ABOVE_TRAIN = ("funcml.trainer", "funcml.seg", "funcml.asr")


def _imports(path: Path, module: str) -> set[str]:
    """The absolute names of the modules `path` (module `module`) imports, relative imports resolved."""
    import ast

    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[:len(parts) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            out.add(base)
            out |= {f"{base}.{a.name}" for a in node.names}
    return out


def test_no_core_module_below_the_train_package_imports_it():
    root = REPO / "funcml"
    offenders = {}
    for path in root.rglob("*.py"):
        rel = path.relative_to(REPO).with_suffix("")
        module = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        above = any(module == m or module.startswith(m + ".") for m in _ABOVE_TRAIN)
        if module.startswith("funcml.train") or above or module == "funcml":
            continue
        bad = sorted(m for m in _imports(path, module) if m == "funcml.train" or m.startswith("funcml.train."))
        if bad:
            offenders[module] = bad
    assert not offenders, f"modules below funcml.train import it: {offenders}"


def test_the_layering_check_resolves_relative_imports():
    found = _imports(REPO / "funcml" / "train" / "loop.py", "funcml.train.loop")
    assert {"funcml.checkpoint", "funcml.errors", "funcml.train.state"} <= found
