"""CI's detection test: the demo chain at a reduced configuration (``launch/configs/demo.py:small``)
detects the suspect trained on its protected data, from its top-1 answers alone, and does not
detect the benign twin (the suspect's recipe and seed on the clean data).

The decision rule is the one fixed in the config before any suspect is seen (verify's ``alpha``
and ``k``); the p-value is the exact one of ``jaxtag.taggants.verify``. The preset and its
measured seeds are in benchmarks/RESULTS.md ("A reduced configuration that detects").
"""

import json
import subprocess
import sys

import pytest

from conftest import ROOT, demo_env
from launch.configs import demo as demo_configs


@pytest.mark.slow
def test_small_demo_detects_its_suspect_and_not_its_benign_twin(tmp_path):
  workdir = tmp_path / "work"
  command = [sys.executable, "-m", "launch.demo", "--config=launch/configs/demo.py:small",
             f"--workdir={workdir}"]
  command += [f"--config.{stage}.progress=False"
              for stage in ("backbone", "surrogate", "suspect", "benign")]
  proc = subprocess.run(command, cwd=ROOT, env=demo_env(tmp_path / "data"), capture_output=True,
                        text=True, timeout=1500)
  assert proc.returncode == 0, f"launch.demo failed:\n{proc.stdout}\n{proc.stderr[-4000:]}"
  summary = json.loads((workdir / "demo_summary.json").read_text())
  config = demo_configs.get_config("small")
  alpha, k = config.verify.alpha, config.verify.decision_k
  suspect, benign = summary["verify"]["suspect"], summary["verify"]["benign"]
  for verdict in (suspect, benign):
    assert verdict["decision_k"] == k and verdict["num_keys"] == config.key_spec.num_keys
  # The suspect: detected at the config's alpha, by the exact test of its key design.
  assert suspect["decision"] is True and suspect["p_value"] <= alpha, (suspect, proc.stdout)
  assert suspect["hits"] > benign["hits"]
  # Its benign twin: not detected.
  assert benign["decision"] is False and benign["p_value"] > alpha, (benign, proc.stdout)
  lines = {line.split()[0]: line for line in proc.stdout.splitlines()
           if line.startswith(("suspect ", "benign "))}
  assert "TRAINED ON THE TAGGANTS" in lines["suspect"]
  assert "not detected" in lines["benign"]
  # The protection that was tested is the preset's: half of the 320 training clips at 5 dB.
  assert summary["craft"]["num_poisons"] == round(config.craft.budget * summary["craft"]["num_train"])
  assert summary["craft"]["snr_db_min"] >= config.craft.craft.snr_db - 0.01
