"""The default crafting step must not deadlock XLA:CPU (issue 16: the demo's craft hung on jax 0.11).

The step runs in a subprocess under a hard timeout, so that a configuration that deadlocks fails
this test with a message instead of hanging CI. See tests/craft_deadlock_check.py and BUILD.md
("XLA:CPU FFT deadlock").
"""

import os
import subprocess
import sys
import warnings

import pytest

from jaxtag.taggants import step as step_lib

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SCRIPT = os.path.join(_ROOT, "tests", "craft_deadlock_check.py")
# The check takes ~25 s on a loaded 2-core VM (rolled, jax 0.11.2; unrolled on jax 0.10.2: ~45 s,
# mostly compiling); a deadlocked step never finishes. The margin covers a loaded CI machine.
# 8 keys x 2 members unrolled (the bad configuration) deadlocked in 3 of 3 runs on jaxlib 0.11.2
# within 4 steps, 4 keys in 1 of 2: hence the size.
TIMEOUT_S = 240


def _one_device_env():
  """The caller's environment without the test session's 8 fake devices: the hang was reported
  (and reproduces reliably) on one CPU device."""
  env = dict(os.environ)
  flags = [f for f in env.get("XLA_FLAGS", "").split()
           if "xla_force_host_platform_device_count" not in f]
  env["XLA_FLAGS"] = " ".join(flags)
  env["JAX_PLATFORMS"] = "cpu"
  return env


def test_default_craft_step_finishes():
  """Four crafting steps of a 2-surrogate ensemble over 8 keys with the default ``unroll``."""
  try:
    proc = subprocess.run([sys.executable, _SCRIPT, "--keys", "8", "--members", "2",
                           "--steps", "4"], env=_one_device_env(), cwd=_ROOT,
                          capture_output=True, text=True, timeout=TIMEOUT_S)
  except subprocess.TimeoutExpired as e:
    out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
    pytest.fail(f"The default crafting step did not finish within {TIMEOUT_S} s: XLA:CPU "
                f"deadlocked (BUILD.md, 'XLA:CPU FFT deadlock'); CraftConfig.unroll=None must "
                f"resolve to a rolled loop on this jaxlib. Output so far:\n{out}")
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert proc.stdout.strip().endswith("OK"), proc.stdout


@pytest.mark.parametrize("jaxlib_version, xla_flags, expected", [
    ("0.10.2", "", True),
    ("0.10.2", "--xla_force_host_platform_device_count=8", True),
    ("0.11.0", "", 1),
    ("0.11.2", "--xla_force_host_platform_device_count=8", 1),
    ("0.12.0.1", "", 1),
    ("0.11.2", "--xla_cpu_multi_thread_eigen=false", True),
    ("0.11.2", "--xla_force_host_platform_device_count=8 --xla_cpu_multi_thread_eigen=False", True),
    ("0.11.2", "--xla_cpu_multi_thread_eigen=true", 1),
    ("0.11.0.dev20260901", "", 1),
])
def test_default_unroll_on_cpu(jaxlib_version, xla_flags, expected):
  assert step_lib.default_unroll("cpu", jaxlib_version=jaxlib_version,
                                 xla_flags=xla_flags) is expected


@pytest.mark.parametrize("backend", ["gpu", "tpu"])
def test_default_unroll_off_cpu_is_rolled(backend):
  assert step_lib.default_unroll(backend, jaxlib_version="0.10.2", xla_flags="") == 1
  assert step_lib.default_unroll(backend, jaxlib_version="0.11.2", xla_flags="") == 1


def test_unrolled_loop_warns_where_it_can_deadlock(monkeypatch):
  monkeypatch.setattr(step_lib, "cpu_fft_can_deadlock", lambda *a, **k: True)
  with pytest.warns(UserWarning, match="deadlock"):
    assert step_lib.CraftConfig(unroll=True).loop_unroll() is True
  with pytest.warns(UserWarning, match="deadlock"):
    assert step_lib.CraftConfig(unroll=3).loop_unroll() == 3
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    assert step_lib.CraftConfig(unroll=1).loop_unroll() == 1
    assert step_lib.CraftConfig(unroll=None).loop_unroll() in (1, True)
