"""Tests of the benchmark harness (timing statistics, XLA FLOPs, records) and a smoke run of the
crafting benchmark in its smallest CPU mode, with a loss/gradient parity check against the
PyTorch reference where torch and transformers are installed."""

from __future__ import annotations

import datetime
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import harness


# --------------------------------------------------------------------------------- timing


def test_timing_statistics():
  timing = harness.Timing((3.0, 1.0, 2.0, 10.0), iters=2, warmup=1)
  assert timing.median_s == 2.5
  assert (timing.min_s, timing.max_s) == (1.0, 10.0)
  # Inclusive quartiles of 1, 2, 3, 10.
  assert timing.q1_s == pytest.approx(1.75) and timing.q3_s == pytest.approx(4.75)
  d = timing.as_dict()
  assert d["repeats"] == 4 and d["iters"] == 2 and d["warmup"] == 1
  assert d["seconds"] == [3.0, 1.0, 2.0, 10.0]
  single = harness.Timing((0.5,))
  assert single.q1_s == single.q3_s == single.median_s == 0.5
  with pytest.raises(ValueError, match="at least one"):
    harness.Timing(())
  with pytest.raises(ValueError, match="finite"):
    harness.Timing((1.0, float("nan")))


def test_time_calls_warmup_iters_and_sync():
  calls, synced = [], []
  ticks = iter([0.0, 4.0, 10.0, 12.0])  # two repeats: 4 s and 2 s for 2 calls each

  def fn():
    calls.append(len(calls))
    return len(calls)

  timing = harness.time_calls(fn, repeats=2, warmup=3, iters=2, sync=synced.append,
                              clock=lambda: next(ticks))
  assert len(calls) == 3 + 2 * 2
  assert synced == [1, 2, 3, 5, 7]  # each warm-up call, then each repeat's last result
  assert timing.seconds == (2.0, 1.0)
  assert timing.median_s == 1.5
  with pytest.raises(ValueError, match="repeats"):
    harness.time_calls(fn, repeats=0)


def test_time_calls_reports_each_step_as_it_ends():
  ticks = iter([0.0, 0.5, 1.0, 5.0, 10.0, 12.0])  # warm-up 0.5 s, then repeats of 4 s and 2 s
  lines = []
  timing = harness.time_calls(lambda: None, repeats=2, warmup=1, iters=2, sync=lambda _: None,
                              clock=lambda: next(ticks), report=lines.append)
  assert timing.seconds == (2.0, 1.0)
  assert lines == ["step 1/3 (warm-up): 500.0 ms", "step 2/3 (2 calls): 2000.0 ms a call",
                   "step 3/3 (2 calls): 1000.0 ms a call"]


def test_time_interleaved_alternates_repeats():
  order = []
  ticks = itertools.count(0.0, 1.0)  # every clock read advances 1 s
  calls = [(lambda: order.append("a"), lambda _: None), (lambda: order.append("b"), lambda _: None)]
  timings = harness.time_interleaved(calls, repeats=3, warmup=1, iters=2,
                                     clock=lambda: next(ticks))
  assert order == ["a", "b"] + ["a", "a", "b", "b"] * 3
  assert [t.seconds for t in timings] == [(0.5, 0.5, 0.5)] * 2
  assert all(t.iters == 2 and t.warmup == 1 for t in timings)
  with pytest.raises(ValueError, match="repeats"):
    harness.time_interleaved(calls, repeats=0)


# ------------------------------------------------------------------------ FLOPs and memory


def test_xla_flops_of_a_matmul():
  a, b = jnp.ones((64, 32)), jnp.ones((32, 16))
  compiled = harness.compile_jax(jax.jit(jnp.matmul), a, b)
  assert compiled.compile_s > 0 and compiled.lower_s > 0
  assert harness.xla_flops(compiled.executable) == 2 * 64 * 32 * 16
  memory = harness.xla_memory(compiled.executable)
  assert memory["argument_size_in_bytes"] == 4 * (64 * 32 + 32 * 16)
  assert memory["output_size_in_bytes"] == 4 * 64 * 16
  assert memory["footprint_bytes"] == (memory["argument_size_in_bytes"]
                                       + memory["output_size_in_bytes"]
                                       + memory["temp_size_in_bytes"]
                                       - memory["alias_size_in_bytes"])


