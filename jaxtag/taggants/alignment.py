"""The surrogate as pure functions of its weights, and the gradient-alignment quantities.

What crafting (``jaxtag.taggants.craft``) and its diagnostics (``jaxtag.taggants.protect``) align:
the surrogate as pure ``features``/``classify`` functions (``jaxtag.models.PureModel``), the fixed key gradients
(one surrogate, or a stacked ensemble of surrogates of one architecture), and the cosine between
two parameter trees over the kept leaves. Every name here is re-exported by ``craft``.
"""

from __future__ import annotations

from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from jaxtag.models import PureModel
from jaxtag.train.steps import cross_entropy  # noqa: F401  (re-exported: one definition)

Objective = Literal["per_key", "joint"]


def split_trained(trained) -> tuple[PureModel, Any, Any]:
  """``(pure model, params, batch_stats)`` of a ``jaxtag.train.TrainedModel``: the surrogate as
  pure functions of its weights (``jaxtag.models.PureModel``). Crafting uses it in eval mode
  (BatchNorm running statistics, no dropout), as the reference does for the key gradient and the
  poison gradients; ``classify(..., dropout_key=k)`` keeps the eval mode but turns the model's
  dropout on with masks drawn from ``k`` (``CraftAugment.dropout``)."""
  return trained.pure, trained.params, trained.batch_stats


def leaf_keep(tree, exclude: tuple[str, ...]) -> tuple[bool, ...]:
  """Which leaves of ``tree`` the cosine keeps: those whose ``/``-joined path contains none of
  ``exclude``."""
  paths = [jax.tree_util.keystr(p, simple=True, separator="/")
           for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
  keep = tuple(not any(e in path for e in exclude) for path in paths)
  if not any(keep):
    raise ValueError(f"exclude_params={exclude} leaves no parameter in the cosine.")
  return keep


def _tree_products(a, b, keep: tuple[bool, ...] | None):
  """``(<a, b>, <a, a>, <b, b>)`` over the concatenation of the (kept) leaves, in float32."""
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  keep = keep or (True,) * len(la)
  pairs = [(x.astype(jnp.float32), y.astype(jnp.float32))
           for x, y, k in zip(la, lb, keep) if k]
  return (sum(jnp.vdot(x, y) for x, y in pairs), sum(jnp.vdot(x, x) for x, _ in pairs),
          sum(jnp.vdot(y, y) for _, y in pairs))


def tree_cosine(a, b, keep: tuple[bool, ...] | None = None) -> jax.Array:
  """Cosine between two parameter trees over the concatenation of their (kept) leaves."""
  dot, na, nb = _tree_products(a, b, keep)
  return dot / jnp.maximum(jnp.sqrt(na * nb), 1e-30)


def tree_projection(a, b, keep: tuple[bool, ...] | None = None) -> jax.Array:
  """``<a, b> / |b|^2`` over the (kept) leaves: ``a``'s component along ``b`` in units of ``b``."""
  dot, _, nb = _tree_products(a, b, keep)
  return dot / jnp.maximum(nb, 1e-30)


def key_gradients(clf: PureModel, params, batch_stats, key_waveforms: jax.Array,
                  key_labels: jax.Array, *, objective: Objective = "per_key",
                  contrast: float = 0.0):
  """The fixed target gradients: one per key (``per_key``, leading axis K) or one (``joint``,
  leading axis 1) of the mean key cross-entropy. Eval mode, no augmentation (keys are never
  augmented).

  With ``contrast = lam > 0`` key ``k``'s target is ``g(key_k, y_k) - lam * mean_{j != k}
  g(key_j, y_k)``: the step that raises ``y_k`` on key ``k`` while lowering it on the other keys,
  i.e. the part of the key gradient that tells key ``k`` from the others. To a model the keys are
  alike (random spectral textures: the same-label gradients of two keys have a cosine near 0.9 on
  the demo's surrogate), so a target without contrast moves every key's label on every key
  alike, which black-box verification cannot see (benchmarks/RESULTS.md). ``joint`` averages the
  per-key targets. Needs K >= 2; costs K^2 per-key gradients once.
  """
  targets = jax.nn.one_hot(key_labels, clf.num_classes, dtype=jnp.float32)

  def loss(p, waves, tgt):
    logits = clf.classify(p, batch_stats, clf.features(p, batch_stats, waves))[0]
    return jnp.mean(cross_entropy(logits, tgt))

  def one(w, t):
    return jax.grad(loss)(params, w[None], t[None])

  if contrast == 0.0:
    if objective == "joint":
      g = jax.grad(loss)(params, key_waveforms, targets)
      return jax.tree.map(lambda x: x[None], g)
    return jax.vmap(one)(key_waveforms, targets)
  num_keys = key_waveforms.shape[0]
  if num_keys < 2:
    raise ValueError("A contrastive key target needs at least two keys.")
  own = jax.vmap(one)(key_waveforms, targets)
  # label k on every key j: (K labels, K keys, ...) summed over keys, one label at a time.
  on_all = jax.lax.map(lambda t: jax.tree.map(
      lambda x: jnp.sum(x, 0), jax.vmap(lambda w: one(w, t))(key_waveforms)), targets)
  others = jax.tree.map(lambda a, o: (a - o) / (num_keys - 1), on_all, own)
  g = jax.tree.map(lambda o, r: o - contrast * r, own, others)
  if objective == "joint":
    return jax.tree.map(lambda x: jnp.mean(x, 0, keepdims=True), g)
  return g


def ensemble_key_gradients(clf: PureModel, params, batch_stats, key_waveforms: jax.Array,
                           key_labels: jax.Array, *, objective: Objective = "per_key",
                           contrast: float = 0.0):
  """:func:`key_gradients` of every member of a stacked ensemble, laid out ``(G, E, ...)``: the
  group axis first (as the crafting step maps over groups), then the member axis.

  An ensemble of one is computed without the loop over members, so that it gives exactly the
  numbers of that surrogate alone.
  """
  if members_of(params) == 1:
    g = key_gradients(clf, *jax.tree.map(lambda x: x[0], (params, batch_stats)), key_waveforms,
                      key_labels, objective=objective, contrast=contrast)
    return jax.tree.map(lambda x: x[:, None], g)
  per_member = jax.lax.map(
      lambda pb: key_gradients(clf, pb[0], pb[1], key_waveforms, key_labels, objective=objective,
                               contrast=contrast),
      (params, batch_stats))
  return jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), per_member)


def members_of(stacked) -> int:
  """The number of members of a stacked ensemble's tree (the leading axis of its leaves)."""
  return int(np.shape(jax.tree.leaves(stacked)[0])[0])


def stack_members(trees) -> Any:
  """Stacks the parameter (or batch-statistics) trees of an ensemble on a new leading axis."""
  trees = list(trees)
  if not trees:
    raise ValueError("A surrogate ensemble needs at least one member.")
  structure = jax.tree.structure(trees[0])
  for i, tree in enumerate(trees[1:], 1):
    if jax.tree.structure(tree) != structure or any(
        np.shape(a) != np.shape(b) for a, b in zip(jax.tree.leaves(trees[0]), jax.tree.leaves(tree))):
      raise ValueError(f"Surrogate {i} of the ensemble differs in architecture from surrogate 0; "
                       "an ensemble needs one architecture (other seeds or epochs).")
  return jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *trees)
