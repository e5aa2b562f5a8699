r"""Watermark a speaker dataset with CBW (clustered tone triggers) and publish it.

  .venv/bin/python -m launch.cbw_protect --config=launch/configs/cbw_protect.py \
      --workdir=workdirs/cbw_protect --config.surrogate_workdir=workdirs/cbw_demo/surrogate \
      --config.output_root=workdirs/cbw_protected

The argument is the corpus preset (default `default`); point `data.kind=speaker_folders` and
`data.root` at a `<root>/<speaker>/<utterance>.wav` folder (or `data.kind=speech_commands`) to
protect it instead. The secret `<workdir>/cbw_secret.npz` is owner-only and refused inside either
dataset folder.
"""

import ml_collections

from launch.configs import common


def get_config(arg: str = "default") -> ml_collections.ConfigDict:
  """Every field of jaxtag.cbw.jobs.CbwProtectJob (defaults and meaning there)."""
  from jaxtag.cbw import jobs

  config = common.to_config(jobs.CbwProtectJob)
  config.data.preset = arg or "default"
  return config
