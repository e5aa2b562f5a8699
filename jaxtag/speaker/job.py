"""The speaker-train stage: a speaker dataset trained with GE2E into a workdir, with its summary.

    job = SpeakerTrainJob(steps=300, data=SpeakerSource(kind="speaker_folders", root="speakers"))
    summary = run_speaker_train_job(job, "workdirs/speaker")
    embedder = jaxtag.speaker.load_embedder("workdirs/speaker")

The summary (``speaker_train_summary.json``, written last) holds the equal error rate of the
trained model on the test split's speakers (never seen in training) and the cosine threshold
at that point, which ``load_embedder`` hands on as ``SpeakerEmbedder.threshold``.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any

import jax

from jaxtag import config as config_lib
from jaxtag import workdir as workdir_lib
from jaxtag.data.dataset import AudioDataset
from jaxtag.speaker import metrics
from jaxtag.speaker.data import SpeakerSource, load_speaker_splits
from jaxtag.speaker.embedder import SUMMARY, SpeakerEmbedder
from jaxtag.speaker.train import (FINAL_DIR, MODEL_JSON, SpeakerTrainConfig,
                                  train_speaker_model)

# Where the library's dataclasses sit in a SpeakerTrainJob config (messages name the flags).
FLAG_OWNERS = {"SpeakerTrainJob": "", "SpeakerTrainConfig": "", "SpeakerModelConfig": "model"}


@dataclasses.dataclass(frozen=True)
class SpeakerTrainJob(SpeakerTrainConfig):
  """A GE2E training run: the recipe (every :class:`SpeakerTrainConfig` field) and where it runs.

  Attributes:
    seed: the run's root key is ``jax.random.key(seed)``.
    data: the speaker dataset (``jaxtag.speaker.data``: the embedded corpus by default, a Speech
      Commands layout or ``<root>/<speaker>/<utterance>.wav``); its test speakers are unseen in
      training and give the EER.
    num_devices: devices of the data-parallel mesh; 0: every device.
    progress: show a progress bar (cosmetic).
  """

  seed: int = 0
  data: SpeakerSource = dataclasses.field(default_factory=SpeakerSource)
  num_devices: int = 0
  progress: bool = True

  @property
  def recipe(self) -> SpeakerTrainConfig:
    """The recipe alone."""
    return config_lib.narrow(self, SpeakerTrainConfig)

  def key(self) -> jax.Array:
    """The run's root PRNG key."""
    return jax.random.key(int(self.seed))


def load_splits(job: SpeakerTrainJob) -> dict[str, AudioDataset]:
  """The ``train`` and ``test`` speaker splits of ``job.data``."""
  return load_speaker_splits(job.data, progress=job.progress)


def _check_splits(splits: dict[str, AudioDataset]) -> None:
  missing = {"train", "test"} - set(splits)
  if missing:
    raise ValueError(f"run_speaker_train_job needs splits 'train' and 'test'; missing "
                     f"{sorted(missing)}.")
  shared = set(splits["train"].class_names[i] for i in set(splits["train"].labels.tolist())) & set(
      splits["test"].class_names[i] for i in set(splits["test"].labels.tolist()))
  if shared:
    raise ValueError(f"the test split shares {len(shared)} speakers with the train split (e.g. "
                     f"{sorted(shared)[:3]}); test speakers must be unseen.")


def evaluate_speakers(embedder: SpeakerEmbedder, data: AudioDataset, *,
                      num_enrol: int) -> dict[str, float]:
  """EER, threshold and trial counts of ``embedder`` on ``data``'s speakers
  (``jaxtag.speaker.metrics.verification_eer``)."""
  return metrics.verification_eer(embedder.embed(data.waveforms), data.labels,
                                  num_enrol=num_enrol)


def run_speaker_train_job(job: SpeakerTrainJob, workdir: str | os.PathLike,
                          runtime: workdir_lib.Runtime | None = None, *,
                          splits: dict[str, AudioDataset] | None = None) -> dict[str, Any]:
  """Trains (or resumes) ``job`` into ``workdir``, evaluates it on the test speakers and returns
  the summary.

  The job is recorded in ``config.json`` first (another job on the same workdir is refused); a
  finished run of the same job is reused (``reused: true``).

  Args:
    job: the run.
    workdir: its folder.
    runtime: how it runs (unused: the stage reads no secret).
    splits: ``{"train", "test"}`` speaker datasets already loaded from ``job.data`` (the caller
      vouches for that; the demo loads once); default: loaded here.

  Returns:
    The summary (also written to ``speaker_train_summary.json``, last).
  """
  del runtime
  from jaxtag import sharding
  workdir = pathlib.Path(workdir)
  workdir_lib.record(job, workdir)
  done = workdir_lib.finished(job, workdir, SUMMARY, requires=(FINAL_DIR, MODEL_JSON))
  if done is not None:
    return done
  splits = load_splits(job) if splits is None else splits
  _check_splits(splits)
  mesh = sharding.make_mesh(job.num_devices or None)
  result = train_speaker_model(job.recipe, splits["train"], key=job.key(), workdir=workdir,
                               mesh=mesh, progress=job.progress)
  embedder = SpeakerEmbedder(job.model, result.state.params,
                             clip_samples=splits["train"].num_samples,
                             batch_size=job.eval_batch_size)
  test = evaluate_speakers(embedder, splits["test"], num_enrol=job.enrol_utterances)
  summary = {
      "workdir": str(workdir), "model": dataclasses.asdict(job.model), "steps": job.steps,
      "resumed_from": result.start_step, "train_seconds": round(result.train_seconds, 2),
      "steps_per_s": round(result.steps_run / max(result.train_seconds, 1e-9), 3),
      "num_devices": mesh.size, "test": test,
      "speakers": {name: int(len(set(d.labels.tolist()))) for name, d in splits.items()},
  }
  workdir_lib.write_json(workdir / SUMMARY, summary)
  return {**summary, "reused": False}
