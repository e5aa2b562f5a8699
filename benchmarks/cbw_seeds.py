r"""CBW over training seeds: the EER cost of protection with an interval, detection per seed, and
the false-positive rate over many fresh secrets.

  .venv/bin/python benchmarks/cbw_seeds.py --workdir workdirs/cbw_seeds --seeds 1,2,3 \
      --fractions 0.15,0.1 --null_draws 100 --out benchmarks/results/cbw_seeds_<date>

Everything uses the `make demo-cbw` job (`launch/configs/cbw_demo.py`, overridable preset):
one surrogate (seed 0) and one protected copy per utterance fraction (the demo's secret key);
per seed s a benign model (clean data, seed s) and per fraction a suspect (that fraction's
protected copy, seed s, the same initialisation and batches as its benign twin). Per (fraction,
seed): the EER of both on the unseen speakers and both modes' p-values for both. The EER cost
per fraction is the mean paired difference over seeds with a t interval (seeds are the unit: a
single pair is an anecdote). The null study verifies every clean model (the benign ones and the
surrogate) with `--null_draws` fresh secrets (jaxtag.cbw.null). `--trigger_mode mix
--level_dbfs -40` protects with another trigger (its stages are tagged `mix40_` in the workdir;
the surrogate and the benign models are shared). Every model and stage lives in `--workdir` and
is reused, so an interrupted run resumes. Writes `<out>.json` and prints a table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import sys
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)

from benchmarks import harness  # noqa: E402


def _parse(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", default="workdirs/cbw_seeds")
  parser.add_argument("--preset", default="default", help="launch/configs/cbw_demo.py preset")
  parser.add_argument("--seeds", default="1,2,3", help="training seeds of the model pairs")
  parser.add_argument("--fractions", default="0.15", help="utterance fractions to protect with")
  parser.add_argument("--null_draws", type=int, default=100, help="fresh secrets (0: none)")
  parser.add_argument("--trigger_mode", default=None, choices=("replace", "mix"),
                      help="override the trigger's mode (default: the demo's)")
  parser.add_argument("--level_dbfs", type=float, default=None,
                      help="override the trigger's level (default: the demo's)")
  parser.add_argument("--out", default=None, help="output path without .json")
  args = parser.parse_args(argv)
  args.seeds = harness.parse_list(args.seeds, int, "--seeds")
  args.fractions = harness.parse_list(args.fractions, float, "--fractions")
  return args


def _log(message):
  print(f"[cbw-seeds {time.strftime('%H:%M:%S')}] {message}", flush=True)


def cbw_demo_trigger(module):
  """The demo config's trigger (the untagged one)."""
  from jaxtag import config as config_lib
  from jaxtag.cbw import demo
  return config_lib.from_config(demo.CbwDemoJob, module.get_config("default")).watermark.trigger


