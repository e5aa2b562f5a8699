r"""Stage: evaluate PosCUDA as in the paper's Table 1, plus quality and an attacker check.

  nice -n 15 .venv/bin/python -m launch.poscuda_eval --config=launch/configs/poscuda_eval.py \
      --workdir=workdirs/poscuda_eval

For every model (M5 on raw audio, LSTM on MFCC, Transformer on log-mel) and every training set
(clean, and each protected variant), trains into `<workdir>/runs/<model>/<variant>/` and tests on
the clean test split and on the test split with the variant's class filters applied. Quality:
SNR of the protected train clips and the Fréchet distance between embeddings of clean and
protected clips, taken from each clean-trained model. Attacker: random blurs or noise at random
positions on a protected train set, then the model is retrained. Writes `poscuda_eval.json`,
`poscuda_eval.txt` and `poscuda_eval.png` (the tables as bars), atomically, the JSON last; a rerun
reuses finished runs, and a rerun of a finished evaluation with the same config (recorded in
`<workdir>/config.json`) returns its report without recomputing anything.
The library entry point: `jaxtag.poscuda.jobs.run_eval_job` (steps in `jaxtag.poscuda.evaluate`,
tables and plot in `jaxtag.poscuda.report`).
"""

from launch import app


def main(job, workdir):
  from jaxtag.poscuda import jobs, report
  print(report.format_report(jobs.run_eval_job(job, workdir, runtime=app.runtime())), end="")


if __name__ == "__main__":
  from jaxtag.poscuda.jobs import FLAG_OWNERS, EvalJob
  app.run(main, job=EvalJob, owners=FLAG_OWNERS)
