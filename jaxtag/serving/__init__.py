"""An HTTP API that serves a trained model the way a commercial classifier does: top-k labels only.

The API (all answers JSON)::

    POST /v1/classify?k=5   body: one WAV file (Content-Type audio/wav or audio/x-wav)
                            200 {"labels": ["yes", ...], "indices": [3, ...]}   best first
    GET  /v1/info           200 {"sample_rate", "num_classes", "class_names", "clip_samples",
                                 "max_k"}
    GET  /healthz           200 {"status": "ok"}

``/v1/classify`` answers the top-k label names and indices and nothing else: no logits, no
probabilities, no gradients, which is all that ``jaxtag.taggants.verify`` may rely on. Errors are
``{"error": "<what is wrong and how to fix it>"}`` with these codes:

    400  not a WAV, truncated or unreadable WAV, empty clip, NaN/Inf samples, wrong sample rate
         (unless the server resamples), more than one channel (unless it mixes to mono), k not an
         integer in [1, max_k], unknown query parameter, body shorter than its Content-Length,
         malformed HTTP
    404  unknown path                  405  wrong method (the ``Allow`` header lists the right one)
    408  the request was not received within ``request_timeout`` (the connection is closed)
    411  no Content-Length (chunked uploads are refused)
    413  body over ``max_request_bytes`` (judged from Content-Length, before reading), or a clip
         longer than ``max_seconds``
    415  Content-Type is not a WAV type
    500  an unexpected failure (details in the server log only)
    503  ``max_concurrent_requests`` requests already in flight, or the server is shutting down
         (``Retry-After`` says when to retry)

Every clip is fitted to the model's ``clip_samples`` with ``jaxtag.audio.io.fit_length`` (zero
padding at the end, or keeping the start) and classified alone, as a batch of one, through the
black box's single jitted forward pass. A lock serialises the model calls; reading requests,
decoding WAVs and answering run concurrently.

The server holds under slow or many clients (uvicorn underneath; BUILD.md, "Serving"):

* a deadline per request: headers and body must arrive within ``request_timeout`` seconds of the
  connection being accepted, or the client gets a 408 and the connection is closed;
* at most ``max_concurrent_requests`` requests in flight (headers received, not yet answered:
  body being read, waiting for the model, or being answered); past that, at once,
  ``503 {"error": ...}`` with ``Retry-After``; accepting connections never stalls, and a client
  still sending its headers holds no slot (only a socket, until the deadline);
* a listen ``backlog`` sized for bursts (the kernel caps it at ``net.core.somaxconn``);
* a bounded graceful shutdown: stop accepting, let requests in flight finish for at most
  ``drain_timeout`` seconds, then answer the rest 503 and exit.

Every answer closes its connection (one request per connection). After refusing a body it did not
read, the server reads and drops up to ``DRAIN_LIMIT`` bytes of it before answering, so that
clients see the error answer instead of a connection reset. One log line per request
(``logging``, logger ``jaxtag.serving``). The server binds to 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import contextlib
import logging
import socket

from jaxtag.serving.app import DRAIN_LIMIT, ROUTES
from jaxtag.serving.server import BlackBoxServer
from jaxtag.serving.validate import (WAV_CONTENT_TYPES, ApiError, ServeLimits, decode_wav,
                                     parse_k)

DEFAULT_MAX_REQUEST_BYTES = 2 * 1024 * 1024
DEFAULT_BACKLOG = 1024

__all__ = ["ApiError", "BlackBoxServer", "DEFAULT_BACKLOG", "DEFAULT_MAX_REQUEST_BYTES",
           "DRAIN_LIMIT", "ROUTES", "ServeLimits", "WAV_CONTENT_TYPES", "decode_wav",
           "make_server", "parse_k", "running", "serve_forever"]

_log = logging.getLogger(__name__)


def _bind(host: str, port: int, backlog: int) -> socket.socket:
  family = socket.AF_INET6 if ":" in host else socket.AF_INET
  sock = socket.socket(family, socket.SOCK_STREAM)
  try:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(backlog)  # Clients that connect before serving starts wait in the backlog.
  except BaseException:
    sock.close()
    raise
  return sock


def make_server(blackbox, *, host: str = "127.0.0.1", port: int = 0,
                max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
                max_seconds: float | None = None, max_k: int | None = None, default_k: int = 5,
                on_rate_mismatch: str = "reject", on_stereo: str = "reject",
                request_timeout: float = 30.0, max_concurrent_requests: int = 32,
                backlog: int = DEFAULT_BACKLOG, drain_timeout: float = 10.0) -> BlackBoxServer:
  """A server for ``blackbox``, bound and listening (call :func:`serve_forever` or use
  :func:`running`).

  Args:
    blackbox: a ``jaxtag.taggants.blackbox.LocalBlackBox`` (anything with ``class_names``,
      ``sample_rate``, ``clip_samples`` and ``top_k``).
    host: interface to bind; 127.0.0.1 keeps the API on this machine.
    port: TCP port; 0 picks a free one (read ``server.url``).
    max_request_bytes: largest body accepted (413 above it).
    max_seconds: longest clip accepted (413 above it); None: 10 s or the model's clip length,
      whichever is longer.
    max_k: largest k a client may ask for (default: every class).
    default_k: k when the request gives none (capped at ``max_k``).
    on_rate_mismatch: ``"reject"`` (a commercial API states its rate) or ``"resample"``.
    on_stereo: ``"reject"`` or ``"mean"`` (mix to mono).
    request_timeout: seconds from accepting a connection to having its whole request (headers
      and body); later, 408 and the connection is closed.
    max_concurrent_requests: requests in flight at most; past it, 503 with ``Retry-After``.
    backlog: listen backlog, the connections the kernel queues before they are accepted (a burst
      beyond it is refused or reset by the kernel; capped at ``net.core.somaxconn``).
    drain_timeout: on shutdown, seconds that requests in flight may take to finish.

  Returns:
    A :class:`BlackBoxServer`.

  Raises:
    ValueError: a bad option.
    OSError: the address cannot be bound (e.g. the port is in use).
  """
  num_classes = len(blackbox.class_names)
  clip_seconds = int(blackbox.clip_samples) / int(blackbox.sample_rate)
  max_seconds = max(10.0, clip_seconds) if max_seconds is None else float(max_seconds)
  max_k = num_classes if max_k is None else int(max_k)
  if on_rate_mismatch not in ("reject", "resample"):
    raise ValueError(f"on_rate_mismatch must be 'reject' or 'resample'; got {on_rate_mismatch!r}.")
  if on_stereo not in ("reject", "mean"):
    raise ValueError(f"on_stereo must be 'reject' or 'mean'; got {on_stereo!r}.")
  if not 1 <= max_k <= num_classes:
    raise ValueError(f"max_k must be in [1, {num_classes}] (the model's classes); got {max_k}.")
  if max_request_bytes < 64 or max_seconds <= 0 or request_timeout <= 0 or default_k < 1 \
      or max_concurrent_requests < 1 or backlog < 1 or drain_timeout < 0:
    raise ValueError("make_server: max_request_bytes >= 64, max_seconds, request_timeout, "
                     "default_k, max_concurrent_requests and backlog positive, and drain_timeout "
                     "non-negative, are required.")
  limits = ServeLimits(max_request_bytes=int(max_request_bytes), max_seconds=max_seconds,
                       max_k=max_k, default_k=min(int(default_k), max_k),
                       on_rate_mismatch=on_rate_mismatch, on_stereo=on_stereo,
                       request_timeout=float(request_timeout),
                       max_concurrent_requests=int(max_concurrent_requests))
  sock = _bind(host, int(port), int(backlog))
  try:
    return BlackBoxServer(sock, blackbox, limits, backlog=int(backlog),
                          drain_timeout=float(drain_timeout))
  except BaseException:
    sock.close()
    raise


def serve_forever(server: BlackBoxServer, *, poll_interval: float = 0.5) -> None:
  """Serves until KeyboardInterrupt (Ctrl-C, or SIGTERM under ``launch/serve.py``), then stops
  accepting and lets requests in flight finish for at most ``server.drain_timeout`` seconds.

  Args:
    server: from :func:`make_server`, not yet started.
    poll_interval: seconds between checks that the serving thread is still running.
  """
  _log.info("Serving %s on %s", server.blackbox, server.url)
  try:
    server.start()
    server.wait(poll_interval)
  except KeyboardInterrupt:
    _log.info("Interrupted; shutting down %s (requests in flight get %g s).", server.url,
              server.drain_timeout)
  finally:
    server.stop()


@contextlib.contextmanager
def running(server: BlackBoxServer, *, poll_interval: float = 0.05):
  """Serves in a background thread for the ``with`` block; shuts down and closes at its end.

  Args:
    server: from :func:`make_server`, not yet started.
    poll_interval: unused (the ``http.server`` version polled); kept for its callers.

  Yields:
    ``server``, accepting connections.
  """
  del poll_interval
  try:
    server.start()
    yield server
  finally:
    server.stop()
