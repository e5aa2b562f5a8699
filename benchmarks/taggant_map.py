r"""The taggant map: detection against the perturbation budget, over the demo's own chain.

  .venv/bin/python benchmarks/taggant_map.py --workdir /tmp/map --preset default \
      --scenarios finetune,scratch --snr_db 20,25,30,35,40,55 --constraints snr,stft_mask \
      --seeds 0 --out benchmarks/results/taggant_map_<date> [--budgets 0.08,0.1] [--set ...]

For each scenario and seed, the stages that do not depend on the budget run once (keys, the
public backbone when finetuning, the surrogate(s), the benign control and its verification); for
each grid point (constraint, dB[, budget]) the craft, the suspect and its verification run in
their own sub-workdirs. Every stage is the library job its launcher runs, built exactly as
``jaxtag.taggants.demo.run_demo`` builds it (from ``launch/configs/demo.py:<preset>,<scenario>``
with the ``--set`` overrides), so a point of the map is a run of the demo, and a finished stage is
reused: an interrupted sweep resumes where it stopped (another config on a finished workdir is
refused).

  <workdir>/corpus/                         the corpus (shared)
  <workdir>/backbone/                       the public backbone (finetune; shared by every seed:
                                            it is the public model, not the owner's draw)
  <workdir>/<scenario>/seed_<s>/            keys/, surrogate/ (surrogate_<i>/), benign/,
                                            verify_benign/
  <workdir>/<scenario>/seed_<s>/<constraint>_<dB>/   craft/, protected/, suspect/,
                                                     verify_suspect/

Grid: ``--snr_db`` is ``craft.craft.snr_db`` for ``snr`` points and, unless ``--mask_db`` gives
another list, ``craft.craft.mask_db`` for ``stft_mask`` points (how far under the clean clip's
own STFT the perturbation stays, per bin; not an SNR). The x-axis of the plot is therefore the
per-poison SNR actually measured (the median over poisons, from the craft summary's ``quality``
block), reported for every point beside the grid value; the dataset-level SNR and PESQ/STOI
are recorded too. Seed ``s`` adds ``s`` to every seed of the owner's and the suspect's runs
(``seed`` of the keys, ``surrogate``, ``craft``, ``suspect`` and ``benign``); seed 0 is the demo.
``--budgets`` adds the fraction of training clips perturbed as a third axis (one line per
budget in the plot); the stages it does not touch are still shared.

Per point, ``<out>.json`` records the SNRs and perceptual scores, the suspect's and the benign
control's p-value, decision, key top-1/top-5 accuracy and test accuracy, and the white-box
key-label shift of the suspect against its benign control (``mean``, ``others``, ``specific``:
``jaxtag.taggants.diagnostics.paired_effect``), the accuracy cost clip by clip with its paired
interval (``jaxtag.stats.accuracy_cost``), with the environment (versions, device, date).
It is rewritten after every point (``complete`` false until the last); ``<out>.png`` plots the
p-value (log axis, the decision's alpha as a line) and key accuracy against the measured median
per-poison SNR, one line per (constraint, scenario[, budget]), one marker per seed. Neither
names the keys' labels (the workdirs do, owner-only).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import datetime
import json
import os
import pathlib
import sys
import time
from collections.abc import Sequence
from typing import Any

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)

from benchmarks import harness  # noqa: E402
from benchmarks import taggant_map_records as records  # noqa: E402
from benchmarks.taggant_map_records import CONSTRAINTS, point_name  # noqa: E402
from launch.configs import demo as demo_configs  # noqa: E402

# Set by the sweep itself: a --set of one of them would silently disagree with the map's axes.
SWEPT = ("scenario", "craft.craft.constraint", "craft.craft.snr_db", "craft.craft.mask_db")
# The seeds a replicate shifts (the public backbone and the corpus stay fixed).
SEEDED = ("seed", "surrogate.seed", "craft.seed", "suspect.seed", "benign.seed")
# Surrogate ensemble members are seeded 1000 apart (launch/demo.py): larger shifts would collide.
MAX_SEED = 999


# ----------------------------------------------------------------------------- command line


parse_list = harness.parse_list   # the comma-separated options (tests call it here too)


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True, help="root of every stage's workdir (resumable)")
  parser.add_argument("--preset", default="default", help="|".join(demo_configs.PRESETS))
  parser.add_argument("--scenarios", default="finetune", help="comma-separated: finetune,scratch")
  parser.add_argument("--constraints", default="snr", help="comma-separated: snr,stft_mask")
  parser.add_argument("--snr_db", default="20,25,30,35,40,55",
                      help="grid (dB): craft.craft.snr_db of snr points, and mask_db of stft_mask "
                      "points unless --mask_db is given")
  parser.add_argument("--mask_db", help="grid (dB) of stft_mask points (default: --snr_db)")
  parser.add_argument("--budgets", help="comma-separated fractions of the training clips "
                      "perturbed (craft.budget), a third axis of the grid; points are then named "
                      "<constraint>_<dB>_b<budget> (default: the preset's budget, no axis)")
  parser.add_argument("--seeds", default="0", help="comma-separated replicate seeds (0: the demo)")
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                      help="override a field of launch/configs/demo.py, e.g. craft.budget=0.05 "
                      "or suspect.num_epochs=8 (repeatable)")
  parser.add_argument("--debug", action="store_true",
                      help="on a failure, print the traceback instead of one line")
  parser.add_argument("--out", help="output prefix: <out>.json and <out>.png (default: "
                      "benchmarks/results/taggant_map_<UTC date>)")
  args = parser.parse_args(argv)
  args.command = sys.argv if argv is None else ["benchmarks/taggant_map.py", *argv]
  try:
    if args.preset not in demo_configs.PRESETS:
      raise ValueError(f"--preset: unknown preset {args.preset!r}; use "
                       f"{' or '.join(demo_configs.PRESETS)}.")
    args.scenarios = parse_list(args.scenarios, str, "--scenarios", _scenarios())
    args.constraints = parse_list(args.constraints, str, "--constraints", tuple(CONSTRAINTS))
    args.snr_db = parse_list(args.snr_db, float, "--snr_db")
    args.mask_db = parse_list(args.mask_db, float, "--mask_db") if args.mask_db else args.snr_db
    args.seeds = parse_list(args.seeds, int, "--seeds")
    args.budgets = parse_list(args.budgets, float, "--budgets") if args.budgets else None
    if args.budgets and any(not 0.0 < b <= 1.0 for b in args.budgets):
      raise ValueError(f"--budgets: each budget is a fraction in (0, 1]; got {args.budgets}.")
    if args.budgets and any(o.split("=", 1)[0].strip() == "craft.budget" for o in args.overrides):
      raise ValueError("--set craft.budget: the budget is swept by --budgets; give it there.")
    if any(not 0 <= s <= MAX_SEED for s in args.seeds):
      raise ValueError(f"--seeds: each seed must lie in [0, {MAX_SEED}] (surrogate ensemble "
                       f"members are seeded 1000 apart); got {args.seeds}.")
    if "stft_mask" in args.constraints and min(args.mask_db) < 0:
      raise ValueError(f"--mask_db: the mask's dB must be >= 0; got {args.mask_db}.")
    args.configs = {}
    for scenario in args.scenarios:
      args.configs[scenario], args.applied = scenario_config(args.preset, scenario, args.overrides)
  except ValueError as e:
    parser.error(str(e))
  args.out = args.out or harness.default_out("taggant_map")
  return args


# ---------------------------------------------------------------------------------- configs


def _parse_value(raw: str, field_type: type | None, key: str) -> Any:
  """``raw`` as a value of the field's type (a string field takes it verbatim)."""
  if raw == "None":
    return None
  if field_type is str:
    return raw
  if field_type is bool:
    if raw.lower() not in ("true", "false", "1", "0"):
      raise ValueError(f"--set {key}={raw}: {key} is a bool; use true or false.")
    return raw.lower() in ("true", "1")
  try:
    return ast.literal_eval(raw)
  except (ValueError, SyntaxError):
    return raw   # Then the config's type check names the mismatch.


