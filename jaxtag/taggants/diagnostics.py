"""White-box diagnostics of a taggant experiment (the owner's lab tools, not verification).

Verification (``jaxtag.taggants.verify``) sees only a suspect's top-k labels, and a key either
hits or does not. While developing a protection it is more telling to ask how far each key's
label moved: the log-probability of the key's label under a model trained on the
protected data, minus that under a *paired control* trained on the clean data with the same seed,
initialisation and data order (so that the only difference is the perturbed clips).

That difference is a diagnostic of one pair of models, not a bound on the taggants' effect: it
includes any effect of merely changing those clips (training from scratch, a placebo that
perturbs the same clips without alignment moves keys about as much, either way:
``benchmarks/taggant_placebo.py`` and benchmarks/RESULTS.md), and it is not what black-box
verification sees.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxtag.train import infer


class KeyScores(NamedTuple):
  """Per key: ``log_prob`` of its label (natural log) and its label's ``rank`` (1 = top-1)."""

  log_prob: np.ndarray
  rank: np.ndarray


def key_scores(trained, keys, *, batch_size: int = 64) -> KeyScores:
  """Log-probability and rank of each key's label under ``trained`` (eval mode).

  Args:
    trained: a ``jaxtag.train.TrainedModel``.
    keys: ``jaxtag.keys.Keys`` (waveforms at the model's sample rate and clip length).
    batch_size: keys per forward pass.
  """
  labels = np.asarray(keys.labels)
  waves = np.asarray(keys.waveforms, np.float32)
  apply = jax.jit(lambda w: jax.nn.log_softmax(trained.model(w)[0].astype(jnp.float32)))
  log_probs = infer.map_padded(apply, waves, batch_size=max(1, min(batch_size, len(waves))))
  own = log_probs[np.arange(len(labels)), labels]
  rank = 1 + np.sum(log_probs > own[:, None], axis=1)
  return KeyScores(own, rank)


def paired_effect(treated: KeyScores, control: KeyScores) -> dict:
  """Per key, treated minus control log-probability of the key's label (the change between the
  two models: the taggants' effect plus that of changing the clips at all, see the module
  docstring), with the mean, the minimum and the maximum, and both models' ranks."""
  delta = treated.log_prob - control.log_prob
  return {"delta_log_prob": delta.tolist(), "mean": float(delta.mean()),
          "min": float(delta.min()), "max": float(delta.max()),
          "rank_treated": treated.rank.tolist(), "rank_control": control.rank.tolist()}
