"""Tests for jaxtag.audio.mel: filterbanks, mel spectrograms, dB and NNLS inversion."""

import jax
import jax.numpy as jnp
import librosa
import numpy as np
import pytest
import scipy.optimize

from jaxtag.audio import mel as mel_lib


def _signal(num_samples=8000, sample_rate=16000, seed=0):
  """Chirp + harmonics + a little noise: spectrally rich but deterministic."""
  t = np.arange(num_samples) / sample_rate
  rng = np.random.default_rng(seed)
  y = 0.5 * np.sin(2 * np.pi * (200 * t + 400 * t**2))
  y += sum(0.2 / k * np.sin(2 * np.pi * 220 * k * t) for k in range(1, 6))
  return (y + 0.01 * rng.standard_normal(num_samples)).astype(np.float32)


@pytest.mark.parametrize("htk", [False, True])
def test_hz_mel_conversions_match_librosa(htk):
  freqs = np.array([0.0, 55.0, 440.0, 999.0, 1000.0, 1001.0, 4000.0, 8000.0])
  mels = np.asarray(mel_lib.hz_to_mel(freqs, htk=htk))
  np.testing.assert_allclose(mels, librosa.hz_to_mel(freqs, htk=htk), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(mel_lib.mel_to_hz(mels, htk=htk)),
                             librosa.mel_to_hz(mels, htk=htk), rtol=2e-6)


@pytest.mark.parametrize("htk", [False, True])
@pytest.mark.parametrize("norm", ["slaney", None])
@pytest.mark.parametrize("sr,n_fft,n_mels,f_min,f_max", [
    (16000, 512, 128, 0.0, None), (16000, 400, 40, 20.0, 7600.0),
    (22050, 2048, 80, 30.0, 8000.0)])
