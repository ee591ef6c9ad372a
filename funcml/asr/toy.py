"""A toy speech-like dataset: feature frames generated from random text, a pure function of a key.

    cfg = ToyConfig()                                   # 10 letters, 40-dim features
    tok = toy_tokenizer(cfg)
    batch = toy_batch(key, 32, cfg, tok)
    batch["features"]      # [32, T, 40] float32, zero beyond feat_lengths
    batch["tokens"]        # [32, L] int64, padded with tok.pad_id

It stands in for log-mel features so that a recognizer (e.g. Paraformer's CIF predictor,
which must learn where one token ends and the next begins) can be trained and tested in
seconds. The generative model, per utterance:

1. Text: a length `L ~ U{min_len .. max_len}` and `L` characters drawn uniformly from the
   vocabulary's letters. If the vocabulary holds a space, each interior position (not the
   first or last) becomes a space with probability `space_prob`, never two in a row, so
   the text is words separated by single spaces.
2. Timing: each token lasts `d_j ~ U{frames_per_token}` frames; `s_0, s_1 ~ U{silence}`
   silence frames come before and after, so `T_b = s_0 + sum_j d_j + s_1`.
3. Frames: every token has a fixed prototype `P[c]` in R^F (standard normal times
   `prototype_scale`, drawn from `prototype_seed`, so it is the same in every batch; see
   `toy_prototypes`); silence's prototype is zero. Frame t of token j, at relative position
   `u = (t - start_j + 1/2) / d_j` in (0, 1), blends in its neighbours (co-articulation,
   the previous / next being silence at the edges of the utterance):

       w_prev = c * max(0, 1 - 2u),   w_next = c * max(0, 2u - 1)        c = coarticulation
       x_t = (1 - w_prev - w_next) P[token_j] + w_prev P[token_{j-1}] + w_next P[token_{j+1}]
             + noise * eps_t,          eps_t ~ N(0, I)  (quantized to 2^16 levels)

   Silence frames are `noise * eps_t`; frames `t >= T_b` (padding) are exactly zero.

With `c <= 0.5` a frame is always closest in weight to its own token, and the task gets
harder as `noise` and `coarticulation` grow and `frames_per_token` shrinks
(`ToyConfig.preset("easy" | "medium" | "hard")`). All randomness comes from
`funcml.random`: the same key gives the same batch bit for bit, and torch's global RNG is
never touched.
"""

from __future__ import annotations

import dataclasses

import torch

from .. import random
from ..config import require, require_at_least, require_in_range, require_pair, require_positive_int
from ..errors import ConfigError
from .tokenizer import CharTokenizer

__all__ = ["ToyConfig", "TOY_PRESETS", "toy_batch", "toy_tokenizer", "toy_prototypes"]

_PROTOTYPE_STREAM = "funcml.asr.toy.prototypes"


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    """The toy distribution (ranges are inclusive)."""

    vocab: str = "abcdefghij"
    """The characters, in the order of their prototypes; may include a space."""
    feat_dim: int = 40
    """F, the feature size."""
    min_len: int = 3
    """Fewest characters per utterance."""
    max_len: int = 12
    """Most characters per utterance."""
    frames_per_token: tuple[int, int] = (4, 9)
    """(min, max) duration of a token, in frames."""
    noise: float = 0.3
    """Standard deviation of the Gaussian noise added to every valid frame."""
    coarticulation: float = 0.3
    """c in [0, 0.5], the weight of a neighbour's prototype at a token boundary."""
    silence: tuple[int, int] = (0, 3)
    """(min, max) silence frames before and, independently, after the speech."""
    space_prob: float = 0.15
    """Probability that an interior position is a space (if a space is in vocab)."""
    prototype_scale: float = 1.0
    """Standard deviation of the prototypes' entries."""
    prototype_seed: int = 0
    """The seed of the prototypes (fixed across batches and splits)."""

    def __post_init__(self) -> None:
        require(isinstance(self.vocab, str) and len(self.vocab.replace(" ", "")) >= 1, self,
                f"vocab must be a str with at least one non-space character, got {self.vocab!r}")
        require(len(set(self.vocab)) == len(self.vocab), self, f"vocab has repeated characters: {self.vocab!r}")
        require_positive_int(self, "feat_dim", "min_len", "max_len")
        require(self.min_len <= self.max_len, self,
                f"need min_len <= max_len, got min_len={self.min_len}, max_len={self.max_len}")
        require_pair(self, "frames_per_token", low=1)
        require_pair(self, "silence", low=0)
        require_at_least(self, 0, "noise")
        require_in_range(self, 0, 0.5, "coarticulation")
        require_in_range(self, 0, 1, "space_prob")
        require(self.prototype_scale > 0, self, f"prototype_scale must be > 0, got {self.prototype_scale}")
        require(0 <= self.prototype_seed < 2**64, self,
                f"prototype_seed must be in [0, 2**64), got {self.prototype_seed}")

    @classmethod
    def preset(cls, name: str, **overrides) -> "ToyConfig":
        """A named difficulty from `TOY_PRESETS` ("easy", "medium", "hard"), with overrides."""
        if name not in TOY_PRESETS:
            raise ConfigError(f"ToyConfig.preset: unknown preset {name!r}; choose from {sorted(TOY_PRESETS)}")
        return cls(**{**TOY_PRESETS[name], **overrides})


