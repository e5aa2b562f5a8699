r"""The device check: one command, sized for a 15-minute GPU lease, that cannot go silent.

Stages, each in its own process under its own time limit (the total is capped by ``--budget_s``,
8 minutes by default), in this order:

  env                   versions, devices, XLA flags, and a bf16 matrix product's TFLOP/s (the
                        measured ceiling beside the datasheet's)
  craft_jax             jaxtag's AST-base crafting step, bf16, one batch: model build, key
                        gradient, lowering and compiling timed apart from the step
  craft_jax_cached      the same program again, compiled from the persistent cache that
                        ``craft_jax`` filled (what a second run of a user's job pays)
  craft_jax_noautotune  the same with ``--xla_gpu_autotune_level=0`` (no GEMM/fusion
                        autotuning): compile time against kernel speed (only when --stages
                        names it: on the H200 its steps were far too slow, RESULTS)
  craft_torch           the PyTorch + transformers reference of the same step (bench_craft_torch)
  train_jax             the AST-base train step (bench_train), bf16
  chain                 the taggants chain (``launch.demo``) at a GPU-sized config

Every stage prints a timestamped line when it starts and ends, and while it runs a heartbeat
line every ``--heartbeat_s`` naming the phase it is in ("... still compiling (45 s)"). A stage that runs
past its limit first gets SIGUSR1, which makes Python print every thread's stack (so the log says
where it was: lowering, XLA compile, a device wait), then SIGKILL; the next stage still runs.
Everything lands in ``--out_dir``: ``gpu_check.log`` (the whole output), ``records.jsonl``
(harness records, one per measurement) and ``summary.json`` (each stage's status, seconds and
result). The parent process uses the standard library only, so it runs (and installs the
carried wheels, ``--wheels``) before anything heavy is imported.

Commands (from the repository root)::

  # CPU, tiny sizes (tests/test_gpu_check.py runs this), about 2 minutes on 2 cores:
  .venv/bin/python benchmarks/gpu_check.py --tiny --out_dir /tmp/gpu_check
  # the GPU lease: fetch the wheels the image lacks once, here (BUILD.md lists them)
  benchmarks/fetch_gpu_wheels.sh
  # then one device call, carry [".whl"], timeout_s 560 (the 480 s budget and the set-up):
  PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --wheels .whl --out_dir $OUT
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # Run as a script: make `benchmarks` and `jaxtag` importable.
  sys.path.insert(0, str(ROOT))

from benchmarks.supervise import Log, Phases, emit_result, supervise, write_atomic  # noqa: E402

# Modules jaxtag needs that the GPU image lacks (BUILD.md); their wheels travel in --wheels.
CARRIED = ("grain", "array_record", "portpicker", "soundfile", "cffi", "pycparser",
           "ml_collections", "espeakng_loader")


@dataclasses.dataclass(frozen=True)
class Stage:
  """One stage: its limits (seconds, full and tiny mode) and extra environment."""
  name: str
  limit_s: float
  tiny_limit_s: float
  env: tuple[tuple[str, str], ...] = ()
  requires: str | None = None   # a stage that must have finished first


# Limits: the total budget (480 s) caps them all, so the chain, last, gets what is left (at most
# its own limit); a cached compile needs the cold one to have finished. craft_jax's 200 s: the
# H200 run of 2026-12-04 was still in XLA's autotuner after 117 s of compiling (RESULTS).
STAGES = (
    Stage("env", 30, 60),
    Stage("craft_jax", 200, 120),
    Stage("craft_jax_cached", 45, 60, requires="craft_jax"),
    Stage("craft_jax_noautotune", 90, 90,
          env=(("XLA_FLAGS", "--xla_gpu_autotune_level=0"),)),
    Stage("craft_torch", 50, 90, env=(("JAX_PLATFORMS", "cpu"),)),
    Stage("train_jax", 75, 90),
    Stage("chain", 150, 240),
)
STAGE_NAMES = tuple(s.name for s in STAGES)
# Run unless --stages says otherwise: craft_jax_noautotune is a measured negative result on the
# H200 (24 s compile, but a 10.5 s first step at batch 8: RESULTS), so it runs only when asked.
DEFAULT_STAGES = tuple(n for n in STAGE_NAMES if n != "craft_jax_noautotune")
# Sizes per mode: the GPU problem, and a CPU one small enough for the test suite.
SIZES = {
    "full": dict(ast="base", precision="bf16", batch=128, train_model="ast_base:dtype=bfloat16",
                 train_batch=128, matmul=8192, repeats=5, warmup=2, iters=3),
    "tiny": dict(ast="smoke", precision="fp32", batch=2, train_model="ast_tiny:depth=1",
                 train_batch=2, matmul=512, repeats=2, warmup=1, iters=1),
}
# The chain: launch.demo on the default corpus (5,600 training clips) with one surrogate, 100
# crafting steps and 2 epochs per model on a GPU; the tiny corpus, one epoch per model on CPU.
CHAIN = {
    "full": ["--config=launch/configs/demo.py", "--config.num_surrogates=1",
             "--config.craft.craft.steps=100",
             *(f"--config.{m}.num_epochs=2" for m in ("surrogate", "suspect", "benign"))],
    "tiny": ["--config=launch/configs/demo.py:tiny", "--config.craft.craft.steps=2",
             *(f"--config.{m}.num_epochs=1" for m in ("surrogate", "suspect", "benign"))],
}


# --------------------------------------------------------------------------------------------
# Stages (child process; heavy imports happen here only)
# --------------------------------------------------------------------------------------------


def _import_benchmarks():
  from benchmarks import harness   # jax and numpy: only in the stages' processes
  return harness


def stage_env(sizes: dict, phases: Phases, out_dir: pathlib.Path) -> dict:
  """Versions, devices and the measured matrix-product rate of the default device."""
  del out_dir
  harness = _import_benchmarks()
  with phases("importing jax"):
    import jax
    import jax.numpy as jnp
  env = harness.environment()
  device = jax.devices()[0]
  smi = None
  with contextlib.suppress(OSError, subprocess.SubprocessError):
    smi = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True,
                         timeout=20).stdout.strip()
  n = sizes["matmul"]
  dtype = jnp.bfloat16 if device.platform == "gpu" else jnp.float32
  with phases(f"{n}x{n}x{n} {jnp.dtype(dtype).name} matrix product"):
    keys = jax.random.split(jax.random.key(0), 2)
    a, b = (jax.random.normal(k, (n, n), dtype) for k in keys)   # random, never zeros
    matmul = jax.jit(lambda x, y: x @ y)
    jax.block_until_ready(matmul(a, b))
    timing = harness.time_calls(lambda: matmul(a, b), repeats=5, warmup=2, iters=3)
  tflops = 2 * n ** 3 / timing.median_s / 1e12
  phases.say(f"matrix product: {tflops:.1f} TFLOP/s (median of 5)")
  return {"versions": env["versions"], "python": env["python"], "date": env["date"],
          "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
          "device_kind": device.device_kind, "nvidia_smi": smi,
          "xla_flags": os.environ.get("XLA_FLAGS", ""), "host_cpus": env["host_cpus"],
          "matmul_n": n, "matmul_dtype": jnp.dtype(dtype).name, "matmul_tflops": tflops}


def stage_craft_jax(sizes: dict, phases: Phases, out_dir: pathlib.Path) -> dict:
  """jaxtag's crafting step: build, key gradient, lower, compile, first step, timed steps."""
  harness = _import_benchmarks()
  with phases("importing jax and jaxtag"):
    import jax

    from benchmarks import bench_craft
  device = jax.devices()[0]
  env = harness.environment()
  case = bench_craft.prepare_jax(sizes["ast"], sizes["precision"], sizes["batch"], device=device,
                                 env=env, phase=phases)
  return _time_and_record(case, sizes, phases, out_dir,
                          xla_flags=os.environ.get("XLA_FLAGS", ""))


