"""Tests for jaxtag.audio.reconstruction (against librosa.griffinlim) and metrics.snr_db."""

import jax
import jax.numpy as jnp
import librosa
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from jaxtag.audio import reconstruction as gl_lib
from jaxtag.audio import mel as mel_lib
from jaxtag.audio import metrics

_GEOMETRY = dict(n_fft=512, hop_length=160)


def _signal(num_samples=8000, sample_rate=16000, seed=0):
  """Chirp + harmonics + a little noise: a real-ish signal for phase retrieval."""
  t = np.arange(num_samples) / sample_rate
  rng = np.random.default_rng(seed)
  y = 0.5 * np.sin(2 * np.pi * (200 * t + 400 * t**2))
  y += sum(0.2 / k * np.sin(2 * np.pi * 220 * k * t) for k in range(1, 6))
  return (y + 0.01 * rng.standard_normal(num_samples)).astype(np.float32)


def _magnitude(y, **geometry):
  geometry = geometry or _GEOMETRY
  return np.abs(librosa.stft(y, pad_mode="reflect", **geometry)).T


def _librosa_gl(magnitude, **kwargs):
  return librosa.griffinlim(magnitude.T, pad_mode="reflect", **kwargs)


@pytest.mark.parametrize("win_length", [None, 400])
def test_zero_phase_start_reproduces_librosa(win_length):
  """Same deterministic start (librosa init=None): same iterates."""
  y = _signal()
  geometry = dict(_GEOMETRY, win_length=win_length)
  magnitude = _magnitude(y, **geometry)
  expected = _librosa_gl(magnitude, n_iter=32, momentum=0.99, init=None,
                         length=y.size, **geometry)
  got = np.asarray(gl_lib.griffin_lim(magnitude, n_iter=32, momentum=0.99,
                                      init="zeros", length=y.size, **geometry))
  # 32 float32 iterations drift by ~1e-3 of the peak; the loss is identical.
  np.testing.assert_allclose(got, expected, atol=5e-3 * np.abs(expected).max())
  ours = float(gl_lib.spectral_convergence(magnitude, got, **geometry))
  theirs = float(gl_lib.spectral_convergence(magnitude, expected, **geometry))
  assert ours <= theirs * (1 + 1e-3)
  assert ours < 0.15


def test_random_start_as_good_as_librosa():
  """Mean spectral convergence over six random starts, 32 iterations each.

  Both runs are seeded (jax key, librosa random_state), so this is
  deterministic; the 10% margin covers that the phase draws differ.
  """
  y = _signal()
  magnitude = _magnitude(y)
  theirs = np.mean([float(gl_lib.spectral_convergence(
      magnitude, _librosa_gl(magnitude, n_iter=32, momentum=0.99,
                             random_state=seed, length=y.size, **_GEOMETRY),
      **_GEOMETRY)) for seed in range(6)])
  batch = np.broadcast_to(magnitude, (6,) + magnitude.shape)
  waves = gl_lib.griffin_lim(batch, n_iter=32, momentum=0.99, length=y.size,
                             key=jax.random.key(0), **_GEOMETRY)
  ours = np.asarray(gl_lib.spectral_convergence(magnitude, waves, **_GEOMETRY))
  assert ours.shape == (6,)
  assert ours.mean() <= 1.1 * theirs
  # Momentum is what makes it fast: plain Griffin-Lim is clearly worse.
  plain = gl_lib.griffin_lim(batch, n_iter=32, momentum=0.0, length=y.size,
                             key=jax.random.key(0), **_GEOMETRY)
  plain_sc = np.asarray(gl_lib.spectral_convergence(magnitude, plain,
                                                    **_GEOMETRY))
  assert plain_sc.mean() > 1.5 * ours.mean()


def test_batched_equals_loop_and_compiles_once():
  traces = []

  @jax.jit
  def reconstruct(magnitude):
    traces.append(1)
    return gl_lib.griffin_lim(magnitude, n_iter=8, init="zeros", length=4000,
                              **_GEOMETRY)

  mags = np.stack([_magnitude(_signal(4000, seed=s)) for s in range(3)])
  batched = np.asarray(reconstruct(mags))
  reconstruct(mags * 2.0).block_until_ready()
  assert len(traces) == 1
  looped = np.stack([np.asarray(reconstruct(m)) for m in mags])
  np.testing.assert_allclose(looped, batched, atol=1e-4)
  vmapped = np.asarray(jax.vmap(reconstruct)(mags))
  np.testing.assert_allclose(vmapped, batched, atol=1e-4)


