"""Specification of the espeak-ng speech corpus (funcml/asr/speech.py) and audio I/O (funcml/asr/audio.py)."""

from __future__ import annotations

import dataclasses
import math
import struct
import time
import wave
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from funcml import random
from funcml.asr import audio, speech
from funcml.errors import ConfigError, DataError

SMALL = speech.SpeechConfig(text_kind="mixed", digits_len=(2, 3), words_len=(1, 2))


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("speech-cache")


@pytest.fixture(scope="module")
def train_corpus(corpus_dir):
    return speech.make_corpus(random.key(7), 6, SMALL, split="train", cache_dir=corpus_dir)


# ---------------------------------------------------------------- synthesis


@pytest.mark.parametrize("voice", ["en", "en+m3", "en-us+f2"])
def test_synthesize_gives_nonempty_audio_at_espeak_rate(voice):
    x, sr = speech.synthesize("one two", voice)
    assert sr == 22050
    assert x.dtype == torch.float32 and x.dim() == 1 and x.numel() > sr // 4
    assert float(x.abs().max()) <= 1.0 and float(x.abs().max()) > 0.05


def test_synthesize_same_request_gives_identical_samples_whatever_came_before():
    a, _ = speech.synthesize("three one four", "en+m1", rate=150, pitch=40)
    speech.synthesize("seven", "en+f2", rate=200, pitch=70)
    speech.synthesize("go home", "en-us", rate=120, pitch=20)
    b, _ = speech.synthesize("three one four", "en+m1", rate=150, pitch=40)
    assert torch.equal(a, b)


def test_different_voice_gives_different_waveform():
    a, _ = speech.synthesize("three one four", "en+m1")
    b, _ = speech.synthesize("three one four", "en+f1")
    n = min(a.numel(), b.numel())
    assert a.numel() != b.numel() or not torch.equal(a[:n], b[:n])
    assert float((a[:n] - b[:n]).abs().mean()) > 1e-3


def test_duration_grows_with_text_length():
    lengths = [speech.synthesize(t, "en+m3")[0].numel() for t in ("one", "one two three", "one two three four five six")]
    assert lengths[0] < lengths[1] < lengths[2]


def test_slower_rate_gives_longer_audio():
    fast, _ = speech.synthesize("one two three", "en", rate=250)
    slow, _ = speech.synthesize("one two three", "en", rate=100)
    assert slow.numel() > 1.5 * fast.numel()


def test_synthesis_from_several_threads_matches_sequential_results():
    requests = [("one two", "en+m1"), ("go home", "en+f2"), ("three", "en-us+m3")] * 2
    expected = [speech.synthesize(t, v)[0] for t, v in requests]
    with ThreadPoolExecutor(max_workers=3) as pool:
        got = list(pool.map(lambda r: speech.synthesize(*r)[0], requests))
    assert all(torch.equal(a, b) for a, b in zip(got, expected))


def test_unknown_voice_variant_is_a_config_error():
    with pytest.raises(ConfigError, match="nosuchvariant"):
        speech.synthesize("one", "en+nosuchvariant")


def test_blank_text_is_a_data_error():
    with pytest.raises(DataError, match="text"):
        speech.synthesize("   ", "en")


def test_config_rejects_test_voices_that_overlap_training():
    with pytest.raises(ConfigError, match="overlap"):
        speech.SpeechConfig(train_voices=("en+m1", "en+f1"), test_voices=("en+f1",))


# ---------------------------------------------------------------- the corpus


def test_make_corpus_same_key_same_texts_and_bits(train_corpus):
    again = speech.make_corpus(random.key(7), 6, SMALL, split="train")      # no cache: regenerated
    assert [u.text for u in again] == [u.text for u in train_corpus]
    assert all(torch.equal(a.waveform, b.waveform) for a, b in zip(again, train_corpus))


