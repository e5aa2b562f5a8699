"""The crafting step: its settings, its differentiable augmentation and the pure, jitted step.

One sign-Adam step on the perturbations of every group (key) of poisons, against one surrogate or
a stacked ensemble; what ``jaxtag.taggants.craft.craft_run`` drives (with shardings, restarts
and checkpoints) and what the benchmarks time. Every public name here is re-exported by
:mod:`jaxtag.taggants.craft`, whose docstring describes the method.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import os
import warnings
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxtag import errors
from jaxtag.models import PureModel
from jaxtag.taggants.alignment import (Objective, cross_entropy, members_of, tree_cosine,
                                      tree_projection)
from jaxtag.taggants.constraint import (StftMask, check_mask_settings, project,
                                        quantize_perturbation, round_to_grid)
from jaxtag.train import augment as augment_lib

REFERENCE_STEPS = 250     # the schedule's milestones are given for a 250-step craft.


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CraftAugment(augment_lib.AugmentConfig):
  """Differentiable augmentation applied to the poisons while crafting: the training
  augmentation (:class:`jaxtag.train.AugmentConfig`: time shift and its mode, gain, noise and its
  probability, mixup, SpecAugment masks, with the same meaning and checks) plus what crafting
  adds. Crafting's defaults shift by up to 0.1 s and scale by up to 6 dB (the reference's).

  Attributes:
    views: how many independent augmentation draws of each poison per step (the reference: 2).
    mixup_prob: probability that a view is mixed (with a clean clip of the pool; the poison
      keeps the larger weight of ``Beta(mixup_alpha, mixup_alpha)``).
    dropout: the poison gradients are taken with the surrogate's dropout on (fresh masks every
      step and view; BatchNorm stays in eval mode), as the suspect trains with it. The key
      gradients stay deterministic, as in the reference.
  """

  max_shift_seconds: float = 0.1
  max_gain_db: float = 6.0
  views: int = 2
  mixup_prob: float = 0.5
  dropout: bool = False

  def __post_init__(self):
    super().__post_init__()

    def name(field: str) -> str:
      return errors.option(field, owner="CraftAugment")

    if self.views < 1:
      raise ValueError(f"{name('views')} must be >= 1; got {self.views}.")
    if not 0.0 <= self.mixup_prob <= 1.0:
      raise ValueError(f"{name('mixup_prob')} must be in [0, 1]; got {self.mixup_prob}.")


@dataclasses.dataclass(frozen=True)
class CraftConfig:
  """How to craft.

  Attributes:
    steps: optimisation steps per restart (the reference: 250). 0 (with ``init="key"``,
      ``init_scale=0`` and one restart): no alignment at all, each poison is its clip plus its
      key's waveform at the budget: key insertion, the control that tells what the alignment adds.
    learning_rate: sign-Adam step size, in units of each clip's SNR budget (``u`` above).
    milestones: steps (for a 250-step craft; scaled to ``steps``) where the rate is multiplied by
      ``decay``; the taggants schedule is x0.3 at 40, 93, 156 and 218.
    decay: the factor at each milestone.
    restarts: independent runs from fresh random starts; each key keeps its best.
    snr_db: per-clip SNR floor of the perturbation, ``10 log10(|x|^2 / |delta|^2)`` (with
      ``constraint="snr"``; under ``stft_mask`` the SNR is only reported).
    constraint: what bounds the perturbation (:mod:`jaxtag.taggants.constraint`). ``snr``: the
      per-clip SNR floor ``snr_db`` (an L2 ball). ``stft_mask``: a perceptual bound in every
      time-frequency bin, ``|STFT(delta)| <= max(|STFT(x)| * 10^(-mask_db/20), floor)``:
      enforced approximately while crafting (``mask_iterations`` rounds of alternating
      projections after every step) and exactly by the 16-bit export
      (:func:`jaxtag.taggants.constraint.quantize_under_mask`, applied by
      :func:`jaxtag.taggants.protect.protect_dataset`). Under ``stft_mask`` the unit of ``u`` (and
      of ``learning_rate`` and ``init_scale``) is ``rms(x) * 10^(-mask_db/20)``: ``rms(u) = 1``
      is a perturbation as loud overall as the mask lets it be.
    mask_db: ``stft_mask``: the perturbation stays this many dB under the clean clip's own STFT
      magnitude in every bin.
    mask_floor_db: ``stft_mask``: the per-bin floor of the bound in dBFS (0 dBFS: a full-scale
      sine's peak bin), so that silent bins may carry a tiny perturbation. The default, -100, is
      20 dB above the 16-bit rounding noise per bin (:attr:`StftMask.floor_db` explains it).
    mask_n_fft, mask_hop_length, mask_window: ``stft_mask``: the STFT geometry of the bound
      (centred frames, zero padding). The defaults (512 / 128 / ``hann``: 32 ms frames, 8 ms hop
      at 16 kHz) resolve speech harmonics and syllables; hop at most ``n_fft / 2``.
    mask_iterations: ``stft_mask``: rounds of alternating projections per step (more: closer to
      the bound while crafting, so less shrinking at export; each costs one STFT and ISTFT).
    objective: ``per_key`` (each key its own poisons and cosine) or ``joint``.
    alignment: what the loss rewards. ``cosine`` (the reference): ``1 - cos(G, g)`` between the
      summed poison gradient ``G`` and the key gradient ``g``, blind to ``G``'s size. ``inner``:
      ``1 - <G, g> / |g|^2``, one minus the poisons' first-order step along the key gradient in
      units of that gradient, so it also rewards poisons whose gradient is large (hard to fit)
      as long as it points the key's way: a poison the model already fits carries no gradient,
      however well aligned its direction is.
    key_contrast: ``lam`` of the contrastive key target (``jaxtag.taggants.alignment.key_gradients``):
      key ``k``'s target gradient becomes ``g(key_k, y_k) - lam * mean_{j != k} g(key_j, y_k)``,
      so that its poisons move key ``k`` and not the others (0: the reference's target).
    exclude_params: parameters left out of the cosine: a leaf is left out when any of these
      strings occurs in its path (``"/"``-joined, e.g. ``"head"`` or ``"bias"``).
    quantize: make the loss see the 16-bit-quantised clip (straight-through gradient).
    init: where each restart starts. ``random``: ``u`` uniform in ``+-init_scale``. ``key``: the
      poison's own key waveform at the full budget (``rms(u) = 1``) plus that uniform noise, then
      projected: a first-order guess of the alignment's optimum (a poison whose features resemble
      its key's pushes the key towards the poison's label), which the optimiser then refines.
    init_scale: the uniform part of the start (then projected).
    augment: the differentiable augmentation.
    unroll: how the step's loops over groups (keys) and ensemble members are unrolled
      (``lax.scan``'s ``unroll``): ``True`` fully, an int that many iterations per loop trip, or
      ``None`` (default): :func:`default_unroll` for the default backend (fully on CPU with
      jaxlib < 0.11, rolled (1) otherwise). Numerics do not depend on it.
  """

  steps: int = 250
  learning_rate: float = 0.1
  milestones: tuple[int, ...] = (40, 93, 156, 218)
  decay: float = 0.3
  restarts: int = 1
  snr_db: float = 55.0
  constraint: Literal["snr", "stft_mask"] = "snr"
  mask_db: float = 20.0
  mask_floor_db: float = -100.0
  mask_n_fft: int = 512
  mask_hop_length: int = 128
  mask_window: str = "hann"
  mask_iterations: int = 4
  objective: Objective = "per_key"
  alignment: Literal["cosine", "inner"] = "cosine"
  key_contrast: float = 0.0
  exclude_params: tuple[str, ...] = ()
  quantize: bool = True
  init: Literal["random", "key"] = "random"
  init_scale: float = 0.5
  augment: CraftAugment = CraftAugment()
  unroll: bool | int | None = None

  def __post_init__(self):
    def name(field: str) -> str:
      return errors.option(field, owner="CraftConfig")

    if self.restarts < 1:
      raise ValueError(f"{name('restarts')} must be >= 1; got {self.restarts}.")
    if self.steps < 0:
      raise ValueError(f"{name('steps')} must be >= 0; got {self.steps}.")
    if self.steps == 0 and (self.init != "key" or self.init_scale != 0 or self.restarts != 1):
      raise ValueError(
          f"{name('steps')}=0 (key insertion: no alignment) needs {name('init')}='key', "
          f"{name('init_scale')}=0 and {name('restarts')}=1; got {self.init!r}, "
          f"{self.init_scale} and {self.restarts}.")
    if self.learning_rate <= 0:
      raise ValueError(f"{name('learning_rate')} must be > 0; got {self.learning_rate}.")
    if not 0 < self.decay <= 1:
      raise ValueError(f"{name('decay')} must lie in (0, 1]; got {self.decay}.")
    if self.objective not in ("per_key", "joint"):
      raise ValueError(f"{name('objective')} must be 'per_key' or 'joint'; got "
                       f"{self.objective!r}.")
    if self.init not in ("random", "key"):
      raise ValueError(f"{name('init')} must be 'random' or 'key'; got {self.init!r}.")
    if self.init_scale < 0:
      raise ValueError(f"{name('init_scale')} must be >= 0; got {self.init_scale}.")
    if self.alignment not in ("cosine", "inner"):
      raise ValueError(f"{name('alignment')} must be 'cosine' or 'inner'; got "
                       f"{self.alignment!r}.")
    if self.key_contrast < 0:
      raise ValueError(f"{name('key_contrast')} must be >= 0; got {self.key_contrast}.")
    check_mask_settings(self, name)
    if isinstance(self.augment, dict):
      object.__setattr__(self, "augment", CraftAugment(**self.augment))
    if self.unroll is not None and not isinstance(self.unroll, bool) and (
        not isinstance(self.unroll, int) or self.unroll < 1):
      raise ValueError(f"{name('unroll')} must be None, a bool or an int >= 1; got "
                       f"{self.unroll!r}.")

  @property
  def unit_db(self) -> float:
    """The dB of ``u``'s unit ``rms(x) * 10^(-unit_db/20)``: ``snr_db``, or ``mask_db`` under
    ``stft_mask``."""
    return self.snr_db if self.constraint == "snr" else self.mask_db

  def stft_mask(self) -> StftMask | None:
    """The bound of ``constraint="stft_mask"`` (None under ``snr``)."""
    if self.constraint != "stft_mask":
      return None
    return StftMask(mask_db=self.mask_db, floor_db=self.mask_floor_db, n_fft=self.mask_n_fft,
                    hop_length=self.mask_hop_length, window=self.mask_window,
                    iterations=self.mask_iterations)

  def loop_unroll(self) -> bool | int:
    """``unroll`` resolved for the default backend and jaxlib (``None``: :func:`default_unroll`).

    An unrolled loop on a CPU backend that can deadlock (:func:`cpu_fft_can_deadlock`) warns.
    """
    backend = jax.default_backend()
    if self.unroll is None:
      return default_unroll(backend)
    if (self.unroll is True or self.unroll > 1) and backend == "cpu" and cpu_fft_can_deadlock():
      warnings.warn(
          f"{errors.option('unroll', owner='CraftConfig')}={self.unroll!r} on XLA:CPU with jaxlib "
          f"{jax.__version__}: "
          "concurrent FFTs of the unrolled iterations can deadlock XLA's thread pool (BUILD.md, "
          "'XLA:CPU FFT deadlock'); use unroll=None or 1, or set "
          "XLA_FLAGS=--xla_cpu_multi_thread_eigen=false before JAX starts.", stacklevel=2)
    return self.unroll

  def schedule(self) -> optax.Schedule:
    """The step-size schedule: ``learning_rate`` times ``decay`` per milestone passed."""
    boundaries: dict[int, float] = {}
    for m in self.milestones:
      step = max(1, int(round(m * self.steps / REFERENCE_STEPS)))
      boundaries[step] = boundaries.get(step, 1.0) * self.decay
    return optax.piecewise_constant_schedule(self.learning_rate, boundaries)


# XLA:CPU FFT deadlock. From jaxlib 0.11 (apparently openxla/xla#46347, the fix of openxla/xla#46345 /
# jax-ml/jax#39081) an FFT thunk running on a worker of XLA:CPU's intra-op thread pool hands its
# transform to ducc0 with that same pool and waits on a latch for the pieces. When independent FFTs
# run at once on every worker (an unrolled loop over keys and ensemble members gives each iteration
# its own log-mel FFT and the FFT of its gradient), every worker waits for a free worker and none
# is left: the step never finishes and every thread sits idle. jaxlib 0.11.1 and 0.11.2 hang; a
# few runs of 0.11.0 and 0.12.0.1 did not, which proves nothing, so every jaxlib >= 0.11 counts as
# affected (BUILD.md). A rolled loop runs one iteration's FFTs one after another; single-threaded
# Eigen (``--xla_cpu_multi_thread_eigen=false``) leaves ducc0 no pool to fan out into; jaxlib 0.10
# ran an FFT on a pool worker single-threaded.
_FFT_DEADLOCK_JAXLIB = (0, 11)


def _version_tuple(text: str) -> tuple[int, ...]:
  parts = []
  for piece in text.split(".")[:3]:
    digits = "".join(itertools.takewhile(str.isdigit, piece))
    if not digits:
      break
    parts.append(int(digits))
  return tuple(parts)


def cpu_fft_can_deadlock(jaxlib_version: str | None = None, xla_flags: str | None = None) -> bool:
  """Whether concurrent FFTs can deadlock XLA:CPU here (see the note above).

  Args:
    jaxlib_version: default: the installed jaxlib's.
    xla_flags: default: ``$XLA_FLAGS`` (read when the CPU backend starts, so it must be set before).

  Returns:
    True with jaxlib >= 0.11 unless ``--xla_cpu_multi_thread_eigen=false`` is among the flags.
  """
  if jaxlib_version is None:
    import jaxlib
    jaxlib_version = jaxlib.__version__
  if xla_flags is None:
    xla_flags = os.environ.get("XLA_FLAGS", "")
  flags = dict(f.lstrip("-").partition("=")[::2] for f in xla_flags.split())
  if flags.get("xla_cpu_multi_thread_eigen", "").lower() in ("false", "0"):
    return False
  return _version_tuple(jaxlib_version) >= _FFT_DEADLOCK_JAXLIB


def default_unroll(backend: str, *, jaxlib_version: str | None = None,
                   xla_flags: str | None = None) -> bool | int:
  """``CraftConfig.unroll=None`` resolved: how the crafting loops unroll on ``backend``.

  Fully on CPU (XLA:CPU ran the rolled loop's convolutions 3.4x slower, benchmarks/RESULTS.md)
  unless concurrent FFTs can deadlock there (:func:`cpu_fft_can_deadlock`: jaxlib >= 0.11 without
  ``--xla_cpu_multi_thread_eigen=false``; with that flag the unrolled step ran 3x faster than the
  rolled one on jaxlib 0.11.2); rolled (1) on accelerators, where unrolling would multiply compile
  time and live memory by the loop length.
  """
  if backend != "cpu":
    return 1
  return 1 if cpu_fft_can_deadlock(jaxlib_version, xla_flags) else True


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
      w = augment_lib.time_shift(k_shift, w, max_shift=max_shift, mode=aug.shift_mode)
    if aug.max_gain_db > 0:
      w = augment_lib.random_gain(k_gain, w, max_db=aug.max_gain_db)
    if aug.noise_snr_db is not None:
      w = augment_lib.add_noise(k_noise, w, snr_db=tuple(aug.noise_snr_db), prob=aug.noise_prob)
    if aug.mixup_alpha > 0 and pool is not None:
      w, t = _mix_with_clean(k_mix, w, t, pool, pool_targets, alpha=aug.mixup_alpha,
                             prob=aug.mixup_prob)
    outs.append(w)
    tgts.append(t)
  return jnp.concatenate(outs), jnp.concatenate(tgts)


# --------------------------------------------------------------------------------------------
# The crafting step
# --------------------------------------------------------------------------------------------


def sequential_map(fn, xs, *, unroll: bool | int = 1):
  """``lax.map(fn, xs)`` (one slice of ``xs``' leading axis after another) with ``lax.scan``'s
  ``unroll``. Unrolled, XLA:CPU runs each iteration's convolutions at full speed; rolled, the
  loop's compile time and live memory stay those of one iteration."""
  if unroll is False:
    unroll = 1
  return jax.lax.scan(lambda carry, x: (carry, fn(x)), None, xs, unroll=unroll)[1]


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
  straight-through gradient (under ``stft_mask``: rounded to the grid, which the export then
  shrinks where a bin would cross the bound)."""
  delta = u * inputs.scale[..., None]
  if config.quantize:
    if config.constraint == "snr":
      delta_q = quantize_perturbation(inputs.x, delta, config.snr_db)
    else:
      delta_q = round_to_grid(delta)
    delta = delta + jax.lax.stop_gradient(delta_q - delta)
  return delta


def group_loss(u, x, targets, weights, scale, g_key, key, *, clf: PureModel, params,
               batch_stats, config: CraftConfig, keep, sample_rate, pool, pool_targets,
               augment: bool = True, ensemble: bool = False):
  """``1 - cos(sum of the group's poison gradients, its key gradient)`` for one group (or, with
  ``config.alignment == "inner"``, ``1 - <sum, key gradient> / |key gradient|^2``).

  With ``ensemble``, ``params``, ``batch_stats`` and ``g_key`` carry a leading member axis and the
  loss is the mean over members (every member sees the same augmented clips); an ensemble of one
  member gives exactly that member's loss (no loop, no mean).
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
    dropout_key = jax.random.fold_in(key, 20_000) if augment and aug.dropout else None
    return jnp.sum(w * cross_entropy(clf.classify(p, stats, feats, dropout_key=dropout_key)[0], tgts))

  def member_loss(p, stats, g):
    grads = jax.grad(poison_loss)(p, stats)
    if config.alignment == "inner":
      return 1.0 - tree_projection(grads, g, keep)
    return 1.0 - tree_cosine(grads, g, keep)

  if ensemble and members_of(params) == 1:   # one member: exactly that surrogate's loss
    return member_loss(*jax.tree.map(lambda a: a[0], (params, batch_stats, g_key)))
  if ensemble:
    return jnp.mean(sequential_map(lambda m: member_loss(*m), (params, batch_stats, g_key),
                                   unroll=config.loop_unroll()))
  return member_loss(params, batch_stats, g_key)


def craft_step(state: CraftState, inputs: CraftInputs, params, batch_stats, pool, pool_targets,
               key: jax.Array, *, clf: PureModel, config: CraftConfig, keep, sample_rate: int,
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
  losses, grads = sequential_map(one_group, (groups, state.u, inputs.x, inputs.targets,
                                             inputs.weights, inputs.scale, inputs.key_grads),
                                 unroll=config.loop_unroll())
  updates, opt_state = tx.update(grads, state.opt_state, state.u)
  u = project(optax.apply_updates(state.u, updates), inputs.x, inputs.scale,
              mask=config.stft_mask())
  return dataclasses.replace(state, u=u, opt_state=opt_state, step=state.step + 1), losses


def make_craft_step(clf: PureModel, config: CraftConfig, *, keep=None, sample_rate: int,
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


def eval_losses(u, inputs: CraftInputs, params, batch_stats, *, clf: PureModel,
                config: CraftConfig, keep, sample_rate: int,
                ensemble: bool = False) -> jax.Array:
  """Per-group alignment losses without augmentation (how restarts are compared)."""
  loss_fn = functools.partial(group_loss, clf=clf, params=params, batch_stats=batch_stats,
                              config=config, keep=keep, sample_rate=sample_rate, pool=None,
                              pool_targets=None, augment=False, ensemble=ensemble)
  return sequential_map(lambda a: loss_fn(*a, None),
                        (u, inputs.x, inputs.targets, inputs.weights, inputs.scale,
                         inputs.key_grads), unroll=config.loop_unroll())
