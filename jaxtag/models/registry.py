"""Models by name, and the one pure form that algorithms consume (:class:`PureModel`).

Functional interface (what `train`, `taggants` and `poscuda` use)::

    model = create_model("m5", num_classes=35, rngs=nnx.Rngs(0))
    graphdef, params, batch_stats, other = split_model(model)
    pure = PureModel(graphdef, other, num_classes=35)
    logits, intermediates, new_batch_stats = pure.apply(
        params, batch_stats, waveform, train=True, key=key)
    feats = pure.features(params, batch_stats, waveform)       # the fixed front end
    logits, new_batch_stats = pure.classify(params, batch_stats, feats, train=False)

* ``params``: every ``nnx.Param`` (what optimisers and gradients see).
* ``batch_stats``: every ``nnx.BatchStat`` (BatchNorm running mean/var); an
  empty ``nnx.State`` for models without BatchNorm. In eval mode
  (``train=False``) the running statistics are used and returned unchanged;
  in train mode batch statistics normalise and the updated running averages
  come back as ``new_batch_stats``.
* ``other``: the remaining state (stored dropout RNG streams); it is closed
  over and never changes, because ``apply`` draws dropout masks from its
  explicit ``key`` only. ``train=True`` on a model with active dropout
  requires a key; eval mode is deterministic and ignores it.

All three states are pytrees of arrays, so ``PureModel``'s methods compose with
``jax.jit``, ``jax.vmap`` and ``jax.grad`` with respect to ``params`` and to
``waveform`` (including second-order derivatives).
"""

import inspect
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtag.models.ast import AST, AST_SIZES
from jaxtag.models.cnn import LogMelCNN
from jaxtag.models.lstm import MFCCLSTM
from jaxtag.models.m5 import M5
from jaxtag.models.transformer import FrameTransformer

# name -> (class, default keyword arguments).
_REGISTRY = {
    "ast_tiny": (AST, AST_SIZES["tiny"]),
    "ast_small": (AST, AST_SIZES["small"]),
    "ast_base": (AST, AST_SIZES["base"]),
    "m5": (M5, {}),
    "cnn": (LogMelCNN, {}),
    "lstm": (MFCCLSTM, {}),
    "transformer": (FrameTransformer, {}),
}



def available_models() -> tuple[str, ...]:
  """Names accepted by `create_model`, sorted."""
  return tuple(sorted(_REGISTRY))


def _accepted_kwargs(cls) -> list[str]:
  params = inspect.signature(cls.__init__).parameters
  return sorted(name for name, p in params.items()
                if p.kind == p.KEYWORD_ONLY and name != "rngs")


def create_model(name: str, *, num_classes: int, rngs: nnx.Rngs,
                 **overrides: Any) -> nnx.Module:
  """Builds the model called ``name``.

  Args:
    name: one of `available_models()`.
    num_classes: output classes.
    rngs: initialisation (and stored dropout) randomness.
    **overrides: constructor keyword arguments replacing the defaults (e.g.
      ``depth=2`` for a fast AST, ``dtype=jnp.bfloat16``).

  Returns:
    The model (an ``nnx.Module`` with ``features``, ``classify`` and
    ``__call__(waveform, *, train=False, rngs=None) -> (logits,
    intermediates)``).

  Raises:
    ValueError: for an unknown name, an unknown override or a bad
      ``num_classes``.
  """
  if name not in _REGISTRY:
    raise ValueError(f"Unknown model {name!r}; available models: "
                     f"{', '.join(available_models())}.")
  if not isinstance(num_classes, int) or num_classes < 1:
    raise ValueError(
        f"num_classes must be a positive int, got {num_classes!r}.")
  cls, defaults = _REGISTRY[name]
  accepted = _accepted_kwargs(cls)
  unknown = sorted(set(overrides) - set(accepted))
  if unknown:
    raise ValueError(f"Model {name!r} ({cls.__name__}) has no option(s) "
                     f"{unknown}; accepted: {accepted}.")
  return cls(num_classes, **{**defaults, **overrides}, rngs=rngs)


class SplitModel(NamedTuple):
  """A model as ``(graphdef, params, batch_stats, other)``; see module doc."""
  graphdef: Any
  params: nnx.State
  batch_stats: nnx.State
  other: nnx.State


def split_model(model: nnx.Module) -> SplitModel:
  """Splits a model into its graph and its three states (see module doc)."""
  graphdef, params, batch_stats, other = nnx.split(
      model, nnx.Param, nnx.BatchStat, ...)
  return SplitModel(graphdef, params, batch_stats, other)


