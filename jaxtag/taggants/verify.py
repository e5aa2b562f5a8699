"""Verification: was a black-box model trained on the taggants? Hits, exact p-value, report, plot.

The suspect is queried once with the K secret keys; a key *hits* at top-k when its label is among
the k labels answered. H0: the model never saw the taggants, so its answers do not depend on the
secret labels. The labels are a random draw of ``jaxtag.taggants.keys.key_labels`` (distinct
within each block of C keys), so given the answers the null distribution of the hits is that of
the label draw, computed exactly by :mod:`jaxtag.taggants.key_design` (Monte Carlo, valid by
construction, only for blocks beyond its exact range). The binomial ``P[Binomial(K, k/C) >= hits]`` of REFERENCE.md §1.3
assumes independent labels; it is kept as a reference figure only (it is anti-conservative for
distinct labels: 1.22e-4 instead of 1.43e-4 at 4 of 10 hits, K = 10, C = 35, top-1).

Two rules keep the p-value honest:

* One query per key. Asking the same key again is not a new trial: a deterministic model answers
  the same, and even a noisy one answers about the same clip, so repeats would multiply evidence
  that was never gathered. The only honest way to stronger evidence is more keys.
* The decision uses ``decision_k``, declared before the query. The hits and p-values at every
  other k up to ``max_k`` are reported as description only: picking the best k after seeing the
  answers is a multiple comparison. The Holm-adjusted minimum over k is given as a secondary
  figure that does account for that choice.
"""

from __future__ import annotations

import dataclasses
import logging
import numbers
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxtag import secrets, stats
from jaxtag.taggants import key_design
from jaxtag.taggants.blackbox import BlackBox
from jaxtag.taggants.keys import KeyFileError, Keys

