"""An offline speech corpus: espeak-ng voices driven through ctypes, augmented from a key.

    cfg = SpeechConfig(text_kind="digits")
    train = make_corpus(fold_in(key, "train"), 2000, cfg, split="train", cache_dir="data/speech")
    test = make_corpus(fold_in(key, "test"), 200, cfg, split="test", cache_dir="data/speech")
    wave, sr = synthesize("three one four", "en+f2", rate=160, pitch=60)   # [N] float32, 22050 Hz

The synthesizer is libespeak-ng as shipped by the `espeakng-loader` wheel (library and voice
data), called through its C API (`speak_lib.h`): `espeak_Initialize` in
`AUDIO_OUTPUT_SYNCHRONOUS` mode (it returns the sample rate, 22050 Hz), a synth callback that
collects the int16 samples, `espeak_SetVoiceByFile`, `espeak_SetParameter(espeakRATE |
espeakPITCH)`, `espeak_Synth` and `espeak_Synchronize`. No subprocess, no network.

Voices are named `lang+variant` (`"en+m3"`, `"en-us+f2"`) or `lang` alone, like espeak's own
names. Determinism (same text, voice, rate and pitch -> the same samples, whatever was
synthesized before) does not hold for espeak out of the box: we measured that repeated calls
differ, because (1) the pitch "flutter" is driven by a global counter that keeps running
across utterances and that no API resets, and (2) one piece of waveform-generator state
alternates between two values from one utterance to the next. So each voice is compiled into
a private voice file (the language's file, then the variant's lines, then `flutter 0`), the
breath-noise generator is re-seeded (`espeak_ng_SetRandSeed`) before every utterance, and
every utterance is synthesized twice, keeping the second. The result is bit-identical
whatever was synthesized before (tested) and across fresh processes (measured).

Threads: libespeak-ng is one global synthesizer. It is initialized once per process and every
call holds a module lock, so synthesis is thread-safe but never runs in parallel; use
processes (each initializes its own copy) for parallel corpus generation.

Augmentation per utterance, all drawn from the utterance's key: text, voice (the training
voices for `split="train"`, the held-out voices for `split="test"`), rate `r` (words/min),
pitch (0-100), intonation range (0-100) and word gap, gain `g` dB, and noise at an SNR `s` dB,
scaled so that the SNR is exact on the utterance. With the sim-to-real fields of `SpeechConfig`
(all off by default; see funcml.asr.augment for each effect's equation) the chain is

    e = espeak(text, rate = r / alpha, pitch, intonation, word gap)         formant warp alpha
    x = speed(resample(e, 22050 -> sr), alpha * s_k)                        speed factor s_k
    x = 10^(g/20) eq(reverb(x))                                             room and microphone
    y = band_limit(x + n * sqrt(P_x / (10^(s/10) P_n)), low, high)          noise, then the channel band

with `P` the mean power and `n` white (the default), coloured `1/f^beta`, or babble-like noise.
Reading the audio `alpha` times faster after speaking it `alpha` times slower scales formants
and pitch by `alpha` at the drawn tempo (vocal-tract-length warping without a phase vocoder);
the speed factor then scales tempo, pitch and formants together (Kaldi's speed perturbation). Corpora are cached on disk (one `.npz` per corpus, named by a hash of
the config, key, size, split and library versions; written atomically; a corrupt file is
regenerated with a warning).
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import ctypes
import dataclasses
import hashlib
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .. import random
from ..config import (require, require_at_least, require_in_range, require_one_of, require_pair,
                      require_positive_int)
from ..errors import ConfigError, DataError, RangeError
from . import augment
from .audio import resample

__all__ = ["SpeechConfig", "Utterance", "synthesize", "make_corpus", "espeak_version", "DIGITS", "WORDS",
           "ENGLISH_LANGS", "WIDE_VARIANTS", "WIDE_TRAIN_VOICES"]

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
WORDS = (
    "yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go",
    "red", "green", "blue", "black", "white", "cat", "dog", "bird", "house", "tree",
    "open", "close", "light", "water", "music", "play", "start", "next", "back", "home",
)

# Wider training voices (sim-to-real): every English language of espeak-ng, both dialect groups (British:
# en = en-gb, Scottish, RP, Lancastrian, West Midlands; American: en-us, New York; Caribbean), times the
# human-sounding variants of espeak-ng-data/voices/!v. The variants of the held-out test voices (m4, f3,
# m6, f5) are left out altogether, so the test voices stay unheard; so are the robotic / effect ones
# (robosoft*, *Robot, Demonic, Tweaky).
ENGLISH_LANGS = ("en", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-us", "en-us-nyc",
                 "en-029")
WIDE_VARIANTS = (
    "m1", "m2", "m3", "m5", "m7", "m8", "f1", "f2", "f4", "Alex", "Alicia", "Andrea", "Andy", "Annie", "AnxiousAndy",
    "Denis", "Diogo", "Gene", "Gene2", "Henrique", "Hugo", "Jacky", "Lee", "Marco", "Mario", "Michael", "Mike",
    "Mr serious", "Nguyen", "Reed", "RicishayMax", "RicishayMax2", "RicishayMax3", "Storm", "adam", "anika",
    "announcer", "antonio", "aunty", "belinda", "benjamin", "boris", "caleb", "croak", "david", "ed", "edward",
    "edward2", "fast", "grandma", "grandpa", "gustave", "ian", "iven", "iven2", "iven3", "iven4", "john",
    "kaukovalta", "klatt", "klatt2", "klatt3", "klatt4", "klatt5", "klatt6", "linda", "marcelo", "max", "michel",
    "miguel", "mike2", "norbert", "pablo", "paul", "pedro", "quincy", "rob", "robert", "sandro", "shelby", "steph",
    "steph2", "steph3", "travis", "victor", "whisper", "whisperf", "zac",
)
WIDE_TRAIN_VOICES = tuple(f"{lang}+{v}" for lang in ENGLISH_LANGS for v in WIDE_VARIANTS)

# speak_lib.h (API revision 12)
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_ESPEAK_CHARS_UTF8 = 1
_ESPEAK_RATE, _ESPEAK_PITCH, _ESPEAK_RANGE, _ESPEAK_WORDGAP = 1, 3, 4, 7
_RATE_MIN, _RATE_MAX = 80, 450
_EE_OK = 0
_CACHE_FORMAT = 4  # 4: the sim-to-real draws from one vector of uniforms per utterance

_LOCK = threading.RLock()


@dataclasses.dataclass(frozen=True)
class SpeechConfig:
    """How a synthetic speech corpus is drawn (see funcml.asr.speech)."""

    text_kind: str = "digits"
    """What is spoken: "digits" (digit strings), "words" (words from WORDS) or "mixed" (either, equally likely)."""
    digits_len: tuple[int, int] = (3, 6)
    """Digits per utterance, (low, high) inclusive."""
    words_len: tuple[int, int] = (1, 4)
    """Words per utterance for text_kind words, (low, high) inclusive."""
    train_voices: tuple[str, ...] = (
        "en+m1", "en+m2", "en+m3", "en+f1", "en+f2", "en-us+m1", "en-us+m3", "en-us+f1", "en-us+f4",
    )
    """espeak-ng voices of the training and validation splits."""
    test_voices: tuple[str, ...] = ("en+m4", "en+f3", "en-us+m6", "en-us+f5")
    """espeak-ng voices of the test split, held out: generalization to unseen speakers."""
    rate_range: tuple[int, int] = (130, 200)
    """Speaking rate in words/min, inclusive (espeak accepts 80-450)."""
    pitch_range: tuple[int, int] = (35, 65)
    """Base pitch on espeak's 0-100 scale, inclusive (50 = the voice's normal)."""
    snr_db_range: tuple[float, float] | None = (15.0, 35.0)
    """Additive noise SNR in dB, [low, high); None for clean audio."""
    gain_db_range: tuple[float, float] = (-6.0, 0.0)
    """Gain in dB, [low, high)."""
    sample_rate: int = 16000
    """Output sample rate in Hz (resampled from espeak's 22050 Hz)."""
    word_gap_range: tuple[int, int] = (0, 0)
    """Extra pause between words in units of 10 ms (espeak's espeakWORDGAP), inclusive; (0, 0): none."""
    intonation_range: tuple[int, int] = (50, 50)
    """espeak's pitch range (espeakRANGE: 0 monotone, 50 normal, 100 wide), inclusive."""
    warp_range: tuple[float, float] = (1.0, 1.0)
    """Vocal-tract-length (formant) warp `alpha`, `[low, high)`: espeak speaks at `rate / alpha` and the
    audio is read `alpha` times faster, so formants and pitch scale by `alpha` at the drawn rate."""
    speed_factors: tuple[float, ...] = (1.0,)
    """Kaldi speed perturbation: one factor drawn per utterance (e.g. 0.9 1.0 1.1); tempo, pitch and
    formants all scale by it."""
    reverb_prob: float = 0.0
    """Share of utterances given synthetic-room reverberation (funcml.asr.augment.reverb)."""
    rt60_range: tuple[float, float] = (0.1, 0.6)
    """Reverberation time RT60 in seconds, `[low, high)`."""
    wet_range: tuple[float, float] = (0.2, 0.8)
    """Reverberant share of a reverberated utterance, `[low, high)`."""
    noise_beta_range: tuple[float, float] = (0.0, 0.0)
    """Colour of the additive noise, `[low, high)`: power spectrum `1 / f^beta` (0 white, 1 pink, 2 brown)."""
    babble_prob: float = 0.0
    """Share of noisy utterances whose noise is babble-like (funcml.asr.augment.babble_noise) instead."""
    eq_db: float = 0.0
    """Random smooth equalizer (microphone colouring) of at most this many dB (0: none)."""
    lowpass_hz_range: tuple[float, float] | None = None
    """Band-limit: the top of the kept band in Hz, `[low, high)` (e.g. 3000 4000: telephone to 8 kHz
    audio); None keeps everything up to Nyquist."""
    highpass_hz_range: tuple[float, float] | None = None
    """Band-limit: the bottom of the kept band in Hz, `[low, high)` (e.g. 0 300); None keeps from 0 Hz."""

    def __post_init__(self):
        require_one_of(self, "text_kind", ("digits", "words", "mixed"))
        require_pair(self, "digits_len", "words_len", low=1)
        require_pair(self, "rate_range", "pitch_range", "gain_db_range")
        require_pair(self, "snr_db_range", optional=True)
        require(_RATE_MIN <= self.rate_range[0] and self.rate_range[1] <= _RATE_MAX, self,
                f"rate_range: espeak accepts {_RATE_MIN}-{_RATE_MAX} words/min, got {self.rate_range}")
        require(0 <= self.pitch_range[0] and self.pitch_range[1] <= 100, self,
                f"pitch_range: espeak accepts 0-100, got {self.pitch_range}")
        for name in ("train_voices", "test_voices"):
            voices = getattr(self, name)
            require(bool(voices), self, f"{name} must name at least one voice, got {voices!r}")
        overlap = sorted(set(self.train_voices) & set(self.test_voices))
        require(not overlap, self, f"held-out test_voices overlap train_voices: {overlap}")
        require_positive_int(self, "sample_rate")
        require_pair(self, "word_gap_range", "noise_beta_range", low=0)
        require_pair(self, "intonation_range", low=0, high=100)
        require_pair(self, "warp_range", low=0.5, high=2.0)
        require_pair(self, "rt60_range", low=0, low_open=True)
        require_pair(self, "wet_range", low=0, high=1)
        require_pair(self, "lowpass_hz_range", "highpass_hz_range", optional=True)
        require(bool(self.speed_factors) and all(0.5 <= f <= 2.0 for f in self.speed_factors), self,
                f"speed_factors must be one or more factors in [0.5, 2], got {self.speed_factors}")
        require_in_range(self, 0, 1, "reverb_prob", "babble_prob")
        require_at_least(self, 0, "eq_db")
        nyq = self.sample_rate / 2
        lo = self.highpass_hz_range or (0.0, 0.0)
        hi = self.lowpass_hz_range or (nyq, nyq)
        require(lo[0] >= 0 and hi[1] <= nyq and lo[1] < hi[0], self,
                f"band limits: need 0 <= highpass_hz_range < lowpass_hz_range <= Nyquist ({nyq} Hz), "
                f"got {self.highpass_hz_range}, {self.lowpass_hz_range}")


@dataclasses.dataclass(frozen=True, eq=False)
class Utterance:
    """One corpus item: `waveform: [N] float32` at `sample_rate`, and how it was made."""

    text: str
    waveform: torch.Tensor
    sample_rate: int
    voice: str
    rate: int
    pitch: int
    gain_db: float
    snr_db: float | None
    warp: float = 1.0
    speed: float = 1.0


# ---------------------------------------------------------------- the espeak-ng engine


class _Engine:
    """The process-wide libespeak-ng: loaded and initialized once, used under `_LOCK`."""

    def __init__(self):
        try:
            import espeakng_loader
        except ImportError as e:  # pragma: no cover - the package is a declared dependency
            raise ConfigError("speech synthesis needs the `espeakng-loader` package: pip install espeakng-loader") from e
        self.data = Path(espeakng_loader.get_data_path())
        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_Info.argtypes = [ctypes.c_void_p]
        lib.espeak_Info.restype = ctypes.c_char_p
        lib.espeak_SetVoiceByFile.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                     ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        # espeak_Initialize's path is the folder that holds espeak-ng-data.
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, str(self.data.parent).encode(), 0)
        if rate <= 0:
            raise DataError(f"espeak_Initialize failed (returned {rate}) with data at {self.data}")
        self.sample_rate = int(rate)
        self.version = lib.espeak_Info(None).decode()
        self._chunks: list[bytes] = []

        # int SynthCallback(short *wav, int numsamples, espeak_EVENT *events); 0 = continue
        @ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
        def on_audio(wav, n, events):
            if wav and n > 0:
                self._chunks.append(ctypes.string_at(wav, 2 * n))
            return 0

        self._callback = on_audio  # kept alive as long as the library may call it
        lib.espeak_SetSynthCallback(self._callback)
        self.lib = lib
        self._voice_dir = Path(tempfile.mkdtemp(prefix="funcml-espeak-voices-"))
        atexit.register(shutil.rmtree, self._voice_dir, True)
        self._voice_files: dict[str, Path] = {}

    def _lang_file(self, lang: str) -> Path:
        if not hasattr(self, "_langs"):  # one walk of the data folder, not one per voice
            self._langs: dict[str, Path] = {}
            for p in sorted((self.data / "lang").rglob("*")):
                if p.is_file():
                    self._langs.setdefault(p.name.lower(), p)
        if lang.lower() not in self._langs:
            raise ConfigError(f"voice language {lang!r} not found in {self.data / 'lang'} (e.g. 'en', 'en-us')")
        return self._langs[lang.lower()]

    def voice_file(self, voice: str) -> Path:
        """The private voice file for `lang[+variant]`: language, variant, then `flutter 0`."""
        if voice in self._voice_files:
            return self._voice_files[voice]
        lang, _, variant = voice.partition("+")
        lines = self._lang_file(lang).read_text().splitlines()
        if variant:
            vpath = self.data / "voices" / "!v" / variant
            if not vpath.is_file():
                raise ConfigError(f"voice variant {variant!r} (in {voice!r}) not found in {vpath.parent}")
            lines += [ln for ln in vpath.read_text(errors="replace").splitlines()
                      if ln.split()[:1] not in (["name"], ["language"], ["flutter"])]
        lines.append("flutter 0")
        path = self._voice_dir / hashlib.sha256(voice.encode()).hexdigest()[:16]
        path.write_text("\n".join(lines) + "\n")
        self._voice_files[voice] = path
        return path

    def _once(self, text: bytes, voice: Path, rate: int, pitch: int, intonation: int, word_gap: int) -> bytes:
        self._chunks = []
        status = self.lib.espeak_SetVoiceByFile(str(voice).encode())
        if status != _EE_OK:
            raise ConfigError(f"espeak could not load voice file {voice} (status {status})")
        self.lib.espeak_SetParameter(_ESPEAK_RATE, rate, 0)
        self.lib.espeak_SetParameter(_ESPEAK_PITCH, pitch, 0)
        self.lib.espeak_SetParameter(_ESPEAK_RANGE, intonation, 0)
        self.lib.espeak_SetParameter(_ESPEAK_WORDGAP, word_gap, 0)
        self.lib.espeak_ng_SetRandSeed(1)
        status = self.lib.espeak_Synth(text, len(text), 0, _POS_CHARACTER, 0, _ESPEAK_CHARS_UTF8, None, None)
        if status != _EE_OK:
            raise DataError(f"espeak_Synth failed with status {status}")
        self.lib.espeak_Synchronize()
        return b"".join(self._chunks)

    def synth(self, text: str, voice: str, rate: int, pitch: int, intonation: int = 50, word_gap: int = 0) -> np.ndarray:
        path = self.voice_file(voice)
        data = text.encode("utf-8") + b"\0"
        args = (data, path, rate, pitch, intonation, word_gap)
        self._once(*args)  # brings the alternating state to a fixed phase
        return np.frombuffer(self._once(*args), dtype="<i2")


