"""Mel filterbanks, mel spectrograms, decibels and mel inversion (pure jnp).

Filterbanks equal ``librosa.filters.mel`` (HTK or Slaney mel scale, Slaney
area normalisation or none). Their layout is ``(n_freq, n_mels)`` so that a
time-major spectrogram ``(..., frames, n_freq)`` maps to mel with a single
``spec @ fb``. The filterbank depends only on static numbers, so it is built
in float64 numpy at trace time and cast once to float32, which reproduces
librosa bit for bit (up to the final rounding) instead of accumulating
float32 error in the mel arithmetic.

`mel_to_linear` inverts a mel spectrogram with non-negative least squares
(pseudo-inverse start, then accelerated projected gradient in a
``lax.fori_loop``), the jnp counterpart of
``librosa.feature.inverse.mel_to_stft`` (which uses L-BFGS-B).
"""

import functools
from typing import Callable, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from jaxtag.audio import spectral as stft_lib

# Slaney's auditory-toolbox scale: linear below 1 kHz, logarithmic above.
_SLANEY_F_SP = 200.0 / 3.0
_SLANEY_MIN_LOG_HZ = 1000.0
_SLANEY_MIN_LOG_MEL = _SLANEY_MIN_LOG_HZ / _SLANEY_F_SP
_SLANEY_LOGSTEP = float(np.log(6.4) / 27.0)


def _hz_to_mel(f, htk: bool, xp):
  if htk:
    return 2595.0 * xp.log10(1.0 + f / 700.0)
  linear = f / _SLANEY_F_SP
  # The maximum keeps the unused branch finite, so gradients stay clean.
  log_part = _SLANEY_MIN_LOG_MEL + xp.log(
      xp.maximum(f, _SLANEY_MIN_LOG_HZ) / _SLANEY_MIN_LOG_HZ) / _SLANEY_LOGSTEP
  return xp.where(f >= _SLANEY_MIN_LOG_HZ, log_part, linear)


def _mel_to_hz(m, htk: bool, xp):
  if htk:
    return 700.0 * (10.0**(m / 2595.0) - 1.0)
  linear = _SLANEY_F_SP * m
  log_part = _SLANEY_MIN_LOG_HZ * xp.exp(
      _SLANEY_LOGSTEP * (xp.maximum(m, _SLANEY_MIN_LOG_MEL) - _SLANEY_MIN_LOG_MEL))
  return xp.where(m >= _SLANEY_MIN_LOG_MEL, log_part, linear)


def hz_to_mel(f, htk: bool = False) -> jnp.ndarray:
  """Converts Hz to mels (``librosa.hz_to_mel``).

  Args:
    f: frequencies in Hz (array-like).
    htk: use the HTK formula ``2595 log10(1 + f / 700)`` instead of Slaney's.

  Returns:
    Mel values with the shape of ``f``.
  """
  return _hz_to_mel(jnp.asarray(f, jnp.float32), htk, jnp)


def mel_to_hz(m, htk: bool = False) -> jnp.ndarray:
  """Converts mels to Hz (``librosa.mel_to_hz``), the inverse of `hz_to_mel`."""
  return _mel_to_hz(jnp.asarray(m, jnp.float32), htk, jnp)


