"""Every flag of every script has help: each init field of each config a script parses with tyro
(experiments/*.py, benchmarks/*.py, and the configs nested in them) has an attribute docstring,
the string literal right under the field that tyro shows in `--help`.

A script's configs are found without running it: the first argument of its `tyro.cli(...)` /
`config.cli(...)` calls (read from its source), plus the dataclasses defined in the script, plus
every dataclass reachable from those through field type annotations and default values
(e.g. AsrTrainConfig -> ParaformerConfig -> EncoderConfig).
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import sys
import typing
from pathlib import Path
from types import ModuleType

from tyro._docstrings import get_field_docstring

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SCRIPTS = sorted([*(ROOT / "experiments").glob("*.py"), *(ROOT / "benchmarks").glob("*.py")])
_PREFIX = "_funcml_cli_help_"

# Dataclasses defined in the scripts that are internal records, never parsed by tyro (no flags).
NOT_CLI = {
    "benchmarks.asr_real.Recording",          # one loaded recording
    "benchmarks.bench_train_step.StepSetup",  # a built train step, its state and batch
    "benchmarks.bench_train_step._Variant",   # one timed variant of the sweep
    "benchmarks.common.Timing",               # the times of one timed function
}

# Documented by the segmentation work; remove from PENDING when done.
PENDING: set[str] = set()


def _load(path: Path) -> ModuleType:
    """Import a script from its path under a private module name (its main does not run)."""
    name = f"{_PREFIX}{path.parent.name}_{path.stem}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def _label(cls: type) -> str:
    """`module.Class`, a script's module named as its path (benchmarks.bench_cif), not the private name."""
    module = cls.__module__
    if module.startswith(_PREFIX):
        folder, _, stem = module[len(_PREFIX):].partition("_")
        module = f"{folder}.{stem}"
    return f"{module}.{cls.__qualname__}"


def _cli_targets(module: ModuleType, path: Path) -> list[type]:
    """The first argument of each `tyro.cli(X, ...)` / `config.cli(X, ...)` / `cli(X, ...)` call in the source."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not (isinstance(node, ast.Call) and node.args):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
        if name != "cli" or not isinstance(node.args[0], (ast.Name, ast.Attribute)):
            continue
        target = eval(compile(ast.Expression(node.args[0]), str(path), "eval"), vars(module))  # `X` or `task.X`
        if dataclasses.is_dataclass(target) and isinstance(target, type):
            out.append(target)
    return out


def _classes_in(tp: object) -> list[type]:
    """The dataclass types inside an annotation (`X | None`, `tuple[X, ...]`, `Annotated[X, ...]`, ...)."""
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return [tp]
    return [c for arg in typing.get_args(tp) for c in _classes_in(arg)]


def _reachable(roots: list[type]) -> dict[str, type]:
    seen: dict[str, type] = {}
    todo = list(roots)
    while todo:
        cls = todo.pop()
        if _label(cls) in seen:
            continue
        seen[_label(cls)] = cls
        try:
            hints = typing.get_type_hints(cls)
        except Exception:  # an annotation only importable under TYPE_CHECKING: fall back to the raw ones
            hints = {}
        for f in dataclasses.fields(cls):
            todo += _classes_in(hints.get(f.name, f.type))
            if f.default is not dataclasses.MISSING and dataclasses.is_dataclass(f.default):
                todo.append(type(f.default))
            if f.default_factory is not dataclasses.MISSING:
                value = f.default_factory()
                if dataclasses.is_dataclass(value) and not isinstance(value, type):
                    todo.append(type(value))
    return seen


def _configs() -> dict[str, type]:
    roots = []
    for path in SCRIPTS:
        module = _load(path)
        roots += _cli_targets(module, path)
        roots += [obj for obj in vars(module).values()
                  if isinstance(obj, type) and dataclasses.is_dataclass(obj) and obj.__module__ == module.__name__]
    return _reachable(roots)


def test_every_cli_config_field_has_help():
    configs = _configs()
    stale = sorted((NOT_CLI | PENDING) - configs.keys())
    assert not stale, f"NOT_CLI / PENDING name classes no script reaches any more (remove them): {stale}"
    missing = [f"{label}.{f.name}"
               for label, cls in sorted(configs.items()) if label not in NOT_CLI | PENDING
               for f in dataclasses.fields(cls) if f.init and not get_field_docstring(cls, f.name, ())]
    assert not missing, (
        f"{len(missing)} config field(s) without help in --help; write an attribute docstring (a string "
        "literal right under the field) for each:\n  " + "\n  ".join(missing))


def test_scripts_parse_the_configs_found():
    """The search itself works: the main scripts' configs and a nested one are among those checked."""
    configs = _configs()
    for label in ("experiments.main.MainConfig", "funcml.asr.task.AsrTrainConfig", "funcml.asr.encoder.EncoderConfig",
                  "benchmarks.bench_cif.CIFBenchConfig", "funcml.seg.task.SegTrainConfig"):
        assert label in configs, f"{label} not found among {sorted(configs)}"
