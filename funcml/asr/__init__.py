"""Paraformer ASR on funcml: data, front-end, the model, decoding, metrics and the training task.

Building blocks (each pure and tested): `tokenizer` (CharTokenizer, WordTokenizer), `toy` (synthetic
speech-like features), `speech` (offline espeak-ng synthesis, cached corpora), `augment` (speed,
reverb, noise, EQ, band limits), `audio` (reading WAV of every PCM / float format, FLAC / OGG /
MP3 via soundfile; resampling), `manifest` (JSONL / Kaldi manifests, a feature cache), `frontend` (log-mel, LFR, normalization, SpecAugment), `batching`
(padding, masks, subsampled lengths), `encoder` (conv2d / linear input, transformer,
conformer or SAN-M blocks), `cif` (vectorized continuous integrate-and-fire), `decoder`
(non-autoregressive decoder, glancing sampler), `paraformer` (the model, its loss, greedy
decoding with timestamps), `metrics` (edit distance, CER, WER, token and length accuracy),
`viz` (spectrogram + CIF figure). `task` trains, evaluates and loads models
(`experiments/asr_train.py`, `asr_eval.py`, `asr_infer.py`); `Recognizer.load(run)(waveform, sample_rate)`
(`recognizer`) transcribes with a trained run in one call.
"""

from . import (audio, augment, batching, cif, decoder, encoder, frontend, manifest, metrics, paraformer, speech,
               tokenizer, toy)
from .batching import (attention_mask, length_bucketed_indices, lengths_to_mask, lfr_lengths, pad_sequences,
                       subsampled_lengths)
from .cif import CIFOutput, cif_weights, fire_times, init_cif_predictor, quantity_loss
from .decoder import glance, init_nar_decoder, nar_decoder
from .encoder import EncoderConfig, encode, encoder_lengths, init_encoder
from .frontend import FrontendConfig, cepstral_smooth, features, lfr, log_mel, spec_augment
from .metrics import cer, edit_distance, length_accuracy, token_accuracy, wer
from .paraformer import (LossConfig, ParaformerConfig, ParaformerOutput, Transcript, greedy_decode,
                         masked_cross_entropy, paraformer_loss)
from .tokenizer import CharTokenizer, WordTokenizer, load_tokenizer
from .toy import ToyConfig, toy_batch, toy_tokenizer
from .recognizer import Recognizer

__all__ = [name for name in dir() if not name.startswith("_")]
