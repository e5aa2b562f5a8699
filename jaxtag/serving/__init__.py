"""An HTTP API that serves a trained model the way a commercial API does: a classifier's top-k
labels only, or a speaker-verification model's scores or decisions only.

A server answers one task. A classifier's (:func:`make_server`; all answers JSON)::

    POST /v1/classify?k=5   body: one WAV file (Content-Type audio/wav or audio/x-wav)
                            200 {"labels": ["yes", ...], "indices": [3, ...]}   best first
    GET  /v1/info           200 {"task": "classify", "sample_rate", "num_classes", "class_names",
                                 "clip_samples", "max_k"}
    GET  /healthz           200 {"status": "ok"}

A speaker-verification model's (:func:`make_speaker_server`)::

    POST /v1/speaker/verify body (Content-Type application/json):
                            {"enrol": [<base64 WAV>, ...], "queries": [<base64 WAV>, ...]}
                            200 {"scores": [0.71, ...]}       mode "score": per query, the cosine
                                                              with the enrolment centroid
                            200 {"accept": [true, ...]}       mode "decision": score >= threshold
    GET  /v1/info           200 {"task": "speaker", "mode", "sample_rate", "clip_samples",
                                 "max_enrol", "max_queries", "max_request_bytes", "max_seconds"}
    GET  /healthz           200 {"status": "ok"}

The enrolment is the utterances of one claimed speaker. A decision-mode server never shows a
score, an embedding or its threshold. Another task's endpoint answers 404 naming this server's.

``/v1/classify`` answers the top-k label names and indices and nothing else: no logits, no
probabilities, no gradients, which is all that ``jaxtag.taggants.verify`` may rely on. Errors are
``{"error": "<what is wrong and how to fix it>"}`` with these codes:

    400  not a WAV, truncated or unreadable WAV, empty clip, NaN/Inf samples, wrong sample rate
         (unless the server resamples), more than one channel (unless it mixes to mono), k not an
         integer in [1, max_k], unknown query parameter, body shorter than its Content-Length,
         malformed HTTP; speaker: bad JSON, a missing or unknown field, an empty list, an item
         that is not base64 (a clip's errors name it: ``queries[3]: ...``)
    404  unknown path                  405  wrong method (the ``Allow`` header lists the right one)
    408  the request was not received within ``request_timeout`` (the connection is closed)
    411  no Content-Length (chunked uploads are refused)
    413  body over ``max_request_bytes`` (judged from Content-Length, before reading), a clip
         longer than ``max_seconds``, or more than ``max_enrol``/``max_queries`` clips
    415  Content-Type is not the endpoint's (a WAV type; application/json)
    500  an unexpected failure (details in the server log only)
    503  ``max_concurrent_requests`` requests already in flight, or the server is shutting down
         (``Retry-After`` says when to retry)

Every clip is fitted to the model's ``clip_samples`` with ``jaxtag.audio.io.fit_length`` (zero
padding at the end, or keeping the start). A classifier's clip is classified alone, as a batch of
one, through the black box's single jitted forward pass; a speaker request's clips are embedded
together. A lock serialises the model calls; reading requests, decoding WAVs and answering run
concurrently. Each task is a handler (:mod:`jaxtag.serving.handlers`) under the same server.

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
from jaxtag.serving.handlers import TASK_PATHS, ClassifyHandler, SpeakerHandler
from jaxtag.serving.server import BlackBoxServer
from jaxtag.serving.validate import (JSON_CONTENT_TYPES, WAV_CONTENT_TYPES, ApiError, ServeLimits,
                                     decode_wav, parse_k, parse_speaker_body)

DEFAULT_MAX_REQUEST_BYTES = 2 * 1024 * 1024
DEFAULT_BACKLOG = 1024
DEFAULT_MAX_ENROL = 32
DEFAULT_MAX_QUERIES = 64

__all__ = ["ApiError", "BlackBoxServer", "ClassifyHandler", "DEFAULT_BACKLOG",
           "DEFAULT_MAX_ENROL", "DEFAULT_MAX_QUERIES", "DEFAULT_MAX_REQUEST_BYTES", "DRAIN_LIMIT",
           "JSON_CONTENT_TYPES", "ROUTES", "ServeLimits", "SpeakerHandler", "TASK_PATHS",
           "WAV_CONTENT_TYPES", "decode_wav", "make_server", "make_speaker_server", "parse_k",
           "parse_speaker_body", "running", "serve_forever"]

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


def _limits(*, max_request_bytes: int, max_seconds: float | None, clip_seconds: float,
            on_rate_mismatch: str, on_stereo: str, request_timeout: float,
            max_concurrent_requests: int, backlog: int, drain_timeout: float) -> ServeLimits:
  """The task-independent limits of :func:`make_server` and :func:`make_speaker_server`."""
  max_seconds = max(10.0, clip_seconds) if max_seconds is None else float(max_seconds)
  if on_rate_mismatch not in ("reject", "resample"):
    raise ValueError(f"on_rate_mismatch must be 'reject' or 'resample'; got {on_rate_mismatch!r}.")
  if on_stereo not in ("reject", "mean"):
    raise ValueError(f"on_stereo must be 'reject' or 'mean'; got {on_stereo!r}.")
  if max_request_bytes < 64 or max_seconds <= 0 or request_timeout <= 0 \
      or max_concurrent_requests < 1 or backlog < 1 or drain_timeout < 0:
    raise ValueError("make_server: max_request_bytes >= 64, max_seconds, request_timeout, "
                     "max_concurrent_requests and backlog positive, and drain_timeout "
                     "non-negative, are required.")
  return ServeLimits(max_request_bytes=int(max_request_bytes), max_seconds=max_seconds,
                     on_rate_mismatch=on_rate_mismatch, on_stereo=on_stereo,
                     request_timeout=float(request_timeout),
                     max_concurrent_requests=int(max_concurrent_requests))


def _serve_handler(handler, *, host: str, port: int, backlog: int, drain_timeout: float,
                   **limits) -> BlackBoxServer:
  """A bound, listening server for ``handler`` (limits: the options of :func:`_limits`)."""
  box = handler.blackbox
  limits = _limits(clip_seconds=int(box.clip_samples) / int(box.sample_rate), backlog=backlog,
                   drain_timeout=drain_timeout, **limits)
  sock = _bind(host, int(port), int(backlog))
  try:
    return BlackBoxServer(sock, handler, limits, backlog=int(backlog),
                          drain_timeout=float(drain_timeout))
  except BaseException:
    sock.close()
    raise


def make_server(blackbox, *, host: str = "127.0.0.1", port: int = 0,
                max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
                max_seconds: float | None = None, max_k: int | None = None, default_k: int = 5,
                on_rate_mismatch: str = "reject", on_stereo: str = "reject",
                request_timeout: float = 30.0, max_concurrent_requests: int = 32,
                backlog: int = DEFAULT_BACKLOG, drain_timeout: float = 10.0) -> BlackBoxServer:
  """A classifier's server (``POST /v1/classify``) for ``blackbox``, bound and listening (call
  :func:`serve_forever` or use :func:`running`).

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
  max_k = num_classes if max_k is None else int(max_k)
  if not 1 <= max_k <= num_classes:
    raise ValueError(f"max_k must be in [1, {num_classes}] (the model's classes); got {max_k}.")
  if default_k < 1:
    raise ValueError(f"default_k must be positive; got {default_k}.")
  handler = ClassifyHandler(blackbox, max_k=max_k, default_k=min(int(default_k), max_k))
  return _serve_handler(handler, host=host, port=port, max_request_bytes=max_request_bytes,
                        max_seconds=max_seconds, on_rate_mismatch=on_rate_mismatch,
                        on_stereo=on_stereo, request_timeout=request_timeout,
                        max_concurrent_requests=max_concurrent_requests, backlog=backlog,
                        drain_timeout=drain_timeout)