def test_make_corpus_utterances_are_16khz_and_draw_from_the_config(train_corpus):
    vocab = set(speech.DIGITS) | set(speech.WORDS)
    for u in train_corpus:
        assert u.sample_rate == 16000 and u.waveform.dtype == torch.float32 and u.waveform.numel() > 1600
        assert set(u.text.split()) <= vocab and u.voice in SMALL.train_voices
        assert SMALL.rate_range[0] <= u.rate <= SMALL.rate_range[1]
        assert SMALL.snr_db_range[0] <= u.snr_db < SMALL.snr_db_range[1]


def test_make_corpus_different_key_gives_different_texts():
    a = speech.make_corpus(random.key(1), 4, SMALL)
    b = speech.make_corpus(random.key(2), 4, SMALL)
    assert [u.text for u in a] != [u.text for u in b]


def test_cache_hit_returns_identical_data_and_is_faster(corpus_dir, train_corpus):
    t0 = time.perf_counter()
    fresh = speech.make_corpus(random.key(7), 6, SMALL, split="train")
    t_gen = time.perf_counter() - t0
    t0 = time.perf_counter()
    cached = speech.make_corpus(random.key(7), 6, SMALL, split="train", cache_dir=corpus_dir)
    t_hit = time.perf_counter() - t0
    assert len(list(corpus_dir.glob("*.npz"))) >= 1
    for a, b in zip(cached, fresh):
        assert (a.text, a.voice, a.rate, a.pitch, a.gain_db, a.snr_db) == (b.text, b.voice, b.rate, b.pitch, b.gain_db, b.snr_db)
        assert torch.equal(a.waveform, b.waveform)
    assert t_hit < t_gen / 3


def test_corrupt_cache_file_is_regenerated_with_a_warning(tmp_path):
    first = speech.make_corpus(random.key(3), 2, SMALL, cache_dir=tmp_path)
    (path,) = tmp_path.glob("*.npz")
    path.write_bytes(b"not an npz file")
    with pytest.warns(UserWarning, match="regenerating"):
        again = speech.make_corpus(random.key(3), 2, SMALL, cache_dir=tmp_path)
    assert all(torch.equal(a.waveform, b.waveform) for a, b in zip(first, again))
    assert path.stat().st_size > 1000                                    # rewritten whole


def test_test_split_uses_only_held_out_voices():
    test = speech.make_corpus(random.key(7), 6, SMALL, split="test")
    assert {u.voice for u in test} <= set(SMALL.test_voices)
    assert not {u.voice for u in test} & set(SMALL.train_voices)


def test_added_noise_is_at_the_drawn_snr(train_corpus):
    for u in train_corpus[:3]:
        clean, sr = speech.synthesize(u.text, u.voice, u.rate, u.pitch)
        clean = audio.resample(clean.double(), sr, 16000) * 10 ** (u.gain_db / 20)
        noise = u.waveform.double() - clean
        snr = 10 * math.log10(float(clean.pow(2).mean() / noise.pow(2).mean()))
        assert abs(snr - u.snr_db) < 0.5


# ---------------------------------------------------------------- sim-to-real augmentation

AUG = speech.SpeechConfig(
    digits_len=(1, 2), sample_rate=8000, train_voices=speech.WIDE_TRAIN_VOICES, rate_range=(100, 260),
    pitch_range=(10, 90), intonation_range=(10, 90), word_gap_range=(0, 20), warp_range=(0.85, 1.2),
    speed_factors=(0.9, 1.0, 1.1), reverb_prob=0.5, eq_db=8.0, noise_beta_range=(0.0, 2.0), babble_prob=0.5,
    snr_db_range=(5.0, 35.0), lowpass_hz_range=(3000.0, 3400.0), highpass_hz_range=(0.0, 300.0))


def test_augmented_corpus_same_key_same_bits_and_records_its_draws():
    a = speech.make_corpus(random.key(11), 6, AUG)
    b = speech.make_corpus(random.key(11), 6, AUG)
    assert all(torch.equal(x.waveform, y.waveform) for x, y in zip(a, b))
    for u in a:
        assert u.sample_rate == 8000 and u.voice in speech.WIDE_TRAIN_VOICES
        assert 0.85 <= u.warp < 1.2 and u.speed in (0.9, 1.0, 1.1)


