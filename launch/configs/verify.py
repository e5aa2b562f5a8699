r"""Verify a suspect (training workdir or http:// URL) against the secret key file.

  .venv/bin/python -m launch.verify --config=launch/configs/verify.py \
      --config.target=workdirs/suspect --config.key_file=workdirs/keys/keys.npz \
      --workdir=workdirs/verify

Fix `decision_k` and `alpha` BEFORE looking at the suspect: the decision uses them only; the other
k up to `max_k` are reported as description. A served model:
`--config.target=http://127.0.0.1:8080`.
"""

import ml_collections

from launch.configs import common



def get_config(arg: str = "") -> ml_collections.ConfigDict:
  """Every field of jaxtag.taggants.jobs.VerifyJob (defaults and meaning there)."""
  del arg  # No variants.
  from jaxtag.taggants import jobs
  return common.to_config(jobs.VerifyJob)
