"""Speaker-verification scoring: enrolment centroids, cosine scores, trials and the EER.

Host-side numpy (inputs may be jax arrays); results are numpy arrays or Python floats.

The equal error rate is reported at the usual operating point ``min_t max(FAR(t), FRR(t))``
over every candidate threshold ``t`` (each distinct score, and +inf), not an interpolated
crossing: with ``accept iff score >= t``, ``FAR(t)`` is the share of non-target trials with
``score >= t`` and ``FRR(t)`` the share of target trials with ``score < t``. The returned
threshold is the smallest ``t`` reaching that minimum, so it can be used as the accept rule as is.
"""

from __future__ import annotations

import numpy as np


def _unit_rows(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float64)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def enrol(embeddings) -> np.ndarray:
  """A speaker's model: the unit-norm mean of the unit-norm rows of ``embeddings (m, D)``.

  Raises:
    ValueError: no rows, or not 2-D.
  """
  e = np.asarray(embeddings)
  if e.ndim != 2 or e.shape[0] == 0:
    raise ValueError(f"enrol needs embeddings (m >= 1, D); got shape {e.shape}.")
  return _unit_rows(_unit_rows(e).mean(axis=0)).astype(np.float32)


def cosine_scores(queries, centroids) -> np.ndarray:
  """Cosine similarity ``(q, c)`` of every query row to every centroid row."""
  return (_unit_rows(queries) @ _unit_rows(centroids).T).astype(np.float32)


def far_frr(scores, labels, threshold: float) -> tuple[float, float]:
  """``(FAR, FRR)`` of the rule ``accept iff score >= threshold``."""
  scores, labels = np.asarray(scores, np.float64), np.asarray(labels, bool)
  far = float(np.mean(scores[~labels] >= threshold))
  frr = float(np.mean(scores[labels] < threshold))
  return far, frr


def eer(scores, labels) -> tuple[float, float]:
  """Equal error rate and its threshold (see the module docstring for the definition).

  Args:
    scores: ``(n,)`` similarity scores (higher: more likely the same speaker).
    labels: ``(n,)`` bool, True for target (same-speaker) trials.

  Returns:
    ``(eer in [0, 1], threshold)`` as Python floats; the threshold may be ``inf`` (reject all).

  Raises:
    ValueError: shapes differ, or there is no target or no non-target trial.
  """
  scores = np.asarray(scores, np.float64).reshape(-1)
  labels = np.asarray(labels, bool).reshape(-1)
  if scores.shape != labels.shape:
    raise ValueError(f"eer: scores {scores.shape} and labels {labels.shape} differ in shape.")
  targets, others = np.sort(scores[labels]), np.sort(scores[~labels])
  if not targets.size or not others.size:
    raise ValueError(f"eer needs target and non-target trials; got {targets.size} targets and "
                     f"{others.size} non-targets.")
  candidates = np.append(np.unique(scores), np.inf)
  frr = np.searchsorted(targets, candidates, side="left") / targets.size
  far = 1.0 - np.searchsorted(others, candidates, side="left") / others.size
  worst = np.maximum(far, frr)
  best = int(np.argmin(worst))
  return float(worst[best]), float(candidates[best])


def verification_trials(embeddings, speakers, *, num_enrol: int) -> tuple[np.ndarray, np.ndarray]:
  """Trials of every test speaker against every other: scores and target labels.

  Each speaker is enrolled from its first ``num_enrol`` utterances (in the given order); every
  other utterance of every speaker is scored against every enrolled speaker, a target trial when
  the speaker is its own. Speakers with fewer than ``num_enrol + 1`` utterances are left out.

  Args:
    embeddings: ``(n, D)`` utterance embeddings.
    speakers: ``(n,)`` speaker of each utterance (any hashable labels).
    num_enrol: utterances per enrolment.

  Returns:
    ``(scores (t,), labels (t,) bool)``.

  Raises:
    ValueError: fewer than two speakers have enough utterances.
  """
  embeddings, speakers = np.asarray(embeddings), np.asarray(speakers)
  if num_enrol < 1:
    raise ValueError(f"verification_trials: num_enrol must be >= 1; got {num_enrol}.")
  names, centroids, queries, owners = [], [], [], []
  for name in np.unique(speakers):
    rows = np.flatnonzero(speakers == name)
    if rows.size <= num_enrol:
      continue
    names.append(name)
    centroids.append(enrol(embeddings[rows[:num_enrol]]))
    queries.append(embeddings[rows[num_enrol:]])
    owners += [len(names) - 1] * (rows.size - num_enrol)
  if len(names) < 2:
    raise ValueError(f"verification_trials: {len(names)} speakers have more than num_enrol="
                     f"{num_enrol} utterances; need at least 2 (lower num_enrol).")
  scores = cosine_scores(np.concatenate(queries), np.stack(centroids))
  labels = np.asarray(owners)[:, None] == np.arange(len(names))[None, :]
  return scores.reshape(-1), labels.reshape(-1)


def verification_eer(embeddings, speakers, *, num_enrol: int) -> dict[str, float]:
  """EER and threshold of :func:`verification_trials`, with the trial counts.

  Returns:
    ``{"eer", "threshold", "target_trials", "nontarget_trials"}``.
  """
  scores, labels = verification_trials(embeddings, speakers, num_enrol=num_enrol)
  value, threshold = eer(scores, labels)
  return {"eer": value, "threshold": threshold, "target_trials": int(labels.sum()),
          "nontarget_trials": int((~labels).sum())}