_ENGINE: _Engine | None = None


def _engine() -> _Engine:
    global _ENGINE
    with _LOCK:
        if _ENGINE is None:
            _ENGINE = _Engine()
        return _ENGINE


def espeak_version() -> str:
    """The libespeak-ng version string (e.g. "1.52.0")."""
    return _engine().version


def synthesize(text: str, voice: str = "en", rate: int = 175, pitch: int = 50, *, intonation: int = 50,
               word_gap: int = 0) -> tuple[torch.Tensor, int]:
    """Speak `text` with an espeak voice.

    Arguments:
        text: UTF-8 text, not blank.
        voice: `lang` or `lang+variant`, e.g. "en", "en-us+m3", "en+f2".
        rate: words per minute, 80-450.
        pitch: base pitch 0-100 (50 = the voice's normal).
        intonation: pitch range 0-100 (0 monotone, 50 = the voice's normal).
        word_gap: extra pause between words in units of 10 ms, >= 0.

    Returns: `(waveform [N] float32 in [-1, 1], sample_rate)`; the rate is espeak's own
    (22050 Hz), see `resample` for others. Deterministic: the same arguments give the same
    samples (see the module doc). Holds a process-wide lock: calls never run in parallel.
    """
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"text: expected non-blank text to speak, got {text!r}")
    if not _RATE_MIN <= rate <= _RATE_MAX:
        raise RangeError(f"rate: espeak accepts {_RATE_MIN}-{_RATE_MAX} words/min, got {rate}")
    if not 0 <= pitch <= 100 or not 0 <= intonation <= 100:
        raise RangeError(f"pitch and intonation: espeak accepts 0-100, got pitch={pitch}, intonation={intonation}")
    if word_gap < 0:
        raise RangeError(f"word_gap: expected >= 0 (units of 10 ms), got {word_gap}")
    with _LOCK:
        eng = _engine()
        pcm = eng.synth(text, voice, int(rate), int(pitch), int(intonation), int(word_gap))
        sr = eng.sample_rate
    if pcm.size == 0:
        raise DataError(f"espeak produced no audio for text {text!r} with voice {voice!r}")
    return torch.from_numpy(pcm.astype(np.float32) / 32768.0), sr