def apply_overrides(config, overrides: Sequence[str]) -> dict[str, Any]:
  """Sets each ``key=value`` of ``overrides`` on the demo ``config`` (in place).

  Returns:
    ``{key: value}`` as applied.

  Raises:
    ValueError: a malformed override, a field the demo config lacks (named, with the fields
      there), a block instead of a field, a field the sweep sets itself, or a value of the wrong
      type.
  """
  import ml_collections

  applied = {}
  for item in overrides:
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
      raise ValueError(f"--set {item!r}: expected KEY=VALUE, e.g. craft.budget=0.05.")
    if key in SWEPT:
      raise ValueError(f"--set {key}: the sweep sets this field itself; use --scenarios, "
                       "--constraints, --snr_db or --mask_db.")
    *parents, name = key.split(".")
    node = config
    for depth, part in enumerate(parents):
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        raise ValueError(_unknown(key, ".".join(parents[:depth + 1]), node))
      node = node[part]
    if not isinstance(node, ml_collections.ConfigDict) or name not in node:
      raise ValueError(_unknown(key, key, node))
    if isinstance(node[name], ml_collections.ConfigDict):
      raise ValueError(f"--set {key}: {key} is a block of fields ({', '.join(sorted(node[name]))});"
                       " set one of them.")
    value = _parse_value(raw.strip(), node.get_type(name), key)
    try:
      node[name] = value
    except (TypeError, ValueError) as e:
      raise ValueError(f"--set {key}={raw}: {e}") from None
    applied[key] = value
  return applied


