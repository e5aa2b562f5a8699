"""A small ctypes wrapper around libespeak-ng, the speech synthesiser behind the embedded corpus.

The shared library and its voice data come from the ``espeakng-loader`` wheel, so nothing has to be
installed system-wide and no ``espeak`` binary is run. libespeak-ng keeps all of its state in C
globals (voice, parameters, wave-generator phase, flutter and echo buffers ...), so:

* there is one engine per process (:func:`get_engine`), and every call holds a process-wide lock;
  use processes, not threads, to synthesise in parallel;
* by default :meth:`EspeakEngine.synthesize` unloads and reloads the library before each call
  (about half a millisecond), because re-initialising it does not reset the wave generator: without
  the reload, the samples of a word depend on everything synthesised before it in the process, and
  a corpus built by a process pool would change with the order in which workers picked up tasks.

Example::

  engine = get_engine()
  samples = engine.synthesize("marvin", voice="en-gb-scotland+m3", rate=160, pitch=40)
  # int16 samples at engine.sample_rate (22,050 Hz)
"""

from __future__ import annotations

import ctypes
import os
import pathlib
import threading
import warnings

import numpy as np

# speak_lib.h constants (stable across espeak-ng releases).
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_POS_CHARACTER = 1
_CHARS_AUTO = 0
_EE_OK = 0
_EE_NOT_FOUND = 2
_PARAM_RATE = 1
_PARAM_VOLUME = 2
_PARAM_PITCH = 3
_PARAM_RANGE = 4
_PARAM_WORDGAP = 7

RATE_MIN = 80     # words per minute; espeakRATE_MINIMUM.
RATE_MAX = 450    # espeakRATE_MAXIMUM (above it espeak-ng switches to sonic speed-up).

# int callback(short *wav, int num_samples, espeak_EVENT *events); the events are not used.
_SYNTH_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

_LOCK = threading.RLock()
_ENGINE: EspeakEngine | None = None


class EspeakError(RuntimeError):
  """libespeak-ng could not be loaded or refused a request."""


def default_library_path() -> str:
  """Path of the libespeak-ng shared library shipped by ``espeakng-loader``."""
  import espeakng_loader  # pylint: disable=g-import-not-at-top
  return espeakng_loader.get_library_path()


def default_data_path() -> str:
  """Path of the ``espeak-ng-data`` folder shipped by ``espeakng-loader``."""
  import espeakng_loader  # pylint: disable=g-import-not-at-top
  return espeakng_loader.get_data_path()


def list_voices(data_path: str | None = None) -> tuple[str, ...]:
  """Identifiers of the language voices (``en``, ``en-us``, ``en-gb-scotland``, ``fr`` ...).

  Any of them, optionally followed by ``+variant`` (see :func:`list_variants`), is a valid
  ``voice`` for :meth:`EspeakEngine.synthesize`.
  """
  lang_dir = pathlib.Path(data_path or default_data_path()) / "lang"
  return tuple(sorted(p.name.lower() for p in lang_dir.rglob("*") if p.is_file()))


def list_variants(data_path: str | None = None) -> tuple[str, ...]:
  """Names of the voice variants (``m1`` ... ``f5``, ``klatt``, ``Alex`` ...) in ``voices/!v``."""
  variant_dir = pathlib.Path(data_path or default_data_path()) / "voices" / "!v"
  return tuple(sorted(p.name for p in variant_dir.iterdir() if p.is_file() and " " not in p.name))


def trim_silence(samples: np.ndarray, sample_rate: int, *, threshold_db: float = 40.0,
                 margin_seconds: float = 0.01) -> np.ndarray:
  """Cuts the silence espeak-ng puts around an utterance.

  Args:
    samples: ``(num_samples,)`` audio.
    sample_rate: its rate in Hz.
    threshold_db: samples more than this far below the peak count as silence.
    margin_seconds: silence kept on each side of the first and last loud samples.

  Returns:
    A slice of ``samples`` (empty when all of it is silent).
  """
  magnitude = np.abs(np.asarray(samples, np.float32))
  if magnitude.size == 0 or magnitude.max() == 0:
    return samples[:0]
  active = np.flatnonzero(magnitude > 10 ** (-threshold_db / 20) * magnitude.max())
  margin = int(margin_seconds * sample_rate)
  return samples[max(active[0] - margin, 0):active[-1] + margin + 1]


