"""A craft's records: its checkpoints, its ``metrics.jsonl`` and its progress bar.

The side effects of :func:`jaxtag.taggants.craft.craft_run` (and the resume of
:func:`jaxtag.taggants.craft.craft_init`), kept apart from the driver's arithmetic. Orbax, tqdm
and the training loop's ``MetricsWriter`` are imported only when a craft writes records.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import jax

from jaxtag.taggants.step import CraftState

METRICS_JSONL = "metrics.jsonl"   # one line per crafting step, beside the checkpoints




class CraftLog:
  """The side effects of a run of crafting steps: progress bar, ``metrics.jsonl``, checkpoints.

  Args:
    checkpoint_dir: where checkpoints and ``metrics.jsonl`` go (None: neither).
    progress: show a progress bar.
    total: the craft's last step; start: the step this run starts at (``metrics.jsonl`` is cut
      back to the steps before it: later lines belong to a run that was lost).
  """

  def __init__(self, checkpoint_dir, progress: bool, total: int, start: int):
    self.bar = _progress(total, start, progress)
    self.manager = self.writer = None
    if checkpoint_dir is not None:
      from jaxtag.train.loop import MetricsWriter
      self.manager = checkpoint_manager(checkpoint_dir)
      self.writer = MetricsWriter(pathlib.Path(checkpoint_dir) / METRICS_JSONL)
      self.writer.rewind(start - 1)   # steps past the checkpoint belong to a lost run

  def flush(self, pending: list[tuple[int, int, Any]]) -> list[dict[str, float]]:
    """Fetches the pending steps' losses (one transfer) and logs them; returns their records."""
    losses = jax.device_get([loss for _, _, loss in pending])
    records = [{"step": step, "restart": restart, "loss": float(loss)}
               for (step, restart, _), loss in zip(pending, losses)]
    for record in records:
      if self.writer is not None:
        self.writer.write(record)
    if self.bar is not None and records:
      self.bar.set_postfix(loss=f"{records[-1]['loss']:.4f}", restart=records[-1]["restart"])
    return records

  def advance(self, state: CraftState, step: int, checkpoint: bool) -> None:
    """One step done: the bar moves; at a checkpoint step the state is saved."""
    if self.bar is not None:
      self.bar.update(1)
    if self.manager is not None and checkpoint:
      save(self.manager, state, step)

  def close(self) -> None:
    """Closes the bar and waits for the last checkpoint to reach the disk."""
    if self.bar is not None:
      self.bar.close()
    if self.manager is not None:
      self.manager.wait_until_finished()
      self.manager.close()


def read_history(directory, step: int) -> list[dict[str, float]]:
  """The history of the steps before ``step`` from ``metrics.jsonl`` (a resumed craft's)."""
  path = pathlib.Path(directory) / METRICS_JSONL
  if step == 0 or not path.exists():
    return []
  records = {}
  for line in path.read_text().splitlines():
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      continue   # a line cut by a kill
    if record.get("step", step) < step:
      records[record["step"]] = record
  return [records[s] for s in sorted(records)]


def _progress(total, start, enabled):
  if not enabled:
    return None
  from tqdm.auto import tqdm
  return tqdm(total=total, initial=start, desc="craft", unit="step", dynamic_ncols=True)


def checkpoint_manager(directory):
  """An orbax manager of the craft checkpoints in ``directory`` (the last two kept)."""
  import orbax.checkpoint as ocp
  directory = pathlib.Path(directory).absolute()
  options = ocp.CheckpointManagerOptions(max_to_keep=2, save_interval_steps=1)
  return ocp.CheckpointManager(directory, options=options)


def save(manager, state: CraftState, step: int) -> None:
  """Saves ``state`` as step ``step`` (asynchronously)."""
  import orbax.checkpoint as ocp
  manager.save(step, args=ocp.args.StandardSave(state))


def restore(manager, template: CraftState) -> CraftState | None:
  """The latest checkpoint, placed as ``template`` is (None: none); closes ``manager``."""
  import orbax.checkpoint as ocp
  try:
    step = manager.latest_step()
    if step is None:
      return None
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), template)
    return manager.restore(step, args=ocp.args.StandardRestore(abstract))
  finally:
    manager.close()
