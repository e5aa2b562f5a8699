"""The taggants pipeline's stages as library jobs: make the keys, craft, verify.

Each job is a frozen dataclass (the stage's whole config: its launcher's ConfigDict is generated
from it by :mod:`jaxtag.config`) and a ``run_*`` function over a workdir that follows
:mod:`jaxtag.workdir`'s rules: the job is recorded in ``config.json``, a finished stage is reused
from its summary (written last), and every file naming keys, their labels or the poisons is
owner-only. ``launch/make_keys.py``, ``launch/craft.py`` and ``launch/verify.py`` are thin mains
over these functions, and the demo (:mod:`jaxtag.taggants.demo`) chains them.
"""

from __future__ import annotations

import dataclasses
import io
import os
import pathlib
from typing import Any

import jax
import numpy as np

from jaxtag import config as config_lib
from jaxtag import rng, secrets, sharding
from jaxtag import workdir as workdir_lib
from jaxtag.data import publish, sources
from jaxtag.taggants import calibrate, keyfile, protect
from jaxtag.taggants import keys as keys_lib
from jaxtag.train import job as train_job

KEY_FILE = "keys.npz"
VERIFY_REPORT_STEM = "verify_report"
VERIFY_SUMMARY = "verify_summary.json"   # written after the reports: the verification finished
CRAFT_REPORT = "craft_report.json"
CRAFT_SUMMARY = "craft_summary.json"   # written last: the stage finished (export read back)
PERTURBATIONS = "perturbations.npz"


# --- make_keys -----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class KeysJob:
  """Draw the secret keys for a dataset's classes.

  Attributes:
    seed: the keys come from the ``keys`` stream of ``jax.random.key(seed)``.
    data: the dataset whose classes the keys target (the key file is refused inside it).
    key_spec: how the keys are drawn and rendered.
    export_wav: also write each key as 16-bit WAV (``keys_wav/``) for listening.
  """

  seed: int = 0
  data: sources.DataSource = dataclasses.field(default_factory=sources.DataSource)
  key_spec: keys_lib.KeySpec = keys_lib.KeySpec()
  export_wav: bool = True


def check_key_location(job: KeysJob, workdir: str | os.PathLike) -> None:
  """Refuses a key file inside the dataset folder (it would be published with the data)."""
  root = sources.dataset_root(job.data, progress=False)
  if root is not None:
    secrets.check_outside(pathlib.Path(workdir) / KEY_FILE, [root], what="key file")


def run_keys_job(job: KeysJob, workdir: str | os.PathLike, *,
                 runtime: workdir_lib.Runtime = workdir_lib.Runtime()) -> dict[str, Any]:
  """Makes the keys from the run's ``keys`` stream and writes the key file (owner-only, never
  overwritten: a re-run reuses it when its manifest records this job's spec, seed and classes,
  and refuses it otherwise); returns a summary."""
  workdir = pathlib.Path(workdir)
  check_key_location(job, workdir)
  workdir_lib.record(job, workdir)
  class_names = sources.class_names(job.data)
  path = workdir / KEY_FILE
  secrets.private_dir(workdir)
  if path.exists():   # a re-run reuses it: it must still be private
    runtime.check_secret_input(path, "key file")
  # The recipe string names the function's first home (jaxtag.keys): key files record it and a
  # re-run compares it, so it stays as written (keys.PROVENANCE_FUNCTION likewise).
  provenance = {"seed": int(job.seed), "stream": "keys",
                "recipe": "jaxtag.keys.make_keys(jaxtag.rng.stream(jax.random.key(seed), "
                          "'keys'), spec, C)"}
  key = rng.stream(jax.random.key(int(job.seed)), "keys")
  secret, _, reused = keyfile.make_or_reuse_keys(path, key, job.key_spec,
                                                  class_names=class_names, provenance=provenance)
  wav_dir = workdir / "keys_wav"
  exported = reused and len(list(wav_dir.glob("*.wav"))) == job.key_spec.num_keys
  if job.export_wav and not exported:   # Atomic per file: a killed export is redone whole.
    keyfile.export_keys_wav(secret, wav_dir, class_names=class_names)
  labels = np.asarray(secret.labels)
  return {"key_file": str(path), "num_keys": int(labels.size),
          "labels": [class_names[i] for i in labels], "spec": job.key_spec.to_dict(),
          "reused": reused}