@pytest.mark.slow
def test_corpus_is_the_same_bits_with_worker_processes():
    """Each utterance depends on its key alone: 2 spawned workers give the serial corpus, bit for bit, also
    after this process has run torch's thread pool (a forked worker would deadlock then)."""
    torch.set_num_threads(2)
    try:
        torch.randn(256, 256) @ torch.randn(256, 256)  # the OpenMP pool runs
        serial = speech.make_corpus(random.key(11), 7, AUG, workers=1)
        forked = speech.make_corpus(random.key(11), 7, AUG, workers=2)
    finally:
        torch.set_num_threads(1)
    assert [u.text for u in forked] == [u.text for u in serial]
    assert all(torch.equal(x.waveform, y.waveform) and x.voice == y.voice for x, y in zip(serial, forked))


def test_progress_reports_synthesis_on_stderr_and_a_cache_hit_is_silent(tmp_path, capsys):
    a = speech.make_corpus(random.key(3), 5, SMALL, cache_dir=tmp_path, workers=1, progress=True)
    err = capsys.readouterr().err
    assert "[speech] train corpus: 5/5 utterances synthesized (1 process)" in err
    b = speech.make_corpus(random.key(3), 5, SMALL, cache_dir=tmp_path, progress=True)
    assert capsys.readouterr().err == ""
    assert all(torch.equal(x.waveform, y.waveform) for x, y in zip(a, b))


def test_workers_must_be_positive():
    with pytest.raises(ConfigError, match="workers must be >= 1"):
        speech.make_corpus(random.key(1), 2, SMALL, workers=0)


def test_augmented_corpus_has_no_energy_above_the_highest_low_pass():
    for u in speech.make_corpus(random.key(12), 4, AUG):
        spec = torch.fft.rfft(u.waveform.double()).abs().pow(2)
        f = torch.arange(spec.numel(), dtype=torch.float64) * 8000 / u.waveform.numel()
        assert float(spec[f > 3500].sum() / spec.sum()) < 1e-3


def test_speed_factor_changes_duration_and_warp_keeps_it():
    base = dataclasses.replace(SMALL, text_kind="digits", snr_db_range=None)
    plain = speech.make_corpus(random.key(13), 2, base)
    fast = speech.make_corpus(random.key(13), 2, dataclasses.replace(base, speed_factors=(1.25,)))
    warped = speech.make_corpus(random.key(13), 2, dataclasses.replace(base, warp_range=(1.2, 1.2)))
    for p, f, w in zip(plain, fast, warped):
        assert p.text == f.text == w.text
        assert f.waveform.numel() == pytest.approx(p.waveform.numel() / 1.25, rel=0.01)
        assert w.waveform.numel() == pytest.approx(p.waveform.numel(), rel=0.12)      # espeak's rate is whole wpm


def test_word_gap_lengthens_speech_and_intonation_changes_it():
    plain, _ = speech.synthesize("one two three", "en+m3", 160, 50)
    gapped, _ = speech.synthesize("one two three", "en+m3", 160, 50, word_gap=20)
    flat, _ = speech.synthesize("one two three", "en+m3", 160, 50, intonation=0)
    assert gapped.numel() > plain.numel() + 0.3 * 22050                 # two gaps of 200 ms
    assert flat.numel() != plain.numel() or not torch.equal(flat, plain)


