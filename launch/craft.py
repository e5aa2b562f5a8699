r"""Stage: craft taggants into a dataset with a trained surrogate and write the protected dataset.

  .venv/bin/python -m launch.craft --config=launch/configs/craft.py --workdir=workdirs/craft \
      --config.surrogate=workdirs/surrogate --config.key_file=workdirs/keys/keys.npz

`--config.surrogate=workdirs/s0,workdirs/s1,...` crafts against an ensemble of surrogates (one
architecture; other seeds or epochs): the alignment loss is the mean over members.
`--config.retrain_rounds=2 --config.craft.restarts=1` retrains every surrogate twice during the
craft (Witches' Brew) on the data crafted so far, with the recipe and seed in its workdir's
config.json (as `launch.train` wrote it), into `<workdir>/retrain_<round>/surrogate_<i>/`.

Writes, atomically (everything in the workdir owner-only: 0700 folder, 0600 files, since it names
the poisons, the keys' labels and the perturbations; the workdir and the key file are refused
inside the input dataset or the output, and a key file others can read is refused unless
`--allow_readable_secrets`):
  <output_dir>/             the protected dataset: every split, in the input's folder layout,
                            16-bit WAV (only the poisons of the train split differ from the input)
  <workdir>/craft_report.json   poisons (index, file, key), SNR, losses, alignment, per-step loss,
                                and the summary's `quality` block with its per-poison figures
  <workdir>/craft_report.png    loss per step and the SNR of every poison
  <workdir>/perturbations.npz   the owner's record: poison indices, files, keys and the exact
                                (16-bit) perturbation of each
  <workdir>/craft_ckpt/         crafting checkpoints (a re-run resumes)
  <workdir>/craft_summary.json  the summary, written last: a re-run with the same config reuses
                                the finished stage instead of crafting again.
                                Its `quality` block (jaxtag.audio.quality): the per-poison SNR
                                (min / median / mean / max), the dataset-level SNR (the energy of
                                every clean training clip over the total perturbation energy; not
                                a per-poison figure), and PESQ wideband and STOI of the exported
                                poisons against their clean clips (None, with the reason, without
                                the `quality` extra: pip install 'jaxtag[quality]').
                                With `--config.craft.constraint=stft_mask`, `mask_margin_db_max`:
                                the worst time-frequency bin over every poison, 20 log10(|STFT(d)|
                                / B) of the exported perturbation against the mask's bound (<= 0)
The dataset is written into a temporary folder beside `<output_dir>`, read back there (every
split: its files and clip count, each poison carrying exactly the crafted perturbation, every
other clip equal to the input; every copied input file byte-equal) and only then renamed into
place, so a craft killed while exporting never leaves a half-written dataset that a re-run would
trust, and a re-run removes the temporary folder a killed one left. The input's other files
(README, metadata, `_background_noise_/`) are copied verbatim unless
`--config.copy_extra_files=False`; the summary lists what was copied, regenerated or skipped.
`output_dir` may not be the input dataset, lie inside it or contain it, and a non-empty one is
replaced only when it holds this workdir's earlier output (jaxtag.data.publish).
"""

from __future__ import annotations

import pathlib
from typing import Any

from launch import app

REPORT = "craft_report.json"
SUMMARY = "craft_summary.json"   # written last: the stage finished (export read back and checked)
PERTURBATIONS = "perturbations.npz"


def _write_secret_npz(path: pathlib.Path, **arrays) -> None:
  import io

  import numpy as np

  from jaxtag import secrets
  buf = io.BytesIO()
  np.savez(buf, **arrays)
  secrets.write_bytes(path, buf.getvalue())


def output_dir(config: Any, workdir: pathlib.Path) -> pathlib.Path:
  return pathlib.Path(config.output_dir or workdir / "protected").absolute()


def surrogate_dirs(config: Any) -> list[str]:
  """The surrogate workdirs: ``config.surrogate`` is one workdir or a comma-separated list of
  workdirs (an ensemble of one architecture: other seeds or epochs)."""
  return [d.strip() for d in str(config.surrogate or "").split(",") if d.strip()]


