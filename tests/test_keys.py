"""Tests for jaxtag.taggants.keys and .keyfile: key generation, its audio, and the key file."""

import collections
import dataclasses
import json
import os
import stat

import hypothesis
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile

from jaxtag.taggants import keyfile
from jaxtag.taggants import keys as keys_lib
from jaxtag.audio.mel import mel_spectrogram, power_to_db

# Full mel geometry (1 s at 16 kHz, 128 bins) with fewer keys and Griffin-Lim iterations than the
# default, so the audio checks stay fast while testing the real geometry.
AUDIO_SPEC = keys_lib.KeySpec(num_keys=4, d=16, interpolation="bilinear", griffin_lim_iters=32)
# Small geometry for the file-format tests, which do not depend on audio quality.
SMALL_SPEC = keys_lib.KeySpec(num_keys=3, d=4, clip_samples=2000, n_fft=128, win_length=128,
                              hop_length=64, n_mels=16, mel_inversion_iters=20,
                              griffin_lim_iters=4)
CLASS_NAMES = ("yes", "no", "up", "down", "left")
# Measured: r = 0.995 for every key of AUDIO_SPEC, seeds 0-1 (the default d = 64 nearest spec
# gives 0.80-0.82: single-frame, single-band detail is finer than a 400-sample window resolves).
MIN_PEARSON_R = 0.98


@pytest.fixture(scope="module")
def audio_keys():
  return keys_lib.make_keys(jax.random.key(0), AUDIO_SPEC, 35)


@pytest.fixture(scope="module")
def small_keys():
  return keys_lib.make_keys(jax.random.key(1), SMALL_SPEC, len(CLASS_NAMES))


@pytest.fixture
def key_file(tmp_path, small_keys):
  path = tmp_path / "secret" / "keys.npz"
  keyfile.save_keys(path, small_keys, class_names=CLASS_NAMES,
                    provenance=keys_lib.key_provenance(jax.random.key(1), seed=1))
  return path


# --- KeySpec --------------------------------------------------------------------------------


@pytest.mark.parametrize("field,value", [
    ("num_keys", 0), ("d", 2.5), ("distribution", "gaussian"), ("p", 0.0), ("p", 1.5),
    ("interpolation", "cubic"), ("mel_norm", "l2"), ("htk", 1), ("db_range", -3.0),
    ("momentum", 1.5), ("peak_dbfs", 3.0), ("rms_dbfs", float("nan")), ("win_length", 1024),
    ("hop_length", 500), ("n_mels", 300), ("f_max", 9000.0), ("clip_samples", 100),
    ("griffin_lim_iters", True),
])
def test_spec_rejects_bad_field_naming_it(field, value):
  with pytest.raises(ValueError, match=field):
    keys_lib.KeySpec(**{field: value})


def test_spec_dict_round_trip_and_unknown_field():
  spec = keys_lib.KeySpec(d=32, distribution="bernoulli", p=0.3, f_max=7600.0, rms_dbfs=None)
  assert keys_lib.KeySpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
  assert spec.n_frames == 101
  with pytest.raises(ValueError, match="no field.*'dd'"):
    keys_lib.KeySpec.from_dict({"dd": 3})


# --- make_keys --------------------------------------------------------------------------------


def test_shapes_dtypes_and_levels(audio_keys):
  spec = AUDIO_SPEC
  assert audio_keys.spectrograms.shape == (4, 101, 128)
  assert audio_keys.waveforms.shape == (4, 16000)
  assert audio_keys.labels.shape == (4,)
  assert audio_keys.spectrograms.dtype == jnp.float32
  assert audio_keys.waveforms.dtype == jnp.float32
  assert audio_keys.labels.dtype == jnp.int32
  w = np.asarray(audio_keys.waveforms)
  assert np.all(np.isfinite(w)) and np.max(np.abs(w)) <= 1.0
  rms_db = 20 * np.log10(np.sqrt(np.mean(w ** 2, axis=-1)))
  peak_db = 20 * np.log10(np.max(np.abs(w), axis=-1))
  # Each key is at the RMS target unless its peak hit the ceiling first.
  at_rms = np.abs(rms_db - spec.rms_dbfs) < 0.01
  at_peak = np.abs(peak_db - spec.peak_dbfs) < 0.01
  assert np.all(at_rms | at_peak), (rms_db, peak_db)
  s = np.asarray(audio_keys.spectrograms)
  assert s.min() >= -spec.db_range and s.max() <= 0.0


