"""Specification of the log-mel front-end (funcml/asr/frontend.py)."""

from __future__ import annotations

import math

import pytest
import torch

from funcml import random
from funcml.asr import frontend as F
from funcml.errors import ConfigError, RangeError, ShapeError

CFG = F.FrontendConfig()


def _tone(freq: float, seconds: float = 0.5, sr: int = 16000) -> torch.Tensor:
    t = torch.arange(int(sr * seconds), dtype=torch.float64) / sr
    return (0.5 * torch.sin(2 * math.pi * freq * t)).float()


# ---------------------------------------------------------------- mel scale and filterbank


def test_htk_mel_scale_values():
    assert F.hz_to_mel(0.0) == 0.0
    assert F.hz_to_mel(700.0) == pytest.approx(2595 * math.log10(2))
    assert F.mel_to_hz(F.hz_to_mel(1234.5)) == pytest.approx(1234.5)


@pytest.mark.parametrize("freq", [300.0, 440.0, 1000.0, 2500.0, 4000.0, 6000.0, 7500.0])
def test_pure_tone_lands_in_the_mel_bin_with_the_nearest_center(freq):
    energy = F.log_mel(_tone(freq), CFG).mean(0)
    centers = F.mel_centers(CFG.n_mels, CFG.sample_rate, CFG.fmin, CFG.fmax)
    assert int(energy.argmax()) == int((centers - freq).abs().argmin())


def test_filterbank_rows_are_triangles_peaking_at_their_centers():
    fb = F.mel_filterbank(40, 512, 16000, 20.0, None).double()
    edges = torch.cat([torch.tensor([20.0], dtype=torch.float64), F.mel_centers(40, 16000, 20.0),
                       torch.tensor([8000.0], dtype=torch.float64)])
    fk = torch.arange(257, dtype=torch.float64) * 16000 / 512
    for m in range(40):
        lo, mid, hi = edges[m], edges[m + 1], edges[m + 2]
        row = fb[m]
        assert torch.all(row[(fk <= lo) | (fk >= hi)] == 0)                      # zero outside its edges
        up, down = (fk > lo) & (fk <= mid), (fk >= mid) & (fk < hi)
        assert torch.all(row[up].diff() > 0) and torch.all(row[down].diff() < 0)   # rises, then falls
        assert torch.allclose(row[up], (fk[up] - lo) / (mid - lo), atol=1e-6)      # the linear sides
        assert abs(float(fk[row.argmax()] - mid)) < 16000 / 512                     # peak at a bin next to the centre
        assert float(row.max()) <= 1.0


def test_filterbank_covers_fmin_to_fmax():
    fb = F.mel_filterbank(80, 512, 16000, 20.0, None)
    fk = torch.arange(257) * 16000 / 512
    inside = (fk > 20.0) & (fk < 8000.0)
    assert torch.all(fb.sum(0)[inside] > 0)                                     # every bin inside is seen
    assert torch.all(fb[:, fk < 20.0] == 0) and torch.all(fb[:, -1] == 0)
    assert fb.shape == (80, 257)


def test_filterbank_with_fmax_above_nyquist_is_a_range_error():
    with pytest.raises(RangeError, match="fmax"):
        F.mel_filterbank(80, 512, 16000, 20.0, 9000.0)


# ---------------------------------------------------------------- log-mel


