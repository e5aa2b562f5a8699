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



def get_config(arg: str = "default") -> ml_collections.ConfigDict:
  """Every field of jaxtag.taggants.jobs.CraftJob (a ProtectConfig with the crafting settings
  under ``craft`` and their augmentation under ``craft.augment``; defaults and meaning there)."""
  from jaxtag.taggants import jobs

  arg = arg or "default"
  if arg not in ("default", "tiny"):
    raise ValueError(f"launch/configs/craft.py: unknown argument {arg!r}; use default or tiny.")
  config = common.to_config(jobs.CraftJob)
  if arg == "tiny":
    config.data.preset = "tiny"
    config.budget = 0.2
    config.craft.steps = 6
    config.craft.restarts = 2
    config.checkpoint_every = 2
    config.progress = False
  return config
