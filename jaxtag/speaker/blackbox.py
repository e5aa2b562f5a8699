"""Black-box access to a speaker-verification model: a score or an accept/reject per query.

CBW verification only sees what a speaker-verification API would show. For a claimed speaker
enrolled from ``m`` utterances and ``q`` query utterances, a box answers, per query:

* ``mode="score"``: the cosine of the query's embedding with the enrolment centroid (the unit-norm
  mean of the unit-norm enrolment embeddings), float32;
* ``mode="decision"``: accept iff that score is at least the box's threshold, bool; the scores and
  the threshold never leave the box.

Two implementations of the :class:`SpeakerBlackBox` protocol:

* :class:`LocalSpeakerBlackBox` wraps an :class:`Embedder` (``jaxtag.speaker.embedder``'s
  ``SpeakerEmbedder``, or anything with its attributes);
* :class:`HttpSpeakerBlackBox` asks a server started by ``launch/serve.py`` with
  ``--config.task=speaker`` (``POST /v1/speaker/verify``, see ``jaxtag.serving``), standard library
  only.

:func:`open_speaker_blackbox` picks one from a target string (a workdir path or an ``http(s)://``
URL).

Clip length: every clip is fitted to the model's ``clip_samples`` with
``jaxtag.audio.io.fit_length`` (zero-pad at the end, or keep the start), by both boxes and by the
server. :class:`HttpSpeakerBlackBox` sends clips as 16-bit PCM WAV (clipped to [-1, 1], rounded as
``jaxtag.audio.io.write_wav`` rounds), so waveforms that are already 16-bit exact get the local
box's answers.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import threading
import urllib.parse
from typing import Any, Protocol, runtime_checkable

import numpy as np

from jaxtag.audio.io import AudioFileError, fit_length, validate_waveform
from jaxtag.serving import client
from jaxtag.serving.client import BlackBoxError, encode_wav_pcm16

MODES = ("score", "decision")
VERIFY_PATH = "/v1/speaker/verify"
# JSON framing of a request around its base64 strings: the keys, and quotes and a comma per clip.
_BODY_OVERHEAD = 64
_ITEM_OVERHEAD = 4

_log = logging.getLogger(__name__)


@runtime_checkable
class Embedder(Protocol):
  """What a speaker black box needs of a model (``jaxtag.speaker.embedder.SpeakerEmbedder``).

  Attributes:
    sample_rate: rate in Hz of the waveforms that :meth:`embed` takes.
    clip_samples: samples per clip that :meth:`embed` takes.
    embedding_dim: length of an embedding.
    threshold: the cosine EER threshold measured when the model was trained, or None.
  """

  sample_rate: int
  clip_samples: int
  embedding_dim: int
  threshold: float | None

  def embed(self, waveforms: np.ndarray) -> np.ndarray:
    """``(n, clip_samples)`` float32 -> ``(n, embedding_dim)`` float32 L2-normalised rows."""
    ...


@runtime_checkable
class SpeakerBlackBox(Protocol):
  """A speaker-verification model that answers scores or decisions and nothing else.

  Attributes:
    mode: ``"score"`` (similarities) or ``"decision"`` (accept/reject only).
    sample_rate: rate in Hz of the waveforms that :meth:`verify` takes.
    clip_samples: samples per clip of the model (other lengths are fitted to it).
  """

  mode: str
  sample_rate: int
  clip_samples: int

  def verify(self, enrol: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Per query: float32 cosine to the enrolment centroid (score) or bool accept (decision)."""
    ...


def check_verify_args(enrol, queries, *, clip_samples: int,
                      owner: str) -> tuple[np.ndarray, np.ndarray]:
  """Validates the arguments of ``verify`` and fits both to ``clip_samples``.

  Args:
    enrol: ``(m, T1)`` real samples, utterances of one claimed speaker.
    queries: ``(q, T2)`` real samples.
    clip_samples: the model's clip length.
    owner: what to call the caller in error messages (e.g. ``"LocalSpeakerBlackBox.verify"``).

  Returns:
    float32 ``(m, clip_samples)`` and ``(q, clip_samples)``.

  Raises:
    AudioFileError: not a 2-D real array, no clips or no samples, or NaN/Inf samples (the
      message names ``enrol`` or ``queries``).
  """
  out = []
  for name, x in (("enrol", enrol), ("queries", queries)):
    shape = np.shape(x)
    if len(shape) == 2 and shape[0] == 0:
      raise AudioFileError(f"{owner} {name}: no clips (shape {shape}); pass at least one clip.")
    clips = validate_waveform(x, name=f"{owner} {name}", ndim=2)
    out.append(fit_length(clips, int(clip_samples)).astype(np.float32, copy=False))
  return out[0], out[1]


