"""The shared benchmark harness: timing, compile time, XLA FLOPs, device peaks, memory, records.

Every benchmark in this folder measures the same way:

* compile time apart from step time: :func:`compile_jax` lowers and compiles ahead of time and
  times both; the steady state then calls the compiled executable only;
* warm-up calls first, then ``repeats`` timed repeats of ``iters`` calls each, every repeat ended
  by a sync (``jax.block_until_ready`` on the result, or ``torch.cuda.synchronize``);
  :class:`Timing` keeps the per-call seconds of each repeat and reports the median, min/max and
  quartiles;
* FLOPs from XLA's cost analysis of the compiled executable (:func:`xla_flops`), achieved
  TFLOP/s and the percentage of the device's dense peak at the precision used
  (:func:`peak_tflops`; n/a where the peak is unknown, e.g. CPUs);
* memory: the executable's own footprint (:func:`xla_memory`) and the device's peak
  (:func:`device_peak_bytes`, where the backend reports one);
* one JSON record per measurement (:func:`make_record`) naming the device, the library versions
  and the date, appended to a JSONL file (:func:`append_jsonl`), and a printed table
  (:func:`format_table`).

Nothing here imports torch: the PyTorch side of a comparison passes its own sync function.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import importlib.metadata
import json
import math
import os
import pathlib
import platform
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

PACKAGES = ("jax", "jaxlib", "flax", "optax", "numpy", "torch", "transformers")

# Dense peak TFLOP/s by chip and precision (vendor datasheets, no sparsity). The H200 is the
# H100 SXM chip with more and faster memory. Matched against the lower-cased device kind, first
# hit wins, so more specific names come first.
PEAK_TFLOPS: tuple[tuple[str, Mapping[str, float]], ...] = (
    ("h100 pcie", {"bf16": 756.0, "fp16": 756.0, "tf32": 378.0, "fp32": 51.2}),
    ("h100", {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9}),
    ("h200", {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9}),
    ("a100", {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5}),
)


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


def _quartiles(values: Sequence[float]) -> tuple[float, float]:
  if len(values) < 2:
    return values[0], values[0]
  q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
  return q1, q3


@dataclasses.dataclass(frozen=True)
class Timing:
  """Seconds per call of each timed repeat (a repeat's wall time divided by its calls).

  Attributes:
    seconds: one entry per repeat.
    iters: calls per repeat.
    warmup: untimed calls before the first repeat.
  """

  seconds: tuple[float, ...]
  iters: int = 1
  warmup: int = 0

  def __post_init__(self):
    if not self.seconds:
      raise ValueError("Timing needs at least one timed repeat.")
    if any(not math.isfinite(s) or s < 0 for s in self.seconds):
      raise ValueError(f"Timing: every repeat must take a finite, non-negative time; got "
                       f"{self.seconds}.")

  @property
  def median_s(self) -> float:
    return statistics.median(self.seconds)

  @property
  def min_s(self) -> float:
    return min(self.seconds)

  @property
  def max_s(self) -> float:
    return max(self.seconds)

  @property
  def q1_s(self) -> float:
    return _quartiles(sorted(self.seconds))[0]

  @property
  def q3_s(self) -> float:
    return _quartiles(sorted(self.seconds))[1]

  def as_dict(self) -> dict[str, Any]:
    """The statistics as flat record fields."""
    return {"median_s": self.median_s, "min_s": self.min_s, "max_s": self.max_s,
            "q1_s": self.q1_s, "q3_s": self.q3_s, "repeats": len(self.seconds),
            "iters": self.iters, "warmup": self.warmup, "seconds": list(self.seconds)}


def block_until_ready(result: Any) -> None:
  """The default sync: wait for every JAX array in ``result``."""
  import jax
  jax.block_until_ready(result)


def time_calls(fn: Callable[[], Any], *, repeats: int, warmup: int = 1, iters: int = 1,
               sync: Callable[[Any], None] = block_until_ready,
               clock: Callable[[], float] = time.perf_counter,
               report: Callable[[str], None] | None = None) -> Timing:
  """Times ``fn()``: ``warmup`` untimed calls, then ``repeats`` repeats of ``iters`` calls.

  Each repeat ends with ``sync(last result)``, so asynchronous dispatch is inside the timing.
  ``fn`` may carry state between calls (a step that donates its state returns the new one
  through a closure).

  Args:
    fn: the call to time.
    repeats: timed repeats (>= 1).
    warmup: untimed calls first (each synced).
    iters: calls per repeat; the repeat's time is divided by it.
    sync: waits for a result (``jax.block_until_ready`` by default).
    clock: the timer (injectable for tests).
    report: if given, called with a line after each synced warm-up call and each repeat
      (``"step 3/7: 12.5 ms"``), so that a slow or stuck step shows which one it was.

  Returns:
    A :class:`Timing`.
  """
  if repeats < 1 or iters < 1 or warmup < 0:
    raise ValueError(f"time_calls: repeats and iters must be >= 1 and warmup >= 0; got "
                     f"{repeats}, {iters}, {warmup}.")
  total = warmup + repeats
  for i in range(warmup):
    start = clock() if report else 0.0   # the clock is read for the timed repeats only otherwise
    sync(fn())
    if report:
      report(f"step {i + 1}/{total} (warm-up): {1e3 * (clock() - start):.1f} ms")
  seconds = []
  for i in range(repeats):
    start = clock()
    for _ in range(iters):
      result = fn()
    sync(result)
    seconds.append((clock() - start) / iters)
    if report:
      report(f"step {warmup + i + 1}/{total} ({iters} calls): {1e3 * seconds[-1]:.1f} ms a call")
  return Timing(tuple(seconds), iters=iters, warmup=warmup)


def time_interleaved(calls: Sequence[tuple[Callable[[], Any], Callable[[Any], None]]], *,
                     repeats: int, warmup: int = 1, iters: int = 1,
                     clock: Callable[[], float] = time.perf_counter) -> list[Timing]:
  """Times several ``(fn, sync)`` pairs in alternation: repeat 1 of each, then repeat 2, ...

  On a shared machine whose load drifts, alternating repeats (A B A B ...) exposes every
  implementation to the same load, so their ratio is fairer than from back-to-back runs.

  Returns:
    One :class:`Timing` per pair, in order.
  """
  if repeats < 1 or iters < 1 or warmup < 0:
    raise ValueError(f"time_interleaved: repeats and iters must be >= 1 and warmup >= 0; got "
                     f"{repeats}, {iters}, {warmup}.")
  for fn, sync in calls:
    for _ in range(warmup):
      sync(fn())
  seconds: list[list[float]] = [[] for _ in calls]
  for _ in range(repeats):
    for (fn, sync), out in zip(calls, seconds):
      start = clock()
      for _ in range(iters):
        result = fn()
      sync(result)
      out.append((clock() - start) / iters)
  return [Timing(tuple(s), iters=iters, warmup=warmup) for s in seconds]


# --------------------------------------------------------------------------------------------
# Compilation, FLOPs, memory
# --------------------------------------------------------------------------------------------


class Compiled(NamedTuple):
  """An ahead-of-time compiled JAX function and what it cost to get it."""
  executable: Any
  lower_s: float
  compile_s: float


def no_phase(name: str) -> contextlib.AbstractContextManager:
  """The default ``phase`` of the benchmarks' building blocks: reports nothing."""
  del name
  return contextlib.nullcontext()


def compile_jax(jitted, *args, phase: Callable[[str], Any] = no_phase, **kwargs) -> Compiled:
  """Lowers and compiles ``jitted`` (a ``jax.jit`` function) for these arguments, timing both.

  Trace-time settings (``jax.default_matmul_precision``, ...) apply when called inside them.
  ``phase(name)`` is a context manager entered around each of the two (``"lowering"``,
  ``"compiling"``), e.g. ``benchmarks.gpu_check``'s progress lines.
  """
  start = time.perf_counter()
  with phase("lowering"):
    lowered = jitted.lower(*args, **kwargs)
  lowered_at = time.perf_counter()
  with phase("compiling"):
    executable = lowered.compile()
  return Compiled(executable, lowered_at - start, time.perf_counter() - lowered_at)


def _cost_dict(cost: Any) -> dict[str, float] | None:
  """XLA's cost analysis as one dict: a dict (jax >= 0.4.30), or a list of per-module dicts
  (older jax), whose entries are added up."""
  if cost is None:
    return None
  if isinstance(cost, Mapping):
    return dict(cost)
  if isinstance(cost, (list, tuple)):
    parts = [c for c in cost if isinstance(c, Mapping)]
    if not parts:
      return None
    total: dict[str, float] = {}
    for part in parts:
      for key, value in part.items():
        if isinstance(value, (int, float)):
          total[key] = total.get(key, 0.0) + float(value)
    return total
  return None


def xla_cost(compiled: Any) -> dict[str, float] | None:
  """``{"flops", "bytes accessed", ...}`` of a compiled executable, or None where the backend
  gives no cost analysis."""
  try:
    return _cost_dict(compiled.cost_analysis())
  except Exception:  # noqa: BLE001 - some backends raise instead of returning nothing.
    return None


def xla_flops(compiled: Any) -> float | None:
  """FLOPs of one call of a compiled executable by XLA's cost analysis (None if unknown).

  XLA counts every floating-point operation of the optimised HLO (2 per multiply-add, plus the
  elementwise work), after fusion and rematerialisation: it is the work the program does, not
  a model's nominal FLOPs.
  """
  cost = xla_cost(compiled)
  if not cost or "flops" not in cost:
    return None
  flops = float(cost["flops"])
  return flops if flops > 0 else None


def xla_memory(compiled: Any) -> dict[str, int] | None:
  """The executable's memory footprint from ``compiled.memory_analysis()`` (bytes), or None.

  ``footprint_bytes`` = arguments + outputs + temporaries - aliased (donated) bytes: what one
  call holds on the device at its peak, independent of what else the process allocated.
  """
  try:
    stats = compiled.memory_analysis()
  except Exception:  # noqa: BLE001
    return None
  if stats is None:
    return None
  fields = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
            "alias_size_in_bytes", "generated_code_size_in_bytes")
  out = {f: int(getattr(stats, f, 0) or 0) for f in fields}
  out["footprint_bytes"] = (out["argument_size_in_bytes"] + out["output_size_in_bytes"]
                            + out["temp_size_in_bytes"] - out["alias_size_in_bytes"])
  return out


