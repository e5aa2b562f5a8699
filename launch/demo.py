r"""The README's main command: runs every pipeline stage on the embedded corpus and summarises.

  make demo
  # = .venv/bin/python -m launch.demo --config=launch/configs/demo.py --workdir=workdirs/demo

Stages so far: synthesise the corpus -> draw the secret keys and write the key file. Each stage
writes its own sub-workdir, so a stage can be re-run on its own with its launcher.
"""

from __future__ import annotations

import json

from launch import app
from launch import make_corpus
from launch import make_keys


def main(config, workdir):
  timings: dict[str, float] = {}
  with app.timed("corpus", timings):
    data = make_corpus.run_stage(config, workdir / "corpus")
  with app.timed("keys", timings):
    keys = make_keys.run_stage(config, workdir / "keys")
  report = {"data": data, "keys": keys, "wall_time_s": {k: round(v, 2) for k, v in timings.items()}}
  app.write_json(workdir / "demo_summary.json", report)

  print("\n=== jaxtag demo ===")
  print(f"corpus: {data['root']}")
  for split, info in data["splits"].items():
    print(f"  {split:>10}: " + json.dumps(info))
  print(f"keys: {keys['num_keys']} keys -> {keys['key_file']}")
  print(f"  labels: {', '.join(keys['labels'])}")
  print("wall time per stage (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
  print(f"summary: {workdir / 'demo_summary.json'}")


if __name__ == "__main__":
  app.run(main)
