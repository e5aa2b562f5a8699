"""Tests for jaxtag.data.pipeline: epoch coverage, determinism, resumption and sharding."""

import itertools

import jax
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from jax.sharding import PartitionSpec as P

from jaxtag import sharding
from jaxtag.data import pipeline
from jaxtag.data.dataset import AudioDataset, DatasetError


def _dataset(n=37, t=6, seed=0):
  rng = np.random.default_rng(seed)
  return AudioDataset(
      waveforms=rng.uniform(-1, 1, (n, t)).astype(np.float32),
      labels=rng.integers(0, 4, n),
      class_names=("a", "b", "c", "d"),
      sample_rate=16000,
  )


def _take(it, n):
  return list(itertools.islice(it, n))


def _indices(batches):
  return [np.asarray(b["index"]) for b in batches]


def test_every_index_once_per_epoch_without_drop():
  ds = _dataset(37)
  out = list(pipeline.batches(ds, batch_size=8, seed=1, num_epochs=3, drop_remainder=False))
  assert [len(b["index"]) for b in out] == [8, 8, 8, 8, 5] * 3
  epochs = [np.concatenate(_indices(out[5 * e:5 * e + 5])) for e in range(3)]
  for order in epochs:
    np.testing.assert_array_equal(np.sort(order), np.arange(37))
  # Reshuffled every epoch, and actually shuffled.
  assert not np.array_equal(epochs[0], epochs[1])
  assert not np.array_equal(epochs[1], epochs[2])
  assert not np.array_equal(epochs[0], np.arange(37))


def test_batch_contents_match_index_and_types():
  ds = _dataset(37)
  for b in _take(pipeline.batches(ds, batch_size=8, seed=0), 6):
    assert b["audio"].dtype == np.float32 and b["audio"].shape == (8, 6)
    assert b["label"].dtype == np.int32 and b["index"].dtype == np.int32
    np.testing.assert_array_equal(b["audio"], ds.waveforms[b["index"]])
    np.testing.assert_array_equal(b["label"], ds.labels[b["index"]])


def test_drop_remainder_gives_full_batches_without_repeats_in_an_epoch():
  ds = _dataset(37)
  out = list(pipeline.batches(ds, batch_size=8, seed=2, num_epochs=2))
  assert len(out) == 2 * pipeline.steps_per_epoch(37, 8) == 8
  for e in range(2):
    order = np.concatenate(_indices(out[4 * e:4 * e + 4]))
    assert len(np.unique(order)) == 32


def test_no_shuffle_keeps_dataset_order():
  ds = _dataset(20)
  out = list(pipeline.batches(ds, batch_size=5, seed=0, shuffle=False, num_epochs=2))
  np.testing.assert_array_equal(np.concatenate(_indices(out)), np.tile(np.arange(20), 2))


def test_deterministic_and_seed_dependent():
  ds = _dataset(37)
  a = _indices(_take(pipeline.batches(ds, batch_size=8, seed=5), 12))
  b = _indices(_take(pipeline.batches(ds, batch_size=8, seed=5), 12))
  c = _indices(_take(pipeline.batches(ds, batch_size=8, seed=6), 12))
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  assert any(not np.array_equal(x, y) for x, y in zip(a, c))


def test_neighbouring_seeds_are_not_epoch_shifted_copies():
  # grain seeds epoch e with seed + e; the pipeline hashes the seed so that seed 1's first epoch
  # is not seed 0's second epoch.
  ds = _dataset(40)
  s0 = _indices(_take(pipeline.batches(ds, batch_size=40, seed=0), 2))
  s1 = _indices(_take(pipeline.batches(ds, batch_size=40, seed=1), 1))
  assert not np.array_equal(s0[1], s1[0])


def test_jax_key_seed_is_deterministic():
  ds = _dataset(37)
  key = jax.random.key(3)
  a = _indices(_take(pipeline.batches(ds, batch_size=8, seed=key), 5))
  b = _indices(_take(pipeline.batches(ds, batch_size=8, seed=jax.random.key(3)), 5))
  c = _indices(_take(pipeline.batches(ds, batch_size=8, seed=jax.random.key(4)), 5))
  assert all(np.array_equal(x, y) for x, y in zip(a, b))
  assert any(not np.array_equal(x, y) for x, y in zip(a, c))


