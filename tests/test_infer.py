"""jaxtag.train.infer: map_padded (fixed-size batches, one compilation, rows in order)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtag.train import infer


def counted(fn):
  """``jax.jit(fn)`` with a counter of how often it was traced."""
  traces = []

  def traced(x):
    traces.append(x.shape)
    return fn(x)

  return jax.jit(traced), traces


@pytest.mark.parametrize("n", [0, 1, 4, 5, 11])
def test_map_padded_equals_one_call_over_all_rows(n):
  x = np.random.default_rng(n).normal(size=(n, 6)).astype(np.float32)
  # A pytree output, one leaf with a trailing axis and one without, of another dtype.
  fn, traces = counted(lambda b: {"sum": jnp.sum(b, axis=1), "arg": jnp.argmax(b, axis=1),
                                  "sq": b * b})
  out = infer.map_padded(fn, x, batch_size=4)
  assert out["sum"].shape == (n,) and out["arg"].dtype == np.int32 and out["sq"].shape == (n, 6)
  np.testing.assert_allclose(out["sum"], x.sum(axis=1), rtol=1e-6)
  np.testing.assert_array_equal(out["arg"], x.argmax(axis=1) if n else np.zeros(0, int))
  np.testing.assert_allclose(out["sq"], x * x, rtol=1e-6)
  assert traces == [(4, 6)], "every call must see the same (batch_size, ...) shape, traced once"


def test_padding_rows_are_zeros_and_dropped():
  x = np.arange(1, 7, dtype=np.float32).reshape(3, 2)
  # Each row's value plus the whole batch's sum: the padding rows show up in that sum.
  fn = jax.jit(lambda b: b[:, 0] + 100 * jnp.sum(b))
  np.testing.assert_array_equal(infer.map_padded(fn, x, batch_size=2),
                                [1 + 1000, 3 + 1000, 5 + 1100])


def test_device_placement_and_bad_arguments():
  x = np.ones((3, 2), np.float32)
  device = jax.devices()[-1]
  placed = []

  def record(b):
    if not isinstance(b, jax.core.Tracer):
      placed.append(b.devices())
    return b

  np.testing.assert_array_equal(infer.map_padded(record, x, batch_size=2, device=device), x)
  assert placed == [{device}, {device}]
  with pytest.raises(ValueError, match="batch_size must be positive"):
    infer.map_padded(lambda b: b, x, batch_size=0)
  with pytest.raises(ValueError, match="leading axis of 2 rows"):
    infer.map_padded(jnp.sum, x, batch_size=2)


def test_a_tuple_of_inputs_is_batched_together():
  x = np.arange(10, dtype=np.float32).reshape(5, 2)
  labels = np.array([0, 1, 0, 1, 1], np.int32)
  fn = jax.jit(lambda w, y: w[:, 0] * (1 + y))
  np.testing.assert_array_equal(infer.map_padded(fn, (x, labels), batch_size=2),
                                [0, 4, 4, 12, 16])
  with pytest.raises(ValueError, match="different lengths"):
    infer.map_padded(fn, (x, labels[:4]), batch_size=2)
