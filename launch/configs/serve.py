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


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  del arg  # No variants.
  config = ml_collections.ConfigDict()
  config.seed = 0                       # unused (inference is deterministic); kept for uniformity
  config.model_workdir = "workdirs/suspect"  # a finished launch/train.py workdir
  config.host = "127.0.0.1"             # 0.0.0.0 exposes the API to the network
  config.port = 8080                    # 0: any free port (the URL is printed)
  config.max_request_bytes = 2 * 1024 * 1024
  config.max_seconds = 0.0              # longest clip (413 above); 0: max(10 s, model clip)
  config.max_k = 0                      # 0: every class
  config.default_k = 5                  # k when a request gives none
  config.on_rate_mismatch = "reject"    # reject | resample
  config.on_stereo = "reject"           # reject | mean
  config.request_timeout = 30.0         # deadline for a whole request (headers + body); then 408
  config.max_concurrent_requests = 32   # requests in flight; past it, 503 with Retry-After
  config.backlog = 1024                 # listen backlog for bursts (capped by net.core.somaxconn)
  config.drain_timeout = 10.0           # on Ctrl-C/SIGTERM, seconds requests in flight may take
  return config
