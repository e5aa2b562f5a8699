"""Device meshes and batch shardings for data-parallel training and crafting.

One 1-D mesh over every device of every host, with a single ``"data"`` axis: batches are split
along their first dimension across it, parameters and keys are replicated. Each host feeds only
the rows of the global batch that live on its own devices (:func:`process_batch_rows`), and
:func:`shard_batch` assembles those host-local rows into global ``jax.Array`` s.

Works on jax 0.10 and 0.11: ``jax.make_mesh`` makes explicit-sharding axes by default there, which
would force ``jax.sharding.reshard`` calls throughout the training code; we ask for
``AxisType.Auto`` whenever ``make_mesh`` accepts ``axis_types`` (feature detection, not version
strings).
"""

from __future__ import annotations

import inspect
import logging
import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"

# Environment variables that mean "this process is one of several"; see
# maybe_initialize_distributed.
_EXPLICIT_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
_WORLD_SIZE_VARS = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")


def _multi_host_environment() -> str | None:
  """Names the variable that announces a multi-process launch, or None for a single process."""
  if os.environ.get(_EXPLICIT_COORDINATOR):
    return _EXPLICIT_COORDINATOR
  for var in _WORLD_SIZE_VARS:
    try:
      if int(os.environ.get(var, "1")) > 1:
        return var
    except ValueError:
      continue
  # Cloud TPU pod slices list one hostname per worker.
  hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  if len([h for h in hosts.split(",") if h.strip()]) > 1:
    return "TPU_WORKER_HOSTNAMES"
  return None


def maybe_initialize_distributed() -> bool:
  """Calls ``jax.distributed.initialize()`` when, and only when, this is a multi-host launch.

  A multi-host launch is recognised from the environment:

  * ``JAX_COORDINATOR_ADDRESS`` (``host:port`` of process 0), with ``JAX_NUM_PROCESSES`` and
    ``JAX_PROCESS_ID`` for a hand-rolled launch;
  * ``SLURM_NTASKS`` > 1 (``srun``; JAX reads the rest of the SLURM variables itself);
  * ``OMPI_COMM_WORLD_SIZE`` > 1 (``mpirun`` with Open MPI);
  * ``TPU_WORKER_HOSTNAMES`` listing more than one host (Cloud TPU pod slices).

  Anything else (one GPU machine, a laptop, the tests' fake CPU devices) is a no-op. Call it first
  thing in a launcher, before any other JAX call touches the devices.

  Returns:
    True if JAX runs distributed (initialised now or before), False for a single process.

  Raises:
    ValueError: ``JAX_NUM_PROCESSES`` or ``JAX_PROCESS_ID`` is set but not an integer.
  """
  if jax.distributed.is_initialized():
    return True
  source = _multi_host_environment()
  if source is None:
    return False
  kwargs: dict[str, Any] = {}
  if source == _EXPLICIT_COORDINATOR:
    kwargs["coordinator_address"] = os.environ[_EXPLICIT_COORDINATOR]
    for var, arg in (("JAX_NUM_PROCESSES", "num_processes"), ("JAX_PROCESS_ID", "process_id")):
      if os.environ.get(var):
        try:
          kwargs[arg] = int(os.environ[var])
        except ValueError as e:
          raise ValueError(f"{var}={os.environ[var]!r} must be an integer.") from e
  logging.info("Multi-host launch detected from %s; calling jax.distributed.initialize().", source)
  jax.distributed.initialize(**kwargs)
  return True


def make_mesh(num_devices: int | None = None, axis_name: str = DATA_AXIS) -> Mesh:
  """A 1-D mesh over the devices of all hosts, with ``Auto`` axis types.

  Args:
    num_devices: use the first ``num_devices`` devices (single-process only, e.g. to compare one
      device with eight in tests); None uses every device.
    axis_name: name of the mesh axis that batches are split along.

  Returns:
    A ``jax.sharding.Mesh`` of shape ``(num_devices,)``.

  Raises:
    ValueError: ``num_devices`` is not in ``[1, jax.device_count()]``, or is a subset of the
      devices in a multi-process run (every host must take part in the mesh).
  """
  devices = jax.devices()
  if num_devices is None:
    num_devices = len(devices)
  if not 1 <= num_devices <= len(devices):
    raise ValueError(f"make_mesh: num_devices={num_devices}; there are {len(devices)} devices.")
  if num_devices != len(devices) and jax.process_count() > 1:
    raise ValueError(
        f"make_mesh: num_devices={num_devices} of {len(devices)} in a "
        f"{jax.process_count()}-process run; a multi-host mesh must use every device "
        "(leave num_devices=None).")
  devices = devices[:num_devices]
  params = inspect.signature(jax.make_mesh).parameters
  kwargs: dict[str, Any] = {}
  if "axis_types" in params:
    kwargs["axis_types"] = (jax.sharding.AxisType.Auto,)
  if "devices" in params:
    return jax.make_mesh((num_devices,), (axis_name,), devices=devices, **kwargs)
  return Mesh(np.asarray(devices), (axis_name,))  # Old jax without `devices`: Auto is the default.