REPORT_FORMAT = "jaxtag-verify-report"
REPORT_VERSION = 2   # 2: the exact test of the key design (1: binomial).

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class VerifyReport:
  """What one verification found. Sequences indexed by k hold k = 1..max_k at index k - 1.

  Attributes:
    target: what was queried (workdir path or URL), for the record.
    fingerprint: the key file's manifest fingerprint (or None).
    class_names: the model's classes, in label order.
    labels: (K,) each key's target label.
    answers: (K, max_k) the labels the model answered for each key, best first.
    ranks: (K,) 1-based rank of each key's label in the top ``max_k`` answer, 0 when absent.
    top1: (K,) the label the model answered first for each key.
    max_k: labels read per answer.
    decision_k: the predeclared k that decides.
    alpha: significance level of the decision.
    hits: (max_k,) keys hit at each k.
    p_values: (max_k,) p-value of the key design's test at each k: ``P[hits' >= hits | answers]``
      over the secret label draw (:func:`jaxtag.taggants.key_design.design_test`).
    floors: (max_k,) the design floor at each k: the smallest p-value K keys can give at top-k
      under this label design, over every answer pattern (:func:`key_design.design_floor`).
    answer_floors: (max_k,) the smallest p-value these answers allow at each k (the p-value of
      the most hits any labels could give them); above alpha, no labels could have rejected.
    methods: (max_k,) "exact" or "monte-carlo" at each k.
    monte_carlo_draws: label draws behind a "monte-carlo" p-value (0 when all are exact).
    binomial_p_values: (max_k,) ``P[Binomial(K, k/C) >= hits]``, the null of independent labels:
      a reference figure for older reports and the literature, not the test.
    holm_min_p_value: Holm-adjusted minimum of ``p_values`` over k (secondary figure).
    holm_min_k: the k at which that minimum is reached.
  """
  target: str
  fingerprint: str | None
  class_names: tuple[str, ...]
  labels: tuple[int, ...]
  answers: tuple[tuple[int, ...], ...]
  ranks: tuple[int, ...]
  top1: tuple[int, ...]
  max_k: int
  decision_k: int
  alpha: float
  hits: tuple[int, ...]
  p_values: tuple[float, ...]
  floors: tuple[float, ...]
  answer_floors: tuple[float, ...]
  methods: tuple[str, ...]
  monte_carlo_draws: int
  binomial_p_values: tuple[float, ...]
  holm_min_p_value: float
  holm_min_k: int

  @property
  def num_keys(self) -> int:
    return len(self.labels)

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def p_value(self) -> float:
    """The p-value at ``decision_k``: the one the decision rests on."""
    return self.p_values[self.decision_k - 1]

  @property
  def floor(self) -> float:
    """The design floor at ``decision_k``: the strongest evidence these K keys can give."""
    return self.floors[self.decision_k - 1]

  @property
  def answer_floor(self) -> float:
    return self.answer_floors[self.decision_k - 1]

  @property
  def method(self) -> str:
    return self.methods[self.decision_k - 1]

  @property
  def decision_hits(self) -> int:
    return self.hits[self.decision_k - 1]

  @property
  def decision(self) -> bool:
    """True when H0 is rejected at ``alpha``: the model was trained on the taggants."""
    return self.p_value <= self.alpha

  def to_json(self) -> dict[str, Any]:
    """A JSON-serialisable dict (the derived figures included, for readers of the file)."""
    fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
    fields = {k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()}
    fields["answers"] = [list(row) for row in self.answers]
    return {"format": REPORT_FORMAT, "format_version": REPORT_VERSION, **fields,
            "num_keys": self.num_keys, "num_classes": self.num_classes,
            "p_value": self.p_value, "floor": self.floor, "answer_floor": self.answer_floor,
            "method": self.method, "decision": self.decision}

  @classmethod
  def from_json(cls, data: dict[str, Any]) -> VerifyReport:
    """Inverse of :meth:`to_json`.

    Raises:
      ValueError: not a verify report, another format version, or missing fields.
    """
    found = data.get("format") if isinstance(data, dict) else type(data).__name__
    if found != REPORT_FORMAT:
      raise ValueError(f"not a {REPORT_FORMAT}: format {found!r}.")
    if data.get("format_version") != REPORT_VERSION:
      raise ValueError(f"verify report format_version {data.get('format_version')!r} is not "
                       f"{REPORT_VERSION} (version 1 used the binomial test): verify again.")
    names = [f.name for f in dataclasses.fields(cls)]
    missing = [n for n in names if n not in data]
    if missing:
      raise ValueError(f"verify report is missing field(s) {missing}.")
    values = {n: tuple(data[n]) if isinstance(data[n], list) else data[n] for n in names}
    values["answers"] = tuple(tuple(int(x) for x in row) for row in data["answers"])
    return cls(**values)

  def to_text(self) -> str:
    """A readable report: verdict, p-value beside its floor, hits per k, rank per key."""
    k, kk = self.decision_k, self.num_keys
    if self.decision:
      verdict = (f"VERDICT: trained on the taggants (p = {self.p_value:.3g} <= alpha = "
                 f"{self.alpha:g} at top-{k})")
    else:
      verdict = (f"VERDICT: no evidence of training on the taggants (p = {self.p_value:.3g} > "
                 f"alpha = {self.alpha:g} at top-{k})")
    lines = [
        verdict,
        f"target:    {self.target}",
        (f"keys:      {kk} keys, {self.num_classes} classes, key file fingerprint "
         f"{self.fingerprint or 'unknown'}"),
        f"decision:  top-{k} (declared before the query): {self.decision_hits} of {kk} keys hit",
        f"p-value:   {self.p_value:.3g}    floor (all {kk} keys hit): {self.floor:.3g}",
        "null:      the answers do not depend on the secret labels; p = P[hits >= observed]",
        (f"           over the labels' random draw (distinct within each block of "
         f"{self.num_classes} keys), given these answers"),
        (f"method:    {self.method}" + (f" ({self.monte_carlo_draws} label draws; p >= "
                                         f"{1 / (self.monte_carlo_draws + 1):.3g})"
                                         if self.method != "exact" else " (rook polynomials)")
         + f"; the answers allow p >= {self.answer_floor:.3g}"),
        (f"reference: binomial (independent labels, not this design): "
         f"{self.binomial_p_values[k - 1]:.3g}"),
        (f"secondary: Holm-adjusted min over k = 1..{self.max_k}: "
         f"{self.holm_min_p_value:.3g} (at k = {self.holm_min_k})"),
    ]
    if self.floor > self.alpha:
      lines.append(f"note:      the floor is above alpha: {kk} keys can never reach alpha at "
                   f"top-{k}; use more keys.")
    elif self.answer_floor > self.alpha:
      lines.append("note:      these answers could not reach alpha whatever the labels (the "
                   "suspect answers too few distinct classes for them all to hit).")
    lines += ["", f"Hits per k (only k = {k} decides; the other rows are descriptive):",
              "    k    hits     p-value       floor   binomial"]
    for i, (hits, p, floor, b) in enumerate(zip(self.hits, self.p_values, self.floors,
                                                self.binomial_p_values)):
      mark = "*" if i + 1 == k else " "
      lines.append(f"  {i + 1:>3}{mark} {hits:>3}/{kk:<3} {p:>10.3g}  {floor:>10.3g} {b:>10.3g}")
    width = max(len(n) for n in self.class_names)
    lines += ["", (f"Per key: rank of the key's label in the answer ('-' = not in the top "
                   f"{self.max_k}; a hit is rank <= {k}):"),
              f"  key  {'label':<{width}}  rank  top-1 answer"]
    for i, (label, rank, top) in enumerate(zip(self.labels, self.ranks, self.top1)):
      shown = str(rank) if rank else "-"
      lines.append(f"  {i:>3}  {self.class_names[label]:<{width}}  {shown:>4}  "
                   f"{self.class_names[top]}")
    return "\n".join(lines) + "\n"


