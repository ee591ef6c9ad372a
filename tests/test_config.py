"""funcml.config: frozen, hashable, round-trips through files, strict about fields, tyro CLI."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap
from typing import Annotated, Literal, Union

import pytest
import tyro

from funcml import config
from funcml.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class SmallNet:
    depth: int = 2
    width: int = 8


@dataclasses.dataclass(frozen=True)
class BigNet:
    depth: int = 4
    heads: int = 2


Model = Union[Annotated[SmallNet, tyro.conf.subcommand("small")], Annotated[BigNet, tyro.conf.subcommand("big")]]


@dataclasses.dataclass(frozen=True)
class Train:
    lr: float = 1e-3
    steps: int = 10
    precision: Literal["fp32", "bf16"] = "fp32"
    sizes: tuple[int, ...] = (32, 64)
    note: str | None = None
    model: Model = SmallNet()


PRESETS = {"small": ("the small net", Train()), "big": ("the big net", Train(model=BigNet(heads=4), lr=3e-4))}


def test_configs_are_frozen_and_hashable():
    cfg = Train()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lr = 1.0  # type: ignore[misc]
    assert hash(cfg) == hash(Train())
    assert {cfg: 1}[Train()] == 1


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_save_and_load_round_trip_with_union_members(tmp_path, suffix):
    cfg = Train(lr=0.5, sizes=(1, 2, 3), note="x", model=BigNet(heads=8))
    path = config.save(cfg, tmp_path / f"config{suffix}")
    back = config.load(Train, path)
    assert back == cfg and isinstance(back.model, BigNet)


def test_to_dict_tags_dataclasses_with_their_type():
    d = config.to_dict(Train(model=BigNet()))
    assert d["model"]["_type"] == "BigNet" and d["sizes"] == [32, 64]
    json.dumps(d)


def test_unknown_field_is_named(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps({"lr": 0.1, "learning_rate": 0.2}))
    with pytest.raises(ConfigError, match=r"unknown config field\(s\) \['learning_rate'\] for Train"):
        config.load(Train, tmp_path / "c.json")


def test_nested_unknown_field_carries_its_path():
    with pytest.raises(ConfigError, match=r"\['model.wdith'\]"):
        config.from_dict(Train, {"model": {"_type": "SmallNet", "wdith": 3}})


@pytest.mark.parametrize(
    "data, field",
    [({"lr": "fast"}, "lr"), ({"steps": 2.5}, "steps"), ({"precision": "fp8"}, "precision"),
     ({"sizes": [1, "a"]}, r"sizes\[1\]"), ({"model": {"_type": "Huge"}}, "model"), ({"steps": True}, "steps")],
)
def test_ill_typed_field_is_named(data, field):
    with pytest.raises(ConfigError, match=f"'{field}'"):
        config.from_dict(Train, data)


def test_ints_are_accepted_for_floats_and_lists_become_tuples():
    cfg = config.from_dict(Train, {"lr": 1, "sizes": [4]})
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float) and cfg.sizes == (4,)


def test_missing_or_unparsable_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        config.load(Train, tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{lr: ")
    with pytest.raises(ConfigError, match="could not be parsed"):
        config.load(Train, tmp_path / "bad.json")


def test_cli_flags_and_union_subcommands():
    cfg = config.cli(Train, args=["--lr", "0.25", "--sizes", "1", "2", "model:big", "--model.heads", "6"])
    assert cfg == Train(lr=0.25, sizes=(1, 2), model=BigNet(heads=6))


def test_cli_presets_give_defaults_that_flags_override():
    cfg = config.cli(Train, presets=PRESETS, args=["big", "--lr", "0.1"])
    assert cfg == Train(model=BigNet(heads=4), lr=0.1)


def test_cli_config_file_gives_defaults_that_flags_override(tmp_path):
    path = config.save(Train(steps=99, model=BigNet(heads=3)), tmp_path / "c.json")
    cfg = config.cli(Train, args=["--config", str(path), "--lr", "0.5"])
    assert cfg == Train(steps=99, lr=0.5, model=BigNet(heads=3))


def test_cli_refuses_preset_and_config_together(tmp_path):
    path = config.save(Train(), tmp_path / "c.json")
    with pytest.raises(ConfigError, match="either a preset"):
        config.cli(Train, presets=PRESETS, args=["big", "--config", str(path)])


def test_bad_flag_exits_with_status_2(tmp_path):
    script = tmp_path / "cli.py"
    script.write_text(textwrap.dedent("""
        import dataclasses
        from funcml import config
        @dataclasses.dataclass(frozen=True)
        class C:
            steps: int = 1
        print(config.cli(C))
    """))
    ok = subprocess.run([sys.executable, str(script), "--steps", "3"], capture_output=True, text=True)
    assert ok.returncode == 0 and "C(steps=3)" in ok.stdout
    bad = subprocess.run([sys.executable, str(script), "--steps", "three"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--steps" in bad.stdout + bad.stderr


@dataclasses.dataclass(frozen=True)
class Checked:
    steps: int = 10
    batch_size: int = 4
    precision: Literal["fp32", "bf16"] = "fp32"
    lr: float = 1e-3

    def __post_init__(self):
        config.require_at_least(self, 1, "steps", "batch_size")
        config.require_one_of(self, "precision", ("fp32", "bf16"))
        config.require(self.lr > 0, self, f"lr must be > 0, got {self.lr}")


@dataclasses.dataclass(frozen=True)
class Ranged:
    depth: int = 2
    widths: tuple[int, ...] = (8, 16)
    dropout: float = 0.0
    p: float = 1.0
    size: tuple[float, float] = (0.2, 0.5)
    gap: tuple[float, float] | None = None

    def __post_init__(self):
        config.require_positive_int(self, "depth", "widths")
        config.require_in_range(self, 0.0, 1.0, "dropout", high_open=True)
        config.require_in_range(self, 0.0, 1.0, "p")
        config.require_pair(self, "size", low=0.0, low_open=True)
        config.require_pair(self, "gap", low=0.0, high=2.0, optional=True)


@pytest.mark.parametrize("kw,message", [
    ({"depth": 0}, "Ranged: depth must be a positive int, got 0"),
    ({"depth": True}, "Ranged: depth must be a positive int, got True"),
    ({"depth": 2.0}, "Ranged: depth must be a positive int, got 2.0"),
    ({"widths": (8, 0)}, "Ranged: widths must be a tuple of positive ints, got (8, 0)"),
    ({"dropout": 1.0}, "Ranged: dropout must be a number in [0.0, 1.0), got 1.0"),
    ({"dropout": "0.1"}, "Ranged: dropout must be a number in [0.0, 1.0), got '0.1'"),
    ({"p": 1.5}, "Ranged: p must be a number in [0.0, 1.0], got 1.5"),
    ({"size": (0.0, 0.5)}, "Ranged: size must be (min, max) with 0.0 < min <= max, got (0.0, 0.5)"),
    ({"size": (0.5, 0.2)}, "Ranged: size must be (min, max) with 0.0 < min <= max, got (0.5, 0.2)"),
    ({"gap": (0.0, 3.0)}, "Ranged: gap must be (min, max) with 0.0 <= min <= max <= 2.0, got (0.0, 3.0)"),
    ({"gap": (1.0,)}, "Ranged: gap must be (min, max) with 0.0 <= min <= max <= 2.0, got (1.0,)"),
    ({"size": None}, "Ranged: size must be (min, max) with 0.0 < min <= max, got None"),  # not optional
])
def test_range_validators_name_the_class_the_field_the_bounds_and_the_value(kw, message):
    with pytest.raises(ConfigError) as info:
        Ranged(**kw)
    assert str(info.value) == message


def test_range_validators_pass_good_values_and_bounds_and_a_missing_optional_pair():
    r = Ranged(depth=1, widths=(), dropout=0.0, p=1.0, size=(1e-9, 1e-9), gap=(0.0, 2.0))
    assert r.gap == (0.0, 2.0) and Ranged().gap is None


@pytest.mark.parametrize("kw,message", [
    ({"batch_size": 0}, "Checked: batch_size must be >= 1, got 0"),
    ({"steps": -2, "batch_size": 0}, "Checked: steps must be >= 1, got -2"),  # the first bad field, in order
    ({"precision": "fp16"}, "Checked: precision must be one of 'fp32', 'bf16', got 'fp16'"),
    ({"lr": -1.0}, "Checked: lr must be > 0, got -1.0"),
])
def test_validators_raise_config_errors_naming_the_class_the_field_and_the_value(kw, message):
    with pytest.raises(ConfigError) as info:
        Checked(**kw)
    assert str(info.value) == message


def test_validators_pass_a_good_config_and_loading_runs_them():
    assert Checked(steps=1, precision="bf16").steps == 1
    with pytest.raises(ConfigError, match="Checked: batch_size must be >= 1, got 0"):
        config.from_dict(Checked, {"batch_size": 0})
