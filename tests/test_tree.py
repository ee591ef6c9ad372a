"""funcml.tree: names are stable, structure survives round trips, helpers do what they say."""

from __future__ import annotations

from typing import NamedTuple

import pytest
import torch

from funcml import random, tree
from funcml.errors import ShapeError


class AdamLike(NamedTuple):
    count: torch.Tensor
    mu: dict


def make_tree():
    return {
        "enc": {"0": {"w": torch.ones(2, 3), "b": torch.zeros(3)}, "1": {"w": torch.full((3, 3), 2.0)}},
        "head": [torch.arange(4.0), None],
        "opt": (AdamLike(torch.tensor(5), {"w": torch.ones(2)}),),
        "count": torch.tensor(3, dtype=torch.int64),
    }


def test_flatten_with_names_joins_paths_with_dots():
    names = list(tree.flatten_with_names(make_tree()))
    assert names == ["enc.0.w", "enc.0.b", "enc.1.w", "head.0", "opt.0.count", "opt.0.mu.w", "count"]


def test_names_round_trip_through_like_and_keep_namedtuples():
    t = make_tree()
    back = tree.unflatten_from_names(tree.flatten_with_names(t), like=t)
    assert isinstance(back["opt"][0], AdamLike)
    assert back["head"][1] is None
    assert tree.equal(back, t)


def test_unflatten_without_like_builds_nested_dicts():
    named = {"a.b": torch.ones(1), "a.c": torch.zeros(1), "d": torch.ones(2)}
    out = tree.unflatten_from_names(named)
    assert set(out) == {"a", "d"} and set(out["a"]) == {"b", "c"}


def test_unflatten_with_like_lists_missing_and_extra_names():
    t = {"a": torch.ones(1), "b": torch.ones(1)}
    with pytest.raises(ShapeError, match=r"missing \['b'\], unexpected \['c'\]"):
        tree.unflatten_from_names({"a": torch.ones(1), "c": torch.ones(1)}, like=t)


def test_dotted_dict_keys_are_rejected():
    with pytest.raises(ShapeError, match="contains '.'"):
        tree.flatten_with_names({"a.b": torch.ones(1)})


def test_tree_map_passes_none_through_and_maps_several_trees():
    t = make_tree()
    doubled = tree.tree_map(lambda x: x * 2, t)
    assert doubled["head"][1] is None
    assert torch.equal(doubled["enc"]["1"]["w"], torch.full((3, 3), 4.0))
    summed = tree.tree_map(lambda a, b: a + b, t, t)
    assert torch.equal(summed["count"], torch.tensor(6))


def test_counts_and_bytes():
    t = make_tree()
    assert tree.num_params(t) == 6 + 3 + 9 + 4 + 1 + 2 + 1
    assert tree.num_bytes(t) == (6 + 3 + 9 + 4 + 2) * 4 + 2 * 8


def test_cast_changes_only_floating_leaves_by_default():
    c = tree.cast(make_tree(), torch.bfloat16)
    assert c["enc"]["0"]["w"].dtype == torch.bfloat16
    assert c["count"].dtype == torch.int64
    assert tree.cast(make_tree(), torch.float64, only_floating=False)["count"].dtype == torch.float64


def test_equal_allclose_and_first_difference_name_the_leaf():
    a, b = make_tree(), make_tree()
    assert tree.equal(a, b) and tree.first_difference(a, b) is None
    b["enc"]["1"]["w"] = b["enc"]["1"]["w"] + 1e-6
    assert not tree.equal(a, b)
    assert tree.allclose(a, b)
    assert tree.first_difference(a, b) == "enc.1.w"
    b["enc"]["0"]["b"] = torch.zeros(4)
    assert tree.first_difference(a, b) == "enc.0.b"


def test_equal_treats_nan_as_equal_to_nan():
    a = {"x": torch.tensor([1.0, float("nan")])}
    assert tree.equal(a, {"x": a["x"].clone()})


def test_stack_and_unstack_invert_each_other(getkey):
    members = [{"w": random.normal(getkey(), (2, 3)), "b": random.normal(getkey(), (3,))} for _ in range(4)]
    stacked = tree.stack(members)
    assert stacked["w"].shape == (4, 2, 3)
    for m, u in zip(members, tree.unstack(stacked)):
        assert tree.equal(m, u)


def test_stack_rejects_an_empty_list_and_unstack_ragged_leading_dims():
    with pytest.raises(ShapeError):
        tree.stack([])
    with pytest.raises(ShapeError, match="leading dim"):
        tree.unstack({"a": torch.zeros(2, 1), "b": torch.zeros(3)})


def test_helpers_never_mutate_their_input():
    t = make_tree()
    snapshot = tree.tree_map(torch.clone, t)
    tree.cast(t, torch.float16)
    tree.tree_map(lambda x: x + 1, t)
    tree.stack([t, t])
    assert tree.equal(t, snapshot)
