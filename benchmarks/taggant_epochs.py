r"""Detection against the suspect's training time: the black-box test at every kept epoch.

Train the suspect and its benign control with every epoch kept (``max_to_keep`` >= their
epochs, e.g. ``--config.suspect.max_to_keep=100 --config.benign.max_to_keep=100`` on the demo,
or ``--set suspect.max_to_keep=100 --set benign.max_to_keep=100`` on the map), then:

  .venv/bin/python benchmarks/taggant_epochs.py --suspect workdirs/demo/suspect \
      --benign workdirs/demo/benign --key_file workdirs/demo/keys/keys.npz --decision_k 3 \
      --out benchmarks/results/taggant_epochs_<date>

At each epoch both models have kept, the keys go to a black box of that checkpoint
(``LocalBlackBox(workdir, step=...)``: top ``--max_k`` labels, eval mode) and are tested exactly
as ``launch.verify`` tests them (``jaxtag.taggants.verify.verify``: the p-value at the fixed
``--decision_k``, the hits at every k). Writes ``<out>.json`` (per epoch: step, p-values,
hits, key accuracy; no key labels) and ``<out>.png`` (p-value and key accuracy per epoch).

What it measures: the suspect *as it was* after each epoch of one run, under that run's
learning-rate schedule (decayed over all its epochs). A run trained for fewer epochs decays
sooner, so epoch e of a long run is not a run of e epochs; the final point is exactly the
trained model ``launch.verify`` tests.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
from typing import Any


_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)

from benchmarks import harness  # noqa: E402


def _parse(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--suspect", required=True, help="the suspect's train workdir")
  parser.add_argument("--benign", required=True, help="its benign control's train workdir")
  parser.add_argument("--key_file", required=True, help="the secret key file")
  parser.add_argument("--decision_k", type=int, default=1,
                      help="the decision's k, fixed before looking (the demo's is 3)")
  parser.add_argument("--alpha", type=float, default=1e-3, help="the decision's level")
  parser.add_argument("--max_k", type=int, default=5, help="labels read per answer")
  parser.add_argument("--out", help="output prefix (default: benchmarks/results/"
                      "taggant_epochs_<UTC date>)")
  args = parser.parse_args(argv)
  if not 1 <= args.decision_k <= args.max_k:
    parser.error(f"--decision_k must lie in [1, --max_k={args.max_k}]; got {args.decision_k}.")
  if not 0.0 < args.alpha < 1.0:
    parser.error(f"--alpha must lie in (0, 1); got {args.alpha}.")
  args.out = args.out or harness.default_out("taggant_epochs")
  return args


def steps_per_epoch(workdir: pathlib.Path) -> int:
  """Optimiser steps per epoch of a finished train workdir (its final weights' step over its
  config's epochs)."""
  from jaxtag import train as train_lib

  epochs = int(json.loads((workdir / "config.json").read_text())["num_epochs"])
  steps = int(train_lib.read_model_info(workdir).step)
  if epochs < 1 or steps % epochs:
    raise ValueError(f"{workdir}: {steps} steps over {epochs} epochs is not a whole number of "
                     "steps per epoch; was it trained with checkpoint_every_steps set?")
  return steps // epochs


def epoch_records(args) -> dict[str, Any]:
  from jaxtag import train as train_lib
  from jaxtag.taggants import blackbox, keyfile, verify

  secret, _ = keyfile.load_keys(args.key_file)
  dirs = {"suspect": pathlib.Path(args.suspect).absolute(),
          "benign": pathlib.Path(args.benign).absolute()}
  per_epoch = {name: steps_per_epoch(d) for name, d in dirs.items()}
  if per_epoch["suspect"] != per_epoch["benign"]:
    raise ValueError(f"the suspect trains {per_epoch['suspect']} steps per epoch, the benign "
                     f"control {per_epoch['benign']}: not a paired control.")
  kept = sorted(set(train_lib.checkpoint_steps(dirs["suspect"]))
                & set(train_lib.checkpoint_steps(dirs["benign"])))
  epochs = [s for s in kept if s % per_epoch["suspect"] == 0]
  if not epochs:
    raise ValueError(f"{dirs['suspect']} and {dirs['benign']} keep no common epoch checkpoint; "
                     "train both with max_to_keep >= their epochs.")
  rows = []
  for step in epochs:
    row = {"epoch": step // per_epoch["suspect"], "step": step}
    for name, directory in dirs.items():
      report = verify.verify(blackbox.LocalBlackBox(directory, step=step), secret,
                             max_k=args.max_k, decision_k=args.decision_k, alpha=args.alpha,
                             target=str(directory))
      row[name] = {"p_value": report.p_value, "decision": report.decision,
                   "hits": list(report.hits), "p_values": list(report.p_values),
                   "key_accuracy": [h / report.num_keys for h in report.hits]}
    rows.append(row)
    print(f"epoch {row['epoch']:>3}: suspect p {row['suspect']['p_value']:.2e} "
          f"(hits {row['suspect']['hits']}), benign p {row['benign']['p_value']:.2e} "
          f"(hits {row['benign']['hits']})", flush=True)
  return {"epochs": rows, "steps_per_epoch": per_epoch["suspect"], "num_keys": len(secret.labels)}


def plot(result: dict[str, Any]) -> bytes:
  from jaxtag import plots

  rows, k = result["epochs"], result["decision_k"]
  x = [r["epoch"] for r in rows]
  fig = plots.figure(figsize=(11, 4))
  ax_p, ax_acc = fig.subplots(1, 2)
  for name, color in (("suspect", "C3"), ("benign", "C0")):
    ax_p.plot(x, [max(r[name]["p_value"], 1e-300) for r in rows], "o-", color=color, label=name)
    ax_acc.plot(x, [r[name]["key_accuracy"][k - 1] for r in rows], "o-", color=color,
                label=f"{name}: top-{k}")
    ax_acc.plot(x, [r[name]["key_accuracy"][0] for r in rows], "o--", color=color, alpha=0.6,
                label=f"{name}: top-1")
  ax_p.axhline(result["alpha"], color="black", ls=":", lw=1, label=f"alpha {result['alpha']:g}")
  ax_p.set(yscale="log", xlabel="epoch", ylabel=f"p-value at top-{k}",
           title="verification p-value per epoch")
  ax_acc.set(xlabel="epoch", ylabel="fraction of keys", ylim=(-0.03, 1.03),
             title="key accuracy per epoch")
  for ax in (ax_p, ax_acc):
    ax.legend(fontsize=7)
  fig.suptitle(f"detection against the suspect's epochs ({result['num_keys']} keys, decision "
               f"top-{k}, one run's schedule)")
  fig.tight_layout()
  return plots.png_bytes(fig)


def main(argv=None) -> dict[str, Any]:
  args = _parse(argv)
  from jaxtag.audio import io as audio_io

  result = {"benchmark": "taggant_epochs", "suspect": str(args.suspect),
            "benign": str(args.benign), "decision_k": args.decision_k, "alpha": args.alpha,
            "max_k": args.max_k, "environment": harness.environment(), **epoch_records(args)}
  pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
  audio_io.write_text_atomic(f"{args.out}.json", json.dumps(result, indent=1) + "\n")
  audio_io.write_bytes_atomic(f"{args.out}.png", plot(result))
  print(f"wrote {args.out}.json and {args.out}.png")
  return result


if __name__ == "__main__":
  main()
