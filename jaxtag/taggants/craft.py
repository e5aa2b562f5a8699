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

Surrogate ensembles (Witches' Brew's lever for transfer to models the owner did not train): pass
``params``/``batch_stats`` of several surrogates of one architecture (other seeds, or other epochs
of one run) as sequences; they are stacked on a leading member axis, every member has its own key
gradient, and the loss of a group is the mean over members of ``1 - cos``. The members are
processed one after another (see ``unroll`` below), so memory does not grow with their number.

Where things are: the surrogate's pure functions, the key gradients and the parameter-tree cosine
in :mod:`jaxtag.taggants.alignment`; the settings, the augmentation and the pure jitted step in
:mod:`jaxtag.taggants.step`; the SNR/box projection and the 16-bit quantisation in
:mod:`jaxtag.taggants.constraint`; this module is the driver (:func:`craft`: shardings, restarts,
checkpoints, retraining) and re-exports all of them.

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

from jaxtag import errors
from jaxtag import rng as rng_lib
from jaxtag.taggants.alignment import (  # noqa: F401  (re-exported: the public crafting API)
    Classifier, Objective, classifier, classifier_from_trained, cross_entropy,
    ensemble_key_gradients, key_gradients, leaf_keep, stack_members, tree_cosine,
    tree_projection)
from jaxtag.taggants.constraint import (  # noqa: F401  (PCM16_SCALE re-exported)
    PCM16_SCALE, project, quantize_perturbation, snr_scale)
from jaxtag.taggants.step import (  # noqa: F401  (re-exported: the public crafting API)
    REFERENCE_STEPS, CraftAugment, CraftConfig, CraftInputs, CraftState, augment_views,
    craft_step, eval_losses, group_loss, make_craft_step, perturbation, sequential_map, sign_adam)

_log = logging.getLogger(__name__)

# retrain(delta (K, n, T), round) -> (params, batch_stats) of the retrained surrogate(s).
RetrainFn = Callable[[np.ndarray, int], tuple[Any, Any]]



# --------------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CraftResult:
  """What :func:`craft` returns (host numpy arrays).

  Attributes:
    delta: float32 ``(G, n, T)`` the quantised perturbations (exactly what the 16-bit export
      adds when ``config.quantize``; under ``constraint="stft_mask"`` rounded to the grid, and
      :func:`jaxtag.taggants.protect.export_under_mask` makes them exact under the bound), zero
      on padding.
    losses: ``(G,)`` final alignment loss per group (no augmentation; for an ensemble the mean
      over members), best restart.
    initial_losses: ``(G,)`` the loss of the unperturbed poisons (on the surrogate as given,
      before any retraining).
    restart_losses: ``(restarts, G)``.
    history: per step ``{"step", "restart", "loss"}`` (mean over groups of the augmented loss).
    snr_db: ``(G, n)`` achieved SNR per poison (inf for padding).
  """

  delta: np.ndarray
  losses: np.ndarray
  initial_losses: np.ndarray
  restart_losses: np.ndarray
  history: list[dict[str, float]]
  snr_db: np.ndarray


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


