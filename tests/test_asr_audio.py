"""funcml.asr.audio: every WAV format users have (PCM 8/16/24/32, float 32/64, EXTENSIBLE, many
channels, any rate), clear errors for empty, truncated, compressed and non-WAV files, and the
optional soundfile path for FLAC / OGG / MP3."""

from __future__ import annotations

import builtins
import math
import struct
import sys
import warnings

import pytest
import torch

from funcml.asr import audio
from funcml.errors import DataError

SR = 16000


def _tone(n: int = 400, freq: float = 440.0, amp: float = 0.5) -> torch.Tensor:
    t = torch.arange(n, dtype=torch.float64) / SR
    return (amp * torch.sin(2 * math.pi * freq * t)).float()


# Quantization step of each integer format: the reader must be within half of it (rounding).
PCM_STEP = {8: 1 / 128, 16: 1 / 32768, 24: 1 / (1 << 23), 32: 1 / (1 << 31)}


@pytest.mark.parametrize("extensible", [False, True], ids=["plain", "extensible"])
@pytest.mark.parametrize("bits", [8, 16, 24, 32])
def test_integer_pcm_round_trips_within_half_a_quantization_step(tmp_path, bits, extensible):
    x = _tone()
    path = tmp_path / f"pcm{bits}.wav"
    path.write_bytes(audio.encode_wav(x, SR, bits=bits, extensible=extensible))
    y, sr = audio.read_wav(path)
    assert sr == SR and y.dtype == torch.float32 and y.shape == x.shape
    assert float((y.double() - x.double()).abs().max()) <= PCM_STEP[bits] / 2 + 1e-7


@pytest.mark.parametrize("extensible", [False, True], ids=["plain", "extensible"])
@pytest.mark.parametrize("bits", [32, 64])
def test_ieee_float_wav_is_read_exactly(tmp_path, bits, extensible):
    x = _tone() * 1.5  # float WAV may exceed [-1, 1]; the values are kept as stored
    path = tmp_path / f"float{bits}.wav"
    path.write_bytes(audio.encode_wav(x, 22050, sample_format="float", bits=bits, extensible=extensible))
    y, sr = audio.read_audio(path)
    assert sr == 22050 and torch.equal(y, x)


def test_known_pcm_values_decode_to_hand_computed_floats():
    data = audio.encode_wav(torch.tensor([0.0, 0.5, -1.0]), 8000, bits=16)
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    assert struct.unpack_from("<3h", data, len(data) - 6) == (0, 16384, -32768)
    y, _ = audio.decode_wav(data)
    assert y.tolist() == [0.0, 0.5, -1.0]


@pytest.mark.parametrize("fmt", [("pcm", 16), ("pcm", 24), ("float", 32)])
def test_multichannel_is_downmixed_to_the_mean(fmt):
    chans = torch.stack([_tone(200, 300.0, 0.4), _tone(200, 500.0, 0.2), torch.zeros(200), _tone(200, 700.0, 0.1)])
    y, _ = audio.decode_wav(audio.encode_wav(chans, SR, sample_format=fmt[0], bits=fmt[1], extensible=True))
    assert torch.allclose(y, chans.mean(0), atol=1e-4)


def test_an_odd_sized_8bit_data_chunk_is_padded_and_later_chunks_are_skipped(tmp_path):
    data = audio.encode_wav(torch.tensor([0.0, 0.5, -0.5]), 8000, bits=8)  # 3 bytes + 1 pad byte
    assert len(data) % 2 == 0
    # A LIST chunk before the samples (as many editors write) is stepped over.
    fmt_end = 12 + 8 + struct.unpack_from("<I", data, 16)[0]
    info = b"LIST" + struct.pack("<I", 5) + b"INFOx" + b"\x00"
    body = data[8:fmt_end] + info + data[fmt_end:]
    y, _ = audio.decode_wav(b"RIFF" + struct.pack("<I", len(body)) + body)
    assert y.tolist() == [0.0, 0.5, -0.5]


def test_any_sample_rate_is_reported_for_resampling():
    for sr in (8000, 11025, 44100, 48000, 96000):
        y, got = audio.decode_wav(audio.encode_wav(_tone(100), sr))
        assert got == sr and y.numel() == 100


