r"""Stage: measure the verification's false-positive rate on benign models (never saw the taggants).

  .venv/bin/python -m launch.calibrate --config=launch/configs/calibrate.py \
      --config.key_file=workdirs/keys/keys.npz --workdir=workdirs/calibrate

Trains `num_models` models on clean data (seeds `first_seed + i`, into `<workdir>/model_<i>`),
verifies each against the key file, and writes `<workdir>/calibration.json`: the empirical
false-positive rate at alpha with its Clopper-Pearson 95% interval, next to the exact rate the
binomial test promises under H0, and every model's hits and p-values. Rerunning skips the models
whose training finished (and resumes an interrupted one from its checkpoint).
"""

from __future__ import annotations

import copy
import pathlib
from typing import Any

from launch import app
from launch import train as train_launcher
from launch import verify as verify_launcher


def train_benign_model(config: Any, index: int, workdir: pathlib.Path) -> dict[str, Any]:
  """Trains model ``index`` (seed ``first_seed + index``) unless it already finished with this
  recipe (a model of another recipe in its folder is refused: ``app.ConfigChangedError``)."""
  model_dir = workdir / f"model_{index}"
  train_config = copy.deepcopy(config.train)
  train_config.seed = int(config.first_seed) + index
  app.dump_config(train_config, model_dir)
  done = train_launcher.finished_summary(train_config, model_dir)
  if done is not None:
    return {**done, "skipped": True}
  return {**train_launcher.run_stage(train_config, model_dir), "skipped": False}


def summarise(reports: list, trained: list[dict[str, Any]], config: Any) -> dict[str, Any]:
  """The calibration record: empirical FPR with its interval, the exact H0 rate, per-model rows."""
  from jaxtag import stats

  first = reports[0]
  positives = sum(r.decision for r in reports)
  low, high = stats.clopper_pearson(positives, len(reports), 0.95)
  chance = first.decision_k / first.num_classes
  models = [{"index": i, "seed": int(config.first_seed) + i, "workdir": r.target,
             "trained_now": not t["skipped"], "test_accuracy": t.get("test/accuracy"),
             "hits": r.decision_hits, "p_value": r.p_value, "decision": r.decision,
             "hits_per_k": list(r.hits), "p_value_per_k": list(r.p_values),
             "holm_min_p_value": r.holm_min_p_value}
            for i, (r, t) in enumerate(zip(reports, trained))]
  return {
      "key_file": str(config.key_file), "fingerprint": first.fingerprint,
      "num_models": len(reports), "num_keys": first.num_keys, "num_classes": first.num_classes,
      "decision_k": first.decision_k, "alpha": first.alpha,
      "false_positives": positives, "false_positive_rate": positives / len(reports),
      "false_positive_rate_ci95": [low, high],
      "h0_false_positive_rate": stats.exact_size(first.num_keys, chance, first.alpha),
      "mean_hits": sum(r.decision_hits for r in reports) / len(reports),
      "h0_mean_hits": first.num_keys * chance,
      "p_values": [r.p_value for r in reports], "hits": [r.decision_hits for r in reports],
      "models": models,
  }


def run_stage(config: Any, workdir: pathlib.Path) -> dict[str, Any]:
  """Trains (or reuses) the benign models, verifies each, writes calibration.json; returns it."""
  if int(config.num_models) < 1:
    raise ValueError(f"calibrate: num_models must be >= 1; got {config.num_models}.")
  reports, trained = [], []
  for i in range(int(config.num_models)):
    trained.append(train_benign_model(config, i, workdir))
    report = verify_launcher.verify_target(
        str(workdir / f"model_{i}"), config.key_file, max_k=config.max_k,
        decision_k=config.decision_k, alpha=config.alpha)
    app.write_json(workdir / f"model_{i}" / "verify_report.json", report.to_json(), secret=True)
    reports.append(report)
  summary = summarise(reports, trained, config)
  app.write_json(workdir / "calibration.json", summary, secret=True)
  return summary


def main(config, workdir):
  s = run_stage(config, workdir)
  low, high = s["false_positive_rate_ci95"]
  print(f"{s['false_positives']} of {s['num_models']} benign models flagged at alpha = "
        f"{s['alpha']:g} (top-{s['decision_k']}): false-positive rate "
        f"{s['false_positive_rate']:.3g}, 95% CI [{low:.3g}, {high:.3g}]; "
        f"the test promises {s['h0_false_positive_rate']:.3g} under H0.")
  print(f"hits per model: {s['hits']} (H0 mean {s['h0_mean_hits']:.3g})")
  print("p-values: " + ", ".join(f"{p:.3g}" for p in s["p_values"]))
  print(f"calibration: {workdir / 'calibration.json'}")


if __name__ == "__main__":
  app.run(main, owners={"TrainConfig": "train", "OptimConfig": "train.optim",
                        "AugmentConfig": "train.augment", "DataSource": "train.data"})