def make_speaker_server(blackbox, *, max_enrol: int = DEFAULT_MAX_ENROL,
                        max_queries: int = DEFAULT_MAX_QUERIES, host: str = "127.0.0.1",
                        port: int = 0, max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
                        max_seconds: float | None = None, on_rate_mismatch: str = "reject",
                        on_stereo: str = "reject", request_timeout: float = 30.0,
                        max_concurrent_requests: int = 32, backlog: int = DEFAULT_BACKLOG,
                        drain_timeout: float = 10.0) -> BlackBoxServer:
  """A speaker-verification server (``POST /v1/speaker/verify``) for ``blackbox``, bound and
  listening (call :func:`serve_forever` or use :func:`running`).

  Args:
    blackbox: a ``jaxtag.speaker.blackbox.LocalSpeakerBlackBox`` (anything with ``mode``,
      ``sample_rate``, ``clip_samples`` and ``verify``); its mode is the API's: a
      decision-mode box answers accept/reject only.
    max_enrol: most enrolment clips per request (413 above it).
    max_queries: most query clips per request (413 above it).
    host, port, max_request_bytes: as for :func:`make_server`; a request holds every clip.
    max_seconds: longest clip accepted, each; None: 10 s or the model's clip length.
    on_rate_mismatch, on_stereo, request_timeout, max_concurrent_requests, backlog,
      drain_timeout: as for :func:`make_server`, each clip decoded as a classifier's is.

  Returns:
    A :class:`BlackBoxServer`.

  Raises:
    ValueError: a bad option, or a black box of an unknown mode.
    OSError: the address cannot be bound.
  """
  if int(max_enrol) < 1 or int(max_queries) < 1:
    raise ValueError(f"max_enrol and max_queries must be positive; got {max_enrol}, "
                     f"{max_queries}.")
  handler = SpeakerHandler(blackbox, max_enrol=int(max_enrol), max_queries=int(max_queries))
  return _serve_handler(handler, host=host, port=port, max_request_bytes=max_request_bytes,
                        max_seconds=max_seconds, on_rate_mismatch=on_rate_mismatch,
                        on_stereo=on_stereo, request_timeout=request_timeout,
                        max_concurrent_requests=max_concurrent_requests, backlog=backlog,
                        drain_timeout=drain_timeout)


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
