"""Taggant crafting by gradient alignment (Witches' Brew style), in the waveform domain.

For each secret key ``k`` (a waveform with a target label), the surrogate's key gradient

    g_k = grad_theta CE(f(key_k), label_k)            (all parameters, eval mode, held fixed)

is computed once. Key ``k``'s poisons are training clips of its label (clean-label); their
perturbations ``delta`` are optimised so that training on them pushes the parameters the way
training on the key would:

    L_k(delta) = 1 - cos( sum_i grad_theta CE(f(aug(x_i + delta_i)), y_i),  g_k )

with the cosine over the concatenation of the parameter gradients (optionally leaving some out,
:attr:`CraftConfig.exclude_params`). ``objective="per_key"`` gives every key its own objective and
poisons (the reference); ``"joint"`` aligns the sum over all poisons with the gradient of the mean
key loss.

The perturbation is parameterised per clip in units of its SNR budget: ``delta = u * s`` with
``s = rms(x) * 10 ** (-snr_db / 20)``, so the SNR floor is ``rms(u) <= 1`` (an L2 ball) and the
[-1, 1] range is a per-sample box; :func:`project` (from :mod:`jaxtag.taggants.constraint`,
re-exported here) enforces both after every step. With ``CraftConfig.constraint="stft_mask"``
the bound is perceptual instead, per time-frequency bin (``s`` then only a unit, at ``mask_db``;
see :mod:`jaxtag.taggants.constraint`). The optimiser is
sign-Adam (Adam on the sign of the gradient) with the taggants step schedule, and restarts keep the
lowest final loss per key. Every step sees each poison ``views`` times with independent,
differentiable augmentation draws (time shift, gain, noise, mixup with clean clips, SpecAugment
masks between the model's ``features`` and ``classify``, and optionally the surrogate's dropout
with BatchNorm kept in eval mode).

16-bit export: :func:`quantize_perturbation` puts ``x + delta`` on the 16-bit grid without ever
lowering the SNR below the floor (round to nearest where that keeps the floor, else truncate towards
zero); crafting applies the same quantisation with a straight-through gradient, so that the loss is
that of the clips that will be published.

Surrogate ensembles (Witches' Brew's lever for transfer to models the owner did not train): the
surrogates are always an :class:`Ensemble`, the weights of one or more surrogates of one
architecture (other seeds, or other epochs of one run) stacked on a leading member axis; every
member has its own key gradient, and the loss of a group is the mean over members of
``1 - cos``. The members are processed one after another (see ``unroll`` below), so memory does
not grow with their number; an ensemble of one crafts exactly as that surrogate alone.

Where things are: the surrogate's pure functions, the key gradients and the parameter-tree cosine
in :mod:`jaxtag.taggants.alignment`; the settings, the augmentation and the pure jitted step in
:mod:`jaxtag.taggants.step`; the SNR/box projection and the 16-bit quantisation in
:mod:`jaxtag.taggants.constraint`; this module is the driver and re-exports all of them::

    run = craft_init(ensemble_from_trained(models), Poisons(...), config=config, key=key,
                     options=RunOptions(checkpoint_dir=...))   # or resumes from the checkpoint
    run = craft_run(run, until=100)      # a checkpointable stop (e.g. to retrain the surrogates:
    run = with_surrogates(run, retrained)   # jaxtag.taggants.protect does it)
    result = craft_finish(craft_run(run))

with shardings, restarts, checkpoints and ``metrics.jsonl`` (one line per step; a resumed craft's
history covers every step). :func:`craft` chains the three.

Sharding: the poison axis is split over the mesh's data axis; the parameter-gradient sums over
poisons are reduced across devices by the collectives that XLA inserts for the explicit in/out
shardings of the jitted step. Keys (and ensemble members) are processed one after another
inside the step, by a loop that :attr:`CraftConfig.unroll` unrolls: on XLA:CPU a ``vmap`` over keys
of this second-order gradient is far slower, and a rolled loop (``lax.map``) ran 3.4x slower than
the unrolled one (benchmarks/RESULTS.md), so CPU unrolls fully by default; accelerators keep the
rolled loop, whose compile time and live memory do not grow with the number of keys.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxtag import rng as rng_lib
from jaxtag.audio import quality
from jaxtag.models import PureModel
from jaxtag.taggants import craft_records
from jaxtag.taggants.craft_records import METRICS_JSONL  # noqa: F401  (re-exported)
from jaxtag.taggants.alignment import (  # noqa: F401  (re-exported: the public crafting API)
    Objective, cross_entropy, ensemble_key_gradients, key_gradients, leaf_keep, members_of, stack_members, tree_cosine,
    split_trained, tree_projection)
from jaxtag.taggants.constraint import (  # noqa: F401  (PCM16_SCALE re-exported)
    PCM16_SCALE, project, quantize_perturbation, snr_scale)
from jaxtag.taggants.step import (  # noqa: F401  (re-exported: the public crafting API)
    REFERENCE_STEPS, CraftAugment, CraftConfig, CraftInputs, CraftState, augment_views,
    craft_step, eval_losses, group_loss, make_craft_step, perturbation, sequential_map, sign_adam)

_log = logging.getLogger(__name__)



# --------------------------------------------------------------------------------------------
# What a craft takes
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Ensemble:
  """The surrogates crafted against: one architecture, weights stacked on a leading member axis.

  One member is an ensemble too (and crafts exactly as that surrogate alone): the driver never
  tells one surrogate from several.

  Attributes:
    clf: the surrogates' pure functions (:func:`split_trained`).
    params, batch_stats: the members' weights, stacked (:func:`stack_members`).
  """

  clf: PureModel
  params: Any
  batch_stats: Any

  @property
  def members(self) -> int:
    """How many surrogates are stacked."""
    return members_of(self.params)


def ensemble(clf: PureModel, params: Sequence[Any], batch_stats: Sequence[Any]) -> Ensemble:
  """Stacks the weights of surrogates of one architecture (one or more) into an :class:`Ensemble`.

  Raises:
    ValueError: no surrogate, as many ``batch_stats`` as ``params`` missing, or two
      architectures.
  """
  params, batch_stats = list(params), list(batch_stats)
  if len(batch_stats) != len(params):
    raise ValueError(f"An ensemble of {len(params)} surrogates needs as many batch_stats; got "
                     f"{len(batch_stats)}.")
  return Ensemble(clf, stack_members(params), stack_members(batch_stats))


def ensemble_from_trained(trained: Sequence[Any]) -> Ensemble:
  """The :class:`Ensemble` of trained surrogates (``jaxtag.train.TrainedModel``s, one or more)."""
  parts = [split_trained(m) for m in trained]
  if not parts:
    raise ValueError("A surrogate ensemble needs at least one member.")
  return ensemble(parts[0][0], [p for _, p, _ in parts], [b for _, _, b in parts])


@dataclasses.dataclass(frozen=True)
class Poisons:
  """The keys and the clips to perturb (host arrays).

  Attributes:
    key_waveforms: float32 ``(K, T)`` keys; key_labels: int ``(K,)`` their target labels.
    poison_x: float32 ``(K, n, T)`` each key's poison clips (16-bit grid values).
    poison_labels: int ``(K, n)`` their true labels; poison_mask: bool ``(K, n)`` real entries
      (``jaxtag.taggants.select.Selection`` gives indices and mask in this layout).
    sample_rate: of every waveform.
    pool, pool_labels: clean clips ``(M, T)`` for mixup (needed when ``augment.mixup_alpha``).
  """

  key_waveforms: np.ndarray
  key_labels: np.ndarray
  poison_x: np.ndarray
  poison_labels: np.ndarray
  poison_mask: np.ndarray
  sample_rate: int
  pool: np.ndarray | None = None
  pool_labels: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class RunOptions:
  """How a craft runs (nothing here changes its numbers).

  Attributes:
    mesh: device mesh (default: every device); ``n`` must divide by its data-axis size (use
      ``Selection.pad_to``).
    checkpoint_dir: where to checkpoint, resume and write ``metrics.jsonl`` (None: none).
    checkpoint_every: steps between checkpoints.
    log_every: steps between fetches of the losses from the device (history, ``metrics.jsonl``,
      progress bar); the loop never waits for the device in between.
    progress: show a progress bar.
  """

  mesh: Any = None
  checkpoint_dir: str | pathlib.Path | None = None
  checkpoint_every: int = 25
  log_every: int = 25
  progress: bool = True


@dataclasses.dataclass(frozen=True)
class CraftResult:
  """What :func:`craft_finish` returns (host numpy arrays).

  Attributes:
    delta: float32 ``(K, n, T)`` the quantised perturbations (exactly what the 16-bit export
      adds when ``config.quantize``; under ``constraint="stft_mask"`` rounded to the grid, and
      :func:`jaxtag.taggants.protect.export_under_mask` makes them exact under the bound), zero
      on padding.
    losses: ``(G,)`` final alignment loss per group (no augmentation; the mean over the
      ensemble's members), best restart.
    initial_losses: ``(G,)`` the loss of the unperturbed poisons (on the surrogates given to
      :func:`craft_init`, before any retraining).
    restart_losses: ``(restarts, G)``.
    history: per step ``{"step", "restart", "loss"}`` (mean over groups of the augmented loss),
      every step of the craft, also those run before a resume.
    snr_db: ``(K, n)`` achieved SNR per poison (inf for padding).
  """

  delta: np.ndarray
  losses: np.ndarray
  initial_losses: np.ndarray
  restart_losses: np.ndarray
  history: list[dict[str, float]]
  snr_db: np.ndarray


# --------------------------------------------------------------------------------------------
# The driver: craft_init / craft_run / craft_finish
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Compiled:
  """What a craft builds once: the jitted functions, the shardings and the host inputs."""

  config: CraftConfig
  key: jax.Array
  poisons: Poisons
  options: RunOptions
  host_inputs: CraftInputs      # (G, n, ...) host arrays, no key gradients
  step_fn: Callable
  eval_fn: Callable
  grads_fn: Callable
  start_fn: Callable            # restart -> projected first ``u`` of that restart
  tx: Any
  state_sharding: Any
  replicated: Any
  pool: Any
  pool_targets: Any


@dataclasses.dataclass(frozen=True)
class CraftRun:
  """A craft in progress: what :func:`craft_run` advances and :func:`craft_finish` ends.

  Attributes:
    state: the checkpointed :class:`CraftState` (on the mesh).
    step: ``state.step`` on the host (read once, then counted: the loop never syncs for it).
    inputs: the poisons and the key gradients of the current surrogates, on the mesh.
    surrogates: the current ensemble, on the mesh.
    initial_losses: ``(G,)`` the unperturbed poisons' losses on the surrogates first given.
    history: ``{"step", "restart", "loss"}`` of every step run so far (read back from
      ``metrics.jsonl`` on a resume).
  """

  compiled: _Compiled
  state: CraftState
  step: int
  inputs: CraftInputs
  surrogates: Ensemble
  initial_losses: np.ndarray
  history: tuple[dict[str, float], ...]

  @property
  def total_steps(self) -> int:
    """``restarts * steps``: where the craft ends."""
    return self.compiled.config.restarts * self.compiled.config.steps


def _put(mesh, array, spec):
  sharding = jax.sharding.NamedSharding(mesh, spec)
  array = np.asarray(array)
  return jax.make_array_from_callback(array.shape, sharding, lambda idx: array[idx])


def key_start(key_waveforms, length: int, n: int) -> np.ndarray:
  """``CraftConfig.init='key'``'s start in budget units: each key's waveform, cut or tiled to
  ``length`` samples and scaled to ``rms = 1`` (the full SNR budget), repeated for its ``n``
  poisons: float32 ``(K, n, length)``. A silent key starts at zero."""
  keys = np.asarray(key_waveforms, np.float32)
  reps = -(-length // keys.shape[-1])
  keys = np.tile(keys, (1, reps))[:, :length]
  rms = np.sqrt(np.mean(np.square(keys), axis=-1, keepdims=True))
  keys = np.where(rms > 0, keys / np.where(rms > 0, rms, 1.0), 0.0)
  return np.repeat(keys[:, None], n, axis=1).astype(np.float32)


def _check(poisons: Poisons, config: CraftConfig, mesh) -> None:
  """Refuses poisons that do not split over the mesh, or mixup without a pool."""
  axis = mesh.axis_names[0]
  n = np.shape(poisons.poison_x)[1]
  if n % mesh.shape[axis]:
    raise ValueError(f"{n} poisons per key do not split over {mesh.shape[axis]} devices; pad with "
                     "Selection.pad_to(mesh size).")
  if config.augment.mixup_alpha > 0 and poisons.pool is None:
    raise ValueError("CraftAugment.mixup_alpha > 0 needs a pool of clean clips (pool=...).")


def _host_inputs(poisons: Poisons, config: CraftConfig, num_classes: int) -> CraftInputs:
  """The poisons grouped ``(G, n, ...)`` on the host (one group for the joint objective)."""
  num_keys, n, length = np.shape(poisons.poison_x)
  x = np.asarray(poisons.poison_x, np.float32)
  weights = np.asarray(poisons.poison_mask, np.float32)
  targets = np.eye(num_classes, dtype=np.float32)[np.asarray(poisons.poison_labels)]
  if config.objective == "joint":
    x = x.reshape(1, num_keys * n, length)
    targets = targets.reshape(1, num_keys * n, -1)
    weights = weights.reshape(1, num_keys * n)
  scale = np.asarray(snr_scale(jnp.asarray(x), config.unit_db)) * (weights > 0)
  return CraftInputs(x, targets, weights, scale, None)


def _compile(surrogates: Ensemble, poisons: Poisons, config: CraftConfig, key: jax.Array,
             options: RunOptions, mesh) -> _Compiled:
  """Builds the craft's jitted functions and shardings (one compilation of each per craft)."""
  P = jax.sharding.PartitionSpec
  clf, axis = surrogates.clf, mesh.axis_names[0]
  host = _host_inputs(poisons, config, clf.num_classes)
  repl = jax.sharding.NamedSharding(mesh, P())
  u_sharding = jax.sharding.NamedSharding(mesh, P(None, axis, None))
  keep = leaf_keep(surrogates.params, tuple(config.exclude_params))
  statics = dict(clf=clf, config=config, keep=keep, sample_rate=poisons.sample_rate,
                 ensemble=True)
  step_fn, tx = make_craft_step(clf, config, keep=keep, sample_rate=poisons.sample_rate,
                                ensemble=True)
  eval_fn = jax.jit(functools.partial(eval_losses, **statics))
  grads_fn = jax.jit(functools.partial(ensemble_key_gradients, clf, objective=config.objective,
                                       contrast=config.key_contrast), out_shardings=repl)
  groups, n_group, length = host.x.shape
  start = None if config.init == "random" else jnp.asarray(
      key_start(poisons.key_waveforms, length, np.shape(poisons.poison_x)[1]).reshape(
          groups, n_group, length))
  project_fn = jax.jit(functools.partial(project, mask=config.stft_mask()),
                       out_shardings=u_sharding)
  x_dev = _put(mesh, host.x, P(None, axis, None))
  scale_dev = _put(mesh, host.scale, P(None, axis))

  def start_fn(restart):
    k = rng_lib.stream(jax.random.fold_in(key, restart), "init")
    u = config.init_scale * jax.random.uniform(k, (groups, n_group, length), minval=-1, maxval=1)
    if start is not None:
      u = u + start
    return project_fn(jax.device_put(u, u_sharding), x_dev, scale_dev)

  pool = pool_targets = None
  if poisons.pool is not None:
    pool = jax.device_put(jnp.asarray(poisons.pool, jnp.float32), repl)
    pool_targets = jax.device_put(jax.nn.one_hot(jnp.asarray(poisons.pool_labels),
                                                 clf.num_classes, dtype=jnp.float32), repl)
  compiled = _Compiled(config, key, poisons, options, host, step_fn, eval_fn, grads_fn, start_fn,
                       tx, None, repl, pool, pool_targets)
  # One placement and strong dtypes for every state the step sees (perturbation-shaped leaves
  # split like ``u``, the rest replicated), so that the jitted step compiles once: a state built
  # outside it with other (or unspecified) shardings or weak types would make the second step
  # compile the step again (tens of seconds once the loops are unrolled).
  state_sharding = jax.tree.map(lambda x: u_sharding if np.ndim(x) == 3 else repl,
                                _fresh_state(compiled))
  return dataclasses.replace(compiled, state_sharding=state_sharding)


def _fresh_state(compiled: _Compiled) -> CraftState:
  """The state at step 0: the first restart's start, no best yet."""
  u = compiled.start_fn(0)
  groups = u.shape[0]
  return CraftState(u=u, opt_state=compiled.tx.init(u), step=jnp.zeros((), jnp.int32),
                    best_u=jnp.zeros_like(u),
                    best_loss=jnp.full((groups,), jnp.inf, jnp.float32),
                    restart_losses=jnp.full((compiled.config.restarts, groups), jnp.nan,
                                            jnp.float32))


def _commit(compiled: _Compiled, state: CraftState) -> CraftState:
  return jax.device_put(state, compiled.state_sharding)


def _placed(compiled: _Compiled, surrogates: Ensemble, inputs: CraftInputs):
  """The ensemble on the mesh (replicated) and ``inputs`` with its key gradients."""
  params, batch_stats = jax.device_put((surrogates.params, surrogates.batch_stats),
                                       compiled.replicated)
  poisons = compiled.poisons
  grads = compiled.grads_fn(params, batch_stats, jnp.asarray(poisons.key_waveforms),
                            jnp.asarray(poisons.key_labels))
  return Ensemble(surrogates.clf, params, batch_stats), inputs._replace(key_grads=grads)


def craft_init(surrogates: Ensemble, poisons: Poisons, *, config: CraftConfig, key: jax.Array,
               options: RunOptions = RunOptions()) -> CraftRun:
  """Starts a craft, or resumes it from ``options.checkpoint_dir``.

  Args:
    surrogates: the ensemble to align with (:func:`ensemble_from_trained`; one member allowed).
    poisons: the keys and the clips to perturb.
    config: the craft settings.
    key: the craft's random key (restart inits and augmentation draws derive from it).
    options: mesh, checkpoints, logging.

  Returns:
    A :class:`CraftRun` at step 0, or at the latest checkpoint's step with the history of the
    steps before it (from ``metrics.jsonl``).

  Raises:
    ValueError: poisons that do not split over the mesh, or mixup without a pool.
  """
  from jaxtag import sharding as sharding_lib
  mesh = options.mesh or sharding_lib.make_mesh()
  _check(poisons, config, mesh)
  P = jax.sharding.PartitionSpec
  compiled = _compile(surrogates, poisons, config, key, options, mesh)
  host, axis = compiled.host_inputs, mesh.axis_names[0]
  inputs = CraftInputs(
      x=_put(mesh, host.x, P(None, axis, None)), targets=_put(mesh, host.targets,
                                                              P(None, axis, None)),
      weights=_put(mesh, host.weights, P(None, axis)), scale=_put(mesh, host.scale,
                                                                  P(None, axis)),
      key_grads=None)
  placed, inputs = _placed(compiled, surrogates, inputs)
  state = _commit(compiled, _fresh_state(compiled))
  history: list[dict[str, float]] = []
  if options.checkpoint_dir is not None:
    restored = craft_records.restore(craft_records.checkpoint_manager(options.checkpoint_dir),
                                     state)
    if restored is not None:
      state = restored
      _log.info("Resuming the craft at step %d from %s", int(state.step), options.checkpoint_dir)
    history = craft_records.read_history(options.checkpoint_dir, int(state.step))
  zeros = jax.device_put(jnp.zeros_like(state.u), state.u.sharding)
  initial = np.asarray(compiled.eval_fn(zeros, inputs, placed.params, placed.batch_stats))
  return CraftRun(compiled, state, int(state.step), inputs, placed, initial, tuple(history))


def with_surrogates(run: CraftRun, surrogates: Ensemble) -> CraftRun:
  """The craft going on against other surrogates (e.g. retrained ones): the key gradients are
  recomputed from their weights; the perturbations and the optimiser state carry over.

  Raises:
    ValueError: another number of members than the craft started with.
  """
  if surrogates.members != run.surrogates.members:
    raise ValueError(f"{surrogates.members} surrogates for a craft against an ensemble of "
                     f"{run.surrogates.members}.")
  placed, inputs = _placed(run.compiled, surrogates, run.inputs)
  return dataclasses.replace(run, surrogates=placed, inputs=inputs)


def current_delta(run: CraftRun) -> np.ndarray:
  """The perturbations as they stand: float32 ``(K, n, T)``, quantised as they would be
  published, zero on padding."""
  return _delta(run.compiled, run.state.u)


def _delta(compiled: _Compiled, u) -> np.ndarray:
  host = compiled.host_inputs
  delta = np.asarray(perturbation(jnp.asarray(jax.device_get(u)), host, compiled.config))
  delta = np.where(host.weights[..., None] > 0, delta, 0.0).astype(np.float32)
  return delta.reshape(np.shape(compiled.poisons.poison_x))


def _end_restart(run: CraftRun, state: CraftState, restart: int) -> CraftState:
  """Keeps each group's best perturbation after restart ``restart`` (all on the device)."""
  final = run.compiled.eval_fn(state.u, run.inputs, run.surrogates.params,
                               run.surrogates.batch_stats)
  better = final < state.best_loss
  return _commit(run.compiled, dataclasses.replace(
      state, best_u=jnp.where(better[:, None, None], state.u, state.best_u),
      best_loss=jnp.where(better, final, state.best_loss),
      restart_losses=state.restart_losses.at[restart].set(final)))


def craft_run(run: CraftRun, until: int | None = None) -> CraftRun:
  """Runs the craft's steps up to global step ``until`` (default: the end) and returns it there.

  The per-step losses stay on the device and are fetched every ``options.log_every`` steps (and
  at checkpoints and at ``until``) into the history and ``metrics.jsonl``. With a
  ``checkpoint_dir``, the state is checkpointed every ``checkpoint_every`` steps and at
  ``until``, so that :func:`craft_init` resumes there.

  The step donates the state's buffers, as a training step does: use the returned run, never
  ``run`` again (read :func:`current_delta` of a run before running it further).
  """
  compiled, config, options = run.compiled, run.compiled.config, run.compiled.options
  until = run.total_steps if until is None else min(int(until), run.total_steps)
  if until <= run.step:
    return run
  state, step = run.state, run.step
  history, pending = list(run.history), []
  log = craft_records.CraftLog(options.checkpoint_dir, options.progress, run.total_steps, step)
  step_key = rng_lib.stream(compiled.key, "augment")
  params, batch_stats = run.surrogates.params, run.surrogates.batch_stats
  try:
    while step < until:
      restart, within = divmod(step, config.steps)
      if within == 0 and step > 0:
        u = compiled.start_fn(restart)
        state = _commit(compiled, dataclasses.replace(state, u=u, opt_state=compiled.tx.init(u)))
      state, losses = compiled.step_fn(state, run.inputs, params, batch_stats, compiled.pool,
                                       compiled.pool_targets, step_key)
      pending.append((step, restart, jnp.mean(losses)))
      if within == config.steps - 1:   # end of a restart: keep each group's best
        state = _end_restart(run, state, restart)
      step += 1
      checkpoint = step % options.checkpoint_every == 0 or step in (run.total_steps, until)
      if checkpoint or step % options.log_every == 0:
        history += log.flush(pending)
        pending = []
      log.advance(state, step, checkpoint)
  finally:
    log.close()
  return dataclasses.replace(run, state=state, step=step, history=tuple(history))


def craft_finish(run: CraftRun) -> CraftResult:
  """The result of a craft run to its end (:func:`craft_run` without ``until``).

  Raises:
    ValueError: the craft has not reached its last step.
  """
  if run.step < run.total_steps:
    raise ValueError(f"The craft is at step {run.step} of {run.total_steps}; run it to the end "
                     "(craft_run) first.")
  compiled, state = run.compiled, run.state
  if run.total_steps == 0:   # key insertion (CraftConfig.steps = 0): the projected start is it
    final = compiled.eval_fn(state.u, run.inputs, run.surrogates.params,
                             run.surrogates.batch_stats)
    state = dataclasses.replace(state, best_u=state.u, best_loss=final,
                                restart_losses=state.restart_losses.at[0].set(final))
  delta = _delta(compiled, state.best_u)
  snr = quality.perturbation_snr_db(np.asarray(compiled.poisons.poison_x, np.float32), delta)
  snr = np.where(np.asarray(compiled.poisons.poison_mask), snr, np.inf)
  return CraftResult(delta=delta, losses=np.asarray(state.best_loss),
                     initial_losses=run.initial_losses,
                     restart_losses=np.asarray(state.restart_losses),
                     history=list(run.history), snr_db=snr)


def craft(surrogates: Ensemble, poisons: Poisons, *, config: CraftConfig, key: jax.Array,
          options: RunOptions = RunOptions()) -> CraftResult:
  """Crafts the taggant perturbations of every key's poisons, start to end (or from a
  checkpoint): :func:`craft_init`, :func:`craft_run`, :func:`craft_finish`."""
  return craft_finish(craft_run(craft_init(surrogates, poisons, config=config, key=key,
                                           options=options)))
