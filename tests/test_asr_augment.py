"""Specification of the waveform augmentations (funcml/asr/augment.py)."""

from __future__ import annotations

import math

import pytest
import torch

from funcml import random
from funcml.asr import augment
from funcml.errors import RangeError, ShapeError

SR = 8000


def _tone(freq: float, n: int = SR, sr: int = SR) -> torch.Tensor:
    t = torch.arange(n, dtype=torch.float64) / sr
    return torch.sin(2 * math.pi * freq * t).float()


def _peak_hz(x: torch.Tensor, sr: int = SR) -> float:
    spec = torch.fft.rfft(x.double()).abs()
    return float(spec.argmax()) * sr / x.numel()


def _power_above(x: torch.Tensor, hz: float, sr: int = SR) -> float:
    spec = torch.fft.rfft(x.double()).abs().pow(2)
    f = torch.arange(spec.numel(), dtype=torch.float64) * sr / x.numel()
    return float(spec[f > hz].sum() / spec.sum())


@pytest.fixture
def speechlike():
    """[2, 8000]: two rows of white noise shaped like speech energy (an envelope), deterministic."""
    x = random.normal(random.key(0), (2, SR))
    return x * (0.2 + torch.sin(torch.linspace(0, 3 * math.pi, SR)).abs())


# ---------------------------------------------------------------- identity at zero strength


def test_zero_strength_is_the_identity(speechlike):
    k = random.key(1)
    x = speechlike
    torch.testing.assert_close(augment.band_limit(x, SR), x, atol=1e-6, rtol=0)
    torch.testing.assert_close(augment.reverb(x, SR, rt60=0.3, wet=0.0, key=k), x, atol=1e-6, rtol=0)
    torch.testing.assert_close(augment.random_eq(x, SR, max_db=0.0, key=k), x, atol=1e-6, rtol=0)
    torch.testing.assert_close(augment.add_noise(x, torch.ones_like(x), math.inf), x)
    assert torch.equal(augment.gain(x, 0.0), x)
    assert torch.equal(augment.speed(x, 1.0, SR), x)


# ---------------------------------------------------------------- determinism