def _check_int(name: str, value, minimum: int) -> int:
  if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
    raise ValueError(f"verify: {name} must be an integer >= {minimum}; got {value!r}.")
  return int(value)


def check_class_names(key_class_names: Sequence[str], model_class_names: Sequence[str]) -> None:
  """Raises unless the key file's classes equal the model's, in order.

  Raises:
    KeyFileError: naming the first position where the two lists differ.
  """
  keyed, model = [str(c) for c in key_class_names], [str(c) for c in model_class_names]
  if keyed == model:
    return
  first = next((i for i, (a, b) in enumerate(zip(keyed, model)) if a != b), min(len(keyed),
                                                                                 len(model)))
  key_at = repr(keyed[first]) if first < len(keyed) else "(end of list)"
  model_at = repr(model[first]) if first < len(model) else "(end of list)"
  raise KeyFileError(
      f"The key file's classes ({len(keyed)}) differ from the black box's ({len(model)}): first "
      f"at index {first}, key file {key_at} vs black box {model_at}. Labels index classes by "
      "position, so the keys would be scored against the wrong classes: verify with the key file "
      "made for this model's dataset.")


def verify(box: BlackBox, keys: Keys, *, max_k: int = 10, decision_k: int = 1,
           alpha: float = 1e-3, class_names: Sequence[str] | None = None,
           sample_rate: int | None = None, target: str | None = None,
           fingerprint: str | None = None) -> VerifyReport:
  """Queries ``box`` once with every key and tests H0 "not trained on the taggants".

  The K key waveforms go to the box in ONE ``top_k`` call at ``k = max_k``: repeated queries of
  a key are not independent trials and are never made. The decision uses ``decision_k`` only,
  which must be chosen before the query; the other k are descriptive (see the module docstring).

  Args:
    box: the suspect (top-k labels only).
    keys: the secret keys (``Keys.waveforms`` (K, T) are what the box hears).
    max_k: labels read per answer; lowered to the box's limit (its ``max_k`` or C) if above it.
    decision_k: the predeclared k of the decision, in ``[1, max_k]``.
    alpha: significance level in ``(0, 1)``; H0 is rejected when the p-value is ``<= alpha``.
    class_names: the key file's class names; must equal ``box.class_names`` when given.
    sample_rate: rate of the key waveforms (default ``keys.spec.sample_rate``); must equal the
      box's.
    target: what the box is, for the report (default ``repr(box)``).
    fingerprint: the key file's fingerprint, for the report.

  Returns:
    The :class:`VerifyReport`.

  Raises:
    KeyFileError: class names differ from the box's, labels outside the box's classes, or labels
      the key design never draws (repeated within a block of C keys).
    ValueError: bad ``max_k``/``decision_k``/``alpha``, a sample-rate mismatch, or a box that
      answers something other than ``(K, max_k)`` labels in range.
  """
  num_classes = len(box.class_names)
  if class_names is not None:
    check_class_names(class_names, box.class_names)
  max_k = min(_check_int("max_k", max_k, 1), num_classes, int(getattr(box, "max_k", num_classes)))
  if _check_int("decision_k", decision_k, 1) > max_k:
    raise ValueError(f"verify: decision_k ({decision_k}) exceeds max_k ({max_k}, the most "
                     "labels this box answers).")
  if not (isinstance(alpha, numbers.Real) and 0.0 < alpha < 1.0):
    raise ValueError(f"verify: alpha must be in (0, 1); got {alpha!r}.")
  rate = int(keys.spec.sample_rate if sample_rate is None else sample_rate)
  if rate != int(box.sample_rate):
    raise ValueError(f"verify: the keys are {rate} Hz audio but the black box expects "
                     f"{box.sample_rate} Hz. Keys must be made at the model's rate "
                     "(KeySpec.sample_rate); resampling them would change what they are.")
  labels = np.asarray(keys.labels, np.int64)
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise KeyFileError(f"verify: key labels span [{labels.min()}, {labels.max()}], outside the "
                       f"box's {num_classes} classes.")
  waveforms = np.asarray(keys.waveforms, np.float32)
  clip = getattr(box, "clip_samples", None)
  if clip is not None and clip != waveforms.shape[-1]:
    _log.warning("verify: keys are %d samples, the model's clips %d; the box fits them.",
                 waveforms.shape[-1], clip)

  answers = np.asarray(box.top_k(waveforms, max_k))
  if answers.shape != (labels.size, max_k) or answers.min() < 0 or answers.max() >= num_classes:
    raise ValueError(f"verify: the black box answered shape {answers.shape} (values "
                     f"{answers.min()}..{answers.max()}); expected ({labels.size}, {max_k}) "
                     f"labels in [0, {num_classes}).")
  return report_from_answers(
      answers, labels, class_names=box.class_names, decision_k=decision_k, alpha=float(alpha),
      target=target or repr(box), fingerprint=fingerprint)


