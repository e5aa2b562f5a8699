"""Quality metrics for perturbed audio: SNR (pure jnp, batch-first) and the Fréchet distance.

The Fréchet distance compares embeddings of clean and perturbed audio (FAD when the embeddings
come from an audio model); it runs host-side in float64 with scipy.
"""

import jax.numpy as jnp
import numpy as np


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


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
  """Fréchet distance between Gaussians fitted to two embedding sets (FAD/FID formula).

  ``||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))``, in float64 with scipy's sqrtm; the
  imaginary rounding residue of sqrtm is dropped and the result floored at 0.

  Args:
    a, b: (N, D) and (M, D) embeddings, N, M >= 2.

  Returns:
    The distance (0 for identical sets).
  """
  from scipy import linalg  # pylint: disable=import-outside-toplevel  (host-side only)
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
    raise ValueError(f"frechet_distance: need (N, D) and (M, D) embeddings with N, M >= 2; got "
                     f"{a.shape} and {b.shape}.")
  mu_a, mu_b = a.mean(0), b.mean(0)
  cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
  covmean = linalg.sqrtm(cov_a @ cov_b)
  covmean = np.real(covmean)
  value = float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a + cov_b - 2.0 * covmean))
  return max(value, 0.0)
