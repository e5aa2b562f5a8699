"""Named PRNG streams: one root key per run, split by name so adding a stream never shifts another."""

from __future__ import annotations

import zlib

import jax
import numpy as np


def stream(key: jax.Array, name: str) -> jax.Array:
  """The sub-key of ``key`` for the stream ``name`` (e.g. ``"keys"``, ``"init"``, ``"craft"``).

  Uses ``fold_in`` with a stable 31-bit hash of the name, so the stream of a given name depends
  only on the root key and the name: it can be regenerated and audited later from those two.
  """
  return jax.random.fold_in(key, zlib.crc32(name.encode("utf-8")) & 0x7FFFFFFF)


def step_key(key: jax.Array, step: int | jax.Array) -> jax.Array:
  """The key of one step of a stream; resuming at ``step`` gives the same key again."""
  return jax.random.fold_in(key, step)


def numpy_seed(key: jax.Array) -> int:
  """A 31-bit integer seed for numpy drawn from ``key``, for the host-side draws that numpy makes
  (poison selection, the mixup pool).

  The one place where the library turns a JAX key into an integer: its callers take keys.
  """
  return int(jax.random.randint(key, (), 0, 2**31 - 1))


def numpy_rng(key: jax.Array, *, offset: int = 0) -> np.random.Generator:
  """A numpy generator seeded with :func:`numpy_seed` of ``key`` plus ``offset``.

  ``offset`` gives a second generator from the same key: the mixup pool of
  :func:`jaxtag.taggants.protect.protect_dataset` uses offset 1 of the selection key, as it always
  has, so that a given key still selects the same poisons and pool.
  """
  return np.random.default_rng(numpy_seed(key) + offset)
