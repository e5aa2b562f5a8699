r"""Draw the secret taggant keys for a dataset and write the key file (outside the dataset).

  .venv/bin/python -m launch.make_keys --config=launch/configs/keys.py \
      --workdir=workdirs/keys

Override fields on the command line, e.g. `--config.key_spec.d=128 --config.data.kind=speech_commands
--config.data.root=/data/speech_commands_v0.02`. The argument is the corpus preset (default).
"""

import ml_collections

from launch.configs import common


def get_config(arg: str = "default") -> ml_collections.ConfigDict:
  """Every field of jaxtag.taggants.jobs.KeysJob; ``arg`` is the corpus preset."""
  from jaxtag.taggants import jobs
  config = common.to_config(jobs.KeysJob)
  config.data.preset = arg or "default"
  config.key_spec = common.keys_config_for(arg or "default")
  return config
