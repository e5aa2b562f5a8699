r"""The README's main command: every pipeline stage on the embedded corpus.

  make demo
  # = .venv/bin/python -m launch.demo --config=launch/configs/demo.py --workdir=workdirs/demo

Stages: corpus -> keys -> surrogate (train) -> craft (protected dataset) -> suspect (train on the
protected data, another seed than the surrogate's, SpecAugment + mixup) and benign (the suspect's
recipe and seed on the clean data: its paired control) -> verify both. `launch/configs/demo.py:tiny` runs the same chain on the tiny
corpus in a few minutes (tests and smoke runs). Any stage's settings can be overridden, e.g.
`--config.craft.craft.steps=100 --config.suspect.num_epochs=8`; `--config.num_surrogates=4` crafts
against an ensemble of four surrogates (other seeds; the default crafts against two), and
`--config.craft.retrain_rounds=2 --config.craft.craft.restarts=1` retrains them twice during the
craft.
"""

import ml_collections

from launch.configs import common
from launch.configs import craft as craft_configs
from launch.configs import train as train_configs
from launch.configs import verify as verify_configs


def get_config(arg: str = "default") -> ml_collections.ConfigDict:
  arg = arg or "default"
  if arg not in ("default", "tiny"):
    raise ValueError(f"launch/configs/demo.py: unknown argument {arg!r}; use default or tiny.")
  tiny = arg == "tiny"
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.data = common.data_config("corpus", preset=arg)
  config.key_spec = common.keys_config_for(arg)
  config.export_wav = True
  model = "tiny" if tiny else "surrogate,cnn"
  config.surrogate = train_configs.get_config(model)
  # Craft against an ensemble of surrogates (seeds +1000 apart; Witches' Brew's lever for
  # transfer): two moved the suspect's keys 1.6x further than one at the same budget
  # (benchmarks/RESULTS.md) and fit the demo's 20 minutes with jax 0.10, whose CPU unrolls the
  # crafting loops (with jax 0.11 they stay rolled on CPU, ~3.6x slower: BUILD.md).
  config.num_surrogates = 1 if tiny else 2
  config.suspect = train_configs.get_config(("tiny" if tiny else "suspect") + ",cnn")
  if tiny:
    config.suspect.model_overrides = config.surrogate.model_overrides
  config.suspect.seed = 1
  # The benign model is the suspect's paired control: same recipe, seed and data order, clean data,
  # so the only difference between the two runs is the perturbed clips (the demo reports how far
  # each key's label moved between them: a white-box diagnostic that includes any effect of
  # changing those clips at all, not a bound on the taggants' effect; jaxtag.taggants.diagnostics).
  config.benign = ml_collections.ConfigDict(config.suspect.to_dict())
  for stage in ("surrogate", "suspect", "benign"):
    config[stage].data = config.data   # the suspect's data source is set to the protected copy
  config.craft = craft_configs.get_config(arg)
  config.craft.data = config.data
  if tiny:
    config.craft.budget = 0.25   # 8 training clips, 2 keys: one poison each
  config.verify = verify_configs.get_config()
  return config