class _FakeCompiled:
  def __init__(self, cost):
    self.cost = cost

  def cost_analysis(self):
    if isinstance(self.cost, Exception):
      raise self.cost
    return self.cost


@pytest.mark.parametrize("cost, flops", [
    ({"flops": 12.0, "bytes accessed": 3.0}, 12.0),        # jax >= 0.4.30: one dict
    ([{"flops": 10.0}, {"flops": 5.0}], 15.0),             # older jax: a list of per-module dicts
    ([], None), (None, None), ({"flops": 0.0}, None), ({"bytes accessed": 1.0}, None),
    (RuntimeError("no cost analysis on this backend"), None),
])
def test_xla_flops_handles_every_return_shape(cost, flops):
  assert harness.xla_flops(_FakeCompiled(cost)) == flops


def test_peaks_and_achieved():
  assert harness.peak_tflops("NVIDIA H100 80GB HBM3", "bf16") == 989.4
  assert harness.peak_tflops("NVIDIA H100 PCIe", "tf32") == 378.0
  assert harness.peak_tflops("NVIDIA H200", "fp32") == 66.9
  assert harness.peak_tflops("cpu", "fp32") is None
  assert harness.peak_tflops("NVIDIA H100 80GB HBM3", "int4") is None
  assert harness.achieved(2e12, 0.5, 100.0) == (4.0, 4.0)
  assert harness.achieved(2e12, 0.5, None) == (4.0, None)
  assert harness.achieved(None, 0.5, 100.0) == (None, None)
  assert harness.device_peak_bytes(jax.devices("cpu")[0]) is None  # CPUs report no stats


# ---------------------------------------------------------------------------- records


def test_records_name_device_versions_and_date_and_round_trip(tmp_path):
  now = datetime.datetime(2026, 11, 23, 12, 0, tzinfo=datetime.timezone.utc)
  env = harness.environment(now=now)
  assert env["date"] == "2026-11-23"
  assert env["versions"]["jax"] == jax.__version__
  assert set(harness.PACKAGES) <= set(env["versions"])
  device = {"device": "gpu:NVIDIA H100 80GB HBM3", "device_kind": "NVIDIA H100 80GB HBM3",
            "platform": "gpu"}
  record = harness.make_record(
      bench="craft_step", impl="jaxtag", timing=harness.Timing((0.2, 0.1, 0.4)),
      items_per_call=32, unit="poison-sample-steps/s", device=device, env=env,
      precision="bf16", flops_per_call=98.94e12, flops_source="xla", compile_s=3.0,
      batch=32)
  assert record["throughput"] == pytest.approx(32 / 0.2)
  assert record["throughput_min"] == pytest.approx(32 / 0.4)
  assert record["throughput_max"] == pytest.approx(32 / 0.1)
  assert record["tflops_per_s"] == pytest.approx(98.94e12 / 0.2 / 1e12)
  assert record["pct_peak"] == pytest.approx(50.0)
  assert record["device"] == device["device"] and record["date"] == "2026-11-23"
  for field in ("median_s", "min_s", "max_s", "q1_s", "q3_s", "repeats", "compile_s",
                "versions", "batch", "bench", "impl", "unit", "memory_bytes"):
    assert field in record, field
  path = tmp_path / "sub" / "results.jsonl"
  harness.append_jsonl(path, [record])
  harness.append_jsonl(path, [dict(record, impl="pytorch")])
  harness.append_jsonl("", [record])  # no path: nothing written, no error
  back = harness.read_jsonl(path)
  assert [r["impl"] for r in back] == ["jaxtag", "pytorch"]
  assert back[0]["versions"] == record["versions"] and back[0]["seconds"] == [0.2, 0.1, 0.4]


