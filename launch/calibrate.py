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

from launch import app


def main(job, workdir):
  from jaxtag.taggants import jobs
  s = jobs.run_calibrate_job(job, workdir, runtime=app.runtime())
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
  from jaxtag.taggants.jobs import CALIBRATE_FLAG_OWNERS, CalibrateJob
  app.run(main, job=CalibrateJob, owners=CALIBRATE_FLAG_OWNERS)