TOY_PRESETS: dict[str, dict] = {
    "easy": dict(noise=0.1, coarticulation=0.1, frames_per_token=(5, 9)),
    "medium": dict(),
    "hard": dict(noise=0.6, coarticulation=0.45, frames_per_token=(2, 7)),
}


def toy_tokenizer(cfg: ToyConfig) -> CharTokenizer:
    """The tokenizer of `cfg.vocab`: the default specials (ids 0-4), then the characters in
    vocab order; a character outside the vocabulary is an error (`use_unk=False`)."""
    return CharTokenizer(tuple(cfg.vocab), use_unk=False)


def toy_prototypes(cfg: ToyConfig) -> torch.Tensor:
    """The prototypes `[1 + len(vocab), F]` float32: row 0 is silence (zeros), row `1 + i` is
    `cfg.vocab[i]`. A function of `(vocab, feat_dim, prototype_scale, prototype_seed)` only."""
    k = random.fold_in(random.key(cfg.prototype_seed), _PROTOTYPE_STREAM)
    chars = cfg.prototype_scale * random.normal(k, (len(cfg.vocab), cfg.feat_dim), dtype=torch.float32)
    return torch.cat([torch.zeros(1, cfg.feat_dim), chars])


def _sample_text(k: torch.Tensor, n: int, cfg: ToyConfig, lengths: torch.Tensor) -> torch.Tensor:
    """Vocabulary indices `[n, max_len]` (entries past each length are meaningless)."""
    k_char, k_space = random.split(k)
    letters = torch.tensor([i for i, c in enumerate(cfg.vocab) if c != " "], dtype=torch.int64)
    chars = letters[random.randint(k_char, (n, cfg.max_len), 0, len(letters))]
    if " " in cfg.vocab and cfg.space_prob > 0:
        pos = torch.arange(cfg.max_len)[None, :]
        interior = (pos >= 1) & (pos <= lengths[:, None] - 2)
        cand = random.bernoulli(k_space, cfg.space_prob, (n, cfg.max_len)) & interior
        # Drop a space that follows a candidate: sp[i] = cand[i] & ~cand[i-1] has no two in a row.
        after_cand = torch.cat([torch.zeros(n, 1, dtype=torch.bool), cand[:, :-1]], dim=1)
        chars = torch.where(cand & ~after_cand, cfg.vocab.index(" "), chars)
    return chars


