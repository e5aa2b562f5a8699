"""How far did the taggants move the keys? Paired white-box effect size (see
``jaxtag.taggants.diagnostics``).

For each model, the log-probability of every key's label and its rank; with ``--control``, the
difference from a control model trained on the clean data with the same seed, initialisation and
recipe (only the perturbed clips differ), per key and on average. The numbers in RESULTS.md
("How far from a hit") come from this script.

  .venv/bin/python benchmarks/taggant_effect.py --key_file workdirs/keys/keys.npz \
      --control workdirs/clean_seed1 workdirs/suspect [more workdirs...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)


def main(argv=None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("models", nargs="+", help="training workdirs to score")
  parser.add_argument("--key_file", required=True, help="the secret key file")
  parser.add_argument("--control", help="paired clean-data workdir (same seed and recipe)")
  parser.add_argument("--json", help="also write the records to this file")
  args = parser.parse_args(argv)

  from jaxtag import train
  from jaxtag.taggants import diagnostics, keyfile

  secret, _ = keyfile.load_keys(args.key_file)
  control = None
  if args.control:
    control = diagnostics.key_scores(train.restore_for_inference(args.control), secret)
    print(f"control {args.control}: mean log p(key label) {control.log_prob.mean():.3f}, "
          f"ranks {control.rank.tolist()}")
  records = []
  for workdir in args.models:
    scores = diagnostics.key_scores(train.restore_for_inference(workdir), secret)
    record = {"model": workdir, "log_prob": scores.log_prob.tolist(),
              "rank": scores.rank.tolist(), "mean_log_prob": float(scores.log_prob.mean())}
    line = (f"{workdir}: mean log p(key label) {record['mean_log_prob']:.3f}, "
            f"ranks {record['rank']}")
    if control is not None:
      record["paired"] = diagnostics.paired_effect(scores, control)
      p = record["paired"]
      line += (f"; vs control: mean {p['mean']:+.3f} nats (min {p['min']:+.3f}, max "
               f"{p['max']:+.3f}), per key {[round(d, 2) for d in p['delta_log_prob']]}")
      if "specific" in p:
        line += (f"; other keys' labels {p['others']:+.3f}, key-specific part "
                 f"{p['specific']:+.3f}")
    print(line)
    records.append(record)
  if args.json:
    from jaxtag.audio import io as audio_io
    audio_io.write_text_atomic(args.json, json.dumps(records, indent=1))
  return records


if __name__ == "__main__":
  main()
