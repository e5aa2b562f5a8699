"""One typed description of "where the data comes from", shared by every pipeline stage.

Launchers turn their config's ``data`` block into a :class:`DataSource` (the block is generated
from this dataclass, so every loader option here is a ``--config.data.<field>`` flag); library
code calls :func:`load_split` / :func:`load_splits` and never needs to know which loader is
behind it.
"""

from __future__ import annotations

import dataclasses
import logging
import numbers
import pathlib
from typing import Any, Literal

from jaxtag import errors
from jaxtag.data.dataset import AudioDataset, DatasetError, SplitNotFoundError

logger = logging.getLogger(__name__)

SourceKind = Literal["corpus", "speech_commands", "esc50", "tfds"]
_KINDS = ("corpus", "speech_commands", "esc50", "tfds")
SPLITS = ("train", "validation", "test")
# The string options of the folder loaders and the values each accepts.
_CHOICES = {
    "mono": ("error", "mean"),
    "on_rate_mismatch": ("resample", "error"),
    "on_bad_file": ("error", "skip"),
    "on_missing_file": ("error", "skip"),
    "on_empty_class": ("error", "skip"),
}


@dataclasses.dataclass(frozen=True)
class DataSource:
  """Where a dataset lives and how to read it.

  Attributes:
    kind: ``corpus`` (the embedded espeak-ng corpus, synthesised and cached on first use),
      ``speech_commands`` (a SpeechCommands-layout folder), ``esc50`` (an ESC-50-layout folder)
      or ``tfds`` (a TFDS dataset by name, read from ``data_dir`` without downloading).
    root: folder of a ``speech_commands``/``esc50`` dataset; for ``corpus`` an optional cache
      folder (default: :func:`jaxtag.data.corpus.default_corpus_dir`).
    preset: corpus size preset (``tiny``, ``small``, ``default``, ``large``, ``xl``), for
      ``corpus`` only.
    corpus_seed: seed of the corpus synthesis (host-side data generation), for ``corpus`` only.
    name: TFDS dataset name, for ``tfds`` only.
    data_dir: TFDS data directory, for ``tfds`` only.
    sample_rate: sample rate every clip is brought to (resampled on load).
    esc50_test_fold: for ``esc50``, the fold held out as ``test`` (``train`` = the others).
    clip_samples: samples per clip (cropped or zero-padded at the end); None: the loader's
      default (one second for Speech Commands and the corpus, five for ESC-50, the longest clip
      for TFDS).
    classes: for ``speech_commands``/``corpus``, the class folders to use, in label order
      (None: every class folder, sorted); from a launcher ``--config.data.classes=yes,no``.
    mono: a multi-channel file raises (``error``) or its channels are averaged (``mean``).
      Folder sources only; TFDS audio is always averaged.
    on_rate_mismatch: a file at another sample rate is resampled (``resample``) or raises
      (``error``). Folder sources only.
    on_bad_file: an unreadable or unusable clip raises (``error``) or is left out, counted in
      ``dataset.info["skipped_bad"]`` (``skip``). Folder sources only.
    on_missing_file: a split list line (Speech Commands, corpus) or csv row (ESC-50) naming a
      file that does not exist raises (``error``) or is left out, counted in
      ``dataset.info["skipped_missing"]`` (``skip``).
    on_empty_class: a class folder without clips raises (``error``) or is dropped (``skip``),
      for ``speech_commands``/``corpus``.
    esc10_only: for ``esc50``, keep only the ESC-10 subset (10 classes).
    audio_key: for ``tfds``, the waveform feature.
    label_key: for ``tfds``, the label feature.
    max_workers: reader threads of the folder loaders (None: the loader's default).
  """

  kind: SourceKind = "corpus"
  root: str | None = None
  preset: str = "default"
  corpus_seed: int = 0
  name: str | None = None
  data_dir: str | None = None
  sample_rate: int = 16000
  esc50_test_fold: int = 5
  clip_samples: int | None = None
  classes: tuple[str, ...] | None = None
  mono: Literal["error", "mean"] = "error"
  on_rate_mismatch: Literal["resample", "error"] = "resample"
  on_bad_file: Literal["error", "skip"] = "error"
  on_missing_file: Literal["error", "skip"] = "error"
  on_empty_class: Literal["error", "skip"] = "error"
  esc10_only: bool = False
  audio_key: str = "audio"
  label_key: str = "label"
  max_workers: int | None = None

  def __post_init__(self):
    def name(field: str) -> str:
      return errors.option(field, owner="DataSource")

    if self.kind not in _KINDS:
      raise DatasetError(f"{name('kind')} must be one of {_KINDS}; got {self.kind!r}.")
    if self.kind in ("speech_commands", "esc50") and not self.root:
      raise DatasetError(f"{name('root')} is required for kind={self.kind!r} (the dataset "
                         "folder).")
    if self.kind == "tfds" and not self.name:
      raise DatasetError(f"{name('name')} is required for kind='tfds' (the TFDS dataset name).")
    for field, allowed in _CHOICES.items():
      value = getattr(self, field)
      if value not in allowed:
        raise DatasetError(f"{name(field)} must be one of {allowed}; got {value!r}.")
    for field in ("sample_rate", "clip_samples", "max_workers"):
      value = getattr(self, field)
      if value is not None and (isinstance(value, bool)
                                or not isinstance(value, numbers.Integral) or value <= 0):
        raise DatasetError(f"{name(field)} must be a positive integer; got {value!r}.")
    if self.kind == "esc50" and self.esc50_test_fold not in (1, 2, 3, 4, 5):
      raise DatasetError(f"{name('esc50_test_fold')} must be an ESC-50 fold, 1 to 5; got "
                         f"{self.esc50_test_fold!r}.")
    if self.classes is not None:
      object.__setattr__(self, "classes", _class_list(self.classes, name("classes")))
      if self.kind not in ("corpus", "speech_commands"):
        raise DatasetError(f"{name('classes')} selects class folders of a speech_commands or "
                           f"corpus source; kind={self.kind!r} has none. Leave it unset.")
    if self.esc10_only and self.kind != "esc50":
      raise DatasetError(f"{name('esc10_only')} applies to kind='esc50' only; got "
                         f"kind={self.kind!r}.")


