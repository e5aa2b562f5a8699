"""The client side of jaxtag's HTTP API: JSON requests with retries, WAV encoding, errors.

Both remote black boxes (``jaxtag.taggants.blackbox.HttpBlackBox`` for a classifier,
``jaxtag.speaker.blackbox.HttpSpeakerBlackBox`` for a speaker verifier) talk through
:class:`JsonClient`: stdlib ``urllib`` only, retries with exponential backoff on 502/503/504 and
on connection failures, and one :class:`BlackBoxError` that carries the server's own message.
"""

from __future__ import annotations

import http.client
import io
import json
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
import wave
from typing import Any

import numpy as np

from jaxtag.audio import io as audio_io

_log = logging.getLogger(__name__)
RETRY_STATUSES = (502, 503, 504)


class BlackBoxError(RuntimeError):
  """A remote black box refused a request or could not be reached; the message says why.

  Attributes:
    status: the HTTP status code, or None when no answer came back.
  """

  def __init__(self, message: str, status: int | None = None):
    super().__init__(message)
    self.status = status


def encode_wav_pcm16(waveform: np.ndarray, sample_rate: int) -> bytes:
  """A mono 16-bit PCM WAV file in memory, rounded as ``jaxtag.audio.io.write_wav`` rounds.

  Args:
    waveform: float ``(T,)``; samples are clipped to [-1, 1].
    sample_rate: rate in Hz.

  Returns:
    The WAV file's bytes.
  """
  pcm = audio_io.to_pcm16(np.asarray(waveform)).astype("<i2")
  buf = io.BytesIO()
  with wave.open(buf, "wb") as w:
    w.setnchannels(1)
    w.setsampwidth(2)
    w.setframerate(int(sample_rate))
    w.writeframes(pcm.tobytes())
  return buf.getvalue()


def error_message(error: urllib.error.HTTPError) -> str:
  """The ``error`` field of a JSON error answer, or the raw body."""
  try:
    raw = error.read().decode("utf-8", errors="replace")
  except (OSError, http.client.HTTPException):
    return error.reason or ""
  try:
    return str(json.loads(raw)["error"])
  except (ValueError, KeyError, TypeError):
    return raw.strip()[:500] or str(error.reason)


def base_url(url: str, *, owner: str, endpoints: tuple[str, ...]) -> str:
  """``url`` without a trailing endpoint (``/v1/info``...) or slash; ValueError if not http(s)."""
  parsed = urllib.parse.urlsplit(url)
  if parsed.scheme not in ("http", "https") or not parsed.netloc:
    raise ValueError(f"{owner}: {url!r} is not an http:// or https:// URL.")
  path = parsed.path.rstrip("/")
  for suffix in endpoints + ("/v1/info", "/healthz"):
    path = path.removesuffix(suffix)
  return urllib.parse.urlunsplit((parsed.scheme, parsed.netloc, path, "", ""))


class JsonClient:
  """JSON requests to one server, with retries.

  Args:
    url: the server's base URL (see :func:`base_url`).
    owner: the class that uses it, for messages.
    timeout: seconds per request.
    max_retries: retries after a 502/503/504 or a connection failure.
    backoff_seconds: wait before the first retry; doubled for each further one.
  """

  def __init__(self, url: str, *, owner: str, timeout: float, max_retries: int,
               backoff_seconds: float):
    if timeout <= 0 or max_retries < 0 or backoff_seconds < 0:
      raise ValueError(f"{owner}: timeout must be positive, max_retries and backoff_seconds "
                       f"non-negative; got {timeout}, {max_retries}, {backoff_seconds}.")
    self.url = url
    self.timeout = float(timeout)
    self.max_retries = int(max_retries)
    self.backoff_seconds = float(backoff_seconds)

  def request(self, method: str, path: str, body: bytes | None = None,
              headers: dict[str, str] | None = None) -> Any:
    """One request with retries; returns the decoded JSON answer.

    Raises:
      BlackBoxError: an error answer (with the server's message), no answer after the
        retries, or an answer that is not JSON.
    """
    url = self.url + path
    for attempt in range(self.max_retries + 1):
      request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
      try:
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
          return json.loads(response.read().decode("utf-8"))
      except urllib.error.HTTPError as e:
        message = error_message(e)
        if e.code not in RETRY_STATUSES or attempt == self.max_retries:
          raise BlackBoxError(f"{method} {url} failed with HTTP {e.code}: {message}",
                              status=e.code) from None
        failure = f"HTTP {e.code}: {message}"
      except (urllib.error.URLError, http.client.HTTPException, ConnectionError,
              TimeoutError) as e:
        if attempt == self.max_retries:
          raise BlackBoxError(f"{method} {url}: no answer after {attempt + 1} tries "
                              f"({getattr(e, 'reason', e)}). Is the server running?") from e
        failure = repr(e)
      except json.JSONDecodeError as e:
        raise BlackBoxError(f"{method} {url} answered something other than JSON ({e}); is it "
                            "a jaxtag server?") from e
      wait = self.backoff_seconds * 2 ** attempt
      _log.warning("%s %s: %s; retrying in %.2f s.", method, url, failure, wait)
      time.sleep(wait)
    raise AssertionError("unreachable")