def device_peak_bytes(device: Any) -> int | None:
  """The device allocator's peak bytes in use so far (GPU/TPU), or None (CPU reports none).

  It is a process-wide high-water mark that JAX cannot reset: for one measurement among many,
  prefer :func:`xla_memory`.
  """
  try:
    stats = device.memory_stats()
  except Exception:  # noqa: BLE001
    return None
  if not stats:
    return None
  peak = stats.get("peak_bytes_in_use")
  return int(peak) if peak is not None else None


def peak_tflops(device_kind: str, precision: str) -> float | None:
  """The dense peak TFLOP/s of a device at ``precision`` ("fp32", "tf32", "bf16", "fp16"), or
  None when the device is not in :data:`PEAK_TFLOPS` (CPUs, unknown GPUs)."""
  kind = (device_kind or "").lower()
  for name, peaks in PEAK_TFLOPS:
    if name in kind:
      return peaks.get(precision)
  return None


def achieved(flops_per_call: float | None, seconds: float, peak: float | None
             ) -> tuple[float | None, float | None]:
  """``(TFLOP/s, percent of peak)`` of ``flops_per_call`` done in ``seconds`` (None if unknown)."""
  if not flops_per_call or seconds <= 0:
    return None, None
  tflops = flops_per_call / seconds / 1e12
  return tflops, (100.0 * tflops / peak if peak else None)


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------