def check_mode(mode: str, threshold: float | None, *, owner: str) -> float | None:
  """The threshold a box of ``mode`` uses (None in score mode); refuses a bad mode or threshold.

  Raises:
    ValueError: ``mode`` not in :data:`MODES`, a non-finite threshold, or decision mode without
      a threshold.
  """
  if mode not in MODES:
    raise ValueError(f"{owner}: mode must be 'score' or 'decision'; got {mode!r}.")
  if threshold is not None and not math.isfinite(float(threshold)):
    raise ValueError(f"{owner}: threshold must be a finite cosine; got {threshold!r}.")
  if mode == "decision" and threshold is None:
    raise ValueError(f"{owner}: decision mode needs a threshold, and the model has none recorded "
                     "(no EER threshold in its training summary); pass threshold=<cosine>.")
  return None if mode == "score" else float(threshold)


def _unit_rows(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float64)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def centroid_scores(enrol_embeddings: np.ndarray, query_embeddings: np.ndarray) -> np.ndarray:
  """Cosine of each query embedding with the enrolment centroid.

  Args:
    enrol_embeddings: ``(m, D)``; each row is normalised first.
    query_embeddings: ``(q, D)``.

  Returns:
    float32 ``(q,)``: the cosine with the unit-norm mean of the unit-norm enrolment rows.
  """
  centroid = _unit_rows(_unit_rows(enrol_embeddings).mean(axis=0))
  return (_unit_rows(query_embeddings) @ centroid).astype(np.float32)


