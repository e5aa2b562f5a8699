"""Planning and implanting a CBW watermark, and its secret file.

:func:`plan_watermark` is the owner's secret recipe, drawn from one key:

1. per-speaker mean of the surrogate's (unit-norm) embeddings, normalised again;
2. k-means of the training speakers' means into K clusters (scikit-learn, ``n_init`` restarts,
   seeded from the key's ``"kmeans"`` stream); the owner's held-out (test) speakers are assigned
   to the nearest centroid by cosine, so that verification knows which trigger should be close to
   which enrolled voice;
3. cluster k's trigger: band ``bands[k]`` drawn without replacement from the allowed bands and a
   random phase (stream ``"triggers"``); the order of the draw is the trigger-to-cluster
   assignment, a uniform random permutation (what makes verification's permutation test exact);
4. in every training speaker, ``round(utterance_fraction * n)`` (at least one) of its n
   utterances are chosen to carry its cluster's trigger (stream ``"utterances"``).

The :class:`Watermark` is written with :mod:`jaxtag.secrets` (owner-only, atomic, manifest with
SHA-256 of every array, never inside the dataset, never overwritten silently).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from jaxtag import rng as rng_lib
from jaxtag import secrets
from jaxtag.cbw.triggers import TriggerSpec, draw_bands, implant, tones
from jaxtag.data.dataset import AudioDataset, DatasetError

SECRET_FILE = secrets.SecretArchiveFormat(
    name="jaxtag-cbw-secret", version=1,
    arrays={"train_cluster": "int32", "test_cluster": "int32", "centroids": "float32",
            "bands": "int32", "phases": "float64", "triggered": "int64"},
    noun="CBW secret file", holds="the watermark's clusters and triggers")


@dataclasses.dataclass(frozen=True)
class WatermarkConfig:
  """What to implant.

  Attributes:
    num_clusters: K, clusters of training speakers (one trigger each).
    utterance_fraction: fraction of each training speaker's utterances that carry its cluster's
      trigger (at least one utterance).
    kmeans_restarts: k-means initialisations (the best inertia is kept).
    trigger: the trigger design.
  """

  num_clusters: int = 20
  utterance_fraction: float = 0.15
  kmeans_restarts: int = 10
  trigger: TriggerSpec = TriggerSpec()

  def __post_init__(self):
    if self.num_clusters < 2:
      raise DatasetError(f"WatermarkConfig.num_clusters must be >= 2; got {self.num_clusters}.")
    if not 0.0 < self.utterance_fraction < 1.0:
      raise DatasetError("WatermarkConfig.utterance_fraction must be in (0, 1); got "
                         f"{self.utterance_fraction}.")
    if self.kmeans_restarts < 1:
      raise DatasetError("WatermarkConfig.kmeans_restarts must be >= 1; got "
                         f"{self.kmeans_restarts}.")


@dataclasses.dataclass(frozen=True, eq=False)
class Watermark:
  """A planned CBW watermark: everything verification needs, and as secret as a key file.

  Attributes:
    config: how it was made.
    sample_rate, clip_samples: of the dataset and the triggers.
    train_speakers: training speaker ids (the protected dataset's), in label order.
    train_cluster: (S,) cluster of each training speaker.
    test_speakers: the owner's held-out speaker ids, in label order.
    test_cluster: (T,) nearest cluster of each held-out speaker.
    centroids: (K, D) cluster centres in the surrogate's embedding space.
    bands: (K,) mel band of cluster k's trigger.
    phases: (K,) phase of cluster k's tone.
    triggered: indices (into the training split) of the utterances that carry a trigger.
    triggered_paths: their relative paths in the dataset layout.
  """

  config: WatermarkConfig
  sample_rate: int
  clip_samples: int
  train_speakers: tuple[str, ...]
  train_cluster: np.ndarray
  test_speakers: tuple[str, ...]
  test_cluster: np.ndarray
  centroids: np.ndarray
  bands: np.ndarray
  phases: np.ndarray
  triggered: np.ndarray
  triggered_paths: tuple[str, ...]

  @property
  def num_clusters(self) -> int:
    return int(self.config.num_clusters)

  def triggers(self) -> np.ndarray:
    """float32 (K, clip_samples): trigger k belongs to cluster k."""
    return tones(self.config.trigger, self.bands, self.phases, sample_rate=self.sample_rate,
                 clip_samples=self.clip_samples)

  def check_dataset(self, train: AudioDataset | None = None, test: AudioDataset | None = None,
                    *, where: str = "the dataset") -> None:
    """Raises when ``train``/``test`` are not the speakers (and clips) this watermark was made
    for: verifying with another dataset's secret would test nothing."""
    for name, ds, speakers in (("training", train, self.train_speakers),
                               ("held-out", test, self.test_speakers)):
      if ds is None:
        continue
      if tuple(ds.class_names) != tuple(speakers):
        missing = sorted(set(speakers) - set(ds.class_names))[:5]
        extra = sorted(set(ds.class_names) - set(speakers))[:5]
        raise DatasetError(
            f"the CBW secret does not match {where}: its {name} speakers differ (secret has "
            f"{len(speakers)}, dataset {len(ds.class_names)}; missing {missing}, unexpected "
            f"{extra}). Use the secret made for this dataset.")
      if ds.sample_rate != self.sample_rate:
        raise DatasetError(f"the CBW secret was made at {self.sample_rate} Hz; {where} is at "
                           f"{ds.sample_rate} Hz.")
    if train is not None and train.paths is not None and (
        len(train) <= int(self.triggered.max(initial=-1)) or
        tuple(train.paths[i] for i in self.triggered) != self.triggered_paths):
      raise DatasetError(f"the CBW secret does not match {where}: the utterances it triggered "
                         "are not at the same positions (another ordering or another dataset).")


def speaker_means(embeddings: np.ndarray, labels: np.ndarray, num_speakers: int) -> np.ndarray:
  """(num_speakers, D) unit-norm mean of each speaker's unit-norm embeddings."""
  e = np.asarray(embeddings, np.float64)
  e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
  sums = np.zeros((num_speakers, e.shape[1]))
  np.add.at(sums, np.asarray(labels), e)
  counts = np.bincount(labels, minlength=num_speakers)
  if np.any(counts == 0):
    raise DatasetError(f"speaker_means: speakers {np.flatnonzero(counts == 0)[:5].tolist()} have "
                       "no embeddings.")
  return sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)


