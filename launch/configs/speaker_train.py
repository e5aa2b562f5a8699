r"""Train a speaker-embedding model (GE2E) on a speaker dataset into a workdir.

  .venv/bin/python -m launch.speaker_train --config=launch/configs/speaker_train.py \
      --workdir=workdirs/speaker    # the embedded corpus's speakers (160 train, 40 unseen)
  .venv/bin/python -m launch.speaker_train --config=launch/configs/speaker_train.py \
      --workdir=workdirs/speaker --config.data.kind=speaker_folders --config.data.root=<folder>
  .venv/bin/python -m launch.speaker_train \
      --config=launch/configs/speaker_train.py:default,dvector --workdir=workdirs/speaker_gpu

The first argument picks a recipe:
  default  the CPU demo recipe: ecapa-small, 1000 steps of N=16 speakers x M=8 utterances,
           Adam lr 1e-3, +-0.1 s time shifts. Measured on two CPU cores with the embedded
           corpus relabelled by speaker (160 train speakers, 40 unseen): 150 s, EER 6.7%
           (dvector-small, 1500 steps: 155 s, EER 9.0%; the full `dvector` takes 3.2 s a step
           there and is meant for an accelerator).
  tiny     a tiny ecapa for tests and smoke runs (seconds).
A second argument picks another model preset of jaxtag.speaker.model.PRESETS (dvector,
dvector-small, ecapa-small). Override any field, e.g. `--config.steps=2000
--config.model.hidden_size=128`. Rerunning the same command resumes from the latest checkpoint.
"""

import ml_collections

from launch.configs import common


def get_config(arg: str = "default") -> ml_collections.ConfigDict:
  """Every field of jaxtag.speaker.job.SpeakerTrainJob (defaults there), set to recipe ``arg``."""
  from jaxtag.speaker import job
  from jaxtag.speaker import model

  arg, _, preset = (arg or "default").partition(",")
  if arg not in ("default", "tiny"):
    raise ValueError(f"launch/configs/speaker_train.py: unknown recipe {arg!r}; use default or "
                     "tiny.")
  config = common.to_config(job.SpeakerTrainJob)
  config.model = common.to_config(model.preset("ecapa-small"))
  config.steps = 1000
  config.speakers_per_batch = 16
  config.utterances_per_speaker = 8
  config.learning_rate = 1e-3
  config.max_shift_seconds = 0.1
  config.checkpoint_every = 100
  config.log_every = 10
  if arg == "tiny":
    config.model = common.to_config(model.SpeakerModelConfig(
        arch="ecapa", hidden_size=16, num_layers=1, embedding_dim=16, attention_dim=8))
    config.steps = 20
    config.speakers_per_batch = 4
    config.utterances_per_speaker = 4
    config.checkpoint_every = 10
    config.log_every = 1
    config.enrol_utterances = 2
    config.eval_batch_size = 16
    config.progress = False
  if preset:
    config.model = common.to_config(model.preset(preset))
  return config
