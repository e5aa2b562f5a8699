"""GE2E training of a speaker-embedding model: sharded, resumable, explicit keys.

Each step draws N speakers x M utterances from a speaker dataset (an ``AudioDataset`` whose
labels are speakers), optionally shifts and scales them (waveform augmentation inside the
jitted step), embeds them and takes one optimiser step on the GE2E loss
(``jaxtag.speaker.ge2e``), whose scale and offset ``(w, b)`` are trained with the network.

Layout of the workdir (besides the job's files, ``jaxtag.speaker.job``)::

    checkpoints/<step>/{state,data}   orbax (jaxtag.train.checkpoint): the whole train state
    final/                            the trained network's parameters (orbax)
    speaker_model.json                the SpeakerModelConfig, sample rate, clip length, step
    metrics.jsonl                     one line per ``log_every`` steps (``train/loss``, w, b)

Resuming gives the run an uninterrupted one would: the state is checkpointed, the batch of step
``s`` is drawn from ``fold_in(data stream, s)`` and its augmentation from ``fold_in(train
stream, s)``, and ``metrics.jsonl`` is cut back to the checkpoint's step.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import pathlib
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, struct

from jaxtag import errors, rng, sharding
from jaxtag.data.dataset import AudioDataset, DatasetError
from jaxtag.speaker import ge2e
from jaxtag.speaker.model import SpeakerModelConfig, build_speaker_model, preset

FINAL_DIR = "final"
MODEL_JSON = "speaker_model.json"
METRICS_JSONL = "metrics.jsonl"


@dataclasses.dataclass(frozen=True)
class SpeakerTrainConfig:
  """The GE2E recipe.

  Attributes:
    model: the network (``jaxtag.speaker.model.PRESETS`` holds named ones).
    steps: optimiser steps.
    speakers_per_batch: N, speakers per batch.
    utterances_per_speaker: M, utterances per speaker and batch (N x M must split over devices).
    learning_rate: Adam's learning rate (constant).
    grad_clip_norm: clip the global gradient norm to this (GE2E clips at 3).
    max_gain_db: random gain in [-g, g] dB per utterance (0: off).
    max_shift_seconds: random circular time shift in [-s, s] seconds per utterance (0: off).
    checkpoint_every: checkpoint interval in steps (and at the end).
    max_to_keep: checkpoints kept.
    log_every: average the loss over this many steps per ``metrics.jsonl`` line.
    enrol_utterances: utterances per enrolment in the final evaluation on the test speakers.
    eval_batch_size: batch of the embedder (evaluation and ``load_embedder``'s default).
  """

  model: SpeakerModelConfig = dataclasses.field(
      default_factory=lambda: preset("dvector-small"))
  steps: int = 300
  speakers_per_batch: int = 16
  utterances_per_speaker: int = 8
  learning_rate: float = 1e-3
  grad_clip_norm: float = 3.0
  max_gain_db: float = 0.0
  max_shift_seconds: float = 0.0
  checkpoint_every: int = 100
  max_to_keep: int = 2
  log_every: int = 10
  enrol_utterances: int = 4
  eval_batch_size: int = 64

  def __post_init__(self):
    def name(field: str) -> str:
      return errors.option(field, owner="SpeakerTrainConfig")

    for field in ("steps", "checkpoint_every", "max_to_keep", "log_every", "enrol_utterances",
                  "eval_batch_size", "learning_rate", "grad_clip_norm"):
      if not getattr(self, field) > 0:
        raise ValueError(f"{name(field)} must be positive; got {getattr(self, field)}.")
    for field in ("speakers_per_batch", "utterances_per_speaker"):
      if int(getattr(self, field)) < 2:
        raise ValueError(f"{name(field)} must be >= 2 (GE2E compares speakers and leaves one "
                         f"utterance out); got {getattr(self, field)}.")
    for field in ("max_gain_db", "max_shift_seconds"):
      if getattr(self, field) < 0:
        raise ValueError(f"{name(field)} must be >= 0; got {getattr(self, field)}.")


@struct.dataclass
class SpeakerTrainState:
  """What changes during training (a pytree, checkpointed as is).

  Attributes:
    step: int32 scalar, steps taken.
    params: the network's ``nnx.Param`` state.
    ge2e: ``{"w", "b"}`` of the loss.
    opt_state: Adam's state over ``(params, ge2e)``.
  """

  step: jax.Array
  params: nnx.State
  ge2e: dict[str, jax.Array]
  opt_state: optax.OptState


class SpeakerNet(NamedTuple):
  """A network's static parts: ``apply(params, waveforms) -> embeddings`` is pure."""

  graphdef: Any
  rest: nnx.State   # non-parameter state (empty for jaxtag's speaker models)

  def apply(self, params: nnx.State, waveforms: jax.Array) -> jax.Array:
    return nnx.merge(self.graphdef, params, self.rest)(waveforms)[0]


def make_optimizer(config: SpeakerTrainConfig) -> optax.GradientTransformation:
  """Adam after global-norm clipping."""
  return optax.chain(optax.clip_by_global_norm(config.grad_clip_norm),
                     optax.adam(config.learning_rate))


def split_network(model_config: SpeakerModelConfig, key: jax.Array) -> tuple[SpeakerNet,
                                                                              nnx.State]:
  """The network's static parts and its initial parameters from ``key``."""
  graphdef, params, rest = nnx.split(build_speaker_model(model_config, key), nnx.Param, ...)
  return SpeakerNet(graphdef, rest), params


def abstract_network(model_config: SpeakerModelConfig) -> tuple[SpeakerNet, nnx.State]:
  """Like :func:`split_network` without allocating: abstract parameters (restore targets)."""
  model = nnx.eval_shape(lambda: build_speaker_model(model_config, jax.random.key(0)))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  if jax.tree.leaves(rest):
    raise ValueError(f"{model_config.arch} has non-parameter state; jaxtag.speaker keeps only "
                     "parameters.")
  return SpeakerNet(graphdef, rest), params


def _initial_state(model_config, tx, key) -> SpeakerTrainState:
  _, params = split_network(model_config, key)
  loss_params = ge2e.init_ge2e_params()
  return SpeakerTrainState(step=jnp.zeros((), jnp.int32), params=params, ge2e=loss_params,
                           opt_state=tx.init((params, loss_params)))


def create_state(config: SpeakerTrainConfig, key: jax.Array, mesh
                 ) -> tuple[SpeakerTrainState, SpeakerTrainState]:
  """``(state, abstract state)``, both replicated on ``mesh``; the state is made in one jit."""
  tx = make_optimizer(config)
  init = functools.partial(_initial_state, config.model, tx)
  rep = sharding.replicated(mesh)
  abstract = jax.eval_shape(init, key)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep), abstract)
  state = jax.jit(init, out_shardings=jax.tree.map(lambda _: rep, abstract))(key)
  return state, abstract


