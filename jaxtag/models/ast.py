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

Three constructor options change the recipe, not the parameter layout (the
defaults are the HF model; every option keeps the same tensors, so a
checkpoint still loads). They exist for training from scratch on small data,
where the HF recipe stays at chance (measured on the embedded corpus,
benchmarks/RESULTS.md):

* ``feature_norm="per_clip"``: standardise each clip's log-fbank (scaled to
  std 0.5 like AST's ``2 std``), which removes the clip's level; with the
  dataset statistics the level (spanning ~10 nats between clips) is the
  largest between-clip difference of the patch embeddings;
* ``readout="mean"`` or ``"mean_max"``: pool the patch tokens instead of
  reading the cls/distillation tokens, which at the 0.02 initialisation
  carry almost no input-dependent signal and become input-independent
  within tens of steps;
* ``kernel_init="xavier"``: Xavier-uniform block kernels and a LeCun-normal
  patch embedding (big_vision's ViT) instead of truncated-normal(0.02).
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

FEATURE_NORMS = ("dataset", "per_clip")
READOUTS = ("cls_dist", "mean", "mean_max")
KERNEL_INITS = ("trunc_normal", "xavier")


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


def per_clip_features(waveform: jax.Array, *, target_frames: int = 128,
                      sample_rate: int = 16000,
                      num_mel_bins: int = 128) -> jax.Array:
  """AST fbank standardised per clip, then padded/cut to ``target_frames``.

  Each clip's log-fbank (its real frames) becomes ``(x - mean) / (2 std)``
  with its own statistics, which removes the recording level; padded frames
  are 0, the clip's mean.

  Args:
    waveform: ``(..., T)`` in ``[-1, 1]``.
    target_frames: output frames.
    sample_rate: sampling rate in Hz.
    num_mel_bins: mel bins.

  Returns:
    float32 ``(..., target_frames, num_mel_bins)``.
  """
  x = fbank.kaldi_fbank(waveform, sample_rate=sample_rate,
                        num_mel_bins=num_mel_bins)
  mean = jnp.mean(x, axis=(-2, -1), keepdims=True)
  std = jnp.std(x, axis=(-2, -1), keepdims=True)
  x = (x - mean) / (2.0 * (std + 1e-5))
  missing = target_frames - x.shape[-2]
  if missing > 0:
    return jnp.pad(x, [(0, 0)] * (x.ndim - 2) + [(0, missing), (0, 0)])
  return x[..., :target_frames, :]


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
               sample_rate: int = 16000, feature_norm: str = "dataset",
               readout: str = "cls_dist", kernel_init: str = "trunc_normal",
               dtype=None, rngs: nnx.Rngs):
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
      feature_norm: "dataset" (HF: ``(x - feature_mean) / (2 feature_std)``)
        or "per_clip" (each clip's own mean and ``2 std``; the feature
        statistics are then unused).
      readout: the head's input: "cls_dist" (HF: mean of the cls and
        distillation tokens), "mean" (mean of the patch tokens) or
        "mean_max" (their mean plus their maximum), after the final LayerNorm.
      kernel_init: "trunc_normal" (HF: truncated normal, std 0.02, for every
        kernel) or "xavier" (Xavier-uniform block kernels, LeCun-normal patch
        embedding; the head, tokens and positions keep the truncated normal).
      dtype: compute dtype (e.g. ``jnp.bfloat16``); parameters stay float32
        and logits are returned in float32.
      rngs: initialisation and (stored) dropout randomness.

    Raises:
      ValueError: for an unknown ``feature_norm``, ``readout`` or
        ``kernel_init``.
    """
    for name, value, allowed in (("feature_norm", feature_norm, FEATURE_NORMS),
                                 ("readout", readout, READOUTS),
                                 ("kernel_init", kernel_init, KERNEL_INITS)):
      if value not in allowed:
        raise ValueError(f"AST {name}={value!r} is unknown; choose one of "
                         f"{allowed}.")
    self.feature_norm = feature_norm
    self.readout = readout
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
    patch_init, block_init = init, init
    if kernel_init == "xavier":
      patch_init = nnx.initializers.lecun_normal()
      block_init = nnx.initializers.xavier_uniform()
    self.patch_embed = nnx.Conv(
        1, width, (patch_size, patch_size),
        strides=(frequency_stride, time_stride), padding="VALID",
        dtype=dtype, kernel_init=patch_init, rngs=rngs)
    self.cls_token = nnx.Param(init(rngs.params(), (1, 1, width)))
    self.dist_token = nnx.Param(init(rngs.params(), (1, 1, width)))
    self.pos_embed = nnx.Param(init(rngs.params(), (1, num_tokens, width)))
    self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)
    self.blocks = nnx.List([
        layers.EncoderBlock(
            width, num_heads, mlp_dim, norm_first=True,
            activation_name="gelu", dropout_rate=dropout_rate,
            attention_dropout_rate=attention_dropout_rate,
            layer_norm_eps=layer_norm_eps, dtype=dtype,
            kernel_init=block_init, rngs=rngs) for _ in range(depth)])
    norm = functools.partial(nnx.LayerNorm, width, epsilon=layer_norm_eps,
                             dtype=dtype, rngs=rngs)
    self.norm = norm()
    self.head_norm = norm()
    self.head = nnx.Linear(width, num_classes, dtype=dtype, kernel_init=init,
                           rngs=rngs)

  def features(self, waveform: jax.Array) -> jax.Array:
    """AST fbank features ``(batch, max_length, num_mel_bins)``."""
    if self.feature_norm == "per_clip":
      return per_clip_features(waveform, target_frames=self.max_length,
                               sample_rate=self.sample_rate,
                               num_mel_bins=self.num_mel_bins)
    return fbank.ast_features(
        waveform, target_frames=self.max_length, mean=self.feature_mean,
        std=self.feature_std, sample_rate=self.sample_rate,
        num_mel_bins=self.num_mel_bins)

  def classify(self, features: jax.Array, *, train: bool = False,
               dropout: Optional[bool] = None, rngs: Optional[nnx.Rngs] = None):
    """Logits from fbank features ``(batch, frames, mel)``.

    Returns:
      ``(logits float32 (batch, num_classes), {"embedding": (batch, width),
      "tokens": (batch, num_tokens, width)})``; ``embedding`` is the head's
      input (by default the mean of the two tokens after the final
      LayerNorm; see ``readout``).

    AST has no batch statistics, so ``train`` only turns dropout on; ``dropout`` (None: as
    ``train``) overrides it, as in the other models.
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
    drop = train if dropout is None else dropout
    x = self.dropout(x, deterministic=not drop, rngs=rngs)
    for block in self.blocks:
      x = block(x, train=drop, rngs=rngs)
    tokens = self.norm(x)
    if self.readout == "cls_dist":
      embedding = (tokens[:, 0] + tokens[:, 1]) / 2
    elif self.readout == "mean":
      embedding = jnp.mean(tokens[:, 2:], axis=1)
    else:
      embedding = (jnp.mean(tokens[:, 2:], axis=1)
                   + jnp.max(tokens[:, 2:], axis=1))
    logits = self.head(self.head_norm(embedding))
    return logits.astype(jnp.float32), {"embedding": embedding,
                                        "tokens": tokens}

  def __call__(self, waveform: jax.Array, *, train: bool = False,
               rngs: Optional[nnx.Rngs] = None):
    """``classify(features(waveform))``; see `classify` for the outputs."""
    return self.classify(self.features(waveform), train=train, rngs=rngs)
