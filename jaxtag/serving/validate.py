"""What the endpoints accept: ``/v1/classify``'s ``k`` and WAV body, ``/v1/speaker/verify``'s JSON
body of base64 WAVs, and the errors that refuse them.

No server code and no JAX here: :mod:`jaxtag.serving.app` calls these on each request (the WAV
decoding in a worker thread, off the event loop).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import io
import json
import struct
import urllib.parse

import numpy as np

from jaxtag.audio.io import AudioFileError, resample, validate_waveform

WAV_CONTENT_TYPES = ("audio/wav", "audio/x-wav", "audio/wave", "audio/vnd.wave")
JSON_CONTENT_TYPES = ("application/json",)
SPEAKER_FIELDS = ("enrol", "queries")
_UNKNOWN_CHUNK_SIZES = (0, 0xFFFFFFFF)


class ApiError(Exception):
  """A request the API refuses: an HTTP status and a message for the client."""

  def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
    super().__init__(message)
    self.status = status
    self.message = message
    self.headers = headers or {}


@dataclasses.dataclass(frozen=True)
class ServeLimits:
  """What a server accepts, whatever its task (see :func:`jaxtag.serving.make_server` for each
  field; the task's own limits, such as ``max_k``, live in its handler)."""

  max_request_bytes: int
  max_seconds: float
  on_rate_mismatch: str
  on_stereo: str
  request_timeout: float
  max_concurrent_requests: int


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


def _check_riff(body: bytes, name: str) -> None:
  """Refuses a body without a RIFF/WAVE header, or whose data chunk is cut short.

  libsndfile would silently read a truncated upload as a shorter clip.
  """
  if len(body) < 12 or body[:4] not in (b"RIFF", b"RF64") or body[8:12] != b"WAVE":
    raise ApiError(400, f"{name} is not a WAV file (no RIFF/WAVE header); send one mono WAV "
                   "file.")
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
               on_rate_mismatch: str = "reject", on_stereo: str = "reject",
               name: str = "request body") -> np.ndarray:
  """Decodes a WAV request body into a mono float32 waveform at ``sample_rate``.

  Args:
    body: the bytes of a WAV file.
    sample_rate: the rate the model expects.
    max_seconds: longest clip accepted.
    on_rate_mismatch: ``"reject"`` (400 naming the expected rate) or ``"resample"``.
    on_stereo: ``"reject"`` (400) or ``"mean"`` (average the channels).
    name: what to call the WAV in messages that name it (e.g. ``queries[3]``).

  Returns:
    float32 ``(T,)``.

  Raises:
    ApiError: 400 for anything unusable (not WAV, truncated, empty, NaN/Inf, rate, channels),
      413 for a clip longer than ``max_seconds``.
  """
  import soundfile as sf  # The client side (jaxtag.taggants.blackbox) does not need it.

  _check_riff(body, name)
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
    x = validate_waveform(data[:, 0], name=name)
  except AudioFileError as e:
    raise ApiError(400, str(e)) from e
  return resample(x, rate, sample_rate) if rate != sample_rate else x


def _json_object(body: bytes) -> dict:
  try:
    payload = json.loads(body.decode("utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ApiError(400, f"request body is not valid JSON ({e}); send "
                   '{"enrol": [<base64 WAV>, ...], "queries": [<base64 WAV>, ...]}.') from e
  if not isinstance(payload, dict):
    raise ApiError(400, f"request body must be a JSON object with enrol and queries; got a "
                   f"{type(payload).__name__}.")
  unknown = sorted(set(payload) - set(SPEAKER_FIELDS))
  if unknown:
    raise ApiError(400, f"unknown field(s) {unknown}; the body has only enrol and queries.")
  return payload


def _wav_bytes(item, where: str) -> bytes:
  if not isinstance(item, str):
    raise ApiError(400, f"{where}: must be a base64 string of a WAV file; got a "
                   f"{type(item).__name__}.")
  try:
    return base64.b64decode(item, validate=True)
  except (binascii.Error, ValueError) as e:
    raise ApiError(400, f"{where}: not valid base64 ({e}); send each WAV file base64-encoded "
                   "(standard alphabet, with padding).") from e


def parse_speaker_body(body: bytes, *, max_enrol: int, max_queries: int) -> dict[str, list[bytes]]:
  """The WAV files of a ``/v1/speaker/verify`` body (not yet decoded: see :func:`decode_wav`).

  Args:
    body: ``{"enrol": [<base64 WAV>, ...], "queries": [<base64 WAV>, ...]}`` as UTF-8 JSON.
    max_enrol: most enrolment clips accepted.
    max_queries: most query clips accepted.

  Returns:
    ``{"enrol": [wav bytes, ...], "queries": [wav bytes, ...]}``, both non-empty.

  Raises:
    ApiError: 400 for bad JSON, a missing, unknown, non-list or empty field, or an item that is
      not base64 (the message names it, e.g. ``queries[3]``); 413 for more clips than allowed.
  """
  payload = _json_object(body)
  limits = {"enrol": max_enrol, "queries": max_queries}
  out = {}
  for name in SPEAKER_FIELDS:
    if name not in payload:
      raise ApiError(400, f"missing field {name!r}; send "
                     '{"enrol": [<base64 WAV>, ...], "queries": [<base64 WAV>, ...]}.')
    items = payload[name]
    if not isinstance(items, list):
      raise ApiError(400, f"{name} must be a list of base64 WAV strings; got a "
                     f"{type(items).__name__}.")
    if not items:
      raise ApiError(400, f"{name} is empty; send at least one clip.")
    if len(items) > limits[name]:
      raise ApiError(413, f"{name} has {len(items)} clips; this API takes at most "
                     f"{limits[name]} per request (GET /v1/info: max_{name}).")
    out[name] = [_wav_bytes(item, f"{name}[{i}]") for i, item in enumerate(items)]
  return out
