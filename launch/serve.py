r"""Stage: serve a trained model over HTTP, answering top-k labels only (jaxtag.serving).

  .venv/bin/python -m launch.serve --config=launch/configs/serve.py \
      --config.model_workdir=workdirs/suspect --config.port=8080

Prints the URL and serves until Ctrl-C (or SIGTERM); requests in flight get at most
--config.drain_timeout seconds to finish.
"""

from __future__ import annotations

import pathlib
import signal
from typing import Any

from launch import app


def build_server(config: Any):
  """The bound (not yet serving) ``jaxtag.serving.BlackBoxServer`` for ``config``."""
  from jaxtag import serving
  from jaxtag.taggants import blackbox

  # Requests are classified one at a time, so batches of one: no padding work per request.
  box = blackbox.LocalBlackBox(config.model_workdir, batch_size=1)
  return serving.make_server(
      box, host=config.host, port=config.port, max_request_bytes=config.max_request_bytes,
      max_seconds=config.max_seconds or None, max_k=config.max_k or None,
      default_k=config.default_k,
      on_rate_mismatch=config.on_rate_mismatch, on_stereo=config.on_stereo,
      request_timeout=config.request_timeout,
      max_concurrent_requests=config.max_concurrent_requests, backlog=config.backlog,
      drain_timeout=config.drain_timeout)


def _raise_keyboard_interrupt(signum, frame):
  del signum, frame
  raise KeyboardInterrupt


def _stop_on_signals() -> None:
  """Ctrl-C (SIGINT) and SIGTERM (docker stop, kill) shut the server down gracefully, whatever
  it inherited: a parent that ignores SIGINT (a job started with ``&`` from a script) or blocks
  it in its signal mask would otherwise leave a server that only SIGKILL stops."""
  stops = {signal.SIGINT, signal.SIGTERM}
  if hasattr(signal, "pthread_sigmask"):
    signal.pthread_sigmask(signal.SIG_UNBLOCK, stops)
  for signum in stops:
    signal.signal(signum, _raise_keyboard_interrupt)


def run_stage(config: Any, workdir: pathlib.Path | None = None) -> None:
  """Serves ``config.model_workdir`` until interrupted."""
  del workdir  # Serving writes nothing.
  from jaxtag import serving

  server = build_server(config)
  box = server.blackbox
  print(f"Serving {config.model_workdir} ({len(box.class_names)} classes, {box.sample_rate} Hz) "
        f"at {server.url}  (GET {server.url}/v1/info, POST {server.url}/v1/classify?k=5); "
        f"Ctrl-C stops (drain at most {config.drain_timeout:g} s).", flush=True)
  _stop_on_signals()
  serving.serve_forever(server)
  print("Server stopped.", flush=True)


def main(config, workdir):
  run_stage(config, workdir)


if __name__ == "__main__":
  app.run(main, needs_workdir=False)
