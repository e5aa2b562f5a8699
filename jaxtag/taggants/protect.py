"""Protect a training set with taggants: select poisons, craft, and apply the perturbations.

The one library entry point that the ``craft`` launcher (and users' own scripts) call::

    trained = [jaxtag.train.restore_for_inference("workdirs/surrogate")]   # more: an ensemble
    keys, _ = jaxtag.taggants.keyfile.load_keys("secret/keys.npz", expected_class_names=train.class_names)
    protected, report = protect.protect_dataset(trained, keys, train, config=protect.ProtectConfig(),
                                                key=jax.random.key(0))

Everything stays in memory; writing the dataset in its folder layout is the caller's business
(``launch/craft.py`` does it atomically, and never next to the key file).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import pathlib
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxtag import errors
from jaxtag.models import PureModel
from jaxtag import rng as rng_lib
from jaxtag.audio import quality
from jaxtag.data.dataset import AudioDataset
from jaxtag.taggants import constraint as constraint_lib
from jaxtag.taggants import craft as craft_lib
from jaxtag.taggants import select as select_lib

_log = logging.getLogger(__name__)


def _finite_mean(values) -> float | None:
  """The mean of the finite entries, or None where none is (JSON has no NaN)."""
  values = np.asarray(values, np.float64)
  finite = values[np.isfinite(values)]
  return float(finite.mean()) if finite.size else None


@dataclasses.dataclass(frozen=True)
class ProtectConfig:
  """Protection settings.

  Attributes:
    budget: fraction of the training set perturbed in total (the paper: 0.01).
    selection: ``random``, ``grad_norm`` (largest per-sample gradient norm on the surrogate) or
      ``loudest`` (largest RMS: the most perturbation at the SNR floor, furthest above the
      16-bit grid).
    craft: the crafting settings.
    mixup_pool_size: clean training clips kept for mixup while crafting (when mixup is on).
    diagnostics: compute each poison's own gradient alignment with its key, before and after.
    retrain_rounds: Witches' Brew's retraining: the surrogates are retrained this many times
      on the data crafted so far, at evenly spaced steps of the craft (needs a
      :class:`RetrainPlan`, see :func:`protect_dataset`, and ``craft.restarts == 1``); 0: never.
    min_budget_lsb: with ``craft.quantize``, only clips whose perturbation budget (RMS at the
      SNR floor; under ``craft.constraint="stft_mask"``, at ``mask_db``) is at least this many 16-bit steps may be poisons: under about one step the
      exported perturbation rounds to nothing (at 55 dB, clips quieter than about -35 dBFS RMS;
      5 of the demo's 56 random poisons were). 0: every clip of the key's class.
  """

  budget: float = 0.01
  selection: select_lib.Method = "random"
  craft: craft_lib.CraftConfig = craft_lib.CraftConfig()
  mixup_pool_size: int = 256
  diagnostics: bool = True
  retrain_rounds: int = 0
  min_budget_lsb: float = 1.0

  def __post_init__(self):
    if self.retrain_rounds < 0 or self.retrain_rounds >= max(self.craft.steps, 1):
      raise ValueError(f"{errors.option('retrain_rounds', owner='ProtectConfig')} must be in "
                       f"[0, {errors.option('steps', owner='CraftConfig')}) = "
                       f"[0, {max(self.craft.steps, 1)}); got {self.retrain_rounds}.")

  def retrain_steps(self) -> tuple[int, ...]:
    """The craft steps before which the surrogates are retrained (evenly spaced)."""
    r, steps = self.retrain_rounds, self.craft.steps
    return tuple(sorted({max(1, round(steps * (i + 1) / (r + 1))) for i in range(r)}))


@dataclasses.dataclass(frozen=True)
class ProtectReport:
  """What protection did (JSON-friendly via :meth:`to_json`).

  Attributes:
    poison_indices: int ``(P,)`` training-set indices of the perturbed clips.
    poison_keys: int ``(P,)`` which key each poison carries.
    snr_db: ``(P,)`` achieved SNR of each poison's perturbation (16-bit export included).
    initial_losses, final_losses: ``(G,)`` alignment loss per key (or one, joint) before/after.
    restart_losses: ``(restarts, G)``.
    alignment_before, alignment_after: ``(P,)`` cosine of each poison's own gradient with its
      key's gradient (mean over the members of an ensemble; NaN without diagnostics).
    history: per-step mean loss.
    seconds: crafting wall time.
    mask_margin_db: ``(P,)`` under ``craft.constraint="stft_mask"``, each poison's worst bin
      ``max 20 log10(|STFT(delta)| / B)`` (<= 0: the bound holds; -inf: no perturbation),
      measured on the 16-bit values of the protected clips (what the export writes, and the
      craft launcher's read-back check finds exactly); None under ``snr``.
  """

  poison_indices: np.ndarray
  poison_keys: np.ndarray
  snr_db: np.ndarray
  initial_losses: np.ndarray
  final_losses: np.ndarray
  restart_losses: np.ndarray
  alignment_before: np.ndarray
  alignment_after: np.ndarray
  history: list[dict[str, float]]
  seconds: float
  mask_margin_db: np.ndarray | None = None

  def summary(self) -> dict[str, Any]:
    """The headline numbers (``mask_margin_db_max``: the worst bin over every poison, under
    ``stft_mask`` only; None when no poison carries a perturbation)."""
    finite = self.snr_db[np.isfinite(self.snr_db)]
    mask = {}
    if self.mask_margin_db is not None:
      carried = self.mask_margin_db[np.isfinite(self.mask_margin_db)]
      mask["mask_margin_db_max"] = float(carried.max()) if carried.size else None
    return {
        "num_poisons": int(self.poison_indices.size),
        "snr_db_min": float(finite.min()) if finite.size else float("inf"),
        "snr_db_median": float(np.median(finite)) if finite.size else float("inf"),
        "loss_initial_mean": float(np.mean(self.initial_losses)),
        "loss_final_mean": float(np.mean(self.final_losses)),
        "alignment_before_mean": _finite_mean(self.alignment_before),
        "alignment_after_mean": _finite_mean(self.alignment_after),
        "craft_seconds": round(self.seconds, 2),
        **mask,
    }

  def to_json(self) -> dict[str, Any]:
    out = self.summary()
    for field in ("poison_indices", "poison_keys", "snr_db", "initial_losses", "final_losses",
                  "restart_losses", "alignment_before", "alignment_after"):
      out[field] = np.asarray(getattr(self, field)).tolist()
    if self.mask_margin_db is not None:
      out["mask_margin_db"] = np.asarray(self.mask_margin_db).tolist()
    out["history"] = self.history
    return out


def per_sample_alignment(clf: PureModel, params, batch_stats, waves: jax.Array,
                         labels: jax.Array, key_grad, keep=None) -> jax.Array:
  """Cosine between each clip's own parameter gradient and one key gradient (diagnostics:
  how well each poison alone points where the key does). ``waves`` (n, T), ``labels`` (n,)."""
  targets = jax.nn.one_hot(labels, clf.num_classes, dtype=jnp.float32)

  def one(w, t):
    def loss(p):
      logits = clf.classify(p, batch_stats, clf.features(p, batch_stats, w[None]))[0]
      return craft_lib.cross_entropy(logits, t[None])[0]
    return craft_lib.tree_cosine(jax.grad(loss)(params), key_grad, keep)

  return jax.lax.map(lambda a: one(*a), (waves, targets))


def per_sample_grad_norms(clf: PureModel, params, batch_stats, waves: jax.Array,
                          labels: jax.Array) -> jax.Array:
  """L2 norm of each clip's parameter gradient, by ``vmap`` (for ``grad_norm`` selection)."""
  targets = jax.nn.one_hot(labels, clf.num_classes, dtype=jnp.float32)

  def one(w, t):
    def loss(p):
      logits = clf.classify(p, batch_stats, clf.features(p, batch_stats, w[None]))[0]
      return craft_lib.cross_entropy(logits, t[None])[0]
    g = jax.grad(loss)(params)
    return jnp.sqrt(sum(jnp.vdot(x, x) for x in jax.tree.leaves(g)))

  return jax.vmap(one)(waves, targets)


def _alignment(clf, params, batch_stats, waves, labels, key_grads, keys_of, keep):
  fn = jax.jit(lambda w, y, g: per_sample_alignment(clf, params, batch_stats, w, y, g,
                                                              keep))
  out = np.empty(len(waves), np.float32)
  for i in range(len(waves)):
    g = jax.tree.map(lambda a: a[keys_of[i]], key_grads)
    out[i] = np.asarray(fn(jnp.asarray(waves[i:i + 1]), jnp.asarray(labels[i:i + 1]), g))[0]
  return out


def clip_rms(waveforms: np.ndarray, *, chunk: int = 1024) -> np.ndarray:
  """float64 RMS of each clip ``(N, T) -> (N,)``, a chunk of clips at a time (a float64 copy of
  a whole SpeechCommands-scale training set would be 10.8 GB)."""
  rms = np.empty(len(waveforms), np.float64)
  for start in range(0, len(waveforms), chunk):
    x = np.asarray(waveforms[start:start + chunk], np.float64)
    rms[start:start + chunk] = np.sqrt(np.mean(np.square(x), axis=-1))
  return rms


def carries_perturbation(waveforms: np.ndarray, config: ProtectConfig) -> np.ndarray | None:
  """Which clips are loud enough for their SNR budget to survive the 16-bit export
  (``config.min_budget_lsb``); None when every clip qualifies by construction."""
  if not config.craft.quantize or config.min_budget_lsb <= 0:
    return None
  budget_lsb = clip_rms(waveforms) * 10 ** (-config.craft.unit_db / 20) * craft_lib.PCM16_SCALE
  return budget_lsb >= config.min_budget_lsb


def _by_chunks(fn, *arrays, chunk: int) -> np.ndarray:
  """``fn`` over the leading axis of host ``arrays``, ``chunk`` rows at a time (the last chunk
  repeats its last row: one compiled shape)."""
  n = len(arrays[0])
  out = None
  rows = max(1, min(chunk, n))
  for start in range(0, n, rows):
    idx = np.pad(np.arange(start, min(start + rows, n)), (0, max(0, start + rows - n)),
                 mode="edge")
    part = np.asarray(fn(*(jnp.asarray(a[idx]) for a in arrays)))
    if out is None:
      out = np.empty((n, *part.shape[1:]), part.dtype)
    out[start:start + rows] = part[:min(rows, n - start)]
  return np.empty((0,), np.float32) if out is None else out


def export_under_mask(clean: np.ndarray, delta: np.ndarray, mask: constraint_lib.StftMask, *,
                      chunk: int = 64) -> np.ndarray:
  """:func:`jaxtag.taggants.constraint.quantize_under_mask` over host clips ``(P, T)``: the
  16-bit perturbations of ``clean + delta`` that hold the mask's bound exactly."""
  fn = jax.jit(functools.partial(constraint_lib.quantize_under_mask, mask=mask))
  return _by_chunks(fn, clean, delta, chunk=chunk).reshape(np.shape(delta))


def mask_margins(clean: np.ndarray, perturbed: np.ndarray, mask: constraint_lib.StftMask, *,
                 chunk: int = 64) -> np.ndarray:
  """Each clip's worst bin ``max 20 log10(|STFT(d)| / B)`` in dB (<= 0: the bound holds) of the
  perturbation ``d`` that the 16-bit export of ``perturbed`` carries over ``clean`` (``(P, T)``,
  ``clean`` on the 16-bit grid): ``perturbed`` goes through the export's own conversion
  (:func:`jaxtag.audio.io.to_pcm16`) first."""
  from jaxtag.audio import io as audio_io
  exported = audio_io.to_pcm16(np.asarray(perturbed)).astype(np.float32) / craft_lib.PCM16_SCALE

  def margin(x, y):
    return constraint_lib.mask_margin_db(y - x, constraint_lib.mask_bound(x, mask), mask)

  return _by_chunks(jax.jit(margin), np.asarray(clean, np.float32), exported, chunk=chunk)


def grad_norm_scores(clf, params, batch_stats, data: AudioDataset, classes: np.ndarray, *,
                     batch_size: int = 64) -> np.ndarray:
  """Per-sample gradient norms of the clips of ``classes`` (NaN elsewhere)."""
  scores = np.full(len(data), np.nan)
  idx = np.flatnonzero(np.isin(data.labels, classes))
  fn = jax.jit(lambda w, y: per_sample_grad_norms(clf, params, batch_stats, w, y))
  rows = max(1, min(batch_size, idx.size))
  for start in range(0, idx.size, rows):
    chunk = idx[start:start + rows]
    # The last chunk repeats its last clip up to `rows`: one compiled shape for every chunk.
    padded = np.pad(chunk, (0, rows - chunk.size), mode="edge")
    norms = fn(jnp.asarray(data.waveforms[padded]), jnp.asarray(data.labels[padded]))
    scores[chunk] = np.asarray(norms)[:chunk.size]
  return scores


@dataclasses.dataclass(frozen=True)
class RetrainSurrogate:
  """How one surrogate is retrained: its own recipe and key (as it was first trained).

  Attributes:
    config: its ``jaxtag.train.TrainConfig``.
    key: its training key (``jaxtag.train.train``'s ``key``).
  """

  config: Any
  key: jax.Array


@dataclasses.dataclass(frozen=True)
class RetrainPlan:
  """Witches' Brew's retraining, for ``ProtectConfig.retrain_rounds``: every surrogate trained
  again, with its own recipe, on the training set with the perturbations crafted so far.

  Attributes:
    surrogates: one entry per surrogate, in the order :func:`protect_dataset` gets them.
    root: round ``r`` trains surrogate ``i`` into ``root/retrain_<r>/surrogate_<i>`` (training
      resumes there, so a resumed craft does not train twice).
    validation_data: evaluated while retraining (None: none).
    progress: show the training loops' progress bars.
    transfer_guard: ``jaxtag.train.train``'s ``transfer_guard``.
  """

  surrogates: tuple[RetrainSurrogate, ...]
  root: str | pathlib.Path
  validation_data: AudioDataset | None = None
  progress: bool = True
  transfer_guard: str = "allow"

  def workdir(self, round_index: int, member: int) -> pathlib.Path:
    """Where round ``round_index`` retrains surrogate ``member``."""
    return pathlib.Path(self.root) / f"retrain_{round_index}" / f"surrogate_{member}"


def retrain_surrogates(plan: RetrainPlan, data: AudioDataset, round_index: int, *,
                       mesh=None) -> list[Any]:
  """Trains every surrogate of ``plan`` on ``data`` (round ``round_index``) and returns them
  (``jaxtag.train.TrainedModel``s, restored for inference, in the plan's order)."""
  from jaxtag import train as train_lib
  models = []
  for i, surrogate in enumerate(plan.surrogates):
    directory = plan.workdir(round_index, i)
    train_lib.train(surrogate.config, train_data=data, validation_data=plan.validation_data,
                    key=surrogate.key, workdir=directory, mesh=mesh, progress=plan.progress,
                    transfer_guard=plan.transfer_guard)
    models.append(train_lib.restore_for_inference(directory))
  return models


def _check_surrogates(members: Sequence[Any], train: AudioDataset, config: ProtectConfig,
                      retrain: RetrainPlan | None) -> None:
  """Refuses surrogates that do not match the dataset, and retraining settings that do not fit."""
  if not members:
    raise ValueError("protect_dataset needs at least one surrogate.")
  for i, member in enumerate(members):
    info = member.info
    name = "The surrogate" if len(members) == 1 else f"Surrogate {i} of the ensemble"
    if tuple(info.class_names) != tuple(train.class_names):
      raise ValueError(f"{name}'s classes {list(info.class_names)[:5]}... differ from the "
                       f"dataset's {list(train.class_names)[:5]}...; train it on this dataset.")
    if info.sample_rate != train.sample_rate:
      raise ValueError(f"{name} expects {info.sample_rate} Hz; the dataset is "
                       f"{train.sample_rate} Hz.")
  if not config.retrain_rounds:
    return
  if retrain is None:
    raise ValueError(f"{errors.option('retrain_rounds', owner='ProtectConfig')}="
                     f"{config.retrain_rounds} needs a retrain plan "
                     "(protect_dataset(..., retrain=RetrainPlan(...))).")
  if len(retrain.surrogates) != len(members):
    raise ValueError(f"The retrain plan has {len(retrain.surrogates)} surrogates for an ensemble "
                     f"of {len(members)}.")
  if config.craft.restarts != 1:
    raise ValueError(f"Retraining during the craft needs "
                     f"{errors.option('restarts', 1, owner='CraftConfig')}; got "
                     f"{config.craft.restarts}.")


def _select(members: Sequence[Any], keys, train: AudioDataset, config: ProtectConfig,
            key: jax.Array, mesh) -> tuple[select_lib.Selection, np.ndarray | None]:
  """The poisons (padded to the mesh) and the mixup pool's training-set indices (None: no
  mixup). Both draw from ``key``'s ``select`` stream, the pool with the generator after."""
  key_labels = np.asarray(keys.labels)
  scores = None
  if config.selection == "grad_norm":
    scores = np.mean([grad_norm_scores(*craft_lib.split_trained(m), train,
                                       np.unique(key_labels)) for m in members], axis=0)
  elif config.selection == "loudest":
    scores = clip_rms(train.waveforms)
  select_key = rng_lib.stream(key, "select")
  selection = select_lib.select_poisons(select_key, train.labels, key_labels,
                                        budget=config.budget, method=config.selection,
                                        scores=scores,
                                        eligible=carries_perturbation(train.waveforms, config))
  padded = selection.pad_to(mesh.shape[mesh.axis_names[0]])
  if config.craft.augment.mixup_alpha <= 0:
    return padded, None
  pool_rng = rng_lib.numpy_rng(select_key, offset=1)
  others = np.setdiff1d(np.arange(len(train)), selection.flat_indices())
  return padded, pool_rng.choice(others, size=min(config.mixup_pool_size, others.size),
                                 replace=False)


def _retrain_delta(run: craft_lib.CraftRun, round_index: int, checkpoint_dir) -> np.ndarray:
  """The perturbations that round ``round_index`` retrains on: the current ones, kept in
  ``checkpoint_dir`` so that a resumed craft retrains on exactly the same data."""
  record = None if checkpoint_dir is None else (
      pathlib.Path(checkpoint_dir) / f"retrain_{round_index}.npy")
  if record is not None and record.exists():
    return np.load(record)
  delta = craft_lib.current_delta(run)
  if record is not None:
    from jaxtag.audio import io as audio_io
    with audio_io.atomic_file(record, "wb") as f:
      np.save(f, delta)
  return delta


def _run_with_retraining(run: craft_lib.CraftRun, train: AudioDataset,
                         padded: select_lib.Selection, config: ProtectConfig,
                         plan: RetrainPlan | None, *, mesh, checkpoint_dir) -> craft_lib.CraftRun:
  """Runs the craft to its end, retraining the surrogates before each of
  ``config.retrain_steps()`` (a resumed craft first redoes the last round it had passed)."""
  steps = config.retrain_steps() if config.retrain_rounds else ()
  passed = [r for r, s in enumerate(steps) if s < run.step]
  for r in range(passed[-1] if passed else 0, len(steps)):
    run = craft_lib.craft_run(run, until=steps[r])
    delta = _retrain_delta(run, r, checkpoint_dir)
    waves = train.waveforms.copy()
    waves[padded.indices[padded.mask]] += delta[padded.mask]
    _log.info("Retraining the surrogates (round %d of %d) on the data crafted so far", r + 1,
              len(steps))
    models = retrain_surrogates(plan, train.with_waveforms(waves), r, mesh=mesh)
    run = craft_lib.with_surrogates(run, craft_lib.ensemble_from_trained(models))
  return craft_lib.craft_run(run)


def _diagnostics(members: Sequence[Any], keys, clean: np.ndarray, perturbed: np.ndarray,
                 labels: np.ndarray, keys_of: np.ndarray,
                 config: ProtectConfig) -> tuple[np.ndarray, np.ndarray]:
  """Each poison's alignment with its key before and after, the mean over the members."""
  before, after = [], []
  for member in members:
    c, p, b = craft_lib.split_trained(member)
    keep = craft_lib.leaf_keep(p, tuple(config.craft.exclude_params))
    per_key = craft_lib.key_gradients(c, p, b, jnp.asarray(keys.waveforms),
                                      jnp.asarray(keys.labels), objective="per_key")
    before.append(_alignment(c, p, b, clean, labels, per_key, keys_of, keep))
    after.append(_alignment(c, p, b, perturbed, labels, per_key, keys_of, keep))
  return np.mean(before, axis=0), np.mean(after, axis=0)


def protect_dataset(trained: Sequence[Any], keys, train: AudioDataset, *, config: ProtectConfig,
                    key: jax.Array, mesh=None, checkpoint_dir=None, checkpoint_every: int = 25,
                    progress: bool = True, retrain: RetrainPlan | None = None,
                    ) -> tuple[AudioDataset, ProtectReport]:
  """Returns the protected training set (poisons perturbed, labels untouched) and a report.

  Args:
    trained: the surrogates (``jaxtag.train.TrainedModel``s; one, or an ensemble of one
      architecture: other seeds or epochs), trained on ``train``'s classes; losses,
      gradient-norm scores and diagnostics are averaged over them.
    keys: the secret ``jaxtag.taggants.keys.Keys``.
    train: the clean training split.
    config: budget, selection and crafting settings.
    key: the protection's random key (selection, restarts and augmentation derive from it).
    mesh: device mesh for crafting (default: every device).
    checkpoint_dir: crafting checkpoints and ``metrics.jsonl`` (resume on re-run); None for none.
    checkpoint_every: steps between checkpoints.
    progress: progress bar.
    retrain: for ``config.retrain_rounds``: how to retrain each surrogate
      (:class:`RetrainPlan`); :func:`retrain_surrogates` trains them with ``jaxtag.train.train``
      on the training set with the perturbations crafted so far. The retrained models'
      diagnostics are not reported; the report's alignment diagnostics use ``trained``.

  Under ``config.craft.constraint="stft_mask"`` the crafted perturbations are exported by
  :func:`export_under_mask` (exact under the bound on the 16-bit clips; the report's ``snr_db``
  and ``mask_margin_db`` are those of the exported perturbations).

  Raises:
    ValueError: the surrogates' classes or sample rate differ from the dataset's, or
      ``retrain_rounds`` is set without a plan that fits.
  """
  from jaxtag import sharding as sharding_lib
  members = list(trained)
  _check_surrogates(members, train, config, retrain)
  mesh = mesh or sharding_lib.make_mesh()
  padded, pool = _select(members, keys, train, config, key, mesh)
  poisons = craft_lib.Poisons(
      key_waveforms=np.asarray(keys.waveforms), key_labels=np.asarray(keys.labels),
      poison_x=train.waveforms[padded.indices], poison_labels=train.labels[padded.indices],
      poison_mask=padded.mask, sample_rate=train.sample_rate,
      pool=None if pool is None else train.waveforms[pool],
      pool_labels=None if pool is None else train.labels[pool])
  start = time.perf_counter()
  run = craft_lib.craft_init(
      craft_lib.ensemble_from_trained(members), poisons, config=config.craft,
      key=rng_lib.stream(key, "craft"),
      options=craft_lib.RunOptions(mesh=mesh, checkpoint_dir=checkpoint_dir,
                                   checkpoint_every=checkpoint_every, progress=progress))
  run = _run_with_retraining(run, train, padded, config, retrain, mesh=mesh,
                             checkpoint_dir=checkpoint_dir)
  result = craft_lib.craft_finish(run)
  seconds = time.perf_counter() - start
  return _apply(members, keys, train, padded, result, config, seconds)


def _apply(members: Sequence[Any], keys, train: AudioDataset, padded: select_lib.Selection,
           result: craft_lib.CraftResult, config: ProtectConfig,
           seconds: float) -> tuple[AudioDataset, ProtectReport]:
  """The training set with the crafted perturbations exported onto its poisons, and the report."""
  mask = padded.mask
  indices = padded.indices[mask]
  keys_of = np.nonzero(mask)[0]
  delta = result.delta[mask]
  snr_db = result.snr_db[mask]
  stft_mask = config.craft.stft_mask()
  if stft_mask is not None:   # the bound holds exactly on the 16-bit clips
    delta = export_under_mask(train.waveforms[indices], delta, stft_mask)
    snr_db = quality.perturbation_snr_db(train.waveforms[indices], delta)
  waveforms = train.waveforms.copy()
  waveforms[indices] = train.waveforms[indices] + delta
  protected = train.with_waveforms(waveforms)
  margin = None if stft_mask is None else mask_margins(
      train.waveforms[indices], waveforms[indices], stft_mask)
  before = after = np.full(indices.size, np.nan, np.float32)
  if config.diagnostics:
    before, after = _diagnostics(members, keys, train.waveforms[indices], waveforms[indices],
                                 train.labels[indices], keys_of, config)
  report = ProtectReport(
      poison_indices=indices.astype(np.int64), poison_keys=keys_of.astype(np.int64),
      snr_db=snr_db, initial_losses=result.initial_losses,
      final_losses=result.losses, restart_losses=result.restart_losses,
      alignment_before=before, alignment_after=after, history=result.history, seconds=seconds,
      mask_margin_db=margin)
  return protected, report