def stage_craft_torch(sizes: dict, phases: Phases, out_dir: pathlib.Path) -> dict:
  """The PyTorch reference of the same step (weights ported from jaxtag's model on the CPU)."""
  harness = _import_benchmarks()
  with phases("importing torch, transformers, jax"):
    from benchmarks import bench_craft
    missing = bench_craft.torch_missing()
    if missing:
      return {"skipped": missing}
    import torch

    from benchmarks import bench_craft_torch as reference
  device = "cuda" if torch.cuda.is_available() else "cpu"
  env = harness.environment()
  with phases(f"building AST-{sizes['ast']} (jax, CPU) and porting it to torch ({device})"):
    model = bench_craft.jax_model(sizes["ast"])
    hf = reference.torch_model(model, sizes["ast"], device)
  with phases("first step"):
    case = reference.prepare_torch(hf, sizes["ast"], sizes["precision"], sizes["batch"],
                                   device=device, env=env)
  return _time_and_record(case, sizes, phases, out_dir)


def stage_train_jax(sizes: dict, phases: Phases, out_dir: pathlib.Path) -> dict:
  """The jitted train step of ``launch.train`` (bench_train's record) for the AST."""
  harness = _import_benchmarks()
  with phases("importing jax and jaxtag"):
    from benchmarks import bench_train
    from jaxtag import sharding
  record = bench_train.run_one(
      sizes["train_model"], sizes["train_batch"], mesh=sharding.make_mesh(None),
      env=harness.environment(), repeats=sizes["repeats"], warmup=sizes["warmup"],
      iters=sizes["iters"], phase=phases, report=phases.say)
  harness.append_jsonl(out_dir / "records.jsonl", [record])
  return _brief(record)


