"""The input pipeline: shuffled, epoch-wise batches of an AudioDataset, sharded over a mesh.

The order of clips is a pure function of ``(seed, step)``: grain shuffles *indices* with a
per-epoch Feistel permutation (``MapDataset.shuffle`` reseeds every epoch) and batches them within
each epoch, so step ``k`` can be computed without replaying steps ``0..k-1``. Resuming at
``start_step=k`` therefore yields exactly the tail of the stream that starts at 0, which is what a
checkpointed training loop needs.

Each host gathers only its own rows of every global batch (``global_batch / process_count`` of
them with the usual one-axis mesh) from the in-memory waveforms, in grain's prefetch threads; with
a mesh the rows are then assembled into global ``jax.Array`` s split along the mesh's data axis.

Random augmentation does not belong in ``transform``: do it in the jitted step with
``jax.random.fold_in(key, step)`` so that it too is resumable and runs on the accelerator.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterator
from typing import Any

import grain
import jax
import numpy as np

from jaxtag import sharding
from jaxtag.data.dataset import AudioDataset, DatasetError

Batch = dict[str, Any]


def steps_per_epoch(num_clips: int, batch_size: int, *, drop_remainder: bool = True) -> int:
  """Batches in one epoch of ``num_clips`` clips."""
  if drop_remainder:
    return num_clips // batch_size
  return math.ceil(num_clips / batch_size)


def _shuffle_seed(seed: Any) -> int:
  """A 32-bit grain seed from an int seed or a JAX PRNG key.

  Hashed through ``SeedSequence`` because grain seeds epoch ``e`` with ``seed + e``: without the
  hash, seeds 0 and 1 would give the same stream shifted by one epoch.
  """
  if isinstance(seed, jax.Array):
    if not jax.dtypes.issubdtype(seed.dtype, jax.dtypes.prng_key):
      seed = jax.random.wrap_key_data(seed)
    seed = int(jax.random.bits(seed, (), np.uint32))
  elif isinstance(seed, numbers.Integral) and not isinstance(seed, bool):
    seed = int(seed)
  else:
    raise TypeError(
        f"batches(seed=...) takes an int or a jax.random key; got {type(seed).__name__}. From a "
        "numpy Generator, pass int(rng.integers(2**31)) and record it to resume.")
  if seed < 0:
    raise ValueError(f"batches(seed={seed}): the seed must be non-negative.")
  return int(np.random.SeedSequence(seed).generate_state(1, np.uint32)[0])


def _validate(dataset: AudioDataset, batch_size: int, drop_remainder: bool, mesh, start_step: int,
              num_epochs: int | None) -> None:
  if not isinstance(batch_size, numbers.Integral) or batch_size <= 0:
    raise DatasetError(f"batches: batch_size must be a positive integer; got {batch_size!r}.")
  if num_epochs is not None and num_epochs <= 0:
    raise DatasetError(f"batches: num_epochs must be positive or None; got {num_epochs}.")
  if start_step < 0:
    raise DatasetError(f"batches: start_step must be >= 0; got {start_step}.")
  if steps_per_epoch(len(dataset), batch_size, drop_remainder=drop_remainder) == 0:
    raise DatasetError(
        f"batches: split {dataset.split!r} has {len(dataset)} clips, fewer than batch_size="
        f"{batch_size}, so an epoch has no batch; lower batch_size or pass drop_remainder=False.")
  last = len(dataset) % batch_size  # Size of each epoch's partial batch (0: none).
  sizes = (batch_size,) if drop_remainder or not last else (batch_size, last)
  if mesh is not None:
    sharding.data_sharding(mesh)  # Raises a clear error when the mesh has no "data" axis.
    parts, what = mesh.shape[sharding.DATA_AXIS], "devices of the mesh"
  else:
    parts, what = jax.process_count(), "hosts"
  if any(size % parts for size in sizes):
    raise DatasetError(
        f"batches: batches of {' and '.join(map(str, sizes))} clips (batch_size={batch_size}, "
        f"{len(dataset)} clips) must split evenly over the {parts} {what}; use a batch_size "
        f"that is a multiple of {parts}" + ("" if drop_remainder else " or drop_remainder=True")
        + ".")


class _GatherRows:
  """grain map: global index batch -> this host's rows of audio, label and index (numpy)."""

  def __init__(self, dataset: AudioDataset, mesh, transform: Callable[[Batch], Batch] | None):
    self._waveforms = dataset.waveforms
    self._labels = dataset.labels
    self._mesh = mesh
    self._transform = transform

  def _host_rows(self, global_rows: int) -> slice:
    if self._mesh is not None:
      return sharding.process_batch_rows(self._mesh, global_rows)
    per_host = global_rows // jax.process_count()
    start = jax.process_index() * per_host
    return slice(start, start + per_host)

  def __call__(self, indices: np.ndarray) -> Batch:
    idx = np.asarray(indices, dtype=np.int64)[self._host_rows(len(indices))]
    batch = {
        "audio": self._waveforms[idx],
        "label": self._labels[idx],
        "index": idx.astype(np.int32),
    }
    return self._transform(batch) if self._transform is not None else batch


