"""Tests for jaxtag.audio.fbank against kaldi_native_fbank (Kaldi's C++ fbank)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtag.audio import fbank as fbank_lib

knf = pytest.importorskip("kaldi_native_fbank")

_EPS = float(np.finfo(np.float32).eps)


def _signal(num_samples=16000, sample_rate=16000, seed=0):
  """Chirp + harmonics + noise in [-1, 1], as AST's torchaudio input."""
  t = np.arange(num_samples) / sample_rate
  rng = np.random.default_rng(seed)
  y = 0.5 * np.sin(2 * np.pi * (200 * t + 400 * t**2))
  y += 0.1 * np.sin(2 * np.pi * 1234 * t)
  return (y + 0.01 * rng.standard_normal(num_samples)).astype(np.float32)


def _knf_fbank(x, *, num_bins, window="hanning", snip_edges=True,
               frame_length_ms=25.0, sample_rate=16000):
  opts = knf.FbankOptions()
  opts.frame_opts.dither = 0.0
  opts.frame_opts.window_type = window
  opts.frame_opts.samp_freq = sample_rate
  opts.frame_opts.snip_edges = snip_edges
  opts.frame_opts.frame_length_ms = frame_length_ms
  opts.mel_opts.num_bins = num_bins
  opts.mel_opts.low_freq = 20.0
  opts.mel_opts.high_freq = 0.0
  opts.use_energy = False
  computer = knf.OnlineFbank(opts)
  computer.accept_waveform(sample_rate, np.asarray(x, np.float32))
  computer.input_finished()
  return np.stack([np.asarray(computer.get_frame(i))
                   for i in range(computer.num_frames_ready)])


def _assert_close_to_kaldi(got, expected):
  """Tolerance in the log domain.

  kaldi_native_fbank builds its mel banks in float32 and uses its own FFT;
  bins within 60 dB (13.8 nepers) of their frame's peak agree to < 1e-4 and
  must agree to 1e-3. Much quieter bins are sums of float32 rounding residue
  from the power spectrum, so only a loose 2e-2 applies there.
  """
  assert got.shape == expected.shape
  loud = expected > expected.max(axis=-1, keepdims=True) - 13.8
  diff = np.abs(got - expected)
  assert diff[loud].max() < 1e-3
  assert diff.max() < 2e-2


@pytest.mark.parametrize("window", ["hanning", "povey", "hamming"])
@pytest.mark.parametrize("snip_edges", [True, False])
@pytest.mark.parametrize("scale", [1.0, 2.0**15])
def test_fbank_matches_kaldi_native_fbank(window, snip_edges, scale):
  # Hanning and povey windows are 0 at a frame's first sample, so only
  # hamming makes Kaldi's pre-emphasis of that sample (x0 - 0.97 x0, not x0)
  # observable: getting it wrong moves loud bins by several nepers there.
  # Kaldi refuses 128 bins with a 512-point FFT (one triangle falls between
  # FFT bins), so the full pipeline is compared at 80 bins here and at 128
  # bins with a 1024-point FFT below.
  x = _signal() * np.float32(scale)
  expected = _knf_fbank(x, num_bins=80, window=window, snip_edges=snip_edges)
  got = np.asarray(fbank_lib.kaldi_fbank(x, num_mel_bins=80,
                                         window_type=window,
                                         snip_edges=snip_edges))
  _assert_close_to_kaldi(got, expected)


def test_fbank_128_bins_matches_kaldi_with_long_frames():
  x = _signal(8000, seed=3)
  expected = _knf_fbank(x, num_bins=128, frame_length_ms=50.0)
  got = np.asarray(fbank_lib.kaldi_fbank(x, frame_length_ms=50.0))
  _assert_close_to_kaldi(got, expected)


