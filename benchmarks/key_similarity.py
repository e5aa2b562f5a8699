"""How alike do the keys look to a model? Same-label key-gradient cosines of key families.

Taggants can only move a key's *own* label if the parameter step that lifts label y on key k does
not lift y on the other keys as much. For every key family (a ``KeySpec`` variation), this draws a
pool of keys and prints the mean pairwise cosine between their key gradients for one shared label
at a trained model's weights (eval mode), over the pool and over the ``--pick`` keys chosen
greedily to be the least alike. The numbers in benchmarks/RESULTS.md ("The keys look alike to the
model") come from this script.

  .venv/bin/python benchmarks/key_similarity.py --model workdirs/demo/surrogate \
      --key_file workdirs/demo/keys/keys.npz
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)

FAMILIES = {
    "spec of the key file": {},
    "bernoulli p=0.1 d=16 nearest": dict(distribution="bernoulli", p=0.1, d=16,
                                         interpolation="nearest"),
    "bernoulli p=0.05 d=8 nearest": dict(distribution="bernoulli", p=0.05, d=8,
                                         interpolation="nearest"),
    "uniform d=4 nearest": dict(distribution="uniform", d=4, interpolation="nearest"),
    "uniform d=2 nearest": dict(distribution="uniform", d=2, interpolation="nearest"),
}


def gradient_cosines(clf, params, batch_stats, waveforms, label: int, *, chunk: int = 16):
  """``(N, N)`` cosines between the key gradients of ``waveforms`` (N, T), all toward ``label``."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from jaxtag.taggants import alignment

  grads = jax.jit(lambda w: alignment.key_gradients(
      clf, params, batch_stats, w, jnp.full((w.shape[0],), label)))
  rows = []
  for i in range(0, len(waveforms), chunk):
    g = grads(jnp.asarray(waveforms[i:i + chunk]))
    rows.append(np.concatenate([np.asarray(x).reshape(x.shape[0], -1)
                                for x in jax.tree.leaves(g)], axis=1))
  flat = np.concatenate(rows).astype(np.float64)
  flat /= np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-30)
  return flat @ flat.T


def least_alike(cos, k: int) -> list[int]:
  """Greedy: start from the key least like the others, add the one whose largest cosine with the
  chosen keys is smallest, until ``k``."""
  import numpy as np
  n = len(cos)
  chosen = [int(np.argmin((cos.sum(1) - 1.0) / max(n - 1, 1)))]
  while len(chosen) < min(k, n):
    rest = [i for i in range(n) if i not in chosen]
    chosen.append(min(rest, key=lambda i: cos[i, chosen].max()))
  return chosen


def off_diagonal_mean(cos) -> float:
  import numpy as np
  return float(cos[~np.eye(len(cos), dtype=bool)].mean())


def main(argv=None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--model", required=True, help="a trained workdir (e.g. the surrogate)")
  parser.add_argument("--key_file", required=True, help="a key file: its spec is the baseline")
  parser.add_argument("--pool", type=int, default=105, help="keys drawn per family")
  parser.add_argument("--pick", type=int, default=10, help="keys chosen to be least alike")
  parser.add_argument("--labels", default="5,20", help="comma-separated labels to average over")
  parser.add_argument("--seed", type=int, default=100)
  parser.add_argument("--json", help="also write the records to this file")
  args = parser.parse_args(argv)

  import jax
  import numpy as np

  from jaxtag import train
  from jaxtag.taggants import alignment, keyfile, keys

  secret, _ = keyfile.load_keys(args.key_file)
  trained = train.restore_for_inference(args.model)
  clf, params, stats = alignment.split_trained(trained)
  labels = [int(x) for x in args.labels.split(",")]
  bad = [y for y in labels if not 0 <= y < clf.num_classes]
  if bad:
    parser.error(f"--labels {bad} outside the model's {clf.num_classes} classes")
  records = []
  for name, overrides in FAMILIES.items():
    spec = dataclasses.replace(secret.spec, num_keys=args.pool, **overrides)
    waves = np.asarray(keys.make_keys(jax.random.key(args.seed), spec,
                                      clf.num_classes).waveforms, np.float32)
    pool, picked = [], []
    for label in labels:
      cos = gradient_cosines(clf, params, stats, waves, label)
      chosen = least_alike(cos, args.pick)
      pool.append(off_diagonal_mean(cos))
      picked.append(off_diagonal_mean(cos[np.ix_(chosen, chosen)]))
    record = {"family": name, "overrides": overrides, "pool": args.pool,
              "pool_mean_cos": float(np.mean(pool)), "pick": args.pick,
              "picked_mean_cos": float(np.mean(picked))}
    print(f"{name:32s} mean same-label key-gradient cosine: pool of {args.pool} "
          f"{record['pool_mean_cos']:.3f}, {args.pick} least alike {record['picked_mean_cos']:.3f}",
          flush=True)
    records.append(record)
  if args.json:
    from jaxtag.audio import io as audio_io
    audio_io.write_text_atomic(args.json, json.dumps(records, indent=1))
  return records


if __name__ == "__main__":
  main()
