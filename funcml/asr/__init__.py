"""Paraformer ASR on funcml: tokenizer, data, front-end, CIF and metrics.

Building blocks (each pure and tested): `tokenizer` (CharTokenizer), `toy` (synthetic
speech-like features), `speech` (offline espeak-ng synthesis, cached corpora), `audio` (WAV
I/O, resampling), `frontend` (log-mel, LFR, normalization, SpecAugment), `batching`
(padding, masks, subsampled lengths), `cif` (vectorized continuous integrate-and-fire),
`metrics` (edit distance, CER, WER, token and length accuracy).
"""

from . import audio, batching, cif, frontend, metrics, speech, tokenizer, toy
from .batching import attention_mask, lengths_to_mask, lfr_lengths, pad_sequences, subsampled_lengths
from .cif import CIFOutput, cif_weights, fire_times, init_cif_predictor, quantity_loss
from .frontend import FrontendConfig, features, lfr, log_mel, spec_augment
from .metrics import cer, edit_distance, length_accuracy, token_accuracy, wer
from .tokenizer import CharTokenizer
from .toy import ToyConfig, toy_batch, toy_tokenizer

__all__ = [name for name in dir() if not name.startswith("_")]
