"""A one-block Transformer encoder over log-mel frames (PosCUDA baseline).

The paper gives "1 encoder block, 8 heads, dim 256"; the rest is chosen
here: log-mel front end as `jaxtag.models.cnn` (64 bands, 25 ms / 10 ms),
a BatchNorm over mel bands (learned CMVN), a linear projection of each
frame to ``width``, fixed sinusoidal positions (any clip length), pre-LN
encoder block(s) with GELU and dropout 0.1, a final LayerNorm, mean pooling
over frames and a linear head.
"""

from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtag.models import layers
from jaxtag.models.cnn import log_mel_frontend


class FrameTransformer(nnx.Module):
  """Transformer encoder classifier over spectrogram frames."""

  def __init__(self, num_classes: int, *, n_mels: int = 64, width: int = 256,
               depth: int = 1, num_heads: int = 8, mlp_dim: int = 1024,
               dropout_rate: float = 0.1, attention_dropout_rate: float = 0.0,
               sample_rate: int = 16000, dtype=None, rngs: nnx.Rngs):
    """Builds the model.

    Args:
      num_classes: output classes.
      n_mels: mel bands of the front end.
      width: model dimension.
      depth: encoder blocks.
      num_heads: attention heads.
      mlp_dim: MLP hidden size.
      dropout_rate: dropout after attention/MLP and before the head.
      attention_dropout_rate: dropout on attention weights.
      sample_rate: waveform sampling rate in Hz.
      dtype: compute dtype; parameters stay float32, logits float32.
      rngs: initialisation and dropout randomness.
    """
    self.n_mels = n_mels
    self.width = width
    self.sample_rate = sample_rate
    self.dtype = dtype
    self.input_norm = nnx.BatchNorm(n_mels, momentum=0.9, epsilon=1e-5,
                                    dtype=dtype, rngs=rngs)
    self.embed = nnx.Linear(n_mels, width, dtype=dtype, rngs=rngs)
    self.blocks = nnx.List([
        layers.EncoderBlock(width, num_heads, mlp_dim, norm_first=True,
                            activation_name="gelu", dropout_rate=dropout_rate,
                            attention_dropout_rate=attention_dropout_rate,
                            layer_norm_eps=1e-5, dtype=dtype, rngs=rngs)
        for _ in range(depth)])
    self.norm = nnx.LayerNorm(width, epsilon=1e-5, dtype=dtype, rngs=rngs)
    self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)
    self.head = nnx.Linear(width, num_classes, dtype=dtype, rngs=rngs)

  def features(self, waveform: jax.Array) -> jax.Array:
    """Log-mel ``(batch, frames, n_mels)``."""
    return log_mel_frontend(waveform, sample_rate=self.sample_rate,
                            n_mels=self.n_mels)

  def classify(self, features: jax.Array, *, train: bool = False,
               dropout: Optional[bool] = None, rngs: Optional[nnx.Rngs] = None):
    """Logits and ``{"embedding": (batch, width), "tokens": (batch, frames,
    width)}``. ``dropout`` switches dropout alone (None: as ``train``, which also puts the
    input BatchNorm in batch-statistics mode; in the blocks ``train`` only drives dropout).
    """
    dtype = self.dtype or jnp.float32
    x = self.input_norm(features.astype(dtype), use_running_average=not train)
    x = self.embed(x)
    x = x + layers.sinusoidal_positions(x.shape[1], self.width).astype(dtype)
    drop = train if dropout is None else dropout
    x = self.dropout(x, deterministic=not drop, rngs=rngs)
    for block in self.blocks:
      x = block(x, train=drop, rngs=rngs)
    tokens = self.norm(x)
    embedding = jnp.mean(tokens, axis=1)
    x = self.dropout(embedding, deterministic=not drop, rngs=rngs)
    return self.head(x).astype(jnp.float32), {"embedding": embedding,
                                              "tokens": tokens}

  def __call__(self, waveform: jax.Array, *, train: bool = False,
               rngs: Optional[nnx.Rngs] = None):
    """``classify(features(waveform))``."""
    return self.classify(self.features(waveform), train=train, rngs=rngs)
