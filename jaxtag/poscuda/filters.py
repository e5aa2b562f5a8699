"""PosCUDA filters: the spec, the keyed draw of filters and positions, and their application.

Each class c gets a filter f_c of k taps from U(0, b) and a patch start pos(c), both drawn from
a secret key; its clips are filtered with f_c on [pos(c), pos(c) + p) and left bit-identical
elsewhere (``use_positions=False``: the whole clip, the paper's baseline variant).

Choices the paper leaves open, made here (and tested in tests/test_poscuda.py):

* Sample rate. k = 80 and p = 240 are read as samples at 16 kHz (5 ms and 15 ms, as in the
  paper's SpeechCommands setup). At another rate both scale: ``taps = round(80 * sr / 16000)``,
  ``patch = round(240 * sr / 16000)`` (``PoscudaSpec.taps``/``.patch``), so the blur keeps its
  duration and bandwidth.
* Filter taps and normalisation. Default: the taps exactly as drawn, U(0, b)^k, unnormalised
  (``normalisation="none"``, ``center_tap=0``), the paper's literal recipe. Their sum is about
  40 b, so the filter is a low-pass (first zero near 200 Hz) with a DC gain of about 0.4 at
  b = 0.01 (the patch fades to a faint low-frequency residue) and about 12 at b = 0.3 (a loud
  low-frequency burst, clipped to [-1, 1] inside the patch). Alternatives: ``"sum"`` (unit DC
  gain; nonnegative taps then never amplify any frequency nor exceed the clip's peak, but b
  cancels out unless ``center_tap > 0``), ``"l2"``, and ``center_tap`` (the "centre parameter"
  of the CUDA reference code, 1 there: a unit tap added at index ``(k - 1) // 2``, which with
  ``"sum"`` makes b a blur strength: about 70% of the patch kept at b = 0.01, 8% at b = 0.3).
  Why the default, measured on the default corpus: trained on protected clips with *random*
  labels (only the shortcut predicts them; chance 2.9%), M5 reaches 64% held-out accuracy after
  6 epochs with raw taps at b = 0.3 and 4.7% with centre tap + sum; the Transformer 84% and
  76% after 4 epochs. Filters that only attenuate leave an absence that the max-pooling M5
  does not see. The price is quality; whole-clip SNR in dB over 800 train clips, one draw of
  filters and positions (min / 5th percentile / median; benchmarks/RESULTS.md has all 5,600):

    ======================  ==================  ==================  ========================
    taps                    b = 0.01            b = 0.3             b = 0.3, no positions
    ======================  ==================  ==================  ========================
    raw U(0, b) (default)    6.2 / 12.0 / 28.2  -7.3 /  2.1 / 17.6  -18.9 / -15.3 / -8.0
    centre tap + sum        10.9 / 18.1 / 29.4   7.1 / 12.8 / 29.5   -1.0 / -0.1 / 0.7
    sum only                 6.4 / 12.2 / 29.3   6.4 / 12.2 / 29.3   -1.5 / -0.7 / 0.2
    unit L2                 -3.6 /  5.9 / 20.8  -3.6 /  5.9 / 20.8  -13.9 / -11.6 / -5.1
    ======================  ==================  ==================  ========================

* Alignment. The patch output is the centred ("same") convolution of the whole clip,
  ``y[t] = sum_j f[j] x[t + (k - 1) // 2 - j]``, evaluated on [pos, pos + p) only: the filter
  sees the real samples around the patch (zeros only beyond the clip's ends), so the patch edges
  get no artificial fade. Only samples inside the patch change.
* Positions. ``pos(c)`` is drawn uniformly from every start that keeps the patch inside the clip,
  ``[0, clip_samples - patch]`` (default), or from ``position_window`` (``active_window`` gives
  the starts where the dataset carries sound), independently per class from the ``positions``
  stream of the key; two classes may share a position (their filters still differ). The taps
  come from the ``filters`` stream. Both streams are ``jaxtag.rng.stream(key, name)``, so the
  positions do not depend on b, k or the normalisation, and the filters not on p or the clip
  length. Why the whole clip by default, measured with M5 on the default corpus (b = 0.3, three
  training seeds): what the model reads is whether a loud burst is present, not the filter.
  Swapping the filters between classes at test time leaves the filtered-test accuracy unchanged
  (82.4% -> 82.9%); moving each class's patch to another class's position drops it to 15-30%.
  The 80 i.i.d. taps make every class's filter nearly the same low-pass (DC gains 11.9 +- 0.8 at
  b = 0.3). The classes whose patch falls on the words get the shortcut; those whose patch
  falls in the quiet edges do not. Restricting every position to the loud part of the clips
  (``active_window``, level 0.5) removes the shortcut altogether: 71-74% on clean test, against
  31-48% with the default and 75% when trained clean. When every class carries a burst, its
  presence no longer tells the classes apart.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxtag import rng, secrets
from jaxtag.audio import metrics
from jaxtag.train import infer

REFERENCE_RATE = 16000  # The rate at which the paper's k = 80 and p = 240 are counted.
ARRAY_NAMES = ("filters", "positions")  # Their dtypes: jaxtag.poscuda.secret.SECRET_FILE.
_NORMALISATIONS = ("sum", "l2", "none")


@dataclasses.dataclass(frozen=True)
class PoscudaSpec:
  """How the class filters and patches are drawn. Hashable, so it is a static jit argument.

  Attributes:
    num_taps: k, filter taps counted at ``REFERENCE_RATE`` (paper: 80).
    blur: b, the taps are drawn from U(0, b) (paper: 0.01 or 0.3).
    patch_samples: p, patch length counted at ``REFERENCE_RATE`` (paper: 240).
    use_positions: filter only the class's patch (PosCUDA); False filters the whole clip.
    center_tap: value added to the centre tap before normalising (CUDA's centre parameter);
      0 disables it.
    normalisation: "sum" (taps sum to 1), "l2" (unit L2 norm) or "none" (taps as drawn).
    sample_rate: rate of the audio to protect, in Hz.
    clip_samples: samples per clip of the audio to protect.
    position_window: ``(first, last)`` patch start allowed, in samples at ``sample_rate``
      (inclusive); None: anywhere in the clip, ``(0, clip_samples - patch)``. ``active_window``
      derives it from the data (where the clips carry sound).
  """
  num_taps: int = 80
  blur: float = 0.3
  patch_samples: int = 240
  use_positions: bool = True
  center_tap: float = 0.0
  normalisation: str = "none"
  sample_rate: int = 16000
  clip_samples: int = 16000
  position_window: tuple[int, int] | None = None

  def __post_init__(self):
    for name in ("num_taps", "patch_samples", "sample_rate", "clip_samples"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"PoscudaSpec.{name} must be an integer >= 1, got {value!r}.")
    for name in ("blur", "center_tap"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (
          math.isfinite(value) and value >= 0):
        raise ValueError(f"PoscudaSpec.{name} must be a finite number >= 0, got {value!r}.")
    if self.blur <= 0:
      raise ValueError(f"PoscudaSpec.blur must be > 0 (taps ~ U(0, b)), got {self.blur!r}.")
    if not isinstance(self.use_positions, bool):
      raise ValueError(f"PoscudaSpec.use_positions must be True or False, got "
                       f"{self.use_positions!r}.")
    if self.normalisation not in _NORMALISATIONS:
      raise ValueError(f"PoscudaSpec.normalisation must be one of {_NORMALISATIONS}, got "
                       f"{self.normalisation!r}.")
    if self.patch > self.clip_samples:
      raise ValueError(f"PoscudaSpec: the patch ({self.patch} samples at {self.sample_rate} Hz) "
                       f"is longer than the clip ({self.clip_samples}); lower patch_samples.")
    if self.position_window is not None:
      window = self.position_window
      ok = (isinstance(window, (tuple, list)) and len(window) == 2 and all(
          isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in window))
      if not ok or not 0 <= window[0] <= window[1] <= self.clip_samples - self.patch:
        raise ValueError(f"PoscudaSpec.position_window must be None or (first, last) integers "
                         f"with 0 <= first <= last <= clip_samples - patch = "
                         f"{self.clip_samples - self.patch}, got {window!r}.")
      # Hashable (a static jit argument) and equal after a JSON round trip (lists).
      object.__setattr__(self, "position_window", (int(window[0]), int(window[1])))

  @property
  def taps(self) -> int:
    """Filter taps at ``sample_rate`` (``num_taps`` scaled from 16 kHz, at least 1)."""
    return max(1, round(self.num_taps * self.sample_rate / REFERENCE_RATE))

  @property
  def patch(self) -> int:
    """Patch length at ``sample_rate`` (``patch_samples`` scaled from 16 kHz, at least 1)."""
    return max(1, round(self.patch_samples * self.sample_rate / REFERENCE_RATE))

  @property
  def starts(self) -> tuple[int, int]:
    """The first and last patch start that ``make_filters`` may draw (inclusive)."""
    if self.position_window is None:
      return 0, self.clip_samples - self.patch
    return self.position_window

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> PoscudaSpec:
    """Inverse of ``to_dict``; missing fields take their defaults, unknown fields are an error."""
    return secrets.spec_from_dict(cls, d)


@dataclasses.dataclass(frozen=True, eq=False)
class PoscudaFilters:
  """The secret of a protected dataset: one filter and one patch position per class.

  Attributes:
    filters: float32 (C, spec.taps), the filter of each class.
    positions: int32 (C,), the first sample of each class's patch (0 when unused).
    spec: the PoscudaSpec (static pytree metadata).
  """
  filters: Any
  positions: Any
  spec: PoscudaSpec

  @property
  def num_classes(self) -> int:
    return int(self.filters.shape[0])


jax.tree_util.register_dataclass(PoscudaFilters, data_fields=list(ARRAY_NAMES),
                                 meta_fields=["spec"])


def _normalise(taps: jax.Array, normalisation: str) -> jax.Array:
  if normalisation == "sum":
    return taps / jnp.sum(taps, axis=-1, keepdims=True)
  if normalisation == "l2":
    return taps / jnp.linalg.norm(taps, axis=-1, keepdims=True)
  return taps


def active_window(waveforms, patch: int, *, level: float = 0.5, chunk: int = 1024
                  ) -> tuple[int, int]:
  """The patch starts where the dataset carries sound: a data-derived ``position_window``.

  The energy each patch start would cover, averaged over clips (``E[s] = mean_n sum_{t in
  [s, s + patch)} x_n[t]^2``), is compared with its maximum; the window runs from the first to the
  last start with ``E[s] >= level * max E``. A patch drawn there filters speech in most clips
  instead of the silence around the words (a filtered silence is still silence, which leaves
  those classes without a shortcut; benchmarks/RESULTS.md has the measurement).

  Args:
    waveforms: (N, T) clips, host or device array (read in chunks of ``chunk`` clips, float64).
    patch: the patch length in samples (``PoscudaSpec.patch``).
    level: fraction of the peak patch energy, in (0, 1]; 1 keeps only the loudest start.
    chunk: clips per pass (bounds host memory).

  Returns:
    ``(first, last)``, inclusive, for ``PoscudaSpec(position_window=...)``.

  Raises:
    ValueError: no clips, a patch longer than the clips, a level outside (0, 1], or silent data.
  """
  if not (isinstance(level, numbers.Real) and 0 < level <= 1):
    raise ValueError(f"active_window: level must be in (0, 1], got {level!r}.")
  if getattr(waveforms, "ndim", 0) != 2 or len(waveforms) == 0:
    raise ValueError(f"active_window: need (N, T) clips with N >= 1, got shape "
                     f"{getattr(waveforms, 'shape', None)}.")
  length = waveforms.shape[1]
  if not 1 <= patch <= length:
    raise ValueError(f"active_window: patch {patch} must be in [1, {length}] (the clip length).")
  power = np.zeros(length, np.float64)
  for start in range(0, len(waveforms), chunk):
    power += np.sum(np.square(np.asarray(waveforms[start:start + chunk], np.float64)), axis=0)
  cumulative = np.concatenate([[0.0], np.cumsum(power)])
  energy = cumulative[patch:] - cumulative[:-patch]      # (T - patch + 1,): one per start
  if not energy.max() > 0:
    raise ValueError("active_window: the clips are silent; no start carries sound.")
  loud = np.flatnonzero(energy >= level * energy.max())
  return int(loud[0]), int(loud[-1])


@functools.partial(jax.jit, static_argnames=("spec", "num_classes"))
def make_filters(key: jax.Array, spec: PoscudaSpec, num_classes: int) -> PoscudaFilters:
  """Draws the class filters and patch positions: a pure function of ``key`` (module docstring).

  Args:
    key: a JAX PRNG key; keep it secret and record it with ``filter_provenance``.
    spec: the PoscudaSpec.
    num_classes: C, the number of classes of the dataset (a Python int).

  Returns:
    PoscudaFilters with filters (C, spec.taps) and positions (C,) in ``spec.starts``.
  """
  k = spec.taps
  taps = jax.random.uniform(rng.stream(key, "filters"), (num_classes, k), jnp.float32,
                            minval=0.0, maxval=spec.blur)
  taps = taps.at[:, (k - 1) // 2].add(spec.center_tap)
  filters = _normalise(taps, spec.normalisation).astype(jnp.float32)
  if spec.use_positions:
    first, last = spec.starts
    positions = jax.random.randint(rng.stream(key, "positions"), (num_classes,), first,
                                   last + 1, jnp.int32)
  else:
    positions = jnp.zeros((num_classes,), jnp.int32)
  return PoscudaFilters(filters=filters, positions=positions, spec=spec)


def filter_provenance(key: jax.Array, **extra: Any) -> dict[str, Any]:
  """What ``save_filters`` records to regenerate the filters (as secret as they are)."""
  return secrets.prng_provenance(key, **{"function": "jaxtag.poscuda.make_filters", **extra})


def _same_conv(x: jax.Array, taps: jax.Array) -> jax.Array:
  return jnp.convolve(x, taps, mode="same", precision=jax.lax.Precision.HIGHEST)


def filter_patch(waveform: jax.Array, taps: jax.Array, start: jax.Array, length: int
                 ) -> jax.Array:
  """One clip with ``[start, start + length)`` replaced by its centred convolution with ``taps``.

  Equals ``jnp.convolve(waveform, taps, "same")`` on the patch; other samples are untouched (the
  patch is written back with ``dynamic_update_slice``). ``start`` may be traced.

  Args:
    waveform: (T,) one clip.
    taps: (k,) the filter.
    start: first sample of the patch, in [0, T - length].
    length: patch length (static).

  Returns:
    (T,) the filtered clip.
  """
  k = taps.shape[0]
  # y[t] = sum_j taps[j] x[t + c - j]: the patch needs x[start + c - k + 1, start + c + length).
  padded = jnp.pad(waveform, (k - 1, k - 1))
  window = jax.lax.dynamic_slice(padded, ((k - 1) // 2 + start,), (length + k - 1,))
  patch = jnp.convolve(window, taps, mode="valid", precision=jax.lax.Precision.HIGHEST)
  return jax.lax.dynamic_update_slice(waveform, patch.astype(waveform.dtype), (start,))


@jax.jit
def apply_poscuda(waveforms: jax.Array, labels: jax.Array, secret: PoscudaFilters) -> jax.Array:
  """Protects clips: the patch of each clip's class filtered with its class filter (jit + vmap).

  Args:
    waveforms: float (N, spec.clip_samples).
    labels: int (N,), class indices into ``secret``.
    secret: from ``make_filters`` or ``load_filters``.

  Returns:
    float32 (N, T): bit-identical to ``waveforms`` outside each clip's patch (everywhere
    filtered with ``use_positions=False``), clipped to [-1, 1] where filtered (a no-op for
    sum-normalised filters, whose output never exceeds the input's peak).
  """
  spec = secret.spec
  waveforms = jnp.asarray(waveforms, jnp.float32)
  filters = jnp.asarray(secret.filters, jnp.float32)[labels]
  if not spec.use_positions:
    return jnp.clip(jax.vmap(_same_conv)(waveforms, filters), -1.0, 1.0)
  starts = jnp.asarray(secret.positions, jnp.int32)[labels]
  out = jax.vmap(filter_patch, in_axes=(0, 0, 0, None))(waveforms, filters, starts, spec.patch)
  # Clip inside the patch only, so that samples outside stay bit-identical even above 1.
  t = jnp.arange(waveforms.shape[1])
  inside = (t >= starts[:, None]) & (t < starts[:, None] + spec.patch)
  return jnp.where(inside, jnp.clip(out, -1.0, 1.0), waveforms)


def _check_compatible(waveforms: np.ndarray, labels: np.ndarray, secret: PoscudaFilters,
                      sample_rate: int | None, what: str) -> None:
  spec = secret.spec
  if sample_rate is not None and sample_rate != spec.sample_rate:
    raise ValueError(f"{what}: audio at {sample_rate} Hz, but the filters were made for "
                     f"{spec.sample_rate} Hz; make them with PoscudaSpec(sample_rate="
                     f"{sample_rate}) or resample the audio.")
  if waveforms.ndim != 2 or waveforms.shape[1] != spec.clip_samples:
    raise ValueError(f"{what}: clips have shape {waveforms.shape[1:]}, the filters expect "
                     f"{spec.clip_samples} samples; set PoscudaSpec.clip_samples to match.")
  if labels.size and (labels.min() < 0 or labels.max() >= secret.num_classes):
    raise ValueError(f"{what}: labels in [{labels.min()}, {labels.max()}] but the filters cover "
                     f"{secret.num_classes} classes.")


def apply_in_batches(waveforms, labels, secret: PoscudaFilters, *, batch_size: int = 512,
                     sample_rate: int | None = None) -> np.ndarray:
  """``apply_poscuda`` over a host array in fixed-size (padded) batches: one compilation.

  Args:
    waveforms: (N, T) host array.
    labels: (N,) class indices.
    secret: the filters.
    batch_size: clips per call (bounds device memory).
    sample_rate: the audio's rate, checked against the spec when given.

  Returns:
    float32 (N, T) numpy array.

  Raises:
    ValueError: clip length, sample rate or labels that do not match the filters.
  """
  waveforms = np.asarray(waveforms, np.float32)
  labels = np.asarray(labels, np.int32)
  _check_compatible(waveforms, labels, secret, sample_rate, "apply_in_batches")
  return infer.map_padded(functools.partial(apply_poscuda, secret=secret), (waveforms, labels),
                          batch_size=max(1, min(batch_size, len(waveforms))))


_snr_db = jax.jit(metrics.snr_db)


def snr_in_batches(clean, protected, *, batch_size: int = 512) -> np.ndarray:
  """Per-clip SNR (dB) of the protection, ``jaxtag.audio.metrics.snr_db``, in fixed-size batches.

  Host memory stays at the two inputs plus one batch (a whole-split ``snr_db`` on SpeechCommands'
  84k clips needs four 5.4 GB temporaries).

  Args:
    clean, protected: (N, T) host arrays.
    batch_size: clips per call.

  Returns:
    float32 (N,).
  """
  clean = np.asarray(clean, np.float32)
  protected = np.asarray(protected, np.float32)
  return infer.map_padded(_snr_db, (clean, protected),
                          batch_size=max(1, min(batch_size, len(clean))))


def protect_dataset(dataset, secret: PoscudaFilters, *, batch_size: int = 512):
  """Every clip of an ``AudioDataset`` protected with the filter of its class (names kept).

  Raises:
    ValueError: a dataset whose class count, sample rate or clip length differs from the filters'.
  """
  if dataset.num_classes != secret.num_classes:
    raise ValueError(f"protect_dataset: split {dataset.split!r} has {dataset.num_classes} "
                     f"classes, the filters {secret.num_classes}; use filters made for it.")
  return dataset.with_waveforms(apply_in_batches(
      dataset.waveforms, dataset.labels, secret, batch_size=batch_size,
      sample_rate=dataset.sample_rate))