# --- verify --------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class VerifyJob:
  """Verify a suspect against the key file. Fix ``decision_k`` and ``alpha`` BEFORE looking at
  the suspect: the decision uses them only; the other k up to ``max_k`` are description.

  Attributes:
    seed: unused (verification draws nothing); kept so that every stage has one.
    target: a training workdir or an ``http(s)://`` server URL.
    key_file: the secret key file (from make_keys).
    max_k: labels read per answer (capped at the classes).
    decision_k: the predeclared k of the decision.
    alpha: reject "not trained on the taggants" when p <= alpha.
  """

  seed: int = 0
  target: str = "workdirs/suspect"
  key_file: str = "workdirs/keys/keys.npz"
  max_k: int = 10
  decision_k: int = 1
  alpha: float = 1e-3


def verify_target(job: VerifyJob, *, runtime: workdir_lib.Runtime = workdir_lib.Runtime()):
  """Opens the black box at ``job.target``, loads the key file and verifies; returns the
  :class:`jaxtag.taggants.verify.VerifyReport`."""
  from jaxtag.taggants import blackbox, verify
  runtime.check_secret_input(job.key_file, "key file")
  secret, manifest = keyfile.load_keys(job.key_file)
  box = blackbox.open_blackbox(job.target)
  return verify.verify(box, secret, max_k=job.max_k, decision_k=job.decision_k, alpha=job.alpha,
                       class_names=manifest["class_names"], target=str(job.target),
                       fingerprint=manifest["fingerprint"])


def write_verify_report(report, workdir: str | os.PathLike) -> dict[str, str]:
  """Writes the report as JSON, text and PNG into ``workdir``, owner-only (they name the keys'
  labels and the suspect's answers); returns their paths."""
  from jaxtag.taggants import verify
  workdir = pathlib.Path(workdir)
  paths = {ext: workdir / f"{VERIFY_REPORT_STEM}.{ext}" for ext in ("json", "txt", "png")}
  secrets.write_json(paths["json"], report.to_json())
  secrets.write_text(paths["txt"], report.to_text())
  verify.plot_report(report, paths["png"])
  return {ext: str(path) for ext, path in paths.items()}


def run_verify_job(job: VerifyJob, workdir: str | os.PathLike, *,
                   runtime: workdir_lib.Runtime = workdir_lib.Runtime()) -> dict[str, Any]:
  """Verifies ``job.target`` against ``job.key_file``; returns a summary (a finished
  verification of the same job is reused, without querying the black box again)."""
  workdir = pathlib.Path(workdir)
  workdir_lib.record(job, workdir)
  done = workdir_lib.finished(job, workdir, VERIFY_SUMMARY)
  if done is not None:
    return done
  secrets.private_dir(workdir)
  report = verify_target(job, runtime=runtime)
  paths = write_verify_report(report, workdir)
  summary = {"target": report.target, "decision": report.decision, "p_value": report.p_value,
             "floor": report.floor, "answer_floor": report.answer_floor,
             "method": report.method, "decision_k": report.decision_k,
             "hits": report.decision_hits, "num_keys": report.num_keys,
             "holm_min_p_value": report.holm_min_p_value, "report": paths,
             "text": report.to_text()}
  workdir_lib.write_json(workdir / VERIFY_SUMMARY, summary, secret=True)
  return {**summary, "reused": False}


# --- craft ---------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class CraftJob(protect.ProtectConfig):
  """Craft taggants into a dataset's training split and publish the protected dataset: every
  :class:`~jaxtag.taggants.protect.ProtectConfig` field, and where the stage runs.

  Attributes:
    seed: crafting draws from the ``craft`` stream of ``jax.random.key(seed)``.
    data: the dataset to protect (every split is published, in its own folder layout).
    surrogate: a train workdir, or a comma-separated list of them (an ensemble of one
      architecture: other seeds or epochs).
    key_file: the secret key file (from make_keys); refused inside the input or the output.
    output_dir: where the protected dataset is published; None: ``<workdir>/protected``.
    copy_extra_files: copy the input's other files (README, metadata, ``_background_noise_/``)
      verbatim into ``output_dir``.
    quality_max_clips: PESQ/STOI of at most this many poisons against their clean clips (an
      evenly spaced subset beyond; 0: every poison); needs the ``quality`` extra.
    num_devices: devices of the mesh; 0: every device.
    checkpoint_every: crafting steps between checkpoints.
    progress: show progress bars (cosmetic).
  """

  seed: int = 0
  data: sources.DataSource = dataclasses.field(default_factory=sources.DataSource)
  surrogate: str | None = None
  key_file: str | None = None
  output_dir: str | None = None
  copy_extra_files: bool = True
  quality_max_clips: int = 1000
  num_devices: int = 0
  checkpoint_every: int = 25
  progress: bool = True

  @property
  def protect_config(self) -> protect.ProtectConfig:
    """The protection settings alone."""
    return config_lib.narrow(self, protect.ProtectConfig)

  @property
  def surrogate_dirs(self) -> list[str]:
    """The surrogate workdirs (``surrogate`` split at commas)."""
    return [d.strip() for d in str(self.surrogate or "").split(",") if d.strip()]


