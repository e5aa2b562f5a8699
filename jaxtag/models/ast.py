"""Audio Spectrogram Transformer (Gong et al. 2021) in Flax NNX.

The layout follows the Hugging Face ``ASTForAudioClassification`` port tensor
for tensor, so that `jaxtag.models.hf_import` can load its checkpoints:

* front end: `jaxtag.audio.fbank.ast_features` (Kaldi fbank, 128 mel bins,
  padded/cut to ``max_length`` frames, ``(x - mean) / (2 std)``);
* patch embedding: the ``(frames, mel)`` image is transposed to
  ``(mel, frames)`` (HF: ``unsqueeze(1).transpose(2, 3)``), then a 16x16
  convolution with strides ``(frequency_stride, time_stride)``; patches are
  flattened frequency-major, as ``flatten(2)`` does in NCHW;
* ``[cls, distillation, patches]`` plus learned position embeddings;
* pre-LN encoder blocks, exact GELU, LayerNorm epsilon 1e-12;
* output: mean of the two tokens after the final LayerNorm, then the
  ``ASTMLPHead`` (LayerNorm, Linear).
"""

import functools
from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtag.audio import fbank
from jaxtag.models import layers

# DeiT sizes (width, depth, heads, MLP); "base" is the AST paper's model.
AST_SIZES = {
    "tiny": dict(width=192, depth=12, num_heads=3, mlp_dim=768),
    "small": dict(width=384, depth=12, num_heads=6, mlp_dim=1536),
    "base": dict(width=768, depth=12, num_heads=12, mlp_dim=3072),
}

# AST's SpeechCommands v2 normalisation statistics of the log-fbank.
SPEECHCOMMANDS_MEAN = -6.845978
SPEECHCOMMANDS_STD = 5.5654526


def patch_grid(*, num_mel_bins: int, max_length: int, patch_size: int,
               frequency_stride: int, time_stride: int) -> tuple[int, int]:
  """Number of patches along (frequency, time), as HF's ``get_shape``."""
  freq = (num_mel_bins - patch_size) // frequency_stride + 1
  time = (max_length - patch_size) // time_stride + 1
  if freq < 1 or time < 1:
    raise ValueError(
        f"A {patch_size}x{patch_size} patch does not fit a {max_length}-frame"
        f" x {num_mel_bins}-bin input; raise max_length/num_mel_bins.")
  return freq, time


