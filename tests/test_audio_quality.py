"""Tests for jaxtag.audio.quality: per-clip and dataset-level SNR, PESQ and STOI."""

import json
import logging
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxtag.audio import metrics, quality

SR = 16000


def _speech_like(seconds: float = 1.0, sr: int = SR, seed: int = 0) -> np.ndarray:
  """A voiced, syllable-modulated harmonic signal (PESQ and STOI want speech-like input)."""
  rng = np.random.default_rng(seed)
  t = np.arange(int(seconds * sr)) / sr
  f0 = rng.uniform(110, 160)
  voiced = sum(a * np.sin(2 * np.pi * k * f0 * t) for k, a in ((1, 1.0), (3, 0.5), (8, 0.3)))
  envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)
  return (0.1 * voiced * envelope).astype(np.float32)


def _noise_at(clean: np.ndarray, snr_db: float, seed: int) -> np.ndarray:
  """White noise scaled to ``snr_db`` below ``clean`` (exactly, in float64)."""
  noise = np.random.default_rng(seed).standard_normal(clean.shape)
  return noise * np.sqrt(np.sum(clean.astype(np.float64) ** 2) / np.sum(noise**2)
                         / 10 ** (snr_db / 10))


def test_clip_snr_matches_the_numpy_formula_and_the_jnp_metric():
  rng = np.random.default_rng(0)
  clean = rng.uniform(-0.5, 0.5, (5, 800)).astype(np.float32)
  perturbed = clean + rng.normal(0, 1e-3, clean.shape).astype(np.float32)
  want = 20 * np.log10(np.linalg.norm(clean.astype(np.float64), axis=1)
                       / np.linalg.norm(perturbed.astype(np.float64) - clean, axis=1))
  got = quality.clip_snr_db(clean, perturbed)
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)
  np.testing.assert_allclose(got, metrics.snr_db(clean, perturbed), rtol=0, atol=1e-3)
  unchanged = quality.clip_snr_db(clean[:1], clean[:1])
  assert unchanged[0] == np.inf
  # From the perturbations themselves (what crafting reports), batched over any leading axes.
  delta = (perturbed.astype(np.float64) - clean).reshape(5, 1, 800)
  by_delta = quality.perturbation_snr_db(clean.reshape(5, 1, 800), delta)
  assert by_delta.shape == (5, 1)
  np.testing.assert_allclose(by_delta[:, 0], want, rtol=0, atol=1e-9)
  assert quality.perturbation_snr_db(clean[:1], np.zeros((1, 800)))[0] == np.inf


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(1e-4, 1.0), min_size=2, max_size=8), st.floats(10.0, 80.0))
def test_dataset_snr_equals_the_clip_snr_when_every_clip_is_perturbed_at_it(gains, snr_db):
  """sum E_i / sum E_i 10^(-s/10) = s, whatever the clips' energies."""
  clean = np.stack([g * _speech_like(0.05, seed=i) for i, g in enumerate(gains)])
  delta = np.stack([_noise_at(c, snr_db, seed=i) for i, c in enumerate(clean)])
  assert quality.dataset_snr_db(clean, delta) == pytest.approx(snr_db, abs=1e-6)
  np.testing.assert_allclose(quality.clip_snr_db(clean, clean + delta), snr_db, atol=1e-3)


def test_dataset_snr_is_20_db_above_the_clip_snr_at_a_1_percent_budget():
  """N equally loud clips, N/100 of them perturbed at SNR s: the dataset-level SNR is s + 20."""
  clip = _speech_like(0.1)
  clean = np.repeat(clip[None], 200, axis=0)
  indices = np.array([3, 150])
  perturbed = np.stack([clip + _noise_at(clip, 55.0, seed=i) for i in range(2)]).astype(
      np.float32)
  result = quality.perturbation_quality(clean, perturbed, indices, sample_rate=SR,
                                        perceptual=False)
  clip_snr = quality.clip_snr_db(clean[indices], perturbed)   # 55 up to float32 storage
  want = 10 * np.log10(np.sum(clean.astype(np.float64) ** 2)
                       / np.sum((perturbed.astype(np.float64) - clean[indices]) ** 2))
  assert result.dataset_snr_db == pytest.approx(want, abs=1e-9)
  assert result.dataset_snr_db == pytest.approx(np.mean(clip_snr) + 20.0, abs=0.01)
  summary = result.summary()
  assert summary["clip_snr_db"]["min"] == pytest.approx(clip_snr.min(), abs=0.01)
  assert summary["clip_snr_db"]["median"] == pytest.approx(np.median(clip_snr), abs=0.01)
  assert summary["num_clips"] == 200 and summary["num_perturbed"] == 2
  assert summary["pesq_wb"] is None and "perceptual=False" in summary["pesq_wb_reason"]