# Where the library's dataclasses sit in a CraftJob config (their messages name the flags).
CRAFT_FLAG_OWNERS = {"ProtectConfig": "", "CraftConfig": "craft", "CraftAugment": "craft.augment"}


def craft_output_dir(job: CraftJob, workdir: str | os.PathLike) -> pathlib.Path:
  """Where the protected dataset is published."""
  return pathlib.Path(job.output_dir or pathlib.Path(workdir) / "protected").absolute()


def craft_owner(workdir: str | os.PathLike) -> str:
  """The owner recorded in the published dataset: the craft stage's workdir."""
  return str(pathlib.Path(workdir).absolute())


def check_craft_inputs(job: CraftJob, workdir: str | os.PathLike, *,
                       runtime: workdir_lib.Runtime = workdir_lib.Runtime()) -> None:
  """Checks the inputs exist; that the key file is private; that neither it nor the workdir's
  secrets (poisons, perturbations, checkpoints) lie inside the input dataset or the one to be
  published; and that publishing to the output folder can harm neither the input nor files
  jaxtag did not write."""
  workdir = pathlib.Path(workdir)
  for field in ("surrogate", "key_file"):
    if not getattr(job, field):
      raise ValueError(f"config.{field} is required (see launch/configs/craft.py).")
  for directory in job.surrogate_dirs:
    if not pathlib.Path(directory, "model.json").exists():
      raise FileNotFoundError(f"config.surrogate: {directory} has no model.json; train it with "
                              "launch.train first.")
    if job.retrain_rounds and not pathlib.Path(directory, workdir_lib.CONFIG_JSON).exists():
      raise FileNotFoundError(f"config.retrain_rounds={job.retrain_rounds} retrains with each "
                              f"surrogate's recipe, but {directory} has no config.json (the "
                              "launch.train record).")
  if not pathlib.Path(job.key_file).is_file():
    raise FileNotFoundError(f"config.key_file={job.key_file} does not exist; make it with "
                            "launch.make_keys.")
  runtime.check_secret_input(job.key_file, "key file")
  destination = craft_output_dir(job, workdir)
  source_root = publish.input_root(job.data)
  secrets.check_outside(job.key_file, (source_root, destination), what="key file")
  secrets.check_outside(workdir, (source_root, destination),
                        what="craft workdir (it holds the poisons' record)")
  publish.check_location(destination, source_root, name="output_dir")
  if not (workdir / CRAFT_SUMMARY).is_file():   # A finished stage is reused: it writes nothing.
    publish.check_destination(destination, owner=craft_owner(workdir), name="output_dir")


def retrain_plan(job: CraftJob, workdir: pathlib.Path, splits: dict,
                 runtime: workdir_lib.Runtime) -> protect.RetrainPlan:
  """The ``RetrainPlan`` for ``protect_dataset``: every surrogate trained again, with the recipe
  and seed its workdir recorded (``config.json``), on the protected training set, into
  ``<workdir>/retrain_<round>/surrogate_<i>`` (training resumes there, so a resumed craft does
  not train twice). Each retraining folder records its recipe up front."""
  recipes = [config_lib.from_config(train_job.TrainJob, workdir_lib.read_recorded(d))
             for d in job.surrogate_dirs]
  plan = protect.RetrainPlan(
      surrogates=tuple(protect.RetrainSurrogate(recipe.recipe, recipe.key())
                       for recipe in recipes),
      root=workdir, validation_data=splits.get("validation"), progress=job.progress,
      transfer_guard=runtime.transfer_guard)
  for r in range(job.retrain_rounds):
    for i, recipe in enumerate(recipes):
      workdir_lib.record(recipe, plan.workdir(r, i))
  return plan


