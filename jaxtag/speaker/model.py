"""Speaker-embedding networks (Flax NNX): the GE2E d-vector LSTM and a small ECAPA-TDNN.

Both take a raw waveform batch ``(n, samples)`` and return ``(embeddings, intermediates)`` with
L2-normalised ``(n, embedding_dim)`` embeddings. The front end is fixed and differentiable
(:func:`log_mel_frames`): 40 log-mel bands over 25 ms Hann windows every 10 ms
(``jaxtag.audio.mel.log_mel_spectrogram``) with a per-utterance mean normalisation
(``feature_norm``): by default the mean log energy over all frames and bands is subtracted, so a
gain does not move the embedding while the long-term spectral envelope (much of a speaker's
identity in a 1 s clip) stays; ``band`` subtracts each band's own mean (cepstral mean
normalisation, which also removes a fixed channel but with it that envelope).

* ``dvector`` (Wan et al. 2018, "Generalized end-to-end loss for speaker verification"):
  stacked LSTMs, a linear projection of the last frame's output, L2 norm. The paper's LSTMs have
  a per-layer projection (LSTMP, 768 cells -> 256); here the LSTMs are plain and one projection
  follows the last layer, as jaxtag's LSTM classifier does.
* ``ecapa`` (Desplanques et al. 2020): a 1-D conv, SE-Res2 blocks with growing dilation, their
  outputs concatenated and mixed by a 1x1 conv, attentive statistics pooling, a linear layer to
  the embedding, L2 norm. LayerNorm over channels replaces the paper's BatchNorm, so that the
  state is parameters only and an utterance's embedding never depends on the rest of its batch
  (the embedder pads batches).

Models build networks only; the GE2E loss lives in ``jaxtag.speaker.ge2e``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtag import errors
from jaxtag.audio import mel as mel_lib

ARCHS = ("dvector", "ecapa")
FEATURE_NORMS = ("utterance", "band", "none")


@dataclasses.dataclass(frozen=True)
class SpeakerModelConfig:
  """A speaker-embedding network and its front end.

  Attributes:
    arch: ``dvector`` (stacked LSTMs) or ``ecapa`` (SE-Res2 TDNN).
    hidden_size: LSTM units (dvector) or conv channels (ecapa).
    num_layers: LSTM layers (dvector) or SE-Res2 blocks (ecapa; dilations 2, 3, 4, ...).
    embedding_dim: D, the width of the L2-normalised embedding.
    res2_scale: Res2Net scale of the ecapa blocks (``hidden_size`` must be a multiple).
    attention_dim: bottleneck of ecapa's attentive statistics pooling.
    n_mels: log-mel bands of the front end.
    feature_norm: per-utterance normalisation of the log-mel frames: ``utterance`` (subtract
      the mean over frames and bands), ``band`` (each band's mean over frames) or ``none``.
    win_ms: analysis window in milliseconds.
    hop_ms: hop between frames in milliseconds.
    sample_rate: sample rate of the waveforms in Hz.
  """

  arch: str = "dvector"
  hidden_size: int = 768
  num_layers: int = 3
  embedding_dim: int = 256
  res2_scale: int = 4
  attention_dim: int = 64
  n_mels: int = 40
  feature_norm: str = "utterance"
  win_ms: float = 25.0
  hop_ms: float = 10.0
  sample_rate: int = 16000

  def __post_init__(self):
    def name(field: str) -> str:
      return errors.option(field, owner="SpeakerModelConfig")

    if self.arch not in ARCHS:
      raise ValueError(f"{name('arch')} must be one of {ARCHS}; got {self.arch!r}.")
    if self.feature_norm not in FEATURE_NORMS:
      raise ValueError(f"{name('feature_norm')} must be one of {FEATURE_NORMS}; got "
                       f"{self.feature_norm!r}.")
    for field in ("hidden_size", "num_layers", "embedding_dim", "res2_scale", "attention_dim",
                  "n_mels", "sample_rate"):
      if int(getattr(self, field)) <= 0:
        raise ValueError(f"{name(field)} must be positive; got {getattr(self, field)}.")
    if not 0 < self.hop_ms <= self.win_ms:
      raise ValueError(f"need 0 < {name('hop_ms')} <= {name('win_ms')}; got {self.hop_ms}, "
                       f"{self.win_ms}.")
    if self.arch == "ecapa" and self.hidden_size % self.res2_scale:
      raise ValueError(f"{name('hidden_size')}={self.hidden_size} must be a multiple of "
                       f"{name('res2_scale')}={self.res2_scale} for ecapa.")

  @property
  def win_length(self) -> int:
    """Window length in samples."""
    return int(round(self.win_ms * self.sample_rate / 1000.0))

  @property
  def hop_length(self) -> int:
    """Hop in samples."""
    return int(round(self.hop_ms * self.sample_rate / 1000.0))

  @property
  def n_fft(self) -> int:
    """FFT size: the next power of two of the window (512 for 25 ms at 16 kHz)."""
    return 1 << max(self.win_length - 1, 1).bit_length()


PRESETS: dict[str, SpeakerModelConfig] = {
    # GE2E's size (3 x 768 LSTM, 256-d); seconds per step on a laptop CPU, meant for a GPU.
    "dvector": SpeakerModelConfig(arch="dvector", hidden_size=768, num_layers=3,
                                  embedding_dim=256),
    # A CPU-demo d-vector.
    "dvector-small": SpeakerModelConfig(arch="dvector", hidden_size=128, num_layers=1,
                                        embedding_dim=64),
    # A small ECAPA-TDNN (64 channels, 2 SE-Res2 blocks), trains in minutes on two CPU cores.
    "ecapa-small": SpeakerModelConfig(arch="ecapa", hidden_size=64, num_layers=2,
                                      embedding_dim=64, res2_scale=4, attention_dim=32),
}


def preset(name: str) -> SpeakerModelConfig:
  """The :data:`PRESETS` entry ``name``, naming the choices when it is unknown."""
  if name not in PRESETS:
    raise ValueError(f"unknown speaker model preset {name!r}; choose one of {sorted(PRESETS)}.")
  return PRESETS[name]


def log_mel_frames(waveform: jax.Array, config: SpeakerModelConfig) -> jax.Array:
  """The front end: mean-normalised log-mel frames ``(n, frames, n_mels)`` of ``(n, samples)``.

  Raises:
    ValueError: a waveform shorter than one analysis window.
  """
  if waveform.ndim != 2:
    raise ValueError(f"speaker models take waveforms (n, samples); got shape {waveform.shape}.")
  if waveform.shape[1] < max(config.win_length, config.n_fft // 2 + 1):
    raise ValueError(
        f"utterances of {waveform.shape[1]} samples are shorter than one "
        f"{config.win_ms} ms analysis frame ({config.win_length} samples at "
        f"{config.sample_rate} Hz); use longer clips.")
  feats = mel_lib.log_mel_spectrogram(
      waveform.astype(jnp.float32), sample_rate=config.sample_rate, n_fft=config.n_fft,
      win_length=config.win_length, hop_length=config.hop_length, n_mels=config.n_mels)
  if config.feature_norm == "none":
    return feats
  axes = (1, 2) if config.feature_norm == "utterance" else 1
  return feats - jnp.mean(feats, axis=axes, keepdims=True)


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """Rows of ``x`` scaled to unit L2 norm (a zero row stays zero)."""
  return x / jnp.sqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps))


class DVector(nnx.Module):
  """GE2E's d-vector: stacked LSTMs, projection of the last frame, L2 norm."""

  def __init__(self, config: SpeakerModelConfig, *, rngs: nnx.Rngs):
    self.config = config
    sizes = [config.n_mels] + [config.hidden_size] * config.num_layers
    # rngs=False: each carry starts at zeros, no random stream is needed.
    self.lstms = nnx.List([
        nnx.RNN(nnx.OptimizedLSTMCell(i, o, rngs=rngs), rngs=False)
        for i, o in zip(sizes[:-1], sizes[1:])])
    self.projection = nnx.Linear(config.hidden_size, config.embedding_dim, rngs=rngs)

  def __call__(self, waveform: jax.Array):
    """``(embeddings (n, D), {"frames": last LSTM outputs (n, frames, hidden)})``."""
    x = log_mel_frames(waveform, self.config)
    zeros = jnp.zeros((x.shape[0], self.config.hidden_size), x.dtype)
    for lstm in self.lstms:
      x = lstm(x, initial_carry=(zeros, zeros))
    return l2_normalize(self.projection(x[:, -1])), {"frames": x}


class SERes2Block(nnx.Module):
  """1x1 conv, Res2 dilated 3-tap convs, 1x1 conv, squeeze-excitation, residual."""

  def __init__(self, channels: int, *, scale: int, dilation: int, rngs: nnx.Rngs):
    width = channels // scale
    self.scale = scale
    self.conv_in = nnx.Conv(channels, channels, (1,), rngs=rngs)
    self.norm_in = nnx.LayerNorm(channels, rngs=rngs)
    self.res2 = nnx.List([
        nnx.Conv(width, width, (3,), kernel_dilation=(dilation,), padding="SAME", rngs=rngs)
        for _ in range(scale - 1)])
    self.res2_norms = nnx.List([nnx.LayerNorm(width, rngs=rngs) for _ in range(scale - 1)])
    self.conv_out = nnx.Conv(channels, channels, (1,), rngs=rngs)
    self.norm_out = nnx.LayerNorm(channels, rngs=rngs)
    self.se_down = nnx.Linear(channels, max(channels // 4, 1), rngs=rngs)
    self.se_up = nnx.Linear(max(channels // 4, 1), channels, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    y = jax.nn.relu(self.norm_in(self.conv_in(x)))
    pieces = jnp.split(y, self.scale, axis=-1)
    out, prev = [pieces[0]], None
    for piece, conv, norm in zip(pieces[1:], self.res2, self.res2_norms):
      prev = jax.nn.relu(norm(conv(piece if prev is None else piece + prev)))
      out.append(prev)
    y = jax.nn.relu(self.norm_out(self.conv_out(jnp.concatenate(out, axis=-1))))
    gate = jax.nn.sigmoid(self.se_up(jax.nn.relu(self.se_down(jnp.mean(y, axis=1)))))
    return x + y * gate[:, None, :]


class ECAPA(nnx.Module):
  """A small ECAPA-TDNN: conv, SE-Res2 blocks, multi-layer aggregation, attentive stats pooling."""

  def __init__(self, config: SpeakerModelConfig, *, rngs: nnx.Rngs):
    self.config = config
    c = config.hidden_size
    self.conv_in = nnx.Conv(config.n_mels, c, (5,), padding="SAME", rngs=rngs)
    self.norm_in = nnx.LayerNorm(c, rngs=rngs)
    self.blocks = nnx.List([SERes2Block(c, scale=config.res2_scale, dilation=2 + i, rngs=rngs)
                            for i in range(config.num_layers)])
    self.aggregate = nnx.Conv(c * config.num_layers, 3 * c, (1,), rngs=rngs)
    # Attention over frames per channel, conditioned on the utterance's global mean and std.
    self.attention_in = nnx.Linear(9 * c, config.attention_dim, rngs=rngs)
    self.attention_out = nnx.Linear(config.attention_dim, 3 * c, rngs=rngs)
    self.norm_pool = nnx.LayerNorm(6 * c, rngs=rngs)
    self.projection = nnx.Linear(6 * c, config.embedding_dim, rngs=rngs)

  def _pool(self, h: jax.Array) -> jax.Array:
    """Attentive statistics pooling: ``(n, frames, C) -> (n, 2C)`` weighted mean and std."""
    mean, std = _mean_std(h, None)
    frames = h.shape[1]
    context = jnp.concatenate([h, jnp.repeat(mean[:, None], frames, 1),
                               jnp.repeat(std[:, None], frames, 1)], axis=-1)
    logits = self.attention_out(jnp.tanh(self.attention_in(context)))
    weights = jax.nn.softmax(logits, axis=1)
    return jnp.concatenate(_mean_std(h, weights), axis=-1)

  def __call__(self, waveform: jax.Array):
    """``(embeddings (n, D), {"frames": aggregated frame features (n, frames, 3C)})``."""
    x = jax.nn.relu(self.norm_in(self.conv_in(log_mel_frames(waveform, self.config))))
    outs = []
    for block in self.blocks:
      x = block(x)
      outs.append(x)
    h = jax.nn.relu(self.aggregate(jnp.concatenate(outs, axis=-1)))
    pooled = self.norm_pool(self._pool(h))
    return l2_normalize(self.projection(pooled)), {"frames": h}


def _mean_std(h: jax.Array, weights: jax.Array | None) -> tuple[jax.Array, jax.Array]:
  """Mean and standard deviation over frames (axis 1), optionally weighted (weights sum to 1)."""
  if weights is None:
    weights = jnp.full(h.shape, 1.0 / h.shape[1], h.dtype)
  mean = jnp.sum(weights * h, axis=1)
  var = jnp.sum(weights * h * h, axis=1) - mean * mean
  return mean, jnp.sqrt(jnp.maximum(var, 1e-6))


def build_speaker_model(config: SpeakerModelConfig, key: jax.Array) -> nnx.Module:
  """The network ``config`` describes, initialised from ``key``.

  Args:
    config: the architecture, sizes and front end.
    key: PRNG key of the initialisation.

  Returns:
    An ``nnx.Module`` mapping waveforms ``(n, samples)`` to ``(embeddings (n, D), intermediates)``.
  """
  rngs = nnx.Rngs(key)
  if config.arch == "dvector":
    return DVector(config, rngs=rngs)
  return ECAPA(config, rngs=rngs)
