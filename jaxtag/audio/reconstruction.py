"""Fast Griffin-Lim phase reconstruction and mel-to-audio inversion (pure jnp).

`griffin_lim` is the fast (momentum) Griffin-Lim algorithm of Perraudin,
Balazs and Sondergaard (2013) with exactly the update of
``librosa.griffinlim``::

  c_n      = STFT(ISTFT(S * phase_n))
  phase_n+1 = normalise(c_n - momentum / (1 + momentum) * c_n-1)

run in a ``lax.fori_loop`` over a whole batch of spectrograms at once. The
random initial phase comes from an explicit ``jax.random`` key, so results
are reproducible and never depend on global state.
"""

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxtag.audio import mel as mel_lib
from jaxtag.audio import spectral as stft_lib

_EPS = float(np.finfo(np.float32).tiny)


def griffin_lim(magnitude: jnp.ndarray, *, n_fft: int, hop_length: int,
                win_length: Optional[int] = None, window="hann",
                n_iter: int = 32, momentum: float = 0.99,
                length: Optional[int] = None, center: bool = True,
                key: Optional[jax.Array] = None, init: str = "random",
                pad_mode: str = "reflect") -> jnp.ndarray:
  """Reconstructs waveforms from STFT magnitudes with fast Griffin-Lim.

  Args:
    magnitude: non-negative magnitudes ``(..., n_frames, n_fft // 2 + 1)``;
      leading axes are a batch.
    n_fft: FFT size.
    hop_length: samples between frames.
    win_length: window length (default ``n_fft``).
    window: window name or array (see `stft.get_window`).
    n_iter: number of iterations.
    momentum: Perraudin momentum; 0 gives classic Griffin-Lim. Values above 1
      are unstable (librosa warns about the same).
    length: output length in samples (see `stft.istft`).
    center: frames are centred (see `stft.stft`).
    key: ``jax.random`` key for the random initial phase; required when
      ``init="random"``.
    init: ``"random"`` (uniform phase) or ``"zeros"`` (zero phase,
      librosa's ``init=None``).
    pad_mode: padding of the re-analysis STFT when ``center``.

  Returns:
    float32 waveforms ``(..., length)``.

  Raises:
    ValueError: for an unknown ``init``, a missing key or a negative momentum.
  """
  if momentum < 0:
    raise ValueError(f"momentum must be non-negative, got {momentum}.")
  magnitude = jnp.asarray(magnitude, jnp.float32)
  if init == "random":
    if key is None:
      raise ValueError(
          "griffin_lim(init='random') needs key=jax.random.key(...); or pass "
          "init='zeros' for a deterministic zero-phase start.")
    phase = jax.random.uniform(key, magnitude.shape, jnp.float32,
                               0.0, 2.0 * jnp.pi)
    angles = jnp.exp(1j * phase.astype(jnp.complex64))
  elif init == "zeros":
    angles = jnp.ones(magnitude.shape, jnp.complex64)
  else:
    raise ValueError(f"init must be 'random' or 'zeros', got {init!r}.")

  geometry = dict(n_fft=n_fft, hop_length=hop_length, win_length=win_length,
                  window=window, center=center)
  n_frames = magnitude.shape[-2]
  if length is None:
    # istft's default: the frames' span minus the centre padding.
    length = hop_length * (n_frames - 1) + n_fft - (
        2 * (n_fft // 2) if center else 0)
  if stft_lib.num_frames(length, n_fft=n_fft, hop_length=hop_length,
                         center=center) != n_frames:
    raise ValueError(
        f"length={length} gives a different number of frames than the "
        f"{n_frames} in `magnitude` for hop_length={hop_length}; pass the "
        "original signal length.")

  def project(spec):
    """Nearest consistent spectrogram: STFT of the ISTFT."""
    wave = stft_lib.istft(spec, length=length, **geometry)
    return stft_lib.stft(wave, pad_mode=pad_mode, **geometry)

  alpha = momentum / (1.0 + momentum)

  def body(_, state):
    spec, previous = state
    rebuilt = project(spec)
    update = rebuilt - alpha * previous
    spec = magnitude * update / (jnp.abs(update) + _EPS)
    return spec, rebuilt

  spec = magnitude * angles
  spec, _ = jax.lax.fori_loop(0, n_iter, body, (spec, jnp.zeros_like(spec)))
  return stft_lib.istft(spec, length=length, **geometry)


def spectral_convergence(magnitude: jnp.ndarray, waveform: jnp.ndarray, *,
                         n_fft: int, hop_length: int,
                         win_length: Optional[int] = None, window="hann",
                         center: bool = True,
                         pad_mode: str = "reflect") -> jnp.ndarray:
  """Spectral convergence ``||S - |STFT(y)| ||_F / ||S||_F`` per example.

  Args:
    magnitude: target magnitudes ``S`` of shape ``(..., n_frames, n_freq)``.
    waveform: reconstruction ``y`` of shape ``(..., T)`` whose STFT has the
      same number of frames.
    n_fft: FFT size.
    hop_length: samples between frames.
    win_length: window length (default ``n_fft``).
    window: window name or array.
    center: frames are centred.
    pad_mode: padding mode when ``center``.

  Returns:
    float32 array of the leading (batch) shape; 0 is a perfect match.

  Raises:
    ValueError: if the STFT of ``waveform`` and ``magnitude`` disagree in
      shape.
  """
  rebuilt = jnp.abs(stft_lib.stft(
      waveform, n_fft=n_fft, hop_length=hop_length, win_length=win_length,
      window=window, center=center, pad_mode=pad_mode))
  magnitude = jnp.asarray(magnitude, jnp.float32)
  if rebuilt.shape[-2:] != magnitude.shape[-2:]:
    raise ValueError(
        f"STFT of the waveform has shape {rebuilt.shape[-2:]}, magnitude has "
        f"{magnitude.shape[-2:]}; use the same geometry and signal length.")
  error = jnp.sqrt(jnp.sum((magnitude - rebuilt)**2, axis=(-2, -1)))
  return error / jnp.sqrt(jnp.sum(magnitude**2, axis=(-2, -1)))


def mel_to_audio(mel_power: jnp.ndarray, *, sample_rate: int, n_fft: int,
                 hop_length: int, win_length: Optional[int] = None,
                 window="hann", f_min: float = 0.0,
                 f_max: Optional[float] = None, htk: bool = False,
                 norm: Optional[str] = "slaney", power: float = 2.0,
                 center: bool = True, length: Optional[int] = None,
                 n_iter: int = 32, momentum: float = 0.99,
                 key: Optional[jax.Array] = None, init: str = "random",
                 nnls_iter: int = 200) -> jnp.ndarray:
  """Inverts a mel spectrogram to audio: NNLS to linear, then Griffin-Lim.

  The jnp counterpart of ``librosa.feature.inverse.mel_to_audio``.

  Args:
    mel_power: mel spectrogram(s) ``(..., n_frames, n_mels)`` made with
      `mel.mel_spectrogram` and the same arguments.
    sample_rate: sampling rate in Hz.
    n_fft: FFT size.
    hop_length: samples between frames.
    win_length: window length.
    window: window name or array.
    f_min: lowest mel edge in Hz.
    f_max: highest mel edge in Hz.
    htk: HTK mel scale.
    norm: filterbank normalisation.
    power: exponent the mel spectrogram was computed with.
    center: frames are centred.
    length: output length in samples.
    n_iter: Griffin-Lim iterations.
    momentum: Griffin-Lim momentum.
    key: key for the random initial phase.
    init: ``"random"`` or ``"zeros"``.
    nnls_iter: iterations of the non-negative least-squares inversion.

  Returns:
    float32 waveforms ``(..., length)``.
  """
  fb = mel_lib.mel_filterbank(sample_rate=sample_rate, n_fft=n_fft,
                              n_mels=mel_power.shape[-1], f_min=f_min,
                              f_max=f_max, htk=htk, norm=norm)
  linear = mel_lib.mel_to_linear(mel_power, fb, n_iter=nnls_iter)
  magnitude = linear**(1.0 / power)
  return griffin_lim(magnitude, n_fft=n_fft, hop_length=hop_length,
                     win_length=win_length, window=window, n_iter=n_iter,
                     momentum=momentum, length=length, center=center, key=key,
                     init=init)
