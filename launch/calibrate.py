r"""Stage: measure the verification's false-positive rate on benign models (never saw the taggants).

  .venv/bin/python -m launch.calibrate --config=launch/configs/calibrate.py:small \
      --workdir=workdirs/calibrate

Trains `num_models` models on clean data (seeds `first_seed + i`, into `<workdir>/model_<i>`),
then verifies each against `calibration.num_key_draws` fresh key draws (new audio and labels from
the calibration stream, never the owner's key file) and writes `<workdir>/calibration.json`: the
empirical false-positive rate at each alpha with its Clopper-Pearson 95% interval, overall and per
model, next to the rate the exact test promises (jaxtag.taggants.calibrate). Rerunning skips the
models whose training finished and the draws recorded in `<workdir>/calibration_draws.jsonl`.
"""

from __future__ import annotations

import copy
import pathlib
from typing import Any

from launch import app
from launch import train as train_launcher

DRAWS = "calibration_draws.jsonl"


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


def run_stage(config: Any, workdir: pathlib.Path) -> dict[str, Any]:
  """Trains (or reuses) the benign models, runs (or resumes) the fresh-key calibration, writes
  calibration.json; returns it."""
  from jaxtag import rng
  from jaxtag.taggants import keys
  from jaxtag.taggants import blackbox, calibrate

  if int(config.num_models) < 1:
    raise ValueError(f"calibrate: num_models must be >= 1; got {config.num_models}.")
  app.dump_config(config, workdir)   # The draws file resumes only the same calibration.
  trained = [train_benign_model(config, i, workdir) for i in range(int(config.num_models))]
  boxes = [blackbox.LocalBlackBox(workdir / f"model_{i}", batch_size=int(config.batch_size))
           for i in range(len(trained))]
  # The keys are made at the benign models' rate and clip length, as make_keys makes them.
  spec = keys.KeySpec(**{**config.key_spec.to_dict(), "sample_rate": boxes[0].sample_rate,
                         "clip_samples": boxes[0].clip_samples})
  settings = config.calibration.to_dict()
  settings["alphas"] = tuple(settings["alphas"])
  summary = calibrate.calibrate(
      boxes, rng.stream(app.root_key(config), "calibration"), spec,
      calibrate.CalibrationConfig(**settings), workdir / DRAWS,
      model_names=[f"model_{i}" for i in range(len(boxes))], progress=bool(config.progress))
  summary["seed"] = int(config.seed)
  summary["trained"] = [{"model": f"model_{i}", "seed": int(config.first_seed) + i,
                         "trained_now": not t["skipped"], "test_accuracy": t.get("test/accuracy")}
                        for i, t in enumerate(trained)]
  app.write_json(workdir / "calibration.json", summary)
  return summary


def main(config, workdir):
  s = run_stage(config, workdir)
  print(f"{s['num_key_draws']} fresh key draws x {s['num_models']} benign models, "
        f"{s['num_keys']} keys, {s['num_classes']} classes, top-{s['decision_k']} "
        f"(design floor {s['design_floor']:.3g}):")
  for level, binom in zip(s["exact_test"]["levels"], s["binomial_reference"]["levels"]):
    low, high = level["ci95"]
    print(f"  alpha {level['alpha']:g}: false-positive rate {level['rate']:.4g} "
          f"({level['false_positives']}/{level['trials']}, 95% CI [{low:.3g}, {high:.3g}]); "
          f"the exact test promises {level['promised_rate']:.3g} <= alpha; binomial reference "
          f"{binom['rate']:.4g}")
  print(f"calibration: {workdir / 'calibration.json'}")


if __name__ == "__main__":
  app.run(main, owners={"TrainConfig": "train", "OptimConfig": "train.optim",
                        "AugmentConfig": "train.augment", "DataSource": "train.data"})
