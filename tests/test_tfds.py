"""Tests for jaxtag.data.tfds: TF-free TFDS export, reading back (tfds, grain), load_tfds."""

import json
import os
import sys

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")
pytest.importorskip("array_record")

import grain  # noqa: E402

from jaxtag.audio import io as audio_io  # noqa: E402
from jaxtag.data import tfds as jtfds  # noqa: E402
from jaxtag.data.dataset import AudioDataset, DatasetError, SplitNotFoundError  # noqa: E402

CLASSES = ("yes", "no", "up")
PCM_TOL = 0.5 / 32768 + 1e-7  # round-to-nearest 16-bit quantisation, plus float32 slack.


def _split(split, n, seed, t=400, sr=8000):
  rng = np.random.default_rng(seed)
  w = rng.uniform(-0.9, 0.9, (n, t)).astype(np.float32)
  w[0, :3] = [1.0, -1.0, 0.0]  # full scale must survive (saturated at 32767 / -32768).
  return AudioDataset(
      waveforms=w, labels=rng.integers(0, len(CLASSES), n), class_names=CLASSES, sample_rate=sr,
      split=split, speaker_ids=np.asarray([f"spk{i % 3}" for i in range(n)]),
      paths=tuple(f"{CLASSES[i % 3]}/clip_{split}_{i}.wav" for i in range(n)),
      metadata={"fold": np.arange(n) % 5 + 1, "note": np.asarray([f"n{i}" for i in range(n)])})


@pytest.fixture
def splits():
  return {"train": _split("train", 7, 0), "test": _split("test", 4, 1)}


class _HideTensorFlow:
  """Wraps a meta-path finder so that TensorFlow looks uninstalled, whether it is or not."""

  def __init__(self, finder):
    self._finder = finder

  def find_spec(self, name, path=None, target=None):
    if name == "tensorflow" or name.startswith("tensorflow."):
      return None
    find_spec = getattr(self._finder, "find_spec", None)
    return find_spec(name, path, target) if find_spec else None

  def __getattr__(self, attr):
    return getattr(self._finder, attr)


@pytest.fixture
def no_tensorflow(monkeypatch):
  """TensorFlow made unimportable (as if uninstalled); afterwards it must not have been imported.

  A hidden dependency on TensorFlow in the export or read path then fails loudly, whether or not
  TensorFlow is installed where the tests run.
  """
  if "tensorflow" in sys.modules:
    pytest.skip("TensorFlow was imported earlier in this session; cannot hide it.")
  monkeypatch.setattr(sys, "meta_path", [_HideTensorFlow(f) for f in sys.meta_path])
  yield
  assert "tensorflow" not in sys.modules


@pytest.fixture
def exported(tmp_path, splits, no_tensorflow):
  del no_tensorflow
  path = jtfds.export_tfds(splits, tmp_path, name="tiny_audio", description="test data")
  return tmp_path, path


def _representable(x):
  """``x`` as 16-bit PCM can hold it: +1.0 saturates to 32767 / 32768."""
  return np.clip(x, -1.0, 32767 / 32768)


def _pcm16(x):
  return np.clip(np.rint(x.astype(np.float64) * 32768), -32768, 32767).astype(np.int16)


def test_export_layout_and_metadata(exported, splits):
  data_dir, path = exported
  assert path == os.path.join(str(data_dir), "tiny_audio", "1.0.0")
  files = set(os.listdir(path))
  assert {"dataset_info.json", "features.json", "metadata.json", "label.labels.txt",
          "tiny_audio-train.array_record-00000-of-00001",
          "tiny_audio-test.array_record-00000-of-00001"} <= files
  info = json.load(open(os.path.join(path, "dataset_info.json")))
  assert info["fileFormat"] == "array_record" and info["name"] == "tiny_audio"
  assert {s["name"]: int(s["shardLengths"][0]) for s in info["splits"]} == {"train": 7, "test": 4}
  assert json.load(open(os.path.join(path, "metadata.json")))["sample_rate"] == 8000
  # Only the final folder is left: the temporary one was renamed.
  assert sorted(os.listdir(data_dir)) == ["tiny_audio"]