def package_versions(names: Iterable[str] = PACKAGES) -> dict[str, str | None]:
  """Installed versions by distribution name (None when absent), without importing them."""
  out = {}
  for name in names:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      out[name] = None
  return out


def jax_device_info(device: Any) -> dict[str, Any]:
  """``{"device", "device_kind", "platform"}`` of a JAX device."""
  kind = getattr(device, "device_kind", "") or ""
  return {"device": f"{device.platform}:{kind}".rstrip(":"), "device_kind": kind,
          "platform": device.platform}


def environment(*, now: datetime.datetime | None = None) -> dict[str, Any]:
  """Host, versions and date shared by a run's records."""
  now = now or datetime.datetime.now(datetime.timezone.utc)
  try:
    load = os.getloadavg()[0]
  except OSError:
    load = None
  try:
    usable = len(os.sched_getaffinity(0))
  except (AttributeError, OSError):
    usable = os.cpu_count()
  return {"date": now.date().isoformat(), "time": now.isoformat(timespec="seconds"),
          "host_cpus": os.cpu_count(), "host_cpus_usable": usable,
          "host_machine": platform.machine(),
          "python": platform.python_version(), "load_average_1m": load,
          "versions": package_versions()}


def make_record(*, bench: str, impl: str, timing: Timing, items_per_call: float, unit: str,
                device: Mapping[str, Any], env: Mapping[str, Any],
                precision: str | None = None, flops_per_call: float | None = None,
                flops_source: str | None = None, compile_s: float | None = None,
                lower_s: float | None = None, memory_bytes: int | None = None,
                memory_source: str | None = None, **fields: Any) -> dict[str, Any]:
  """One JSON-able measurement.

  Args:
    bench: the benchmark (e.g. ``craft_step``).
    impl: the implementation (e.g. ``jaxtag``, ``pytorch``).
    timing: the measured seconds per call.
    items_per_call: work items in one call (poison samples, clips, queries).
    unit: the throughput's unit, e.g. ``poison-sample-steps/s``.
    device: ``{"device", "device_kind", "platform"}`` (:func:`jax_device_info` or the caller's).
    env: :func:`environment`.
    precision: ``fp32``/``tf32``/``bf16`` (selects the peak).
    flops_per_call: FLOPs of one call, and ``flops_source`` where they come from.
    compile_s, lower_s: compile and lowering seconds (None where nothing compiles).
    memory_bytes, memory_source: peak memory of the call and how it was measured.
    **fields: benchmark-specific fields (batch, model size, ...).

  Returns:
    The record: timing statistics, ``throughput`` (items/s at the median) with
    ``throughput_min``/``throughput_max`` (at the slowest/fastest repeat), ``tflops_per_s``,
    ``peak_tflops``, ``pct_peak`` (None where unknown), and everything passed in.
  """
  peak = peak_tflops(device.get("device_kind", ""), precision) if precision else None
  tflops, pct = achieved(flops_per_call, timing.median_s, peak)
  record = {"bench": bench, "impl": impl, "unit": unit, "precision": precision, **fields,
            "items_per_call": items_per_call,
            "throughput": items_per_call / timing.median_s if timing.median_s > 0 else None,
            "throughput_min": items_per_call / timing.max_s if timing.max_s > 0 else None,
            "throughput_max": items_per_call / timing.min_s if timing.min_s > 0 else None,
            **timing.as_dict(), "compile_s": compile_s, "lower_s": lower_s,
            "flops_per_call": flops_per_call, "flops_source": flops_source,
            "tflops_per_s": tflops, "peak_tflops": peak, "pct_peak": pct,
            "memory_bytes": memory_bytes, "memory_source": memory_source,
            **dict(device), **dict(env)}
  return record


