"""The task a server answers: one handler per task, each with its endpoint, its request checks,
its model call and its ``/v1/info``.

* :class:`ClassifyHandler`: ``POST /v1/classify?k=K``, a WAV body, top-k labels (a classifier's
  ``LocalBlackBox``).
* :class:`SpeakerHandler`: ``POST /v1/speaker/verify``, a JSON body of base64 WAVs, scores or
  decisions (a ``jaxtag.speaker.blackbox.LocalSpeakerBlackBox``).

The server (:mod:`jaxtag.serving.server`) calls :meth:`prepare` in a worker thread (decoding runs
concurrently) and :meth:`run` under its inference lock (model calls take turns). No JAX here: the
black boxes hold the models.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from jaxtag.audio.io import fit_length
from jaxtag.serving.validate import (JSON_CONTENT_TYPES, WAV_CONTENT_TYPES, ApiError, ServeLimits,
                                     decode_wav, parse_k, parse_speaker_body)

# Each task's endpoint: a server answers its own and refers the others to GET /v1/info.
TASK_PATHS = {"classify": "/v1/classify", "speaker": "/v1/speaker/verify"}


class TaskHandler(Protocol):
  """What a server needs of its task.

  Attributes:
    task: a key of :data:`TASK_PATHS`.
    path: the task's endpoint (``POST``).
    usage: the endpoint as a client calls it, for messages (e.g. ``/v1/classify?k=5``).
    content_types: the Content-Types the endpoint accepts (parameters ignored).
    blackbox: the model it serves.
  """

  task: str
  path: str
  usage: str
  content_types: tuple[str, ...]
  blackbox: Any

  def info(self, limits: ServeLimits) -> dict[str, Any]:
    """The task's part of ``GET /v1/info``."""
    ...

  def describe(self) -> str:
    """A few words on what is served, for the launcher's first line."""
    ...

  def parse_query(self, query: str) -> Any:
    """The request's query-string parameters; raises ApiError (400)."""
    ...

  def prepare(self, body: bytes, params: Any, limits: ServeLimits) -> Any:
    """The model's inputs from the body (worker thread, concurrent); raises ApiError."""
    ...

  def run(self, inputs: Any) -> dict[str, Any]:
    """The JSON answer (called under the server's inference lock)."""
    ...


def _decode(body: bytes, rate: int, limits: ServeLimits, name: str = "request body") -> np.ndarray:
  return decode_wav(body, sample_rate=rate, max_seconds=limits.max_seconds,
                    on_rate_mismatch=limits.on_rate_mismatch, on_stereo=limits.on_stereo,
                    name=name)


def _decode_item(body: bytes, where: str, rate: int, limits: ServeLimits) -> np.ndarray:
  """A clip of a multi-clip request; every error names it (``queries[3]: ...``)."""
  try:
    return _decode(body, rate, limits, name=where)
  except ApiError as e:
    message = e.message if e.message.startswith(where) else f"{where}: {e.message}"
    raise ApiError(e.status, message, e.headers) from e


class ClassifyHandler:
  """Top-k labels of one WAV clip (see :mod:`jaxtag.serving` for the API).

  Args:
    blackbox: anything with ``class_names``, ``sample_rate``, ``clip_samples`` and ``top_k``.
    max_k: largest k a client may ask for.
    default_k: k when the request gives none.
  """

  task = "classify"
  path = TASK_PATHS["classify"]
  content_types = WAV_CONTENT_TYPES

  def __init__(self, blackbox, *, max_k: int, default_k: int):
    self.blackbox = blackbox
    self.max_k = max_k
    self.default_k = default_k
    self.usage = f"{self.path}?k={default_k}"

  def info(self, limits: ServeLimits) -> dict[str, Any]:
    del limits
    box = self.blackbox
    return {"sample_rate": int(box.sample_rate), "num_classes": len(box.class_names),
            "class_names": list(box.class_names), "clip_samples": int(box.clip_samples),
            "max_k": self.max_k}

  def describe(self) -> str:
    return f"{len(self.blackbox.class_names)} classes, {self.blackbox.sample_rate} Hz"

  def parse_query(self, query: str) -> int:
    return parse_k(query, max_k=self.max_k, default_k=self.default_k)

  def prepare(self, body: bytes, params: int, limits: ServeLimits) -> tuple[np.ndarray, int]:
    waveform = _decode(body, int(self.blackbox.sample_rate), limits)
    return fit_length(waveform, int(self.blackbox.clip_samples))[None], params

  def run(self, inputs: tuple[np.ndarray, int]) -> dict[str, Any]:
    clip, k = inputs
    indices = [int(i) for i in np.asarray(self.blackbox.top_k(clip, k))[0]]
    return {"labels": [self.blackbox.class_names[i] for i in indices], "indices": indices}


class SpeakerHandler:
  """Speaker verification: base64 WAVs of an enrolment and queries in, a score or a decision per
  query out (see :mod:`jaxtag.serving` for the API).

  Args:
    blackbox: a ``LocalSpeakerBlackBox`` (anything with ``mode``, ``sample_rate``,
      ``clip_samples`` and ``verify``); in decision mode it answers booleans only.
    max_enrol: most enrolment clips per request.
    max_queries: most query clips per request.
  """

  task = "speaker"
  path = usage = TASK_PATHS["speaker"]
  content_types = JSON_CONTENT_TYPES

  def __init__(self, blackbox, *, max_enrol: int, max_queries: int):
    if blackbox.mode not in ("score", "decision"):
      raise ValueError(f"SpeakerHandler: the black box's mode must be 'score' or 'decision'; got "
                       f"{blackbox.mode!r}.")
    self.blackbox = blackbox
    self.max_enrol = max_enrol
    self.max_queries = max_queries

  def info(self, limits: ServeLimits) -> dict[str, Any]:
    box = self.blackbox
    return {"mode": box.mode, "sample_rate": int(box.sample_rate),
            "clip_samples": int(box.clip_samples), "max_enrol": self.max_enrol,
            "max_queries": self.max_queries, "max_request_bytes": limits.max_request_bytes,
            "max_seconds": limits.max_seconds}

  def describe(self) -> str:
    return f"speaker verification, {self.blackbox.mode} mode, {self.blackbox.sample_rate} Hz"

  def parse_query(self, query: str) -> None:
    if query:
      raise ApiError(400, f"{self.path} takes no query parameters; got {query!r}.")

  def prepare(self, body: bytes, params: None, limits: ServeLimits) -> dict[str, np.ndarray]:
    del params
    wavs = parse_speaker_body(body, max_enrol=self.max_enrol, max_queries=self.max_queries)
    rate, clip_samples = int(self.blackbox.sample_rate), int(self.blackbox.clip_samples)
    return {name: np.stack([fit_length(_decode_item(item, f"{name}[{i}]", rate, limits),
                                       clip_samples) for i, item in enumerate(items)])
            for name, items in wavs.items()}

  def run(self, inputs: dict[str, np.ndarray]) -> dict[str, Any]:
    answer = np.asarray(self.blackbox.verify(inputs["enrol"], inputs["queries"]))
    if self.blackbox.mode == "decision":
      if answer.dtype != bool:  # A score must never leave a decision-mode server.
        raise RuntimeError(f"{self.blackbox!r} is in decision mode but answered {answer.dtype}.")
      return {"accept": answer.tolist()}
    if not np.all(np.isfinite(answer)):
      raise RuntimeError(f"{self.blackbox!r} answered non-finite scores {answer.tolist()}.")
    return {"scores": [float(s) for s in answer]}
