"""Tests for jaxtag.sharding on the eight fake CPU devices set up in conftest.py."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jaxtag import sharding


def _batch(rows, seed=0):
  rng = np.random.default_rng(seed)
  return {
      "audio": rng.standard_normal((rows, 5)).astype(np.float32),
      "label": rng.integers(0, 7, rows).astype(np.int32),
  }


def test_make_mesh_spans_all_devices_with_auto_axis():
  mesh = sharding.make_mesh()
  assert mesh.shape == {"data": 8}
  assert list(mesh.devices.flat) == jax.devices()
  if hasattr(mesh, "axis_types"):
    assert tuple(mesh.axis_types) == (jax.sharding.AxisType.Auto,)


def test_make_mesh_subset_and_axis_name():
  mesh = sharding.make_mesh(2, axis_name="batch")
  assert mesh.shape == {"batch": 2}
  with pytest.raises(ValueError, match="num_devices=9"):
    sharding.make_mesh(9)


def test_shard_batch_splits_rows_evenly_and_round_trips():
  mesh = sharding.make_mesh()
  batch = _batch(16)
  out = sharding.shard_batch(mesh, batch)
  for name, arr in out.items():
    assert arr.sharding.is_equivalent_to(sharding.data_sharding(mesh), arr.ndim)
    assert arr.sharding.spec == P("data")
    shards = sorted(arr.addressable_shards, key=lambda s: s.index[0].start)
    assert len(shards) == 8
    assert {s.device for s in shards} == set(jax.devices())
    for i, shard in enumerate(shards):
      assert shard.data.shape[0] == 2
      np.testing.assert_array_equal(np.asarray(shard.data), batch[name][2 * i:2 * i + 2])
    np.testing.assert_array_equal(np.asarray(arr), batch[name])
    assert arr.dtype == batch[name].dtype


def test_shard_batch_indivisible_raises_clear_error():
  mesh = sharding.make_mesh()
  with pytest.raises(ValueError, match="multiple of 8"):
    sharding.shard_batch(mesh, _batch(10))


def test_shard_batch_mismatched_leading_dims_raise():
  mesh = sharding.make_mesh()
  with pytest.raises(ValueError, match="same leading"):
    sharding.shard_batch(mesh, {"a": np.zeros((8, 2)), "b": np.zeros((16,))})


def test_process_batch_rows_single_process_is_everything():
  mesh = sharding.make_mesh()
  assert sharding.process_batch_rows(mesh, 64) == slice(0, 64)
  with pytest.raises(ValueError, match="multiple of 8"):
    sharding.process_batch_rows(mesh, 12)


def test_replicated_and_wrong_axis():
  mesh = sharding.make_mesh()
  x = jax.device_put(np.arange(3.0), sharding.replicated(mesh))
  assert all(np.array_equal(np.asarray(s.data), np.arange(3.0)) for s in x.addressable_shards)
  with pytest.raises(ValueError, match="no 'model' axis"):
    sharding.data_sharding(mesh, "model")


def test_sharded_computation_matches_single_device():
  mesh = sharding.make_mesh()
  batch = _batch(32, seed=3)
  f = jax.jit(lambda b: (b["audio"] ** 2).sum(axis=1) + b["label"])
  sharded = f(sharding.shard_batch(mesh, batch))
  np.testing.assert_allclose(np.asarray(sharded), np.asarray(f(batch)), rtol=1e-6)


def test_maybe_initialize_distributed_is_noop_on_one_host(monkeypatch):
  for var in ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE",
              "TPU_WORKER_HOSTNAMES"):
    monkeypatch.delenv(var, raising=False)
  monkeypatch.setenv("SLURM_NTASKS", "1")
  called = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: called.append(kw))
  assert sharding.maybe_initialize_distributed() is False
  assert not called


@pytest.mark.parametrize("env, expected", [
    ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "2",
      "JAX_PROCESS_ID": "1"},
     {"coordinator_address": "10.0.0.1:1234", "num_processes": 2, "process_id": 1}),
    ({"SLURM_NTASKS": "4"}, {}),
    ({"OMPI_COMM_WORLD_SIZE": "2"}, {}),
    ({"TPU_WORKER_HOSTNAMES": "a,b"}, {}),
])
def test_maybe_initialize_distributed_multi_host(monkeypatch, env, expected):
  for var in ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE",
              "TPU_WORKER_HOSTNAMES", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
    monkeypatch.delenv(var, raising=False)
  for k, v in env.items():
    monkeypatch.setenv(k, v)
  called = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: called.append(kw))
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
  assert sharding.maybe_initialize_distributed() is True
  assert called == [expected]
