"""White-box diagnostics of a taggant experiment (the owner's lab tools, not verification).

Verification (``jaxtag.taggants.verify``) sees only a suspect's top-k labels, and a key either
hits or does not. While developing a protection it is more telling to ask how far each key's
label moved: the log-probability of the key's label under a model trained on the
protected data, minus that under a *paired control* trained on the clean data with the same seed,
initialisation and data order (so that the only difference is the perturbed clips).

That difference is a diagnostic of one pair of models, not a bound on the taggants' effect: it
includes any effect of merely changing those clips (training from scratch, a placebo that
perturbs the same clips without alignment moves keys about as much, either way:
``benchmarks/taggant_placebo.py`` and benchmarks/RESULTS.md), and it is not what black-box
verification sees.

Where the signal dies (:func:`signal_at`, per checkpoint of a suspect's training): at the
suspect's own weights, the key gradient ``g_k`` (of the key's cross-entropy with its label), the
summed gradient ``G_k`` of key k's poisons, and the whole training set's summed gradient ``S``,
all in eval mode without augmentation (the suspect itself trained in train mode, with
augmentation: these are the gradients the poisons were crafted to produce, not the exact ones
the optimiser saw). Signs: a gradient step on the training loss moves the weights along ``-S``,
which changes key k's loss by about ``-lr <S, g_k>``; so a positive ``cos(G_k, g_k)`` or
projection means the poisons push the key's label up, and ``<S, g_k>`` says whether the whole
set still does.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxtag.models import PureModel
from jaxtag.taggants import alignment
from jaxtag.train import infer


class KeyScores(NamedTuple):
  """Per key: ``log_prob`` of its label (natural log) and its label's ``rank`` (1 = top-1);
  ``cross`` (optional) ``(K, K)``: ``cross[k, j] = log p(label_j | key_k)``, every key's label on
  every key (its diagonal is ``log_prob``)."""

  log_prob: np.ndarray
  rank: np.ndarray
  cross: np.ndarray | None = None


def key_scores(trained, keys, *, batch_size: int = 64) -> KeyScores:
  """Log-probability and rank of each key's label under ``trained`` (eval mode).

  Args:
    trained: a ``jaxtag.train.TrainedModel``.
    keys: ``jaxtag.taggants.keys.Keys`` (waveforms at the model's sample rate and clip length).
    batch_size: keys per forward pass.
  """
  labels = np.asarray(keys.labels)
  waves = np.asarray(keys.waveforms, np.float32)
  apply = jax.jit(lambda w: jax.nn.log_softmax(trained.model(w)[0].astype(jnp.float32)))
  log_probs = infer.map_padded(apply, waves, batch_size=max(1, min(batch_size, len(waves))))
  own = log_probs[np.arange(len(labels)), labels]
  rank = 1 + np.sum(log_probs > own[:, None], axis=1)
  return KeyScores(own, rank, log_probs[:, labels])


def paired_effect(treated: KeyScores, control: KeyScores) -> dict:
  """Per key, treated minus control log-probability of the key's label (the change between the
  two models: the taggants' effect plus that of changing the clips at all, see the module
  docstring), with the mean, the minimum and the maximum, and both models' ranks.

  When both scores carry ``cross``, also how *specific* the change is: ``others`` is the mean
  change of the other keys' labels on each key (``D[k, j]``, ``j != k``, with ``D`` the treated
  minus control ``cross``) and ``specific = mean - others``. A protection that only lifts every
  poisoned class on every key (the keys sound alike to a model: benchmarks/RESULTS.md) has
  ``specific`` near 0 however large ``mean`` is, and gives black-box verification nothing, which
  asks whether key k's *own* label wins.
  """
  delta = treated.log_prob - control.log_prob
  out = {"delta_log_prob": delta.tolist(), "mean": float(delta.mean()),
         "min": float(delta.min()), "max": float(delta.max()),
         "rank_treated": treated.rank.tolist(), "rank_control": control.rank.tolist()}
  if treated.cross is not None and control.cross is not None and len(delta) > 1:
    d = np.asarray(treated.cross) - np.asarray(control.cross)
    off = d[~np.eye(len(d), dtype=bool)]
    out["others"] = float(off.mean())
    out["specific"] = float(np.diag(d).mean() - off.mean())
  return out


class GradientSum(NamedTuple):
  """A sum of per-clip cross-entropy gradients (eval mode) and how those clips scored.

  Attributes:
    grad: the summed gradient, a tree like ``params`` (with a leading group axis from
      :func:`grouped_gradients`).
    loss_sum: summed cross-entropy (natural log).
    correct: clips whose top-1 label is their label.
    count: clips summed.
  """

  grad: Any
  loss_sum: Any
  correct: Any
  count: Any


def _weighted_gradient(clf: PureModel, params, batch_stats, waves, labels, weights):
  """``grad sum_i w_i CE_i`` and the weighted loss and hit sums of one fixed-size chunk."""

  def loss(p):
    logits = clf.classify(p, batch_stats, clf.features(p, batch_stats, waves))[0]
    ce = alignment.cross_entropy(logits, jax.nn.one_hot(labels, clf.num_classes,
                                                        dtype=jnp.float32))
    hit = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    total = jnp.sum(weights * ce)
    return total, (total, jnp.sum(weights * hit))

  grad, (loss_sum, correct) = jax.grad(loss, has_aux=True)(params)
  return grad, loss_sum, correct


_chunk_gradient = jax.jit(_weighted_gradient, static_argnums=0)


@functools.partial(jax.jit, static_argnums=0)
def _group_gradients(clf, params, batch_stats, waves, labels, weights):
  return jax.lax.map(lambda a: _weighted_gradient(clf, params, batch_stats, *a),
                     (waves, labels, weights))


@jax.jit
def _tree_add(a, b):
  return jax.tree.map(jnp.add, a, b)


def summed_gradient(clf: PureModel, params, batch_stats, waveforms: np.ndarray,
                    labels: np.ndarray, *, batch_size: int = 64) -> GradientSum:
  """The sum over clips of ``grad CE(model(clip), label)`` at ``params`` (eval mode, no
  augmentation), in chunks of ``batch_size`` (the last one padded with zero-weight rows, so every
  chunk has one compiled shape).

  Args:
    clf: the model as pure functions (``alignment.split_trained``); reuse one object
      for every call, since the compiled chunk is cached per ``clf``.
    params, batch_stats: the weights.
    waveforms: ``(N, T)`` clips (a numpy array or memory map; read a chunk at a time).
    labels: ``(N,)`` int labels.
    batch_size: clips per chunk.

  Raises:
    ValueError: no clips.
  """
  n = len(waveforms)
  if n == 0:
    raise ValueError("summed_gradient needs at least one clip.")
  rows = max(1, min(batch_size, n))
  total = None
  for start in range(0, n, rows):
    idx = np.arange(start, start + rows)
    valid = idx < n
    idx = np.where(valid, idx, n - 1)
    out = _chunk_gradient(clf, params, batch_stats, jnp.asarray(waveforms[idx], jnp.float32),
                          jnp.asarray(labels[idx], jnp.int32), jnp.asarray(valid, jnp.float32))
    total = out if total is None else _tree_add(total, out)
  grad, loss_sum, correct = total
  return GradientSum(grad, float(loss_sum), float(correct), n)


def grouped_gradients(clf: PureModel, params, batch_stats, waveforms: np.ndarray,
                      labels: np.ndarray, groups: np.ndarray, num_groups: int) -> GradientSum:
  """:func:`summed_gradient` of each group of clips (e.g. each key's poisons), stacked on a
  leading axis of ``num_groups``; an empty group has a zero gradient and ``count`` 0.

  Args:
    clf, params, batch_stats: as in :func:`summed_gradient`.
    waveforms: ``(P, T)``; labels: ``(P,)``; groups: ``(P,)`` ints in ``[0, num_groups)``.
    num_groups: K.

  Returns:
    A :class:`GradientSum` whose ``grad`` leaves are ``(K, ...)`` and ``loss_sum``, ``correct``,
    ``count`` numpy ``(K,)``.
  """
  groups = np.asarray(groups, np.int64)
  if groups.size and (groups.min() < 0 or groups.max() >= num_groups):
    raise ValueError(f"group ids must lie in [0, {num_groups}); got {np.unique(groups)}.")
  members = [np.flatnonzero(groups == k) for k in range(num_groups)]
  width = max(1, max(m.size for m in members))
  waves = np.zeros((num_groups, width) + np.shape(waveforms)[1:], np.float32)
  ys = np.zeros((num_groups, width), np.int32)
  weights = np.zeros((num_groups, width), np.float32)
  for k, m in enumerate(members):
    waves[k, :m.size], ys[k, :m.size], weights[k, :m.size] = waveforms[m], labels[m], 1.0
  grad, loss_sum, correct = _group_gradients(clf, params, batch_stats, jnp.asarray(waves),
                                             jnp.asarray(ys), jnp.asarray(weights))
  return GradientSum(grad, np.asarray(loss_sum, np.float64), np.asarray(correct, np.float64),
                     np.array([m.size for m in members]))


def _batched_dot(a, b) -> np.ndarray:
  """Per leading index, the dot product of two trees over all their leaves, float64 on host."""
  total = 0.0
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    y = np.asarray(y, np.float64).reshape(len(y), -1)
    total = total + np.sum(x * y, axis=1)
  return np.asarray(total)


def signal_statistics(key_grads, poison_grads, whole_grad,
                      all_poison_grad=None) -> dict[str, np.ndarray]:
  """How the poisons' and the whole set's gradients stand to each key's gradient.

  Args:
    key_grads: ``g``, a tree whose leaves are ``(K, ...)`` (``alignment.key_gradients``).
    poison_grads: ``G``, the same layout (:func:`grouped_gradients` of the poisons by key).
    whole_grad: ``S``, one tree without the leading axis (the training set's summed gradient).
    all_poison_grad: ``A``, the summed gradient of every poison (one tree); with it, also
      ``clean_cos`` cos(S - A, g) and ``clean_projection`` <S - A, g>/|g|: what the clean clips
      alone push along each key's gradient.

  Returns:
    Per key ``(K,)`` arrays: ``key_grad_norm`` |g|, ``poison_grad_norm`` |G|, ``poison_cos``
    cos(G, g), ``poison_projection`` <G, g>/|g|, ``poison_share`` |G|/|S|, ``whole_cos``
    cos(S, g), ``whole_projection`` <S, g>/|g| and ``projection_share`` (the poisons' part of
    the whole set's projection, <G, g>/<S, g>); and ``whole_grad_norm`` |S| (a scalar).
  """
  whole = jax.tree.map(lambda x: np.asarray(x)[None], whole_grad)   # broadcasts over keys
  gg, pp, ss = (_batched_dot(key_grads, key_grads), _batched_dot(poison_grads, poison_grads),
                _batched_dot(whole, whole))
  pg, sg = _batched_dot(poison_grads, key_grads), _batched_dot(whole, key_grads)
  g_norm, p_norm, s_norm = np.sqrt(gg), np.sqrt(pp), float(np.sqrt(ss[0]))
  tiny = 1e-30
  clean = {}
  if all_poison_grad is not None:
    rest = jax.tree.map(lambda w, a: np.asarray(w, np.float64) - np.asarray(a, np.float64),
                        whole, jax.tree.map(lambda x: np.asarray(x)[None], all_poison_grad))
    cg, c_norm = _batched_dot(rest, key_grads), float(np.sqrt(_batched_dot(rest, rest)[0]))
    clean = {"clean_cos": cg / np.maximum(c_norm * g_norm, tiny),
             "clean_projection": cg / np.maximum(g_norm, tiny)}
  with np.errstate(divide="ignore", invalid="ignore"):
    return {**clean,
        "key_grad_norm": g_norm, "poison_grad_norm": p_norm,
        "poison_cos": pg / np.maximum(p_norm * g_norm, tiny),
        "poison_projection": pg / np.maximum(g_norm, tiny),
        "poison_share": p_norm / max(s_norm, tiny),
        "whole_cos": sg / np.maximum(s_norm * g_norm, tiny),
        "whole_projection": sg / np.maximum(g_norm, tiny),
        "projection_share": np.where(sg != 0, pg / np.where(sg != 0, sg, 1.0), np.nan),
        "whole_grad_norm": np.float64(s_norm)}


def key_log_probs(clf: PureModel, params, batch_stats, waveforms,
                  labels) -> KeyScores:
  """:func:`key_scores` from a model's pure functions and weights (eval mode)."""
  labels = np.asarray(labels)
  logits = clf.classify(params, batch_stats, clf.features(params, batch_stats,
                                                          jnp.asarray(waveforms, jnp.float32)))[0]
  log_probs = np.asarray(jax.nn.log_softmax(logits.astype(jnp.float32)))
  own = log_probs[np.arange(len(labels)), labels]
  return KeyScores(own, 1 + np.sum(log_probs > own[:, None], axis=1))


@dataclasses.dataclass(frozen=True)
class PoisonSet:
  """Which rows of a training split are poisons, and whose.

  Attributes:
    rows: ``(P,)`` row of each poison in the training split.
    keys: ``(P,)`` the key each poison carries.
  """

  rows: np.ndarray
  keys: np.ndarray


def poison_set(indices, keys, *, files: Sequence[str] | None = None,
               paths: Sequence[str] | None = None) -> PoisonSet:
  """The poisons of a craft record (``perturbations.npz``: ``indices``, ``keys``, ``files``) as
  rows of a loaded training split: by file name when both ``files`` and the split's ``paths``
  are known (a protected dataset loaded from its folder may order clips otherwise than the
  split the craft saw), else by index.

  Raises:
    ValueError: a poison file missing from the split (another dataset), or lengths that differ.
  """
  indices, keys = np.asarray(indices, np.int64), np.asarray(keys, np.int64)
  if indices.shape != keys.shape:
    raise ValueError(f"poison indices {indices.shape} and keys {keys.shape} differ in length.")
  if files is None or paths is None:
    return PoisonSet(indices, keys)
  if len(files) != len(indices):
    raise ValueError(f"{len(files)} poison files for {len(indices)} poison indices.")
  where = {str(p): i for i, p in enumerate(paths)}
  missing = [str(f) for f in files if str(f) not in where]
  if missing:
    raise ValueError(f"{len(missing)} poison files are not in the training split (first: "
                     f"{missing[0]}); load the protected dataset this craft wrote.")
  return PoisonSet(np.array([where[str(f)] for f in files], np.int64), keys)


def _mean(x) -> float | None:
  x = np.asarray(x, np.float64)
  x = x[np.isfinite(x)]
  return float(x.mean()) if x.size else None


def signal_at(clf: PureModel, params, batch_stats, *, key_waveforms, key_labels,
              train_waveforms: np.ndarray, train_labels: np.ndarray, poisons: PoisonSet,
              reference_rows: np.ndarray | None = None, batch_size: int = 64,
              unperturbed_poisons: np.ndarray | None = None) -> dict[str, Any]:
  """The taggant signal at one set of weights (one checkpoint of a suspect), per key and averaged.

  Args:
    clf: the model's pure functions (the same object for every checkpoint of a run).
    params, batch_stats: the weights.
    key_waveforms, key_labels: the secret keys ``(K, T)``, ``(K,)``.
    train_waveforms, train_labels: the (protected) training split the suspect trained on.
    poisons: its poison rows and their keys (:func:`poison_set`).
    reference_rows: None: ``S`` sums the gradient of every training clip. Else rows of clean
      clips (no poison) whose summed gradient, scaled by (clean clips) / len(rows), stands for
      the clean clips' part of ``S``; the poisons' own gradient is added exactly.
    batch_size: clips per chunk of the whole-set gradient.
    unperturbed_poisons: optional ``(P, T)``, the poisons before crafting (in the order of
      ``poisons.rows``): a control, since a key's poisons come from its label's class and would
      push towards it unperturbed too. Adds per key ``unperturbed_grad_norm``,
      ``unperturbed_cos`` and ``unperturbed_projection`` (as for the poisons) and
      ``unperturbed_loss``.

  Returns:
    ``{"keys": [per-key dict], "means": {...}, "whole_set": {...}}``: per key the
    :func:`signal_statistics` (with the clean clips' part), the key's label log-probability and
    rank, and its poisons' mean loss and accuracy; ``means`` averages the per-key numbers over
    keys (``projection_share``: the median) and adds the whole-set ones (|S|, the summed
    gradient of all poisons and its share of |S|, the poisons' and the reference clips' mean
    loss and accuracy).

  Raises:
    ValueError: ``reference_rows`` that include a poison, or ``unperturbed_poisons`` of
      another length than the poisons.
  """
  key_labels = np.asarray(key_labels)
  num_keys = len(key_labels)
  key_grads = alignment.key_gradients(clf, params, batch_stats, jnp.asarray(key_waveforms),
                                      jnp.asarray(key_labels))
  rows = np.asarray(poisons.rows)
  poison = grouped_gradients(clf, params, batch_stats, train_waveforms[rows], train_labels[rows],
                             poisons.keys, num_keys)
  all_poisons = jax.tree.map(lambda x: jnp.sum(x, axis=0), poison.grad)
  whole, whole_grad, described = _whole_set_gradient(
      clf, params, batch_stats, train_waveforms, train_labels, rows, all_poisons,
      reference_rows, batch_size)
  stats = signal_statistics(key_grads, poison.grad, whole_grad, all_poisons)
  scores = key_log_probs(clf, params, batch_stats, key_waveforms, key_labels)
  if unperturbed_poisons is not None:
    if np.shape(unperturbed_poisons)[0] != rows.size:
      raise ValueError(f"{np.shape(unperturbed_poisons)[0]} unperturbed poisons for "
                       f"{rows.size} poisons.")
    clean = grouped_gradients(clf, params, batch_stats, np.asarray(unperturbed_poisons),
                              train_labels[rows], poisons.keys, num_keys)
    stats = {**stats, **_unperturbed_control(key_grads, clean, whole_grad)}
  return {"keys": _per_key_records(stats, key_labels, poison, scores),
          "means": _signal_means(stats, all_poisons, poison, scores, whole, rows.size),
          "whole_set": {**described, "num_train": len(train_labels),
                        "num_poisons": int(rows.size)}}


def _whole_set_gradient(clf, params, batch_stats, train_waveforms, train_labels, rows,
                        all_poisons, reference_rows, batch_size):
  """``S``, the summed gradient of the training set: every clip's, or a clean subset's scaled
  to the clean clips plus the poisons' own. Returns ``(GradientSum, S, description)``."""
  n, p = len(train_labels), rows.size
  if reference_rows is None:
    whole = summed_gradient(clf, params, batch_stats, train_waveforms, train_labels,
                            batch_size=batch_size)
    return whole, whole.grad, {"mode": "all", "clips": n}
  reference_rows = np.asarray(reference_rows, np.int64)
  if np.isin(reference_rows, rows).any():
    raise ValueError("reference_rows must be clean clips; some are poisons.")
  order = np.sort(reference_rows)   # Sorted reads of a memory-mapped split are faster.
  whole = summed_gradient(clf, params, batch_stats, train_waveforms[order],
                          train_labels[order], batch_size=batch_size)
  scale = (n - p) / order.size
  whole_grad = jax.tree.map(lambda c, q: scale * c + q, whole.grad, all_poisons)
  return whole, whole_grad, {"mode": "clean_subset", "clips": int(order.size), "scale": scale}


def _unperturbed_control(key_grads, clean: GradientSum, whole_grad) -> dict[str, np.ndarray]:
  """The unperturbed poisons' statistics, per key (the control of :func:`signal_at`)."""
  base = signal_statistics(key_grads, clean.grad, whole_grad)
  with np.errstate(divide="ignore", invalid="ignore"):
    return {"unperturbed_grad_norm": base["poison_grad_norm"],
            "unperturbed_cos": base["poison_cos"],
            "unperturbed_projection": base["poison_projection"],
            "unperturbed_loss": clean.loss_sum / clean.count}


def _per_key_records(stats, key_labels, poison: GradientSum, scores) -> list[dict[str, Any]]:
  """One JSON-friendly record per key (None for a non-finite number)."""
  with np.errstate(divide="ignore", invalid="ignore"):
    poison_loss = poison.loss_sum / poison.count
    poison_acc = poison.correct / poison.count
  per_key = []
  for k in range(len(key_labels)):
    record = {name: float(v[k]) for name, v in stats.items() if np.ndim(v)}
    record.update(key=k, label=int(key_labels[k]), num_poisons=int(poison.count[k]),
                  key_log_prob=float(scores.log_prob[k]), key_rank=int(scores.rank[k]),
                  poison_loss=float(poison_loss[k]), poison_accuracy=float(poison_acc[k]))
    per_key.append({key: (None if isinstance(v, float) and not math.isfinite(v) else v)
                    for key, v in record.items()})
  return per_key


def _signal_means(stats, all_poisons, poison: GradientSum, scores, whole: GradientSum,
                  num_poisons: int) -> dict[str, Any]:
  """The per-key numbers averaged over keys, and the whole-set ones."""
  p = num_poisons
  all_norm = float(np.sqrt(sum(np.sum(np.square(np.asarray(x, np.float64)))
                               for x in jax.tree.leaves(all_poisons))))
  means = {name: _mean(v) for name, v in stats.items() if np.ndim(v)}
  # A ratio whose denominator <S, g_k> crosses zero: its mean over keys says little.
  finite = stats["projection_share"][np.isfinite(stats["projection_share"])]
  means["projection_share"] = float(np.median(finite)) if finite.size else None
  means.update(
      key_log_prob=_mean(scores.log_prob), key_rank=_mean(scores.rank),
      keys_top1=int(np.sum(scores.rank == 1)),
      whole_grad_norm=float(stats["whole_grad_norm"]), all_poison_grad_norm=all_norm,
      all_poison_share=all_norm / max(float(stats["whole_grad_norm"]), 1e-30),
      poison_loss=float(poison.loss_sum.sum() / max(p, 1)),
      poison_accuracy=float(poison.correct.sum() / max(p, 1)),
      reference_loss=whole.loss_sum / whole.count, reference_accuracy=whole.correct / whole.count)
  return means


PLOTTED = (("poison_grad_norm", "|G_k| (poisons' summed gradient)"),
           ("poison_cos", "cos(G_k, g_k)"),
           ("poison_share", "|G_k| / |S| (share of the set's gradient)"),
           ("whole_cos", "cos(S, g_k)"),
           ("key_log_prob", "log p(key label | key)"),
           ("poison_loss", "poisons' loss (eval mode)"))


# The unperturbed poisons' counterpart of a plotted quantity, drawn beside it when measured.
CONTROLS = {"poison_grad_norm": "unperturbed_grad_norm", "poison_cos": "unperturbed_cos",
            "poison_loss": "unperturbed_loss"}


def plot_signal(epochs: Sequence[dict[str, Any]], *, title: str = ""):
  """A figure of the per-epoch means of :func:`signal_at` (one panel per quantity of
  :data:`PLOTTED`, and the unperturbed poisons' counterpart where measured); ``epochs`` are dicts
  with ``epoch`` and ``means``. Returns the PNG bytes."""
  from jaxtag import plots

  def series(name):
    return [np.nan if e["means"].get(name) is None else e["means"][name] for e in epochs]

  x = [e["epoch"] for e in epochs]
  fig = plots.figure(figsize=(12, 6))
  axes = fig.subplots(2, 3, sharex=True)
  for ax, (name, label) in zip(axes.ravel(), PLOTTED):
    ax.plot(x, series(name), marker="o", lw=1, label="poisons")
    control = CONTROLS.get(name)
    if control and any(control in e["means"] for e in epochs):
      ax.plot(x, series(control), marker=".", lw=1, ls="--", label="the same clips unperturbed")
      ax.legend(fontsize=7)
    if name in ("poison_cos", "whole_cos"):
      ax.axhline(0.0, color="grey", lw=0.5)
    ax.set(title=label, xlabel="epoch")
  fig.suptitle(title or "taggant signal per epoch (mean over keys)")
  fig.tight_layout()
  return plots.png_bytes(fig)
