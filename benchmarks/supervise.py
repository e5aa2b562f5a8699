"""Runs a pipeline of stages, each in its own process under a time limit, and says so as it goes.

The machinery under ``benchmarks/gpu_check.py``, which a device lease needs: a line stamped with
the wall clock and the seconds since the start for everything (:func:`stamp`, :class:`Log`); in
the stage's process, :class:`Phases` prints each phase's start and end and a heartbeat naming the
running phase, and :func:`emit_result` hands the parent one JSON result line; in the parent,
:func:`supervise` streams the stage's lines, stops it at its limit (stacks first, through
``faulthandler`` on SIGUSR1) and reports its status. Standard library only.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import pathlib
import signal
import subprocess
import tempfile
import threading
import time

RESULT_PREFIX = "RESULT "


def stamp(start: float) -> str:
  """``[HH:MM:SS +SSS.Ss]``: the wall clock and the seconds since ``start``."""
  now = datetime.datetime.now().strftime("%H:%M:%S")
  return f"[{now} +{time.monotonic() - start:6.1f}s]"


class Phases:
  """A stage's progress: ``with phases("compiling"):`` prints the phase's start and end with its
  seconds; a daemon thread prints ``... still <phase> (N s)`` every ``heartbeat_s``."""

  def __init__(self, heartbeat_s: float):
    self.start = time.monotonic()
    self._current: list[tuple[str, float]] = []
    self._lock = threading.Lock()
    self._stop = threading.Event()
    thread = threading.Thread(target=self._beat, args=(heartbeat_s,), daemon=True)
    thread.start()

  def say(self, text: str) -> None:
    print(f"{stamp(self.start)} {text}", flush=True)

  @contextlib.contextmanager
  def __call__(self, name: str):
    began = time.monotonic()
    self.say(f"{name}...")
    with self._lock:
      self._current.append((name, began))
    try:
      yield
    finally:
      with self._lock:
        self._current.pop()
      self.say(f"{name}: done in {time.monotonic() - began:.1f} s")

  def _beat(self, every: float) -> None:
    while not self._stop.wait(every):
      with self._lock:
        current = list(self._current)
      if current:
        name, began = current[-1]
        self.say(f"... still {name} ({time.monotonic() - began:.0f} s)")

  def close(self) -> None:
    self._stop.set()


def emit_result(result: dict) -> None:
  """The stage's result, as the one line the parent collects into ``summary.json``."""
  print(RESULT_PREFIX + json.dumps(result, default=str), flush=True)


class Log:
  """Prints timestamped lines and appends them to a log file (e.g. ``gpu_check.log``)."""

  def __init__(self, path: pathlib.Path):
    self.start = time.monotonic()
    self._file = open(path, "a", encoding="utf-8")   # noqa: SIM115 (closed in close())
    self._lock = threading.Lock()

  def line(self, text: str) -> None:
    text = f"{stamp(self.start)} {text}"
    with self._lock:
      print(text, flush=True)
      self._file.write(text + "\n")
      self._file.flush()

  def close(self) -> None:
    self._file.close()


def write_atomic(path: pathlib.Path, text: str) -> None:
  """Writes ``text`` through a unique temporary file beside ``path``, then renames it."""
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
  try:
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      f.write(text)
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.unlink(tmp)
    raise


def supervise(name: str, cmd: list[str], *, env: dict[str, str], cwd: pathlib.Path,
              limit_s: float, log: Log) -> dict:
  """Runs one stage's process ``cmd`` under ``limit_s``, every line of its output through
  ``log`` (prefixed with ``name``) except its result line.

  Past the limit the process group gets SIGUSR1 (a stage that registered ``faulthandler`` for it
  prints every thread's stack), then SIGKILL.

  Returns:
    ``{"stage", "status" ("ok", "timeout", "failed (exit N)", "skipped"), "seconds",
    "limit_s", "result" (its last result line, or None), "last_line" (when not ok)}``.
  """
  log.line(f"=== stage {name}: start (limit {limit_s:.0f} s) ===")
  began = time.monotonic()
  proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, bufsize=1,
                          start_new_session=True)
  results: list[dict] = []
  last: list[str] = []

  def pump():
    for raw in proc.stdout:
      line = raw.rstrip("\n")
      if line.startswith(RESULT_PREFIX):
        results.append(json.loads(line[len(RESULT_PREFIX):]))
      else:
        last[:] = [line]
        log.line(f"{name} | {line}")

  reader = threading.Thread(target=pump, daemon=True)
  reader.start()
  status = "ok"
  try:
    proc.wait(timeout=limit_s)
  except subprocess.TimeoutExpired:
    status = "timeout"
    log.line(f"{name}: past its {limit_s:.0f} s limit; dumping its threads' stacks")
    with contextlib.suppress(ProcessLookupError):
      os.killpg(proc.pid, signal.SIGUSR1)
    with contextlib.suppress(subprocess.TimeoutExpired):
      proc.wait(timeout=2)   # time to write the stacks
    with contextlib.suppress(ProcessLookupError):
      os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
  reader.join(timeout=10)
  seconds = time.monotonic() - began
  if status == "ok" and proc.returncode != 0:
    status = f"failed (exit {proc.returncode})"
  result = results[-1] if results else None
  if status == "ok" and result and "skipped" in result:
    status = "skipped"
  log.line(f"=== stage {name}: {status} in {seconds:.1f} s ===")
  return {"stage": name, "status": status, "seconds": round(seconds, 1),
          "limit_s": round(limit_s, 1), "result": result,
          "last_line": None if status in ("ok", "skipped") else (last[0] if last else None)}
