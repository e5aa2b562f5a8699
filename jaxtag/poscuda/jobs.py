"""PosCUDA's stages as library jobs: protect a dataset, and evaluate the protection (Table 1).

Each job is a frozen dataclass (the stage's whole config: its launcher's ConfigDict is generated
from it by :mod:`jaxtag.config`) and a ``run_*`` function over a workdir that follows
:mod:`jaxtag.workdir`'s rules: the job is recorded in ``config.json``, a finished stage is reused
from its summary (written last), and the secret filters are written owner-only.

    job = ProtectJob(data=DataSource(preset="tiny"), output_root="workdirs/corpus_poscuda")
    summary = run_protect_job(job, "workdirs/poscuda_secret")
    report = run_eval_job(EvalJob(data=DataSource(preset="tiny")), "workdirs/poscuda_eval")

``launch/poscuda_protect.py`` and ``launch/poscuda_eval.py`` are thin mains over these two
functions; the evaluation's steps are in :mod:`jaxtag.poscuda.evaluate` and its tables and plot in
:mod:`jaxtag.poscuda.report`.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import time
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from jaxtag import errors, rng, secrets
from jaxtag import workdir as workdir_lib
from jaxtag.data import publish, sources
from jaxtag.poscuda import evaluate, filters
from jaxtag.poscuda import report as report_lib
from jaxtag.poscuda import secret as secret_lib

SECRET_FILENAME = "poscuda.npz"
PROTECT_SUMMARY = "protect_summary.json"   # written last: the protected dataset is complete
EVAL_REPORT = "poscuda_eval.json"          # written last: the evaluation finished
_POSITIONS = ("anywhere", "active")
_SPEC = filters.PoscudaSpec   # its class attributes are its defaults


@dataclasses.dataclass(frozen=True)
class SpecConfig:
  """The :class:`~jaxtag.poscuda.PoscudaSpec` a stage draws, less what the data decides (its
  sample rate and clip length) and with the position window chosen by ``positions``.

  Attributes:
    num_taps: k, counted at 16 kHz (scaled with the sample rate).
    blur: b, taps ~ U(0, b).
    patch_samples: p, counted at 16 kHz.
    use_positions: filter only the class's patch (PosCUDA); False: the whole clip.
    center_tap: CUDA's centre parameter (0: off).
    normalisation: ``none``, ``sum`` or ``l2`` (see the :mod:`jaxtag.poscuda.filters` docstring).
    positions: ``anywhere``, or ``active``: patch starts only where the clips carry sound
      (:func:`~jaxtag.poscuda.active_window`; measured worse on the default corpus).
    active_level: for ``active``, starts whose patch covers at least this fraction of the peak
      energy.
  """

  num_taps: int = _SPEC.num_taps
  blur: float = _SPEC.blur
  patch_samples: int = _SPEC.patch_samples
  use_positions: bool = _SPEC.use_positions
  center_tap: float = _SPEC.center_tap
  normalisation: str = _SPEC.normalisation
  positions: str = "anywhere"
  active_level: float = 0.5

  def __post_init__(self):
    if self.positions not in _POSITIONS:
      raise ValueError(f"{errors.option('positions', owner='SpecConfig')} must be 'active' or "
                       f"'anywhere', got {self.positions!r}.")

  def resolve(self, dataset) -> filters.PoscudaSpec:
    """The typed spec for ``dataset`` (an ``AudioDataset``): its sample rate and clip length,
    and with ``positions="active"`` the window of patch starts where its clips carry sound."""
    drawn = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
             if f.name not in ("positions", "active_level")}
    spec = filters.PoscudaSpec(**drawn, sample_rate=dataset.sample_rate,
                               clip_samples=dataset.num_samples)
    if self.positions == "active" and spec.use_positions:
      window = filters.active_window(dataset.waveforms, spec.patch, level=self.active_level)
      spec = dataclasses.replace(spec, position_window=window)
    return spec


# --- protect -------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ProtectJob:
  """Protect a dataset's train split with PosCUDA and publish it in the source's layout.

  Attributes:
    seed: the filters come from the ``poscuda`` stream of ``jax.random.key(seed)``.
    data: the dataset to protect (every split is published; only train is filtered).
    spec: how the filters are drawn.
    output_root: the folder that receives the protected dataset (required).
    overwrite: replace an ``output_root`` that another run published (never a folder jaxtag did
      not publish), and a secret file of another recipe.
    copy_extra_files: copy the input's other files (README, metadata, ``_background_noise_/``)
      verbatim.
    batch_size: clips per jitted protection call.
    progress: show progress bars (cosmetic).
  """

  seed: int = 0
  data: sources.DataSource = dataclasses.field(default_factory=sources.DataSource)
  spec: SpecConfig = SpecConfig()
  output_root: str | None = None
  overwrite: bool = False
  copy_extra_files: bool = True
  batch_size: int = 256
  progress: bool = False

  def key(self) -> jax.Array:
    """The run's root PRNG key."""
    return jax.random.key(int(self.seed))


