"""jaxtag.stats: the exact binomial tail against brute force and scipy; floors; adjustments; the
paired accuracy cost."""

import math
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as scipy_stats

from jaxtag import stats


def brute_force_tail(hits: int, trials: int, p: Fraction) -> float:
  """P[Bin(trials, p) >= hits] summed exactly in rationals."""
  return float(sum(math.comb(trials, i) * p ** i * (1 - p) ** (trials - i)
                   for i in range(hits, trials + 1)))


@pytest.mark.parametrize("trials", [1, 2, 5, 10, 20, 37])
@pytest.mark.parametrize("p", [Fraction(1, 35), Fraction(3, 35), Fraction(1, 4), Fraction(1, 2),
                               Fraction(9, 10)])
def test_p_value_equals_exact_sum_and_scipy_binomtest(trials, p):
  for hits in range(trials + 1):
    got = stats.binomial_p_value(hits, trials, float(p))
    # Relative 1e-12: the tail reaches 1e-58 here, where any 1 - cdf shortcut would read 0.
    assert got == pytest.approx(brute_force_tail(hits, trials, p), rel=1e-12, abs=0)
    reference = scipy_stats.binomtest(hits, trials, float(p), alternative="greater").pvalue
    assert got == pytest.approx(reference, rel=1e-9, abs=0)


def test_reference_floors_and_all_hits_reach_the_floor():
  # REFERENCE.md §1.3: C = 35 top-1 3.6e-16 (K = 10), 1.3e-31 (K = 20); C = 50 top-1 1.0e-17.
  assert stats.p_value_floor(1, 35, 10) == pytest.approx(3.6e-16, rel=0.01)
  assert stats.p_value_floor(1, 35, 20) == pytest.approx(1.3e-31, rel=0.01)
  assert stats.p_value_floor(1, 50, 10) == pytest.approx(1.0e-17, rel=0.03)
  assert stats.p_value_floor(35, 35, 10) == 1.0
  for k, c, kk in [(1, 35, 10), (3, 35, 10), (1, 35, 20), (5, 10, 7)]:
    assert stats.binomial_p_value(kk, kk, k / c) == pytest.approx(stats.p_value_floor(k, c, kk),
                                                                  rel=1e-12)


def test_edges():
  assert stats.binomial_p_value(0, 10, 1 / 35) == 1.0
  assert stats.binomial_p_value(0, 1, 1.0) == 1.0
  assert stats.binomial_p_value(7, 7, 1.0) == 1.0  # k = C: every key hits, proves nothing.
  assert stats.binomial_p_value(1, 1, 0.25) == pytest.approx(0.25, rel=1e-15)
  # 1 hit of 10 at 1/35: 1 - (34/35)^10.
  assert stats.binomial_p_value(1, 10, 1 / 35) == pytest.approx(1 - (34 / 35) ** 10, rel=1e-12)
  assert stats.binomial_p_value(np.int64(3), np.int32(10), np.float32(0.5)) == pytest.approx(
      brute_force_tail(3, 10, Fraction(1, 2)))


@settings(max_examples=60, deadline=None)
@given(trials=st.integers(1, 60), p=st.floats(1e-3, 1.0), q=st.floats(1e-3, 1.0),
       data=st.data())
def test_p_value_falls_with_hits_and_rises_with_p(trials, p, q, data):
  hits = data.draw(st.integers(0, trials))
  if hits < trials:
    assert stats.binomial_p_value(hits + 1, trials, p) <= stats.binomial_p_value(hits, trials, p)
  low, high = sorted((p, q))
  assert stats.binomial_p_value(hits, trials, low) <= stats.binomial_p_value(hits, trials, high)
  assert 0.0 < stats.binomial_p_value(hits, trials, p) <= 1.0


@pytest.mark.parametrize("args, match", [
    ((11, 10, 0.1), r"hits \(11\) cannot exceed trials \(10\)"),
    ((-1, 10, 0.1), "hits must be an integer >= 0"),
    ((2.5, 10, 0.1), "hits must be an integer"),
    ((True, 10, 0.1), "hits must be an integer"),
    ((1, 0, 0.1), "trials must be an integer >= 1"),
    ((1, 10, 0.0), r"p must be a probability in \(0, 1\]"),
    ((1, 10, 1.5), r"p must be a probability in \(0, 1\]"),
    ((1, 10, float("nan")), "p must be a probability"),
    ((1, 10, "0.1"), "p must be a probability"),
])
def test_p_value_bad_arguments(args, match):
  with pytest.raises(ValueError, match=match):
    stats.binomial_p_value(*args)


@pytest.mark.parametrize("args, match", [
    ((0, 35, 10), "k must be an integer >= 1"),
    ((36, 35, 10), r"k \(36\) cannot exceed num_classes \(35\)"),
    ((1, 35, 0), "num_keys must be an integer >= 1"),
    ((1, 0, 10), "num_classes must be an integer >= 1"),
])
def test_floor_bad_arguments(args, match):
  with pytest.raises(ValueError, match=match):
    stats.p_value_floor(*args)


def test_critical_hits_and_exact_size():
  # K = 10, C = 35, top-1, alpha = 1e-3: 3 hits give 2.4e-3, 4 hits 1.2e-4 (binomial).
  assert stats.critical_hits(10, 1 / 35, 1e-3) == 4
  size = stats.exact_size(10, 1 / 35, 1e-3)
  assert size == pytest.approx(brute_force_tail(4, 10, Fraction(1, 35)), rel=1e-12)
  assert 1e-4 < size < 1e-3
  # Floor above alpha: no outcome rejects, the test never fires.
  assert stats.critical_hits(3, 1 / 4, 1e-3) is None and stats.exact_size(3, 1 / 4, 1e-3) == 0.0
  assert stats.critical_hits(10, 0.5, 1.0) == 0
  with pytest.raises(ValueError, match="alpha must be a probability"):
    stats.critical_hits(10, 0.5, 0.0)


