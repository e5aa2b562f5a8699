r"""CBW end to end: `make demo-cbw`.

  make demo-cbw
  # = .venv/bin/python -m launch.cbw_demo --config=launch/configs/cbw_demo.py \
  #       --workdir=workdirs/cbw_demo

`default`: the embedded corpus (160 training speakers x 35 utterances, 40 unseen speakers), the
CPU speaker recipe of launch/configs/speaker_train.py (ecapa-small, 1000 steps) for all three
models, K = 10 clusters, 10% of each speaker's utterances triggered (the seed's 15% cost more EER
over seeds at the same detection: benchmarks/RESULTS.md), 20 fresh secrets for the
false-positive rate. `small`: the 40-speaker corpus. `tiny`: the tiny corpus and a tiny model (the chain in
about a minute; tests and smoke runs). Override anything, e.g.
`--config.watermark.trigger.mode=mix --config.model.steps=1000`.
"""

import ml_collections

from launch.configs import common
from launch.configs import speaker_train


def get_config(arg: str = "default") -> ml_collections.ConfigDict:
  """Every field of jaxtag.cbw.demo.CbwDemoJob (defaults there), for preset ``arg``."""
  from jaxtag.cbw import demo

  arg = arg or "default"
  if arg not in ("default", "small", "tiny"):
    raise ValueError(f"launch/configs/cbw_demo.py: unknown preset {arg!r}; use default, small or "
                     "tiny.")
  config = common.to_config(demo.CbwDemoJob)
  config.data.preset = arg
  config.model = speaker_train.get_config("tiny" if arg == "tiny" else "default")
  config.model.data = config.data
  if arg == "tiny":   # 2 training speakers x 4 utterances, 4 held-out speakers
    config.model.speakers_per_batch = 2
    config.model.utterances_per_speaker = 2
    config.watermark.num_clusters = 2
    config.verify.enrol_utterances = 2
    config.false_positive_draws = 2
  elif arg == "small":
    config.watermark.num_clusters = 8
  return config
