"""Error messages name what the caller can set: a keyword from Python, a flag under a launcher."""

import os
import pathlib
import subprocess
import sys

from jaxtag import errors

ROOT = pathlib.Path(__file__).resolve().parent.parent
CONFIG = {"seed": 0, "batch_size": 8, "data": {"kind": "corpus", "mono": "error", "seed": 3},
          "craft": {"batch_size": 4}}


def test_library_spelling_outside_a_launcher():
  assert errors.option("mono", "mean") == "mono='mean'"
  assert errors.option("batch_size", owner="TrainConfig") == "TrainConfig.batch_size"
  assert errors.option("overwrite", True) == "overwrite=True"


def test_launcher_flags_inside_the_block_only():
  with errors.launcher_flags(CONFIG, {"TrainConfig": "", "CraftConfig": "craft"}):
    assert errors.option("mono", "mean") == "--config.data.mono=mean"
    assert errors.option("batch_size", owner="TrainConfig") == "--config.batch_size"
    assert errors.option("batch_size", 2, owner="CraftConfig") == "--config.craft.batch_size=2"
    # Ambiguous without an owner ("batch_size" and "seed" each appear twice): library spelling.
    assert errors.option("batch_size") == "batch_size"
    assert errors.option("seed", 1) == "seed=1"
    # Not in this launcher's config at all.
    assert errors.option("overwrite", True) == "overwrite=True"
    assert errors.option("noise_snr_db", (10, 20), owner="DataSource") == "noise_snr_db=(10, 20)"
  assert errors.option("mono", "mean") == "mono='mean'"


def test_flag_values_are_written_as_the_flag_parser_reads_them():
  with errors.launcher_flags({"a": {"b": None, "c": None, "d": None}}):
    assert errors.option("b", [1, 2]) == "--config.a.b=1,2"
    assert errors.option("c", False) == "--config.a.c=False"
    assert errors.option("d", 0.05) == "--config.a.d=0.05"


def test_launcher_failure_is_one_line_and_debug_gives_the_traceback(tmp_path):
  missing = tmp_path / "no_such_dataset"
  cmd = [sys.executable, "-m", "launch.train", "--config=launch/configs/train.py:tiny",
         f"--workdir={tmp_path / 'w'}", "--config.data.kind=speech_commands",
         f"--config.data.root={missing}"]
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1
  lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
  assert len(lines) == 1 and str(missing) in lines[0], proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  debug = subprocess.run(cmd + ["--debug"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
  assert debug.returncode != 0 and "Traceback" in debug.stderr and str(missing) in debug.stderr
