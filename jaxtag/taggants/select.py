"""Poison selection: which training clips of each key's class carry that key's taggant.

The poisons are "attractors": clips whose true label is the key's target label, so that the
protected dataset stays clean-label (every clip keeps its true label). The budget is a fraction of
the whole training set, split over the keys as evenly as possible.

Selection is host-side numpy (it runs once, on integer labels); the per-sample gradient norms that
the ``grad_norm`` method ranks by come from :func:`jaxtag.taggants.protect.per_sample_grad_norms`,
the clip levels that ``loudest`` ranks by from :func:`jaxtag.taggants.protect.protect_dataset`.
"""

from __future__ import annotations

import dataclasses
import fractions
import math
from typing import Literal

import jax
import numpy as np

from jaxtag import errors
from jaxtag import rng as rng_lib

Method = Literal["random", "grad_norm", "loudest"]
METHODS = ("random", "grad_norm", "loudest")


@dataclasses.dataclass(frozen=True)
class Selection:
  """Poison indices into the training set, one row per key.

  Attributes:
    indices: int32 ``(K, n_max)``: row ``k`` holds key ``k``'s poisons; padded entries repeat a
      valid index and have ``mask`` False.
    mask: bool ``(K, n_max)``: which entries are real poisons.
    key_labels: int32 ``(K,)``, the target label of each key (every poison of row ``k`` has it).
  """

  indices: np.ndarray
  mask: np.ndarray
  key_labels: np.ndarray

  @property
  def num_poisons(self) -> int:
    return int(self.mask.sum())

  def flat_indices(self) -> np.ndarray:
    """The real poisons' training-set indices, key by key."""
    return self.indices[self.mask]

  def pad_to(self, multiple: int) -> Selection:
    """Pads the poison axis to a multiple of ``multiple`` (e.g. the device count) with masked
    entries, so that the poisons split evenly over a mesh."""
    n = self.indices.shape[1]
    extra = (-n) % multiple
    if not extra:
      return self
    idx = np.concatenate([self.indices, np.repeat(self.indices[:, :1], extra, axis=1)], axis=1)
    mask = np.concatenate([self.mask, np.zeros((self.mask.shape[0], extra), bool)], axis=1)
    return Selection(idx.astype(np.int32), mask, self.key_labels)


def _total_poisons(budget: float, num_train: int) -> int:
  """``floor(budget * num_train)``, with a little slack so that ``k / n`` counts as ``k``."""
  return int(np.floor(budget * num_train + 1e-9))


def smallest_budget(num_train: int, num_keys: int, *, digits: int = 4) -> float | None:
  """The smallest budget, written with ``digits`` significant digits, that gives each of
  ``num_keys`` keys a poison out of ``num_train`` clips (``num_keys / num_train`` rounded up);
  None when no budget in (0, 1] does (fewer clips than keys)."""
  if num_keys > num_train or num_train <= 0:
    return None
  exact = fractions.Fraction(num_keys, num_train)
  unit = fractions.Fraction(10) ** (math.floor(math.log10(exact)) - digits + 1)
  steps = math.ceil(exact / unit)
  while _total_poisons(float(steps * unit), num_train) < num_keys:  # float rounding, if ever
    steps += 1
  return float(min(steps * unit, 1))


