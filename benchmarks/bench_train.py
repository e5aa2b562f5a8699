"""Train-step throughput (samples/s) of ``jaxtag.train``'s compiled step, per model.

The step is the one the training loop runs: ``jaxtag.train.train_step`` jitted by
``jit_train_step`` for the ``step_signature`` of a mesh over every device (state replicated and
donated, batch split over the data axis), AdamW with its cosine schedule, no augmentation.
Batches are random 1 s clips at 16 kHz. Compile time is reported apart; steady state is the
median (and min-max) of repeated steps after warm-up.

Commands (from the repository root)::

  nice -n 10 .venv/bin/python benchmarks/bench_train.py                     # CPU: cnn, ast_tiny/2
  python3 benchmarks/bench_train.py --models ast_base --batch 64 128 --repeats 10   # GPU
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import harness  # noqa: E402
from jaxtag import sharding  # noqa: E402
from jaxtag.train import state as state_lib  # noqa: E402
from jaxtag.train import steps  # noqa: E402
from jaxtag.train.augment import AugmentConfig  # noqa: E402
from jaxtag.train.optim import OptimConfig, make_optimizer  # noqa: E402

NUM_CLASSES = 35
SAMPLE_RATE = 16000
UNIT = "samples/s"


def parse_model(text: str) -> tuple[str, dict]:
  """``"ast_tiny:depth=2,dtype=..."`` -> ``("ast_tiny", {"depth": 2})`` (values read as JSON
  where they parse, else kept as strings)."""
  name, _, rest = text.partition(":")
  overrides = {}
  for item in filter(None, rest.split(",")):
    key, sep, value = item.partition("=")
    if not sep:
      raise ValueError(f"Model option {item!r} in {text!r} is not key=value.")
    try:
      overrides[key] = json.loads(value)
    except json.JSONDecodeError:
      overrides[key] = value
  return name, overrides


def run_one(model: str, batch: int, *, mesh, env, repeats: int, warmup: int, iters: int,
            seed: int = 0, phase=harness.no_phase, report=None) -> dict:
  """One record: the compiled train step of ``model`` on a global ``batch``; ``phase(name)``
  wraps each part (state, lowering, compiling, timing) and ``report(line)`` hears each timed
  step (``harness.time_calls``), for progress reports."""
  name, overrides = parse_model(model)
  spec = state_lib.ModelSpec(name, NUM_CLASSES, overrides)
  tx, schedule = make_optimizer(OptimConfig(), 10_000)
  abstract, _ = state_lib.abstract_train_state(spec, tx, mesh)
  with phase(f"creating the {name} train state"):
    state, parts = state_lib.create_train_state(spec, tx, jax.random.key(seed), mesh)
    jax.block_until_ready(state)
  sig = state_lib.step_signature(mesh, abstract, batch_size=batch, eval_batch_size=batch,
                                 num_samples=SAMPLE_RATE)
  step = state_lib.jit_train_step(functools.partial(
      steps.train_step, parts=parts, tx=tx, schedule=schedule, augment=AugmentConfig(),
      sample_rate=SAMPLE_RATE), sig)
  compiled = harness.compile_jax(step, sig.state, sig.train_batch, sig.key, phase=phase)
  rng = np.random.default_rng(seed)
  host = {"audio": (0.1 * rng.standard_normal((batch, SAMPLE_RATE))).astype(np.float32),
          "label": rng.integers(0, NUM_CLASSES, batch).astype(np.int32),
          "index": np.arange(batch, dtype=np.int32)}
  data = {k: jax.device_put(v, sig.train_batch[k].sharding) for k, v in host.items()}
  key = jax.device_put(jax.random.key(seed), sharding.replicated(mesh))
  holder = [state]

  def call():
    holder[0], metrics = compiled.executable(holder[0], data, key)
    return metrics

  with phase(f"timing {warmup} + {repeats} x {iters} steps"):
    timing = harness.time_calls(call, repeats=repeats, warmup=warmup, iters=iters,
                                report=report)
  memory = harness.xla_memory(compiled.executable)
  device = mesh.devices.flat[0]
  params = int(sum(np.size(x) for x in jax.tree.leaves(holder[0].params)))
  return harness.make_record(
      bench="train_step", impl="jaxtag", timing=timing, items_per_call=batch, unit=UNIT,
      device=harness.jax_device_info(device), env=env, precision="fp32",
      flops_per_call=harness.xla_flops(compiled.executable), flops_source="xla cost analysis",
      compile_s=compiled.compile_s, lower_s=compiled.lower_s,
      memory_bytes=memory["footprint_bytes"] if memory else None,
      memory_source="xla memory analysis (per device)",
      device_peak_bytes=harness.device_peak_bytes(device), model=model, batch=batch,
      num_devices=mesh.size, num_params=params)


COLUMNS = (
    ("model", lambda r: r["model"]),
    ("batch", lambda r: str(r["batch"])),
    ("devices", lambda r: str(r["num_devices"])),
    (UNIT + " median (min-max)", harness.throughput_cell),
    ("step ms", lambda r: harness.fmt(1e3 * r["median_s"], ".1f")),
    ("compile s", lambda r: harness.fmt(r["compile_s"], ".1f")),
    ("TFLOP/s", lambda r: harness.fmt(r["tflops_per_s"], ".3g")),
    ("% peak", lambda r: harness.fmt(r["pct_peak"], ".1f")),
    ("memory", lambda r: harness.fmt_bytes(r["memory_bytes"])),
)


def main(argv=None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", nargs="+", default=["cnn", "ast_tiny:depth=2"],
                      help="registry names, with options as name:key=value,key=value")
  parser.add_argument("--batch", type=int, nargs="+", default=[32])
  parser.add_argument("--devices", type=int, default=None, help="mesh size (default: all)")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--iters", type=int, default=2)
  parser.add_argument("--out", default="benchmarks/results.jsonl",
                      help="JSON-lines file to append to ('' = none)")
  args = parser.parse_args(argv)
  mesh = sharding.make_mesh(args.devices)
  env = harness.environment()
  print(f"train_step on {mesh.size} x {harness.jax_device_info(mesh.devices.flat[0])['device']}, "
        f"1 s clips at 16 kHz, {NUM_CLASSES} classes; {args.repeats} repeats x {args.iters} "
        f"steps after {args.warmup} warm-up; versions {env['versions']}; load "
        f"{env['load_average_1m']}", flush=True)
  records = []
  for model in args.models:
    for batch in args.batch:
      record = run_one(model, batch, mesh=mesh, env=env, repeats=args.repeats,
                       warmup=args.warmup, iters=args.iters)
      records.append(record)
      harness.append_jsonl(args.out, [record])
      print(f"  {model} batch {batch}: {record['throughput']:.1f} {UNIT}", flush=True)
  print(harness.format_table(records, COLUMNS))
  return records


if __name__ == "__main__":
  main()
