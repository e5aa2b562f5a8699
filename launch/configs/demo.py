r"""The README's main command: every pipeline stage on the embedded corpus.

  make demo
  # = .venv/bin/python -m launch.demo --config=launch/configs/demo.py --workdir=workdirs/demo

The argument picks the corpus preset: `launch/configs/demo.py:tiny` for a quick smoke run.
"""

import ml_collections

from launch.configs import common


def get_config(arg: str = "default") -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.data = common.data_config("corpus", preset=arg or "default")
  config.key_spec = common.keys_config()
  config.export_wav = True
  return config
