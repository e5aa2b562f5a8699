"""The transport under ``jaxtag.serving``: uvicorn's h11 protocol with a request deadline, a socket
bound (and listening) at construction, a serving thread and a bounded graceful shutdown.

uvicorn is imported here only, when a server is made (``import jaxtag.serving`` stays cheap). What
uvicorn gives as it is: an event loop that never stops accepting (a slow client holds a socket, not
a thread), the listen backlog, and a graceful shutdown bounded by ``timeout_graceful_shutdown``.
What this file adds (BUILD.md, "Serving", says why): a deadline on receiving each request, headers
and body together, which uvicorn does not have (its keep-alive timer is reset by every byte and is
not armed before the first request); JSON for the 400 that uvicorn answers in plain text; and an
answer (a 400 if its body is short) instead of a dropped connection when a client half-closes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import json
import logging
import socket
import threading
import time
from typing import Any

from jaxtag.serving import app as app_lib
from jaxtag.serving.handlers import TaskHandler
from jaxtag.serving.validate import ServeLimits

_log = logging.getLogger("jaxtag.serving")
# Threads that decode WAVs and call the model (the model calls themselves take turns on a lock).
_MAX_WORKERS = 4


def _raw_json_response(status: int, reason: str, payload: Any) -> bytes:
  body = json.dumps(payload).encode("utf-8")
  head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
          f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
  return head.encode("ascii") + body


@functools.lru_cache(maxsize=None)
def deadline_protocol(request_timeout: float) -> type[asyncio.Protocol]:
  """uvicorn's h11 protocol with a deadline on receiving each request, headers and body together.

  The deadline runs from the moment the connection is accepted. A request not fully received by
  then gets a 408 (JSON) and its connection is closed, whatever the client is still trickling. A
  request received in time is not cut afterwards: waiting for the model and answering are bounded
  by the model, not by the client.

  Args:
    request_timeout: seconds.

  Returns:
    A protocol class for ``uvicorn.Config(http=...)``.
  """
  import h11
  from uvicorn.protocols.http.h11_impl import H11Protocol

  timeout_answer = _raw_json_response(408, "Request Timeout", {
      "error": f"the request (headers and body) was not received within {request_timeout:g} s; "
               "send the whole request at once."})
  malformed_answer = json.dumps({
      "error": "malformed HTTP request (request line, headers or body framing); send one "
               "well-formed HTTP/1.1 request."}).encode("utf-8")

  class DeadlineH11Protocol(H11Protocol):
    """H11Protocol plus the request deadline (one request per connection: see app.py)."""

    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport):
      super().connection_made(transport)
      self._deadline = self.loop.call_later(request_timeout, self._deadline_passed)

    def connection_lost(self, exc):
      if self._deadline is not None:
        self._deadline.cancel()
      super().connection_lost(exc)

    def _deadline_passed(self) -> None:
      cycle = self.cycle
      if self.transport.is_closing():
        return
      if cycle is not None and (not cycle.more_body or cycle.response_started):
        return  # Received in time.
      client = self.client[0] if self.client else "-"
      if cycle is None:  # Still in the request line or headers: the app never saw it.
        _log.info("%s -> 408 (request headers not received within %g s)", client,
                  request_timeout)
      else:  # The app is waiting for the body: it sees a disconnect and must not answer.
        cycle.scope[app_lib.DEADLINE_CUT_KEY] = True
        cycle.disconnected = True
      self.transport.write(timeout_answer)
      self.transport.close()

    def eof_received(self):
      # A client may half-close once it has sent its request; uvicorn would then close without
      # answering. Keep the connection open for the answer instead.
      cycle = self.cycle
      if cycle is None or cycle.response_complete:
        return super().eof_received()
      if cycle.more_body and not cycle.response_started:
        # It stopped before the end of its body: end the body here, so that the app answers
        # 400 (body shorter than its Content-Length) instead of a silent close.
        cycle.more_body = False
        cycle.message_event.set()
      return True

    def send_400_response(self, msg: str) -> None:
      del msg  # uvicorn's plain-text message; every answer of this API is JSON.
      headers = [(b"Content-Type", b"application/json"),
                 (b"Content-Length", str(len(malformed_answer)).encode("ascii")),
                 (b"Connection", b"close")]
      try:
        for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
                      h11.Data(data=malformed_answer), h11.EndOfMessage()):
          self.transport.write(self.conn.send(event))
      except h11.LocalProtocolError:
        pass  # Too late for an answer (one was already started): just close.
      self.transport.close()

  return DeadlineH11Protocol


class BlackBoxServer:
  """One black box served over HTTP (uvicorn, h11) on a socket bound at construction.

  Made by :func:`jaxtag.serving.make_server` or :func:`jaxtag.serving.make_speaker_server`;
  served by :func:`jaxtag.serving.serve_forever` or :func:`jaxtag.serving.running` (which call
  :meth:`start` and :meth:`stop`).

  Attributes:
    handler: the task it answers (:mod:`jaxtag.serving.handlers`): endpoint, checks, model call.
    blackbox: the handler's model (a ``LocalBlackBox``, a ``LocalSpeakerBlackBox``, ...).
    limits: the :class:`ServeLimits`.
    server_address: the bound ``(host, port)`` (IPv6: ``(host, port, flowinfo, scope_id)``).
    url: ``http://host:port`` it listens on.
    backlog: the listen backlog (connections the kernel queues before they are accepted).
    drain_timeout: seconds :meth:`stop` waits for requests in flight before cancelling them.
    inference_lock: serialises the model calls.
  """

  def __init__(self, sock: socket.socket, handler: TaskHandler, limits: ServeLimits, *,
               backlog: int, drain_timeout: float):
    import uvicorn  # Only a server needs it.

    self.handler = handler
    self.limits = limits
    self.backlog = backlog
    self.drain_timeout = drain_timeout
    self.inference_lock = threading.Lock()
    self._socket = sock
    self.server_address = sock.getsockname()
    host, port = self.server_address[:2]
    self.url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    self._executor = concurrent.futures.ThreadPoolExecutor(
        min(_MAX_WORKERS, limits.max_concurrent_requests), thread_name_prefix="jaxtag-serve")
    self._app = app_lib.BlackBoxApp(self)
    config = uvicorn.Config(
        self._app, http=deadline_protocol(limits.request_timeout), ws="none",
        lifespan="off", loop="asyncio", interface="asgi3", log_config=None, access_log=False,
        proxy_headers=False, server_header=False, headers=[("Server", "jaxtag-serve")],
        backlog=backlog, timeout_keep_alive=max(1, int(limits.request_timeout)),
        timeout_graceful_shutdown=drain_timeout)
    self._uvicorn = uvicorn.Server(config)
    self._thread: threading.Thread | None = None
    self._done = threading.Event()  # Set when the serving thread ends.
    self._failure: BaseException | None = None

  @property
  def blackbox(self):
    return self.handler.blackbox

  def __repr__(self) -> str:
    return f"BlackBoxServer({self.url}, {self.handler.task}, {self.blackbox!r})"

  def open_connections(self) -> int:
    """Connections open now, requests in flight or not yet past their headers."""
    return len(self._uvicorn.server_state.connections)

  def requests_in_flight(self) -> int:
    """Requests admitted (headers received) and not yet answered: at most
    ``limits.max_concurrent_requests``."""
    return self._app.in_flight

  def info(self) -> dict[str, Any]:
    """``GET /v1/info``: the task, then the handler's fields."""
    return {"task": self.handler.task, **self.handler.info(self.limits)}

  def answer(self, body: bytes, params: Any) -> dict[str, Any]:
    """The handler's answer to a task request; decodes concurrently, blocks on the model lock."""
    inputs = self.handler.prepare(body, params, self.limits)
    with self.inference_lock:
      return self.handler.run(inputs)

  async def run_model(self, body: bytes, params: Any) -> dict[str, Any]:
    """:meth:`answer` in a worker thread, leaving the event loop free."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(self._executor, self.answer, body, params)

  def _serve(self) -> None:
    try:
      self._uvicorn.run(sockets=[self._socket])
    except BaseException as e:  # noqa: BLE001 -- reported by start() or stop().
      self._failure = e
      _log.exception("Serving %s failed", self.url)
    finally:
      self._done.set()

  def start(self, timeout: float = 30.0) -> None:
    """Starts serving in a background thread; returns once connections are being accepted.

    Raises:
      RuntimeError: already started, or the server failed to start within ``timeout`` seconds.
    """
    if self._thread is not None:
      raise RuntimeError(f"{self!r} was already started; make a new server with make_server.")
    # A daemon thread: a second Ctrl-C during the drain still ends the process.
    self._thread = threading.Thread(target=self._serve, name=f"serve {self.url}", daemon=True)
    self._thread.start()
    deadline = time.monotonic() + timeout
    while not self._uvicorn.started:
      if self._done.is_set() or time.monotonic() > deadline:
        raise RuntimeError(f"{self!r} did not start ({self._failure!r}); see the log.")
      time.sleep(0.01)

  def wait(self, poll_interval: float = 0.5) -> None:
    """Blocks until the server stops (Ctrl-C still raises ``KeyboardInterrupt`` here)."""
    # Sleeps rather than Thread.join: a KeyboardInterrupt inside join() can leave the thread
    # marked as finished while it runs (CPython), and stop() would then not wait for the drain.
    while self._thread is not None and not self._done.is_set():
      time.sleep(poll_interval)

  def stop(self) -> None:
    """Stops accepting, lets requests in flight finish for at most ``drain_timeout`` seconds,
    cancels the rest (they get a 503), and closes the socket. Idempotent."""
    thread, self._thread = self._thread, None
    if thread is not None:
      self._uvicorn.should_exit = True
      # uvicorn itself bounds the drain; this is a guard.
      if not self._done.wait(self.drain_timeout + 10.0):
        _log.error("%s: the serving thread did not stop within %.0f s.", self.url,
                   self.drain_timeout + 10.0)
    self._executor.shutdown(wait=False, cancel_futures=True)
    self._socket.close()
