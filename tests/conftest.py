"""Test setup: eight fake CPU devices for multi-device checks, set before JAX starts."""

import os

# Must happen before jax is imported anywhere in the test session.
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
  os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pathlib  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402

import pytest  # noqa: E402


def pytest_configure(config):
  """One XLA compilation cache per test session: tests that build the same computation again
  (a second craft or training run in a resume test) load it instead of recompiling."""
  import jax
  cache = os.environ.get("JAXTAG_TEST_XLA_CACHE")
  if not cache:   # A cache of this session's own, removed when the session ends.
    cache = tempfile.mkdtemp(prefix="jaxtag-xla-")
    config.add_cleanup(lambda: shutil.rmtree(cache, ignore_errors=True))
  os.environ["JAXTAG_TEST_XLA_CACHE"] = cache   # Launcher subprocesses share it (demo_env).
  jax.config.update("jax_compilation_cache_dir", cache)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


@pytest.fixture(scope="session")
def num_devices():
  import jax
  return jax.device_count()


@pytest.fixture(scope="session")
def tiny_workdir(tmp_path_factory):
  """A trained tiny classifier's workdir, shared by the black-box and serving tests."""
  import tiny_classifier
  path = tmp_path_factory.mktemp("tiny_suspect")
  tiny_classifier.train_tiny_workdir(path)
  return path


@pytest.fixture(scope="module")
def tiny_box(tiny_workdir):
  """A LocalBlackBox over the tiny classifier, one per test module (its trace count is per module)."""
  from jaxtag.taggants import blackbox
  return blackbox.LocalBlackBox(tiny_workdir, batch_size=4)


ROOT = pathlib.Path(__file__).resolve().parent.parent


def demo_env(data_dir) -> dict[str, str]:
  """The environment of a launcher subprocess: one CPU device, its own corpus cache, and the
  session's XLA compilation cache (a re-run loads the same executables instead of compiling)."""
  return dict(os.environ, JAXTAG_DATA=str(data_dir), XLA_FLAGS="", JAX_PLATFORMS="cpu",
              JAX_COMPILATION_CACHE_DIR=os.environ["JAXTAG_TEST_XLA_CACHE"],
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5", PYTHONUNBUFFERED="1")


def demo_command(workdir) -> list[str]:
  return [sys.executable, "-m", "launch.demo", "--config=launch/configs/demo.py:tiny",
          f"--workdir={workdir}"]


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
  """The tiny demo run once, uninterrupted: (workdir, stdout, env). Shared by the end-to-end
  tests (test_launch.py) and the resume tests (test_resume.py), which compare against it."""
  base = tmp_path_factory.mktemp("demo")
  env = demo_env(base / "data")
  workdir = base / "work"
  proc = subprocess.run(demo_command(workdir), cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, f"launch.demo failed:\n{proc.stdout}\n{proc.stderr}"
  return workdir, proc.stdout, env