# Where the library's dataclasses sit in the jobs' configs (their messages name the flags).
FLAG_OWNERS = {"SpecConfig": "spec", "AttackConfig": "attack", "ProtectJob": "", "EvalJob": ""}


def _output_root(job: ProtectJob) -> pathlib.Path:
  if not job.output_root:
    raise ValueError(f"poscuda protect: set {errors.option('output_root', owner='ProtectJob')} "
                     "to the folder that receives the protected dataset.")
  return pathlib.Path(job.output_root).expanduser().absolute()


def _owner(workdir: str | os.PathLike) -> str:
  return str(pathlib.Path(workdir).absolute())


def check_protect_locations(job: ProtectJob, workdir: str | os.PathLike) -> None:
  """Refuses a secret file inside the source or the output folder, and an ``output_root`` that
  publishing would damage (:func:`jaxtag.data.publish.check_destination`)."""
  workdir = pathlib.Path(workdir)
  output = _output_root(job)
  source_root = publish.input_root(job.data)
  secrets.check_outside(workdir / SECRET_FILENAME, (source_root, output),
                        what="PosCUDA secret file")
  publish.check_location(output, source_root, name="output_root")
  if not (workdir / PROTECT_SUMMARY).is_file():   # A finished stage is reused: it writes nothing.
    publish.check_destination(output, owner=_owner(workdir), name="output_root",
                              replace_other_owner=job.overwrite, replace_option="overwrite")


def run_protect_job(job: ProtectJob, workdir: str | os.PathLike, *,
                    runtime: workdir_lib.Runtime = workdir_lib.Runtime()) -> dict[str, Any]:
  """Draws the filters, protects the train split, publishes the dataset (read back before it is
  renamed into place) and writes the secret file; returns the summary.

  A finished run of the same job is reused; an interrupted one reuses its secret file (when made
  by the same recipe) and publishes the dataset again.

  Raises:
    SecretFileError: the secret file would lie inside the input or output dataset.
    PublishError: an ``output_root`` that publishing would damage.
    ConfigChangedError: the workdir holds a run of another job.
    secrets.SecretFileError: an existing secret file made by another recipe (unless ``overwrite``).
  """
  workdir = pathlib.Path(workdir)
  check_protect_locations(job, workdir)
  workdir_lib.record(job, workdir)
  output = _output_root(job)
  publish.remove_stale(output)   # Before a finished run is reused: it never exports.
  done = workdir_lib.finished(job, workdir, PROTECT_SUMMARY,
                              requires=(str(output), SECRET_FILENAME))
  if done is not None:
    return done
  splits = sources.load_splits(job.data, progress=job.progress)
  train = splits["train"]
  spec = job.spec.resolve(train)
  key = rng.stream(job.key(), "poscuda")
  secret_path = workdir / SECRET_FILENAME
  secrets.private_dir(workdir)
  if secret_path.exists():   # a re-run reuses it: it must still be private
    secrets.check_private(secret_path, allow_readable=runtime.allow_readable_secrets,
                          what="PosCUDA secret file", allow_flag="--allow_readable_secrets")
  provenance = filters.filter_provenance(
      key, seed=int(job.seed), stream="poscuda",
      recipe="jaxtag.poscuda.make_filters(jaxtag.rng.stream(jax.random.key(seed), 'poscuda'), "
             "spec, C)")
  secret, _ = secret_lib.make_or_reuse_filters(
      secret_path, key, spec, class_names=train.class_names, provenance=provenance,
      overwrite=job.overwrite, dataset_root=output)
  splits["train"] = filters.protect_dataset(train, secret, batch_size=job.batch_size)
  published = publish.export_splits(
      job.data, splits, output, owner=_owner(workdir), stage="poscuda_protect",
      copy_extra_files=job.copy_extra_files, replace_other_owner=job.overwrite,
      name="output_root", replace_option="overwrite")
  snr = filters.snr_in_batches(train.waveforms, splits["train"].waveforms,
                               batch_size=job.batch_size)
  summary = {
      "output_root": str(output), "secret_file": str(secret_path),
      "clips": {split: len(ds) for split, ds in splits.items()}, "spec": spec.to_dict(),
      "taps": spec.taps, "patch": spec.patch,
      "snr_db": {"min": float(snr.min()), "median": float(np.median(snr))},
      "export_check": published.check, "extra_files": published.extra_files(limit=50),
  }
  workdir_lib.write_json(workdir / PROTECT_SUMMARY, summary)
  return {**summary, "reused": False}


