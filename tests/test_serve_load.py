"""jaxtag.serving under load, over loopback only: bursts, slow clients, the request deadline and
SIGTERM. Each test is bounded in time (a few seconds) and traffic (at most 50 connections)."""

import concurrent.futures
import http.client
import io
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import soundfile as sf

from jaxtag import serving

ROOT = pathlib.Path(__file__).resolve().parent.parent
from tiny_classifier import SR, tone_clips  # noqa: E402


def wav(x) -> bytes:
  buf = io.BytesIO()
  sf.write(buf, np.asarray(x), SR, subtype="PCM_16", format="WAV")
  return buf.getvalue()


def post_clip(address, body: bytes, timeout: float = 20.0):
  """One POST /v1/classify?k=2; returns (status, decoded JSON, headers). Raises on a reset."""
  conn = http.client.HTTPConnection(*address[:2], timeout=timeout)
  try:
    conn.request("POST", "/v1/classify?k=2", body=body, headers={"Content-Type": "audio/wav"})
    response = conn.getresponse()
    return response.status, json.loads(response.read()), dict(response.headers)
  finally:
    conn.close()


class Trickler(threading.Thread):
  """A client that sends one byte every ``interval`` seconds and records when the server cut it.

  ``phase="headers"`` never finishes its headers; ``phase="body"`` sends complete headers for a
  WAV upload and then trickles the body.
  """

  def __init__(self, address, *, phase: str, interval: float = 0.5, limit: float = 10.0):
    super().__init__(daemon=True)
    self.address, self.phase, self.interval, self.limit = address, phase, interval, limit
    self.cut_after = None   # seconds from connecting to the server closing the connection
    self.answer = b""
    self.connected = threading.Event()
    self._halt = threading.Event()

  def stop(self, join: bool = True):
    self._halt.set()
    if join:
      self.join(self.interval + 2.0)

  def run(self):
    if self.phase == "headers":
      prefix = b"POST /v1/classify?k=1 HTTP/1.1\r\nHost: test\r\nX-Slow: "
    else:
      prefix = (b"POST /v1/classify?k=1 HTTP/1.1\r\nHost: test\r\nContent-Type: audio/wav\r\n"
                b"Content-Length: 100000\r\n\r\nRIFF")
    with socket.create_connection(self.address[:2], timeout=5.0) as sock:
      start = time.monotonic()
      sock.sendall(prefix)
      self.connected.set()
      sock.settimeout(self.interval)
      while not self._halt.is_set() and time.monotonic() - start < self.limit:
        try:
          data = sock.recv(65536)
          if not data:
            break
          self.answer += data
          continue
        except socket.timeout:
          pass
        except OSError:
          break
        try:
          sock.send(b"a")
        except OSError:
          break
      else:
        return  # Still connected when told to stop (or at the limit): not cut.
      self.cut_after = time.monotonic() - start


def start_tricklers(server, n: int, *, phase: str, **kwargs) -> list[Trickler]:
  tricklers = [Trickler(server.server_address, phase=phase, **kwargs) for _ in range(n)]
  for t in tricklers:
    t.start()
  # Wait until the server has accepted all of them (and, for the body phase, admitted them).
  count = server.open_connections if phase == "headers" else server.requests_in_flight
  deadline = time.monotonic() + 10.0
  while count() < n:
    assert time.monotonic() < deadline, f"only {count()} of {n} trickling clients got in"
    time.sleep(0.02)
  return tricklers


