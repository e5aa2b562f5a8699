"""Building blocks shared by jaxtag's models.

Self-attention and Transformer encoder blocks (AST, frame Transformer),
conv/BatchNorm blocks and non-overlapping pooling (M5, CNN), sinusoidal
positions, and the fixed, parameter-free MFCC front end (`mfcc`;
``jaxtag.audio`` has log-mel but no MFCC yet).

Attention is written with two einsums and an explicit softmax rather than a
fused kernel: taggant crafting differentiates a function of a parameter
gradient (a second-order derivative), which every plain ``jnp`` op supports
and fused attention kernels generally do not.
"""

import functools
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxtag.audio import mel as mel_lib

# The truncated normal with std 0.02 that ViT/DeiT and the Hugging Face AST
# port use for every Linear/Conv kernel.
TRUNC_NORMAL_002 = nnx.initializers.truncated_normal(stddev=0.02)

_ACTIVATIONS = {
    # Exact (erf) GELU, as torch.nn.GELU() and HF's "gelu".
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "gelu_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "relu": jax.nn.relu,
}


def activation(name: str):
  """Returns the activation function called ``name``.

  Args:
    name: one of "gelu" (exact erf), "gelu_tanh", "relu".

  Raises:
    ValueError: for an unknown name.
  """
  if name not in _ACTIVATIONS:
    raise ValueError(
        f"Unknown activation {name!r}; choose one of {sorted(_ACTIVATIONS)}.")
  return _ACTIVATIONS[name]


class SelfAttention(nnx.Module):
  """Multi-head self-attention with separate query/key/value projections.

  The separate projections (rather than one fused qkv matrix) mirror the
  Hugging Face ViT/AST layout so that checkpoints port one tensor at a time.
  """

  def __init__(self, width: int, num_heads: int, *,
               dropout_rate: float = 0.0, dtype=None,
               kernel_init=TRUNC_NORMAL_002, rngs: nnx.Rngs):
    if width % num_heads:
      raise ValueError(
          f"width={width} is not divisible by num_heads={num_heads}.")
    self.num_heads = num_heads
    self.dtype = dtype
    dense = functools.partial(nnx.Linear, width, width, dtype=dtype,
                              kernel_init=kernel_init, rngs=rngs)
    self.query = dense()
    self.key = dense()
    self.value = dense()
    self.out = dense()
    self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool = False,
               rngs: Optional[nnx.Rngs] = None) -> jax.Array:
    batch, length, width = x.shape
    head_dim = width // self.num_heads
    split = lambda y: y.reshape(batch, length, self.num_heads, head_dim)
    q = split(self.query(x)) * (head_dim**-0.5)
    k = split(self.key(x))
    v = split(self.value(x))
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k)
    # Softmax in float32 even under bfloat16 compute: the row sums are where
    # low precision hurts.
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    probs = self.dropout(probs.astype(v.dtype), deterministic=not train,
                         rngs=rngs)
    out = jnp.einsum("bhqk,bkhd->bqhd", probs, v)
    return self.out(out.reshape(batch, length, width))