def mel_filterbank(*, sample_rate: int, n_fft: int, n_mels: int,
                   f_min: float = 0.0, f_max: Optional[float] = None,
                   htk: bool = False,
                   norm: Optional[str] = "slaney") -> jnp.ndarray:
  """Triangular mel filterbank equal to ``librosa.filters.mel(...).T``.

  Args:
    sample_rate: sampling rate in Hz.
    n_fft: FFT size; the bank has ``n_fft // 2 + 1`` frequency rows.
    n_mels: number of mel bands.
    f_min: lowest band edge in Hz.
    f_max: highest band edge in Hz (default: Nyquist).
    htk: HTK mel scale instead of Slaney's.
    norm: ``"slaney"`` divides each triangle by half its width in Hz
      (constant area); ``None`` leaves peaks at 1.

  Returns:
    float32 array of shape ``(n_fft // 2 + 1, n_mels)``.

  Raises:
    ValueError: for an unknown ``norm`` or an empty frequency range.
  """
  if norm not in ("slaney", None):
    raise ValueError(f"norm must be 'slaney' or None, got {norm!r}.")
  f_max = sample_rate / 2.0 if f_max is None else float(f_max)
  if not 0.0 <= f_min < f_max:
    raise ValueError(
        f"Need 0 <= f_min < f_max, got f_min={f_min}, f_max={f_max}.")
  fft_freqs = np.fft.rfftfreq(n_fft, d=1.0 / sample_rate)
  mel_edges = np.linspace(
      _hz_to_mel(np.float64(f_min), htk, np), _hz_to_mel(np.float64(f_max), htk, np),
      n_mels + 2)
  hz_edges = _mel_to_hz(mel_edges, htk, np)
  widths = np.diff(hz_edges)
  ramps = hz_edges[:, None] - fft_freqs[None, :]
  lower = -ramps[:-2] / widths[:-1, None]
  upper = ramps[2:] / widths[1:, None]
  weights = np.maximum(0.0, np.minimum(lower, upper))
  if norm == "slaney":
    weights *= (2.0 / (hz_edges[2:] - hz_edges[:-2]))[:, None]
  return jnp.asarray(weights.T.astype(np.float32))


def mel_spectrogram(x: jnp.ndarray, *, sample_rate: int, n_fft: int,
                    hop_length: int, n_mels: int,
                    win_length: Optional[int] = None, window="hann",
                    f_min: float = 0.0, f_max: Optional[float] = None,
                    power: float = 2.0, htk: bool = False,
                    norm: Optional[str] = "slaney", center: bool = True,
                    pad_mode: str = "reflect") -> jnp.ndarray:
  """Mel spectrogram, equal to ``librosa.feature.melspectrogram`` transposed.

  Args:
    x: waveform(s) of shape ``(..., T)``.
    sample_rate: sampling rate in Hz.
    n_fft: FFT size.
    hop_length: samples between frames.
    n_mels: number of mel bands.
    win_length: window length (default ``n_fft``).
    window: window name or array (see `stft.get_window`).
    f_min: lowest mel edge in Hz.
    f_max: highest mel edge in Hz (default Nyquist).
    power: exponent of the magnitude (2 = power, 1 = magnitude).
    htk: HTK mel scale.
    norm: filterbank normalisation (``"slaney"`` or ``None``).
    center: centre frames (see `stft.stft`).
    pad_mode: padding mode when ``center`` (librosa's default is
      ``"constant"``; pass that to reproduce it).

  Returns:
    float32 array of shape ``(..., n_frames, n_mels)``.
  """
  spec = stft_lib.stft(x, n_fft=n_fft, hop_length=hop_length,
                       win_length=win_length, window=window, center=center,
                       pad_mode=pad_mode)
  magnitude = _power_spectrum(spec, power)
  fb = mel_filterbank(sample_rate=sample_rate, n_fft=n_fft, n_mels=n_mels,
                      f_min=f_min, f_max=f_max, htk=htk, norm=norm)
  return jnp.matmul(magnitude, fb, precision=jax.lax.Precision.HIGHEST)


def _power_spectrum(spec: jnp.ndarray, power: float) -> jnp.ndarray:
  """|spec| ** power with a gradient that stays finite at zero bins."""
  squared = jnp.real(spec)**2 + jnp.imag(spec)**2
  if power == 2.0:
    return squared
  # d/dz |z| is undefined at 0; the tiny floor keeps gradients finite there.
  return jnp.maximum(squared, 1e-30)**(power / 2.0)


def log_mel_spectrogram(x: jnp.ndarray, *, eps: float = 1e-6,
                        **mel_kwargs) -> jnp.ndarray:
  """Natural-log mel spectrogram ``log(mel_spectrogram(x) + eps)``.

  For decibels with ``amin``/``top_db`` use
  ``power_to_db(mel_spectrogram(x, ...), ...)`` instead.

  Args:
    x: waveform(s) of shape ``(..., T)``.
    eps: additive floor inside the log; keeps silence finite and gradients
      bounded.
    **mel_kwargs: keyword arguments of `mel_spectrogram`.

  Returns:
    float32 array of shape ``(..., n_frames, n_mels)``.
  """
  return jnp.log(mel_spectrogram(x, **mel_kwargs) + eps)


