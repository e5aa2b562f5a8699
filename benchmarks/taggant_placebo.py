"""A placebo for the paired taggant effect: the same clips perturbed with the same energy and
spectrum, but without the alignment.

Reads a craft workdir's record (``perturbations.npz``: poison indices and their exact 16-bit
perturbations) and writes a copy of the clean dataset, every split in its folder layout, in which
each poison carries its own crafted perturbation circularly shifted in time by a random offset (at
least ``--min_shift`` seconds from zero). The shift keeps the perturbation's energy, so every
clip's SNR, and its spectrum; it takes away the alignment with the surrogate's gradients. Train a
model on the copy with the suspect's seed and recipe, then score it with ``taggant_effect.py``
against the same clean control. The result is how far merely perturbing those clips moves the
keys, through the changed training trajectory; the suspect's effect minus that is the taggant.

  .venv/bin/python benchmarks/taggant_placebo.py --craft workdirs/demo/craft --out /tmp/placebo
  .venv/bin/python -m launch.train --config=launch/configs/train.py:suspect,cnn --config.seed=1 \
      --config.data.kind=speech_commands --config.data.root=/tmp/placebo --workdir=/tmp/placebo_model
  .venv/bin/python benchmarks/taggant_effect.py --key_file workdirs/demo/keys/keys.npz \
      --control workdirs/demo/benign workdirs/demo/suspect /tmp/placebo_model
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)

import numpy as np  # noqa: E402


def shifted(delta: np.ndarray, rng: np.random.Generator, min_shift: int) -> np.ndarray:
  """Each row of ``delta`` circularly shifted by its own offset in ``[min_shift, T - min_shift]``."""
  length = delta.shape[-1]
  if not 0 <= min_shift <= length // 2:
    raise ValueError(f"min_shift={min_shift} samples must be in [0, {length // 2}] for clips of "
                     f"{length} samples.")
  offsets = rng.integers(min_shift, length - min_shift + 1, size=delta.shape[0])
  return np.stack([np.roll(row, int(s)) for row, s in zip(delta, offsets)])


def placebo_splits(splits: dict, record, *, seed: int, min_shift: int) -> dict:
  """The clean ``splits`` with the train split's poisons perturbed by the shifted perturbations
  of ``record`` (``indices``, ``delta``), clipped to the 16-bit range."""
  train = splits["train"]
  indices = np.asarray(record["indices"])
  delta = shifted(np.asarray(record["delta"], np.float32), np.random.default_rng(seed), min_shift)
  waves = train.waveforms.copy()
  waves[indices] = np.clip(waves[indices] + delta, -1.0, 32767 / 32768)
  return {**splits, "train": train.with_waveforms(waves)}


def main(argv=None) -> pathlib.Path:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--craft", required=True, help="a launch.craft workdir (or the demo's craft/)")
  parser.add_argument("--out", required=True, help="where to write the placebo dataset")
  parser.add_argument("--seed", type=int, default=0, help="seed of the random shifts")
  parser.add_argument("--min_shift", type=float, default=0.1, help="smallest shift, seconds")
  args = parser.parse_args(argv)

  from jaxtag import config as config_lib
  from jaxtag.data import publish, sources
  from jaxtag.taggants import jobs

  craft_dir = pathlib.Path(args.craft)
  config = json.loads((craft_dir / "config.json").read_text())
  source = config_lib.from_config(sources.DataSource, config["data"])
  splits = sources.load_splits(source, progress=False)
  with np.load(craft_dir / jobs.PERTURBATIONS) as record:
    record = {k: record[k] for k in ("indices", "delta")}
  min_shift = int(round(args.min_shift * splits["train"].sample_rate))
  placebo = placebo_splits(splits, record, seed=args.seed, min_shift=min_shift)
  out = pathlib.Path(args.out).absolute()
  publish.export_splits(source, placebo, out, clean=splits, owner=str(out), stage="placebo",
                        max_changed={"train": int(record["indices"].size)}, name="--out")
  clean = splits["train"].waveforms[record["indices"]].astype(np.float64)
  moved = placebo["train"].waveforms[record["indices"]] - clean
  with np.errstate(divide="ignore"):   # a perturbation under half an LSB everywhere is all zero
    snr = 10 * np.log10(np.sum(clean**2, -1) / np.sum(moved**2, -1))
  print(f"placebo dataset: {out} ({record['indices'].size} clips perturbed; SNR min "
        f"{snr.min():.1f} dB, median {np.median(snr):.1f} dB)")
  return out


if __name__ == "__main__":
  main()