def _unknown(key: str, missing: str, node) -> str:
  import ml_collections
  there = sorted(node) if isinstance(node, ml_collections.ConfigDict) else []
  return (f"--set {key}: launch/configs/demo.py has no field {missing!r}"
          + (f"; the fields there are {', '.join(there)}." if there else "."))


def _scenarios() -> tuple[str, ...]:
  from jaxtag.taggants import demo
  return demo.SCENARIOS


def scenario_config(preset: str, scenario: str, overrides: Sequence[str]):
  """The demo config of ``preset,scenario`` with the ``--set`` overrides, and the overrides as
  applied (:func:`apply_overrides`)."""
  config = demo_configs.get_config(f"{preset},{scenario}")
  return config, apply_overrides(config, overrides)


def seeded_config(config, seed: int):
  """A copy of ``config`` with ``seed`` added to every seed in :data:`SEEDED`."""
  out = config.copy_and_resolve_references()
  for dotted in SEEDED:
    *parents, name = dotted.split(".")
    node = out
    for part in parents:
      node = node[part]
    node[name] = int(node[name]) + seed
  return out


def point_config(config, constraint: str, db: float, budget: float | None = None):
  """A copy of ``config`` crafting under ``constraint`` at ``db`` (the field it sweeps) and, when
  given, perturbing the fraction ``budget`` of the training clips."""
  out = config.copy_and_resolve_references()
  out.craft.craft.constraint = constraint
  out.craft.craft[CONSTRAINTS[constraint]] = float(db)
  if budget is not None:
    out.craft.budget = float(budget)
  return out


# ---------------------------------------------------------------------------------- stages


class Progress:
  """Prints a timestamped line as each stage starts and ends; records whether it ran or was
  reused (every summary it returned says ``reused``) and its wall time."""

  def __init__(self):
    self.status: dict[str, str] = {}
    self.wall: dict[str, float] = {}

  @staticmethod
  def _now() -> str:
    return datetime.datetime.now().isoformat(sep=" ", timespec="seconds")

  @contextlib.contextmanager
  def __call__(self, where: str, name: str):
    label = f"{where}/{name}" if where else name
    print(f"[map {self._now()}] {label}: start", flush=True)
    summaries: list[dict[str, Any]] = []
    start = time.perf_counter()
    yield summaries.append
    self.wall[label] = round(time.perf_counter() - start, 2)
    self.status[label] = "reused" if all(s.get("reused") for s in summaries) else "ran"
    print(f"[map {self._now()}] {label}: done ({self.status[label]}, {self.wall[label]:.1f} s)",
          flush=True)


