"""The generalized end-to-end (GE2E) softmax loss of Wan et al. (2018).

A batch holds N speakers x M utterances, embeddings ``e_ji`` (utterance i of speaker j). Each
utterance is compared with every speaker's centroid by a scaled cosine ``S_ji,k = w cos(e_ji,
c_k) + b``, where the centroid of its own speaker leaves the utterance itself out
(``c_j^(-i) = (sum_m e_jm - e_ji) / (M - 1)``, the paper's Eq. 8), and the loss is the softmax
cross-entropy of that row against its own speaker, ``-S_ji,j + log sum_k exp(S_ji,k)``
(Eq. 6), averaged over the N x M utterances (the paper sums; the mean keeps the learning rate
independent of the batch shape). ``w`` is kept positive (the paper's ``w > 0``) by clamping.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

INIT_W = 10.0
INIT_B = -5.0
MIN_W = 1e-6


def init_ge2e_params() -> dict[str, jax.Array]:
  """The learnable scale and offset at the paper's initialisation ``(w, b) = (10, -5)``."""
  return {"w": jnp.asarray(INIT_W, jnp.float32), "b": jnp.asarray(INIT_B, jnp.float32)}


def _unit(x: jax.Array) -> jax.Array:
  return x / jnp.sqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-12))


def similarity_matrix(embeddings: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
  """``S (N, M, N)``: scaled cosine of each utterance to each speaker's centroid (own speaker's
  centroid without the utterance).

  Raises:
    ValueError: embeddings not ``(N, M, D)`` with N >= 2 and M >= 2.
  """
  if embeddings.ndim != 3 or embeddings.shape[0] < 2 or embeddings.shape[1] < 2:
    raise ValueError("ge2e_loss takes embeddings (N speakers, M utterances, D) with N >= 2 and "
                     f"M >= 2; got shape {embeddings.shape}.")
  n, m, _ = embeddings.shape
  e = _unit(embeddings.astype(jnp.float32))
  total = jnp.sum(e, axis=1)                                  # (N, D)
  centroids = _unit(total / m)                                # (N, D)
  exclusive = _unit((total[:, None, :] - e) / (m - 1))        # (N, M, D)
  cos_all = jnp.einsum("jid,kd->jik", e, centroids)           # (N, M, N)
  cos_own = jnp.sum(e * exclusive, axis=-1)                   # (N, M)
  own = jnp.eye(n, dtype=bool)[:, None, :]
  cos = jnp.where(own, cos_own[:, :, None], cos_all)
  return jnp.maximum(w, MIN_W) * cos + b


def ge2e_loss(embeddings: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
  """The GE2E softmax loss (module docstring), averaged over utterances.

  Args:
    embeddings: ``(N, M, D)``: N speakers x M utterances (normalised here, so raw or unit rows).
    w: scale (clamped to > 0).
    b: offset.

  Returns:
    Scalar float32 loss.
  """
  s = similarity_matrix(embeddings, w, b)
  n = s.shape[0]
  own = jnp.take_along_axis(s, jnp.arange(n)[:, None, None], axis=-1)[..., 0]
  return jnp.mean(jax.nn.logsumexp(s, axis=-1) - own)
