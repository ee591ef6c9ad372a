"""funcml.asr.metrics: Levenshtein distance and its operations, corpus CER / WER, accuracies, RTF."""

from __future__ import annotations

import math

import pytest
import torch

from funcml import random
from funcml.asr.metrics import (EditOps, ErrorCounts, cer, edit_distance, edit_ops, error_counts, length_accuracy,
                                real_time_factor, token_accuracy, wer)
from funcml.errors import RangeError, ShapeError


def _reference_distance(r, h) -> int:
    """The textbook full-matrix recurrence, as an independent check of the two-row version."""
    d = [[0] * (len(h) + 1) for _ in range(len(r) + 1)]
    for i in range(len(r) + 1):
        for j in range(len(h) + 1):
            if i == 0 or j == 0:
                d[i][j] = i + j
            else:
                d[i][j] = min(d[i - 1][j - 1] + (r[i - 1] != h[j - 1]), d[i - 1][j] + 1, d[i][j - 1] + 1)
    return d[-1][-1]


# --- edit distance ---------------------------------------------------------------------------

def test_kitten_sitting_is_two_substitutions_and_one_insertion():
    assert edit_distance("kitten", "sitting") == 3
    assert edit_ops("kitten", "sitting") == EditOps(substitutions=2, deletions=0, insertions=1)


def test_reverse_direction_turns_insertions_into_deletions():
    assert edit_ops("sitting", "kitten") == EditOps(substitutions=2, deletions=1, insertions=0)


@pytest.mark.parametrize("ref, hyp, want", [
    ("", "", (0, 0, 0)),
    ("abc", "", (0, 3, 0)),     # empty hypothesis: every reference unit deleted
    ("", "ab", (0, 0, 2)),      # empty reference: every hypothesis unit inserted
    ("abc", "abc", (0, 0, 0)),
    ("abc", "xyz", (3, 0, 0)),
    ("abcd", "bcd", (0, 1, 0)),
    ("abc", "abxc", (0, 0, 1)),
])
def test_edit_ops_by_hand(ref, hyp, want):
    assert tuple(edit_ops(ref, hyp)) == want
    assert edit_distance(ref, hyp) == sum(want)


def test_edit_distance_works_on_word_lists_and_id_tensors():
    assert edit_distance("the cat sat".split(), "the bat sat down".split()) == 2
    assert edit_distance(torch.tensor([5, 6, 7]), torch.tensor([5, 7])) == 1


def test_edit_distance_matches_full_matrix_recurrence_on_random_strings(getkey):
    for _ in range(20):
        n, m = random.randint(getkey(), (2,), 0, 12).tolist()
        r = random.randint(getkey(), (n,), 0, 3).tolist()
        h = random.randint(getkey(), (m,), 0, 3).tolist()
        ops = edit_ops(r, h)
        assert edit_distance(r, h) == sum(ops) == _reference_distance(r, h)
        assert len(r) - ops.deletions + ops.insertions == len(h)  # an alignment accounts for every unit


# --- CER and WER -------------------------------------------------------------------------------

def test_cer_is_corpus_level_not_a_mean_of_utterances():
    # "abc" -> "abd": 1 sub over 3; "de" -> "": 2 del over 2. Corpus: 3 / 5 (a per-utterance mean would be 2/3).
    assert cer(["abc", "de"], ["abd", ""]) == pytest.approx(3 / 5)
    assert error_counts(["abc", "de"], ["abd", ""]) == ErrorCounts(1, 2, 0, 5)


def test_cer_counts_spaces_unless_ignored():
    assert cer(["a b"], ["ab"]) == pytest.approx(1 / 3)       # one deleted space over 3 characters
    assert cer(["a b"], ["ab"], ignore_spaces=True) == 0.0


