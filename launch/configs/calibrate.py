r"""Measure verification's false-positive rate on benign models trained on clean data.

  .venv/bin/python -m launch.calibrate --config=launch/configs/calibrate.py \
      --config.key_file=workdirs/keys/keys.npz --workdir=workdirs/calibrate

Each model trains `config.train` (the suspect recipe with the CNN, on the clean corpus) with seed
`first_seed + i`. `launch/configs/calibrate.py:tiny` uses the tiny corpus and the tiny CNN recipe
(tests and smoke runs). Override the recipe with e.g. `--config.train.num_epochs=8`.
"""

import ml_collections

from launch.configs import train as train_configs


def get_config(arg: str = "default") -> ml_collections.ConfigDict:
  if (arg or "default") not in ("default", "tiny"):
    raise ValueError(f"launch/configs/calibrate.py: unknown argument {arg!r}; use default or tiny.")
  config = ml_collections.ConfigDict()
  config.seed = 0                              # unused: model i trains with first_seed + i
  config.num_models = 10
  config.first_seed = 100                      # away from the surrogate's 0 and the suspect's 1
  config.key_file = "workdirs/keys/keys.npz"
  config.max_k = 10
  config.decision_k = 1
  config.alpha = 1e-3
  config.train = train_configs.get_config("tiny" if arg == "tiny" else "suspect,cnn")
  if arg == "tiny":
    config.num_models = 2
  return config
