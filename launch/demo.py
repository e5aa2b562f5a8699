r"""The README's main command: runs every pipeline stage on the embedded corpus and summarises.

  make demo
  # = .venv/bin/python -m launch.demo --config=launch/configs/demo.py --workdir=workdirs/demo

corpus -> keys -> [backbone] -> surrogate -> craft -> suspect (protected data) + benign (clean
data) -> verify. In the default `finetune` scenario a public backbone is trained first on another
draw of the corpus and every model fine-tunes it; `demo.py:default,scratch` trains from scratch.
Each stage writes its own sub-workdir and is the same code as its own launcher, so a stage can be
re-run alone. Re-running the demo on the same workdir, after an interruption or a finished run,
continues where it stopped: a finished stage is reused (its summary is written last), training
and crafting resume from their checkpoints, the key file is reused untouched, and another config
is refused. A `[demo] stage <name>: start` / `: done (ran|reused)` line marks each stage.
"""

from __future__ import annotations

import contextlib
import json
import pathlib
from typing import Any


from launch import app, craft, make_corpus, make_keys, train, verify


def top_level_config(config: Any, workdir: pathlib.Path, *names: str):
  """The demo's top-level fields ``names`` as a stage config (the fields of that stage's own
  launcher config), recorded in the stage's workdir like ``stage_config``."""
  import ml_collections
  sub = ml_collections.ConfigDict({n: config[n] for n in names}).copy_and_resolve_references()
  app.dump_config(sub, workdir)
  return sub


def stage_config(config: Any, name: str, workdir: pathlib.Path, **fields):
  """The sub-config of one stage with ``fields`` set, recorded in the stage's workdir as its
  launcher would record it (so the stage can be re-run alone with the same settings)."""
  sub = config[name].copy_and_resolve_references()
  sub.unlock()
  for key, value in fields.items():
    sub[key] = value
  app.dump_config(sub, workdir)
  return sub


class _Stages:
  """Times each stage, prints its start and end, and records whether it ran or was reused."""

  def __init__(self):
    self.wall: dict[str, float] = {}
    self.status: dict[str, str] = {}

  @contextlib.contextmanager
  def __call__(self, name: str):
    print(f"[demo] stage {name}: start", flush=True)
    summaries: list[dict[str, Any]] = []
    with app.timed(name, self.wall):
      yield summaries.append
    self.status[name] = "reused" if all(s.get("reused") for s in summaries) else "ran"
    print(f"[demo] stage {name}: done ({self.status[name]}, {self.wall[name]:.1f} s)", flush=True)


def run_stage(config: Any, workdir: pathlib.Path) -> dict[str, Any]:
  stage = _Stages()
  with stage("corpus") as done:
    data = make_corpus.run_stage(top_level_config(config, workdir / "corpus", "seed", "data"),
                                 workdir / "corpus")
    done(data)
  with stage("keys") as done:
    keys = make_keys.run_stage(
        top_level_config(config, workdir / "keys", "seed", "data", "key_spec", "export_wav"),
        workdir / "keys")
    done(keys)
  key_file = keys["key_file"]
  # finetune: every model starts from the public backbone; scratch: from random weights.
  start = {}
  backbone = None
  if config.scenario == "finetune":
    with stage("backbone") as done:
      backbone = train.run_stage(stage_config(config, "backbone", workdir / "backbone"),
                                 workdir / "backbone")
      done(backbone)
    start = {"init_from": str(workdir / "backbone")}
  surrogate_dirs = [workdir / ("surrogate" if i == 0 else f"surrogate_{i}")
                    for i in range(config.num_surrogates)]
  with stage("surrogate") as done:
    surrogates = [   # an ensemble: the same recipe, other seeds
        train.run_stage(stage_config(config, "surrogate", directory,
                                      seed=config.surrogate.seed + 1000 * i, **start), directory)
        for i, directory in enumerate(surrogate_dirs)]
    for s in surrogates:
      done(s)
  with stage("craft") as done:
    crafted = craft.run_stage(
        stage_config(config, "craft", workdir / "craft",
                      surrogate=",".join(str(d) for d in surrogate_dirs),
                      key_file=key_file, output_dir=str(workdir / "protected")),
        workdir / "craft")
    done(crafted)
  protected_data = config.data.copy_and_resolve_references()
  protected_data.kind = "speech_commands"
  protected_data.root = crafted["protected_dataset"]
  with stage("suspect") as done:
    suspect = train.run_stage(
        stage_config(config, "suspect", workdir / "suspect", data=protected_data, **start),
        workdir / "suspect")
    done(suspect)
  with stage("benign") as done:
    benign = train.run_stage(stage_config(config, "benign", workdir / "benign", **start),
                             workdir / "benign")
    done(benign)
  verdicts = {}
  with stage("verify") as done:
    for name in ("suspect", "benign"):
      stage_dir = workdir / f"verify_{name}"
      verdicts[name] = verify.run_stage(
          stage_config(config, "verify", stage_dir, target=str(workdir / name),
                        key_file=key_file), stage_dir)
      done(verdicts[name])
  report = {
      "scenario": config.scenario, "backbone": backbone,
      "data": data, "keys": keys, "surrogates": surrogates, "craft": crafted,
      "suspect": suspect, "benign": benign,
      "verify": {k: {f: v for f, v in d.items() if f != "text"} for k, d in verdicts.items()},
      "taggant_effect": taggant_effect(workdir / "suspect", workdir / "benign", key_file),
      "accuracy_cost": accuracy_cost(workdir / "suspect", workdir / "benign", config.data),
      "stages": stage.status,
      "wall_time_s": {k: round(v, 2) for k, v in stage.wall.items()},
  }
  app.write_json(workdir / "demo_summary.json", report, secret=True)  # names the keys' labels
  return report


