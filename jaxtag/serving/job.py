"""The serve stage: a trained workdir behind the HTTP API, as one typed job.

``task="classify"`` serves a classifier's workdir (top-k labels, ``POST /v1/classify``);
``task="speaker"`` a speaker-verification model's (``POST /v1/speaker/verify``, scores or
decisions). ``launch/serve.py`` is a thin main over :func:`build_server` (plus the signal handling
of a long-running process); benchmarks and tests build the same server from the same job.
"""

from __future__ import annotations

import dataclasses
import math

from jaxtag import errors, serving

TASKS = ("classify", "speaker")
SPEAKER_MODES = ("score", "decision")


@dataclasses.dataclass(frozen=True)
class ServeJob:
  """Serve a trained workdir like a commercial API.

  Attributes:
    seed: unused (inference is deterministic); kept so that every stage has one.
    model_workdir: a finished train workdir (a classifier's, or for ``task="speaker"`` a speaker
      model's: ``jaxtag.speaker.embedder.load_embedder``).
    task: ``classify`` (top-k labels) or ``speaker`` (speaker verification).
    host: interface to bind; 127.0.0.1 keeps the API on this machine, 0.0.0.0 exposes it.
    port: TCP port; 0: any free port (the URL is printed).
    max_request_bytes: largest body accepted (413 above it); a speaker request holds all its
      clips.
    max_seconds: longest clip accepted (413 above it); 0: 10 s or the model's clip length,
      whichever is longer.
    max_k: (classify) largest k a client may ask for; 0: every class.
    default_k: (classify) k when a request gives none.
    speaker_mode: (speaker) ``score`` (cosine per query) or ``decision`` (accept/reject only).
    speaker_threshold: (speaker, decision) accept iff score >= it; 0: the model's EER threshold
      recorded at training.
    speaker_max_enrol: (speaker) most enrolment clips per request.
    speaker_max_queries: (speaker) most query clips per request.
    on_rate_mismatch: ``reject`` (a commercial API states its rate) or ``resample``.
    on_stereo: ``reject`` or ``mean`` (mix to mono).
    request_timeout: seconds for a whole request (headers and body); then 408.
    max_concurrent_requests: requests in flight; past it, 503 with ``Retry-After``.
    backlog: listen backlog for bursts (capped by ``net.core.somaxconn``).
    drain_timeout: on Ctrl-C/SIGTERM, seconds that requests in flight may take.
  """

  seed: int = 0
  model_workdir: str = "workdirs/suspect"
  task: str = "classify"
  host: str = "127.0.0.1"
  port: int = 8080
  max_request_bytes: int = serving.DEFAULT_MAX_REQUEST_BYTES
  max_seconds: float = 0.0
  max_k: int = 0
  default_k: int = 5
  speaker_mode: str = "score"
  speaker_threshold: float = 0.0
  speaker_max_enrol: int = serving.DEFAULT_MAX_ENROL
  speaker_max_queries: int = serving.DEFAULT_MAX_QUERIES
  on_rate_mismatch: str = "reject"
  on_stereo: str = "reject"
  request_timeout: float = 30.0
  max_concurrent_requests: int = 32
  backlog: int = serving.DEFAULT_BACKLOG
  drain_timeout: float = 10.0

  def __post_init__(self):
    def name(field):
      return errors.option(field, owner="ServeJob")

    if self.task not in TASKS:
      raise ValueError(f"{name('task')} must be 'classify' or 'speaker'; got {self.task!r}.")
    if self.speaker_mode not in SPEAKER_MODES:
      raise ValueError(f"{name('speaker_mode')} must be 'score' or 'decision'; got "
                       f"{self.speaker_mode!r}.")
    if not math.isfinite(float(self.speaker_threshold)):
      raise ValueError(f"{name('speaker_threshold')} must be a finite cosine (0: the model's "
                       f"recorded EER threshold); got {self.speaker_threshold!r}.")
    for field in ("speaker_max_enrol", "speaker_max_queries"):
      if int(getattr(self, field)) < 1:
        raise ValueError(f"{name(field)} must be positive; got {getattr(self, field)}.")


_COMMON = ("host", "port", "max_request_bytes", "on_rate_mismatch", "on_stereo",
           "request_timeout", "max_concurrent_requests", "backlog", "drain_timeout")


def _common_options(job: ServeJob) -> dict:
  options = {name: getattr(job, name) for name in _COMMON}
  return {**options, "max_seconds": job.max_seconds or None}


def _classify_server(job: ServeJob) -> serving.BlackBoxServer:
  from jaxtag.taggants import blackbox

  # Requests are classified one at a time, so batches of one: no padding work per request.
  box = blackbox.LocalBlackBox(job.model_workdir, batch_size=1)
  return serving.make_server(box, max_k=job.max_k or None, default_k=job.default_k,
                             **_common_options(job))


def _speaker_server(job: ServeJob) -> serving.BlackBoxServer:
  from jaxtag.speaker.blackbox import LocalSpeakerBlackBox
  from jaxtag.speaker.embedder import load_embedder

  embedder = load_embedder(job.model_workdir)
  threshold = job.speaker_threshold or embedder.threshold
  if job.speaker_mode == "decision" and threshold is None:
    raise ValueError(f"{job.model_workdir} records no EER threshold for decision mode; set "
                     f"{errors.option('speaker_threshold', owner='ServeJob')} to a cosine.")
  box = LocalSpeakerBlackBox(embedder, mode=job.speaker_mode, threshold=threshold)
  return serving.make_speaker_server(box, max_enrol=job.speaker_max_enrol,
                                     max_queries=job.speaker_max_queries, **_common_options(job))


_BUILDERS = {"classify": _classify_server, "speaker": _speaker_server}


def build_server(job: ServeJob) -> serving.BlackBoxServer:
  """The bound (not yet serving) server for ``job`` (``serving.serve_forever`` runs it)."""
  return _BUILDERS[job.task](job)