def preflight(config: Any, workdir: pathlib.Path) -> None:
  """Checks the inputs exist; that the key file is private; that neither it nor this workdir's
  secrets (poisons, perturbations, checkpoints) lie inside the input dataset or the one to be
  published; and that publishing to the output folder can harm neither the input nor files
  jaxtag did not write."""
  from jaxtag import secrets
  from jaxtag.data import publish, sources

  for field in ("surrogate", "key_file"):
    if not config[field]:
      raise ValueError(f"config.{field} is required (see launch/configs/craft.py).")
  for directory in surrogate_dirs(config):
    if not pathlib.Path(directory, "model.json").exists():
      raise FileNotFoundError(f"config.surrogate: {directory} has no model.json; train it with "
                              "launch.train first.")
    if config.retrain_rounds and not pathlib.Path(directory, "config.json").exists():
      raise FileNotFoundError(f"config.retrain_rounds={config.retrain_rounds} retrains with each "
                              f"surrogate's recipe, but {directory} has no config.json (the "
                              "launch.train record).")
  if not pathlib.Path(config.key_file).is_file():
    raise FileNotFoundError(f"config.key_file={config.key_file} does not exist; make it with "
                            "launch.make_keys.")
  app.check_secret_input(config.key_file, "key file")
  destination = output_dir(config, workdir)
  source_root = publish.input_root(sources.DataSource(**config.data.to_dict()))
  secrets.check_outside(config.key_file, (source_root, destination), what="key file")
  secrets.check_outside(workdir, (source_root, destination),
                        what="craft workdir (it holds the poisons' record)")
  publish.check_location(destination, source_root, name="output_dir")
  if not (workdir / SUMMARY).is_file():   # A finished stage is reused: it writes nothing.
    publish.check_destination(destination, owner=owner(workdir), name="output_dir")


def owner(workdir: pathlib.Path) -> str:
  """The owner recorded in the published dataset: this stage's workdir."""
  return str(pathlib.Path(workdir).absolute())


def protect_config(config: Any):
  """The library's typed ProtectConfig from the launcher's ConfigDict."""
  from jaxtag.taggants import craft, protect

  fields = config.craft.to_dict()
  augment = fields.pop("augment")
  if augment.get("noise_snr_db") is not None:
    augment["noise_snr_db"] = tuple(augment["noise_snr_db"])
  fields["milestones"] = tuple(fields["milestones"])
  fields["exclude_params"] = tuple(fields["exclude_params"])
  return protect.ProtectConfig(
      budget=config.budget, selection=config.selection,
      craft=craft.CraftConfig(augment=craft.CraftAugment(**augment), **fields),
      mixup_pool_size=config.mixup_pool_size, diagnostics=config.diagnostics,
      retrain_rounds=config.retrain_rounds, min_budget_lsb=config.min_budget_lsb)


def retrainer(config: Any, workdir: pathlib.Path, splits: dict):
  """The library's ``RetrainPlan`` for ``protect_dataset``: every surrogate trained again, with
  its own recorded recipe and seed (its workdir's config.json), on the protected training set,
  into ``<workdir>/retrain_<round>/surrogate_<i>`` (training resumes there, so a resumed craft
  does not train twice)."""
  import json

  import ml_collections

  from jaxtag.taggants import protect
  from launch import train as train_launch

  recipes = [ml_collections.ConfigDict(json.loads(pathlib.Path(d, "config.json").read_text()))
             for d in surrogate_dirs(config)]
  plan = protect.RetrainPlan(
      surrogates=tuple(protect.RetrainSurrogate(train_launch.train_config(recipe),
                                                app.root_key(recipe)) for recipe in recipes),
      root=workdir, validation_data=splits.get("validation"), progress=config.progress,
      transfer_guard=app.transfer_guard_level())
  for r in range(config.retrain_rounds):   # each retraining's record of its recipe
    for i, recipe in enumerate(recipes):
      app.dump_config(recipe, plan.workdir(r, i))
  return plan