def test_pesq_and_stoi_are_at_their_maximum_for_an_unchanged_clip_and_fall_with_noise():
  pytest.importorskip("pesq")
  pytest.importorskip("pystoi")
  clip = _speech_like(1.0)
  snrs = (60.0, 30.0, 10.0)
  clean = np.repeat(clip[None], 4, axis=0)
  perturbed = np.stack([clip] + [clip + _noise_at(clip, s, seed=1) for s in snrs]).astype(
      np.float32)
  result = quality.perturbation_quality(clean, perturbed, np.arange(4), sample_rate=SR)
  assert result.pesq_wb[0] == pytest.approx(4.644, abs=1e-3)   # P.862.2's ceiling
  assert result.stoi[0] == pytest.approx(1.0, abs=1e-6)
  assert np.all(np.diff(result.pesq_wb) < 0) and np.all(np.diff(result.stoi) < 0)
  assert result.pesq_wb[-1] < 2.0 and result.stoi[-1] < 0.9
  summary = result.summary()
  assert summary["num_unchanged"] == 1 and summary["clip_snr_db"]["count"] == 3
  assert summary["pesq_wb"]["max"] == pytest.approx(4.644, abs=1e-3)
  assert summary["pesq_wb"]["median"] == pytest.approx(np.median(result.pesq_wb), abs=1e-3)
  assert summary["stoi"]["min"] == pytest.approx(result.stoi.min(), abs=1e-4)
  assert summary["pesq_wb_reason"] is None and summary["stoi_reason"] is None
  full = result.to_json()
  json.dumps(full, allow_nan=False)   # strict JSON: inf/NaN became null
  assert full["pesq_wb_per_clip"] == pytest.approx(result.pesq_wb.tolist())
  # Timings only in the full report: a resumed run's summary must equal an uninterrupted one's.
  assert set(full["perceptual_seconds"]) == {"pesq", "stoi"} and "seconds" not in str(summary)


def test_unscorable_clips_score_nan_and_are_counted_never_raised():
  pytest.importorskip("pesq")
  pytest.importorskip("pystoi")
  speech = _speech_like(1.0)
  silent = np.zeros_like(speech)
  burst = silent.copy()
  burst[-3200:] = speech[:3200]   # 0.2 s of sound: under STOI's 30 non-silent frames
  clean = np.stack([speech, silent, silent, burst])
  perturbed = clean.copy()
  perturbed[0] += _noise_at(speech, 40.0, 0).astype(np.float32)
  perturbed[2] += 1e-4
  perturbed[3] += _noise_at(burst, 40.0, 1).astype(np.float32)
  result = quality.perturbation_quality(clean, perturbed, np.arange(4), sample_rate=SR)
  np.testing.assert_array_equal(np.isfinite(result.pesq_wb), [True, False, False, True])
  assert result.pesq_failures == {"NoUtterancesError": 2}
  np.testing.assert_array_equal(np.isfinite(result.stoi), [True, False, False, False])
  assert result.stoi_failures == {"silent reference": 2, "too few non-silent frames": 1}
  summary = result.summary()
  assert summary["pesq_wb"]["count"] == 2 and summary["stoi"]["count"] == 1
  assert summary["pesq_wb_failures"] == {"NoUtterancesError": 2}


def test_an_absent_package_gives_null_with_the_install_command_in_one_log_line(monkeypatch,
                                                                                caplog):
  for name in ("pesq", "pystoi"):
    monkeypatch.setitem(sys.modules, name, None)   # `import pesq` now raises ImportError
  clip = _speech_like(0.5)
  with caplog.at_level(logging.WARNING, logger="jaxtag.audio.quality"):
    result = quality.perturbation_quality(clip[None], (clip + 1e-3)[None], [0], sample_rate=SR)
  summary = result.summary()
  assert summary["pesq_wb"] is None and summary["stoi"] is None
  for field, name in (("pesq_wb_reason", "pesq"), ("stoi_reason", "pystoi")):
    assert summary[field] == f"{name} is not installed: pip install 'jaxtag[quality]'"
  lines = [r.getMessage() for r in caplog.records if r.name == "jaxtag.audio.quality"]
  assert len(lines) == 1 and "pesq and pystoi" in lines[0]
  assert "pip install 'jaxtag[quality]'" in lines[0]
  assert summary["clip_snr_db"]["min"] is not None   # the SNR figures need neither package


def test_pesq_resamples_above_16_khz_and_skips_below_with_a_reason():
  pytest.importorskip("pesq")
  clip = _speech_like(1.0, sr=32000)
  scores, reason, _ = quality.pesq_wb(clip[None], clip[None], 32000)
  assert reason is None and scores[0] == pytest.approx(4.644, abs=1e-3)
  scores, reason, _ = quality.pesq_wb(clip[None, ::4], clip[None, ::4], 8000)
  assert scores is None and "16 kHz" in reason and "8000 Hz" in reason


def test_the_perceptual_cap_takes_an_evenly_spaced_subset():
  clean = np.repeat(_speech_like(0.05)[None], 20, axis=0)
  indices = np.arange(0, 20, 2)
  result = quality.perturbation_quality(clean, clean[indices] * 1.01, indices, sample_rate=SR,
                                        perceptual=False, max_perceptual_clips=4)
  np.testing.assert_array_equal(result.measured, [0, 3, 6, 9])
  assert result.to_json()["perceptual_indices"] == [0, 6, 12, 18]
  assert result.summary()["perceptual_clips"] == 4


@pytest.mark.parametrize("indices, message", [([0, 0], "distinct"), ([5], r"\[0, 3\)")])
def test_bad_indices_are_refused(indices, message):
  clean = np.zeros((3, 100), np.float32)
  with pytest.raises(ValueError, match=message):
    quality.perturbation_quality(clean, np.zeros((len(indices), 100)), indices, sample_rate=SR)
