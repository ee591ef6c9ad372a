"""Paraformer: encoder, CIF predictor and non-autoregressive decoder, as one funcml model.

    cfg = ParaformerConfig(vocab_size=tok.vocab_size, encoder=EncoderConfig(input_dim=80))
    params, state = models.init(key, cfg)                                  # state is {}
    out, state = models.apply(params, state, {"features": x, "feat_lengths": lens}, cfg)
    hyps = greedy_decode(out, tok, frame_shift_s=0.04)                     # text + token timestamps
    loss, metrics = paraformer_loss(params, batch, cfg, LossConfig(), key=k)

Gao et al., "Paraformer: fast and accurate parallel transformer for non-autoregressive
end-to-end speech recognition", Interspeech 2022 (arXiv:2206.08317):

    features [B, T, F] --encoder--> h [B, T', D], mask [B, T']         (funcml.asr.encoder)
    h --predictor--> alpha [B, T'] --CIF--> embeds [B, N, D], lengths   (funcml.asr.cif)
    embeds, h --NAR decoder--> logits [B, N, V]                         (funcml.asr.decoder)

`N = cfg.max_tokens` is static (a fixed number of token slots, so shapes do not depend on the
data and the step compiles once); positions `n >= lengths[b]` are padding. In training CIF
is told the target length (the weights are rescaled to sum to it, so the decoder sees exactly
one embedding per target token), and the loss is

    L = ce_weight * CE_ls(logits, y) + quantity_weight * |sum_t alpha_t - L| + ctc_weight * CTC(h)

with the glancing sampler (`funcml.asr.decoder.glance`) mixing target embeddings into the
decoder's queries when `glance_ratio > 0`. At inference CIF counts the tokens itself (with the
tail threshold) and decoding is one parallel pass and an argmax.

`predict_eos=True` trains the predictor to fire one extra token, `<eos>`, after the text (the
"+1" of FunASR's predictor bias); `greedy_decode` drops it with the other specials.

Keys follow the sub-key rule of `funcml.nn.model`: `encoder`, `predictor`, `decoder` and
`ctc` are initialized from `random.fold_in(key, name)` (so turning the CTC head on, or giving
the decoder another layer, changes no other part's initial params), the encoder's and the
decoder's dropout draw from `fold_in(key, "encoder")` and `fold_in(key, "decoder")`, and the
glancing sampler from the named stream `fold_in(key, "glance")`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange

from .. import random, tree
from ..checks import check_dtype, check_shape
from ..config import require, require_at_least, require_in_range, require_positive_int
from ..errors import ConfigError, ShapeError
from ..nn import model as models
from ..nn.layers import dense, init_dense
from .cif import cif, cif_weights, fire_times, init_cif_predictor, quantity_loss
from .decoder import embed_tokens, glance, init_nar_decoder, nar_decoder
from .encoder import EncoderConfig, encode, init_encoder
from .metrics import token_accuracy
from .tokenizer import CharTokenizer

__all__ = ["ParaformerConfig", "LossConfig", "ParaformerOutput", "Transcript", "init_paraformer",
           "apply_paraformer", "paraformer_loss", "masked_cross_entropy", "greedy_decode", "frame_shift_seconds"]

_EOS_ID = 3  # CharTokenizer's default id of <eos>
_BLANK_ID = 4  # CharTokenizer's default id of <blank>


@dataclasses.dataclass(frozen=True)
class ParaformerConfig:
    """A Paraformer: encoder, CIF predictor, non-autoregressive decoder (see the module doc)."""

    vocab_size: int = 32
    """V, the tokenizer's size, specials included (filled in from the data by the task)."""
    encoder: EncoderConfig = EncoderConfig()
    """The encoder (input layer, block type, sizes; see `funcml.asr.encoder`)."""
    decoder_layers: int = 2
    """NAR decoder blocks (they use the encoder's d_model, heads, dropout, attention impl, activation)."""
    decoder_d_ff: int = 0
    """The decoder's FFN width (0 = encoder.d_ff)."""
    predictor_kernel: int = 3
    """The CIF predictor's conv1d kernel."""
    threshold: float = 1.0
    """CIF's firing threshold beta."""
    tail_threshold: float = 0.45
    """At inference, a leftover weight above this fires one last token."""
    max_tokens: int = 48
    """N, the static number of token slots (targets longer than N - predict_eos are an error)."""
    ctc: bool = False
    """Add a CTC head on the encoder (used by the loss when ctc_weight > 0)."""
    predict_eos: bool = False
    """Fire one <eos> token after the text."""
    eos_id: int = _EOS_ID
    """The id of <eos> (the tokenizers' default)."""
    blank_id: int = _BLANK_ID
    """The id of the CTC <blank> (the tokenizers' default)."""

    def __post_init__(self) -> None:
        require_positive_int(self, "vocab_size", "decoder_layers", "predictor_kernel", "max_tokens")
        require(isinstance(self.encoder, EncoderConfig), self,
                f"encoder must be an EncoderConfig, got {self.encoder!r}")
        require(self.decoder_d_ff >= 0, self,
                f"decoder_d_ff must be >= 0 (0 = encoder.d_ff), got {self.decoder_d_ff}")
        require(self.threshold > 0, self, f"threshold must be > 0, got {self.threshold}")
        require(0 <= self.tail_threshold < self.threshold, self,
                f"tail_threshold must be in [0, threshold={self.threshold}), got {self.tail_threshold}")
        for name in ("eos_id", "blank_id"):
            v = getattr(self, name)
            require(0 <= v < self.vocab_size, self,
                    f"{name}={v} is not an id of a vocabulary of {self.vocab_size}")

    @property
    def d_model(self) -> int:
        return self.encoder.d_model


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Weights of the Paraformer training loss (see the module doc)."""

    ce_weight: float = 1.0
    """Weight of the (label-smoothed) cross-entropy of the decoder."""
    quantity_weight: float = 1.0
    """Weight of the quantity loss |sum(alpha) - L| of CIF."""
    ctc_weight: float = 0.0
    """Weight of the CTC loss on the encoder (needs --model.ctc)."""
    label_smoothing: float = 0.1
    """Epsilon of the smoothed CE, in [0, 1)."""
    glance_ratio: float = 0.75
    """The glancing sampler's ratio (0 = one decoder pass, no glancing)."""

    def __post_init__(self) -> None:
        require_at_least(self, 0, "ce_weight", "quantity_weight", "ctc_weight")
        require_in_range(self, 0, 1, "label_smoothing", high_open=True)
        require_in_range(self, 0, 1, "glance_ratio")