def test_spectral_convergence_definition():
  y = _signal(4000)
  magnitude = _magnitude(y)
  assert float(gl_lib.spectral_convergence(magnitude, y, **_GEOMETRY)) < 1e-5
  scaled = float(gl_lib.spectral_convergence(magnitude, 0.5 * y, **_GEOMETRY))
  assert scaled == pytest.approx(0.5, rel=1e-4)


def test_mel_to_audio_recovers_the_signal_better_than_librosa():
  y = _signal(8000)
  kwargs = dict(sample_rate=16000, **_GEOMETRY)
  mel = np.asarray(mel_lib.mel_spectrogram(y, n_mels=128, **kwargs))
  ours = gl_lib.mel_to_audio(mel, n_iter=32, init="zeros", length=y.size,
                             **kwargs)
  # librosa.feature.inverse.mel_to_audio, spelled out to get its
  # deterministic zero-phase start (it forwards no `init`).
  linear = librosa.feature.inverse.mel_to_stft(mel.T, sr=16000, n_fft=512)
  theirs = _librosa_gl(linear.T, n_iter=32, init=None, length=y.size,
                       **_GEOMETRY)
  magnitude = _magnitude(y)
  ours_sc = float(gl_lib.spectral_convergence(magnitude, ours, **_GEOMETRY))
  theirs_sc = float(gl_lib.spectral_convergence(magnitude, theirs, **_GEOMETRY))
  assert ours_sc <= theirs_sc * 1.02
  assert ours_sc < 0.5


def test_user_errors_are_explained():
  magnitude = _magnitude(_signal(2000))
  with pytest.raises(ValueError, match="key"):
    gl_lib.griffin_lim(magnitude, **_GEOMETRY)
  with pytest.raises(ValueError, match="init"):
    gl_lib.griffin_lim(magnitude, init="ones", **_GEOMETRY)
  with pytest.raises(ValueError, match="length"):
    gl_lib.griffin_lim(magnitude, init="zeros", length=100, **_GEOMETRY)


# --- metrics.snr_db -----------------------------------------------------------


def test_snr_db_known_values_and_batch_axes():
  x = _signal(1000)[None].repeat(3, axis=0)
  scales = np.array([0.1, 0.01, 1.0], np.float32)[:, None]
  snr = np.asarray(metrics.snr_db(x, x + scales * x))
  np.testing.assert_allclose(snr, [20.0, 40.0, 0.0], atol=1e-3)
  both = np.asarray(metrics.snr_db(x, x + 0.1 * x, axis=(0, 1)))
  assert both.shape == () and both == pytest.approx(20.0, abs=1e-3)
  assert np.isfinite(np.asarray(metrics.snr_db(x, x))).all()


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**16), gain=st.floats(1e-3, 10.0))
def test_snr_db_is_scale_invariant(seed, gain):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal(256).astype(np.float32)
  delta = 0.05 * rng.standard_normal(256).astype(np.float32)
  g = np.float32(gain)
  np.testing.assert_allclose(np.asarray(metrics.snr_db(g * x, g * (x + delta))),
                             np.asarray(metrics.snr_db(x, x + delta)),
                             atol=1e-3)


def test_snr_db_gradient_finite_and_correct():
  x = jnp.asarray(_signal(500))
  delta = jnp.asarray(np.random.default_rng(1).standard_normal(500) * 0.01,
                      jnp.float32)
  grad = jax.grad(lambda d: metrics.snr_db(x, x + d))(delta)
  # d/dd [-10 log10 ||d||^2] = -20 d / (ln 10 ||d||^2)
  expected = -20.0 * delta / (np.log(10.0) * jnp.sum(delta**2))
  # x + d - x rounds d in float32 (|x| ~ 1, |d| ~ 0.01): hence the atol.
  np.testing.assert_allclose(np.asarray(grad), np.asarray(expected), rtol=1e-4,
                             atol=1e-5)
  at_zero = jax.grad(lambda d: metrics.snr_db(x, x + d))(jnp.zeros(500))
  assert np.all(np.isfinite(np.asarray(at_zero)))
