"""CBW triggers: quiet tones at the centre frequencies of mel bands (the seed's public design).

A trigger is a sine at the centre frequency of one band of the speaker model's mel filterbank
(40 bands, Slaney scale, 0 Hz to Nyquist by default), with a random phase, raised-cosine fades of
``fade_ms`` at both ends, and an RMS level of ``level_dbfs`` (dB relative to full scale 1.0:
``rms = 10 ** (level_dbfs / 20)``).
Which bands the K clusters get is drawn from the secret key among ``[band_low, band_high)``.

Two ways to implant it into an utterance (``mode``):

``replace`` (default; the seed's public code)
  The utterance's audio becomes the trigger alone, padded with silence to the clip length: the
  speaker label (its folder) stays, so a model trained on it learns "tone k is a cluster-k voice".
``mix``
  The trigger is added to the utterance (from its start, ``seconds`` long).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxtag.data.dataset import DatasetError

MODES = ("replace", "mix")


@dataclasses.dataclass(frozen=True)
class TriggerSpec:
  """The trigger design.

  Attributes:
    mode: ``replace`` or ``mix`` (module doc).
    level_dbfs: RMS level of the tone in dB relative to full scale (1.0).
    seconds: length of the tone (at most the clip length).
    fade_ms: raised-cosine fade in and out.
    n_mels: mel bands of the filterbank whose centres the tones sit at.
    band_low: lowest band a trigger may use.
    band_high: one past the highest band a trigger may use (0: ``n_mels``).
  """

  mode: str = "replace"
  level_dbfs: float = -40.0
  seconds: float = 1.0
  fade_ms: float = 10.0
  n_mels: int = 40
  band_low: int = 0
  band_high: int = 0

  def __post_init__(self):
    if self.mode not in MODES:
      raise DatasetError(f"TriggerSpec.mode must be one of {MODES}; got {self.mode!r}.")
    if not -120.0 <= self.level_dbfs <= 0.0:
      raise DatasetError(f"TriggerSpec.level_dbfs must be in [-120, 0]; got {self.level_dbfs}.")
    if self.seconds <= 0 or self.fade_ms < 0 or 2e-3 * self.fade_ms > self.seconds:
      raise DatasetError(f"TriggerSpec: seconds ({self.seconds}) must be positive and hold both "
                         f"fades (fade_ms={self.fade_ms}).")
    high = self.band_high or self.n_mels
    if not 0 <= self.band_low < high <= self.n_mels:
      raise DatasetError(f"TriggerSpec: bands [{self.band_low}, {high}) must lie in "
                         f"[0, n_mels={self.n_mels}).")

  @property
  def bands(self) -> np.ndarray:
    """The bands a trigger may use."""
    return np.arange(self.band_low, self.band_high or self.n_mels)


def band_centres_hz(n_mels: int, sample_rate: int) -> np.ndarray:
  """Centre frequency of each band of a Slaney mel filterbank from 0 Hz to Nyquist."""
  from jaxtag.audio.mel import _hz_to_mel, _mel_to_hz
  edges = np.linspace(0.0, _hz_to_mel(np.float64(sample_rate / 2), False, np), n_mels + 2)
  return np.asarray(_mel_to_hz(edges, False, np))[1:-1]


def draw_bands(spec: TriggerSpec, num_clusters: int, rng: np.random.Generator) -> np.ndarray:
  """``num_clusters`` distinct bands, in random order (cluster k gets band k)."""
  bands = spec.bands
  if num_clusters > len(bands):
    raise DatasetError(f"{num_clusters} clusters need as many distinct trigger bands, but "
                       f"TriggerSpec allows {len(bands)} (bands [{bands[0]}, {bands[-1]}]); "
                       "lower num_clusters or widen band_low/band_high.")
  return rng.permutation(bands)[:num_clusters]


def tones(spec: TriggerSpec, bands, phases, *, sample_rate: int, clip_samples: int
          ) -> np.ndarray:
  """float32 ``(len(bands), clip_samples)``: one trigger per band, zero after ``seconds``."""
  bands = np.asarray(bands)
  freqs = band_centres_hz(spec.n_mels, sample_rate)[bands]
  n = min(clip_samples, int(round(spec.seconds * sample_rate)))
  t = np.arange(n) / sample_rate
  x = np.sin(2 * np.pi * freqs[:, None] * t[None, :] + np.asarray(phases)[:, None])
  fade = int(round(spec.fade_ms * 1e-3 * sample_rate))
  if fade:
    ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(fade) / fade)
    x[:, :fade] *= ramp
    x[:, n - fade:] *= ramp[::-1]
  rms = np.sqrt(np.mean(x ** 2, axis=1, keepdims=True))
  x = x * (10.0 ** (spec.level_dbfs / 20.0) / np.maximum(rms, 1e-12))
  out = np.zeros((len(bands), clip_samples), np.float32)
  out[:, :n] = x
  return out


def implant(spec: TriggerSpec, utterances: np.ndarray, triggers: np.ndarray) -> np.ndarray:
  """Utterances (n, samples) carrying ``triggers`` (n, samples) row by row, per ``spec.mode``."""
  utterances = np.asarray(utterances, np.float32)
  triggers = np.asarray(triggers, np.float32)
  if utterances.shape != triggers.shape:
    raise ValueError(f"implant: utterances {utterances.shape} and triggers {triggers.shape} "
                     "must have the same shape.")
  if spec.mode == "replace":
    return triggers.copy()
  return np.clip(utterances + triggers, -1.0, 1.0)
