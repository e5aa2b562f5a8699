"""The train stage: a dataset source trained into a workdir, resumable, with its summary.

    job = TrainJob(model="cnn", num_epochs=5, data=DataSource(kind="corpus", preset="tiny"))
    summary = run_train_job(job, "workdirs/surrogate")

``launch/train.py`` is a thin main over :func:`run_train_job`; the demo and the calibration call
it too. ``TrainJob`` is a :class:`~jaxtag.train.loop.TrainConfig` plus what a run
needs beyond the recipe (the root seed, the data source, the devices), so the launcher's config is
generated from it (:mod:`jaxtag.config`) and the recipe is passed to the loop as it is.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any

import jax

from jaxtag import config as config_lib
from jaxtag import workdir as workdir_lib
from jaxtag.data import sources
from jaxtag.train.loop import TrainConfig, train

SUMMARY = "train_summary.json"   # written after final/ and model.json: the run finished
# Where the library's dataclasses sit in a TrainJob config, so that their messages name the
# launcher's flags (jaxtag.errors.launcher_flags).
FLAG_OWNERS = {"TrainConfig": "", "OptimConfig": "optim", "AugmentConfig": "augment"}


@dataclasses.dataclass(frozen=True)
class TrainJob(TrainConfig):
  """A training run: the recipe (every :class:`TrainConfig` field) and where it runs.

  Attributes:
    seed: the run's root PRNG key is ``jax.random.key(seed)`` (the only int seed of a run).
    data: the dataset source (:class:`jaxtag.data.sources.DataSource`).
    num_devices: devices of the data-parallel mesh; 0: every device (all hosts).
    progress: show progress bars (cosmetic: not compared on a re-run).
  """

  seed: int = 0
  data: sources.DataSource = dataclasses.field(default_factory=sources.DataSource)
  num_devices: int = 0
  progress: bool = True

  @property
  def recipe(self) -> TrainConfig:
    """The training recipe alone (what ``train`` and ``model.json`` see)."""
    return config_lib.narrow(self, TrainConfig)

  def key(self) -> jax.Array:
    """The run's root PRNG key."""
    return jax.random.key(int(self.seed))


def finished_summary(job: TrainJob, workdir: str | os.PathLike) -> dict[str, Any] | None:
  """The stored summary of a finished run of ``job`` in ``workdir`` (``reused=True``), or None
  when it has to train (or resume)."""
  return workdir_lib.finished(job, workdir, SUMMARY, requires=("final", "model.json"))


def run_train_job(job: TrainJob, workdir: str | os.PathLike, *,
                  runtime: workdir_lib.Runtime = workdir_lib.Runtime()) -> dict[str, Any]:
  """Trains (or resumes) ``job`` into ``workdir`` and returns its summary.

  The job is recorded in ``workdir/config.json`` first (another job on the same workdir is
  refused); a finished run of the same job is reused (``reused`` in the summary).

  Args:
    job: the run.
    workdir: its folder (checkpoints, ``final/``, ``model.json``, ``metrics.jsonl``).
    runtime: how it runs (the transfer guard of the hot loop).

  Returns:
    The summary (also written to ``train_summary.json``, last).
  """
  from jaxtag import sharding

  workdir = pathlib.Path(workdir)
  workdir_lib.record(job, workdir)
  done = finished_summary(job, workdir)
  if done is not None:
    return done
  splits = sources.load_splits(job.data, progress=job.progress)   # ESC-50: no validation
  mesh = sharding.make_mesh(job.num_devices or None)
  result = train(
      job.recipe, train_data=splits["train"], validation_data=splits.get("validation"),
      test_data=splits.get("test"), key=job.key(), workdir=workdir, mesh=mesh,
      progress=job.progress, transfer_guard=runtime.transfer_guard)
  summary = {
      "workdir": str(workdir), "model": job.model,
      "steps": int(jax.device_get(result.state.step)),
      "resumed_from": result.start_step, "train_seconds": round(result.train_seconds, 2),
      "steps_per_s": round(result.steps_run / max(result.train_seconds, 1e-9), 3),
      "num_devices": mesh.size, **{k: round(v, 6) for k, v in result.metrics.items()},
      "splits": sources.describe_splits(splits),
  }
  workdir_lib.write_json(workdir / SUMMARY, summary)
  return {**summary, "reused": False}
