"""The taggants demo: every stage of the pipeline on one dataset, resumable, with its verdict.

corpus -> keys -> [backbone] -> surrogate(s) -> craft -> suspect (protected data) + benign (clean
data) -> verify both. Each stage is the same library job as its own launcher
(:mod:`jaxtag.taggants.jobs`, :mod:`jaxtag.train.job`, :mod:`jaxtag.data.job`) and writes its own
sub-workdir with its own recorded config, so a stage can be re-run alone with the same settings.
Re-running the demo continues where it stopped: a finished stage is reused, training and crafting
resume from their checkpoints, the key file is reused untouched, and another config is refused.
``launch/demo.py`` is a thin main over :func:`run_demo` and :func:`demo_text`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
from collections.abc import Iterator
from typing import Any, Callable

from jaxtag import workdir as workdir_lib
from jaxtag.data import job as data_job
from jaxtag.data import sources
from jaxtag.taggants import jobs, keyfile
from jaxtag.taggants import keys as keys_lib
from jaxtag.train import job as train_job

SUMMARY = "demo_summary.json"
SCENARIOS = ("finetune", "scratch")


@dataclasses.dataclass(frozen=True)
class DemoJob:
  """The whole chain's settings (each stage's job under its own name).

  Attributes:
    seed: the root seed of the corpus, keys and craft stages.
    scenario: ``finetune`` (a public backbone is trained first on another draw of the corpus and
      every model fine-tunes it) or ``scratch`` (every model from random weights).
    data: the clean dataset (the surrogates', the benign model's and the craft's input).
    key_spec: the secret keys.
    export_wav: also write the keys as WAV.
    note: a description of the preset's operating point, printed beside it (changes nothing).
    surrogate: the owner's surrogate recipe (``init_from`` set to the backbone when fine-tuning).
    num_surrogates: an ensemble of this many surrogates (seeds ``surrogate.seed + 1000 i``).
    suspect: the suspect's recipe (its data is replaced by the protected dataset).
    backbone: the public backbone's recipe (``finetune`` only).
    benign: the suspect's paired control: its recipe and seed on the clean data.
    craft: the craft stage (its surrogate, key file and output are set by the chain).
    verify: the verification (its target and key file are set by the chain).
  """

  seed: int = 0
  scenario: str = "finetune"
  data: sources.DataSource = dataclasses.field(default_factory=sources.DataSource)
  key_spec: keys_lib.KeySpec = keys_lib.KeySpec()
  export_wav: bool = True
  note: str = ""
  surrogate: train_job.TrainJob = dataclasses.field(default_factory=train_job.TrainJob)
  num_surrogates: int = 1
  suspect: train_job.TrainJob = dataclasses.field(default_factory=train_job.TrainJob)
  backbone: train_job.TrainJob = dataclasses.field(default_factory=train_job.TrainJob)
  benign: train_job.TrainJob = dataclasses.field(default_factory=train_job.TrainJob)
  craft: jobs.CraftJob = dataclasses.field(default_factory=jobs.CraftJob)
  verify: jobs.VerifyJob = dataclasses.field(default_factory=jobs.VerifyJob)

  def __post_init__(self):
    if self.scenario not in SCENARIOS:
      raise ValueError(f"DemoJob.scenario must be one of {SCENARIOS}; got {self.scenario!r}.")
    if self.num_surrogates < 1:
      raise ValueError(f"DemoJob.num_surrogates must be >= 1; got {self.num_surrogates}.")


class _Stages:
  """Times each stage, prints its start and end, and records whether it ran or was reused."""

  def __init__(self):
    self.wall: dict[str, float] = {}
    self.status: dict[str, str] = {}

  @contextlib.contextmanager
  def __call__(self, name: str) -> Iterator[Callable[[dict[str, Any]], None]]:
    print(f"[demo] stage {name}: start", flush=True)
    summaries: list[dict[str, Any]] = []
    with workdir_lib.timed(name, self.wall):
      yield summaries.append
    self.status[name] = "reused" if all(s.get("reused") for s in summaries) else "ran"
    print(f"[demo] stage {name}: done ({self.status[name]}, {self.wall[name]:.1f} s)", flush=True)


def _train_surrogates(job: DemoJob, workdir: pathlib.Path, stage: _Stages, runtime,
                      init_from: dict[str, str]) -> list[dict[str, Any]]:
  """Trains (or reuses) the owner's surrogate(s); returns their summaries."""
  surrogates = []
  with stage("surrogate") as done:
    for i, directory in enumerate(surrogate_dirs(job, workdir)):   # an ensemble: other seeds
      member = dataclasses.replace(job.surrogate, seed=job.surrogate.seed + 1000 * i, **init_from)
      surrogates.append(train_job.run_train_job(member, directory, runtime=runtime))
      done(surrogates[-1])
  return surrogates


def surrogate_dirs(job: DemoJob, workdir: pathlib.Path) -> list[pathlib.Path]:
  """The surrogates' workdirs: ``surrogate``, ``surrogate_1``, ..."""
  return [workdir / ("surrogate" if i == 0 else f"surrogate_{i}")
          for i in range(job.num_surrogates)]


def run_demo(job: DemoJob, workdir: str | os.PathLike, *,
             runtime: workdir_lib.Runtime = workdir_lib.Runtime()) -> dict[str, Any]:
  """Runs (or resumes) every stage into sub-workdirs of ``workdir``; returns the demo's summary
  (also written, owner-only since it names the keys' labels, to ``demo_summary.json``)."""
  workdir = pathlib.Path(workdir)
  workdir_lib.record(job, workdir)   # another config on this workdir is refused
  stage = _Stages()
  with stage("corpus") as done:
    data = data_job.run_corpus_job(data_job.CorpusJob(seed=job.seed, data=job.data),
                                   workdir / "corpus")
    done(data)
  with stage("keys") as done:
    keys = jobs.run_keys_job(jobs.KeysJob(seed=job.seed, data=job.data, key_spec=job.key_spec,
                                          export_wav=job.export_wav), workdir / "keys",
                             runtime=runtime)
    done(keys)
  key_file = keys["key_file"]
  init_from, backbone = {}, None   # finetune: every model starts from the public backbone
  if job.scenario == "finetune":
    with stage("backbone") as done:
      backbone = train_job.run_train_job(job.backbone, workdir / "backbone", runtime=runtime)
      done(backbone)
    init_from = {"init_from": str(workdir / "backbone")}
  surrogates = _train_surrogates(job, workdir, stage, runtime, init_from)
  with stage("craft") as done:
    craft_job = dataclasses.replace(
        job.craft, surrogate=",".join(str(d) for d in surrogate_dirs(job, workdir)),
        key_file=key_file, output_dir=str(workdir / "protected"))
    crafted = jobs.run_craft_job(craft_job, workdir / "craft", runtime=runtime)
    done(crafted)
  protected = dataclasses.replace(job.data, kind="speech_commands",
                                  root=crafted["protected_dataset"])
  trained = {}
  for name, data_source in (("suspect", protected), ("benign", job.data)):
    with stage(name) as done:
      model_job = dataclasses.replace(getattr(job, name), data=data_source, **init_from)
      trained[name] = train_job.run_train_job(model_job, workdir / name, runtime=runtime)
      done(trained[name])
  verdicts = {}
  with stage("verify") as done:
    for name in ("suspect", "benign"):
      verify_job = dataclasses.replace(job.verify, target=str(workdir / name), key_file=key_file)
      verdicts[name] = jobs.run_verify_job(verify_job, workdir / f"verify_{name}",
                                           runtime=runtime)
      done(verdicts[name])
  report = {
      "scenario": job.scenario, "backbone": backbone,
      "data": data, "keys": keys, "surrogates": surrogates, "craft": crafted,
      "suspect": trained["suspect"], "benign": trained["benign"],
      "verify": {k: {f: v for f, v in d.items() if f != "text"} for k, d in verdicts.items()},
      "taggant_effect": taggant_effect(workdir / "suspect", workdir / "benign", key_file),
      "accuracy_cost": accuracy_cost(workdir / "suspect", workdir / "benign", job.data),
      "stages": stage.status,
      "wall_time_s": {k: round(v, 2) for k, v in stage.wall.items()},
  }
  workdir_lib.write_json(workdir / SUMMARY, report, secret=True)  # names the keys' labels
  return report


def taggant_effect(suspect: pathlib.Path, benign: pathlib.Path, key_file: str) -> dict[str, Any]:
  """White-box: how far each key's label moved, suspect minus its paired benign control (same
  seed, recipe and data order; the owner's lab diagnostic, not what the black-box verification
  sees: that only gets top-k labels). It measures the taggants' effect on this one pair of models
  *including* any effect of merely changing those clips, which can move a key either way
  (benchmarks/taggant_placebo.py: from scratch, perturbing the same clips without alignment moves
  the keys about as much), so it is neither an upper nor a lower bound on the taggants' effect."""
  from jaxtag import train as train_lib
  from jaxtag.taggants import diagnostics

  secret, _ = keyfile.load_keys(key_file)
  scores = {name: diagnostics.key_scores(train_lib.restore_for_inference(directory), secret)
            for name, directory in (("suspect", suspect), ("benign", benign))}
  return diagnostics.paired_effect(scores["suspect"], scores["benign"])


def accuracy_cost(suspect: pathlib.Path, benign: pathlib.Path,
                  data: sources.DataSource) -> dict[str, Any] | None:
  """The protection's test-accuracy cost: the benign control's accuracy minus the suspect's on
  the test split of ``data`` (the clean corpus), clip by clip, with a paired 95% interval and
  McNemar's exact p (``jaxtag.stats.accuracy_cost``: the clips' sampling, not the training
  seeds'). None when ``data`` has no test split."""
  from jaxtag.taggants import blackbox

  try:
    test = sources.load_split(data, "test", progress=False)
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




def _operating_point(job: DemoJob) -> str:
  craft = job.craft
  return (f"  operating point: {100 * craft.budget:g}% of the training clips, per-poison SNR "
          f"floor {craft.craft.snr_db:g} dB, "
          + (f"{craft.craft.steps} {craft.craft.alignment} alignment steps from a "
             f"{craft.craft.init} start" if craft.craft.steps else
             "key insertion (the keys at the budget, no alignment steps)")
          + f", {job.scenario} scenario" + (f" ({job.note})" if job.note else ""))


def _effect_lines(effect: dict[str, Any]) -> list[str]:
  lines = [f"key-label shift (white-box, suspect - benign, same seed): log p(key label) "
           f"{effect['mean']:+.3f} nats on average (min {effect['min']:+.3f}, max "
           f"{effect['max']:+.3f})"]
  if "specific" in effect:
    lines.append(f"  of which key-specific: {effect['specific']:+.3f} nats (the other keys' "
                 f"labels on each key moved {effect['others']:+.3f}; only the specific part can "
                 "make a key's own label win)")
  lines.append("  a white-box diagnostic of this pair of models, not a bound on the taggants' "
               "effect and not what the black-box verification sees: it includes any effect of "
               "merely changing those clips, which can move keys either way (placebo: "
               "benchmarks/RESULTS.md); a top-1 hit needs the key's label to overtake every "
               "other class")
  return lines


def demo_text(job: DemoJob, report: dict[str, Any], workdir: str | os.PathLike) -> str:
  """The demo's printed summary: the protected dataset, its operating point and quality, each
  model's accuracy, key accuracy and verdict, the white-box shift, the accuracy cost, and the
  wall time per stage."""
  workdir = pathlib.Path(workdir)
  crafted, verdicts = report["craft"], report["verify"]
  lines = ["", "=== jaxtag demo: audio data taggants ===",
           f"corpus: {report['data']['root']}",
           f"keys: {report['keys']['num_keys']} keys -> {report['keys']['key_file']}",
           f"protected dataset: {crafted['protected_dataset']} ({crafted['num_poisons']} poisons "
           f"= {100 * crafted['num_poisons'] / crafted['num_train']:.2f}% of "
           f"{crafted['num_train']} training clips)",
           _operating_point(job),
           f"  {_budget_line(crafted)}; alignment loss "
           f"{crafted['loss_initial_mean']:.3f} -> {crafted['loss_final_mean']:.3f}",
           "  " + _perceptual_line(crafted.get("quality"))]
  ks = sorted({1, int(job.verify.decision_k), 5})   # top-1, the decision's k, top-5 (once each)
  lines.append(f"{'model':<10}{'trained on':<12}{'test acc':>9}"
               + "".join(f"{f'key top-{k}':>11}" for k in ks)
               + f"{'p-value':>11}{'floor':>10}  verdict")
  for name, data in (("suspect", "protected"), ("benign", "clean")):
    v = verdicts[name]
    lines.append(f"{name:<10}{data:<12}{report[name].get('test/accuracy', float('nan')):>9.3f}"
                 + "".join(f"{_key_accuracy(workdir, name, k):>11.2f}" for k in ks)
                 + f"{v['p_value']:>11.2e}{v['floor']:>10.1e}  "
                 f"{'TRAINED ON THE TAGGANTS' if v['decision'] else 'not detected'}"
                 f" (alpha {job.verify.alpha:g}, top-{v['decision_k']})")
  lines += _effect_lines(report["taggant_effect"])
  lines.append(_cost_line(report["accuracy_cost"]))
  lines.append("wall time per stage (s): " + ", ".join(
      f"{k} {v:.1f}" for k, v in report["wall_time_s"].items()))
  for status in ("reused", "ran"):
    names = [k for k, v in report["stages"].items() if v == status]
    lines.append(f"stages {status}: {', '.join(names) or 'none'}")
  lines.append(f"summary: {workdir / SUMMARY}")
  return "\n".join(lines)
