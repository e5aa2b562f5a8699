"""Publishing a dataset folder: never over the input or a user's files, whole or not at all, complete.

Every stage that writes a dataset (``launch.craft``, ``launch.poscuda_protect``) goes through
:func:`export_splits`, which keeps these rules:

* Location: the destination may not be the input dataset's folder, lie inside it or contain it
  (compared after resolving links; for the corpus the input is its cache folder).
* Ownership: a published folder holds a marker, ``.jaxtag_publish.json``, whose manifest names
  its owner (a stage's workdir, or None from Python), the input, the clips of every split and
  every file written with its size. A non-empty destination without the marker is refused with
  nothing touched; so is a marked one that holds a file its manifest does not list (or one whose
  size changed: a user's), or one published by another owner (unless the caller allows it).
* Atomicity: the folder is written into a temporary sibling ``.<name>.tmp-<pid>``, marked at once
  and ``flock``-ed while its writer runs, read back and checked there (:mod:`readback`), then
  renamed into place. An earlier output is moved aside (``.<name>.old-<pid>``) and deleted only
  after the rename.
* Stale temporaries: a marked ``.<name>.tmp-*`` or ``.<name>.old-*`` whose lock is free was left
  by a killed writer; :func:`remove_stale` deletes it (stages call it first thing, also when they
  then reuse a finished run). A lock, not the pid, tells: a pid is reused (by a thread too, as
  ``kill(pid, 0)`` sees thread ids) and, in containers, every run gets the same few pids.
* Complete copies: every input file that the export does not write -- README, LICENSE, metadata
  tables, ``_background_noise_/`` -- is copied byte for byte, unless ``copy_extra_files=False``;
  split lists (and ESC-50's csv when its rows no longer match) are regenerated. What was copied,
  regenerated or skipped (and why) is returned and recorded in the manifest.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import pathlib
import re
import shutil
import socket
from collections.abc import Iterator, Mapping
from typing import Any

from jaxtag import errors
from jaxtag.data.dataset import AudioDataset, DatasetError

logger = logging.getLogger(__name__)

MARKER = ".jaxtag_publish.json"
FORMAT = "jaxtag-publish/1"
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?:tmp|old)-(?P<pid>\d+)$")
# Files of the corpus cache that must not follow its clips: they describe the clean corpus, and
# with them synthesize_corpus would take the copy for its own cache (and may delete it).
_CORPUS_CACHE_FILES = (".jaxtag_corpus", "manifest.json")


class PublishError(DatasetError):
  """A destination that publishing would damage; the message names the folder and the fix."""


def input_root(source) -> pathlib.Path | None:
  """The folder that holds ``source``'s dataset (a ``DataSource``), without synthesising it:
  the corpus cache folder, the ``speech_commands``/``esc50`` root, or the TFDS builder folder
  ``<data_dir>/<name>``."""
  if source.kind == "corpus":
    if source.root:
      return pathlib.Path(source.root).expanduser()
    from jaxtag.data import corpus
    return corpus.default_corpus_dir(corpus.CorpusConfig.preset(source.preset,
                                                                seed=source.corpus_seed))
  if source.kind in ("speech_commands", "esc50"):
    return pathlib.Path(source.root).expanduser()
  data_dir = source.data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
  return pathlib.Path(data_dir).expanduser() / source.name.split(":")[0].split("/")[0]


def _real(path: str | os.PathLike) -> pathlib.Path:
  return pathlib.Path(os.path.realpath(os.path.expanduser(os.fspath(path))))


def check_location(destination: str | os.PathLike, input_folder: str | os.PathLike, *,
                   name: str = "destination") -> None:
  """Refuses a destination that is ``input_folder``, lies inside it or contains it.

  Raises:
    PublishError: naming both folders and the option to change (``name``).
  """
  dest, source = _real(destination), _real(input_folder)
  if dest == source:
    relation = "is"
  elif source in dest.parents:
    relation = "lies inside"
  elif dest in source.parents:
    relation = "contains"
  else:
    return
  raise PublishError(
      f"{destination} {relation} the input dataset {source}; publishing there could replace or "
      f"delete the input. Choose another {errors.option(name)}, outside {source} (for example "
      "a new folder beside it).")


def read_marker(folder: str | os.PathLike) -> dict[str, Any] | None:
  """The publish manifest of ``folder`` (None without a marker; ``{}`` when unreadable)."""
  path = pathlib.Path(folder, MARKER)
  if not path.is_file():
    return None
  try:
    return json.loads(path.read_text(encoding="utf-8"))
  except (OSError, ValueError):
    return {}


def write_marker(folder: str | os.PathLike, manifest: Mapping[str, Any]) -> None:
  """Writes ``folder``'s publish manifest atomically."""
  from jaxtag.audio import io as audio_io
  audio_io.write_text_atomic(pathlib.Path(folder, MARKER),
                             json.dumps({"format": FORMAT, **manifest}) + "\n")