def stage_chain(mode: str, phases: Phases, out_dir: pathlib.Path) -> dict:
  """``launch.demo`` (corpus, keys, surrogate, craft, suspect, benign, verify) in a subprocess
  whose lines pass through; returns its summary's verdicts and per-stage wall times."""
  del out_dir
  workdir = pathlib.Path(tempfile.mkdtemp(prefix="jaxtag_gpu_check_chain_"))
  env = dict(os.environ)
  env.setdefault("JAXTAG_DATA", str(workdir / "data"))
  cmd = [sys.executable, "-u", "-m", "launch.demo", *CHAIN[mode], f"--workdir={workdir / 'demo'}"]
  phases.say("launch.demo " + " ".join(CHAIN[mode]))
  with phases("launch.demo"):
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1)
    for line in proc.stdout:
      phases.say("demo | " + line.rstrip())
    if proc.wait() != 0:
      raise RuntimeError(f"launch.demo exited with {proc.returncode}")
  summary = json.loads((workdir / "demo" / "demo_summary.json").read_text())
  verify = summary["verify"]
  return {"workdir": str(workdir / "demo"), "wall_time_s": summary["wall_time_s"],
          "p_value": {k: v["p_value"] for k, v in verify.items()},
          "decision": {k: v["decision"] for k, v in verify.items()},
          "test_accuracy": {k: summary[k].get("test/accuracy") for k in ("suspect", "benign")},
          "num_poisons": summary["craft"]["num_poisons"]}


def _time_and_record(case, sizes: dict, phases: Phases, out_dir: pathlib.Path,
                     **fields) -> dict:
  """Times a prepared benchmark case (``bench_craft.Case``), appends its record (with
  ``fields``) to ``records.jsonl`` and returns the record's brief."""
  harness = _import_benchmarks()
  with phases(f"timing {sizes['warmup']} + {sizes['repeats']} x {sizes['iters']} steps"):
    timing = harness.time_calls(case.call, sync=case.sync, repeats=sizes["repeats"],
                                warmup=sizes["warmup"], iters=sizes["iters"],
                                report=phases.say)
  record = {**case.finish(timing), **fields}
  harness.append_jsonl(out_dir / "records.jsonl", [record])
  return _brief(record)


def _brief(record: dict) -> dict:
  """The fields of a harness record worth a line in summary.json."""
  keys = ("bench", "impl", "device", "precision", "batch", "size", "model", "throughput",
          "unit", "median_s", "compile_s", "lower_s", "first_call_s", "tflops_per_s",
          "pct_peak", "memory_bytes")
  return {k: record[k] for k in keys if k in record}


def run_stage(name: str, mode: str, out_dir: pathlib.Path, heartbeat_s: float,
              cache_dir: str | None, batch: int | None = None) -> None:
  """Runs one stage in this process and prints its result line."""
  phases = Phases(heartbeat_s)
  if cache_dir:
    import jax
    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  fns = {"env": stage_env, "craft_jax": stage_craft_jax, "craft_jax_cached": stage_craft_jax,
         "craft_jax_noautotune": stage_craft_jax, "craft_torch": stage_craft_torch,
         "train_jax": stage_train_jax}
  try:
    if name == "chain":
      result = stage_chain(mode, phases, out_dir)
    else:
      sizes = dict(SIZES[mode], **({"batch": batch, "train_batch": batch} if batch else {}))
      result = fns[name](sizes, phases, out_dir)
  finally:
    phases.close()
  emit_result(result)