def _job(config):
  """The typed demo job of a (ConfigDict) map config."""
  from jaxtag import config as config_lib
  from jaxtag.taggants import demo
  return config_lib.from_config(demo.DemoJob, config)


def run_shared(config, root: pathlib.Path, where: str, progress: Progress) -> dict[str, Any]:
  """The stages of one (scenario, seed) that no grid point changes (as jaxtag.taggants.demo
  runs them): keys, backbone (finetune), surrogate(s), the benign control and its verification."""
  from jaxtag.taggants import demo, jobs
  from jaxtag.train import job as train_job

  job, base = _job(config), root / where
  with progress(where, "keys") as done:
    keys = jobs.run_keys_job(jobs.KeysJob(seed=job.seed, data=job.data, key_spec=job.key_spec,
                                          export_wav=job.export_wav), base / "keys")
    done(keys)
  start = {}
  if job.scenario == "finetune":
    with progress("", "backbone") as done:   # The public model: one for the whole map.
      done(train_job.run_train_job(job.backbone, root / "backbone"))
    start = {"init_from": str(root / "backbone")}
  surrogates = demo.surrogate_dirs(job, base)
  with progress(where, "surrogate") as done:
    for i, directory in enumerate(surrogates):
      member = dataclasses.replace(job.surrogate, seed=job.surrogate.seed + 1000 * i, **start)
      done(train_job.run_train_job(member, directory))
  with progress(where, "benign") as done:
    benign = train_job.run_train_job(dataclasses.replace(job.benign, **start), base / "benign")
    done(benign)
  with progress(where, "verify_benign") as done:
    verdict = jobs.run_verify_job(dataclasses.replace(
        job.verify, target=str(base / "benign"), key_file=keys["key_file"]),
        base / "verify_benign")
    done(verdict)
  return {"dir": base, "key_file": keys["key_file"], "start": start, "surrogates": surrogates,
          "benign": benign, "verify_benign": verdict}


def run_point(config, shared: dict[str, Any], name: str, where: str,
              progress: Progress) -> dict[str, Any]:
  """One grid point: craft, suspect (on the protected copy) and its verification."""
  from jaxtag.taggants import demo, jobs
  from jaxtag.train import job as train_job

  job, base = _job(config), shared["dir"] / name
  label = f"{where}/{name}"
  with progress(label, "craft") as done:
    crafted = jobs.run_craft_job(dataclasses.replace(
        job.craft, surrogate=",".join(str(d) for d in shared["surrogates"]),
        key_file=shared["key_file"], output_dir=str(base / "protected")), base / "craft")
    done(crafted)
  protected = dataclasses.replace(job.data, kind="speech_commands",
                                  root=crafted["protected_dataset"])
  with progress(label, "suspect") as done:
    suspect = train_job.run_train_job(
        dataclasses.replace(job.suspect, data=protected, **shared["start"]), base / "suspect")
    done(suspect)
  with progress(label, "verify_suspect") as done:
    verdict = jobs.run_verify_job(dataclasses.replace(
        job.verify, target=str(base / "suspect"), key_file=shared["key_file"]),
        base / "verify_suspect")
    done(verdict)
  effect = demo.taggant_effect(base / "suspect", shared["dir"] / "benign", shared["key_file"])
  cost = demo.accuracy_cost(base / "suspect", shared["dir"] / "benign", job.data)
  return {"dir": base, "craft": crafted, "suspect": suspect, "verify_suspect": verdict,
          "effect": effect, "cost": cost}


# ---------------------------------------------------------------------------------- sweep


def environment() -> dict[str, Any]:
  """Versions, date and host (benchmarks/harness.py) and the JAX device."""
  import jax

  from benchmarks import harness
  return {**harness.environment(), **harness.jax_device_info(jax.devices()[0]),
          "device_count": jax.device_count()}


