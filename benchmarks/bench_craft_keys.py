"""The per-key crafting step as the demo runs it, with its loops over keys rolled or unrolled.

``bench_craft.py`` times one group (the ``joint`` objective) of an AST against PyTorch. This one
times the step that ``launch.demo`` actually runs: the ``per_key`` objective (every key its own
poisons and cosine, a loop over keys inside the jitted step), the demo's ``cnn`` surrogate, 1 s
clips at 16 kHz, two augmented views per poison (time shift and gain), 16-bit quantisation in
the loss, optionally an ensemble of surrogates (a second loop, over members). Each
``CraftConfig.unroll`` setting is compiled and timed, the settings' repeats interleaved
(A B A B ...) so that a shared machine's drifting load hits them alike.

Unit: poison-sample-steps/s = keys x poisons per key / step time (each poison seen ``views``
times per step). FLOPs from XLA's cost analysis of the compiled step (a rolled loop's body is
counted once, so only the unrolled rows' FLOPs are the step's).

Commands (from the repository root)::

  nice -n 10 .venv/bin/python benchmarks/bench_craft_keys.py                 # 10 keys x 6, 1 member
  nice -n 10 .venv/bin/python benchmarks/bench_craft_keys.py --members 2     # the demo's ensemble
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:  # Run as a script: make `benchmarks` and `jaxtag` importable.
  sys.path.insert(0, _ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from benchmarks import harness  # noqa: E402
from jaxtag.models import registry  # noqa: E402
from jaxtag.taggants import craft  # noqa: E402

NUM_CLASSES = 35
SAMPLE_RATE = 16000
UNIT = "poison-sample-steps/s"


def parse_unroll(text: str) -> bool | int:
  """``true``/``false`` or an int >= 1."""
  low = text.strip().lower()
  if low in ("true", "false"):
    return low == "true"
  return int(low)


def make_step(*, model: str, keys: int, poisons: int, members: int, unroll: bool | int,
              seed: int = 0):
  """The jitted demo step for one ``unroll`` and a call that runs it on fixed random inputs.

  Returns:
    ``(compiled, call, num_params)``: the harness' compiled step, a no-argument call that runs
    one step (threading the donated state), and the surrogate's parameter count.
  """
  config = craft.CraftConfig(unroll=unroll)
  trees = []
  for m in range(members):
    split = registry.split_model(registry.create_model(model, num_classes=NUM_CLASSES,
                                                       rngs=nnx.Rngs(seed + m)))
    trees.append(split)
  clf = registry.PureModel(trees[0].graphdef, trees[0].other, NUM_CLASSES)
  ensemble = members > 1
  if ensemble:
    params = craft.stack_members([t.params for t in trees])
    stats = craft.stack_members([t.batch_stats for t in trees])
  else:
    params, stats = trees[0].params, trees[0].batch_stats
  rng = np.random.default_rng(seed)
  x = np.round(0.1 * rng.standard_normal((keys, poisons, SAMPLE_RATE)) * 32768) / 32768
  x = jnp.asarray(x, jnp.float32)
  key_waves = jnp.asarray(0.1 * rng.standard_normal((keys, SAMPLE_RATE)), jnp.float32)
  key_labels = jnp.asarray(rng.permutation(NUM_CLASSES)[:keys])
  grads_fn = craft.ensemble_key_gradients if ensemble else craft.key_gradients
  g = jax.jit(functools.partial(grads_fn, clf))(params, stats, key_waves, key_labels)
  targets = jax.nn.one_hot(jnp.repeat(key_labels[:, None], poisons, 1), NUM_CLASSES)
  weights = jnp.ones((keys, poisons), jnp.float32)
  inputs = craft.CraftInputs(x, targets, weights, craft.snr_scale(x, config.snr_db), g)
  keep = craft.leaf_keep(trees[0].params, ())
  step, tx = craft.make_craft_step(clf, config, keep=keep, sample_rate=SAMPLE_RATE,
                                   ensemble=ensemble)
  u = craft.project(jax.random.uniform(jax.random.key(seed), x.shape, minval=-0.5, maxval=0.5),
                    x, inputs.scale)
  state = craft.CraftState(u=u, opt_state=tx.init(u), step=jnp.zeros((), jnp.int32),
                           best_u=jnp.zeros_like(u), best_loss=jnp.full((keys,), jnp.inf),
                           restart_losses=jnp.full((1, keys), jnp.nan))
  key = jax.random.key(seed + 1)
  compiled = harness.compile_jax(step, state, inputs, params, stats, None, None, key)
  holder = [state]

  def call():
    holder[0], losses = compiled.executable(holder[0], inputs, params, stats, None, None, key)
    return losses

  num_params = int(sum(np.size(v) for v in jax.tree.leaves(trees[0].params)))
  return compiled, call, num_params


def run(*, model: str = "cnn", keys: int = 10, poisons: int = 6, members: int = 1,
        unrolls=(1, True), repeats: int = 5, warmup: int = 1, out: str | None = None
        ) -> list[dict]:
  """Compiles and times the step for every ``unroll``; returns (and appends) one record each."""
  env = harness.environment()
  device = jax.devices()[0]
  built = [make_step(model=model, keys=keys, poisons=poisons, members=members, unroll=u)
           for u in unrolls]
  timings = harness.time_interleaved([(call, harness.block_until_ready) for _, call, _ in built],
                                     repeats=repeats, warmup=warmup)
  records = []
  for unroll, (compiled, _, num_params), timing in zip(unrolls, built, timings):
    memory = harness.xla_memory(compiled.executable)
    records.append(harness.make_record(
        bench="craft_step_per_key", impl="jaxtag", timing=timing, items_per_call=keys * poisons,
        unit=UNIT, device=harness.jax_device_info(device), env=env, precision="fp32",
        flops_per_call=harness.xla_flops(compiled.executable),
        flops_source="xla cost analysis (a rolled loop's body counted once)",
        compile_s=compiled.compile_s, lower_s=compiled.lower_s,
        memory_bytes=memory["footprint_bytes"] if memory else None,
        memory_source="xla memory analysis (per device)",
        device_peak_bytes=harness.device_peak_bytes(device), model=model, keys=keys,
        poisons_per_key=poisons, members=members, views=craft.CraftConfig().augment.views,
        unroll=unroll, num_params=num_params))
  harness.append_jsonl(out, records)
  return records


COLUMNS = (
    ("model", lambda r: f"{r['model']} x{r['members']}"),
    ("keys x poisons", lambda r: f"{r['keys']} x {r['poisons_per_key']}"),
    ("unroll", lambda r: str(r["unroll"])),
    (UNIT + " median (min-max)", harness.throughput_cell),
    ("step s", lambda r: harness.fmt(r["median_s"], ".3f")),
    ("compile s", lambda r: harness.fmt(r["compile_s"], ".1f")),
    ("GFLOP/step", lambda r: harness.fmt((r["flops_per_call"] or 0) / 1e9, ".3g")),
    ("memory", lambda r: harness.fmt_bytes(r["memory_bytes"])),
)


def main(argv=None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="cnn", help="registry name of the surrogate")
  parser.add_argument("--keys", type=int, default=10)
  parser.add_argument("--poisons", type=int, default=6, help="poisons per key")
  parser.add_argument("--members", type=int, default=1, help="surrogates in the ensemble")
  parser.add_argument("--unroll", type=parse_unroll, nargs="+", default=[1, True],
                      help="CraftConfig.unroll settings to compare (ints, true, false)")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--warmup", type=int, default=1)
  parser.add_argument("--out", default="benchmarks/results.jsonl",
                      help="JSON-lines file to append to ('' = none)")
  args = parser.parse_args(argv)
  env = harness.environment()
  print(f"per-key craft step, {args.model} x{args.members}, {args.keys} keys x {args.poisons} "
        f"poisons, on {harness.jax_device_info(jax.devices()[0])['device']}; versions "
        f"{env['versions']}; load {env['load_average_1m']}", flush=True)
  records = run(model=args.model, keys=args.keys, poisons=args.poisons, members=args.members,
                unrolls=tuple(args.unroll), repeats=args.repeats, warmup=args.warmup,
                out=args.out or None)
  print(harness.format_table(records, COLUMNS))
  base = records[0]["median_s"]
  for r in records[1:]:
    print(f"unroll={r['unroll']}: {base / r['median_s']:.2f}x the speed of unroll="
          f"{records[0]['unroll']}")
  return records


if __name__ == "__main__":
  main()
