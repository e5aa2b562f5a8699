"""Checkpoints of a training workdir, and loading the trained model back for inference.

Layout of a train workdir::

    checkpoints/<step>/{state,data}   orbax CheckpointManager: full TrainState + {"step": ...}
    final/                            params and batch_stats only (what inference needs)
    model.json                        model name and options, class names, sample rate, clip length
    metrics.jsonl                     one JSON object per log step and per evaluation

The data-iterator position is the step itself: ``jaxtag.data.pipeline.batches`` is a pure
function of ``(seed, step)``, so ``{"step": k}`` beside the state is all that resuming needs.
orbax writes every checkpoint into a temporary folder and renames it when complete, and
``model.json`` is written with a temp file and ``os.replace``, so a killed run never leaves a
half-written artifact that looks complete.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any, NamedTuple

import jax
from flax import nnx

from jaxtag import models
from jaxtag.audio import io as audio_io
from jaxtag.train.state import ModelSpec, TrainState

CHECKPOINT_DIR = "checkpoints"
FINAL_DIR = "final"
MODEL_JSON = "model.json"


@dataclasses.dataclass(frozen=True)
class ModelInfo:
  """What a consumer of a trained model needs besides its weights (``model.json``).

  Attributes:
    model: registry name of the model.
    model_overrides: constructor options given to ``jaxtag.models.create_model``.
    num_classes: output classes.
    class_names: class names in label order.
    sample_rate: sample rate of the waveforms the model expects.
    clip_samples: samples per clip it was trained on.
    step: optimiser steps of the saved weights.
    extra: anything else worth recording (seed, final accuracies).
  """

  model: str
  model_overrides: dict[str, Any]
  num_classes: int
  class_names: tuple[str, ...]
  sample_rate: int
  clip_samples: int
  step: int = 0
  extra: dict[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def spec(self) -> ModelSpec:
    return ModelSpec(self.model, self.num_classes, self.model_overrides)

  def to_json(self) -> dict[str, Any]:
    out = dataclasses.asdict(self)
    out["class_names"] = list(self.class_names)
    return out

  @classmethod
  def from_json(cls, obj: dict[str, Any]) -> ModelInfo:
    fields = {f.name for f in dataclasses.fields(cls)}
    missing = {"model", "num_classes", "class_names", "sample_rate", "clip_samples"} - set(obj)
    if missing:
      raise ValueError(f"{MODEL_JSON} lacks {sorted(missing)}; it was not written by jaxtag.train.")
    kwargs = {k: v for k, v in obj.items() if k in fields}
    kwargs["class_names"] = tuple(kwargs["class_names"])
    kwargs.setdefault("model_overrides", {})
    return cls(**kwargs)


def write_json_atomic(path: pathlib.Path, obj: Any) -> None:
  """Writes JSON to ``path`` atomically (``jaxtag.audio.io.write_text_atomic``)."""
  audio_io.write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def checkpoint_manager(workdir: str | os.PathLike, *, save_interval_steps: int,
                       max_to_keep: int = 2):
  """An orbax ``CheckpointManager`` for ``<workdir>/checkpoints`` (items ``state``, ``data``)."""
  import orbax.checkpoint as ocp
  options = ocp.CheckpointManagerOptions(save_interval_steps=save_interval_steps,
                                         max_to_keep=max_to_keep, create=True)
  return ocp.CheckpointManager(pathlib.Path(workdir).absolute() / CHECKPOINT_DIR,
                               options=options, item_names=("state", "data"))


def save_checkpoint(manager, state: TrainState, step: int, *, force: bool = False) -> bool:
  """Saves ``state`` and the data position ``step`` if the manager's interval says so.

  Returns:
    Whether a checkpoint was started (it completes asynchronously; call
    ``manager.wait_until_finished()`` before reading it).
  """
  import orbax.checkpoint as ocp
  return manager.save(step, force=force, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), data=ocp.args.JsonSave({"step": int(step)})))


def restore_latest(manager, abstract_state: TrainState) -> tuple[TrainState, int] | None:
  """The latest checkpoint restored into ``abstract_state`` 's shardings, or None if none.

  Raises:
    ValueError: the checkpoint's data position disagrees with its state's step (corrupt).
  """
  import orbax.checkpoint as ocp
  step = manager.latest_step()
  if step is None:
    return None
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
  state, data = restored["state"], restored["data"]
  if int(data["step"]) != step or int(jax.device_get(state.step)) != step:
    raise ValueError(f"checkpoint {manager.directory}/{step}: data step {data['step']} and state "
                     f"step {int(state.step)} disagree; delete that checkpoint folder to resume "
                     "from the previous one.")
  return state, step


def save_final(workdir: str | os.PathLike, state: TrainState, info: ModelInfo) -> None:
  """Writes the inference weights to ``<workdir>/final`` and ``model.json`` (both atomically)."""
  import orbax.checkpoint as ocp
  workdir = pathlib.Path(workdir).absolute()
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(workdir / FINAL_DIR, {"params": state.params, "batch_stats": state.batch_stats},
               force=True)
    ckptr.wait_until_finished()
  if jax.process_index() == 0:
    write_json_atomic(workdir / MODEL_JSON, info.to_json())


def read_model_info(workdir: str | os.PathLike) -> ModelInfo:
  """Reads ``<workdir>/model.json``.

  Raises:
    FileNotFoundError: the workdir holds no finished training run.
  """
  path = pathlib.Path(workdir) / MODEL_JSON
  if not path.exists():
    raise FileNotFoundError(f"{path} does not exist: {workdir} holds no finished training run "
                            "(run launch/train.py to the end first).")
  return ModelInfo.from_json(json.loads(path.read_text()))


class TrainedModel(NamedTuple):
  """A trained model ready for inference.

  Attributes:
    model: the ``nnx.Module`` (call ``model(waveform)`` for ``(logits, intermediates)``).
    graphdef, params, batch_stats, other: its split form (``jaxtag.models.split_model``).
    info: :class:`ModelInfo` from ``model.json``.
  """

  model: nnx.Module
  graphdef: Any
  params: nnx.State
  batch_stats: nnx.State
  other: nnx.State
  info: ModelInfo

  @property
  def pure(self) -> models.PureModel:
    """The model's pure form (``pure.apply(params, batch_stats, waveform)``, ``features``,
    ``classify``), the one that training, crafting and verification use."""
    return models.PureModel(self.graphdef, self.other, self.info.num_classes)


def _restore_weights(workdir: pathlib.Path, path: pathlib.Path, info: ModelInfo, *, sharding,
                     partial: bool) -> TrainedModel:
  """``params`` and ``batch_stats`` read from the orbax item at ``path`` (``partial``: an item
  that holds more, such as a checkpoint's full TrainState) into the model ``info`` describes."""
  import orbax.checkpoint as ocp
  spec = info.spec
  # `other` (stored dropout streams) is not trained; build it without materialising params.
  other = jax.jit(lambda: models.split_model(spec.build(nnx.Rngs(0))).other)()
  abstract = models.split_model(nnx.eval_shape(lambda: spec.build(nnx.Rngs(0))))
  sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                        {"params": abstract.params, "batch_stats": abstract.batch_stats})
  if partial:
    with ocp.PyTreeCheckpointer() as ckptr:
      restored = ckptr.restore(path, args=ocp.args.PyTreeRestore(
          item=target, partial_restore=True,
          restore_args=jax.tree.map(lambda _: ocp.ArrayRestoreArgs(sharding=sharding), target)))
  else:
    with ocp.StandardCheckpointer() as ckptr:
      restored = ckptr.restore(path, target)
  model = models.merge_model(abstract.graphdef, restored["params"], restored["batch_stats"], other)
  return TrainedModel(model, abstract.graphdef, restored["params"], restored["batch_stats"],
                      other, info)