def test_same_key_same_keys_other_key_other_keys(small_keys):
  again = keys_lib.make_keys(jax.random.key(1), SMALL_SPEC, len(CLASS_NAMES))
  other = keys_lib.make_keys(jax.random.key(2), SMALL_SPEC, len(CLASS_NAMES))
  for name in keys_lib.ARRAY_NAMES:
    np.testing.assert_array_equal(getattr(again, name), getattr(small_keys, name))
  assert not np.allclose(other.spectrograms, small_keys.spectrograms)
  assert not np.allclose(other.waveforms, small_keys.waveforms)


def test_parts_equal_their_public_helpers(small_keys):
  k = jax.random.key(1)
  np.testing.assert_array_equal(keys_lib.key_spectrograms(k, SMALL_SPEC), small_keys.spectrograms)
  np.testing.assert_array_equal(keys_lib.key_labels(k, SMALL_SPEC, 5), small_keys.labels)


def test_waveform_mel_matches_target(audio_keys):
  """Griffin-Lim made the target audible: the measured log-mel follows the drawn one."""
  spec = AUDIO_SPEC
  measured = power_to_db(mel_spectrogram(
      audio_keys.waveforms, sample_rate=spec.sample_rate, n_fft=spec.n_fft,
      hop_length=spec.hop_length, win_length=spec.win_length, n_mels=spec.n_mels,
      norm=spec.mel_norm), amin=1e-12)
  target = np.asarray(audio_keys.spectrograms)
  for i in range(spec.num_keys):
    r = np.corrcoef(np.ravel(measured[i]), np.ravel(target[i]))[0, 1]
    assert r > MIN_PEARSON_R, (i, r)
  # A key's audio must not match another key's target (guards against a constant output).
  r_cross = np.corrcoef(np.ravel(measured[0]), np.ravel(target[1]))[0, 1]
  assert abs(r_cross) < 0.3, r_cross


def test_nearest_is_blocky_and_bilinear_is_not():
  base = dict(num_keys=2, d=8)
  k = jax.random.key(3)
  nearest = np.asarray(keys_lib.key_spectrograms(k, keys_lib.KeySpec(**base)))
  bilinear = np.asarray(keys_lib.key_spectrograms(
      k, keys_lib.KeySpec(**base, interpolation="bilinear")))
  for s in nearest:  # Piecewise constant: d distinct frames, d distinct bands, d*d levels.
    assert np.unique(s, axis=0).shape[0] == 8 and np.unique(s, axis=1).shape[1] == 8
    assert len(np.unique(s)) == 64
  for s in bilinear:
    assert len(np.unique(s, axis=0)) > 50 and len(np.unique(s)) > 1000
  # Same draws underneath: the two grids agree on average.
  assert abs(nearest.mean() - bilinear.mean()) < 1.0


def test_bernoulli_masks_the_uniform_draw():
  k = jax.random.key(4)
  uniform_spec = keys_lib.KeySpec(num_keys=4, d=32)
  bern_spec = keys_lib.KeySpec(num_keys=4, d=32, distribution="bernoulli", p=0.3)
  uniform = np.asarray(keys_lib.key_spectrograms(k, uniform_spec))
  bern = np.asarray(keys_lib.key_spectrograms(k, bern_spec))
  floor = bern == -bern_spec.db_range
  np.testing.assert_array_equal(bern[~floor], uniform[~floor])
  assert 0.62 < floor.mean() < 0.78  # 1 - p = 0.7 of the cells masked, 4096 cells.
  # The mask is independent of the values (its own stream): kept levels still span [0, 1].
  kept = 1.0 + bern[~floor] / bern_spec.db_range
  assert abs(kept.mean() - 0.5) < 0.05, kept.mean()


def test_labels_distinct_when_keys_fit_in_classes(audio_keys):
  labels = np.asarray(audio_keys.labels)
  assert len(set(labels.tolist())) == 4 and labels.min() >= 0 and labels.max() < 35


def test_labels_balanced_when_more_keys_than_classes():
  spec = keys_lib.KeySpec(num_keys=23)
  labels = np.asarray(keys_lib.key_labels(jax.random.key(5), spec, 5))
  counts = collections.Counter(labels.tolist())
  assert sorted(counts) == [0, 1, 2, 3, 4]
  assert sorted(counts.values()) == [4, 4, 5, 5, 5]


