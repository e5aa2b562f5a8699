"""Shared setup for every jaxtag launcher: flags, hosts and devices, root key, workdir, config dump.

Each launcher in this folder defines ``main(config, workdir)`` that calls one library entry point,
and ends with ``app.run(main)``. Launchers run as modules from the repository root, as in
big_vision: ``python -m launch.<stage> --config=launch/configs/<stage>.py --workdir=...``.
Everything that is common to the pipeline stages lives here so that the launchers stay short.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

from absl import app as absl_app
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to an ml_collections config file, optionally with ':arg'.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for this stage's outputs (config, checkpoints, artifacts).")
_DEBUG = flags.DEFINE_bool(
    "debug", False, "On a failure, print the full traceback instead of one line naming the error.")
_ALLOW_READABLE_SECRETS = flags.DEFINE_bool(
    "allow_readable_secrets", False,
    "Accept a key file (or PosCUDA secret file) that users other than its owner can read. By "
    "default such a file is refused: on a shared machine the secret may already have leaked; "
    "`chmod 600 FILE` fixes it. Pass this only on a machine without other users.")
_TRANSFER_GUARD = flags.DEFINE_enum(
    "transfer_guard", "allow", ["allow", "log", "disallow"],
    "jax transfer guard for implicit host<->device transfers inside a stage's hot loop (the "
    "launcher's setup is not guarded): 'log' or 'disallow' to hunt silent slowness.")


def _quiet_orbax(record) -> bool:
  """Drops orbax's INFO/DEBUG records from the absl logger; warnings and errors pass."""
  return record.levelno >= 30 or f"{os.sep}orbax{os.sep}" not in record.pathname


def setup_jax() -> None:
  """Starts multi-host JAX when the environment asks for it and logs the device layout."""
  import logging as std_logging

  import jax  # Imported here so that `--help` stays fast.

  # orbax logs every checkpoint step at INFO (through its own logger and through absl's);
  # keep the launchers' output readable.
  std_logging.getLogger("orbax").setLevel(std_logging.WARNING)
  std_logging.getLogger("absl").addFilter(_quiet_orbax)

  from jaxtag import sharding
  sharding.maybe_initialize_distributed()
  logging.info("JAX %s, backend %s: process %d of %d, %d local / %d global devices (%s)",
               jax.__version__, jax.default_backend(), jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count(), jax.devices()[0].device_kind)


def transfer_guard_level() -> str:
  """The ``--transfer_guard`` level, for the library's hot loops (e.g. ``train(transfer_guard=)``).

  ``allow`` when flags were not parsed, i.e. a stage's ``run_stage`` called from Python.
  """
  return _TRANSFER_GUARD.value if flags.FLAGS.is_parsed() else "allow"


CONFIG_JSON = "config.json"
# Fields that change how a stage reports or describes itself, never what it computes: they may
# differ on a re-run (``note``: a preset's description).
_COSMETIC_FIELDS = frozenset({"progress", "note"})


class ConfigChangedError(ValueError):
  """A workdir re-run with another config than the one that made it."""


def _as_json(config: Any) -> Any:
  return json.loads(config.to_json_best_effort(sort_keys=True))


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
  """Dotted names of the fields that differ between two JSON objects (cosmetic ones skipped)."""
  if not (isinstance(old, dict) and isinstance(new, dict)):
    return [] if old == new else [prefix or "<config>"]
  out = []
  for name in sorted(set(old) | set(new)):
    if name in _COSMETIC_FIELDS:
      continue
    path = f"{prefix}.{name}" if prefix else name
    if name not in old or name not in new:
      out.append(path)
    else:
      out += _differences(old[name], new[name], path)
  return out


def check_same_config(config: Any, workdir: pathlib.Path) -> bool:
  """Refuses a workdir whose recorded config differs from ``config``.

  A re-run continues (or reuses) what the workdir holds; with another config it would mix two
  recipes in one set of checkpoints and artifacts.

  Returns:
    Whether the workdir already recorded this config (False: a fresh workdir).

  Raises:
    ConfigChangedError: naming the differing fields and the fix.
  """
  path = workdir / CONFIG_JSON
  if not path.is_file():
    return False
  try:
    old = json.loads(path.read_text())
  except ValueError:
    return False  # Not ours to trust (written atomically, so never half written by us).
  changed = _differences(old, _as_json(config))
  if not changed:
    return True
  unrecorded = [name for name in changed if not _recorded(old, name)]
  if len(unrecorded) == len(changed):
    raise ConfigChangedError(
        f"{workdir} was made by an older jaxtag: its {CONFIG_JSON} lacks fields this version's "
        f"config has ({_shown(unrecorded)}), so no flag can make the configs equal. Use a new "
        "--workdir (or delete this one) to run the stage with this version.")
  raise ConfigChangedError(
      f"{workdir} was made with another config; these fields differ from its {CONFIG_JSON}: "
      f"{_shown(changed)}. A re-run on the same workdir resumes or reuses what it holds, so it "
      "must use the same config: pass the recorded values again, use a new --workdir, or delete "
      "the workdir to redo the stage from scratch.")


def _shown(names: list[str], limit: int = 12) -> str:
  return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit
                                     else "")


def _recorded(tree: Any, dotted: str) -> bool:
  """Whether the recorded JSON config holds the field ``dotted`` (``a.b.c``)."""
  for part in dotted.split("."):
    if not isinstance(tree, dict) or part not in tree:
      return False
    tree = tree[part]
  return True


