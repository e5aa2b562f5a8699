r"""Serve a trained workdir over HTTP like a commercial API: a classifier's top-k labels only
(default), or a speaker-verification model's scores or decisions only (`:speaker`).

  .venv/bin/python -m launch.serve --config=launch/configs/serve.py \
      --config.model_workdir=workdirs/suspect --config.port=8080

Then `curl -s http://127.0.0.1:8080/v1/info` and
`curl -s -H 'Content-Type: audio/wav' --data-binary @clip.wav \
    'http://127.0.0.1:8080/v1/classify?k=5'`.
Verification reaches it with `jaxtag.taggants.blackbox.open_blackbox("http://127.0.0.1:8080")`.

A speaker model (`POST /v1/speaker/verify`, JSON of base64 WAVs; decision mode answers
accept/reject only, at the model's recorded EER threshold unless --config.speaker_threshold):

  .venv/bin/python -m launch.serve --config=launch/configs/serve.py:speaker \
      --config.model_workdir=workdirs/speaker --config.speaker_mode=decision

reached with `jaxtag.speaker.blackbox.HttpSpeakerBlackBox("http://127.0.0.1:8080")`.
Ctrl-C or SIGTERM stops it: it stops accepting and gives requests in flight at most
`drain_timeout` seconds. No --workdir: serving writes nothing.
"""

import ml_collections

from launch.configs import common

# A speaker request carries its enrolment and queries as base64 WAVs (a 3 s clip at 16 kHz is
# about 128 KB): room for a full enrolment and a few dozen queries.
SPEAKER_MAX_REQUEST_BYTES = 32 * 1024 * 1024


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  """Every field of jaxtag.serving.job.ServeJob (defaults and meaning there); ``arg``:
  ``""``/``classify`` (a classifier) or ``speaker`` (speaker verification, score mode)."""
  from jaxtag.serving import job
  if arg in ("", "classify"):
    return common.to_config(job.ServeJob)
  if arg == "speaker":
    return common.to_config(job.ServeJob, task="speaker", model_workdir="workdirs/speaker",
                            max_request_bytes=SPEAKER_MAX_REQUEST_BYTES)
  raise ValueError(f"launch/configs/serve.py: unknown preset {arg!r}; use 'classify' or "
                   "'speaker' (--config=launch/configs/serve.py:speaker).")
