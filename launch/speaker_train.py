r"""Stage: train a speaker-embedding model with the GE2E loss into a workdir (resumes).

  .venv/bin/python -m launch.speaker_train --config=launch/configs/speaker_train.py \
      --workdir=workdirs/speaker   # or --config.data.kind=speaker_folders --config.data.root=DIR

Writes `<workdir>/checkpoints/`, `final/` (the network's weights), `speaker_model.json` and
`metrics.jsonl`; `jaxtag.speaker.load_embedder(workdir)` loads the embedder back.
`speaker_train_summary.json` comes last (the EER and threshold on the unseen test speakers): a
re-run with the same config returns it; an interrupted run resumes from its latest checkpoint;
another config on the same workdir is refused. The library entry point:
`jaxtag.speaker.job.run_speaker_train_job`.
"""

from launch import app


def main(job, workdir):
  from jaxtag.speaker import job as speaker_job
  app.print_summary(speaker_job.run_speaker_train_job(job, workdir, runtime=app.runtime()))


if __name__ == "__main__":
  from jaxtag.speaker.job import FLAG_OWNERS, SpeakerTrainJob
  app.run(main, job=SpeakerTrainJob, owners=FLAG_OWNERS)
