"""A stage's workdir: its recorded config, its finished marker and its summaries.

Every pipeline stage (train, make_keys, craft, verify, calibrate, the PosCUDA stages) writes into
one workdir and hands the next stage that folder. The rules, shared by the launchers and by the
library's job functions that they call:

* the stage's typed config is recorded as ``config.json`` (atomically) before anything else, and
  a re-run with another config is refused (:class:`ConfigChangedError`): a re-run continues or
  reuses what the workdir holds, so it must be the same run;
* a stage writes its summary JSON last: its presence is the proof that the stage finished, and a
  re-run of the same config returns it (:func:`finished`) instead of redoing the stage;
* files that name poisons, keys or their labels are written owner-only (:mod:`jaxtag.secrets`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import pathlib
import time
from collections.abc import Iterator
from typing import Any

from jaxtag.audio import io as audio_io

_log = logging.getLogger(__name__)

CONFIG_JSON = "config.json"
# Fields that change how a stage reports or describes itself, never what it computes: they may
# differ on a re-run (``note``: a preset's description).
COSMETIC_FIELDS = frozenset({"progress", "note"})


class ConfigChangedError(ValueError):
  """A workdir re-run with another config than the one that made it."""


@dataclasses.dataclass(frozen=True)
class Runtime:
  """How a stage runs, never what it computes (so not part of its recorded config).

  Attributes:
    allow_readable_secrets: accept a secret input file (key file, PosCUDA secret) that users
      other than its owner can read (the launchers' ``--allow_readable_secrets``).
    transfer_guard: ``jax.transfer_guard`` level inside a stage's hot loop (``allow``, ``log``,
      ``disallow``; the launchers' ``--transfer_guard``).
  """

  allow_readable_secrets: bool = False
  transfer_guard: str = "allow"

  def check_secret_input(self, path: str | os.PathLike, what: str) -> None:
    """Refuses a secret input file that others can read, unless ``allow_readable_secrets``."""
    from jaxtag import secrets
    secrets.check_private(path, allow_readable=self.allow_readable_secrets, what=what,
                          allow_flag="--allow_readable_secrets")


def as_json(config: Any) -> Any:
  """A config (a dataclass, an ``ml_collections.ConfigDict`` or a mapping) as JSON values."""
  from jaxtag import config as config_lib
  if dataclasses.is_dataclass(config) and not isinstance(config, type):
    return json.loads(json.dumps(config_lib.to_json_dict(config), sort_keys=True))
  if hasattr(config, "to_json_best_effort"):
    return json.loads(config.to_json_best_effort(sort_keys=True))
  return json.loads(json.dumps(config, sort_keys=True, default=str))


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
  """Dotted names of the fields that differ between two JSON objects (cosmetic ones skipped)."""
  if not (isinstance(old, dict) and isinstance(new, dict)):
    return [] if old == new else [prefix or "<config>"]
  out = []
  for name in sorted(set(old) | set(new)):
    if name in COSMETIC_FIELDS:
      continue
    path = f"{prefix}.{name}" if prefix else name
    if name not in old or name not in new:
      out.append(path)
    else:
      out += _differences(old[name], new[name], path)
  return out


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


def check_same_config(config: Any, workdir: str | os.PathLike) -> bool:
  """Refuses a workdir whose recorded config differs from ``config``.

  Returns:
    Whether the workdir already recorded this config (False: a fresh workdir).

  Raises:
    ConfigChangedError: naming the differing fields and the fix.
  """
  workdir = pathlib.Path(workdir)
  path = workdir / CONFIG_JSON
  if not path.is_file():
    return False
  try:
    old = json.loads(path.read_text())
  except ValueError:
    return False  # Not ours to trust (written atomically, so never half written by us).
  changed = _differences(old, as_json(config))
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


def record(config: Any, workdir: str | os.PathLike) -> None:
  """Writes ``config`` as the workdir's ``config.json`` (atomically), after checking that the
  workdir holds no run of another config (:func:`check_same_config`)."""
  workdir = pathlib.Path(workdir)
  check_same_config(config, workdir)
  audio_io.write_text_atomic(workdir / CONFIG_JSON,
                             json.dumps(as_json(config), indent=2, sort_keys=True) + "\n")


def read_recorded(workdir: str | os.PathLike) -> dict[str, Any]:
  """The config a workdir recorded (``config.json``), naming the file when it is missing."""
  path = pathlib.Path(workdir) / CONFIG_JSON
  if not path.is_file():
    raise FileNotFoundError(f"{workdir} has no {CONFIG_JSON} (the record of the stage that made "
                            "it); was it made by a jaxtag launcher?")
  return json.loads(path.read_text())


def finished(config: Any, workdir: str | os.PathLike, marker: str,
             requires: tuple[str, ...] = ()) -> dict[str, Any] | None:
  """The stored summary of a finished stage, to reuse instead of redoing the stage.

  A stage writes its summary ``marker`` (atomically) after every other output, so the marker is
  the proof that the stage finished. It is reused only when the workdir's recorded config
  equals ``config``.

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
  workdir = pathlib.Path(workdir)
  path = workdir / marker
  if not path.is_file() or not check_same_config(config, workdir):
    return None
  if not all((workdir / p).exists() for p in requires):
    return None
  _log.info("%s finished before (%s): reusing it.", workdir, marker)
  return {**json.loads(path.read_text()), "reused": True}


def write_json(path: str | os.PathLike, obj: Any, *, secret: bool = False) -> None:
  """Writes JSON atomically (a unique temporary file beside ``path``, then ``os.replace``);
  ``secret=True`` (anything naming poisons, keys, their labels or perturbations): owner-only
  (:mod:`jaxtag.secrets`)."""
  from jaxtag import secrets
  if secret:
    secrets.write_json(path, obj)
  else:
    audio_io.write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


@contextlib.contextmanager
def timed(name: str, timings: dict[str, float]) -> Iterator[None]:
  """Records the wall time of a block into ``timings[name]`` (seconds)."""
  start = time.perf_counter()
  try:
    yield
  finally:
    timings[name] = time.perf_counter() - start
