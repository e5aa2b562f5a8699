"""The perturbation constraint of taggant crafting, and the 16-bit export that must respect it.

A poison's perturbation is held in units of a per-clip scale: ``delta = u * s`` with
``s = rms(x) * 10 ** (-db / 20)`` (:func:`snr_scale`). Two constraints are offered
(``CraftConfig.constraint``):

* ``snr`` (``db = snr_db``): the per-clip SNR floor is the L2 ball ``rms(u) <= 1``.
  :func:`project` enforces it together with the [-1, 1] range; :func:`quantize_perturbation` puts
  the perturbation on the 16-bit grid without ever crossing the floor.
* ``stft_mask`` (``db = mask_db``, so ``s`` is only a unit: ``rms(u) = 1`` is a perturbation as
  loud overall as the mask allows): a perceptual bound in every time-frequency bin,

      |STFT(delta)| <= B = max(|STFT(x)| * 10 ** (-mask_db / 20), floor)

  (:class:`StftMask`, :func:`mask_bound`): the perturbation stays ``mask_db`` under the clean
  clip's own spectrum everywhere, and silent bins may carry at most the absolute ``floor``.
  :func:`project` (given a ``mask``) enforces it approximately, by alternating projections
  (:func:`project_mask`), then the [-1, 1] range. The export is exact:
  :func:`quantize_under_mask` returns a perturbation on the 16-bit grid whose measured
  ``|STFT|`` is within ``B`` in every bin, shrinking (to zero in the worst case) what the
  approximate projection and the rounding left over.

The mask's STFT is :func:`jaxtag.audio.spectral.stft` centred with zero padding
(``pad_mode="constant"``): with it the weighted overlap-add inverse (``spectral.istft``) is the
orthogonal projection onto consistent spectrograms (the STFT's Gram matrix is the diagonal window
sum of squares), so each alternating-projection round is a pair of exact projections onto convex
sets and never increases the distance to the allowed set (:func:`mask_excess`). Its DFT is a
product with a constant matrix rather than an FFT (:meth:`StftMask.stft`), so that under the
craft's sharding (poisons split over devices) the projection stays on each device's poisons.
Pure ``jnp``; shapes are ``(..., T)``, spectrograms ``(..., frames, bins)``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxtag.audio import spectral

PCM16_SCALE = 32768.0     # jaxtag.audio.io.to_pcm16's scale: the 16-bit grid is m / 32768.
PCM16_MAX = 32767.0 / PCM16_SCALE   # the largest value a 16-bit sample holds.
# The export refines the perturbation towards the bound less this many times the RMS per bin of
# the 16-bit rounding error, so that rounding rarely pushes a bin over (the error's magnitude in a
# bin is about Rayleigh: it exceeds 5 RMS with probability exp(-25) ~ 1e-11).
ROUNDING_HEADROOM = 5.0
# The export's bins must sit this far under the bound as measured in float32, so that another
# measurement (float64, another FFT) cannot read the exported clip above it: float32 FFT error is
# ~1e-6 relative to a frame's energy; 0.01 dB is 1.2e-3 relative.
EXPORT_SAFETY_DB = 0.01


def snr_scale(x: jax.Array, snr_db: float) -> jax.Array:
  """Per-clip RMS budget ``rms(x) * 10^(-snr_db/20)`` of the perturbation; ``x`` is (..., T)."""
  rms = jnp.sqrt(jnp.mean(jnp.square(x.astype(jnp.float32)), axis=-1))
  return rms * 10.0 ** (-snr_db / 20.0)


# --------------------------------------------------------------------------------------------
# The projection (SNR ball or mask) and the 16-bit grid
# --------------------------------------------------------------------------------------------


def _box(u: jax.Array, x: jax.Array, scale: jax.Array) -> jax.Array:
  """``u`` clipped so that ``x + u * scale`` lies in what a 16-bit sample holds, [-1, 32767/32768]
  (a clip pushed to +1 would be written as 32767/32768: one step off what was crafted, which the
  export's read-back refuses); zero where ``scale == 0``."""
  s = scale[..., None]
  safe = jnp.where(s > 0, s, 1.0)
  u = jnp.clip(u, (-1.0 - x) / safe, (PCM16_MAX - x) / safe)
  return jnp.where(s > 0, u, 0.0)


def project(u: jax.Array, x: jax.Array, scale: jax.Array, *,
            mask: StftMask | None = None) -> jax.Array:
  """Projects ``u`` (budget units, (..., T)) onto the constraint and ``x + u * scale`` in [-1, 1].

  Without ``mask``: onto ``rms(u) <= 1`` (the SNR ball); the box step only moves samples towards
  zero perturbation, so it keeps the L2 bound. With ``mask``: ``delta = u * scale`` is brought
  under the mask's bound by :func:`project_mask` (approximate: ``mask.iterations`` rounds of
  alternating projections), then the box, which may leave a bin slightly above its bound
  (the export, :func:`quantize_under_mask`, is exact). Silent clips (``scale == 0``) get no
  perturbation.
  """
  if mask is not None:
    s = scale[..., None]
    delta = project_mask(u * s, mask_bound(x, mask), mask)
    return _box(delta / jnp.where(s > 0, s, 1.0), x, scale)
  rms = jnp.sqrt(jnp.mean(jnp.square(u), axis=-1, keepdims=True))
  u = u / jnp.maximum(rms, 1.0)
  return _box(u, x, scale)


def quantize_perturbation(x: jax.Array, delta: jax.Array, snr_db: float) -> jax.Array:
  """The perturbation that the 16-bit export of ``x + delta`` carries, never below the SNR floor.

  ``x`` is assumed on the 16-bit grid (clips read from 16-bit WAV are). Per clip, rounding
  ``delta`` to the grid is used when it keeps ``10 log10(|x|^2/|delta_q|^2) >= snr_db``, otherwise
  truncation towards zero (which can only shrink every sample, so it keeps the floor).
  """
  rounded = round_to_grid(delta)
  truncated = jnp.trunc(delta * PCM16_SCALE) / PCM16_SCALE
  limit = jnp.sum(jnp.square(x), -1, keepdims=True) * 10.0 ** (-snr_db / 10.0)
  ok = jnp.sum(jnp.square(rounded), -1, keepdims=True) <= limit
  return jnp.where(ok, rounded, truncated)


def round_to_grid(delta: jax.Array) -> jax.Array:
  """``delta`` rounded to the nearest 16-bit step (``x + delta`` stays on the grid with ``x``)."""
  return jnp.round(delta * PCM16_SCALE) / PCM16_SCALE


# --------------------------------------------------------------------------------------------
# The STFT mask
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class StftMask:
  """The perceptual bound ``|STFT(delta)| <= max(|STFT(x)| * 10^(-mask_db/20), floor)``.

  Attributes:
    mask_db: how far under the clean clip's own STFT magnitude the perturbation stays, per bin.
    floor_db: the absolute per-bin floor in dBFS, where 0 dBFS is the peak bin of a full-scale
      sine (``|X| = sum(window) / 2``), so that silent bins (digital silence, pauses) may carry a
      tiny perturbation. The default, -100 dBFS, is 20 dB above the 16-bit rounding noise per
      bin (uniform +-0.5 step: ``2^-15 / sqrt(12) * sqrt(sum(w^2)) / (sum(w) / 2)``, -120.4 dBFS
      for a 512-point Hann window; :attr:`rounding_noise`), so that rounding the perturbation to
      the grid does not by itself break the floor; white noise at the floor is about -81 dBFS
      RMS (3 steps of 16 bits), inaudible at any listening level that does not clip the clip.
    n_fft, hop_length, window: the STFT geometry (centred frames, zero padding).
    iterations: rounds of alternating projections in :func:`project_mask`.
  """

  mask_db: float = 20.0
  floor_db: float = -100.0
  n_fft: int = 512
  hop_length: int = 128
  window: str = "hann"
  iterations: int = 4

  @property
  def full_scale(self) -> float:
    """``|STFT|`` of a full-scale sine's peak bin: ``sum(window) / 2`` (what 0 dBFS means)."""
    return float(np.sum(spectral.get_window(self.window, self.n_fft, self.n_fft),
                        dtype=np.float64) / 2.0)

  @property
  def floor(self) -> float:
    """The absolute floor of ``|STFT(delta)|`` per bin."""
    return self.full_scale * 10.0 ** (self.floor_db / 20.0)

  def _window(self) -> np.ndarray:
    return spectral.get_window(self.window, self.n_fft, self.n_fft)

  def _dft(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Host constants: the real DFT ``(n_fft, bins)`` as cosine and sine matrices, and its
    inverse ``(bins, n_fft)`` with ``numpy.fft.irfft``'s conventions."""
    t = np.arange(self.n_fft, dtype=np.float64)
    k = np.arange(self.n_fft // 2 + 1, dtype=np.float64)
    angle = 2.0 * np.pi * np.outer(t, k) / self.n_fft
    weight = self.bin_weights().astype(np.float64)[:, None] / self.n_fft
    return (np.cos(angle).astype(np.float32), (-np.sin(angle)).astype(np.float32),
            (weight * np.cos(angle.T)).astype(np.float32),
            (-weight * np.sin(angle.T)).astype(np.float32))

  def stft(self, x: jax.Array) -> jax.Array:
    """The mask's STFT of ``(..., T)`` waveforms: ``(..., frames, n_fft // 2 + 1)`` complex.

    Equal to :func:`jaxtag.audio.spectral.stft` with ``center=True, pad_mode="constant"``, but
    the DFT is a matrix product: XLA's SPMD partitioner gathers an FFT's operand onto every
    device when a batch axis is sharded (and XLA:CPU then fails on the gathered layout of a
    poison axis sharded in the middle), while a product with a constant matrix stays on each
    device's poisons. It costs about twice the FFT's time on CPU at 512 points.
    """
    pad = self.n_fft // 2
    x = jnp.asarray(x, jnp.float32)
    x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(pad, pad)])
    frames = spectral.frame(x, frame_length=self.n_fft, hop_length=self.hop_length)
    frames = frames * self._window()
    cos, sin, _, _ = self._dft()
    hi = jax.lax.Precision.HIGHEST   # no TF32/bf16 passes on accelerators: the bound is exact
    return jax.lax.complex(jnp.matmul(frames, cos, precision=hi),
                           jnp.matmul(frames, sin, precision=hi))

  def istft(self, spec: jax.Array, length: int) -> jax.Array:
    """The least-squares waveform of ``length`` samples whose :meth:`stft` is nearest ``spec``
    (:func:`jaxtag.audio.spectral.istft`'s weighted overlap-add, with the DFT as a product)."""
    _, _, icos, isin = self._dft()
    hi = jax.lax.Precision.HIGHEST
    frames = (jnp.matmul(jnp.real(spec), icos, precision=hi)
              + jnp.matmul(jnp.imag(spec), isin, precision=hi))
    signal = spectral.overlap_add(frames * self._window(), hop_length=self.hop_length)
    norm = spectral.window_sumsquare(self.window, n_frames=spec.shape[-2], n_fft=self.n_fft,
                                     hop_length=self.hop_length)
    start = self.n_fft // 2
    extra = max(0, start + length - signal.shape[-1])
    signal = jnp.pad(signal, [(0, 0)] * (signal.ndim - 1) + [(0, extra)])
    norm = np.pad(norm, (0, extra))[start:start + length]
    tiny = np.finfo(np.float32).tiny
    scale = np.where(norm > tiny, 1.0 / np.maximum(norm, tiny), 0.0).astype(np.float32)
    return signal[..., start:start + length] * scale

  @property
  def rounding_noise(self) -> float:
    """RMS per bin of ``|STFT|`` of the 16-bit rounding error (uniform in +-half a step):
    ``2^-15 / sqrt(12) * sqrt(sum(window^2))``."""
    energy = float(np.sum(np.square(self._window(), dtype=np.float64)))
    return float(np.sqrt(energy / 12.0) / PCM16_SCALE)

  def bin_weights(self) -> np.ndarray:
    """Per-bin weight of the one-sided spectrum in the full spectrum's norm (1 at DC and
    Nyquist, 2 elsewhere): the norm in which :func:`project_mask` is a pair of projections."""
    w = np.full(self.n_fft // 2 + 1, 2.0, np.float32)
    w[0] = 1.0
    if self.n_fft % 2 == 0:
      w[-1] = 1.0
    return w


def check_mask_settings(config, name) -> None:
  """Validates ``CraftConfig``'s ``constraint`` and ``mask_*`` settings (``config``: anything
  with those attributes); ``name(field)`` spells an option for the message.

  Raises:
    ValueError: a setting out of range, naming its option.
  """
  if config.constraint not in ("snr", "stft_mask"):
    raise ValueError(f"{name('constraint')} must be 'snr' or 'stft_mask'; got "
                     f"{config.constraint!r}.")
  if not 0 <= config.mask_db < float("inf"):
    raise ValueError(f"{name('mask_db')} must be a finite number of dB >= 0; got {config.mask_db}.")
  if not -200 <= config.mask_floor_db <= 0:
    raise ValueError(f"{name('mask_floor_db')} must be in [-200, 0] dBFS; got "
                     f"{config.mask_floor_db}.")
  if config.mask_n_fft < 2:
    raise ValueError(f"{name('mask_n_fft')} must be >= 2; got {config.mask_n_fft}.")
  if not 1 <= config.mask_hop_length <= config.mask_n_fft // 2:
    raise ValueError(f"{name('mask_hop_length')} must be in [1, {name('mask_n_fft')} // 2 = "
                     f"{config.mask_n_fft // 2}] (overlapping frames reconstruct every sample); "
                     f"got {config.mask_hop_length}.")
  try:
    spectral.get_window(config.mask_window, config.mask_n_fft, config.mask_n_fft)
  except ValueError as e:
    raise ValueError(f"{name('mask_window')}: {e}") from None
  if config.mask_iterations < 0:
    raise ValueError(f"{name('mask_iterations')} must be >= 0; got {config.mask_iterations}.")


def mask_bound(x: jax.Array, mask: StftMask) -> jax.Array:
  """``B = max(|STFT(x)| * 10^(-mask_db/20), floor)`` of clean clips ``x`` (..., T)."""
  level = jnp.abs(mask.stft(x)) * 10.0 ** (-mask.mask_db / 20.0)
  return jnp.maximum(level, mask.floor)


def clip_magnitudes(spec: jax.Array, bound: jax.Array) -> jax.Array:
  """Each bin's magnitude clipped to its ``bound``, phase kept (the projection onto the set
  ``|spec| <= bound``, bin by bin)."""
  mag = jnp.abs(spec)
  factor = jnp.where(mag > bound, bound / jnp.where(mag > 0, mag, 1.0), 1.0)
  return spec * factor


def project_mask(delta: jax.Array, bound: jax.Array, mask: StftMask, *,
                 iterations: int | None = None) -> jax.Array:
  """Brings ``delta`` (..., T) towards ``|STFT(delta)| <= bound`` by alternating projections.

  Each round: STFT, clip every bin's magnitude to its bound keeping the phase, ISTFT. The clipped
  spectrogram is generally not the STFT of any signal, so the ISTFT's least-squares waveform can
  leave bins above their bound: after finitely many rounds the result is approximate (the
  violation, :func:`mask_excess`, never increases from one round to the next and tends to zero;
  :func:`quantize_under_mask` makes the export exact). A ``delta`` that already holds the bound
  is returned unchanged up to float error.

  Args:
    delta: perturbations ``(..., T)``.
    bound: :func:`mask_bound` of their clean clips.
    mask: the STFT geometry.
    iterations: rounds (default ``mask.iterations``); 0 returns ``delta``.
  """
  length = delta.shape[-1]
  rounds = mask.iterations if iterations is None else iterations

  def one_round(_, d):
    return mask.istft(clip_magnitudes(mask.stft(d), bound), length)

  return jax.lax.fori_loop(0, rounds, one_round, delta.astype(jnp.float32))


def mask_excess(delta: jax.Array, bound: jax.Array, mask: StftMask) -> jax.Array:
  """Per clip, how far ``STFT(delta)`` lies from the allowed set: the norm of
  ``max(|STFT(delta)| - bound, 0)`` over bins (one-sided bins weighted as in the full spectrum);
  0 exactly when the bound holds."""
  over = jnp.maximum(jnp.abs(mask.stft(delta)) - bound, 0.0)
  return jnp.sqrt(jnp.sum(jnp.square(over) * mask.bin_weights(), axis=(-2, -1)))


def mask_margin_db(delta: jax.Array, bound: jax.Array, mask: StftMask) -> jax.Array:
  """Per clip, the worst bin: ``max 20 log10(|STFT(delta)| / bound)`` in dB (<= 0: the bound
  holds; -inf for a zero perturbation)."""
  ratio = jnp.max(jnp.abs(mask.stft(delta)) / bound, axis=(-2, -1))
  return 20.0 * jnp.log10(ratio)


def quantize_under_mask(x: jax.Array, delta: jax.Array, mask: StftMask, *, refine: int = 16,
                        max_trials: int = 32) -> jax.Array:
  """The 16-bit perturbation to export for ``x + delta``, holding the mask's bound exactly.

  ``delta`` is first brought closer to the bound by ``refine`` more rounds of
  :func:`project_mask` (crafting ran only ``mask.iterations`` per step), towards the bound less
  :data:`ROUNDING_HEADROOM` times the rounding error's RMS per bin (:attr:`StftMask.rounding_noise`)
  so that rounding to the grid seldom crosses it where the bound is low (the floor). Then, per
  clip, the candidate ``q = round(alpha * delta)`` on the 16-bit grid, clipped so that
  ``x + q`` stays within what a 16-bit sample holds ([-1, 32767/32768]: ``q`` is then exactly the
  exported clip's perturbation), is measured: ``|STFT(q)|`` against ``bound * 10^(-0.01/20)``
  (:data:`EXPORT_SAFETY_DB` keeps another measurement from reading it above ``bound``). Starting at
  ``alpha = 1``, a clip whose candidate fails shrinks ``alpha`` by its worst bin's ratio (the STFT
  is linear, so before rounding that is just enough) and 1% more, by 10% at least, and tries
  again; one that still fails after ``max_trials`` tries (``alpha`` below 0.9^max_trials) gets
  zero, which always holds. The returned ``q`` is only ever a
  candidate that passed, so the guarantee comes from the measurement, not from the shrinking.

  Args:
    x: clean clips ``(..., T)`` on the 16-bit grid (clips read from 16-bit WAV are).
    delta: their crafted perturbations ``(..., T)``.
    mask: the bound.
    refine: rounds of alternating projections before quantising (0: none).
    max_trials: tries per clip before giving it zero.

  Returns:
    float32 ``(..., T)`` perturbations on the 16-bit grid.
  """
  x = x.astype(jnp.float32)
  delta = delta.astype(jnp.float32)
  bound = mask_bound(x, mask)
  target = jnp.maximum(bound - ROUNDING_HEADROOM * mask.rounding_noise, 0.0)
  delta = project_mask(delta, target, mask, iterations=refine)
  limit = bound * 10.0 ** (-EXPORT_SAFETY_DB / 20.0)
  batch = x.shape[:-1]

  def candidate(alpha):
    q = round_to_grid(alpha[..., None] * delta)
    return jnp.clip(x + q, -1.0, PCM16_MAX) - x

  def body(state):
    trial, alpha, done, out = state
    q = candidate(alpha)
    ratio = jnp.max(jnp.abs(mask.stft(q)) / limit, axis=(-2, -1))
    ok = ~done & (ratio <= 1.0)
    out = jnp.where(ok[..., None], q, out)
    done = done | ok
    alpha = jnp.where(done, alpha, alpha * jnp.minimum(0.9, 0.99 / ratio))
    return trial + 1, alpha, done, out

  def cond(state):
    trial, _, done, _ = state
    return (trial < max_trials) & ~jnp.all(done)

  state = (jnp.zeros((), jnp.int32), jnp.ones(batch, jnp.float32), jnp.zeros(batch, bool),
           jnp.zeros_like(delta))
  return jax.lax.while_loop(cond, body, state)[3]
