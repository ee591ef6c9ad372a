"""Configs: frozen dataclasses, parsed by tyro, saved as JSON/YAML beside every run.

    @dataclasses.dataclass(frozen=True)
    class TrainConfig:
        lr: float = 1e-3
        model: ModelConfig = UNetConfig()     # a Union of config classes = the model registry

    cfg = config.cli(TrainConfig)                          # flags
    cfg = config.cli(TrainConfig, presets=PRESETS)         # `script.py PRESET [flags]`
    cfg = config.cli(TrainConfig, args=["--config", "run/config.json", "--lr", "3e-4"])
    config.save(cfg, "run/config.json"); cfg2 = config.load(TrainConfig, "run/config.json")

Configs are hashable (they are passed as static arguments and `torch.compile`
specializes on them), so fields hold tuples, not lists. A config checks its own values in
`__post_init__` with the validators here, which raise `ConfigError("<Class>: <what is wrong>")`:

    def __post_init__(self):
        config.require_at_least(self, 1, "steps", "batch_size")
        config.require_one_of(self, "precision", ("fp32", "bf16"))
        config.require(self.lr > 0, self, f"lr must be > 0, got {self.lr}")

The set: `require` (any condition, your message), `require_at_least`, `require_one_of`,
`require_positive_int` (ints, or tuples of them), `require_in_range` (a number in [low, high] or
[low, high)) and `require_pair` (a `(min, max)` range with optional bounds). Every config of
funcml checks itself with these, so every message has one shape.

`load`/`from_dict` check every field and name the one that is unknown, missing or of the
wrong type. A nested dataclass
whose field type is a Union is saved with a `"_type"` tag (its class name) so that the
right class comes back.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence, TypeVar, Union

import tyro

from .errors import ConfigError

__all__ = ["to_dict", "from_dict", "save", "load", "cli", "replace", "TYPE_TAG", "require", "require_at_least",
           "require_one_of", "require_positive_int", "require_in_range", "require_pair"]

T = TypeVar("T")
TYPE_TAG = "_type"
replace = dataclasses.replace


def require(ok: bool, cfg: Any, message: str) -> None:
    """Raise `ConfigError("<type(cfg).__name__>: <message>")` unless `ok`: the one form of a config's
    own checks, so that every message names the config class and says what to change."""
    if not ok:
        raise ConfigError(f"{type(cfg).__name__}: {message}")


def require_at_least(cfg: Any, minimum: float, *names: str) -> None:
    """Each field `names` of `cfg` is `>= minimum`, else `ConfigError("<Class>: <name> must be >= <minimum>,
    got <value>")` for the first that is not."""
    for name in names:
        value = getattr(cfg, name)
        require(value >= minimum, cfg, f"{name} must be >= {minimum}, got {value}")


def require_one_of(cfg: Any, name: str, choices: Sequence[Any]) -> None:
    """Field `name` of `cfg` is one of `choices` (a `Literal` field checked when the config is made in
    code, not only by tyro), else `ConfigError("<Class>: <name> must be one of ..., got <value>")`."""
    value = getattr(cfg, name)
    require(value in choices, cfg, f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def require_positive_int(cfg: Any, *names: str) -> None:
    """Each field `names` of `cfg` is an int >= 1 (a tuple field: a tuple of them), else
    `ConfigError("<Class>: <name> must be a positive int, got <value>")` for the first that is not."""
    for name in names:
        value = getattr(cfg, name)
        if isinstance(value, tuple):
            require(all(_is_int(v) and v >= 1 for v in value), cfg,
                    f"{name} must be a tuple of positive ints, got {value!r}")
        else:
            require(_is_int(value) and value >= 1, cfg, f"{name} must be a positive int, got {value!r}")


def require_in_range(cfg: Any, low: float, high: float, *names: str, high_open: bool = False) -> None:
    """Each field `names` of `cfg` is a number in `[low, high]` (`[low, high)` with `high_open`), else
    `ConfigError("<Class>: <name> must be a number in [low, high], got <value>")` for the first that is not."""
    for name in names:
        value = getattr(cfg, name)
        inside = _is_number(value) and low <= value and (value < high if high_open else value <= high)
        require(inside, cfg, f"{name} must be a number in [{low}, {high}{')' if high_open else ']'}, got {value!r}")


def require_pair(cfg: Any, *names: str, low: float | None = None, high: float | None = None,
                 low_open: bool = False, optional: bool = False) -> None:
    """Each field `names` of `cfg` is a `(min, max)` pair of numbers with `min <= max`, inside
    `[low, high]` where given (`(low, high]` with `low_open`), else `ConfigError("<Class>: <name> must
    be (min, max) with <the bounds>, got <value>")` for the first that is not. With `optional`, None
    passes (a range left off, for fields typed `tuple[...] | None`)."""
    for name in names:
        value = getattr(cfg, name)
        if value is None and optional:
            continue
        ok = isinstance(value, tuple) and len(value) == 2 and all(_is_number(v) for v in value)
        if ok:
            lo, hi = value
            ok = (lo <= hi and (low is None or (lo > low if low_open else lo >= low))
                  and (high is None or hi <= high))
        above = "" if low is None else f"{low} {'<' if low_open else '<='} "
        below = "" if high is None else f" <= {high}"
        require(ok, cfg, f"{name} must be (min, max) with {above}min <= max{below}, got {value!r}")


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-able dict of a (nested) config dataclass; each dataclass carries a `_type` tag."""
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        raise ConfigError(f"to_dict expects a dataclass instance, got {type(cfg).__name__}")

    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {TYPE_TAG: type(v).__name__, **{f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}}
        if isinstance(v, enum.Enum):
            return v.value
        if isinstance(v, (tuple, list)):
            return [conv(x) for x in v]
        if isinstance(v, Mapping):
            return {str(k): conv(x) for k, x in v.items()}
        if isinstance(v, Path):
            return str(v)
        return v

    return conv(cfg)


