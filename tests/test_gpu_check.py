"""benchmarks/gpu_check.py: the device check runs end to end in its tiny CPU mode, prints a
timestamped line around and during every stage, and a stage past its limit is stopped (its stacks
dumped) without stopping the stages after it."""

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
STAMP = re.compile(r"^\[\d\d:\d\d:\d\d \+ *\d+\.\ds\] ")


def _run(out_dir, *args, timeout):
  # One CPU device for the stages (conftest fakes 8 for this process); data in the test's folder.
  # The chain's workdir and the XLA cache are temporary folders: keep them in the test's folder.
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu",
             JAXTAG_DATA=str(out_dir.parent / "data"), TMPDIR=str(out_dir.parent))
  return subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--out_dir", str(out_dir),
                         "--heartbeat_s", "2", *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=timeout)


@pytest.mark.slow
def test_gpu_check_tiny_runs_every_stage_with_timestamps(tmp_path):
  from benchmarks import gpu_check

  out = tmp_path / "out"
  proc = _run(out, "--stages", ",".join(gpu_check.STAGE_NAMES), timeout=900)
  assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
  summary = json.loads((out / "summary.json").read_text())
  rows = {r["stage"]: r for r in summary["stages"]}
  assert list(rows) == list(gpu_check.STAGE_NAMES)
  torch_ok = {"ok"} if gpu_check.importlib.util.find_spec("torch") else {"skipped"}
  for name, row in rows.items():
    assert row["status"] in (torch_ok if name == "craft_torch" else {"ok"}), row
  # Every line of the log is stamped; every stage has its start and end lines, and heartbeats
  # name the phase that is running.
  log = (out / "gpu_check.log").read_text().splitlines()
  done = next(i for i, line in enumerate(log) if "gpu_check done in" in line)
  unstamped = [line for line in log[:done + 1] if not STAMP.match(line)]
  assert not unstamped, unstamped[:5]
  for name in gpu_check.STAGE_NAMES:
    assert any(f"=== stage {name}: start" in line for line in log), name
    assert any(f"=== stage {name}: ok in" in line or f"=== stage {name}: skipped" in line
               for line in log), name
  assert any("... still" in line for line in log)
  assert any("compiling: done in" in line for line in log)
  assert any(re.search(r"craft_jax \| .* step 3/3 \(1 calls\): [\d.]+ ms a call", line)
             for line in log)   # each timed step reported as it ends
  # The records: jaxtag's crafting step three times (cold, from the persistent cache, autotuning
  # off), the train step; compile time apart from step time.
  records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
  craft = [r for r in records if r["bench"] == "craft_step" and r["impl"] == "jaxtag"]
  assert len(craft) == 3 and all(r["compile_s"] > 0 and r["median_s"] > 0 for r in craft)
  cold, cached = rows["craft_jax"]["result"], rows["craft_jax_cached"]["result"]
  assert cached["compile_s"] < 0.5 * cold["compile_s"], (cold, cached)   # read from the cache
  assert [r["bench"] for r in records].count("train_step") == 1
  chain = rows["chain"]["result"]
  assert set(chain["wall_time_s"]) >= {"corpus", "keys", "surrogate", "craft", "suspect",
                                       "benign", "verify"}
  assert all(0.0 < p <= 1.0 for p in chain["p_value"].values())
  # The table comes last, one row per stage.
  tail = proc.stdout.strip().splitlines()[-len(gpu_check.STAGE_NAMES):]
  assert [line.split()[0] for line in tail] == list(gpu_check.STAGE_NAMES)


def test_gpu_check_stops_a_stage_past_its_limit_and_goes_on(tmp_path):
  out = tmp_path / "out"
  proc = _run(out, "--stages", "craft_jax,env", "--limit", "craft_jax=3", timeout=300)
  assert proc.returncode == 1, proc.stdout[-4000:]
  rows = {r["stage"]: r for r in json.loads((out / "summary.json").read_text())["stages"]}
  assert rows["craft_jax"]["status"] == "timeout" and rows["craft_jax"]["seconds"] < 30
  assert rows["env"]["status"] == "ok"     # the stage after it still ran
  log = (out / "gpu_check.log").read_text()
  assert "craft_jax: past its 3 s limit; dumping its threads' stacks" in log
  assert "most recent call first" in log   # faulthandler's dump of where the stage was


def test_gpu_check_skips_a_cached_compile_whose_cold_compile_did_not_finish(tmp_path):
  out = tmp_path / "out"
  proc = _run(out, "--stages", "craft_jax,craft_jax_cached", "--limit", "craft_jax=2",
              timeout=120)
  assert proc.returncode == 1
  rows = {r["stage"]: r for r in json.loads((out / "summary.json").read_text())["stages"]}
  assert rows["craft_jax_cached"]["status"] == "skipped (needs craft_jax)"


def test_gpu_check_rejects_unknown_stages_and_limits(capsys):
  from benchmarks import gpu_check

  assert "craft_jax_noautotune" not in gpu_check.DEFAULT_STAGES   # opt-in: measured too slow

  with pytest.raises(SystemExit):
    gpu_check.main(["--stages", "env,nope", "--out_dir", "/nonexistent/never"])
  assert "unknown stage" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    gpu_check.main(["--limit", "env", "--out_dir", "/nonexistent/never"])
  assert "STAGE=SECONDS" in capsys.readouterr().err
