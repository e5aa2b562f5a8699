"""The training loop: data-parallel steps, per-epoch evaluation, checkpoints and automatic resume.

:func:`train` trains one registered model on an :class:`~jaxtag.data.AudioDataset` into a
workdir (layout in :mod:`jaxtag.train.checkpoint`). Rerunning it on the same workdir resumes from
the latest checkpoint and produces the same parameters and metrics as an uninterrupted run:

* the state (parameters, BatchNorm statistics, optimiser state, step) is checkpointed;
* the batch order is a pure function of ``(data stream, step)`` (``jaxtag.data.pipeline``);
* the augmentation and dropout key of step ``s`` is ``fold_in(train stream, s)``, computed inside
  the step from ``state.step``;
* ``metrics.jsonl`` is cut back to the checkpoint's step before appending again.

Randomness comes from three named streams of the key passed in (``jaxtag.rng.stream``):
``init`` (parameters), ``data`` (shuffling) and ``train`` (augmentation, dropout).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import pathlib
import time
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import numpy as np

from jaxtag import errors, models, rng, sharding
from jaxtag.audio import io as audio_io
from jaxtag.data import pipeline
from jaxtag.data.dataset import AudioDataset, DatasetError
from jaxtag.train import checkpoint as ckpt
from jaxtag.train import infer
from jaxtag.train import state as state_lib
from jaxtag.train import steps
from jaxtag.train.augment import AugmentConfig
from jaxtag.train.optim import OptimConfig, make_optimizer

METRICS_JSONL = "metrics.jsonl"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """How to train (the model, the recipe, the bookkeeping).

  Attributes:
    model: registry name (``jaxtag.models.available_models()``).
    model_overrides: constructor options (JSON-able), e.g. ``{"depth": 2}``.
    num_epochs: passes over the train split.
    batch_size: global batch size (a multiple of the number of devices).
    eval_batch_size: global batch size of evaluation (likewise; the last batch is padded).
    optim: optimiser and schedule.
    augment: waveform and SpecAugment augmentation.
    label_smoothing: of the training cross-entropy.
    log_every_steps: average train metrics over this many steps per ``metrics.jsonl`` line.
    checkpoint_every_steps: checkpoint interval; 0 means once per epoch.
    max_to_keep: checkpoints kept.
    eval_every_epochs: evaluate on the validation split every this many epochs (and at the end).
    init_from: a finished training workdir of the same model whose weights start this run
      (fine-tuning a shared backbone); leaves whose shape differs (the head, when the classes
      differ) keep their fresh initialisation. None: train from scratch.
    distill_from: a finished training workdir (any model, the same classes, rate and clip
      length) whose predictions on the train split become soft targets (offline knowledge
      distillation, e.g. a CNN teacher for a ViT student); None: no teacher.
    distill_weight: w, the teacher's share of the targets: ``(1 - w) one_hot + w teacher``.
    distill_temperature: T, the teacher's probabilities are ``softmax(logits / T)``.
  """

  model: str = "ast_tiny"
  model_overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  num_epochs: int = 10
  batch_size: int = 64
  eval_batch_size: int = 128
  optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
  augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)
  label_smoothing: float = 0.0
  log_every_steps: int = 50
  checkpoint_every_steps: int = 0
  max_to_keep: int = 2
  eval_every_epochs: int = 1
  init_from: str | None = None
  distill_from: str | None = None
  distill_weight: float = 0.5
  distill_temperature: float = 1.0

  def __post_init__(self):
    def name(field: str) -> str:
      return errors.option(field, owner="TrainConfig")

    for field in ("num_epochs", "batch_size", "eval_batch_size", "log_every_steps",
                  "max_to_keep", "eval_every_epochs"):
      if int(getattr(self, field)) <= 0:
        raise ValueError(f"{name(field)} must be positive; got {getattr(self, field)}.")
    if self.checkpoint_every_steps < 0:
      raise ValueError(f"{name('checkpoint_every_steps')} must be >= 0 (0: once per epoch).")
    if not 0.0 <= self.label_smoothing < 1.0:
      raise ValueError(f"{name('label_smoothing')} must lie in [0, 1); got "
                       f"{self.label_smoothing}.")
    if not 0.0 < self.distill_weight <= 1.0:
      raise ValueError(f"{name('distill_weight')} must lie in (0, 1]; got {self.distill_weight}.")
    if not self.distill_temperature > 0.0:
      raise ValueError(f"{name('distill_temperature')} must be > 0; got "
                       f"{self.distill_temperature}.")


@dataclasses.dataclass
class TrainResult:
  """What :func:`train` returns.

  Attributes:
    state: the final (or, with ``stop_at_step``, the current) train state.
    parts: the model's static parts.
    info: the model description written to ``model.json`` (None when stopped early).
    metrics: final ``val/*`` and ``test/*`` metrics (empty when stopped early).
    steps_run: steps run in this call (after resuming).
    start_step: the step this call resumed from (0 for a fresh run).
    train_seconds: wall time of the step loop in this call (first step's compilation included).
  """

  state: state_lib.TrainState
  parts: models.PureModel
  info: ckpt.ModelInfo | None
  metrics: dict[str, float]
  steps_run: int
  start_step: int
  train_seconds: float


class MetricsWriter:
  """Appends one JSON object per line to ``metrics.jsonl`` (process 0 only), flushed each time."""

  def __init__(self, path: pathlib.Path):
    self.path = pathlib.Path(path)
    self._active = jax.process_index() == 0

  def rewind(self, step: int) -> None:
    """Drops records past ``step`` (and ``final`` ones): they belong to a run being resumed."""
    if not self._active or not self.path.exists():
      return
    keep = []
    for line in self.path.read_text().splitlines():
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        continue  # A line cut by a kill.
      if record.get("step", 0) <= step and record.get("kind") != "final":
        keep.append(line)
    audio_io.write_text_atomic(self.path, "".join(line + "\n" for line in keep))

  def write(self, record: dict[str, Any]) -> None:
    if not self._active:
      return
    self.path.parent.mkdir(parents=True, exist_ok=True)
    with open(self.path, "a") as f:
      f.write(json.dumps(record, sort_keys=True) + "\n")
      f.flush()
      os.fsync(f.fileno())


def eval_batches(dataset: AudioDataset, *, batch_size: int, mesh) -> Iterator[dict[str, Any]]:
  """The whole split in order, in global batches padded to ``batch_size`` with ``mask`` 0 rows.

  Each host loads only its rows (``jaxtag.sharding.process_batch_rows``).
  """
  rows = sharding.process_batch_rows(mesh, batch_size)
  n = len(dataset)
  for start in range(0, n, batch_size):
    idx = np.arange(start, start + batch_size)
    valid = idx < n
    idx = np.where(valid, idx, 0)[rows]
    yield sharding.shard_batch(mesh, {
        "audio": dataset.waveforms[idx], "label": dataset.labels[idx],
        "mask": valid[rows].astype(np.float32)})


def evaluate(eval_fn, state: state_lib.TrainState, dataset: AudioDataset, *, batch_size: int,
             mesh, prefix: str) -> dict[str, float]:
  """Loss and accuracy of ``state`` on ``dataset`` with a compiled :func:`steps.eval_step`.

  Returns:
    ``{f"{prefix}/loss", f"{prefix}/accuracy", f"{prefix}/count"}`` as Python floats.
  """
  totals = None
  for batch in eval_batches(dataset, batch_size=batch_size, mesh=mesh):
    out = eval_fn(state, batch)
    totals = out if totals is None else jax.tree.map(lambda a, b: a + b, totals, out)
  totals = {k.split("/", 1)[1]: float(v) for k, v in jax.device_get(totals).items()}
  count = max(totals["count"], 1.0)
  return {f"{prefix}/loss": totals["loss_sum"] / count,
          f"{prefix}/accuracy": totals["correct"] / count, f"{prefix}/count": totals["count"]}


def _check_data(config: TrainConfig, train_data: AudioDataset, others: list[AudioDataset | None],
                mesh) -> None:
  n = mesh.shape[sharding.DATA_AXIS]
  for name in ("batch_size", "eval_batch_size"):
    if getattr(config, name) % n:
      raise ValueError(f"{errors.option(name, owner='TrainConfig')}={getattr(config, name)} "
                       f"must be a multiple of the {n} devices of the mesh.")
  for other in others:
    if other is None:
      continue
    if other.class_names != train_data.class_names or other.sample_rate != train_data.sample_rate \
        or other.num_samples != train_data.num_samples:
      raise DatasetError(f"split {other.split!r} differs from {train_data.split!r} in class "
                         "names, sample rate or clip length; load both from one source.")


def _add_soft_targets(soft: np.ndarray, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  return {**batch, "soft_target": soft[batch["index"]]}


def _average(records: list[dict[str, jax.Array]]) -> dict[str, float]:
  host = jax.device_get(records)
  return {k: float(np.mean([r[k] for r in host])) for k in host[0]}


def warm_start(state: state_lib.TrainState, tx, init_from: str | os.PathLike,
               model: str) -> state_lib.TrainState:
  """``state`` with the weights of the trained workdir ``init_from`` wherever the shapes agree.

  Leaves that do not match (the classifier head of a model trained on other classes) keep their
  fresh initialisation; the optimiser state starts anew. The weights keep ``state``'s shardings.

  Raises:
    ValueError: ``init_from`` holds another model.
  """
  pretrained = ckpt.restore_for_inference(init_from)
  if pretrained.info.model != model:
    raise ValueError(f"init_from={init_from} holds a {pretrained.info.model!r} model; this run "
                     f"trains {model!r}.")
  kept = []

  def take(path, fresh, old):
    if fresh.shape == old.shape and fresh.dtype == old.dtype:
      return jax.device_put(old, fresh.sharding)
    kept.append(jax.tree_util.keystr(path))
    return fresh

  params = jax.tree_util.tree_map_with_path(take, state.params, pretrained.params)
  stats = jax.tree_util.tree_map_with_path(take, state.batch_stats, pretrained.batch_stats)
  if kept:
    logging.info("init_from %s: freshly initialised (shape differs): %s", init_from,
                 ", ".join(kept))
  return state.replace(params=params, batch_stats=stats, opt_state=jax.jit(
      tx.init, out_shardings=jax.tree.map(lambda x: x.sharding, state.opt_state))(params))


def teacher_targets(teacher_dir: str | os.PathLike, dataset: AudioDataset, *,
                    temperature: float = 1.0, batch_size: int = 128) -> np.ndarray:
  """A finished run's probabilities ``softmax(logits / T)`` for every clip of ``dataset``.

  Eval mode, no augmentation, in fixed-size padded batches (one compilation). The soft targets
  of offline distillation (``TrainConfig.distill_from``).

  Args:
    teacher_dir: the teacher's training workdir.
    dataset: the clips (usually the student's train split).
    temperature: T > 0; above 1 softens the teacher's probabilities.
    batch_size: clips per forward pass.

  Returns:
    float32 ``(len(dataset), num_classes)``, rows summing to 1.

  Raises:
    DatasetError: a teacher trained on other classes, another sample rate or clip length.
  """
  teacher = ckpt.restore_for_inference(teacher_dir)
  info = teacher.info
  if tuple(info.class_names) != tuple(dataset.class_names):
    raise DatasetError(f"distill_from {str(teacher_dir)!r}: the teacher was trained on classes "
                       f"{list(info.class_names)[:5]}..., the data has "
                       f"{list(dataset.class_names)[:5]}...; use a teacher of the same dataset.")
  if (info.sample_rate, info.clip_samples) != (dataset.sample_rate, dataset.num_samples):
    raise DatasetError(f"distill_from {str(teacher_dir)!r}: the teacher takes "
                       f"{info.clip_samples} samples at {info.sample_rate} Hz, the data "
                       f"{dataset.num_samples} at {dataset.sample_rate} Hz.")
  apply_fn = teacher.pure.apply

  @jax.jit
  def probabilities(params, batch_stats, waveforms):
    logits, _, _ = apply_fn(params, batch_stats, waveforms, train=False)
    return jax.nn.softmax(logits.astype(np.float32) / temperature, axis=-1)

  return infer.map_padded(
      functools.partial(probabilities, teacher.params, teacher.batch_stats), dataset.waveforms,
      batch_size=max(1, min(batch_size, len(dataset))))


def train(config: TrainConfig, *, train_data: AudioDataset, key: jax.Array,
          workdir: str | os.PathLike, validation_data: AudioDataset | None = None,
          test_data: AudioDataset | None = None, mesh=None, progress: bool = True,
          stop_at_step: int | None = None, transfer_guard: str = "allow") -> TrainResult:
  """Trains ``config.model`` on ``train_data`` into ``workdir``, resuming if it holds a checkpoint.

  Args:
    config: the recipe.
    train_data: the train split.
    key: the run's key; the ``init``, ``data`` and ``train`` streams are derived from it.
    workdir: where checkpoints, ``final/``, ``model.json`` and ``metrics.jsonl`` go.
    validation_data: evaluated every ``eval_every_epochs`` epochs and at the end.
    test_data: evaluated once at the end.
    mesh: device mesh (default: every device, ``jaxtag.sharding.make_mesh()``).
    progress: show a tqdm bar (process 0).
    stop_at_step: return after this global step, as if preempted (no final artifacts);
      rerunning without it resumes from the last checkpoint.
    transfer_guard: ``jax.transfer_guard`` level around each train step ("allow", "log",
      "disallow"): "disallow" proves the step loop makes no implicit host<->device transfer.

  Returns:
    A :class:`TrainResult`.

  Raises:
    ValueError: batch sizes that do not split over the mesh, or a bad config.
    DatasetError: splits that disagree, or a train split smaller than one batch.
  """
  import tqdm

  mesh = mesh if mesh is not None else sharding.make_mesh()
  workdir = pathlib.Path(workdir)
  _check_data(config, train_data, [validation_data, test_data], mesh)
  per_epoch = pipeline.steps_per_epoch(len(train_data), config.batch_size)
  if per_epoch == 0:
    lower = errors.option("batch_size", owner="TrainConfig")
    raise DatasetError(f"train split has {len(train_data)} clips, fewer than batch_size="
                       f"{config.batch_size}; lower {lower}.")
  total = config.num_epochs * per_epoch
  spec = state_lib.ModelSpec(config.model, train_data.num_classes, config.model_overrides)
  tx, schedule = make_optimizer(config.optim, total)
  abstract_state, _ = state_lib.abstract_train_state(spec, tx, mesh)
  state, parts = state_lib.create_train_state(spec, tx, rng.stream(key, "init"), mesh)
  manager = ckpt.checkpoint_manager(
      workdir, save_interval_steps=config.checkpoint_every_steps or per_epoch,
      max_to_keep=config.max_to_keep)
  writer = MetricsWriter(workdir / METRICS_JSONL)
  try:
    restored = ckpt.restore_latest(manager, abstract_state)
    start = 0
    if restored is None and config.init_from:
      state = warm_start(state, tx, config.init_from, config.model)
    if restored is not None:
      state, start = restored
      logging.info("Resuming %s from step %d of %d.", workdir, start, total)
    writer.rewind(start)

    transform, soft_classes = None, 0
    if config.distill_from:
      soft = teacher_targets(config.distill_from, train_data,
                             temperature=config.distill_temperature,
                             batch_size=config.eval_batch_size)
      soft_classes = soft.shape[1]
      transform = functools.partial(_add_soft_targets, soft)
    sig = state_lib.step_signature(mesh, abstract_state, batch_size=config.batch_size,
                                   eval_batch_size=config.eval_batch_size,
                                   num_samples=train_data.num_samples,
                                   soft_target_classes=soft_classes)
    train_fn = state_lib.jit_train_step(functools.partial(
        steps.train_step, parts=parts, tx=tx, schedule=schedule, augment=config.augment,
        sample_rate=train_data.sample_rate, label_smoothing=config.label_smoothing,
        distill_weight=config.distill_weight), sig)
    eval_fn = state_lib.jit_eval_step(functools.partial(steps.eval_step, parts=parts), sig)
    run_eval = functools.partial(evaluate, eval_fn, batch_size=config.eval_batch_size, mesh=mesh)
    train_key = jax.device_put(rng.stream(key, "train"), sharding.replicated(mesh))

    end = total if stop_at_step is None else min(total, stop_at_step)
    batches = pipeline.batches(train_data, batch_size=config.batch_size,
                               seed=rng.stream(key, "data"), mesh=mesh, start_step=start,
                               transform=transform)
    bar = tqdm.tqdm(total=total, initial=start, disable=not progress or jax.process_index() != 0,
                    desc=f"train {config.model}", dynamic_ncols=True)
    pending: list[dict[str, jax.Array]] = []
    t0 = t_log = time.perf_counter()
    for step in range(start + 1, end + 1):
      batch = next(batches)
      with jax.transfer_guard(transfer_guard):
        state, metrics = train_fn(state, batch, train_key)
      pending.append(metrics)
      bar.update(1)
      epoch, in_epoch = divmod(step, per_epoch)
      if step % config.log_every_steps == 0 or in_epoch == 0 or step == end:
        record = _average(pending)
        now = time.perf_counter()
        record["train/steps_per_s"] = len(pending) / max(now - t_log, 1e-9)
        t_log, pending = now, []
        writer.write({"kind": "train", "step": step, "epoch": step / per_epoch, **record})
        bar.set_postfix(loss=f"{record['train/loss']:.3f}", acc=f"{record['train/accuracy']:.3f}")
      if in_epoch == 0 and validation_data is not None and (
          epoch % config.eval_every_epochs == 0 or step == total):
        val = run_eval(state, validation_data, prefix="val")
        writer.write({"kind": "eval", "step": step, "epoch": epoch, **val})
        logging.info("epoch %d: val accuracy %.4f", epoch, val["val/accuracy"])
      ckpt.save_checkpoint(manager, state, step, force=step == total)
    bar.close()
    train_seconds = time.perf_counter() - t0
    if end < total:
      manager.wait_until_finished()
      return TrainResult(state, parts, None, {}, end - start, start, train_seconds)

    final: dict[str, float] = {}
    if validation_data is not None:
      final.update(run_eval(state, validation_data, prefix="val"))
    if test_data is not None:
      final.update(run_eval(state, test_data, prefix="test"))
    writer.write({"kind": "final", "step": total, "epoch": config.num_epochs, **final})
    info = ckpt.ModelInfo(
        model=config.model, model_overrides=dict(config.model_overrides),
        num_classes=train_data.num_classes, class_names=train_data.class_names,
        sample_rate=train_data.sample_rate, clip_samples=train_data.num_samples, step=total,
        extra={k: v for k, v in final.items() if k.endswith("accuracy")})
    ckpt.save_final(workdir, state, info)
    return TrainResult(state, parts, info, final, end - start, start, train_seconds)
  finally:
    manager.close()  # Waits for asynchronous saves, also when a step raised.
