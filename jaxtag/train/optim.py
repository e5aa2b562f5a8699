"""Optimisers for training: AdamW or LAMB, linear warm-up then cosine decay, optional clipping.

Weight decay applies to matrices, kernels and embeddings only (``ndim > 1``): decaying biases and
LayerNorm/BatchNorm scales only fights the normalisation layers (the usual ViT/DeiT practice).
"""

from __future__ import annotations

import dataclasses

import jax
import optax

from jaxtag import errors


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  """Optimiser and learning-rate schedule.

  Attributes:
    name: ``adamw`` or ``lamb``.
    learning_rate: peak learning rate (reached at the end of the warm-up).
    weight_decay: decoupled weight decay on ``ndim > 1`` parameters.
    warmup_steps: linear warm-up from 0; if negative, ``-warmup_steps`` is read as a fraction
      of the total steps in percent (e.g. -10 = 10 %); 0 disables warm-up.
    end_lr_fraction: the cosine ends at ``learning_rate * end_lr_fraction``.
    grad_clip_norm: clip the global gradient norm to this value; None or 0 disables clipping.
    b1: first-moment decay.
    b2: second-moment decay.
    eps: denominator epsilon.
  """

  name: str = "adamw"
  learning_rate: float = 1e-3
  weight_decay: float = 0.05
  warmup_steps: int = -10
  end_lr_fraction: float = 0.01
  grad_clip_norm: float | None = 1.0
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8

  def __post_init__(self):
    def name(field: str) -> str:
      return errors.option(field, owner="OptimConfig")

    if self.name not in ("adamw", "lamb"):
      raise ValueError(f"{name('name')} must be 'adamw' or 'lamb'; got {self.name!r}.")
    if self.learning_rate <= 0:
      raise ValueError(f"{name('learning_rate')} must be positive; got {self.learning_rate}.")
    if self.weight_decay < 0:
      raise ValueError(f"{name('weight_decay')} must be >= 0; got {self.weight_decay}.")
    if not 0.0 <= self.end_lr_fraction <= 1.0:
      raise ValueError(f"{name('end_lr_fraction')} must lie in [0, 1]; got "
                       f"{self.end_lr_fraction}.")

  def num_warmup_steps(self, total_steps: int) -> int:
    """Warm-up length in steps for a run of ``total_steps``."""
    if self.warmup_steps >= 0:
      return min(int(self.warmup_steps), max(total_steps - 1, 0))
    return int(round(total_steps * (-self.warmup_steps) / 100.0))


def make_schedule(config: OptimConfig, total_steps: int) -> optax.Schedule:
  """Linear warm-up from 0 to the peak, then cosine decay to ``end_lr_fraction`` of it.

  Args:
    config: the optimiser config.
    total_steps: steps of the whole run (the cosine ends there).

  Returns:
    ``step -> learning rate``.

  Raises:
    ValueError: ``total_steps`` is not positive.
  """
  if total_steps <= 0:
    raise ValueError(f"make_schedule: total_steps must be positive; got {total_steps}.")
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=config.learning_rate,
      warmup_steps=config.num_warmup_steps(total_steps),
      decay_steps=max(total_steps, config.num_warmup_steps(total_steps) + 1),
      end_value=config.learning_rate * config.end_lr_fraction)


def decay_mask(params):
  """True for the parameters that get weight decay (matrices and kernels, ``ndim > 1``)."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(config: OptimConfig, total_steps: int
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optimiser of ``config`` and its schedule (log the schedule as ``train/lr``).

  Args:
    config: the optimiser config.
    total_steps: steps of the whole run.

  Returns:
    ``(optax transformation, schedule)``.
  """
  schedule = make_schedule(config, total_steps)
  kwargs = dict(learning_rate=schedule, b1=config.b1, b2=config.b2, eps=config.eps,
                weight_decay=config.weight_decay, mask=decay_mask)
  tx = optax.adamw(**kwargs) if config.name == "adamw" else optax.lamb(**kwargs)
  if config.grad_clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), tx)
  return tx, schedule