def _class_list(classes: Any, shown: str) -> tuple[str, ...]:
  """``classes`` as a tuple of names. A flag gives ``("yes,no",)`` or ``"yes,no"``: split at
  commas (no class folder name holds one)."""
  if isinstance(classes, str):
    classes = (classes,)
  names = tuple(n.strip() for c in classes for n in str(c).split(","))
  if not names or not all(names):
    raise DatasetError(f"{shown} must name class folders, e.g. yes,no; got {classes!r}.")
  return names


def dataset_root(source: DataSource, *, progress: bool = True) -> pathlib.Path | None:
  """The folder that holds the dataset (synthesising the corpus first if needed)."""
  if source.kind == "corpus":
    from jaxtag.data import corpus
    config = corpus.CorpusConfig.preset(source.preset, seed=source.corpus_seed)
    root = pathlib.Path(source.root) if source.root else corpus.default_corpus_dir(config)
    return corpus.synthesize_corpus(root, config, progress=progress)
  if source.kind in ("speech_commands", "esc50"):
    return pathlib.Path(source.root).expanduser()
  return None


def class_names(source: DataSource, *, progress: bool = True) -> tuple[str, ...]:
  """The class names of ``source``, in label order, without reading any audio."""
  if source.kind in ("corpus", "speech_commands"):
    from jaxtag.data import speechcommands
    root = dataset_root(source, progress=progress)
    return tuple(speechcommands.list_speech_commands(
        root, "train", classes=source.classes, on_empty_class=source.on_empty_class)[2])
  if source.kind == "esc50":
    from jaxtag.data import esc50
    rows = esc50.read_esc50_meta(pathlib.Path(source.root) / esc50.META_PATH,
                                 need_esc10=source.esc10_only)
    names = {int(r["target"]): r["category"] for r in rows if r["esc10"] or not source.esc10_only}
    return tuple(names[t] for t in sorted(names))
  return load_split(source, "train", progress=progress).class_names