def augment(audio: jax.Array, key: jax.Array, *, max_gain_db: float, max_shift: int
            ) -> jax.Array:
  """Random gain and circular time shift per utterance (either off when its bound is 0)."""
  gain_key, shift_key = jax.random.split(key)
  n = audio.shape[0]
  if max_gain_db > 0:
    db = jax.random.uniform(gain_key, (n, 1), minval=-max_gain_db, maxval=max_gain_db)
    audio = jnp.clip(audio * 10.0**(db / 20.0), -1.0, 1.0)
  if max_shift > 0:
    shifts = jax.random.randint(shift_key, (n,), -max_shift, max_shift + 1)
    audio = jax.vmap(jnp.roll)(audio, shifts)
  return audio


def train_step(state: SpeakerTrainState, audio: jax.Array, train_key: jax.Array, *,
               net: SpeakerNet, tx: optax.GradientTransformation, speakers: int,
               utterances: int, max_gain_db: float, max_shift: int
               ) -> tuple[SpeakerTrainState, dict[str, jax.Array]]:
  """One GE2E step on ``audio (N * M, samples)``, speaker-major (``N`` blocks of ``M`` rows)."""
  key = rng.step_key(train_key, state.step)
  audio = augment(audio, key, max_gain_db=max_gain_db, max_shift=max_shift)

  def loss_fn(params, loss_params):
    emb = net.apply(params, audio).reshape(speakers, utterances, -1)
    return ge2e.ge2e_loss(emb, loss_params["w"], loss_params["b"])

  loss, grads = jax.value_and_grad(loss_fn, argnums=(0, 1))(state.params, state.ge2e)
  updates, opt_state = tx.update(grads, state.opt_state, (state.params, state.ge2e))
  params, loss_params = optax.apply_updates((state.params, state.ge2e), updates)
  new = SpeakerTrainState(step=state.step + 1, params=params, ge2e=loss_params,
                          opt_state=opt_state)
  return new, {"train/loss": loss, "train/w": loss_params["w"], "train/b": loss_params["b"],
               "train/grad_norm": optax.tree.norm(grads)}


