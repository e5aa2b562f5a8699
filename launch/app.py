"""Shared setup for every jaxtag launcher: flags, hosts and devices, the typed job, errors.

Each launcher in this folder defines ``main(job, workdir)`` that calls one library entry point
(a ``run_*_job`` function over the stage's typed job), and ends with
``app.run(main, job=TheJob)``: the ConfigDict (generated from ``TheJob`` by ``jaxtag.config``) is
turned back into the typed job, whose checks run with messages that name the flags. Launchers run as modules from the repository root, as in
big_vision: ``python -m launch.<stage> --config=launch/configs/<stage>.py --workdir=...``.
Everything that is common to the pipeline stages lives here so that the launchers stay short.
"""

from __future__ import annotations

import os
import pathlib
import sys
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


def allow_readable_secrets() -> bool:
  """The ``--allow_readable_secrets`` flag (False when flags were not parsed: from Python, a
  readable secret is refused too)."""
  return _ALLOW_READABLE_SECRETS.value if flags.FLAGS.is_parsed() else False


def runtime():
  """How the library's job functions run under this launcher's flags (``jaxtag.workdir.Runtime``):
  ``--allow_readable_secrets`` and ``--transfer_guard``."""
  from jaxtag import workdir
  return workdir.Runtime(allow_readable_secrets=allow_readable_secrets(),
                         transfer_guard=transfer_guard_level())


def print_summary(summary: Mapping[str, Any]) -> None:
  """Prints a stage's summary, one ``key: value`` line per field."""
  for key, value in summary.items():
    print(f"{key}: {value}")


def failure_line(error: BaseException) -> str:
  """One line naming a launcher failure: the error's type and message, whitespace collapsed."""
  message = " ".join(str(error).split()) or "(no message)"
  return f"error: {type(error).__name__}: {message} (--debug prints the traceback)"


def run(main: Callable[[Any, pathlib.Path | None], Any], *, job: type,
        needs_workdir: bool = True, owners: Mapping[str, str] | None = None) -> None:
  """Runs ``main(job, workdir)`` under absl with the shared setup.

  A failure prints one line (``failure_line``) and exits with status 1; ``--debug`` re-raises it
  with its traceback. While the stage runs, library error messages name this launcher's flags
  (``jaxtag.errors.option``).

  Args:
    main: the stage, called with the typed job and the workdir (None without ``--workdir``).
    job: the library dataclass of the stage's config (e.g. ``jaxtag.train.job.TrainJob``): the
      ConfigDict is turned into it (``jaxtag.config.from_config``, which runs its checks). The
      library's job function checks its inputs and records the job in the workdir itself.
    needs_workdir: whether ``--workdir`` is required.
    owners: library owner -> config block, for ``jaxtag.errors.launcher_flags`` (default: the
      ``DataSource`` fields live in ``config.data``).
  """
  from jaxtag import config as config_lib
  from jaxtag import errors

  def _stage(config, workdir):
    setup_jax()
    main(config_lib.from_config(job, config), workdir)

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
