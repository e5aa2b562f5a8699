r"""Stage: verify a suspect model (workdir or HTTP endpoint) against the secret key file.

  .venv/bin/python -m launch.verify --config=launch/configs/verify.py \
      --config.target=workdirs/suspect --config.key_file=workdirs/keys/keys.npz \
      --workdir=workdirs/verify

Queries the black box once with every key and writes `<workdir>/verify_report.json`,
`verify_report.txt` and `verify_report.png`, then `verify_summary.json`; prints the text report.
The workdir is owner-only (0700) and so is every report (0600): they name the keys' labels. A key
file that others can read is refused (`--allow_readable_secrets` accepts it).
A re-run with the same config reuses the finished verification (the black box is not queried
again; use a new workdir to verify anew). The library entry point:
`jaxtag.taggants.jobs.run_verify_job`.
"""

from launch import app


def main(job, workdir):
  from jaxtag.taggants import jobs
  summary = jobs.run_verify_job(job, workdir, runtime=app.runtime())
  print(summary["text"], end="")
  print(f"report: {summary['report']['txt']} (json, png beside it)")


if __name__ == "__main__":
  from jaxtag.taggants.jobs import VerifyJob
  app.run(main, job=VerifyJob)
