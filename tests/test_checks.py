"""funcml.checks: contracts bind named dims and errors say what was expected and what came."""

from __future__ import annotations

import pytest
import torch

from funcml import checks
from funcml.errors import DTypeError, FuncmlError, NonFiniteError, RangeError, ShapeError


def test_check_shape_binds_named_dims():
    assert checks.check_shape(torch.zeros(2, 3, 4, 5), "b c h w") == {"b": 2, "c": 3, "h": 4, "w": 5}


def test_bound_dims_carry_over_to_the_next_tensor():
    dims = checks.check_shape(torch.zeros(2, 7, 16), "b t d", name="x")
    checks.check_shape(torch.zeros(2, 7, dtype=torch.bool), "b t", name="mask", **dims)
    with pytest.raises(ShapeError, match=r"mask: expected shape \[b=2 t=7\], got \[2, 6\]"):
        checks.check_shape(torch.zeros(2, 6), "b t", name="mask", **dims)


def test_known_dims_are_enforced_and_named_in_the_error():
    with pytest.raises(ShapeError) as e:
        checks.check_shape(torch.zeros(2, 4, 8, 8), "b c h w", name="image", c=3)
    msg = str(e.value)
    assert "image" in msg and "c=3" in msg and "[2, 4, 8, 8]" in msg and "'c' is 4" in msg


def test_rank_mismatch_is_reported():
    with pytest.raises(ShapeError, match="rank 3, expected 4"):
        checks.check_shape(torch.zeros(2, 3, 4), "b c h w", name="x")


def test_repeated_name_must_match_itself():
    checks.check_shape(torch.zeros(3, 3), "n n")
    with pytest.raises(ShapeError):
        checks.check_shape(torch.zeros(3, 4), "n n")


def test_literals_wildcards_and_leading_ellipsis():
    checks.check_shape(torch.zeros(2, 3, 9), "b 3 _")
    assert checks.check_shape(torch.zeros(5, 6, 2, 3), "... c d") == {"c": 2, "d": 3}
    with pytest.raises(ShapeError, match="expected 3"):
        checks.check_shape(torch.zeros(2, 4, 9), "b 3 _")
    with pytest.raises(ShapeError, match="at least 2"):
        checks.check_shape(torch.zeros(2), "... c d")


def test_a_non_tensor_is_named():
    with pytest.raises(ShapeError, match="x: expected a tensor of shape \\[b t\\], got list"):
        checks.check_shape([1, 2], "b t")


def test_check_shape_sees_the_per_example_shape_under_vmap():
    def f(x):
        checks.check_shape(x, "c h w", c=3)
        return x.sum()

    torch.func.vmap(f)(torch.zeros(4, 3, 2, 2))


def test_check_dtype():
    checks.check_dtype(torch.zeros(1), torch.float32)
    checks.check_dtype(torch.zeros(1, dtype=torch.int64), "int")
    checks.check_dtype(torch.zeros(1, dtype=torch.float16), "float")
    with pytest.raises(DTypeError, match="mask: expected torch.int64 or torch.uint8, got torch.float32"):
        checks.check_dtype(torch.zeros(1), (torch.int64, torch.uint8), name="mask")
    with pytest.raises(DTypeError, match="an integer dtype"):
        checks.check_dtype(torch.zeros(1, dtype=torch.bool), "int")


def test_check_range_names_a_bad_value_and_where():
    checks.check_range(torch.tensor([0, 1, 4]), 0, 4, name="mask")
    with pytest.raises(RangeError, match=r"mask: 1 value\(s\) out of range \[0, 4\], e.g. mask\[1, 0\] = 7 > 4"):
        checks.check_range(torch.tensor([[0, 1], [7, 2]]), 0, 4, name="mask")
    assert issubclass(RangeError, FuncmlError) and issubclass(RangeError, ValueError)


def test_check_finite_counts_nan_and_inf_and_names_the_leaf():
    checks.check_finite(torch.ones(3))
    bad = torch.tensor([1.0, float("nan"), float("inf"), float("nan")])
    with pytest.raises(NonFiniteError, match=r"loss: 2 NaN and 1 Inf of 4 values .* first at index \[1\]"):
        checks.check_finite(bad, name="loss")
    grads = {"enc": {"w": torch.ones(2)}, "head": {"b": torch.tensor([0.0, float("inf")])}}
    with pytest.raises(NonFiniteError, match=r"grads.head.b: 0 NaN and 1 Inf"):
        checks.check_finite(grads, name="grads")
