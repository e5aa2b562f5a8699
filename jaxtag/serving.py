"""An HTTP API that serves a trained model the way a commercial classifier does: top-k labels only.

Standard library only (``http.server``). The API (all answers JSON)::

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
         integer in [1, max_k], unknown query parameter, body shorter than its Content-Length
    404  unknown path                  405  wrong method (the ``Allow`` header lists the right one)
    411  no Content-Length (chunked uploads are refused)
    413  body over ``max_request_bytes`` (judged from Content-Length, before reading), or a clip
         longer than ``max_seconds``
    415  Content-Type is not a WAV type
    500  an unexpected failure (details in the server log only)

Every clip is fitted to the model's ``clip_samples`` with ``jaxtag.audio.io.fit_length`` (zero
padding at the end, or keeping the start) and classified alone, as a batch of one, through the
black box's single jitted forward pass; a lock serialises the model calls, while reading and
decoding requests run concurrently in up to ``max_concurrent_requests`` handler threads.

After refusing a body it did not read, the server closes the connection gracefully (reading
and dropping up to ``_DRAIN_LIMIT`` bytes), so that clients see the error answer instead of a
connection reset. One log
line per request (``logging``). The server binds to 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.server
import io
import json
import logging
import socket
import struct
import threading
import time
import urllib.parse
from typing import Any

import numpy as np

from jaxtag.audio.io import AudioFileError, fit_length, resample, validate_waveform

DEFAULT_MAX_REQUEST_BYTES = 2 * 1024 * 1024
WAV_CONTENT_TYPES = ("audio/wav", "audio/x-wav", "audio/wave", "audio/vnd.wave")
_ROUTES = {"/v1/classify": "POST", "/v1/info": "GET", "/healthz": "GET"}
# Unread bodies up to this size are discarded before closing (see the module docstring).
_DRAIN_LIMIT = 64 * 1024 * 1024
_UNKNOWN_CHUNK_SIZES = (0, 0xFFFFFFFF)

_log = logging.getLogger(__name__)


class ApiError(Exception):
  """A request the API refuses: an HTTP status and a message for the client."""

  def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
    super().__init__(message)
    self.status = status
    self.message = message
    self.headers = headers or {}


@dataclasses.dataclass(frozen=True)
class ServeLimits:
  """What the API accepts (see :func:`make_server` for the meaning of each field)."""

  max_request_bytes: int
  max_seconds: float
  max_k: int
  default_k: int
  on_rate_mismatch: str
  on_stereo: str
  request_timeout: float


def parse_k(query: str, *, max_k: int, default_k: int) -> int:
  """The ``k`` of a query string (``default_k`` when absent).

  Raises:
    ApiError: 400 for a bad or repeated ``k`` or an unknown parameter.
  """
  params = urllib.parse.parse_qs(query, keep_blank_values=True)
  unknown = sorted(set(params) - {"k"})
  if unknown:
    raise ApiError(400, f"unknown query parameter(s) {unknown}; /v1/classify takes only k.")
  values = params.get("k", [str(default_k)])
  if len(values) != 1:
    raise ApiError(400, f"k is given {len(values)} times; give it once.")
  text = values[0].strip()
  if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= max_k:
    raise ApiError(400, f"k must be an integer in [1, {max_k}]; got {values[0]!r}.")
  return int(text)


def _check_riff(body: bytes) -> None:
  """Refuses a body without a RIFF/WAVE header, or whose data chunk is cut short.

  libsndfile would silently read a truncated upload as a shorter clip.
  """
  if len(body) < 12 or body[:4] not in (b"RIFF", b"RF64") or body[8:12] != b"WAVE":
    raise ApiError(400, "request body is not a WAV file (no RIFF/WAVE header); send one mono "
                   "WAV file as the body.")
  if body[:4] == b"RF64":
    return  # 64-bit sizes live in the ds64 chunk; libsndfile judges those.
  pos = 12
  while pos + 8 <= len(body):
    chunk_id, size = struct.unpack_from("<4sI", body, pos)
    if chunk_id == b"data":
      available = len(body) - (pos + 8)
      if size not in _UNKNOWN_CHUNK_SIZES and size > available:
        raise ApiError(400, f"truncated WAV: its header declares {size} bytes of audio but only "
                       f"{available} are present; send the whole file.")
      return
    pos += 8 + size + (size & 1)  # Chunks are padded to an even size.
  raise ApiError(400, "truncated or malformed WAV: no audio data chunk found; send the whole "
                 "file.")


def decode_wav(body: bytes, *, sample_rate: int, max_seconds: float,
               on_rate_mismatch: str = "reject", on_stereo: str = "reject") -> np.ndarray:
  """Decodes a WAV request body into a mono float32 waveform at ``sample_rate``.

  Args:
    body: the bytes of a WAV file.
    sample_rate: the rate the model expects.
    max_seconds: longest clip accepted.
    on_rate_mismatch: ``"reject"`` (400 naming the expected rate) or ``"resample"``.
    on_stereo: ``"reject"`` (400) or ``"mean"`` (average the channels).

  Returns:
    float32 ``(T,)``.

  Raises:
    ApiError: 400 for anything unusable (not WAV, truncated, empty, NaN/Inf, rate, channels),
      413 for a clip longer than ``max_seconds``.
  """
  import soundfile as sf  # The client side (jaxtag.taggants.blackbox) does not need it.

  _check_riff(body)
  try:
    with sf.SoundFile(io.BytesIO(body)) as f:
      rate, channels, frames = int(f.samplerate), int(f.channels), int(f.frames)
      if frames == 0:
        raise ApiError(400, "WAV file has 0 samples; send a non-empty clip.")
      if rate != sample_rate and on_rate_mismatch != "resample":
        raise ApiError(400, f"sample rate is {rate} Hz but this model expects {sample_rate} Hz; "
                       f"resample the clip to {sample_rate} Hz (see GET /v1/info).")
      if channels > 1 and on_stereo != "mean":
        raise ApiError(400, f"WAV file has {channels} channels but a mono clip is expected; "
                       "mix it down to one channel.")
      if frames > max_seconds * rate:
        raise ApiError(413, f"clip is {frames / rate:.3f} s long; this API accepts at most "
                       f"{max_seconds:g} s.")
      data = f.read(dtype="float32", always_2d=True)
  except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
    raise ApiError(400, f"not a readable WAV file ({e}); re-export it as PCM or float WAV.") from e
  if data.shape[0] == 0:
    raise ApiError(400, "WAV file has 0 readable samples; send the whole file.")
  if data.shape[1] > 1:
    data = data.mean(axis=1, keepdims=True, dtype=np.float32)
  try:
    x = validate_waveform(data[:, 0], name="request body")
  except AudioFileError as e:
    raise ApiError(400, str(e)) from e
  return resample(x, rate, sample_rate) if rate != sample_rate else x


class BlackBoxServer(http.server.ThreadingHTTPServer):
  """A ``ThreadingHTTPServer`` that answers the API of this module for one black box.

  Attributes:
    blackbox: the model (a ``LocalBlackBox`` or anything with its attributes and ``top_k``).
    limits: the :class:`ServeLimits`.
    url: ``http://host:port`` it listens on.
  """

  # Graceful shutdown: server_close() waits for requests in flight (each bounded by the timeout).
  daemon_threads = False
  block_on_close = True

  def __init__(self, address: tuple[str, int], blackbox, limits: ServeLimits,
               max_concurrent_requests: int):
    self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    self.blackbox = blackbox
    self.limits = limits
    self.inference_lock = threading.Lock()
    self._slots = threading.BoundedSemaphore(max_concurrent_requests)
    super().__init__(address, _Handler)
    host, port = self.server_address[:2]
    self.url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

  def process_request(self, request, client_address):
    # Backpressure: past the limit, new connections wait in the listen backlog.
    self._slots.acquire()
    try:
      super().process_request(request, client_address)
    except BaseException:
      self._slots.release()
      raise

  def process_request_thread(self, request, client_address):
    try:
      super().process_request_thread(request, client_address)
    finally:
      self._slots.release()

  def info(self) -> dict[str, Any]:
    box = self.blackbox
    return {"sample_rate": int(box.sample_rate), "num_classes": len(box.class_names),
            "class_names": list(box.class_names), "clip_samples": int(box.clip_samples),
            "max_k": self.limits.max_k}

  def classify(self, waveform: np.ndarray, k: int) -> dict[str, Any]:
    """Top-k names and indices of one clip (fitted to ``clip_samples``)."""
    x = fit_length(waveform, int(self.blackbox.clip_samples))[None]
    with self.inference_lock:
      indices = np.asarray(self.blackbox.top_k(x, k))[0]
    indices = [int(i) for i in indices]
    return {"labels": [self.blackbox.class_names[i] for i in indices], "indices": indices}


class _Handler(http.server.BaseHTTPRequestHandler):
  """Routes requests to the API; every answer, errors included, is JSON."""

  server: BlackBoxServer
  server_version = "jaxtag-serve"

  def setup(self):
    self.timeout = self.server.limits.request_timeout  # Socket timeout: slow clients let go.
    self._body_unread = False
    super().setup()

  def _dispatch(self):
    start = time.perf_counter()
    announced = self.headers.get("Content-Length", "").strip()
    self._body_unread = announced not in ("", "0") or "Transfer-Encoding" in self.headers
    status, body_bytes = 500, 0
    try:
      parsed = urllib.parse.urlsplit(self.path)
      path = parsed.path.rstrip("/") or "/"
      method = _ROUTES.get(path)
      if method is None:
        raise ApiError(404, f"no such path {parsed.path!r}; the API has POST /v1/classify?k=K, "
                       "GET /v1/info and GET /healthz.")
      if self.command != method:
        raise ApiError(405, f"{self.command} is not allowed on {path}; use {method}.",
                       {"Allow": method})
      if path == "/v1/classify":
        body_bytes, payload = self._classify(parsed.query)
      elif path == "/v1/info":
        payload = self.server.info()
      else:
        payload = {"status": "ok"}
      status = 200
      self._send_json(200, payload)
    except ApiError as e:
      status = e.status
      self._send_json(e.status, {"error": e.message}, e.headers)
      if self._body_unread:
        self._linger()
    except (TimeoutError, ConnectionError) as e:
      status = 408 if isinstance(e, TimeoutError) else 499
      self.close_connection = True
    except Exception:  # noqa: BLE001 -- any failure must still answer (500) and be logged.
      _log.exception("%s %s failed", self.command, self.path)
      self._send_json(500, {"error": "internal server error; see the server log."})
    finally:
      _log.info("%s %s %s -> %d (%d B in, %.1f ms)", self.client_address[0], self.command,
                self.path, status, body_bytes, 1e3 * (time.perf_counter() - start))

  do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _dispatch

  def _classify(self, query: str) -> tuple[int, dict[str, Any]]:
    limits = self.server.limits
    content_type = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if content_type not in WAV_CONTENT_TYPES:
      raise ApiError(415, f"Content-Type must be audio/wav (or audio/x-wav); got "
                     f"{content_type or 'none'!r}.")
    length = self._content_length(limits.max_request_bytes)
    k = parse_k(query, max_k=limits.max_k, default_k=limits.default_k)
    body = self.rfile.read(length)
    self._body_unread = False
    if len(body) < length:
      raise ApiError(400, f"body has {len(body)} bytes but Content-Length says {length}.")
    waveform = decode_wav(body, sample_rate=int(self.server.blackbox.sample_rate),
                          max_seconds=limits.max_seconds,
                          on_rate_mismatch=limits.on_rate_mismatch, on_stereo=limits.on_stereo)
    return length, self.server.classify(waveform, k)

  def _content_length(self, max_bytes: int) -> int:
    if "chunked" in self.headers.get("Transfer-Encoding", "").lower() or \
        self.headers.get("Content-Length") is None:
      raise ApiError(411, "Content-Length is required (chunked uploads are not accepted).")
    text = self.headers["Content-Length"].strip()
    if not text.isdigit():
      raise ApiError(400, f"Content-Length must be a non-negative integer; got {text!r}.")
    length = int(text)
    if length > max_bytes:
      raise ApiError(413, f"body is {length} bytes; this API accepts at most {max_bytes} bytes.")
    return length

  def _linger(self):
    """Lingering close after refusing a request whose body was not read.

    Closing a socket with unread input makes the kernel reset the connection, which can destroy
    the answer before the client reads it (clients send the whole body first). So: stop sending,
    then read and drop what the client still sends, until it closes, ``_DRAIN_LIMIT`` bytes, or
    ``request_timeout`` seconds.
    """
    deadline = time.monotonic() + self.server.limits.request_timeout
    received = 0
    with contextlib.suppress(OSError):
      self.wfile.flush()
      self.connection.shutdown(socket.SHUT_WR)
      while received < _DRAIN_LIMIT:
        left = deadline - time.monotonic()
        if left <= 0:
          break
        self.connection.settimeout(left)
        chunk = self.connection.recv(1 << 16)
        if not chunk:
          break
        received += len(chunk)

  def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None):
    data = json.dumps(payload).encode("utf-8")
    self.close_connection = True
    with contextlib.suppress(OSError):
      self.send_response(status)
      self.send_header("Content-Type", "application/json")
      self.send_header("Content-Length", str(len(data)))
      self.send_header("Connection", "close")
      for name, value in (headers or {}).items():
        self.send_header(name, value)
      self.end_headers()
      if self.command != "HEAD":
        self.wfile.write(data)

  def send_error(self, code, message=None, explain=None):
    # Protocol-level failures (bad request line, oversized headers) answer JSON too.
    _log.info("%s: HTTP %d %s", self.client_address[0], code, message or "")
    self._send_json(code, {"error": message or self.responses.get(code, ("",))[0]})

  def log_request(self, code="-", size="-"):
    pass  # _dispatch logs one line per request, with its timing.

  def log_message(self, format, *args):  # pylint: disable=redefined-builtin
    _log.debug("%s: " + format, self.client_address[0], *args)


def make_server(blackbox, *, host: str = "127.0.0.1", port: int = 0,
                max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
                max_seconds: float | None = None, max_k: int | None = None, default_k: int = 5,
                on_rate_mismatch: str = "reject", on_stereo: str = "reject",
                request_timeout: float = 30.0,
                max_concurrent_requests: int = 32) -> BlackBoxServer:
  """A server for ``blackbox``, bound and ready (call :func:`serve_forever` or use :func:`running`).

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
    request_timeout: socket timeout in seconds per connection.
    max_concurrent_requests: handler threads at most; further connections wait.

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
      or max_concurrent_requests < 1:
    raise ValueError("make_server: max_request_bytes >= 64, and max_seconds, request_timeout, "
                     "default_k, max_concurrent_requests positive, are required.")
  limits = ServeLimits(max_request_bytes=int(max_request_bytes), max_seconds=max_seconds,
                       max_k=max_k, default_k=min(int(default_k), max_k),
                       on_rate_mismatch=on_rate_mismatch, on_stereo=on_stereo,
                       request_timeout=float(request_timeout))
  return BlackBoxServer((host, int(port)), blackbox, limits, int(max_concurrent_requests))


def serve_forever(server: BlackBoxServer, *, poll_interval: float = 0.5) -> None:
  """Serves until KeyboardInterrupt (Ctrl-C), then stops accepting and finishes open requests."""
  _log.info("Serving %s on %s", server.blackbox, server.url)
  try:
    server.serve_forever(poll_interval=poll_interval)
  except KeyboardInterrupt:
    _log.info("Interrupted; shutting down %s.", server.url)
  finally:
    server.server_close()


@contextlib.contextmanager
def running(server: BlackBoxServer, *, poll_interval: float = 0.05):
  """Serves in a background thread for the ``with`` block; shuts down and closes at its end."""
  thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": poll_interval},
                            name=f"serve {server.url}", daemon=True)
  thread.start()
  try:
    yield server
  finally:
    server.shutdown()
    server.server_close()
    thread.join()