def speaker_rows(dataset: AudioDataset, utterances: int) -> list[np.ndarray]:
  """The rows of each speaker (label) with at least ``utterances`` clips, in label order.

  Speakers with fewer clips cannot fill a GE2E block and are left out (logged).
  """
  rows = [np.flatnonzero(dataset.labels == label) for label in range(dataset.num_classes)]
  short = [dataset.class_names[i] for i, r in enumerate(rows) if 0 < r.size < utterances]
  if short:
    logging.warning("%d speakers have fewer than %d utterances and are not sampled: %s",
                    len(short), utterances, ", ".join(short[:10]))
  return [r for r in rows if r.size >= utterances]


def batch_indices(rows: list[np.ndarray], key: jax.Array, *, speakers: int,
                  utterances: int) -> np.ndarray:
  """The dataset rows of one batch: N distinct speakers, M distinct utterances each
  (speaker-major), drawn from ``key`` alone."""
  gen = rng.numpy_rng(key)
  chosen = gen.choice(len(rows), size=speakers, replace=False)
  return np.concatenate([gen.choice(rows[s], size=utterances, replace=False) for s in chosen])


def check_train_data(config: SpeakerTrainConfig, data: AudioDataset, mesh) -> list[np.ndarray]:
  """The sampled speakers' rows, after checking the split against the recipe.

  Raises:
    DatasetError: a sample rate other than the model's, or fewer than N speakers with M clips.
    ValueError: N x M does not split over the mesh's devices.
  """
  n, m = config.speakers_per_batch, config.utterances_per_speaker
  if data.sample_rate != config.model.sample_rate:
    raise DatasetError(f"the train split is at {data.sample_rate} Hz but "
                       f"{errors.option('sample_rate', owner='SpeakerModelConfig')} is "
                       f"{config.model.sample_rate}; resample the data or change the model.")
  rows = speaker_rows(data, m)
  if len(rows) < n:
    raise DatasetError(
        f"the train split has {len(rows)} speakers with at least {m} utterances; a batch needs "
        f"{n}. Lower {errors.option('speakers_per_batch', owner='SpeakerTrainConfig')} or "
        f"{errors.option('utterances_per_speaker', owner='SpeakerTrainConfig')}.")
  devices = mesh.shape[sharding.DATA_AXIS]
  if (n * m) % devices:
    raise ValueError(f"a batch of N x M = {n} x {m} utterances does not split over {devices} "
                     f"devices; choose N x M a multiple of {devices}.")
  return rows


def jit_train_step(config: SpeakerTrainConfig, net: SpeakerNet, sample_rate: int) -> Callable:
  """The compiled step ``(state, audio, train_key) -> (state, metrics)`` (state donated)."""
  return jax.jit(functools.partial(
      train_step, net=net, tx=make_optimizer(config), speakers=config.speakers_per_batch,
      utterances=config.utterances_per_speaker, max_gain_db=config.max_gain_db,
      max_shift=int(round(config.max_shift_seconds * sample_rate))), donate_argnums=0)


@dataclasses.dataclass
class SpeakerTrainResult:
  """What :func:`train_speaker_model` returns.

  Attributes:
    state: the final (or, with ``stop_at_step``, the current) state.
    net: the network's static parts.
    steps_run: steps run in this call.
    start_step: the step this call resumed from (0 for a fresh run).
    train_seconds: wall time of the step loop (first compilation included).
    finished: whether the run reached ``config.steps`` (then ``final/`` is written).
  """

  state: SpeakerTrainState
  net: SpeakerNet
  steps_run: int
  start_step: int
  train_seconds: float
  finished: bool


def _write_final(workdir: pathlib.Path, state: SpeakerTrainState, config: SpeakerTrainConfig,
                 clip_samples: int) -> None:
  import orbax.checkpoint as ocp
  from jaxtag import workdir as workdir_lib
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(workdir.absolute() / FINAL_DIR, state.params, force=True)
    ckptr.wait_until_finished()
  if jax.process_index() == 0:
    workdir_lib.write_json(workdir / MODEL_JSON, {
        "model": dataclasses.asdict(config.model), "sample_rate": config.model.sample_rate,
        "clip_samples": int(clip_samples), "step": int(jax.device_get(state.step)),
        "ge2e": {k: float(v) for k, v in jax.device_get(state.ge2e).items()}})