def merge_model(graphdef, params: nnx.State, batch_stats: nnx.State,
                other: nnx.State) -> nnx.Module:
  """Inverse of `split_model`: a module holding the given states."""
  return nnx.merge(graphdef, params, batch_stats, other, copy=True)


def has_active_dropout(model: nnx.Module) -> bool:
  """Whether any ``nnx.Dropout`` in ``model`` has a positive rate."""
  return any(isinstance(node, nnx.Dropout) and node.rate > 0
             for _, node in nnx.iter_graph(model))


class PureModel(NamedTuple):
  """A model as pure functions of its weights: the one functional form that training, crafting,
  verification and PosCUDA use.

  ``params`` and ``batch_stats`` are arguments of every method (so ``jax.grad`` with respect to
  them, or to the waveforms, composes under ``jit`` and ``vmap``, second order included);
  ``graphdef`` and ``other`` (the stored dropout streams, never changed) are fixed.

  Attributes:
    graphdef: from :func:`split_model`.
    other: the non-parameter, non-BatchNorm state from :func:`split_model`.
    num_classes: C, the width of the logits.
  """

  graphdef: Any
  other: nnx.State
  num_classes: int

  # A static argument of jit (e.g. the diagnostics' gradient): hashed by its graph and by the
  # identity of its ``other`` state (arrays, unhashable), so the pure forms of one trained model
  # share their compilations.
  def __hash__(self):
    return hash((self.graphdef, id(self.other), self.num_classes))

  def __eq__(self, other):
    return (isinstance(other, PureModel) and self.graphdef == other.graphdef
            and self.other is other.other and self.num_classes == other.num_classes)

  def module(self, params: nnx.State, batch_stats: nnx.State) -> nnx.Module:
    """The module holding these weights. ``copy=True`` gives fresh variables at the current
    trace level even when the states are closed-over constants (``nnx.scan`` in the LSTM needs
    it, and BatchNorm may then update its statistics under ``jax.grad``)."""
    return nnx.merge(self.graphdef, params, batch_stats, self.other, copy=True)

  def features(self, params: nnx.State, batch_stats: nnx.State, waveforms: jax.Array
               ) -> jax.Array:
    """The fixed front end: ``(B, T)`` waveforms to the model's features."""
    return self.module(params, batch_stats).features(waveforms)

  def classify(self, params: nnx.State, batch_stats: nnx.State, features: jax.Array, *,
               train: bool = False, dropout_key: Optional[jax.Array] = None
               ) -> tuple[jax.Array, nnx.State]:
    """The trainable body on features: ``(logits (B, C) float32, new batch_stats)``.

    ``train=True``: batch statistics normalise (and come back updated) and dropout is on, with
    masks from ``dropout_key``. ``train=False`` with a ``dropout_key``: the eval model
    (BatchNorm on its running statistics) with dropout on; without one: deterministic.
    """
    model = self.module(params, batch_stats)
    rngs = None if dropout_key is None else nnx.Rngs(dropout=dropout_key)
    if train:
      if rngs is None and has_active_dropout(model):
        raise ValueError("classify(train=True) on a model with dropout needs a dropout_key "
                         "(jax.random.key) for the dropout masks.")
      logits, _ = model.classify(features, train=True, rngs=rngs)
      return logits.astype(jnp.float32), nnx.state(model, nnx.BatchStat)
    if rngs is None:
      logits, _ = model.classify(features, train=False)
    else:
      logits, _ = model.classify(features, train=False, dropout=True, rngs=rngs)
    return logits.astype(jnp.float32), batch_stats

  def apply(self, params: nnx.State, batch_stats: nnx.State, waveform: jax.Array, *,
            train: bool = False, key: Optional[jax.Array] = None):
    """The whole model: ``(logits, intermediates, new_batch_stats)`` (module doc).

    ``key`` drives dropout in train mode; it is required when ``train=True`` and the model has
    active dropout. In eval mode ``new_batch_stats`` is ``batch_stats``.
    """
    model = self.module(params, batch_stats)
    if train and key is None and has_active_dropout(model):
      raise ValueError("apply(train=True) on a model with dropout needs a key "
                       "(jax.random.key) for the dropout masks.")
    rngs = nnx.Rngs(dropout=key) if (train and key is not None) else None
    logits, intermediates = model(waveform, train=train, rngs=rngs)
    if not train:
      return logits, intermediates, batch_stats
    return logits, intermediates, nnx.state(model, nnx.BatchStat)

