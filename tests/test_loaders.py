"""Round-trip tests for the Speech Commands and ESC-50 folder loaders and exporters."""

import logging
import os

import numpy as np
import pytest
from scipy import signal

from jaxtag.audio import io
from jaxtag.data import esc50, speechcommands
from jaxtag.data.dataset import AudioDataset, DatasetError

LSB = 1.0 / 32768
# A float32 sample written as 16-bit PCM comes back within half a step (plus float32 rounding).
PCM16_ATOL = 0.5 * LSB + 1e-7
CLASSES = ("down", "go", "yes")


def _random_split(rng, split, n, sr=16000, num_samples=16000, with_paths=False, offset=0):
  labels = rng.integers(0, len(CLASSES), n).astype(np.int32)
  speakers = np.array([f"spk{rng.integers(0, 3)}" for _ in range(n)])
  paths = None
  if with_paths:
    paths = tuple(f"{CLASSES[l]}/{s}_nohash_{offset + i}.wav"
                  for i, (l, s) in enumerate(zip(labels, speakers)))
  return AudioDataset(
      waveforms=rng.uniform(-0.9, 0.9, (n, num_samples)).astype(np.float32), labels=labels,
      class_names=CLASSES, sample_rate=sr, split=split, speaker_ids=speakers, paths=paths)


def _by_path(ds):
  return {p: i for i, p in enumerate(ds.paths)}


def _assert_same_clips(original, loaded, original_paths):
  index = _by_path(loaded)
  assert sorted(index) == sorted(original_paths)
  for i, p in enumerate(original_paths):
    j = index[p]
    np.testing.assert_allclose(loaded.waveforms[j], original.waveforms[i], atol=PCM16_ATOL,
                               rtol=0)
    assert loaded.labels[j] == original.labels[i]
    assert loaded.speaker_ids[j] == original.speaker_ids[i]


@pytest.mark.parametrize("with_paths", [False, True])
def test_speech_commands_round_trip(tmp_path, with_paths):
  rng = np.random.default_rng(0)
  splits = {"train": _random_split(rng, "train", 12, with_paths=with_paths),
            "validation": _random_split(rng, "validation", 5, with_paths=with_paths, offset=100),
            "test": _random_split(rng, "test", 4, with_paths=with_paths, offset=200)}
  noise = {"white_noise": rng.uniform(-0.5, 0.5, 40000).astype(np.float32),
           "pink": rng.uniform(-0.1, 0.1, 25000).astype(np.float32)}
  root = tmp_path / "sc"
  written = speechcommands.export_speech_commands(splits, root, background_noise=noise)
  listed = (root / "testing_list.txt").read_text().split()
  assert listed == written["test"]
  if with_paths:
    assert written["train"] == list(splits["train"].paths)
  else:
    assert all(p.split("/")[1].startswith(("spk0_nohash_", "spk1_nohash_", "spk2_nohash_"))
               for p in written["train"])
  for split, original in splits.items():
    loaded = speechcommands.load_speech_commands(root, split)
    assert loaded.split == split and loaded.class_names == CLASSES
    assert loaded.sample_rate == 16000 and loaded.waveforms.shape == (len(original), 16000)
    _assert_same_clips(original, loaded, written[split])
    assert not loaded.metadata["silent"].any()
    assert loaded.metadata["clipped_fraction"].max() == 0.0
  loaded_noise = speechcommands.load_background_noise(root)
  assert sorted(loaded_noise) == ["pink", "white_noise"]
  for name, wave in noise.items():
    np.testing.assert_allclose(loaded_noise[name], wave, atol=PCM16_ATOL, rtol=0)


