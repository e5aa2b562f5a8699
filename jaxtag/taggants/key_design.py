"""The exact test of the key design: the null distribution of hits given the suspect's answers.

The binomial of :mod:`jaxtag.stats` assumes each key's label independent and uniform.
``jaxtag.taggants.keys.key_labels`` draws them otherwise: blocks of C consecutive keys take the
first entries of one uniform random permutation of the C classes (distinct labels within a block),
blocks independent. Under H0 (the suspect never saw the taggants) its answers do not depend on the
labels (the label stream is separate from the audio's), so given the answer sets A_i the null
distribution of hits = #{i : label_i in A_i} is that of a uniform random injection of each block's
keys into the classes. For a block of m keys it follows from the rook numbers r_j of the "hit
board" (row i holds the cells A_i):

  #{injections with exactly h hits} = sum_j (-1)^(j-h) binom(j, h) r_j (C-j)! / (C-m)!,

computed here in integers (no float cancellation), blocks convolved. With distinct labels the
tail is heavier than the binomial's: top-1, K = 10, C = 35 and ten distinct answers give
P[hits >= 4] = 1.43e-4 (binomial 1.22e-4) and P[hits = 10] = (25!/35!) = 1.50e-15, 4.1x the
binomial floor (1/35)^10.

numpy only (no JAX), like :mod:`jaxtag.stats`.
"""

from __future__ import annotations

import dataclasses
import fractions
import math
from collections.abc import Sequence

import numpy as np

from jaxtag.stats import _check_int, _check_probability

MONTE_CARLO_DRAWS = 100_000
MAX_EXACT_BITS = 18   # 2^18 states x a few int64 residues: about 0.4 s at most on one CPU core.


def permutation_blocks(num_keys: int, num_classes: int) -> list[range]:
  """The keys that share one label permutation in ``jaxtag.taggants.keys.key_labels``.

  Args:
    num_keys: K.
    num_classes: C.

  Returns:
    ``[range(0, C), range(C, 2C), ...]`` covering ``range(K)`` (the last block may be shorter).
  """
  num_keys = _check_int("num_keys", num_keys, 1)
  num_classes = _check_int("num_classes", num_classes, 1)
  return [range(s, min(s + num_classes, num_keys)) for s in range(0, num_keys, num_classes)]


def check_design_labels(labels: Sequence[int] | np.ndarray, num_classes: int) -> None:
  """Raises unless ``labels`` could come from ``key_labels`` (distinct within each block).

  Raises:
    ValueError: a label outside ``[0, C)`` or one repeated within a permutation block.
  """
  labels = np.asarray(labels, np.int64).reshape(-1)
  if labels.size == 0 or labels.min() < 0 or labels.max() >= num_classes:
    raise ValueError(f"key labels must be a non-empty list in [0, {num_classes}); got "
                     f"{labels[:10].tolist()}.")
  for block in permutation_blocks(labels.size, num_classes):
    values, counts = np.unique(labels[block.start:block.stop], return_counts=True)
    if (counts > 1).any():
      raise ValueError(
          f"key labels repeat within keys {block.start}..{block.stop - 1} (label "
          f"{int(values[counts > 1][0])}): jaxtag.taggants.keys.key_labels never draws that "
          f"(each block of {num_classes} keys holds distinct labels), so the exact test's null "
          "does not describe these keys. Use a key file made by jaxtag.taggants.keys.make_keys.")


def _is_prime(n: int) -> bool:
  # Deterministic Miller-Rabin: bases 2, 3, 5, 7 decide every n < 3,215,031,751.
  if n < 2 or n % 2 == 0:
    return n == 2
  d, s = n - 1, 0
  while d % 2 == 0:
    d, s = d // 2, s + 1
  for a in (2, 3, 5, 7):
    if a % n == 0:
      continue
    x = pow(a, d, n)
    if x in (1, n - 1):
      continue
    for _ in range(s - 1):
      x = x * x % n
      if x == n - 1:
        break
    else:
      return False
  return True


_PRIMES: list[int] = []


def _primes_above(bound: int) -> list[int]:
  """Primes below 2^31 (largest first) whose product exceeds ``bound`` (found once, cached)."""
  chosen, product = [], 1
  for p in _PRIMES:
    if product > bound:
      return chosen
    chosen.append(p)
    product *= p
  candidate = _PRIMES[-1] - 2 if _PRIMES else (1 << 31) - 1
  while product <= bound:
    if _is_prime(candidate):
      _PRIMES.append(candidate)
      chosen.append(candidate)
      product *= candidate
    candidate -= 2
  return chosen


