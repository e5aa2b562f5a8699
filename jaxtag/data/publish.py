"""Writing a dataset in its source's folder layout, so that a killed write is never trusted.

``export_splits`` writes every split into a temporary sibling folder ``.<name>.tmp-<pid>`` and
renames it into place only when complete: a reader (or a re-run of the stage) sees the previous
dataset or the new one, never half of one. A writer killed mid-way leaves its temporary folder
behind; ``remove_stale`` deletes those of processes that no longer run.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
from collections.abc import Mapping

from jaxtag.data.dataset import AudioDataset

_TEMP = re.compile(r"^\.(?P<name>.+)\.(?:tmp|old)-(?P<pid>\d+)$")


def _alive(pid: int) -> bool:
  if pid == os.getpid():
    return True
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True   # Someone else's process.
  return True


def remove_stale(destination: str | os.PathLike) -> list[pathlib.Path]:
  """Deletes the temporary folders that writers of ``destination`` killed mid-way left beside it
  (``.<name>.tmp-<pid>`` and ``.<name>.old-<pid>`` of processes that are gone); returns them."""
  destination = pathlib.Path(destination)
  removed = []
  if not destination.parent.is_dir():
    return removed
  for entry in destination.parent.iterdir():
    match = _TEMP.match(entry.name)
    if match and match["name"] == destination.name and not _alive(int(match["pid"])):
      shutil.rmtree(entry, ignore_errors=True)
      removed.append(entry)
  return removed


def export_splits(source, splits: Mapping[str, AudioDataset],
                  destination: str | os.PathLike) -> pathlib.Path:
  """Writes ``splits`` in ``source``'s folder layout (a ``jaxtag.data.sources.DataSource``:
  SpeechCommands with its background noise for the corpus and SpeechCommands, ESC-50, or a TFDS
  builder folder), replacing ``destination`` atomically.

  Returns:
    ``destination``.
  """
  from jaxtag.data import esc50, sources, speechcommands, tfds

  destination = pathlib.Path(destination)
  destination.parent.mkdir(parents=True, exist_ok=True)
  remove_stale(destination)
  tmp = destination.with_name(f".{destination.name}.tmp-{os.getpid()}")
  shutil.rmtree(tmp, ignore_errors=True)
  if source.kind in ("corpus", "speech_commands"):
    noise = speechcommands.load_background_noise(sources.dataset_root(source, progress=False),
                                                 sample_rate=source.sample_rate)
    speechcommands.export_speech_commands(dict(splits), tmp, background_noise=noise)
  elif source.kind == "esc50":
    esc50.export_esc50(list(splits.values()), tmp)
  else:
    tfds.export_tfds(dict(splits), tmp, name=f"{source.name.split(':')[0]}_protected")
  old = destination.with_name(f".{destination.name}.old-{os.getpid()}")
  if destination.exists():
    destination.rename(old)
  tmp.rename(destination)
  shutil.rmtree(old, ignore_errors=True)
  return destination
