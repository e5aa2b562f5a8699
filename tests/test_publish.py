"""jaxtag.data.publish: no export destroys the input or a user's files, a killed one leaves
nothing behind once re-run, and the copy is complete (every split, every other file verbatim)."""

import dataclasses
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from jaxtag.audio import io as audio_io
from jaxtag.data import publish, readback, sources, speechcommands
from jaxtag.data.dataset import DatasetError

RATE = 8000
EXTRA = {"README.md": "# words\n", "LICENSE": "CC-BY-4.0\n", "speakers.tsv": "id\tage\ns0\t30\n",
         "_background_noise_/README.md": "noise\n", "_meta/notes.txt": "kept\n"}


def _input(root: pathlib.Path) -> pathlib.Path:
  """A SpeechCommands folder with the files a real one has besides its clips."""
  rng = np.random.default_rng(0)
  for word in ("no", "yes"):
    for i in range(3):
      audio_io.write_wav(root / word / f"s{i}_nohash_0.wav",
                         rng.uniform(-0.5, 0.5, RATE).astype(np.float32), RATE)
  (root / "validation_list.txt").write_text("no/s1_nohash_0.wav\nyes/s1_nohash_0.wav\n")
  (root / "testing_list.txt").write_text("no/s2_nohash_0.wav\n")
  audio_io.write_wav(root / "_background_noise_" / "hum.wav",
                     rng.uniform(-0.1, 0.1, 3 * RATE).astype(np.float32), RATE, subtype="FLOAT")
  for rel, text in EXTRA.items():
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_text(text)
  return root


@pytest.fixture
def source(tmp_path):
  return sources.DataSource(kind="speech_commands", root=str(_input(tmp_path / "words")),
                            sample_rate=RATE)


def _louder(splits):
  """Two train clips changed by three 16-bit steps (still on the 16-bit grid)."""
  waveforms = splits["train"].waveforms.copy()
  waveforms[:2] += np.float32(3 / 32768)
  return {**splits, "train": splits["train"].with_waveforms(waveforms)}


def _snapshot(folder: pathlib.Path) -> dict[str, bytes]:
  return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b"<dir>"
          for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("where", ["equal", "inside", "containing"])
def test_refuses_a_destination_that_is_inside_or_contains_the_input(tmp_path, source, where):
  splits = sources.load_splits(source, progress=False)
  root = pathlib.Path(source.root)
  destination = {"equal": root, "inside": root / "yes" / "protected", "containing": tmp_path}[where]
  link = tmp_path / "link"
  link.symlink_to(root)   # Resolved: a link to the input is the input.
  before = _snapshot(tmp_path)
  relation = {"equal": "is", "inside": "lies inside", "containing": "contains"}[where]
  with pytest.raises(publish.PublishError, match=f"{relation} the input dataset.*Choose another"):
    publish.export_splits(source, _louder(splits), destination)
  if where == "equal":
    with pytest.raises(publish.PublishError, match="is the input dataset"):
      publish.export_splits(dataclasses.replace(source, root=str(link)), splits, destination)
  assert _snapshot(tmp_path) == before


