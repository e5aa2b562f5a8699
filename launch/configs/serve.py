r"""Serve a trained workdir over HTTP like a commercial API (top-k labels only).

  .venv/bin/python -m launch.serve --config=launch/configs/serve.py \
      --config.model_workdir=workdirs/suspect --config.port=8080

Then `curl -s http://127.0.0.1:8080/v1/info` and
`curl -s -H 'Content-Type: audio/wav' --data-binary @clip.wav \
    'http://127.0.0.1:8080/v1/classify?k=5'`.
Verification reaches it with `jaxtag.taggants.blackbox.open_blackbox("http://127.0.0.1:8080")`.
Ctrl-C or SIGTERM stops it: it stops accepting and gives requests in flight at most
`drain_timeout` seconds. No --workdir: serving writes nothing.
"""

import ml_collections

from launch.configs import common



def get_config(arg: str = "") -> ml_collections.ConfigDict:
  """Every field of jaxtag.serving.job.ServeJob (defaults and meaning there)."""
  del arg  # No variants.
  from jaxtag.serving import job
  return common.to_config(job.ServeJob)