def index_batches(num_clips: int, *, batch_size: int, seed: Any, shuffle: bool = True,
                  num_epochs: int | None = None,
                  drop_remainder: bool = True) -> grain.MapDataset:
  """The global index batches as a random-access grain dataset: element ``k`` is step ``k``.

  Each epoch is a fresh permutation of ``range(num_clips)`` cut into batches; a partial last
  batch (``drop_remainder=False``) never mixes two epochs.

  Args:
    num_clips: size of the dataset.
    batch_size: global batch size.
    seed: int or ``jax.random`` key that fixes every epoch's permutation.
    shuffle: False keeps the dataset order in every epoch.
    num_epochs: None repeats forever.
    drop_remainder: drop each epoch's last partial batch.

  Returns:
    A ``grain.MapDataset`` of int64 arrays of shape ``(batch_size,)`` (or shorter at the end of
    an epoch when ``drop_remainder`` is False).
  """
  ds = grain.MapDataset.range(num_clips)
  if shuffle:
    ds = ds.shuffle(seed=_shuffle_seed(seed))
  # batch before repeat: BatchMapDataset maps step -> (epoch, batch in epoch), and the shuffle
  # below it sees index epoch * num_clips + i, which selects that epoch's permutation.
  ds = ds.batch(batch_size, drop_remainder=drop_remainder)
  return ds.repeat(num_epochs)


def batches(dataset: AudioDataset, *, batch_size: int, seed: Any, shuffle: bool = True,
            num_epochs: int | None = None, drop_remainder: bool = True, mesh=None,
            start_step: int = 0, transform: Callable[[Batch], Batch] | None = None,
            num_threads: int = 2, prefetch: int = 4) -> Iterator[Batch]:
  """Iterates over shuffled batches of ``dataset``, epoch after epoch.

  Args:
    dataset: the clips, held in host memory.
    batch_size: global batch size (all hosts together).
    seed: an int (e.g. from the launcher's config, or ``int(rng.integers(2**31))`` drawn from a
      ``np.random.Generator`` and recorded) or a ``jax.random`` key (the launcher's ``data``
      stream). The same seed always gives the same stream; keep it to resume.
    shuffle: reshuffle every epoch; False iterates in dataset order.
    num_epochs: number of passes; None repeats forever.
    drop_remainder: drop each epoch's last partial batch (keeps shapes static under jit).
    mesh: if given, each batch is a dict of global ``jax.Array`` s split along the mesh's
      ``"data"`` axis, and each host loads only its own rows; otherwise numpy arrays (on several
      hosts without a mesh, each host gets its ``batch_size / process_count`` rows).
    start_step: skip to this global step (counted from 0 over all epochs) without reading the
      skipped batches; the stream equals the tail of the stream from step 0.
    transform: optional ``batch -> batch`` function on the host-local numpy batch, run in the
      prefetch threads (must be deterministic and thread-safe).
    num_threads: grain threads gathering batches ahead of the consumer (0: gather inline).
    prefetch: batches buffered ahead of the consumer.

  Returns:
    An iterator of ``{"audio": float32 (B, T), "label": int32 (B,), "index": int32 (B,)}``,
    ``index`` being the clip's row in ``dataset``. Arguments are checked by this call, not at
    the first batch.

  Raises:
    DatasetError: bad batch size, epoch count or start step, an epoch with no batch, or a batch
      that does not split evenly over the mesh's devices or the hosts.
    TypeError: ``seed`` is neither an int nor a key.
  """
  _validate(dataset, batch_size, drop_remainder, mesh, start_step, num_epochs)
  steps = index_batches(len(dataset), batch_size=batch_size, seed=seed, shuffle=shuffle,
                        num_epochs=num_epochs, drop_remainder=drop_remainder)
  ds = steps[start_step:].map(_GatherRows(dataset, mesh, transform))
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                            prefetch_buffer_size=prefetch))
  if mesh is None:
    return iter(it)
  return (sharding.shard_batch(mesh, batch) for batch in it)