def report_from_answers(answers: np.ndarray, labels: np.ndarray, *, class_names: Sequence[str],
                        decision_k: int, alpha: float, target: str,
                        fingerprint: str | None) -> VerifyReport:
  """Hits, p-values and floors at every k from the box's (K, max_k) answers (:func:`verify`'s
  statistics; also what calibration runs on batched answers).

  Raises:
    KeyFileError: labels that ``jaxtag.taggants.keys.key_labels`` would never draw (repeated in
      a block).
  """
  answers = np.asarray(answers, np.int64)
  labels = np.asarray(labels, np.int64)
  num_keys, max_k = answers.shape
  num_classes = len(class_names)
  try:
    key_design.check_design_labels(labels, num_classes)
  except ValueError as e:
    raise KeyFileError(f"verify: {e}") from None
  found = answers == labels[:, None]
  ranks = np.where(found.any(axis=1), found.argmax(axis=1) + 1, 0)
  ks = range(1, max_k + 1)
  tests = [key_design.design_test(answers[:, :k], labels, num_classes) for k in ks]
  p_values = [t.p_value for t in tests]
  adjusted = stats.holm(p_values)
  best = int(np.argmin(adjusted))
  return VerifyReport(
      target=str(target), fingerprint=fingerprint, class_names=tuple(map(str, class_names)),
      labels=tuple(int(x) for x in labels),
      answers=tuple(tuple(int(x) for x in row) for row in answers),
      ranks=tuple(int(x) for x in ranks), top1=tuple(int(x) for x in answers[:, 0]),
      max_k=int(max_k), decision_k=int(decision_k), alpha=float(alpha),
      hits=tuple(t.hits for t in tests), p_values=tuple(p_values),
      floors=tuple(key_design.design_floor(k, num_classes, num_keys) for k in ks),
      answer_floors=tuple(t.answer_floor for t in tests),
      methods=tuple(t.method for t in tests),
      monte_carlo_draws=max(t.draws for t in tests),
      binomial_p_values=tuple(stats.binomial_p_value(t.hits, num_keys, k / num_classes)
                              for t, k in zip(tests, ks)),
      holm_min_p_value=float(adjusted[best]), holm_min_k=best + 1)


