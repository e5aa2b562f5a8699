"""CBW verification against a black-box speaker verifier, in two access modes.

The owner enrols each of its held-out speakers i (``enrol_utterances`` of their utterances) and
presents the K triggers as queries: ``S[i, j]`` is the verifier's answer for trigger j against
speaker i, a cosine score (``score`` mode, similarity available) or accept/reject (``decision``
mode, the verifier's own threshold). Speaker i belongs to cluster c(i) (nearest surrogate
centroid, recorded in the secret); its *matched* trigger is c(i)'s, the K - 1 others are
*unmatched*. A model trained on the watermarked data places trigger k near cluster k's voices, so
matched answers exceed unmatched ones; a model that never saw the data has no reason to.

The null hypothesis H0: the suspect was trained without the watermarked data, so its answers do
not depend on the secret assignment of trigger bands to clusters. That assignment is a uniform
random permutation drawn from the owner's key, hence:

* **the decision p-value, both modes**: the exact permutation p-value over trigger-to-cluster
  assignments (:func:`jaxtag.stats.assignment_permutation_p`) of the mean over clusters of the
  matched answer (the mean score, or the acceptance rate, of each cluster's own trigger; with
  every column's total fixed, the same ordering as matched minus unmatched). It is valid by
  construction for any model; its floor is ``1 / (1 + num_permutations)`` (1e-4 by default).
* **the seed-style tests, reported beside it**: in score mode, per cluster k ``m_k`` = mean
  matched score and ``u_k`` = mean unmatched score, and the one-sided paired t-test of
  H0: E[m_k - u_k] <= ``margin`` (:func:`jaxtag.stats.paired_t_greater`, df = clusters - 1):
  the seed's test with the pairing made fair; in decision mode, the one-sided Fisher exact test
  of matched against unmatched acceptances (:func:`jaxtag.stats.fisher_greater`). Neither
  decides: the t-test assumes independent, normal cluster differences and Fisher independent
  answers, which a cluster's shared trigger breaks; on clean models both rejected more often
  than their level allows (benchmarks/RESULTS.md), the permutation test did not.

The decision rule is fixed before any suspect is queried: "trained on the protected data" iff
the mode's p-value <= ``alpha``. The watermark success rate (decision mode) is the fraction of
enrolled speakers whose matched trigger is accepted (and ``any_trigger_rate`` the fraction that
accept at least one trigger, the seed's WSR).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np

from jaxtag import stats
from jaxtag.cbw.watermark import Watermark
from jaxtag.data.dataset import AudioDataset, DatasetError

MODES = ("score", "decision")
logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class VerifyConfig:
  """How to query and test.

  Attributes:
    enrol_utterances: utterances of each held-out speaker used to enrol it (its first ones).
    max_speakers: held-out speakers to enrol (0: all of them).
    margin: the score-mode t-test's allowance: the mean matched-minus-unmatched cosine that its
      H0 allows (the seed's test; the permutation test that decides needs none).
    alpha: the decision threshold on the mode's p-value.
    num_permutations: draws of the permutation test.
    seed: seed of the permutation draws.
  """

  enrol_utterances: int = 4
  max_speakers: int = 0
  margin: float = 0.0
  alpha: float = 0.01
  num_permutations: int = 9999
  seed: int = 0

  def __post_init__(self):
    if self.enrol_utterances < 1:
      raise DatasetError("VerifyConfig.enrol_utterances must be >= 1; got "
                         f"{self.enrol_utterances}.")
    if self.max_speakers < 0 or self.margin < 0 or not 0 < self.alpha < 1:
      raise DatasetError("VerifyConfig: max_speakers >= 0, margin >= 0 and alpha in (0, 1) "
                         f"required; got {self.max_speakers}, {self.margin}, {self.alpha}.")


def enrolled_speakers(wm: Watermark, test: AudioDataset, config: VerifyConfig) -> np.ndarray:
  """Indices of the held-out speakers to enrol: those with at least ``enrol_utterances``
  utterances, the first ``max_speakers`` of them (0: all)."""
  wm.check_dataset(test=test, where="the held-out speakers")
  counts = np.bincount(test.labels, minlength=len(test.class_names))
  usable = np.flatnonzero(counts >= config.enrol_utterances)
  if len(usable) < 2:
    raise DatasetError(f"verification needs at least two held-out speakers with "
                       f"{config.enrol_utterances} utterances; {len(usable)} have them.")
  return usable[:config.max_speakers] if config.max_speakers else usable


def query_matrix(box, wm: Watermark, test: AudioDataset, config: VerifyConfig, *,
                 progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """``(S (T, K) float, speakers (T,))``: the box's answer for every enrolled speaker and
  trigger (decisions as 0/1)."""
  speakers = enrolled_speakers(wm, test, config)
  triggers = wm.triggers()
  rows = []
  iterator = speakers
  if progress:
    from tqdm import tqdm
    iterator = tqdm(speakers, desc=f"querying ({box.mode})", unit="speaker", leave=False)
  for s in iterator:
    enrol = test.waveforms[np.flatnonzero(test.labels == s)[:config.enrol_utterances]]
    answer = np.asarray(box.verify(enrol, triggers))
    if answer.shape != (len(triggers),):
      raise ValueError(f"the black box answered shape {answer.shape} for {len(triggers)} "
                       "queries.")
    rows.append(answer.astype(np.float64))
  return np.stack(rows), speakers


def cluster_table(matrix: np.ndarray, clusters: np.ndarray, num_clusters: int) -> np.ndarray:
  """(K, K): entry [j, k] = mean answer to trigger j of the enrolled speakers of cluster k
  (NaN columns for clusters without enrolled speakers)."""
  table = np.full((num_clusters, num_clusters), np.nan)
  for k in range(num_clusters):
    members = clusters == k
    if members.any():
      table[:, k] = matrix[members].mean(axis=0)
  return table


def test_matrix(matrix: np.ndarray, clusters: np.ndarray, wm: Watermark, mode: str,
                config: VerifyConfig) -> dict[str, Any]:
  """The tests of the module doc on a query matrix (T, K) whose rows belong to ``clusters``."""
  if mode not in MODES:
    raise ValueError(f"mode must be one of {MODES}; got {mode!r}.")
  k = wm.num_clusters
  matched = matrix[np.arange(len(matrix)), clusters]
  unmatched = (matrix.sum(axis=1) - matched) / (k - 1)
  table = cluster_table(matrix, clusters, k)
  present = np.flatnonzero(np.isfinite(table[0]))
  m_k = table[present, present]
  u_k = (np.nansum(table[:, present], axis=0) - m_k) / (k - 1)
  permutation = stats.assignment_permutation_p(table, np.arange(k),
                                               num_permutations=config.num_permutations,
                                               seed=config.seed)
  out = {"mode": mode, "num_speakers": int(len(matrix)), "num_clusters": k,
         "clusters_with_speakers": int(len(present)), "alpha": config.alpha,
         "matched_mean": float(matched.mean()), "unmatched_mean": float(unmatched.mean()),
         "permutation": permutation,
         "per_cluster": {"cluster": present.tolist(), "matched": m_k.tolist(),
                         "unmatched": u_k.tolist()}}
  if mode == "score":
    if len(present) < 2:   # No spread to test: p = 1 is the only valid answer.
      logger.warning("the seed-style t-test needs enrolled speakers in at least two clusters; "
                     "they fall in %d: its p = 1. Enrol more held-out speakers.", len(present))
      test = {"t": None, "df": 0, "p_value": 1.0, "mean_difference": float(np.mean(m_k - u_k)),
              "sd_difference": None, "n": int(len(present)), "margin": config.margin,
              "untestable": "enrolled speakers in fewer than two clusters"}
    else:
      test = stats.paired_t_greater(m_k, u_k, margin=config.margin)
    out.update(t_test=test)
  else:
    hits_m, hits_u = int(round(matched.sum())), int(round(matrix.sum() - matched.sum()))
    fisher = stats.fisher_greater(hits_m, len(matrix), hits_u, len(matrix) * (k - 1))
    out.update(fisher=fisher, watermark_success_rate=float(matched.mean()),
               any_trigger_rate=float(np.mean(matrix.max(axis=1) > 0.5)))
  out["test"] = (f"permutation test of the mean matched {'score' if mode == 'score' else 'acceptance'}"
                 " over trigger-cluster assignments, one-sided")
  out["p_value"] = permutation["p_value"]
  out["detected"] = bool(out["p_value"] <= config.alpha)
  return out


def verify(box, wm: Watermark, test: AudioDataset, config: VerifyConfig = VerifyConfig(), *,
           progress: bool = False) -> dict[str, Any]:
  """Queries ``box`` (a ``jaxtag.speaker.blackbox.SpeakerBlackBox``) and tests it (module doc).

  Returns:
    The test's record: ``p_value``, ``detected``, the permutation check, per-cluster means,
    ``matrix`` (the raw answers) and, in decision mode, the watermark success rate.
  """
  if box.sample_rate != wm.sample_rate:
    raise DatasetError(f"the black box takes {box.sample_rate} Hz audio; the watermark was made "
                       f"at {wm.sample_rate} Hz.")
  matrix, speakers = query_matrix(box, wm, test, config, progress=progress)
  clusters = wm.test_cluster[speakers]
  out = test_matrix(matrix, clusters, wm, box.mode, config)
  out["speakers"] = [test.class_names[s] for s in speakers]
  out["matrix"] = matrix.tolist()
  return out
