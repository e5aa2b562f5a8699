"""Tests for PosCUDA: the filters and their documented choices, protection, the secret file (the
protect and evaluation jobs are in test_poscuda_jobs.py)."""

import json
import os
import stat
import zipfile

import jax
import numpy as np
import pytest

from jaxtag import poscuda, secrets
from jaxtag.audio import metrics
from jaxtag.taggants import keyfile
from jaxtag.taggants import keys as keys_lib

C = 6
SPEC = poscuda.PoscudaSpec(clip_samples=4000)  # 80 taps, 240-sample patch, raw U(0, 0.3) taps.
NAMES = tuple(f"class{i}" for i in range(C))


def _clips(n=12, seed=0, scale=0.05):
  """Quiet noise clips: raw b=0.3 taps (gain ~12) stay far from clipping."""
  r = np.random.default_rng(seed)
  return (scale * r.standard_normal((n, SPEC.clip_samples))).astype(np.float32), \
      (np.arange(n) % C).astype(np.int32)


@pytest.fixture(scope="module")
def secret():
  return poscuda.make_filters(jax.random.key(0), SPEC, C)


# --- spec and filters -------------------------------------------------------------------------


@pytest.mark.parametrize("field,value", [
    ("num_taps", 0), ("blur", 0.0), ("blur", float("inf")), ("patch_samples", 2.5),
    ("use_positions", 1), ("normalisation", "max"), ("center_tap", -1.0), ("clip_samples", 100),
])
def test_spec_rejects_bad_field_naming_it(field, value):
  with pytest.raises(ValueError, match=field if field != "clip_samples" else "patch"):
    poscuda.PoscudaSpec(**{field: value})


def test_spec_scales_taps_and_patch_with_the_sample_rate():
  assert (SPEC.taps, SPEC.patch) == (80, 240)          # the paper's numbers at 16 kHz
  spec8k = poscuda.PoscudaSpec(sample_rate=8000, clip_samples=8000)
  assert (spec8k.taps, spec8k.patch) == (40, 120)      # same 5 ms / 15 ms
  spec44k = poscuda.PoscudaSpec(sample_rate=44100, clip_samples=44100)
  assert (spec44k.taps, spec44k.patch) == (220, 662)
  assert poscuda.make_filters(jax.random.key(0), spec8k, 3).filters.shape == (3, 40)
  assert poscuda.PoscudaSpec.from_dict(json.loads(json.dumps(spec44k.to_dict()))) == spec44k
  with pytest.raises(ValueError, match="no field"):
    poscuda.PoscudaSpec.from_dict({"taps": 3})


def test_filters_are_deterministic_from_the_key_and_differ_for_another(secret):
  again = poscuda.make_filters(jax.random.key(0), SPEC, C)
  other = poscuda.make_filters(jax.random.key(1), SPEC, C)
  np.testing.assert_array_equal(np.asarray(again.filters), np.asarray(secret.filters))
  np.testing.assert_array_equal(np.asarray(again.positions), np.asarray(secret.positions))
  assert not np.allclose(np.asarray(other.filters), np.asarray(secret.filters))
  assert not np.array_equal(np.asarray(other.positions), np.asarray(secret.positions))


def test_raw_taps_are_uniform_zero_to_b_and_positions_keep_the_patch_inside():
  spec = poscuda.PoscudaSpec(clip_samples=4000)
  many = poscuda.make_filters(jax.random.key(3), spec, 200)
  taps = np.asarray(many.filters)
  assert taps.min() >= 0.0 and taps.max() < 0.3
  assert abs(taps.mean() - 0.15) < 0.005                 # U(0, b): mean b / 2 (16,000 taps)
  assert abs(taps.std() - 0.3 / np.sqrt(12)) < 0.005     # and std b / sqrt(12)
  np.testing.assert_allclose(taps.sum(1).mean(), 80 * 0.15, rtol=0.02)  # DC gain ~40 b
  pos = np.asarray(many.positions)
  assert pos.min() >= 0 and pos.max() <= 4000 - 240
  assert pos.min() < 500 and pos.max() > 3000            # spread over the clip, not one spot