def listing(folder: str | os.PathLike) -> dict[str, int]:
  """``{relative path: size}`` of every file under ``folder`` (links listed, not followed)."""
  folder = os.fspath(folder)
  out = {}
  for directory, subdirs, files in os.walk(folder):
    for name in files + [d for d in subdirs if os.path.islink(os.path.join(directory, d))]:
      path = os.path.join(directory, name)
      out[os.path.relpath(path, folder).replace(os.sep, "/")] = os.lstat(path).st_size
  return out


def check_destination(destination: str | os.PathLike, *, input_folder=None, owner=None,
                      replace_other_owner: bool = False, name: str = "destination",
                      replace_option: str | None = None) -> dict[str, Any] | None:
  """Raises unless publishing to ``destination`` can only replace jaxtag's own earlier output.

  Args:
    destination: the folder to publish.
    input_folder: the input dataset's folder (see :func:`check_location`).
    owner: who publishes (a stage's workdir as a string, or None).
    replace_other_owner: allow replacing a folder published by another owner.
    name: the option that set ``destination``, for messages (``output_dir``...).
    replace_option: the option that sets ``replace_other_owner``, for messages.

  Returns:
    The manifest of the earlier output there, or None (absent or empty folder).

  Raises:
    PublishError: the destination is the input (or inside it, or contains it), is not a folder,
      holds files jaxtag did not publish there, or was published by another owner.
  """
  destination = pathlib.Path(destination)
  if input_folder is not None:
    check_location(destination, input_folder, name=name)
  if not os.path.lexists(destination):
    return None
  if not destination.is_dir() or destination.is_symlink():
    raise PublishError(f"{destination} exists and is a link or not a folder; choose another "
                       f"{errors.option(name)}, or remove it yourself.")
  if not any(destination.iterdir()):
    return None
  marker = read_marker(destination)
  if not marker:
    raise PublishError(
        f"{destination} is not empty and is not a dataset that jaxtag published (it has no "
        f"readable {MARKER}), so nothing in it is replaced. Choose an empty or new "
        f"{errors.option(name)}, or move its contents away yourself.")
  if marker.get("owner") != owner and not replace_other_owner:
    allow = f", or pass {errors.option(replace_option, True)}" if replace_option else ""
    raise PublishError(
        f"{destination} holds a dataset published by {marker.get('owner')!r}, not written by "
        f"this workdir ({owner!r}); choose another {errors.option(name)}{allow}, or remove it "
        "yourself.")
  written = marker.get("files", {})
  foreign = sorted(p for p, size in listing(destination).items()
                   if p != MARKER and written.get(p) != size)
  if foreign:
    raise PublishError(
        f"{destination} holds {len(foreign)} file(s) that its {MARKER} does not list, or that "
        f"changed since it was published (e.g. {foreign[:5]}); they are not jaxtag's to delete. "
        f"Move them out of {destination}, or choose another {errors.option(name)}.")
  return marker


_NO_LOCKS = -1   # No flock on this platform: a temporary's writer cannot be told dead.


def _try_lock(folder: pathlib.Path) -> int | None:
  """An fd holding an exclusive ``flock`` on ``folder``; None when another process holds it."""
  try:
    import fcntl  # pylint: disable=g-import-not-at-top
  except ImportError:
    return _NO_LOCKS
  fd = os.open(folder, os.O_RDONLY)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    os.close(fd)
    return None
  return fd


def remove_stale(destination: str | os.PathLike) -> list[pathlib.Path]:
  """Deletes the temporary folders (``.<name>.tmp-<pid>``, ``.<name>.old-<pid>``) that killed
  writers of ``destination`` left beside it: those holding the publish marker whose lock no
  running writer holds. Unmarked folders of that name are left alone (logged).

  Returns:
    The folders removed.
  """
  destination = pathlib.Path(destination)
  removed = []
  if not destination.parent.is_dir():
    return removed
  for entry in sorted(destination.parent.iterdir()):
    match = _TEMP.match(entry.name)
    if not match or match["name"] != destination.name or entry.is_symlink() or not entry.is_dir():
      continue
    if not (entry / MARKER).is_file():
      logger.warning("%s: left alone, it holds no %s (not a jaxtag publish temporary); remove it "
                     "yourself if no export is running.", entry, MARKER)
      continue
    fd = _try_lock(entry)
    if fd is None or fd == _NO_LOCKS:
      continue   # Its writer still runs (or, without flock, may still run).
    try:
      shutil.rmtree(entry)
    finally:
      os.close(fd)
    logger.info("Removed %s, left by a killed export.", entry)
    removed.append(entry)
  return removed


