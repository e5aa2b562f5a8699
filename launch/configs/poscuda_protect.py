r"""Protect a dataset's train split with PosCUDA (class-wise positional blurs) and publish it.

  .venv/bin/python -m launch.poscuda_protect --config=launch/configs/poscuda_protect.py \
      --workdir=workdirs/poscuda_secret --config.output_root=workdirs/corpus_poscuda

Writes the protected dataset to `output_root` in the source's layout (train protected,
validation and test copied clean) and the secret file `<workdir>/poscuda.npz` (owner-only,
refused inside either dataset folder). The argument is the corpus preset (default `default`);
point `data.kind/root` at a SpeechCommands or ESC-50 folder (or `data.kind=tfds`, `data.name`)
to protect it instead.
"""

import ml_collections

from launch.configs import common



def get_config(arg: str = "default") -> ml_collections.ConfigDict:
  """Every field of jaxtag.poscuda.jobs.ProtectJob (the filters under ``spec``: a SpecConfig;
  defaults and meaning there), on the corpus preset ``arg``."""
  from jaxtag.poscuda import jobs

  config = common.to_config(jobs.ProtectJob)
  config.data.preset = arg or "default"
  return config