class ParaformerOutput(NamedTuple):
    """What `apply_paraformer` returns.

    logits: `[B, N, V]` decoder logits (N = `max_tokens`); token_lengths: `[B]` int64 tokens
    fired (the targets' lengths when they were given); token_mask: `[B, N]` bool;
    alpha: `[B, T']` the predictor's weights (unscaled, 0 on padding); fire_positions:
    `[B, N]` int64 encoder frame of each token (-1 on padding); enc: `[B, T', D]` encoder
    output; enc_lengths: `[B]` int64; enc_mask: `[B, T']` bool; ctc_logits: `[B, T', V]` or
    None without a CTC head.
    """

    logits: torch.Tensor
    token_lengths: torch.Tensor
    token_mask: torch.Tensor
    alpha: torch.Tensor
    fire_positions: torch.Tensor
    enc: torch.Tensor
    enc_lengths: torch.Tensor
    enc_mask: torch.Tensor
    ctc_logits: torch.Tensor | None


# ------------------------------------------------------------------------------- init / apply


def init_paraformer(key: torch.Tensor, cfg: ParaformerConfig) -> tuple[dict, dict]:
    """`params = {"encoder", "predictor", "decoder"[, "ctc"]}` (each from `random.fold_in(key, name)`),
    `state = {}`."""
    e = cfg.encoder
    params = {
        "encoder": init_encoder(random.fold_in(key, "encoder"), e),
        "predictor": init_cif_predictor(random.fold_in(key, "predictor"), e.d_model, kernel_size=cfg.predictor_kernel),
        "decoder": init_nar_decoder(random.fold_in(key, "decoder"), vocab_size=cfg.vocab_size, d_model=e.d_model,
                                    num_heads=e.num_heads, d_ff=cfg.decoder_d_ff or e.d_ff,
                                    num_layers=cfg.decoder_layers),
    }
    if cfg.ctc:
        params["ctc"] = init_dense(random.fold_in(key, "ctc"), e.d_model, cfg.vocab_size)
    return params, {}