class LocalSpeakerBlackBox:
  """Scores or decisions of an :class:`Embedder`, computed here.

  Thread-safe (calls are serialised by a lock). Enrolment and queries go through one ``embed``
  call. In decision mode only booleans leave :meth:`verify`; the threshold is kept private.

  Attributes:
    embedder: the model.
    mode: ``"score"`` or ``"decision"``.
    sample_rate, clip_samples, embedding_dim: the embedder's.
  """

  def __init__(self, embedder: Embedder, mode: str = "score", threshold: float | None = None):
    """Wraps ``embedder``.

    Args:
      embedder: a ``SpeakerEmbedder`` (``jaxtag.speaker.embedder.load_embedder``).
      mode: ``"score"`` or ``"decision"``.
      threshold: accept iff score >= threshold (decision mode); None: ``embedder.threshold``.

    Raises:
      ValueError: an unknown mode, or decision mode with no threshold (neither given nor
        recorded with the model), or a non-finite one.
    """
    if threshold is None:
      threshold = getattr(embedder, "threshold", None)
    self._threshold = check_mode(mode, threshold, owner="LocalSpeakerBlackBox")
    self.embedder = embedder
    self.mode = mode
    self.sample_rate = int(embedder.sample_rate)
    self.clip_samples = int(embedder.clip_samples)
    self.embedding_dim = int(embedder.embedding_dim)
    self._lock = threading.Lock()

  def verify(self, enrol: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Each query against the speaker enrolled from ``enrol``.

    Args:
      enrol: float32 ``(m, T)`` utterances of one claimed speaker, at ``sample_rate``.
      queries: float32 ``(q, T')`` utterances to verify.

    Returns:
      Score mode: float32 ``(q,)`` cosines. Decision mode: bool ``(q,)``, score >= threshold.

    Raises:
      AudioFileError: bad waveforms (rank, no clips, NaN/Inf); the message names which.
    """
    enrol, queries = check_verify_args(enrol, queries, clip_samples=self.clip_samples,
                                       owner="LocalSpeakerBlackBox.verify")
    with self._lock:
      embeddings = np.asarray(self.embedder.embed(np.concatenate([enrol, queries])))
    scores = centroid_scores(embeddings[:len(enrol)], embeddings[len(enrol):])
    return scores if self._threshold is None else scores >= self._threshold

  def __repr__(self) -> str:
    return (f"LocalSpeakerBlackBox({self.mode} mode, {self.sample_rate} Hz, "
            f"{self.clip_samples} samples)")


def _is_number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_bool(value: Any) -> bool:
  return isinstance(value, bool)


# Per mode: the answer's one key, what its list holds (for messages), its dtype, a check per item.
_ANSWERS = {"score": ("scores", "numbers", np.float32, _is_number),
            "decision": ("accept", "booleans", bool, _is_bool)}


class HttpSpeakerBlackBox:
  """A client of a ``jaxtag.serving`` speaker server (``POST /v1/speaker/verify``).

  A :meth:`verify` call sends the enrolment and the queries as base64 16-bit WAVs in JSON; queries
  beyond the server's ``max_queries`` or ``max_request_bytes`` go in several requests, each with
  the whole enrolment. Connection failures and 502/503/504 answers are retried ``max_retries``
  times with exponential backoff; other error answers raise ``BlackBoxError`` with the server's
  message at once.

  Attributes:
    url: the server's base URL.
    client: the ``jaxtag.serving.client.JsonClient`` (timeout, retries) it talks through.
    mode, sample_rate, clip_samples, max_enrol, max_queries, max_request_bytes: from
      ``GET /v1/info``.
  """

  def __init__(self, url: str, *, timeout: float = 30.0, max_retries: int = 2,
               backoff_seconds: float = 0.25):
    """Connects to the server and reads ``/v1/info``.

    Args:
      url: base URL, e.g. ``http://127.0.0.1:8080`` (a trailing ``/v1/...`` path is dropped).
      timeout: seconds per HTTP request.
      max_retries: extra tries after a connection failure or a 502/503/504.
      backoff_seconds: wait before the first retry; doubled for each further one.

    Raises:
      ValueError: ``url`` is not an http(s) URL, or a bad option.
      BlackBoxError: the server cannot be reached, or it is not a jaxtag speaker server (a
        classifier's server says so: use ``jaxtag.taggants.blackbox.HttpBlackBox`` for it).
    """
    self.url = client.base_url(url, owner="HttpSpeakerBlackBox", endpoints=(VERIFY_PATH,))
    self.client = client.JsonClient(self.url, owner="HttpSpeakerBlackBox", timeout=timeout,
                                     max_retries=max_retries, backoff_seconds=backoff_seconds)
    self._read_info(self._request("GET", "/v1/info"))

  def _read_info(self, info: Any) -> None:
    task = info.get("task") if isinstance(info, dict) else None
    if task != "speaker":
      raise BlackBoxError(f"{self.url} serves task {task!r}, not speaker verification "
                          "('speaker'); a classifier's server is read with "
                          "jaxtag.taggants.blackbox.HttpBlackBox.")
    try:
      self.mode = str(info["mode"])
      self.sample_rate = int(info["sample_rate"])
      self.clip_samples = int(info["clip_samples"])
      self.max_enrol = int(info["max_enrol"])
      self.max_queries = int(info["max_queries"])
      self.max_request_bytes = int(info["max_request_bytes"])
    except (KeyError, TypeError, ValueError) as e:
      raise BlackBoxError(f"{self.url}/v1/info is not a jaxtag speaker server's answer "
                          f"({e!r}): {info!r}") from e
    if self.mode not in MODES:
      raise BlackBoxError(f"{self.url}/v1/info gives mode {self.mode!r}; expected one of {MODES}.")

  def _request(self, method: str, path: str, body: bytes | None = None,
               headers: dict[str, str] | None = None) -> Any:
    return self.client.request(method, path, body, headers)

  def _encode(self, clips: np.ndarray) -> list[str]:
    return [base64.b64encode(encode_wav_pcm16(clip, self.sample_rate)).decode("ascii")
            for clip in clips]

  def _query_chunks(self, enrol_bytes: int, queries: list[str]) -> list[list[str]]:
    """Consecutive runs of queries, each within ``max_queries`` and ``max_request_bytes``."""
    budget = self.max_request_bytes - _BODY_OVERHEAD - enrol_bytes
    chunks, size = [[]], 0
    for item in queries:
      cost = len(item) + _ITEM_OVERHEAD
      if cost > budget:
        raise ValueError(
            f"HttpSpeakerBlackBox.verify: the enrolment ({enrol_bytes} bytes as base64 WAV) and "
            f"one query do not fit in a request of {self.max_request_bytes} bytes (the server's "
            "max_request_bytes); enrol with fewer clips, or serve with a larger "
            "max_request_bytes.")
      if len(chunks[-1]) == self.max_queries or size + cost > budget:
        chunks.append([])
        size = 0
      chunks[-1].append(item)
      size += cost
    return chunks

  def verify(self, enrol: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Each query against the speaker enrolled from ``enrol``, as the server answers.

    Args:
      enrol: float32 ``(m, T)`` at ``sample_rate``, ``m <= max_enrol`` (sent as 16-bit WAV).
      queries: float32 ``(q, T')``; any ``q`` (split over requests as the limits need).

    Returns:
      Score mode: float32 ``(q,)``. Decision mode: bool ``(q,)``.

    Raises:
      AudioFileError: bad waveforms (rank, no clips, NaN/Inf); the message names which.
      ValueError: more enrolment clips than the server's ``max_enrol``, or an enrolment too
        large for one request.
      BlackBoxError: the server refused a request (its message says why) or cannot be reached.
    """
    enrol, queries = check_verify_args(enrol, queries, clip_samples=self.clip_samples,
                                       owner="HttpSpeakerBlackBox.verify")
    if len(enrol) > self.max_enrol:
      raise ValueError(f"HttpSpeakerBlackBox.verify: enrol has {len(enrol)} clips; the server "
                       f"takes at most {self.max_enrol} (its max_enrol).")
    for name, x in (("enrol", enrol), ("queries", queries)):
      if np.any(np.abs(x) > 1.0):
        _log.warning("HttpSpeakerBlackBox: %s has samples outside [-1, 1], clipped by the 16-bit "
                     "WAV encoding.", name)
    enrol_items = self._encode(enrol)
    enrol_bytes = sum(len(item) + _ITEM_OVERHEAD for item in enrol_items)
    answers = [self._verify_chunk(enrol_items, chunk)
               for chunk in self._query_chunks(enrol_bytes, self._encode(queries))]
    return np.concatenate(answers)

  def _verify_chunk(self, enrol_items: list[str], query_items: list[str]) -> np.ndarray:
    body = json.dumps({"enrol": enrol_items, "queries": query_items}).encode("ascii")
    answer = self._request("POST", VERIFY_PATH, body=body,
                           headers={"Content-Type": "application/json"})
    return self._parse_answer(answer, len(query_items))

  def _parse_answer(self, answer: Any, num_queries: int) -> np.ndarray:
    """The answer's scores or decisions; exactly ``{"scores": [...]}`` or ``{"accept": [...]}``."""
    key, what, dtype, valid = _ANSWERS[self.mode]
    values = answer.get(key) if isinstance(answer, dict) else None
    if not (isinstance(values, list) and set(answer) == {key} and len(values) == num_queries
            and all(valid(v) for v in values)):
      raise BlackBoxError(f"{self.url}{VERIFY_PATH} answered {str(answer)[:300]}; expected "
                          f"{{{key!r}: [{num_queries} {what}]}}.")
    return np.asarray(values, dtype)

  def __repr__(self) -> str:
    return f"HttpSpeakerBlackBox({self.url!r}, {self.mode} mode, {self.sample_rate} Hz)"


def open_speaker_blackbox(target: str | os.PathLike, *, mode: str | None = None,
                          threshold: float | None = None,
                          **http_options) -> LocalSpeakerBlackBox | HttpSpeakerBlackBox:
  """A speaker black box for ``target``: an ``http(s)://`` URL or a speaker model's workdir.

  Args:
    target: a server URL (``launch/serve.py:speaker``) or a finished speaker-model workdir
      (``jaxtag.speaker.embedder.load_embedder``).
    mode: ``"score"`` or ``"decision"``; for a URL, the server's mode must be this one
      (None: whatever it serves); for a workdir, None is ``"score"``.
    threshold: (workdir, decision mode) accept iff score >= it; None: the model's recorded
      EER threshold. A server keeps its own: refused with a URL.
    **http_options: options of :class:`HttpSpeakerBlackBox` (``timeout``, ...).

  Returns:
    An :class:`HttpSpeakerBlackBox` for a URL, else a :class:`LocalSpeakerBlackBox`.

  Raises:
    ValueError: a URL of another scheme, a threshold with a URL, or a server of another mode.
    FileNotFoundError: a path that is not a directory.
  """
  text = os.fspath(target)
  scheme = urllib.parse.urlsplit(text).scheme
  if scheme in ("http", "https"):
    if threshold is not None:
      raise ValueError("open_speaker_blackbox: a server keeps its own threshold; pass "
                       "threshold=None with a URL.")
    box = HttpSpeakerBlackBox(text, **http_options)
    if mode is not None and box.mode != mode:
      raise ValueError(f"open_speaker_blackbox: {box.url} serves {box.mode} mode, not {mode}.")
    return box
  if "://" in text:
    raise ValueError(f"open_speaker_blackbox: {text!r} has an unsupported scheme {scheme!r}; "
                     "use http:// or https:// for a server, or a workdir path.")
  if not os.path.isdir(text):
    raise FileNotFoundError(f"open_speaker_blackbox: {text} is neither an http(s):// URL nor a "
                            "speaker model's workdir (no such directory).")
  from jaxtag.speaker.embedder import load_embedder  # Needs JAX and the model; a URL does not.
  return LocalSpeakerBlackBox(load_embedder(text), mode=mode or "score", threshold=threshold)
