r"""Stage: draw the secret taggant keys for a dataset's classes and write the key file.

  .venv/bin/python -m launch.make_keys --config=launch/configs/keys.py --workdir=workdirs/keys

The key file (`<workdir>/keys.npz`, owner-only permissions, SHA-256 manifest) must stay secret and
is refused inside the dataset folder; `<workdir>/keys_wav/` holds the keys as WAV for listening.
A re-run reuses the key file, untouched, when its manifest records this run's spec, seed and
classes, and refuses it otherwise: a key file is never overwritten.
The library entry point: `jaxtag.taggants.jobs.run_keys_job`.
"""

from launch import app


def main(job, workdir):
  from jaxtag.taggants import jobs
  summary = jobs.run_keys_job(job, workdir, runtime=app.runtime())
  print(f"key file: {summary['key_file']} ({summary['num_keys']} keys"
        f"{', reused: made by an earlier run' if summary['reused'] else ''})")
  print(f"key labels: {', '.join(summary['labels'])}")


if __name__ == "__main__":
  from jaxtag.taggants.jobs import KeysJob
  app.run(main, job=KeysJob)