# --- evaluate ------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class AttackConfig:
  """The attacker check: random blurs or noise at random positions on a protected train set,
  then the model is retrained (is the set learnable again?).

  Attributes:
    model: the row (a name in ``EvalJob.models``) retrained; empty: no attack.
    variant: the protected variant attacked (``kind:b``, one of ``EvalJob.variants``).
    modes: comma-separated ``blur`` and/or ``noise``; empty: no attack.
    num_patches: random patches per clip.
    noise_snr_db: SNR of the ``noise`` patches.
  """

  model: str = "m5"
  variant: str = "pos:0.3"
  modes: str = "blur,noise"
  num_patches: int = 16
  noise_snr_db: float = 20.0

  @property
  def enabled(self) -> bool:
    return bool(self.model and self.modes)


def default_recipes() -> dict[str, dict[str, Any]]:
  """The measured recipes of Table 1's rows (launch/configs/poscuda_eval.py's docstring), as the
  plain mappings :class:`EvalJob` holds."""
  recipes = {
      "m5": evaluate.EvalRecipe("m5", dict(n_channel=32, first_stride=16,
                                           channel_multipliers=(1, 1, 2, 2)), 12, 64, 1e-2),
      "lstm": evaluate.EvalRecipe("lstm", dict(pooling="mean"), 6, 64, 1e-2),
      "transformer": evaluate.EvalRecipe("transformer", {}, 2, 64, 1e-3),
  }
  return {name: recipe.to_dict() for name, recipe in recipes.items()}


@dataclasses.dataclass(frozen=True)
class EvalJob:
  """Evaluate PosCUDA as in the paper's Table 1, plus quality and an attacker check.

  Attributes:
    seed: filters from the ``poscuda`` stream of ``jax.random.key(seed)``, each row's training
      from ``train_<model>``, each attack from ``attack_<mode>``.
    data: the dataset (its train and test splits).
    spec: the filters (``blur`` and ``use_positions`` are set per variant).
    variants: Table 1's columns, ``kind:b`` comma-separated (``pos``: PosCUDA, ``nopos``: the
      whole clip filtered).
    models: Table 1's rows, comma-separated names of ``recipes``, in order.
    recipes: row name -> the fields of an :class:`~jaxtag.poscuda.evaluate.EvalRecipe`.
    attack: the attacker check.
    fd_clips: train clips whose embeddings enter the Fréchet distance.
    eval_batch_size: clips per padded inference batch.
    num_devices: devices of the training mesh; 0: every device.
    progress: show progress bars (cosmetic).
  """

  seed: int = 0
  data: sources.DataSource = dataclasses.field(default_factory=sources.DataSource)
  spec: SpecConfig = SpecConfig()
  variants: str = "nopos:0.01,nopos:0.3,pos:0.01,pos:0.3"
  models: str = "m5,lstm,transformer"
  recipes: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=default_recipes)
  attack: AttackConfig = AttackConfig()
  fd_clips: int = 2000
  eval_batch_size: int = 256
  num_devices: int = 0
  progress: bool = False

  def __post_init__(self):
    check_eval_job(self)

  def key(self) -> jax.Array:
    """The run's root PRNG key."""
    return jax.random.key(int(self.seed))

  @property
  def model_names(self) -> list[str]:
    return evaluate.names(self.models)

  def recipe(self, name: str) -> evaluate.EvalRecipe:
    """The typed recipe of row ``name``."""
    return evaluate.EvalRecipe.from_dict(self.recipes[name], where=f"recipes.{name}")


