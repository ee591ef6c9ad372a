"""funcml.asr.toy: a pure, vectorized toy feature dataset with known prototypes and alignments."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from funcml import random
from funcml.asr.tokenizer import CharTokenizer
from funcml.asr.toy import TOY_PRESETS, ToyConfig, toy_batch, toy_prototypes, toy_tokenizer
from funcml.errors import ConfigError

CFG = ToyConfig(feat_dim=16)
CLEAN = dataclasses.replace(CFG, noise=0.0, coarticulation=0.0)


def _batch(key, n=8, cfg=CFG):
    return toy_batch(key, n, cfg, toy_tokenizer(cfg))


def _nearest_prototype(features: torch.Tensor, cfg: ToyConfig) -> torch.Tensor:
    """[B, T] row of the closest prototype (0 = silence, 1 + i = vocab[i])."""
    protos = toy_prototypes(cfg)
    return torch.cdist(features, protos[None].expand(features.shape[0], -1, -1)).argmin(-1)


def _segment_vote(batch, cfg: ToyConfig) -> list[str]:
    """Decode each utterance by a majority vote of nearest prototypes inside each aligned token."""
    nearest = _nearest_prototype(batch["features"], cfg)
    out = []
    for b, n_tok in enumerate(batch["token_lengths"].tolist()):
        chars = []
        for j in range(n_tok):
            row = int(torch.mode(nearest[b][batch["alignment"][b] == j]).values)
            chars.append(cfg.vocab[row - 1] if row > 0 else "?")
        out.append("".join(chars))
    return out


# --- determinism and purity --------------------------------------------------------------------

def test_same_key_gives_identical_bits(key):
    a, b = _batch(key), _batch(key)
    assert a["texts"] == b["texts"]
    for name in ("features", "feat_lengths", "tokens", "token_lengths", "alignment"):
        assert torch.equal(a[name], b[name]), name


def test_different_keys_give_different_batches(key):
    a, b = _batch(key), _batch(random.fold_in(key, 1))
    assert a["texts"] != b["texts"]


def test_global_rng_is_untouched(key):
    before = torch.random.get_rng_state()
    _batch(key)
    toy_prototypes(CFG)
    assert torch.equal(torch.random.get_rng_state(), before)


def test_prototypes_are_fixed_by_the_config_not_the_key(key):
    # With no noise and no co-articulation every speech frame is exactly its token's prototype.
    protos = toy_prototypes(CLEAN)
    assert torch.equal(protos, toy_prototypes(CLEAN)) and torch.equal(protos[0], torch.zeros(16))
    for k in (key, random.fold_in(key, 7)):
        batch = _batch(k, cfg=CLEAN)
        b, t = torch.nonzero(batch["alignment"] >= 0, as_tuple=True)
        positions = zip(b.tolist(), batch["alignment"][b, t].tolist())
        chars = [CLEAN.vocab.index(batch["texts"][bi][j]) + 1 for bi, j in positions]
        assert torch.equal(batch["features"][b, t], protos[torch.tensor(chars)])


def test_prototype_seed_changes_the_prototypes():
    assert not torch.equal(toy_prototypes(CFG), toy_prototypes(dataclasses.replace(CFG, prototype_seed=1)))


# --- shapes, lengths and padding ---------------------------------------------------------------

def test_shapes_and_dtypes(key):
    batch = _batch(key, n=5)
    feats, fl, tokens, tl = batch["features"], batch["feat_lengths"], batch["tokens"], batch["token_lengths"]
    assert feats.dtype == torch.float32 and feats.shape == (5, int(fl.max()), 16)
    assert tokens.dtype == fl.dtype == tl.dtype == batch["alignment"].dtype == torch.int64
    assert tokens.shape == (5, int(tl.max())) and fl.shape == tl.shape == (5,)
    assert batch["alignment"].shape == feats.shape[:2] and len(batch["texts"]) == 5


def test_frames_beyond_feat_lengths_are_zero(key):
    batch = _batch(key, n=16)
    t = torch.arange(batch["features"].shape[1])
    pad = t[None, :] >= batch["feat_lengths"][:, None]
    assert pad.any()  # the batch really has padding
    assert (batch["features"][pad] == 0).all()
    assert (batch["features"][~pad].abs().sum(-1) > 0).all()  # noise makes every valid frame non-zero


def test_tokens_are_the_tokenizers_encoding_of_the_texts(key):
    tok = toy_tokenizer(CFG)
    batch = toy_batch(key, 16, CFG, tok)
    ids, lengths = tok.encode_batch(batch["texts"])
    assert torch.equal(batch["tokens"], ids) and torch.equal(batch["token_lengths"], lengths)
    assert tok.decode_batch(batch["tokens"], batch["token_lengths"]) == batch["texts"]


def test_tokens_follow_a_given_tokenizers_ids(key):
    tok = CharTokenizer.from_texts(["jihgfedcba xyz"])  # other ids than toy_tokenizer's
    batch = toy_batch(key, 4, CFG, tok)
    assert tok.decode_batch(batch["tokens"], batch["token_lengths"]) == batch["texts"]


def test_lengths_and_durations_lie_in_their_ranges(key):
    batch = _batch(key, n=32)
    tl = batch["token_lengths"]
    assert tl.min() >= CFG.min_len and tl.max() <= CFG.max_len and tl.unique().numel() > 3
    align = batch["alignment"]
    for b in range(32):
        counts = torch.bincount(align[b][align[b] >= 0], minlength=int(tl[b]))
        assert counts.numel() == tl[b]
        assert counts.min() >= CFG.frames_per_token[0] and counts.max() <= CFG.frames_per_token[1]
        lead = int((align[b] >= 0).int().argmax())  # leading silence frames
        speech_end = lead + int(counts.sum())
        assert CFG.silence[0] <= lead <= CFG.silence[1]
        assert CFG.silence[0] <= int(batch["feat_lengths"][b]) - speech_end <= CFG.silence[1]
        assert torch.equal(align[b, lead:speech_end], torch.repeat_interleave(torch.arange(int(tl[b])), counts))


# --- features carry the tokens -----------------------------------------------------------------

def test_nearest_prototype_recovers_tokens_without_noise(key):
    batch = _batch(key, n=16, cfg=CLEAN)
    nearest = _nearest_prototype(batch["features"], CLEAN)
    valid = torch.arange(nearest.shape[1])[None, :] < batch["feat_lengths"][:, None]
    silence = valid & (batch["alignment"] < 0)
    assert (nearest[silence] == 0).all()
    assert _segment_vote(batch, CLEAN) == batch["texts"]


def test_nearest_prototype_recovers_most_tokens_at_default_difficulty(key):
    batch = _batch(key, n=32, cfg=ToyConfig())
    voted = _segment_vote(batch, ToyConfig())
    right = sum(a == b for ref, hyp in zip(batch["texts"], voted) for a, b in zip(ref, hyp))
    assert right / sum(map(len, batch["texts"])) > 0.95


def test_coarticulation_blends_the_neighbouring_prototype_at_boundaries(key):
    cfg = dataclasses.replace(CLEAN, coarticulation=0.5, silence=(0, 0))
    batch = _batch(key, n=1, cfg=cfg)
    protos, text, align = toy_prototypes(cfg), batch["texts"][0], batch["alignment"][0]
    p = [protos[cfg.vocab.index(ch) + 1] for ch in text]
    d1 = int((align == 1).sum())
    t = int((align == 1).int().argmax())  # first frame of token 1, u = 0.5 / d1
    w = 0.5 * (1 - 2 * (0.5 / d1))
    assert torch.allclose(batch["features"][0, t], (1 - w) * p[1] + w * p[0], atol=1e-6)
    # the first frame of the utterance blends with silence (a zero prototype)
    d0 = int((align == 0).sum())
    assert torch.allclose(batch["features"][0, 0], (1 - 0.5 * (1 - 1 / d0)) * p[0], atol=1e-6)


def test_vocab_with_space_makes_words_separated_by_single_spaces(key):
    cfg = ToyConfig(vocab="ab ", feat_dim=4, min_len=6, max_len=12, space_prob=0.5)
    texts = _batch(key, n=64, cfg=cfg)["texts"]
    assert sum(t.count(" ") for t in texts) > 20
    assert all(t == t.strip() and "  " not in t for t in texts)


# --- configuration -----------------------------------------------------------------------------

@pytest.mark.parametrize("field, value, match", [
    ("vocab", "", "vocab"), ("vocab", "aa", "repeated"), ("min_len", 0, "min_len"),
    ("frames_per_token", (0, 3), "frames_per_token"), ("coarticulation", 0.6, r"\[0, 0.5\]"),
    ("noise", -1.0, "noise"), ("silence", (2, 1), "silence"),
])
def test_config_rejects_bad_values(field, value, match):
    with pytest.raises(ConfigError, match=match):
        ToyConfig(**{field: value})


def test_presets_order_difficulty():
    easy, medium, hard = (ToyConfig.preset(n) for n in ("easy", "medium", "hard"))
    assert easy.noise < medium.noise < hard.noise and easy.coarticulation < hard.coarticulation
    assert ToyConfig.preset("hard", feat_dim=8).feat_dim == 8 and set(TOY_PRESETS) == {"easy", "medium", "hard"}
    with pytest.raises(ConfigError, match="unknown preset"):
        ToyConfig.preset("nightmare")


def test_tokenizer_missing_vocab_characters_is_a_config_error(key):
    with pytest.raises(ConfigError, match="lacks vocab characters"):
        toy_batch(key, 2, CFG, CharTokenizer.from_texts(["abc"]))
