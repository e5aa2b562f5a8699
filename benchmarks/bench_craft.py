"""Crafting-step throughput: jaxtag's ``craft_step`` against a PyTorch + transformers reference.

One gradient-alignment crafting step on a batch of B poisons, on both sides:

    loss(u) = 1 - cos( sum_i grad_theta CE(f(x_i + u_i * s_i), y_i),  g_key )

then the gradient of ``loss`` w.r.t. the perturbation ``u``, a sign-Adam update and the SNR/box
projection. ``f`` is an Audio Spectrogram Transformer on 128 x 128 fbank features with 35
classes; ``g_key`` is a fixed key gradient (all parameters, 4 key inputs).

* jaxtag: the real ``jaxtag.taggants.craft.craft_step`` (one group: the ``joint`` objective),
  jitted with its state donated, as ``craft.craft`` runs it. The pure model's ``features`` is the
  identity (a reshape of the flattened fbank), so both sides see the same input features; no
  augmentation (one view, no shift or gain) and no 16-bit quantisation.
* PyTorch (``bench_craft_torch.py``, imported only when that side runs):
  ``transformers.ASTForAudioClassification`` with math attention (fused kernels have no double
  backward) holding jaxtag's weights, its step written as a PyTorch user would
  (``torch.autograd.grad`` with ``create_graph=True``, ``torch.optim.Adam`` on the sign).
  Optional: without torch/transformers the JAX side runs alone and says so.

Unit: poison-sample-steps/s (one poison sample through one crafting step) = B / step time.
On CPU the two sides' timed repeats alternate (A B A B ...), so that a shared machine's drifting
load hits both alike; on GPU all PyTorch settings run first, then all jaxtag ones.
Precisions: ``fp32`` (no TF32 anywhere), ``tf32`` (TF32 matmuls/convs), ``bf16`` (jaxtag: model
``dtype=bfloat16`` with float32 parameters; PyTorch: ``torch.autocast(bfloat16)``; both leave
TF32 on for what stays float32). Every record goes to ``--out`` (JSONL) as it is measured.

Commands (from the repository root)::

  # CPU: small AST (hidden 192, 2 layers), batch 8, fp32; the jaxtag/PyTorch ratio on one
  # pinned core (both sides then use one thread; see RESULTS.md for why)
  taskset -c 1 nice -n 10 .venv/bin/python benchmarks/bench_craft.py --cpu
  # GPU: AST-base, batch 32/64/128, fp32 + tf32 + bf16, both sides (RESULTS.md has the device
  # command with the wheels that the GPU image lacks)
  python3 benchmarks/bench_craft.py --gpu
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import sys
from collections.abc import Callable
from typing import Any, NamedTuple

# PyTorch shares the GPU with JAX in this process: JAX must not take 75% of it up front.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:  # Run as a script: make `benchmarks` and `jaxtag` importable.
  sys.path.insert(0, _ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from benchmarks import harness  # noqa: E402
from jaxtag import models  # noqa: E402
from jaxtag.taggants import craft  # noqa: E402

FRAMES = MELS = 128
NUM_CLASSES = 35
NUM_KEYS = 4
SAMPLE_RATE = 16000   # unused by the step without augmentation; craft_step requires one
SNR_DB = 40.0
UNIT = "poison-sample-steps/s"
INPUT_NOTE = "128x128 fbank features fed to both sides (jaxtag models.PureModel.features = reshape)"

# AST sizes: "base" is the AST paper's model (85.4M parameters with a 35-class head).
SIZES = {
    "base": dict(width=768, depth=12, num_heads=12, mlp_dim=3072),
    "small": dict(width=192, depth=2, num_heads=3, mlp_dim=768),
    "smoke": dict(width=64, depth=1, num_heads=2, mlp_dim=128),
}
PRECISIONS = ("fp32", "tf32", "bf16")
# jax.default_matmul_precision per mode: what float32 dots/convs run at.
_JAX_MATMUL = {"fp32": "float32", "tf32": "tensorfloat32", "bf16": "tensorfloat32"}
MODES = {
    "smoke": dict(size="smoke", batch=[2], precision=["fp32"], repeats=1, warmup=1, iters=1),
    "cpu": dict(size="small", batch=[8], precision=["fp32"], repeats=5, warmup=1, iters=1),
    "gpu": dict(size="base", batch=[32, 64, 128], precision=list(PRECISIONS), repeats=5,
                warmup=2, iters=3),
}


# --------------------------------------------------------------------------------------------
# The shared problem
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Problem:
  """The inputs both sides start from (host arrays; features flattened to ``T = 128 * 128``).

  Attributes:
    x: float32 ``(B, T)`` poison features in [-0.99, 0.99] (the projection's box is [-1, 1]).
    labels: int32 ``(B,)``.
    scale: float32 ``(B,)`` perturbation budget per poison (``craft.snr_scale``).
    u0: float32 ``(B, T)`` the starting perturbation in budget units, already projected.
    key_x: float32 ``(K, T)`` key features; key_labels: int32 ``(K,)``.
  """

  x: np.ndarray
  labels: np.ndarray
  scale: np.ndarray
  u0: np.ndarray
  key_x: np.ndarray
  key_labels: np.ndarray


def make_problem(batch: int, *, seed: int = 0, snr_db: float = SNR_DB) -> Problem:
  """Random fbank-like features (normalised AST features are roughly N(0, 0.35)) and labels."""
  rng = np.random.default_rng(seed)
  t = FRAMES * MELS
  x = np.clip(0.35 * rng.standard_normal((batch, t)), -0.99, 0.99).astype(np.float32)
  key_x = np.clip(0.35 * rng.standard_normal((NUM_KEYS, t)), -0.99, 0.99).astype(np.float32)
  scale = np.array(craft.snr_scale(jnp.asarray(x), snr_db), np.float32)  # writable copies
  u = rng.uniform(-0.5, 0.5, (batch, t)).astype(np.float32)
  u0 = np.array(craft.project(jnp.asarray(u), jnp.asarray(x), jnp.asarray(scale)), np.float32)
  return Problem(x=x, labels=rng.integers(0, NUM_CLASSES, batch).astype(np.int32), scale=scale,
                 u0=u0, key_x=key_x,
                 key_labels=rng.integers(0, NUM_CLASSES, NUM_KEYS).astype(np.int32))


def craft_config(snr_db: float = SNR_DB) -> craft.CraftConfig:
  """The craft settings whose step both sides compute: no augmentation, no quantisation."""
  return craft.CraftConfig(
      objective="joint", quantize=False, snr_db=snr_db,
      augment=craft.CraftAugment(views=1, max_shift_seconds=0.0, max_gain_db=0.0))


# --------------------------------------------------------------------------------------------
# jaxtag
# --------------------------------------------------------------------------------------------


def jax_model(size: str, precision: str = "fp32", *, seed: int = 0) -> nnx.Module:
  """jaxtag's AST of ``size`` for 128 x 128 features (float32 parameters; bf16 compute for
  ``precision="bf16"``). The parameters do not depend on ``precision``."""
  dtype = jnp.bfloat16 if precision == "bf16" else None
  return models.create_model("ast_base", num_classes=NUM_CLASSES, rngs=nnx.Rngs(seed),
                             **SIZES[size], max_length=FRAMES, num_mel_bins=MELS, dtype=dtype)


class FeatureInput(models.PureModel):
  """The AST as a pure model whose ``features`` maps flattened fbank features
  ``(B, 128 * 128)`` to ``(B, 128, 128)`` (no front end: both sides get the same features)."""

  def features(self, params, batch_stats, waveforms):
    del params, batch_stats
    return waveforms.reshape(waveforms.shape[:-1] + (FRAMES, MELS))


def feature_classifier(model: nnx.Module) -> tuple[models.PureModel, nnx.State, nnx.State]:
  """``(pure model, params, batch_stats)`` of ``model`` fed fbank features (FeatureInput)."""
  split = models.split_model(model)
  return (FeatureInput(split.graphdef, split.other, NUM_CLASSES), split.params,
          split.batch_stats)


def jax_inputs(clf: models.PureModel, params, batch_stats, problem: Problem) -> craft.CraftInputs:
  """One group (leading axis 1) of the problem, with its key gradient."""
  g_key = jax.jit(functools.partial(craft.key_gradients, clf, objective="joint"))(
      params, batch_stats, jnp.asarray(problem.key_x), jnp.asarray(problem.key_labels))
  batch = problem.x.shape[0]
  return craft.CraftInputs(
      x=jnp.asarray(problem.x)[None],
      targets=jax.nn.one_hot(jnp.asarray(problem.labels), NUM_CLASSES, dtype=jnp.float32)[None],
      weights=jnp.ones((1, batch), jnp.float32), scale=jnp.asarray(problem.scale)[None],
      key_grads=g_key)


def jax_state(problem: Problem, tx, config: craft.CraftConfig) -> craft.CraftState:
  """A fresh crafting state holding ``problem.u0``."""
  u = jnp.asarray(problem.u0)[None]
  return craft.CraftState(u=u, opt_state=tx.init(u), step=jnp.zeros((), jnp.int32),
                          best_u=jnp.zeros_like(u), best_loss=jnp.full((1,), jnp.inf),
                          restart_losses=jnp.full((config.restarts, 1), jnp.nan))


def jax_step(model: nnx.Module, problem: Problem, *, precision: str = "fp32", seed: int = 0,
             phase=harness.no_phase):
  """jaxtag's crafting step compiled for ``problem``; ``phase(name)`` wraps each part (key
  gradient, lowering, compiling) for progress reports.

  Returns:
    ``(harness.Compiled, call)``: ``call()`` runs one step on a state it carries between calls
    and returns that step's (pre-update) losses ``(1,)``; ``call.state()`` reads the state.
  """
  config = craft_config()
  clf, params, batch_stats = feature_classifier(model)
  step, tx = craft.make_craft_step(clf, config, sample_rate=SAMPLE_RATE)
  with jax.default_matmul_precision(_JAX_MATMUL[precision]):
    with phase("key gradient (compile + run)"):
      inputs = jax.block_until_ready(jax_inputs(clf, params, batch_stats, problem))
    holder = [jax_state(problem, tx, config)]
    key = jax.random.key(seed)
    compiled = harness.compile_jax(step, holder[0], inputs, params, batch_stats, None, None, key,
                                   phase=phase)

  def call():
    holder[0], losses = compiled.executable(holder[0], inputs, params, batch_stats, None, None,
                                            key)
    return losses

  call.state = lambda: holder[0]
  return compiled, call


def jax_loss_and_grad(model: nnx.Module, problem: Problem) -> tuple[float, np.ndarray]:
  """The alignment loss at ``u0`` and its gradient w.r.t. ``u`` (``craft.group_loss``)."""
  clf, params, batch_stats = feature_classifier(model)
  inputs = jax_inputs(clf, params, batch_stats, problem)
  loss_fn = functools.partial(craft.group_loss, clf=clf, params=params, batch_stats=batch_stats,
                              config=craft_config(), keep=None, sample_rate=SAMPLE_RATE,
                              pool=None, pool_targets=None, augment=False)
  g_key = jax.tree.map(lambda a: a[0], inputs.key_grads)
  loss, grad = jax.jit(jax.value_and_grad(loss_fn))(
      jnp.asarray(problem.u0), inputs.x[0], inputs.targets[0], inputs.weights[0],
      inputs.scale[0], g_key, None)
  return float(loss), np.asarray(grad)


class Case(NamedTuple):
  """One implementation at one setting, ready to time: ``call()`` runs a step, ``sync(result)``
  waits for it, ``finish(timing)`` makes the record (after the timing: it may run a step)."""
  call: Callable[[], Any]
  sync: Callable[[Any], None]
  finish: Callable[[harness.Timing], dict]


def prepare_jax(size: str, precision: str, batch: int, *, device, env, seed: int = 0,
                model: nnx.Module | None = None, phase=harness.no_phase) -> Case:
  """jaxtag's step compiled and run once; ``model`` (float32 compute) is reused unless
  ``precision`` is bf16. ``phase(name)`` wraps each part for progress reports."""
  with jax.default_device(device):
    if model is None or precision == "bf16":
      with phase(f"building AST-{size}"):
        model = jax_model(size, precision, seed=seed)
    compiled, call = jax_step(model, make_problem(batch, seed=seed), precision=precision,
                              seed=seed, phase=phase)
    with phase("first step"):   # the first step is also the first warm-up call
      first_loss = float(np.asarray(call())[0])
  memory = harness.xla_memory(compiled.executable)

  def finish(timing: harness.Timing) -> dict:
    return harness.make_record(
        bench="craft_step", impl="jaxtag", timing=timing, items_per_call=batch, unit=UNIT,
        device=harness.jax_device_info(device), env=env, precision=precision,
        flops_per_call=harness.xla_flops(compiled.executable),
        flops_source="xla cost analysis", compile_s=compiled.compile_s,
        lower_s=compiled.lower_s, memory_bytes=memory["footprint_bytes"] if memory else None,
        memory_source="xla memory analysis (args+outputs+temps-aliased)",
        device_peak_bytes=harness.device_peak_bytes(device), size=size, batch=batch,
        num_params=_num_params(model), input=INPUT_NOTE, first_loss=first_loss,
        matmul_precision=_JAX_MATMUL[precision])

  return Case(call, harness.block_until_ready, finish)


def _num_params(model) -> int:
  return int(sum(np.size(x) for x in jax.tree.leaves(nnx.state(model, nnx.Param))))


# --------------------------------------------------------------------------------------------
# Table, driver (the PyTorch side is bench_craft_torch.py, imported only when it runs)
# --------------------------------------------------------------------------------------------


def torch_missing() -> str | None:
  """Why the PyTorch side cannot run (None when torch and transformers import)."""
  try:
    import torch  # noqa: F401
    import transformers  # noqa: F401
  except ImportError as e:
    return (f"PyTorch side skipped: {e.name} is not installed (pip install torch transformers); "
            "running the jaxtag side alone.")
  return None


def add_ratios(records: list[dict]) -> None:
  """Adds ``ratio_vs_pytorch`` (median) and its range to each jaxtag record with a twin."""
  torch_rows = {(r["size"], r["precision"], r["batch"]): r for r in records
                if r["impl"] == "pytorch"}
  for r in records:
    twin = torch_rows.get((r["size"], r["precision"], r["batch"]))
    if r["impl"] == "jaxtag" and twin:
      r["ratio_vs_pytorch"] = r["throughput"] / twin["throughput"]
      r["ratio_min"] = r["throughput_min"] / twin["throughput_max"]
      r["ratio_max"] = r["throughput_max"] / twin["throughput_min"]


COLUMNS = (
    ("impl", lambda r: r["impl"]),
    ("size", lambda r: r["size"]),
    ("prec", lambda r: r["precision"]),
    ("batch", lambda r: str(r["batch"])),
    (UNIT + " median (min-max)", harness.throughput_cell),
    ("step ms", lambda r: harness.fmt(1e3 * r["median_s"], ".1f")),
    ("compile s", lambda r: harness.fmt(r["compile_s"], ".1f")),
    ("GFLOP/sample", lambda r: harness.fmt(
        r["flops_per_call"] / r["batch"] / 1e9 if r["flops_per_call"] else None, ".2f")),
    ("TFLOP/s", lambda r: harness.fmt(r["tflops_per_s"], ".3g")),
    ("% peak", lambda r: harness.fmt(r["pct_peak"], ".1f")),
    ("memory", lambda r: harness.fmt_bytes(r["memory_bytes"])),
    ("x PyTorch", lambda r: (f"{r['ratio_vs_pytorch']:.2f} ({r['ratio_min']:.2f}-"
                             f"{r['ratio_max']:.2f})" if "ratio_vs_pytorch" in r else "")),
)


def _emit(record: dict, out: str | None, records: list[dict]) -> None:
  records.append(record)
  harness.append_jsonl(out, [record])
  print(f"  {record['impl']} {record['precision']} batch {record['batch']}: "
        f"{record['throughput']:.2f} {UNIT} (median of {record['repeats']})", flush=True)


def run(*, size: str, batches, precisions, repeats: int, warmup: int, iters: int,
        side: str = "both", gpu: bool = False, interleave: bool | None = None,
        out: str | None = None, seed: int = 0, check: bool = True) -> dict:
  """Runs the comparison; returns ``{"records", "parity", "torch_note"}``.

  With ``interleave`` (default: on CPU) the two sides of each setting are timed in alternating
  repeats (``harness.time_interleaved``); otherwise every PyTorch setting runs first, then every
  jaxtag one, so that on a GPU PyTorch's cached memory is released before JAX's pool grows.
  """
  device = jax.devices()[0] if gpu else jax.devices("cpu")[0]
  if gpu and device.platform != "gpu":
    raise SystemExit(f"--gpu: JAX sees no GPU (default device {device}); use --cpu.")
  if not gpu and "tf32" in precisions:
    print("tf32 is a GPU mode (CPUs have no TF32); dropping it.")
    precisions = [p for p in precisions if p != "tf32"]
  interleave = (not gpu) if interleave is None else interleave
  env = harness.environment()
  note = torch_missing() if side in ("both", "torch") else None
  if note:
    print(note)
  records: list[dict] = []
  result = {"records": records, "parity": None, "torch_note": note}
  settings = [(p, b) for p in precisions for b in batches]
  timing = dict(repeats=repeats, warmup=max(warmup - 1, 0), iters=iters)  # 1 step already ran
  with jax.default_device(device):
    model = jax_model(size, seed=seed)
  jax_case = lambda p, b: prepare_jax(size, p, b, device=device, env=env, seed=seed, model=model)
  use_torch, use_jax = side in ("both", "torch") and not note, side in ("both", "jax")
  if use_torch:
    from benchmarks import bench_craft_torch as reference  # Needs torch: only when it runs.
    torch_dev = "cuda" if gpu else "cpu"
    hf = reference.torch_model(model, size, torch_dev)
    if check:
      result["parity"] = reference.check_parity(model, hf, jax_device=device,
                                                torch_device=torch_dev, seed=seed)
    torch_case = lambda p, b: reference.prepare_torch(hf, size, p, b, device=torch_dev, env=env,
                                                      seed=seed)
    if interleave and use_jax:
      for p, b in settings:
        cases = [torch_case(p, b), jax_case(p, b)]
        timings = harness.time_interleaved([(c.call, c.sync) for c in cases], **timing)
        for c, t in zip(cases, timings):
          _emit(c.finish(t), out, records)
      use_jax = False
    else:
      for p, b in settings:
        c = torch_case(p, b)
        _emit(c.finish(harness.time_calls(c.call, sync=c.sync, **timing)), out, records)
    del hf, torch_case
    reference.release_memory(torch_dev)
  if use_jax:
    for p, b in settings:
      c = jax_case(p, b)
      _emit(c.finish(harness.time_calls(c.call, sync=c.sync, **timing)), out, records)
  add_ratios(records)
  return result


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  mode = parser.add_mutually_exclusive_group()
  for name in MODES:
    mode.add_argument(f"--{name}", dest="mode", action="store_const", const=name,
                      help=f"preset: {MODES[name]}")
  parser.add_argument("--size", choices=sorted(SIZES), help="AST size (overrides the preset)")
  parser.add_argument("--batch", type=int, nargs="+", help="poisons per step")
  parser.add_argument("--precision", nargs="+", choices=PRECISIONS)
  parser.add_argument("--repeats", type=int, help="timed repeats")
  parser.add_argument("--warmup", type=int, help="untimed steps first (>= 1)")
  parser.add_argument("--iters", type=int, help="steps per timed repeat")
  parser.add_argument("--side", choices=("both", "jax", "torch"), default="both")
  parser.add_argument("--no_check", action="store_true", help="skip the loss/gradient parity")
  parser.add_argument("--interleave", choices=("auto", "yes", "no"), default="auto",
                      help="alternate the two sides' timed repeats (auto: on CPU only)")
  parser.add_argument("--compilation_cache", default="",
                      help="persistent XLA cache folder (then compile s reads the cache)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", default="benchmarks/results.jsonl",
                      help="JSON-lines file to append to ('' = none)")
  args = parser.parse_args(argv)
  name = args.mode or ("gpu" if jax.default_backend() == "gpu" else "cpu")
  preset = dict(MODES[name])
  for key in ("size", "batch", "precision", "repeats", "warmup", "iters"):
    if getattr(args, key) is not None:
      preset[key] = getattr(args, key)
  if args.compilation_cache:
    jax.config.update("jax_compilation_cache_dir", args.compilation_cache)
  env = harness.environment()
  print(f"craft_step, mode {name}: AST-{preset['size']} {SIZES[preset['size']]}, "
        f"{NUM_CLASSES} classes, {INPUT_NOTE}; batches {preset['batch']}, precisions "
        f"{preset['precision']}, {preset['repeats']} repeats x {preset['iters']} steps after "
        f"{preset['warmup']} warm-up; versions {env['versions']}; {env['host_cpus_usable']} of "
        f"{env['host_cpus']} CPUs usable, load {env['load_average_1m']}", flush=True)
  result = run(size=preset["size"], batches=preset["batch"], precisions=preset["precision"],
               repeats=preset["repeats"], warmup=max(preset["warmup"], 1),
               iters=preset["iters"], side=args.side, gpu=name == "gpu",
               interleave={"auto": None, "yes": True, "no": False}[args.interleave], out=args.out,
               seed=args.seed, check=not args.no_check)
  records = result["records"]
  if records:
    devices = sorted({r["device"] for r in records})
    print(f"\n{records[0]['date']}; devices: {', '.join(devices)}")
    print(harness.format_table(records, COLUMNS))
  if args.out:
    print(f"appended {len(records)} records to {args.out}")
  return result


if __name__ == "__main__":
  # Run as a script this file is `__main__`; bench_craft_torch imports `benchmarks.bench_craft`,
  # so run that module's main, and both sides share one copy of the problem's definitions.
  from benchmarks import bench_craft
  bench_craft.main()