@pytest.mark.parametrize("name", ["reverb", "random_eq", "coloured_noise", "babble_noise"])
def test_same_key_gives_identical_bits_and_another_key_differs(name, speechlike):
    calls = {
        "reverb": lambda k: augment.reverb(speechlike, SR, rt60=0.4, wet=0.5, key=k),
        "random_eq": lambda k: augment.random_eq(speechlike, SR, max_db=6.0, key=k),
        "coloured_noise": lambda k: augment.coloured_noise(SR, (2, SR), beta=1.0, key=k),
        "babble_noise": lambda k: augment.babble_noise(SR, (2, SR), key=k),
    }
    a, b, c = calls[name](random.key(3)), calls[name](random.key(3)), calls[name](random.key(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


# ---------------------------------------------------------------- shapes and batching


def test_every_effect_keeps_shape_and_dtype(speechlike):
    k = random.key(2)
    for x in (speechlike, speechlike[0]):
        for y in (augment.band_limit(x, SR, low_hz=300.0, high_hz=3400.0),
                  augment.reverb(x, SR, rt60=0.5, wet=0.7, key=k),
                  augment.random_eq(x, SR, max_db=6.0, key=k),
                  augment.add_noise(x, augment.babble_noise(SR, x.shape, key=k), 10.0),
                  augment.gain(x, -6.0)):
            assert y.shape == x.shape and y.dtype == x.dtype


def test_batched_band_limit_with_per_row_cutoffs_matches_each_row(speechlike):
    highs = torch.tensor([1000.0, 3000.0])
    batched = augment.band_limit(speechlike, SR, high_hz=highs)
    for i in range(2):
        torch.testing.assert_close(batched[i], augment.band_limit(speechlike[i], SR, high_hz=float(highs[i])))


@pytest.mark.parametrize("factor", [0.9, 1.1, 1.25])
def test_speed_scales_length_by_one_over_factor_and_frequency_by_factor(factor):
    x = _tone(500.0)
    y = augment.speed(x, factor, SR)
    assert y.numel() == math.ceil(SR / factor)
    assert abs(_peak_hz(y) - 500.0 * factor) <= 2 * SR / y.numel()


# ---------------------------------------------------------------- what each effect does


def test_band_limit_removes_energy_outside_the_band(speechlike):
    y = augment.band_limit(speechlike[0], SR, low_hz=300.0, high_hz=2000.0)
    assert _power_above(speechlike[0], 2100.0) > 0.3
    assert _power_above(y, 2100.0) < 1e-3
    spec = torch.fft.rfft(y.double()).abs().pow(2)
    f = torch.arange(spec.numel()) * SR / SR
    assert float(spec[f < 250].sum() / spec.sum()) < 1e-3


def test_band_limit_keeps_a_tone_inside_the_band():
    x = _tone(1000.0)
    y = augment.band_limit(x, SR, low_hz=300.0, high_hz=3400.0)
    assert float((y - x)[200:-200].abs().max()) < 0.02


def test_reverb_tail_decays_60_db_in_rt60():
    rt60 = 0.3
    impulse = torch.zeros(SR)
    impulse[0] = 1.0
    y = augment.reverb(impulse, SR, rt60=rt60, wet=1.0, key=random.key(5)).double()
    win = int(0.02 * SR)
    early = y[1:1 + win].pow(2).mean()
    late = y[int(rt60 * SR) - win:int(rt60 * SR)].pow(2).mean()
    assert -66.0 < 10 * math.log10(float(late / early)) < -54.0


def test_reverb_spreads_an_impulse_but_keeps_the_length():
    impulse = torch.zeros(SR)
    impulse[100] = 1.0
    y = augment.reverb(impulse, SR, rt60=0.4, wet=0.5, key=random.key(6))
    assert y.shape == impulse.shape
    assert float(y[:100].abs().max()) < 1e-12                     # causal: nothing before the impulse
    assert float(y[200:].abs().max()) > 0.0                       # a tail after it


@pytest.mark.parametrize("beta", [0.0, 1.0, 2.0])
def test_coloured_noise_has_unit_power_and_a_one_over_f_to_the_beta_spectrum(beta):
    n = augment.coloured_noise(SR, (4, SR), beta=beta, key=random.key(7)).double()
    torch.testing.assert_close(n.pow(2).mean(-1), torch.ones(4, dtype=torch.float64), atol=1e-6, rtol=0)
    p = torch.fft.rfft(n, dim=-1).abs().pow(2).mean(0)
    f = torch.arange(p.numel(), dtype=torch.float64) * SR / SR
    band = (f > 100) & (f < 3000)
    slope = torch.linalg.lstsq(torch.stack([torch.log(f[band]), torch.ones(int(band.sum()), dtype=torch.float64)], 1),
                               torch.log(p[band])[:, None]).solution[0, 0]
    assert abs(float(slope) + beta) < 0.15


def test_babble_noise_is_unit_power_and_amplitude_modulated():
    b = augment.babble_noise(SR, (SR * 2,), talkers=2, key=random.key(8)).double()
    w = augment.coloured_noise(SR, (SR * 2,), beta=0.0, key=random.key(8)).double()      # stationary
    assert abs(float(b.pow(2).mean()) - 1.0) < 1e-6

    def frame_energy_spread(x):
        e = x.reshape(-1, 400).pow(2).mean(-1)
        return float(e.std() / e.mean())
    assert frame_energy_spread(b) > 2 * frame_energy_spread(w)


@pytest.mark.parametrize("snr", [0.0, 10.0, 30.0])
def test_add_noise_gives_the_exact_snr_on_each_row(snr, speechlike):
    noise = augment.coloured_noise(SR, (2, SR), beta=1.0, key=random.key(9))
    y = augment.add_noise(speechlike, noise, snr)
    got = 10 * torch.log10(speechlike.double().pow(2).mean(-1) / (y - speechlike).double().pow(2).mean(-1))
    torch.testing.assert_close(got, torch.full((2,), snr, dtype=torch.float64), atol=1e-3, rtol=0)


def test_random_eq_changes_the_spectrum_within_max_db(speechlike):
    x = speechlike[0]
    y = augment.random_eq(x, SR, max_db=6.0, key=random.key(10))
    px = torch.fft.rfft(x.double(), n=2 * SR).abs().pow(2)
    py = torch.fft.rfft(y.double(), n=2 * SR).abs().pow(2)
    bands = [(px[i:i + 800].sum(), py[i:i + 800].sum()) for i in range(800, 8000, 800)]
    ratios_db = [10 * math.log10(float(b / a)) for a, b in bands]
    assert max(abs(r) for r in ratios_db) < 6.5
    assert max(ratios_db) - min(ratios_db) > 1.0                  # it does colour the spectrum


def test_gain_scales_by_ten_to_the_db_over_twenty(speechlike):
    torch.testing.assert_close(augment.gain(speechlike, -20.0), speechlike * 0.1)


# ---------------------------------------------------------------- bad input


def test_bad_strengths_are_range_errors_naming_them(speechlike):
    k = random.key(0)
    with pytest.raises(RangeError, match="factor"):
        augment.speed(speechlike, 3.0, SR)
    with pytest.raises(RangeError, match="Nyquist"):
        augment.band_limit(speechlike, SR, high_hz=5000.0)
    with pytest.raises(RangeError, match="wet"):
        augment.reverb(speechlike, SR, rt60=0.3, wet=1.5, key=k)
    with pytest.raises(RangeError, match="beta"):
        augment.coloured_noise(SR, (SR,), beta=-1.0, key=k)
    with pytest.raises(RangeError, match="max_db"):
        augment.random_eq(speechlike, SR, max_db=-3.0, key=k)


def test_bad_shapes_are_shape_errors(speechlike):
    with pytest.raises(ShapeError, match="waveform"):
        augment.gain(speechlike[None], 0.0)
    with pytest.raises(ShapeError, match="noise"):
        augment.add_noise(speechlike, speechlike[0], 10.0)
    with pytest.raises(ShapeError, match="one value per row"):
        augment.band_limit(speechlike, SR, high_hz=torch.tensor([1000.0, 2000.0, 3000.0]))