# ---------------------------------------------------------------- the corpus


def _draw_text(k: torch.Tensor, cfg: SpeechConfig) -> str:
    k_kind, k_len, k_tok = random.split(k, 3)
    kind = cfg.text_kind
    if kind == "mixed":
        kind = ("digits", "words")[int(random.randint(k_kind, (), 0, 2))]
    vocab, (lo, hi) = (DIGITS, cfg.digits_len) if kind == "digits" else (WORDS, cfg.words_len)
    n = int(random.randint(k_len, (), lo, hi + 1))
    ids = random.randint(k_tok, (n,), 0, len(vocab)).tolist()
    return " ".join(vocab[i] for i in ids)


def _between(u: float, lo_hi: tuple[float, float] | None, default: float) -> float:
    """`lo + u (hi - lo)` for a uniform `u` in [0, 1), or `default` for None."""
    return default if lo_hi is None else float(lo_hi[0] + u * (lo_hi[1] - lo_hi[0]))


def _channel(k: torch.Tensor, u: list[float], x: torch.Tensor, cfg: SpeechConfig) -> torch.Tensor:
    """The room and microphone of one utterance `x: [N]` float64: reverberation, then EQ (see
    SpeechConfig); `u` holds its uniform draws. An effect the config switches off is skipped."""
    k_ir, k_eq = random.split(k)
    if cfg.reverb_prob > 0:
        wet = float(u[0] < cfg.reverb_prob) * _between(u[2], cfg.wet_range, 0.0)
        x = augment.reverb(x, cfg.sample_rate, rt60=_between(u[1], cfg.rt60_range, 0.0), wet=wet, key=k_ir)
    if cfg.eq_db > 0:
        x = augment.random_eq(x, cfg.sample_rate, max_db=cfg.eq_db, key=k_eq)
    return x