class EspeakEngine:
  """libespeak-ng loaded in this process, in synchronous (retrieval) mode.

  Create it through :func:`get_engine`: a second instance in the same process would share the
  library's globals and defeat the reload that makes calls independent of each other.
  """

  def __init__(self, library_path: str | None = None, data_path: str | None = None):
    self.library_path = library_path or default_library_path()
    self.data_path = data_path or default_data_path()
    if not os.path.isfile(self.library_path):
      raise EspeakError(f"libespeak-ng not found at {self.library_path}; "
                        "install the espeakng-loader package (pip install espeakng-loader).")
    if not os.path.isfile(os.path.join(self.data_path, "phontab")):
      raise EspeakError(f"{self.data_path} is not an espeak-ng-data folder (no phontab); "
                        "reinstall espeakng-loader or pass data_path=.../espeak-ng-data.")
    self._chunks: list[np.ndarray] = []
    # Kept on the instance: ctypes callbacks must outlive every call that may invoke them.
    self._callback = _SYNTH_CALLBACK(self._on_samples)
    self._lib = None
    self._warned_no_unload = False
    self._variants = frozenset(list_variants(self.data_path))
    self.sample_rate = 0
    with _LOCK:
      self._load()
      self.version = self._lib.espeak_Info(None).decode()

  def _on_samples(self, wav, num_samples, _events) -> int:
    if wav and num_samples > 0:
      self._chunks.append(np.ctypeslib.as_array(wav, (num_samples,)).copy())
    return 0  # 0 = continue synthesis.

  def _load(self):
    lib = ctypes.CDLL(self.library_path, mode=ctypes.RTLD_LOCAL)
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_Info.argtypes = [ctypes.c_void_p]
    lib.espeak_Info.restype = ctypes.c_char_p
    lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
    lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                 ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
    # buflength 500 ms: fewer, larger callbacks.
    rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 500, self.data_path.encode(),
                                 _INITIALIZE_DONT_EXIT)
    if rate <= 0:
      raise EspeakError(
          f"espeak_Initialize failed (returned {rate}) with data at {self.data_path}.")
    lib.espeak_SetSynthCallback(self._callback)
    self._lib = lib
    self.sample_rate = int(rate)

  def _unload(self):
    import _ctypes  # pylint: disable=g-import-not-at-top
    lib, self._lib = self._lib, None
    lib.espeak_Terminate()
    _ctypes.dlclose(lib._handle)  # pylint: disable=protected-access
    if hasattr(os, "RTLD_NOLOAD"):
      try:
        still = ctypes.CDLL(self.library_path, mode=os.RTLD_NOLOAD | ctypes.RTLD_LOCAL)
      except OSError:
        return  # Unloaded: the next load starts from pristine globals.
      _ctypes.dlclose(still._handle)  # pylint: disable=protected-access
      if not self._warned_no_unload:
        self._warned_no_unload = True
        warnings.warn("libespeak-ng stays loaded after dlclose (another user of the library in "
                      "this process?); synthesis may depend on earlier calls.", RuntimeWarning)

  def reset(self):
    """Unloads and reloads the library so that its C globals start from scratch."""
    with _LOCK:
      self._unload()
      self._load()

  def synthesize(self, text: str, *, voice: str = "en", rate: int = 175, pitch: int = 50,
                 pitch_range: int = 50, volume: int = 100, word_gap: int = 0, seed: int = 0,
                 reset: bool = True) -> np.ndarray:
    """Speaks ``text`` and returns its samples.

    Args:
      text: what to say (UTF-8; punctuation changes the intonation: ``"yes?"`` rises).
      voice: ``language[+variant]``, e.g. ``"en-us"``, ``"en-gb-x-rp+f2"``, ``"fr+klatt"``; see
        :func:`list_voices` and :func:`list_variants`.
      rate: speaking rate in words per minute, in [80, 450].
      pitch: base pitch, 0-99, relative to the voice's own range (50 = the voice's default).
      pitch_range: intonation range, 0 (monotone) to 99.
      volume: 0-200 (100 = default).
      word_gap: extra pause between words in units of 10 ms.
      seed: seed of espeak-ng's internal random generator (breath and Klatt noise).
      reset: reload the library first so that the result does not depend on earlier calls.

    Returns:
      int16 ``(num_samples,)`` at :attr:`sample_rate` Hz (22,050 for the bundled voices).

    Raises:
      ValueError: an unknown voice or variant, or a parameter out of range.
      EspeakError: the synthesiser failed.
    """
    if not RATE_MIN <= rate <= RATE_MAX:
      raise ValueError(f"rate must lie in [{RATE_MIN}, {RATE_MAX}] words per minute; got {rate}.")
    for name, value, hi in (("pitch", pitch, 99), ("pitch_range", pitch_range, 99),
                            ("volume", volume, 200)):
      if not 0 <= value <= hi:
        raise ValueError(f"{name} must lie in [0, {hi}]; got {value}.")
    variant = voice.partition("+")[2]
    if variant and variant not in self._variants:
      # espeak-ng silently ignores an unknown variant; a typo would make a "speaker" a duplicate.
      raise ValueError(f"espeak-ng has no voice variant {variant!r} (in {voice!r}); use one of "
                       "jaxtag.data.espeak.list_variants().")
    with _LOCK:
      if reset:
        self.reset()
      lib = self._lib
      lib.espeak_ng_SetRandSeed(int(seed))
      status = lib.espeak_SetVoiceByName(voice.encode())
      if status == _EE_NOT_FOUND:
        raise ValueError(f"espeak-ng has no voice {voice!r}; use one of jaxtag.data.espeak."
                         "list_voices(), optionally with '+' and one of list_variants().")
      if status != _EE_OK:
        raise EspeakError(f"espeak_SetVoiceByName({voice!r}) failed with status {status}.")
      for param, value in ((_PARAM_RATE, rate), (_PARAM_PITCH, pitch), (_PARAM_RANGE, pitch_range),
                           (_PARAM_VOLUME, volume), (_PARAM_WORDGAP, word_gap)):
        lib.espeak_SetParameter(param, int(value), 0)
      data = text.encode("utf-8") + b"\0"
      self._chunks = []
      status = lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_AUTO, None, None)
      if status != _EE_OK:
        raise EspeakError(f"espeak_Synth({text!r}, voice={voice!r}) failed with status {status}.")
      lib.espeak_Synchronize()
      chunks, self._chunks = self._chunks, []
    if not chunks:
      return np.zeros((0,), np.int16)
    return np.concatenate(chunks).astype(np.int16, copy=False)


def get_engine(library_path: str | None = None, data_path: str | None = None) -> EspeakEngine:
  """The process's :class:`EspeakEngine`, created on first use.

  Args:
    library_path: libespeak-ng to load (default: the one from ``espeakng-loader``).
    data_path: ``espeak-ng-data`` folder (default: the one from ``espeakng-loader``).

  Raises:
    EspeakError: the library cannot be loaded, or an engine with other paths already exists.
  """
  global _ENGINE
  with _LOCK:
    if _ENGINE is None:
      _ENGINE = EspeakEngine(library_path, data_path)
    elif ((library_path and library_path != _ENGINE.library_path)
          or (data_path and data_path != _ENGINE.data_path)):
      raise EspeakError("an espeak-ng engine with other library/data paths is already loaded in "
                        "this process; libespeak-ng supports one per process.")
    return _ENGINE
