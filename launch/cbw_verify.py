r"""Stage: test whether a black-box speaker verifier was trained on a CBW-protected dataset.

  .venv/bin/python -m launch.cbw_verify --config=launch/configs/cbw_verify.py:decision \
      --workdir=workdirs/cbw_verify --config.secret_file=workdirs/cbw_protect/cbw_secret.npz \
      --config.model_workdir=workdirs/cbw_demo/suspect

Enrols the owner's held-out speakers and queries the secret's triggers: in `score` mode the
verifier answers cosine scores (one-sided paired t-test over clusters that each cluster's own
trigger scores higher than the others, by `verify.margin`), in `decision` mode accept/reject at
its threshold (one-sided Fisher exact test on acceptance rates); an exact permutation test over
trigger-cluster assignments is reported beside either. `--config.url=http://host:port` queries a
`launch.serve` speaker server instead of a local workdir. Writes `cbw_verify.json`, `.txt` and
`.png` into the workdir. The library entry point: `jaxtag.cbw.jobs.run_cbw_verify_job`.
"""

from launch import app


def main(job, workdir):
  from jaxtag.cbw import jobs, report
  result = jobs.run_cbw_verify_job(job, workdir, runtime=app.runtime())
  print(report.verify_text(result), end="")


if __name__ == "__main__":
  from jaxtag.cbw.jobs import FLAG_OWNERS, CbwVerifyJob
  app.run(main, job=CbwVerifyJob, owners=FLAG_OWNERS)
