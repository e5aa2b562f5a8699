r"""Verify a suspect speaker verifier against a CBW secret, in score or decision mode.

  .venv/bin/python -m launch.cbw_verify --config=launch/configs/cbw_verify.py:decision \
      --workdir=workdirs/cbw_verify --config.secret_file=workdirs/cbw_protect/cbw_secret.npz \
      --config.model_workdir=workdirs/cbw_demo/suspect        # or --config.url=http://host:port

The argument is the mode (`score` or `decision`, default `score`). `data` must be the dataset the
secret was made for: its held-out speakers are enrolled.
"""

import ml_collections

from launch.configs import common


def get_config(arg: str = "score") -> ml_collections.ConfigDict:
  """Every field of jaxtag.cbw.jobs.CbwVerifyJob (defaults and meaning there)."""
  from jaxtag.cbw import jobs

  config = common.to_config(jobs.CbwVerifyJob)
  config.mode = arg or "score"
  return config
