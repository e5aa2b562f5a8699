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
re-exported here) enforces both after every step. The optimiser is
sign-Adam (Adam on the sign of the gradient) with the taggants step schedule, and restarts keep the
lowest final loss per key. Every step sees each poison ``views`` times with independent,
differentiable augmentation draws (time shift, gain, noise, mixup with clean clips, SpecAugment
masks between the model's ``features`` and ``classify``).

16-bit export: :func:`quantize_perturbation` puts ``x + delta`` on the 16-bit grid without ever
lowering the SNR below the floor (round to nearest where that keeps the floor, else truncate towards
zero); crafting applies the same quantisation with a straight-through gradient, so that the loss is
that of the clips that will be published.

Surrogate ensembles (Witches' Brew's lever for transfer to models the owner did not train): pass
``params``/``batch_stats`` of several surrogates of one architecture (other seeds, or other epochs
of one run) as sequences; they are stacked on a leading member axis, every member has its own key
gradient, and the loss of a group is the mean over members of ``1 - cos``. The members are
processed one after another (``lax.map``), so memory does not grow with their number.

The surrogate's pure functions, the key gradients and the parameter-tree cosine are in
:mod:`jaxtag.taggants.alignment` (re-exported here).

Sharding: the poison axis is split over the mesh's data axis; the parameter-gradient sums over
poisons are reduced across devices by the collectives that XLA inserts for the explicit in/out
shardings of the jitted step. Keys are processed one after another inside the step
(``lax.map``): on CPU a ``vmap`` over keys of this second-order gradient is far slower.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import pathlib
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxtag import rng as rng_lib
from jaxtag.taggants.alignment import (  # noqa: F401  (re-exported: the public crafting API)
    Classifier, Objective, classifier, classifier_from_trained, cross_entropy,
    ensemble_key_gradients, key_gradients, leaf_keep, stack_members, tree_cosine)
from jaxtag.taggants.constraint import (  # noqa: F401  (PCM16_SCALE re-exported)
    PCM16_SCALE, project, quantize_perturbation, snr_scale)
from jaxtag.train import augment as augment_lib

_log = logging.getLogger(__name__)

REFERENCE_STEPS = 250     # the schedule's milestones are given for a 250-step craft.



# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CraftAugment:
  """Differentiable augmentation applied to the poisons while crafting.

  Attributes:
    views: how many independent augmentation draws of each poison per step (the reference: 2).
    max_shift_seconds: circular time shift, uniform in +-this.
    max_gain_db: gain uniform in +-this many dB.
    noise_snr_db: ``(low, high)`` white-noise SNR range in dB, or None for no noise.
    mixup_alpha: Beta(alpha, alpha) weight of a mixup with a clean clip (0: off); the poison keeps
      the larger weight.
    mixup_prob: probability that a view is mixed.
    freq_mask_width, num_freq_masks, time_mask_width, num_time_masks: SpecAugment masks applied
      between the model's ``features`` and ``classify`` (width 0: off).
  """

  views: int = 2
  max_shift_seconds: float = 0.1
  max_gain_db: float = 6.0
  noise_snr_db: tuple[float, float] | None = None
  mixup_alpha: float = 0.0
  mixup_prob: float = 0.5
  freq_mask_width: int = 0
  num_freq_masks: int = 1
  time_mask_width: int = 0
  num_time_masks: int = 1

  def __post_init__(self):
    if self.views < 1:
      raise ValueError(f"CraftAugment.views must be >= 1; got {self.views}.")
    if self.max_shift_seconds < 0 or self.max_gain_db < 0 or self.mixup_alpha < 0:
      raise ValueError("CraftAugment: max_shift_seconds, max_gain_db and mixup_alpha must be >= 0.")
    if not 0.0 <= self.mixup_prob <= 1.0:
      raise ValueError(f"CraftAugment.mixup_prob must be in [0, 1]; got {self.mixup_prob}.")
    if self.noise_snr_db is not None and len(self.noise_snr_db) != 2:
      raise ValueError("CraftAugment.noise_snr_db must be (low, high) or None.")

  @property
  def uses_features(self) -> bool:
    return (self.freq_mask_width > 0 and self.num_freq_masks > 0) or (
        self.time_mask_width > 0 and self.num_time_masks > 0)


@dataclasses.dataclass(frozen=True)
class CraftConfig:
  """How to craft.

  Attributes:
    steps: optimisation steps per restart (the reference: 250).
    learning_rate: sign-Adam step size, in units of each clip's SNR budget (``u`` above).
    milestones: steps (for a 250-step craft; scaled to ``steps``) where the rate is multiplied by
      ``decay``; the taggants schedule is x0.3 at 40, 93, 156 and 218.
    decay: the factor at each milestone.
    restarts: independent runs from fresh random starts; each key keeps its best.
    snr_db: per-clip SNR floor of the perturbation, ``10 log10(|x|^2 / |delta|^2)``.
    objective: ``per_key`` (each key its own poisons and cosine) or ``joint``.
    exclude_params: parameters left out of the cosine: a leaf is left out when any of these
      strings occurs in its path (``"/"``-joined, e.g. ``"head"`` or ``"bias"``).
    quantize: make the loss see the 16-bit-quantised clip (straight-through gradient).
    init_scale: restarts start from ``u`` uniform in ``+-init_scale`` (then projected).
    augment: the differentiable augmentation.
  """

  steps: int = 250
  learning_rate: float = 0.1
  milestones: tuple[int, ...] = (40, 93, 156, 218)
  decay: float = 0.3
  restarts: int = 1
  snr_db: float = 55.0
  objective: Objective = "per_key"
  exclude_params: tuple[str, ...] = ()
  quantize: bool = True
  init_scale: float = 0.5
  augment: CraftAugment = CraftAugment()

  def __post_init__(self):
    if self.steps < 1 or self.restarts < 1:
      raise ValueError(f"CraftConfig: steps and restarts must be >= 1; got {self.steps}, "
                       f"{self.restarts}.")
    if self.learning_rate <= 0 or not 0 < self.decay <= 1:
      raise ValueError("CraftConfig: learning_rate must be > 0 and decay in (0, 1].")
    if self.objective not in ("per_key", "joint"):
      raise ValueError(f"CraftConfig.objective must be 'per_key' or 'joint'; got "
                       f"{self.objective!r}.")
    if isinstance(self.augment, dict):
      object.__setattr__(self, "augment", CraftAugment(**self.augment))

  def schedule(self) -> optax.Schedule:
    """The step-size schedule: ``learning_rate`` times ``decay`` per milestone passed."""
    boundaries: dict[int, float] = {}
    for m in self.milestones:
      step = max(1, int(round(m * self.steps / REFERENCE_STEPS)))
      boundaries[step] = boundaries.get(step, 1.0) * self.decay
    return optax.piecewise_constant_schedule(self.learning_rate, boundaries)


def sign_adam(learning_rate: float | optax.Schedule) -> optax.GradientTransformation:
  """Adam on the sign of the gradient (Witches' Brew's ``signAdam``), as an optax chain."""
  sign = optax.GradientTransformation(
      lambda params: optax.EmptyState(),
      lambda updates, state, params=None: (jax.tree.map(jnp.sign, updates), state))
  return optax.chain(sign, optax.scale_by_adam(), optax.scale_by_learning_rate(learning_rate))


# --------------------------------------------------------------------------------------------
# Augmentation (the constraint and the 16-bit export are in jaxtag.taggants.constraint)
# --------------------------------------------------------------------------------------------


def _mix_with_clean(key, waves, targets, pool, pool_targets, *, alpha, prob):
  k_lam, k_idx, k_on = jax.random.split(key, 3)
  n = waves.shape[0]
  lam = jax.random.beta(k_lam, alpha, alpha, (n, 1))
  lam = jnp.maximum(lam, 1.0 - lam)               # the poison keeps the larger weight
  lam = jnp.where(jax.random.bernoulli(k_on, prob, (n, 1)), lam, 1.0)
  idx = jax.random.randint(k_idx, (n,), 0, pool.shape[0])
  return (lam * waves + (1.0 - lam) * pool[idx],
          lam * targets + (1.0 - lam) * pool_targets[idx])


def augment_views(key: jax.Array, waves: jax.Array, targets: jax.Array, aug: CraftAugment, *,
                  sample_rate: int, pool: jax.Array | None = None,
                  pool_targets: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """``aug.views`` differentiable waveform-domain draws of each clip: ``(views * n, T)`` clips and
  their soft targets (SpecAugment is applied later, on the features)."""
  outs, tgts = [], []
  max_shift = int(round(aug.max_shift_seconds * sample_rate))
  for v in range(aug.views):
    k_shift, k_gain, k_noise, k_mix = jax.random.split(jax.random.fold_in(key, v), 4)
    w, t = waves, targets
    if max_shift > 0:
      w = augment_lib.time_shift(k_shift, w, max_shift=max_shift)
    if aug.max_gain_db > 0:
      w = augment_lib.random_gain(k_gain, w, max_db=aug.max_gain_db)
    if aug.noise_snr_db is not None:
      w = augment_lib.add_noise(k_noise, w, snr_db=tuple(aug.noise_snr_db))
    if aug.mixup_alpha > 0 and pool is not None:
      w, t = _mix_with_clean(k_mix, w, t, pool, pool_targets, alpha=aug.mixup_alpha,
                             prob=aug.mixup_prob)
    outs.append(w)
    tgts.append(t)
  return jnp.concatenate(outs), jnp.concatenate(tgts)


# --------------------------------------------------------------------------------------------
# The crafting step
# --------------------------------------------------------------------------------------------


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class CraftState:
  """Everything a craft needs to resume (a pytree; checkpointed as is).

  Attributes:
    u: float32 ``(G, n, T)`` perturbations of the current restart in budget units (G groups:
      the keys, or 1 for the joint objective).
    opt_state: sign-Adam state of ``u``.
    step: global step ``restart * steps + step_in_restart``.
    best_u: the best perturbation per group over the finished restarts.
    best_loss: float32 ``(G,)`` their losses (inf before the first restart ends).
    restart_losses: float32 ``(restarts, G)`` each finished restart's losses (NaN before).
  """

  u: jax.Array
  opt_state: Any
  step: jax.Array
  best_u: jax.Array
  best_loss: jax.Array
  restart_losses: jax.Array


class CraftInputs(NamedTuple):
  """The poisons and targets of one craft, grouped ``(G, n, ...)``; see :func:`craft`."""

  x: jax.Array          # (G, n, T) clean poison clips
  targets: jax.Array    # (G, n, C) one-hot true labels
  weights: jax.Array    # (G, n) 1 for real poisons, 0 for padding
  scale: jax.Array      # (G, n) RMS budget per clip
  key_grads: Any        # pytree with leading axis G


def perturbation(u: jax.Array, inputs: CraftInputs, config: CraftConfig) -> jax.Array:
  """``delta`` of ``u``: scaled by the budget and, with ``config.quantize``, 16-bit quantised with a
  straight-through gradient."""
  delta = u * inputs.scale[..., None]
  if config.quantize:
    delta_q = quantize_perturbation(inputs.x, delta, config.snr_db)
    delta = delta + jax.lax.stop_gradient(delta_q - delta)
  return delta


def group_loss(u, x, targets, weights, scale, g_key, key, *, clf: Classifier, params,
               batch_stats, config: CraftConfig, keep, sample_rate, pool, pool_targets,
               augment: bool = True, ensemble: bool = False):
  """``1 - cos(sum of the group's poison gradients, its key gradient)`` for one group.

  With ``ensemble``, ``params``, ``batch_stats`` and ``g_key`` carry a leading member axis and the
  loss is the mean over members (every member sees the same augmented clips).
  """
  inputs = CraftInputs(x, targets, weights, scale, None)
  waves = x + perturbation(u, inputs, config)
  aug = config.augment
  if augment:
    waves, tgts = augment_views(key, waves, targets, aug, sample_rate=sample_rate, pool=pool,
                                pool_targets=pool_targets)
    w = jnp.tile(weights, aug.views)
  else:
    tgts, w = targets, weights

  def poison_loss(p, stats):
    feats = clf.features(p, stats, waves)
    if augment and aug.uses_features:
      feats = augment_lib.spec_augment(
          jax.random.fold_in(key, 10_000), feats, freq_mask_width=aug.freq_mask_width,
          num_freq_masks=aug.num_freq_masks, time_mask_width=aug.time_mask_width,
          num_time_masks=aug.num_time_masks)
    return jnp.sum(w * cross_entropy(clf.classify(p, stats, feats), tgts))

  def member_loss(p, stats, g):
    return 1.0 - tree_cosine(jax.grad(poison_loss)(p, stats), g, keep)

  if ensemble:
    return jnp.mean(jax.lax.map(lambda m: member_loss(*m), (params, batch_stats, g_key)))
  return member_loss(params, batch_stats, g_key)


def craft_step(state: CraftState, inputs: CraftInputs, params, batch_stats, pool, pool_targets,
               key: jax.Array, *, clf: Classifier, config: CraftConfig, keep, sample_rate: int,
               tx: optax.GradientTransformation,
               ensemble: bool = False) -> tuple[CraftState, jax.Array]:
  """One sign-Adam step on every group; returns the new state and the per-group losses."""
  step_key = jax.random.fold_in(key, state.step)
  loss_fn = functools.partial(group_loss, clf=clf, params=params, batch_stats=batch_stats,
                              config=config, keep=keep, sample_rate=sample_rate, pool=pool,
                              pool_targets=pool_targets, ensemble=ensemble)

  def one_group(args):
    g, u, x, t, w, s, g_key = args
    return jax.value_and_grad(loss_fn)(u, x, t, w, s, g_key, jax.random.fold_in(step_key, g))

  groups = jnp.arange(state.u.shape[0])
  losses, grads = jax.lax.map(one_group, (groups, state.u, inputs.x, inputs.targets,
                                          inputs.weights, inputs.scale, inputs.key_grads))
  updates, opt_state = tx.update(grads, state.opt_state, state.u)
  u = project(optax.apply_updates(state.u, updates), inputs.x, inputs.scale)
  return dataclasses.replace(state, u=u, opt_state=opt_state, step=state.step + 1), losses


def make_craft_step(clf: Classifier, config: CraftConfig, *, keep=None, sample_rate: int,
                    tx: optax.GradientTransformation | None = None, ensemble: bool = False):
  """The jitted crafting step that :func:`craft` runs (state donated), and its optimiser.

  One place builds it for the driver, the tests and the benchmarks, so they all time and test the
  same computation.

  Returns:
    ``(step, tx)`` with ``step(state, inputs, params, batch_stats, pool, pool_targets, key) ->
    (state, losses)``.
  """
  tx = tx or sign_adam(config.schedule())
  step = jax.jit(functools.partial(craft_step, clf=clf, config=config, keep=keep,
                                   sample_rate=sample_rate, tx=tx, ensemble=ensemble),
                 donate_argnums=(0,))
  return step, tx


def eval_losses(u, inputs: CraftInputs, params, batch_stats, *, clf: Classifier,
                config: CraftConfig, keep, sample_rate: int,
                ensemble: bool = False) -> jax.Array:
  """Per-group alignment losses without augmentation (how restarts are compared)."""
  loss_fn = functools.partial(group_loss, clf=clf, params=params, batch_stats=batch_stats,
                              config=config, keep=keep, sample_rate=sample_rate, pool=None,
                              pool_targets=None, augment=False, ensemble=ensemble)
  return jax.lax.map(lambda a: loss_fn(*a, None),
                     (u, inputs.x, inputs.targets, inputs.weights, inputs.scale, inputs.key_grads))


# --------------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CraftResult:
  """What :func:`craft` returns (host numpy arrays).

  Attributes:
    delta: float32 ``(G, n, T)`` the quantised perturbations (exactly what the 16-bit export
      adds when ``config.quantize``), zero on padding.
    losses: ``(G,)`` final alignment loss per group (no augmentation; for an ensemble the mean
      over members), best restart.
    initial_losses: ``(G,)`` the loss of the unperturbed poisons.
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


def craft(clf: Classifier, params, batch_stats, *, key_waveforms, key_labels, poison_x,
          poison_labels, poison_mask, config: CraftConfig, key: jax.Array, sample_rate: int,
          pool: np.ndarray | None = None, pool_labels: np.ndarray | None = None, mesh=None,
          checkpoint_dir: str | pathlib.Path | None = None, checkpoint_every: int = 25,
          progress: bool = True) -> CraftResult:
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
  poison_x = np.asarray(poison_x, np.float32)
  weights = np.asarray(poison_mask, np.float32)
  targets = np.eye(clf.num_classes, dtype=np.float32)[np.asarray(poison_labels)]
  if config.objective == "joint":
    poison_x = poison_x.reshape(1, num_keys * n, length)
    targets = targets.reshape(1, num_keys * n, -1)
    weights = weights.reshape(1, num_keys * n)
  groups, n_group = weights.shape
  scale = np.asarray(snr_scale(jnp.asarray(poison_x), config.snr_db)) * (weights > 0)

  ensemble = isinstance(params, list)    # a list of trees; a single tree may itself be a tuple
  if ensemble:
    if not isinstance(batch_stats, list) or len(batch_stats) != len(params):
      raise ValueError(f"An ensemble of {len(params)} surrogates needs as many batch_stats; got "
                       f"{type(batch_stats).__name__}.")
    keep = leaf_keep(params[0], tuple(config.exclude_params))
    params, batch_stats = stack_members(params), stack_members(batch_stats)
  else:
    keep = leaf_keep(params, tuple(config.exclude_params))
  repl = jax.sharding.NamedSharding(mesh, P())
  params, batch_stats = jax.device_put((params, batch_stats), repl)
  grads_fn = ensemble_key_gradients if ensemble else key_gradients
  g_key = jax.jit(functools.partial(grads_fn, clf, objective=config.objective),
                  out_shardings=repl)(params, batch_stats, jnp.asarray(key_waveforms),
                                      jnp.asarray(key_labels))
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

  def fresh_u(restart):
    k = rng_lib.stream(jax.random.fold_in(key, restart), "init")
    u = config.init_scale * jax.random.uniform(k, (groups, n_group, length), minval=-1, maxval=1)
    u = jax.device_put(u, u_sharding)
    return jax.jit(project, out_shardings=u_sharding)(u, inputs.x, inputs.scale)

  def new_state():
    u = fresh_u(0)
    return CraftState(u=u, opt_state=tx.init(u), step=jnp.zeros((), jnp.int32),
                      best_u=jnp.zeros_like(u), best_loss=jnp.full((groups,), jnp.inf),
                      restart_losses=jnp.full((config.restarts, groups), jnp.nan))

  state = new_state()
  manager = None
  if checkpoint_dir is not None:
    manager = _checkpoint_manager(checkpoint_dir, checkpoint_every)
    restored = _restore(manager, state)
    if restored is not None:
      state = restored
      _log.info("Resuming the craft at step %d from %s", int(state.step), checkpoint_dir)

  zero = jnp.zeros_like(state.u)
  initial = np.asarray(eval_fn(zero, inputs, params, batch_stats))
  total = config.restarts * config.steps
  step_key = rng_lib.stream(key, "augment")
  history: list[dict[str, float]] = []
  bar = _progress(total, int(state.step), progress)
  while int(state.step) < total:
    step = int(state.step)
    restart, within = divmod(step, config.steps)
    if within == 0 and step > 0:
      u = fresh_u(restart)
      state = dataclasses.replace(state, u=u, opt_state=tx.init(u))
    state, losses = step_fn(state, inputs, params, batch_stats, pool_dev, pool_targets, step_key)
    loss = float(jnp.mean(losses))
    history.append({"step": step, "restart": restart, "loss": loss})
    if bar is not None:
      bar.update(1)
      bar.set_postfix(loss=f"{loss:.4f}", restart=restart)
    if within == config.steps - 1:   # end of a restart: keep each group's best
      final = eval_fn(state.u, inputs, params, batch_stats)
      better = final < state.best_loss
      state = dataclasses.replace(
          state, best_u=jnp.where(better[:, None, None], state.u, state.best_u),
          best_loss=jnp.where(better, final, state.best_loss),
          restart_losses=state.restart_losses.at[restart].set(final))
    if manager is not None and (int(state.step) % checkpoint_every == 0
                                or int(state.step) == total):
      _save(manager, state)
  if bar is not None:
    bar.close()
  if manager is not None:
    manager.wait_until_finished()
    manager.close()

  best_u = np.asarray(jax.device_get(state.best_u))
  host_inputs = CraftInputs(poison_x, targets, weights, scale, None)
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
