"""One typed description of "where the data comes from", shared by every pipeline stage.

Launchers turn their config's ``data`` block into a :class:`DataSource`; library code calls
:func:`load_split` and never needs to know which loader is behind it.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Literal

from jaxtag.data.dataset import AudioDataset, DatasetError

SourceKind = Literal["corpus", "speech_commands", "esc50", "tfds"]
_KINDS = ("corpus", "speech_commands", "esc50", "tfds")


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
  """

  kind: SourceKind = "corpus"
  root: str | None = None
  preset: str = "default"
  corpus_seed: int = 0
  name: str | None = None
  data_dir: str | None = None
  sample_rate: int = 16000
  esc50_test_fold: int = 5

  def __post_init__(self):
    if self.kind not in _KINDS:
      raise DatasetError(f"DataSource.kind must be one of {_KINDS}; got {self.kind!r}.")
    if self.kind in ("speech_commands", "esc50") and not self.root:
      raise DatasetError(f"DataSource.root is required for kind={self.kind!r} (the dataset folder).")
    if self.kind == "tfds" and not self.name:
      raise DatasetError("DataSource.name is required for kind='tfds' (the TFDS dataset name).")


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
    return tuple(speechcommands.list_speech_commands(root, "train")[2])
  if source.kind == "esc50":
    from jaxtag.data import esc50
    rows = esc50.read_esc50_meta(pathlib.Path(source.root) / esc50.META_PATH)
    names = {int(r["target"]): r["category"] for r in rows}
    return tuple(names[t] for t in sorted(names))
  from jaxtag.data import tfds as tfds_lib
  return tuple(tfds_lib.load_tfds(source.name, split="train", data_dir=source.data_dir,
                                  sample_rate=source.sample_rate).class_names)


def load_splits(source: DataSource, *, progress: bool = True) -> dict[str, AudioDataset]:
  """Every split ``source`` has: ``train`` (required: its :class:`DatasetError` propagates), then
  ``validation`` and ``test`` where they exist (ESC-50 has no validation split)."""
  splits = {}
  for split in ("train", "validation", "test"):
    try:
      splits[split] = load_split(source, split, progress=progress)
    except DatasetError:
      if split == "train":
        raise
  return splits


def load_split(source: DataSource, split: str, *, progress: bool = True) -> AudioDataset:
  """Loads one split (``train``, ``validation`` or ``test``) of ``source``.

  Raises:
    DatasetError: when the split does not exist for this source, or the data is unusable.
  """
  if source.kind in ("corpus", "speech_commands"):
    from jaxtag.data import speechcommands
    root = dataset_root(source, progress=progress)
    return speechcommands.load_speech_commands(
        root, split=split, sample_rate=source.sample_rate, progress=progress)
  if source.kind == "esc50":
    from jaxtag.data import esc50
    folds = {1, 2, 3, 4, 5}
    if split == "test":
      folds = {source.esc50_test_fold}
    elif split == "train":
      folds -= {source.esc50_test_fold}
    else:
      raise DatasetError(f"ESC-50 has splits 'train' and 'test' (by fold); got {split!r}.")
    dataset = esc50.load_esc50(source.root, folds=tuple(sorted(folds)), sample_rate=source.sample_rate)
    return dataclasses.replace(dataset, split=split)
  from jaxtag.data import tfds as tfds_lib
  return tfds_lib.load_tfds(source.name, split=split, data_dir=source.data_dir,
                            sample_rate=source.sample_rate)