def plot_report(report: VerifyReport, path: str | os.PathLike) -> None:
  """Writes a PNG: each key's rank (with the decision threshold), and p-value vs k with the floor.

  Keys whose label is not in the top ``max_k`` are drawn as red crosses on a row of their own.
  Written atomically and owner-only (``jaxtag.secrets``: the plot shows how the suspect ranks
  each key's label); matplotlib's Agg renderer, no display.

  Args:
    report: from :func:`verify`.
    path: destination ``.png``.
  """
  from jaxtag import plots

  fig = plots.figure(figsize=(12, 5), layout="constrained")
  ranks_ax, p_ax = fig.subplots(1, 2, width_ratios=(1.3, 1))
  _plot_ranks(ranks_ax, report)
  _plot_p_values(p_ax, report)
  fig.suptitle(report.to_text().splitlines()[0])
  secrets.write_bytes(path, plots.png_bytes(fig))


def _plot_ranks(ax, report: VerifyReport) -> None:
  ranks, absent_row = np.asarray(report.ranks), report.max_k + 1
  x = np.arange(report.num_keys)
  hit = (ranks >= 1) & (ranks <= report.decision_k)
  missed = ranks > report.decision_k
  ax.scatter(x[hit], ranks[hit], color="tab:green", s=60, label="hit", zorder=3)
  ax.scatter(x[missed], ranks[missed], color="tab:blue", s=60,
             label=f"rank > {report.decision_k}", zorder=3)
  ax.scatter(x[ranks == 0], np.full((ranks == 0).sum(), absent_row), color="tab:red",
             marker="x", s=70, label=f"not in top-{report.max_k}", zorder=3)
  ax.axhline(report.decision_k + 0.5, color="black", linestyle="--",
             label=f"decision: rank <= {report.decision_k}")
  ax.set_yticks(list(range(1, report.max_k + 1)) + [absent_row],
                [str(r) for r in range(1, report.max_k + 1)] + [f"> {report.max_k}"])
  ax.set_ylim(absent_row + 0.7, 0.3)  # Rank 1 at the top.
  names = [report.class_names[label] for label in report.labels]
  step = max(1, report.num_keys // 20)
  ax.set_xticks(x[::step], [f"{i}\n{names[i]}" for i in x[::step]], fontsize=8)
  ax.set_xlabel("key (and its label)")
  ax.set_ylabel("rank of the key's label")
  ax.set_title(f"{report.decision_hits} of {report.num_keys} keys hit at top-{report.decision_k}")
  ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=4)
  ax.grid(axis="y", alpha=0.3)


def _plot_p_values(ax, report: VerifyReport) -> None:
  ks = np.arange(1, report.max_k + 1)
  tiny = np.finfo(np.float64).tiny  # A floor of 0 (underflow) must not break the log scale.
  ax.semilogy(ks, np.maximum(report.p_values, tiny), "o-", label="p-value (exact, key design)")
  ax.semilogy([report.decision_k], [max(report.p_value, tiny)], "o", color="black", ms=10,
              fillstyle="none", label="the decision's p-value")
  ax.semilogy(ks, np.maximum(report.floors, tiny), "s--", color="gray",
              label="design floor (all keys hit)")
  ax.axhline(report.alpha, color="tab:red", linestyle=":", label=f"alpha = {report.alpha:g}")
  ax.axvline(report.decision_k, color="black", linestyle="--", alpha=0.5,
             label=f"decision k = {report.decision_k}")
  ax.set_xticks(ks)
  ax.set_xlabel("k (labels read per answer)")
  ax.set_ylabel("p-value")
  ax.set_title("p-value vs k (only the decision k decides)")
  ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
  ax.grid(alpha=0.3)
