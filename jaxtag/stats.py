"""Statistics of verification: binomial tail, its floor, multiple-testing adjustments, CBW tests.

If each of K keys' labels were independent and uniform, each key would land its label in the
top-k with probability k/C, the number of hits would be Binomial(K, k/C) and the one-sided p-value
``P[Binomial(K, k/C) >= hits]`` (REFERENCE.md §1.3), with floor (k/C)^K. jaxtag's keys are not
drawn that way (labels are distinct within blocks of C keys): the test that verification uses is
the exact test of that design, :mod:`jaxtag.taggants.key_design`. The binomial stays here as the
reference figure of the literature and of older reports.

:func:`accuracy_cost` compares two models' accuracy on the same clips (paired: McNemar).

numpy and scipy only (no JAX), so that a verifier can audit these numbers anywhere.
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Sequence

import numpy as np
from scipy import stats as scipy_stats


def _check_int(name: str, value, minimum: int) -> int:
  if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
    raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}.")
  return int(value)


def _check_probability(name: str, value, *, allow_zero: bool = False) -> float:
  ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and np.isfinite(value)
  if not ok or not (0.0 <= value <= 1.0 if allow_zero else 0.0 < value <= 1.0):
    interval = "[0, 1]" if allow_zero else "(0, 1]"
    raise ValueError(f"{name} must be a probability in {interval}; got {value!r}.")
  return float(value)


def binomial_p_value(hits: int, trials: int, p: float) -> float:
  """Exact one-sided p-value ``P[Binomial(trials, p) >= hits]``.

  Args:
    hits: observed successes (keys whose label is in the top-k), in ``[0, trials]``.
    trials: independent trials (keys), at least 1.
    p: success probability of one trial under H0 (``k / C``), in ``(0, 1]``.

  Returns:
    The p-value in ``(0, 1]``; exactly 1 when ``hits == 0``.

  Raises:
    ValueError: ``trials`` < 1, ``hits`` outside ``[0, trials]``, or ``p`` outside ``(0, 1]``.
  """
  trials = _check_int("trials", trials, 1)
  hits = _check_int("hits", hits, 0)
  if hits > trials:
    raise ValueError(f"hits ({hits}) cannot exceed trials ({trials}).")
  p = _check_probability("p", p)
  if hits == 0:
    return 1.0
  # sf(h - 1) = P[X > h - 1] = P[X >= h]; scipy computes it through the regularised incomplete
  # beta function, accurate far below 1e-300 (no 1 - cdf cancellation).
  return float(scipy_stats.binom.sf(hits - 1, trials, p))


def p_value_floor(k: int, num_classes: int, num_keys: int) -> float:
  """The smallest p-value K keys can give at top-k among C classes: ``(k / C) ** K``.

  Args:
    k: labels read per answer, in ``[1, num_classes]``.
    num_classes: C.
    num_keys: K.

  Returns:
    ``(k / C) ** K`` (1 when ``k == C``: reading every label proves nothing).

  Raises:
    ValueError: a non-positive argument or ``k > num_classes``.
  """
  k = _check_int("k", k, 1)
  num_classes = _check_int("num_classes", num_classes, 1)
  num_keys = _check_int("num_keys", num_keys, 1)
  if k > num_classes:
    raise ValueError(f"k ({k}) cannot exceed num_classes ({num_classes}).")
  return float((k / num_classes) ** num_keys)


def critical_hits(trials: int, p: float, alpha: float) -> int | None:
  """The fewest hits whose p-value is ``<= alpha``, or None when even all hits are not enough.

  Args:
    trials, p: as in :func:`binomial_p_value`.
    alpha: significance level in ``(0, 1]``.

  Returns:
    An integer in ``[0, trials]``, or None.
  """
  alpha = _check_probability("alpha", alpha)
  for hits in range(_check_int("trials", trials, 1) + 1):
    if binomial_p_value(hits, trials, p) <= alpha:
      return hits
  return None


def exact_size(trials: int, p: float, alpha: float) -> float:
  """The exact false-positive rate of the test "reject when p-value <= alpha" under H0.

  The binomial is discrete, so the size is at most ``alpha`` and often far below it, e.g. K = 10,
  C = 35, top-1, alpha = 1e-3 needs 4 hits, which happen with probability 1.2e-4 under the
  binomial (1.4e-4 for distinct labels and distinct answers: :mod:`jaxtag.taggants.key_design`).

  Args:
    trials, p, alpha: as in :func:`critical_hits`.

  Returns:
    ``P[p-value <= alpha | H0]`` (0 when no outcome reaches ``alpha``).
  """
  hits = critical_hits(trials, p, alpha)
  return 0.0 if hits is None else binomial_p_value(hits, trials, p)



def _check_p_values(p_values: Sequence[float] | np.ndarray) -> np.ndarray:
  values = np.asarray(p_values, dtype=np.float64)
  if values.ndim != 1 or values.size == 0:
    raise ValueError(f"p_values must be a non-empty 1-D sequence; got shape {values.shape}.")
  bad = ~((values >= 0.0) & (values <= 1.0))  # Also catches NaN.
  if bad.any():
    raise ValueError(f"p_values must lie in [0, 1]; got {values[bad][:5].tolist()} at index "
                     f"{np.flatnonzero(bad)[:5].tolist()}.")
  return values


def bonferroni(p_values: Sequence[float] | np.ndarray) -> np.ndarray:
  """Bonferroni-adjusted p-values ``min(1, m * p)`` (valid under any dependence).

  Args:
    p_values: m p-values in [0, 1].

  Returns:
    float64 (m,) adjusted p-values, in the input order.

  Raises:
    ValueError: empty, not 1-D, NaN or outside [0, 1].
  """
  values = _check_p_values(p_values)
  return np.minimum(1.0, values * values.size)


def holm(p_values: Sequence[float] | np.ndarray) -> np.ndarray:
  """Holm step-down adjusted p-values (valid under any dependence; never above Bonferroni's).

  The i-th smallest p-value becomes ``max_{j <= i} min(1, (m - j + 1) * p_(j))``; rejecting the
  hypotheses whose adjusted p-value is ``<= alpha`` controls the family-wise error at ``alpha``.

  Args:
    p_values: m p-values in [0, 1].

  Returns:
    float64 (m,) adjusted p-values, in the input order.

  Raises:
    ValueError: empty, not 1-D, NaN or outside [0, 1].
  """
  values = _check_p_values(p_values)
  m = values.size
  order = np.argsort(values, kind="stable")
  stepped = np.minimum(1.0, (m - np.arange(m)) * values[order])
  adjusted = np.empty(m)
  adjusted[order] = np.maximum.accumulate(stepped)
  return adjusted


def clopper_pearson(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
  """Exact (Clopper-Pearson) two-sided confidence interval of a binomial proportion.

  Args:
    successes: observed successes in ``[0, trials]``.
    trials: at least 1.
    confidence: coverage in ``(0, 1)``.

  Returns:
    ``(low, high)``; low is 0 when ``successes == 0`` and high is 1 when ``successes == trials``.

  Raises:
    ValueError: bad counts or confidence.
  """
  trials = _check_int("trials", trials, 1)
  successes = _check_int("successes", successes, 0)
  if successes > trials:
    raise ValueError(f"successes ({successes}) cannot exceed trials ({trials}).")
  confidence = _check_probability("confidence", confidence)
  if confidence == 1.0:
    raise ValueError("confidence must be below 1; got 1.0.")
  tail = (1.0 - confidence) / 2.0
  beta = scipy_stats.beta
  low = 0.0 if successes == 0 else float(beta.ppf(tail, successes, trials - successes + 1))
  high = 1.0 if successes == trials else float(beta.ppf(1 - tail, successes + 1,
                                                        trials - successes))
  return low, high


def accuracy_cost(control_correct, treated_correct, *, confidence: float = 0.95) -> dict:
  """What a treatment (e.g. a protection) costs in accuracy, on one set of clips both models
  answered: control accuracy minus treated accuracy, with a paired interval and an exact test.

  The two models answer the same clips, so the comparison is paired: only the discordant clips
  carry information (``control_only``: right under the control, wrong under the treated model;
  ``treated_only``: the reverse). The interval is the Wald interval of a difference of paired
  proportions (Agresti, *Categorical Data Analysis*, 10.1); ``p_value`` is McNemar's exact
  two-sided test of "no difference" (the discordant clips split as Binomial(b + c, 1/2)). Both
  say how far a difference between *these two models* exceeds the clip sampling; neither covers
  the variation over training seeds (repeat the pair over draws for that).

  Args:
    control_correct, treated_correct: booleans per clip, in the same order.
    confidence: of the interval, in (0, 1).

  Returns:
    ``{"cost", "low", "high", "confidence", "control_accuracy", "treated_accuracy",
    "num_clips", "control_only", "treated_only", "p_value"}``; accuracies and the cost as
    fractions (x100 for points).
  """
  control = np.asarray(control_correct, bool)
  treated = np.asarray(treated_correct, bool)
  if control.shape != treated.shape or control.ndim != 1:
    raise ValueError(f"accuracy_cost: control_correct {control.shape} and treated_correct "
                     f"{treated.shape} must be one flag per clip, the same clips in both.")
  if not len(control):
    raise ValueError("accuracy_cost: no clips.")
  if not 0.0 < confidence < 1.0:
    raise ValueError(f"accuracy_cost: confidence must lie in (0, 1); got {confidence}.")
  n = len(control)
  b = int(np.sum(control & ~treated))
  c = int(np.sum(~control & treated))
  cost = (b - c) / n
  z = float(scipy_stats.norm.ppf(0.5 + confidence / 2))
  half = z * math.sqrt(max(b + c - (b - c) ** 2 / n, 0.0)) / n
  p_value = 1.0 if b + c == 0 else float(scipy_stats.binomtest(b, b + c, 0.5).pvalue)
  return {"cost": cost, "low": cost - half, "high": cost + half, "confidence": confidence,
          "control_accuracy": float(control.mean()), "treated_accuracy": float(treated.mean()),
          "num_clips": n, "control_only": b, "treated_only": c, "p_value": p_value}


def paired_t_greater(x, y, *, margin: float = 0.0) -> dict:
  """One-sided paired t-test of H0: mean(x - y) <= margin against H1: mean(x - y) > margin.

  The p-value is the upper tail of Student's t with ``n - 1`` degrees of freedom at
  ``t = (mean(d) - margin) / (sd(d) / sqrt(n))``, ``d = x - y`` (what
  ``scipy.stats.ttest_rel(x - margin, y, alternative="greater")`` gives). Differences that are
  all equal have no spread: the p-value is then 0 when they exceed the margin and 1 otherwise.

  Args:
    x, y: paired observations, the same length n >= 2.
    margin: the difference H0 allows.

  Returns:
    ``{"t", "df", "p_value", "mean_difference", "sd_difference", "n", "margin"}``.
  """
  x = np.asarray(x, np.float64)
  y = np.asarray(y, np.float64)
  if x.shape != y.shape or x.ndim != 1:
    raise ValueError(f"paired_t_greater: x {x.shape} and y {y.shape} must be 1-D and paired.")
  n = x.size
  if n < 2:
    raise ValueError(f"paired_t_greater: needs at least 2 pairs; got {n}.")
  if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y)) and math.isfinite(margin)):
    raise ValueError("paired_t_greater: x, y and margin must be finite.")
  d = x - y
  mean, sd = float(d.mean()), float(d.std(ddof=1))
  if sd == 0.0:
    t = math.inf if mean > margin else (-math.inf if mean < margin else 0.0)
    p = 0.0 if mean > margin else 1.0
  else:
    t = (mean - margin) / (sd / math.sqrt(n))
    p = float(scipy_stats.t.sf(t, n - 1))
  return {"t": t, "df": n - 1, "p_value": p, "mean_difference": mean, "sd_difference": sd,
          "n": n, "margin": float(margin)}


def fisher_greater(hits_a: int, trials_a: int, hits_b: int, trials_b: int) -> dict:
  """One-sided Fisher exact test that group a's success rate exceeds group b's.

  Conditional on the total successes, a's successes are hypergeometric under H0 (equal rates);
  the p-value is ``P[X >= hits_a]`` (what ``scipy.stats.fisher_exact(table,
  alternative="greater")`` gives for ``[[hits_a, trials_a - hits_a], [hits_b, trials_b -
  hits_b]]``).

  Returns:
    ``{"p_value", "rate_a", "rate_b", "hits_a", "trials_a", "hits_b", "trials_b"}``.
  """
  trials_a = _check_int("trials_a", trials_a, 1)
  trials_b = _check_int("trials_b", trials_b, 1)
  hits_a = _check_int("hits_a", hits_a, 0)
  hits_b = _check_int("hits_b", hits_b, 0)
  if hits_a > trials_a or hits_b > trials_b:
    raise ValueError(f"fisher_greater: hits exceed trials ({hits_a}/{trials_a}, "
                     f"{hits_b}/{trials_b}).")
  total = trials_a + trials_b
  successes = hits_a + hits_b
  p = float(scipy_stats.hypergeom.sf(hits_a - 1, total, successes, trials_a))
  return {"p_value": min(1.0, max(0.0, p)), "rate_a": hits_a / trials_a,
          "rate_b": hits_b / trials_b, "hits_a": hits_a, "trials_a": trials_a,
          "hits_b": hits_b, "trials_b": trials_b}


def assignment_permutation_p(matrix, assignment, *, num_permutations: int = 9999,
                             seed: int = 0) -> dict:
  """Monte Carlo permutation p-value of a matching between rows and columns of a score matrix.

  ``T(pi) = mean_k matrix[pi(k), k]``. Under H0 the observed ``assignment`` (row of each column)
  is a uniformly random permutation independent of ``matrix`` (it was drawn from a secret key),
  so ``P[T(random pi) >= T(assignment)]`` is estimated without bias by
  ``(1 + #{T(pi_b) >= T_obs}) / (1 + B)`` over B random permutations, a valid p-value at every B
  (Phipson & Smyth 2010). Its floor is ``1 / (1 + B)``. When K! <= B every permutation is
  enumerated instead and the p-value is exact: ``#{T(pi) >= T_obs} / K!``.

  Args:
    matrix: (K, K) scores, rows = what was assigned (triggers), columns = where (clusters);
      NaN columns (no observation) are left out.
    assignment: (K,) the row assigned to each column, a permutation.
    num_permutations: B.
    seed: the permutations' seed.

  Returns:
    ``{"p_value", "statistic", "num_permutations", "floor", "exact"}``.
  """
  m = np.asarray(matrix, np.float64)
  a = np.asarray(assignment, np.int64)
  if m.ndim != 2 or m.shape[0] != m.shape[1] or a.shape != (m.shape[0],):
    raise ValueError(f"assignment_permutation_p: matrix {m.shape} must be (K, K) and assignment "
                     f"{a.shape} (K,).")
  if sorted(a.tolist()) != list(range(len(a))):
    raise ValueError("assignment_permutation_p: assignment must be a permutation of 0..K-1.")
  num_permutations = _check_int("num_permutations", num_permutations, 1)
  observed_cols = np.flatnonzero(np.all(np.isfinite(m), axis=0))
  if observed_cols.size == 0:
    raise ValueError("assignment_permutation_p: no column has observations.")
  cols = observed_cols
  t_obs = float(m[a[cols], cols].mean())
  if math.factorial(len(a)) <= num_permutations:   # Few enough to enumerate: the exact p-value.
    perms = np.asarray(list(itertools.permutations(range(len(a)))))
    t_perm = m[perms[:, cols], cols].mean(axis=1)
    exceed = int(np.sum(t_perm >= t_obs - 1e-12))
    return {"p_value": exceed / len(perms), "statistic": t_obs, "num_permutations": len(perms),
            "floor": 1 / len(perms), "exact": True}
  rng = np.random.default_rng(seed)
  perms = np.argsort(rng.random((num_permutations, len(a))), axis=1)
  t_perm = m[perms[:, cols], cols].mean(axis=1)
  exceed = int(np.sum(t_perm >= t_obs - 1e-12))
  return {"p_value": (1 + exceed) / (1 + num_permutations), "statistic": t_obs,
          "num_permutations": num_permutations, "floor": 1 / (1 + num_permutations),
          "exact": False}