def taggant_effect(suspect: pathlib.Path, benign: pathlib.Path, key_file: str) -> dict[str, Any]:
  """White-box: how far each key's label moved, suspect minus its paired benign control (same
  seed, recipe and data order; the owner's lab diagnostic, not what the black-box verification
  sees: that only gets top-k labels). It measures the taggants' effect on this one pair of models
  *including* any effect of merely changing those clips, which can move a key either way
  (benchmarks/taggant_placebo.py: from scratch, perturbing the same clips without alignment moves
  the keys about as much), so it is neither an upper nor a lower bound on the taggants' effect."""
  from jaxtag import train as train_lib
  from jaxtag.taggants import diagnostics, keyfile

  secret, _ = keyfile.load_keys(key_file)
  scores = {name: diagnostics.key_scores(train_lib.restore_for_inference(directory), secret)
            for name, directory in (("suspect", suspect), ("benign", benign))}
  return diagnostics.paired_effect(scores["suspect"], scores["benign"])


def accuracy_cost(suspect: pathlib.Path, benign: pathlib.Path, data: Any) -> dict[str, Any] | None:
  """The protection's test-accuracy cost: the benign control's accuracy minus the suspect's on
  the test split of ``data`` (the clean corpus), clip by clip, with a paired 95% interval and
  McNemar's exact p (``jaxtag.stats.accuracy_cost``: the clips' sampling, not
  the training seeds'). None when ``data`` has no test split."""
  from jaxtag.data import sources
  from jaxtag.taggants import blackbox

  try:
    test = sources.load_split(sources.DataSource(**data.to_dict()), "test", progress=False)
  except sources.SplitNotFoundError:
    return None
  boxes = [blackbox.LocalBlackBox(directory, batch_size=128) for directory in (suspect, benign)]
  return blackbox.paired_cost(*boxes, {"test": test})["pooled"]


def _cost_line(cost: dict[str, Any] | None) -> str:
  if cost is None:
    return "test-accuracy cost of the protection: not measured (the data has no test split)"
  return (f"test-accuracy cost of the protection: {100 * cost['cost']:+.1f} points (benign "
          f"{100 * cost['control_accuracy']:.1f}% - suspect {100 * cost['treated_accuracy']:.1f}% "
          f"on {cost['num_clips']} test clips; paired {100 * cost['confidence']:g}% interval "
          f"[{100 * cost['low']:+.1f}, {100 * cost['high']:+.1f}], McNemar exact p "
          f"{cost['p_value']:.2g}: {cost['control_only']} clips right only under the benign "
          f"model, {cost['treated_only']} only under the suspect)")


def _budget_line(crafted: dict[str, Any]) -> str:
  """The taggants' SNR, per poison and over the whole training set (never one for the other)."""
  quality = crafted.get("quality")
  if not quality:   # a craft summary from before the quality block: the crafted figures only
    return (f"SNR per poison: min {crafted['snr_db_min']:.1f} dB, median "
            f"{crafted['snr_db_median']:.1f} dB; dataset-level SNR not measured")
  clip = quality["clip_snr_db"]
  dataset = quality["dataset_snr_db"]
  return (f"SNR per poison: min {_number(clip['min'], '.1f')} dB, median "
          f"{_number(clip['median'], '.1f')} dB; dataset-level SNR {_number(dataset, '.1f')} dB "
          f"(energy of all {quality['num_clips']} training clips / of all perturbations)")