def test_builder_from_directory_data_source_round_trip(exported, splits):
  _, path = exported
  builder = tfds.builder_from_directory(path)
  assert builder.info.features["label"].names == list(CLASSES)
  assert builder.info.metadata["sample_rate"] == 8000
  for split, ds in splits.items():
    source = builder.as_data_source(split=split)
    assert len(source) == len(ds)
    for i in range(len(ds)):
      ex = source[i]
      assert ex["audio"].dtype == np.int16
      np.testing.assert_array_equal(ex["audio"], _pcm16(ds.waveforms[i]))
      np.testing.assert_allclose(ex["audio"] / 32768.0, _representable(ds.waveforms[i]),
                                 atol=PCM_TOL)
      assert ex["label"] == ds.labels[i]
      assert ex["speaker_id"].decode() == ds.speaker_ids[i]
      assert ex["path"].decode() == ds.paths[i]
      assert ex["metadata"]["fold"] == ds.metadata["fold"][i]
      assert ex["metadata"]["note"].decode() == ds.metadata["note"][i]
  assert source[0]["audio"][:3].tolist() == [32767, -32768, 0]


def test_tfds_data_source_by_name_and_grain(exported, splits):
  data_dir, _ = exported
  source = tfds.data_source("tiny_audio", split="train", data_dir=str(data_dir), download=False)
  ds = splits["train"]
  batches = list(grain.MapDataset.source(source).batch(4, drop_remainder=False))
  audio = np.concatenate([b["audio"] for b in batches])
  labels = np.concatenate([b["label"] for b in batches])
  np.testing.assert_allclose(audio / 32768.0, _representable(ds.waveforms), atol=PCM_TOL)
  np.testing.assert_array_equal(labels, ds.labels)
  shuffled = grain.MapDataset.source(source).shuffle(seed=0)
  np.testing.assert_array_equal(np.sort([ex["label"] for ex in shuffled]), np.sort(ds.labels))


def test_load_tfds_equals_original(exported, splits):
  data_dir, _ = exported
  for split, ds in splits.items():
    got = jtfds.load_tfds("tiny_audio", split=split, data_dir=data_dir, sample_rate=8000)
    assert got.split == split and got.sample_rate == 8000 and got.class_names == CLASSES
    assert got.waveforms.shape == ds.waveforms.shape
    np.testing.assert_allclose(got.waveforms, _representable(ds.waveforms), atol=PCM_TOL)
    np.testing.assert_array_equal(got.labels, ds.labels)
    np.testing.assert_array_equal(got.speaker_ids, ds.speaker_ids)
    assert got.paths == ds.paths
    np.testing.assert_array_equal(got.metadata["fold"], ds.metadata["fold"])
    np.testing.assert_array_equal(got.metadata["note"], ds.metadata["note"])


def test_load_tfds_resamples_and_fits_length(exported, splits):
  data_dir, _ = exported
  got = jtfds.load_tfds("tiny_audio:1.0.0", split="test", data_dir=data_dir, sample_rate=16000,
                        clip_samples=700)
  ds = splits["test"]
  want = audio_io.fit_length(audio_io.resample(_pcm16(ds.waveforms) / 32768.0, 8000, 16000), 700)
  assert got.waveforms.shape == (4, 700) and got.sample_rate == 16000
  np.testing.assert_allclose(got.waveforms, want, atol=1e-6)


def test_float32_export_is_exact_and_single_dataset_uses_its_split(tmp_path, splits):
  path = jtfds.export_tfds(splits["test"], tmp_path, name="exact", audio_dtype="float32")
  assert os.path.exists(os.path.join(path, "exact-test.array_record-00000-of-00001"))
  got = jtfds.load_tfds("exact", split="test", data_dir=tmp_path, sample_rate=8000)
  np.testing.assert_array_equal(got.waveforms, splits["test"].waveforms)