def test_a_corpus_with_any_new_field_changed_is_synthesized_and_cached_anew(tmp_path):
    base = dataclasses.replace(SMALL, text_kind="digits", digits_len=(1, 1))
    speech.make_corpus(random.key(0), 1, base, cache_dir=tmp_path)
    for i, change in enumerate(({"eq_db": 3.0}, {"warp_range": (0.9, 1.1)}, {"speed_factors": (0.9, 1.1)},
                                {"reverb_prob": 0.5}, {"babble_prob": 0.5}, {"lowpass_hz_range": (3000.0, 4000.0)},
                                {"word_gap_range": (0, 5)})):
        speech.make_corpus(random.key(0), 1, dataclasses.replace(base, **change), cache_dir=tmp_path)
        assert len(list(tmp_path.iterdir())) == i + 2, change  # not the base corpus read back from the cache
    speech.make_corpus(random.key(0), 1, base, cache_dir=tmp_path)
    assert len(list(tmp_path.iterdir())) == 8  # the base config itself is a cache hit


def test_augmented_corpus_round_trips_through_the_cache(tmp_path):
    fresh = speech.make_corpus(random.key(14), 3, AUG, cache_dir=tmp_path)
    cached = speech.make_corpus(random.key(14), 3, AUG, cache_dir=tmp_path)
    for a, b in zip(fresh, cached):
        assert (a.text, a.voice, a.warp, a.speed, a.snr_db) == (b.text, b.voice, b.warp, b.speed, b.snr_db)
        assert torch.equal(a.waveform, b.waveform)


def test_wide_voices_leave_out_the_held_out_test_variants():
    test_variants = {v.partition("+")[2] for v in speech.SpeechConfig().test_voices}
    assert not {v.partition("+")[2] for v in speech.WIDE_TRAIN_VOICES} & test_variants
    assert len(set(speech.WIDE_TRAIN_VOICES)) == len(speech.ENGLISH_LANGS) * len(speech.WIDE_VARIANTS)
    speech.SpeechConfig(train_voices=speech.WIDE_TRAIN_VOICES)       # valid with the default test voices


def test_a_sample_of_the_wide_voices_speaks():
    for voice in speech.WIDE_TRAIN_VOICES[::37]:
        wave, sr = speech.synthesize("seven", voice, 160, 50)
        assert wave.numel() > 0.2 * sr, voice


@pytest.mark.slow
def test_every_wide_voice_speaks():
    for voice in speech.WIDE_TRAIN_VOICES:
        wave, sr = speech.synthesize("seven", voice, 160, 50)
        assert wave.numel() > 0.2 * sr, voice


@pytest.mark.parametrize("change, match", [
    ({"warp_range": (0.3, 1.0)}, "warp_range"),
    ({"speed_factors": ()}, "speed_factors"),
    ({"reverb_prob": 1.5}, "reverb_prob"),
    ({"lowpass_hz_range": (3000.0, 9000.0)}, "Nyquist"),
    ({"intonation_range": (10, 120)}, "intonation_range"),
    ({"noise_beta_range": (-1.0, 1.0)}, "noise_beta_range"),
])
def test_config_rejects_bad_augmentation_settings(change, match):
    with pytest.raises(ConfigError, match=match):
        speech.SpeechConfig(**change)


# ---------------------------------------------------------------- audio I/O


def _tone(freq: float, sr: int, seconds: float) -> torch.Tensor:
    t = torch.arange(int(sr * seconds), dtype=torch.float64) / sr
    return (0.5 * torch.sin(2 * math.pi * freq * t)).float()


def test_write_then_read_round_trips_within_16bit_quantization(tmp_path):
    x = _tone(440.0, 16000, 0.25)
    audio.write_wav(tmp_path / "a.wav", x, 16000)
    y, sr = audio.read_wav(tmp_path / "a.wav")
    assert sr == 16000 and y.shape == x.shape
    assert float((y - x).abs().max()) <= 1.0 / 32767
    assert not list(tmp_path.glob(".*.tmp"))                             # no temporary left behind


def _write_raw(path, channels: int, width: int, sr: int, frames: bytes) -> None:
    with wave.open(str(path), "wb") as f:
        f.setnchannels(channels)
        f.setsampwidth(width)
        f.setframerate(sr)
        f.writeframes(frames)