def test_format_table():
  rows = [{"a": "x", "b": None}, {"a": "longer", "b": 1.23456}]
  text = harness.format_table(rows, [("A", lambda r: r["a"]),
                                     ("B", lambda r: harness.fmt(r["b"], ".2f"))])
  lines = text.splitlines()
  assert lines[0].split() == ["A", "B"] and set(lines[1]) == {"-"}
  assert lines[2].split() == ["x", "n/a"] and lines[3].split() == ["longer", "1.23"]
  assert harness.fmt_bytes(3 << 30) == "3.00 GiB" and harness.fmt_bytes(None) == "n/a"


# ------------------------------------------------------------------ crafting benchmark


def test_bench_craft_smoke_and_parity(tmp_path):
  from benchmarks import bench_craft
  out = tmp_path / "craft.jsonl"
  result = bench_craft.run(size="smoke", batches=[2], precisions=["fp32", "tf32"], repeats=1,
                           warmup=1, iters=1, side="both", out=str(out))
  records = result["records"]
  assert harness.read_jsonl(out) == [{k: v for k, v in r.items() if not k.startswith("ratio")}
                                     for r in records]
  assert {r["precision"] for r in records} == {"fp32"}  # tf32 is dropped on CPU
  (ours,) = [r for r in records if r["impl"] == "jaxtag"]
  assert ours["throughput"] > 0 and ours["compile_s"] > 0 and ours["batch"] == 2
  # XLA's count of the step: the second-order step costs several forward passes.
  forward = 2 * ours["num_params"] * (12 * 12 + 2)
  assert ours["flops_per_call"] / ours["batch"] > 3 * forward
  assert 0.0 <= ours["first_loss"] <= 2.0
  if result["torch_note"]:
    assert [r["impl"] for r in records] == ["jaxtag"]
    pytest.skip(result["torch_note"])
  (ref,) = [r for r in records if r["impl"] == "pytorch"]
  assert ref["num_params"] == ours["num_params"]
  check = result["parity"]
  assert check["loss_jax"] == pytest.approx(check["loss_torch"], rel=1e-4, abs=1e-5)
  assert check["grad_cosine"] > 0.9999 and check["grad_rel_error"] < 1e-3
  # The real steps start from the same u0 on identical weights: the same first loss.
  assert ours["first_loss"] == pytest.approx(ref["first_loss"], rel=1e-4, abs=1e-5)
  assert ours["ratio_vs_pytorch"] == pytest.approx(ours["throughput"] / ref["throughput"])
  assert ref["flops_per_call"] > 0


def test_port_weights_copies_every_tensor_and_refuses_another_architecture():
  pytest.importorskip("torch", reason="torch is not installed")
  pytest.importorskip("transformers", reason="transformers is not installed")
  from benchmarks import bench_craft, bench_craft_torch
  model = bench_craft.jax_model("smoke")
  hf = bench_craft_torch.torch_model(model, "smoke")
  assert hf.config._attn_implementation == "eager"
  np.testing.assert_array_equal(hf.classifier.dense.weight.detach().numpy(),
                                np.asarray(model.head.kernel[...]).T)
  deeper = dict(bench_craft.SIZES["smoke"], depth=2)
  with pytest.raises(ValueError, match="no jaxtag tensor"):
    bench_craft_torch.torch_model(model, deeper)


def test_bench_craft_keys_smoke(tmp_path):
  from benchmarks import bench_craft_keys
  out = tmp_path / "keys.jsonl"
  records = bench_craft_keys.run(keys=2, poisons=1, unrolls=(1, True), repeats=1, warmup=0,
                                 out=str(out))
  assert harness.read_jsonl(out) == records
  rolled, unrolled = records
  assert (rolled["unroll"], unrolled["unroll"]) == (1, True)
  assert all(r["throughput"] > 0 and r["compile_s"] > 0 and r["items_per_call"] == 2
             for r in records)
  # XLA counts a rolled loop's body once and an unrolled loop's every iteration: two keys.
  assert unrolled["flops_per_call"] > 1.5 * rolled["flops_per_call"]
  assert bench_craft_keys.parse_unroll("true") is True and bench_craft_keys.parse_unroll("4") == 4
