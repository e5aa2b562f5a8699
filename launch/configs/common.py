"""Config blocks shared by several stages (data source, key specification)."""

import ml_collections


def data_config(kind: str = "corpus", preset: str = "default") -> ml_collections.ConfigDict:
  """Mirrors jaxtag.data.sources.DataSource."""
  return ml_collections.ConfigDict(dict(
      kind=kind,            # corpus | speech_commands | esc50 | tfds
      root=ml_collections.FieldReference(None, field_type=str),  # dataset folder / corpus cache
      preset=preset,        # corpus size: tiny | small | default | large | xl
      corpus_seed=0,        # seed of the corpus synthesis
      name=ml_collections.FieldReference(None, field_type=str),  # TFDS name
      data_dir=ml_collections.FieldReference(None, field_type=str),  # TFDS data_dir
      sample_rate=16000,
      esc50_test_fold=5,
  ))


def keys_config(num_keys: int = 10, d: int = 64, griffin_lim_iters: int = 64) -> ml_collections.ConfigDict:
  """Mirrors the main fields of jaxtag.keys.KeySpec (the rest keep their defaults)."""
  return ml_collections.ConfigDict(dict(
      num_keys=num_keys,
      d=d,
      distribution="uniform",    # uniform | bernoulli
      p=0.5,                     # Bernoulli mask probability
      interpolation="bilinear",  # nearest | bilinear
      griffin_lim_iters=griffin_lim_iters,
  ))


def keys_config_for(preset: str) -> ml_collections.ConfigDict:
  """The key spec of a corpus preset: the tiny corpus (8 training clips of 4 words) gets 2 keys."""
  if preset == "tiny":
    return keys_config(num_keys=2, griffin_lim_iters=16)
  return keys_config()
