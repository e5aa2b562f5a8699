r"""Measure verification's false-positive rate: benign models against fresh key draws.

  .venv/bin/python -m launch.calibrate --config=launch/configs/calibrate.py:small \
      --workdir=workdirs/calibrate

Each model trains `config.train` (the suspect recipe with the CNN, on the clean corpus) with seed
`first_seed + i`; then `config.calibration.num_key_draws` fresh key sets (new audio, new labels:
`make_keys(fold_in(stream("calibration"), d), key_spec, C)`, never the owner's key file) are
verified against every model. Arguments: `default` (the corpus, 10 keys as `launch/configs/keys.py`
makes them, 1,000 draws), `small` (the small corpus of 10 words, the surrogate's CNN recipe, 10 keys
with cheaper rendering, 1,000 draws: minutes on a 2-core CPU), `demo` (the demo's benign control
exactly: `launch/configs/demo.py`'s benign recipe fine-tuned from the demo's public backbone, seeds
1, 2, 3 as the demo (map seeds 0, 1, 2) trains them, with the demo's sparse keys; give the
backbone: `--config.train.init_from=workdirs/demo/backbone`) and `tiny` (the tiny corpus of 4
words, the tiny CNN recipe, 8 keys (two label blocks), 2 models and 40 draws: tests). Override e.g. `--config.calibration.num_key_draws=2000`.
"""

import ml_collections

from launch.configs import common
from launch.configs import train as train_configs


def get_config(arg: str = "default") -> ml_collections.ConfigDict:
  """Every field of jaxtag.taggants.jobs.CalibrateJob, set for the preset ``arg``."""
  from jaxtag.taggants import jobs

  arg = arg or "default"
  if arg not in ("default", "small", "demo", "tiny"):
    raise ValueError(f"launch/configs/calibrate.py: unknown argument {arg!r}; use default, small, "
                     "demo or tiny.")
  config = common.to_config(jobs.CalibrateJob)
  config.key_spec = common.keys_config_for("default")
  config.train = train_configs.get_config("suspect,cnn")
  if arg == "small":
    # The CNN recipe of the surrogate on the small corpus (10 words): benign models whose answers
    # vary with the key. Keys as the owner makes them (K = 10 = C: one label permutation), with
    # cheaper rendering: the test's validity rests on the label draw, not on the audio.
    config.train = train_configs.get_config("surrogate,cnn")
    config.train.data.preset = "small"
    config.train.progress = False
    config.key_spec.griffin_lim_iters = 16
    config.key_spec.mel_inversion_iters = 50
  if arg == "demo":
    from launch.configs import demo   # the demo's own config: one source for its recipe and keys
    demo_config = demo.get_config("default")
    config.train = demo_config.benign
    config.train.progress = False
    config.train.init_from = "workdirs/demo/backbone"   # where `make demo` trains it
    config.first_seed = int(demo_config.benign.seed)
    config.key_spec = demo_config.key_spec
    config.calibration.decision_k = int(demo_config.verify.decision_k)
    config.calibration.max_k = int(demo_config.verify.max_k)
  if arg == "tiny":
    config.train = train_configs.get_config("tiny")
    # Cheap keys: the test's validity does not depend on the audio, only on the label draw.
    config.key_spec.update(dict(num_keys=8, d=16, griffin_lim_iters=4, mel_inversion_iters=20,
                                n_mels=32))
    config.num_models = 2
    config.calibration.num_key_draws = 40
    config.calibration.draws_per_batch = 20
    config.progress = False
  return config
