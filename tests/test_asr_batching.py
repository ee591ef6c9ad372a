"""funcml.asr.batching: padding, validity and attention masks, lengths after subsampling and LFR."""

from __future__ import annotations

import pytest
import torch

from funcml.asr.batching import attention_mask, lengths_to_mask, lfr_lengths, pad_sequences, subsampled_lengths
from funcml.errors import ConfigError, RangeError, ShapeError

T, F = True, False


# --- pad_sequences -----------------------------------------------------------------------------

def test_pad_sequences_by_hand():
    a = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    b = torch.tensor([[7.0, 8.0]])
    x, lengths = pad_sequences([a, b], pad_value=-1.0)
    want = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]],
                         [[7.0, 8.0], [-1.0, -1.0], [-1.0, -1.0]]])
    assert torch.equal(x, want)
    assert lengths.dtype == torch.int64 and lengths.tolist() == [3, 1]


def test_pad_sequences_of_token_ids_keeps_dtype():
    x, lengths = pad_sequences([torch.tensor([5, 6]), torch.tensor([7])])
    assert x.dtype == torch.int64 and torch.equal(x, torch.tensor([[5, 6], [7, 0]])) and lengths.tolist() == [2, 1]


def test_pad_sequences_to_a_given_length_and_empty_sequence():
    x, lengths = pad_sequences([torch.ones(0, 2), torch.ones(1, 2)], max_len=3)
    assert x.shape == (2, 3, 2) and lengths.tolist() == [0, 1]
    assert x[0].abs().sum() == 0 and torch.equal(x[1, 0], torch.ones(2)) and x[1, 1:].abs().sum() == 0


def test_pad_sequences_does_not_modify_inputs():
    a = torch.ones(2, 3)
    pad_sequences([a, torch.ones(1, 3)])
    assert torch.equal(a, torch.ones(2, 3))


def test_pad_sequences_rejects_mismatched_feature_sizes():
    with pytest.raises(ShapeError, match=r"seqs\[1\] has shape \[2, 4\], expected \[T_i, 3\]"):
        pad_sequences([torch.ones(2, 3), torch.ones(2, 4)])
    with pytest.raises(ShapeError, match="empty list"):
        pad_sequences([])
    with pytest.raises(ShapeError, match="max_len=1"):
        pad_sequences([torch.ones(2, 3)], max_len=1)


# --- masks -------------------------------------------------------------------------------------

def test_lengths_to_mask_by_hand():
    mask = lengths_to_mask(torch.tensor([2, 0, 3]))
    assert mask.dtype == torch.bool
    assert torch.equal(mask, torch.tensor([[T, T, F], [F, F, F], [T, T, T]]))


def test_lengths_to_mask_with_max_len():
    assert torch.equal(lengths_to_mask(torch.tensor([1, 2]), max_len=4), torch.tensor([[T, F, F, F], [T, T, F, F]]))


def test_lengths_to_mask_rejects_lengths_beyond_max_len():
    with pytest.raises(RangeError, match="max_len=2.*max 3"):
        lengths_to_mask(torch.tensor([1, 3]), max_len=2)
    with pytest.raises(RangeError, match="min -1"):
        lengths_to_mask(torch.tensor([-1, 2]))


def test_lengths_to_mask_matches_pad_sequences():
    x, lengths = pad_sequences([torch.ones(3, 1), torch.ones(1, 1), torch.ones(2, 1)])
    assert torch.equal(lengths_to_mask(lengths), x[..., 0] != 0)


def test_attention_mask_padding_by_hand():
    mask = attention_mask(torch.tensor([2, 3]), torch.tensor([1, 2]), kv_len=3)
    want = torch.tensor([
        [[T, F, F], [T, F, F], [F, F, F]],    # queries 0, 1 valid; key 0 valid
        [[T, T, F], [T, T, F], [T, T, F]],    # queries 0-2 valid; keys 0, 1 valid
    ])
    assert mask.shape == (2, 3, 3) and torch.equal(mask, want)


def test_attention_mask_causal_self_attention_by_hand():
    mask = attention_mask(torch.tensor([3, 2]), causal=True)
    want = torch.tensor([
        [[T, F, F], [T, T, F], [T, T, T]],
        [[T, F, F], [T, T, F], [F, F, F]],    # query 2 is padding
    ])
    assert torch.equal(mask, want)


def test_attention_mask_cross_shapes():
    mask = attention_mask(torch.tensor([2]), torch.tensor([5]), q_len=4, kv_len=6)
    assert mask.shape == (1, 4, 6)
    assert mask[0, :2, :5].all() and not mask[0, 2:].any() and not mask[0, :, 5:].any()


def test_attention_mask_rejects_batch_mismatch():
    with pytest.raises(ShapeError, match="kv_lengths"):
        attention_mask(torch.tensor([1, 2]), torch.tensor([1, 2, 3]))


# --- lengths after subsampling -----------------------------------------------------------------

@pytest.mark.parametrize("length, want", [(100, 24), (7, 1), (8, 1), (9, 1), (10, 1), (11, 2), (6, 0), (3, 0), (0, 0)])
def test_subsampled_lengths_two_stride_two_convs(length, want):
    # per layer: floor((L - 3) / 2) + 1, twice: 100 -> 49 -> 24; 11 -> 5 -> 2; 6 -> 2 -> 0 (shorter than the kernel).
    assert subsampled_lengths(length) == want


def test_subsampled_lengths_matches_conv_output_sizes():
    w = torch.zeros(1, 1, 3)  # kernel 3; only the output size matters
    lengths = torch.tensor([7, 11, 16, 37, 100])
    for length, got in zip(lengths.tolist(), subsampled_lengths(lengths).tolist()):
        y = torch.nn.functional.conv1d(torch.nn.functional.conv1d(torch.zeros(1, 1, length), w, stride=2), w, stride=2)
        assert y.shape[-1] == got


def test_subsampled_lengths_with_padding_and_factor():
    assert subsampled_lengths(10, factor=2, kernel=3, padding=1) == 5      # floor((10 + 2 - 3) / 2) + 1
    assert subsampled_lengths(100, factor=8) == 11                         # 49 -> 24 -> 11
    assert subsampled_lengths(17, factor=1) == 17
    assert torch.equal(subsampled_lengths(torch.tensor([100, 6])), torch.tensor([24, 0]))


def test_subsampled_lengths_rejects_a_factor_that_is_not_a_power_of_the_stride():
    with pytest.raises(ConfigError, match="factor=6"):
        subsampled_lengths(10, factor=6)


def test_lfr_lengths_is_ceil_of_length_over_n():
    assert [lfr_lengths(n) for n in (0, 1, 6, 7, 12, 13)] == [0, 1, 1, 2, 2, 3]
    assert torch.equal(lfr_lengths(torch.tensor([0, 1, 6, 7, 100])), torch.tensor([0, 1, 1, 2, 17]))
    assert lfr_lengths(10, m=1, n=1) == 10


def test_lfr_lengths_rejects_bad_arguments():
    with pytest.raises(ConfigError, match="n must be"):
        lfr_lengths(10, n=0)
    with pytest.raises(RangeError, match="lengths"):
        lfr_lengths(-1)
