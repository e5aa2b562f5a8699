"""jaxtag.taggants.key_design: the exact null of the key design against brute force over every
label draw, the issue's numbers against the binomial, the design floor, the Monte Carlo fallback,
and the test's size under a simulated H0 (with a deliberately anti-conservative test that must
fail)."""

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxtag import stats
from jaxtag.taggants import key_design


def brute_force_counts(answers, num_classes):
  """P[hits = h] as counts over every label draw of the design (products of block injections)."""
  num_keys = len(answers)
  blocks = key_design.permutation_blocks(num_keys, num_classes)
  counts = [0] * (num_keys + 1)
  for combo in itertools.product(*[itertools.permutations(range(num_classes), len(b))
                                   for b in blocks]):
    labels = [x for part in combo for x in part]
    counts[sum(labels[i] in answers[i] for i in range(num_keys))] += 1
  return counts


@st.composite
def boards(draw):
  c = draw(st.integers(1, 5))
  num_keys = draw(st.integers(1, 7 if c <= 3 else 5))   # K > C: several blocks.
  k = draw(st.integers(1, c))
  rows = [draw(st.permutations(range(c)))[:k] for _ in range(num_keys)]
  return np.asarray(rows), c


@settings(max_examples=120, deadline=None)
@given(boards())
def test_exact_distribution_equals_brute_force(board):
  answers, c = board
  counts, total = key_design.exact_hit_distribution(answers, c)
  expected = brute_force_counts(answers.tolist(), c)
  assert sum(expected) == total
  assert counts == expected
  # The p-value is the exact tail for every possible label draw.
  for labels in [np.concatenate([np.random.default_rng(s).permutation(c)[:len(b)]
                                 for b in key_design.permutation_blocks(len(answers), c)])
                 for s in range(3)]:
    test = key_design.design_test(answers, labels, c)
    assert test.method == "exact" and test.draws == 0
    assert test.p_value == float(Fraction(sum(expected[test.hits:]), total))
    top = max(h for h, n in enumerate(expected) if n)
    assert test.max_hits == top and test.answer_floor == float(Fraction(expected[top], total))


def test_issue_numbers_top1_ten_keys_35_classes():
  """Distinct labels, ten distinct top-1 answers: a heavier tail than the binomial's."""
  answers = np.arange(10)[:, None]
  counts, total = key_design.exact_hit_distribution(answers, 35)
  assert total == math.factorial(35) // math.factorial(25)
  tail4 = Fraction(sum(counts[4:]), total)
  assert float(tail4) == pytest.approx(1.4296e-4, rel=1e-4)
  assert stats.binomial_p_value(4, 10, 1 / 35) == pytest.approx(1.2186e-4, rel=1e-4)
  assert counts[10] == 1   # One injection hits every key: P = 25!/35!.
  ratio = (counts[10] / total) / stats.binomial_p_value(10, 10, 1 / 35)
  assert ratio == pytest.approx(4.14, abs=0.01)
  assert key_design.design_floor(1, 35, 10) == pytest.approx(1 / total, rel=1e-12)
  # The same class answered for every key: at most one key can hit (labels are distinct).
  same = key_design.design_test(np.zeros((10, 1), int), np.arange(10), 35)
  assert same.hits == 1 and same.max_hits == 1 and same.p_value == pytest.approx(10 / 35)
  assert same.answer_floor == same.p_value


def test_rook_numbers_of_a_full_board_exercise_the_chinese_remainder():
  # An m x n full board has r_j = C(m, j) C(n, j) j!; 16! > 2^31, so several primes are needed.
  for m, n in [(16, 16), (5, 9), (1, 1)]:
    got = key_design._rook_numbers_dp([list(range(n))] * m, n)
    assert got == [math.comb(m, j) * math.comb(n, j) * math.factorial(j)
                   for j in range(min(m, n) + 1)] + [0] * (n - min(m, n))
  # k = C: every key hits for every draw.
  counts, total = key_design.exact_hit_distribution(np.tile(np.arange(12), (12, 1)), 12)
  assert counts == [0] * 12 + [total]


@pytest.mark.parametrize("c, m, k", [(4, 3, 2), (4, 2, 3), (3, 3, 2), (4, 4, 1), (5, 2, 2)])
def test_design_floor_is_the_smallest_all_hit_probability(c, m, k):
  best = None
  for rows in itertools.product(itertools.combinations(range(c), k), repeat=m):
    counts, total = key_design.exact_hit_distribution(np.asarray(rows), c)
    if counts[m]:
      p = Fraction(counts[m], total)
      best = p if best is None else min(best, p)
  assert key_design.design_floor(k, c, m) == float(best)
  assert key_design.design_floor(c, c, m) == 1.0
  # Several blocks multiply: K = 2C + 1 keys at top-1.
  assert key_design.design_floor(1, c, 2 * c + 1) == pytest.approx(
      (1 / math.factorial(c)) ** 2 / c, rel=1e-12)


