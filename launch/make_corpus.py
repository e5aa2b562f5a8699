r"""Stage: make sure the dataset is on disk (synthesising the embedded corpus if needed).

  .venv/bin/python -m launch.make_corpus --config=launch/configs/corpus.py:default \
      --workdir=workdirs/corpus

Writes `<workdir>/data.json` with the dataset root and a summary of every split. The corpus is
built in a temporary folder and moved into place (`jaxtag.data.corpus.synthesize_corpus`), so an
interrupted synthesis starts over; a re-run with the same config reuses `data.json` while the
dataset is still there. The library entry point: `jaxtag.data.job.run_corpus_job`.
"""

from launch import app


def main(job, workdir):
  from jaxtag.data import job as data_job
  summary = data_job.run_corpus_job(job, workdir)
  print(f"dataset root: {summary['root']}")
  for split, info in summary["splits"].items():
    print(f"  {split:>10}: {info}")


if __name__ == "__main__":
  from jaxtag.data.job import CorpusJob
  app.run(main, job=CorpusJob)
