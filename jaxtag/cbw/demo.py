"""The CBW demo (``make demo-cbw``): protect a speaker dataset, train on it, prove it.

Stages, each in its own sub-workdir and each reused when finished (so a stopped demo resumes):

1. ``surrogate``: the owner's speaker model, trained on the clean data (seed ``seed``).
2. ``protect``: CBW planned from the surrogate's embeddings; the protected copy in
   ``protected_data/`` (the input's layout) and the secret ``protect/cbw_secret.npz``.
3. ``suspect``: a model trained on the protected copy (another seed, the same recipe).
4. ``benign``: the suspect's recipe and seed on the clean data: its paired control.
5. ``verify_<model>_<mode>``: both models queried as black boxes in both modes.
6. ``false_positives``: ``false_positive_draws`` fresh secrets against the clean models (benign
   and surrogate) in both modes: the measured size of the tests.

The summary (``cbw_demo.json``, ``cbw_demo.txt`` and ``cbw_demo.png``) reports the EER on the
unseen test speakers with and without protection, the watermark success rate, every p-value, the
triggers' SNR and PESQ, and the wall time of each stage.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import time
from typing import Any

import jax

from jaxtag import workdir as workdir_lib
from jaxtag.cbw import jobs, null
from jaxtag.cbw import verify as verify_lib
from jaxtag.cbw import watermark as wm_lib
from jaxtag.speaker import data as data_lib
from jaxtag.speaker.job import SpeakerTrainJob, run_speaker_train_job

SUMMARY = "cbw_demo.json"
MODELS = ("suspect", "benign")
MODES = verify_lib.MODES


@dataclasses.dataclass(frozen=True)
class CbwDemoJob:
  """The whole CBW chain on one dataset.

  Attributes:
    seed: the secret's and the surrogate's seed; the suspect and the benign model both use
      ``seed + 1`` (same initialisation and batches: they differ only in the data, so the EER
      cost is a paired comparison).
    data: the owner's speaker dataset.
    model: the training recipe of all three models (its ``seed`` and ``data`` are set per model).
    watermark: what to implant.
    verify: how to query and test.
    false_positive_draws: fresh secrets tested against the clean models.
    progress: progress bars.
  """

  seed: int = 0
  data: data_lib.SpeakerSource = dataclasses.field(default_factory=data_lib.SpeakerSource)
  model: SpeakerTrainJob = dataclasses.field(default_factory=SpeakerTrainJob)
  # 10% of each speaker's utterances: over training seeds 1-3 it cost -0.06 EER points on
  # average against 15%'s +0.87 (the seed's ~15%), at the same detection (benchmarks/RESULTS.md).
  watermark: wm_lib.WatermarkConfig = wm_lib.WatermarkConfig(num_clusters=10,
                                                             utterance_fraction=0.1)
  verify: verify_lib.VerifyConfig = verify_lib.VerifyConfig()
  false_positive_draws: int = 20
  progress: bool = True

  def key(self) -> jax.Array:
    return jax.random.key(int(self.seed))


def _log(message: str) -> None:
  print(f"[cbw-demo {time.strftime('%H:%M:%S')}] {message}", flush=True)


def train_model(job: CbwDemoJob, name: str, seed: int, data: data_lib.SpeakerSource,
                workdir: pathlib.Path) -> dict[str, Any]:
  """Trains (or reuses) ``workdir/name``: the demo's recipe with this seed and data."""
  train_job = dataclasses.replace(job.model, seed=seed, data=data, progress=job.progress)
  summary = run_speaker_train_job(train_job, workdir / name)
  _log(f"{name}: EER {summary['test']['eer']:.2%} on {summary['speakers']['test']} unseen "
       f"speakers{' (reused)' if summary.get('reused') else ''}")
  return summary


def black_boxes(workdir: pathlib.Path, names) -> dict[str, dict[str, Any]]:
  """``{name: {mode: LocalSpeakerBlackBox}}`` of the trained models ``workdir/name``."""
  from jaxtag.speaker import blackbox
  from jaxtag.speaker import embedder as embedder_lib
  out = {}
  for name in names:
    embedder = embedder_lib.load_embedder(workdir / name)
    out[name] = {mode: blackbox.LocalSpeakerBlackBox(embedder, mode=mode) for mode in MODES}
  return out


def _false_positives(job: CbwDemoJob, workdir: pathlib.Path) -> dict[str, Any]:
  from jaxtag.speaker import embedder as embedder_lib
  splits = data_lib.load_speaker_splits(job.data, progress=False)
  surrogate = embedder_lib.load_embedder(workdir / "surrogate")
  emb = {name: surrogate.embed(ds.waveforms) for name, ds in splits.items()}
  folder = workdir / "false_positives"
  folder.mkdir(parents=True, exist_ok=True)
  return null.null_study(job.key(), job.watermark, train=splits["train"],
                         train_embeddings=emb["train"], test=splits["test"],
                         test_embeddings=emb["test"], boxes=black_boxes(workdir, ("benign",
                                                                              "surrogate")),
                         verify_config=job.verify, draws=job.false_positive_draws,
                         records=folder / "draws.jsonl", progress=job.progress)


