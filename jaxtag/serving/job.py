"""The serve stage: a trained workdir behind the HTTP top-k API, as one typed job.

``launch/serve.py`` is a thin main over :func:`build_server` (plus the signal handling of a
long-running process); benchmarks and tests build the same server from the same job.
"""

from __future__ import annotations

import dataclasses

from jaxtag import serving


@dataclasses.dataclass(frozen=True)
class ServeJob:
  """Serve a trained workdir like a commercial API (top-k labels only).

  Attributes:
    seed: unused (inference is deterministic); kept so that every stage has one.
    model_workdir: a finished train workdir.
    host: interface to bind; 127.0.0.1 keeps the API on this machine, 0.0.0.0 exposes it.
    port: TCP port; 0: any free port (the URL is printed).
    max_request_bytes: largest body accepted (413 above it).
    max_seconds: longest clip accepted (413 above it); 0: 10 s or the model's clip length,
      whichever is longer.
    max_k: largest k a client may ask for; 0: every class.
    default_k: k when a request gives none.
    on_rate_mismatch: ``reject`` (a commercial API states its rate) or ``resample``.
    on_stereo: ``reject`` or ``mean`` (mix to mono).
    request_timeout: seconds for a whole request (headers and body); then 408.
    max_concurrent_requests: requests in flight; past it, 503 with ``Retry-After``.
    backlog: listen backlog for bursts (capped by ``net.core.somaxconn``).
    drain_timeout: on Ctrl-C/SIGTERM, seconds that requests in flight may take.
  """

  seed: int = 0
  model_workdir: str = "workdirs/suspect"
  host: str = "127.0.0.1"
  port: int = 8080
  max_request_bytes: int = serving.DEFAULT_MAX_REQUEST_BYTES
  max_seconds: float = 0.0
  max_k: int = 0
  default_k: int = 5
  on_rate_mismatch: str = "reject"
  on_stereo: str = "reject"
  request_timeout: float = 30.0
  max_concurrent_requests: int = 32
  backlog: int = serving.DEFAULT_BACKLOG
  drain_timeout: float = 10.0


def build_server(job: ServeJob) -> serving.BlackBoxServer:
  """The bound (not yet serving) server for ``job`` (``serving.serve_forever`` runs it)."""
  from jaxtag.taggants import blackbox

  # Requests are classified one at a time, so batches of one: no padding work per request.
  box = blackbox.LocalBlackBox(job.model_workdir, batch_size=1)
  options = {f.name: getattr(job, f.name) for f in dataclasses.fields(job)
             if f.name not in ("seed", "model_workdir")}
  options.update(max_seconds=job.max_seconds or None, max_k=job.max_k or None)
  return serving.make_server(box, **options)
