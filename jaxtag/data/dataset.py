"""The one dataset type that every jaxtag stage consumes and produces.

An :class:`AudioDataset` is a split of fixed-length mono clips at one sample rate, held in host
memory as a float32 ``(num_clips, num_samples)`` array in [-1, 1], with integer labels and the
class names they index. Loaders (SpeechCommands and ESC-50 folders, TFDS, the embedded corpus)
build it; exporters write it back to the layout it came from, so a protected dataset can be
published in the same shape as the original.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


class DatasetError(ValueError):
  """A dataset that cannot be used as asked; the message names the file or field and the fix."""


class SplitNotFoundError(DatasetError):
  """The source has no such split (ESC-50 has no ``validation``; a Speech Commands folder without
  ``validation_list.txt`` has none either), as opposed to a split that exists but cannot be
  loaded: only this one may be left out when a stage loads every split a source has."""


@dataclasses.dataclass(frozen=True, eq=False)
class AudioDataset:
  """One split of a labelled audio dataset with fixed-length clips.

  Attributes:
    waveforms: float32 ``(num_clips, num_samples)`` in [-1, 1].
    labels: int32 ``(num_clips,)`` indices into ``class_names``.
    class_names: names of all classes of the dataset (not only those present in this split),
      so that label indices agree across splits.
    sample_rate: sample rate of ``waveforms`` in Hz.
    split: name of the split (``train``, ``validation``, ``test``, ``fold1`` ...).
    speaker_ids: optional ``(num_clips,)`` array of speaker identifiers (strings).
    paths: optional relative paths of the clips in their source layout (e.g.
      ``yes/0a7c2a8d_nohash_0.wav``); exporters reuse them so that a round trip keeps names.
    metadata: optional per-clip arrays (each ``(num_clips,)``), e.g. ESC-50 ``fold``.
    info: what the loader did to the split as a whole, JSON-able (e.g. ``skipped_missing``: clips
      named by a split list or csv whose file does not exist, left out with
      ``on_missing_file="skip"``; ``skipped_bad``: unreadable clips left out with
      ``on_bad_file="skip"``), so that a stage's summary can record it. Not per clip: ``subset``
      keeps it as is.
  """

  waveforms: np.ndarray
  labels: np.ndarray
  class_names: tuple[str, ...]
  sample_rate: int
  split: str = "train"
  speaker_ids: np.ndarray | None = None
  paths: tuple[str, ...] | None = None
  metadata: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)
  info: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    waveforms = np.asarray(self.waveforms)
    labels = np.asarray(self.labels)
    if waveforms.ndim != 2:
      raise DatasetError(
          f"AudioDataset.waveforms must be (num_clips, num_samples); got shape {waveforms.shape}.")
    if waveforms.dtype != np.float32:
      waveforms = waveforms.astype(np.float32)
    if labels.shape != (waveforms.shape[0],):
      raise DatasetError(
          f"AudioDataset.labels must have shape ({waveforms.shape[0]},); got {labels.shape}.")
    labels = labels.astype(np.int32)
    if self.sample_rate <= 0:
      raise DatasetError(f"AudioDataset.sample_rate must be positive; got {self.sample_rate}.")
    class_names = tuple(str(c) for c in self.class_names)
    if len(set(class_names)) != len(class_names):
      raise DatasetError(f"AudioDataset.class_names has duplicates: {class_names}.")
    if labels.size and (labels.min() < 0 or labels.max() >= len(class_names)):
      raise DatasetError(
          f"AudioDataset.labels must lie in [0, {len(class_names)}); "
          f"got range [{labels.min()}, {labels.max()}].")
    n = waveforms.shape[0]
    if self.speaker_ids is not None and len(self.speaker_ids) != n:
      raise DatasetError(f"AudioDataset.speaker_ids has {len(self.speaker_ids)} entries for {n} clips.")
    if self.paths is not None and len(self.paths) != n:
      raise DatasetError(f"AudioDataset.paths has {len(self.paths)} entries for {n} clips.")
    for name, values in self.metadata.items():
      if len(values) != n:
        raise DatasetError(f"AudioDataset.metadata[{name!r}] has {len(values)} entries for {n} clips.")
    object.__setattr__(self, "waveforms", waveforms)
    object.__setattr__(self, "labels", labels)
    object.__setattr__(self, "class_names", class_names)
    object.__setattr__(self, "sample_rate", int(self.sample_rate))
    if self.speaker_ids is not None:
      object.__setattr__(self, "speaker_ids", np.asarray(self.speaker_ids).astype(str))
    if self.paths is not None:
      object.__setattr__(self, "paths", tuple(str(p) for p in self.paths))
    object.__setattr__(self, "metadata", {k: np.asarray(v) for k, v in self.metadata.items()})
    object.__setattr__(self, "info", dict(self.info))

  def __len__(self) -> int:
    return int(self.waveforms.shape[0])

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def num_samples(self) -> int:
    """Samples per clip."""
    return int(self.waveforms.shape[1])

  @property
  def duration_s(self) -> float:
    return self.num_samples / self.sample_rate

  def class_counts(self) -> np.ndarray:
    """Number of clips of each class, ``(num_classes,)``."""
    return np.bincount(self.labels, minlength=self.num_classes)

  def subset(self, indices: Sequence[int] | np.ndarray) -> AudioDataset:
    """The clips at ``indices`` (in that order), with every per-clip field kept aligned."""
    idx = np.asarray(indices, dtype=np.int64)
    return dataclasses.replace(
        self,
        waveforms=self.waveforms[idx],
        labels=self.labels[idx],
        speaker_ids=None if self.speaker_ids is None else self.speaker_ids[idx],
        paths=None if self.paths is None else tuple(self.paths[i] for i in idx),
        metadata={k: v[idx] for k, v in self.metadata.items()},
    )

  def with_waveforms(self, waveforms: np.ndarray) -> AudioDataset:
    """The same clips with new audio (e.g. after protection); shape must not change."""
    waveforms = np.asarray(waveforms, dtype=np.float32)
    if waveforms.shape != self.waveforms.shape:
      raise DatasetError(
          f"with_waveforms: new shape {waveforms.shape} differs from {self.waveforms.shape}.")
    return dataclasses.replace(self, waveforms=waveforms)

  def summary(self) -> dict[str, Any]:
    """A small JSON-able description (for logs and demo output)."""
    counts = self.class_counts()
    out = {
        "split": self.split,
        "num_clips": len(self),
        "num_classes": self.num_classes,
        "sample_rate": self.sample_rate,
        "clip_seconds": round(self.duration_s, 4),
        "min_clips_per_class": int(counts.min()) if counts.size else 0,
        "max_clips_per_class": int(counts.max()) if counts.size else 0,
    }
    if self.speaker_ids is not None:
      out["num_speakers"] = int(len(np.unique(self.speaker_ids)))
    return out


def concatenate(datasets: Sequence[AudioDataset], split: str | None = None) -> AudioDataset:
  """Joins datasets with identical class names, sample rate and clip length.

  Per-clip fields are kept where every dataset has them; of ``info``, the integer counts
  (``skipped_missing``...) are summed and the rest dropped.
  """
  if not datasets:
    raise DatasetError("concatenate: no datasets given.")
  first = datasets[0]
  for d in datasets[1:]:
    if d.class_names != first.class_names:
      raise DatasetError("concatenate: class_names differ between datasets.")
    if d.sample_rate != first.sample_rate or d.num_samples != first.num_samples:
      raise DatasetError("concatenate: sample rate or clip length differ between datasets.")
  has_spk = all(d.speaker_ids is not None for d in datasets)
  has_paths = all(d.paths is not None for d in datasets)
  keys = set.intersection(*(set(d.metadata) for d in datasets))
  counts = {k for d in datasets for k, v in d.info.items() if isinstance(v, int)}
  counts = {k for k in counts if all(isinstance(d.info.get(k, 0), int) for d in datasets)}
  return AudioDataset(
      waveforms=np.concatenate([d.waveforms for d in datasets]),
      labels=np.concatenate([d.labels for d in datasets]),
      class_names=first.class_names,
      sample_rate=first.sample_rate,
      split=split or "+".join(d.split for d in datasets),
      speaker_ids=np.concatenate([d.speaker_ids for d in datasets]) if has_spk else None,
      paths=tuple(p for d in datasets for p in d.paths) if has_paths else None,
      metadata={k: np.concatenate([d.metadata[k] for d in datasets]) for k in keys},
      info={k: sum(d.info.get(k, 0) for d in datasets) for k in sorted(counts)},
  )
