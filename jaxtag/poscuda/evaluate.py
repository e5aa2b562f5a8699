"""The steps of PosCUDA's evaluation (Table 1 of the paper, quality, the attacker check).

:func:`jaxtag.poscuda.jobs.run_eval_job` chains them: :func:`protect_variants` draws one secret
per variant (one key: the same positions and uniform draws for every b), :func:`evaluate_model`
trains one row's model on the clean and every protected train set (through
:func:`jaxtag.train.train`, into run folders reused when finished) and tests it clean, class-
filtered and mixed, and :func:`attack` retrains it on an attacked protected set.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from jaxtag import rng
from jaxtag import workdir as workdir_lib
from jaxtag.poscuda import attack as attack_lib
from jaxtag.poscuda import filters

RESULT_FILE = "poscuda_result.json"   # a run folder's record, written after its training
ATTACK_CHUNK = 512                    # clips per attack call


def names(text: str) -> list[str]:
  """``"m5, lstm"`` -> ``["m5", "lstm"]`` (comma-separated, blanks dropped)."""
  return [s.strip() for s in text.split(",") if s.strip()]


def parse_variants(text: str) -> list[tuple[str, bool, float]]:
  """``"pos:0.3,nopos:0.01"`` -> ``[("pos_b0.3", True, 0.3), ("nopos_b0.01", False, 0.01)]``.

  Raises:
    ValueError: an item that is not ``pos:<b>`` or ``nopos:<b>``, naming it.
  """
  out = []
  for item in filter(None, (s.strip() for s in text.split(","))):
    kind, _, blur = item.partition(":")
    if kind not in ("pos", "nopos") or not blur:
      raise ValueError(f"variants: {item!r} is not 'pos:<b>' or 'nopos:<b>'.")
    out.append((f"{kind}_b{float(blur):g}", kind == "pos", float(blur)))
  return out


@dataclasses.dataclass(frozen=True)
class EvalRecipe:
  """How one row's model is trained: no augmentation, AdamW without warm-up, cosine decay.

  Attributes:
    model: registry name (``jaxtag.models.available_models()``).
    model_overrides: constructor options (JSON-able).
    num_epochs: passes over the train split.
    batch_size: global training batch size.
    learning_rate: AdamW's peak learning rate.
    weight_decay: AdamW's weight decay.
  """

  model: str = "m5"
  model_overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  num_epochs: int = 12
  batch_size: int = 64
  learning_rate: float = 1e-2
  weight_decay: float = 1e-4

  def to_dict(self) -> dict[str, Any]:
    """JSON values (tuples as lists): what a run folder records and compares."""
    from jaxtag import config as config_lib
    return json.loads(json.dumps(config_lib.to_json_dict(self)))

  @classmethod
  def from_dict(cls, fields: Mapping[str, Any], *, where: str = "recipe") -> EvalRecipe:
    """Inverse of ``to_dict``; an unknown field is an error naming it."""
    from jaxtag import config as config_lib
    return config_lib.from_config(cls, fields, where=where)

  def train_config(self, eval_batch_size: int):
    """The :class:`jaxtag.train.TrainConfig` of this recipe."""
    from jaxtag import train
    return train.TrainConfig(
        model=self.model, model_overrides=self.to_dict()["model_overrides"],
        num_epochs=self.num_epochs, batch_size=self.batch_size, eval_batch_size=eval_batch_size,
        optim=train.OptimConfig(learning_rate=self.learning_rate,
                                weight_decay=self.weight_decay, warmup_steps=0),
        log_every_steps=100)


@dataclasses.dataclass(frozen=True)
class Trainer:
  """Where and how the evaluation's runs train and predict (the same for every run)."""

  eval_batch_size: int = 256
  num_devices: int = 0
  progress: bool = False
  transfer_guard: str = "allow"

  def train(self, run_dir: pathlib.Path, recipe: EvalRecipe, train_data, key) -> dict[str, Any]:
    """Trains (or reuses) one run; returns its record (train seconds, epochs, steps, recipe).

    Raises:
      ValueError: ``run_dir`` holds a run of another recipe.
    """
    from jaxtag import sharding, train
    done = run_dir / RESULT_FILE
    wanted = recipe.to_dict()
    if done.exists():
      record = json.loads(done.read_text())
      if record.setdefault("recipe", wanted) != wanted:
        raise ValueError(f"{run_dir} was trained with another recipe ({record['recipe']}); "
                         "delete it or use another workdir.")
      return record
    result = train.train(recipe.train_config(self.eval_batch_size), train_data=train_data,
                         key=key, workdir=run_dir,
                         mesh=sharding.make_mesh(self.num_devices or None),
                         progress=self.progress, transfer_guard=self.transfer_guard)
    record = {"train_seconds": round(result.train_seconds, 1), "epochs": recipe.num_epochs,
              "steps_run": result.steps_run, "recipe": wanted}
    workdir_lib.write_json(done, record)
    return record

  def predictor(self, run_dir: pathlib.Path) -> Predictor:
    return Predictor(run_dir, self.eval_batch_size)


