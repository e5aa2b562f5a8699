"""Short-time Fourier transform and its inverse, in pure jnp, matching librosa.

Layout is batch-first and time-major: a waveform has shape ``(..., T)`` and a
spectrogram ``(..., n_frames, n_fft // 2 + 1)``; every leading axis is a batch
axis. All functions are jit-, vmap- and grad-able. The window, the framing
indices and the window-square normaliser of the inverse depend only on static
shapes, so they are built with numpy at trace time and enter the graph as
constants.

Conventions follow ``librosa.stft``/``librosa.istft`` (0.11):

* a window shorter than the FFT (``win_length < n_fft``) is zero-padded on
  both sides to ``n_fft`` (centred), not at the end as a plain
  ``rfft(frame * window, n=n_fft)`` would do;
* ``center=True`` pads ``n_fft // 2`` samples on both sides so that frame
  ``t`` is centred at sample ``t * hop_length``;
* the inverse overlap-adds windowed frames and divides by the summed squared
  window wherever it is above ``tiny(float32)``.

Unlike librosa (whose default ``pad_mode`` became ``"constant"`` in 0.10),
the default here is ``"reflect"``, as in torch/torchaudio.
"""

from typing import Optional, Union

import jax.numpy as jnp
import numpy as np

WindowSpec = Union[str, np.ndarray]

_PAD_MODES = ("reflect", "constant", "edge", "symmetric", "wrap")


def _window_values(name: str, win_length: int) -> np.ndarray:
  """Returns a window of ``win_length`` samples in float64."""
  n = np.arange(win_length, dtype=np.float64)
  name = name.lower()
  if name in ("hann", "hamming", "blackman"):
    # Periodic ("fftbins=True") windows, as scipy.signal.get_window and
    # librosa use them for spectral analysis.
    phase = 2.0 * np.pi * n / win_length
    if name == "hann":
      return 0.5 - 0.5 * np.cos(phase)
    if name == "hamming":
      return 0.54 - 0.46 * np.cos(phase)
    return 0.42 - 0.5 * np.cos(phase) + 0.08 * np.cos(2.0 * phase)
  if name in ("hanning", "povey"):
    # Kaldi's windows are symmetric: the denominator is N - 1.
    denom = max(win_length - 1, 1)
    hanning = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / denom)
    return hanning if name == "hanning" else hanning**0.85
  if name in ("rectangular", "boxcar", "ones"):
    return np.ones(win_length)
  raise ValueError(
      f"Unknown window {name!r}; use one of 'hann', 'hamming', 'blackman', "
      "'hanning', 'povey', 'rectangular', or pass an array of win_length "
      "samples.")


def _check_geometry(n_fft: int, hop_length: int,
                    win_length: Optional[int]) -> int:
  """Validates the frame geometry and returns the effective win_length."""
  if n_fft <= 0 or hop_length <= 0:
    raise ValueError(
        f"n_fft ({n_fft}) and hop_length ({hop_length}) must be positive.")
  win_length = n_fft if win_length is None else int(win_length)
  if not 0 < win_length <= n_fft:
    raise ValueError(
        f"win_length ({win_length}) must be in [1, n_fft={n_fft}]; raise "
        "n_fft or shorten the window.")
  return win_length


def get_window(window: WindowSpec, win_length: int, n_fft: int) -> np.ndarray:
  """Builds an analysis window padded to ``n_fft`` samples, as librosa does.

  Args:
    window: a window name ('hann', 'hamming', 'blackman' are periodic as in
      ``scipy.signal.get_window(..., fftbins=True)``; 'hanning' and 'povey'
      are Kaldi's symmetric windows; 'rectangular') or a host (numpy) array
      of ``win_length`` samples; it is a trace-time constant, so it cannot be
      a traced value.
    win_length: number of non-zero window samples, at most ``n_fft``.
    n_fft: FFT size; the window is zero-padded on both sides (centred, with
      the extra sample on the right when the padding is odd) to this length.

  Returns:
    float32 numpy array of shape ``(n_fft,)``. It is a host constant, so it
    can be closed over by jitted functions at no cost.

  Raises:
    ValueError: for an unknown window name, a window array whose length is
      not ``win_length``, or ``win_length > n_fft``.
  """
  win_length = _check_geometry(n_fft, 1, win_length)
  if isinstance(window, str):
    values = _window_values(window, win_length)
  else:
    values = np.asarray(window, dtype=np.float64)
    if values.shape != (win_length,):
      raise ValueError(
          f"Window array has shape {values.shape}, expected ({win_length},) "
          "to match win_length.")
  left = (n_fft - win_length) // 2
  padded = np.zeros(n_fft, dtype=np.float64)
  padded[left:left + win_length] = values
  return padded.astype(np.float32)


