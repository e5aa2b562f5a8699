"""Named PRNG streams: one root key per run, split by name so adding a stream never shifts another."""

from __future__ import annotations

import zlib

import jax


def stream(key: jax.Array, name: str) -> jax.Array:
  """The sub-key of ``key`` for the stream ``name`` (e.g. ``"keys"``, ``"init"``, ``"craft"``).

  Uses ``fold_in`` with a stable 31-bit hash of the name, so the stream of a given name depends
  only on the root key and the name: it can be regenerated and audited later from those two.
  """
  return jax.random.fold_in(key, zlib.crc32(name.encode("utf-8")) & 0x7FFFFFFF)


def step_key(key: jax.Array, step: int | jax.Array) -> jax.Array:
  """The key of one step of a stream; resuming at ``step`` gives the same key again."""
  return jax.random.fold_in(key, step)
