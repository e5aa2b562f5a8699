"""Reading a written dataset back: every split, the files of each, and the copied input files.

:func:`check_export` compares what a folder holds with the splits that were written into it
(and, given the input's splits, counts the clips that differ from the input), split by split, a
chunk of clips at a time, so that memory does not grow with the dataset; it also compares every
input file that was copied, byte for byte. :func:`enforce` turns the result into an error.
:func:`jaxtag.data.publish.export_splits` runs both on its temporary folder, before publishing.
"""

from __future__ import annotations

import dataclasses
import filecmp
import os
import pathlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from jaxtag.data.dataset import AudioDataset, DatasetError

CHECK_CHUNK = 1024  # clips compared at a time


class ReadBackError(DatasetError):
  """A written dataset that does not read back as what was written."""


def _chunks(source, folder: pathlib.Path, split: str, expected: AudioDataset
            ) -> Iterator[tuple[slice | np.ndarray, np.ndarray]]:
  """Yields ``(rows, waveforms)``: split ``split`` of ``folder`` in ``expected``'s order, a chunk
  at a time. SpeechCommands-layout folders are read file by file (for SpeechCommands' 85k clips a
  whole-split copy is 5.4 GB); ESC-50 and TFDS ones are loaded whole, then compared by chunks."""
  from jaxtag.audio import io as audio_io
  from jaxtag.data import publish, sources, speechcommands

  if source.kind in ("corpus", "speech_commands"):
    written, _, _ = speechcommands.list_speech_commands(folder, split)
    if (sorted(written) != sorted(expected.paths) if expected.paths
        else len(written) != len(expected)):
      raise ReadBackError(f"The written {split} split at {folder} has other files than the "
                          f"input ({len(written)} vs {len(expected)} clips); re-run the stage.")
    paths = expected.paths or written
    for start in range(0, len(expected), CHECK_CHUNK):
      chunk = paths[start:start + CHECK_CHUNK]
      waveforms, _, _ = audio_io.read_wav_files(
          [os.path.join(folder, p) for p in chunk], num_samples=expected.num_samples,
          sample_rate=expected.sample_rate, resample=False)
      yield slice(start, start + len(chunk)), waveforms
    return
  if source.kind == "tfds":
    reread = sources.load_split(dataclasses.replace(source, data_dir=str(folder),
                                                    name=publish.protected_tfds_name(source)),
                                split, progress=False)
  else:
    reread = sources.load_split(dataclasses.replace(source, root=str(folder)), split,
                                progress=False)
  if len(reread) != len(expected) or (reread.paths and expected.paths
                                      and sorted(reread.paths) != sorted(expected.paths)):
    raise ReadBackError(f"The written {split} split at {folder} has other clips than the input "
                        f"({len(reread)} vs {len(expected)}); re-run the stage.")
  rows = np.arange(len(expected))
  if reread.paths and expected.paths:
    order = {p: i for i, p in enumerate(reread.paths)}
    rows = np.array([order[p] for p in expected.paths])
  for start in range(0, len(expected), CHECK_CHUNK):
    chunk = slice(start, start + CHECK_CHUNK)
    yield chunk, reread.waveforms[rows[chunk]]


def check_export(source, folder: str | os.PathLike, splits: Mapping[str, AudioDataset], *,
                 clean: Mapping[str, AudioDataset] | None = None,
                 source_root: str | os.PathLike | None = None,
                 extra_files: Sequence[str] = ()) -> dict[str, Any]:
  """Reads every split of ``folder`` back and compares it with what was written.

  Float32 differences of 16-bit values are exact, so a single 16-bit step shows.

  Args:
    source: the input's ``DataSource`` (its kind gives the layout).
    folder: the written dataset.
    splits: what was written, by split.
    clean: the input's splits: clips that differ from them are counted.
    source_root: the input folder, to compare ``extra_files`` with.
    extra_files: input files copied into ``folder`` (relative paths), compared byte for byte.

  Returns:
    ``max_abs_error`` (and ``error_in_lsb``) over every split, ``clips_changed`` (summed; needs
    ``clean``), per split ``splits[split]`` = ``{"clips", "max_abs_error", "clips_changed"}``,
    and ``extra_files_checked``.

  Raises:
    ReadBackError: a split with other files or clip count than written, or a copied file that
      differs from the input's.
  """
  folder = pathlib.Path(folder)
  per_split = {}
  for split, expected in splits.items():
    reference = None if clean is None else clean.get(split)
    error, changed = 0.0, 0
    for rows, back in _chunks(source, folder, split, expected):
      error = max(error, float(np.max(np.abs(back - expected.waveforms[rows]), initial=0.0)))
      if reference is not None:
        changed += int(np.any(back != reference.waveforms[rows], axis=1).sum())
    per_split[split] = {"clips": len(expected), "max_abs_error": error,
                        "clips_changed": changed if reference is not None else None}
  differing = [p for p in extra_files
               if not filecmp.cmp(pathlib.Path(source_root, p), folder / p, shallow=False)]
  if differing:
    raise ReadBackError(f"{folder}: {len(differing)} copied input file(s) differ from the input "
                        f"(e.g. {differing[:5]}); re-run the stage.")
  max_error = max((s["max_abs_error"] for s in per_split.values()), default=0.0)
  return {"max_abs_error": max_error, "error_in_lsb": max_error * 32768.0,
          "clips_changed": sum(s["clips_changed"] or 0 for s in per_split.values()),
          "splits": per_split, "extra_files_checked": len(extra_files)}


def enforce(check: Mapping[str, Any], folder: str | os.PathLike, *,
            max_error_lsb: float | None = None,
            max_changed: Mapping[str, int] | None = None) -> None:
  """Raises ReadBackError when ``check`` exceeds the read-back error allowed (in 16-bit steps)
  or a split has more clips changed than allowed (``max_changed``; a split not named: 0)."""
  if max_error_lsb is not None and check["error_in_lsb"] > max_error_lsb:
    raise ReadBackError(f"The dataset written at {folder} does not hold the clips given to it "
                        f"(read-back error {check['error_in_lsb']:g} 16-bit steps > "
                        f"{max_error_lsb:g}); nothing was published. Re-run the stage.")
  if max_changed is None:
    return
  for split, info in check["splits"].items():
    if info["clips_changed"] is not None and info["clips_changed"] > max_changed.get(split, 0):
      raise ReadBackError(
          f"The {split} split written at {folder} has {info['clips_changed']} clips that differ "
          f"from the input, more than the {max_changed.get(split, 0)} allowed; nothing was "
          "published. Re-run the stage.")