@pytest.mark.parametrize("n", [400, 401, 559, 560, 16000, 12345])
def test_frame_count_is_one_plus_samples_minus_window_over_hop(n):
    x = random.normal(random.key(n), (n,))
    assert F.log_mel(x, CFG).shape == (1 + (n - 400) // 160, 80)
    assert F.num_frames(n, CFG) == 1 + (n - 400) // 160


def test_power_spectrum_path_matches_torch_stft():
    x = random.normal(random.key(0), (4000,), dtype=torch.float64)
    cfg = F.FrontendConfig(preemphasis=0.0, log_floor=1e-30)
    win = torch.hamming_window(400, periodic=False, dtype=torch.float64)
    # a 512-sample frame under a window that is zero after 400 samples = our 400-sample frame, zero-padded
    spec = torch.stft(x, n_fft=512, hop_length=160, window=torch.nn.functional.pad(win, (0, 112)),
                      center=False, return_complex=True).abs().pow(2).T                   # [T', 257]
    fb = F.mel_filterbank(80, 512, 16000).double()
    expected = torch.log(spec @ fb.T)
    ours = F.log_mel(x.float(), cfg).double()[: expected.shape[0]]
    assert torch.allclose(ours, expected, atol=1e-3, rtol=1e-4)


def test_preemphasis_is_first_order_difference():
    x = random.normal(random.key(1), (400,))
    no_pre = F.log_mel(x - 0.97 * torch.cat([x[:1] * 0, x[:-1]]), F.FrontendConfig(preemphasis=0.0))
    # y[0] = x[0] in both, so one frame over the same samples must agree
    assert torch.allclose(F.log_mel(x, CFG), no_pre, atol=1e-4)


def test_batched_log_mel_matches_each_row():
    x = random.normal(random.key(2), (3, 2000))
    batched = F.log_mel(x, CFG)
    assert batched.shape == (3, 11, 80)
    assert torch.allclose(batched[1], F.log_mel(x[1], CFG), atol=1e-5)


def test_silence_gives_the_log_floor_not_minus_infinity():
    y = F.log_mel(torch.zeros(800), CFG)
    assert torch.all(y == math.log(CFG.log_floor))


def test_too_short_waveform_is_a_shape_error():
    with pytest.raises(ShapeError, match="waveform.*400"):
        F.log_mel(torch.zeros(100), CFG)


def test_config_rejects_an_fft_shorter_than_the_window():
    with pytest.raises(ConfigError, match="n_fft"):
        F.FrontendConfig(n_fft=256)


# ---------------------------------------------------------------- LFR


@pytest.mark.parametrize("t", [1, 5, 6, 7, 12, 13, 100])
def test_lfr_shape_is_ceil_t_over_n_by_m_times_f(t):
    x = torch.zeros(t, 3)
    assert F.lfr(x, 7, 6).shape == (math.ceil(t / 6), 21)


def test_lfr_hand_made_example():
    x = torch.arange(5.0)[:, None] * torch.tensor([[1.0, 10.0]])            # frame i = [i, 10 i]
    y = F.lfr(x, m=3, n=2)                                                  # left pad 1 copy of frame 0
    expected = torch.tensor([
        [0, 0, 0, 0, 1, 10],        # frames 0(pad), 0, 1
        [1, 10, 2, 20, 3, 30],      # frames 1, 2, 3
        [3, 30, 4, 40, 4, 40],      # frames 3, 4, 4(pad with the last frame)
    ], dtype=torch.float32)
    assert torch.equal(y, expected)


def test_lfr_default_window_centers_frame_i_times_n():
    x = torch.arange(20.0)[:, None]
    y = F.lfr(x, 7, 6)                                                     # frames 6i-3 .. 6i+3
    assert y[1].tolist() == [3, 4, 5, 6, 7, 8, 9]
    assert y[0].tolist() == [0, 0, 0, 0, 1, 2, 3]
    assert y[-1].tolist() == [15, 16, 17, 18, 19, 19, 19]


def test_lfr_batched_matches_each_row():
    x = random.normal(random.key(3), (2, 13, 4))
    assert torch.equal(F.lfr(x, 7, 6)[1], F.lfr(x[1], 7, 6))


# ---------------------------------------------------------------- normalization


def test_utterance_normalization_gives_zero_mean_unit_variance_per_bin():
    x = random.normal(random.key(4), (200, 80)) * torch.linspace(0.5, 5.0, 80) + torch.linspace(-10, 10, 80)
    y = F.normalize(x, mode="utterance")
    assert torch.allclose(y.mean(0), torch.zeros(80), atol=1e-5)
    assert torch.allclose(y.var(0, unbiased=False), torch.ones(80), atol=1e-3)


def test_utterance_normalization_uses_only_valid_frames_and_zeroes_padding():
    a = random.normal(random.key(5), (30, 4)) * 3 + 1
    batch = torch.zeros(2, 30, 4)
    batch[0], batch[1, :20] = a, a[:20]
    batch[1, 20:] = 1e6                                                     # padding garbage
    y = F.normalize(batch, torch.tensor([30, 20]), mode="utterance")
    assert torch.allclose(y[1, :20], F.normalize(a[:20], mode="utterance"), atol=1e-5)
    assert torch.all(y[1, 20:] == 0)


def test_global_normalization_uses_dataset_statistics():
    feats = [random.normal(random.key(i), (50 + i, 3)) * 2 + 5 for i in range(3)]
    mean, var = F.global_stats(feats)
    y = torch.cat([F.normalize(f, mode="global", stats=(mean, var)) for f in feats])
    assert torch.allclose(y.mean(0), torch.zeros(3), atol=1e-5)
    assert torch.allclose(y.var(0, unbiased=False), torch.ones(3), atol=1e-3)


def test_global_normalization_without_stats_is_a_config_error():
    with pytest.raises(ConfigError, match="stats"):
        F.normalize(torch.zeros(4, 3), mode="global")


def test_features_with_lfr_have_the_configured_dim():
    cfg = F.FrontendConfig(use_lfr=True)
    y = F.features(_tone(500.0, 1.0), cfg)
    assert y.shape == (math.ceil(98 / 6), cfg.feature_dim) and cfg.feature_dim == 560


# ---------------------------------------------------------------- SpecAugment


def test_spec_augment_same_key_same_output():
    x = random.normal(random.key(6), (2, 50, 20))
    k = random.key(9)
    a = F.spec_augment(k, x, num_time_masks=2, max_time=8, num_freq_masks=2, max_freq=5)
    b = F.spec_augment(k, x, num_time_masks=2, max_time=8, num_freq_masks=2, max_freq=5)
    assert torch.equal(a, b)
    c = F.spec_augment(random.key(10), x, num_time_masks=2, max_time=8, num_freq_masks=2, max_freq=5)
    assert not torch.equal(a, c)


def test_spec_augment_is_pure():
    x = random.normal(random.key(6), (40, 20))
    before = x.clone()
    F.spec_augment(random.key(1), x, num_time_masks=2, max_time=8, num_freq_masks=2, max_freq=5)
    assert torch.equal(x, before)


def test_spec_augment_masks_stay_within_bounds_and_lengths(getkey):
    x = torch.ones(4, 60, 30)
    lengths = torch.tensor([60, 40, 25, 10])
    for _ in range(20):
        y = F.spec_augment(getkey(), x, num_time_masks=1, max_time=7, num_freq_masks=1, max_freq=4, lengths=lengths)
        masked = y == 0
        full_time = masked.all(-1)                                         # whole frames masked: time masks
        full_freq = masked.all(-2)                                         # whole bins masked: freq masks
        for b in range(4):
            t_idx = torch.nonzero(full_time[b]).flatten()
            if t_idx.numel():
                assert t_idx.numel() <= 7 and int(t_idx.max()) < int(lengths[b])
                assert int(t_idx.max() - t_idx.min()) + 1 == t_idx.numel()  # one contiguous span
            assert int(full_freq[b].sum()) <= 4
            partial = masked[b] & ~full_time[b][:, None] & ~full_freq[b][None, :]
            assert not partial.any()                                       # nothing else touched


def test_spec_augment_with_zero_masks_is_identity():
    x = random.normal(random.key(7), (30, 10))
    y = F.spec_augment(random.key(0), x, num_time_masks=0, max_time=5, num_freq_masks=0, max_freq=5)
    assert torch.equal(x, y)


# ------------------------------------------------------------------ cepstral smoothing (lifter)


def test_cepstral_smooth_keeping_every_coefficient_is_the_identity():
    x = torch.randn(7, 40, dtype=torch.float64)
    torch.testing.assert_close(F.cepstral_smooth(x, 40), x)


def test_cepstral_smooth_matches_a_dct_round_trip_with_high_quefrencies_zeroed():
    scipy_fft = pytest.importorskip("scipy.fft")
    x = torch.randn(5, 40, dtype=torch.float64)
    c = scipy_fft.dct(x.numpy(), type=2, norm="ortho", axis=-1)
    c[:, 13:] = 0.0
    want = torch.from_numpy(scipy_fft.idct(c, type=2, norm="ortho", axis=-1))
    torch.testing.assert_close(F.cepstral_smooth(x, 13), want)


def test_cepstral_smooth_is_a_projection_that_removes_a_fast_ripple_and_keeps_the_envelope():
    m = torch.arange(40, dtype=torch.float64)
    envelope = torch.cos(math.pi * 2 * (m + 0.5) / 40)              # quefrency 2: kept
    ripple = 0.5 * torch.cos(math.pi * 30 * (m + 0.5) / 40)         # quefrency 30: removed
    once = F.cepstral_smooth(envelope + ripple, 13)
    torch.testing.assert_close(once, envelope)
    torch.testing.assert_close(F.cepstral_smooth(once, 13), once)


def test_lifter_applies_in_features_and_is_checked():
    wav = torch.randn(4000, generator=torch.Generator().manual_seed(0))
    plain = F.FrontendConfig(sample_rate=8000, n_mels=40, normalize="none")
    smooth = F.FrontendConfig(sample_rate=8000, n_mels=40, normalize="none", lifter=13)
    torch.testing.assert_close(F.features(wav, smooth), F.cepstral_smooth(F.features(wav, plain), 13))
    with pytest.raises(ConfigError, match="lifter"):
        F.FrontendConfig(n_mels=40, lifter=41)
    with pytest.raises(RangeError, match="keep"):
        F.cepstral_smooth(torch.zeros(3, 40), 0)


# ------------------------------------------------------------------ frequency warping (mel-domain VTLP)


def test_warp_frequency_is_a_pure_function_of_the_key_and_zero_warp_is_the_identity():
    x = torch.randn(3, 20, 40, generator=torch.Generator().manual_seed(0))
    k = random.key(5)
    assert torch.equal(F.warp_frequency(k, x, max_warp=0.2), F.warp_frequency(k, x, max_warp=0.2))
    assert not torch.equal(F.warp_frequency(k, x, max_warp=0.2), F.warp_frequency(random.key(6), x, max_warp=0.2))
    torch.testing.assert_close(F.warp_frequency(k, x, max_warp=0.0), x)


def test_warp_frequency_moves_a_spectral_peak_by_the_drawn_factor():
    f = torch.arange(40, dtype=torch.float64)
    x = torch.exp(-0.5 * ((f - 10.0) / 1.5) ** 2).expand(8, 5, 40).clone()    # a formant at bin 10
    y = F.warp_frequency(random.key(0), x, max_warp=0.2)
    peaks = (y[:, 0] * f).sum(-1) / y[:, 0].sum(-1)                           # centroid per row
    assert torch.all(peaks > 10.0 * 0.8 - 0.3) and torch.all(peaks < 10.0 * 1.2 + 0.3)
    assert peaks.max() - peaks.min() > 0.5                                    # rows drew different factors
    assert torch.equal(y[:, 0], y[:, 4])                                      # one factor per utterance


def test_warp_frequency_refuses_a_bad_factor_and_the_config_refuses_lfr():
    with pytest.raises(RangeError, match="max_warp"):
        F.warp_frequency(random.key(0), torch.zeros(4, 40), max_warp=1.0)
    from funcml.asr import task
    with pytest.raises(ConfigError, match="freq_warp"):
        task.AsrTrainConfig(freq_warp=0.1, frontend=F.FrontendConfig(use_lfr=True))