# Each example compiles twice (~0.6 CPU-s each on 2 cores), hence few examples.
@hypothesis.settings(max_examples=6, deadline=None)
@hypothesis.given(num_keys=st.integers(1, 12), d=st.integers(1, 12),
                  num_classes=st.integers(1, 15), seed=st.integers(0, 2 ** 31 - 1))
def test_property_small_specs(num_keys, d, num_classes, seed):
  spec = keys_lib.KeySpec(num_keys=num_keys, d=d, clip_samples=1600, n_fft=128, win_length=128,
                          hop_length=64, n_mels=12)
  k = jax.random.key(seed)
  labels = np.asarray(keys_lib.key_labels(k, spec, num_classes))
  s = np.asarray(keys_lib.key_spectrograms(k, spec))
  assert labels.shape == (num_keys,) and labels.min() >= 0 and labels.max() < num_classes
  counts = np.bincount(labels, minlength=num_classes)
  assert counts.max() - counts.min() <= 1  # Distinct when K <= C, balanced otherwise.
  assert s.shape == (num_keys, spec.n_frames, 12)
  assert s.min() >= -spec.db_range and s.max() <= 0.0
  assert all(len(np.unique(x)) <= d * d for x in s)


def test_make_keys_compiles_once_per_spec(monkeypatch):
  traces = []
  real = keys_lib.key_labels

  def counting(*args, **kwargs):
    traces.append(1)
    return real(*args, **kwargs)

  monkeypatch.setattr(keys_lib, "key_labels", counting)
  spec = keys_lib.KeySpec(**{**SMALL_SPEC.to_dict(), "d": 5})  # A spec no other test traces.
  for seed in range(3):
    keys_lib.make_keys(jax.random.key(seed), spec, 5)
  assert len(traces) == 1
  # A new spec traces again; this one also checks peak-only normalisation.
  peak_spec = keys_lib.KeySpec(**{**spec.to_dict(), "rms_dbfs": None, "peak_dbfs": -3.0})
  w = np.asarray(keys_lib.make_keys(jax.random.key(0), peak_spec, 5).waveforms)
  assert len(traces) == 2
  np.testing.assert_allclose(np.max(np.abs(w), axis=-1), 10 ** (-3 / 20), rtol=1e-5)


def test_make_keys_rejects_bad_num_classes():
  with pytest.raises(ValueError, match="num_classes"):
    keys_lib.make_keys(jax.random.key(0), SMALL_SPEC, 0)


# --- Key file ---------------------------------------------------------------------------------
# What the key file adds to the secret archive (Keys, spec, labels, regeneration, reuse, WAVs);
# the archive's own integrity checks are tested on a toy format in tests/test_secrets.py.


def test_round_trip_is_bit_exact_and_owner_only(key_file, small_keys):
  assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
  loaded, manifest = keyfile.load_keys(key_file, expected_class_names=list(CLASS_NAMES))
  for name in keys_lib.ARRAY_NAMES:
    a, b = np.asarray(getattr(loaded, name)), np.asarray(getattr(small_keys, name))
    assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
  assert loaded.spec == SMALL_SPEC
  assert manifest["class_names"] == list(CLASS_NAMES) and manifest["num_classes"] == 5
  assert manifest["provenance"]["seed"] == 1
  assert set(manifest["versions"]) >= {"jaxtag", "jax", "numpy"}
  assert len(manifest["fingerprint"]) == 64
  assert not [p for p in key_file.parent.iterdir() if p.name != "keys.npz"]  # No temp left.


def test_regenerate_and_check(key_file):
  loaded, manifest = keyfile.load_keys(key_file)
  assert keyfile.regenerate_and_check(loaded, manifest) == {
      name: "identical" for name in keys_lib.ARRAY_NAMES}
  bad = {**manifest, "provenance": keys_lib.key_provenance(jax.random.key(2))}
  with pytest.raises(keys_lib.KeyFileError, match="provenance does not reproduce"):
    keyfile.regenerate_and_check(loaded, bad)