def _strip_annotated(tp: Any) -> Any:
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def _type_name(tp: Any) -> str:
    tp = _strip_annotated(tp)
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(tp: Any, v: Any, where: str) -> Any:
    """Check `v` against type `tp` and convert it (lists -> tuples, dicts -> dataclasses)."""
    tp = _strip_annotated(tp)
    origin, args = typing.get_origin(tp), typing.get_args(tp)

    def bad(expected: str | None = None) -> ConfigError:
        return ConfigError(f"config field '{where}': expected {expected or _type_name(tp)}, got {v!r}")

    if tp is Any:
        return v
    if tp is type(None):
        if v is not None:
            raise bad("None")
        return None
    if origin in (Union, types.UnionType):
        if v is None and type(None) in args:
            return None
        members = [a for a in args if a is not type(None)]
        dcs = [_strip_annotated(a) for a in members if dataclasses.is_dataclass(_strip_annotated(a))]
        if isinstance(v, Mapping) and TYPE_TAG in v and dcs:
            for dc in dcs:
                if dc.__name__ == v[TYPE_TAG]:
                    return _from_dict(dc, v, where)
            raise ConfigError(f"config field '{where}': unknown type {v[TYPE_TAG]!r}; "
                              f"expected one of {[d.__name__ for d in dcs]}")
        errors = []
        for a in members:
            try:
                return _convert(a, v, where)
            except ConfigError as e:
                errors.append(str(e))
        raise bad(" or ".join(_type_name(a) for a in members))
    if origin is Literal:
        if v not in args:
            raise bad(f"one of {list(args)}")
        return v
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return v if isinstance(v, tp) else tp(v)
        except ValueError:
            raise bad(f"one of {[m.value for m in tp]}") from None
    if dataclasses.is_dataclass(tp):
        if dataclasses.is_dataclass(v) and isinstance(v, tp):
            return v
        if not isinstance(v, Mapping):
            raise bad(f"a {tp.__name__} mapping")
        return _from_dict(tp, v, where)
    if tp is bool:
        if not isinstance(v, bool):
            raise bad("a bool (true/false)")
        return v
    if tp is int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise bad("an int")
        return v
    if tp is float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise bad("a float")
        return float(v)
    if tp is str:
        if not isinstance(v, str):
            raise bad("a str")
        return v
    if tp is Path or (isinstance(tp, type) and issubclass(tp, os.PathLike)):
        if not isinstance(v, (str, os.PathLike)):
            raise bad("a path")
        return Path(v)
    if origin in (tuple, list, Sequence, typing.Sequence) or tp in (tuple, list):
        if not isinstance(v, (list, tuple)):
            raise bad("a list")
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(args) != len(v):
                raise bad(f"{len(args)} items")
            items = [_convert(a, x, f"{where}[{i}]") for i, (a, x) in enumerate(zip(args, v))]
        else:
            elem = args[0] if args else Any
            items = [_convert(elem, x, f"{where}[{i}]") for i, x in enumerate(v)]
        return list(items) if origin is list else tuple(items)
    if origin in (dict, Mapping, typing.Mapping) or tp is dict:
        if not isinstance(v, Mapping):
            raise bad("a mapping")
        kt, vt = args if args else (Any, Any)
        return {_convert(kt, k, f"{where}.<key>"): _convert(vt, x, f"{where}.{k}") for k, x in v.items()}
    if isinstance(tp, type):
        if not isinstance(v, tp):
            raise bad()
        return v
    return v