def _rook_numbers_dp(neighbours: list[list[int]], num_state: int) -> list[int]:
  """Rook numbers of a bipartite board: ``neighbours[i]`` lists item i's cells on the state side.

  A dynamic programme over the subsets of the state side (2^num_state counts), computed modulo
  enough primes below 2^31 that the Chinese remainder theorem returns every r_j exactly: r_j is
  at most the number of partial placements, ``prod_i (1 + len(neighbours[i]))``.
  """
  bound = math.prod(1 + len(n) for n in neighbours)
  primes = np.asarray(_primes_above(bound), np.int64)
  size = 1 << num_state
  counts = np.zeros((size, primes.size), np.int64)
  counts[0] = 1
  for cells in neighbours:
    new = counts.copy()
    for s in cells:
      old_view = counts.reshape(size >> (s + 1), 2, 1 << s, primes.size)[:, 0]
      new_view = new.reshape(size >> (s + 1), 2, 1 << s, primes.size)[:, 1]
      new_view += old_view
      new_view %= primes
    counts = new
  popcount = np.zeros(size, np.int64)
  for s in range(num_state):
    popcount += (np.arange(size) >> s) & 1
  residues = np.zeros((num_state + 1, primes.size), np.int64)
  np.add.at(residues, popcount, counts)   # < 2^20 * 2^31: no int64 overflow.
  residues %= primes
  modulus = math.prod(int(p) for p in primes)
  result = []
  for row in residues:
    value = 0
    for r, p in zip(row.tolist(), primes.tolist()):
      part = modulus // p
      value += r * part * pow(part, -1, p)
    result.append(value % modulus)
  return result


def _block_rook_numbers(member: np.ndarray, max_exact_bits: int) -> list[int] | None:
  """Rook numbers of one block's hit board ``member`` (m, C) bool, or None when a connected
  component is too large for the exact programme (its smaller side above ``max_exact_bits``)."""
  m = member.shape[0]
  parent = list(range(m))

  def find(i):
    while parent[i] != i:
      parent[i] = parent[parent[i]]
      i = parent[i]
    return i

  for column in member.T:
    rows = np.flatnonzero(column)
    for r in rows[1:]:
      parent[find(int(r))] = find(int(rows[0]))
  components: dict[int, list[int]] = {}
  for i in range(m):
    components.setdefault(find(i), []).append(i)
  total = [1]
  for rows in components.values():
    cols = np.flatnonzero(member[rows].any(axis=0))
    if cols.size == 0:
      continue
    sub = member[np.ix_(rows, cols)]
    if len(rows) > cols.size:   # The state side is the smaller one.
      sub = sub.T
    if sub.shape[1] > max_exact_bits:
      return None
    poly = _rook_numbers_dp([np.flatnonzero(r).tolist() for r in sub], sub.shape[1])
    product = [0] * (len(total) + len(poly) - 1)
    for a, x in enumerate(total):
      for b, y in enumerate(poly):
        product[a + b] += x * y
    total = product
  return total + [0] * (m + 1 - len(total))


