r"""Stage: train a classifier on a dataset into a workdir (resumes automatically).

  .venv/bin/python -m launch.train --config=launch/configs/train.py:surrogate \
      --workdir=workdirs/surrogate

Writes `<workdir>/checkpoints/`, `final/` (inference weights), `model.json` and
`metrics.jsonl`; `jaxtag.train.restore_for_inference(workdir)` loads the model back.
`train_summary.json` comes last: a re-run with the same config returns it instead of training or
evaluating again; an interrupted run resumes from its latest checkpoint; another config on the
same workdir is refused.
"""

from __future__ import annotations

import pathlib
from typing import Any

from launch import app


def train_config(config: Any):
  """The library's typed TrainConfig from the launcher's ConfigDict."""
  from jaxtag import train

  augment = config.augment.to_dict()
  if augment.get("noise_snr_db") is not None:
    augment["noise_snr_db"] = tuple(augment["noise_snr_db"])
  return train.TrainConfig(
      model=config.model, model_overrides=app.plain(config.model_overrides.to_dict()),
      num_epochs=config.num_epochs, batch_size=config.batch_size,
      eval_batch_size=config.eval_batch_size, optim=train.OptimConfig(**config.optim.to_dict()),
      augment=train.AugmentConfig(**augment), label_smoothing=config.label_smoothing,
      log_every_steps=config.log_every_steps,
      checkpoint_every_steps=config.checkpoint_every_steps, max_to_keep=config.max_to_keep,
      eval_every_epochs=config.eval_every_epochs, init_from=config.get("init_from") or None,
      distill_from=config.get("distill_from") or None,
      distill_weight=config.get("distill_weight", 0.5),
      distill_temperature=config.get("distill_temperature", 1.0))


SUMMARY = "train_summary.json"   # written after final/ and model.json: the run finished


def finished_summary(config: Any, workdir: pathlib.Path) -> dict[str, Any] | None:
  """The stored summary of a finished run of ``config`` in ``workdir`` (``reused=True``), or
  None when it has to train (or resume)."""
  return app.finished(config, workdir, SUMMARY, requires=("final", "model.json"))


def run_stage(config: Any, workdir: pathlib.Path) -> dict[str, Any]:
  """Loads the splits, trains (or resumes) into ``workdir``; returns a summary. A finished run
  of the same config is reused (``reused`` in the summary)."""
  import jax

  done = finished_summary(config, workdir)
  if done is not None:
    return done

  from jaxtag import sharding, train
  from jaxtag.data import sources

  source = sources.DataSource(**config.data.to_dict())
  splits = sources.load_splits(source, progress=config.progress)   # ESC-50: no validation
  mesh = sharding.make_mesh(config.num_devices or None)
  result = train.train(
      train_config(config), train_data=splits["train"], validation_data=splits.get("validation"),
      test_data=splits.get("test"), key=app.root_key(config), workdir=workdir, mesh=mesh,
      progress=config.progress, transfer_guard=app.transfer_guard_level())
  summary = {
      "workdir": str(workdir), "model": config.model, "steps": int(jax.device_get(result.state.step)),
      "resumed_from": result.start_step, "train_seconds": round(result.train_seconds, 2),
      "steps_per_s": round(result.steps_run / max(result.train_seconds, 1e-9), 3),
      "num_devices": mesh.size, **{k: round(v, 6) for k, v in result.metrics.items()},
      "splits": sources.describe_splits(splits),
  }
  app.write_json(workdir / SUMMARY, summary)
  return {**summary, "reused": False}


def main(config, workdir):
  summary = run_stage(config, workdir)
  for key, value in summary.items():
    print(f"{key}: {value}")


# Where the library's dataclasses sit in this launcher's config, so that their messages name flags.
OWNERS = {"TrainConfig": "", "OptimConfig": "optim", "AugmentConfig": "augment"}

if __name__ == "__main__":
  app.run(main, owners=OWNERS)