class AST(nnx.Module):
  """Audio Spectrogram Transformer on raw 16 kHz waveforms.

  Attributes are named for the HF tensors they hold (see `hf_import`).
  """

  def __init__(self, num_classes: int, *, width: int = 768, depth: int = 12,
               num_heads: int = 12, mlp_dim: int = 3072,
               patch_size: int = 16, frequency_stride: int = 10,
               time_stride: int = 10, num_mel_bins: int = 128,
               max_length: int = 128, layer_norm_eps: float = 1e-12,
               dropout_rate: float = 0.0, attention_dropout_rate: float = 0.0,
               feature_mean: float = SPEECHCOMMANDS_MEAN,
               feature_std: float = SPEECHCOMMANDS_STD,
               sample_rate: int = 16000, dtype=None, rngs: nnx.Rngs):
    """Builds the model.

    Args:
      num_classes: output classes.
      width: hidden size (HF ``hidden_size``).
      depth: encoder blocks (HF ``num_hidden_layers``).
      num_heads: attention heads.
      mlp_dim: MLP hidden size (HF ``intermediate_size``).
      patch_size: square patch side in (frames, bins).
      frequency_stride: patch stride along mel bins.
      time_stride: patch stride along frames.
      num_mel_bins: fbank mel bins.
      max_length: frames the fbank is padded/cut to (128 for 1 s clips).
      layer_norm_eps: LayerNorm epsilon (1e-12 in HF).
      dropout_rate: hidden dropout (0 in AST and HF).
      attention_dropout_rate: dropout on attention weights.
      feature_mean: log-fbank mean of the training data.
      feature_std: log-fbank standard deviation of the training data.
      sample_rate: waveform sampling rate in Hz.
      dtype: compute dtype (e.g. ``jnp.bfloat16``); parameters stay float32
        and logits are returned in float32.
      rngs: initialisation and (stored) dropout randomness.
    """
    self.num_classes = num_classes
    self.width = width
    self.num_mel_bins = num_mel_bins
    self.max_length = max_length
    self.feature_mean = feature_mean
    self.feature_std = feature_std
    self.sample_rate = sample_rate
    self.dtype = dtype
    self.grid = patch_grid(num_mel_bins=num_mel_bins, max_length=max_length,
                           patch_size=patch_size,
                           frequency_stride=frequency_stride,
                           time_stride=time_stride)
    num_tokens = self.grid[0] * self.grid[1] + 2
    init = layers.TRUNC_NORMAL_002
    self.patch_embed = nnx.Conv(
        1, width, (patch_size, patch_size),
        strides=(frequency_stride, time_stride), padding="VALID",
        dtype=dtype, kernel_init=init, rngs=rngs)
    self.cls_token = nnx.Param(init(rngs.params(), (1, 1, width)))
    self.dist_token = nnx.Param(init(rngs.params(), (1, 1, width)))
    self.pos_embed = nnx.Param(init(rngs.params(), (1, num_tokens, width)))
    self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)
    self.blocks = nnx.List([
        layers.EncoderBlock(
            width, num_heads, mlp_dim, norm_first=True,
            activation_name="gelu", dropout_rate=dropout_rate,
            attention_dropout_rate=attention_dropout_rate,
            layer_norm_eps=layer_norm_eps, dtype=dtype, kernel_init=init,
            rngs=rngs) for _ in range(depth)])
    norm = functools.partial(nnx.LayerNorm, width, epsilon=layer_norm_eps,
                             dtype=dtype, rngs=rngs)
    self.norm = norm()
    self.head_norm = norm()
    self.head = nnx.Linear(width, num_classes, dtype=dtype, kernel_init=init,
                           rngs=rngs)

  def features(self, waveform: jax.Array) -> jax.Array:
    """AST fbank features ``(batch, max_length, num_mel_bins)``."""
    return fbank.ast_features(
        waveform, target_frames=self.max_length, mean=self.feature_mean,
        std=self.feature_std, sample_rate=self.sample_rate,
        num_mel_bins=self.num_mel_bins)

  def classify(self, features: jax.Array, *, train: bool = False,
               rngs: Optional[nnx.Rngs] = None):
    """Logits from fbank features ``(batch, frames, mel)``.

    Returns:
      ``(logits float32 (batch, num_classes), {"embedding": (batch, width),
      "tokens": (batch, num_tokens, width)})``; ``embedding`` is the head's
      input (mean of the two tokens after the final LayerNorm).
    """
    expected = (self.max_length, self.num_mel_bins)
    if features.shape[-2:] != expected:
      raise ValueError(
          f"AST expects features (batch, {expected[0]}, {expected[1]}), got "
          f"{features.shape}; build the model with matching max_length.")
    dtype = self.dtype or jnp.float32
    # HF layout: (B, frames, mel) -> image (B, mel, frames), one channel.
    image = jnp.swapaxes(features.astype(dtype), -1, -2)[..., None]
    patches = self.patch_embed(image)
    batch = patches.shape[0]
    patches = patches.reshape(batch, -1, self.width)
    special = jnp.concatenate([self.cls_token[...], self.dist_token[...]],
                              axis=1).astype(dtype)
    special = jnp.broadcast_to(special, (batch, 2, self.width))
    x = jnp.concatenate([special, patches], axis=1)
    x = x + self.pos_embed[...].astype(dtype)
    x = self.dropout(x, deterministic=not train, rngs=rngs)
    for block in self.blocks:
      x = block(x, train=train, rngs=rngs)
    tokens = self.norm(x)
    embedding = (tokens[:, 0] + tokens[:, 1]) / 2
    logits = self.head(self.head_norm(embedding))
    return logits.astype(jnp.float32), {"embedding": embedding,
                                        "tokens": tokens}

  def __call__(self, waveform: jax.Array, *, train: bool = False,
               rngs: Optional[nnx.Rngs] = None):
    """``classify(features(waveform))``; see `classify` for the outputs."""
    return self.classify(self.features(waveform), train=train, rngs=rngs)
