"""The ASGI application of ``jaxtag.serving``: routing, limits, JSON answers, one log line each.

It runs on uvicorn's event loop (:mod:`jaxtag.serving.server`), so nothing here may block: the WAV
decoding and the model call run in the server's worker threads. Every request is answered with
``Connection: close``, so a connection carries one request and the server's per-connection
deadline is a per-request deadline.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from jaxtag.serving.handlers import TASK_PATHS
from jaxtag.serving.validate import ApiError

# Every path of the API and its method; a server answers its own task's path and refers the
# other tasks' paths to its own (404).
ROUTES = {**{path: "POST" for path in TASK_PATHS.values()}, "/v1/info": "GET", "/healthz": "GET"}
# A refused request's unread body, up to this size, is read and dropped before the answer: closing
# a socket with unread input makes the kernel reset the connection, which can destroy the answer
# before the client reads it (clients send the whole body first).
DRAIN_LIMIT = 64 * 1024 * 1024
RETRY_AFTER_SECONDS = 1
# Set in a request's ASGI scope by the transport when the request deadline cut the connection.
DEADLINE_CUT_KEY = "jaxtag.deadline_cut"

_log = logging.getLogger("jaxtag.serving")


class ClientGone(Exception):
  """The connection closed before the request was read (the client left or the deadline cut it)."""


class _Request:
  """The parts of an ASGI HTTP request the API looks at, and its body stream."""

  def __init__(self, scope: dict[str, Any], receive):
    self.scope = scope
    self.method = scope["method"]
    self.path = scope["path"]
    self.query = scope["query_string"].decode("latin-1")
    raw_path = scope.get("raw_path") or self.path.encode("latin-1")
    self.target = raw_path.decode("latin-1") + (f"?{self.query}" if self.query else "")
    self.client = scope["client"][0] if scope.get("client") else "-"
    self.headers = {name.decode("latin-1").lower(): value.decode("latin-1")
                    for name, value in scope["headers"]}
    self.body_pending = (self.headers.get("content-length", "").strip() not in ("", "0")
                         or "transfer-encoding" in self.headers)
    self.body_bytes = 0
    self._receive = receive

  async def _next_chunk(self) -> tuple[bytes, bool]:
    message = await self._receive()
    if message["type"] == "http.disconnect":
      self.body_pending = False
      raise ClientGone()
    more = bool(message.get("more_body", False))
    self.body_pending = more
    return message.get("body", b""), more

  async def read_body(self) -> bytes:
    """The whole body (the transport already enforces Content-Length and the deadline)."""
    chunks = []
    more = True
    while more:
      chunk, more = await self._next_chunk()
      chunks.append(chunk)
    body = b"".join(chunks)
    self.body_bytes = len(body)
    return body

  async def drain(self) -> None:
    """Reads and drops what is left of the body, up to :data:`DRAIN_LIMIT` bytes."""
    dropped = 0
    try:
      while self.body_pending and dropped < DRAIN_LIMIT:
        chunk, _ = await self._next_chunk()
        dropped += len(chunk)
    except ClientGone:
      pass


def _content_length(headers: dict[str, str], max_bytes: int) -> int:
  if "chunked" in headers.get("transfer-encoding", "").lower() or "content-length" not in headers:
    raise ApiError(411, "Content-Length is required (chunked uploads are not accepted).")
  text = headers["content-length"].strip()
  if not text.isdigit():
    raise ApiError(400, f"Content-Length must be a non-negative integer; got {text!r}.")
  length = int(text)
  if length > max_bytes:
    raise ApiError(413, f"body is {length} bytes; this API accepts at most {max_bytes} bytes.")
  return length


async def _send_json(send, status: int, payload: Any, headers: dict[str, str]) -> None:
  data = json.dumps(payload).encode("utf-8")
  raw_headers = [(b"Content-Type", b"application/json"),
                 (b"Content-Length", str(len(data)).encode("ascii")), (b"Connection", b"close")]
  raw_headers += [(name.encode("latin-1"), value.encode("latin-1"))
                  for name, value in headers.items()]
  await send({"type": "http.response.start", "status": status, "headers": raw_headers})
  await send({"type": "http.response.body", "body": data, "more_body": False})


class BlackBoxApp:
  """The API of :mod:`jaxtag.serving` for one server, as an ASGI 3 application.

  Args:
    server: the :class:`jaxtag.serving.server.BlackBoxServer` it answers for (its ``handler``,
      ``limits``, ``info()`` and ``run_model()``).
  """

  def __init__(self, server):
    self.server = server
    self.in_flight = 0  # Requests admitted and not yet answered (the event loop is one thread).

  async def __call__(self, scope, receive, send) -> None:
    if scope["type"] != "http":
      return  # Lifespan is off and websockets are not served.
    request = _Request(scope, receive)
    start = time.perf_counter()
    status, headers, payload, drain = 500, {}, None, True
    admitted = False
    try:
      limit = self.server.limits.max_concurrent_requests
      if self.in_flight >= limit:
        raise ApiError(503, f"server busy: {self.in_flight} requests in flight, at most {limit} "
                       f"are served at once; retry in {RETRY_AFTER_SECONDS} s.",
                       {"Retry-After": str(RETRY_AFTER_SECONDS)})
      self.in_flight += 1
      admitted = True
      payload = await self._answer(request)
      status = 200
    except ApiError as e:
      status, payload, headers = e.status, {"error": e.message}, e.headers
    except ClientGone:
      status = 408 if scope.get(DEADLINE_CUT_KEY) else 499
    except asyncio.CancelledError:
      # uvicorn cancels the requests still open when the drain time is over: answer at once.
      status, payload, drain = 503, {"error": "the server is shutting down; retry later."}, False
      headers = {"Retry-After": str(RETRY_AFTER_SECONDS)}
    except Exception:  # noqa: BLE001 -- any failure must still answer (500) and be logged.
      _log.exception("%s %s failed", request.method, request.target)
      payload = {"error": "internal server error; see the server log."}
    try:
      if payload is not None:
        if drain and request.body_pending:
          await request.drain()
        await _send_json(send, status, payload, headers)
    finally:
      self.in_flight -= admitted
      _log.info("%s %s %s -> %d (%d B in, %.1f ms)", request.client, request.method,
                request.target, status, request.body_bytes, 1e3 * (time.perf_counter() - start))

  async def _answer(self, request: _Request) -> Any:
    server = self.server
    handler = server.handler
    path = request.path.rstrip("/") or "/"
    method = ROUTES.get(path)
    if method is None:
      raise ApiError(404, f"no such path {request.path!r}; the API has POST {handler.usage}, "
                     "GET /v1/info and GET /healthz.")
    if path in TASK_PATHS.values() and path != handler.path:
      raise ApiError(404, f"this server answers task {handler.task!r}, not {path}; use POST "
                     f"{handler.usage} (GET /v1/info describes it).")
    if request.method != method:
      raise ApiError(405, f"{request.method} is not allowed on {path}; use {method}.",
                     {"Allow": method})
    if path == handler.path:
      return await self._task_request(request)
    if path == "/v1/info":
      return server.info()
    return {"status": "ok"}

  async def _task_request(self, request: _Request) -> dict[str, Any]:
    handler = self.server.handler
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in handler.content_types:
      raise ApiError(415, f"Content-Type must be {' or '.join(handler.content_types[:2])}; got "
                     f"{content_type or 'none'!r}.")
    length = _content_length(request.headers, self.server.limits.max_request_bytes)
    params = handler.parse_query(request.query)
    body = await request.read_body()
    if len(body) < length:
      raise ApiError(400, f"body has {len(body)} bytes but Content-Length says {length}.")
    return await self.server.run_model(body, params)