def poisons_per_key(budget: float, num_train: int, num_keys: int) -> np.ndarray:
  """How many poisons each key gets: ``floor(budget * num_train)`` split as evenly as possible.

  Raises:
    ValueError: a budget outside (0, 1], or one that gives a key no poison (the message names
      :func:`smallest_budget`'s value, as the caller sets the option).
  """
  if not 0.0 < budget <= 1.0:
    raise ValueError(f"{errors.option('budget', owner='ProtectConfig')} must be a fraction in "
                     f"(0, 1]; got {budget}.")
  total = _total_poisons(budget, num_train)
  if total < num_keys:
    smallest = smallest_budget(num_train, num_keys)
    if smallest is None:
      fix = "no budget can, with fewer training clips than keys: use fewer keys or more data"
    else:
      fix = (f"the smallest budget that does is {num_keys} keys / {num_train} clips = "
             f"{num_keys / num_train:.6g}: pass "
             f"{errors.option('budget', smallest, owner='ProtectConfig')} or more")
    raise ValueError(f"budget {budget} of {num_train} training clips gives {total} poisons for "
                     f"{num_keys} keys; each key needs at least one: {fix}.")
  counts = np.full(num_keys, total // num_keys, np.int64)
  counts[: total % num_keys] += 1
  return counts


def select_poisons(key: jax.Array | np.random.Generator, labels: np.ndarray, key_labels: np.ndarray, *,
                   budget: float, method: Method = "random",
                   scores: np.ndarray | None = None,
                   eligible: np.ndarray | None = None) -> Selection:
  """Chooses each key's poisons among the training clips of the key's label.

  Keys that share a label (more keys than classes) get disjoint poisons.

  Args:
    key: a JAX key (its numpy generator is :func:`jaxtag.rng.numpy_rng` of it), or a numpy
      generator to draw from (selection is host-side numpy and happens once).
    labels: int ``(N,)`` training labels.
    key_labels: int ``(K,)`` target label of each key.
    budget: fraction of the training set that is perturbed in total (the paper: 0.01).
    method: ``random``; or the clips with the largest ``scores``: ``grad_norm`` (per-sample
      gradient norms on the surrogate: the clips the model still learns from most) or
      ``loudest`` (clip RMS: the largest perturbation at a given SNR, the furthest above the
      16-bit grid).
    scores: float ``(N,)``, required for ``grad_norm`` and ``loudest``.
    eligible: bool ``(N,)``, the clips that may be poisons (None: all); e.g. those loud enough
      for their SNR budget to survive the 16-bit export.

  Returns:
    A :class:`Selection`.

  Raises:
    ValueError: unknown method, missing scores, or a class with too few clips for its keys.
  """
  labels = np.asarray(labels)
  key_labels = np.asarray(key_labels, np.int32)
  if method not in METHODS:
    raise ValueError(f"method must be one of {METHODS}; got {method!r}.")
  if method != "random":
    if scores is None or np.shape(scores) != labels.shape:
      raise ValueError(f"method={method!r} needs scores of shape (N,) = labels.shape.")
    scores = np.asarray(scores, np.float64)
  if eligible is None:
    eligible = np.ones(labels.shape, bool)
  elif np.shape(eligible) != labels.shape:
    raise ValueError(f"eligible must have the labels' shape {labels.shape}; got "
                     f"{np.shape(eligible)}.")
  rng = key if isinstance(key, np.random.Generator) else rng_lib.numpy_rng(key)
  counts = poisons_per_key(budget, labels.size, key_labels.size)
  n_max = int(counts.max())
  indices = np.zeros((key_labels.size, n_max), np.int32)
  mask = np.zeros((key_labels.size, n_max), bool)
  for label in np.unique(key_labels):
    keys_here = np.flatnonzero(key_labels == label)
    pool = np.flatnonzero((labels == label) & np.asarray(eligible, bool))
    need = int(counts[keys_here].sum())
    if pool.size < need:
      left_out = int(np.sum(labels == label)) - pool.size
      raise ValueError(f"class {int(label)} has {pool.size} eligible training clips "
                       f"({left_out} left out as ineligible) but its {keys_here.size} key(s) "
                       f"need {need} poisons; lower the budget.")
    if method == "random":
      chosen = rng.choice(pool, size=need, replace=False)
    else:
      order = np.argsort(-scores[pool], kind="stable")
      chosen = pool[order[:need]]
    start = 0
    for k in keys_here:
      n = int(counts[k])
      indices[k, :n] = chosen[start:start + n]
      indices[k, n:] = chosen[start]
      mask[k, :n] = True
      start += n
  return Selection(indices, mask, key_labels)