def craft(clf: Classifier, params, batch_stats, *, key_waveforms, key_labels, poison_x,
          poison_labels, poison_mask, config: CraftConfig, key: jax.Array, sample_rate: int,
          pool: np.ndarray | None = None, pool_labels: np.ndarray | None = None, mesh=None,
          checkpoint_dir: str | pathlib.Path | None = None, checkpoint_every: int = 25,
          progress: bool = True, retrain: RetrainFn | None = None,
          retrain_at: Sequence[int] = ()) -> CraftResult:
  """Crafts the taggant perturbations of every key's poisons.

  Args:
    clf, params, batch_stats: the surrogate (:func:`classifier_from_trained`); for an ensemble,
      ``params`` and ``batch_stats`` are lists (one entry per surrogate, one architecture).
    key_waveforms: float32 ``(K, T)`` keys; key_labels: int ``(K,)`` their target labels.
    poison_x: float32 ``(K, n, T)`` each key's poison clips (16-bit grid values).
    poison_labels: int ``(K, n)`` their true labels; poison_mask: bool ``(K, n)`` real entries.
      (``jaxtag.taggants.select.Selection`` gives indices and mask in this layout.)
    config: the craft settings.
    key: the craft's random key (restart inits and augmentation draws derive from it).
    sample_rate: of every waveform.
    pool, pool_labels: clean clips ``(M, T)`` for mixup (needed when ``augment.mixup_alpha``).
    mesh: device mesh (default: every device); ``n`` must divide by its data-axis size (use
      ``Selection.pad_to``).
    checkpoint_dir: where to checkpoint and resume (None: no checkpoints).
    checkpoint_every: steps between checkpoints.
    progress: show a progress bar.
    retrain: Witches' Brew's retraining: ``retrain(delta, round) -> (params, batch_stats)`` gives
      the surrogate(s) retrained on the data as it would be published with ``delta`` (float32
      ``(K, n, T)``, quantised, zero on padding; lists for an ensemble, same architecture). The
      key gradients are recomputed from the new weights and crafting goes on from the current
      perturbations and optimiser state. It should be deterministic and resumable (a resumed
      craft calls it again with the same ``delta``, kept in ``checkpoint_dir``).
    retrain_at: the steps before which ``retrain`` is called (needs ``config.restarts == 1``).

  Returns:
    A :class:`CraftResult`.
  """
  from jaxtag import sharding as sharding_lib
  P = jax.sharding.PartitionSpec
  mesh = mesh or sharding_lib.make_mesh()
  axis = mesh.axis_names[0]
  num_keys, n, length = np.shape(poison_x)
  if n % mesh.shape[axis]:
    raise ValueError(f"{n} poisons per key do not split over {mesh.shape[axis]} devices; pad with "
                     "Selection.pad_to(mesh size).")
  if config.augment.mixup_alpha > 0 and pool is None:
    raise ValueError("CraftAugment.mixup_alpha > 0 needs a pool of clean clips (pool=...).")
  retrain_at = tuple(int(s) for s in retrain_at)
  if retrain_at:
    if retrain is None:
      raise ValueError("retrain_at is set but no retrain function was given.")
    if config.restarts != 1:
      raise ValueError(f"Retraining during the craft needs "
                       f"{errors.option('restarts', 1, owner='CraftConfig')}; got "
                       f"{config.restarts}.")
    if list(retrain_at) != sorted(set(retrain_at)) or not all(
        0 < s < config.steps for s in retrain_at):
      raise ValueError(f"retrain_at={retrain_at} must be increasing steps in (0, {config.steps}).")
  poison_x = np.asarray(poison_x, np.float32)
  weights = np.asarray(poison_mask, np.float32)
  targets = np.eye(clf.num_classes, dtype=np.float32)[np.asarray(poison_labels)]
  if config.objective == "joint":
    poison_x = poison_x.reshape(1, num_keys * n, length)
    targets = targets.reshape(1, num_keys * n, -1)
    weights = weights.reshape(1, num_keys * n)
  groups, n_group = weights.shape
  scale = np.asarray(snr_scale(jnp.asarray(poison_x), config.unit_db)) * (weights > 0)

  ensemble = isinstance(params, list)    # a list of trees; a single tree may itself be a tuple
  if ensemble:
    if not isinstance(batch_stats, list) or len(batch_stats) != len(params):
      raise ValueError(f"An ensemble of {len(params)} surrogates needs as many batch_stats; got "
                       f"{type(batch_stats).__name__}.")
    keep = leaf_keep(params[0], tuple(config.exclude_params))
  else:
    keep = leaf_keep(params, tuple(config.exclude_params))
  repl = jax.sharding.NamedSharding(mesh, P())
  grads_fn = jax.jit(functools.partial(
      ensemble_key_gradients if ensemble else key_gradients, clf, objective=config.objective,
      contrast=config.key_contrast),
      out_shardings=repl)

  def surrogate(params, batch_stats):
    """The weights on the mesh (stacked for an ensemble) and their key gradients."""
    if ensemble:
      if len(params) != members or len(batch_stats) != members:
        raise ValueError(f"retrain returned {len(params)} surrogates for an ensemble of "
                         f"{members}.")
      params, batch_stats = stack_members(params), stack_members(batch_stats)
    params, batch_stats = jax.device_put((params, batch_stats), repl)
    return params, batch_stats, grads_fn(params, batch_stats, jnp.asarray(key_waveforms),
                                         jnp.asarray(key_labels))

  members = len(params) if ensemble else 1
  params, batch_stats, g_key = surrogate(params, batch_stats)
  inputs = CraftInputs(
      x=_put(mesh, poison_x, P(None, axis, None)), targets=_put(mesh, targets, P(None, axis, None)),
      weights=_put(mesh, weights, P(None, axis)), scale=_put(mesh, scale, P(None, axis)),
      key_grads=g_key)
  if pool is None:
    pool_dev = pool_targets = None
  else:
    pool_dev = jax.device_put(jnp.asarray(pool, jnp.float32), repl)
    pool_targets = jax.device_put(
        jax.nn.one_hot(jnp.asarray(pool_labels), clf.num_classes, dtype=jnp.float32), repl)

  step_fn, tx = make_craft_step(clf, config, keep=keep, sample_rate=sample_rate,
                                ensemble=ensemble)
  u_sharding = jax.sharding.NamedSharding(mesh, P(None, axis, None))
  eval_fn = jax.jit(functools.partial(eval_losses, clf=clf, config=config, keep=keep,
                                      sample_rate=sample_rate, ensemble=ensemble))

  start = None if config.init == "random" else jnp.asarray(
      key_start(key_waveforms, length, n).reshape(groups, n_group, length))

  def fresh_u(restart):
    k = rng_lib.stream(jax.random.fold_in(key, restart), "init")
    u = config.init_scale * jax.random.uniform(k, (groups, n_group, length), minval=-1, maxval=1)
    if start is not None:
      u = u + start
    u = jax.device_put(u, u_sharding)
    return jax.jit(functools.partial(project, mask=config.stft_mask()),
                   out_shardings=u_sharding)(u, inputs.x, inputs.scale)

  def new_state():
    u = fresh_u(0)
    return CraftState(u=u, opt_state=tx.init(u), step=jnp.zeros((), jnp.int32),
                      best_u=jnp.zeros_like(u),
                      best_loss=jnp.full((groups,), jnp.inf, jnp.float32),
                      restart_losses=jnp.full((config.restarts, groups), jnp.nan, jnp.float32))

  # One placement and strong dtypes for every state the step sees (perturbation-shaped leaves
  # split like ``u``, the rest replicated), so that the jitted step compiles once: a state built
  # outside it with other (or unspecified) shardings or weak types would make the second step
  # compile the step again (tens of seconds once the loops are unrolled).
  state_sharding = jax.tree.map(lambda x: u_sharding if np.ndim(x) == 3 else repl, new_state())

  def commit(state):
    return jax.device_put(state, state_sharding)

  host_inputs = CraftInputs(poison_x, targets, weights, scale, None)

  def retrain_round(r, u):
    """Round ``r`` of retraining on the data crafted so far (``u``); its ``delta`` is kept in
    ``checkpoint_dir`` so that a resumed craft retrains on exactly the same data."""
    nonlocal params, batch_stats, inputs
    record = None if checkpoint_dir is None else pathlib.Path(checkpoint_dir) / f"retrain_{r}.npy"
    if record is not None and record.exists():
      delta = np.load(record)
    else:
      delta = np.asarray(perturbation(jnp.asarray(jax.device_get(u)), host_inputs, config))
      delta = np.where(weights[..., None] > 0, delta, 0.0).astype(np.float32)
      delta = delta.reshape(num_keys, n, length)
      if record is not None:
        from jaxtag.audio import io as audio_io
        with audio_io.atomic_file(record, "wb") as f:
          np.save(f, delta)
    _log.info("Retraining the surrogate (round %d of %d) on the data crafted so far", r + 1,
              len(retrain_at))
    params, batch_stats, g = surrogate(*retrain(delta, r))
    inputs = inputs._replace(key_grads=g)

  state = commit(new_state())
  manager = None
  if checkpoint_dir is not None:
    manager = _checkpoint_manager(checkpoint_dir, checkpoint_every)
    restored = _restore(manager, state)
    if restored is not None:
      state = restored
      _log.info("Resuming the craft at step %d from %s", int(state.step), checkpoint_dir)

  initial = np.asarray(eval_fn(jax.device_put(jnp.zeros_like(state.u), u_sharding), inputs,
                               params, batch_stats))
  done = [r for r, s in enumerate(retrain_at) if s < int(state.step)]
  if done:                                   # resumed after a retraining round: redo its last
    retrain_round(done[-1], state.u)         # (delta read back from its record)
  total = config.restarts * config.steps
  step_key = rng_lib.stream(key, "augment")
  history: list[dict[str, float]] = []
  bar = _progress(total, int(state.step), progress)
  while int(state.step) < total:
    step = int(state.step)
    restart, within = divmod(step, config.steps)
    if within == 0 and step > 0:
      u = fresh_u(restart)
      state = commit(dataclasses.replace(state, u=u, opt_state=tx.init(u)))
    if step in retrain_at:
      retrain_round(retrain_at.index(step), state.u)
    state, losses = step_fn(state, inputs, params, batch_stats, pool_dev, pool_targets, step_key)
    loss = float(jnp.mean(losses))
    history.append({"step": step, "restart": restart, "loss": loss})
    if bar is not None:
      bar.update(1)
      bar.set_postfix(loss=f"{loss:.4f}", restart=restart)
    if within == config.steps - 1:   # end of a restart: keep each group's best
      final = eval_fn(state.u, inputs, params, batch_stats)
      better = final < state.best_loss
      state = commit(dataclasses.replace(
          state, best_u=jnp.where(better[:, None, None], state.u, state.best_u),
          best_loss=jnp.where(better, final, state.best_loss),
          restart_losses=state.restart_losses.at[restart].set(final)))
    if manager is not None and (int(state.step) % checkpoint_every == 0
                                or int(state.step) == total):
      _save(manager, state)
  if bar is not None:
    bar.close()
  if manager is not None:
    manager.wait_until_finished()
    manager.close()
  if total == 0:   # key insertion (CraftConfig.steps = 0): the projected start is the result
    final = eval_fn(state.u, inputs, params, batch_stats)
    state = dataclasses.replace(state, best_u=state.u, best_loss=final,
                                restart_losses=state.restart_losses.at[0].set(final))

  best_u = np.asarray(jax.device_get(state.best_u))
  delta = np.asarray(perturbation(jnp.asarray(best_u), host_inputs, config))
  delta = np.where(weights[..., None] > 0, delta, 0.0).astype(np.float32)
  delta = delta.reshape(num_keys, n, length)
  x = poison_x.reshape(num_keys, n, length)
  with np.errstate(divide="ignore"):
    snr = 10 * np.log10(np.sum(x.astype(np.float64) ** 2, -1) /
                        np.sum(delta.astype(np.float64) ** 2, -1))
  snr = np.where(np.asarray(poison_mask), snr, np.inf)
  return CraftResult(delta=delta, losses=np.asarray(state.best_loss), initial_losses=initial,
                     restart_losses=np.asarray(state.restart_losses), history=history,
                     snr_db=snr)


def _progress(total, start, enabled):
  if not enabled:
    return None
  from tqdm.auto import tqdm
  return tqdm(total=total, initial=start, desc="craft", unit="step", dynamic_ncols=True)


def _checkpoint_manager(directory, every):
  import orbax.checkpoint as ocp
  directory = pathlib.Path(directory).absolute()
  options = ocp.CheckpointManagerOptions(max_to_keep=2, save_interval_steps=1)
  return ocp.CheckpointManager(directory, options=options)


def _save(manager, state: CraftState) -> None:
  import orbax.checkpoint as ocp
  manager.save(int(state.step), args=ocp.args.StandardSave(state))


def _restore(manager, template: CraftState) -> CraftState | None:
  import orbax.checkpoint as ocp
  step = manager.latest_step()
  if step is None:
    return None
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), template)
  return manager.restore(step, args=ocp.args.StandardRestore(abstract))