# --------------------------------------------------------------------------------------------
# The parent: wheels, one subprocess per stage, limits, the log and the summary
# --------------------------------------------------------------------------------------------


def install_wheels(wheels: str | None, log: Log) -> dict[str, str]:
  """Installs the carried wheels into a private folder when a needed module is missing; returns
  the environment additions (``PYTHONPATH``) for the stages."""
  missing = [m for m in CARRIED if importlib.util.find_spec(m) is None]
  if not missing:
    log.line("wheels: every carried module already imports")
    return {}
  if not wheels:
    log.line(f"wheels: missing {', '.join(missing)} and no --wheels folder; stages that need "
             "them will fail (benchmarks/fetch_gpu_wheels.sh fetches them)")
    return {}
  target = pathlib.Path(tempfile.gettempdir()) / "jaxtag_gpu_check_site"
  files = sorted(str(p) for p in pathlib.Path(wheels).glob("*.whl"))
  log.line(f"wheels: missing {', '.join(missing)}; installing {len(files)} wheels into {target}")
  subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                  "--no-compile", "--no-cache-dir", "--upgrade", "--target", str(target),
                  *files], check=True)
  log.line("wheels: installed")
  path = os.pathsep.join(filter(None, [str(target), os.environ.get("PYTHONPATH")]))
  return {"PYTHONPATH": path}


def run_supervised(stage: Stage, *, mode: str, batch: int | None, limit_s: float,
                   out_dir: pathlib.Path, log: Log, env: dict[str, str], heartbeat_s: float,
                   cache_dir: str) -> dict:
  """Runs ``stage`` in a new process of this script (``--stage``) under ``limit_s``."""
  cmd = [sys.executable, "-u", str(pathlib.Path(__file__).resolve()), "--stage", stage.name,
         "--out_dir", str(out_dir), "--heartbeat_s", str(heartbeat_s)]
  if mode == "tiny":
    cmd.append("--tiny")
  if batch:
    cmd += ["--batch", str(batch)]
  if stage.name.startswith("craft_jax") and stage.name != "craft_jax_noautotune":
    cmd += ["--cache_dir", cache_dir]   # the cold compile fills it, the cached stage reads it
  child_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
  for name, value in stage.env:   # XLA_FLAGS add to the caller's; the rest replace
    joined = f"{child_env.get(name, '')} {value}".strip() if name == "XLA_FLAGS" else value
    child_env[name] = joined
  return supervise(stage.name, cmd, env=child_env, cwd=ROOT, limit_s=limit_s, log=log)


def _table(rows: list[dict]) -> str:
  lines = [f"{'stage':<22}{'status':<26}{'s':>7}  result"]
  for r in rows:
    res = r["result"] or {}
    if "throughput" in res:
      text = (f"{res['throughput']:.1f} {res['unit']} (step {1e3 * res['median_s']:.1f} ms"
              + (f", compile {res['compile_s']:.1f} s" if res.get("compile_s") else "")
              + (f", {res['pct_peak']:.1f}% peak" if res.get("pct_peak") else "") + ")")
    elif "matmul_tflops" in res:
      text = (f"{res['device_kind']}; {res['matmul_dtype']} matmul {res['matmul_tflops']:.1f} "
              f"TFLOP/s; jax {res['versions'].get('jax')}")
    elif "wall_time_s" in res:
      text = (f"p suspect {res['p_value']['suspect']:.2g}, benign {res['p_value']['benign']:.2g};"
              f" stages (s) " + ", ".join(f"{k} {v:.0f}" for k, v in res["wall_time_s"].items()))
    else:
      text = res.get("skipped") or r["last_line"] or ""
    lines.append(f"{r['stage']:<22}{r['status']:<26}{r['seconds']:>7.1f}  {text}")
  return "\n".join(lines)


