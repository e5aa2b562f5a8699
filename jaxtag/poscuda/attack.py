"""The attacker's check: random blurs or noise at random positions, without the secret."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxtag import rng
from jaxtag.poscuda.filters import filter_patch


@functools.partial(jax.jit, static_argnames=("mode", "num_patches", "patch", "taps"))
def random_patch_attack(key: jax.Array, waveforms: jax.Array, *, mode: str = "blur",
                        num_patches: int = 8, patch: int = 240, taps: int = 80,
                        noise_snr_db: float = 20.0) -> jax.Array:
  """The attacker's try at breaking the shortcut without the secret: random patches per clip.

  Each clip gets ``num_patches`` patches of ``patch`` samples at uniform random positions, each
  either blurred with a fresh random filter (U(0, 1) taps normalised to sum 1: the recipe, not
  the key) or given Gaussian noise ``noise_snr_db`` below the clip's RMS.

  Args:
    key: the attacker's key (streams ``positions``, ``filters``, ``noise``).
    waveforms: (N, T).
    mode: "blur" or "noise".
    num_patches: patches per clip.
    patch: patch length in samples.
    taps: taps of the random blur filters.
    noise_snr_db: noise level relative to the clip's RMS (``mode="noise"``).

  Returns:
    float32 (N, T), clipped to [-1, 1].
  """
  if mode not in ("blur", "noise"):
    raise ValueError(f"random_patch_attack: mode must be 'blur' or 'noise', got {mode!r}.")
  waveforms = jnp.asarray(waveforms, jnp.float32)
  n, length = waveforms.shape
  starts = jax.random.randint(rng.stream(key, "positions"), (n, num_patches), 0,
                              length - patch + 1)
  if mode == "blur":
    raw = jax.random.uniform(rng.stream(key, "filters"), (n, num_patches, taps))
    filters = raw / jnp.sum(raw, axis=-1, keepdims=True)

    def blur_clip(x, clip_starts, clip_filters):
      def body(i, x):
        return filter_patch(x, clip_filters[i], clip_starts[i], patch)
      return jax.lax.fori_loop(0, num_patches, body, x)

    return jnp.clip(jax.vmap(blur_clip)(waveforms, starts, filters), -1.0, 1.0)
  t = jnp.arange(length)
  inside = jnp.any((t >= starts[..., None]) & (t < starts[..., None] + patch), axis=1)
  rms = jnp.sqrt(jnp.mean(waveforms ** 2, axis=-1, keepdims=True))
  noise = jax.random.normal(rng.stream(key, "noise"), waveforms.shape) * rms * (
      10.0 ** (-noise_snr_db / 20.0))
  return jnp.clip(waveforms + inside * noise, -1.0, 1.0)