def load_splits(source: DataSource, *, progress: bool = True) -> dict[str, AudioDataset]:
  """Every split ``source`` has: ``train`` (required), then ``validation`` and ``test`` where the
  source has them.

  Only a split that the source does not have (:class:`SplitNotFoundError`: ESC-50's
  ``validation``, a Speech Commands folder without ``validation_list.txt``) is left out, with a
  logged warning; :func:`describe_splits` records it. Any other problem with a split (a list
  naming a missing file, a bad clip) propagates: a stage never runs without a split silently.

  Raises:
    SplitNotFoundError: the source has no ``train`` split.
    DatasetError, AudioFileError: a split exists but cannot be loaded as asked.
  """
  splits = {}
  for split in SPLITS:
    try:
      splits[split] = load_split(source, split, progress=progress)
    except SplitNotFoundError as e:
      if split == "train":
        raise
      logger.warning("No %r split: %s The stage runs without it.", split, e)
  return splits


def describe_splits(splits: dict[str, AudioDataset]) -> dict[str, dict[str, Any]]:
  """What :func:`load_splits` loaded, for a stage's summary: per split the clip count and the
  clips the loader left out (``skipped_missing``, ``skipped_bad``), or ``{"absent": True}``."""
  out = {}
  for split in SPLITS:
    if split not in splits:
      out[split] = {"absent": True}
      continue
    ds = splits[split]
    out[split] = {"num_clips": len(ds), "skipped_missing": int(ds.info.get("skipped_missing", 0)),
                  "skipped_bad": int(ds.info.get("skipped_bad", 0))}
  return out


def load_split(source: DataSource, split: str, *, progress: bool = True) -> AudioDataset:
  """Loads one split (``train``, ``validation`` or ``test``) of ``source``.

  Raises:
    SplitNotFoundError: the split does not exist for this source.
    DatasetError: the data is unusable as asked (message names the file and the option).
    AudioFileError: a bad clip with ``on_bad_file="error"``.
  """
  folder_options = dict(sample_rate=source.sample_rate, clip_samples=source.clip_samples,
                        on_rate_mismatch=source.on_rate_mismatch, mono=source.mono,
                        on_bad_file=source.on_bad_file, on_missing_file=source.on_missing_file,
                        max_workers=source.max_workers, progress=progress)
  if source.kind in ("corpus", "speech_commands"):
    from jaxtag.data import speechcommands
    root = dataset_root(source, progress=progress)
    return speechcommands.load_speech_commands(
        root, split=split, classes=source.classes, on_empty_class=source.on_empty_class,
        **folder_options)
  if source.kind == "esc50":
    from jaxtag.data import esc50
    folds = {1, 2, 3, 4, 5}
    if split == "test":
      folds = {source.esc50_test_fold}
    elif split == "train":
      folds -= {source.esc50_test_fold}
    elif split == "validation":
      raise SplitNotFoundError(f"{source.root}: ESC-50 has no validation split, only 'train' "
                               "and 'test' (by fold).")
    else:
      raise DatasetError(f"ESC-50 has splits 'train' and 'test' (by fold); got {split!r}.")
    dataset = esc50.load_esc50(source.root, folds=tuple(sorted(folds)),
                               esc10_only=source.esc10_only, **folder_options)
    return dataclasses.replace(dataset, split=split)
  from jaxtag.data import tfds as tfds_lib
  return tfds_lib.load_tfds(source.name, split=split, data_dir=source.data_dir,
                            sample_rate=source.sample_rate, clip_samples=source.clip_samples,
                            audio_key=source.audio_key, label_key=source.label_key)
