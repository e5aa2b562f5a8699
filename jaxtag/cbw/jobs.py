"""CBW's stages as library jobs: protect a speaker dataset, and verify a suspect verifier.

Each job is a frozen dataclass (its launcher's ConfigDict is generated from it) and a ``run_*``
function over a workdir that follows :mod:`jaxtag.workdir`: the job is recorded in
``config.json`` (another config is refused), a finished stage is reused from its summary
(written last), and the secret is owner-only and never overwritten silently.

    protect = CbwProtectJob(data=SpeakerSource(preset="tiny"), surrogate_workdir="wd/surrogate",
                            output_root="wd/protected_data")
    run_cbw_protect_job(protect, "wd/cbw_protect")
    verify = CbwVerifyJob(data=protect.data, secret_file="wd/cbw_protect/cbw_secret.npz",
                          model_workdir="wd/suspect", mode="decision")
    run_cbw_verify_job(verify, "wd/verify_suspect")
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import time
from typing import Any

import jax
import numpy as np

from jaxtag import errors, secrets
from jaxtag import workdir as workdir_lib
from jaxtag.cbw import report as report_lib
from jaxtag.cbw import verify as verify_lib
from jaxtag.cbw import watermark as wm_lib
from jaxtag.data.dataset import DatasetError
from jaxtag.speaker import data as data_lib

SECRET_FILENAME = "cbw_secret.npz"
PROTECT_SUMMARY = "cbw_protect.json"   # written last: the protected dataset is complete
VERIFY_SUMMARY = "cbw_verify.json"     # written last: the verification finished
FLAG_OWNERS = {"WatermarkConfig": "watermark", "TriggerSpec": "watermark.trigger",
               "VerifyConfig": "verify", "SpeakerSource": "data", "CbwProtectJob": "",
               "CbwVerifyJob": ""}


@dataclasses.dataclass(frozen=True)
class CbwProtectJob:
  """Watermark a speaker dataset's training speakers and publish it in its input layout.

  Attributes:
    seed: the secret (clusters, trigger bands and phases, triggered utterances) comes from
      ``jax.random.key(seed)``.
    data: the dataset (its ``test`` speakers are the owner's held-out speakers for enrolment).
    surrogate_workdir: a finished speaker-model workdir (the owner's surrogate).
    watermark: what to implant.
    output_root: the folder that receives the protected dataset (required).
    overwrite: replace a secret file that this workdir did not record (never silently).
    perceptual: measure PESQ/STOI of the triggered utterances against the originals.
    progress: progress bars.
  """

  seed: int = 0
  data: data_lib.SpeakerSource = dataclasses.field(default_factory=data_lib.SpeakerSource)
  surrogate_workdir: str = ""
  watermark: wm_lib.WatermarkConfig = wm_lib.WatermarkConfig()
  output_root: str = ""
  overwrite: bool = False
  perceptual: bool = True
  progress: bool = False

  def key(self) -> jax.Array:
    return jax.random.key(int(self.seed))


def _embed(surrogate_workdir: str, splits) -> dict[str, np.ndarray]:
  """The surrogate's embeddings of every split's utterances."""
  from jaxtag.speaker import embedder as embedder_lib
  if not surrogate_workdir:
    raise ValueError(f"cbw protect: set {errors.option('surrogate_workdir', owner='CbwProtectJob')}"
                     " to the owner's trained speaker model.")
  embedder = embedder_lib.load_embedder(surrogate_workdir)
  return {name: embedder.embed(ds.waveforms) for name, ds in splits.items()}


def _quality(train, protected: np.ndarray, rows: np.ndarray, perceptual: bool) -> dict:
  from jaxtag.audio import quality
  q = quality.perturbation_quality(train.waveforms, protected[rows], rows,
                                   sample_rate=train.sample_rate, perceptual=perceptual)
  trigger_db = 20 * np.log10(np.sqrt(np.mean(protected[rows] ** 2, axis=1)) + 1e-12)
  speech_db = 20 * np.log10(np.sqrt(np.mean(train.waveforms[rows] ** 2, axis=1)) + 1e-12)
  return {**q.summary(), "triggered_rms_dbfs_median": float(np.median(trigger_db)),
          "replaced_speech_rms_dbfs_median": float(np.median(speech_db))}


def run_cbw_protect_job(job: CbwProtectJob, workdir: str | os.PathLike,
                        runtime: workdir_lib.Runtime | None = None) -> dict[str, Any]:
  """Plans the watermark, writes the secret, publishes the protected dataset; the summary."""
  del runtime   # The stage reads no secret input.
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  if not job.output_root:
    raise ValueError(f"cbw protect: set {errors.option('output_root', owner='CbwProtectJob')} to "
                     "the folder that receives the protected dataset.")
  secret_path = workdir / SECRET_FILENAME
  done = workdir_lib.finished(job, workdir, PROTECT_SUMMARY, requires=(SECRET_FILENAME,))
  if done:
    return done
  fresh_workdir = not (workdir / workdir_lib.CONFIG_JSON).exists()
  if secret_path.exists() and fresh_workdir and not job.overwrite:   # Checked before recording.
    raise secrets.SecretFileError(
        f"{secret_path} exists but this workdir recorded no run; it may be another dataset's "
        f"secret. Move it away, or pass {errors.option('overwrite', True)}.")
  workdir_lib.record(job, workdir)
  timings: dict[str, float] = {}
  roots = [data_lib.input_root(job.data), job.output_root]
  with workdir_lib.timed("load", timings):
    splits = data_lib.load_speaker_splits(job.data, progress=job.progress)
  if secret_path.exists() and not fresh_workdir:
    wm = wm_lib.read_watermark(secret_path)   # An interrupted run of this config: reuse it.
  else:
    with workdir_lib.timed("embed", timings):
      emb = _embed(job.surrogate_workdir, splits)
    with workdir_lib.timed("plan", timings):
      wm = wm_lib.plan_watermark(job.key(), job.watermark, train=splits["train"],
                                 train_embeddings=emb["train"], test=splits["test"],
                                 test_embeddings=emb["test"])
    provenance = secrets.prng_provenance(job.key(), function="jaxtag.cbw.watermark."
                                         "plan_watermark", surrogate=str(job.surrogate_workdir))
    wm_lib.write_watermark(secret_path, wm, provenance=provenance, dataset_roots=roots,
                           overwrite=job.overwrite)
  train = splits["train"]
  with workdir_lib.timed("implant", timings):
    protected = wm_lib.watermark_waveforms(wm, train)
  with workdir_lib.timed("publish", timings):
    changed = {train.paths[i]: protected[i] for i in wm.triggered}
    published = data_lib.publish_changed(job.data, changed, job.output_root,
                                         owner=str(workdir.absolute()))
  with workdir_lib.timed("quality", timings):
    quality = _quality(train, protected, wm.triggered, job.perceptual)
  sizes = np.bincount(wm.train_cluster, minlength=wm.num_clusters)
  summary = {"secret_file": str(secret_path), "output_root": published["destination"],
             "train_speakers": len(wm.train_speakers), "train_utterances": len(train),
             "test_speakers": len(wm.test_speakers), "triggered": int(len(wm.triggered)),
             "triggered_fraction": float(len(wm.triggered) / len(train)),
             "num_clusters": wm.num_clusters, "cluster_sizes": sizes.tolist(),
             "trigger": dataclasses.asdict(wm.config.trigger), "quality": quality,
             "published": published, "seconds": {k: round(v, 2) for k, v in timings.items()}}
  workdir_lib.write_json(workdir / PROTECT_SUMMARY, summary)
  return summary


# --- verify ------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class CbwVerifyJob:
  """Query a suspect speaker verifier with the watermark's triggers and test it.

  Attributes:
    seed: unused by the queries (deterministic); ``verify.seed`` draws the permutations.
    data: the owner's dataset; its ``test`` speakers are enrolled.
    secret_file: the secret written by the protect stage.
    model_workdir: the suspect as a local trained workdir (a black box all the same), or
    url: the suspect's HTTP API (``jaxtag.serving``, task ``speaker``); exactly one of the two.
    mode: ``score`` (the verifier answers cosine scores) or ``decision`` (accept/reject only).
    threshold: decision mode with a local workdir: the acceptance threshold (0: the model's own
      EER threshold, as a deployed verifier would use).
    verify: how to query and test.
    progress: progress bars.
  """

  seed: int = 0
  data: data_lib.SpeakerSource = dataclasses.field(default_factory=data_lib.SpeakerSource)
  secret_file: str = ""
  model_workdir: str = ""
  url: str = ""
  mode: str = "score"
  threshold: float = 0.0
  verify: verify_lib.VerifyConfig = verify_lib.VerifyConfig()
  progress: bool = False

  def __post_init__(self):
    if self.mode not in verify_lib.MODES:
      raise ValueError(f"{errors.option('mode', owner='CbwVerifyJob')} must be one of "
                       f"{verify_lib.MODES}; got {self.mode!r}.")


def black_box(job: CbwVerifyJob) -> tuple[Any, dict[str, Any]]:
  """The suspect as a ``SpeakerBlackBox`` (local workdir or HTTP API), and the record of its
  decision threshold: the value where it is known (a local model: ``job.threshold`` or the EER
  threshold recorded at training), None for a server, which never discloses it."""
  from jaxtag.speaker import blackbox
  if bool(job.model_workdir) == bool(job.url):
    raise ValueError(f"cbw verify: set exactly one of {errors.option('model_workdir')} and "
                     f"{errors.option('url')}.")
  if job.url:
    box = blackbox.HttpSpeakerBlackBox(job.url)
    if box.mode != job.mode:
      raise ValueError(f"{job.url} answers in {box.mode!r} mode; the job asks {job.mode!r}.")
    source = "the server's own (not disclosed)" if job.mode == "decision" else None
    return box, {"threshold": None, "threshold_source": source}
  from jaxtag.speaker import embedder as embedder_lib
  embedder = embedder_lib.load_embedder(job.model_workdir)
  box = blackbox.LocalSpeakerBlackBox(embedder, mode=job.mode, threshold=job.threshold or None)
  if job.mode == "score":
    return box, {"threshold": None, "threshold_source": None}
  source = "CbwVerifyJob.threshold" if job.threshold else "the model's EER threshold (training)"
  return box, {"threshold": float(job.threshold or embedder.threshold),
               "threshold_source": source}


def run_cbw_verify_job(job: CbwVerifyJob, workdir: str | os.PathLike,
                       runtime: workdir_lib.Runtime | None = None) -> dict[str, Any]:
  """Verifies the suspect; writes ``cbw_verify.json``, ``cbw_verify.txt`` and the plot."""
  runtime = runtime or workdir_lib.Runtime()
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  done = workdir_lib.finished(job, workdir, VERIFY_SUMMARY)
  if done:
    return done
  workdir_lib.record(job, workdir)
  if not job.secret_file:
    raise ValueError(f"cbw verify: set {errors.option('secret_file', owner='CbwVerifyJob')}.")
  runtime.check_secret_input(job.secret_file, what="CBW secret file")
  start = time.perf_counter()
  wm = wm_lib.read_watermark(job.secret_file)
  test = data_lib.load_speaker_splits(job.data, progress=job.progress)["test"]
  if tuple(test.class_names) != wm.test_speakers:
    raise DatasetError(
        f"the CBW secret {job.secret_file} does not match {job.data.root or 'the corpus'}: it "
        f"was made for {len(wm.test_speakers)} held-out speakers "
        f"({', '.join(wm.test_speakers[:3])}...), the data has {len(test.class_names)} "
        f"({', '.join(test.class_names[:3])}...). Use the secret made for this dataset.")
  box, threshold = black_box(job)
  result = verify_lib.verify(box, wm, test, job.verify, progress=job.progress)
  result.update(threshold, suspect=job.url or str(job.model_workdir))
  result["seconds"] = round(time.perf_counter() - start, 2)
  report_lib.write_verify_report(workdir, result)
  workdir_lib.write_json(workdir / VERIFY_SUMMARY, result)
  return result
