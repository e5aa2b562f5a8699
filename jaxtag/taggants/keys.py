"""Secret keys for audio data taggants: their spec and generation.

The key file is written and read by ``jaxtag.taggants.keyfile``.

A key is a random d x d matrix drawn in the log-mel domain, resized to the clip's mel grid, and
turned into a waveform by mel inversion and Griffin-Lim (REFERENCE.md §1.1). Each key carries a
target label. Whoever holds the keys can verify a suspect model (§1.3), so the keys, and the PRNG
key that generated them, must stay secret and must never be put into the published dataset.

Level mapping (the choice this module makes): a matrix value m in [0, 1] becomes the mel level
``db_range * (m - 1)`` dB, i.e. m = 1 is the key's loudest possible cell (0 dB) and m = 0 sits
``db_range`` dB below it. ``Keys.spectrograms`` holds exactly that target, in dB. The waveform is
then scaled to a fixed loudness (``rms_dbfs``, capped by ``peak_dbfs``), so the log-mel measured
on the waveform matches the target up to an additive offset plus the reconstruction error.
Measured Pearson r between the two (64 Griffin-Lim iterations, 8 keys) for db_range 20 / 40 /
80 dB: d = 64 nearest 0.92 / 0.81 / 0.61; d = 64 bilinear 0.97 / 0.96 / 0.87; d = 16 bilinear
>= 0.99 for all three. Quiet cells drown in reconstruction noise, and with d >= 64 single-frame,
single-band detail is finer than a 400-sample window resolves. 40 dB is the default compromise
between contrast and fidelity. Queries and crafting must use ``waveforms`` (what a suspect
hears), never ``spectrograms`` (the design target).

Labels: distinct while K <= C (as in the image reference code); with K > C each class is the
label of floor(K / C) or ceil(K / C) keys (see ``key_labels``).

Key file: a secret archive of ``jaxtag.secrets`` (kind ``jaxtag.taggants.keyfile.KEY_FILE``):
ONE zip (stored, not compressed; ``keys.npz`` is a good name, ``numpy.load`` reads its arrays)
holding ``spectrograms.npy``, ``waveforms.npy``, ``labels.npy`` and
``manifest.json``. The manifest records the spec, the class names, library versions, the
creation time, the provenance (the PRNG key data that regenerates the keys: as secret as the keys)
and the SHA-256, dtype and shape of every array, plus a ``fingerprint`` over all of them. The
file is written atomically with mode 0o600. ``load_keys`` re-hashes everything and raises
``KeyFileError`` on any mismatch. A group/world-readable file only warns
(``KeyFilePermissionWarning``; ``strict_permissions=True`` makes it an error), because copies
across machines and buckets often lose their mode and refusing them would block a verification.
The hashes catch corruption and careless edits, not a forger who rewrites the manifest too:
publish the ``fingerprint`` when the dataset is released (it reveals nothing about the keys) to
commit to the keys before any suspect is seen.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from jaxtag import secrets
from jaxtag.audio.reconstruction import griffin_lim
from jaxtag.audio.mel import mel_filterbank, mel_to_linear

FORMAT_NAME = "jaxtag-keys"
FORMAT_VERSION = 1
ARRAY_NAMES = ("spectrograms", "waveforms", "labels")  # Dtypes: jaxtag.taggants.keyfile.KEY_FILE.
# The name that key_provenance records. Key files written before the keys moved into
# jaxtag.taggants record it, and make_or_reuse_keys compares provenances, so it stays as it was.
PROVENANCE_FUNCTION = "jaxtag.keys.make_keys"

# A key file is a secret archive: its errors are the archive's, under the names key users know.
# KeyFileError: a key file that is missing, corrupt, modified, or made for other classes.
KeyFileError = secrets.SecretFileError
# KeyFilePermissionWarning: a key file that users other than its owner can read.
KeyFilePermissionWarning = secrets.SecretFilePermissionWarning


@dataclasses.dataclass(frozen=True)
class KeySpec:
  """How keys are drawn and rendered to audio. Hashable, so it is a static jit argument.

  Attributes:
    num_keys: K, the number of keys.
    d: side of the random d x d matrix before it is resized to the (frames, n_mels) grid.
    distribution: "uniform" (U[0, 1]) or "bernoulli" ((U[0, 1] < p) * U[0, 1]).
    p: probability that a cell is kept when ``distribution == "bernoulli"``.
    interpolation: "nearest" (blocky, piecewise constant) or "bilinear" resize to the mel grid.
    sample_rate, clip_samples, n_fft, win_length, hop_length, n_mels, f_min, f_max, htk,
      mel_norm: mel geometry of the keys (centred STFT, so frames = 1 + clip_samples // hop).
    db_range: dB between matrix value 1 (0 dB) and value 0 (-db_range dB); see module docstring.
    mel_inversion_iters: iterations of the non-negative least-squares mel inversion.
    griffin_lim_iters: Griffin-Lim iterations.
    momentum: fast Griffin-Lim momentum (0 gives plain Griffin-Lim).
    rms_dbfs: RMS level of each output waveform in dBFS, or None to normalise the peak only.
    peak_dbfs: ceiling on each waveform's peak (dBFS); with ``rms_dbfs=None`` the peak is set to it.
  """
  num_keys: int = 10
  d: int = 64
  distribution: str = "uniform"
  p: float = 0.5
  interpolation: str = "nearest"
  sample_rate: int = 16000
  clip_samples: int = 16000
  n_fft: int = 512
  win_length: int = 400
  hop_length: int = 160
  n_mels: int = 128
  f_min: float = 0.0
  f_max: float | None = None
  htk: bool = False
  mel_norm: str | None = "slaney"
  db_range: float = 40.0
  mel_inversion_iters: int = 200
  griffin_lim_iters: int = 64
  momentum: float = 0.99
  rms_dbfs: float | None = -25.0
  peak_dbfs: float = -1.0

  def __post_init__(self):
    for name in ("num_keys", "d", "sample_rate", "clip_samples", "n_fft", "win_length",
                 "hop_length", "n_mels", "mel_inversion_iters", "griffin_lim_iters"):
      _check_int(name, getattr(self, name), minimum=1)
    _check_choice("distribution", self.distribution, ("uniform", "bernoulli"))
    _check_choice("interpolation", self.interpolation, ("nearest", "bilinear"))
    _check_choice("mel_norm", self.mel_norm, ("slaney", None))
    if not isinstance(self.htk, bool):
      raise ValueError(f"KeySpec.htk must be True or False, got {self.htk!r}.")
    _check_float("p", self.p, 0.0, 1.0, low_open=True)
    _check_float("db_range", self.db_range, 0.0, 200.0, low_open=True)
    _check_float("momentum", self.momentum, 0.0, 1.0)
    _check_float("peak_dbfs", self.peak_dbfs, -120.0, 0.0)
    if self.rms_dbfs is not None:
      _check_float("rms_dbfs", self.rms_dbfs, -120.0, 0.0)
    if self.win_length > self.n_fft:
      raise ValueError(f"KeySpec.win_length ({self.win_length}) must be <= n_fft ({self.n_fft}).")
    if self.hop_length > self.win_length:
      raise ValueError(f"KeySpec.hop_length ({self.hop_length}) must be <= win_length "
                       f"({self.win_length}): Griffin-Lim needs overlapping frames.")
    if self.clip_samples <= self.n_fft // 2:
      raise ValueError(f"KeySpec.clip_samples ({self.clip_samples}) must exceed n_fft // 2 "
                       f"({self.n_fft // 2}) for the centred, reflect-padded STFT.")
    if self.n_mels > self.n_fft // 2 + 1:
      raise ValueError(f"KeySpec.n_mels ({self.n_mels}) must be <= n_fft // 2 + 1 "
                       f"({self.n_fft // 2 + 1}).")
    nyquist = self.sample_rate / 2
    _check_float("f_min", self.f_min, 0.0, nyquist, high_open=True)
    if self.f_max is not None:
      _check_float("f_max", self.f_max, self.f_min, nyquist, low_open=True)

  @property
  def n_frames(self) -> int:
    """Frames of the centred STFT of one clip."""
    return 1 + self.clip_samples // self.hop_length

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> KeySpec:
    """Inverse of ``to_dict``; missing fields take their defaults, unknown fields are an error."""
    return secrets.spec_from_dict(cls, d)


def _check_int(name, value, minimum):
  if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
    raise ValueError(f"KeySpec.{name} must be an integer >= {minimum}, got {value!r}.")


def _check_choice(name, value, choices):
  if value not in choices:
    raise ValueError(f"KeySpec.{name} must be one of {choices}, got {value!r}.")


def _check_float(name, value, low, high, low_open=False, high_open=False):
  ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
  if ok:
    ok = (value > low if low_open else value >= low) and (value < high if high_open else
                                                           value <= high)
  if not ok:
    interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    raise ValueError(f"KeySpec.{name} must be a number in {interval}, got {value!r}.")


@dataclasses.dataclass(frozen=True, eq=False)
class Keys:
  """K keys: target log-mel (dB), waveform and label of each, and the spec that made them.

  Attributes:
    spectrograms: float32 (K, frames, n_mels), the target log-mel in dB, in [-db_range, 0].
    waveforms: float32 (K, clip_samples) in [-1, 1].
    labels: int32 (K,), the target class of each key.
    spec: the KeySpec (static pytree metadata).
  """
  spectrograms: Any
  waveforms: Any
  labels: Any
  spec: KeySpec

  @property
  def num_keys(self) -> int:
    return self.labels.shape[0]


jax.tree_util.register_dataclass(
    Keys, data_fields=list(ARRAY_NAMES), meta_fields=["spec"])


@functools.partial(jax.jit, static_argnames=("spec",))
def key_spectrograms(key: jax.Array, spec: KeySpec) -> jax.Array:
  """Draws the K target log-mel spectrograms (dB in [-db_range, 0]), before any audio synthesis.

  Args:
    key: the ``matrix``-and-``mask`` part of the streams is taken from this key exactly as
      ``make_keys`` does, so ``key_spectrograms(k, s)`` equals ``make_keys(k, s, C).spectrograms``.
    spec: the key spec.

  Returns:
    float32 (num_keys, n_frames, n_mels).
  """
  streams = _streams(key)
  shape = (spec.num_keys, spec.d, spec.d)
  matrix = jax.random.uniform(streams["matrix"], shape, jnp.float32)
  if spec.distribution == "bernoulli":
    matrix = matrix * jax.random.bernoulli(streams["mask"], spec.p, shape).astype(jnp.float32)
  method = "nearest" if spec.interpolation == "nearest" else "linear"
  # Axes are (frames, mels), time-major like every jaxtag spectrogram.
  grid = jax.image.resize(matrix, (spec.num_keys, spec.n_frames, spec.n_mels), method)
  return spec.db_range * (jnp.clip(grid, 0.0, 1.0) - 1.0)


def _streams(key):
  """One split into named streams, so that no draw reuses another's key."""
  matrix, mask, labels, phase = jax.random.split(key, 4)
  return {"matrix": matrix, "mask": mask, "labels": labels, "phase": phase}


@functools.partial(jax.jit, static_argnames=("spec", "num_classes"))
def key_labels(key: jax.Array, spec: KeySpec, num_classes: int) -> jax.Array:
  """Draws the K target labels from the ``labels`` stream of ``key``, as ``make_keys`` does.

  The labels are the first K entries of ceil(K / C) independent permutations of the C classes,
  concatenated. With K <= C they are distinct (as in the image reference code); with K > C every
  class is the label of floor(K / C) or ceil(K / C) keys, so no class carries more keys than
  it must.

  Args:
    key: the PRNG key given to ``make_keys``.
    spec: the key spec (only ``num_keys`` is used).
    num_classes: C (a Python int).

  Returns:
    int32 (num_keys,) in [0, num_classes).
  """
  reps = -(-spec.num_keys // num_classes)
  perms = jax.vmap(lambda k: jax.random.permutation(k, num_classes))(
      jax.random.split(_streams(key)["labels"], reps))
  return perms.reshape(-1)[:spec.num_keys].astype(jnp.int32)


def _render(target_db, key, spec):
  """Target log-mel (dB) -> waveform: mel inversion, sqrt, Griffin-Lim, loudness normalisation."""
  filterbank = mel_filterbank(sample_rate=spec.sample_rate, n_fft=spec.n_fft, n_mels=spec.n_mels,
                              f_min=spec.f_min, f_max=spec.f_max, htk=spec.htk,
                              norm=spec.mel_norm)
  linear_power = mel_to_linear(10.0 ** (target_db / 10.0), filterbank,
                               n_iter=spec.mel_inversion_iters)
  magnitude = jnp.sqrt(jnp.maximum(linear_power, 0.0))
  audio = griffin_lim(magnitude, n_fft=spec.n_fft, hop_length=spec.hop_length,
                      win_length=spec.win_length, window="hann", n_iter=spec.griffin_lim_iters,
                      momentum=spec.momentum, length=spec.clip_samples, center=True, key=key)
  return _normalise(audio.astype(jnp.float32), spec)


def _normalise(audio, spec):
  peak = jnp.max(jnp.abs(audio), axis=-1, keepdims=True)
  gain = 10.0 ** (spec.peak_dbfs / 20.0) / jnp.maximum(peak, 1e-12)
  if spec.rms_dbfs is not None:
    rms = jnp.sqrt(jnp.mean(audio ** 2, axis=-1, keepdims=True))
    gain = jnp.minimum(gain, 10.0 ** (spec.rms_dbfs / 20.0) / jnp.maximum(rms, 1e-12))
  # Scaling never clips; the clip only absorbs float rounding when peak_dbfs is 0.
  return jnp.clip(audio * gain, -1.0, 1.0)


@functools.partial(jax.jit, static_argnames=("spec", "num_classes"))
def make_keys(key: jax.Array, spec: KeySpec, num_classes: int) -> Keys:
  """Generates K secret keys: a pure function of ``key`` (jitted; spec and num_classes static).

  The key is split once into the streams ``matrix``, ``mask``, ``labels`` and ``phase``, so the
  Bernoulli keys of a PRNG key are its uniform keys with cells masked to the floor.

  Args:
    key: a JAX PRNG key (typed or raw); record it with ``key_provenance`` and keep it secret.
    spec: the KeySpec.
    num_classes: C, the number of classes of the protected dataset.

  Returns:
    Keys with spectrograms (K, frames, n_mels) dB, waveforms (K, clip_samples), labels (K,).
    Labels are distinct when K <= C; when K > C each class gets floor(K/C) or ceil(K/C) keys.

  Raises:
    ValueError: if num_classes is not an integer >= 1.
  """
  if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or (
      num_classes < 1):
    raise ValueError(f"make_keys: num_classes must be an integer >= 1, got {num_classes!r}.")
  streams = _streams(key)
  target_db = key_spectrograms(key, spec)
  waveforms = _render(target_db, streams["phase"], spec)
  labels = key_labels(key, spec, int(num_classes))
  return Keys(spectrograms=target_db.astype(jnp.float32), waveforms=waveforms, labels=labels,
              spec=spec)


def key_provenance(key: jax.Array, **extra: Any) -> dict[str, Any]:
  """What ``save_keys`` should record to regenerate the keys: as secret as the keys themselves.

  Args:
    key: the PRNG key passed to ``make_keys``.
    **extra: JSON-serialisable context, e.g. ``seed=..., stream="keys", config="..."``.

  Returns:
    A JSON-serialisable dict with the key data, the PRNG implementation, and the flags that
    change what that key draws (``jaxtag.secrets.prng_provenance``).
  """
  return secrets.prng_provenance(key, **{"function": PROVENANCE_FUNCTION, **extra})

