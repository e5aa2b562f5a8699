r"""Stage: protect a dataset's train split with PosCUDA and write it in its input layout.

  .venv/bin/python -m launch.poscuda_protect --config=launch/configs/poscuda_protect.py \
      --workdir=workdirs/poscuda_secret --config.output_root=workdirs/corpus_poscuda

The filters come from the run's `poscuda` stream. The published folder holds the protected train
split and clean copies of the other splits, in the input's layout (SpeechCommands for the corpus,
ESC-50, or a TFDS builder folder `<name>_protected` for a TFDS source), and the input's other
files (README, metadata, `_background_noise_/`) byte for byte unless
`--config.copy_extra_files=False`. The secret file `<workdir>/poscuda.npz` (0o600, SHA-256
manifest) is refused inside the source or output folder. The dataset is written into a temporary
folder, read back there (every split, every copied file) and renamed into place once complete;
`<workdir>/protect_summary.json` comes last. A re-run with the same config reuses a finished run,
and an interrupted one reuses its secret file (when made by the same recipe) and writes the
dataset again. `output_root` may not be the source, lie inside it or contain it; a non-empty one
is replaced only when it holds this workdir's earlier output, or with `--config.overwrite`,
another jaxtag publication with no file added (jaxtag.data.publish).
The library entry point: `jaxtag.poscuda.jobs.run_protect_job`.
"""

from launch import app


def main(job, workdir):
  from jaxtag.poscuda import jobs
  summary = jobs.run_protect_job(job, workdir, runtime=app.runtime())
  print(f"protected dataset: {summary['output_root']} ({summary['clips']})")
  print(f"secret file (keep it private): {summary['secret_file']}")
  print(f"SNR of the protected train clips: min {summary['snr_db']['min']:.1f} dB, median "
        f"{summary['snr_db']['median']:.1f} dB")


if __name__ == "__main__":
  from jaxtag.poscuda.jobs import FLAG_OWNERS, ProtectJob
  app.run(main, job=ProtectJob, owners=FLAG_OWNERS)