def test_an_empty_file_is_a_clear_error(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.wav: the file is empty \(0 bytes\)"):
        audio.read_wav(tmp_path / "empty.wav")
    with pytest.raises(DataError, match="empty.wav: the file is empty"):
        audio.read_audio(tmp_path / "empty.wav")


def test_a_header_without_samples_says_no_audio(tmp_path):
    with pytest.raises(DataError, match="no audio samples"):
        audio.decode_wav(audio.encode_wav(torch.zeros(0), SR), name="x.wav")
    header_only = audio.encode_wav(torch.zeros(4), SR)[:36]  # RIFF + fmt, no data chunk
    with pytest.raises(DataError, match="x.wav: the WAV has no 'data' chunk"):
        audio.decode_wav(header_only, name="x.wav")


def test_a_truncated_wav_warns_with_how_much_is_missing_or_is_an_error():
    data = audio.encode_wav(_tone(1000), SR)[:-1000]  # 500 of 1000 samples are missing
    with pytest.warns(audio.TruncatedAudioWarning, match=r"cut.wav: the WAV is truncated.*2000 bytes.*1000 \(50.0%\)"):
        y, _ = audio.decode_wav(data, name="cut.wav")
    assert y.numel() == 500
    with pytest.raises(DataError, match="cut.wav: the WAV is truncated"):
        audio.decode_wav(data, name="cut.wav", truncated="error")


def test_a_complete_wav_decodes_without_any_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        audio.decode_wav(audio.encode_wav(_tone(100), SR))


def test_a_streamed_wav_with_unknown_data_size_reads_to_the_end():
    data = bytearray(audio.encode_wav(_tone(100), SR))
    data[40:44] = struct.pack("<I", 0xFFFFFFFF)  # the data chunk's size, as streaming writers leave it
    y, _ = audio.decode_wav(bytes(data))
    assert y.numel() == 100


@pytest.mark.parametrize("tag,name", [(6, "A-law"), (7, "mu-law"), (2, "ADPCM")])
def test_compressed_wav_names_its_codec(tag, name):
    data = bytearray(audio.encode_wav(_tone(10), SR))
    data[20:22] = struct.pack("<H", tag)
    with pytest.raises(DataError, match=f"c.wav: compressed WAV .*{name}.*convert it to PCM"):
        audio.decode_wav(bytes(data), name="c.wav")


def test_unsupported_widths_name_what_is_expected():
    data = bytearray(audio.encode_wav(_tone(10), SR, sample_format="float", bits=32))
    data[20:22] = struct.pack("<H", 3)
    data[32:34] = struct.pack("<H", 2)  # 16-bit float: block align 2
    with pytest.raises(DataError, match="16 bits .*IEEE float: 32 or 64-bit"):
        audio.decode_wav(bytes(data))


def test_non_finite_float_samples_are_an_error():
    with pytest.raises(DataError, match="1 NaN or infinite"):
        data = audio.encode_wav(torch.tensor([0.0, float("nan")]), SR, sample_format="float", bits=32)
        audio.decode_wav(data, name="n.wav")


@pytest.mark.parametrize("magic,kind", [(b"fLaC\x00\x00\x00\x22", "FLAC"), (b"OggS\x00\x02", "OGG"),
                                        (b"ID3\x04\x00\x00", "MP3")])
def test_non_wav_formats_without_soundfile_name_the_package(tmp_path, monkeypatch, magic, kind):
    path = tmp_path / f"clip.{kind.lower()}"
    path.write_bytes(magic + bytes(64))
    real_import = builtins.__import__

    def no_soundfile(name, *args, **kwargs):
        if name == "soundfile":
            raise ImportError("No module named 'soundfile'")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "soundfile", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_soundfile)
    with pytest.raises(DataError, match=f"reading {kind} audio needs the optional package soundfile "
                                        r"\(pip install soundfile\)"):
        audio.read_audio(path)
    with pytest.raises(DataError, match=f"{kind} audio, not a WAV file; read it with read_audio after "
                                        "`pip install soundfile`"):
        audio.read_wav(path)


def test_soundfile_reads_other_formats_when_installed(tmp_path):
    soundfile = pytest.importorskip("soundfile", reason="the optional extra soundfile is not installed")
    x = _tone(800)
    soundfile.write(str(tmp_path / "a.flac"), torch.stack([x, x]).T.numpy(), SR, subtype="PCM_16")
    y, sr = audio.read_audio(tmp_path / "a.flac")
    assert sr == SR and float((y - x).abs().max()) < 1e-4


def test_text_that_is_not_audio_is_an_error_naming_the_file(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="notes.txt: not a WAV file"):
        audio.read_wav(tmp_path / "notes.txt")


def test_write_wav_writes_float_and_reads_back(tmp_path):
    x = _tone(300)
    audio.write_wav(tmp_path / "f.wav", x, SR, sample_format="float", bits=32)
    y, _ = audio.read_wav(tmp_path / "f.wav")
    assert torch.equal(y, x) and not list(tmp_path.glob(".*.tmp"))


# ------------------------------------------------------------------ resampling at any rate, bounded memory


def test_direct_resampling_equals_the_polyphase_bank_where_both_apply(monkeypatch):
    x = torch.randn(2, 8000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    cases = [(x, 44100, 16000), (x[:, :999], 8000, 16000), (x[0], 22050, 8000)]
    want = [audio.resample(w, a, b) for w, a, b in cases]          # small polyphase banks
    monkeypatch.setattr(audio, "_MAX_BANK", 0)                     # force the direct path
    for (w, a, b), expected in zip(cases, want):
        torch.testing.assert_close(audio.resample(w, a, b), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("orig_sr", [8001, 44101, 96001])
def test_coprime_rates_resample_a_tone_within_5e_minus_5_of_the_analytic_signal(orig_sr):
    # 440 Hz sampled at an odd rate -> 16 kHz; the tolerance is the windowed sinc's passband
    # ripple (zeros=16, rolloff 0.945), away from the zero-padded ends.
    t = torch.arange(orig_sr // 4, dtype=torch.float64) / orig_sr
    y = audio.resample(torch.sin(2 * math.pi * 440 * t), orig_sr, 16000)
    assert len(y) == math.ceil(len(t) * 16000 / orig_sr)
    ref = torch.sin(2 * math.pi * 440 * torch.arange(len(y), dtype=torch.float64) / 16000)
    assert (y - ref)[200:-200].abs().max() < 5e-5


def test_resampling_memory_does_not_depend_on_the_gcd_of_the_rates(monkeypatch):
    # The polyphase bank for 96001 -> 16000 would be 16000 x ~96000 float64 (12 GB); the direct
    # path's largest temporary is a block of _DIRECT_ELEMENTS kernel values.
    seen = []
    real_sinc = torch.sinc
    monkeypatch.setattr(torch, "sinc", lambda d: (seen.append(d.numel()), real_sinc(d))[1])
    audio.resample(torch.randn(96001 // 2), 96001, 16000)
    assert seen and max(seen) <= audio._DIRECT_ELEMENTS