def main(argv=None):
  args = _parse(argv)
  import jax
  import numpy as np
  from scipy import stats as scipy_stats

  from jaxtag import config as config_lib
  from jaxtag.cbw import demo, jobs, null
  from jaxtag.speaker import data as data_lib
  from jaxtag.speaker import embedder as embedder_lib
  from launch.configs import cbw_demo

  job = config_lib.from_config(demo.CbwDemoJob, cbw_demo.get_config(args.preset))
  trigger = job.watermark.trigger
  trigger = dataclasses.replace(trigger, mode=args.trigger_mode or trigger.mode,
                                level_dbfs=(trigger.level_dbfs if args.level_dbfs is None
                                            else args.level_dbfs))
  job = dataclasses.replace(job, watermark=dataclasses.replace(job.watermark, trigger=trigger))
  # Workdirs of another trigger than the demo's are tagged, so one --workdir holds both.
  tag = "" if trigger == cbw_demo_trigger(cbw_demo) else f"{trigger.mode}{-trigger.level_dbfs:g}_"
  wd = pathlib.Path(args.workdir).absolute()
  train = lambda name, seed, data: demo.train_model(job, name, seed, data, wd)  # noqa: E731
  train("surrogate", job.seed, job.data)
  secrets = {}
  for frac in args.fractions:
    protect = jobs.run_cbw_protect_job(jobs.CbwProtectJob(
        seed=job.seed, data=job.data, surrogate_workdir=str(wd / "surrogate"),
        watermark=dataclasses.replace(job.watermark, utterance_fraction=frac),
        output_root=str(wd / f"protected_{tag}{frac}"), perceptual=False),
        wd / f"protect_{tag}{frac}")
    secrets[frac] = protect["secret_file"]
  rows = []
  for seed in args.seeds:
    benign = train(f"benign_{seed}", seed, job.data)
    for frac in args.fractions:
      data = dataclasses.replace(job.data, kind="speech_commands",
                                 root=str(wd / f"protected_{tag}{frac}"))
      suspect = train(f"suspect_{tag}{frac}_{seed}", seed, data)
      row = {"seed": seed, "fraction": frac, "eer_suspect": suspect["test"]["eer"],
             "eer_benign": benign["test"]["eer"]}
      for name in (f"suspect_{tag}{frac}_{seed}", f"benign_{seed}"):
        for mode in ("score", "decision"):
          r = jobs.run_cbw_verify_job(jobs.CbwVerifyJob(
              data=job.data, secret_file=secrets[frac], model_workdir=str(wd / name), mode=mode,
              verify=job.verify), wd / f"verify_{tag}{frac}_{name}_{mode}")
          row[f"p_{name.split('_')[0]}_{mode}"] = r["p_value"]
          if mode == "decision":
            row[f"wsr_{name.split('_')[0]}"] = r["watermark_success_rate"]
      rows.append(row)
      _log(f"fraction {frac} seed {seed}: EER {row['eer_suspect']:.2%} vs {row['eer_benign']:.2%}; "
           f"p suspect {row['p_suspect_score']:.2g}/{row['p_suspect_decision']:.2g}, benign "
           f"{row['p_benign_score']:.2g}/{row['p_benign_decision']:.2g}")
  cost = {}
  for frac in args.fractions:
    d = 100 * np.asarray([r["eer_suspect"] - r["eer_benign"] for r in rows
                          if r["fraction"] == frac])
    half = (float(scipy_stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d)))
            if len(d) > 1 else float("nan"))
    cost[str(frac)] = {"mean_points": float(d.mean()), "per_seed_points": d.tolist(),
                       "ci95": [float(d.mean() - half), float(d.mean() + half)]}
  null_summary = None
  if args.null_draws:
    splits = data_lib.load_speaker_splits(job.data, progress=False)
    surrogate = embedder_lib.load_embedder(wd / "surrogate")
    emb = {name: surrogate.embed(ds.waveforms) for name, ds in splits.items()}
    names = ["surrogate"] + [f"benign_{s}" for s in args.seeds]
    (wd / "null").mkdir(exist_ok=True)
    null_summary = null.null_study(
        jax.random.key(job.seed), job.watermark, train=splits["train"],
        train_embeddings=emb["train"], test=splits["test"], test_embeddings=emb["test"],
        boxes=demo.black_boxes(wd, names), verify_config=job.verify, draws=args.null_draws,
        records=wd / "null" / "draws.jsonl", progress=True)
  result = {"bench": "cbw_seeds", "preset": args.preset, "seeds": args.seeds,
            "trigger": dataclasses.asdict(trigger),
            "fractions": args.fractions, "rows": rows, "eer_cost": cost,
            "false_positives": null_summary, "job": config_lib.to_json_dict(job),
            "environment": harness.environment()}
  out = pathlib.Path(args.out or harness.default_out("cbw_seeds"))
  out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
  for frac, c in cost.items():
    print(f"fraction {frac}: EER cost {c['mean_points']:+.2f} points, 95% CI "
          f"[{c['ci95'][0]:+.2f}, {c['ci95'][1]:+.2f}] over seeds {args.seeds}")
  if null_summary:
    for key, entry in null_summary.items():
      if isinstance(entry, dict):
        a = entry["alpha=0.05"]
        print(f"null {key}: {a['rejections']}/{entry['tests']} at 0.05, CI "
              f"[{a['interval95'][0]:.3f}, {a['interval95'][1]:.3f}]")
  print(f"wrote {out.with_suffix('.json')}")


if __name__ == "__main__":
  main()
