"""jaxtag.data.publish: a dataset export killed mid-way never leaves a half-written dataset."""

import os
import subprocess

import numpy as np
import pytest

from jaxtag.data import publish, sources, speechcommands
from jaxtag.data.dataset import AudioDataset


def _split(split, value):
  waves = np.full((2, 8000), value, np.float32)   # 1 s: what the loader reads
  return AudioDataset(waveforms=waves, labels=np.array([0, 1], np.int32), class_names=("a", "b"),
                      sample_rate=8000, split=split)


def _splits(value):
  return {s: _split(s, value) for s in ("train", "validation", "test")}


def _dead_pid():
  proc = subprocess.Popen(["true"])
  proc.wait()
  return proc.pid


def test_export_replaces_whole_or_not_at_all_and_removes_stale_folders(tmp_path, monkeypatch):
  source = sources.DataSource(kind="speech_commands", root=str(tmp_path / "source"),
                              sample_rate=8000)
  destination = tmp_path / "protected"
  publish.export_splits(source, _splits(0.25), destination)
  first = speechcommands.load_speech_commands(destination, split="train", sample_rate=8000)
  np.testing.assert_allclose(first.waveforms, 0.25, atol=1 / 32768)

  dead = _dead_pid()
  stale = [tmp_path / f".protected.tmp-{dead}", tmp_path / f".protected.old-{dead}"]
  alive = tmp_path / f".protected.tmp-{os.getppid()}"   # Another writer, still running.
  other = tmp_path / f".unrelated.tmp-{dead}"
  for folder in (*stale, alive, other):
    (folder / "a").mkdir(parents=True)

  real_export = speechcommands.export_speech_commands

  def killed_mid_way(datasets, root, **kwargs):   # Writes some clips, then dies.
    real_export({"train": datasets["train"]}, root, **kwargs)
    raise KeyboardInterrupt("killed")

  monkeypatch.setattr(speechcommands, "export_speech_commands", killed_mid_way)
  with pytest.raises(KeyboardInterrupt):
    publish.export_splits(source, _splits(0.5), destination)
  assert not any(folder.exists() for folder in stale)
  assert alive.exists() and other.exists()
  # The previous dataset is still there, whole: no clip of the killed export reached it.
  again = speechcommands.load_speech_commands(destination, split="train", sample_rate=8000)
  np.testing.assert_array_equal(again.waveforms, first.waveforms)
  assert (destination / "validation_list.txt").exists()

  monkeypatch.setattr(speechcommands, "export_speech_commands", real_export)
  publish.export_splits(source, _splits(0.5), destination)
  new = speechcommands.load_speech_commands(destination, split="test", sample_rate=8000)
  np.testing.assert_allclose(new.waveforms, 0.5, atol=1 / 32768)
  leftovers = {p.name for p in tmp_path.iterdir()}
  assert leftovers == {"protected", alive.name, other.name}