class Predictor:
  """Labels and embeddings of a finished run, in fixed-size padded batches (one compilation)."""

  def __init__(self, run_dir: pathlib.Path, batch_size: int):
    from jaxtag import train
    trained = train.restore_for_inference(run_dir)
    apply_fn = trained.pure.apply

    def forward(params, batch_stats, waveforms):
      logits, intermediates, _ = apply_fn(params, batch_stats, waveforms, train=False)
      return jax.numpy.argmax(logits, -1), intermediates["embedding"]

    self._fn = functools.partial(jax.jit(forward), trained.params, trained.batch_stats)
    self.batch_size = batch_size

  def __call__(self, waveforms) -> tuple[np.ndarray, np.ndarray]:
    """(predicted labels, float64 embeddings) of ``waveforms``."""
    from jaxtag.train import infer
    preds, embeddings = infer.map_padded(self._fn, waveforms, batch_size=self.batch_size)
    return preds, embeddings.astype(np.float64)

  def accuracy(self, waveforms, labels) -> float:
    return float(np.mean(self(waveforms)[0] == labels))


def _snr_summary(snr: np.ndarray) -> dict[str, float]:
  return {"min": float(snr.min()), "p5": float(np.percentile(snr, 5)),
          "median": float(np.median(snr))}


def protect_variants(spec_config, variants: str, train_split, test_split,
                     key: jax.Array) -> dict[str, dict[str, Any]]:
  """One secret per variant of ``variants`` (``parse_variants``), all from ``key``: the same
  positions and uniform draws for every b.

  Args:
    spec_config: a :class:`jaxtag.poscuda.jobs.SpecConfig` (resolved on ``train_split``).
    variants: ``kind:b`` comma-separated.
    train_split: the clean train split (protected per variant).
    test_split: the clean test split (class-filtered per variant).
    key: the ``poscuda`` stream.

  Returns:
    variant name -> ``secret``, protected ``train``, class-filtered ``test``, ``snr_db``.
  """
  base = spec_config.resolve(train_split)
  out = {}
  for name, use_positions, blur in parse_variants(variants):
    spec = dataclasses.replace(base, use_positions=use_positions, blur=blur)
    secret = filters.make_filters(key, spec, train_split.num_classes)
    protected = filters.apply_in_batches(train_split.waveforms, train_split.labels, secret,
                                         sample_rate=train_split.sample_rate)
    out[name] = {
        "secret": secret, "train": train_split.with_waveforms(protected),
        "test": filters.protect_dataset(test_split, secret),
        "snr_db": _snr_summary(filters.snr_in_batches(train_split.waveforms, protected))}
  return out


def mixed(secret: filters.PoscudaFilters, part: str) -> filters.PoscudaFilters:
  """The paper's mixing check: each class gets the next class's filter or patch position.

  Raises:
    ValueError: ``part`` is not ``filters`` or ``positions``.
  """
  class_filters, positions = np.asarray(secret.filters), np.asarray(secret.positions)
  if part == "filters":
    class_filters = np.roll(class_filters, 1, axis=0)
  elif part == "positions":
    positions = np.roll(positions, 1, axis=0)
  else:
    raise ValueError(f"mixed: part must be 'filters' or 'positions', got {part!r}.")
  return filters.PoscudaFilters(filters=class_filters, positions=positions, spec=secret.spec)


