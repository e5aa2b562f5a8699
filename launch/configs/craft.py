r"""Craft taggants into a dataset's training split with a trained surrogate.

  .venv/bin/python -m launch.craft --config=launch/configs/craft.py --workdir=workdirs/craft \
      --config.surrogate=workdirs/surrogate --config.key_file=workdirs/keys/keys.npz

Writes the protected dataset (all splits, in the input's folder layout, 16-bit WAV) to
`config.output_dir` (default `<workdir>/protected`) and the craft report to `<workdir>`; the key
file is only read, and must not lie inside the protected dataset. `:tiny` is a seconds-long
configuration for tests. Re-running the command resumes the craft from its checkpoint.
"""

import ml_collections

from launch.configs import common


def craft_config(**overrides) -> ml_collections.ConfigDict:
  """Mirrors jaxtag.taggants.craft.CraftConfig (and CraftAugment under `augment`)."""
  augment = ml_collections.ConfigDict(dict(
      views=2, max_shift_seconds=0.1, max_gain_db=6.0,
      noise_snr_db=ml_collections.FieldReference(None, field_type=tuple),
      mixup_alpha=0.0, mixup_prob=0.5, freq_mask_width=0, num_freq_masks=1,
      time_mask_width=0, num_time_masks=1, dropout=False))
  fields = dict(steps=250, learning_rate=0.1, milestones=(40, 93, 156, 218), decay=0.3,
                restarts=1, snr_db=55.0,
                # snr | stft_mask (per-bin: mask_db under the clean STFT, floor in dBFS per bin)
                constraint="snr", mask_db=20.0, mask_floor_db=-100.0, mask_n_fft=512,
                mask_hop_length=128, mask_window="hann", mask_iterations=4,
                objective="per_key", alignment="cosine", key_contrast=0.0,
                exclude_params=(),
                quantize=True, init="random", init_scale=0.5,
                # loop unrolling over keys/members: None = step.default_unroll: fully on CPU
                # with jaxlib < 0.11 (3.4x faster there), rolled on CPU with jaxlib >= 0.11
                # (FFT deadlock, BUILD.md) unless XLA_FLAGS has
                # --xla_cpu_multi_thread_eigen=false, rolled on GPU/TPU; an int unrolls that many
                unroll=ml_collections.FieldReference(None, field_type=int))
  config = ml_collections.ConfigDict(fields)
  config.augment = augment
  for key, value in overrides.items():
    config[key] = value
  return config


def get_config(arg: str = "default") -> ml_collections.ConfigDict:
  arg = arg or "default"
  if arg not in ("default", "tiny"):
    raise ValueError(f"launch/configs/craft.py: unknown argument {arg!r}; use default or tiny.")
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.data = common.data_config("corpus", preset="tiny" if arg == "tiny" else "default")
  # a train workdir, or a comma-separated list of them (an ensemble of one architecture)
  config.surrogate = ml_collections.FieldReference(None, field_type=str)
  config.key_file = ml_collections.FieldReference(None, field_type=str)    # from make_keys
  config.output_dir = ml_collections.FieldReference(None, field_type=str)  # default <workdir>/protected
  # copy the input's other files (README, metadata, _background_noise_/) verbatim into output_dir
  config.copy_extra_files = True
  config.budget = 0.01              # fraction of the training set perturbed
  config.selection = "random"       # random | grad_norm | loudest
  # poisons need an SNR budget of >= this many 16-bit steps RMS (quieter clips export ~nothing)
  config.min_budget_lsb = 1.0
  config.mixup_pool_size = 256
  config.diagnostics = True         # per-poison gradient alignment before/after
  # Witches' Brew retraining: retrain the surrogates this many times during the craft (evenly
  # spaced; each with its workdir's recipe, on the data crafted so far); needs craft.restarts=1
  config.retrain_rounds = 0
  # PESQ/STOI of at most this many poisons against their clean clips (an evenly spaced subset
  # beyond; 0: every poison); needs the `quality` extra (pip install 'jaxtag[quality]')
  config.quality_max_clips = 1000
  config.num_devices = 0            # 0: every device
  config.checkpoint_every = 25
  config.progress = True
  config.craft = craft_config()
  if arg == "tiny":
    config.budget = 0.2
    config.craft = craft_config(steps=6, restarts=2)
    config.checkpoint_every = 2
    config.progress = False
  return config
