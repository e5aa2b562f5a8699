"""The HTTP server under bursts and slow clients: ``jaxtag.serving`` now against an older version.

Four measurements on 127.0.0.1, each bounded in time, for each implementation (``new``: the
working tree's ``jaxtag.serving``; ``old``: ``jaxtag/serving.py`` at ``--baseline_rev``, the
``http.server`` version, loaded from git):

* ``burst``: 50 clients POST a clip at the same moment (a barrier), ``--bursts`` times, each on
  a fresh server: answers by status, and failures by exception (``ConnectionResetError``...);
* ``tricklers``: 32 clients (= ``max_concurrent_requests``) send one byte every 2 s, stuck in
  their headers, or in their bodies; then the latency of one normal request (10 s at most);
* ``deadline``: with ``request_timeout=5``, when the server cuts a header and a body trickler
  (30 s at most);
* ``sigterm``: a server process (signals handled as ``launch/serve.py`` does) with a body trickler
  connected gets SIGTERM: seconds until it exits (``drain_timeout=2`` where there is one; 40 s at
  most).

Without ``--workdir`` the tests' tiny classifier (``tests/tiny_classifier.py``) is trained first.

Commands (from the repository root)::

  .venv/bin/python benchmarks/bench_serve.py                  # old and new, JSON to results/
  .venv/bin/python benchmarks/bench_serve.py --impl new --bursts 5
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import importlib.util
import inspect
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import wave

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)

import numpy as np  # noqa: E402

from benchmarks import harness  # noqa: E402

TRICKLE_INTERVAL = 2.0
_HEADERS_PREFIX = b"POST /v1/classify?k=1 HTTP/1.1\r\nHost: bench\r\nX-Slow: "
_BODY_PREFIX = (b"POST /v1/classify?k=1 HTTP/1.1\r\nHost: bench\r\nContent-Type: audio/wav\r\n"
                b"Content-Length: 100000\r\n\r\nRIFF")


def load_serving(impl: str, baseline_rev: str, tmp: str):
  """The ``jaxtag.serving`` module of ``impl`` (``old``: its source at ``baseline_rev``)."""
  if impl == "new":
    from jaxtag import serving
    return serving
  source = subprocess.run(["git", "show", f"{baseline_rev}:jaxtag/serving.py"], cwd=_ROOT,
                          check=True, capture_output=True, text=True).stdout
  path = os.path.join(tmp, "old_serving.py")
  with open(path, "w") as f:
    f.write(source)
  spec = importlib.util.spec_from_file_location("old_serving", path)
  module = importlib.util.module_from_spec(spec)
  sys.modules["old_serving"] = module  # dataclasses look their module up there.
  spec.loader.exec_module(module)
  return module


def make(serving, box, **options):
  """``serving.make_server`` with the options that version knows (the old one lacks some)."""
  known = inspect.signature(serving.make_server).parameters
  return serving.make_server(box, **{k: v for k, v in options.items() if k in known})


def wav_bytes(x: np.ndarray, rate: int) -> bytes:
  buf = io.BytesIO()
  with wave.open(buf, "wb") as w:
    w.setnchannels(1)
    w.setsampwidth(2)
    w.setframerate(rate)
    w.writeframes((np.clip(x, -1, 1) * 32767).astype("<i2").tobytes())
  return buf.getvalue()


def post(address, body: bytes, timeout: float) -> tuple[int, float]:
  start = time.monotonic()
  conn = http.client.HTTPConnection(*address[:2], timeout=timeout)
  try:
    conn.request("POST", "/v1/classify?k=1", body=body, headers={"Content-Type": "audio/wav"})
    response = conn.getresponse()
    response.read()
    return response.status, time.monotonic() - start
  finally:
    conn.close()


def trickle(address, prefix: bytes, limit: float, halt: threading.Event,
            connected: threading.Event | None = None) -> float | None:
  """Sends ``prefix`` then a byte every TRICKLE_INTERVAL s; seconds until the server cut it."""
  with socket.create_connection(address[:2], timeout=5.0) as sock:
    start = time.monotonic()
    sock.sendall(prefix)
    if connected is not None:
      connected.set()
    sock.settimeout(TRICKLE_INTERVAL)
    while not halt.is_set() and time.monotonic() - start < limit:
      try:
        if not sock.recv(65536):
          return time.monotonic() - start
        continue
      except socket.timeout:
        pass
      except OSError:
        return time.monotonic() - start
      try:
        sock.send(b"a")
      except OSError:
        return time.monotonic() - start
  return None


def measure_burst(serving, box, body: bytes, bursts: int) -> list[dict]:
  runs = []
  for _ in range(bursts):
    server = make(serving, box)
    barrier = threading.Barrier(50)

    def client(_):
      barrier.wait()
      try:
        return str(post(server.server_address, body, timeout=10.0)[0])
      except Exception as e:  # noqa: BLE001 -- counted by kind.
        return type(e).__name__

    with serving.running(server), concurrent.futures.ThreadPoolExecutor(50) as pool:
      outcomes = list(pool.map(client, range(50)))
    runs.append({k: outcomes.count(k) for k in sorted(set(outcomes))})
  return runs


def measure_tricklers(serving, box, body: bytes, prefix: bytes) -> dict:
  server = make(serving, box, request_timeout=5.0, drain_timeout=1.0)
  halt = threading.Event()
  with serving.running(server):
    post(server.server_address, body, timeout=30.0)  # Compile the batch-of-one path first.
    connected = [threading.Event() for _ in range(32)]
    threads = [threading.Thread(target=trickle, args=(server.server_address, prefix, 60.0, halt,
                                                      event), daemon=True) for event in connected]
    for t in threads:  # One by one: a burst of 32 connects would overflow the old backlog of 5.
      t.start()
      time.sleep(0.05)
    time.sleep(1.0)  # All 32 accepted.
    try:
      status, seconds = post(server.server_address, body, timeout=10.0)
      result = {"status": status, "seconds": round(seconds, 3)}
    except Exception as e:  # noqa: BLE001 -- a timeout is the finding.
      result = {"status": type(e).__name__, "seconds": None}
    result["tricklers_connected"] = sum(event.is_set() for event in connected)
    halt.set()
    for t in threads:
      t.join(TRICKLE_INTERVAL + 5.0)
  return result


def measure_deadline(serving, box) -> dict:
  server = make(serving, box, request_timeout=5.0, drain_timeout=1.0)
  halt = threading.Event()
  with serving.running(server), concurrent.futures.ThreadPoolExecutor(2) as pool:
    futures = {name: pool.submit(trickle, server.server_address, prefix, 30.0, halt)
               for name, prefix in (("headers", _HEADERS_PREFIX), ("body", _BODY_PREFIX))}
    cut = {name: f.result() for name, f in futures.items()}
  return {name: None if s is None else round(s, 2) for name, s in cut.items()}


def measure_sigterm(impl: str, args, workdir: str) -> dict:
  cmd = [sys.executable, os.path.abspath(__file__), "--child", impl, "--workdir", workdir,
         "--baseline_rev", args.baseline_rev]
  proc = subprocess.Popen(cmd, cwd=_ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                          text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  halt, connected = threading.Event(), threading.Event()
  try:
    port = int(proc.stdout.readline().strip())
    thread = threading.Thread(target=trickle, args=(("127.0.0.1", port), _BODY_PREFIX, 40.0, halt,
                                                    connected), daemon=True)
    thread.start()
    connected.wait(5.0)
    time.sleep(1.0)
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
      proc.wait(timeout=45.0)
      seconds = round(time.monotonic() - start, 2)
    except subprocess.TimeoutExpired:
      seconds = None
  finally:
    halt.set()
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  return {"seconds": seconds, "returncode": proc.returncode,
          "drain_timeout": 2.0 if impl == "new" else None}


def child(args) -> None:
  """A server process: prints its port, serves until SIGTERM (as launch/serve.py handles it)."""
  from jaxtag.taggants import blackbox

  def interrupt(signum, frame):
    del signum, frame
    raise KeyboardInterrupt

  with tempfile.TemporaryDirectory() as tmp:
    serving = load_serving(args.child, args.baseline_rev, tmp)
    box = blackbox.LocalBlackBox(args.workdir, batch_size=1)
    server = make(serving, box, request_timeout=5.0, drain_timeout=2.0)
    print(server.server_address[1], flush=True)
    signal.signal(signal.SIGTERM, interrupt)
    serving.serve_forever(server)


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--impl", choices=("old", "new", "both"), default="both")
  parser.add_argument("--baseline_rev", default="755ecb5",
                      help="git revision whose jaxtag/serving.py is the old server")
  parser.add_argument("--workdir", default="", help="a trained workdir (default: tiny classifier)")
  parser.add_argument("--bursts", type=int, default=3)
  parser.add_argument("--out", default="benchmarks/results/serve_{date}.json",
                      help="JSON file to write ('' = none)")
  parser.add_argument("--child", default="", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.child:
    return child(args)
  from jaxtag.taggants import blackbox

  env = harness.environment()
  env["versions"].update(harness.package_versions(("uvicorn", "h11")))
  results = {"bench": "serve", "env": env, "trickle_interval_s": TRICKLE_INTERVAL, "impls": {}}
  with tempfile.TemporaryDirectory(prefix="bench_serve_") as tmp:
    workdir = args.workdir
    if not workdir:
      sys.path.insert(0, os.path.join(_ROOT, "tests"))
      import tiny_classifier
      workdir = os.path.join(tmp, "tiny")
      tiny_classifier.train_tiny_workdir(workdir)
    box = blackbox.LocalBlackBox(workdir, batch_size=1)
    rng = np.random.default_rng(0)
    body = wav_bytes(0.1 * rng.standard_normal(box.clip_samples), box.sample_rate)
    for impl in (("old", "new") if args.impl == "both" else (args.impl,)):
      serving = load_serving(impl, args.baseline_rev, tmp)
      record = {
          "burst_50": measure_burst(serving, box, body, args.bursts),
          "tricklers_32_headers": measure_tricklers(serving, box, body, _HEADERS_PREFIX),
          "tricklers_32_body": measure_tricklers(serving, box, body, _BODY_PREFIX),
          "deadline_5s_cut_after_s": measure_deadline(serving, box),
          "sigterm_exit": measure_sigterm(impl, args, workdir),
      }
      results["impls"][impl] = record
      print(impl, json.dumps(record), flush=True)
  if args.out:
    path = args.out.format(date=env["date"])
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
      json.dump(results, f, indent=1)
    print("wrote", path)
  return results


if __name__ == "__main__":
  main()
