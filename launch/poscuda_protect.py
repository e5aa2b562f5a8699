r"""Stage: protect a dataset's train split with PosCUDA and write it in its input layout.

  .venv/bin/python -m launch.poscuda_protect --config=launch/configs/poscuda_protect.py \
      --workdir=workdirs/poscuda_secret --config.output_root=workdirs/corpus_poscuda

The filters come from the run's `poscuda` stream. The published folder holds the protected train
split and clean copies of the other splits (and of `_background_noise_/`); the secret file
`<workdir>/poscuda.npz` (0o600, SHA-256 manifest) is refused inside the source or output folder.
The dataset is written into a temporary folder and renamed into place once complete;
`<workdir>/protect_summary.json` comes last. A re-run with the same config reuses a finished run,
and an interrupted one reuses its secret file (when made by the same recipe) and writes the
dataset again; `--config.overwrite` is needed only for an `output_root` this workdir did not write.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

from launch import app

SECRET_FILE = "poscuda.npz"
SUMMARY = "protect_summary.json"   # written last: the protected dataset is complete
# Written before the export starts: this workdir owns output_root and may replace it on a re-run.
EXPORT_RECORD = "export_target.json"


def _output_root(config: Any) -> pathlib.Path:
  if not config.output_root:
    raise ValueError("poscuda_protect: set --config.output_root to the folder that receives the "
                     "protected dataset.")
  return pathlib.Path(config.output_root).expanduser()


def check_locations(config: Any, workdir: pathlib.Path) -> None:
  """Refuses a secret file inside the source or the protected dataset, and a tfds source."""
  from jaxtag import keys
  from jaxtag.data import sources

  if config.data.kind == "tfds":
    raise ValueError("poscuda_protect: a tfds source has no folder layout to write back; export "
                     "it with jaxtag.data.speechcommands.export_speech_commands first.")
  output = _output_root(config)
  keys.check_outside(workdir / SECRET_FILE, output)
  source_root = sources.dataset_root(sources.DataSource(**config.data.to_dict()), progress=False)
  if source_root is not None:
    keys.check_outside(workdir / SECRET_FILE, source_root)
    if output.resolve() == pathlib.Path(source_root).resolve():
      raise ValueError(f"poscuda_protect: output_root {str(output)!r} is the source dataset; "
                       "write the protected copy elsewhere.")


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


def _claim_output(config: Any, workdir: pathlib.Path) -> pathlib.Path:
  """The output folder, refused when it holds data that this workdir did not write (unless
  ``config.overwrite``); records the claim so that a re-run may replace its own partial work."""
  output = _output_root(config).absolute()
  record = workdir / EXPORT_RECORD
  ours = record.is_file() and json.loads(record.read_text()).get("output_root") == str(output)
  if output.is_dir() and any(output.iterdir()) and not (ours or config.overwrite):
    raise ValueError(f"poscuda_protect: output_root {str(output)!r} is not empty and was not "
                     "written by this workdir; choose an empty folder or pass "
                     "--config.overwrite=True to replace it.")
  app.write_json(record, {"output_root": str(output)})
  return output


def run_stage(config: Any, workdir: pathlib.Path) -> dict[str, Any]:
  """Draws the filters, protects the train split, writes dataset and secret; returns a summary."""
  import numpy as np

  from jaxtag import poscuda, rng, secrets
  from jaxtag.data import publish, sources

  check_locations(config, workdir)
  output = _output_root(config)
  done = app.finished(config, workdir, SUMMARY, requires=(str(output.absolute()), SECRET_FILE))
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
  output = _claim_output(config, workdir)
  secret, _ = poscuda.make_or_reuse_filters(
      secret_path, key, spec, class_names=train.class_names, provenance=provenance,
      overwrite=config.overwrite, dataset_root=output)
  splits["train"] = poscuda.protect_dataset(train, secret, batch_size=config.batch_size)
  publish.export_splits(source, splits, output)
  snr = poscuda.snr_in_batches(train.waveforms, splits["train"].waveforms,
                               batch_size=config.batch_size)
  summary = {
      "output_root": str(output), "secret_file": str(secret_path),
      "clips": {split: len(ds) for split, ds in splits.items()}, "spec": spec.to_dict(),
      "taps": spec.taps, "patch": spec.patch,
      "snr_db": {"min": float(snr.min()), "median": float(np.median(snr))},
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
