r"""Verify a suspect (training workdir or http:// URL) against the secret key file.

  .venv/bin/python -m launch.verify --config=launch/configs/verify.py \
      --config.target=workdirs/suspect --config.key_file=workdirs/keys/keys.npz \
      --workdir=workdirs/verify

Fix `decision_k` and `alpha` BEFORE looking at the suspect: the decision uses them only; the other
k up to `max_k` are reported as description. A served model:
`--config.target=http://127.0.0.1:8080`.
"""

import ml_collections


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  del arg  # No variants.
  config = ml_collections.ConfigDict()
  config.seed = 0                              # unused (verification draws nothing); uniformity
  config.target = "workdirs/suspect"           # training workdir or http(s):// server URL
  config.key_file = "workdirs/keys/keys.npz"   # from launch/make_keys.py
  config.max_k = 10                            # labels read per answer (capped at the classes)
  config.decision_k = 1                        # the predeclared k of the decision
  config.alpha = 1e-3                          # reject "not trained on the taggants" if p <= alpha
  return config