def num_frames(num_samples: int, *, n_fft: int, hop_length: int,
               center: bool = True) -> int:
  """Number of STFT frames for a signal of ``num_samples`` samples."""
  padded = num_samples + 2 * (n_fft // 2) if center else num_samples
  if padded < n_fft:
    return 0
  return 1 + (padded - n_fft) // hop_length


def frame(x: jnp.ndarray, *, frame_length: int, hop_length: int) -> jnp.ndarray:
  """Slices the last axis into overlapping frames (no padding).

  Gathering with a static index matrix is as fast on CPU as a strided-reshape
  and much faster than ``lax.conv_general_dilated_patches`` (whose gradient is
  a transposed convolution); its gradient is a scatter-add.

  Args:
    x: array of shape ``(..., T)`` with ``T >= frame_length``.
    frame_length: samples per frame.
    hop_length: samples between frame starts.

  Returns:
    Array of shape ``(..., 1 + (T - frame_length) // hop_length,
    frame_length)``.

  Raises:
    ValueError: if the signal is shorter than one frame.
  """
  length = x.shape[-1]
  if length < frame_length:
    raise ValueError(
        f"Signal has {length} samples, fewer than one frame of {frame_length};"
        " pad it or use a shorter frame.")
  count = 1 + (length - frame_length) // hop_length
  index = (np.arange(count)[:, None] * hop_length
           + np.arange(frame_length)[None, :])
  return x[..., index]


def overlap_add(frames: jnp.ndarray, *, hop_length: int) -> jnp.ndarray:
  """Sums overlapping frames back into a signal (the adjoint of `frame`).

  Each frame is cut into hop-sized chunks; chunk ``k`` of frame ``t`` lands in
  output block ``t + k``, so the sum is ``ceil(frame_length / hop)`` shifted
  adds instead of a scatter, which is faster and has a cheap gradient.

  Args:
    frames: array of shape ``(..., n_frames, frame_length)``.
    hop_length: samples between frame starts.

  Returns:
    Array of shape ``(..., frame_length + hop_length * (n_frames - 1))``.
  """
  *batch, count, frame_length = frames.shape
  chunks = -(-frame_length // hop_length)
  frames = jnp.pad(frames, [(0, 0)] * (len(batch) + 1)
                   + [(0, chunks * hop_length - frame_length)])
  frames = frames.reshape(*batch, count, chunks, hop_length)
  out = jnp.zeros((*batch, count + chunks - 1, hop_length), frames.dtype)
  for k in range(chunks):
    out = out.at[..., k:k + count, :].add(frames[..., :, k, :])
  out = out.reshape(*batch, (count + chunks - 1) * hop_length)
  return out[..., :frame_length + hop_length * (count - 1)]


def stft(x: jnp.ndarray, *, n_fft: int, hop_length: int,
         win_length: Optional[int] = None, window: WindowSpec = "hann",
         center: bool = True, pad_mode: str = "reflect") -> jnp.ndarray:
  """Short-time Fourier transform of real signals, equal to ``librosa.stft``.

  Args:
    x: real waveform(s) of shape ``(..., T)``.
    n_fft: FFT size (frame length after window padding).
    hop_length: samples between frames.
    win_length: window length, at most ``n_fft``; defaults to ``n_fft``. A
      shorter window is centred inside the frame, as in librosa.
    window: window name or array of ``win_length`` samples (see `get_window`).
    center: pad ``n_fft // 2`` samples on both sides so frame ``t`` is
      centred at ``t * hop_length``.
    pad_mode: ``jnp.pad`` mode used when ``center`` (default ``"reflect"``,
      which needs ``T > n_fft // 2``).

  Returns:
    complex64 array of shape ``(..., n_frames, n_fft // 2 + 1)``.

  Raises:
    ValueError: for an invalid geometry, pad mode, or a signal too short.
  """
  win_length = _check_geometry(n_fft, hop_length, win_length)
  window_values = get_window(window, win_length, n_fft)
  x = jnp.asarray(x)
  if jnp.iscomplexobj(x):
    raise ValueError("stft expects a real waveform; got a complex array.")
  x = x.astype(jnp.float32)
  if center:
    if pad_mode not in _PAD_MODES:
      raise ValueError(f"pad_mode {pad_mode!r} is not one of {_PAD_MODES}.")
    pad = n_fft // 2
    if pad_mode == "reflect" and x.shape[-1] <= pad:
      raise ValueError(
          f"Reflect padding needs more than n_fft // 2 = {pad} samples, got "
          f"{x.shape[-1]}; use pad_mode='constant' or a longer signal.")
    x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(pad, pad)], mode=pad_mode)
  frames = frame(x, frame_length=n_fft, hop_length=hop_length)
  return jnp.fft.rfft(frames * window_values, n=n_fft, axis=-1)