def _block_hit_counts(member: np.ndarray, max_exact_bits: int) -> list[int] | None:
  """Injections of the block's m keys into the C classes with exactly h hits, h = 0..m."""
  m, c = member.shape
  rooks = _block_rook_numbers(member, max_exact_bits)
  if rooks is None:
    return None
  rest = [math.factorial(c - j) // math.factorial(c - m) for j in range(m + 1)]
  counts = [sum((-1) ** (j - h) * math.comb(j, h) * rooks[j] * rest[j] for j in range(h, m + 1))
            for h in range(m + 1)]
  assert sum(counts) == math.factorial(c) // math.factorial(c - m) and min(counts) >= 0
  return counts


def _membership(answers, num_classes: int) -> np.ndarray:
  answers = np.asarray(answers)
  if answers.ndim != 2 or answers.shape[0] == 0 or answers.shape[1] == 0:
    raise ValueError(f"answers must be a non-empty (K, k) array of labels; got shape "
                     f"{answers.shape}.")
  if answers.min() < 0 or answers.max() >= num_classes:
    raise ValueError(f"answers must be labels in [0, {num_classes}); got "
                     f"{answers.min()}..{answers.max()}.")
  member = np.zeros((answers.shape[0], num_classes), bool)
  np.put_along_axis(member, answers.astype(np.int64), True, axis=1)
  if (member.sum(axis=1) != answers.shape[1]).any():
    raise ValueError("answers must hold distinct labels in each row (a top-k answer).")
  return member


def exact_hit_distribution(answers, num_classes: int, *,
                           max_exact_bits: int = MAX_EXACT_BITS) -> tuple[list[int], int] | None:
  """The exact null distribution of hits given the suspect's answers, as integer counts.

  H0: the answers do not depend on the secret labels, which are drawn as
  ``jaxtag.taggants.keys.key_labels`` draws them (see :func:`permutation_blocks`).

  Args:
    answers: (K, k) the labels answered for each key (distinct within a row).
    num_classes: C.
    max_exact_bits: the largest state (smaller side of a connected component of a block's hit
      board) the exact programme accepts; it costs ``2^bits`` counts per prime.

  Returns:
    ``(counts, total)``: ``counts[h] / total`` is ``P[hits = h | answers]`` for h = 0..K, exact
    integers; None when a component exceeds ``max_exact_bits`` (use :func:`design_test`, which
    falls back to Monte Carlo).

  Raises:
    ValueError: malformed answers.
  """
  member = _membership(answers, _check_int("num_classes", num_classes, 1))
  counts, total = [1], 1
  for block in permutation_blocks(member.shape[0], num_classes):
    block_counts = _block_hit_counts(member[block.start:block.stop], max_exact_bits)
    if block_counts is None:
      return None
    counts = np.convolve(np.asarray(counts, object), np.asarray(block_counts, object)).tolist()
    total *= math.factorial(num_classes) // math.factorial(num_classes - len(block))
  return [int(x) for x in counts], total


def _sample_hits(member: np.ndarray, draws: int, rng: np.random.Generator) -> np.ndarray:
  """Hits of ``draws`` label sets drawn as ``key_labels`` draws them (chunks bound the memory)."""
  num_keys, num_classes = member.shape
  out = []
  for start in range(0, draws, 10_000):
    n = min(10_000, draws - start)
    hits = np.zeros(n, np.int64)
    for block in permutation_blocks(num_keys, num_classes):
      labels = rng.permuted(np.tile(np.arange(num_classes), (n, 1)), axis=1)[:, :len(block)]
      hits += member[np.arange(block.start, block.stop), labels].sum(axis=1)
    out.append(hits)
  return np.concatenate(out)


def _max_hits(member: np.ndarray) -> int:
  """The most hits any label draw allows: a maximum matching in each block (augmenting paths)."""
  best = 0
  for block in permutation_blocks(*member.shape):
    owner: dict[int, int] = {}

    def augment(row, seen):
      for col in np.flatnonzero(member[row]).tolist():
        if col not in seen:
          seen.add(col)
          if col not in owner or augment(owner[col], seen):
            owner[col] = row
            return True
      return False

    best += sum(augment(r, set()) for r in block)
  return best


@dataclasses.dataclass(frozen=True)
class DesignTest:
  """The exact (or Monte Carlo) test of the key design, given the suspect's answers.

  Attributes:
    hits: observed hits.
    p_value: ``P[hits' >= hits | answers]`` under H0 (see :func:`design_test`).
    answer_floor: the smallest p-value these answers allow: the p-value of the largest number of
      hits any label draw could give (``max_hits``). Above alpha, no labels could have rejected.
    max_hits: that largest number of hits (below K when answers collide, e.g. one class for all).
    method: "exact" or "monte-carlo".
    draws: Monte Carlo label draws (0 for the exact method).
  """
  hits: int
  p_value: float
  answer_floor: float
  max_hits: int
  method: str
  draws: int


def design_test(answers, labels, num_classes: int, *,
                monte_carlo_draws: int = MONTE_CARLO_DRAWS,
                rng: np.random.Generator | None = None,
                max_exact_bits: int = MAX_EXACT_BITS) -> DesignTest:
  """One-sided test of H0 "the answers do not depend on the secret labels" for the key design.

  The null is the labels' own randomness: given the answer sets, the labels are a uniform draw
  of ``jaxtag.taggants.keys.key_labels`` (distinct within blocks of C keys, blocks independent), so
  ``P[p_value <= alpha | answers] <= alpha`` for every answer pattern. The p-value is computed
  exactly (rook polynomials, integer arithmetic) unless a block's hit board has a connected
  component whose smaller side exceeds ``max_exact_bits`` (only when a block holds more than
  that many keys and k > 1): then it is the Monte Carlo p-value ``(b + 1) / (n + 1)``, b of n
  label draws with at least as many hits, which is valid by construction but cannot fall below
  ``1 / (n + 1)``.

  Args:
    answers: (K, k) labels answered for each key (the top-k, distinct within a row).
    labels: (K,) the keys' secret labels (checked against the design).
    num_classes: C.
    monte_carlo_draws: n, for the fallback.
    rng: numpy Generator for the fallback; by default a fixed seed (the draws must not depend on
      the observed labels; a fixed seed keeps reports reproducible).
    max_exact_bits: see :func:`exact_hit_distribution`.

  Returns:
    The :class:`DesignTest`.

  Raises:
    ValueError: malformed answers or labels outside the design.
  """
  num_classes = _check_int("num_classes", num_classes, 1)
  member = _membership(answers, num_classes)
  labels = np.asarray(labels, np.int64).reshape(-1)
  if labels.size != member.shape[0]:
    raise ValueError(f"{labels.size} labels for {member.shape[0]} answers.")
  check_design_labels(labels, num_classes)
  hits = int(member[np.arange(labels.size), labels].sum())
  exact = exact_hit_distribution(answers, num_classes, max_exact_bits=max_exact_bits)
  if exact is not None:
    counts, total = exact
    top = max(h for h, n in enumerate(counts) if n)
    tail = lambda h: float(fractions.Fraction(sum(counts[h:]), total))
    return DesignTest(hits=hits, p_value=tail(hits), answer_floor=tail(top), max_hits=top,
                      method="exact", draws=0)
  draws = _check_int("monte_carlo_draws", monte_carlo_draws, 1)
  sampled = _sample_hits(member, draws, rng if rng is not None else np.random.default_rng(0))
  top = _max_hits(member)
  mc = lambda h: (int(np.count_nonzero(sampled >= h)) + 1) / (draws + 1)
  return DesignTest(hits=hits, p_value=mc(hits), answer_floor=mc(top), max_hits=top,
                    method="monte-carlo", draws=draws)


def design_floor(k: int, num_classes: int, num_keys: int) -> float:
  """The strongest evidence K keys can give at top-k under the key design, before any answer.

  The smallest p-value over all answer patterns (each key answered k distinct labels) when every
  key hits: ``prod_blocks k!/(k - min(m, k))! * (C - m)! / C!`` for blocks of m keys. A block's
  all-hit probability is (number of label injections hitting every key) / (C!/(C-m)!), and a
  family of m sets of size k with a system of distinct representatives has at least that many
  (M. Hall, 1948), attained by nested answers. For top-1 it is ``(C - K)!/C!`` when K <= C, up to
  about 4x the binomial floor ``(1/C)^K`` at K = 10, C = 35.

  Args:
    k: labels read per answer, in ``[1, num_classes]``.
    num_classes: C.
    num_keys: K.

  Returns:
    The floor (1 when ``k == C``).

  Raises:
    ValueError: a non-positive argument or ``k > num_classes``.
  """
  k = _check_int("k", k, 1)
  num_classes = _check_int("num_classes", num_classes, 1)
  if k > num_classes:
    raise ValueError(f"k ({k}) cannot exceed num_classes ({num_classes}).")
  favourable, total = 1, 1
  for block in permutation_blocks(num_keys, num_classes):
    m = len(block)
    favourable *= math.factorial(k) // math.factorial(k - min(m, k))
    total *= math.factorial(num_classes) // math.factorial(num_classes - m)
  return float(fractions.Fraction(favourable, total))


def design_size(answers, num_classes: int, alphas: float | Sequence[float], *,
                max_exact_bits: int = MAX_EXACT_BITS) -> float | list[float] | None:
  """The exact false-positive rate of "reject when p <= alpha" given these answers.

  Args:
    answers, num_classes, max_exact_bits: as in :func:`exact_hit_distribution`.
    alphas: one level or a sequence of levels in ``(0, 1]``.

  Returns:
    ``P[p <= alpha | answers]`` for each level (a float for one level, a list for a sequence):
    at most alpha, below it because hits are discrete; None when the exact distribution is out
    of reach.
  """
  levels = [_check_probability("alpha", a) for a in np.atleast_1d(alphas).tolist()]
  exact = exact_hit_distribution(answers, num_classes, max_exact_bits=max_exact_bits)
  if exact is None:
    return None
  counts, total = exact
  tails = [fractions.Fraction(sum(counts[h:]), total) for h in range(len(counts))]
  sizes = [float(next((t for t in tails if t <= a), 0)) for a in levels]
  return sizes if np.ndim(alphas) else sizes[0]
