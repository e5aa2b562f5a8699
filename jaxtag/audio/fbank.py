"""Kaldi-compatible log-mel filterbank features and the AST front end (pure jnp).

`kaldi_fbank` reproduces ``torchaudio.compliance.kaldi.fbank`` (and Kaldi's
``compute-fbank-feats``) for the options AST uses: ``htk_compat=True,
use_energy=False, window_type='hanning', num_mel_bins=128, dither=0,
frame_shift=10``. Per frame: remove the DC offset, pre-emphasise with the first
sample replicated, window, zero-pad to a power of two, power spectrum, Kaldi
mel banks (triangles on the ``1127 ln(1 + f / 700)`` scale), log with a floor
of float32 eps. ``htk_compat`` only reorders the energy coefficient, which is
absent with ``use_energy=False``, so it has no option here.

Input scale: AST (the original repository and the Hugging Face
``ASTFeatureExtractor``) feeds torchaudio float waveforms in ``[-1, 1]``, with
no ``2**15`` scaling, and the published normalisation statistics (for example
SpeechCommands mean -6.845978, std 5.5654526) are for that scale. Kaldi
binaries read int16 samples, i.e. ``2**15`` times larger; scaling the input by
``c`` adds ``2 ln c`` (about 20.79 for ``2**15``) to every log-fbank value not
at the eps floor. Use ``[-1, 1]`` input for AST.

AST's loader also subtracts the clip mean before the fbank; with
``remove_dc_offset=True`` every frame's mean is removed anyway, so that step
changes nothing and is not repeated here.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxtag.audio import spectral as stft_lib

_WINDOW_TYPES = ("hanning", "hamming", "povey", "rectangular", "blackman")
_BLACKMAN_COEFF = 0.42


def _kaldi_window(window_type: str, length: int) -> np.ndarray:
  """Kaldi's symmetric analysis windows (``FeatureWindowFunction``)."""
  if window_type not in _WINDOW_TYPES:
    raise ValueError(
        f"window_type {window_type!r} is not one of {_WINDOW_TYPES}.")
  a = 2.0 * np.pi / (length - 1)
  n = np.arange(length, dtype=np.float64)
  if window_type == "hanning":
    w = 0.5 - 0.5 * np.cos(a * n)
  elif window_type == "povey":
    w = (0.5 - 0.5 * np.cos(a * n))**0.85
  elif window_type == "hamming":
    w = 0.54 - 0.46 * np.cos(a * n)
  elif window_type == "blackman":
    w = (_BLACKMAN_COEFF - 0.5 * np.cos(a * n)
         + (0.5 - _BLACKMAN_COEFF) * np.cos(2.0 * a * n))
  else:
    w = np.ones(length)
  return w.astype(np.float32)


def _kaldi_mel(f):
  return 1127.0 * np.log(1.0 + f / 700.0)


def kaldi_mel_banks(*, num_bins: int, padded_window_size: int,
                    sample_rate: float, low_freq: float,
                    high_freq: float) -> np.ndarray:
  """Kaldi's mel filterbank as a ``(padded_window_size // 2 + 1, num_bins)`` matrix.

  Triangles are linear in the mel domain (not in Hz, unlike librosa) and the
  Nyquist bin gets zero weight, as in Kaldi and torchaudio.

  Args:
    num_bins: number of mel bins.
    padded_window_size: FFT size.
    sample_rate: sampling rate in Hz.
    low_freq: lowest band edge in Hz.
    high_freq: highest band edge in Hz; ``<= 0`` means Nyquist plus it.

  Returns:
    float32 numpy array.

  Raises:
    ValueError: if the band edges are outside ``(0, Nyquist]`` or inverted.
  """
  nyquist = 0.5 * sample_rate
  if high_freq <= 0.0:
    high_freq += nyquist
  if not 0.0 <= low_freq < high_freq <= nyquist:
    raise ValueError(
        f"Bad mel band edges low_freq={low_freq}, high_freq={high_freq} for "
        f"sample_rate={sample_rate}; need 0 <= low < high <= Nyquist.")
  num_fft_bins = padded_window_size // 2
  bin_width = sample_rate / padded_window_size
  mel_low, mel_high = _kaldi_mel(low_freq), _kaldi_mel(high_freq)
  delta = (mel_high - mel_low) / (num_bins + 1)
  edges = mel_low + delta * np.arange(num_bins + 2, dtype=np.float64)
  left, center, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]
  mel = _kaldi_mel(bin_width * np.arange(num_fft_bins, dtype=np.float64))[None]
  up = (mel - left) / (center - left)
  down = (right - mel) / (right - center)
  banks = np.maximum(0.0, np.minimum(up, down))
  banks = np.pad(banks, [(0, 0), (0, 1)])  # Nyquist bin.
  return banks.T.astype(np.float32)