def dump_config(config: Any, workdir: pathlib.Path) -> None:
  """Writes the resolved config next to the stage's outputs (atomically), after checking that
  the workdir holds no run of another config (``check_same_config``)."""
  from jaxtag.audio import io as audio_io
  check_same_config(config, workdir)
  audio_io.write_text_atomic(workdir / CONFIG_JSON,
                             config.to_json_best_effort(indent=2, sort_keys=True) + "\n")


def finished(config: Any, workdir: pathlib.Path, marker: str,
             requires: tuple[str, ...] = ()) -> dict[str, Any] | None:
  """The stored summary of a finished stage, to reuse instead of redoing the stage.

  A stage writes its summary ``marker`` (atomically) after every other output, so the marker is
  the proof that the stage finished. It is reused only when the workdir's recorded config
  equals ``config``, so a stage run from Python without a recorded config always runs.

  Args:
    config: the stage's config.
    workdir: the stage's workdir.
    marker: the summary JSON, relative to ``workdir``.
    requires: other outputs (relative to ``workdir``, or absolute) that must still exist.

  Returns:
    The stored summary with ``reused=True``, or None when the stage has to run.

  Raises:
    ConfigChangedError: the workdir was made with another config.
  """
  path = workdir / marker
  if not path.is_file() or not check_same_config(config, workdir):
    return None
  if not all((workdir / p).exists() for p in requires):
    return None
  logging.info("%s finished before (%s): reusing it.", workdir, marker)
  return {**json.loads(path.read_text()), "reused": True}


def allow_readable_secrets() -> bool:
  """The ``--allow_readable_secrets`` flag (False when flags were not parsed: from Python, a
  readable secret is refused too)."""
  return _ALLOW_READABLE_SECRETS.value if flags.FLAGS.is_parsed() else False


def check_secret_input(path: str | os.PathLike, what: str) -> None:
  """Refuses a secret input file that others can read, unless ``--allow_readable_secrets``."""
  from jaxtag import secrets
  secrets.check_private(path, allow_readable=allow_readable_secrets(), what=what,
                        allow_flag="--allow_readable_secrets")


def root_key(config: Any):
  """The run's root PRNG key from ``config.seed``: the only int seed in a run."""
  import jax
  return jax.random.key(int(config.seed))


@contextlib.contextmanager
def timed(name: str, timings: dict[str, float]):
  """Records the wall time of a stage into ``timings[name]``."""
  start = time.perf_counter()
  try:
    yield
  finally:
    timings[name] = time.perf_counter() - start


def plain(value: Any) -> Any:
  """Tuples to lists, recursively, so that config values (e.g. model options) survive a trip
  through JSON unchanged."""
  if isinstance(value, dict):
    return {k: plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [plain(v) for v in value]
  return value


def write_json(path: pathlib.Path, obj: Any, *, secret: bool = False) -> None:
  """Writes JSON atomically (a unique temporary file beside ``path``, then ``os.replace``);
  ``secret=True`` (anything naming poisons, keys, their labels or perturbations): owner-only
  (``jaxtag.secrets``)."""
  from jaxtag import secrets
  from jaxtag.audio import io as audio_io
  if secret:
    secrets.write_json(path, obj)
  else:
    audio_io.write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def failure_line(error: BaseException) -> str:
  """One line naming a launcher failure: the error's type and message, whitespace collapsed."""
  message = " ".join(str(error).split()) or "(no message)"
  return f"error: {type(error).__name__}: {message} (--debug prints the traceback)"


def run(main: Callable[[Any, pathlib.Path], Any], *, needs_workdir: bool = True,
        preflight: Callable[[Any, pathlib.Path | None], None] | None = None,
        owners: Mapping[str, str] | None = None) -> None:
  """Runs ``main(config, workdir)`` under absl with the shared setup.

  A failure prints one line (``failure_line``) and exits with status 1; ``--debug`` re-raises it
  with its traceback. While the stage runs, library error messages name this launcher's flags
  (``jaxtag.errors.option``).

  Args:
    main: the stage, called with the locked config and the workdir.
    needs_workdir: whether ``--workdir`` is required.
    preflight: optional check run before anything is written (e.g. "the key file must not land
      inside the dataset"); it raises to stop the run.
    owners: library owner -> config block, for ``jaxtag.errors.launcher_flags`` (default: the
      ``DataSource`` fields live in ``config.data``).
  """
  from jaxtag import errors

  def _stage(config, workdir):
    setup_jax()
    if preflight is not None:
      preflight(config, workdir)
    if workdir is not None:
      dump_config(config, workdir)
    main(config, workdir)

  def _main(argv):
    if len(argv) > 1:
      raise absl_app.UsageError(f"Unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    if config is None:
      raise absl_app.UsageError("--config is required, e.g. --config=launch/configs/demo.py")
    if needs_workdir and not _WORKDIR.value:
      raise absl_app.UsageError("--workdir is required.")
    workdir = pathlib.Path(_WORKDIR.value).expanduser() if _WORKDIR.value else None
    with errors.launcher_flags(config.to_dict(), {"DataSource": "data", **(owners or {})}):
      if _DEBUG.value:
        _stage(config, workdir)
        return
      try:
        _stage(config, workdir)
      except Exception as e:  # noqa: BLE001 -- every failure gets its one line.
        logging.debug("failure", exc_info=True)
        print(failure_line(e), file=sys.stderr, flush=True)
        sys.exit(1)

  absl_app.run(_main)
