"""Pure train and eval steps for classifiers on waveforms.

``train_step(state, batch, key) -> (state, metrics)`` (``key`` is the train stream; the step
folds in ``state.step``) and ``eval_step(state, batch) -> metrics``;
their static dependencies (the model's graph, the optimiser, the augmentation config) are bound
with ``functools.partial`` as keyword-only arguments, e.g.::

    step = functools.partial(train_step, parts=parts, tx=tx, schedule=schedule,
                             augment=AugmentConfig(...), sample_rate=16000)

The forward pass is ``model.features`` -> SpecAugment (train only) -> ``model.classify``, with
waveform augmentation and mixup before it (see :mod:`jaxtag.train.augment`). Metrics are a flat
dict of scalars with ``/`` namespaces. Eval metrics are *sums* (with a 0/1 ``mask`` for padded
rows), so that adding them over batches gives exact split totals.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxtag.train import augment as augment_lib
from jaxtag.models import PureModel
from jaxtag.train.state import TrainState


def cross_entropy(logits: jax.Array, targets: jax.Array, *,
                  label_smoothing: float = 0.0) -> jax.Array:
  """Per-example cross-entropy against soft targets (e.g. one-hot, or mixed by mixup).

  Args:
    logits: ``(batch, num_classes)``.
    targets: ``(batch, num_classes)`` probabilities.
    label_smoothing: ``eps``: targets become ``(1 - eps) targets + eps / num_classes``.

  Returns:
    ``(batch,)`` losses.
  """
  num_classes = logits.shape[-1]
  if label_smoothing:
    targets = (1.0 - label_smoothing) * targets + label_smoothing / num_classes
  return -jnp.sum(targets * jax.nn.log_softmax(logits.astype(jnp.float32)), axis=-1)


def _global_norm(tree) -> jax.Array:
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


def forward(parts: PureModel, params: nnx.State, batch_stats: nnx.State, waveforms: jax.Array,
            *, train: bool, key: jax.Array | None = None,
            augment: augment_lib.AugmentConfig | None = None):
  """Logits of ``waveforms``: features, optional SpecAugment (train only), classify.

  Args:
    parts: the model's static parts.
    params: model parameters.
    batch_stats: BatchNorm statistics.
    waveforms: ``(batch, num_samples)``.
    train: training mode (batch statistics, dropout, SpecAugment).
    key: masks and dropout key (train mode only).
    augment: the feature-domain augmentation to apply in train mode.

  Returns:
    ``(logits (batch, num_classes) float32, new batch_stats)``.

  Raises:
    ValueError: ``train=True`` without a key.
  """
  if train and key is None:
    raise ValueError("forward(train=True) needs a key for SpecAugment masks and dropout.")
  features = parts.features(params, batch_stats, waveforms)
  if not train:
    return parts.classify(params, batch_stats, features)
  k_mask, k_dropout = jax.random.split(key)
  if augment is not None:
    features = augment_lib.augment_features(k_mask, features, augment)
  return parts.classify(params, batch_stats, features, train=True, dropout_key=k_dropout)


def train_step(state: TrainState, batch: dict[str, jax.Array], key: jax.Array, *,
               parts: PureModel, tx: optax.GradientTransformation, schedule: optax.Schedule,
               augment: augment_lib.AugmentConfig, sample_rate: int,
               label_smoothing: float = 0.0, distill_weight: float = 0.0
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimiser step on a (global) batch.

  Args:
    state: the current state.
    batch: ``{"audio": (B, T) float32, "label": (B,) int32, ...}``, optionally
      ``"soft_target": (B, C)``, a teacher's probabilities for each clip (distillation).
    key: the train stream; this step's key is ``fold_in(key, state.step)`` (the same as
      ``jaxtag.rng.step_key``), so a resumed run draws the same augmentation and dropout.
    parts: the model's static parts.
    tx: the optimiser.
    schedule: its learning-rate schedule (for the ``train/lr`` metric).
    augment: waveform and feature augmentation.
    sample_rate: sample rate of ``batch["audio"]``.
    label_smoothing: label smoothing of the cross-entropy.
    distill_weight: ``w``; with a ``soft_target`` in the batch the targets are
      ``(1 - w) one_hot(label) + w soft_target`` (before mixup, which then mixes them).

  Returns:
    ``(new state, {"train/loss", "train/accuracy", "train/lr", "train/grad_norm"})``; accuracy
    is against the un-mixed labels.
  """
  k_wave, k_model = jax.random.split(jax.random.fold_in(key, state.step))
  labels = batch["label"]
  targets = jax.nn.one_hot(labels, parts.num_classes, dtype=jnp.float32)
  if "soft_target" in batch:
    targets = (1.0 - distill_weight) * targets + distill_weight * batch["soft_target"]
  waveforms, targets = augment_lib.augment_waveforms(
      k_wave, batch["audio"], targets, augment, sample_rate=sample_rate)

  def loss_fn(params, batch_stats):
    logits, new_stats = forward(parts, params, batch_stats, waveforms, train=True,
                                key=k_model, augment=augment)
    loss = jnp.mean(cross_entropy(logits, targets, label_smoothing=label_smoothing))
    return loss, (logits, new_stats)

  (loss, (logits, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params, state.batch_stats)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {
      "train/loss": loss,
      "train/accuracy": jnp.mean(jnp.argmax(logits, -1) == labels),
      "train/lr": jnp.asarray(schedule(state.step), jnp.float32),
      "train/grad_norm": _global_norm(grads),
  }
  new_state = state.replace(step=state.step + 1, params=params, batch_stats=new_stats,
                            opt_state=opt_state)
  return new_state, metrics


def eval_step(state: TrainState, batch: dict[str, jax.Array], *, parts: PureModel,
              prefix: str = "eval") -> dict[str, jax.Array]:
  """Sums of loss and correct predictions over a batch's real (``mask == 1``) rows.

  Args:
    state: the state to evaluate (running BatchNorm statistics, no dropout, no augmentation).
    batch: ``{"audio": (B, T), "label": (B,), "mask": (B,) float32}``.
    parts: the model's static parts.
    prefix: metrics namespace.

  Returns:
    ``{f"{prefix}/loss_sum", f"{prefix}/correct", f"{prefix}/count"}``; divide by ``count``
    after summing over batches.
  """
  logits, _ = forward(parts, state.params, state.batch_stats, batch["audio"], train=False)
  labels = batch["label"]
  mask = batch["mask"]
  targets = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
  return {
      f"{prefix}/loss_sum": jnp.sum(mask * cross_entropy(logits, targets)),
      f"{prefix}/correct": jnp.sum(mask * (jnp.argmax(logits, -1) == labels)),
      f"{prefix}/count": jnp.sum(mask),
  }
