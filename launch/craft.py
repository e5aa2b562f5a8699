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
The library entry point: `jaxtag.taggants.jobs.run_craft_job`.
"""

from launch import app


def main(job, workdir):
  from jaxtag.taggants import jobs
  app.print_summary(jobs.run_craft_job(job, workdir, runtime=app.runtime()))


if __name__ == "__main__":
  from jaxtag.taggants.jobs import CRAFT_FLAG_OWNERS, CraftJob
  app.run(main, job=CraftJob, owners=CRAFT_FLAG_OWNERS)
