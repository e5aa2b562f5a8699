"""Black-box access to a suspect model: top-k label indices and nothing else.

Verification only ever sees what a commercial API would show: for each clip, the indices of the
``k`` most likely classes, best first. Two implementations of the :class:`BlackBox` protocol:

* :class:`LocalBlackBox` wraps a finished training workdir (``jaxtag.train.restore_for_inference``)
  with one jit-compiled forward pass that returns label rankings, never logits;
* :class:`HttpBlackBox` asks a server started by ``launch/serve.py`` (``jaxtag.serving``) over
  HTTP, with the standard library only (``jaxtag.serving.client``: ``urllib`` and ``wave``).

:func:`open_blackbox` picks one from a target string (a workdir path or an ``http(s)://`` URL).

Clip length: both fit every clip to the model's training clip length (``clip_samples``) with
``jaxtag.audio.io.fit_length`` (zero-pad at the end, or keep the start), the server included, so
both answer the same for the same waveform. :class:`HttpBlackBox` sends clips as 16-bit PCM WAV,
clipping samples to [-1, 1] and rounding as ``jaxtag.audio.io.write_wav`` does; waveforms that are
already 16-bit exact (read from the 16-bit WAVs that jaxtag writes) get identical answers.
"""

from __future__ import annotations

import functools
import logging
import os
import pathlib
import threading
import urllib.parse
from typing import Any, Protocol, runtime_checkable

import numpy as np

from jaxtag.audio.io import AudioFileError, fit_length, validate_waveform
from jaxtag.serving import client
from jaxtag.serving.client import BlackBoxError, encode_wav_pcm16  # noqa: F401  (public names)

_log = logging.getLogger(__name__)


@runtime_checkable
class BlackBox(Protocol):
  """A classifier that answers top-k labels and nothing else.

  Attributes:
    class_names: class names in label order (index ``i`` is ``class_names[i]``).
    sample_rate: rate in Hz of the waveforms that :meth:`top_k` takes.
  """

  class_names: tuple[str, ...]
  sample_rate: int

  def top_k(self, waveforms: np.ndarray, k: int) -> np.ndarray:
    """Label indices ``(N, k)`` int32, best first, of float32 waveforms ``(N, T)``."""
    ...


def check_top_k_args(waveforms, k, *, num_classes: int, expected_rate: int,
                     sample_rate: int | None = None, name: str = "waveforms",
                     max_k: int | None = None) -> tuple[np.ndarray, int]:
  """Validates the arguments of ``top_k`` and returns them as ``(float32 (N, T), int)``.

  Args:
    waveforms: ``(N, T)`` real samples.
    k: how many labels per clip.
    num_classes: classes of the model.
    expected_rate: the model's sample rate in Hz.
    sample_rate: the caller's rate, if stated; it must equal ``expected_rate``.
    name: what to call the waveforms in error messages.
    max_k: the largest ``k`` allowed (default ``num_classes``).

  Raises:
    AudioFileError: not a 2-D real array, no clips or samples, NaN/Inf samples, or a wrong rate.
    ValueError: ``k`` not an integer in ``[1, max_k]``.
  """
  shape = np.shape(waveforms)
  if len(shape) == 2 and shape[0] == 0:
    raise AudioFileError(f"{name}: no clips (shape {shape}); pass at least one clip.")
  x = validate_waveform(waveforms, name=name, ndim=2)
  if sample_rate is not None and int(sample_rate) != int(expected_rate):
    raise AudioFileError(
        f"{name}: sample rate {sample_rate} Hz, but the model expects {expected_rate} Hz. "
        "Resample first (jaxtag.audio.io.resample).")
  max_k = num_classes if max_k is None else max_k
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= int(k) <= max_k:
    raise ValueError(f"k must be an integer in [1, {max_k}] (the model has {num_classes} "
                     f"classes); got {k!r}.")
  return x, int(k)