def _make_utterance(k: torch.Tensor, cfg: SpeechConfig, voices: Sequence[str]) -> Utterance:
    k_text, k_voice, k_rate, k_pitch, k_gain, k_snr, k_noise = random.split(k, 7)
    # the sim-to-real draws: one vector of uniforms (each threefry call costs ~1 ms of overhead)
    k_u, k_chan, k_babble = random.split(random.fold_in(k, "augment"), 3)
    u = random.uniform(k_u, (11,), dtype=torch.float64).tolist()
    text = _draw_text(k_text, cfg)
    voice = voices[int(random.randint(k_voice, (), 0, len(voices)))]
    rate = int(random.randint(k_rate, (), cfg.rate_range[0], cfg.rate_range[1] + 1))
    pitch = int(random.randint(k_pitch, (), cfg.pitch_range[0], cfg.pitch_range[1] + 1))
    gain_db = float(random.uniform(k_gain, (), *cfg.gain_db_range, dtype=torch.float64))
    intonation = cfg.intonation_range[0] + int(u[0] * (cfg.intonation_range[1] - cfg.intonation_range[0] + 1))
    word_gap = cfg.word_gap_range[0] + int(u[1] * (cfg.word_gap_range[1] - cfg.word_gap_range[0] + 1))
    warp = _between(u[2], cfg.warp_range, 1.0)
    speed = cfg.speed_factors[int(u[3] * len(cfg.speed_factors))]
    espeak_rate = min(_RATE_MAX, max(_RATE_MIN, round(rate / warp)))
    wave, sr = synthesize(text, voice, espeak_rate, pitch, intonation=intonation, word_gap=word_gap)
    x = resample(wave.to(torch.float64), sr, cfg.sample_rate)
    x = augment.speed(x, warp * speed, cfg.sample_rate) if warp * speed != 1.0 else x
    x = _channel(k_chan, u[4:7], x, cfg) * 10.0 ** (gain_db / 20.0)
    snr_db = None
    if cfg.snr_db_range is not None:
        snr_db = float(random.uniform(k_snr, (), *cfg.snr_db_range, dtype=torch.float64))
        if cfg.noise_beta_range == (0.0, 0.0) and cfg.babble_prob == 0.0:
            noise = random.normal(k_noise, x.shape, dtype=torch.float64)                    # white, as before
        elif u[7] < cfg.babble_prob:  # one noise per utterance, chosen by its key
            noise = augment.babble_noise(cfg.sample_rate, x.shape, key=k_babble)
        else:
            noise = augment.coloured_noise(cfg.sample_rate, x.shape, beta=_between(u[8], cfg.noise_beta_range, 0.0),
                                           key=k_noise)
        x = augment.add_noise(x, noise.to(torch.float64), snr_db)
    if cfg.lowpass_hz_range is not None or cfg.highpass_hz_range is not None:  # the noise too, like a codec
        x = augment.band_limit(x, cfg.sample_rate, low_hz=_between(u[9], cfg.highpass_hz_range, 0.0),
                               high_hz=_between(u[10], cfg.lowpass_hz_range, cfg.sample_rate / 2))
    return Utterance(text, x.clamp(-1.0, 1.0).to(torch.float32), cfg.sample_rate, voice, rate, pitch, gain_db, snr_db,
                     warp, speed)