def test_stereo_is_read_as_the_mean_of_channels(tmp_path):
    left, right = [1000, -2000, 3000], [3000, 2000, -1000]
    frames = b"".join(struct.pack("<hh", l, r) for l, r in zip(left, right))
    _write_raw(tmp_path / "s.wav", 2, 2, 8000, frames)
    y, sr = audio.read_wav(tmp_path / "s.wav")
    assert sr == 8000
    assert torch.allclose(y, torch.tensor([2000.0, 0.0, 1000.0]) / 32768)


def test_8bit_unsigned_pcm_is_centered(tmp_path):
    _write_raw(tmp_path / "u8.wav", 1, 1, 8000, bytes([128, 192, 64]))
    y, _ = audio.read_wav(tmp_path / "u8.wav")
    assert torch.equal(y, torch.tensor([0.0, 0.5, -0.5]))


def test_24bit_pcm_is_read_as_signed(tmp_path):
    _write_raw(tmp_path / "s24.wav", 1, 3, 8000, (-(1 << 22)).to_bytes(3, "little", signed=True) + (1 << 21).to_bytes(3, "little"))
    y, _ = audio.read_wav(tmp_path / "s24.wav")
    assert torch.equal(y, torch.tensor([-0.5, 0.25]))


def test_non_wav_file_is_a_data_error_naming_it(tmp_path):
    (tmp_path / "notes.wav").write_text("this is not audio")
    with pytest.raises(DataError, match="notes.wav"):
        audio.read_wav(tmp_path / "notes.wav")


def test_empty_wav_is_a_data_error_naming_it(tmp_path):
    _write_raw(tmp_path / "empty.wav", 1, 2, 16000, b"")
    with pytest.raises(DataError, match="empty.wav.*no audio"):
        audio.read_wav(tmp_path / "empty.wav")


def test_float_wav_is_read_as_stored(tmp_path):
    data = struct.pack("<2f", 0.5, -0.5)
    fmt = struct.pack("<HHIIHH", 3, 1, 16000, 16000 * 4, 4, 32)          # WAVE_FORMAT_IEEE_FLOAT
    riff = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    (tmp_path / "float.wav").write_bytes(b"RIFF" + struct.pack("<I", len(riff)) + riff)
    y, sr = audio.read_wav(tmp_path / "float.wav")
    assert sr == 16000 and y.tolist() == [0.5, -0.5]


def test_missing_file_is_a_data_error_naming_it(tmp_path):
    with pytest.raises(DataError, match="missing.wav"):
        audio.read_wav(tmp_path / "missing.wav")


@pytest.mark.parametrize("orig_sr,new_sr", [(22050, 16000), (16000, 22050), (16000, 8000)])
def test_resample_keeps_a_tone_frequency_and_the_length_ratio(orig_sr, new_sr):
    x = _tone(1000.0, orig_sr, 1.0)
    y = audio.resample(x, orig_sr, new_sr)
    assert y.numel() == math.ceil(x.numel() * new_sr / orig_sr)
    spectrum = torch.fft.rfft(y.double() * torch.hann_window(y.numel(), dtype=torch.float64)).abs()
    peak_hz = int(spectrum.argmax()) * new_sr / y.numel()
    assert abs(peak_hz - 1000.0) <= new_sr / y.numel()
    ref = _tone(1000.0, new_sr, 1.0)
    assert float((y - ref)[200:-200].abs().max()) < 1e-3                   # away from the zero-padded ends


def test_resample_removes_content_above_the_new_nyquist():
    x = _tone(7000.0, 22050, 0.5)                                          # above 4 kHz, the Nyquist of 8 kHz
    y = audio.resample(x, 22050, 8000)
    assert float(y[100:-100].abs().max()) < 0.01


def test_resample_of_a_batch_matches_each_row():
    x = torch.stack([_tone(300.0, 22050, 0.1), _tone(900.0, 22050, 0.1)])
    y = audio.resample(x, 22050, 16000)
    assert torch.equal(y[1], audio.resample(x[1], 22050, 16000))