class EncoderBlock(nnx.Module):
  """Transformer encoder block (pre-LN as ViT/AST, or post-LN as PyTorch).

  Pre-LN: ``h = x + drop(attn(norm1(x)))``, ``y = h + drop(mlp(norm2(h)))``.
  Post-LN: ``h = norm1(x + drop(attn(x)))``, ``y = norm2(h + drop(mlp(h)))``.
  Attribute names follow HF's ViT layer: ``norm1`` = layernorm_before,
  ``norm2`` = layernorm_after, ``mlp_in`` = intermediate.dense, ``mlp_out`` =
  output.dense.
  """

  def __init__(self, width: int, num_heads: int, mlp_dim: int, *,
               norm_first: bool = True, activation_name: str = "gelu",
               dropout_rate: float = 0.0, attention_dropout_rate: float = 0.0,
               layer_norm_eps: float = 1e-12, dtype=None,
               kernel_init=TRUNC_NORMAL_002, rngs: nnx.Rngs):
    self.norm_first = norm_first
    self.activation_name = activation_name
    activation(activation_name)  # Fail at construction, not first call.
    norm = functools.partial(nnx.LayerNorm, width, epsilon=layer_norm_eps,
                             dtype=dtype, rngs=rngs)
    self.norm1 = norm()
    self.attention = SelfAttention(
        width, num_heads, dropout_rate=attention_dropout_rate, dtype=dtype,
        kernel_init=kernel_init, rngs=rngs)
    self.norm2 = norm()
    self.mlp_in = nnx.Linear(width, mlp_dim, dtype=dtype,
                             kernel_init=kernel_init, rngs=rngs)
    self.mlp_out = nnx.Linear(mlp_dim, width, dtype=dtype,
                              kernel_init=kernel_init, rngs=rngs)
    self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)

  def _mlp(self, x, train, rngs):
    y = activation(self.activation_name)(self.mlp_in(x))
    return self.dropout(self.mlp_out(y), deterministic=not train, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool = False,
               rngs: Optional[nnx.Rngs] = None) -> jax.Array:
    drop = lambda y: self.dropout(y, deterministic=not train, rngs=rngs)
    if self.norm_first:
      x = x + drop(self.attention(self.norm1(x), train=train, rngs=rngs))
      return x + self._mlp(self.norm2(x), train, rngs)
    x = self.norm1(x + drop(self.attention(x, train=train, rngs=rngs)))
    return self.norm2(x + self._mlp(x, train, rngs))


def max_pool(x: jax.Array, window: tuple[int, ...]) -> jax.Array:
  """Non-overlapping max pooling (stride = window), floor mode.

  Written as crop + reshape + max instead of ``lax.reduce_window`` so that it
  is cheap and has simple derivatives of every order.

  Args:
    x: ``(batch, *spatial, channels)``.
    window: pool size per spatial axis.

  Returns:
    ``(batch, *[s // w], channels)``; trailing remainders are dropped, as
    PyTorch's ``MaxPool`` does.
  """
  spatial = x.shape[1:-1]
  if len(window) != len(spatial):
    raise ValueError(f"window {window} does not match spatial dims {spatial}.")
  out = tuple(s // w for s, w in zip(spatial, window))
  if not all(out):
    raise ValueError(f"Input spatial shape {spatial} is smaller than the "
                     f"pooling window {window}; use a longer input.")
  x = x[(slice(None),) + tuple(slice(0, o * w) for o, w in zip(out, window))]
  shape = [x.shape[0]]
  for o, w in zip(out, window):
    shape += [o, w]
  x = x.reshape(shape + [x.shape[-1]])
  return jnp.max(x, axis=tuple(range(2, 2 + 2 * len(window), 2)))


class ConvBNBlock(nnx.Module):
  """Conv -> BatchNorm -> ReLU -> non-overlapping max pool (1-D or 2-D)."""

  def __init__(self, in_channels: int, out_channels: int,
               kernel_size: Sequence[int], *, strides: Sequence[int] = (1,),
               padding: str = "SAME", pool: Sequence[int] = (4,),
               dtype=None, rngs: nnx.Rngs):
    self.pool = tuple(pool)
    self.conv = nnx.Conv(in_channels, out_channels, tuple(kernel_size),
                         strides=tuple(strides), padding=padding,
                         use_bias=False, dtype=dtype, rngs=rngs)
    # PyTorch defaults (momentum 0.1 there = 0.9 here, eps 1e-5).
    self.bn = nnx.BatchNorm(out_channels, momentum=0.9, epsilon=1e-5,
                            dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    x = jax.nn.relu(self.bn(self.conv(x), use_running_average=not train))
    return max_pool(x, self.pool)


@functools.lru_cache(maxsize=16)
def sinusoidal_positions(length: int, width: int) -> np.ndarray:
  """Fixed sine/cosine position encodings ``(length, width)`` (Vaswani)."""
  position = np.arange(length, dtype=np.float64)[:, None]
  rate = np.exp(-np.log(10000.0) * np.arange(0, width, 2) / width)
  table = np.zeros((length, width), np.float64)
  table[:, 0::2] = np.sin(position * rate)
  table[:, 1::2] = np.cos(position * rate)[:, :width // 2]
  return table.astype(np.float32)


dct_matrix = mel_lib.dct_matrix  # re-exported: the MFCC lives with the other mel features
mfcc = mel_lib.mfcc