def append_jsonl(path: str | os.PathLike | None, records: Sequence[Mapping[str, Any]]) -> None:
  """Appends ``records`` as JSON lines to ``path`` (one write; parent folders created).
  ``None`` or ``""`` writes nothing."""
  if not path or not records:
    return
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  text = "".join(json.dumps(dict(r), sort_keys=False, default=str) + "\n" for r in records)
  with open(path, "a", encoding="utf-8") as f:
    f.write(text)


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
  """The records of a JSONL file."""
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


# --------------------------------------------------------------------------------------------
# Printing
# --------------------------------------------------------------------------------------------


def fmt(value: Any, spec: str = ".3g") -> str:
  """``value`` formatted with ``spec``; ``n/a`` for None/NaN."""
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return "n/a"
  if isinstance(value, str):
    return value
  return format(value, spec)


def fmt_bytes(value: int | None) -> str:
  """Bytes as MiB/GiB (``n/a`` for None)."""
  if value is None:
    return "n/a"
  if value >= 1 << 30:
    return f"{value / (1 << 30):.2f} GiB"
  return f"{value / (1 << 20):.1f} MiB"


def format_table(rows: Sequence[Mapping[str, Any]],
                 columns: Sequence[tuple[str, Callable[[Mapping[str, Any]], str]]]) -> str:
  """A fixed-width text table: ``columns`` are ``(header, row -> cell text)``."""
  cells = [[header for header, _ in columns]]
  cells += [[cell(row) for _, cell in columns] for row in rows]
  widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
  lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
  lines.insert(1, "-" * len(lines[0]))
  return "\n".join(lines)


def throughput_cell(row: Mapping[str, Any]) -> str:
  """``median (min-max)`` throughput."""
  return (f"{fmt(row['throughput'], '.1f')} "
          f"({fmt(row['throughput_min'], '.1f')}-{fmt(row['throughput_max'], '.1f')})")


def default_out(name: str, *, now: datetime.datetime | None = None) -> str:
  """A benchmark's default output prefix: ``benchmarks/results/<name>_<UTC date>``."""
  now = now or datetime.datetime.now(datetime.timezone.utc)
  return str(pathlib.Path(__file__).resolve().parent / "results" /
             f"{name}_{now.date().isoformat()}")


def parse_list(text: str, convert, option: str, allowed: Sequence[str] | None = None) -> list:
  """A comma-separated option as a list without repeats (order kept).

  Raises:
    ValueError: an empty list, a value ``convert`` refuses, or one outside ``allowed``.
  """
  out = []
  for item in (s.strip() for s in text.split(",")):
    if not item:
      continue
    if allowed is not None and item not in allowed:
      raise ValueError(f"{option}: unknown value {item!r}; use one or more of "
                       f"{', '.join(allowed)} (comma-separated).")
    try:
      value = convert(item)
    except ValueError:
      kind = {int: "an integer", float: "a number"}.get(convert, f"a {convert.__name__}")
      raise ValueError(f"{option}: {item!r} is not {kind}.") from None
    if isinstance(value, float) and not math.isfinite(value):
      raise ValueError(f"{option}: {item!r} is not a finite number of dB.")
    if value not in out:
      out.append(value)
  if not out:
    raise ValueError(f"{option}: no values given.")
  return out
