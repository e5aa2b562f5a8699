r"""Stage: serve a trained model over HTTP, answering top-k labels only, or a speaker model's
scores or decisions only (jaxtag.serving).

  .venv/bin/python -m launch.serve --config=launch/configs/serve.py \
      --config.model_workdir=workdirs/suspect --config.port=8080
  .venv/bin/python -m launch.serve --config=launch/configs/serve.py:speaker \
      --config.model_workdir=workdirs/speaker --config.speaker_mode=decision

Prints the URL and serves until Ctrl-C (or SIGTERM); requests in flight get at most
--config.drain_timeout seconds to finish.
"""

from __future__ import annotations

import signal

from launch import app


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


def main(job, workdir):
  del workdir  # Serving writes nothing.
  from jaxtag import serving
  from jaxtag.serving import job as serve_job

  server = serve_job.build_server(job)
  handler = server.handler
  print(f"Serving {job.model_workdir} ({handler.describe()}) at {server.url}  (GET "
        f"{server.url}/v1/info, POST {server.url}{handler.usage}); Ctrl-C stops (drain at most "
        f"{job.drain_timeout:g} s).", flush=True)
  _stop_on_signals()
  serving.serve_forever(server)
  print("Server stopped.", flush=True)


if __name__ == "__main__":
  from jaxtag.serving.job import ServeJob
  app.run(main, job=ServeJob, needs_workdir=False)