def _kaldi_mel_banks_reference(num_bins, n_fft, sample_rate, low, high):
  """Loop transcription of Kaldi's MelBanks constructor (mel-computations.cc)."""
  mel = lambda f: 1127.0 * np.log(1.0 + f / 700.0)
  high = high if high > 0 else high + sample_rate / 2
  delta = (mel(high) - mel(low)) / (num_bins + 1)
  banks = np.zeros((n_fft // 2 + 1, num_bins))
  for b in range(num_bins):
    left, center, right = (mel(low) + k * delta for k in (b, b + 1, b + 2))
    for i in range(n_fft // 2):
      m = mel(sample_rate / n_fft * i)
      if left < m < right:
        banks[i, b] = ((m - left) / (center - left) if m <= center
                       else (right - m) / (right - center))
  return banks


def test_ast_mel_banks_match_kaldi_formula_and_have_an_empty_bin():
  banks = fbank_lib.kaldi_mel_banks(num_bins=128, padded_window_size=512,
                                    sample_rate=16000, low_freq=20.0,
                                    high_freq=0.0)
  np.testing.assert_allclose(
      banks, _kaldi_mel_banks_reference(128, 512, 16000, 20.0, 0.0), atol=1e-6)
  # AST's setting leaves mel bin 3 without any FFT bin (torchaudio does not
  # check, Kaldi refuses): that bin is constant log(eps) in AST features.
  assert np.flatnonzero(banks.max(axis=0) == 0).tolist() == [3]
  features = np.asarray(fbank_lib.kaldi_fbank(_signal()))
  assert features.shape == (98, 128)
  np.testing.assert_allclose(features[:, 3], np.log(_EPS))
  with pytest.raises(Exception):
    _knf_fbank(_signal(), num_bins=128)


def test_fbank_matches_kaldi_on_mel_banks_at_80_bins():
  opts = knf.MelBanksOptions()
  opts.num_bins = 80
  frame_opts = knf.FrameExtractionOptions()
  frame_opts.samp_freq = 16000
  expected = np.asarray(knf.MelBanks(opts, frame_opts, 1.0).get_matrix()).T
  got = fbank_lib.kaldi_mel_banks(num_bins=80, padded_window_size=512,
                                  sample_rate=16000, low_freq=20.0,
                                  high_freq=0.0)
  # kaldi_native_fbank computes the triangles in float32 (~1e-5 off); the
  # Nyquist row is zero in both.
  assert got.shape == expected.shape == (257, 80)
  np.testing.assert_allclose(got, expected, atol=5e-5)
  assert np.all(got[-1] == 0)


def test_fbank_ignores_a_constant_offset():
  """AST subtracts the clip mean first; per-frame DC removal makes it moot."""
  x = _signal(4000)
  np.testing.assert_allclose(np.asarray(fbank_lib.kaldi_fbank(x + 0.1)),
                             np.asarray(fbank_lib.kaldi_fbank(x)), atol=2e-3)


def test_ast_features_pad_cut_and_normalise():
  mean, std = -6.845978, 5.5654526
  x = np.stack([_signal(16000, seed=s) for s in range(2)])
  feats = np.asarray(fbank_lib.ast_features(x))
  fbank = np.asarray(fbank_lib.kaldi_fbank(x))
  assert feats.shape == (2, 128, 128)
  np.testing.assert_allclose(feats[:, :98], (fbank - mean) / (2 * std),
                             atol=1e-5)
  np.testing.assert_allclose(feats[:, 98:], -mean / (2 * std), atol=1e-6)
  long_feats = np.asarray(fbank_lib.ast_features(_signal(32000),
                                                 target_frames=100))
  long_fbank = np.asarray(fbank_lib.kaldi_fbank(_signal(32000)))
  np.testing.assert_allclose(long_feats, (long_fbank[:100] - mean) / (2 * std),
                             atol=1e-5)


def test_fbank_gradients_finite_compiles_once_vmaps():
  traces = []

  @jax.jit
  def features(x):
    traces.append(1)
    return fbank_lib.kaldi_fbank(x, num_mel_bins=40)

  x = np.stack([_signal(4000, seed=s) for s in range(3)])
  batched = np.asarray(features(x))
  features(x * 0.5).block_until_ready()
  assert len(traces) == 1
  np.testing.assert_allclose(np.asarray(jax.vmap(features)(x)), batched,
                             atol=1e-4)
  np.testing.assert_allclose(np.stack([np.asarray(features(r)) for r in x]),
                             batched, atol=1e-4)
  grad = jax.grad(lambda v: jnp.sum(fbank_lib.ast_features(v)))(
      jnp.asarray(x[0]))
  assert np.all(np.isfinite(np.asarray(grad))) and np.any(np.asarray(grad))
  silent = jax.grad(lambda v: jnp.sum(fbank_lib.kaldi_fbank(v)))(
      jnp.zeros(4000))
  assert np.all(np.isfinite(np.asarray(silent)))


def test_user_errors_are_explained():
  with pytest.raises(ValueError, match="dither"):
    fbank_lib.kaldi_fbank(_signal(), dither=1.0)
  with pytest.raises(ValueError, match="fewer than one"):
    fbank_lib.kaldi_fbank(_signal(300))
  with pytest.raises(ValueError, match="window_type"):
    fbank_lib.kaldi_fbank(_signal(), window_type="hann")