@contextlib.contextmanager
def staging(destination: str | os.PathLike, manifest: Mapping[str, Any]) -> Iterator[pathlib.Path]:
  """Yields a fresh temporary sibling of ``destination``, marked (state ``writing``) and locked;
  deleted when the block raises. Publish it with :func:`replace`."""
  destination = pathlib.Path(destination)
  destination.parent.mkdir(parents=True, exist_ok=True)
  tmp = destination.with_name(f".{destination.name}.tmp-{os.getpid()}")
  if os.path.lexists(tmp):
    raise PublishError(f"{tmp} exists and is not a stale jaxtag temporary (remove_stale left "
                       "it); remove it yourself and run again.")
  tmp.mkdir()
  fd = _try_lock(tmp)
  try:
    write_marker(tmp, {**manifest, "state": "writing", "pid": os.getpid(),
                       "host": socket.gethostname()})
    yield tmp
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  finally:
    if fd is not None and fd != _NO_LOCKS:
      os.close(fd)


def replace(tmp: pathlib.Path, destination: pathlib.Path) -> None:
  """Renames ``tmp`` onto ``destination``; an earlier folder there is moved aside first and
  deleted only once the new one is in place."""
  old = destination.with_name(f".{destination.name}.old-{os.getpid()}")
  if os.path.lexists(destination):
    destination.rename(old)
  tmp.rename(destination)
  shutil.rmtree(old, ignore_errors=True)


@dataclasses.dataclass(frozen=True)
class Published:
  """What :func:`export_splits` wrote.

  Attributes:
    destination: the published folder.
    clips: clips per split.
    copied: input files copied byte for byte (relative paths).
    regenerated: input files written anew to describe the export (split lists, csv).
    skipped: input files left out, with the reason.
    check: the read-back check (:func:`jaxtag.data.readback.check_export`).
  """

  destination: pathlib.Path
  clips: dict[str, int]
  copied: tuple[str, ...]
  regenerated: tuple[str, ...]
  skipped: dict[str, str]
  check: dict[str, Any]

  def extra_files(self, limit: int | None = None) -> dict[str, Any]:
    """Counts and names (the first ``limit`` of each kind; all of them are in the published
    folder's manifest) of the copied, regenerated and skipped input files."""
    skipped = list(self.skipped.items())[:limit]
    return {"copied": {"count": len(self.copied), "files": list(self.copied[:limit])},
            "regenerated": {"count": len(self.regenerated),
                            "files": list(self.regenerated[:limit])},
            "skipped": {"count": len(self.skipped), "files": dict(skipped)}}


def _is_clip(kind: str, rel: str) -> bool:
  """Whether ``rel`` sits where the layout's loader looks for clips."""
  parts = rel.split("/")
  if kind == "speaker_folders":
    return False   # Every utterance not written is copied byte for byte (jaxtag.speaker.data).
  if kind == "esc50":
    return len(parts) == 2 and parts[0] == "audio" and rel.lower().endswith(".wav")
  return (len(parts) == 2 and not parts[0].startswith(("_", "."))
          and not parts[1].startswith(".") and rel.lower().endswith(".wav"))


def _esc50_csv_still_describes(source_root: pathlib.Path, tmp: pathlib.Path) -> bool:
  from jaxtag.data import esc50
  try:
    before = {r["filename"] for r in esc50.read_esc50_meta(source_root / esc50.META_PATH)}
    after = {r["filename"] for r in esc50.read_esc50_meta(tmp / esc50.META_PATH)}
  except DatasetError:
    return False
  return before == after


def copy_input_files(source_kind: str, source_root: pathlib.Path, tmp: pathlib.Path, *,
                     copy: bool = True) -> tuple[list[str], list[str], dict[str, str]]:
  """Copies into ``tmp`` every file of ``source_root`` that the export did not write.

  Returns:
    ``(copied, regenerated, skipped)``: relative paths, and ``{path: reason}`` for the skipped.
  """
  written = listing(tmp)
  verbatim_csv = source_kind == "esc50" and _esc50_csv_still_describes(source_root, tmp)
  copied, regenerated, skipped = [], [], {}
  for rel in sorted(listing(source_root)):
    if rel == MARKER:
      continue   # The input's own publish marker (it was published by jaxtag): ours is new.
    if _is_clip(source_kind, rel):
      if rel not in written:
        skipped[rel] = "a clip of no exported split"
      continue
    if source_kind == "corpus" and rel in _CORPUS_CACHE_FILES:
      skipped[rel] = "corpus cache file: it describes the clean corpus"
      continue
    if rel in written and not (verbatim_csv and copy and rel == "meta/esc50.csv"):
      regenerated.append(rel)
      continue
    if not copy:
      skipped[rel] = errors.option("copy_extra_files", False)
      continue
    target = tmp / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
      target.unlink()
    shutil.copyfile(source_root / rel, target, follow_symlinks=True)
    copied.append(rel)
  return copied, regenerated, skipped


