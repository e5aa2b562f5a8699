"""ESC-50 folder layout: load folds as an AudioDataset, export one back.

The layout (Piczak 2015)::

  root/audio/{fold}-{src_file}-{take}-{target}.wav   5 s mono clips at 44.1 kHz
  root/meta/esc50.csv   columns filename,fold,target,category,esc10,src_file,take

``filename``, ``fold``, ``target`` and ``category`` are required; ``esc10`` is required only with
``esc10_only=True``; ``src_file`` and ``take`` are optional. Class names are the categories
present in the csv (after the ESC-10 filter, over all folds, so that every fold selection agrees)
ordered by their ``target``; labels index them, and ``metadata["target"]`` keeps the original
target. Clips from one source recording share a fold, so folds are the unit of cross-validation.

Bad input: a missing root or csv, missing or malformed columns, a target with two categories and
a row naming a missing file raise :class:`~jaxtag.data.DatasetError` naming the csv (and line
and field); ``on_missing_file="skip"`` skips rows whose file is missing (counted in
``dataset.info["skipped_missing"]``), ``on_bad_file="skip"`` rows whose file is bad (and, unless
``on_missing_file`` says otherwise, missing). Bad clips, stereo, sample rates, silent and clipped
clips are handled as in :mod:`jaxtag.data.speechcommands`.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Sequence
from typing import Literal

import numpy as np

from jaxtag import errors as errors_lib
from jaxtag.audio import io as audio_io
from jaxtag.data.dataset import AudioDataset, DatasetError, concatenate
from jaxtag.data.speechcommands import check_option, quality_metadata, read_clips

logger = logging.getLogger(__name__)

ESC50_SAMPLE_RATE = 44100
CLIP_SECONDS = 5
META_PATH = os.path.join("meta", "esc50.csv")
AUDIO_DIR = "audio"
COLUMNS = ("filename", "fold", "target", "category", "esc10", "src_file", "take")
REQUIRED_COLUMNS = ("filename", "fold", "target", "category")


def _parse_bool(text: str, where: str) -> bool:
  value = text.strip().lower()
  if value in ("true", "1", "yes"):
    return True
  if value in ("false", "0", "no", ""):
    return False
  raise DatasetError(f"{where}: field 'esc10' must be True or False; got {text!r}.")


def _parse_int(text: str, field: str, where: str) -> int:
  try:
    return int(text.strip())
  except (ValueError, AttributeError):
    raise DatasetError(f"{where}: field {field!r} must be an integer; got {text!r}.") from None


def read_esc50_meta(csv_path: str | os.PathLike, *, need_esc10: bool = False) -> list[dict]:
  """Parses and checks ``esc50.csv``.

  Args:
    csv_path: the csv file.
    need_esc10: require the ``esc10`` column.

  Returns:
    One dict per row with ``filename`` (str), ``fold``, ``target`` (int), ``category`` (str),
    ``esc10`` (bool), ``src_file``, ``take`` (str), ``line`` (csv line number).

  Raises:
    DatasetError: missing file, missing columns, unparsable fields, a file name with a folder,
      a repeated file name, or a target mapped to two categories.
  """
  csv_path = os.fspath(csv_path)
  if not os.path.isfile(csv_path):
    raise DatasetError(f"{csv_path}: ESC-50 metadata file not found. The root must hold "
                       "meta/esc50.csv next to audio/.")
  with open(csv_path, newline="", encoding="utf-8") as f:
    reader = csv.DictReader(f)
    header = [c.strip() for c in (reader.fieldnames or [])]
    required = REQUIRED_COLUMNS + (("esc10",) if need_esc10 else ())
    missing = [c for c in required if c not in header]
    if missing:
      raise DatasetError(f"{csv_path}: missing column(s) {missing}; found {header}. Expected the "
                         f"ESC-50 header {','.join(COLUMNS)}.")
    rows = []
    for line, raw in enumerate(reader, start=2):
      raw = {(k or "").strip(): (v or "") for k, v in raw.items()}
      where = f"{csv_path} line {line}"
      filename = raw["filename"].strip()
      if not filename or "/" in filename or "\\" in filename:
        raise DatasetError(f"{where}: field 'filename' must be a bare file name; got {filename!r}.")
      category = raw["category"].strip()
      if not category:
        raise DatasetError(f"{where}: field 'category' is empty.")
      rows.append({
          "filename": filename,
          "fold": _parse_int(raw["fold"], "fold", where),
          "target": _parse_int(raw["target"], "target", where),
          "category": category,
          "esc10": _parse_bool(raw.get("esc10", ""), where),
          "src_file": raw.get("src_file", "").strip(),
          "take": raw.get("take", "").strip(),
          "line": line,
      })
  if not rows:
    raise DatasetError(f"{csv_path}: no rows.")
  seen, category_of = {}, {}
  for row in rows:
    if row["filename"] in seen:
      raise DatasetError(f"{csv_path} line {row['line']}: file {row['filename']!r} already "
                         f"listed on line {seen[row['filename']]}.")
    seen[row["filename"]] = row["line"]
    other = category_of.setdefault(row["target"], row["category"])
    if other != row["category"]:
      raise DatasetError(f"{csv_path} line {row['line']}: target {row['target']} is "
                         f"{row['category']!r} here but {other!r} earlier; fix the 'category' "
                         "or 'target' field.")
  return rows


def _split_name(folds: Sequence[int]) -> str:
  folds = sorted(folds)
  if len(folds) == 1:
    return f"fold{folds[0]}"
  if folds == list(range(folds[0], folds[-1] + 1)):
    return f"folds{folds[0]}-{folds[-1]}"
  return "folds" + "_".join(str(f) for f in folds)


def load_esc50(
    root: str | os.PathLike, *, folds: Sequence[int] = (1, 2, 3, 4, 5), sample_rate: int = 16000,
    clip_samples: int | None = None, esc10_only: bool = False,
    on_rate_mismatch: Literal["resample", "error"] = "resample",
    mono: Literal["error", "mean"] = "error", on_bad_file: Literal["error", "skip"] = "error",
    on_missing_file: Literal["error", "skip"] | None = None, max_workers: int | None = None,
    progress: bool = False,
) -> AudioDataset:
  """Loads the clips of some ESC-50 folds.

  Args:
    root: dataset folder holding ``audio/`` and ``meta/esc50.csv``.
    folds: folds to load; the split is named ``fold5``, ``folds1-4`` or ``folds1_3``.
    sample_rate: rate of the returned waveforms (files are resampled to it by default).
    clip_samples: clip length; default 5 s at ``sample_rate``.
    esc10_only: keep only the ESC-10 subset (10 classes).
    on_rate_mismatch: ``"resample"`` or ``"error"`` when a file is not at ``sample_rate``.
    mono: multi-channel files raise (``"error"``) or are averaged (``"mean"``).
    on_bad_file: a bad clip raises (``"error"``) or is skipped (``"skip"``).
    on_missing_file: a row naming a missing file raises (``"error"``) or is skipped and counted
      (``"skip"``); None follows ``on_bad_file``.
    max_workers: reader threads.
    progress: show a progress bar.

  Returns:
    An AudioDataset with paths ``audio/<filename>`` and metadata ``fold``, ``target``, ``esc10``,
    ``src_file``, ``take``, ``silent``, ``clipped_fraction``; ``info`` counts the rows left out
    (``skipped_missing``, ``skipped_bad``).

  Raises:
    DatasetError: layout or csv problems, folds without clips, a row naming a missing file.
    AudioFileError: a bad clip with ``on_bad_file="error"``.
  """
  check_option("on_rate_mismatch", on_rate_mismatch, ("resample", "error"))
  check_option("on_bad_file", on_bad_file, ("error", "skip"))
  on_missing_file = on_bad_file if on_missing_file is None else on_missing_file
  check_option("on_missing_file", on_missing_file, ("error", "skip"))
  root = os.fspath(root)
  if not os.path.isdir(root):
    raise DatasetError(f"{root}: ESC-50 root folder does not exist. Pass the folder that holds "
                       "audio/ and meta/esc50.csv.")
  csv_path = os.path.join(root, META_PATH)
  rows = read_esc50_meta(csv_path, need_esc10=esc10_only)
  # Folds are checked against the whole csv so that an ESC-10 fold without clips is no error.
  folds = sorted({int(f) for f in folds})
  present = sorted({r["fold"] for r in rows})
  empty = [f for f in folds if f not in present]
  if not folds or empty:
    raise DatasetError(f"{csv_path}: no rows for fold(s) {empty or folds}; folds present: "
                       f"{present}. Fix the folds argument.")
  if esc10_only:
    rows = [r for r in rows if r["esc10"]]
  targets = sorted({r["target"] for r in rows})
  categories = {r["target"]: r["category"] for r in rows}
  class_names = tuple(categories[t] for t in targets)
  label_of = {t: i for i, t in enumerate(targets)}
  rows = [r for r in rows if r["fold"] in folds]
  if not rows:
    raise DatasetError(f"{csv_path}: no ESC-10 row (esc10=True) in folds {folds}.")
  audio_paths = [os.path.join(root, AUDIO_DIR, r["filename"]) for r in rows]
  missing = [i for i, p in enumerate(audio_paths) if not os.path.isfile(p)]
  skip = errors_lib.option("on_missing_file", "skip", owner="DataSource")
  if missing and on_missing_file == "error":
    r = rows[missing[0]]
    raise DatasetError(
        f"{csv_path} line {r['line']}: field 'filename' names {audio_paths[missing[0]]}, which "
        f"does not exist ({len(missing)} missing file(s) in all). Restore the audio, remove the "
        f"rows, or pass {skip}.")
  if missing:
    logger.warning("%s: skipping %d row(s) whose audio file is missing (%s).",
                   csv_path, len(missing), skip)
    missing_set = set(missing)
    rows = [r for i, r in enumerate(rows) if i not in missing_set]
    audio_paths = [p for i, p in enumerate(audio_paths) if i not in missing_set]

  clip_samples = CLIP_SECONDS * sample_rate if clip_samples is None else int(clip_samples)
  waveforms, kept, bad = read_clips(
      audio_paths, what=f"{root} folds {folds}", num_samples=clip_samples,
      sample_rate=sample_rate, on_rate_mismatch=on_rate_mismatch, mono=mono,
      on_bad_file=on_bad_file, max_workers=max_workers, progress=progress)
  if not kept:
    raise DatasetError(f"{root}: no readable clip in folds {folds}.")
  rows = [rows[i] for i in kept]
  paths = tuple(f"{AUDIO_DIR}/{r['filename']}" for r in rows)
  metadata = {
      "fold": np.array([r["fold"] for r in rows], np.int32),
      "target": np.array([r["target"] for r in rows], np.int32),
      "esc10": np.array([r["esc10"] for r in rows], bool),
      "src_file": np.array([r["src_file"] for r in rows], str),
      "take": np.array([r["take"] for r in rows], str),
  }
  split = _split_name(folds)
  metadata.update(quality_metadata(waveforms, paths, f"{root} {split}"))
  return AudioDataset(
      waveforms=waveforms, labels=np.array([label_of[r["target"]] for r in rows], np.int32),
      class_names=class_names, sample_rate=sample_rate, split=split, paths=paths,
      metadata=metadata, info={"skipped_missing": len(missing), "skipped_bad": len(bad)})


def _export_field(ds: AudioDataset, key: str, default):
  values = ds.metadata.get(key)
  return [default(i) for i in range(len(ds))] if values is None else list(values)


def export_esc50(
    dataset: AudioDataset | Sequence[AudioDataset], root: str | os.PathLike, *,
    sample_rate: int | None = None, overwrite: bool = False, subtype: str = "PCM_16",
) -> list[str]:
  """Writes clips in the ESC-50 layout: ``audio/*.wav`` and ``meta/esc50.csv``.

  The clips are written at the dataset's own sample rate by default, not ESC-50's native
  44.1 kHz: upsampling cannot restore what a 16 kHz dataset lost, and would add a second
  resampling error to a protected dataset whose perturbation matters sample by sample. Pass
  ``sample_rate=44100`` to reproduce the original format; :func:`load_esc50` resamples either way.

  Needs ``metadata["fold"]``. File names come from ``dataset.paths`` when present, else are
  built as ``{fold}-{src_file}-{take}-{target}.wav`` (``src_file`` defaulting to the clip index,
  ``take`` to ``A``). ``target`` is ``metadata["target"]`` when present (ESC-10 keeps its
  original targets), else the label.

  Args:
    dataset: one dataset or several (e.g. ``folds1-4`` and ``fold5``) with the same classes.
    root: destination folder.
    sample_rate: rate of the written files (default: the dataset's).
    overwrite: allow a non-empty ``root`` (existing files of the same names are replaced; the csv
      lists only the clips written now; nothing is deleted).
    subtype: WAV sample format (16-bit PCM by default).

  Returns:
    The written file names, in csv order.

  Raises:
    DatasetError: no ``fold`` metadata, repeated file names, or a non-empty root without
      ``overwrite``.
  """
  ds = dataset if isinstance(dataset, AudioDataset) else concatenate(list(dataset))
  root = os.fspath(root)
  if "fold" not in ds.metadata:
    raise DatasetError("export_esc50: the dataset has no metadata['fold']; add a fold number "
                       "per clip (1-5) before exporting in the ESC-50 layout.")
  if os.path.isdir(root) and os.listdir(root) and not overwrite:
    raise DatasetError(f"{root}: destination is not empty. Choose an empty folder or pass "
                       "overwrite=True.")
  folds = [int(f) for f in ds.metadata["fold"]]
  targets = [int(t) for t in _export_field(ds, "target", lambda i: ds.labels[i])]
  src_files = [str(s) for s in _export_field(ds, "src_file", lambda i: f"{i:06d}")]
  takes = [str(t) for t in _export_field(ds, "take", lambda i: "A")]
  esc10 = [bool(e) for e in _export_field(ds, "esc10", lambda i: False)]
  if ds.paths is not None:
    names = [os.path.basename(p.replace("\\", "/")) for p in ds.paths]
  else:
    names = [f"{folds[i]}-{src_files[i]}-{takes[i]}-{targets[i]}.wav" for i in range(len(ds))]
  if len(set(names)) != len(names):
    raise DatasetError("export_esc50: clip file names repeat; give each clip a unique path or "
                       "src_file/take.")
  out_rate = ds.sample_rate if sample_rate is None else int(sample_rate)
  waveforms = audio_io.resample(ds.waveforms, ds.sample_rate, out_rate, axis=-1)
  for name, wave in zip(names, waveforms):
    audio_io.write_wav(os.path.join(root, AUDIO_DIR, name), wave, out_rate, subtype=subtype)
  text = io.StringIO()
  writer = csv.writer(text, lineterminator="\n")
  writer.writerow(COLUMNS)
  for i, name in enumerate(names):
    writer.writerow([name, folds[i], targets[i], ds.class_names[ds.labels[i]], esc10[i],
                     src_files[i], takes[i]])
  audio_io.write_text_atomic(os.path.join(root, META_PATH), text.getvalue())
  return names
