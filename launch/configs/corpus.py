r"""Synthesise (or find in the cache) the embedded espeak-ng corpus and print its splits.

  .venv/bin/python -m launch.make_corpus --config=launch/configs/corpus.py:default \
      --workdir=workdirs/corpus

The argument is the size preset: tiny | small | default | large | xl.
"""

import ml_collections

from launch.configs import common



def get_config(arg: str = "default") -> ml_collections.ConfigDict:
  """Every field of jaxtag.data.job.CorpusJob; ``arg`` is the corpus preset."""
  from jaxtag.data import job
  config = common.to_config(job.CorpusJob)
  config.data.preset = arg or "default"
  return config