def _check_axis(mesh: Mesh, axis_name: str) -> None:
  if axis_name not in mesh.axis_names:
    raise ValueError(
        f"mesh has axes {mesh.axis_names}; no {axis_name!r} axis to split batches along. "
        f"Build it with make_mesh(axis_name={axis_name!r}) or pass axis_name=.")


def data_sharding(mesh: Mesh, axis_name: str = DATA_AXIS) -> NamedSharding:
  """Splits the leading (batch) dimension over ``axis_name``; other dimensions are whole."""
  _check_axis(mesh, axis_name)
  return NamedSharding(mesh, P(axis_name))


def replicated(mesh: Mesh) -> NamedSharding:
  """A full copy on every device of ``mesh`` (parameters, optimiser state, keys)."""
  return NamedSharding(mesh, P())


def _local_data_shards(mesh: Mesh, axis_name: str) -> list[int]:
  """Positions along ``axis_name`` that hold at least one device of this process (sorted)."""
  axis = mesh.axis_names.index(axis_name)
  rows = np.moveaxis(mesh.devices, axis, 0).reshape(mesh.devices.shape[axis], -1)
  pid = jax.process_index()
  return [i for i, row in enumerate(rows) if any(d.process_index == pid for d in row)]


def _check_divisible(global_rows: int, mesh: Mesh, axis_name: str) -> int:
  n = mesh.shape[axis_name]
  if global_rows % n:
    raise ValueError(
        f"a batch of {global_rows} rows cannot be split evenly over the {n} devices of mesh axis "
        f"{axis_name!r}; use a global batch size that is a multiple of {n}.")
  return global_rows // n


def process_batch_rows(mesh: Mesh, global_batch_size: int, axis_name: str = DATA_AXIS) -> slice:
  """The rows of a global batch that this process loads and passes to :func:`shard_batch`.

  Args:
    mesh: the mesh batches are sharded over.
    global_batch_size: rows of the global batch (all hosts together).
    axis_name: the mesh axis batches are split along.

  Returns:
    A contiguous ``slice`` of ``range(global_batch_size)``; all of it in a single-process run.

  Raises:
    ValueError: the batch does not split evenly over the axis, or this process's devices are not
      contiguous along it (a hand-built mesh with interleaved hosts).
  """
  _check_axis(mesh, axis_name)
  per_shard = _check_divisible(global_batch_size, mesh, axis_name)
  shards = _local_data_shards(mesh, axis_name)
  if shards != list(range(shards[0], shards[-1] + 1)):
    raise ValueError(
        f"process {jax.process_index()} holds positions {shards} of mesh axis {axis_name!r}; "
        "they must be contiguous. Use make_mesh, which orders devices host by host.")
  return slice(shards[0] * per_shard, (shards[-1] + 1) * per_shard)


def shard_batch(mesh: Mesh, host_local_batch: Any, axis_name: str = DATA_AXIS) -> Any:
  """Turns this host's rows of a batch into global arrays split along ``axis_name``.

  Every host calls this with its own rows (:func:`process_batch_rows`), in the same order; the
  global batch is their concatenation in host order. On a single host the local batch is the
  whole batch.

  Args:
    mesh: the mesh to shard over.
    host_local_batch: a pytree (e.g. dict) of numpy arrays sharing their leading dimension.
    axis_name: the mesh axis to split the leading dimension along.

  Returns:
    The same pytree of global ``jax.Array`` s with sharding ``data_sharding(mesh, axis_name)``.

  Raises:
    ValueError: a leaf is a scalar, leaves disagree on the leading dimension, or the global
      batch does not split evenly over the devices of ``axis_name``.
  """
  sharding = data_sharding(mesh, axis_name)
  local_shards = len(_local_data_shards(mesh, axis_name))
  leaves = jax.tree.leaves(host_local_batch)
  rows = {np.shape(x)[0] if np.ndim(x) else None for x in leaves}
  if None in rows or len(rows) > 1:
    raise ValueError(
        "shard_batch: every array of the batch needs the same leading (batch) dimension; got "
        f"shapes {[np.shape(x) for x in leaves]}.")

  def put(x):
    x = np.asarray(x)
    # Every data shard holds the same number of rows, so the global batch is the local one
    # scaled by (all shards / this host's shards).
    n = mesh.shape[axis_name]
    if (x.shape[0] * n) % local_shards:
      raise ValueError(
          f"shard_batch: {x.shape[0]} host-local rows cannot be split over this host's "
          f"{local_shards} devices of mesh axis {axis_name!r}.")
    global_rows = x.shape[0] * n // local_shards
    _check_divisible(global_rows, mesh, axis_name)
    return jax.make_array_from_process_local_data(sharding, x, (global_rows,) + x.shape[1:])

  return jax.tree.map(put, host_local_batch)
