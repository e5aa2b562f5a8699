"""A tiny trained classifier for tests of the black box and the server (pitch gives the class)."""

import jax
import numpy as np

from jaxtag import sharding, train
from jaxtag.data.dataset import AudioDataset

SR = 8000
CLIP = 2000
CLASSES = ("yes", "no", "up", "down", "left", "right")


def tone_clips(n: int, seed: int, length: int = CLIP) -> tuple[np.ndarray, np.ndarray]:
  """Tones whose pitch gives the class, in noise, rounded to 16-bit values (exact in a WAV)."""
  r = np.random.default_rng(seed)
  labels = np.arange(n) % len(CLASSES)
  t = np.arange(length) / SR
  x = np.stack([0.3 * np.sin(2 * np.pi * (300 + 300 * c) * t + r.uniform(0, 6)) for c in labels])
  x = x + 0.02 * r.standard_normal(x.shape)
  return (np.round(x * 32768) / 32768).astype(np.float32), labels.astype(np.int32)


def train_tiny_workdir(workdir) -> None:
  """A few steps of the real training loop on a small CNN (the artifacts serving loads)."""
  x, y = tone_clips(32, 0)
  config = train.TrainConfig(
      model="cnn", model_overrides={"channels": [8, 16], "n_mels": 32, "sample_rate": SR,
                                  "dropout_rate": 0.0},
      num_epochs=4, batch_size=8, eval_batch_size=8, log_every_steps=4,
      optim=train.OptimConfig(learning_rate=1e-2, warmup_steps=0))
  train.train(config, train_data=AudioDataset(x, y, CLASSES, SR), key=jax.random.key(0),
              workdir=workdir, mesh=sharding.make_mesh(1), progress=False)