class LocalBlackBox:
  """The top-k labels of a trained workdir, computed here with one jitted forward pass.

  Thread-safe (calls are serialised by a lock). Clips are fitted to ``clip_samples`` and run in
  batches of ``batch_size`` (the last one zero-padded), except single clips, which run alone:
  the forward pass compiles at most twice, for ``(1, clip_samples)`` (the server's requests) and
  ``(batch_size, clip_samples)``. BatchNorm uses its running statistics, so padding rows do not
  change the other rows' answers.

  Attributes:
    class_names, sample_rate, clip_samples, num_classes: from the workdir's ``model.json``.
    info: the :class:`jaxtag.train.ModelInfo`.
    trace_count: how many times the forward pass was traced (compiled); for tests.
  """

  def __init__(self, workdir: str | os.PathLike, *, step: int | None = None,
               batch_size: int = 64):
    """Loads the final weights of ``workdir``, or those of its checkpoint at ``step``.

    Args:
      workdir: a finished training workdir (``model.json`` and ``final/``).
      step: a kept checkpoint's step (``jaxtag.train.checkpoint_steps``): the model as it was
        then, e.g. after an epoch (default: the final weights).
      batch_size: clips per compiled forward pass.

    Raises:
      FileNotFoundError: ``workdir`` holds no finished training run, or no checkpoint at
        ``step`` (the message lists those kept).
      ValueError: ``batch_size`` is not positive.
    """
    import jax

    from jaxtag.train import checkpoint

    if int(batch_size) < 1:
      raise ValueError(f"LocalBlackBox: batch_size must be positive; got {batch_size}.")
    self.workdir = pathlib.Path(workdir)
    self.step = None if step is None else int(step)
    trained = (checkpoint.restore_for_inference(self.workdir) if step is None
               else checkpoint.restore_step(self.workdir, self.step))
    self.info = trained.info
    self.class_names = tuple(trained.info.class_names)
    self.sample_rate = int(trained.info.sample_rate)
    self.clip_samples = int(trained.info.clip_samples)
    self.num_classes = int(trained.info.num_classes)
    self.batch_size = int(batch_size)
    self.trace_count = 0
    self._lock = threading.Lock()
    self._weights = (trained.params, trained.batch_stats)
    self._device = jax.local_devices()[0]  # Where restore_for_inference put the weights.
    apply_fn = trained.pure.apply
    num_classes = self.num_classes

    def ranking(params, batch_stats, waveforms):
      self.trace_count += 1  # Runs only while tracing.
      logits, _, _ = apply_fn(params, batch_stats, waveforms, train=False)
      # Every label ranked on the device (top_k breaks ties towards the lower index), so one
      # compiled function serves every k; only indices ever leave this function.
      return jax.lax.top_k(logits, num_classes)[1].astype(jax.numpy.int32)

    self._ranking = jax.jit(ranking)

  def top_k(self, waveforms: np.ndarray, k: int, *, sample_rate: int | None = None) -> np.ndarray:
    """The ``k`` best label indices of each clip, best first.

    Args:
      waveforms: float32 ``(N, T)`` at ``self.sample_rate``; each clip is fitted to
        ``clip_samples`` (zero-padded at the end or cropped to its start).
      k: labels per clip, in ``[1, num_classes]``.
      sample_rate: the waveforms' rate, if you want it checked.

    Returns:
      int32 ``(N, k)``.

    Raises:
      AudioFileError: bad waveforms (shape, NaN/Inf, rate).
      ValueError: bad ``k``.
    """
    from jaxtag.train import infer

    x, k = check_top_k_args(waveforms, k, num_classes=self.num_classes,
                            expected_rate=self.sample_rate, sample_rate=sample_rate,
                            name="LocalBlackBox.top_k waveforms")
    x = fit_length(x, self.clip_samples)
    rows = 1 if x.shape[0] == 1 else self.batch_size
    with self._lock:
      ranked = infer.map_padded(functools.partial(self._ranking, *self._weights),
                                x.astype(np.float32), batch_size=rows, device=self._device)
    return np.ascontiguousarray(ranked[:, :k])

  def __repr__(self) -> str:
    at = "" if self.step is None else f", step {self.step}"
    return (f"LocalBlackBox({str(self.workdir)!r}{at}, {self.num_classes} classes, "
            f"{self.sample_rate} Hz, {self.clip_samples} samples)")


