"""Inference over any number of clips in fixed-size, zero-padded batches.

Every batch has exactly ``batch_size`` rows (the last one zero-padded), so a jitted function
compiles once whatever the number of clips. The callers (distillation targets, the black box,
the PosCUDA evaluation) differ only in what they compute from the logits:

    fn = jax.jit(lambda x: apply_fn(params, batch_stats, x, train=False)[0])
    logits = infer.map_padded(fn, waveforms, batch_size=128)

Padding rows must not change the other rows' outputs: true in eval mode (BatchNorm uses its
running statistics, nothing else mixes rows).
"""

from collections.abc import Callable
from typing import Any

import jax
import numpy as np


def map_padded(fn: Callable[..., Any], inputs: Any, *, batch_size: int,
               device: jax.Device | None = None) -> Any:
  """``fn`` over ``inputs`` in batches of exactly ``batch_size`` rows; outputs stacked on host.

  Args:
    fn: a function (usually jitted) of one batch, ``fn(batch)``, or, when ``inputs`` is a tuple,
      of one batch of each, ``fn(*batches)``; it returns an array or a pytree of arrays, each
      with a leading axis of ``batch_size`` rows.
    inputs: an ``(N, ...)`` host array, or a tuple of them with the same ``N``; ``N`` may be 0
      or any multiple or not of ``batch_size``.
    batch_size: rows per call of ``fn``.
    device: where each batch is put before the call (default: left to ``fn``).

  Returns:
    ``fn``'s output structure with numpy arrays of ``N`` rows.

  Raises:
    ValueError: ``batch_size`` is not positive, inputs of different lengths, or an output
      without the leading batch axis.
  """
  if int(batch_size) < 1:
    raise ValueError(f"map_padded: batch_size must be positive; got {batch_size}.")
  several = isinstance(inputs, tuple)
  arrays = [np.asarray(x) for x in (inputs if several else (inputs,))]
  n, rows = len(arrays[0]), int(batch_size)
  if any(len(x) != n for x in arrays):
    raise ValueError(f"map_padded: inputs of different lengths {[len(x) for x in arrays]}.")
  specs = [jax.ShapeDtypeStruct((rows,) + x.shape[1:], x.dtype) for x in arrays]
  shapes = jax.eval_shape(fn, *specs)
  for leaf in jax.tree.leaves(shapes):
    if not leaf.shape or leaf.shape[0] != rows:
      raise ValueError(f"map_padded: every output of fn needs a leading axis of {rows} rows; "
                       f"got shape {leaf.shape}.")
  treedef = jax.tree.structure(shapes)
  outs = [np.empty((n,) + s.shape[1:], s.dtype) for s in jax.tree.leaves(shapes)]
  for start in range(0, n, rows):
    size = min(rows, n - start)
    batches = [_padded(x[start:start + size], rows) for x in arrays]
    if device is not None:
      batches = jax.device_put(batches, device)
    for dst, src in zip(outs, jax.tree.leaves(fn(*batches))):
      dst[start:start + size] = np.asarray(src)[:size]
  return jax.tree.unflatten(treedef, outs)


def _padded(chunk: np.ndarray, rows: int) -> np.ndarray:
  if len(chunk) == rows:
    return chunk
  return np.concatenate([chunk, np.zeros((rows - len(chunk),) + chunk.shape[1:], chunk.dtype)])