def test_bonferroni_and_holm_hand_example():
  p = [0.01, 0.04, 0.03, 0.005]
  np.testing.assert_allclose(stats.bonferroni(p), [0.04, 0.16, 0.12, 0.02], rtol=1e-12)
  # Sorted 0.005, 0.01, 0.03, 0.04 -> 4x, 3x, 2x, 1x = 0.02, 0.03, 0.06, 0.04 -> running max.
  np.testing.assert_allclose(stats.holm(p), [0.03, 0.06, 0.06, 0.02], rtol=1e-12)
  np.testing.assert_array_equal(stats.holm([0.5, 0.9]), [1.0, 1.0])
  np.testing.assert_array_equal(stats.holm([0.2]), [0.2])


@settings(max_examples=80, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=12))
def test_holm_lies_between_raw_and_bonferroni_and_keeps_order(p):
  raw, adjusted, bonf = np.asarray(p), stats.holm(p), stats.bonferroni(p)
  assert np.all(raw <= adjusted + 1e-15) and np.all(adjusted <= bonf + 1e-15)
  assert np.all(adjusted <= 1.0)
  order = np.argsort(raw, kind="stable")
  assert np.all(np.diff(adjusted[order]) >= 0)  # Monotone in the raw p-values.
  assert adjusted.min() == pytest.approx(bonf.min(), abs=1e-15)


@pytest.mark.parametrize("bad, match", [
    ([], "non-empty 1-D"), ([[0.1, 0.2]], "non-empty 1-D"), ([0.1, float("nan")], r"in \[0, 1\]"),
    ([0.1, 1.2], r"\[1.2\] at index \[1\]"), ([-0.1], r"in \[0, 1\]"),
])
@pytest.mark.parametrize("adjust", [stats.holm, stats.bonferroni])
def test_adjustments_reject_bad_p_values(adjust, bad, match):
  with pytest.raises(ValueError, match=match):
    adjust(bad)


@pytest.mark.parametrize("successes, trials", [(0, 10), (1, 10), (5, 10), (10, 10), (3, 200)])
def test_clopper_pearson_matches_scipy(successes, trials):
  low, high = stats.clopper_pearson(successes, trials)
  ci = scipy_stats.binomtest(successes, trials).proportion_ci(0.95, method="exact")
  assert low == pytest.approx(ci.low, abs=1e-12) and high == pytest.approx(ci.high, abs=1e-12)
  assert (low == 0.0) == (successes == 0) and (high == 1.0) == (successes == trials)
  with pytest.raises(ValueError, match="successes"):
    stats.clopper_pearson(trials + 1, trials)
  with pytest.raises(ValueError, match="confidence"):
    stats.clopper_pearson(successes, trials, 1.0)


def test_stats_does_not_import_jax():
  code = "import sys, jaxtag.stats; sys.exit(any(m.split('.')[0] == 'jax' for m in sys.modules))"
  assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_accuracy_cost_counts_discordant_clips_by_hand():
  control = np.array([1, 1, 1, 1, 1, 1, 1, 1, 0, 0], bool)
  treated = np.array([1, 1, 1, 1, 1, 1, 0, 0, 0, 1], bool)
  cost = stats.accuracy_cost(control, treated)
  assert (cost["control_only"], cost["treated_only"], cost["num_clips"]) == (2, 1, 10)
  assert cost["cost"] == pytest.approx(0.8 - 0.7)
  # Wald, paired: var = (b + c - (b - c)^2 / n) / n^2 = 2.9 / 100.
  assert cost["high"] - cost["cost"] == pytest.approx(1.959964 * math.sqrt(0.029), rel=1e-5)
  assert cost["cost"] - cost["low"] == pytest.approx(cost["high"] - cost["cost"])
  assert cost["p_value"] == pytest.approx(1.0)   # 2 vs 1 discordant: P = 1/8+3/8+3/8+1/8
  lopsided = stats.accuracy_cost(np.ones(40, bool), np.arange(40) >= 10)
  assert lopsided["p_value"] == pytest.approx(2 * 0.5 ** 10)   # 10 vs 0 discordant, exact
  same = stats.accuracy_cost(control, control)
  assert (same["cost"], same["low"], same["high"], same["p_value"]) == (0.0, 0.0, 0.0, 1.0)
  with pytest.raises(ValueError, match="one flag per clip"):
    stats.accuracy_cost(control, treated[:5])
  with pytest.raises(ValueError, match="no clips"):
    stats.accuracy_cost([], [])
  with pytest.raises(ValueError, match="confidence"):
    stats.accuracy_cost(control, treated, confidence=1.0)


def test_accuracy_cost_interval_covers_the_true_difference_about_as_often_as_it_says():
  rng = np.random.default_rng(0)
  n, trials, true_cost = 1750, 2000, 0.01   # the demo's test split; P(b) 0.03, P(c) 0.02
  covered = 0
  for _ in range(trials):
    u = rng.random(n)
    control = u >= 0.05                      # wrong on 5%
    treated = (u >= 0.08) | (u < 0.02)       # wrong on [0.05, 0.08): b; right on [0, 0.02): c
    cost = stats.accuracy_cost(control, treated)
    covered += cost["low"] <= true_cost <= cost["high"]
  assert 0.93 <= covered / trials <= 0.97, covered / trials
