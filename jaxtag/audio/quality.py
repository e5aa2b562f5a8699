"""How much a perturbation changed a dataset: per-clip and dataset-level SNR, PESQ and STOI.

A protection that perturbs a few clips of a training set can quote its budget two ways, and the
two differ by ``10 log10(N / P)`` dB when ``P`` of ``N`` equally loud clips are perturbed at the
same SNR (20 dB at a 1% budget). This module reports both, under names that cannot be mistaken
for each other:

* **per-clip SNR** (``clip_snr_db``): for each perturbed clip ``x_j`` with perturbation
  ``d_j``, ``10 log10(||x_j||^2 / ||d_j||^2)``; summarised by its minimum and median.
* **dataset-level SNR** (``dataset_snr_db``): ``10 log10(sum_i ||x_i||^2 / sum_j ||d_j||^2)``,
  the energy of the *whole* clean set (all ``N`` clips, perturbed or not) over the total energy of
  the perturbations.

and the perceptual quality of each perturbed clip against its clean original with two
well-kept reference implementations, an optional extra (``pip install 'jaxtag[quality]'``):

* **PESQ**, wideband (ITU-T P.862.2, MOS-LQO from about 1.04 to 4.64), by the ``pesq`` package,
  at 16 kHz (other rates above 16 kHz are resampled to 16 kHz; lower ones are not measured).
* **STOI** (Taal et al. 2011, 0 to 1), by ``pystoi``, at any rate (it resamples to 10 kHz).

A missing package leaves its figure ``None`` with the reason and one logged line naming the
install command; a clip that a metric cannot score (PESQ's voice-activity detector finds no
utterance: a silent clip, or a short word over background noise in a 1 s keyword clip; STOI
finds fewer than 30 non-silent frames) scores NaN and is counted, never raised. Both metrics were
validated on sentences of several seconds; on 1 s keyword clips read them as indicative, and at
the SNRs taggants use (55 dB) expect them at their ceilings (PESQ 4.64, STOI 1.0).

Host-side numpy (float64 energies), not jit-able; this module imports nothing else from jaxtag
except :mod:`jaxtag.audio.io` (resampling).
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import time
import warnings
from typing import Any

import numpy as np

from jaxtag.audio import io as audio_io

_log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'jaxtag[quality]'"
PESQ_RATE = 16000   # wideband PESQ (P.862.2) is defined at 16 kHz
# Every poison of a 1% SpeechCommands v2 budget (~850) is scored; above this, an evenly spaced
# subset. PESQ + STOI cost ~9 ms per 1 s clip on a 2-core VM (benchmarks/bench_quality.py).
DEFAULT_MAX_PERCEPTUAL_CLIPS = 1000


def energy(waveforms, *, chunk: int = 1024) -> np.ndarray:
  """float64 energy ``sum_t x[t]^2`` of each clip ``(N, T) -> (N,)``, a chunk of clips at a time
  (a float64 copy of a SpeechCommands-scale training set would take gigabytes)."""
  out = np.empty(len(waveforms), np.float64)
  for start in range(0, len(waveforms), chunk):
    x = np.asarray(waveforms[start:start + chunk], np.float64)
    out[start:start + chunk] = np.einsum("nt,nt->n", x, x)
  return out


def clip_snr_db(clean, perturbed) -> np.ndarray:
  """Per-clip SNR ``10 log10(||x||^2 / ||x' - x||^2)`` in float64, ``(P, T) -> (P,)``.

  Args:
    clean: ``(P, T)`` clean clips ``x``.
    perturbed: ``(P, T)`` the same clips perturbed, ``x'``.

  Returns:
    SNR in dB; ``inf`` where the perturbation is exactly zero, ``-inf`` for a silent clean clip
    with a non-zero perturbation.

  Raises:
    ValueError: the shapes differ or are not ``(P, T)``.
  """
  clean, perturbed = np.asarray(clean), np.asarray(perturbed)
  if clean.shape != perturbed.shape or clean.ndim != 2:
    raise ValueError(f"clip_snr_db: need clean and perturbed clips of one (P, T) shape; got "
                     f"{clean.shape} and {perturbed.shape}.")
  return perturbation_snr_db(clean, np.asarray(perturbed, np.float64) - np.asarray(clean,
                                                                                   np.float64))


def perturbation_snr_db(clean, delta) -> np.ndarray:
  """Per-clip SNR ``10 log10(||x||^2 / ||d||^2)`` of perturbations ``d`` given as such, in
  float64, ``(..., T) -> (...)``: ``inf`` where ``d`` is exactly zero (e.g. padding), ``-inf``
  for a silent clip with a non-zero ``d``. (:func:`clip_snr_db` from the perturbed clips;
  ``jaxtag.audio.metrics.snr_db`` is the differentiable jnp form, floored to stay finite.)"""
  clean = np.asarray(clean, np.float64)
  delta = np.asarray(delta, np.float64)
  with np.errstate(divide="ignore", invalid="ignore"):
    return 10.0 * (np.log10(np.einsum("...t,...t->...", clean, clean))
                   - np.log10(np.einsum("...t,...t->...", delta, delta)))


def dataset_snr_db(clean_waveforms, perturbations) -> float:
  """Dataset-level SNR: ``10 log10(sum_i ||x_i||^2 / sum_j ||d_j||^2)``.

  The numerator sums over *every* clean clip of the set (``N`` of them, perturbed or not), the
  denominator over the perturbations ``d_j`` of the ``P`` perturbed clips. It is not a per-clip
  figure: with ``N`` clips of equal energy and ``P`` of them perturbed at one per-clip SNR ``s``,
  it is ``s + 10 log10(N / P)`` (``s + 20`` dB at a 1% budget).

  Args:
    clean_waveforms: ``(N, T)`` the whole clean set (an array or anything sliceable into arrays,
      read a chunk at a time).
    perturbations: ``(P, T)`` the perturbations ``d_j = x'_j - x_j``.

  Returns:
    The SNR in dB; ``inf`` when every perturbation is zero.
  """
  noise = float(energy(perturbations).sum())
  signal = float(energy(clean_waveforms).sum())
  with np.errstate(divide="ignore"):
    return float(10.0 * (np.log10(signal) - np.log10(noise)))


def _not_installed(name: str) -> str:
  return f"{name} is not installed: {INSTALL_HINT}"


def _import(name: str):
  """The optional package ``name``, or None with a reason when it cannot be imported."""
  try:
    return importlib.import_module(name), None
  except ImportError as e:   # absent, or a broken build (an undefined symbol in its C extension)
    _log.debug("import %s failed: %s", name, e)
    return None, _not_installed(name)


def pesq_wb(clean, perturbed, sample_rate: int) -> tuple[np.ndarray | None, str | None, dict]:
  """Wideband PESQ (MOS-LQO) of each perturbed clip against its clean clip.

  Args:
    clean, perturbed: ``(M, T)`` clips at ``sample_rate``.
    sample_rate: in Hz; >= 16000 (higher rates are resampled to 16 kHz).

  Returns:
    ``(scores, reason, failures)``: ``(M,)`` scores, NaN where PESQ could not score a clip (and
    ``failures`` counts those by error name: ``NoUtterancesError`` for a silent clean clip,
    ``BufferTooShortError`` under 0.25 s); ``scores`` None and ``reason`` set when nothing
    was measured (``pesq`` not installed, a rate under 16 kHz).
  """
  pesq, reason = _import("pesq")
  if pesq is None:
    return None, reason, {}
  if sample_rate < PESQ_RATE:
    return None, (f"wideband PESQ needs 16 kHz audio; the clips are {sample_rate} Hz "
                  "(upsampling would score an empty upper band)"), {}
  clean = audio_io.resample(clean, sample_rate, PESQ_RATE)
  perturbed = audio_io.resample(perturbed, sample_rate, PESQ_RATE)
  scores = np.full(len(clean), np.nan)
  failures: dict[str, int] = {}
  for i, (ref, deg) in enumerate(zip(clean, perturbed)):
    try:
      # The wrapper divides both clips by their joint peak: 0 / 0 for two silent clips (then
      # NoUtterancesError); numpy's warning about it says nothing more.
      with np.errstate(divide="ignore", invalid="ignore"):
        scores[i] = pesq.pesq(PESQ_RATE, ref.astype(np.float64), deg.astype(np.float64), "wb")
    except (pesq.PesqError, ValueError) as e:   # NoUtterancesError, BufferTooShortError, ...
      failures[type(e).__name__] = failures.get(type(e).__name__, 0) + 1
  return scores, None, failures


def stoi(clean, perturbed, sample_rate: int) -> tuple[np.ndarray | None, str | None, dict]:
  """STOI (0 to 1) of each perturbed clip against its clean clip.

  Args:
    clean, perturbed: ``(M, T)`` clips at ``sample_rate``.
    sample_rate: in Hz (pystoi resamples to 10 kHz).

  Returns:
    ``(scores, reason, failures)`` as :func:`pesq_wb`; a clip with fewer than 30 frames of
    speech after pystoi's silent-frame removal (pystoi warns and returns 1e-5) scores NaN and
    counts as ``too few non-silent frames``, an all-zero clean clip as ``silent reference``.
  """
  pystoi, reason = _import("pystoi")
  if pystoi is None:
    return None, reason, {}
  scores = np.full(len(clean), np.nan)
  failures: dict[str, int] = {}
  for i, (ref, deg) in enumerate(zip(np.asarray(clean, np.float64),
                                     np.asarray(perturbed, np.float64))):
    if not np.any(ref):   # pystoi keeps every frame of a silent reference and scores it 0
      failures["silent reference"] = failures.get("silent reference", 0) + 1
      continue
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter("always")
      value = float(pystoi.stoi(ref, deg, int(sample_rate), extended=False))
    if any("Not enough STFT frames" in str(w.message) for w in caught) or not np.isfinite(value):
      failures["too few non-silent frames"] = failures.get("too few non-silent frames", 0) + 1
    else:
      scores[i] = value
  return scores, None, failures


def _stats(values: np.ndarray | None, digits: int = 3) -> dict[str, Any] | None:
  """min / median / mean / max over the finite values (None for none), and their count."""
  if values is None:
    return None
  finite = np.asarray(values, np.float64)
  finite = finite[np.isfinite(finite)]
  if not finite.size:
    return {"min": None, "median": None, "mean": None, "max": None, "count": 0}
  return {"min": round(float(finite.min()), digits),
          "median": round(float(np.median(finite)), digits),
          "mean": round(float(finite.mean()), digits),
          "max": round(float(finite.max()), digits), "count": int(finite.size)}


def _finite_or_none(x: float, digits: int = 2) -> float | None:
  return round(float(x), digits) if np.isfinite(x) else None


@dataclasses.dataclass(frozen=True)
class PerturbationQuality:
  """What a perturbation of ``P`` of ``N`` clips costs in SNR and perceptual quality.

  Attributes:
    num_clips: ``N``, the clips of the whole set.
    indices: ``(P,)`` which clips were perturbed.
    clip_snr_db: ``(P,)`` per-clip SNR (:func:`clip_snr_db`; ``inf`` for a zero perturbation).
    dataset_snr_db: the dataset-level SNR (:func:`dataset_snr_db`).
    measured: ``(M,)`` positions in ``indices`` of the clips PESQ and STOI scored (all of them,
      or an evenly spaced subset of ``max_perceptual_clips``).
    pesq_wb, stoi: ``(M,)`` scores (NaN: not scorable), or None when not measured.
    pesq_reason, stoi_reason: why a metric is None.
    pesq_failures, stoi_failures: clips that scored NaN, by cause.
    seconds: wall time of the PESQ and the STOI pass.
  """

  num_clips: int
  indices: np.ndarray
  clip_snr_db: np.ndarray
  dataset_snr_db: float
  measured: np.ndarray
  pesq_wb: np.ndarray | None
  pesq_reason: str | None
  pesq_failures: dict[str, int]
  stoi: np.ndarray | None
  stoi_reason: str | None
  stoi_failures: dict[str, int]
  seconds: dict[str, float]

  def summary(self) -> dict[str, Any]:
    """The headline figures (JSON-friendly: non-finite numbers become None); results only, no
    timings, so that a resumed run's summary equals an uninterrupted one's."""
    return {
        "num_clips": self.num_clips,
        "num_perturbed": int(self.indices.size),
        "num_unchanged": int(np.sum(self.clip_snr_db == np.inf)),
        "clip_snr_db": _stats(self.clip_snr_db, digits=2),
        "dataset_snr_db": _finite_or_none(self.dataset_snr_db),
        "perceptual_clips": int(self.measured.size),
        "pesq_wb": _stats(self.pesq_wb), "pesq_wb_reason": self.pesq_reason,
        "pesq_wb_failures": dict(self.pesq_failures),
        "stoi": _stats(self.stoi, digits=4), "stoi_reason": self.stoi_reason,
        "stoi_failures": dict(self.stoi_failures),
    }

  def to_json(self) -> dict[str, Any]:
    """The summary with the per-clip figures (None for non-finite values) and the wall time of
    the PESQ and STOI passes (``perceptual_seconds``)."""
    def listed(values):
      return None if values is None else [
          float(v) if np.isfinite(v) else None for v in np.asarray(values, np.float64)]
    return {**self.summary(), "indices": np.asarray(self.indices).tolist(),
            "clip_snr_db_per_clip": listed(self.clip_snr_db),
            "perceptual_indices": np.asarray(self.indices)[self.measured].tolist(),
            "pesq_wb_per_clip": listed(self.pesq_wb), "stoi_per_clip": listed(self.stoi),
            "perceptual_seconds": {k: round(v, 3) for k, v in self.seconds.items()}}


def perturbation_quality(clean_waveforms, perturbed, indices, *, sample_rate: int,
                         perceptual: bool = True,
                         max_perceptual_clips: int | None = DEFAULT_MAX_PERCEPTUAL_CLIPS,
                         ) -> PerturbationQuality:
  """Measures the budget and perceptual cost of perturbing ``indices`` of a set of clips.

  Args:
    clean_waveforms: ``(N, T)`` the whole clean set (read a chunk at a time).
    perturbed: ``(P, T)`` the perturbed clips, ``perturbed[j]`` being clip ``indices[j]`` after
      the perturbation (as exported, e.g. on the 16-bit grid).
    indices: ``(P,)`` distinct indices into ``clean_waveforms``.
    sample_rate: of the clips, in Hz.
    perceptual: measure PESQ and STOI (False: SNR only, nothing imported).
    max_perceptual_clips: score at most this many clips with PESQ and STOI (an evenly spaced
      subset of ``indices``; about 9 ms per 1 s clip on a 2-core VM, so the default scores all
      ~850 poisons of a 1% SpeechCommands v2 budget in ~8 s); None: every clip.

  Returns:
    A :class:`PerturbationQuality`.

  Raises:
    ValueError: the shapes disagree, an index is out of range or repeated.
  """
  indices = np.asarray(indices, np.int64).reshape(-1)
  perturbed = np.asarray(perturbed, np.float32)
  num_clips = len(clean_waveforms)
  if perturbed.ndim != 2 or len(perturbed) != indices.size:
    raise ValueError(f"perturbation_quality: need (P, T) perturbed clips for {indices.size} "
                     f"indices; got shape {perturbed.shape}.")
  if indices.size and (indices.min() < 0 or indices.max() >= num_clips
                       or np.unique(indices).size != indices.size):
    raise ValueError(f"perturbation_quality: indices must be distinct and in [0, {num_clips}).")
  if max_perceptual_clips is not None and max_perceptual_clips < 1:
    raise ValueError(f"perturbation_quality: max_perceptual_clips must be >= 1 or None; got "
                     f"{max_perceptual_clips}.")
  clean = np.asarray(clean_waveforms[indices], np.float32).reshape(indices.size, -1)
  if clean.shape != perturbed.shape:
    raise ValueError(f"perturbation_quality: the perturbed clips {perturbed.shape} and the clean "
                     f"ones {clean.shape} differ in length.")
  measured = np.arange(indices.size)
  if max_perceptual_clips is not None and indices.size > max_perceptual_clips:
    measured = np.unique(np.linspace(0, indices.size - 1, max_perceptual_clips).round()
                         ).astype(np.int64)
  results, seconds = {}, {}
  for name, fn in (("pesq", pesq_wb), ("pystoi", stoi)):
    start = time.perf_counter()
    results[name] = (fn(clean[measured], perturbed[measured], sample_rate) if perceptual
                     else (None, "not requested (perceptual=False)", {}))
    seconds[name] = time.perf_counter() - start
  missing = [name for name, r in results.items() if r[1] == _not_installed(name)]
  if missing:
    _log.warning("PESQ/STOI not measured: %s not installed; %s (or: pip install %s)",
                 " and ".join(missing), INSTALL_HINT, " ".join(missing))
  return PerturbationQuality(
      num_clips=num_clips, indices=indices, clip_snr_db=clip_snr_db(clean, perturbed),
      dataset_snr_db=dataset_snr_db(clean_waveforms, perturbed - clean), measured=measured,
      pesq_wb=results["pesq"][0], pesq_reason=results["pesq"][1],
      pesq_failures=results["pesq"][2], stoi=results["pystoi"][0], stoi_reason=results["pystoi"][1],
      stoi_failures=results["pystoi"][2],
      seconds={"pesq": seconds["pesq"], "stoi": seconds["pystoi"]})