def plot_report(report, path: pathlib.Path) -> None:
  """Loss per step and SNR per poison, written atomically and owner-only."""
  import numpy as np

  from jaxtag import plots, secrets

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


def run_stage(config: Any, workdir: pathlib.Path) -> dict[str, Any]:
  """Crafts, writes the protected dataset, checks it, and returns the summary."""
  import numpy as np

  from jaxtag import keys as keys_lib
  from jaxtag import rng, secrets, sharding, train
  from jaxtag.audio import quality
  from jaxtag.data import publish, sources
  from jaxtag.taggants import protect

  preflight(config, workdir)
  destination = output_dir(config, workdir)
  publish.remove_stale(destination)   # Before a finished run is reused: it never exports.
  done = app.finished(config, workdir, SUMMARY, requires=(str(destination),))
  if done is not None:
    return done
  secrets.private_dir(workdir)   # checkpoints and reports name the poisons and perturbations
  source = sources.DataSource(**config.data.to_dict())
  splits = sources.load_splits(source, progress=False)
  clean = splits["train"]
  secret, manifest = keys_lib.load_keys(config.key_file, expected_class_names=clean.class_names)
  trained = [train.restore_for_inference(d) for d in surrogate_dirs(config)]
  mesh = sharding.make_mesh(config.num_devices or None)
  protected, report = protect.protect_dataset(
      trained, secret, clean, config=protect_config(config),
      key=rng.stream(app.root_key(config), "craft"), mesh=mesh,
      checkpoint_dir=workdir / "craft_ckpt", checkpoint_every=config.checkpoint_every,
      progress=config.progress,
      retrain=retrainer(config, workdir, splits) if config.retrain_rounds else None)
  # Read back before it is published: poisons exact to the 16-bit step, nothing else changed.
  published = publish.export_splits(
      source, {**splits, "train": protected}, destination, clean=splits, owner=owner(workdir),
      stage="craft", copy_extra_files=config.copy_extra_files, max_error_lsb=0.0,
      max_changed={"train": int(report.poison_indices.size)}, name="output_dir")
  poisons = report.poison_indices
  measured = quality.perturbation_quality(
      clean.waveforms, protected.waveforms[poisons], poisons, sample_rate=clean.sample_rate,
      max_perceptual_clips=config.quality_max_clips or None)
  summary = {
      "protected_dataset": str(destination), "surrogate": str(config.surrogate),
      "key_file": str(config.key_file), "key_fingerprint": manifest.get("fingerprint"),
      "num_train": len(clean), "budget": config.budget,
      "num_devices": mesh.size, **report.summary(), "quality": measured.summary(),
      "export_check": published.check,
      "extra_files": published.extra_files(limit=50),
      "splits": sources.describe_splits(splits),
  }
  paths = clean.paths or tuple(str(i) for i in range(len(clean)))
  full = {**summary, **report.to_json(), "quality": measured.to_json(),
          "poison_files": [paths[i] for i in report.poison_indices],
          "key_labels": [clean.class_names[i] for i in np.asarray(secret.labels)]}
  app.write_json(workdir / REPORT, full, secret=True)
  _write_secret_npz(workdir / PERTURBATIONS, indices=poisons, keys=report.poison_keys,
                    files=np.array(full["poison_files"]),
                    delta=protected.waveforms[poisons] - clean.waveforms[poisons])
  plot_report(report, workdir / "craft_report.png")
  app.write_json(workdir / SUMMARY, summary, secret=True)
  return {**summary, "reused": False}


def main(config, workdir):
  summary = run_stage(config, workdir)
  for key, value in summary.items():
    print(f"{key}: {value}")


if __name__ == "__main__":
  app.run(main, preflight=preflight,
          owners={"ProtectConfig": "", "CraftConfig": "craft", "CraftAugment": "craft.augment"})