def _frames(x: jnp.ndarray, size: int, shift: int,
            snip_edges: bool) -> jnp.ndarray:
  """Kaldi framing: whole frames only, or frames centred on shift multiples."""
  length = x.shape[-1]
  if snip_edges:
    if length < size:
      raise ValueError(
          f"Waveform has {length} samples, fewer than one {size}-sample frame;"
          " pad it (e.g. jaxtag.audio.io.fit_length) or use snip_edges=False.")
    return stft_lib.frame(x, frame_length=size, hop_length=shift)
  count = (length + shift // 2) // shift
  if count < 1:
    raise ValueError(f"Waveform has {length} samples, too short to frame.")
  # Kaldi reflects with the edge sample repeated ("symmetric" padding).
  left = size // 2 - shift // 2
  right = max(0, (count - 1) * shift + size - left - length)
  pad = [(0, 0)] * (x.ndim - 1)
  if left >= 0:
    x = jnp.pad(x, pad + [(left, right)], mode="symmetric")
  else:
    x = jnp.pad(x[..., -left:], pad + [(0, right - left)], mode="symmetric")
  return stft_lib.frame(x, frame_length=size, hop_length=shift)[..., :count, :]


def kaldi_fbank(x: jnp.ndarray, *, sample_rate: int = 16000,
                num_mel_bins: int = 128, frame_length_ms: float = 25.0,
                frame_shift_ms: float = 10.0, preemphasis: float = 0.97,
                remove_dc_offset: bool = True, window_type: str = "hanning",
                round_to_power_of_two: bool = True, low_freq: float = 20.0,
                high_freq: float = 0.0, snip_edges: bool = True,
                use_log_fbank: bool = True, dither: float = 0.0) -> jnp.ndarray:
  """Kaldi/torchaudio log-mel filterbank features, batched.

  Args:
    x: waveform(s) ``(..., T)``, float in ``[-1, 1]`` as AST feeds torchaudio
      (see the module docstring on the ``2**15`` question).
    sample_rate: sampling rate in Hz.
    num_mel_bins: number of mel bins.
    frame_length_ms: frame length in milliseconds (25 ms = 400 samples).
    frame_shift_ms: frame shift in milliseconds (10 ms = 160 samples).
    preemphasis: pre-emphasis coefficient (0 disables it).
    remove_dc_offset: subtract each frame's mean first.
    window_type: 'hanning' (AST), 'povey' (Kaldi default), 'hamming',
      'blackman' or 'rectangular'; all symmetric as in Kaldi.
    round_to_power_of_two: zero-pad frames to the next power of two for the
      FFT (400 -> 512).
    low_freq: lowest mel edge in Hz.
    high_freq: highest mel edge in Hz; ``<= 0`` is relative to Nyquist.
    snip_edges: keep only whole frames (``1 + (T - 400) // 160`` of them);
      otherwise ``(T + 80) // 160`` frames with symmetric edge padding.
    use_log_fbank: return ``log(max(mel, float32 eps))``; else mel power.
    dither: must be 0: dither needs a random key and AST disables it.

  Returns:
    float32 array ``(..., n_frames, num_mel_bins)``.

  Raises:
    ValueError: for dither != 0, an unknown window, bad band edges or a
      waveform shorter than one frame.
  """
  if dither != 0.0:
    raise ValueError(
        "dither must be 0.0 (AST uses dither=0); add noise to the waveform "
        "with a jax.random key before calling kaldi_fbank if you need it.")
  size = int(sample_rate * frame_length_ms * 0.001)
  shift = int(sample_rate * frame_shift_ms * 0.001)
  if size < 2 or shift < 1:
    raise ValueError(
        f"Frame of {size} samples / shift of {shift} samples is too short for "
        f"sample_rate={sample_rate}.")
  n_fft = 2**math.ceil(math.log2(size)) if round_to_power_of_two else size
  window = _kaldi_window(window_type, size)
  banks = kaldi_mel_banks(num_bins=num_mel_bins, padded_window_size=n_fft,
                          sample_rate=sample_rate, low_freq=low_freq,
                          high_freq=high_freq)

  frames = _frames(jnp.asarray(x, jnp.float32), size, shift, snip_edges)
  if remove_dc_offset:
    frames = frames - jnp.mean(frames, axis=-1, keepdims=True)
  if preemphasis != 0.0:
    previous = jnp.concatenate([frames[..., :1], frames[..., :-1]], axis=-1)
    frames = frames - preemphasis * previous
  spectrum = jnp.fft.rfft(frames * window, n=n_fft, axis=-1)
  power = jnp.real(spectrum)**2 + jnp.imag(spectrum)**2
  mel = jnp.matmul(power, banks, precision=jax.lax.Precision.HIGHEST)
  if use_log_fbank:
    mel = jnp.log(jnp.maximum(mel, np.finfo(np.float32).eps))
  return mel


def ast_features(x: jnp.ndarray, *, target_frames: int = 128,
                 mean: float = -6.845978, std: float = 5.5654526,
                 sample_rate: int = 16000,
                 num_mel_bins: int = 128) -> jnp.ndarray:
  """AST input features: Kaldi fbank, pad/cut to a fixed length, normalise.

  As in AST's loader: fbank with the AST options, zero rows appended (before
  normalisation) or frames cut to ``target_frames``, then
  ``(fbank - mean) / (2 * std)``. Defaults are the SpeechCommands settings
  (1 s at 16 kHz gives 98 frames, padded to 128).

  Args:
    x: waveform(s) ``(..., T)`` in ``[-1, 1]``.
    target_frames: output frames (128 SpeechCommands, 512 ESC-50, 1024
      AudioSet).
    mean: dataset mean of the log-fbank.
    std: dataset standard deviation of the log-fbank.
    sample_rate: sampling rate in Hz.
    num_mel_bins: mel bins (128 for AST).

  Returns:
    float32 array ``(..., target_frames, num_mel_bins)``.
  """
  fbank = kaldi_fbank(x, sample_rate=sample_rate, num_mel_bins=num_mel_bins)
  missing = target_frames - fbank.shape[-2]
  if missing > 0:
    fbank = jnp.pad(fbank, [(0, 0)] * (fbank.ndim - 2) + [(0, missing), (0, 0)])
  else:
    fbank = fbank[..., :target_frames, :]
  return (fbank - mean) / (2.0 * std)