def toy_batch(key: torch.Tensor, n: int, cfg: ToyConfig, tokenizer: CharTokenizer) -> dict:
    """`n` utterances of the toy distribution (see the module docstring).

    Arguments:
        key: a PRNG key; the batch is a pure function of `(key, n, cfg)`.
        n: batch size B >= 1.
        cfg: the distribution.
        tokenizer: maps the texts to ids; must hold every character of `cfg.vocab`
            (e.g. `toy_tokenizer(cfg)`).

    Returns: a dict with
        features: `[B, T, F]` float32, T = the longest utterance; zero for `t >= feat_lengths[b]`.
        feat_lengths: `[B]` int64.
        tokens: `[B, L]` int64 token ids, L = the longest text; `tokenizer.pad_id` beyond
            `token_lengths[b]` (equal to `tokenizer.encode_batch(texts)[0]`).
        token_lengths: `[B]` int64.
        texts: list of B str.
        alignment: `[B, T]` int64, the position j of the token frame t belongs to, -1 for
            silence and padding (the ground truth for token timestamps).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"toy_batch: n must be an int >= 1, got {n!r}")
    missing = [c for c in cfg.vocab if c not in tokenizer.chars]
    if missing:
        raise ConfigError(f"toy_batch: the tokenizer lacks vocab characters {missing!r}; use toy_tokenizer(cfg)")
    k_len, k_text, k_dur, k_sil, k_noise = random.split(key, 5)
    max_len = cfg.max_len

    # Text and timing. lengths, durations: [B], [B, max_len]; a padded token lasts 0 frames.
    lengths = random.randint(k_len, (n,), cfg.min_len, cfg.max_len + 1)
    chars = _sample_text(k_text, n, cfg, lengths)
    in_text = torch.arange(max_len)[None, :] < lengths[:, None]  # [B, max_len]
    dur = random.randint(k_dur, (n, max_len), cfg.frames_per_token[0], cfg.frames_per_token[1] + 1)
    dur = torch.where(in_text, dur, 0)
    sil = random.randint(k_sil, (n, 2), cfg.silence[0], cfg.silence[1] + 1)  # [B, 2] before, after
    ends = sil[:, :1] + torch.cumsum(dur, dim=1)  # [B, max_len], end (exclusive) of token j
    starts = ends - dur
    feat_lengths = ends[:, -1] + sil[:, 1]
    t_max = int(feat_lengths.max())

    # Which token each frame belongs to: j = #{tokens ending at or before t}.
    t = torch.arange(t_max).expand(n, t_max).contiguous()  # [B, T]
    j = torch.searchsorted(ends, t, right=True)
    speech = (t >= sil[:, :1]) & (j < lengths[:, None])
    jc = j.clamp(max=max_len - 1)
    alignment = torch.where(speech, j, -1)

    # Prototype rows of each position, with silence (row 0) around the text: [B, max_len + 2].
    rows = torch.where(in_text, chars + 1, 0)
    rows = torch.cat([torch.zeros(n, 1, dtype=torch.int64), rows, torch.zeros(n, 1, dtype=torch.int64)], dim=1)
    own = torch.where(speech, torch.gather(rows, 1, jc + 1), 0)
    prev = torch.gather(rows, 1, jc)
    nxt = torch.gather(rows, 1, jc + 2)

    # Co-articulation weights from the relative position u in (0, 1) inside the token.
    d_j = torch.gather(dur, 1, jc).clamp(min=1).to(torch.float32)
    u = ((t - torch.gather(starts, 1, jc)).to(torch.float32) + 0.5) / d_j
    c = cfg.coarticulation
    w_prev = torch.where(speech, c * (1.0 - 2.0 * u).clamp(min=0.0), 0.0)[..., None]  # [B, T, 1]
    w_next = torch.where(speech, c * (2.0 * u - 1.0).clamp(min=0.0), 0.0)[..., None]

    protos = toy_prototypes(cfg)  # [V + 1, F]
    clean = (1.0 - w_prev - w_next) * protos[own] + w_prev * protos[prev] + w_next * protos[nxt]
    eps = random.fast_normal(k_noise, (n, t_max, cfg.feat_dim))
    valid = (t < feat_lengths[:, None])[..., None]
    features = torch.where(valid, clean + cfg.noise * eps, 0.0)

    # Token ids through the tokenizer's table, so that they match tokenizer.encode_batch(texts).
    lut = torch.tensor([tokenizer.token_to_id(ch) for ch in cfg.vocab], dtype=torch.int64)
    l_max = int(lengths.max())
    tokens = torch.where(in_text, lut[chars], tokenizer.pad_id)[:, :l_max]
    texts = ["".join(cfg.vocab[i] for i in row[:length]) for row, length in zip(chars.tolist(), lengths.tolist())]
    return {"features": features, "feat_lengths": feat_lengths, "tokens": tokens, "token_lengths": lengths,
            "texts": texts, "alignment": alignment}
