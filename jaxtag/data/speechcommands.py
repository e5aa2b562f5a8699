"""Speech Commands (v2) folder layout: load a split as an AudioDataset, export one back.

The layout (Warden 2018)::

  root/<word>/<speaker>_nohash_<n>.wav   one-second 16 kHz mono clips, one folder per class
  root/validation_list.txt               relative paths (``<word>/<file>.wav``) of validation clips
  root/testing_list.txt                  relative paths of test clips; train is every other clip
  root/_background_noise_/*.wav          long noise recordings (see load_background_noise)

Folders whose name starts with ``_`` or ``.`` are not classes. The speaker id of a clip is the
part of its file name before ``_nohash_`` (the whole stem when the marker is absent).

Bad input, and what the loader does with it:
  * missing root, missing requested class folder, class folder without WAV files, an empty
    split: :class:`~jaxtag.data.DatasetError` naming the path. ``on_empty_class="skip"`` drops
    empty class folders instead (logged).
  * a split list line naming a file that does not exist: :class:`~jaxtag.data.DatasetError`
    naming the list, the line and the file; ``on_missing_file="skip"`` leaves such clips out
    instead, logs the count and records it in ``dataset.info["skipped_missing"]``.
  * a split whose list file is absent or empty (no ``validation_list.txt``, or one without a
    line): that split does not exist, :class:`~jaxtag.data.SplitNotFoundError` (``train`` keeps
    every clip not held out).
  * a bad clip (unreadable, non-WAV, truncated, empty, stereo, NaN/Inf, wrong rate with
    ``on_rate_mismatch="error"``): :class:`~jaxtag.audio.io.AudioFileError` naming the file, or
    with ``on_bad_file="skip"`` the clip is left out, the count logged as a warning and recorded
    in ``dataset.info["skipped_bad"]``.
  * stereo clips: error by default; ``mono="mean"`` averages the channels.
  * wrong sample rate: resampled by default (``on_rate_mismatch="resample"``).
  * clips shorter or longer than ``clip_samples``: zero-padded at the end or cropped.
  * silent clips (peak <= 1e-4) and clipped clips (>= 1% of samples at ``|x| >= 0.999``) are
    kept; they are counted in a logged warning and flagged per clip in
    ``metadata["silent"]`` (bool) and ``metadata["clipped_fraction"]`` (float32), so a caller can
    drop them with ``dataset.subset(...)``.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np

from jaxtag import errors as errors_lib
from jaxtag.audio import io as audio_io
from jaxtag.data.dataset import AudioDataset, DatasetError, SplitNotFoundError

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
BACKGROUND_NOISE_DIR = "_background_noise_"
SPLIT_LISTS = {"validation": "validation_list.txt", "test": "testing_list.txt"}
NOHASH = "_nohash_"
# A clip counts as clipped (for the logged warning) when this fraction of it sits at full scale.
CLIPPED_WARN_FRACTION = 0.01


def speaker_from_filename(filename: str) -> str:
  """``'0a7c2a8d_nohash_0.wav'`` -> ``'0a7c2a8d'`` (the stem when there is no ``_nohash_``)."""
  stem = os.path.splitext(os.path.basename(filename))[0]
  return stem.split(NOHASH, 1)[0]


def check_option(name: str, value, allowed: Sequence) -> None:
  """Raises ValueError when a loader option is not one of ``allowed`` (naming the option as the
  caller sets it: the keyword, or under a launcher its flag)."""
  if value not in allowed:
    raise ValueError(f"{errors_lib.option(name)} must be one of {tuple(allowed)}; got {value!r}.")


def read_clips(paths: Sequence[str], *, what: str, num_samples: int, sample_rate: int,
               on_rate_mismatch: str, mono: str, on_bad_file: str, max_workers: int | None,
               progress: bool) -> tuple[np.ndarray, list[int], list[str]]:
  """``audio_io.read_wav_files`` for a loader: its errors name the loader's options (or the
  launcher's flags) that avoid them, and skipped bad clips are logged.

  Returns:
    ``(waveforms, kept, errors)`` as :func:`jaxtag.audio.io.read_wav_files`.

  Raises:
    AudioFileError: a bad clip with ``on_bad_file="error"``, naming the file and the fixes.
  """
  # Spelled here, not in the reader threads: the launcher's flags live in a context variable.
  fixes = {"mono": errors_lib.option("mono", "mean", owner="DataSource"),
           "resample": errors_lib.option("on_rate_mismatch", "resample", owner="DataSource")}
  try:
    waveforms, kept, bad = audio_io.read_wav_files(
        paths, num_samples=num_samples, sample_rate=sample_rate,
        resample=on_rate_mismatch == "resample", mono=mono, skip_errors=on_bad_file == "skip",
        max_workers=max_workers, progress=progress, fixes=fixes)
  except audio_io.AudioFileError as e:
    if on_bad_file == "skip":
      raise
    skip = errors_lib.option("on_bad_file", "skip", owner="DataSource")
    raise audio_io.AudioFileError(
        f"{e} To leave every bad clip out instead (counted and logged), pass {skip}.") from e
  if bad:
    logger.warning("%s: skipped %d of %d bad clips (%s); first: %s", what, len(bad), len(paths),
                   errors_lib.option("on_bad_file", "skip", owner="DataSource"), bad[0])
  return waveforms, kept, bad


def quality_metadata(waveforms: np.ndarray, paths: Sequence[str], what: str) -> dict:
  """Per-clip silence/clipping flags for ``metadata``; logs a warning when any clip is affected."""
  silent, clipped_fraction = audio_io.clip_quality(waveforms)
  clipped = clipped_fraction >= CLIPPED_WARN_FRACTION
  clipped_label = f"clipped (>= {CLIPPED_WARN_FRACTION:.0%} of samples at full scale)"
  for flag, label in ((silent, "silent (peak <= 1e-4)"), (clipped, clipped_label)):
    if flag.any():
      examples = ", ".join(paths[i] for i in np.flatnonzero(flag)[:5])
      logger.warning("%s: %d of %d clips are %s and were kept (e.g. %s); see metadata['silent'] "
                     "and metadata['clipped_fraction'] to filter them.",
                     what, int(flag.sum()), len(flag), label, examples)
  return {"silent": silent, "clipped_fraction": clipped_fraction}


def _is_class_dir(entry: os.DirEntry) -> bool:
  return entry.is_dir() and not entry.name.startswith(("_", "."))


def _wav_files(directory: str) -> list[str]:
  return sorted(e.name for e in os.scandir(directory)
                if e.is_file() and e.name.lower().endswith(".wav") and not e.name.startswith("."))


def _read_split_list(root: str, split: str) -> dict[str, int] | None:
  """Relative paths listed for ``split``, each with the (first) line number naming it; None when
  the list file does not exist."""
  list_path = os.path.join(root, SPLIT_LISTS[split])
  if not os.path.isfile(list_path):
    return None
  listed = {}
  with open(list_path, encoding="utf-8") as f:
    for number, line in enumerate(f, start=1):
      if line.strip():
        listed.setdefault(line.strip().replace("\\", "/"), number)
  return listed


def _missing_listed_files(root: str, split: str, listed: Mapping[str, int],
                          all_paths: set[str], requested: set[str] | None,
                          on_missing_file: str) -> int:
  """Checks that every file ``split``'s list names exists; returns how many do not (skipped).

  Lines of classes the caller did not ask for (``classes=``) are not checked; with every class
  requested, a line whose class folder does not exist names a missing file too.

  Raises:
    DatasetError: a missing file with ``on_missing_file="error"``, naming the list, the line
      and the file.
  """
  list_path = os.path.join(root, SPLIT_LISTS[split])
  missing = sorted((line, path) for path, line in listed.items()
                   if path not in all_paths
                   and (requested is None or path.split("/", 1)[0] in requested)
                   and not os.path.isfile(os.path.join(root, path)))
  if not missing:
    return 0
  skip = errors_lib.option("on_missing_file", "skip", owner="DataSource")
  if on_missing_file == "error":
    line, path = missing[0]
    raise DatasetError(
        f"{list_path} line {line}: names {os.path.join(root, path)}, which does not exist "
        f"({len(missing)} missing file(s) in this list). Restore the file, remove the line, or "
        f"pass {skip} to leave such clips out of the {split!r} split.")
  examples = ", ".join(f"line {line}: {path}" for line, path in missing[:3])
  logger.warning("%s: %d listed file(s) do not exist and were left out of the %r split (%s); "
                 "e.g. %s.", list_path, len(missing), split, skip, examples)
  return len(missing)


def list_speech_commands(
    root: str | os.PathLike, split: str = "train", *, classes: Sequence[str] | None = None,
    on_empty_class: Literal["error", "skip"] = "error",
    on_missing_file: Literal["error", "skip"] = "error",
) -> tuple[list[str], np.ndarray, tuple[str, ...]]:
  """Lists the clips of one split without reading audio.

  Args:
    root: dataset folder.
    split: ``"train"``, ``"validation"`` or ``"test"``.
    classes: class folders to use, in label order (default: every class folder, sorted).
    on_empty_class: a class folder without WAV files raises (``"error"``) or is dropped.
    on_missing_file: a line of the split's list naming a file that does not exist raises
      (``"error"``) or is left out, counted in a logged warning (``"skip"``).

  Returns:
    ``(paths, labels, class_names)``: sorted relative paths (``word/file.wav``), int32 labels.

  Raises:
    SplitNotFoundError: ``validation`` or ``test`` without its list file, or with an empty one.
    DatasetError: missing root or class folder; a listed file that does not exist
      (``on_missing_file="error"``); an empty class folder (``on_empty_class="error"``); no class
      at all.
  """
  paths, labels, class_names, _ = _list_split(
      root, split, classes=classes, on_empty_class=on_empty_class,
      on_missing_file=on_missing_file)
  return paths, labels, class_names


def _class_files(root: str, classes: Sequence[str] | None,
                 on_empty_class: str) -> dict[str, list[str]]:
  """``{class: sorted WAV file names}`` of the requested classes, in label order."""
  if not os.path.isdir(root):
    raise DatasetError(f"{root}: Speech Commands root folder does not exist. Pass the folder "
                       "that holds the class folders and validation_list.txt.")
  if classes is None:
    class_names = sorted(e.name for e in os.scandir(root) if _is_class_dir(e))
    if not class_names:
      raise DatasetError(f"{root}: no class folders found (expected root/<word>/*.wav).")
  else:
    class_names = [str(c) for c in classes]
    if len(set(class_names)) != len(class_names):
      raise DatasetError(f"classes has duplicates: {class_names}.")
    missing = [c for c in class_names if not os.path.isdir(os.path.join(root, c))]
    if missing:
      available = sorted(e.name for e in os.scandir(root) if _is_class_dir(e))
      raise DatasetError(
          f"{root}: requested class folder(s) {missing} do not exist. Available classes: "
          f"{available}. Fix {errors_lib.option('classes')} (the class folders to use) or the "
          "dataset root.")
  files_by_class = {}
  for name in class_names:
    files = _wav_files(os.path.join(root, name))
    if not files:
      folder = os.path.join(root, name)
      if on_empty_class == "error":
        skip = errors_lib.option("on_empty_class", "skip", owner="DataSource")
        raise DatasetError(f"{folder}: class folder has no .wav files. Add clips, remove the "
                           f"folder, or pass {skip}.")
      logger.warning("%s: class folder has no .wav files; class %r skipped.", folder, name)
      continue
    files_by_class[name] = files
  if not files_by_class:
    raise DatasetError(f"{root}: every requested class folder is empty.")
  return files_by_class


def _list_split(root, split: str, *, classes: Sequence[str] | None, on_empty_class: str,
                on_missing_file: str) -> tuple[list[str], np.ndarray, tuple[str, ...], int]:
  """:func:`list_speech_commands`, plus how many listed files were missing (and skipped)."""
  root = os.fspath(root)
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}; got {split!r}.")
  check_option("on_empty_class", on_empty_class, ("error", "skip"))
  check_option("on_missing_file", on_missing_file, ("error", "skip"))
  files_by_class = _class_files(root, classes, on_empty_class)
  class_names = list(files_by_class)
  lists = {s: _read_split_list(root, s) for s in SPLIT_LISTS}
  if split != "train" and not lists[split]:
    # An empty list is what export_speech_commands writes for a split the dataset lacks.
    state = "not found" if lists[split] is None else "empty"
    raise SplitNotFoundError(
        f"{os.path.join(root, SPLIT_LISTS[split])}: split list {state}, so this dataset has no "
        f"{split!r} split (every clip not held out by another list is a training clip).")
  for s, listed in lists.items():
    if listed is None:
      logger.warning("%s: not found; no clip is held out as %s.",
                     os.path.join(root, SPLIT_LISTS[s]), s)
  all_paths = {f"{c}/{f}" for c, files in files_by_class.items() for f in files}
  skipped = 0
  if split != "train":
    requested = None if classes is None else {str(c) for c in classes}
    skipped = _missing_listed_files(root, split, lists[split], all_paths, requested,
                                    on_missing_file)
    selected = {p for p in lists[split] if p in all_paths}
  else:
    held_out = set().union(*(v for v in lists.values() if v is not None))
    selected = all_paths - held_out
  label_of = {c: i for i, c in enumerate(class_names)}
  paths = sorted(selected, key=lambda p: (label_of[p.split("/", 1)[0]], p))
  if not paths:
    raise DatasetError(f"{root}: split {split!r} has no clips of classes {class_names}.")
  labels = np.array([label_of[p.split("/", 1)[0]] for p in paths], np.int32)
  return paths, labels, tuple(class_names), skipped


def load_speech_commands(
    root: str | os.PathLike, split: str = "train", *, sample_rate: int = 16000,
    clip_samples: int | None = None, classes: Sequence[str] | None = None,
    on_rate_mismatch: Literal["resample", "error"] = "resample",
    mono: Literal["error", "mean"] = "error", on_bad_file: Literal["error", "skip"] = "error",
    on_empty_class: Literal["error", "skip"] = "error",
    on_missing_file: Literal["error", "skip"] = "error", max_workers: int | None = None,
    progress: bool = False,
) -> AudioDataset:
  """Loads one split of a Speech Commands folder (handling of bad input: module docstring).

  Args:
    root: dataset folder.
    split: ``"train"``, ``"validation"`` or ``"test"``.
    sample_rate: rate of the returned waveforms in Hz.
    clip_samples: clip length; default one second (``sample_rate``).
    classes: class folders to use, in label order (default: all, sorted).
    on_rate_mismatch: ``"resample"`` files at another rate, or ``"error"``.
    mono: multi-channel files raise (``"error"``) or are averaged (``"mean"``).
    on_bad_file: a bad clip raises (``"error"``) or is skipped and counted (``"skip"``).
    on_empty_class: an empty class folder raises (``"error"``) or is dropped (``"skip"``).
    on_missing_file: a split list line naming a missing file raises (``"error"``) or the clip
      is left out and counted (``"skip"``).
    max_workers: reader threads.
    progress: show a progress bar.

  Returns:
    An AudioDataset with speaker ids, paths relative to ``root``, the per-clip
    ``metadata["silent"]``/``metadata["clipped_fraction"]`` flags and
    ``info = {"skipped_missing": ..., "skipped_bad": ...}`` (clips left out).

  Raises:
    SplitNotFoundError: ``validation`` or ``test`` without its list file, or with an empty one.
    DatasetError: layout problems (see :func:`list_speech_commands`), or every clip bad.
    AudioFileError: a bad clip with ``on_bad_file="error"``.
  """
  check_option("on_rate_mismatch", on_rate_mismatch, ("resample", "error"))
  check_option("on_bad_file", on_bad_file, ("error", "skip"))
  root = os.fspath(root)
  paths, labels, class_names, skipped_missing = _list_split(
      root, split, classes=classes, on_empty_class=on_empty_class,
      on_missing_file=on_missing_file)
  clip_samples = sample_rate if clip_samples is None else int(clip_samples)
  waveforms, kept, bad = read_clips(
      [os.path.join(root, p) for p in paths], what=f"{root} split {split!r}",
      num_samples=clip_samples, sample_rate=sample_rate, on_rate_mismatch=on_rate_mismatch,
      mono=mono, on_bad_file=on_bad_file, max_workers=max_workers, progress=progress)
  if not kept:
    raise DatasetError(f"{root}: every clip of split {split!r} is bad; nothing to load.")
  paths = [paths[i] for i in kept]
  return AudioDataset(
      waveforms=waveforms, labels=labels[kept], class_names=class_names,
      sample_rate=sample_rate, split=split,
      speaker_ids=np.array([speaker_from_filename(p) for p in paths]), paths=tuple(paths),
      metadata=quality_metadata(waveforms, paths, f"{root} split {split!r}"),
      info={"skipped_missing": skipped_missing, "skipped_bad": len(bad)})


def load_background_noise(
    root: str | os.PathLike, *, sample_rate: int = 16000,
    on_rate_mismatch: Literal["resample", "error"] = "resample",
    mono: Literal["error", "mean"] = "error",
) -> dict[str, np.ndarray]:
  """Loads ``root/_background_noise_/*.wav`` as ``{stem: float32 waveform}`` (sorted by name).

  The recordings keep their own lengths. A missing folder gives an empty dict (the folder is
  optional in exported datasets); a bad file raises AudioFileError naming it.
  """
  check_option("on_rate_mismatch", on_rate_mismatch, ("resample", "error"))
  folder = os.path.join(os.fspath(root), BACKGROUND_NOISE_DIR)
  if not os.path.isdir(folder):
    return {}
  return {
      os.path.splitext(f)[0]: audio_io.read_wav(
          os.path.join(folder, f), sample_rate=sample_rate,
          resample=on_rate_mismatch == "resample", mono=mono)[0]
      for f in _wav_files(folder)}


def _check_relative(path: str, what: str) -> str:
  path = path.replace("\\", "/")
  parts = path.split("/")
  if os.path.isabs(path) or ".." in parts or len(parts) != 2 or not parts[1]:
    raise DatasetError(f"{what}: path {path!r} must look like '<class>/<file>.wav'.")
  return path


def _export_paths(ds: AudioDataset, used: set[str], counters: dict) -> list[str]:
  """Relative file names for the clips of ``ds``: its own paths, else generated ones."""
  out = []
  for i in range(len(ds)):
    class_name = ds.class_names[ds.labels[i]]
    if ds.paths is not None:
      path = _check_relative(ds.paths[i], f"dataset split {ds.split!r} clip {i}")
      if path.split("/", 1)[0] != class_name:
        raise DatasetError(
            f"dataset split {ds.split!r} clip {i}: path {path!r} is not in the folder of its "
            f"label {class_name!r}; the loader would label it by folder. Fix paths or labels.")
    else:
      speaker = "clip" if ds.speaker_ids is None else str(ds.speaker_ids[i])
      speaker = speaker.replace("/", "-").replace("\\", "-") or "clip"
      while True:
        n = counters.get((class_name, speaker), 0)
        counters[(class_name, speaker)] = n + 1
        path = f"{class_name}/{speaker}{NOHASH}{n}.wav"
        if path not in used:
          break
    if path in used:
      raise DatasetError(f"dataset split {ds.split!r}: path {path!r} appears twice; clip paths "
                         "must be unique across splits.")
    used.add(path)
    out.append(path)
  return out


def export_speech_commands(
    datasets: AudioDataset | Mapping[str, AudioDataset], root: str | os.PathLike, *,
    background_noise: Mapping[str, np.ndarray] | None = None, overwrite: bool = False,
    subtype: str = "PCM_16", max_workers: int | None = None,
) -> dict[str, list[str]]:
  """Writes splits in the Speech Commands layout (see the module docstring).

  Every file is written atomically. Clips keep ``dataset.paths`` when present, else they are named
  ``<class>/<speaker or 'clip'>_nohash_<i>.wav``. Both split lists are always written (possibly
  empty), so that the folder loads back with the same splits.

  Args:
    datasets: one dataset (exported under its ``split``) or ``{split: dataset}``; splits must be
      ``train``, ``validation`` or ``test`` and share class names and sample rate.
    root: destination folder.
    background_noise: optional ``{name: waveform}`` written to ``_background_noise_/<name>.wav``
      at the datasets' sample rate.
    overwrite: allow a non-empty ``root`` that holds an earlier export (its ``.jaxtag_publish.json``
      lists what that export wrote). The export then replaces it: clips of the earlier export
      that it does not write again are deleted, because they would load as training clips.
      Nothing that jaxtag did not write is deleted or overwritten: a clip, split list or noise
      file it does not know is refused before anything is written; other files (README...) are
      left as they are.
    subtype: WAV sample format (16-bit PCM by default).
    max_workers: writer threads.

  Returns:
    ``{split: relative paths written}``.

  Raises:
    DatasetError: non-empty root without ``overwrite``, a file at ``root`` that the export would
      replace or delete but that no earlier export wrote, unknown split names, datasets that do
      not agree, or paths that do not match their labels or repeat.
  """
  if isinstance(datasets, AudioDataset):
    datasets = {datasets.split: datasets}
  root = os.fspath(root)
  if not datasets:
    raise DatasetError("export_speech_commands: no dataset given.")
  for split in datasets:
    if split not in SPLITS:
      raise DatasetError(f"export_speech_commands: split {split!r} is not one of {SPLITS}; pass "
                         "a mapping {'train': ..., 'validation': ..., 'test': ...}.")
  first = next(iter(datasets.values()))
  for split, ds in datasets.items():
    if ds.class_names != first.class_names or ds.sample_rate != first.sample_rate:
      raise DatasetError(f"export_speech_commands: split {split!r} has other class names or "
                         "sample rate than the first split.")
  if os.path.isdir(root) and os.listdir(root) and not overwrite:
    raise DatasetError(f"{root}: destination is not empty. Choose an empty folder or pass "
                       "overwrite=True to replace the dataset there.")
  used, counters, written, jobs = set(), {}, {}, []
  for split in sorted(datasets, key=SPLITS.index):
    ds = datasets[split]
    written[split] = _export_paths(ds, used, counters)
    jobs += [(p, ds.waveforms[i]) for i, p in enumerate(written[split])]
  for name, wave in (background_noise or {}).items():
    name = name if name.lower().endswith(".wav") else f"{name}.wav"
    jobs.append((f"{BACKGROUND_NOISE_DIR}/{os.path.basename(name)}", wave))
  targets = [p for p, _ in jobs] + list(SPLIT_LISTS.values())
  earlier = _earlier_export(root, targets) if os.path.isdir(root) else set()
  # The plan is recorded first, so that a re-run after a kill may replace what this one wrote.
  _write_record(root, written, set(targets) | earlier)
  workers = max_workers or min(16, (os.cpu_count() or 1) + 4)
  with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
    list(pool.map(lambda job: audio_io.write_wav(os.path.join(root, job[0]), job[1],
                                                 first.sample_rate, subtype=subtype), jobs))
  for split, list_name in SPLIT_LISTS.items():
    lines = "".join(f"{p}\n" for p in written.get(split, []))
    audio_io.write_text_atomic(os.path.join(root, list_name), lines)
  _remove_stale_clips(root, used, earlier)
  kept = {p for p in earlier if os.path.isfile(os.path.join(root, p))}
  _write_record(root, written, set(targets) | kept)
  return written


def _clips_on_disk(root: str) -> set[str]:
  return {f"{e.name}/{f}" for e in os.scandir(root) if _is_class_dir(e) for f in _wav_files(e.path)}


def _earlier_export(root: str, targets: Sequence[str]) -> set[str]:
  """The files an earlier export recorded at ``root``; raises when the export would replace or
  delete a file that it did not write (a clip, list or noise file no record names)."""
  from jaxtag.data import publish  # pylint: disable=g-import-not-at-top
  record = publish.read_marker(root) or {}
  earlier = set(record.get("files", {}))
  at_risk = {p for p in targets if os.path.lexists(os.path.join(root, p))} | _clips_on_disk(root)
  foreign = sorted(at_risk - earlier)
  if foreign:
    raise DatasetError(
        f"{root}: overwrite=True replaces only an earlier export, but {len(foreign)} file(s) "
        f"there were not written by one (e.g. {foreign[:5]}) and would be replaced, or loaded as "
        "clips of the new dataset. Choose an empty folder, or move them away yourself.")
  return earlier


def _write_record(root: str, written: Mapping[str, list[str]], files: set[str]) -> None:
  from jaxtag.data import publish  # pylint: disable=g-import-not-at-top
  sizes = {p: os.path.getsize(os.path.join(root, p)) if os.path.isfile(os.path.join(root, p))
           else -1 for p in sorted(files)}
  publish.write_marker(root, {"stage": "export_speech_commands", "owner": None,
                              "state": "complete" if -1 not in sizes.values() else "writing",
                              "splits": {s: {"count": len(p), "files": p}
                                         for s, p in written.items()},
                              "files": sizes})


def _remove_stale_clips(root: str, keep: set[str], earlier: set[str]) -> None:
  """Deletes the clips of an earlier export (``earlier``) that this one did not write."""
  for rel in sorted(_clips_on_disk(root) - keep):
    if rel not in earlier:
      continue   # Refused before writing (_earlier_export); never deleted.
    logger.info("export_speech_commands: removing stale clip %s", os.path.join(root, rel))
    os.remove(os.path.join(root, rel))
    folder = os.path.join(root, rel.split("/", 1)[0])
    if not os.listdir(folder):
      os.rmdir(folder)  # An empty class folder would fail the next load.