def test_monte_carlo_fallback_is_valid_and_labelled():
  rng = np.random.default_rng(1)
  answers = np.stack([rng.permutation(9)[:3] for _ in range(8)])
  labels = rng.permutation(9)[:8]
  exact = key_design.design_test(answers, labels, 9)
  mc = key_design.design_test(answers, labels, 9, max_exact_bits=2, monte_carlo_draws=20_000,
                              rng=np.random.default_rng(2))
  assert exact.method == "exact" and mc.method == "monte-carlo" and mc.draws == 20_000
  assert mc.hits == exact.hits and mc.max_hits == exact.max_hits
  se = math.sqrt(exact.p_value * (1 - exact.p_value) / 20_000)
  assert abs(mc.p_value - exact.p_value) < 5 * se + 1 / 20_001
  assert mc.p_value >= 1 / 20_001 and mc.answer_floor >= 1 / 20_001
  assert key_design.exact_hit_distribution(answers, 9, max_exact_bits=2) is None


def _simulated_h0_p_values(num_sims, num_keys, c, k, seed):
  rng = np.random.default_rng(seed)
  p = np.empty(num_sims)
  for s in range(num_sims):
    # Answers that favour a few classes (like a benign model), drawn independently of labels.
    weights = rng.dirichlet(np.full(c, 0.5))
    answers = np.stack([rng.choice(c, k, replace=False, p=weights) for _ in range(num_keys)])
    labels = np.concatenate([rng.permutation(c)[:len(b)]
                             for b in key_design.permutation_blocks(num_keys, c)])
    p[s] = key_design.design_test(answers, labels, c).p_value
  return p


@pytest.mark.parametrize("num_keys, c, k", [(6, 8, 1), (7, 5, 2)])
def test_false_positive_rate_under_simulated_h0(num_keys, c, k):
  p = _simulated_h0_p_values(2000, num_keys, c, k, seed=num_keys)
  for alpha in (0.05, 0.01):
    rate = np.mean(p <= alpha)
    low, _ = stats.clopper_pearson(int(np.sum(p <= alpha)), p.size, 0.99)
    assert low <= alpha, (alpha, rate)
    # A deliberately anti-conservative test (p / 10) is caught by the same check.
    cheat = int(np.sum(p / 10 <= alpha))
    assert stats.clopper_pearson(cheat, p.size, 0.99)[0] > alpha


def test_exact_size_given_answers_is_at_most_alpha():
  rng = np.random.default_rng(3)
  for _ in range(20):
    answers = np.stack([rng.permutation(6)[:2] for _ in range(9)])
    for alpha in (0.05, 0.01, 0.001):
      size = key_design.design_size(answers, 6, alpha)
      assert 0.0 <= size <= alpha


def test_bad_inputs():
  with pytest.raises(ValueError, match=r"repeat within keys 0\.\.3 \(label 2\)"):
    key_design.check_design_labels([2, 1, 2, 0, 3], 4)
  key_design.check_design_labels([2, 1, 3, 0, 2], 4)   # A new block may repeat.
  with pytest.raises(ValueError, match=r"in \[0, 4\)"):
    key_design.check_design_labels([4], 4)
  with pytest.raises(ValueError, match="distinct labels in each row"):
    key_design.design_test(np.asarray([[1, 1]]), [1], 4)
  with pytest.raises(ValueError, match=r"non-empty \(K, k\)"):
    key_design.exact_hit_distribution(np.zeros((3,), int), 4)
  with pytest.raises(ValueError, match="2 labels for 3 answers"):
    key_design.design_test(np.zeros((3, 1), int), [0, 1], 4)
  with pytest.raises(ValueError, match=r"k \(5\) cannot exceed"):
    key_design.design_floor(5, 4, 3)


def test_primes_are_prime():
  primes = key_design._primes_above(2 ** 200)
  assert len(primes) >= 7 and len(set(primes)) == len(primes) and max(primes) < 2 ** 31
  for p in primes[:3]:
    assert all(p % d for d in range(3, math.isqrt(p) + 1, 2))


def test_key_design_does_not_import_jax():
  import subprocess
  import sys
  code = ("import sys, jaxtag.taggants.key_design; "
          "sys.exit(any(m.split('.')[0] == 'jax' for m in sys.modules))")
  assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
