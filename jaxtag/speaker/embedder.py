"""A trained speaker model as a host-side embedder: waveforms in, unit-norm embeddings out.

    embedder = load_embedder("workdirs/speaker")      # a finished speaker-train workdir
    e = embedder.embed(waveforms)                     # (n, clip_samples) -> (n, D)

Batches are a fixed size (the last one padded with silence and cut off again), so the network
compiles once; jaxtag's speaker models hold no batch-dependent state, so padding never changes
an utterance's embedding.
"""

from __future__ import annotations

import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxtag.speaker import train as train_lib
from jaxtag.speaker.model import SpeakerModelConfig

SUMMARY = "speaker_train_summary.json"


class SpeakerEmbedder:
  """Embeds fixed-length utterances with a trained speaker model.

  Attributes:
    sample_rate: sample rate of the waveforms it takes.
    clip_samples: samples per utterance.
    embedding_dim: D.
    threshold: cosine EER threshold measured on the model's unseen test speakers at training
      time, or None when unknown.
    model_config: the network's :class:`SpeakerModelConfig`.
    batch_size: rows per compiled call.
  """

  def __init__(self, model_config: SpeakerModelConfig, params: nnx.State, *, clip_samples: int,
               threshold: float | None = None, batch_size: int = 64):
    if batch_size <= 0:
      raise ValueError(f"SpeakerEmbedder: batch_size must be positive; got {batch_size}.")
    self.model_config = model_config
    self.sample_rate = model_config.sample_rate
    self.clip_samples = int(clip_samples)
    self.embedding_dim = model_config.embedding_dim
    self.threshold = None if threshold is None else float(threshold)
    self.batch_size = int(batch_size)
    self._net, _ = train_lib.abstract_network(model_config)
    self._params = params
    self._apply = jax.jit(self._net.apply)

  def embed(self, waveforms: np.ndarray) -> np.ndarray:
    """Embeddings ``(n, embedding_dim)`` float32 of ``waveforms (n, clip_samples)``, unit rows.

    Raises:
      ValueError: waveforms that are not ``(n, clip_samples)``.
    """
    x = np.asarray(waveforms, np.float32)
    if x.ndim != 2 or x.shape[1] != self.clip_samples:
      raise ValueError(f"SpeakerEmbedder.embed takes waveforms (n, {self.clip_samples}) at "
                       f"{self.sample_rate} Hz; got shape {x.shape}. Cut or pad clips to "
                       f"{self.clip_samples} samples.")
    out = np.zeros((x.shape[0], self.embedding_dim), np.float32)
    for start in range(0, x.shape[0], self.batch_size):
      chunk = x[start:start + self.batch_size]
      padded = np.zeros((self.batch_size, self.clip_samples), np.float32)
      padded[:len(chunk)] = chunk
      out[start:start + len(chunk)] = np.asarray(
          self._apply(self._params, jnp.asarray(padded)))[:len(chunk)]
    return out


def load_embedder(workdir: str | os.PathLike, *, batch_size: int = 64) -> SpeakerEmbedder:
  """The embedder of a finished speaker-train workdir (``final/`` + ``speaker_model.json``;
  the threshold from its summary when there is one).

  Raises:
    FileNotFoundError: the workdir holds no finished run.
  """
  import orbax.checkpoint as ocp
  workdir = pathlib.Path(workdir).absolute()
  info = train_lib.read_model_json(workdir)
  final = workdir / train_lib.FINAL_DIR
  if not final.exists():
    raise FileNotFoundError(f"{final} does not exist; the speaker training run did not finish.")
  model_config = SpeakerModelConfig(**info["model"])
  _, abstract = train_lib.abstract_network(model_config)
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                        abstract)
  with ocp.StandardCheckpointer() as ckptr:
    params = ckptr.restore(final, target)
  summary = workdir / SUMMARY
  threshold = None
  if summary.is_file():
    threshold = json.loads(summary.read_text()).get("test", {}).get("threshold")
  return SpeakerEmbedder(model_config, params, clip_samples=info["clip_samples"],
                         threshold=threshold, batch_size=batch_size)