def test_fifty_concurrent_clients_all_get_an_answer(tiny_box):
  clips = tone_clips(50, 11)[0]
  expected = tiny_box.top_k(clips, 2).tolist()
  srv = serving.make_server(tiny_box, request_timeout=10.0)
  assert srv.backlog == serving.DEFAULT_BACKLOG >= 50
  bodies = [wav(clip) for clip in clips]
  barrier = threading.Barrier(50)

  def client(i):
    barrier.wait()  # All 50 connect at once.
    return post_clip(srv.server_address, bodies[i])

  with serving.running(srv), concurrent.futures.ThreadPoolExecutor(50) as pool:
    futures = [pool.submit(client, i) for i in range(50)]
    # A reset (ConnectionResetError) or a stall (TimeoutError) fails here.
    answers = [f.result(timeout=30) for f in futures]
  statuses = [status for status, _, _ in answers]
  assert set(statuses) <= {200, 503}, statuses
  assert statuses.count(200) >= 1
  for i, (status, answer, headers) in enumerate(answers):
    if status == 200:
      assert answer["indices"] == expected[i]
    else:
      assert headers["Retry-After"] == "1" and "server busy" in answer["error"]


@pytest.mark.parametrize("phase, status", [("headers", 200), ("body", 503)])
def test_a_normal_request_is_answered_within_a_second_despite_32_trickling_clients(
    tiny_box, phase, status):
  """32 slow clients: stuck in their headers they hold no slot, so a new client is served; stuck
  in their bodies they fill the server (32 slots), so a new client gets a 503 at once instead of
  waiting for them. Either way within a second."""
  srv = serving.make_server(tiny_box, request_timeout=20.0, drain_timeout=1.0,
                            max_concurrent_requests=32)
  body = wav(tone_clips(1, 12)[0][0])
  with serving.running(srv):
    post_clip(srv.server_address, body)  # Warm: the model is compiled for this batch shape.
    tricklers = start_tricklers(srv, 32, phase=phase)
    try:
      start = time.monotonic()
      got, answer, headers = post_clip(srv.server_address, body, timeout=5.0)
      elapsed = time.monotonic() - start
    finally:
      for t in tricklers:
        t.stop(join=False)
      for t in tricklers:
        t.join(2.0)
  assert elapsed < 1.0 and got == status, (elapsed, got, answer)
  if status == 503:
    assert headers["Retry-After"] == "1" and "32 requests in flight" in answer["error"]
  assert all(t.cut_after is None for t in tricklers)  # Still trickling when the answer came.


def test_request_deadline_cuts_a_trickling_client_within_6_s(tiny_box):
  srv = serving.make_server(tiny_box, request_timeout=5.0)
  with serving.running(srv):
    tricklers = [Trickler(srv.server_address, phase=phase, limit=10.0)
                 for phase in ("headers", "body")]
    for t in tricklers:
      t.start()
    for t in tricklers:
      t.join(12.0)
  for t in tricklers:
    assert t.cut_after is not None and 4.5 < t.cut_after < 6.0, (t.phase, t.cut_after)
    assert t.answer == b"" or t.answer.startswith(b"HTTP/1.1 408 "), t.answer[:200]


def test_sigterm_exits_within_the_drain_time_with_a_slow_client_connected(tiny_workdir):
  drain = 2.0
  cmd = [sys.executable, "-m", "launch.serve", "--config=launch/configs/serve.py",
         f"--config.model_workdir={tiny_workdir}", "--config.port=0",
         "--config.request_timeout=60", f"--config.drain_timeout={drain}"]
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  trickler = None
  try:
    line = proc.stdout.readline()  # Blocks until the server is bound (or the launcher died).
    assert " at http://127.0.0.1:" in line, (line, proc.stderr.read() if proc.poll() else "")
    port = int(line.split(" at http://127.0.0.1:")[1].split()[0])
    trickler = Trickler(("127.0.0.1", port), phase="body", interval=0.2, limit=30.0)
    trickler.start()
    assert trickler.connected.wait(5.0)
    time.sleep(0.5)  # Its headers reach the app, which waits for the body.
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    elapsed = time.monotonic() - start
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.communicate()
    if trickler is not None:
      trickler.stop()
  assert proc.returncode == 0, err[-3000:]
  assert "Server stopped." in out
  # It waited for the slow request (graceful), but no longer than the drain time.
  assert drain - 0.5 < elapsed < drain + 2.0, (elapsed, err[-6000:], trickler.answer)
  assert trickler.cut_after is not None and b" 503 " in trickler.answer[:20], trickler.answer
