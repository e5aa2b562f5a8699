"""Config blocks shared by several stages (data source, key specification), generated from the
library dataclasses by jaxtag.config.to_config (the one source of their fields and defaults)."""

import ml_collections

from jaxtag import config as config_lib


def data_config(kind: str = "corpus", preset: str = "default") -> ml_collections.ConfigDict:
  """The ``data`` block: every field of jaxtag.data.sources.DataSource (documented there), e.g.
  ``--config.data.mono=mean --config.data.on_missing_file=skip``."""
  from jaxtag.data import sources
  return config_lib.to_config(sources.DataSource, kind=kind, preset=preset)


def keys_config_for(preset: str) -> ml_collections.ConfigDict:
  """The launchers' key spec: every field of jaxtag.taggants.keys.KeySpec, with bilinear resizing (the
  launchers' default since the first keys; KeySpec's own default is nearest); the tiny corpus (8
  training clips of 4 words) gets 2 keys with 16 Griffin-Lim iterations."""
  from jaxtag.taggants import keys
  if preset == "tiny":
    return config_lib.to_config(keys.KeySpec, interpolation="bilinear", num_keys=2,
                                griffin_lim_iters=16)
  return config_lib.to_config(keys.KeySpec, interpolation="bilinear")