def plot_craft_report(report, path: str | os.PathLike) -> None:
  """Loss per step and SNR per poison, written atomically and owner-only."""
  from jaxtag import plots

  fig = plots.figure(figsize=(10, 3.5))
  ax_loss, ax_snr = fig.subplots(1, 2)
  steps = [h["step"] for h in report.history]
  ax_loss.plot(steps, [h["loss"] for h in report.history], lw=1)
  ax_loss.set(xlabel="step", ylabel="1 - cos (mean over keys, augmented)",
              title="alignment loss while crafting")
  snr = report.snr_db[np.isfinite(report.snr_db)]
  ax_snr.hist(snr, bins=20)
  ax_snr.set(xlabel="SNR of the perturbation (dB)", ylabel="poisons",
             title=f"{snr.size} poisons, min {snr.min():.1f} dB" if snr.size else "no poisons")
  fig.tight_layout()
  secrets.write_bytes(path, plots.png_bytes(fig))


def _write_secret_npz(path: pathlib.Path, **arrays) -> None:
  buf = io.BytesIO()
  np.savez(buf, **arrays)
  secrets.write_bytes(path, buf.getvalue())


def run_craft_job(job: CraftJob, workdir: str | os.PathLike, *,
                  runtime: workdir_lib.Runtime = workdir_lib.Runtime()) -> dict[str, Any]:
  """Crafts, publishes the protected dataset (read back before it is renamed into place),
  writes the owner's records and returns the summary; a finished craft of the same job is
  reused, an interrupted one resumes from ``craft_ckpt/``."""
  from jaxtag import train
  from jaxtag.audio import quality

  workdir = pathlib.Path(workdir)
  check_craft_inputs(job, workdir, runtime=runtime)
  workdir_lib.record(job, workdir)
  destination = craft_output_dir(job, workdir)
  publish.remove_stale(destination)   # Before a finished run is reused: it never exports.
  done = workdir_lib.finished(job, workdir, CRAFT_SUMMARY, requires=(str(destination),))
  if done is not None:
    return done
  secrets.private_dir(workdir)   # checkpoints and reports name the poisons and perturbations
  splits = sources.load_splits(job.data, progress=False)
  clean = splits["train"]
  secret, manifest = keyfile.load_keys(job.key_file, expected_class_names=clean.class_names)
  trained = [train.restore_for_inference(d) for d in job.surrogate_dirs]
  mesh = sharding.make_mesh(job.num_devices or None)
  protected, report = protect.protect_dataset(
      trained, secret, clean, config=job.protect_config,
      key=rng.stream(jax.random.key(int(job.seed)), "craft"), mesh=mesh,
      checkpoint_dir=workdir / "craft_ckpt", checkpoint_every=job.checkpoint_every,
      progress=job.progress,
      retrain=retrain_plan(job, workdir, splits, runtime) if job.retrain_rounds else None)
  # Read back before it is published: poisons exact to the 16-bit step, nothing else changed.
  published = publish.export_splits(
      job.data, {**splits, "train": protected}, destination, clean=splits,
      owner=craft_owner(workdir), stage="craft", copy_extra_files=job.copy_extra_files,
      max_error_lsb=0.0, max_changed={"train": int(report.poison_indices.size)},
      name="output_dir")
  poisons = report.poison_indices
  measured = quality.perturbation_quality(
      clean.waveforms, protected.waveforms[poisons], poisons, sample_rate=clean.sample_rate,
      max_perceptual_clips=job.quality_max_clips or None)
  summary = {
      "protected_dataset": str(destination), "surrogate": str(job.surrogate),
      "key_file": str(job.key_file), "key_fingerprint": manifest.get("fingerprint"),
      "num_train": len(clean), "budget": job.budget,
      "num_devices": mesh.size, **report.summary(), "quality": measured.summary(),
      "export_check": published.check,
      "extra_files": published.extra_files(limit=50),
      "splits": sources.describe_splits(splits),
  }
  paths = clean.paths or tuple(str(i) for i in range(len(clean)))
  full = {**summary, **report.to_json(), "quality": measured.to_json(),
          "poison_files": [paths[i] for i in report.poison_indices],
          "key_labels": [clean.class_names[i] for i in np.asarray(secret.labels)]}
  workdir_lib.write_json(workdir / CRAFT_REPORT, full, secret=True)
  _write_secret_npz(workdir / PERTURBATIONS, indices=poisons, keys=report.poison_keys,
                    files=np.array(full["poison_files"]),
                    delta=protected.waveforms[poisons] - clean.waveforms[poisons])
  plot_craft_report(report, workdir / "craft_report.png")
  workdir_lib.write_json(workdir / CRAFT_SUMMARY, summary, secret=True)
  return {**summary, "reused": False}


