"""jaxtag.train.augment: each augmentation does what it says, per key, deterministically."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from jaxtag.train import augment

B, T = 16, 800


def _waves(seed=0, batch=B, length=T):
  return jnp.asarray(np.random.default_rng(seed).standard_normal((batch, length)), jnp.float32)


def _differs(fn):
  """fn(key) is deterministic per key and differs between keys."""
  a, b = fn(jax.random.key(1)), fn(jax.random.key(1))
  c = fn(jax.random.key(2))
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert not np.array_equal(np.asarray(a), np.asarray(c))


def test_circular_shift_is_a_roll_within_range_and_keeps_energy():
  x = _waves()
  y = np.asarray(augment.time_shift(jax.random.key(0), x, max_shift=40, mode="circular"))
  x = np.asarray(x)
  np.testing.assert_allclose((y**2).sum(1), (x**2).sum(1), rtol=1e-6)
  shifts = []
  for row_x, row_y in zip(x, y):
    found = [s for s in range(-40, 41) if np.array_equal(np.roll(row_x, s), row_y)]
    assert len(found) == 1
    shifts.append(found[0])
  assert len(set(shifts)) > 4  # Per-clip shifts, not one for the batch.


def test_zero_shift_fills_silence_where_audio_shifted_in():
  x = np.asarray(_waves())
  y = np.asarray(augment.time_shift(jax.random.key(0), jnp.asarray(x), max_shift=40, mode="zero"))
  for row_x, row_y in zip(x, y):
    s = next(s for s in range(-40, 41)
             if np.array_equal(np.roll(row_x, s)[max(s, 0):T + min(s, 0)],
                               row_y[max(s, 0):T + min(s, 0)]))
    zeros = row_y[:s] if s > 0 else row_y[T + s:]
    np.testing.assert_array_equal(zeros, 0.0)


def test_shift_deterministic_per_key():
  x = _waves()
  _differs(lambda k: augment.time_shift(k, x, max_shift=100))


def test_gain_is_one_factor_per_clip_within_range():
  x = _waves()
  y = np.asarray(augment.random_gain(jax.random.key(3), x, max_db=6.0))
  ratio = y / np.asarray(x)
  np.testing.assert_allclose(ratio, ratio[:, :1].repeat(T, 1), rtol=1e-5)
  db = 20 * np.log10(ratio[:, 0])
  assert np.all(np.abs(db) <= 6.0 + 1e-4) and db.std() > 0.5
  _differs(lambda k: augment.random_gain(k, x, max_db=6.0))


def test_noise_snr_in_range_and_silence_stays_silent():
  x = _waves(length=16000).at[0].set(0.0)
  y = augment.add_noise(jax.random.key(4), x, snr_db=(10.0, 20.0))
  noise = np.asarray(y - x)
  np.testing.assert_array_equal(noise[0], 0.0)
  snr = 10 * np.log10((np.asarray(x[1:]) ** 2).sum(1) / (noise[1:] ** 2).sum(1))
  # 16000 Gaussian samples estimate the noise power to about +-0.1 dB.
  assert np.all(snr > 10.0 - 0.3) and np.all(snr < 20.0 + 0.3), snr
  assert snr.max() - snr.min() > 2.0  # Drawn per clip.
  np.testing.assert_array_equal(
      np.asarray(augment.add_noise(jax.random.key(4), x, snr_db=(10.0, 20.0), prob=0.0)),
      np.asarray(x))
  _differs(lambda k: augment.add_noise(k, x, snr_db=(10.0, 20.0)))


def test_mixup_mixes_waveforms_and_labels_with_the_same_lambda():
  num_classes = B
  x = _waves()
  labels = jnp.arange(B)  # Distinct labels: each target row reveals lambda and the partner.
  targets = jax.nn.one_hot(labels, num_classes)
  mixed, mixed_t = augment.mixup(jax.random.key(5), x, targets, alpha=0.4)
  mixed, mixed_t, x = np.asarray(mixed), np.asarray(mixed_t), np.asarray(x)
  np.testing.assert_allclose(mixed_t.sum(1), 1.0, rtol=1e-6)
  partnered = 0
  for i in range(B):
    lam = mixed_t[i, i]
    others = np.delete(np.arange(B), i)
    j = others[np.argmax(mixed_t[i, others])]
    if lam > 1 - 1e-6:  # Partnered with itself.
      np.testing.assert_allclose(mixed[i], x[i], atol=1e-6)
      continue
    partnered += 1
    np.testing.assert_allclose(mixed_t[i, j], 1 - lam, atol=1e-6)
    np.testing.assert_allclose(mixed[i], lam * x[i] + (1 - lam) * x[j], atol=1e-5)
  assert partnered >= B // 2
  _differs(lambda k: augment.mixup(k, jnp.asarray(x), targets, alpha=0.4)[1])


@settings(max_examples=25, deadline=None)
@given(size=st.integers(5, 60), max_width=st.integers(0, 70), num=st.integers(1, 3),
       seed=st.integers(0, 2**30))
def test_band_masks_are_at_most_num_bands_of_at_most_max_width(size, max_width, num, seed):
  masks = np.asarray(augment.band_masks(jax.random.key(seed), 8, size, max_width=max_width,
                                        num_masks=num))
  assert masks.shape == (8, size)
  for row in masks:
    runs = np.diff(np.concatenate([[0], row.astype(int), [0]]))
    starts, ends = np.flatnonzero(runs == 1), np.flatnonzero(runs == -1)
    assert len(starts) <= num
    # Overlapping bands merge; the union is at most num * max_width wide.
    assert row.sum() <= num * min(max_width, size)
    if num == 1 and len(starts):
      assert ends[0] - starts[0] <= min(max_width, size)


def test_band_mask_widths_cover_zero_to_max():
  masks = np.asarray(augment.band_masks(jax.random.key(0), 4000, 50, max_width=7, num_masks=1))
  widths = masks.sum(1)
  assert set(np.unique(widths)) == set(range(8))  # Every width in [0, 7], nothing wider.


def test_spec_augment_masks_whole_bands_with_the_clip_mean():
  feats = jnp.asarray(np.random.default_rng(0).standard_normal((6, 40, 32)) + 5.0, jnp.float32)
  out = np.asarray(augment.spec_augment(jax.random.key(1), feats, freq_mask_width=8,
                                        num_freq_masks=1, time_mask_width=10, num_time_masks=1))
  feats = np.asarray(feats)
  for f, o in zip(feats, out):
    changed = o != f
    fill = f.mean()
    np.testing.assert_allclose(o[changed], fill, rtol=1e-5)
    bins = np.flatnonzero(changed.all(axis=0))     # Frequency bands: every frame.
    frames = np.flatnonzero(changed.all(axis=1))   # Time bands: every bin.
    assert len(bins) <= 8 and len(frames) <= 10
    # Every changed cell lies in a masked bin or a masked frame.
    expected = np.zeros_like(changed)
    expected[:, bins] = True
    expected[frames, :] = True
    np.testing.assert_array_equal(changed, expected)
  _differs(lambda k: augment.spec_augment(k, jnp.asarray(feats), freq_mask_width=8,
                                          time_mask_width=10))


def test_augment_hooks_identity_when_off_and_jit_equals_eager():
  x = _waves()
  t = jax.nn.one_hot(jnp.arange(B) % 4, 4)
  off = augment.AugmentConfig()
  y, ty = augment.augment_waveforms(jax.random.key(0), x, t, off, sample_rate=8000)
  np.testing.assert_array_equal(np.asarray(y), np.asarray(x))
  np.testing.assert_array_equal(np.asarray(ty), np.asarray(t))
  assert not off.uses_features
  on = augment.AugmentConfig(max_shift_seconds=0.01, shift_mode="zero", max_gain_db=3,
                             noise_snr_db=(5, 30), noise_prob=0.5, mixup_alpha=0.3,
                             freq_mask_width=3, time_mask_width=4)
  fn = lambda k: augment.augment_waveforms(k, x, t, on, sample_rate=8000)
  eager, jitted = fn(jax.random.key(7)), jax.jit(fn)(jax.random.key(7))
  for a, b in zip(eager, jitted):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
  feats = x.reshape(B, 40, 20)
  np.testing.assert_array_equal(np.asarray(augment.augment_features(jax.random.key(0), feats, off)),
                                np.asarray(feats))


@pytest.mark.parametrize("bad", [dict(shift_mode="wrap"), dict(max_gain_db=-1.0),
                                 dict(noise_snr_db=(20.0, 10.0)), dict(noise_prob=2.0)])
def test_bad_augment_config_raises(bad):
  with pytest.raises(ValueError, match="AugmentConfig"):
    augment.AugmentConfig(**bad)