def _write_layout(source, splits: Mapping[str, AudioDataset], tmp: pathlib.Path) -> dict:
  """Writes the clips (and split lists / csv) in ``source``'s layout; returns per-split files."""
  from jaxtag.data import esc50, speechcommands, tfds

  if source.kind in ("corpus", "speech_commands"):
    # overwrite: tmp holds only its marker; background noise is copied verbatim, not re-encoded.
    written = speechcommands.export_speech_commands(dict(splits), tmp, overwrite=True)
    return {s: {"count": len(p), "files": p} for s, p in written.items()}
  if source.kind == "esc50":
    names = esc50.export_esc50(list(splits.values()), tmp, overwrite=True)
    out, start = {}, 0
    for split, ds in splits.items():
      files = [f"{esc50.AUDIO_DIR}/{n}" for n in names[start:start + len(ds)]]
      out[split], start = {"count": len(ds), "files": files}, start + len(ds)
    return out
  tfds.export_tfds(dict(splits), tmp, name=protected_tfds_name(source))
  return {s: {"count": len(ds), "files": []} for s, ds in splits.items()}


def protected_tfds_name(source) -> str:
  """The TFDS name a published copy of ``source`` gets: ``<name>_protected``."""
  return f"{source.name.split(':')[0].split('/')[0]}_protected"


def export_splits(source, splits: Mapping[str, AudioDataset], destination: str | os.PathLike, *,
                  clean: Mapping[str, AudioDataset] | None = None, owner: str | None = None,
                  stage: str = "export_splits", copy_extra_files: bool = True,
                  max_error_lsb: float | None = None, max_changed: Mapping[str, int] | None = None,
                  replace_other_owner: bool = False, name: str = "destination",
                  replace_option: str | None = None) -> Published:
  """Publishes ``splits`` in ``source``'s folder layout at ``destination`` (rules: module doc).

  Args:
    source: the input's ``jaxtag.data.sources.DataSource`` (SpeechCommands layout for the corpus
      and SpeechCommands, ESC-50, or a TFDS builder folder named ``<name>_protected``).
    splits: the datasets to write, by split.
    destination: the folder to publish.
    clean: the input's splits, to count the clips the export changed.
    owner: who publishes (a stage's workdir); only its own earlier output is replaced.
    stage: recorded in the manifest.
    copy_extra_files: copy the input's other files (README, metadata, background noise).
    max_error_lsb: largest read-back error allowed, in 16-bit steps (None: not checked).
    max_changed: most clips per split that may differ from ``clean`` (a split not named: 0).
    replace_other_owner: replace a folder that another owner published.
    name: the option that set ``destination``, for messages.
    replace_option: the option that sets ``replace_other_owner``, for messages.

  Returns:
    What was published, and the read-back check.

  Raises:
    PublishError: an unsafe destination (nothing touched), or a written copy that does not read
      back as ``splits`` (nothing published).
  """
  from jaxtag.data import readback, sources

  destination = pathlib.Path(destination).absolute()
  root = input_root(source)
  remove_stale(destination)
  check_destination(destination, input_folder=root, owner=owner, name=name,
                    replace_other_owner=replace_other_owner, replace_option=replace_option)
  source_root = sources.dataset_root(source, progress=False)
  manifest = {"stage": stage, "owner": owner, "kind": source.kind,
              "input_root": str(root) if root else None}
  with staging(destination, manifest) as tmp:
    split_files = _write_layout(source, splits, tmp)
    copied, regenerated, skipped = ([], [], {}) if source_root is None else copy_input_files(
        source.kind, source_root, tmp, copy=copy_extra_files)
    if skipped:
      logger.warning("%s: %d input file(s) not copied: %s", destination, len(skipped),
                     dict(list(skipped.items())[:10]))
    check = readback.check_export(source, tmp, splits, clean=clean, source_root=source_root,
                                  extra_files=copied)
    readback.enforce(check, tmp, max_error_lsb=max_error_lsb, max_changed=max_changed)
    write_marker(tmp, {**manifest, "state": "complete", "splits": split_files,
                       "extra_files": {"copied": copied, "regenerated": regenerated,
                                       "skipped": skipped},
                       "files": {p: s for p, s in listing(tmp).items() if p != MARKER}})
    replace(tmp, destination)
  return Published(destination=destination, clips={s: len(d) for s, d in splits.items()},
                   copied=tuple(copied), regenerated=tuple(regenerated), skipped=skipped,
                   check=check)
