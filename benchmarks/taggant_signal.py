"""Where does the taggant signal die? Per saved epoch of a suspect's training, at its own weights:
the keys' gradients, the poisons' summed gradient per key (its norm, its cosine with and
projection on the key's gradient), the poisons' share of the whole training set's gradient,
the keys' label log-probabilities and ranks, whether the poisons are fit, and the same clips
before crafting as a control (see ``jaxtag.taggants.diagnostics.signal_at`` for the definitions
and signs).

Train the suspect with every epoch kept (``--config.max_to_keep=100``), then:

  .venv/bin/python benchmarks/taggant_signal.py --craft workdirs/craft \
      --suspect workdirs/suspect --init workdirs/backbone --out benchmarks/results/signal

writes ``<out>.json`` (per epoch: per-key records and their means) and ``<out>.png`` (the means
per epoch). ``--init`` adds the point before training (epoch 0: the ``init_from`` weights).
The training set is the one the suspect's ``config.json`` names (``--data_root``: a Speech
Commands folder instead, e.g. ``<craft>/protected``); the key file the craft's summary names
(``--key_file`` to override).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)


def _parse(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--craft", required=True, help="craft workdir (perturbations.npz)")
  parser.add_argument("--suspect", required=True, help="suspect training workdir")
  parser.add_argument("--init", help="the suspect's init_from workdir: epoch 0")
  parser.add_argument("--key_file", help="the secret key file (default: the craft's)")
  parser.add_argument("--data_root", help="Speech Commands folder of the training set "
                      "(default: the suspect's config.json data block)")
  parser.add_argument("--reference_clips", type=int, default=0,
                      help="0: the whole-set gradient sums every training clip; N: N random "
                      "clean clips, scaled to the clean set, plus the poisons")
  parser.add_argument("--steps", help="comma-separated checkpoint steps (default: all kept)")
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--seed", type=int, default=0, help="of the reference subset")
  parser.add_argument("--out", required=True, help="output prefix: <out>.json, <out>.png")
  return parser.parse_args(argv)


def _train_split(args, suspect_config):
  from jaxtag import train
  from jaxtag.data import sources
  if args.data_root:   # At the rate and clip length the suspect was trained on.
    info = train.read_model_info(args.suspect)
    source = sources.DataSource(kind="speech_commands", root=args.data_root,
                                sample_rate=info.sample_rate, clip_samples=info.clip_samples)
  elif suspect_config and "data" in suspect_config:
    source = sources.DataSource(**suspect_config["data"])
  else:
    raise ValueError(f"{args.suspect} has no config.json naming its data; pass --data_root.")
  return sources.load_split(source, "train", progress=False), source


def _checkpoints(args, train_len, suspect_config):
  """(epoch, step, workdir or None for init) of every point, in order."""
  from jaxtag import train
  from jaxtag.data import pipeline
  kept = train.checkpoint_steps(args.suspect)
  steps = [int(s) for s in args.steps.split(",")] if args.steps else kept
  if not steps:
    raise FileNotFoundError(f"{args.suspect} keeps no checkpoints.")
  batch = (suspect_config or {}).get("batch_size")
  per_epoch = pipeline.steps_per_epoch(train_len, batch) if batch else None
  points = [(0.0, 0, None)] if args.init else []
  return points + [(s / per_epoch if per_epoch else None, s, args.suspect) for s in steps]


def _check_same_architecture(reference, other, what):
  import jax
  import numpy as np
  shapes = [np.shape(x) for x in jax.tree.leaves(reference.params)]
  if [np.shape(x) for x in jax.tree.leaves(other.params)] != shapes:
    raise ValueError(f"{what} holds another architecture or class count than the suspect "
                     "(warm_start re-initialises such leaves, so it is not the suspect's start).")


def main(argv=None) -> dict:
  args = _parse(argv)
  import numpy as np

  from jaxtag import train
  from jaxtag.audio import io as audio_io
  from jaxtag.taggants import alignment, diagnostics, keyfile

  craft, suspect = pathlib.Path(args.craft), pathlib.Path(args.suspect)
  record = np.load(craft / "perturbations.npz")
  summary = json.loads((craft / "craft_summary.json").read_text()) \
      if (craft / "craft_summary.json").exists() else {}
  config_path = suspect / "config.json"
  suspect_config = json.loads(config_path.read_text()) if config_path.exists() else None
  data, source = _train_split(args, suspect_config)
  key_file = args.key_file or summary.get("key_file")
  if not key_file:
    raise ValueError(f"{craft} names no key file; pass --key_file.")
  secret, manifest = keyfile.load_keys(key_file, expected_class_names=data.class_names)
  if summary.get("key_fingerprint") not in (None, manifest.get("fingerprint")):
    raise ValueError(f"{key_file} is not the key file {craft} crafted with (fingerprints differ).")
  poisons = diagnostics.poison_set(record["indices"], record["keys"], files=record["files"],
                                   paths=data.paths)
  # The poisons before crafting: the protected clips minus the recorded 16-bit perturbation.
  unperturbed = None
  if "delta" in record.files:
    unperturbed = data.waveforms[poisons.rows] - record["delta"].astype(np.float32)
  reference = None
  if args.reference_clips:
    clean = np.setdiff1d(np.arange(len(data)), poisons.rows)
    reference = np.random.default_rng(args.seed).choice(
        clean, size=min(args.reference_clips, clean.size), replace=False)

  first = None
  epochs = []
  for epoch, step, workdir in _checkpoints(args, len(data), suspect_config):
    t0 = time.perf_counter()
    trained = (train.restore_step(workdir, step) if workdir
               else train.restore_for_inference(args.init))
    if first is None:
      first = trained
      clf = alignment.split_trained(trained)[0]   # one compiled chunk for every epoch
    else:
      _check_same_architecture(first, trained, args.init if workdir is None else workdir)
    point = diagnostics.signal_at(
        clf, trained.params, trained.batch_stats, key_waveforms=np.asarray(secret.waveforms),
        key_labels=np.asarray(secret.labels), train_waveforms=data.waveforms,
        train_labels=data.labels, poisons=poisons, reference_rows=reference,
        batch_size=args.batch_size, unperturbed_poisons=unperturbed)
    epochs.append({"epoch": epoch, "step": step, "source": "init" if workdir is None else "suspect",
                   **point})
    m = point["means"]
    print(f"epoch {epoch if epoch is None else round(epoch, 2)} (step {step}): "
          f"|G| {m['poison_grad_norm']:.4g}, cos(G,g) {m['poison_cos']:+.3f}, share "
          f"{m['poison_share']:.4f}, cos(S,g) {m['whole_cos']:+.3f}, log p(key) "
          f"{m['key_log_prob']:.3f}, top-1 keys {m['keys_top1']}, poison loss "
          f"{m['poison_loss']:.3f} acc {m['poison_accuracy']:.2f} "
          f"[{time.perf_counter() - t0:.1f} s]", flush=True)

  out = {"craft": str(craft), "suspect": str(suspect), "init": args.init, "key_file": key_file,
         "data": {"kind": source.kind, "root": source.root, "num_train": len(data)},
         "whole_set": epochs[0]["whole_set"], "num_keys": len(secret.labels),
         "num_poisons": int(poisons.rows.size), "epochs": epochs}
  audio_io.write_text_atomic(f"{args.out}.json", json.dumps(out, indent=1))
  audio_io.write_bytes_atomic(f"{args.out}.png", diagnostics.plot_signal(
      epochs, title=f"taggant signal per epoch: {suspect.name} ({craft.name})"))
  print(f"wrote {args.out}.json and {args.out}.png")
  return out


if __name__ == "__main__":
  main()