def test_export_refuses_to_overwrite_unless_asked(tmp_path, splits):
  jtfds.export_tfds(splits, tmp_path, name="again")
  with pytest.raises(DatasetError, match="overwrite=True"):
    jtfds.export_tfds(splits, tmp_path, name="again")
  louder = {k: v.with_waveforms(v.waveforms * 0.5) for k, v in splits.items()}
  jtfds.export_tfds(louder, tmp_path, name="again", overwrite=True)
  got = jtfds.load_tfds("again", split="train", data_dir=tmp_path, sample_rate=8000)
  np.testing.assert_allclose(got.waveforms, _representable(louder["train"].waveforms),
                             atol=PCM_TOL)
  assert sorted(os.listdir(tmp_path)) == ["again"]
  stale = tmp_path / "again" / ".1.0.0.tmp-1"   # A killed export's: marked, its lock free.
  stale.mkdir()
  (stale / ".jaxtag_publish.json").write_text("{}")
  jtfds.export_tfds(splits, tmp_path, name="again", overwrite=True)
  assert sorted(os.listdir(tmp_path / "again")) == ["1.0.0"]
  notes = tmp_path / "again" / "1.0.0" / "notes.txt"   # Not a TFDS export file: never deleted.
  notes.write_text("mine")
  with pytest.raises(DatasetError, match=r"overwrite=True replaces only .*notes.txt"):
    jtfds.export_tfds(splits, tmp_path, name="again", overwrite=True)
  assert notes.read_text() == "mine"


def test_export_rejects_bad_input(tmp_path, splits):
  other = AudioDataset(np.zeros((2, 400), np.float32), np.zeros(2), ("a",), 8000, split="x")
  with pytest.raises(DatasetError, match="class names"):
    jtfds.export_tfds({"train": splits["train"], "x": other}, tmp_path)
  with pytest.raises(DatasetError, match="lower snake case"):
    jtfds.export_tfds(splits, tmp_path, name="Bad-Name")
  with pytest.raises(DatasetError, match="split name"):
    jtfds.export_tfds({"train[:5]": splits["train"]}, tmp_path)
  assert os.listdir(tmp_path) == []


def test_load_tfds_missing_dataset_is_a_clear_error(tmp_path):
  with pytest.raises(DatasetError, match="no TFDS dataset 'no_such_dataset_xyz'"):
    jtfds.load_tfds("no_such_dataset_xyz", split="train", data_dir=tmp_path)


def test_load_tfds_catalogue_dataset_not_prepared_never_downloads(tmp_path):
  with pytest.raises(DatasetError, match="speech_commands"):
    jtfds.load_tfds("speech_commands", split="train", data_dir=tmp_path)
  assert not any(f.startswith("downloads") for f in os.listdir(tmp_path))


def test_load_tfds_bad_key_and_split(exported):
  data_dir, _ = exported
  with pytest.raises(DatasetError, match="no feature 'waveform'"):
    jtfds.load_tfds("tiny_audio", split="train", data_dir=data_dir, audio_key="waveform")
  with pytest.raises(SplitNotFoundError, match="split 'validation'"):
    jtfds.load_tfds("tiny_audio", split="validation", data_dir=data_dir)
  with pytest.raises(SplitNotFoundError, match="split 'dev'"):
    jtfds.load_tfds("tiny_audio", split="train[:50%]+dev", data_dir=data_dir)
  assert len(jtfds.load_tfds("tiny_audio", split="train[:3]+test", data_dir=data_dir)) == 7


def test_load_splits_of_a_tfds_source_without_validation(exported, splits):
  from jaxtag.data import sources
  data_dir, _ = exported
  source = sources.DataSource(kind="tfds", name="tiny_audio", data_dir=str(data_dir),
                              sample_rate=8000, clip_samples=300)
  loaded = sources.load_splits(source, progress=False)
  assert sorted(loaded) == ["test", "train"] and loaded["train"].num_samples == 300
  assert sources.describe_splits(loaded)["validation"] == {"absent": True}


def test_load_tfds_tfrecord_without_tensorflow_says_what_to_install(exported):
  data_dir, path = exported
  # Turn our export into a TFRecord-format dataset (same metadata, other file format).
  info_path = os.path.join(path, "dataset_info.json")
  info = json.load(open(info_path))
  info["fileFormat"] = "tfrecord"
  json.dump(info, open(info_path, "w"))
  for f in os.listdir(path):
    if ".array_record-" in f:
      new = f.replace(".array_record-", ".tfrecord-")
      os.rename(os.path.join(path, f), os.path.join(path, new))
  with pytest.raises(DatasetError, match="pip install tensorflow"):
    jtfds.load_tfds("tiny_audio", split="train", data_dir=data_dir)


def test_load_tfds_unknown_version_is_a_clear_error(exported):
  data_dir, _ = exported
  with pytest.raises(DatasetError, match="tiny_audio:9.9.9"):
    jtfds.load_tfds("tiny_audio:9.9.9", split="train", data_dir=data_dir)
