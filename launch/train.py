r"""Stage: train a classifier on a dataset into a workdir (resumes automatically).

  .venv/bin/python -m launch.train --config=launch/configs/train.py:surrogate \
      --workdir=workdirs/surrogate

Writes `<workdir>/checkpoints/`, `final/` (inference weights), `model.json` and
`metrics.jsonl`; `jaxtag.train.restore_for_inference(workdir)` loads the model back.
`train_summary.json` comes last: a re-run with the same config returns it instead of training or
evaluating again; an interrupted run resumes from its latest checkpoint; another config on the
same workdir is refused. The library entry point: `jaxtag.train.job.run_train_job`.
"""

from launch import app


def main(job, workdir):
  from jaxtag.train import job as train_job
  app.print_summary(train_job.run_train_job(job, workdir, runtime=app.runtime()))


if __name__ == "__main__":
  from jaxtag.train.job import FLAG_OWNERS, TrainJob
  app.run(main, job=TrainJob, owners=FLAG_OWNERS)
