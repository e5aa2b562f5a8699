"""The perturbation constraint of taggant crafting, and the 16-bit export that must respect it.

A poison's perturbation is held in units of its SNR budget: ``delta = u * s`` with
``s = rms(x) * 10 ** (-snr_db / 20)`` (:func:`snr_scale`), so that the per-clip SNR floor is the
L2 ball ``rms(u) <= 1``. :func:`project` enforces it together with the [-1, 1] range;
:func:`quantize_perturbation` puts the perturbation on the 16-bit grid without ever crossing the
floor. Pure ``jnp``; shapes are ``(..., T)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

PCM16_SCALE = 32768.0     # jaxtag.audio.io.to_pcm16's scale: the 16-bit grid is m / 32768.


def snr_scale(x: jax.Array, snr_db: float) -> jax.Array:
  """Per-clip RMS budget ``rms(x) * 10^(-snr_db/20)`` of the perturbation; ``x`` is (..., T)."""
  rms = jnp.sqrt(jnp.mean(jnp.square(x.astype(jnp.float32)), axis=-1))
  return rms * 10.0 ** (-snr_db / 20.0)


def project(u: jax.Array, x: jax.Array, scale: jax.Array) -> jax.Array:
  """Projects ``u`` (budget units, (..., T)) onto ``rms(u) <= 1`` and ``x + u * scale`` in [-1, 1].

  The box step only moves samples towards zero perturbation, so it keeps the L2 bound.
  Silent clips (``scale == 0``) get no perturbation.
  """
  rms = jnp.sqrt(jnp.mean(jnp.square(u), axis=-1, keepdims=True))
  u = u / jnp.maximum(rms, 1.0)
  s = scale[..., None]
  safe = jnp.where(s > 0, s, 1.0)
  u = jnp.clip(u, (-1.0 - x) / safe, (1.0 - x) / safe)
  return jnp.where(s > 0, u, 0.0)


def quantize_perturbation(x: jax.Array, delta: jax.Array, snr_db: float) -> jax.Array:
  """The perturbation that the 16-bit export of ``x + delta`` carries, never below the SNR floor.

  ``x`` is assumed on the 16-bit grid (clips read from 16-bit WAV are). Per clip, rounding
  ``delta`` to the grid is used when it keeps ``10 log10(|x|^2/|delta_q|^2) >= snr_db``, otherwise
  truncation towards zero (which can only shrink every sample, so it keeps the floor).
  """
  rounded = jnp.round(delta * PCM16_SCALE) / PCM16_SCALE
  truncated = jnp.trunc(delta * PCM16_SCALE) / PCM16_SCALE
  limit = jnp.sum(jnp.square(x), -1, keepdims=True) * 10.0 ** (-snr_db / 10.0)
  ok = jnp.sum(jnp.square(rounded), -1, keepdims=True) <= limit
  return jnp.where(ok, rounded, truncated)
