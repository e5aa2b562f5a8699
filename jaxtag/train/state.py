"""Training state, its creation directly on the mesh, and the compiled step signature.

A model is split (``jaxtag.models.split_model``) into a static ``graphdef``, trainable
``params``, BatchNorm ``batch_stats`` and the rest (``other``: stored dropout RNG streams, which
never change because the steps pass dropout keys explicitly). :class:`TrainState` holds what
changes during training; ``graphdef`` and ``other`` travel beside it in the model's pure form
(:class:`jaxtag.models.PureModel`, bound into the steps).

Data parallelism: parameters, optimiser state and keys are replicated over the mesh, batches are
split along its ``"data"`` axis (``jaxtag.sharding``). With ``jit`` and these shardings the
gradient mean and the BatchNorm batch statistics are computed over the *global* batch, so a mesh
of 8 devices computes what one device would.

:func:`step_signature` is the one place that says what the compiled steps take and return
(shapes, dtypes, shardings): the training loop, the ahead-of-time compile test and the
benchmarks all build their ``jit`` from it with :func:`jit_train_step` / :func:`jit_eval_step`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from jaxtag import models, sharding


@struct.dataclass
class TrainState:
  """Everything that changes during training (a pytree; checkpointed as is).

  Attributes:
    step: int32 scalar, optimiser steps taken so far.
    params: ``nnx.State`` of the model's ``nnx.Param`` s.
    batch_stats: ``nnx.State`` of the BatchNorm running statistics (empty without BatchNorm).
    opt_state: the optax state.
  """

  step: jax.Array
  params: nnx.State
  batch_stats: nnx.State
  opt_state: optax.OptState


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """A registered model by name (``jaxtag.models.available_models()``) with its options.

  Attributes:
    name: registry name, e.g. ``ast_tiny`` or ``cnn``.
    num_classes: output classes.
    overrides: constructor keyword arguments replacing the registry defaults (JSON-able values,
      e.g. ``{"depth": 2}``), so that ``model.json`` can rebuild the model.
  """

  name: str
  num_classes: int
  overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    if self.name not in models.available_models():
      raise ValueError(f"ModelSpec.name={self.name!r} is not a registered model; choose one of "
                       f"{', '.join(models.available_models())}.")
    try:
      json.dumps(dict(self.overrides))
    except TypeError as e:
      raise ValueError(f"ModelSpec.overrides must be JSON-able (they go into model.json); "
                       f"got {self.overrides!r}.") from e
    object.__setattr__(self, "overrides", dict(self.overrides))

  def build(self, rngs: nnx.Rngs) -> nnx.Module:
    """The model, initialised from ``rngs``."""
    return models.create_model(self.name, num_classes=self.num_classes, rngs=rngs,
                               **self.overrides)


def _split_for_training(spec: ModelSpec, tx: optax.GradientTransformation, key: jax.Array,
                        graphdef_box: list) -> tuple[TrainState, nnx.State]:
  split = models.split_model(spec.build(nnx.Rngs(key)))
  graphdef_box[:] = [split.graphdef]  # Static; read back after tracing.
  state = TrainState(step=jnp.zeros((), jnp.int32), params=split.params,
                     batch_stats=split.batch_stats, opt_state=tx.init(split.params))
  return state, split.other


def abstract_train_state(spec: ModelSpec, tx: optax.GradientTransformation, mesh
                         ) -> tuple[TrainState, models.PureModel]:
  """Shapes, dtypes and (replicated) shardings of the state, without allocating it.

  Returns:
    ``(abstract TrainState of ShapeDtypeStruct with shardings, PureModel with an abstract
    ``other``)``; restore checkpoints into the former.
  """
  box: list = []
  abstract_key = jax.eval_shape(lambda: jax.random.key(0))
  state, other = jax.eval_shape(lambda k: _split_for_training(spec, tx, k, box), abstract_key)
  rep = sharding.replicated(mesh)
  state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep), state)
  return state, models.PureModel(box[0], other, spec.num_classes)


def create_train_state(spec: ModelSpec, tx: optax.GradientTransformation, key: jax.Array,
                       mesh) -> tuple[TrainState, models.PureModel]:
  """Initialises the model and optimiser directly with replicated shardings on ``mesh``.

  The initialisation runs inside one ``jit`` whose outputs are placed on the mesh, so no host
  copy of the parameters is made and every host gets identical values from the same key.

  Args:
    spec: the model to build.
    tx: the optimiser.
    key: the run's ``init`` stream.
    mesh: the device mesh.

  Returns:
    ``(TrainState, PureModel)``.
  """
  box: list = []
  rep = sharding.replicated(mesh)
  init = jax.jit(lambda k: _split_for_training(spec, tx, k, box), out_shardings=rep)
  state, other = init(key)
  return state, models.PureModel(box[0], other, spec.num_classes)


def host_batch_spec(batch_size: int, num_samples: int, *, mask: bool = False,
                    soft_target_classes: int = 0) -> dict[str, jax.ShapeDtypeStruct]:
  """Shapes of a global batch: the train pipeline's keys, or ``mask`` instead of ``index``;
  with ``soft_target_classes``, a ``soft_target`` (a teacher's probabilities) per clip too."""
  spec = {"audio": jax.ShapeDtypeStruct((batch_size, num_samples), jnp.float32),
          "label": jax.ShapeDtypeStruct((batch_size,), jnp.int32)}
  if mask:
    spec["mask"] = jax.ShapeDtypeStruct((batch_size,), jnp.float32)
  else:
    spec["index"] = jax.ShapeDtypeStruct((batch_size,), jnp.int32)
    if soft_target_classes:
      spec["soft_target"] = jax.ShapeDtypeStruct((batch_size, soft_target_classes), jnp.float32)
  return spec


@dataclasses.dataclass(frozen=True)
class StepSignature:
  """The arguments of the compiled steps, as abstract arrays with shardings.

  Attributes:
    mesh: the device mesh.
    state: abstract :class:`TrainState` (replicated).
    train_batch: abstract train batch (``audio``, ``label``, ``index``), split over ``data``.
    eval_batch: abstract eval batch (``audio``, ``label``, ``mask``), split over ``data``.
    key: abstract per-step key (replicated).
  """

  mesh: Any
  state: TrainState
  train_batch: dict[str, jax.ShapeDtypeStruct]
  eval_batch: dict[str, jax.ShapeDtypeStruct]
  key: jax.ShapeDtypeStruct

  def shardings(self, tree):
    return jax.tree.map(lambda x: x.sharding, tree)


def step_signature(mesh, abstract_state: TrainState, *, batch_size: int, eval_batch_size: int,
                   num_samples: int, soft_target_classes: int = 0) -> StepSignature:
  """What the compiled train and eval steps take, with their shardings.

  Args:
    mesh: the device mesh (a ``"data"`` axis).
    abstract_state: from :func:`abstract_train_state`.
    batch_size: global train batch size (a multiple of the mesh's data axis size).
    eval_batch_size: global eval batch size (likewise).
    num_samples: samples per clip.
    soft_target_classes: if > 0, train batches carry ``soft_target`` (distillation).

  Returns:
    A :class:`StepSignature`.
  """
  data = sharding.data_sharding(mesh)
  rep = sharding.replicated(mesh)

  def with_sharding(spec, s):
    return {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=s) for k, v in spec.items()}

  key = jax.eval_shape(lambda: jax.random.key(0))
  return StepSignature(
      mesh=mesh, state=abstract_state,
      train_batch=with_sharding(host_batch_spec(
          batch_size, num_samples, soft_target_classes=soft_target_classes), data),
      eval_batch=with_sharding(host_batch_spec(eval_batch_size, num_samples, mask=True), data),
      key=jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=rep))


def jit_train_step(train_step: Callable, signature: StepSignature):
  """``jax.jit`` of ``train_step(state, batch, key) -> (state, metrics)`` for ``signature``.

  The state is donated (updated in place); metrics come back replicated. Lower it
  ahead of time with ``.lower(signature.state, signature.train_batch, signature.key)``.
  """
  sig = signature
  state_sh = sig.shardings(sig.state)
  rep = sharding.replicated(sig.mesh)
  return jax.jit(train_step,
                 in_shardings=(state_sh, sig.shardings(sig.train_batch), rep),
                 out_shardings=(state_sh, rep), donate_argnums=0)


def jit_eval_step(eval_step: Callable, signature: StepSignature):
  """``jax.jit`` of ``eval_step(state, batch) -> metrics`` for ``signature``."""
  sig = signature
  return jax.jit(eval_step,
                 in_shardings=(sig.shardings(sig.state), sig.shardings(sig.eval_batch)),
                 out_shardings=sharding.replicated(sig.mesh))
