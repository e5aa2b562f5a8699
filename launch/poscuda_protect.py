r"""Stage: protect a dataset's train split with PosCUDA and write it in its input layout.

  .venv/bin/python -m launch.poscuda_protect --config=launch/configs/poscuda_protect.py \
      --workdir=workdirs/poscuda_secret --config.output_root=workdirs/corpus_poscuda

The filters come from the run's `poscuda` stream. The published folder holds the protected train
split and clean copies of the other splits, and the input's other files (README, metadata,
`_background_noise_/`) byte for byte unless `--config.copy_extra_files=False`. The secret file
`<workdir>/poscuda.npz` (0o600, SHA-256 manifest) is refused inside the source or output folder.
The dataset is written into a temporary folder, read back there (every split, every copied file)
and renamed into place once complete; `<workdir>/protect_summary.json` comes last. A re-run with
the same config reuses a finished run, and an interrupted one reuses its secret file (when made by
the same recipe) and writes the dataset again. `output_root` may not be the source, lie inside it
or contain it; a non-empty one is replaced only when it holds this workdir's earlier output, or
with `--config.overwrite`, another jaxtag publication with no file added (jaxtag.data.publish).
"""

from __future__ import annotations

import pathlib
from typing import Any

from launch import app

SECRET_FILE = "poscuda.npz"
SUMMARY = "protect_summary.json"   # written last: the protected dataset is complete


def _output_root(config: Any) -> pathlib.Path:
  if not config.output_root:
    raise ValueError("poscuda_protect: set --config.output_root to the folder that receives the "
                     "protected dataset.")
  return pathlib.Path(config.output_root).expanduser()


def check_locations(config: Any, workdir: pathlib.Path) -> None:
  """Refuses a secret file inside the source or the protected dataset, a tfds source, and an
  output_root that publishing would damage (jaxtag.data.publish.check_destination)."""
  from jaxtag import secrets
  from jaxtag.data import publish, sources

  if config.data.kind == "tfds":
    raise ValueError("poscuda_protect: a tfds source has no folder layout to write back; export "
                     "it with jaxtag.data.speechcommands.export_speech_commands first.")
  output = _output_root(config)
  secrets.check_outside(workdir / SECRET_FILE, [output], what="PosCUDA secret file")
  source = sources.DataSource(**config.data.to_dict())
  publish.check_location(output, publish.input_root(source), name="output_root")
  if not (workdir / SUMMARY).is_file():   # A finished stage is reused: it writes nothing.
    publish.check_destination(output.absolute(), owner=_owner(workdir), name="output_root",
                              replace_other_owner=config.overwrite, replace_option="overwrite")
  source_root = sources.dataset_root(source, progress=False)
  if source_root is not None:
    secrets.check_outside(workdir / SECRET_FILE, [source_root], what="PosCUDA secret file")


def _owner(workdir: pathlib.Path) -> str:
  return str(pathlib.Path(workdir).absolute())


def spec_from_config(spec_config: Any, dataset) -> Any:
  """The typed PoscudaSpec for ``dataset``: its sample rate and clip length, and with
  ``positions="active"`` the window of patch starts where its clips carry sound."""
  import dataclasses

  from jaxtag import poscuda
  fields = spec_config.to_dict()
  positions = fields.pop("positions", "anywhere")
  level = fields.pop("active_level", 0.5)
  if positions not in ("active", "anywhere"):
    raise ValueError(f"spec.positions must be 'active' or 'anywhere', got {positions!r}.")
  spec = poscuda.PoscudaSpec(**fields, sample_rate=dataset.sample_rate,
                             clip_samples=dataset.num_samples)
  if positions == "active" and spec.use_positions:
    window = poscuda.active_window(dataset.waveforms, spec.patch, level=level)
    spec = dataclasses.replace(spec, position_window=window)
  return spec


def run_stage(config: Any, workdir: pathlib.Path) -> dict[str, Any]:
  """Draws the filters, protects the train split, writes dataset and secret; returns a summary."""
  import numpy as np

  from jaxtag import poscuda, rng, secrets
  from jaxtag.data import publish, sources

  check_locations(config, workdir)
  output = _output_root(config).absolute()
  publish.remove_stale(output)   # Before a finished run is reused: it never exports.
  done = app.finished(config, workdir, SUMMARY, requires=(str(output), SECRET_FILE))
  if done is not None:
    return done
  source = sources.DataSource(**config.data.to_dict())
  splits = sources.load_splits(source, progress=config.progress)
  train = splits["train"]
  spec = spec_from_config(config.spec, train)
  key = rng.stream(app.root_key(config), "poscuda")
  secret_path = workdir / SECRET_FILE
  secrets.private_dir(workdir)
  if secret_path.exists():   # a re-run reuses it: it must still be private
    app.check_secret_input(secret_path, "PosCUDA secret file")
  provenance = poscuda.filter_provenance(
      key, seed=int(config.seed), stream="poscuda",
      recipe="jaxtag.poscuda.make_filters(jaxtag.rng.stream(jax.random.key(seed), 'poscuda'), "
             "spec, C)")
  secret, _ = poscuda.make_or_reuse_filters(
      secret_path, key, spec, class_names=train.class_names, provenance=provenance,
      overwrite=config.overwrite, dataset_root=output)
  splits["train"] = poscuda.protect_dataset(train, secret, batch_size=config.batch_size)
  published = publish.export_splits(
      source, splits, output, owner=_owner(workdir), stage="poscuda_protect",
      copy_extra_files=config.copy_extra_files, replace_other_owner=config.overwrite,
      name="output_root", replace_option="overwrite")
  snr = poscuda.snr_in_batches(train.waveforms, splits["train"].waveforms,
                               batch_size=config.batch_size)
  summary = {
      "output_root": str(output), "secret_file": str(secret_path),
      "clips": {split: len(ds) for split, ds in splits.items()}, "spec": spec.to_dict(),
      "taps": spec.taps, "patch": spec.patch,
      "snr_db": {"min": float(snr.min()), "median": float(np.median(snr))},
      "export_check": published.check, "extra_files": published.extra_files(limit=50),
  }
  app.write_json(workdir / SUMMARY, summary)
  return {**summary, "reused": False}


def main(config, workdir):
  summary = run_stage(config, workdir)
  print(f"protected dataset: {summary['output_root']} ({summary['clips']})")
  print(f"secret file (keep it private): {summary['secret_file']}")
  print(f"SNR of the protected train clips: min {summary['snr_db']['min']:.1f} dB, median "
        f"{summary['snr_db']['median']:.1f} dB")


if __name__ == "__main__":
  app.run(main, preflight=check_locations)