def test_position_window_bounds_the_draws_and_survives_a_json_round_trip():
  spec = poscuda.PoscudaSpec(clip_samples=4000, position_window=[1000, 1200])
  assert spec.position_window == (1000, 1200) and spec.starts == (1000, 1200)
  assert poscuda.PoscudaSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
  pos = np.asarray(poscuda.make_filters(jax.random.key(3), spec, 200).positions)
  assert pos.min() >= 1000 and pos.max() <= 1200
  assert pos.min() < 1020 and pos.max() > 1180           # the whole window is used
  assert poscuda.PoscudaSpec(clip_samples=4000).starts == (0, 4000 - 240)
  for bad in [(0, 3761), (-1, 10), (20, 10), (1.5, 10), (1, 2, 3)]:
    with pytest.raises(ValueError, match="position_window"):
      poscuda.PoscudaSpec(clip_samples=4000, position_window=bad)


def test_active_window_finds_where_the_clips_carry_sound():
  r = np.random.default_rng(0)
  clips = 1e-4 * r.standard_normal((40, 4000))
  onsets = r.integers(1500, 2001, size=40)               # a 500-sample "word" starting at 1500-2000
  for clip, onset in zip(clips, onsets):
    clip[onset:onset + 500] += 0.3 * r.standard_normal(500)
  first, last = poscuda.active_window(clips.astype(np.float32), 240, level=0.5, chunk=7)
  # Starts whose patch overlaps the words in most clips: inside [1500 - 240, 2500], not the edges.
  assert 1300 <= first <= 1800 and 1900 <= last <= 2400, (first, last)
  narrow = poscuda.active_window(clips, 240, level=0.9)
  assert first <= narrow[0] <= narrow[1] <= last         # a higher level keeps fewer starts
  assert poscuda.active_window(clips, 240, level=1.0)[0] == poscuda.active_window(
      clips, 240, level=1.0)[1]
  with pytest.raises(ValueError, match="silent"):
    poscuda.active_window(np.zeros((3, 4000)), 240)
  with pytest.raises(ValueError, match="level"):
    poscuda.active_window(clips, 240, level=0.0)
  with pytest.raises(ValueError, match="patch"):
    poscuda.active_window(clips, 5000)


def test_blur_only_scales_the_draws_and_positions_ignore_it(secret):
  low = poscuda.make_filters(jax.random.key(0), poscuda.PoscudaSpec(blur=0.01, clip_samples=4000), C)
  np.testing.assert_allclose(np.asarray(secret.filters), 30 * np.asarray(low.filters), rtol=1e-5)
  np.testing.assert_array_equal(np.asarray(low.positions), np.asarray(secret.positions))
  nopos = poscuda.make_filters(jax.random.key(0), poscuda.PoscudaSpec(
      use_positions=False, clip_samples=4000), C)
  np.testing.assert_array_equal(np.asarray(nopos.positions), 0)
  np.testing.assert_array_equal(np.asarray(nopos.filters), np.asarray(secret.filters))


def test_normalisation_choices():
  def make(**kw):
    return np.asarray(poscuda.make_filters(jax.random.key(0), poscuda.PoscudaSpec(
        clip_samples=4000, **kw), C).filters)
  summed = make(normalisation="sum")
  np.testing.assert_allclose(summed.sum(1), 1.0, rtol=1e-6)
  # Without a centre tap, any rescaling cancels b: the documented reason for the other choices.
  np.testing.assert_allclose(make(normalisation="sum", blur=0.01), summed, rtol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(make(normalisation="l2"), axis=1), 1.0, rtol=1e-6)
  centre = make(normalisation="sum", center_tap=1.0)
  assert np.all(np.argmax(centre, 1) == 39)              # (k - 1) // 2
  kept = centre[:, 39]                                   # share of the identity in the filter
  assert np.all((kept > 0.03) & (kept < 0.15))           # b = 0.3: ~8% of the patch kept
  kept_low = make(normalisation="sum", center_tap=1.0, blur=0.01)[:, 39]
  assert np.all((kept_low > 0.6) & (kept_low < 0.8))     # b = 0.01: ~70% kept