def test_save_refuses_labels_outside_the_classes(small_keys, tmp_path):
  # Overwrite, dataset folder and JSON refusals: the archive's (tests/test_secrets.py).
  with pytest.raises(keys_lib.KeyFileError, match="class names"):
    keyfile.save_keys(tmp_path / "k.npz", small_keys, class_names=["a"], provenance={})
  assert not (tmp_path / "k.npz").exists()


def _reuse(path, *, seed=1, spec=SMALL_SPEC, class_names=CLASS_NAMES):
  key = jax.random.key(seed)
  return keyfile.make_or_reuse_keys(path, key, spec, class_names=class_names,
                                    provenance=keys_lib.key_provenance(key, seed=seed))


def test_make_or_reuse_keys_writes_once_then_reuses_the_file_untouched(tmp_path, small_keys):
  path = tmp_path / "secret" / "keys.npz"
  made, manifest, reused = _reuse(path)
  assert not reused and manifest["provenance"]["seed"] == 1
  for name in keys_lib.ARRAY_NAMES:   # The file holds make_keys(key(1), ...): the fixture's keys.
    assert np.asarray(getattr(made, name)).tobytes() == np.asarray(
        getattr(small_keys, name)).tobytes()
  before, stat_before = path.read_bytes(), os.stat(path)
  again, manifest_again, reused = _reuse(path)
  assert reused and manifest_again == manifest and again.spec == SMALL_SPEC
  for name in keys_lib.ARRAY_NAMES:
    assert np.asarray(getattr(again, name)).tobytes() == np.asarray(
        getattr(made, name)).tobytes()
  after = os.stat(path)
  assert path.read_bytes() == before
  assert (after.st_mtime_ns, after.st_ino) == (stat_before.st_mtime_ns, stat_before.st_ino)
  assert sorted(p.name for p in path.parent.iterdir()) == ["keys.npz"]


@pytest.mark.parametrize("change,field", [
    (dict(spec=dataclasses.replace(SMALL_SPEC, num_keys=2)), "spec.num_keys"),
    (dict(seed=2), "provenance.key_data"),
    (dict(class_names=("yes", "no", "up", "down", "right")), "class_names"),
])
def test_make_or_reuse_keys_refuses_a_file_made_differently(tmp_path, change, field):
  path = tmp_path / "keys.npz"
  _reuse(path)
  before, mtime = path.read_bytes(), os.stat(path).st_mtime_ns
  with pytest.raises(keys_lib.KeyFileError) as e:
    _reuse(path, **change)
  message = str(e.value)
  assert str(path) in message and field in message
  assert "never overwritten" in message and "new workdir" in message and "delete it" in message
  if field.startswith("provenance"):   # The provenance is as secret as the keys: never shown.
    assert "key_data" in message and str(keys_lib.key_provenance(jax.random.key(1))[
        "key_data"]) not in message
    assert "provenance.seed" in message
  assert path.read_bytes() == before and os.stat(path).st_mtime_ns == mtime


def test_make_or_reuse_keys_refuses_a_corrupt_file_and_a_path_in_the_dataset(tmp_path):
  path = tmp_path / "keys.npz"
  path.write_bytes(b"not a zip")
  path.chmod(0o600)
  with pytest.raises(keys_lib.KeyFileError, match="not a readable"):
    _reuse(path)
  assert path.read_bytes() == b"not a zip"
  with pytest.raises(keys_lib.KeyFileError, match="inside the dataset"):
    keyfile.make_or_reuse_keys(tmp_path / "data" / "keys.npz", jax.random.key(0), SMALL_SPEC,
                               class_names=CLASS_NAMES, provenance={},
                               dataset_root=tmp_path / "data")
  assert not (tmp_path / "data").exists()


def test_export_wav(small_keys, tmp_path):
  paths = keyfile.export_keys_wav(small_keys, tmp_path / "listen", class_names=CLASS_NAMES)
  labels = np.asarray(small_keys.labels)
  assert len(paths) == 3
  for i, (path, label) in enumerate(zip(paths, labels)):
    assert path.name == f"key{i:02d}_label{label}_{CLASS_NAMES[label]}.wav"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    audio, sr = soundfile.read(path, dtype="float32")
    assert sr == SMALL_SPEC.sample_rate and soundfile.info(path).subtype == "PCM_16"
    np.testing.assert_allclose(audio, small_keys.waveforms[i], atol=1.0 / 32768 + 1e-7)
