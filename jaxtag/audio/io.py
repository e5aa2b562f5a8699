"""Host-side audio file I/O: read and write WAV files, resample, fit clips to a length.

Everything here works on numpy arrays on the host (files are read before anything reaches a
device). Reading goes through ``soundfile`` (libsndfile) and turns every problem a user can cause
-- a missing, truncated, stereo, empty or non-finite file, a non-WAV file with a ``.wav`` name,
a wrong sample rate -- into an :class:`AudioFileError` that names the file and says what to do.

Conventions:
  * Waveforms are float32 in [-1, 1], mono, time on the last axis.
  * 16-bit PCM maps an integer sample ``q`` to ``q / 32768`` on read; on write a float ``x`` is
    clipped to [-1, 1] and becomes ``clip(round_half_even(x * 32768), -32768, 32767)``, so a
    write/read round trip moves a sample by at most half a least significant bit (``2**-16``),
    except ``x`` in ``(32767.5 / 32768, 1]`` which saturates at ``32767 / 32768``.
  * Writes are atomic: the file is written under a temporary name in the destination directory,
    then moved into place with ``os.replace``, so an interrupted export never leaves a half file.

This module imports nothing else from jaxtag.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import math
import os
import struct
import tempfile
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import soundfile as sf
from scipy import signal

_PCM16_SCALE = 32768.0
# libsndfile formats chosen from the file extension; anything else is written as WAV.
_FORMAT_BY_SUFFIX = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG", ".aiff": "AIFF", ".aif": "AIFF"}
# A WAV `data` chunk size that streaming writers leave when the length is unknown.
_UNKNOWN_CHUNK_SIZES = (0, 0xFFFFFFFF)


class AudioFileError(ValueError):
  """An audio file (or waveform) that cannot be used as asked; the message names it and the fix."""


def validate_waveform(x, *, name: str = "waveform", allow_nonfinite: bool = False,
                      ndim: int | None = 1) -> np.ndarray:
  """Checks that ``x`` is a usable waveform and returns it as float32.

  Args:
    x: array-like of real samples.
    name: what to call ``x`` in error messages (a file path when it came from a file).
    allow_nonfinite: if False, NaN or Inf samples are an error.
    ndim: required number of dimensions (None: any number >= 1).

  Returns:
    ``x`` as a float32 numpy array (a copy only when a conversion is needed).

  Raises:
    AudioFileError: ``x`` is not real-valued, has the wrong number of dimensions, has no samples,
      or (unless allowed) holds NaN or Inf.
  """
  arr = np.asarray(x)
  if arr.dtype.kind not in "biuf":
    raise AudioFileError(
        f"{name}: audio must be real-valued numbers; got dtype {arr.dtype}. "
        "Convert it to a float array in [-1, 1] first.")
  if ndim is not None and arr.ndim != ndim:
    raise AudioFileError(
        f"{name}: expected a {ndim}-D waveform; got shape {arr.shape}. "
        "Pass one mono clip with time on the last axis.")
  if arr.ndim == 0:
    raise AudioFileError(f"{name}: expected a waveform; got a scalar.")
  if arr.size == 0 or arr.shape[-1] == 0:
    raise AudioFileError(
        f"{name}: waveform has 0 samples (shape {arr.shape}). "
        "Remove the empty clip or regenerate it.")
  arr = arr.astype(np.float32, copy=False)
  if not allow_nonfinite and not np.all(np.isfinite(arr)):
    bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
    raise AudioFileError(
        f"{name}: {bad} sample(s) are NaN or Inf. Re-export the audio from its source, "
        "or replace the non-finite samples (e.g. np.nan_to_num) before using it.")
  return arr


def _check_wav_not_truncated(path: str) -> None:
  """Raises if a RIFF/WAVE header declares more sample data than the file holds.

  libsndfile silently clamps the frame count of a cut file to what is present, so a download cut
  short would load as a shorter clip; reading the chunk table ourselves catches it.
  """
  try:
    file_size = os.path.getsize(path)
    with open(path, "rb") as f:
      head = f.read(12)
      if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return  # Not a plain RIFF WAV (RF64, W64, FLAC...); libsndfile judges those.
      pos = 12
      while pos + 8 <= file_size:
        f.seek(pos)
        chunk_id, chunk_size = struct.unpack("<4sI", f.read(8))
        if chunk_id == b"data":
          available = file_size - (pos + 8)
          if chunk_size not in _UNKNOWN_CHUNK_SIZES and chunk_size > available:
            raise AudioFileError(
                f"{path}: truncated WAV file -- its header declares {chunk_size} bytes of audio "
                f"but only {available} are present. The file was cut short (interrupted copy or "
                "download); fetch or export it again.")
          return
        pos += 8 + chunk_size + (chunk_size & 1)  # Chunks are padded to an even size.
  except OSError as e:
    raise AudioFileError(f"{path}: cannot read file ({e}).") from e


def read_wav(path: str | os.PathLike, *, sample_rate: int | None = None, resample: bool = True,
             mono: Literal["error", "mean"] = "error", allow_nonfinite: bool = False,
             fixes: Mapping[str, str] | None = None) -> tuple[np.ndarray, int]:
  """Reads one audio file as a mono float32 waveform in [-1, 1].

  Args:
    path: file to read (any format libsndfile reads; WAV is the one jaxtag writes).
    sample_rate: wanted sample rate in Hz, or None to keep the file's rate.
    resample: if the file's rate differs from ``sample_rate``: True resamples (see
      :func:`resample`), False raises.
    mono: what to do with a multi-channel file: ``"error"`` raises, ``"mean"`` averages the
      channels.
    allow_nonfinite: if False (default), NaN or Inf samples (possible in float WAVs) raise.
    fixes: how the caller spells the setting that avoids an error, by this function's keyword:
      ``"mono"`` (default ``mono='mean'``) and ``"resample"`` (default ``resample=True``). A
      loader passes its own option (``on_rate_mismatch='resample'``), or under a launcher its
      flag (``--config.data.mono=mean``), so that the message names what its caller can set.

  Returns:
    ``(waveform, sample_rate)``: float32 ``(num_samples,)`` and its rate in Hz (``sample_rate``
    when given). Integer PCM maps to [-1, 1); float files are returned as stored and may exceed
    [-1, 1] (loaders count such samples as clipped).

  Raises:
    AudioFileError: the file is missing, unreadable, not audio, truncated, empty, multi-channel
      with ``mono="error"``, holds NaN/Inf, or has the wrong rate with ``resample=False``.
  """
  path = os.fspath(path)
  if mono not in ("error", "mean"):
    raise ValueError(f"read_wav: mono must be 'error' or 'mean'; got {mono!r}.")

  def fix(keyword: str, value) -> str:
    return (fixes or {}).get(keyword) or f"{keyword}={value!r}"

  if not os.path.isfile(path):
    raise AudioFileError(f"{path}: no such audio file. Check the path (and the dataset root).")
  _check_wav_not_truncated(path)
  try:
    data, file_rate = sf.read(path, dtype="float32", always_2d=True)
  except (sf.LibsndfileError, RuntimeError, TypeError) as e:
    raise AudioFileError(
        f"{path}: not a readable audio file ({e}). It may be corrupt or in another format with a "
        "'.wav' name; re-export it as WAV or remove it from the dataset.") from e
  if data.shape[0] == 0:
    raise AudioFileError(
        f"{path}: audio file has 0 samples. Remove the empty file or export the clip again.")
  if data.shape[1] > 1:
    if mono == "error":
      raise AudioFileError(
          f"{path}: file has {data.shape[1]} channels but a mono clip is expected. Pass "
          f"{fix('mono', 'mean')} to average the channels, or convert the file to mono.")
    data = data.mean(axis=1, dtype=np.float32, keepdims=True)
  x = validate_waveform(data[:, 0], name=path, allow_nonfinite=allow_nonfinite)
  file_rate = int(file_rate)
  if sample_rate is not None and file_rate != int(sample_rate):
    if not resample:
      raise AudioFileError(
          f"{path}: sample rate is {file_rate} Hz but {sample_rate} Hz is expected. Pass "
          f"{fix('resample', True)} to resample it, or convert the file.")
    x = _resample(x, file_rate, int(sample_rate))
    file_rate = int(sample_rate)
  return np.ascontiguousarray(x, dtype=np.float32), file_rate


def to_pcm16(x: np.ndarray) -> np.ndarray:
  """float in [-1, 1] -> int16 with the rounding documented in the module docstring (one source
  of truth for every 16-bit export: WAV files, TFDS, the HTTP client)."""
  q = np.rint(np.clip(x.astype(np.float64), -1.0, 1.0) * _PCM16_SCALE)
  return np.clip(q, -32768, 32767).astype(np.int16)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str, *, permissions: int = 0o644,
                fsync: bool = False, **open_kwargs):
  """Yields a temporary file beside ``path`` that replaces ``path`` only once fully written.

  Args:
    path: the destination; missing parent directories are created.
    mode: ``open`` mode (``"wb"`` or ``"w"``).
    permissions: the file's final mode. The temporary file is owner-only from its creation
      (``mkstemp``), so a secret written with ``0o600`` is never readable by others, even briefly;
      published data needs the ordinary ``0o644``.
    fsync: flush the data to disk before the rename (for files that must survive a crash).
    **open_kwargs: passed to ``open`` (e.g. ``encoding``).
  """
  directory, filename = os.path.split(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp_path = tempfile.mkstemp(prefix=f".{filename}.", suffix=".tmp", dir=directory)
  try:
    with os.fdopen(fd, mode, **open_kwargs) as f:
      yield f
      if fsync:
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp_path, permissions)
    os.replace(tmp_path, path)
  except BaseException:
    if os.path.exists(tmp_path):
      os.remove(tmp_path)
    raise


def write_wav(path: str | os.PathLike, audio, sample_rate: int, *,
              subtype: str = "PCM_16") -> None:
  """Writes a waveform to an audio file atomically, creating parent directories.

  Samples are clipped to [-1, 1] first. For ``PCM_16`` the float-to-int rounding is
  ``round_half_even(x * 32768)`` saturated to int16, the exact inverse of :func:`read_wav` up to
  half a least significant bit (libsndfile's own conversion scales by 32767 and would bias every
  round trip). Other subtypes (``PCM_24``, ``FLOAT``...) go through libsndfile.

  Args:
    path: destination; its extension picks the container (``.wav`` -> WAV, ``.flac`` -> FLAC,
      anything else -> WAV).
    audio: ``(num_samples,)`` mono or ``(num_samples, channels)`` samples.
    sample_rate: rate in Hz.
    subtype: libsndfile subtype, e.g. ``"PCM_16"`` (default), ``"PCM_24"``, ``"FLOAT"``.

  Raises:
    AudioFileError: the audio is empty, non-finite or not 1-D/2-D (message names ``path``).
    ValueError: ``sample_rate`` is not positive.
  """
  path = os.fspath(path)
  arr = validate_waveform(audio, name=path, ndim=None)
  if arr.ndim > 2:
    raise AudioFileError(
        f"{path}: cannot write audio of shape {arr.shape}; pass (num_samples,) or "
        "(num_samples, channels).")
  if int(sample_rate) <= 0:
    raise ValueError(f"write_wav({path}): sample_rate must be positive; got {sample_rate}.")
  data = to_pcm16(arr) if subtype.upper() == "PCM_16" else np.clip(arr, -1.0, 1.0)
  fmt = _FORMAT_BY_SUFFIX.get(os.path.splitext(path)[1].lower(), "WAV")
  with atomic_file(path, "wb") as f:
    sf.write(f, data, int(sample_rate), subtype=subtype, format=fmt)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
  """Writes ``data`` to ``path`` atomically (readers see the old file or the new one)."""
  with atomic_file(path, "wb") as f:
    f.write(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
  """Writes a UTF-8 text file atomically (temporary file + ``os.replace``), creating parents."""
  with atomic_file(path, "w", encoding="utf-8", newline="") as f:
    f.write(text)


def resample(x, orig_sr: int, target_sr: int, axis: int = -1) -> np.ndarray:
  """Resamples with a polyphase FIR filter (``scipy.signal.resample_poly``).

  The rate ratio is reduced by its gcd (22050 -> 16000 is up 320, down 441). The output has
  ``round(n * target_sr / orig_sr)`` samples along ``axis`` (half rounds up); resample_poly
  returns the ceiling, whose possible extra last sample is filtered zero padding and is dropped.

  Args:
    x: array with time on ``axis``.
    orig_sr: rate of ``x`` in Hz.
    target_sr: wanted rate in Hz.
    axis: time axis.

  Returns:
    float32 array at ``target_sr`` (``x`` as float32 when the rates are equal).

  Raises:
    ValueError: a rate is not a positive integer.
  """
  for name, rate in (("orig_sr", orig_sr), ("target_sr", target_sr)):
    if int(rate) != rate or rate <= 0:
      raise ValueError(f"resample: {name} must be a positive integer number of Hz; got {rate}.")
  orig_sr, target_sr = int(orig_sr), int(target_sr)
  x = np.asarray(x, dtype=np.float32)
  if orig_sr == target_sr:
    return x
  g = math.gcd(orig_sr, target_sr)
  up, down = target_sr // g, orig_sr // g
  n = x.shape[axis]
  y = signal.resample_poly(x, up, down, axis=axis)
  out_len = (2 * n * up + down) // (2 * down)
  y = np.take(y, np.arange(out_len), axis=axis) if y.shape[axis] != out_len else y
  return y.astype(np.float32, copy=False)


# read_wav's `resample` argument shadows the function inside it.
_resample = resample


def fit_length(x, num_samples: int, *, axis: int = -1) -> np.ndarray:
  """Crops (keeps the start) or zero-pads (at the end) ``x`` to ``num_samples`` along ``axis``."""
  x = np.asarray(x)
  if num_samples < 0:
    raise ValueError(f"fit_length: num_samples must be >= 0; got {num_samples}.")
  n = x.shape[axis]
  if n == num_samples:
    return x
  if n > num_samples:
    return np.take(x, np.arange(num_samples), axis=axis)
  pad = [(0, 0)] * x.ndim
  pad[axis] = (0, num_samples - n)
  return np.pad(x, pad)


def clip_quality(waveforms, *, silence_threshold: float = 1e-4,
                 clip_threshold: float = 0.999) -> tuple[np.ndarray, np.ndarray]:
  """Flags silent clips and measures clipping, per clip (last axis is time).

  Args:
    waveforms: ``(..., num_samples)`` float array.
    silence_threshold: a clip is silent when its peak ``|x|`` is at most this (1e-4 is about
      -80 dBFS, three 16-bit steps).
    clip_threshold: samples with ``|x| >= clip_threshold`` count as clipped.

  Returns:
    ``(silent, clipped_fraction)``: bool and float32 arrays of shape ``waveforms.shape[:-1]``.
  """
  x = np.asarray(waveforms, dtype=np.float32)
  rows = x.reshape(-1, x.shape[-1])
  peak = np.zeros(rows.shape[0], np.float32)
  clipped = np.zeros(rows.shape[0], np.int64)
  # Blocks of rows keep the temporaries small for datasets of many gigabytes.
  for start in range(0, rows.shape[0], 256):
    mag = np.abs(rows[start:start + 256])
    peak[start:start + 256] = mag.max(axis=-1, initial=0.0)
    clipped[start:start + 256] = np.count_nonzero(mag >= clip_threshold, axis=-1)
  silent = peak <= silence_threshold
  clipped_fraction = clipped / max(x.shape[-1], 1)
  return silent.reshape(x.shape[:-1]), clipped_fraction.astype(np.float32).reshape(x.shape[:-1])


def read_wav_files(paths: Sequence[str | os.PathLike], *, num_samples: int | None,
                   sample_rate: int | None = None, resample: bool = True,
                   mono: Literal["error", "mean"] = "error", skip_errors: bool = False,
                   max_workers: int | None = None, progress: bool = False,
                   fixes: Mapping[str, str] | None = None,
                   ) -> tuple[np.ndarray, list[int], list[str]]:
  """Reads many files in parallel (libsndfile releases the GIL) into one array.

  Args:
    paths: files to read.
    num_samples: length every clip is cropped or zero-padded to (see :func:`fit_length`); None
      requires all files to have the same length after resampling.
    sample_rate, resample, mono, fixes: as in :func:`read_wav`.
    skip_errors: if True, files raising :class:`AudioFileError` are left out and their messages
      returned; if False the first such error (in ``paths`` order) is raised.
    max_workers: reader threads (default ``min(16, cpu_count + 4)``).
    progress: show a tqdm progress bar.

  Returns:
    ``(waveforms, kept, errors)``: float32 ``(len(kept), num_samples)``, the indices into
    ``paths`` of the rows, and one message per skipped file.

  Raises:
    AudioFileError: a bad file with ``skip_errors=False``, or unequal lengths with
      ``num_samples=None``.
  """
  # With a fixed length, workers write straight into the output rows (zeros are the padding):
  # no per-clip copies and no final stack of a multi-gigabyte array.
  out = None if num_samples is None else np.zeros((len(paths), num_samples), np.float32)

  def read_one(i):
    try:
      x, _ = read_wav(paths[i], sample_rate=sample_rate, resample=resample, mono=mono,
                      fixes=fixes)
    except AudioFileError as e:
      return e
    if out is None:
      return x
    n = min(len(x), num_samples)
    out[i, :n] = x[:n]
    return None

  workers = max_workers or min(16, (os.cpu_count() or 1) + 4)
  with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
    results = pool.map(read_one, range(len(paths)))
    if progress:
      import tqdm  # Optional dependency, only imported when a bar is asked for.
      results = tqdm.tqdm(results, total=len(paths), desc="reading audio", unit="file")
    results = list(results)
  kept = [i for i, r in enumerate(results) if not isinstance(r, AudioFileError)]
  errors = [str(r) for r in results if isinstance(r, AudioFileError)]
  if errors and not skip_errors:
    raise next(r for r in results if isinstance(r, AudioFileError))
  if out is not None:
    return (out if len(kept) == len(paths) else out[kept]), kept, errors
  lengths = sorted({len(results[i]) for i in kept})
  if len(lengths) > 1:
    raise AudioFileError(
        f"clips have different lengths {lengths[:5]}; pass num_samples to crop/pad them to one "
        "length.")
  if not kept:
    return np.zeros((0, 0), np.float32), kept, errors
  return np.stack([results[i] for i in kept]), kept, errors