def _inputs(x: Any, where: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    if not isinstance(x, dict) or "features" not in x or "feat_lengths" not in x:
        got = sorted(x) if isinstance(x, dict) else type(x).__name__
        raise ShapeError(f"{where}: x must be a dict with 'features' [B, T, F] and 'feat_lengths' [B] "
                         f"(and optionally 'target_lengths' [B]), got {got}")
    feats, lens = x["features"], x["feat_lengths"]
    dims = check_shape(feats, "b t f", name=f"{where}: features")
    check_dtype(feats, "float", name=f"{where}: features")
    check_shape(lens, "b", name=f"{where}: feat_lengths", b=dims["b"])
    check_dtype(lens, "int", name=f"{where}: feat_lengths")
    tl = x.get("target_lengths")
    if tl is not None:
        check_shape(tl, "b", name=f"{where}: target_lengths", b=dims["b"])
        check_dtype(tl, "int", name=f"{where}: target_lengths")
    return feats, lens, tl


def _decoder_kwargs(cfg: ParaformerConfig) -> dict:
    e = cfg.encoder
    return dict(num_heads=e.num_heads, dropout_rate=e.dropout, impl=e.impl, activation=e.activation)


def _dropout_keys(key: torch.Tensor | None, cfg: ParaformerConfig, train: bool) -> tuple:
    """The encoder's and the decoder's dropout keys, `fold_in(key, "encoder")` and
    `fold_in(key, "decoder")`; None when there is no dropout to draw (eval mode or rate 0), so
    the blocks derive no per-layer streams (each one a Threefry block)."""
    if not (train and cfg.encoder.dropout > 0):
        return None, None
    return models.subkey(key, "encoder"), models.subkey(key, "decoder")


def _fired_lengths(cfg: ParaformerConfig, target_lengths: torch.Tensor | None) -> torch.Tensor | None:
    return None if target_lengths is None else target_lengths.long() + int(cfg.predict_eos)


def _forward(params: dict, feats: torch.Tensor, lens: torch.Tensor, cfg: ParaformerConfig,
             target_lengths: torch.Tensor | None, key: torch.Tensor | None, train: bool):
    """Encoder, predictor and CIF: `(h, enc_lengths, enc_mask, alpha, CIFOutput, token_mask)`."""
    h, enc_lengths, enc_mask = encode(params["encoder"], feats, lens, cfg.encoder, key=key, train=train)
    alpha = cif_weights(params["predictor"], h, enc_mask)
    fired = _fired_lengths(cfg, target_lengths)
    out = cif(h, alpha, mask=enc_mask, threshold=cfg.threshold, target_lengths=fired,
              tail_threshold=cfg.tail_threshold, max_tokens=cfg.max_tokens)
    token_mask = torch.arange(cfg.max_tokens, device=h.device) < rearrange(out.lengths, "b -> b 1")
    return h, enc_lengths, enc_mask, alpha, out, token_mask


def apply_paraformer(params: dict, state: dict, x: dict, cfg: ParaformerConfig, *, key: torch.Tensor | None = None,
                     train: bool = False) -> tuple[ParaformerOutput, dict]:
    """One parallel pass: `x = {"features": [B, T, F] float, "feat_lengths": [B] int}` and, for
    teacher-forced lengths, `"target_lengths": [B] int` (CIF then fires exactly that many tokens,
    plus one with `predict_eos`). Returns `(ParaformerOutput, state)`; dropout needs `key` when
    `train=True`."""
    models.require_key(key, train=train, needs_key=cfg.encoder.dropout > 0, model="ParaformerConfig")
    feats, lens, tl = _inputs(x, "apply_paraformer")
    k_enc, k_dec = _dropout_keys(key, cfg, train)
    h, enc_lengths, enc_mask, alpha, out, token_mask = _forward(params, feats, lens, cfg, tl, k_enc, train)
    logits = nar_decoder(params["decoder"], out.embeds, token_mask, h, enc_mask, key=k_dec, train=train,
                         **_decoder_kwargs(cfg))
    ctc_logits = dense(params["ctc"], h) if "ctc" in params else None
    return ParaformerOutput(logits, out.lengths, token_mask, alpha, out.fire_positions, h, enc_lengths, enc_mask,
                            ctc_logits), state


models.register(ParaformerConfig, init_paraformer, apply_paraformer)


# ------------------------------------------------------------------------------------ losses


def masked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, *,
                         label_smoothing: float = 0.0) -> torch.Tensor:
    """Label-smoothed cross-entropy averaged over the valid positions:

        l_n = (1 - eps) * (-log p_n[y_n]) + eps * (1/V) sum_v (-log p_n[v])
        CE  = sum_n m_n l_n / max(1, sum_n m_n)

    (the smoothing of `F.cross_entropy(label_smoothing=eps)`: a uniform share eps over all V).
    logits: `[..., V]` float; targets: `[...]` int (any value where `mask` is False);
    mask: `[...]` bool. Computed in float32 at least. Returns a scalar.
    """
    dims = check_shape(logits, "... v", name="masked_cross_entropy: logits")
    if targets.shape != logits.shape[:-1] or mask.shape != targets.shape:
        raise ShapeError(f"masked_cross_entropy: targets {tuple(targets.shape)} and mask {tuple(mask.shape)} must "
                         f"both have the shape of logits without its last dim, {tuple(logits.shape[:-1])}")
    check_dtype(targets, "int", name="masked_cross_entropy: targets")
    if not 0 <= label_smoothing < 1:
        raise ConfigError(f"masked_cross_entropy: label_smoothing must be in [0, 1), got {label_smoothing}")
    logp = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
    safe = torch.where(mask, targets, torch.zeros_like(targets)).clamp(0, dims["v"] - 1)
    nll = -torch.gather(logp, -1, safe.unsqueeze(-1)).squeeze(-1)
    per = (1.0 - label_smoothing) * nll - label_smoothing * logp.mean(-1)
    m = mask.to(per.dtype)
    return (per * m).sum() / m.sum().clamp(min=1.0)