def _log_record(pending: list[dict[str, jax.Array]], step: int, seconds: float) -> dict:
  values = jax.device_get(pending)
  record = {k: float(np.mean([p[k] for p in values])) for k in values[0]}
  return {"kind": "train", "step": step, **record,
          "train/steps_per_s": len(pending) / max(seconds, 1e-9)}


def train_speaker_model(config: SpeakerTrainConfig, train_data: AudioDataset, *,
                        key: jax.Array, workdir, mesh=None, progress: bool = False,
                        stop_at_step: int | None = None) -> SpeakerTrainResult:
  """Trains (or resumes) a speaker model with GE2E into ``workdir``.

  Args:
    config: the recipe.
    train_data: speaker dataset (labels index speakers).
    key: the run's key; streams ``init``, ``data`` and ``train`` are derived from it.
    workdir: checkpoints, ``final/``, ``speaker_model.json`` and ``metrics.jsonl`` go here.
    mesh: device mesh (default: every device); batches split over its ``data`` axis.
    progress: show a tqdm bar.
    stop_at_step: return after this step as if preempted (no final artifacts).

  Returns:
    A :class:`SpeakerTrainResult`.

  Raises:
    DatasetError, ValueError: see :func:`check_train_data`.
  """
  import tqdm

  from jaxtag.train import checkpoint as ckpt
  from jaxtag.train.loop import MetricsWriter

  mesh = mesh if mesh is not None else sharding.make_mesh()
  workdir = pathlib.Path(workdir)
  rows = check_train_data(config, train_data, mesh)
  # Fails here, before any step, on clips shorter than one frame.
  jax.eval_shape(lambda: build_speaker_model(config.model, jax.random.key(0))(
      jnp.zeros((1, train_data.num_samples))))
  state, abstract = create_state(config, rng.stream(key, "init"), mesh)
  net, _ = abstract_network(config.model)
  manager = ckpt.checkpoint_manager(workdir, save_interval_steps=config.checkpoint_every,
                                    max_to_keep=config.max_to_keep)
  writer = MetricsWriter(workdir / METRICS_JSONL)
  try:
    restored = ckpt.restore_latest(manager, abstract)
    start = 0
    if restored is not None:
      state, start = restored
      logging.info("Resuming %s from step %d of %d.", workdir, start, config.steps)
    writer.rewind(start)
    step_fn = jit_train_step(config, net, train_data.sample_rate)
    train_key = jax.device_put(rng.stream(key, "train"), sharding.replicated(mesh))
    data_key = rng.stream(key, "data")
    batch_rows = sharding.process_batch_rows(
        mesh, config.speakers_per_batch * config.utterances_per_speaker)
    end = config.steps if stop_at_step is None else min(config.steps, stop_at_step)
    bar = tqdm.tqdm(total=config.steps, initial=start, desc=f"ge2e {config.model.arch}",
                    disable=not progress or jax.process_index() != 0, dynamic_ncols=True)
    pending, t0 = [], time.perf_counter()
    t_log = t0
    for step in range(start + 1, end + 1):
      idx = batch_indices(rows, rng.step_key(data_key, step), speakers=config.speakers_per_batch,
                          utterances=config.utterances_per_speaker)
      audio = sharding.shard_batch(mesh, train_data.waveforms[idx[batch_rows]])
      state, metrics = step_fn(state, audio, train_key)
      pending.append(metrics)
      bar.update(1)
      if step % config.log_every == 0 or step == end:
        now = time.perf_counter()
        record = _log_record(pending, step, now - t_log)
        writer.write(record)
        bar.set_postfix(loss=f"{record['train/loss']:.3f}")
        pending, t_log = [], now
      ckpt.save_checkpoint(manager, state, step, force=step == config.steps)
    bar.close()
    seconds = time.perf_counter() - t0
    finished = end == config.steps
    if finished:
      _write_final(workdir, state, config, train_data.num_samples)
    return SpeakerTrainResult(state, net, end - start, start, seconds, finished)
  finally:
    manager.close()


def read_model_json(workdir) -> dict[str, Any]:
  """``speaker_model.json`` of a finished run, naming the file when it is missing."""
  path = pathlib.Path(workdir) / MODEL_JSON
  if not path.is_file():
    raise FileNotFoundError(f"{path} does not exist: {workdir} holds no finished speaker "
                            "training run (run launch/speaker_train.py to the end first).")
  return json.loads(path.read_text())