class HttpBlackBox:
  """A client of the ``jaxtag.serving`` HTTP API (standard library only).

  One ``POST /v1/classify?k=K`` per clip, each clip as a 16-bit mono WAV at the server's rate.
  Connection failures and 502/503/504 answers are retried ``max_retries`` times with exponential
  backoff; other error answers raise :class:`BlackBoxError` with the server's message at once.

  Attributes:
    url: the server's base URL.
    client: the ``jaxtag.serving.client.JsonClient`` (timeout, retries) it talks through.
    class_names, sample_rate, clip_samples, num_classes, max_k: from ``GET /v1/info``.
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
      BlackBoxError: the server cannot be reached or its ``/v1/info`` is not jaxtag's.
    """
    self.url = client.base_url(url, owner="HttpBlackBox", endpoints=("/v1/classify",))
    self.client = client.JsonClient(self.url, owner="HttpBlackBox", timeout=timeout,
                                     max_retries=max_retries, backoff_seconds=backoff_seconds)
    info = self._request("GET", "/v1/info")
    try:
      self.class_names = tuple(str(c) for c in info["class_names"])
      self.sample_rate = int(info["sample_rate"])
      self.clip_samples = int(info["clip_samples"])
      self.num_classes = int(info["num_classes"])
      self.max_k = int(info["max_k"])
    except (KeyError, TypeError, ValueError) as e:
      raise BlackBoxError(f"{self.url}/v1/info is not a jaxtag server's answer ({e!r}): "
                          f"{info!r}") from e
    if len(self.class_names) != self.num_classes:
      raise BlackBoxError(f"{self.url}/v1/info lists {len(self.class_names)} class names for "
                          f"{self.num_classes} classes.")

  def _request(self, method: str, path: str, body: bytes | None = None,
               headers: dict[str, str] | None = None) -> Any:
    return self.client.request(method, path, body, headers)

  def top_k(self, waveforms: np.ndarray, k: int, *, sample_rate: int | None = None) -> np.ndarray:
    """The ``k`` best label indices of each clip, best first, as the server answers them.

    Args:
      waveforms: float32 ``(N, T)`` at ``self.sample_rate`` (sent as 16-bit WAV, clipped to
        [-1, 1]; the server fits each clip to ``clip_samples``).
      k: labels per clip, in ``[1, max_k]``.
      sample_rate: the waveforms' rate, if you want it checked before anything is sent.

    Returns:
      int32 ``(N, k)``.

    Raises:
      AudioFileError: bad waveforms (shape, NaN/Inf, rate).
      ValueError: bad ``k``.
      BlackBoxError: the server refused a clip (its message says why) or cannot be reached.
    """
    x, k = check_top_k_args(waveforms, k, num_classes=self.num_classes,
                            expected_rate=self.sample_rate, sample_rate=sample_rate,
                            name="HttpBlackBox.top_k waveforms", max_k=self.max_k)
    clipped = int(np.count_nonzero(np.abs(x) > 1.0))
    if clipped:
      _log.warning("HttpBlackBox: %d sample(s) outside [-1, 1] are clipped by the 16-bit WAV "
                      "encoding.", clipped)
    out = np.empty((x.shape[0], k), np.int32)
    for i, clip in enumerate(x):
      answer = self._request("POST", f"/v1/classify?k={k}",
                             body=encode_wav_pcm16(clip, self.sample_rate),
                             headers={"Content-Type": "audio/wav"})
      out[i] = self._parse_answer(answer, k)
    return out

  def _parse_answer(self, answer: Any, k: int) -> np.ndarray:
    try:
      indices = [int(i) for i in answer["indices"]]
      labels = list(answer["labels"])
    except (KeyError, TypeError, ValueError) as e:
      raise BlackBoxError(f"{self.url}/v1/classify answered {answer!r}, not "
                          "{'labels': [...], 'indices': [...]}.") from e
    if len(indices) != k or any(not 0 <= i < self.num_classes for i in indices) or \
        labels != [self.class_names[i] for i in indices]:
      raise BlackBoxError(f"{self.url}/v1/classify answered {answer!r}: expected {k} indices "
                          "in range whose labels match /v1/info.")
    return np.asarray(indices, np.int32)

  def __repr__(self) -> str:
    return f"HttpBlackBox({self.url!r}, {self.num_classes} classes, {self.sample_rate} Hz)"


def paired_cost(suspect: BlackBox, benign: BlackBox, datasets) -> dict[str, Any]:
  """What a protection costs in accuracy, from two black boxes' top-1 answers on the same clips.

  The benign model (trained on the clean data) is the control: the cost is its top-1 accuracy
  minus the suspect's, clip by clip, with a paired interval and McNemar's exact p
  (:func:`jaxtag.stats.accuracy_cost`) for each dataset and for all of them pooled (distinct
  clips: one paired sample).

  Args:
    suspect, benign: black boxes over the same classes and sample rate.
    datasets: name -> an ``AudioDataset`` at the boxes' rate, labelled in their class order.

  Returns:
    ``{"splits": {name: cost}, "pooled": cost}``.

  Raises:
    ValueError: no dataset, or a dataset at another sample rate than a box's.
  """
  from jaxtag import stats

  if not datasets:
    raise ValueError("paired_cost: no dataset to answer.")
  flags = {}
  for name, data in datasets.items():
    for box in (suspect, benign):
      if int(data.sample_rate) != int(box.sample_rate):
        raise ValueError(f"paired_cost: dataset {name!r} is at {data.sample_rate} Hz, {box!r} "
                         f"takes {box.sample_rate} Hz.")
    labels = np.asarray(data.labels)
    flags[name] = [box.top_k(data.waveforms, 1)[:, 0] == labels for box in (benign, suspect)]
  return {"splits": {name: stats.accuracy_cost(*f) for name, f in flags.items()},
          "pooled": stats.accuracy_cost(*(np.concatenate(parts) for parts in zip(*flags.values())))}


def open_blackbox(target: str | os.PathLike, **kwargs) -> LocalBlackBox | HttpBlackBox:
  """A black box for ``target``: an ``http(s)://`` URL or a training workdir path.

  Args:
    target: server URL or workdir.
    **kwargs: options of :class:`HttpBlackBox` or :class:`LocalBlackBox`.

  Returns:
    An :class:`HttpBlackBox` for a URL, else a :class:`LocalBlackBox`.

  Raises:
    ValueError: a URL of another scheme.
    FileNotFoundError: a path that is not a directory.
  """
  text = os.fspath(target)
  scheme = urllib.parse.urlsplit(text).scheme if isinstance(text, str) else ""
  if scheme in ("http", "https"):
    return HttpBlackBox(text, **kwargs)
  if "://" in str(text):
    raise ValueError(f"open_blackbox: {text!r} has an unsupported scheme {scheme!r}; use "
                     "http:// or https:// for a server, or a workdir path.")
  if not os.path.isdir(text):
    raise FileNotFoundError(f"open_blackbox: {text} is neither an http(s):// URL nor a training "
                            "workdir (no such directory).")
  return LocalBlackBox(text, **kwargs)