def check_eval_job(job: EvalJob) -> None:
  """Fails before any training on names that do not match (models, recipes, attack) and on a
  recipe with an unknown field."""
  variants = [v for v, _, _ in evaluate.parse_variants(job.variants)]
  models = job.model_names
  missing = [m for m in models if m not in job.recipes]
  if not variants or not models or missing:
    raise ValueError(f"poscuda eval: need {errors.option('variants', owner='EvalJob')} and "
                     f"{errors.option('models', owner='EvalJob')}, each model with a recipe in "
                     f"{errors.option('recipes', owner='EvalJob')} (missing: {missing}).")
  for name in models:
    job.recipe(name)
  if job.attack.enabled:
    attacked = evaluate.parse_variants(job.attack.variant)[0][0]
    if job.attack.model not in models or attacked not in variants:
      raise ValueError(f"poscuda eval: attack.model {job.attack.model!r} and attack.variant "
                       f"{job.attack.variant!r} must be among models {models} and variants "
                       f"{job.variants!r} (or set attack.modes='' to skip the attack).")


def run_eval_job(job: EvalJob, workdir: str | os.PathLike, *,
                 runtime: workdir_lib.Runtime = workdir_lib.Runtime()) -> dict[str, Any]:
  """Trains every row on the clean and each protected train set (into
  ``<workdir>/runs/<model>/<variant>/``, reused when finished), tests them, measures quality,
  runs the attacker check, and writes ``poscuda_eval.txt``, ``poscuda_eval.png`` and the JSON
  report (last); returns the report (a finished evaluation of the same job is returned as it is,
  with ``reused``).

  Raises:
    ConfigChangedError: the workdir holds an evaluation of another job.
    ValueError: a run folder trained with another recipe.
  """
  from jaxtag.audio import io as audio_io

  workdir = pathlib.Path(workdir)
  workdir_lib.record(job, workdir)
  done = workdir_lib.finished(job, workdir, EVAL_REPORT)
  if done is not None:
    return done
  start = time.perf_counter()
  data = {s: sources.load_split(job.data, s, progress=job.progress) for s in ("train", "test")}
  root_key = job.key()
  variants = evaluate.protect_variants(job.spec, job.variants, data["train"], data["test"],
                                       rng.stream(root_key, "poscuda"))
  trainer = evaluate.Trainer(eval_batch_size=job.eval_batch_size, num_devices=job.num_devices,
                             progress=job.progress, transfer_guard=runtime.transfer_guard)
  rows = {name: evaluate.evaluate_model(
      name, job.recipe(name), data, variants, workdir, root_key, trainer=trainer,
      fd_clips=job.fd_clips) for name in job.model_names}
  source = job.data
  report = {
      "dataset": f"{source.kind}:{source.preset}" if source.kind == "corpus" else source.kind,
      "num_classes": data["train"].num_classes, "train_clips": len(data["train"]),
      "test_clips": len(data["test"]), "jax": jax.__version__,
      "embedding_note": report_lib.EMBEDDING_NOTE,
      "variants": {v: {"spec": d["secret"].spec.to_dict(), "snr_db": d["snr_db"]}
                   for v, d in variants.items()},
      "rows": rows,
  }
  if job.attack.enabled:
    report["attack"] = evaluate.attack(job.attack, job.recipe(job.attack.model), data, variants,
                                       workdir, root_key, rows, trainer=trainer)
  report["wall_seconds"] = round(time.perf_counter() - start, 1)
  audio_io.write_text_atomic(workdir / "poscuda_eval.txt", report_lib.format_report(report))
  report_lib.plot_report(report, workdir / "poscuda_eval.png")
  workdir_lib.write_json(workdir / EVAL_REPORT, report)   # Last: the evaluation finished.
  return report