def power_to_db(S: jnp.ndarray, *, amin: float = 1e-10,
                ref: Union[float, Callable[[jnp.ndarray], jnp.ndarray]] = 1.0,
                top_db: Optional[float] = None) -> jnp.ndarray:
  """Power to decibels, as ``librosa.power_to_db``, batch-aware.

  Args:
    S: power spectrogram(s) ``(..., frames, bins)``.
    amin: floor on ``S`` (and on ``ref``) before the log.
    ref: reference power, or a callable mapping ``|S|`` to it (for example
      ``lambda s: jnp.max(s, axis=(-2, -1), keepdims=True)`` for a per-example
      maximum; librosa's ``np.max`` would take the maximum over the batch).
    top_db: if given, clip each example to ``max - top_db``; the maximum is
      taken per example over the last two axes (librosa takes it over the
      whole array, identical for a single example).

  Returns:
    float32 array of the shape of ``S``.

  Raises:
    ValueError: if ``amin <= 0`` or ``top_db < 0``.
  """
  if amin <= 0:
    raise ValueError(f"amin must be positive, got {amin}.")
  magnitude = jnp.abs(S) if jnp.iscomplexobj(S) else jnp.asarray(S)
  ref_value = ref(magnitude) if callable(ref) else jnp.abs(ref)
  log_spec = 10.0 * jnp.log10(jnp.maximum(amin, magnitude))
  log_spec = log_spec - 10.0 * jnp.log10(jnp.maximum(amin, ref_value))
  if top_db is not None:
    if top_db < 0:
      raise ValueError(f"top_db must be non-negative, got {top_db}.")
    axes = tuple(range(max(log_spec.ndim - 2, 0), log_spec.ndim))
    peak = jnp.max(log_spec, axis=axes, keepdims=True)
    log_spec = jnp.maximum(log_spec, peak - top_db)
  return log_spec


def mel_to_linear(mel_power: jnp.ndarray, filterbank: jnp.ndarray, *,
                  n_iter: int = 200) -> jnp.ndarray:
  """Inverts a mel spectrogram by non-negative least squares.

  Solves ``min_{L >= 0} ||L @ filterbank - mel_power||^2`` row by row: start
  from the clipped pseudo-inverse solution (librosa's start too), then run
  FISTA (projected gradient with Nesterov momentum and adaptive restart) with
  step ``1 / ||fb^T fb||_2``. Every iteration is a pair of small matmuls, so
  a batch of spectrograms is solved at once.

  Args:
    mel_power: mel spectrogram(s) ``(..., frames, n_mels)`` in the same
      power the filterbank was applied to.
    filterbank: ``(n_freq, n_mels)`` filterbank (see `mel_filterbank`).
    n_iter: projected-gradient iterations after the pseudo-inverse start.

  Returns:
    Non-negative float32 array ``(..., frames, n_freq)``.

  Raises:
    ValueError: if the last axis of ``mel_power`` is not ``n_mels``.
  """
  fb = jnp.asarray(filterbank, jnp.float32)
  mel_power = jnp.asarray(mel_power, jnp.float32)
  if mel_power.shape[-1] != fb.shape[-1]:
    raise ValueError(
        f"mel_power has {mel_power.shape[-1]} bands but the filterbank has "
        f"{fb.shape[-1]}; build the filterbank with the same n_mels.")
  hi = jax.lax.Precision.HIGHEST
  gram = jnp.matmul(fb.T, fb, precision=hi)
  lipschitz = jnp.linalg.eigvalsh(gram)[-1]
  step = 1.0 / jnp.maximum(lipschitz, 1e-30)
  x0 = jnp.maximum(
      jnp.matmul(mel_power, jnp.linalg.pinv(fb), precision=hi), 0.0)
  target = jnp.matmul(mel_power, fb.T, precision=hi)  # fb applied once.
  fbt_fb = jnp.matmul(fb, fb.T, precision=hi)

  def body(_, state):
    x, y, t = state
    grad = jnp.matmul(y, fbt_fb, precision=hi) - target
    x_new = jnp.maximum(y - step * grad, 0.0)
    t_next = 0.5 * (1.0 + jnp.sqrt(1.0 + 4.0 * t * t))
    # Adaptive restart (O'Donoghue & Candes): per row, drop the momentum when
    # it points uphill, which keeps FISTA monotone in practice.
    uphill = jnp.sum((y - x_new) * (x_new - x), axis=-1, keepdims=True) > 0
    y_new = jnp.where(uphill, x_new,
                      x_new + ((t - 1.0) / t_next) * (x_new - x))
    return x_new, y_new, jnp.where(uphill, 1.0, t_next)

  t0 = jnp.ones(x0.shape[:-1] + (1,), jnp.float32)
  x, _, _ = jax.lax.fori_loop(0, n_iter, body, (x0, x0, t0))
  return x