def test_speech_commands_single_dataset_and_paths_sorted_by_label(tmp_path):
  rng = np.random.default_rng(1)
  train = _random_split(rng, "train", 9)
  speechcommands.export_speech_commands(train, tmp_path / "sc")
  assert (tmp_path / "sc" / "validation_list.txt").read_text() == ""
  loaded = speechcommands.load_speech_commands(tmp_path / "sc", "train")
  assert len(loaded) == 9
  assert list(loaded.labels) == sorted(loaded.labels)
  assert all(p.startswith(CLASSES[l] + "/") for p, l in zip(loaded.paths, loaded.labels))


def test_speech_commands_classes_subset_order_and_resampled_length(tmp_path):
  rng = np.random.default_rng(2)
  speechcommands.export_speech_commands(_random_split(rng, "train", 15), tmp_path)
  ds = speechcommands.load_speech_commands(tmp_path, classes=["yes", "down"], sample_rate=8000)
  assert ds.class_names == ("yes", "down")
  assert ds.num_samples == 8000 and ds.sample_rate == 8000
  assert {p.split("/")[0] for p in np.array(ds.paths)[ds.labels == 0]} == {"yes"}
  ref = speechcommands.load_speech_commands(tmp_path, classes=["yes"])
  j = list(ds.paths).index(ref.paths[0])
  # Reading at 8 kHz resamples each 16 kHz file by 1/2 with the same polyphase filter.
  np.testing.assert_allclose(ds.waveforms[j], io.resample(ref.waveforms[0], 16000, 8000),
                             atol=1e-6)


def test_speech_commands_clip_samples_pad_and_crop(tmp_path):
  io.write_wav(tmp_path / "yes" / "a_nohash_0.wav", np.full(800, 0.5), 16000)
  io.write_wav(tmp_path / "yes" / "b_nohash_0.wav", np.full(20000, 0.25), 16000)
  ds = speechcommands.load_speech_commands(tmp_path)
  assert ds.waveforms.shape == (2, 16000)
  np.testing.assert_array_equal(ds.waveforms[0, :800], 0.5)
  np.testing.assert_array_equal(ds.waveforms[0, 800:], 0.0)
  np.testing.assert_array_equal(ds.waveforms[1], 0.25)
  assert list(ds.speaker_ids) == ["a", "b"]
  ds = speechcommands.load_speech_commands(tmp_path, clip_samples=1000)
  assert ds.num_samples == 1000


def test_speech_commands_export_refuses_non_empty_then_overwrites(tmp_path):
  rng = np.random.default_rng(3)
  speechcommands.export_speech_commands(_random_split(rng, "train", 6), tmp_path)
  new = _random_split(rng, "train", 4)
  with pytest.raises(DatasetError, match=f"{tmp_path}.*not empty.*overwrite=True"):
    speechcommands.export_speech_commands(new, tmp_path)
  speechcommands.export_speech_commands(new, tmp_path, overwrite=True)
  loaded = speechcommands.load_speech_commands(tmp_path, on_empty_class="skip")
  assert len(loaded) == 4  # Clips of the first export were removed, not loaded as train.
  # A folder that no export wrote: overwrite=True refuses it and deletes nothing.
  theirs = tmp_path / "theirs"
  speechcommands.export_speech_commands(new, theirs)
  os.remove(theirs / ".jaxtag_publish.json")
  before = sorted(p.relative_to(theirs) for p in theirs.rglob("*"))
  with pytest.raises(DatasetError, match="not written by one"):
    speechcommands.export_speech_commands(_random_split(rng, "train", 2), theirs, overwrite=True)
  assert sorted(p.relative_to(theirs) for p in theirs.rglob("*")) == before


def test_speech_commands_export_rejects_path_in_wrong_class_folder(tmp_path):
  ds = _random_split(np.random.default_rng(4), "train", 2)
  wrong = AudioDataset(ds.waveforms, np.array([0, 1]), CLASSES, 16000,
                       paths=("go/x_nohash_0.wav", "go/y_nohash_0.wav"))
  with pytest.raises(DatasetError, match="go/x_nohash_0.wav.*down"):
    speechcommands.export_speech_commands(wrong, tmp_path)
  with pytest.raises(DatasetError, match="'fold1' is not one of"):
    speechcommands.export_speech_commands({"fold1": ds}, tmp_path)


