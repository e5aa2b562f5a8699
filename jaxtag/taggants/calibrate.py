"""Calibration: the verification's false-positive rate over fresh key draws against benign models.

A benign model never saw any taggant, so every rejection of H0 is a false positive. The test of
:mod:`jaxtag.taggants.key_design` promises ``P[p <= alpha] <= alpha`` over the draw of the secret
keys (audio and labels); calibration measures exactly that: it draws ``num_key_draws`` fresh key sets
(``make_keys(fold_in(stream, d), spec, C)`` for draw d: new audio and new labels, never the
owner's key file), verifies every benign model against every draw with the same statistics as
:func:`jaxtag.taggants.verify.verify` (:func:`verify.report_from_answers`), and reports the
empirical false-positive rate at each alpha with a Clopper-Pearson 95% interval, overall and per
model, next to the rate the exact test promises for the answers seen (the mean of
``P[p <= alpha | answers]``, at most alpha). Verifying many models against ONE key file is not
this: its rejections share one label draw, so their rate is not a false-positive rate.

The key audio of a draw is made once (batched under ``vmap``) and shared by every model; each
model answers a whole batch of draws in one ``top_k`` call. Each finished draw is appended to a
JSON-lines file, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import numbers
import os
import pathlib
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from jaxtag import stats
from jaxtag.taggants import key_design, verify
from jaxtag.taggants.keys import KeySpec, make_keys

FORMAT = "jaxtag-calibration"


@dataclasses.dataclass(frozen=True)
class CalibrationConfig:
  """How many fresh key draws, and the test being calibrated.

  Attributes:
    num_key_draws: fresh key sets (each with its own labels) verified against every model.
    draws_per_batch: draws rendered and answered together (memory: ``batch * K`` clips).
    max_k: labels read per answer (capped at the boxes' limit), as in ``verify``.
    decision_k: the k that decides, as in ``verify``.
    alphas: the levels at which the false-positive rate is measured.
  """
  num_key_draws: int = 1000
  draws_per_batch: int = 25
  max_k: int = 10
  decision_k: int = 1
  alphas: tuple[float, ...] = (0.05, 0.01, 0.001)

  def __post_init__(self):
    for name in ("num_key_draws", "draws_per_batch", "max_k", "decision_k"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"CalibrationConfig.{name} must be an integer >= 1; got {value!r}.")
    if self.decision_k > self.max_k:
      raise ValueError(f"CalibrationConfig.decision_k ({self.decision_k}) exceeds max_k "
                       f"({self.max_k}).")
    if not self.alphas or not all(isinstance(a, numbers.Real) and 0 < a < 1 for a in self.alphas):
      raise ValueError(f"CalibrationConfig.alphas must be levels in (0, 1); got {self.alphas!r}.")


class HashedBenignBox:
  """A benign black box for checking a test's size: its ranking of the classes is a pseudo-random
  function of the clip's samples (SHA-256 of a salt and the float32 bytes), so it answers
  differently for every key yet never saw a label, the sharpest H0 a trained model rarely gives
  (benign models tend to send most keys to one or two classes).

  Attributes:
    class_names: the classes it ranks.
    sample_rate: the rate it claims (keys are drawn at it).
    salt: bytes that make boxes with the same classes answer independently.
  """

  def __init__(self, class_names: Sequence[str], sample_rate: int, salt: bytes):
    self.class_names, self.sample_rate, self.salt = tuple(class_names), int(sample_rate), salt

  def top_k(self, waveforms, k: int) -> np.ndarray:
    """int32 ``(B, k)``: the first ``k`` of each clip's pseudo-random ranking."""
    rows = []
    for w in np.asarray(waveforms, np.float32):
      seed = int.from_bytes(hashlib.sha256(self.salt + w.tobytes()).digest()[:8], "little")
      rows.append(np.random.default_rng(seed).permutation(len(self.class_names))[:k])
    return np.asarray(rows, np.int32).reshape(-1, k)

  def __repr__(self):
    return f"HashedBenignBox({self.salt!r})"


@functools.partial(jax.jit, static_argnames=("spec", "num_classes"))
def draw_keys(stream: jax.Array, draws: jax.Array, spec: KeySpec, num_classes: int):
  """The keys of calibration draws ``draws``: ``make_keys(fold_in(stream, d), spec, C)`` each.

  Args:
    stream: the calibration stream (never the key stream of the owner's key file).
    draws: int (B,) draw indices.
    spec: the key spec.
    num_classes: C.

  Returns:
    ``Keys`` with a leading batch axis: waveforms (B, K, T), labels (B, K).
  """
  return jax.vmap(lambda d: make_keys(jax.random.fold_in(stream, d), spec, num_classes))(draws)


def read_finished(path: str | os.PathLike) -> dict[int, dict[str, Any]]:
  """The finished draws recorded in the JSON-lines file (a torn last line is ignored)."""
  done = {}
  path = pathlib.Path(path)
  if path.is_file():
    for line in path.read_text().splitlines():
      try:
        record = json.loads(line)
      except ValueError:
        continue   # Killed mid-write: that draw is redone.
      done[int(record["draw"])] = record
  return done


def _draw_record(draw: int, labels: np.ndarray, answers: Sequence[np.ndarray], class_names,
                 config: CalibrationConfig) -> dict[str, Any]:
  """What one draw gave against every model: the decision's p-value and its exact size."""
  models = []
  for model_answers in answers:
    report = verify.report_from_answers(
        model_answers, labels, class_names=class_names, decision_k=config.decision_k,
        alpha=max(config.alphas), target="calibration", fingerprint=None)
    decision_answers = model_answers[:, :config.decision_k]
    models.append({
        "hits": report.decision_hits, "p_value": report.p_value, "method": report.method,
        "binomial_p_value": report.binomial_p_values[config.decision_k - 1],
        "holm_min_p_value": report.holm_min_p_value,
        # None (NaN in the summary) where the exact distribution is out of reach.
        "size": key_design.design_size(decision_answers, len(class_names), config.alphas)
                or [None] * len(config.alphas)})
  return {"draw": int(draw), "labels": [int(x) for x in labels], "models": models}


def run_draws(boxes: Sequence[Any], stream: jax.Array, spec: KeySpec, config: CalibrationConfig,
              results_path: str | os.PathLike, *, progress: bool = True) -> list[dict[str, Any]]:
  """Verifies every box against every fresh key draw not yet in ``results_path``; returns all
  draws' records in draw order.

  Raises:
    ValueError: no box, boxes with different classes or rates, or keys at another rate.
  """
  if not boxes:
    raise ValueError("calibrate: no benign model to calibrate against.")
  class_names = tuple(boxes[0].class_names)
  for box in boxes:
    if tuple(box.class_names) != class_names:
      raise ValueError(f"calibrate: {box!r} has other classes than {boxes[0]!r}; every benign "
                       "model must answer the same classes.")
    if int(box.sample_rate) != spec.sample_rate:
      raise ValueError(f"calibrate: {box!r} expects {box.sample_rate} Hz but the key spec makes "
                       f"{spec.sample_rate} Hz keys: set the key spec's sample_rate.")
  max_k = min(config.max_k, len(class_names),
              *[int(getattr(b, "max_k", len(class_names))) for b in boxes])
  if config.decision_k > max_k:
    raise ValueError(f"calibrate: decision_k ({config.decision_k}) exceeds max_k ({max_k}).")
  done = read_finished(results_path)
  todo = [d for d in range(config.num_key_draws) if d not in done]
  bar = None
  if progress:
    import tqdm  # Optional: only when a bar is asked for.
    bar = tqdm.tqdm(total=config.num_key_draws, initial=config.num_key_draws - len(todo),
                    desc="calibration draws", unit="draw")
  with open(results_path, "a", encoding="utf-8") as out:
    for start in range(0, len(todo), config.draws_per_batch):
      batch = todo[start:start + config.draws_per_batch]
      keys = draw_keys(stream, np.asarray(batch, np.int32), spec, len(class_names))
      waveforms = np.asarray(keys.waveforms, np.float32)
      labels = np.asarray(keys.labels, np.int64)
      b, k_keys, t = waveforms.shape
      answers = [np.asarray(box.top_k(waveforms.reshape(b * k_keys, t), max_k)).reshape(
          b, k_keys, max_k) for box in boxes]
      for i, draw in enumerate(batch):
        record = _draw_record(draw, labels[i], [a[i] for a in answers], class_names, config)
        out.write(json.dumps(record) + "\n")
        done[draw] = record
      out.flush()
      if bar is not None:
        bar.update(len(batch))
  if bar is not None:
    bar.close()
  return [done[d] for d in range(config.num_key_draws)]


def _rate(positives: int, trials: int) -> dict[str, Any]:
  low, high = stats.clopper_pearson(positives, trials, 0.95)
  return {"false_positives": positives, "trials": trials, "rate": positives / trials,
          "ci95": [low, high]}


def summarise(records: Sequence[dict[str, Any]], config: CalibrationConfig,
              model_names: Sequence[str], p_value_key: str = "p_value") -> dict[str, Any]:
  """The empirical false-positive rate at each alpha, overall and per model.

  Args:
    records: :func:`run_draws`'s records.
    config: the calibration config.
    model_names: one name per model, in the records' order.
    p_value_key: the per-model field to test (``"binomial_p_value"`` measures the binomial
      reference instead, for comparison).

  Returns:
    A JSON-serialisable dict. The overall interval pools draws x models as independent trials
    (within a draw the models share keys: the per-model intervals are the exact ones).
  """
  p = np.asarray([[m[p_value_key] for m in r["models"]] for r in records])   # (draws, models)
  size = np.asarray([[m["size"] for m in r["models"]] for r in records], float)   # (.., alphas)
  levels = []
  for j, alpha in enumerate(config.alphas):
    flagged = p <= alpha
    per_model = [{"model": name, **_rate(int(flagged[:, i].sum()), len(records)),
                  "promised_rate": float(np.nanmean(size[:, i, j]))}
                 for i, name in enumerate(model_names)]
    levels.append({"alpha": alpha, **_rate(int(flagged.sum()), flagged.size),
                   "promised_rate": float(np.nanmean(size[:, :, j])), "per_model": per_model})
  hits = np.asarray([[m["hits"] for m in r["models"]] for r in records])
  methods = [m["method"] for r in records for m in r["models"]]
  return {"p_value": p_value_key, "levels": levels, "mean_hits": float(hits.mean()),
          "methods": {m: methods.count(m) for m in sorted(set(methods))}}


def calibrate(boxes: Sequence[Any], stream: jax.Array, spec: KeySpec, config: CalibrationConfig,
              results_path: str | os.PathLike, *, model_names: Sequence[str] | None = None,
              progress: bool = True) -> dict[str, Any]:
  """Runs (or resumes) the fresh-key calibration and summarises it.

  Args:
    boxes: the benign models (black boxes answering top-k labels), same classes.
    stream: the calibration PRNG stream; draw d uses ``fold_in(stream, d)``.
    spec: the key spec of the design being calibrated.
    config: draws, k and alphas.
    results_path: the JSON-lines file of finished draws (resumption).
    model_names: names for the report (default ``repr`` of each box).
    progress: show a tqdm bar.

  Returns:
    A JSON-serialisable summary: per alpha the false positives, rate, Clopper-Pearson 95%
    interval and the promised rate (overall and per model), the binomial reference's rates, the
    methods used and the design.
  """
  names = list(model_names or [repr(b) for b in boxes])
  records = run_draws(boxes, stream, spec, config, results_path, progress=progress)
  num_classes = len(boxes[0].class_names)
  return {
      "format": FORMAT, "num_key_draws": config.num_key_draws, "num_models": len(boxes),
      "models": names, "num_keys": spec.num_keys, "num_classes": num_classes,
      "decision_k": config.decision_k, "alphas": list(config.alphas),
      "design_floor": key_design.design_floor(config.decision_k, num_classes, spec.num_keys),
      "h0_mean_hits": spec.num_keys * config.decision_k / num_classes,
      "key_spec": spec.to_dict(),
      "exact_test": summarise(records, config, names),
      "binomial_reference": summarise(records, config, names, "binomial_p_value"),
  }