# --- protection -------------------------------------------------------------------------------


def test_only_the_patch_changes_and_it_is_the_same_convolution(secret):
  x, y = _clips()
  out = np.asarray(poscuda.apply_poscuda(x, y, secret))
  filters, positions = np.asarray(secret.filters), np.asarray(secret.positions)
  for i in range(len(x)):
    start = positions[y[i]]
    outside = np.ones(x.shape[1], bool)
    outside[start:start + 240] = False
    np.testing.assert_array_equal(out[i][outside], x[i][outside])  # bit-identical
    golden = np.convolve(x[i].astype(np.float64), filters[y[i]], mode="same")[start:start + 240]
    np.testing.assert_allclose(out[i][start:start + 240], golden, atol=1e-5)
    assert np.count_nonzero(out[i] != x[i]) > 200


def test_clipping_stays_inside_the_patch(secret):
  x, y = _clips(scale=0.5)                      # gain ~12 saturates the patch
  x = np.clip(x, -0.9, 0.9)
  out = np.asarray(poscuda.apply_poscuda(x, y, secret))
  assert out.max() <= 1.0 and out.min() >= -1.0 and np.any(np.abs(out) == 1.0)
  for i in range(len(x)):
    start = int(np.asarray(secret.positions)[y[i]])
    changed = np.flatnonzero(out[i] != x[i])
    assert changed.min() >= start and changed.max() < start + 240


def test_without_positions_the_whole_clip_is_filtered():
  spec = poscuda.PoscudaSpec(use_positions=False, normalisation="sum", clip_samples=4000)
  secret = poscuda.make_filters(jax.random.key(0), spec, C)
  x, y = _clips(scale=0.3)
  out = np.asarray(poscuda.apply_poscuda(x, y, secret))
  for i in range(3):
    golden = np.convolve(x[i].astype(np.float64), np.asarray(secret.filters)[y[i]], "same")
    np.testing.assert_allclose(out[i], golden, atol=1e-5)
    assert np.mean(out[i] != x[i]) > 0.99
    # Nonnegative taps summing to 1: a convex combination never exceeds the input's peak.
    assert np.abs(out[i]).max() <= np.abs(x[i]).max() + 1e-6


def test_protection_is_deterministic_per_key_and_compiles_once(secret):
  x, y = _clips(n=10)
  a = poscuda.apply_in_batches(x, y, secret, batch_size=4)
  b = poscuda.apply_in_batches(x[:7], y[:7], secret, batch_size=4)
  np.testing.assert_array_equal(a[:7], b)
  np.testing.assert_array_equal(a, np.asarray(poscuda.apply_poscuda(x, y, secret)))
  size = poscuda.apply_poscuda._cache_size()
  poscuda.apply_in_batches(x[:5], y[:5], secret, batch_size=4)
  assert poscuda.apply_poscuda._cache_size() == size        # padded batches: no new shape
  other = poscuda.make_filters(jax.random.key(1), SPEC, C)
  assert not np.allclose(poscuda.apply_in_batches(x, y, other, batch_size=4), a)


def test_mismatched_audio_is_refused_with_the_fix(secret):
  x, y = _clips()
  with pytest.raises(ValueError, match="clip_samples"):
    poscuda.apply_in_batches(x[:, :3000], y, secret)
  with pytest.raises(ValueError, match="8000 Hz"):
    poscuda.apply_in_batches(x, y, secret, sample_rate=8000)
  with pytest.raises(ValueError, match="6 classes"):
    poscuda.apply_in_batches(x, y + 3, secret)


