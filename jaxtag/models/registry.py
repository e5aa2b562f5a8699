"""Models by name, and the pure ``apply_fn`` that algorithms consume.

Functional interface (what `train`, `taggants` and `poscuda` use)::

    model = create_model("m5", num_classes=35, rngs=nnx.Rngs(0))
    graphdef, params, batch_stats, other = split_model(model)
    apply_fn = make_apply_fn(graphdef, other)
    logits, intermediates, new_batch_stats = apply_fn(
        params, batch_stats, waveform, train=True, key=key)

* ``params``: every ``nnx.Param`` (what optimisers and gradients see).
* ``batch_stats``: every ``nnx.BatchStat`` (BatchNorm running mean/var); an
  empty ``nnx.State`` for models without BatchNorm. In eval mode
  (``train=False``) the running statistics are used and returned unchanged;
  in train mode batch statistics normalise and the updated running averages
  come back as ``new_batch_stats``.
* ``other``: the remaining state (stored dropout RNG streams); it is closed
  over and never changes, because ``apply_fn`` draws dropout masks from its
  explicit ``key`` only. ``train=True`` on a model with active dropout
  requires a key; eval mode is deterministic and ignores it.

All three states are pytrees of arrays, so ``apply_fn`` composes with
``jax.jit``, ``jax.vmap`` and ``jax.grad`` with respect to ``params`` and to
``waveform`` (including second-order derivatives).
"""

import inspect
from typing import Any, Callable, NamedTuple, Optional

import jax
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

ApplyFn = Callable[..., tuple[jax.Array, dict[str, jax.Array], nnx.State]]


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


def make_apply_fn(graphdef, other: nnx.State) -> ApplyFn:
  """Returns the pure forward function of a split model.

  Args:
    graphdef: from `split_model`.
    other: the non-parameter, non-BatchNorm state from `split_model`.

  Returns:
    ``apply_fn(params, batch_stats, waveform, *, train=False, key=None) ->
    (logits, intermediates, new_batch_stats)``. ``key`` (a
    ``jax.random.key``) drives dropout in train mode; it is required when
    ``train=True`` and the model has active dropout. In eval mode
    ``new_batch_stats`` is ``batch_stats``.
  """

  def apply_fn(params, batch_stats, waveform, *, train: bool = False,
               key: Optional[jax.Array] = None):
    # copy=True gives fresh Variables at the current trace level even when
    # the states are closed-over constants (nnx.scan in the LSTM needs it).
    model = nnx.merge(graphdef, params, batch_stats, other, copy=True)
    if train and key is None and has_active_dropout(model):
      raise ValueError("apply_fn(train=True) on a model with dropout needs a "
                       "key (jax.random.key) for the dropout masks.")
    rngs = nnx.Rngs(dropout=key) if (train and key is not None) else None
    logits, intermediates = model(waveform, train=train, rngs=rngs)
    if not train:
      return logits, intermediates, batch_stats
    return logits, intermediates, nnx.state(model, nnx.BatchStat)

  return apply_fn