def test_a_users_files_survive_and_only_its_own_output_is_replaced(tmp_path, source):
  splits = sources.load_splits(source, progress=False)
  destination = tmp_path / "out"
  destination.mkdir()
  (destination / "mine.txt").write_text("my notes")
  before = _snapshot(tmp_path)
  with pytest.raises(publish.PublishError, match=f"{destination} is not empty.*move its contents"):
    publish.export_splits(source, splits, destination)
  assert _snapshot(tmp_path) == before

  destination = tmp_path / "protected"
  publish.export_splits(source, splits, destination, owner="run-a")
  publish.export_splits(source, _louder(splits), destination, owner="run-a")  # Its own: replaced.
  with pytest.raises(publish.PublishError, match="published by 'run-a', not written by this"):
    publish.export_splits(source, splits, destination, owner="run-b")
  (destination / "yes" / "added_nohash_0.wav").write_bytes(b"a user's clip")
  (destination / "README.md").write_text("edited by hand")
  before = _snapshot(tmp_path)
  with pytest.raises(publish.PublishError, match=r"2 file\(s\) that its .* does not list.*"
                                                 r"README.md.*added_nohash_0.wav"):
    publish.export_splits(source, splits, destination, owner="run-a")
  with pytest.raises(publish.PublishError, match="does not list"):
    publish.export_splits(source, splits, destination, owner="run-b", replace_other_owner=True)
  assert _snapshot(tmp_path) == before
  # The library exporter's overwrite=True deletes only what an earlier export wrote.
  with pytest.raises(DatasetError, match="not written by one.*added_nohash_0.wav"):
    speechcommands.export_speech_commands(splits, destination, overwrite=True)
  assert _snapshot(tmp_path) == before


_KILLED_EXPORT = textwrap.dedent("""
    import os, signal, sys
    from jaxtag.data import publish, sources, speechcommands
    source = sources.DataSource(kind="speech_commands", root=sys.argv[1], sample_rate=8000)
    splits = sources.load_splits(source, progress=False)
    real = speechcommands.export_speech_commands
    def killed(datasets, root, **kwargs):   # Some clips written, then SIGKILL: no cleanup runs.
      real({"train": datasets["train"]}, root, **kwargs)
      os.kill(os.getpid(), signal.SIGKILL)
    speechcommands.export_speech_commands = killed
    publish.export_splits(source, splits, sys.argv[2])
""")


def test_a_killed_export_leaves_nothing_behind_once_re_run(tmp_path, source):
  destination = tmp_path / "protected"
  killed = subprocess.Popen([sys.executable, "-c", _KILLED_EXPORT, source.root, str(destination)],
                            stderr=subprocess.PIPE, text=True)
  assert killed.wait(timeout=120) == -9, killed.stderr.read()
  killed.stderr.close()
  left = tmp_path / f".protected.tmp-{killed.pid}"
  assert (left / publish.MARKER).is_file() and list(left.glob("no/*.wav"))
  assert not destination.exists()
  # Leftovers whose pid runs again (pids are reused, and kill(pid, 0) also sees thread ids):
  # the pid told nothing; the free lock tells they are stale.
  reused = [tmp_path / f".protected.tmp-{os.getppid()}", tmp_path / f".protected.old-{os.getpid()}"]
  running = tmp_path / f".protected.tmp-{os.getpid() + 1}"   # A writer that still runs.
  unmarked = tmp_path / f".protected.tmp-{killed.pid + 1}"   # Not ours: left alone.
  other = tmp_path / f".other.tmp-{killed.pid}"
  for folder in (*reused, running, unmarked, other):
    folder.mkdir()
    if folder != unmarked:
      (folder / publish.MARKER).write_text("{}")
  lock = publish._try_lock(running)
  try:
    publish.export_splits(source, sources.load_splits(source, progress=False), destination)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["words", "protected", running.name, unmarked.name, other.name])
  finally:
    os.close(lock)
  assert publish.remove_stale(destination) == [running]
  assert speechcommands.load_speech_commands(destination, "test", sample_rate=RATE).paths == (
      "no/s2_nohash_0.wav",)