def write_outputs(result: dict[str, Any], out: str, *, plot: bool) -> None:
  from jaxtag.audio import io as audio_io
  pathlib.Path(out).parent.mkdir(parents=True, exist_ok=True)
  audio_io.write_text_atomic(f"{out}.json", json.dumps(result, indent=1, default=str) + "\n")
  if plot:
    title = (f"taggant map: preset {result['preset']}, budget "
             f"{sorted({p['budget'] for p in result['points']})}")
    png = records.plot_map(result["points"], alpha=result["alpha"], title=title)
    audio_io.write_bytes_atomic(f"{out}.png", png)


def sweep(args) -> dict[str, Any]:
  """Runs (or reuses) every stage of the grid; writes ``<out>.json`` after each point and the
  PNG at the end; returns the result."""
  from jaxtag.data import job as data_job
  from launch import app

  app.setup_jax()
  root = pathlib.Path(args.workdir).expanduser().absolute()
  progress = Progress()
  first = args.configs[args.scenarios[0]]
  result = {"benchmark": "taggant_map", "complete": False, "command": args.command,
            "workdir": str(root), "preset": args.preset, "scenarios": args.scenarios,
            "constraints": args.constraints, "snr_db": args.snr_db, "mask_db": args.mask_db,
            "budgets": args.budgets,
            "seeds": args.seeds, "overrides": args.applied,
            "alpha": first.verify.alpha, "decision_k": first.verify.decision_k,
            "environment": environment(), "points": [], "stages": progress.status,
            "wall_time_s": progress.wall}
  for scenario in args.scenarios:
    config = args.configs[scenario]
    with progress("", "corpus") as done:
      corpus = _job(config)
      done(data_job.run_corpus_job(data_job.CorpusJob(seed=corpus.seed, data=corpus.data),
                                   root / "corpus"))
    for seed in args.seeds:
      seeded = seeded_config(config, seed)
      where = f"{scenario}/seed_{seed}"
      shared = run_shared(seeded, root, where, progress)
      benign = records.model_record(shared["verify_benign"], _report(shared["verify_benign"]),
                                    shared["benign"])
      grid = [(constraint, db, budget) for budget in (args.budgets or [None])
              for constraint in args.constraints
              for db in (args.snr_db if constraint == "snr" else args.mask_db)]
      for constraint, db, budget in grid:
        name = point_name(constraint, db, budget)
        ran = run_point(point_config(seeded, constraint, db, budget), shared, name, where,
                        progress)
        record = records.point_record(
            scenario=scenario, seed=seed, constraint=constraint, grid_db=db,
            crafted=ran["craft"], benign=benign, effect=ran["effect"], cost=ran["cost"],
            suspect=records.model_record(ran["verify_suspect"],
                                         _report(ran["verify_suspect"]), ran["suspect"]))
        record["workdir"] = str(ran["dir"])
        result["points"].append(record)
        write_outputs(result, args.out, plot=False)
  result["complete"] = True
  write_outputs(result, args.out, plot=True)
  return result


def _report(verdict: dict[str, Any]) -> dict[str, Any]:
  return json.loads(pathlib.Path(verdict["report"]["json"]).read_text())


def main(argv=None) -> dict[str, Any]:
  args = parse_args(argv)
  if args.debug:
    result = sweep(args)
  else:
    try:
      result = sweep(args)
    except Exception as e:  # noqa: BLE001 -- one line, as the launchers print (launch/app.py).
      from jaxtag import workdir as workdir_lib
      from launch import app
      print(app.failure_line(e), file=sys.stderr, flush=True)
      if isinstance(e, workdir_lib.ConfigChangedError):
        print(f"note: {args.workdir} holds a sweep of other settings (--preset or --set); a map "
              "of these settings needs its own --workdir.", file=sys.stderr, flush=True)
      sys.exit(1)
  print(records.format_table(result["points"]))
  ran = [k for k, v in result["stages"].items() if v == "ran"]
  print(f"stages run: {len(ran)}, reused: {len(result['stages']) - len(ran)}")
  print(f"wrote {args.out}.json and {args.out}.png")
  return result


if __name__ == "__main__":
  main()