def restore_for_inference(workdir: str | os.PathLike, *, sharding=None) -> TrainedModel:
  """Loads the final weights of a finished training run.

  Args:
    workdir: the train stage's workdir (holds ``model.json`` and ``final/``).
    sharding: where to put the weights (default: replicated on the first local device).

  Returns:
    A :class:`TrainedModel`.

  Raises:
    FileNotFoundError: no ``model.json`` or ``final/`` in ``workdir``.
  """
  workdir = pathlib.Path(workdir).absolute()
  info = read_model_info(workdir)
  if not (workdir / FINAL_DIR).exists():
    raise FileNotFoundError(f"{workdir / FINAL_DIR} does not exist; the run did not finish.")
  return _restore_weights(workdir, workdir / FINAL_DIR, info, sharding=sharding, partial=False)


def checkpoint_steps(workdir: str | os.PathLike) -> list[int]:
  """The steps of the complete checkpoints kept in ``<workdir>/checkpoints``, ascending (orbax's
  temporary folders of an unfinished save are not steps)."""
  folder = pathlib.Path(workdir) / CHECKPOINT_DIR
  if not folder.is_dir():
    return []
  return sorted(int(p.name) for p in folder.iterdir()
                if p.name.isdigit() and (p / "state").is_dir())


def restore_step(workdir: str | os.PathLike, step: int, *, sharding=None) -> TrainedModel:
  """The weights of the checkpoint at ``step`` of a finished training run, ready for inference
  (the model as it was during training, e.g. after each epoch; ``info.step`` is ``step``).

  Only ``params`` and ``batch_stats`` are read from the checkpoint's TrainState; the optimiser
  state stays on disk. Keep every epoch with ``TrainConfig.max_to_keep`` >= the number of epochs.

  Args:
    workdir: the train stage's workdir (``model.json`` describes the model).
    step: a step of :func:`checkpoint_steps`.
    sharding: where to put the weights (default: the first local device).

  Raises:
    FileNotFoundError: no ``model.json``, or no checkpoint at ``step`` (the message lists those
      kept).
  """
  workdir = pathlib.Path(workdir).absolute()
  info = read_model_info(workdir)
  kept = checkpoint_steps(workdir)
  if int(step) not in kept:
    raise FileNotFoundError(f"{workdir / CHECKPOINT_DIR} holds no checkpoint of step {step}; it "
                            f"keeps steps {kept} (train with a larger max_to_keep to keep every "
                            "epoch).")
  path = workdir / CHECKPOINT_DIR / str(int(step)) / "state"
  return _restore_weights(workdir, path, dataclasses.replace(info, step=int(step)),
                          sharding=sharding, partial=True)


def load_trained(workdir: str | os.PathLike, **kwargs) -> TrainedModel:
  """Alias of :func:`restore_for_inference`."""
  return restore_for_inference(workdir, **kwargs)