def _esc_dataset(rng, n_per_fold=3, sr=44100, seconds=0.2):
  n = 5 * n_per_fold
  categories = tuple(f"cat{t}" for t in range(4))
  targets = rng.integers(0, 4, n).astype(np.int32)
  return AudioDataset(
      waveforms=rng.uniform(-0.9, 0.9, (n, int(sr * seconds))).astype(np.float32),
      labels=targets, class_names=categories, sample_rate=sr, split="all",
      metadata={"fold": np.repeat(np.arange(1, 6), n_per_fold),
                "target": targets, "esc10": targets < 2,
                "src_file": np.array([f"{100 + i}" for i in range(n)]),
                "take": np.array(["A"] * n)})


def test_esc50_round_trip_native_rate_and_folds(tmp_path):
  rng = np.random.default_rng(5)
  ds = _esc_dataset(rng, sr=16000)
  names = esc50.export_esc50(ds, tmp_path)
  assert names[0] == f"1-100-A-{ds.labels[0]}.wav"
  header = (tmp_path / "meta" / "esc50.csv").read_text().splitlines()[0]
  assert header == "filename,fold,target,category,esc10,src_file,take"
  loaded = esc50.load_esc50(tmp_path, sample_rate=16000, clip_samples=3200)
  assert loaded.split == "folds1-5" and loaded.class_names == ds.class_names
  np.testing.assert_allclose(loaded.waveforms, ds.waveforms, atol=PCM16_ATOL, rtol=0)
  np.testing.assert_array_equal(loaded.labels, ds.labels)
  np.testing.assert_array_equal(loaded.metadata["fold"], ds.metadata["fold"])
  np.testing.assert_array_equal(loaded.metadata["esc10"], ds.metadata["esc10"])
  assert loaded.paths[0] == f"audio/{names[0]}"

  train = esc50.load_esc50(tmp_path, folds=(1, 2, 3, 4), clip_samples=3200)
  test = esc50.load_esc50(tmp_path, folds=[5], clip_samples=3200)
  assert (train.split, test.split) == ("folds1-4", "fold5")
  assert set(train.metadata["fold"]) == {1, 2, 3, 4} and set(test.metadata["fold"]) == {5}
  assert len(train) + len(test) == len(ds) and train.class_names == test.class_names
  assert esc50.load_esc50(tmp_path, folds=(1, 3), clip_samples=3200).split == "folds1_3"

  # Re-exporting a loaded dataset keeps file names and the csv content.
  esc50.export_esc50([train, test], tmp_path / "again")
  assert ((tmp_path / "again" / "meta" / "esc50.csv").read_text()
          == (tmp_path / "meta" / "esc50.csv").read_text())


def test_esc50_resamples_44k_to_16k_like_scipy(tmp_path):
  rng = np.random.default_rng(6)
  ds = _esc_dataset(rng, n_per_fold=1, sr=44100, seconds=0.5)
  esc50.export_esc50(ds, tmp_path)
  loaded = esc50.load_esc50(tmp_path, sample_rate=16000, clip_samples=8000)
  assert loaded.waveforms.shape == (5, 8000)
  for i in range(5):
    on_disk, sr = io.read_wav(tmp_path / loaded.paths[i])
    assert sr == 44100
    # 44100 -> 16000 is up 160, down 441 after gcd reduction.
    reference = signal.resample_poly(on_disk.astype(np.float64), 160, 441)[:8000]
    np.testing.assert_allclose(loaded.waveforms[i], reference, atol=1e-5)
    # And it is the resampled original up to the 16-bit quantisation (scaled by the filter gain).
    original = signal.resample_poly(ds.waveforms[i].astype(np.float64), 160, 441)[:8000]
    np.testing.assert_allclose(loaded.waveforms[i], original, atol=4 * LSB)