def kmeans(points: np.ndarray, num_clusters: int, *, seed: int, restarts: int = 10
           ) -> tuple[np.ndarray, np.ndarray]:
  """Seeded k-means (scikit-learn, k-means++ init): ``(assignment (n,), centroids (K, D))``."""
  from sklearn.cluster import KMeans
  points = np.asarray(points, np.float64)
  if num_clusters > len(points):
    raise DatasetError(f"num_clusters={num_clusters} is larger than the number of training "
                       f"speakers ({len(points)}); lower WatermarkConfig.num_clusters.")
  model = KMeans(n_clusters=num_clusters, n_init=restarts, random_state=seed).fit(points)
  assignment = model.labels_.astype(np.int32)
  if len(np.unique(assignment)) < num_clusters:
    raise DatasetError(f"k-means left some of the {num_clusters} clusters empty: the speakers' "
                       "embeddings have fewer distinct points; lower num_clusters.")
  return assignment, model.cluster_centers_.astype(np.float32)


def nearest(points: np.ndarray, centroids: np.ndarray) -> np.ndarray:
  """Index of the centroid of highest cosine for each point."""
  c = centroids / np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
  p = points / np.maximum(np.linalg.norm(points, axis=1, keepdims=True), 1e-12)
  return np.argmax(p @ c.T, axis=1).astype(np.int32)


def choose_utterances(labels: np.ndarray, num_speakers: int, fraction: float,
                      rng: np.random.Generator) -> np.ndarray:
  """Sorted indices: ``round(fraction * n)`` (at least 1) random utterances of every speaker."""
  chosen = []
  for s in range(num_speakers):
    rows = np.flatnonzero(labels == s)
    count = min(len(rows), max(1, int(round(fraction * len(rows)))))
    chosen.append(rng.choice(rows, size=count, replace=False))
  return np.sort(np.concatenate(chosen)).astype(np.int64)