def test_attack_is_random_patches_only():
  x, _ = _clips(n=4)
  blurred = np.asarray(poscuda.random_patch_attack(jax.random.key(5), x, num_patches=3))
  again = np.asarray(poscuda.random_patch_attack(jax.random.key(5), x, num_patches=3))
  np.testing.assert_array_equal(blurred, again)
  changed = (blurred != x).sum(1)
  assert np.all(changed > 240) and np.all(changed <= 3 * 240)
  noisy = np.asarray(poscuda.random_patch_attack(jax.random.key(5), x, mode="noise",
                                                 num_patches=3, noise_snr_db=20.0))
  assert np.all(((noisy != x).sum(1) > 240) & ((noisy != x).sum(1) <= 720))


def test_snr_in_batches_equals_the_whole_split_snr(secret):
  x, y = _clips(11)
  protected = poscuda.apply_in_batches(x, y, secret, batch_size=4)
  whole = np.asarray(metrics.snr_db(x, protected))
  chunked = poscuda.snr_in_batches(x, protected, batch_size=4)   # 4 + 4 + 3 (padded) clips
  assert chunked.shape == (11,) and np.all(np.isfinite(chunked))
  np.testing.assert_allclose(chunked, whole, rtol=1e-6)
  assert np.all(chunked < 60)   # every clip was changed


def test_frechet_distance_golden():
  r = np.random.default_rng(0)
  a = r.standard_normal((400, 5)) @ r.standard_normal((5, 5))
  shift = np.array([1.0, -2.0, 0.5, 0.0, 3.0])
  assert metrics.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
  # Equal covariances: the distance is the squared distance of the means.
  assert metrics.frechet_distance(a, a + shift) == pytest.approx(np.sum(shift ** 2), rel=1e-6)
  # 1-D: (mu_a - mu_b)^2 + (sigma_a - sigma_b)^2.
  u, v = r.standard_normal((3000, 1)), 2.0 * r.standard_normal((3000, 1)) + 1.0
  expected = (u.mean() - v.mean()) ** 2 + (u.std(ddof=1) - v.std(ddof=1)) ** 2
  assert metrics.frechet_distance(u, v) == pytest.approx(expected, rel=1e-6)


# --- the secret file --------------------------------------------------------------------------


@pytest.fixture
def secret_file(tmp_path, secret):
  path = tmp_path / "secret" / "poscuda.npz"
  poscuda.save_filters(path, secret, class_names=NAMES,
                       provenance=poscuda.filter_provenance(jax.random.key(0), seed=0))
  return path


def test_secret_file_round_trip_is_private_and_auditable(secret_file, secret):
  assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
  loaded, manifest = poscuda.load_filters(secret_file, expected_class_names=NAMES)
  np.testing.assert_array_equal(loaded.filters, np.asarray(secret.filters))
  np.testing.assert_array_equal(loaded.positions, np.asarray(secret.positions))
  assert loaded.spec == SPEC and manifest["format"] == "jaxtag-poscuda"
  poscuda.regenerate_and_check(loaded, manifest)
  x, y = _clips()
  np.testing.assert_array_equal(np.asarray(poscuda.apply_poscuda(x, y, loaded)),
                                np.asarray(poscuda.apply_poscuda(x, y, secret)))
  with pytest.raises(secrets.SecretFileError, match="already exists"):
    poscuda.save_filters(secret_file, secret, class_names=NAMES, provenance={})


def _rewrite_member(path, name, edit):
  with zipfile.ZipFile(path) as zf:
    members = {n: zf.read(n) for n in zf.namelist()}
  members[name] = edit(members[name])
  with zipfile.ZipFile(path, "w") as zf:
    for n, data in members.items():
      zf.writestr(n, data)


def test_secret_file_tampering_is_caught_and_named(secret_file):
  _rewrite_member(secret_file, "filters.npy", lambda b: b[:-4] + bytes(4))
  with pytest.raises(secrets.SecretFileError, match="'filters' was modified"):
    poscuda.load_filters(secret_file)