def test_wer_on_a_small_corpus_by_hand():
    refs = ["the cat sat", "on the mat"]
    hyps = ["the bat sat down", "on mat"]
    # utt 1: cat->bat (S) + "down" (I); utt 2: "the" deleted (D). 3 errors over 6 reference words.
    assert error_counts(refs, hyps, unit="word") == ErrorCounts(1, 1, 1, 6)
    assert wer(refs, hyps) == pytest.approx(3 / 6)


def test_wer_splits_on_whitespace_runs():
    assert wer(["a  b "], [" a b"]) == 0.0


def test_error_rate_can_exceed_one_with_insertions():
    assert cer(["a"], ["xyz"]) == pytest.approx(3.0)  # 1 sub + 2 ins over 1 char


def test_empty_hypothesis_gives_rate_one():
    assert cer(["abc"], [""]) == 1.0 and wer(["a b"], [""]) == 1.0


def test_empty_reference_corpus_counts_insertions():
    # N = 0: the rate is (S + D + I) / max(N, 1) -- 0 for a perfect (empty) hypothesis, else the insertions.
    assert cer([""], [""]) == 0.0
    assert cer(["", ""], ["ab", "c"]) == 3.0
    assert wer([""], ["hello there"]) == 2.0
    assert cer([], []) == 0.0


def test_a_single_string_is_one_utterance():
    assert cer("abc", "abd") == cer(["abc"], ["abd"]) == pytest.approx(1 / 3)


def test_error_counts_add_up_over_batches():
    a, b = error_counts(["abc"], ["ab"]), error_counts(["de"], ["dx"])
    assert a + b == error_counts(["abc", "de"], ["ab", "dx"])
    assert (a + b).rate == pytest.approx(2 / 5)


def test_mismatched_corpus_sizes_are_a_shape_error():
    with pytest.raises(ShapeError, match="2 refs and 1 hyps"):
        cer(["a", "b"], ["a"])


# --- accuracies and RTF ------------------------------------------------------------------------

def test_token_accuracy_counts_only_masked_positions():
    pred = torch.tensor([[1, 2, 3, 9], [4, 0, 0, 0]])
    targets = torch.tensor([[1, 2, 0, 0], [4, 5, 0, 0]])
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    # valid: (1=1) (2=2) (3!=0) | (4=4) (0!=5) -> 3 of 5
    assert token_accuracy(pred, targets, mask).item() == pytest.approx(3 / 5)
    assert token_accuracy(pred, targets).item() == pytest.approx(5 / 8)  # no mask: every position


def test_token_accuracy_takes_argmax_of_logits():
    targets = torch.tensor([[2, 0]])
    logits = torch.tensor([[[0.0, 1.0, 3.0], [5.0, 1.0, 0.0]]])  # argmax 2, 0
    assert token_accuracy(logits, targets, torch.ones(1, 2, dtype=torch.bool)).item() == 1.0


def test_token_accuracy_with_nothing_valid_is_nan():
    t = torch.zeros(1, 3, dtype=torch.int64)
    assert math.isnan(token_accuracy(t, t, torch.zeros(1, 3, dtype=torch.bool)).item())


def test_token_accuracy_checks_shapes():
    with pytest.raises(ShapeError, match="pred"):
        token_accuracy(torch.zeros(2, 4, dtype=torch.int64), torch.zeros(2, 3, dtype=torch.int64))


def test_length_accuracy_rounds_float_predictions():
    pred = torch.tensor([3.2, 4.6, 5.0, 2.0])
    target = torch.tensor([3, 4, 5, 3])
    assert length_accuracy(pred, target).item() == pytest.approx(2 / 4)
    assert length_accuracy(torch.tensor([3, 4]), torch.tensor([3, 5])).item() == pytest.approx(0.5)


def test_real_time_factor():
    assert real_time_factor(0.5, 10.0) == pytest.approx(0.05)
    with pytest.raises(RangeError, match="audio_seconds"):
        real_time_factor(1.0, 0.0)
    with pytest.raises(RangeError, match="compute_seconds"):
        real_time_factor(-1.0, 1.0)