def test_the_copy_holds_every_file_and_every_split(tmp_path, source):
  splits = sources.load_splits(source, progress=False)
  destination = tmp_path / "protected"
  published = publish.export_splits(source, _louder(splits), destination, clean=splits,
                                    max_error_lsb=0.0, max_changed={"train": 2})
  root = pathlib.Path(source.root)
  inputs, outputs = publish.listing(root), publish.listing(destination)
  assert set(outputs) == set(inputs) | {publish.MARKER}
  verbatim = sorted(set(EXTRA) | {"_background_noise_/hum.wav"})
  assert list(published.copied) == verbatim and not published.skipped
  for rel in verbatim:   # The noise too: its float WAV is not re-encoded as 16-bit.
    assert (destination / rel).read_bytes() == (root / rel).read_bytes(), rel
  assert published.regenerated == ("testing_list.txt", "validation_list.txt")
  for split, ds in splits.items():
    written = speechcommands.load_speech_commands(destination, split, sample_rate=RATE)
    assert written.paths == ds.paths, split
    if split != "train":
      np.testing.assert_array_equal(written.waveforms, ds.waveforms)
  assert {s: c["clips"] for s, c in published.check["splits"].items()} == {
      "train": 3, "validation": 2, "test": 1}
  assert published.check["splits"]["train"]["clips_changed"] == 2
  marker = publish.read_marker(destination)
  assert marker["state"] == "complete" and marker["splits"]["validation"]["files"] == [
      "no/s1_nohash_0.wav", "yes/s1_nohash_0.wav"]

  # More clips changed than allowed: refused before publishing; the earlier copy stays.
  with pytest.raises(readback.ReadBackError, match="train split .* 2 clips that differ"):
    publish.export_splits(source, _louder(splits), destination, clean=splits,
                          max_changed={"train": 1})
  assert publish.listing(destination) == outputs
  lean = publish.export_splits(source, splits, tmp_path / "lean", copy_extra_files=False)
  assert sorted(lean.skipped) == verbatim and not lean.copied
  assert lean.skipped["README.md"] == "copy_extra_files=False"
  assert not (tmp_path / "lean" / "README.md").exists()


def test_readback_finds_a_changed_copied_file(tmp_path, source):
  splits = sources.load_splits(source, progress=False)
  destination = tmp_path / "protected"
  published = publish.export_splits(source, splits, destination)
  check = readback.check_export(source, destination, splits, source_root=source.root,
                                extra_files=published.copied)
  assert check["extra_files_checked"] == len(EXTRA) + 1 and check["error_in_lsb"] == 0.0
  (destination / "speakers.tsv").write_text("id\tage\ns0\t31\n")
  with pytest.raises(readback.ReadBackError, match="speakers.tsv"):
    readback.check_export(source, destination, splits, source_root=source.root,
                          extra_files=published.copied)
  os.remove(destination / "no" / "s0_nohash_0.wav")
  with pytest.raises(readback.ReadBackError, match="train split .* other files"):
    readback.check_export(source, destination, splits)


def test_esc50_keeps_its_csv_and_files_verbatim(tmp_path):
  from jaxtag.data import esc50
  root = tmp_path / "esc"
  rng = np.random.default_rng(1)
  rows = ["filename,fold,target,category,esc10,src_file,take"]
  for fold in range(1, 6):
    name = f"{fold}-10{fold}-A-{fold % 2}.wav"
    audio_io.write_wav(root / "audio" / name, rng.uniform(-0.5, 0.5, 5 * RATE), RATE)
    rows.append(f"{name},{fold},{fold % 2},{'dog' if fold % 2 == 0 else 'rain'},False,10{fold},A")
  (root / "meta").mkdir()
  (root / "meta" / "esc50.csv").write_text("\r\n".join(rows) + "\r\n")   # Not our csv's format.
  (root / "README.md").write_text("ESC-50\n")
  source = sources.DataSource(kind="esc50", root=str(root), sample_rate=RATE)
  splits = sources.load_splits(source, progress=False)
  published = publish.export_splits(source, _louder(splits), tmp_path / "protected",
                                    clean=splits, max_changed={"train": 4})
  assert published.copied == ("README.md", "meta/esc50.csv") and not published.regenerated
  for rel in published.copied:
    assert (tmp_path / "protected" / rel).read_bytes() == (root / rel).read_bytes()
  assert esc50.load_esc50(tmp_path / "protected", folds=(5,), sample_rate=RATE).paths == (
      splits["test"].paths)