def test_mel_filterbank_matches_librosa(htk, norm, sr, n_fft, n_mels, f_min,
                                        f_max):
  expected = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=f_min,
                                 fmax=f_max, htk=htk, norm=norm).T
  got = np.asarray(mel_lib.mel_filterbank(
      sample_rate=sr, n_fft=n_fft, n_mels=n_mels, f_min=f_min, f_max=f_max,
      htk=htk, norm=norm))
  assert got.shape == (n_fft // 2 + 1, n_mels) and got.dtype == np.float32
  # Both are built in float64 and rounded to float32 once: at most an ulp.
  np.testing.assert_allclose(got, expected, rtol=0, atol=1e-7)


def test_htk_filterbank_matches_audax():
  """audax builds the same triangles in float32 jnp (linspace and 10**x in
  float32), so it agrees with the float64 bank only to ~1e-5 absolute on
  peak-1 triangles. Its Slaney mel_to_hz is broken (a discarded `.at[].set`),
  so only HTK is compared."""
  functional = pytest.importorskip("audax.core.functional")
  for sr, n_fft, n_mels, f_min, f_max in [(16000, 512, 128, 0.0, None),
                                          (16000, 400, 64, 20.0, 7600.0)]:
    theirs = np.asarray(functional.melscale_fbanks(
        n_fft // 2 + 1, n_mels, sr, f_min, f_max, norm=None, mel_scale="htk"))
    ours = np.asarray(mel_lib.mel_filterbank(
        sample_rate=sr, n_fft=n_fft, n_mels=n_mels, f_min=f_min, f_max=f_max,
        htk=True, norm=None))
    np.testing.assert_allclose(ours, theirs, atol=2e-5)


@pytest.mark.parametrize("htk,norm,power,win", [
    (False, "slaney", 2.0, None), (True, None, 1.0, 400)])
def test_mel_spectrogram_matches_librosa(htk, norm, power, win):
  y = _signal()
  expected = librosa.feature.melspectrogram(
      y=y, sr=16000, n_fft=512, hop_length=160, win_length=win, n_mels=64,
      power=power, htk=htk, norm=norm, pad_mode="reflect").T
  got = np.asarray(mel_lib.mel_spectrogram(
      y, sample_rate=16000, n_fft=512, hop_length=160, win_length=win,
      n_mels=64, power=power, htk=htk, norm=norm))
  assert got.shape == expected.shape
  # float32 FFT rounding relative to the peak; each bin is also within 1e-5
  # of itself or of 1e-3 of the peak (quiet bins are dominated by rounding).
  assert np.abs(got - expected).max() <= 1e-5 * expected.max()
  assert np.all(np.abs(got - expected) <= 1e-5 * (expected + 1e-3 * expected.max()))


def test_power_to_db_matches_librosa():
  spec = np.asarray(mel_lib.mel_spectrogram(
      _signal(), sample_rate=16000, n_fft=512, hop_length=160, n_mels=64))
  for kwargs, ref in [({}, 1.0), ({"top_db": 80.0}, np.max),
                      ({"amin": 1e-5, "ref": 2.0}, None)]:
    lib_kwargs = dict(kwargs)
    ours_kwargs = dict(kwargs)
    if ref is np.max:
      lib_kwargs["ref"] = np.max
      ours_kwargs["ref"] = lambda s: jnp.max(s, axis=(-2, -1), keepdims=True)
    expected = librosa.power_to_db(spec, **lib_kwargs)
    got = np.asarray(mel_lib.power_to_db(spec, **ours_kwargs))
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_power_to_db_top_db_is_per_example():
  quiet, loud = np.full((1, 4, 3), 1e-4), np.full((1, 4, 3), 1.0)
  quiet[0, 0, 0] = loud[0, 0, 0] = 0.0
  db = np.asarray(mel_lib.power_to_db(np.concatenate([quiet, loud]),
                                      top_db=30.0))
  assert db[0, 0, 0] == pytest.approx(-40.0 - 30.0)
  assert db[1, 0, 0] == pytest.approx(-30.0)


def test_log_mel_is_log_of_mel_plus_eps():
  y = _signal(4000)
  kwargs = dict(sample_rate=16000, n_fft=256, hop_length=128, n_mels=32)
  np.testing.assert_allclose(
      np.asarray(mel_lib.log_mel_spectrogram(y, eps=1e-4, **kwargs)),
      np.log(np.asarray(mel_lib.mel_spectrogram(y, **kwargs)) + 1e-4),
      atol=1e-5)


def test_mel_to_linear_beats_librosa_nnls_and_nears_the_optimum():
  y = _signal(4000)
  mel = np.asarray(mel_lib.mel_spectrogram(
      y, sample_rate=16000, n_fft=512, hop_length=160, n_mels=64))
  fb = np.asarray(mel_lib.mel_filterbank(sample_rate=16000, n_fft=512,
                                         n_mels=64))
  ours = np.asarray(mel_lib.mel_to_linear(mel, fb))
  assert ours.shape == (mel.shape[0], 257) and ours.min() >= 0.0
  librosa_linear = librosa.feature.inverse.mel_to_stft(
      mel.T, sr=16000, n_fft=512, power=1.0).T
  objective = lambda lin, target=mel: np.sum((lin @ fb - target)**2, axis=-1)
  assert objective(ours).sum() <= objective(librosa_linear).sum()
  # The exact NNLS optimum per frame (active-set solver), on a few frames.
  # Relative to the target energy, so that quiet frames do not dominate.
  for row in range(0, mel.shape[0], 5):
    optimum = scipy.optimize.nnls(fb.T.astype(np.float64),
                                  mel[row].astype(np.float64))[1]**2
    energy = np.sum(mel[row]**2)
    assert objective(ours[row], mel[row]) <= optimum + 1e-6 * energy


def test_mel_spectrogram_gradient_matches_finite_differences():
  x = jnp.asarray(_signal(2000))
  weights = jnp.asarray(np.random.default_rng(1).standard_normal((13, 32)),
                        jnp.float32)
  direction = jnp.asarray(np.random.default_rng(2).standard_normal(2000) * 0.1,
                          jnp.float32)

  @jax.jit
  def loss(v):
    mel = mel_lib.mel_spectrogram(v, sample_rate=16000, n_fft=256,
                                  hop_length=160, n_mels=32)
    return jnp.sum(mel * weights)

  grad = jax.jit(jax.grad(loss))(x)
  assert np.all(np.isfinite(np.asarray(grad)))
  # With power=2 the loss is a quadratic form in x: central differences are
  # exact up to rounding, so a tight tolerance holds for any step.
  numeric = (loss(x + direction) - loss(x - direction)) / 2.0
  np.testing.assert_allclose(jnp.vdot(grad, direction), numeric, rtol=2e-3)
  # Magnitude (power=1) and log-mel stay finite at silent bins too.
  silent = jnp.zeros(2000)
  for fn in (lambda v: jnp.sum(mel_lib.mel_spectrogram(
      v, sample_rate=16000, n_fft=256, hop_length=160, n_mels=32, power=1.0)),
             lambda v: jnp.sum(mel_lib.log_mel_spectrogram(
                 v, sample_rate=16000, n_fft=256, hop_length=160, n_mels=32))):
    assert np.all(np.isfinite(np.asarray(jax.grad(fn)(silent))))


def test_compiles_once_and_vmaps():
  traces = []

  @jax.jit
  def features(x):
    traces.append(1)
    return mel_lib.mel_spectrogram(x, sample_rate=16000, n_fft=256,
                                   hop_length=128, n_mels=32)

  x = np.stack([_signal(3000, seed=s) for s in range(3)])
  batched = np.asarray(features(x))
  features(x * 0.5).block_until_ready()
  assert len(traces) == 1
  vmapped = np.asarray(jax.vmap(features)(x))
  np.testing.assert_allclose(vmapped, batched, rtol=1e-5, atol=1e-6)
  looped = np.stack([np.asarray(features(row)) for row in x])
  np.testing.assert_allclose(looped, batched, rtol=1e-5, atol=1e-6)


def test_user_errors_are_explained():
  with pytest.raises(ValueError, match="norm"):
    mel_lib.mel_filterbank(sample_rate=16000, n_fft=512, n_mels=10, norm="l2")
  with pytest.raises(ValueError, match="f_min"):
    mel_lib.mel_filterbank(sample_rate=16000, n_fft=512, n_mels=10,
                           f_min=9000.0)
  with pytest.raises(ValueError, match="same n_mels"):
    mel_lib.mel_to_linear(jnp.ones((3, 20)), jnp.ones((257, 40)))
  with pytest.raises(ValueError, match="amin"):
    mel_lib.power_to_db(jnp.ones(3), amin=0.0)