def test_esc50_export_at_native_rate_option(tmp_path):
  ds = _esc_dataset(np.random.default_rng(7), n_per_fold=1, sr=16000)
  # Band-limited content (tones below 6 kHz), which the anti-aliasing filter passes unchanged.
  t = np.arange(ds.num_samples) / 16000
  freqs = np.array([300.0, 1250.0, 2900.0, 4400.0, 5800.0])[:, None]
  ds = ds.with_waveforms(0.4 * np.sin(2 * np.pi * freqs * t))
  esc50.export_esc50(ds, tmp_path, sample_rate=44100)
  _, sr = io.read_wav(tmp_path / "audio" / os.listdir(tmp_path / "audio")[0])
  assert sr == 44100
  loaded = esc50.load_esc50(tmp_path, sample_rate=16000, clip_samples=3200)
  # Up- then down-sampling keeps band-limited content, away from the edge transients.
  np.testing.assert_allclose(loaded.waveforms[:, 200:-200], ds.waveforms[:, 200:-200],
                             atol=0.01)


def test_esc10_only_remaps_labels_and_keeps_targets(tmp_path):
  ds = _esc_dataset(np.random.default_rng(8), sr=16000)
  esc50.export_esc50(ds, tmp_path)
  esc10 = esc50.load_esc50(tmp_path, esc10_only=True, clip_samples=3200)
  assert esc10.class_names == ("cat0", "cat1")
  assert len(esc10) == int(ds.metadata["esc10"].sum())
  np.testing.assert_array_equal(esc10.labels, esc10.metadata["target"])
  with pytest.raises(DatasetError, match="destination is not empty"):
    esc50.export_esc50(esc10, tmp_path)


def test_silent_and_clipped_clips_are_kept_flagged_and_logged(tmp_path, caplog):
  io.write_wav(tmp_path / "yes" / "a_nohash_0.wav", np.zeros(16000), 16000)
  loud = np.clip(3 * np.sin(np.linspace(0, 200, 16000)), -1, 1)
  io.write_wav(tmp_path / "yes" / "b_nohash_0.wav", loud, 16000)
  io.write_wav(tmp_path / "yes" / "c_nohash_0.wav", 0.3 * np.sin(np.linspace(0, 200, 16000)),
               16000)
  with caplog.at_level(logging.WARNING, logger="jaxtag.data.speechcommands"):
    ds = speechcommands.load_speech_commands(tmp_path)
  assert len(ds) == 3
  np.testing.assert_array_equal(ds.metadata["silent"], [True, False, False])
  expected = np.mean(np.abs(io.read_wav(tmp_path / "yes" / "b_nohash_0.wav")[0]) >= 0.999)
  assert ds.metadata["clipped_fraction"][1] == pytest.approx(expected) and expected > 0.5
  assert ds.metadata["clipped_fraction"][2] == 0.0
  text = caplog.text
  assert "1 of 3 clips are silent" in text and "yes/a_nohash_0.wav" in text
  assert "1 of 3 clips are clipped" in text and "yes/b_nohash_0.wav" in text


def test_load_splits_returns_the_splits_a_source_has(tmp_path):
  from jaxtag.data import sources
  ds = _esc_dataset(np.random.default_rng(6), sr=16000)
  esc50.export_esc50(ds, tmp_path)
  splits = sources.load_splits(sources.DataSource(kind="esc50", root=str(tmp_path)),
                               progress=False)
  assert sorted(splits) == ["test", "train"]                 # ESC-50 has no validation split
  assert set(splits["test"].metadata["fold"]) == {5}
  assert len(splits["train"]) + len(splits["test"]) == len(ds)
  with pytest.raises(sources.DatasetError):                  # no train split: an error
    sources.load_splits(sources.DataSource(kind="esc50", root=str(tmp_path / "missing")),
                        progress=False)