def _with_eos(targets: torch.Tensor, lengths: torch.Tensor, eos_id: int) -> torch.Tensor:
    pos = torch.arange(targets.shape[1], device=targets.device)
    return torch.where(pos == rearrange(lengths, "b -> b 1"), torch.full_like(targets, eos_id), targets)


def paraformer_loss(params: dict, batch: dict, cfg: ParaformerConfig, loss_cfg: LossConfig = LossConfig(), *,
                    key: torch.Tensor | None, train: bool = True) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The training loss of one batch (see the module doc).

    batch: `features [B, T, F]`, `feat_lengths [B]`, `tokens [B, N]` int (N = `cfg.max_tokens`,
    padding anywhere past `token_lengths`), `token_lengths [B]` int (>= 1, and < N with
    `predict_eos`). The key feeds encoder/decoder dropout and the glancing sampler.

    Returns `(loss, metrics)`: metrics hold `ce`, `quantity`, `ctc` (0 when off), `token_acc`
    (the second pass's argmax against the targets, valid positions) and `glanced` (fraction of
    valid positions replaced by the sampler).
    """
    feats, lens, _ = _inputs(batch, "paraformer_loss")
    tokens, tl = batch["tokens"], batch["token_lengths"]
    n = cfg.max_tokens
    check_shape(tokens, "b n", name="paraformer_loss: tokens", b=feats.shape[0], n=n)
    check_shape(tl, "b", name="paraformer_loss: token_lengths", b=feats.shape[0])
    if train and key is None and (cfg.encoder.dropout > 0 or loss_cfg.glance_ratio > 0):
        models.require_key(key, train=True, needs_key=True, model="paraformer_loss", why="dropout and glancing")
    k_enc, k_dec = _dropout_keys(key, cfg, train)
    h, enc_lengths, enc_mask, alpha, out, token_mask = _forward(params, feats, lens, cfg, tl, k_enc, train)
    targets = _with_eos(tokens, tl, cfg.eos_id) if cfg.predict_eos else tokens
    dec = params["decoder"]
    kw = _decoder_kwargs(cfg)
    queries = out.embeds
    glanced = torch.zeros((), device=feats.device)
    if loss_cfg.glance_ratio > 0 and train:
        frozen = tree.tree_map(torch.Tensor.detach, dec)
        with torch.no_grad():
            logits0 = nar_decoder(frozen, queries.detach(), token_mask, h.detach(), enc_mask, train=False, **kw)
        queries, replaced = glance(models.subkey(key, "glance"), queries, logits0, targets, token_mask,
                                   embed_tokens(dec, targets), ratio=loss_cfg.glance_ratio)
        glanced = replaced.sum() / token_mask.sum().clamp(min=1)
    logits = nar_decoder(dec, queries, token_mask, h, enc_mask, key=k_dec, train=train, **kw)
    ce = masked_cross_entropy(logits, targets, token_mask, label_smoothing=loss_cfg.label_smoothing)
    qua = quantity_loss(alpha, enc_mask, _fired_lengths(cfg, tl))
    loss = loss_cfg.ce_weight * ce + loss_cfg.quantity_weight * qua
    ctc = torch.zeros((), device=feats.device)
    if loss_cfg.ctc_weight > 0:
        if "ctc" not in params:
            raise ConfigError("paraformer_loss: LossConfig.ctc_weight > 0 needs a CTC head; set ParaformerConfig.ctc")
        logp = torch.log_softmax(dense(params["ctc"], h).float(), dim=-1)
        ctc = F.ctc_loss(rearrange(logp, "b t v -> t b v"), tokens, enc_lengths, tl, blank=cfg.blank_id,
                         reduction="mean", zero_infinity=True)
        loss = loss + loss_cfg.ctc_weight * ctc
    acc = token_accuracy(logits.detach().argmax(-1), targets, token_mask)
    metrics = {"ce": ce.detach(), "quantity": qua.detach(), "ctc": ctc.detach(), "token_acc": acc,
               "glanced": glanced.detach()}
    return loss, metrics


# ---------------------------------------------------------------------------------- decoding


class Transcript(NamedTuple):
    """One decoded utterance: `text`, `token_ids` (specials removed), `tokens` (their strings),
    and per-token `starts` / `ends` in seconds (from CIF's firing frames)."""

    text: str
    token_ids: list[int]
    tokens: list[str]
    starts: list[float]
    ends: list[float]


def frame_shift_seconds(hop_ms: float, frames_per_step: int, enc: EncoderConfig) -> float:
    """Seconds per encoder frame: `hop_ms / 1000 * frames_per_step` (LFR's n, or 1) times the
    encoder's subsampling (4 for `input_layer="conv2d"`, else 1)."""
    sub = 4 if enc.input_layer == "conv2d" else 1
    return hop_ms / 1000.0 * frames_per_step * sub


def _join(tokenizer: Any, tokens: list[str]) -> str:
    """The text of token strings: the tokenizer's `join` (words get a space), else concatenation."""
    join = getattr(tokenizer, "join", None)
    return join(tokens) if join is not None else "".join(tokens)


def greedy_decode(out: ParaformerOutput, tokenizer: CharTokenizer, *, frame_shift_s: float) -> list[Transcript]:
    """Argmax over the NAR logits of each fired token, specials (`<pad>`, `<eos>`, ...) removed
    with their timestamps; timestamps from `funcml.asr.cif.fire_times`. Batched: one argmax
    for the batch, one Transcript per item."""
    if tokenizer.vocab_size != out.logits.shape[-1]:
        raise ShapeError(f"greedy_decode: the tokenizer has {tokenizer.vocab_size} tokens but the logits have "
                         f"{out.logits.shape[-1]}; load the tokenizer saved with the model")
    ids = out.logits.argmax(-1).cpu()
    starts, ends = fire_times(out.fire_positions.cpu(), frame_shift_s)
    specials = set(tokenizer.special_ids)
    result = []
    for b in range(ids.shape[0]):
        n = int(out.token_lengths[b])
        keep = [i for i in range(n) if int(ids[b, i]) not in specials]
        tid = [int(ids[b, i]) for i in keep]
        toks = [tokenizer.id_to_token(i) for i in tid]
        result.append(Transcript(_join(tokenizer, toks), tid, toks, [round(float(starts[b, i]), 3) for i in keep],
                                 [round(float(ends[b, i]), 3) for i in keep]))
    return result
