"""A one-layer LSTM on MFCCs (the PosCUDA paper's LSTM baseline), Flax NNX.

Front end (fixed, differentiable): 40 MFCCs from 40 mel bands, 25 ms / 10 ms
(`jaxtag.models.layers.mfcc`, librosa's recipe). The paper gives only "1
layer, 128 units, MFCC"; the rest is chosen here: a BatchNorm over the
coefficients first (a learned, running-statistics CMVN, since raw MFCC
coefficient 0 is in the hundreds), then the LSTM, then the last hidden
state (or the mean over frames) into a linear head.
"""

from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtag.models import layers

_POOLINGS = ("last", "mean")


class MFCCLSTM(nnx.Module):
  """LSTM classifier over MFCC frames."""

  def __init__(self, num_classes: int, *, hidden_size: int = 128,
               n_mfcc: int = 40, n_mels: int = 40, pooling: str = "last",
               dropout_rate: float = 0.0, sample_rate: int = 16000,
               dtype=None, rngs: nnx.Rngs):
    """Builds the model.

    Args:
      num_classes: output classes.
      hidden_size: LSTM units.
      n_mfcc: MFCC coefficients.
      n_mels: mel bands under the MFCCs.
      pooling: "last" hidden state or "mean" over frames.
      dropout_rate: dropout before the head.
      sample_rate: waveform sampling rate in Hz.
      dtype: compute dtype; parameters stay float32, logits float32.
      rngs: initialisation and dropout randomness.

    Raises:
      ValueError: for an unknown pooling.
    """
    if pooling not in _POOLINGS:
      raise ValueError(f"pooling must be one of {_POOLINGS}, got {pooling!r}.")
    self.n_mfcc = n_mfcc
    self.n_mels = n_mels
    self.hidden_size = hidden_size
    self.pooling = pooling
    self.sample_rate = sample_rate
    self.dtype = dtype
    self.input_norm = nnx.BatchNorm(n_mfcc, momentum=0.9, epsilon=1e-5,
                                    dtype=dtype, rngs=rngs)
    cell = nnx.OptimizedLSTMCell(n_mfcc, hidden_size, dtype=dtype, rngs=rngs)
    # rngs=False: the carry starts at zeros, no random stream is needed.
    self.rnn = nnx.RNN(cell, rngs=False)
    self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)
    self.head = nnx.Linear(hidden_size, num_classes, dtype=dtype, rngs=rngs)

  def features(self, waveform: jax.Array) -> jax.Array:
    """MFCCs ``(batch, frames, n_mfcc)``."""
    return layers.mfcc(waveform, sample_rate=self.sample_rate,
                       n_mfcc=self.n_mfcc, n_mels=self.n_mels)

  def classify(self, features: jax.Array, *, train: bool = False,
               dropout: Optional[bool] = None, rngs: Optional[nnx.Rngs] = None):
    """Logits and ``{"embedding": (batch, hidden), "sequence": (batch,
    frames, hidden)}``. ``dropout`` switches dropout alone (None: as ``train``, which also
    puts the input BatchNorm in batch-statistics mode).
    """
    dtype = self.dtype or jnp.float32
    x = self.input_norm(features.astype(dtype), use_running_average=not train)
    zeros = jnp.zeros((x.shape[0], self.hidden_size), dtype)
    sequence = self.rnn(x, initial_carry=(zeros, zeros))
    if self.pooling == "last":
      embedding = sequence[:, -1]
    else:
      embedding = jnp.mean(sequence, axis=1)
    drop = train if dropout is None else dropout
    x = self.dropout(embedding, deterministic=not drop, rngs=rngs)
    return self.head(x).astype(jnp.float32), {"embedding": embedding,
                                              "sequence": sequence}

  def __call__(self, waveform: jax.Array, *, train: bool = False,
               rngs: Optional[nnx.Rngs] = None):
    """``classify(features(waveform))``."""
    return self.classify(self.features(waveform), train=train, rngs=rngs)
