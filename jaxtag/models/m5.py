"""M5: the 1-D CNN on raw waveforms of Dai et al. (2017), in Flax NNX.

Paper layout (M5): conv 80/4 with 128 channels, then three 3-tap convs with
128, 256, 512 channels; every conv is followed by BatchNorm, ReLU and a max
pool of 4; global average pooling over time; a linear classifier. The
PyTorch tutorial variant that PosCUDA-style work often uses is
``n_channel=32, first_stride=16, channel_multipliers=(1, 1, 2, 2)``.

The front end is the identity (raw audio); `features` only adds the channel
axis, so gradients with respect to the waveform are exact.
"""

from typing import Optional, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtag.models import layers


class M5(nnx.Module):
  """M5 raw-waveform classifier."""

  def __init__(self, num_classes: int, *, n_channel: int = 128,
               first_kernel: int = 80, first_stride: int = 4,
               channel_multipliers: Sequence[int] = (1, 1, 2, 4),
               pool: int = 4, dtype=None, rngs: nnx.Rngs):
    """Builds the model.

    Args:
      num_classes: output classes.
      n_channel: channels of the first conv (paper 128, tutorial 32).
      first_kernel: taps of the first conv (80 = 5 ms at 16 kHz).
      first_stride: stride of the first conv (paper 4, tutorial 16).
      channel_multipliers: channels of each conv block, in units of
        ``n_channel``; the first entry is the 80-tap conv.
      pool: max-pool size after every block.
      dtype: compute dtype; parameters stay float32, logits float32.
      rngs: initialisation randomness.
    """
    self.dtype = dtype
    channels = [n_channel * m for m in channel_multipliers]
    blocks = [layers.ConvBNBlock(1, channels[0], (first_kernel,),
                                 strides=(first_stride,),
                                 padding="VALID", pool=(pool,), dtype=dtype,
                                 rngs=rngs)]
    for c_in, c_out in zip(channels[:-1], channels[1:]):
      blocks.append(layers.ConvBNBlock(c_in, c_out, (3,), padding="SAME",
                                       pool=(pool,), dtype=dtype, rngs=rngs))
    self.blocks = nnx.List(blocks)
    self.head = nnx.Linear(channels[-1], num_classes, dtype=dtype, rngs=rngs)

  def features(self, waveform: jax.Array) -> jax.Array:
    """Raw audio with a channel axis: ``(batch, num_samples, 1)``."""
    return waveform[..., None]

  def classify(self, features: jax.Array, *, train: bool = False,
               dropout: Optional[bool] = None, rngs: Optional[nnx.Rngs] = None):
    """Logits and ``{"embedding": (batch, channels)}`` from `features`.

    M5 has no dropout: ``dropout`` is accepted for a uniform interface and changes nothing.
    """
    del rngs, dropout  # No stochastic layers.
    x = features.astype(self.dtype or jnp.float32)
    for block in self.blocks:
      x = block(x, train=train)
    embedding = jnp.mean(x, axis=1)
    return self.head(embedding).astype(jnp.float32), {"embedding": embedding}

  def __call__(self, waveform: jax.Array, *, train: bool = False,
               rngs: Optional[nnx.Rngs] = None):
    """``classify(features(waveform))``."""
    return self.classify(self.features(waveform), train=train, rngs=rngs)