def _cache_path(cache_dir: Path, key: torch.Tensor, n: int, cfg: SpeechConfig, split: str) -> Path:
    meta = {"format": _CACHE_FORMAT, "config": dataclasses.asdict(cfg), "key": key.tolist(), "n": n, "split": split,
            "espeak": espeak_version(), "torch": torch.__version__.split("+")[0]}
    digest = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:24]
    return cache_dir / f"speech-{split}-{n}-{digest}.npz"


def _save(path: Path, utts: list[Utterance]) -> None:
    lengths = np.array([u.waveform.numel() for u in utts], dtype=np.int64)
    arrays = {
        "audio": np.concatenate([u.waveform.numpy() for u in utts]) if utts else np.zeros(0, np.float32),
        "lengths": lengths,
        "texts": np.array([u.text for u in utts], dtype=np.str_),
        "voices": np.array([u.voice for u in utts], dtype=np.str_),
        "rates": np.array([u.rate for u in utts], dtype=np.int64),
        "pitches": np.array([u.pitch for u in utts], dtype=np.int64),
        "gains": np.array([u.gain_db for u in utts], dtype=np.float64),
        "snrs": np.array([np.nan if u.snr_db is None else u.snr_db for u in utts], dtype=np.float64),
        "warps": np.array([u.warp for u in utts], dtype=np.float64),
        "speeds": np.array([u.speed for u in utts], dtype=np.float64),
        "sample_rate": np.array(utts[0].sample_rate if utts else 0, dtype=np.int64),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load(path: Path, n: int) -> list[Utterance]:
    with np.load(path, allow_pickle=False) as z:
        audio, lengths = z["audio"], z["lengths"]
        texts, voices, rates, pitches = z["texts"], z["voices"], z["rates"], z["pitches"]
        gains, snrs, sr = z["gains"], z["snrs"], int(z["sample_rate"])
        warps, speeds = z["warps"], z["speeds"]
    if len(lengths) != n or int(lengths.sum()) != audio.size or not (len(texts) == len(voices) == len(rates) == n):
        raise DataError(f"{path}: inconsistent cache contents")
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    return [
        Utterance(str(texts[i]), torch.from_numpy(audio[offsets[i]:offsets[i + 1]].copy()), sr, str(voices[i]),
                  int(rates[i]), int(pitches[i]), float(gains[i]), None if np.isnan(snrs[i]) else float(snrs[i]),
                  float(warps[i]), float(speeds[i]))
        for i in range(n)
    ]


@contextlib.contextmanager
def _one_thread():
    """Run torch on one thread, then restore the setting: per-utterance tensors are small, and
    on a busy machine handing each op to a thread pool is many times slower than doing it
    (measured: benchmarks/RESULTS.md, "Measurements behind the presets and design choices")."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _make_many(keys: torch.Tensor, cfg: SpeechConfig, voices: Sequence[str]) -> list[Utterance]:
    """The utterances of `keys` (`[m, 2]`), one thread: a worker's share of `make_corpus`."""
    with _one_thread():
        return [_make_utterance(k, cfg, voices) for k in keys]


def _workers(n: int, workers: int) -> int:
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    return min(workers, max(n, 1))


def make_corpus(key: torch.Tensor, n: int, cfg: SpeechConfig = SpeechConfig(), split: str = "train",
                cache_dir: str | os.PathLike | None = None, *, workers: int = 1,
                progress: bool = False) -> list[Utterance]:
    """`n` synthetic utterances, a pure function of `(key, n, cfg, split)`.

    Utterance `i` is drawn from `split(key, n)[i]` alone (text, voice, rate, pitch, gain,
    SNR, noise; see the module doc). `split="test"` draws voices from `cfg.test_voices`
    (held out from training), `"train"` from `cfg.train_voices`.

    With `cache_dir`, the corpus is stored as one `.npz` named by a hash of the config, key,
    `n`, split and the espeak/torch versions, and loaded from there on the next call; a
    corrupt file is regenerated with a warning. Without it nothing touches the disk.

    `workers > 1` processes synthesize contiguous shares of the keys (benchmarks/RESULTS.md, "Speech
    corpus synthesis in worker processes"); each utterance depends on its key alone and runs on one thread, so the corpus is
    the same bits for any number of workers. The workers are spawned (fresh interpreters: a forked
    child of a process whose OpenMP pool has run deadlocks), so the calling script needs the
    `if __name__ == "__main__":` guard, and each worker pays an import of torch.
    `progress`: a line on stderr every 10 s of synthesis and one at the end (a cache hit prints
    nothing).

    Returns: a list of `Utterance` (waveforms `[N_i] float32` at `cfg.sample_rate`).
    """
    random.check_key(key)
    if split not in ("train", "test"):
        raise ConfigError(f"split: expected 'train' or 'test', got {split!r}")
    if n < 0:
        raise RangeError(f"n: expected a non-negative number of utterances, got {n}")
    path = _cache_path(Path(cache_dir), key, n, cfg, split) if cache_dir is not None else None
    if path is not None and path.exists():
        try:
            return _load(path, n)
        except Exception as e:  # a truncated or foreign file: regenerate rather than fail
            warnings.warn(f"speech corpus cache {path} is unreadable ({type(e).__name__}: {e}); regenerating it")
    voices = cfg.train_voices if split == "train" else cfg.test_voices
    keys = random.split(key, n) if n else random.split(key, 1)[:0]
    w = _workers(n, workers)
    # contiguous chunks, in order: about 8 per worker, so that progress can be reported as they finish
    m = 8 * w if progress or w > 1 else 1
    chunks = [keys[i * n // m:(i + 1) * n // m] for i in range(m)]
    t0, last, utts = time.perf_counter(), time.perf_counter(), []
    with contextlib.ExitStack() as stack:
        if w == 1:
            parts = (_make_many(c, cfg, voices) for c in chunks)
        else:  # spawn, not fork: see the docstring; each result comes back pickled
            pool = stack.enter_context(concurrent.futures.ProcessPoolExecutor(
                w, mp_context=multiprocessing.get_context("spawn")))
            parts = pool.map(_make_many, chunks, [cfg] * m, [voices] * m)
        for part in parts:
            utts += part
            now = time.perf_counter()
            if progress and (now - last >= 10.0 or len(utts) == n):
                last, done = now, len(utts)
                eta = (now - t0) / done * (n - done) if done else float("nan")
                print(f"[speech] {split} corpus: {done}/{n} utterances synthesized ({w} process"
                      f"{'es' if w > 1 else ''}), {now - t0:.0f} s" + (f", eta {eta:.0f} s" if done < n else ""),
                      file=sys.stderr, flush=True)
    if path is not None:
        _save(path, utts)
    return utts