def test_secret_file_manifest_edit_and_wrong_classes_are_caught(secret_file, tmp_path):
  def lower_blur(b):
    manifest = json.loads(b)
    manifest["spec"]["blur"] = 0.01
    return json.dumps(manifest).encode()
  copy = tmp_path / "copy.npz"
  copy.write_bytes(secret_file.read_bytes())
  os.chmod(copy, 0o600)
  with pytest.raises(secrets.SecretFileError, match="other classes"):
    poscuda.load_filters(copy, expected_class_names=NAMES[::-1])
  _rewrite_member(secret_file, "manifest.json", lower_blur)
  with pytest.raises(secrets.SecretFileError, match="fingerprint"):
    poscuda.load_filters(secret_file)


def test_secret_file_refuses_dataset_folder_and_foreign_files(tmp_path, secret):
  dataset = tmp_path / "dataset"
  dataset.mkdir()
  with pytest.raises(secrets.SecretFileError, match="inside the dataset"):
    poscuda.save_filters(dataset / "sub" / "poscuda.npz", secret, class_names=NAMES,
                         provenance={}, dataset_root=dataset)
  not_zip = tmp_path / "x.npz"
  not_zip.write_bytes(b"not a zip")
  os.chmod(not_zip, 0o600)
  with pytest.raises(secrets.SecretFileError, match="not a readable zip"):
    poscuda.load_filters(not_zip)
  other = poscuda.make_filters(jax.random.key(9), SPEC, C)
  forged = tmp_path / "forged.npz"
  poscuda.save_filters(forged, other, class_names=NAMES,
                       provenance=poscuda.filter_provenance(jax.random.key(0)))
  loaded, manifest = poscuda.load_filters(forged)
  with pytest.raises(secrets.SecretFileError, match="does not reproduce"):
    poscuda.regenerate_and_check(loaded, manifest)


def test_secret_file_and_taggant_key_file_refuse_each_other(secret_file, tmp_path):
  """Both are secret archives of jaxtag.secrets; the manifest's format tag keeps them apart."""
  key_spec = keys_lib.KeySpec(num_keys=2, d=4, clip_samples=2000, n_fft=128, win_length=128,
                              hop_length=64, n_mels=16, mel_inversion_iters=2,
                              griffin_lim_iters=1)
  key_file = tmp_path / "keys.npz"
  keyfile.save_keys(key_file, keys_lib.make_keys(jax.random.key(0), key_spec, C),
                    class_names=NAMES, provenance={})
  with pytest.raises(secrets.SecretFileError,
                     match=r"PosCUDA secret file .*keys\.npz.*'jaxtag-keys', not 'jaxtag-poscuda'"):
    poscuda.load_filters(key_file)
  with pytest.raises(secrets.SecretFileError,
                     match=r"key file .*poscuda\.npz.*'jaxtag-poscuda', not 'jaxtag-keys'"):
    keyfile.load_keys(secret_file)


def test_readable_secret_file_warns_at_the_callers_line(secret_file):
  os.chmod(secret_file, 0o644)
  with pytest.warns(secrets.SecretFilePermissionWarning, match="chmod 600") as record:
    poscuda.load_filters(secret_file)
  assert record[0].filename == __file__
  with pytest.raises(secrets.SecretFileError, match="0o644.*secret filters"):
    poscuda.load_filters(secret_file, strict_permissions=True)


def test_secret_file_keeps_the_position_window_and_refuses_positions_outside_it(tmp_path):
  spec = poscuda.PoscudaSpec(clip_samples=4000, position_window=(1000, 1100))
  secret = poscuda.make_filters(jax.random.key(0), spec, C)
  path = poscuda.save_filters(tmp_path / "w.npz", secret, class_names=NAMES,
                              provenance=poscuda.filter_provenance(jax.random.key(0)))
  loaded, manifest = poscuda.load_filters(path)
  assert loaded.spec == spec
  poscuda.regenerate_and_check(loaded, manifest)
  outside = poscuda.PoscudaFilters(filters=np.asarray(secret.filters),
                                   positions=np.full((C,), 2000, np.int32), spec=spec)
  poscuda.save_filters(tmp_path / "bad.npz", outside, class_names=NAMES, provenance={})
  with pytest.raises(secrets.SecretFileError, match=r"outside \[1000, 1100\]"):
    poscuda.load_filters(tmp_path / "bad.npz")
