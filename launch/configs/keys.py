r"""Draw the secret taggant keys for a dataset and write the key file (outside the dataset).

  .venv/bin/python -m launch.make_keys --config=launch/configs/keys.py \
      --workdir=workdirs/keys

Override fields on the command line, e.g. `--config.key_spec.d=128 --config.data.kind=speech_commands
--config.data.root=/data/speech_commands_v0.02`. The argument is the corpus preset (default).
"""

import ml_collections

from launch.configs import common


def get_config(arg: str = "default") -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.data = common.data_config("corpus", preset=arg or "default")
  config.key_spec = common.keys_config_for(arg or "default")
  config.export_wav = True  # also write each key as 16-bit WAV for listening
  return config