# --- calibrate -----------------------------------------------------------------------------------

CALIBRATION_DRAWS = "calibration_draws.jsonl"
CALIBRATION_JSON = "calibration.json"


@dataclasses.dataclass(frozen=True)
class CalibrateJob:
  """Measure the verification's false-positive rate on benign models (never saw the taggants).

  Attributes:
    seed: the calibration's fresh key draws come from the ``calibration`` stream of it.
    num_models: benign models trained on clean data, with seeds ``first_seed + i``.
    first_seed: the first benign model's seed (away from the surrogate's and the suspect's).
    batch_size: clips per forward pass of each benign model.
    progress: show progress bars (cosmetic).
    calibration: the draws and the test being calibrated.
    key_spec: how the fresh keys are drawn (at the benign models' rate and clip length).
    train: the benign models' training run (its ``seed`` is replaced per model).
  """

  seed: int = 2026
  num_models: int = 3
  first_seed: int = 100
  batch_size: int = 64
  progress: bool = True
  calibration: calibrate.CalibrationConfig = calibrate.CalibrationConfig()
  key_spec: keys_lib.KeySpec = keys_lib.KeySpec()
  train: train_job.TrainJob = dataclasses.field(default_factory=train_job.TrainJob)

  def __post_init__(self):
    if int(self.num_models) < 1:
      raise ValueError(f"calibrate: num_models must be >= 1; got {self.num_models}.")


CALIBRATE_FLAG_OWNERS = {"TrainConfig": "train", "OptimConfig": "train.optim",
                         "AugmentConfig": "train.augment", "DataSource": "train.data"}


def _train_benign_model(job: CalibrateJob, index: int, workdir: pathlib.Path,
                        runtime: workdir_lib.Runtime) -> dict[str, Any]:
  """Trains benign model ``index`` (seed ``first_seed + index``) unless it already finished with
  this recipe (a model of another recipe in its folder is refused)."""
  model_job = dataclasses.replace(job.train, seed=int(job.first_seed) + index)
  summary = train_job.run_train_job(model_job, workdir / f"model_{index}", runtime=runtime)
  return {**summary, "skipped": summary["reused"]}


def run_calibrate_job(job: CalibrateJob, workdir: str | os.PathLike, *,
                      runtime: workdir_lib.Runtime = workdir_lib.Runtime()) -> dict[str, Any]:
  """Trains (or reuses) the benign models, runs (or resumes, from ``calibration_draws.jsonl``)
  the fresh-key calibration, writes ``calibration.json`` and returns it."""
  from jaxtag.taggants import blackbox

  workdir = pathlib.Path(workdir)
  workdir_lib.record(job, workdir)   # The draws file resumes only the same calibration.
  trained = [_train_benign_model(job, i, workdir, runtime) for i in range(int(job.num_models))]
  boxes = [blackbox.LocalBlackBox(workdir / f"model_{i}", batch_size=int(job.batch_size))
           for i in range(len(trained))]
  # The keys are made at the benign models' rate and clip length, as make_keys makes them.
  spec = dataclasses.replace(job.key_spec, sample_rate=boxes[0].sample_rate,
                             clip_samples=boxes[0].clip_samples)
  summary = calibrate.calibrate(
      boxes, rng.stream(jax.random.key(int(job.seed)), "calibration"), spec, job.calibration,
      workdir / CALIBRATION_DRAWS, model_names=[f"model_{i}" for i in range(len(boxes))],
      progress=bool(job.progress))
  summary["seed"] = int(job.seed)
  summary["trained"] = [{"model": f"model_{i}", "seed": int(job.first_seed) + i,
                         "trained_now": not t["skipped"], "test_accuracy": t.get("test/accuracy")}
                        for i, t in enumerate(trained)]
  workdir_lib.write_json(workdir / CALIBRATION_JSON, summary)
  return summary
