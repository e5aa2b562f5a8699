r"""The protection's accuracy cost on every held-out clip: a suspect against its benign twin.

  .venv/bin/python benchmarks/accuracy_cost.py --suspect workdirs/demo/suspect \
      --benign workdirs/demo/benign --corpus_seeds 0,1 --splits validation,test \
      --out benchmarks/results/accuracy_cost_<date>

`make demo` prints the cost on its test split: 700 clips, where one draw's paired 95% interval is
about +-1.2 points. Every clip that no model of the chain trained on narrows it. On the embedded
corpus these are the validation and test splits (training only logs validation accuracy: no early
stopping, no selection) of the demo's own corpus draw and of the public backbone's draw
(``corpus_seed`` 1: other speakers of the same generator). Each (corpus seed, split) is loaded
as the demo loads its data; both models answer through a ``LocalBlackBox`` (top-1, eval mode);
``jaxtag.taggants.blackbox.paired_cost`` (``jaxtag.stats.accuracy_cost``) gives the cost, its
paired interval and McNemar's exact p for every split and for all of them pooled (clips are
distinct, so the pooled set is one paired sample). The interval covers the sampling of clips, not
the training seeds: repeat over draws.

Writes ``<out>.json`` (per split and pooled; the environment) and prints a table.
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
  parser.add_argument("--preset", default="default", help="the embedded corpus's size preset")
  parser.add_argument("--corpus_seeds", default="0,1",
                      help="comma-separated corpus draws (0: the demo's data, 1: its backbone's)")
  parser.add_argument("--splits", default="validation,test",
                      help="comma-separated held-out splits of each draw")
  parser.add_argument("--out", help="output prefix (default: benchmarks/results/"
                      "accuracy_cost_<UTC date>)")
  args = parser.parse_args(argv)
  try:
    args.corpus_seeds = harness.parse_list(args.corpus_seeds, int, "--corpus_seeds")
    args.splits = harness.parse_list(args.splits, str, "--splits", ("validation", "test"))
  except ValueError as e:
    parser.error(f"{e} (held-out splits only: never train)")
  args.out = args.out or harness.default_out("accuracy_cost")
  return args


def format_table(result: dict[str, Any]) -> str:
  rows = [*result["splits"].items(), ("pooled", result["pooled"])]
  lines = ["| clips | n | benign | suspect | cost, points [95%] | benign only / suspect only | "
           "McNemar p |", "|---|---|---|---|---|---|---|"]
  for name, c in rows:
    lines.append(f"| {name} | {c['num_clips']} | {100 * c['control_accuracy']:.1f}% | "
                 f"{100 * c['treated_accuracy']:.1f}% | {100 * c['cost']:+.1f} "
                 f"[{100 * c['low']:+.1f}, {100 * c['high']:+.1f}] | {c['control_only']} / "
                 f"{c['treated_only']} | {c['p_value']:.2g} |")
  return "\n".join(lines)


def main(argv=None) -> dict[str, Any]:
  args = _parse(argv)
  from jaxtag.audio import io as audio_io
  from jaxtag.data import sources
  from jaxtag.taggants import blackbox

  datasets = {}
  for seed in args.corpus_seeds:
    source = sources.DataSource(kind="corpus", preset=args.preset, corpus_seed=seed)
    for split in args.splits:
      datasets[f"corpus_seed {seed} {split}"] = sources.load_split(source, split, progress=False)
  boxes = {role: blackbox.LocalBlackBox(path, batch_size=128)
           for role, path in (("suspect", args.suspect), ("benign", args.benign))}
  result = {"benchmark": "accuracy_cost", "suspect": str(pathlib.Path(args.suspect).absolute()),
            "benign": str(pathlib.Path(args.benign).absolute()), "preset": args.preset,
            "corpus_seeds": args.corpus_seeds, "splits": args.splits,
            "environment": harness.environment(),
            **blackbox.paired_cost(boxes["suspect"], boxes["benign"], datasets)}
  pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
  audio_io.write_text_atomic(f"{args.out}.json", json.dumps(result, indent=1) + "\n")
  print(format_table(result))
  print(f"wrote {args.out}.json")
  return result


if __name__ == "__main__":
  main()