def evaluate_model(name: str, recipe: EvalRecipe, data: Mapping[str, Any],
                   variants: Mapping[str, dict], workdir: pathlib.Path, root_key: jax.Array, *,
                   trainer: Trainer, fd_clips: int) -> dict[str, Any]:
  """One Table-1 row: clean and protected trainings of one model, tested clean and filtered.

  Args:
    name: the row (run folders ``<workdir>/runs/<name>/<variant>``, key stream ``train_<name>``).
    recipe: its training recipe.
    data: the clean ``train`` and ``test`` splits.
    variants: from :func:`protect_variants`.
    workdir: the evaluation's workdir.
    root_key: the run's root key.
    trainer: how runs train and predict.
    fd_clips: train clips whose embeddings enter the Fréchet distance.

  Returns:
    ``{"model", "runs": {"clean": ..., <variant>: ...}}`` with each run's record and accuracies.
  """
  from jaxtag.audio import metrics
  key = rng.stream(root_key, f"train_{name}")  # Same init and batch order for every variant.
  test = data["test"]
  row: dict[str, Any] = {"model": recipe.model, "runs": {}}
  clean_dir = workdir / "runs" / name / "clean"
  row["runs"]["clean"] = trainer.train(clean_dir, recipe, data["train"], key)
  clean = trainer.predictor(clean_dir)
  row["runs"]["clean"]["test"] = clean.accuracy(test.waveforms, test.labels)
  row["runs"]["clean"]["filtered_test"] = {
      v: clean.accuracy(d["test"].waveforms, d["test"].labels) for v, d in variants.items()}
  idx = np.random.default_rng(0).permutation(len(data["train"]))[:fd_clips]
  _, clean_emb = clean(data["train"].waveforms[idx])
  for variant, d in variants.items():
    run_dir = workdir / "runs" / name / variant
    record = trainer.train(run_dir, recipe, d["train"], key)
    model = trainer.predictor(run_dir)
    record["test"] = model.accuracy(test.waveforms, test.labels)
    record["filtered_test"] = model.accuracy(d["test"].waveforms, d["test"].labels)
    if d["secret"].spec.use_positions:  # Which half of the secret does the model read?
      record["mixed_test"] = {part: model.accuracy(
          filters.protect_dataset(test, mixed(d["secret"], part)).waveforms, test.labels)
          for part in ("filters", "positions")}
    record["frechet"] = metrics.frechet_distance(clean_emb, clean(d["train"].waveforms[idx])[1])
    row["runs"][variant] = record
  return row


def attack(config, recipe: EvalRecipe, data: Mapping[str, Any], variants: Mapping[str, dict],
           workdir: pathlib.Path, root_key: jax.Array, rows: Mapping[str, dict], *,
           trainer: Trainer) -> dict[str, Any]:
  """Random blurs/noise at random positions on a protected set; retrain; is it learnable again?

  Args:
    config: a :class:`jaxtag.poscuda.jobs.AttackConfig` (model, variant, modes, patches).
    recipe: the attacked row's recipe.
    data: the clean ``train`` and ``test`` splits.
    variants: from :func:`protect_variants`.
    workdir: the evaluation's workdir (runs ``runs/<model>/<variant>_attack_<mode>``).
    root_key: the run's root key (streams ``attack_<mode>`` and the row's ``train_<model>``).
    rows: the rows from :func:`evaluate_model` (the clean and protected accuracies).
    trainer: how runs train and predict.

  Returns:
    The clean- and protected-trained accuracies and, per mode, the retrained run's record with
    ``recovered_fraction`` of the gap and ``learnable_again`` (half the gap or more).
  """
  name, variant = config.model, parse_variants(config.variant)[0][0]
  clean_acc = rows[name]["runs"]["clean"]["test"]
  protected_acc = rows[name]["runs"][variant]["test"]
  spec = variants[variant]["secret"].spec
  out = {"model": name, "variant": variant, "clean_trained_test": clean_acc,
         "protected_trained_test": protected_acc, "modes": {}}
  protected = variants[variant]["train"]
  for mode in names(config.modes):
    attacked = np.concatenate([np.asarray(attack_lib.random_patch_attack(
        rng.step_key(rng.stream(root_key, f"attack_{mode}"), start),
        protected.waveforms[start:start + ATTACK_CHUNK], mode=mode,
        num_patches=config.num_patches, patch=spec.patch, taps=spec.taps,
        noise_snr_db=config.noise_snr_db))
        for start in range(0, len(protected), ATTACK_CHUNK)])
    run_dir = workdir / "runs" / name / f"{variant}_attack_{mode}"
    record = trainer.train(run_dir, recipe, protected.with_waveforms(attacked),
                           rng.stream(root_key, f"train_{name}"))
    record["test"] = trainer.predictor(run_dir).accuracy(data["test"].waveforms,
                                                         data["test"].labels)
    gap = clean_acc - protected_acc
    record["recovered_fraction"] = (record["test"] - protected_acc) / gap if gap > 0 else None
    record["learnable_again"] = bool(gap > 0 and record["recovered_fraction"] >= 0.5)
    out["modes"][mode] = record
  return out
