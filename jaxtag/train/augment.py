"""On-device, keyed data augmentation for training on waveforms (pure ``jnp``).

Models map a waveform to logits through a fixed front end and a trainable body
(``model.features`` then ``model.classify``), so augmentation hooks in at two points:

* **waveform domain**, before the model: time shift (circular or zero-fill), random gain,
  additive white noise at a random SNR, and mixup of waveforms *and* their soft targets;
* **feature domain**, between ``features`` and ``classify``: SpecAugment time and frequency
  masks on the ``(batch, frames, bins)`` features, whatever the front end (log-mel, Kaldi fbank,
  MFCC).

Every function takes an explicit ``jax.random`` key, works on a whole batch (per-example draws
from one key), and is jit-able; the same key always gives the same result. Which augmentations
run is static (an :class:`AugmentConfig` of Python numbers), so a disabled augmentation costs
nothing in the compiled step. The train step draws one key per step with
``fold_in(train_stream, step)``, so a resumed run augments exactly as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxtag import errors


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  """Which augmentations the train step applies, and how strongly (0 or None disables one).

  Attributes:
    max_shift_seconds: time shift drawn uniformly in ``[-max, max]`` seconds per clip.
    shift_mode: ``circular`` (roll; keeps every sample) or ``zero`` (zero-fill what shifts in).
    max_gain_db: gain drawn uniformly in ``[-max, max]`` dB per clip.
    noise_snr_db: ``(low, high)``: white noise added at an SNR drawn uniformly in this range.
    noise_prob: probability that a clip gets noise at all.
    mixup_alpha: mixup with ``lambda ~ Beta(alpha, alpha)`` per clip, partner = a random
      permutation of the batch; targets are mixed with the same lambda.
    freq_mask_width: SpecAugment: the widest frequency mask (bins); each mask's width is uniform
      in ``[0, width]``.
    num_freq_masks: frequency masks per clip.
    time_mask_width: the widest time mask (frames).
    num_time_masks: time masks per clip.
  """

  max_shift_seconds: float = 0.0
  shift_mode: str = "circular"
  max_gain_db: float = 0.0
  noise_snr_db: tuple[float, float] | None = None
  noise_prob: float = 1.0
  mixup_alpha: float = 0.0
  freq_mask_width: int = 0
  num_freq_masks: int = 1
  time_mask_width: int = 0
  num_time_masks: int = 1

  def __post_init__(self):
    def name(field: str) -> str:   # CraftAugment extends this class: name the one in use
      return errors.option(field, owner=type(self).__name__)

    if self.shift_mode not in ("circular", "zero"):
      raise ValueError(f"{name('shift_mode')} must be 'circular' or 'zero'; got "
                       f"{self.shift_mode!r}.")
    for field in ("max_shift_seconds", "max_gain_db", "mixup_alpha", "freq_mask_width",
                  "time_mask_width", "num_freq_masks", "num_time_masks"):
      if getattr(self, field) < 0:
        raise ValueError(f"{name(field)} must be >= 0; got {getattr(self, field)}.")
    if not 0.0 <= self.noise_prob <= 1.0:
      raise ValueError(f"{name('noise_prob')} must lie in [0, 1]; got {self.noise_prob}.")
    if self.noise_snr_db is not None:
      snr = tuple(float(x) for x in self.noise_snr_db)
      if len(snr) != 2 or snr[0] > snr[1]:
        raise ValueError(f"{name('noise_snr_db')} must be (low, high) with low <= high; "
                         f"got {self.noise_snr_db}.")
      object.__setattr__(self, "noise_snr_db", snr)

  @property
  def uses_features(self) -> bool:
    """Whether a feature-domain (SpecAugment) mask is on."""
    return (self.freq_mask_width > 0 and self.num_freq_masks > 0) or (
        self.time_mask_width > 0 and self.num_time_masks > 0)


def time_shift(key: jax.Array, waveforms: jax.Array, *, max_shift: int,
               mode: str = "circular") -> jax.Array:
  """Shifts each clip by an integer number of samples, uniform in ``[-max_shift, max_shift]``.

  Args:
    key: a ``jax.random`` key.
    waveforms: ``(batch, num_samples)``.
    max_shift: largest shift in samples (positive = later in time).
    mode: ``circular`` rolls the clip (energy is preserved); ``zero`` fills with silence.

  Returns:
    The shifted ``(batch, num_samples)`` waveforms.
  """
  batch, length = waveforms.shape
  shifts = jax.random.randint(key, (batch,), -max_shift, max_shift + 1)
  # out[t] = x[(t - s) mod T]: a gather instead of a per-example roll, so it vectorises.
  t = jnp.arange(length)[None, :]
  source = t - shifts[:, None]
  out = jnp.take_along_axis(waveforms, source % length, axis=1)
  if mode == "zero":
    out = jnp.where((source >= 0) & (source < length), out, 0.0)
  elif mode != "circular":
    raise ValueError(f"time_shift: mode must be 'circular' or 'zero'; got {mode!r}.")
  return out


def random_gain(key: jax.Array, waveforms: jax.Array, *, max_db: float) -> jax.Array:
  """Scales each clip by a gain uniform in ``[-max_db, max_db]`` dB."""
  gain_db = jax.random.uniform(key, (waveforms.shape[0], 1), minval=-max_db, maxval=max_db)
  return waveforms * 10.0 ** (gain_db / 20.0)


def add_noise(key: jax.Array, waveforms: jax.Array, *, snr_db: tuple[float, float],
              prob: float = 1.0) -> jax.Array:
  """Adds white Gaussian noise at an SNR (w.r.t. each clip's own power) uniform in ``snr_db``.

  A silent clip stays silent (its power is zero, and so is the noise's).

  Args:
    key: a ``jax.random`` key.
    waveforms: ``(batch, num_samples)``.
    snr_db: ``(low, high)`` signal-to-noise ratio range in dB.
    prob: probability that a clip gets noise.

  Returns:
    The noisy ``(batch, num_samples)`` waveforms.
  """
  k_snr, k_noise, k_on = jax.random.split(key, 3)
  batch = waveforms.shape[0]
  snr = jax.random.uniform(k_snr, (batch, 1), minval=snr_db[0], maxval=snr_db[1])
  power = jnp.mean(jnp.square(waveforms), axis=1, keepdims=True)
  noise = jax.random.normal(k_noise, waveforms.shape, waveforms.dtype)
  scale = jnp.sqrt(power / 10.0 ** (snr / 10.0))
  on = jax.random.bernoulli(k_on, prob, (batch, 1))
  return waveforms + jnp.where(on, scale, 0.0) * noise


def mixup(key: jax.Array, waveforms: jax.Array, targets: jax.Array, *,
          alpha: float) -> tuple[jax.Array, jax.Array]:
  """Mixes each clip with a random partner from the batch, and its target with the same weight.

  ``x_i' = lam_i x_i + (1 - lam_i) x_perm(i)`` and ``y_i' = lam_i y_i + (1 - lam_i) y_perm(i)``
  with ``lam_i ~ Beta(alpha, alpha)``.

  Args:
    key: a ``jax.random`` key.
    waveforms: ``(batch, num_samples)``.
    targets: ``(batch, num_classes)`` probabilities (e.g. one-hot).
    alpha: Beta concentration (> 0).

  Returns:
    ``(mixed waveforms, mixed targets)``.
  """
  k_lam, k_perm = jax.random.split(key)
  batch = waveforms.shape[0]
  lam = jax.random.beta(k_lam, alpha, alpha, (batch, 1)).astype(waveforms.dtype)
  perm = jax.random.permutation(k_perm, batch)
  mixed = lam * waveforms + (1.0 - lam) * waveforms[perm]
  lam_t = lam.astype(targets.dtype)
  return mixed, lam_t * targets + (1.0 - lam_t) * targets[perm]


def band_masks(key: jax.Array, batch: int, size: int, *, max_width: int,
               num_masks: int) -> jax.Array:
  """Boolean ``(batch, size)`` masks: the union of ``num_masks`` random bands per row.

  Each band's width is uniform in ``[0, max_width]`` (capped at ``size``) and its start uniform
  over the positions where it fits, as in SpecAugment and torchaudio's masking transforms.
  """
  max_width = min(int(max_width), size)
  k_width, k_start = jax.random.split(key)
  width = jax.random.randint(k_width, (batch, num_masks, 1), 0, max_width + 1)
  start = jnp.floor(jax.random.uniform(k_start, (batch, num_masks, 1))
                    * (size - width + 1)).astype(jnp.int32)
  pos = jnp.arange(size)[None, None, :]
  return jnp.any((pos >= start) & (pos < start + width), axis=1)


def spec_augment(key: jax.Array, features: jax.Array, *, freq_mask_width: int,
                 num_freq_masks: int = 1, time_mask_width: int = 0,
                 num_time_masks: int = 1) -> jax.Array:
  """SpecAugment time and frequency masks on ``(batch, frames, bins)`` features.

  Masked cells are set to each clip's mean feature value, which is "no information" for any
  front end (for a normalised fbank it is about 0, for a raw log-mel it is not; a fill of 0
  would be a loud or a silent band depending on the front end).

  Args:
    key: a ``jax.random`` key.
    features: ``(batch, frames, bins)``.
    freq_mask_width: widest frequency band (bins); 0 disables frequency masks.
    num_freq_masks: frequency bands per clip.
    time_mask_width: widest time band (frames); 0 disables time masks.
    num_time_masks: time bands per clip.

  Returns:
    The masked features, same shape and dtype.
  """
  batch, frames, bins = features.shape
  k_freq, k_time = jax.random.split(key)
  mask = jnp.zeros((batch, frames, bins), bool)
  if freq_mask_width > 0 and num_freq_masks > 0:
    mask |= band_masks(k_freq, batch, bins, max_width=freq_mask_width,
                       num_masks=num_freq_masks)[:, None, :]
  if time_mask_width > 0 and num_time_masks > 0:
    mask |= band_masks(k_time, batch, frames, max_width=time_mask_width,
                       num_masks=num_time_masks)[:, :, None]
  fill = jnp.mean(features, axis=(1, 2), keepdims=True)
  return jnp.where(mask, fill, features)


def augment_waveforms(key: jax.Array, waveforms: jax.Array, targets: jax.Array,
                      config: AugmentConfig, *, sample_rate: int
                      ) -> tuple[jax.Array, jax.Array]:
  """Applies the waveform-domain augmentations of ``config`` in order shift, gain, noise, mixup.

  Args:
    key: this step's waveform-augmentation key.
    waveforms: ``(batch, num_samples)``.
    targets: ``(batch, num_classes)`` soft targets (mixup mixes them).
    config: what to apply.
    sample_rate: sample rate of ``waveforms`` (turns seconds into samples).

  Returns:
    ``(waveforms, targets)``, augmented.
  """
  k_shift, k_gain, k_noise, k_mix = jax.random.split(key, 4)
  max_shift = int(round(config.max_shift_seconds * sample_rate))
  if max_shift > 0:
    waveforms = time_shift(k_shift, waveforms, max_shift=max_shift, mode=config.shift_mode)
  if config.max_gain_db > 0:
    waveforms = random_gain(k_gain, waveforms, max_db=config.max_gain_db)
  if config.noise_snr_db is not None and config.noise_prob > 0:
    waveforms = add_noise(k_noise, waveforms, snr_db=config.noise_snr_db, prob=config.noise_prob)
  if config.mixup_alpha > 0:
    waveforms, targets = mixup(k_mix, waveforms, targets, alpha=config.mixup_alpha)
  return waveforms, targets


def augment_features(key: jax.Array, features: jax.Array, config: AugmentConfig) -> jax.Array:
  """Applies the feature-domain (SpecAugment) masks of ``config``; identity when none is on."""
  if not config.uses_features:
    return features
  return spec_augment(key, features, freq_mask_width=config.freq_mask_width,
                      num_freq_masks=config.num_freq_masks,
                      time_mask_width=config.time_mask_width,
                      num_time_masks=config.num_time_masks)