def _from_dict(cls: type[T], data: Mapping[str, Any], where: str) -> T:
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    prefix = f"{where}." if where else ""
    tag = data.get(TYPE_TAG)
    if tag is not None and tag != cls.__name__:
        raise ConfigError(f"config '{where or cls.__name__}': the file holds a {tag}, expected {cls.__name__}")
    unknown = [k for k in data if k not in fields and k != TYPE_TAG]
    if unknown:
        raise ConfigError(f"unknown config field(s) {[prefix + k for k in unknown]} for {cls.__name__}; "
                          f"known fields: {sorted(fields)}")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], prefix + name)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"config field '{prefix + name}' is missing and has no default")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config {cls.__name__}: {e}") from None


def from_dict(cls: type[T], data: Mapping[str, Any]) -> T:
    """Build config `cls` from a dict, checking every field (see module docstring)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"a {cls.__name__} config must be a mapping, got {type(data).__name__}")
    return _from_dict(cls, data, "")


def save(cfg: Any, path: str | os.PathLike) -> Path:
    """Write `cfg` as JSON (`.json`) or YAML (`.yaml`/`.yml`), atomically."""
    path = Path(path)
    data = to_dict(cfg)
    if path.suffix in (".yaml", ".yml"):
        import yaml

        text = yaml.safe_dump(data, sort_keys=False)
    elif path.suffix == ".json":
        text = json.dumps(data, indent=2) + "\n"
    else:
        raise ConfigError(f"config file {path}: use a .json, .yaml or .yml name")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def load(cls: type[T], path: str | os.PathLike) -> T:
    """Read a config of class `cls` from JSON or YAML, checking every field."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    text = path.read_text()
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as e:  # noqa: BLE001 - any parse failure is the user's file
        raise ConfigError(f"config file {path} could not be parsed: {e}") from None
    try:
        return from_dict(cls, data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def _pop_config_flag(args: list[str]) -> tuple[str | None, list[str]]:
    out, path, i = [], None, 0
    while i < len(args):
        a = args[i]
        if a == "--config":
            if i + 1 >= len(args):
                raise ConfigError("--config needs a file path")
            path, i = args[i + 1], i + 2
            continue
        if a.startswith("--config="):
            path, i = a.split("=", 1)[1], i + 1
            continue
        out.append(a)
        i += 1
    return path, out


def cli(cls: type[T], *, presets: Mapping[str, tuple[str, T]] | None = None, args: Sequence[str] | None = None,
        description: str | None = None, prog: str | None = None) -> T:
    """Parse a config from the command line with tyro.

    * `--config FILE` (JSON/YAML) gives the defaults; other flags override them.
    * With `presets` (`{name: (description, config)}`) the first argument names a preset
      whose values are the defaults: `script.py unet --lr 3e-4`. `--config` replaces the preset.
    * Bad flags make tyro print the usage and exit with status 2.
    """
    argv = list(sys.argv[1:] if args is None else args)
    config_path, argv = _pop_config_flag(argv)
    kw = dict(description=description, prog=prog)
    if config_path is not None:
        base = load(cls, config_path)
        if presets and argv and argv[0] in presets:
            raise ConfigError(f"give either a preset ({argv[0]!r}) or --config, not both")
        return tyro.cli(type(base), args=argv, default=base, **kw)
    if presets:
        return tyro.extras.overridable_config_cli(dict(presets), args=argv, **kw)
    return tyro.cli(cls, args=argv, **kw)