def _next_stage(stage: Stage, rows: list[dict], args, *, mode: str, budget: float,
                limits: dict[str, float], out_dir: pathlib.Path, log: Log, env: dict[str, str],
                cache_dir: str) -> dict:
  """Runs ``stage`` under the smaller of its limit and what is left of the budget, or skips it
  (no budget left, or the stage it needs did not finish)."""
  remaining = budget - (time.monotonic() - log.start)
  limit = min(limits.get(stage.name, stage.tiny_limit_s if mode == "tiny" else stage.limit_s),
              remaining)
  done = {r["stage"] for r in rows if r["status"] == "ok"}
  if remaining < 10:
    status, why = "skipped (budget)", f"{remaining:.0f} s of the budget left"
  elif stage.requires and stage.requires not in done:
    status, why = f"skipped (needs {stage.requires})", f"{stage.requires} did not finish"
  else:
    return run_supervised(stage, mode=mode, batch=args.batch, limit_s=limit, out_dir=out_dir,
                     log=log, env=env, heartbeat_s=args.heartbeat_s, cache_dir=cache_dir)
  log.line(f"=== stage {stage.name}: skipped, {why} ===")
  return {"stage": stage.name, "status": status, "seconds": 0.0, "limit_s": 0.0,
          "result": None, "last_line": None}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--tiny", action="store_true", help="CPU-sized problems (tests, smoke)")
  parser.add_argument("--out_dir", default=os.environ.get("OUT") or "gpu_check_out",
                      help="folder for gpu_check.log, records.jsonl, summary.json")
  parser.add_argument("--stages", default=",".join(DEFAULT_STAGES),
                      help=f"comma-separated, run in this order: {', '.join(STAGE_NAMES)} "
                           "(default: all but craft_jax_noautotune)")
  parser.add_argument("--budget_s", type=float, default=None,
                      help="total seconds for every stage together (default 480; 600 tiny)")
  parser.add_argument("--limit", action="append", default=[], metavar="STAGE=SECONDS",
                      help="override one stage's limit (repeatable)")
  parser.add_argument("--wheels", default=None, help="folder of carried wheels to install")
  parser.add_argument("--batch", type=int, default=None,
                      help="poisons per crafting step and clips per train step (default: 128 "
                           "on a GPU, 2 with --tiny)")
  parser.add_argument("--heartbeat_s", type=float, default=10.0)
  parser.add_argument("--stage", help=argparse.SUPPRESS)       # internal: run one stage here
  parser.add_argument("--cache_dir", help=argparse.SUPPRESS)   # internal: persistent XLA cache
  args = parser.parse_args(argv)
  mode = "tiny" if args.tiny else "full"
  out_dir = pathlib.Path(args.out_dir).absolute()
  if args.stage:
    import faulthandler
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    run_stage(args.stage, mode, out_dir, args.heartbeat_s, args.cache_dir, args.batch)
    return 0
  names = [s.strip() for s in args.stages.split(",") if s.strip()]
  unknown = sorted(set(names) - set(STAGE_NAMES))
  if unknown:
    parser.error(f"unknown stage(s) {unknown}; choose from {', '.join(STAGE_NAMES)}")
  limits = {}
  for item in args.limit:
    stage_name, sep, value = item.partition("=")
    if not sep or stage_name not in STAGE_NAMES:
      parser.error(f"--limit {item!r}: expected STAGE=SECONDS with STAGE in {STAGE_NAMES}")
    limits[stage_name] = float(value)
  budget = args.budget_s or (600.0 if args.tiny else 480.0)
  out_dir.mkdir(parents=True, exist_ok=True)
  log = Log(out_dir / "gpu_check.log")
  log.line(f"gpu_check ({mode}): stages {', '.join(names)}; budget {budget:.0f} s; out {out_dir}")
  env = install_wheels(args.wheels, log)
  cache_dir = tempfile.mkdtemp(prefix="jaxtag_xla_cache_")
  rows = []
  try:
    for stage in (s for s in STAGES if s.name in names):
      rows.append(_next_stage(stage, rows, args, mode=mode, budget=budget, limits=limits,
                              out_dir=out_dir, log=log, env=env, cache_dir=cache_dir))
      write_atomic(out_dir / "summary.json", json.dumps(
          {"mode": mode, "budget_s": budget, "stages": rows}, indent=2, default=str) + "\n")
  finally:
    shutil.rmtree(cache_dir, ignore_errors=True)
  log.line(f"gpu_check done in {time.monotonic() - log.start:.1f} s\n" + _table(rows))
  log.close()
  bad = [r["stage"] for r in rows if r["status"] not in ("ok", "skipped")]
  return 1 if bad else 0


if __name__ == "__main__":
  sys.exit(main())
