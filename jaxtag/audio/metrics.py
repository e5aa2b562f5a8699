"""Signal-quality metrics for perturbed audio (pure jnp, batch-first)."""

import jax.numpy as jnp


def snr_db(clean: jnp.ndarray, perturbed: jnp.ndarray, axis=-1,
           eps: float = 1e-20) -> jnp.ndarray:
  """Signal-to-noise ratio of a perturbation, ``10 log10 ||x||^2 / ||x' - x||^2``.

  Args:
    clean: reference signal(s) ``x``.
    perturbed: perturbed signal(s) ``x'``, broadcastable against ``clean``.
    axis: axis or axes summed over (the time axis by default); the others are
      batch axes.
    eps: floor on both energies, so that an unperturbed or silent signal gives
      a large finite value instead of inf/nan and gradients stay finite.

  Returns:
    SNR in decibels with the summed axes removed.
  """
  clean = jnp.asarray(clean, jnp.float32)
  noise = jnp.asarray(perturbed, jnp.float32) - clean
  signal_energy = jnp.maximum(jnp.sum(clean**2, axis=axis), eps)
  noise_energy = jnp.maximum(jnp.sum(noise**2, axis=axis), eps)
  return 10.0 * (jnp.log10(signal_energy) - jnp.log10(noise_energy))