def run_cbw_demo(job: CbwDemoJob, workdir: str | os.PathLike,
                 runtime: workdir_lib.Runtime | None = None) -> dict[str, Any]:
  """Runs (or resumes) the chain of the module doc; returns and writes the summary."""
  runtime = runtime or workdir_lib.Runtime()
  workdir = pathlib.Path(workdir).absolute()
  workdir.mkdir(parents=True, exist_ok=True)
  done = workdir_lib.finished(job, workdir, SUMMARY)
  if done:
    return done
  workdir_lib.record(job, workdir)
  seconds: dict[str, float] = {}
  models = {}
  with workdir_lib.timed("surrogate", seconds):
    models["surrogate"] = train_model(job, "surrogate", job.seed, job.data, workdir)
  protected_root = workdir / "protected_data"
  with workdir_lib.timed("protect", seconds):
    protect = jobs.run_cbw_protect_job(jobs.CbwProtectJob(
        seed=job.seed, data=job.data, surrogate_workdir=str(workdir / "surrogate"),
        watermark=job.watermark, output_root=str(protected_root), progress=job.progress),
        workdir / "protect", runtime=runtime)
  _log(f"protect: {protect['triggered']} of {protect['train_utterances']} utterances carry a "
       f"trigger ({protect['num_clusters']} clusters)")
  protected = dataclasses.replace(job.data, kind="speech_commands" if job.data.kind != (
      "speaker_folders") else "speaker_folders", root=str(protected_root))
  with workdir_lib.timed("suspect", seconds):
    models["suspect"] = train_model(job, "suspect", job.seed + 1, protected, workdir)
  with workdir_lib.timed("benign", seconds):
    models["benign"] = train_model(job, "benign", job.seed + 1, job.data, workdir)
  verdicts = {}
  with workdir_lib.timed("verify", seconds):
    for name in MODELS:
      for mode in MODES:
        verdicts[f"{name}/{mode}"] = jobs.run_cbw_verify_job(jobs.CbwVerifyJob(
            seed=job.seed, data=job.data, secret_file=protect["secret_file"],
            model_workdir=str(workdir / name), mode=mode, verify=job.verify),
            workdir / f"verify_{name}_{mode}", runtime=runtime)
        _log(f"verify {name} ({mode}): p = {verdicts[f'{name}/{mode}']['p_value']:.3g}")
  with workdir_lib.timed("false_positives", seconds):
    false_positives = _false_positives(job, workdir)
  summary = _summary(models, protect, verdicts, false_positives, seconds)
  from jaxtag.cbw import report
  report.write_demo_report(workdir, summary, verdicts, false_positives_records=(
      workdir / "false_positives" / "draws.jsonl"))
  workdir_lib.write_json(workdir / SUMMARY, summary)
  return summary


def _summary(models, protect, verdicts, false_positives, seconds) -> dict[str, Any]:
  eer = {name: s["test"]["eer"] for name, s in models.items()}
  clean = [eer["benign"], eer["surrogate"]]
  q = protect["quality"]
  return {
      "eer": eer, "threshold": {name: s["test"]["threshold"] for name, s in models.items()},
      "eer_cost_points": 100 * (eer["suspect"] - eer["benign"]),
      "eer_clean_seed_spread_points": 100 * (max(clean) - min(clean)),
      "watermark_success_rate": {name: verdicts[f"{name}/decision"]["watermark_success_rate"]
                                 for name in MODELS},
      "any_trigger_rate": {name: verdicts[f"{name}/decision"]["any_trigger_rate"]
                           for name in MODELS},
      "p_value": {k: v["p_value"] for k, v in verdicts.items()},
      "seed_style_p": {k: v["t_test" if k.endswith("score") else "fisher"]["p_value"]
                       for k, v in verdicts.items()},
      "detected": {k: v["detected"] for k, v in verdicts.items()},
      "alpha": next(iter(verdicts.values()))["alpha"],
      "trigger": protect["trigger"], "triggered": protect["triggered"],
      "triggered_fraction": protect["triggered_fraction"],
      "num_clusters": protect["num_clusters"],
      "trigger_snr_db_median": (q.get("clip_snr_db") or {}).get("median"),
      "trigger_pesq_median": (q.get("pesq_wb") or {}).get("median"),
      "trigger_quality": q, "false_positives": false_positives,
      "train_seconds": {name: s.get("train_seconds") for name, s in models.items()},
      "seconds": {k: round(v, 1) for k, v in seconds.items()},
  }