def window_sumsquare(window: WindowSpec, *, n_frames: int, n_fft: int,
                     hop_length: int,
                     win_length: Optional[int] = None) -> np.ndarray:
  """Sum of squared, shifted windows (host numpy), as ``librosa.filters``."""
  win_length = _check_geometry(n_fft, hop_length, win_length)
  squared = get_window(window, win_length, n_fft).astype(np.float64)**2
  out = np.zeros(n_fft + hop_length * (n_frames - 1), dtype=np.float64)
  for t in range(n_frames):
    out[t * hop_length:t * hop_length + n_fft] += squared
  return out.astype(np.float32)


def istft(spec: jnp.ndarray, *, n_fft: int, hop_length: int,
          win_length: Optional[int] = None, window: WindowSpec = "hann",
          center: bool = True, length: Optional[int] = None) -> jnp.ndarray:
  """Inverse STFT by weighted overlap-add, equal to ``librosa.istft``.

  Args:
    spec: complex spectrogram of shape ``(..., n_frames, n_fft // 2 + 1)``.
    n_fft: FFT size used by the forward transform.
    hop_length: samples between frames.
    win_length: window length (defaults to ``n_fft``).
    window: window name or array (see `get_window`).
    center: whether the forward transform padded the signal by
      ``n_fft // 2``; that padding is trimmed here.
    length: output length; the signal is cut or zero-padded to it. Defaults
      to ``hop_length * (n_frames - 1)`` when ``center`` and to
      ``n_fft + hop_length * (n_frames - 1)`` otherwise.

  Returns:
    float32 array of shape ``(..., length)``.

  Raises:
    ValueError: if the last axis of ``spec`` is not ``n_fft // 2 + 1``.
  """
  win_length = _check_geometry(n_fft, hop_length, win_length)
  spec = jnp.asarray(spec)
  if spec.ndim < 2 or spec.shape[-1] != n_fft // 2 + 1:
    raise ValueError(
        f"istft expects (..., n_frames, {n_fft // 2 + 1}) for n_fft={n_fft}, "
        f"got shape {spec.shape}.")
  n_frames = spec.shape[-2]
  window_values = get_window(window, win_length, n_fft)
  frames = jnp.fft.irfft(spec.astype(jnp.complex64), n=n_fft, axis=-1)
  signal = overlap_add(frames * window_values, hop_length=hop_length)
  norm = window_sumsquare(window, n_frames=n_frames, n_fft=n_fft,
                          hop_length=hop_length, win_length=win_length)
  start = n_fft // 2 if center else 0
  if length is None:
    length = signal.shape[-1] - 2 * start
  # Cut or zero-extend to `length` samples after the centre trim.
  stop = start + length
  extra = max(0, stop - signal.shape[-1])
  signal = jnp.pad(signal, [(0, 0)] * (signal.ndim - 1) + [(0, extra)])
  norm = np.pad(norm, (0, extra))
  signal, norm = signal[..., start:stop], norm[start:stop]
  tiny = np.finfo(np.float32).tiny
  # Where the windows do not reach, librosa leaves the raw (zero) sum.
  scale = np.where(norm > tiny, 1.0 / np.maximum(norm, tiny), 1.0)
  return signal * scale.astype(np.float32)