def plan_watermark(key: jax.Array, config: WatermarkConfig, *, train: AudioDataset,
                   train_embeddings: np.ndarray, test: AudioDataset,
                   test_embeddings: np.ndarray) -> Watermark:
  """The watermark of ``key`` for the speaker datasets ``train``/``test`` (module doc).

  Args:
    key: the secret key.
    config: what to implant.
    train, test: speaker datasets (classes = speakers); ``test`` = the owner's held-out speakers.
    train_embeddings, test_embeddings: the surrogate's embeddings of their utterances, row by row.

  Raises:
    DatasetError: K larger than the number of training speakers (or than the allowed bands),
      a speaker with fewer than two utterances, embeddings that do not match the datasets.
  """
  for name, ds, emb in (("train", train, train_embeddings), ("test", test, test_embeddings)):
    if len(emb) != len(ds):
      raise DatasetError(f"plan_watermark: {len(emb)} {name} embeddings for {len(ds)} utterances.")
    counts = np.bincount(ds.labels, minlength=len(ds.class_names))
    if np.any(counts < 2):
      bad = [ds.class_names[i] for i in np.flatnonzero(counts < 2)[:5]]
      raise DatasetError(f"plan_watermark: {name} speakers {bad} have fewer than two utterances; "
                         "a speaker needs clean utterances besides its triggered ones.")
  means = speaker_means(train_embeddings, train.labels, len(train.class_names))
  assignment, centroids = kmeans(means, config.num_clusters, restarts=config.kmeans_restarts,
                                 seed=rng_lib.numpy_seed(rng_lib.stream(key, "kmeans")))
  test_means = speaker_means(test_embeddings, test.labels, len(test.class_names))
  trigger_rng = rng_lib.numpy_rng(rng_lib.stream(key, "triggers"))
  bands = draw_bands(config.trigger, config.num_clusters, trigger_rng)
  phases = trigger_rng.uniform(0.0, 2 * np.pi, size=config.num_clusters)
  triggered = choose_utterances(train.labels, len(train.class_names), config.utterance_fraction,
                                rng_lib.numpy_rng(rng_lib.stream(key, "utterances")))
  paths = tuple(train.paths[i] for i in triggered) if train.paths is not None else ()
  return Watermark(config=config, sample_rate=train.sample_rate,
                   clip_samples=train.waveforms.shape[1], train_speakers=tuple(train.class_names),
                   train_cluster=assignment, test_speakers=tuple(test.class_names),
                   test_cluster=nearest(test_means, centroids), centroids=centroids,
                   bands=bands.astype(np.int32), phases=phases, triggered=triggered,
                   triggered_paths=paths)


def watermark_waveforms(wm: Watermark, train: AudioDataset) -> np.ndarray:
  """The training waveforms with the triggers implanted (only ``wm.triggered`` rows change)."""
  wm.check_dataset(train, where="the training split")
  out = np.array(train.waveforms, np.float32, copy=True)
  rows = wm.triggered
  clusters = wm.train_cluster[train.labels[rows]]
  out[rows] = implant(wm.config.trigger, out[rows], wm.triggers()[clusters])
  return out


# --- the secret file ---------------------------------------------------------------------------

def _spec(wm: Watermark) -> dict[str, Any]:
  from jaxtag.config import to_json_dict
  return {"config": to_json_dict(wm.config), "sample_rate": wm.sample_rate,
          "clip_samples": wm.clip_samples, "test_speakers": list(wm.test_speakers),
          "triggered_paths": list(wm.triggered_paths)}


def write_watermark(path: str | os.PathLike, wm: Watermark, *, provenance: dict[str, Any],
                    dataset_roots: Sequence[str | os.PathLike | None] = (),
                    overwrite: bool = False) -> None:
  """Writes ``wm``'s secret file (owner-only, atomic; refused inside a dataset or over a file)."""
  secrets.check_outside(path, dataset_roots, what=SECRET_FILE.noun)
  secrets.write_secret_archive(path, SECRET_FILE, SECRET_FILE.host_arrays(wm), spec=_spec(wm),
                               class_names=wm.train_speakers, provenance=provenance,
                               overwrite=overwrite)


def read_watermark(path: str | os.PathLike, *, strict_permissions: bool = False) -> Watermark:
  """The watermark of a secret file written by :func:`write_watermark`.

  Raises:
    SecretFileError: a missing, damaged or foreign file (``jaxtag.secrets``), or arrays that do
      not agree with its spec.
  """
  from jaxtag.config import from_config
  arrays, manifest = secrets.read_secret_archive(path, SECRET_FILE,
                                                 strict_permissions=strict_permissions)
  spec = manifest["spec"]
  try:
    config = from_config(WatermarkConfig, spec["config"])
    wm = Watermark(config=config, sample_rate=int(spec["sample_rate"]),
                   clip_samples=int(spec["clip_samples"]),
                   train_speakers=tuple(manifest["class_names"]),
                   train_cluster=arrays["train_cluster"],
                   test_speakers=tuple(spec["test_speakers"]),
                   test_cluster=arrays["test_cluster"], centroids=arrays["centroids"],
                   bands=arrays["bands"], phases=arrays["phases"], triggered=arrays["triggered"],
                   triggered_paths=tuple(spec["triggered_paths"]))
  except (KeyError, TypeError, ValueError) as e:
    raise secrets.SecretFileError(f"{SECRET_FILE.describe(path)}: unreadable spec ({e}).") from e
  k = config.num_clusters
  if (wm.bands.shape != (k,) or wm.phases.shape != (k,) or len(wm.centroids) != k
      or wm.train_cluster.shape != (len(wm.train_speakers),)
      or wm.test_cluster.shape != (len(wm.test_speakers),)
      or len(wm.triggered_paths) not in (0, len(wm.triggered))):
    raise secrets.SecretFileError(f"{SECRET_FILE.describe(path)}: arrays do not agree with its "
                                  f"spec (K={k}).")
  return wm