@functools.lru_cache(maxsize=16)
def dct_matrix(n_in: int, n_out: int) -> np.ndarray:
  """Orthonormal DCT-II as an ``(n_in, n_out)`` matrix (``x @ D``).

  Equals ``scipy.fft.dct(x, type=2, norm="ortho")[..., :n_out]``.
  """
  if n_out > n_in:
    raise ValueError(f"Cannot keep {n_out} DCT coefficients of {n_in} inputs.")
  n = np.arange(n_in, dtype=np.float64)[:, None]
  k = np.arange(n_out, dtype=np.float64)[None, :]
  basis = np.cos(np.pi * (2.0 * n + 1.0) * k / (2.0 * n_in))
  scale = np.full((1, n_out), np.sqrt(2.0 / n_in))
  scale[0, 0] = np.sqrt(1.0 / n_in)
  return (basis * scale).astype(np.float32)


def mfcc(x: jax.Array, *, sample_rate: int = 16000, n_mfcc: int = 40,
         n_mels: int = 40, n_fft: int = 512, win_length: int = 400,
         hop_length: int = 160, f_min: float = 0.0,
         f_max: Optional[float] = None, top_db: Optional[float] = 80.0,
         amin: float = 1e-10, center: bool = True,
         pad_mode: str = "reflect") -> jax.Array:
  """MFCCs: orthonormal DCT-II of the decibel mel spectrogram.

  The recipe of ``librosa.feature.mfcc`` (``power_to_db`` with ``ref=1``,
  ``top_db`` clipping per example, DCT-II ortho, no liftering), batched and
  differentiable. With ``pad_mode="constant"`` it reproduces librosa's
  defaults; the default here reflects, as ``jaxtag.audio.mel`` does.

  Args:
    x: waveform(s) ``(..., T)`` in ``[-1, 1]``.
    sample_rate: sampling rate in Hz.
    n_mfcc: coefficients kept.
    n_mels: mel bands (at least ``n_mfcc``).
    n_fft: FFT size.
    win_length: window length in samples (400 = 25 ms at 16 kHz).
    hop_length: hop in samples (160 = 10 ms at 16 kHz).
    f_min: lowest mel edge in Hz.
    f_max: highest mel edge in Hz (default Nyquist).
    top_db: clip each example's decibels to ``max - top_db`` (None: no clip).
    amin: power floor before the log.
    center: centre frames (see ``jaxtag.audio.spectral.stft``).
    pad_mode: padding for ``center``.

  Returns:
    float32 ``(..., n_frames, n_mfcc)``.
  """
  power = mel_spectrogram(
      x, sample_rate=sample_rate, n_fft=n_fft, hop_length=hop_length,
      win_length=win_length, n_mels=n_mels, f_min=f_min, f_max=f_max,
      center=center, pad_mode=pad_mode)
  db = power_to_db(power, amin=amin, top_db=top_db)
  return jnp.matmul(db, dct_matrix(n_mels, n_mfcc),
                    precision=jax.lax.Precision.HIGHEST)
