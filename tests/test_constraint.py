"""The STFT-mask constraint: its bound, the alternating projections, the exact 16-bit export, and
the settings that choose it (the SNR ball's own tests are in test_craft.py)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtag.taggants import constraint, craft

MASK = constraint.StftMask(n_fft=256, hop_length=64)   # short frames: short test clips
LSB = 1.0 / 32768


def _grid(x):
  return (np.round(np.clip(x, -1, 32767 / 32768) * 32768) / 32768).astype(np.float32)


def _clips(length=2048, seed=0):
  """A tone that starts half-way in noise, white noise, near-silence (a few 16-bit steps of
  noise), digital silence, and a clip at full scale (where the export's range clips)."""
  r = np.random.default_rng(seed)
  t = np.arange(length) / 8000
  tone = 0.3 * np.sin(2 * np.pi * 440 * t) * (t > t[length // 2]) + 0.01 * r.standard_normal(length)
  noise = 0.1 * r.standard_normal(length)
  quiet = 3 * LSB * r.standard_normal(length)
  loud = np.clip(1.2 * np.sin(2 * np.pi * 200 * t), -1, 1)
  return _grid(np.stack([tone, noise, quiet, np.zeros(length), loud]))


def _stft64(x, mask):
  """float64 numpy STFT with the mask's geometry (centred, zero padding): an independent check."""
  window = np.asarray(jax.device_get(
      jnp.asarray(constraint.spectral.get_window(mask.window, mask.n_fft, mask.n_fft))),
      np.float64)
  pad = mask.n_fft // 2
  x = np.pad(np.asarray(x, np.float64), [(0, 0)] * (x.ndim - 1) + [(pad, pad)])
  count = 1 + (x.shape[-1] - mask.n_fft) // mask.hop_length
  idx = np.arange(count)[:, None] * mask.hop_length + np.arange(mask.n_fft)
  return np.fft.rfft(x[..., idx] * window, axis=-1)


def test_bound_is_mask_db_under_the_clip_with_the_floor_in_dbfs():
  x = _clips()
  bound = np.asarray(constraint.mask_bound(jnp.asarray(x), MASK))
  level = np.abs(_stft64(x, MASK)) * 10 ** (-MASK.mask_db / 20)
  np.testing.assert_allclose(bound, np.maximum(level, MASK.floor), rtol=1e-4, atol=1e-6)
  assert np.all(bound[3] == np.float32(MASK.floor))                 # digital silence: the floor
  # 0 dBFS is a full-scale sine's peak bin: its bound is mask_db under 0 dBFS.
  t = np.arange(2048)
  sine = np.sin(2 * np.pi * 16 * t / MASK.n_fft)[None]              # exactly on bin 16
  peak = np.asarray(constraint.mask_bound(jnp.asarray(sine, jnp.float32), MASK))[0, 4:-4, 16]
  np.testing.assert_allclose(20 * np.log10(peak / MASK.full_scale), -MASK.mask_db, atol=1e-3)
  assert MASK.full_scale == pytest.approx(MASK.n_fft / 4)           # hann: sum(w) / 2
  assert 20 * np.log10(MASK.floor / MASK.full_scale) == pytest.approx(MASK.floor_db)


def test_projection_never_increases_the_violation_and_converges():
  x = jnp.asarray(_clips()[:3])
  bound = constraint.mask_bound(x, MASK)
  delta = 0.02 * jax.random.normal(jax.random.key(0), x.shape)
  excess = [np.asarray(constraint.mask_excess(delta, bound, MASK))]
  d = delta
  for _ in range(48):
    d = constraint.project_mask(d, bound, MASK, iterations=1)
    excess.append(np.asarray(constraint.mask_excess(d, bound, MASK)))
  excess = np.stack(excess)
  assert np.all(excess[0] > 1.0)                                    # far outside to start
  assert np.all(np.diff(excess, axis=0) <= 1e-5 * excess[0]), excess  # never increases
  assert np.all(excess[-1] < 0.01 * excess[0]), excess[[0, -1]]
  # Many rounds end within a fraction of a dB of the bound in every bin.
  far = constraint.project_mask(delta, bound, MASK, iterations=400)
  assert np.all(np.asarray(constraint.mask_margin_db(far, bound, MASK)) < 0.5)
  # The rounds are the ones the default `iterations` runs.
  np.testing.assert_allclose(np.asarray(constraint.project_mask(delta, bound, MASK)),
                             np.asarray(constraint.project_mask(delta, bound, MASK, iterations=4)))
  # A perturbation that holds the bound is a fixed point.
  inside = far * 0.5
  np.testing.assert_allclose(np.asarray(constraint.project_mask(inside, bound, MASK)),
                             np.asarray(inside), atol=1e-6)


def test_project_under_the_mask_keeps_the_box_and_gives_silence_nothing():
  x = jnp.asarray(_clips())
  scale = constraint.snr_scale(x, MASK.mask_db)
  u = 3.0 * jax.random.normal(jax.random.key(1), x.shape)
  p = np.asarray(constraint.project(u, x, scale, mask=MASK))
  delta = p * np.asarray(scale)[:, None]
  assert np.all(np.abs(np.asarray(x) + delta) <= 1 + 1e-6)
  assert np.all(p[3] == 0)                                          # silent: scale 0
  bound = constraint.mask_bound(x, MASK)
  before = np.asarray(constraint.mask_excess(u * scale[:, None], bound, MASK))
  after = np.asarray(constraint.mask_excess(jnp.asarray(delta), bound, MASK))
  assert np.all(after[:3] < 0.5 * before[:3])
  # Without a mask it is the SNR ball, as before.
  ball = np.asarray(constraint.project(u, x, scale))
  assert np.all(np.sqrt(np.mean(ball**2, -1)) <= 1 + 1e-5)


@pytest.mark.parametrize("size", [1e-4, 3e-3, 0.05])
def test_export_holds_the_bound_exactly_on_the_16_bit_clips(size):
  x = _clips(seed=2)
  r = np.random.default_rng(3)
  raw = size * r.standard_normal(x.shape).astype(np.float32)
  bound = constraint.mask_bound(jnp.asarray(x), MASK)
  crafted = np.asarray(constraint.project_mask(jnp.asarray(raw), bound, MASK, iterations=400))
  for delta in (raw, crafted):
    q = np.asarray(constraint.quantize_under_mask(jnp.asarray(x), jnp.asarray(delta), MASK))
    np.testing.assert_array_equal(q * 32768, np.round(q * 32768))  # on the 16-bit grid
    exported = x + q
    assert np.all(exported >= -1) and np.all(exported <= 32767 / 32768)
    # Independent float64 measurement of the exported perturbation: never above the bound.
    ratio = np.abs(_stft64(q, MASK)) / (np.asarray(bound, np.float64))
    assert np.all(ratio <= 1.0), 20 * np.log10(ratio.max(axis=(-2, -1)))
    assert np.all(np.asarray(constraint.mask_margin_db(jnp.asarray(q), bound, MASK)) <= 0)
  # Nothing is thrown away needlessly: a perturbation brought close to the bound keeps most of
  # its energy on the clips that can carry one (the tone, the noise; at full scale the range
  # clips the perturbation into harmonics that the bound may not allow).
  keep = np.sum(q.astype(np.float64)**2, -1) / np.sum(crafted.astype(np.float64)**2, -1)
  if size > 1e-3:
    assert np.all(keep[:2] > 0.5), keep


def test_export_of_a_perturbation_under_the_bound_is_its_rounding():
  x = _clips(seed=4)[:2]
  bound = constraint.mask_bound(jnp.asarray(x), MASK)
  delta = 0.003 * jax.random.normal(jax.random.key(5), x.shape)
  # ~20 dB inside: also inside the export's rounding headroom, where its refinement is a no-op.
  delta = 0.1 * constraint.project_mask(delta, bound, MASK, iterations=400)
  q = np.asarray(constraint.quantize_under_mask(jnp.asarray(x), delta, MASK))
  rounded = np.round(np.asarray(delta) * 32768) / 32768
  assert np.any(rounded != 0)
  # Up to float error of the refinement's round trip: a sample within ~1e-11 of half a step may
  # round the other way.
  assert np.sum(q != rounded) <= 2 and np.max(np.abs(q - rounded)) <= LSB


@pytest.mark.parametrize("field,value", [
    ("constraint", "perceptual"), ("mask_db", -3.0), ("mask_db", float("nan")),
    ("mask_floor_db", 6.0), ("mask_n_fft", 1), ("mask_hop_length", 0),
    ("mask_hop_length", 300), ("mask_window", "triangle"), ("mask_iterations", -1)])
def test_mask_settings_are_checked_and_the_error_names_the_option(field, value):
  with pytest.raises(ValueError, match=rf"CraftConfig\.{field}\b"):
    craft.CraftConfig(**{"constraint": "stft_mask", field: value})


def test_the_config_chooses_the_constraint_and_the_unit():
  snr = craft.CraftConfig(snr_db=50.0)
  assert snr.stft_mask() is None and snr.unit_db == 50.0
  mask = craft.CraftConfig(constraint="stft_mask", mask_db=15.0, mask_floor_db=-90.0,
                           mask_n_fft=256, mask_hop_length=32, mask_window="hamming",
                           mask_iterations=2)
  assert mask.unit_db == 15.0
  assert mask.stft_mask() == constraint.StftMask(15.0, -90.0, 256, 32, "hamming", 2)


def test_launch_config_mirrors_craft_config_and_builds_the_mask():
  from jaxtag import config as config_lib
  from jaxtag.taggants import jobs
  from launch.configs import craft as craft_configs
  fields = {f.name for f in dataclasses.fields(craft.CraftConfig)}
  assert set(craft_configs.get_config("default").craft.keys()) == fields
  defaults = craft.CraftConfig()
  config = craft_configs.get_config("tiny")
  for f in fields - {"augment", "steps", "restarts"}:
    assert tuple(np.ravel(config.craft[f])) == tuple(np.ravel(getattr(defaults, f))) or (
        config.craft[f] == getattr(defaults, f)), f
  config.craft.constraint = "stft_mask"
  config.craft.mask_db = 25.0
  built = config_lib.from_config(jobs.CraftJob, config).craft
  assert built.stft_mask() == dataclasses.replace(constraint.StftMask(), mask_db=25.0)


def test_the_projection_stays_on_each_devices_poisons(num_devices):
  """Under the craft's sharding (poisons split over devices, in the middle axis) the compiled
  projection gathers nothing: an FFT there would be all-gathered by XLA's partitioner."""
  if num_devices < 8:
    pytest.skip("needs 8 (fake) devices")
  from jaxtag import sharding
  mesh = sharding.make_mesh(8)
  spec = jax.sharding.PartitionSpec(None, mesh.axis_names[0], None)
  split = jax.sharding.NamedSharding(mesh, spec)
  x = jax.device_put(jnp.asarray(np.tile(_clips()[:2, None], (1, 8, 1))), split)
  scale = constraint.snr_scale(x, MASK.mask_db)
  u = jax.device_put(jax.random.normal(jax.random.key(6), x.shape), split)
  fn = jax.jit(lambda u, x, s: constraint.project(u, x, s, mask=MASK))
  assert "all-gather" not in fn.lower(u, x, scale).compile().as_text()
  sharded = np.asarray(fn(u, x, scale))
  local = np.asarray(constraint.project(np.asarray(u), np.asarray(x), np.asarray(scale), mask=MASK))
  np.testing.assert_allclose(sharded, local, atol=1e-5)
