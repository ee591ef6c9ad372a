"""Paraformer ASR as a task: the training config, presets, data, training, loading, evaluation, inference
(the `Example` record, utterances and batches: `funcml.asr.data`, re-exported here).

    python experiments/asr_train.py speech            # synthesized speech (espeak-ng), the main job's preset
    python experiments/asr_train.py toy --steps 300   # the toy feature dataset
    python experiments/asr_train.py manifest --train-manifest train.jsonl --val-manifest val.jsonl
    python experiments/asr_train.py manifest --train-manifest ... --val-manifest ... --init-from RUN  # fine-tune

    run, summary = train(cfg)                                       # run dir + fit summary (+ eval.json)
    cfg, params, tok = load_model(run.path)                         # the best checkpoint by val/cer
    metrics = evaluate(params, cfg, test_examples(cfg), tok)        # CER / WER / token acc / RTF
    hyp = transcribe_waveform(params, cfg, tok, waveform, sample_rate)

Data. Two kinds, one representation: an `Example` holds `features [T, F]`, the token ids and
the text. `data="speech"`: `funcml.asr.speech.make_corpus` synthesizes `num_train` training
utterances with the training voices (cached on disk under `cache_dir`), `num_val` more with
the same voices (validation, picks the best checkpoint) and `num_test` with the *held-out*
voices (the test split: generalization to unseen speakers); the front end
(`funcml.asr.frontend.features`) turns them into log-mel features once. Training batches walk
epoch permutations of the training set (`funcml.trainer.epoch_indices`), with SpecAugment from
`fold_in(augment_key, step)`. `data="toy"`: every batch is `toy_batch(fold_in(train_key, step))`
and the val / test splits are fixed toy batches. `data="manifest"`: the user's recordings,
listed in JSONL manifests or Kaldi data dirs (`funcml.asr.manifest`: `train_manifest`,
`val_manifest`, optional `test_manifest`); features are cached on disk keyed by content;
training batches are drawn by length (`funcml.asr.batching.length_bucketed_indices`: each
batch holds utterances of similar length, batches in random order), a pure function of the step.

Tokenizer. `tokenizer="char"` or `"word"`; the vocabulary is the corpus's (speech), the
training transcripts' (manifest), or, with `init_from`, that of the run fine-tuned from; it
is saved as the run's tokenizer.json and loaded with the model. Transcripts outside the
vocabulary follow `oov` (error naming the manifest line / drop / strip / unk).

Fine-tuning. `init_from=RUN` starts from the params of RUN's best checkpoint (a fresh
optimizer, warmup and schedule) and takes RUN's `model`, `frontend` and `tokenizer` (the
params only fit those; the run's config.json records them).

A batch pads features to the longest item rounded up to `pad_multiple` frames (few distinct
shapes, so a compiled step recompiles rarely) and tokens to `model.max_tokens`.

`model.vocab_size` and `model.encoder.input_dim` follow from the data (the tokenizer, the
front end): `resolve(cfg)` fills them in, and the saved config holds the resolved values.

Training runs through the core's run orchestration `funcml.trainer` (the shared `TrainConfig`
fields, AdamW with warmup + cosine decay, `funcml.train.fit`, checkpoints ranked by val/cer,
resume, curves, Ctrl-C); this module brings the data, the loss and the metrics.

Keys: `root = key(seed)`; init `fold_in(root, "init")`, train-step `fold_in(root, "train")`,
SpecAugment `fold_in(root, "augment")`; data `key(data_seed)` with named splits.

Data parallel (`torchrun --standalone --nproc-per-node W experiments/asr_train.py ...`, see
docs/DISTRIBUTED.md): `batch_size` is the global batch; on speech data rank r takes rows
`[r B/W, (r+1) B/W)` of step t's global batch (the same examples as one process), on toy data
it draws its own B/W examples from `shard_key(train_key)`; SpecAugment uses
`shard_key(augment_key)`; grads are averaged and only rank 0 writes the run directory.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Literal, Sequence

import torch

from .. import devices, random
from .. import trainer as trainer_lib
from ..checks import check_dtype, check_finite, check_shape
from ..config import require, require_at_least, require_one_of
from ..errors import CheckpointError, ConfigError, DataError, ShapeError
from ..nn import model as models
from ..runs import RunDir
from ..trainer import epoch_indices
from ..train import distributed
from ..trainer import Task, TrainConfig, check_global_batch, config_of, load_run, train_task
from . import audio as audio_lib
from . import manifest as manifest_lib
from .batching import length_bucketed_indices
from .data import (Example, collate, data_key, feature_dim, frame_shift, manifest_examples, manifest_path,
                   speech_examples, toy_examples)
from .encoder import EncoderConfig
from .frontend import FrontendConfig, features as frontend_features, spec_augment, warp_frequency
from .metrics import cer, length_accuracy, token_accuracy, wer
from .paraformer import LossConfig, ParaformerConfig, Transcript, greedy_decode, paraformer_loss
from .speech import DIGITS, WIDE_TRAIN_VOICES, WORDS, SpeechConfig
from .tokenizer import CharTokenizer, Tokenizer, WordTokenizer, load_tokenizer
from .toy import ToyConfig, toy_tokenizer

__all__ = ["AsrTrainConfig", "PRESETS", "SIM2REAL_RECIPES", "sim2real_config", "Example", "resolve", "tokenizer_for", "with_init", "train_examples",
           "val_examples", "test_examples", "manifest_examples", "train_batch_fn", "collate", "evaluate", "train", "load_model",
           "transcribe", "transcribe_features", "transcribe_waveform", "decode", "frame_shift", "feature_dim",
           "save_cif_figures", "checkpoint_of", "TASK"]

PyTree = Any


@dataclasses.dataclass(frozen=True)
class AsrTrainConfig(TrainConfig, steps=2000, lr=1e-3, weight_decay=1e-2, warmup_steps=100, grad_clip=5.0,
                     eval_every=200, experiment="asr"):
    """Train a Paraformer on synthesized speech, toy features or a manifest of recordings (see funcml.asr.task)."""

    model: ParaformerConfig = ParaformerConfig()
    """The Paraformer (encoder kind and sizes, CIF, decoder); vocab_size and encoder.input_dim are
    filled in from the data by `resolve`."""
    loss: LossConfig = LossConfig()
    """CE / quantity / CTC weights, label smoothing, glancing ratio."""
    data: Literal["speech", "toy", "manifest"] = "speech"
    """Where the audio comes from: "speech" (espeak-ng synthesized utterances), "toy" (synthetic features) or "manifest"
    (your recordings: --train-manifest, --val-manifest)."""
    tokenizer: Literal["char", "word"] = "char"
    """Token unit: "char" (one token per character, the space included) or "word" (one token per
    whitespace-separated word; decoded words are joined by one space). Toy data is always "char"."""
    train_manifest: Path | None = None
    """data=manifest: the training utterances, a JSONL manifest or a Kaldi data dir (see funcml.asr.manifest)."""
    val_manifest: Path | None = None
    """data=manifest: the validation utterances (they pick the best checkpoint)."""
    test_manifest: Path | None = None
    """data=manifest: test utterances scored in eval.json after training (optional)."""
    oov: Literal["error", "drop", "strip", "unk"] = "error"
    """data=manifest: a transcript with a character / word outside the vocabulary is an error naming
    its line, or is dropped, stripped of those tokens, or encoded with <unk>."""
    speed_perturb: tuple[float, ...] = ()
    """data=manifest: also train on a copy of every training utterance at each of these speeds
    (e.g. 0.9 1.1: Kaldi's 3-way speed perturbation; features cached like the originals)."""
    mix_speech: int = 0
    """data=manifest: also train on this many synthesized utterances (the speech corpus's training
    voices, `speech` settings), so that fine-tuning keeps hearing many voices."""
    init_from: Path | None = None
    """Fine-tune: start from the params of this run's best checkpoint (or this checkpoint dir), with a
    new optimizer; the run's model, frontend and tokenizer are used."""
    speech: SpeechConfig = SpeechConfig()
    """The synthesized corpus (data=speech, and --mix-speech): texts, voices, rate, pitch, augmentations."""
    toy: ToyConfig = ToyConfig()
    """The toy features (data=toy)."""
    frontend: FrontendConfig = FrontendConfig()
    """The log-mel front end (sample rate, mel bins, LFR, normalization, cepstral smoothing)."""
    num_train: int = 2000
    """Training utterances synthesized (data=speech)."""
    num_val: int = 100
    """Validation utterances (speech: the training voices; toy: one fixed batch)."""
    num_test: int = 200
    """Test utterances (speech: the held-out voices; toy: one fixed batch)."""
    cache_dir: Path | None = Path(".cache/funcml-speech")
    """Where synthesized corpora and manifest features are cached (None: compute every time)."""
    spec_augment: bool = True
    """SpecAugment training batches (time_masks x max_time frames, freq_masks x max_freq bins)."""
    time_masks: int = 2
    """SpecAugment: time masks per utterance."""
    max_time: int = 10
    """SpecAugment: the longest time mask, in frames."""
    freq_masks: int = 2
    """SpecAugment: frequency masks per utterance."""
    max_freq: int = 10
    """SpecAugment: the widest frequency mask, in feature bins."""
    freq_warp: float = 0.0
    """Training batches: warp each utterance's mel axis by a factor drawn from U(1 - w, 1 + w)
    (vocal-tract-length perturbation in the mel domain, fresh every step; 0 = off; not with LFR)."""
    pad_multiple: int = 16
    """Batches are padded to a multiple of this many frames (fewer distinct shapes)."""

    def __post_init__(self) -> None:
        super().__post_init__()  # the shared fields
        require_one_of(self, "data", ("speech", "toy", "manifest"))
        require_one_of(self, "oov", ("error", "drop", "strip", "unk"))
        require_one_of(self, "tokenizer", ("char", "word"))
        require(self.data != "toy" or self.init_from is None, self, "--init-from needs audio data (speech or manifest)")
        require_at_least(self, 0, "mix_speech", "num_train", "time_masks", "max_time", "freq_masks", "max_freq")
        require_at_least(self, 1, "steps", "num_val", "num_test", "pad_multiple")
        require(all(0.5 <= f <= 2.0 and f != 1.0 for f in self.speed_perturb), self,
                f"speed_perturb factors must lie in [0.5, 2] and differ from 1, got {self.speed_perturb}")
        require(self.data != "toy" or self.tokenizer == "char", self,
                "the toy data's tokens are characters: --tokenizer word needs audio data (--data speech or manifest)")
        require(0.0 <= self.freq_warp < 1.0, self, f"freq_warp must be in [0, 1), got {self.freq_warp}")
        require(self.freq_warp == 0 or (self.data != "toy" and not self.frontend.use_lfr), self,
                "freq_warp warps mel bins: it needs log-mel features (audio data, no --frontend.use-lfr)")
        require(self.data == "toy" or self.num_train >= 1, self, "num_train must be >= 1 for speech data")
        require(self.loss.ctc_weight == 0 or self.model.ctc, self,
                f"loss.ctc_weight={self.loss.ctc_weight} needs a CTC head: add --model.ctc")


# --------------------------------------------------------------------------- presets

# The speech preset: a narrow conv2d front (conv_channels=32) and no dropout (SpecAugment and glancing
# regularize instead: eager dropout's Threefry bits cost more than the rest of the step; measured:
# benchmarks/RESULTS.md, "Measurements behind the presets and design choices"). LFR input (60 ms frames) cannot fire the ~18 characters/s of fast speech (at most one
# token per frame).
_SPEECH_MODEL = ParaformerConfig(
    encoder=EncoderConfig(d_model=144, num_heads=4, d_ff=576, num_layers=4, block="sanm", input_layer="conv2d",
                          conv_channels=32, dropout=0.0),
    decoder_layers=2, max_tokens=40)


def _preset_speech() -> AsrTrainConfig:
    # Sized for the main job's 6-minute ASR budget (the runs behind it: benchmarks/RESULTS.md, "Measurements behind the presets and design choices").
    return AsrTrainConfig(model=_SPEECH_MODEL, data="speech", num_train=1500, num_val=100, num_test=200,
                          steps=1000, batch_size=16, lr=2.5e-3, warmup_steps=100, eval_every=250,
                          experiment="asr-speech")


# The sim-to-real ladder (docs/SIM2REAL.md, experiments/asr_sim2real.py): each recipe adds one lever to
# the speech preset and keeps every lever before it.
SIM2REAL_RECIPES = ("preset", "word", "short8k", "voices", "channel", "mels40", "lifter", "warp", "specaug", "more")


def sim2real_config(recipe: str) -> AsrTrainConfig:
    """The speech preset with the levers of `recipe` and of every recipe before it in
    `SIM2REAL_RECIPES` (word tokens; 1-3 digits at 8 kHz; 704 voices with wide rate, pitch,
    intonation and word gaps; channel augmentation; 40 mels; cepstral smoothing; frequency warps;
    stronger SpecAugment; 4000 utterances)."""
    if recipe not in SIM2REAL_RECIPES:
        raise ConfigError(f"recipe: expected one of {', '.join(SIM2REAL_RECIPES)}, got {recipe!r}")
    levels = SIM2REAL_RECIPES[: SIM2REAL_RECIPES.index(recipe) + 1]
    cfg = _preset_speech()
    sp, fe = cfg.speech, cfg.frontend
    if "word" in levels:
        cfg = dataclasses.replace(cfg, tokenizer="word")
    if "short8k" in levels:
        sp = dataclasses.replace(sp, digits_len=(1, 3), sample_rate=8000)
        fe = dataclasses.replace(fe, sample_rate=8000)
    if "voices" in levels:
        sp = dataclasses.replace(sp, train_voices=WIDE_TRAIN_VOICES, rate_range=(100, 260), pitch_range=(10, 90),
                                 intonation_range=(10, 90), word_gap_range=(0, 20))
    if "channel" in levels:
        sp = dataclasses.replace(sp, warp_range=(0.85, 1.2), speed_factors=(0.9, 1.0, 1.1), reverb_prob=0.5,
                                 rt60_range=(0.1, 0.6), wet_range=(0.2, 0.8), eq_db=8.0, noise_beta_range=(0.0, 2.0),
                                 babble_prob=0.3, snr_db_range=(5.0, 35.0), lowpass_hz_range=(3000.0, 4000.0),
                                 highpass_hz_range=(0.0, 300.0))
    if "mels40" in levels:
        fe = dataclasses.replace(fe, n_mels=40, fmin=60.0)
    if "lifter" in levels:
        fe = dataclasses.replace(fe, lifter=13)
    if "warp" in levels:
        cfg = dataclasses.replace(cfg, freq_warp=0.1)
    if "specaug" in levels:
        cfg = dataclasses.replace(cfg, time_masks=3, max_time=15, freq_masks=2, max_freq=8)
    if "more" in levels:
        cfg = dataclasses.replace(cfg, num_train=4000)
    return dataclasses.replace(cfg, speech=sp, frontend=fe)


def _preset_sim2real() -> AsrTrainConfig:
    # The main job's ASR since the sim-to-real work: the "channel" recipe, the best on real recordings
    # of those measured (docs/SIM2REAL.md: fsdd-dev WER 44.6% vs 109.6% for the speech preset; the later
    # levers did not lower it, and more steps / data only improved the synthetic test).
    return dataclasses.replace(sim2real_config("channel"), experiment="asr-sim2real")


def _preset_toy() -> AsrTrainConfig:
    return AsrTrainConfig(
        model=ParaformerConfig(encoder=EncoderConfig(d_model=64, num_heads=4, d_ff=256, num_layers=2,
                                                     block="transformer", input_layer="linear", dropout=0.0),
                               decoder_layers=1, max_tokens=16),
        data="toy", toy=ToyConfig.preset("easy"), num_val=64, num_test=64, spec_augment=False, steps=300,
        batch_size=16, lr=3e-3, warmup_steps=20, eval_every=100, experiment="asr-toy")


def _preset_tiny() -> AsrTrainConfig:
    return AsrTrainConfig(
        model=ParaformerConfig(encoder=EncoderConfig(d_model=16, num_heads=2, d_ff=32, num_layers=1,
                                                     block="transformer", input_layer="linear", dropout=0.0),
                               decoder_layers=1, max_tokens=16),
        data="toy", toy=ToyConfig(feat_dim=8, max_len=6), num_val=8, num_test=8, spec_augment=False, steps=6,
        batch_size=4, lr=3e-3, warmup_steps=1, eval_every=3, experiment="asr-tiny")


def _preset_manifest() -> AsrTrainConfig:
    # The speech preset's model on the user's recordings; sized for fine-tuning a speech run
    # (--init-from) on a few hundred utterances (benchmarks/asr_finetune.py).
    return dataclasses.replace(_preset_speech(), data="manifest", steps=400, lr=1e-3, warmup_steps=40,
                               eval_every=100, experiment="asr-manifest")


PRESETS: dict[str, tuple[str, AsrTrainConfig]] = {
    "sim2real": ("python experiments/asr_train.py sim2real  -- the main job's ASR: word tokens, 1-3 digits at 8 kHz, "
                 "704 espeak-ng voices, channel augmentation (made to transfer to real speech)", _preset_sim2real()),
    "speech": ("python experiments/asr_train.py speech  -- a SAN-M Paraformer on espeak-ng digit strings (character "
               "tokens, 16 kHz, nine voices), CER on held-out voices", _preset_speech()),
    "toy": ("python experiments/asr_train.py toy  -- a small transformer Paraformer on the easy toy features",
            _preset_toy()),
    "tiny": ("python experiments/asr_train.py tiny  -- a seconds-long smoke run on tiny toy data", _preset_tiny()),
    "manifest": ("python experiments/asr_train.py manifest --train-manifest train.jsonl --val-manifest val.jsonl "
                 "[--init-from RUN]  -- your own recordings (JSONL or Kaldi dir), from scratch or fine-tuned",
                 _preset_manifest()),
}


# --------------------------------------------------------------------------- data


def tokenizer_for(cfg: AsrTrainConfig) -> Tokenizer:
    """The vocabulary of the data: the toy vocabulary; with `init_from`, that run's; for a
    manifest, every character (or word) of the training transcripts; for speech with
    `tokenizer="char"` every character of the corpus's digit and word lists plus the space,
    with `"word"` every word of those lists (sorted; unknown characters / words are errors)."""
    if cfg.data == "toy":
        return toy_tokenizer(cfg.toy)
    if cfg.init_from is not None:
        tok = _init_source(cfg.init_from)[1]
        return dataclasses.replace(tok, use_unk=True) if cfg.oov == "unk" else tok
    if cfg.data == "manifest":
        texts = [u.text for u in manifest_lib.read_manifest(manifest_path(cfg, "train"), check_files=False)]
        kind = WordTokenizer if cfg.tokenizer == "word" else CharTokenizer
        return kind.from_texts(texts, use_unk=cfg.oov == "unk")
    if cfg.tokenizer == "word":
        return WordTokenizer(tuple(sorted(set(DIGITS + WORDS))), use_unk=False)
    chars = sorted(set("".join(DIGITS + WORDS)) | {" "})
    return CharTokenizer(tuple(chars), use_unk=False)


def _init_source(path: Path) -> tuple[AsrTrainConfig, Tokenizer, Path]:
    """The config, tokenizer and checkpoint of the run that `init_from` names."""
    ckpt = checkpoint_of(path)
    try:
        cfg = config_of(TASK, ckpt)
    except CheckpointError as e:
        raise CheckpointError(f"--init-from {path}: {e}") from None
    if cfg.data == "toy":
        raise ConfigError(f"--init-from {path}: that run was trained on toy features, not audio")
    return cfg, _run_tokenizer(ckpt, cfg), ckpt


def with_init(cfg: AsrTrainConfig) -> AsrTrainConfig:
    """`cfg` with the `model`, `frontend` and `tokenizer` of the run `cfg.init_from` (unchanged without one)."""
    if cfg.init_from is None:
        return cfg
    src, _, _ = _init_source(cfg.init_from)
    return dataclasses.replace(cfg, model=src.model, frontend=src.frontend, tokenizer=src.tokenizer)


def resolve(cfg: AsrTrainConfig) -> AsrTrainConfig:
    """`cfg` with `model.vocab_size` and `model.encoder.input_dim` set from the data."""
    v, f = tokenizer_for(cfg).vocab_size, feature_dim(cfg)
    m = cfg.model
    if m.vocab_size == v and m.encoder.input_dim == f:
        return cfg
    enc = dataclasses.replace(m.encoder, input_dim=f)
    return dataclasses.replace(cfg, model=dataclasses.replace(m, vocab_size=v, encoder=enc))


def train_examples(cfg: AsrTrainConfig, tok: Tokenizer | None = None) -> list[Example]:
    """The training set: `num_train` utterances of the training voices (speech) or the training manifest."""
    if cfg.data == "toy":
        raise ConfigError("train_examples: toy training data is drawn per step (toy_batch), not a fixed set")
    if cfg.data == "manifest":
        tok = tok or tokenizer_for(cfg)
        real = manifest_examples(cfg, manifest_path(cfg, "train"), tok, speeds=(1.0, *cfg.speed_perturb))
        return real + (speech_examples(cfg, "train", cfg.mix_speech, tok) if cfg.mix_speech else [])
    return speech_examples(cfg, "train", cfg.num_train, tok or tokenizer_for(cfg))


def val_examples(cfg: AsrTrainConfig, tok: Tokenizer | None = None) -> list[Example]:
    """The validation split: `num_val` utterances of the training voices (new texts), a toy batch, or the
    validation manifest."""
    tok = tok or tokenizer_for(cfg)
    if cfg.data == "toy":
        return toy_examples(cfg, data_key(cfg, "val"), cfg.num_val, tok)
    if cfg.data == "manifest":
        return manifest_examples(cfg, manifest_path(cfg, "val"), tok)
    return speech_examples(cfg, "val", cfg.num_val, tok)


def test_examples(cfg: AsrTrainConfig, tok: Tokenizer | None = None) -> list[Example]:
    """The test split: `num_test` utterances of the *held-out* voices, a toy batch, or the test manifest."""
    tok = tok or tokenizer_for(cfg)
    if cfg.data == "toy":
        return toy_examples(cfg, data_key(cfg, "test"), cfg.num_test, tok)
    if cfg.data == "manifest":
        if cfg.test_manifest is None:
            raise ConfigError("this manifest run has no test split: pass --test-manifest (or evaluate any manifest "
                              "with experiments/asr_eval.py --manifest)")
        return manifest_examples(cfg, cfg.test_manifest, tok)
    return speech_examples(cfg, "test", cfg.num_test, tok)


def train_batch_fn(cfg: AsrTrainConfig, tok: Tokenizer, device: torch.device | str = "cpu"):
    """`get_batch(step) -> batch dict` on `device`, a pure function of the step: this rank's `B / W`
    examples (W processes; all `B` in one), collated on the host (the features are computed once,
    before training), put on `device` (from pinned memory on CUDA), then warped and masked there."""
    world = check_global_batch(cfg.batch_size)
    aug_key = distributed.shard_key(random.fold_in(random.key(cfg.seed), "augment"))
    warp_key = random.fold_in(aug_key, "freq_warp")
    train_key = data_key(cfg, "train")
    data = train_examples(cfg, tok) if cfg.data != "toy" else None
    lengths = None
    if cfg.data == "manifest":
        lengths = torch.tensor([e.features.shape[0] for e in data], dtype=torch.int64)
        if len(data) < cfg.batch_size:
            raise DataError(f"the training manifest has {len(data)} utterances, fewer than --batch-size "
                            f"{cfg.batch_size}; lower --batch-size or add utterances")

    def get_batch(step: int) -> dict[str, torch.Tensor]:
        if lengths is not None:
            idx = distributed.shard(length_bucketed_indices(train_key, lengths, step, cfg.batch_size))
            batch = collate([data[int(i)] for i in idx], cfg)
        elif data is not None:
            idx = distributed.shard(epoch_indices(train_key, len(data), step, cfg.batch_size))
            batch = collate([data[int(i)] for i in idx], cfg)
        else:
            key = random.fold_in(distributed.shard_key(train_key), step)
            batch = collate(toy_examples(cfg, key, cfg.batch_size // world, tok), cfg)
        batch = devices.put(batch, device)
        if cfg.freq_warp > 0:
            batch["features"] = warp_frequency(random.fold_in(warp_key, step), batch["features"],
                                               max_warp=cfg.freq_warp)
        if cfg.spec_augment:
            batch["features"] = spec_augment(random.fold_in(aug_key, step), batch["features"],
                                             num_time_masks=cfg.time_masks, max_time=cfg.max_time,
                                             num_freq_masks=cfg.freq_masks, max_freq=cfg.max_freq,
                                             lengths=batch["feat_lengths"])
        return batch

    return get_batch


# --------------------------------------------------------------------------- model use


def decode(out: Any, cfg: AsrTrainConfig, tokenizer: Tokenizer) -> list[Transcript]:
    """`greedy_decode` of a `ParaformerOutput` with this config's frame shift; the text is the
    tokenizer's join of the tokens (characters concatenated, words joined by a space)."""
    return greedy_decode(out, tokenizer, frame_shift_s=frame_shift(cfg))


def _batches(examples: Sequence[Example], batch_size: int) -> Iterable[list[Example]]:
    order = sorted(range(len(examples)), key=lambda i: examples[i].features.shape[0])  # less padding
    for i in range(0, len(order), batch_size):
        yield [examples[j] for j in order[i:i + batch_size]]


def evaluate(params: PyTree, cfg: AsrTrainConfig, examples: Sequence[Example], tokenizer: Tokenizer, *,
             batch_size: int = 32, num_examples: int = 5) -> dict[str, Any]:
    """Greedy-decode `examples` in eval mode and score them.

    Returns `cer`, `wer` (corpus rates from `funcml.asr.metrics`), `length_acc` (fraction whose
    fired token count, `<eos>` excluded, equals the reference's), `token_acc` (argmax of a
    teacher-forced pass, where CIF is given the reference length, over reference positions),
    `rtf` (model compute seconds / audio seconds, batched, front end excluded), `num_utts`,
    and `examples`: the first `num_examples` `{ref, hyp}` pairs in length order. The batches are put on
    the params' device, where the model runs.
    """
    model = cfg.model
    device = devices.of(params)
    refs, hyps, pairs = [], [], []
    acc_sum, len_sum, n_tok, compute_s, audio_s = 0.0, 0.0, 0, 0.0, 0.0
    with torch.no_grad():
        for group in _batches(examples, batch_size):
            batch = devices.put(collate(group, cfg), device)
            x = {"features": batch["features"], "feat_lengths": batch["feat_lengths"]}
            devices.synchronize(device)
            t0 = time.perf_counter()
            out, _ = models.apply(params, {}, x, model, train=False)
            decoded = decode(out, cfg, tokenizer)  # reads the tokens on the host: the device's work is done
            compute_s += time.perf_counter() - t0
            audio_s += sum(e.seconds for e in group)
            forced, _ = models.apply(params, {}, {**x, "target_lengths": batch["token_lengths"]}, model, train=False)
            mask = torch.arange(model.max_tokens, device=device) < batch["token_lengths"][:, None]
            k = int(mask.sum())
            acc_sum += float(token_accuracy(forced.logits, batch["tokens"], mask)) * k
            n_tok += k
            fired = out.token_lengths - int(model.predict_eos)
            len_sum += float(length_accuracy(fired, batch["token_lengths"])) * len(group)
            for e, d in zip(group, decoded):
                refs.append(e.text)
                hyps.append(d.text)
                if len(pairs) < num_examples:
                    pairs.append({"ref": e.text, "hyp": d.text})
    n = len(refs)
    return {
        "cer": cer(refs, hyps) if n else float("nan"),
        "wer": wer(refs, hyps) if n else float("nan"),
        "token_acc": acc_sum / n_tok if n_tok else float("nan"),
        "length_acc": len_sum / n if n else float("nan"),
        "rtf": compute_s / audio_s if audio_s > 0 else float("nan"),
        "num_utts": n,
        "examples": pairs,
    }


def transcribe_features(params: PyTree, cfg: AsrTrainConfig, tokenizer: Tokenizer,
                        features: Sequence[torch.Tensor]) -> tuple[list[Transcript], Any]:
    """Transcribe a list of feature matrices `[T_i, F]` (F = `model.encoder.input_dim`) in one
    batch, on the params' device. Returns the transcripts and the `ParaformerOutput` (for plots)."""
    f = cfg.model.encoder.input_dim
    for i, x in enumerate(features):
        if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[1] != f:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ShapeError(f"features[{i}]: expected [T, {f}] (the model's feature dimension), got {shape}")
        if x.shape[0] < 1:
            raise DataError(f"features[{i}]: no frames (T = 0)")
        check_dtype(x, "float", name=f"features[{i}]")
        check_finite(x, name=f"features[{i}]")
    batch = devices.put(collate([Example(x.to(torch.float32), [0], "", 0.0) for x in features], cfg), devices.of(params))
    with torch.no_grad():
        out, _ = models.apply(params, {}, {"features": batch["features"], "feat_lengths": batch["feat_lengths"]},
                              cfg.model, train=False)
    return decode(out, cfg, tokenizer), out


def transcribe_waveform(params: PyTree, cfg: AsrTrainConfig, tokenizer: Tokenizer, waveform: torch.Tensor,
                        sample_rate: int) -> tuple[Transcript, torch.Tensor, Any]:
    """Transcribe one waveform `[N]` float at any sample rate (resampled to the front end's).
    Returns `(transcript, features [T, F], ParaformerOutput)`."""
    if cfg.data == "toy":
        raise ConfigError("transcribe_waveform: this model was trained on toy features, not audio; pass features")
    check_shape(waveform, "n", name="waveform")
    if waveform.numel() == 0:
        raise DataError("waveform: the audio is empty (0 samples)")
    check_finite(waveform, name="waveform")
    if sample_rate != cfg.frontend.sample_rate:
        waveform = audio_lib.resample(waveform, sample_rate, cfg.frontend.sample_rate)
    feats = frontend_features(waveform.to(torch.float32), cfg.frontend)
    (hyp,), out = transcribe_features(params, cfg, tokenizer, [feats])
    return hyp, feats, out


def transcribe(params: PyTree, cfg: AsrTrainConfig, tokenizer: Tokenizer, examples: Sequence[Example]
               ) -> list[Transcript]:
    """Transcribe examples (their features) in one batch."""
    return transcribe_features(params, cfg, tokenizer, [e.features for e in examples])[0]


# --------------------------------------------------------------------------- training


_RESUME_FIELDS = ("model", "data", "tokenizer", "train_manifest", "init_from", "speech", "toy", "frontend", "num_train",
                  "seed", "data_seed")
TASK = Task("asr", AsrTrainConfig, best_metric="val/cer", mode="min", resume_fields=_RESUME_FIELDS,
            curves=(("loss", "train", "loss", "train loss"), ("val_cer", "val", "val/cer", "val CER")))
"""ASR in the run orchestration (`funcml.trainer`): checkpoints ranked by val/cer."""


def train(cfg: AsrTrainConfig, *, progress: bool = True) -> tuple[RunDir, dict[str, Any]]:
    """Train a Paraformer with `funcml.trainer.train_task`; returns the run and a summary.

    The run directory gets config.json (resolved), tokenizer.json, metrics.csv/jsonl (train
    loss / ce / quantity / token_acc every 10 steps; val CER, WER, token and length accuracy
    every `eval_every` steps), checkpoints/ (best by val/cer and the last `keep_last`),
    plots/loss.png and plots/val_cer.png (and CIF figures of three validation utterances on
    audio), summary.json and eval.json (`evaluate` of the best checkpoint on the val and test
    splits; for speech the test split is the held-out voices). Ctrl-C saves a checkpoint and
    raises `TrainingInterrupted` naming the resume command.

    Under torchrun every rank trains on its shard; rank 0 alone writes the run directory and
    evaluates, and the others return the same `run` with the loop's summary.
    """
    distributed.init_from_env()  # under torchrun: join the process group (a no-op in one process)
    cfg = resolve(with_init(cfg))
    tok = tokenizer_for(cfg)
    init_params = None
    if cfg.init_from is not None and cfg.resume is None:
        src_ckpt = _init_source(cfg.init_from)[2]
        _, init_params, _ = load_model(src_ckpt)
        if distributed.is_main():
            print(f"[asr] fine-tuning from {src_ckpt} (its params; model, frontend and {cfg.tokenizer} tokenizer of "
                  f"{tok.vocab_size} tokens from its config; a new optimizer)", file=sys.stderr)

    def loss_fn(params, model_state, batch, key):
        loss, metrics = paraformer_loss(params, batch, cfg.model, cfg.loss, key=key, train=True)
        return loss, (metrics, model_state)

    def validate(params, model_state, val) -> dict[str, float]:
        m = evaluate(params, cfg, val, tok)
        return {"val/cer": m["cer"], "val/wer": m["wer"], "val/token_acc": m["token_acc"],
                "val/length_acc": m["length_acc"]}

    def report(params, model_state, val, run) -> dict[str, Any]:
        has_test = cfg.data != "manifest" or cfg.test_manifest is not None
        if cfg.data != "toy":
            save_cif_figures(params, cfg, tok, val[:3], run.plots)
        return {"val": evaluate(params, cfg, val, tok),
                "test": evaluate(params, cfg, test_examples(cfg, tok), tok) if has_test else None,
                "test_split": {"speech": "held-out voices", "toy": "toy test batch",
                               "manifest": f"manifest {cfg.test_manifest}"}[cfg.data]}

    return train_task(TASK, cfg, data=lambda device: (train_batch_fn(cfg, tok, device), val_examples(cfg, tok)),
                      loss_fn=loss_fn,
                      validate=validate, report=report, params=init_params,
                      on_run=lambda run: tok.save(run.path / "tokenizer.json"), progress=progress)


def save_cif_figures(params: PyTree, cfg: AsrTrainConfig, tokenizer: Tokenizer, examples: Sequence[Example],
                     folder: Path) -> list[Path]:
    """`folder/cif_<i>.png` for each example: its features with the CIF weights and firing frames
    of the model and the decoded tokens (funcml.asr.viz.save_cif_plot), titled with reference and
    hypothesis."""
    from .viz import save_cif_plot

    paths = []
    shift = cfg.frontend.hop_ms / 1000 * (cfg.frontend.lfr_n if cfg.frontend.use_lfr else 1)
    for i, ex in enumerate(examples):
        (hyp,), out = transcribe_features(params, cfg, tokenizer, [ex.features])
        n = int(out.enc_lengths[0])
        paths.append(save_cif_plot(ex.features, out.alpha[0, :n], out.fire_positions[0], hyp.tokens,
                                   folder / f"cif_{i}.png", feature_shift_s=shift, frame_shift_s=frame_shift(cfg),
                                   title=f"ref {ex.text!r}   hyp {hyp.text!r}"))
    return paths


# --------------------------------------------------------------------------- loading


def checkpoint_of(path: str | Path) -> Path:
    """The checkpoint `load_model(path)` reads: a run directory's best verified checkpoint by
    val/cer (else its latest verified one), or `path` itself when it is a checkpoint directory."""
    return trainer_lib.checkpoint_of(TASK, path)


def load_model(path: str | Path, *, device: torch.device | str = "cpu") -> tuple[AsrTrainConfig, PyTree, Tokenizer]:
    """Load `(train_cfg, params, tokenizer)` from a run directory (its best checkpoint by
    val/cer, else its latest) or from one checkpoint directory (`step_*`) (`funcml.trainer.load_run`),
    the params on `device` (wherever the run was trained). Names, shapes and dtypes are checked
    against a fresh model of the saved config."""
    cfg, ts, ckpt = load_run(TASK, path, device=device)
    return cfg, ts.params, _run_tokenizer(ckpt, cfg)


def _run_tokenizer(ckpt: Path, cfg: AsrTrainConfig) -> Tokenizer:
    """The tokenizer saved beside checkpoint `ckpt` (`<run>/tokenizer.json`, either kind), else the
    one `cfg` implies (runs from before tokenizer.json held anything but the config's); its size
    must be the model's."""
    saved = ckpt.parent.parent / "tokenizer.json"
    tok = load_tokenizer(saved) if saved.is_file() else tokenizer_for(cfg)
    if tok.vocab_size != cfg.model.vocab_size:
        raise CheckpointError(f"{saved if saved.is_file() else ckpt}: the tokenizer has {tok.vocab_size} tokens but "
                              f"the model was trained with vocab_size={cfg.model.vocab_size}; the run's "
                              "tokenizer.json does not belong to this checkpoint")
    return tok
