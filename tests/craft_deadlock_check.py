"""A few crafting steps of a small surrogate ensemble, run as a script in a subprocess.

``tests/test_craft_deadlock.py`` runs it under a hard timeout. On XLA:CPU with jaxlib >= 0.11 a
crafting step whose loops over keys and ensemble members are unrolled can deadlock: every
unrolled iteration has its own FFT (the log-mel front end and its gradient), XLA runs independent
FFT thunks concurrently on its intra-op thread pool, and each FFT fans its work out into that
same pool and waits for it; once every worker waits, nothing runs again (see BUILD.md, "XLA:CPU
FFT deadlock"). The default ``CraftConfig.unroll`` must not produce such a step; this script
crafts with it (or with ``--unroll``) and prints ``OK`` when every step has finished.

  python tests/craft_deadlock_check.py [--unroll true|false|N] [--keys 8] [--members 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:  # Run as a script: make `jaxtag` importable from a checkout.
  sys.path.insert(0, _ROOT)

NUM_CLASSES = 10
SAMPLE_RATE = 16000


def _unroll(text: str | None):
  if text is None:
    return None
  low = text.strip().lower()
  if low in ("true", "false"):
    return low == "true"
  return int(low)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--unroll", default=None, help="true, false or an int (default: the "
                      "CraftConfig default for this jax and backend)")
  parser.add_argument("--keys", type=int, default=8)
  parser.add_argument("--poisons", type=int, default=1, help="poisons per key")
  parser.add_argument("--members", type=int, default=2, help="surrogates in the ensemble")
  parser.add_argument("--steps", type=int, default=4)
  args = parser.parse_args(argv)

  import jax
  import jax.numpy as jnp
  import numpy as np
  from flax import nnx

  from jaxtag.models import registry
  from jaxtag.taggants import craft

  start = time.perf_counter()
  config = craft.CraftConfig(unroll=_unroll(args.unroll))
  trees = [registry.split_model(registry.create_model(
      "cnn", num_classes=NUM_CLASSES, channels=(8, 16), n_mels=32, rngs=nnx.Rngs(m)))
           for m in range(args.members)]
  clf = registry.PureModel(trees[0].graphdef, trees[0].other, NUM_CLASSES)
  ensemble = args.members > 1
  if ensemble:
    params = craft.stack_members([t.params for t in trees])
    stats = craft.stack_members([t.batch_stats for t in trees])
    grads_fn = craft.ensemble_key_gradients
  else:
    params, stats = trees[0].params, trees[0].batch_stats
    grads_fn = craft.key_gradients
  rng = np.random.default_rng(0)
  shape = (args.keys, args.poisons, SAMPLE_RATE)
  x = jnp.asarray(np.round(0.1 * rng.standard_normal(shape) * 32768) / 32768, jnp.float32)
  key_waves = jnp.asarray(0.1 * rng.standard_normal((args.keys, SAMPLE_RATE)), jnp.float32)
  key_labels = jnp.asarray(rng.integers(0, NUM_CLASSES, args.keys))
  g = jax.jit(lambda p, s, w, l: grads_fn(clf, p, s, w, l))(params, stats, key_waves, key_labels)
  targets = jax.nn.one_hot(jnp.repeat(key_labels[:, None], args.poisons, 1), NUM_CLASSES)
  inputs = craft.CraftInputs(x, targets, jnp.ones(shape[:2], jnp.float32),
                             craft.snr_scale(x, config.snr_db), g)
  step, tx = craft.make_craft_step(clf, config, keep=craft.leaf_keep(trees[0].params, ()),
                                   sample_rate=SAMPLE_RATE, ensemble=ensemble)
  u = craft.project(jax.random.uniform(jax.random.key(0), shape, minval=-0.5, maxval=0.5), x,
                    inputs.scale)
  state = craft.CraftState(
      u=u, opt_state=tx.init(u), step=jnp.zeros((), jnp.int32), best_u=jnp.zeros_like(u),
      best_loss=jnp.full((args.keys,), jnp.inf, jnp.float32),
      restart_losses=jnp.full((1, args.keys), jnp.nan, jnp.float32))
  print(f"jax {jax.__version__} jaxlib {jax.lib.__version__} backend {jax.default_backend()} "
        f"unroll {config.loop_unroll()!r} keys {args.keys} members {args.members}", flush=True)
  for i in range(args.steps):
    state, losses = step(state, inputs, params, stats, None, None, jax.random.key(1))
    loss = float(jnp.mean(losses))     # where the reported hang blocked
    print(f"step {i} loss {loss:.5f} at {time.perf_counter() - start:.1f} s", flush=True)
  print("OK", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
