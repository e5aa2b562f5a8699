"""The false-positive rate of CBW verification, measured: fresh secrets against clean models.

A clean model (trained without the protected data) is what H0 describes. Each draw plans a new
watermark from a fresh key (new k-means seed, new trigger bands and phases, new assignment) on
the same owner data and surrogate embeddings, and verifies every clean model with it in both
modes. The rejection rate at ``alpha`` over the draws, with its Clopper-Pearson interval, is the
measured size of the test; a valid test has it <= alpha up to that interval.

Draws are appended to a JSON-lines file as they finish, so an interrupted study resumes at the
next draw and an uninterrupted one gives the same records.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from jaxtag import stats
from jaxtag.cbw import verify as verify_lib
from jaxtag.cbw import watermark as wm_lib
from jaxtag.data.dataset import AudioDataset

NULL_STREAM = 10_000   # draw d uses fold_in(key, NULL_STREAM + d): never the protect key itself


def null_study(key: jax.Array, config: wm_lib.WatermarkConfig, *, train: AudioDataset,
               train_embeddings: np.ndarray, test: AudioDataset, test_embeddings: np.ndarray,
               boxes: Mapping[str, Any], verify_config: verify_lib.VerifyConfig, draws: int,
               records: str | pathlib.Path, progress: bool = False) -> dict[str, Any]:
  """Verifies every box in ``boxes`` (name -> SpeakerBlackBox, clean models) with ``draws``
  fresh watermarks; returns per mode the rejection rate at ``alpha`` and its interval.

  Args:
    key: the study's key (fresh secrets are folded from it).
    config: the watermark recipe (as protected).
    train, test, train_embeddings, test_embeddings: the owner's data and surrogate embeddings.
    boxes: the clean models, each as one black box per mode: ``{name: {mode: box}}``.
    verify_config: as verification uses it (its ``alpha`` is the level whose size is measured).
    draws: number of fresh secrets.
    records: JSON-lines file of finished draws (resumed from).
  """
  records = pathlib.Path(records)
  done = []
  if records.exists():
    done = [json.loads(line) for line in records.read_text().splitlines() if line.strip()]
  done = done[:draws]
  iterator = range(len(done), draws)
  if progress:
    from tqdm import tqdm
    iterator = tqdm(iterator, desc="false-positive draws", initial=len(done), total=draws)
  for d in iterator:
    wm = wm_lib.plan_watermark(jax.random.fold_in(key, NULL_STREAM + d), config, train=train,
                               train_embeddings=train_embeddings, test=test,
                               test_embeddings=test_embeddings)
    row = {"draw": d, "bands": wm.bands.tolist(), "results": {}}
    for name, by_mode in boxes.items():
      for mode, box in by_mode.items():
        r = verify_lib.verify(box, wm, test, verify_config)
        row["results"][f"{name}/{mode}"] = {
            "p_value": r["p_value"],
            "seed_style_p": r["t_test" if mode == "score" else "fisher"]["p_value"]}
    with records.open("a") as f:
      f.write(json.dumps(row) + "\n")
    done.append(row)
  return summarize(done, verify_config.alpha)


def summarize(rows: list[dict[str, Any]], alpha: float) -> dict[str, Any]:
  """Rejection rates at ``alpha`` (and at 0.05 and 0.01) per mode, pooled over clean models:
  of the decision p-value (the permutation test's) and of the seed-style test (the t-test in
  score mode, Fisher's exact test in decision mode)."""
  out: dict[str, Any] = {"draws": len(rows), "alpha": alpha}
  modes = sorted({k.split("/", 1)[1] for r in rows for k in r["results"]})
  for mode in modes:
    for which in ("p_value", "seed_style_p"):
      p = np.asarray([v[which] for r in rows for k, v in r["results"].items()
                      if k.endswith("/" + mode) and which in v])
      if not p.size:
        continue
      entry = {"tests": int(p.size), "min_p": float(p.min())}
      for level in sorted({alpha, 0.05, 0.01}):
        hits = int(np.sum(p <= level))
        low, high = stats.clopper_pearson(hits, p.size)
        entry[f"alpha={level:g}"] = {"rejections": hits, "rate": hits / max(p.size, 1),
                                     "interval95": [low, high], "within": bool(low <= level)}
      out[f"{mode}/{which}"] = entry
  return out