def _perceptual_line(quality: dict[str, Any] | None) -> str:
  """PESQ wideband and STOI of the poisons against their clean clips (median and minimum)."""
  quality = quality or {}
  parts = []
  for name, field, fmt in (("PESQ-WB (max 4.64)", "pesq_wb", ".2f"),
                           ("STOI (max 1)", "stoi", ".4f")):
    stats = quality.get(field)
    if stats is None:
      parts.append(f"{name} not measured ({quality.get(field + '_reason') or 'no quality block'})")
      continue
    failed = sum((quality.get(field + "_failures") or {}).values())
    parts.append(f"{name} median {_number(stats['median'], fmt)} (min {_number(stats['min'], fmt)}"
                 f"{f', {failed} unscorable' if failed else ''})")
  measured = quality.get("perceptual_clips")
  clips = "the poisons" if measured is None else f"{measured} poison{'s' * (measured != 1)}"
  return f"perceptual quality of {clips} vs their clean clips: " + "; ".join(parts)


def _number(value: float | None, fmt: str) -> str:
  return "n/a" if value is None else format(value, fmt)


def _key_accuracy(workdir: pathlib.Path, name: str, k: int) -> float:
  report = json.loads((workdir / f"verify_{name}" / "verify_report.json").read_text())
  hits = report["hits"]
  return hits[min(k, len(hits)) - 1] / report["num_keys"]


def main(config, workdir):
  report = run_stage(config, workdir)
  crafted, verdicts = report["craft"], report["verify"]
  print("\n=== jaxtag demo: audio data taggants ===")
  print(f"corpus: {report['data']['root']}")
  print(f"keys: {report['keys']['num_keys']} keys -> {report['keys']['key_file']}")
  print(f"protected dataset: {crafted['protected_dataset']} ({crafted['num_poisons']} poisons = "
        f"{100 * crafted['num_poisons'] / crafted['num_train']:.2f}% of {crafted['num_train']} "
        "training clips)")
  craft_cfg = config.craft
  print(f"  operating point: {100 * craft_cfg.budget:g}% of the training clips, per-poison SNR "
        f"floor {craft_cfg.craft.snr_db:g} dB, "
        + (f"{craft_cfg.craft.steps} {craft_cfg.craft.alignment} alignment steps from a "
           f"{craft_cfg.craft.init} start" if craft_cfg.craft.steps else
           "key insertion (the keys at the budget, no alignment steps)")
        + f", {config.scenario} scenario"
        + (f" ({config.note})" if config.get("note") else ""))
  print(f"  {_budget_line(crafted)}; alignment loss "
        f"{crafted['loss_initial_mean']:.3f} -> {crafted['loss_final_mean']:.3f}")
  print("  " + _perceptual_line(crafted.get("quality")))
  # Key accuracy at top-1, at the decision's k and at top-5 (each once).
  ks = sorted({1, int(config.verify.decision_k), 5})
  print(f"{'model':<10}{'trained on':<12}{'test acc':>9}"
        + "".join(f"{f'key top-{k}':>11}" for k in ks)
        + f"{'p-value':>11}{'floor':>10}  verdict")
  for name, data in (("suspect", "protected"), ("benign", "clean")):
    v = verdicts[name]
    print(f"{name:<10}{data:<12}{report[name].get('test/accuracy', float('nan')):>9.3f}"
          + "".join(f"{_key_accuracy(workdir, name, k):>11.2f}" for k in ks)
          + f"{v['p_value']:>11.2e}{v['floor']:>10.1e}  "
          f"{'TRAINED ON THE TAGGANTS' if v['decision'] else 'not detected'}"
          f" (alpha {config.verify.alpha:g}, top-{v['decision_k']})")
  effect = report["taggant_effect"]
  print(f"key-label shift (white-box, suspect - benign, same seed): log p(key label) "
        f"{effect['mean']:+.3f} nats on average (min {effect['min']:+.3f}, max "
        f"{effect['max']:+.3f})")
  if "specific" in effect:
    print(f"  of which key-specific: {effect['specific']:+.3f} nats (the other keys' labels on each "
          f"key moved {effect['others']:+.3f}; only the specific part can make a key's own label "
          "win)")
  print("  a white-box diagnostic of this pair of models, not a bound on the taggants' effect and "
        "not what the black-box verification sees: it includes any effect of merely changing "
        "those clips, which can move keys either way (placebo: benchmarks/RESULTS.md); a top-1 "
        "hit needs the key's label to overtake every other class")
  print(_cost_line(report["accuracy_cost"]))
  print("wall time per stage (s): " + ", ".join(
      f"{k} {v:.1f}" for k, v in report["wall_time_s"].items()))
  for status in ("reused", "ran"):
    names = [k for k, v in report["stages"].items() if v == status]
    print(f"stages {status}: {', '.join(names) or 'none'}")
  print(f"summary: {workdir / 'demo_summary.json'}")


if __name__ == "__main__":
  app.run(main)