@settings(max_examples=15, deadline=None)
@given(n=st.integers(5, 40), batch_size=st.integers(1, 9), start=st.integers(0, 25),
       drop=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_resume_equals_tail(n, batch_size, start, drop, seed):
  if batch_size > n:
    batch_size = n
  ds = _dataset(n, t=2)
  kw = dict(batch_size=batch_size, seed=seed, drop_remainder=drop)
  full = _indices(_take(pipeline.batches(ds, **kw), start + 6))
  tail = _indices(_take(pipeline.batches(ds, start_step=start, **kw), 6))
  assert len(tail) == 6
  for x, y in zip(full[start:], tail):
    np.testing.assert_array_equal(x, y)


def test_finite_epochs_stop_and_resume_past_the_end_is_empty():
  ds = _dataset(37)
  assert len(list(pipeline.batches(ds, batch_size=8, seed=0, num_epochs=2))) == 8
  assert len(list(pipeline.batches(ds, batch_size=8, seed=0, num_epochs=2, start_step=6))) == 2
  assert list(pipeline.batches(ds, batch_size=8, seed=0, num_epochs=2, start_step=9)) == []


def test_transform_is_applied_to_host_batches():
  ds = _dataset(37)

  def halve(batch):
    return dict(batch, audio=batch["audio"] * 0.5)

  for b in _take(pipeline.batches(ds, batch_size=8, seed=0, transform=halve), 3):
    np.testing.assert_array_equal(b["audio"], 0.5 * ds.waveforms[b["index"]])


def test_sharded_batches_equal_numpy_batches():
  ds = _dataset(70)
  mesh = sharding.make_mesh()
  kw = dict(batch_size=16, seed=9, num_epochs=2)
  plain = list(pipeline.batches(ds, **kw))
  sharded = list(pipeline.batches(ds, mesh=mesh, **kw))
  assert len(plain) == len(sharded) == 8
  for p, s in zip(plain, sharded):
    assert set(s) == {"audio", "label", "index"}
    for k in p:
      assert isinstance(s[k], jax.Array)
      assert s[k].sharding.spec == P("data")
      assert len(s[k].addressable_shards) == 8
      assert all(sh.data.shape[0] == 2 for sh in s[k].addressable_shards)
      np.testing.assert_array_equal(np.asarray(s[k]), p[k])


def test_sharded_partial_last_batch_when_it_divides():
  ds = _dataset(40)  # 40 = 16 + 16 + 8: the last batch still splits over 8 devices.
  mesh = sharding.make_mesh()
  out = list(pipeline.batches(ds, batch_size=16, seed=0, num_epochs=1, drop_remainder=False,
                              mesh=mesh))
  assert [b["audio"].shape[0] for b in out] == [16, 16, 8]
  np.testing.assert_array_equal(np.sort(np.concatenate([np.asarray(b["index"]) for b in out])),
                                np.arange(40))


@pytest.mark.parametrize("batch_size, n, drop", [(12, 48, True), (16, 37, False)])
def test_batch_not_divisible_by_devices_raises_at_call(batch_size, n, drop):
  mesh = sharding.make_mesh()
  with pytest.raises(DatasetError, match="multiple of 8"):
    pipeline.batches(_dataset(n), batch_size=batch_size, seed=0, mesh=mesh, drop_remainder=drop)


def test_bad_arguments_raise_clear_errors():
  ds = _dataset(10)
  with pytest.raises(DatasetError, match="fewer than batch_size"):
    pipeline.batches(ds, batch_size=11, seed=0)
  with pytest.raises(DatasetError, match="batch_size"):
    pipeline.batches(ds, batch_size=0, seed=0)
  with pytest.raises(DatasetError, match="start_step"):
    pipeline.batches(ds, batch_size=2, seed=0, start_step=-1)
  with pytest.raises(TypeError, match="rng.integers"):
    pipeline.batches(ds, batch_size=2, seed=np.random.default_rng(0))
  with pytest.raises(ValueError, match="non-negative"):
    pipeline.batches(ds, batch_size=2, seed=-1)
