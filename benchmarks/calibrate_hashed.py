"""The exact test's false-positive rate when benign answers vary with every key.

Trained benign models map most noise-like keys to one or two classes, so the exact test, given
those answers, can rarely reject (launch/calibrate.py measures that case). This check feeds the same
fresh-key calibration (``jaxtag.taggants.calibrate``) with three benign black boxes whose ranking
is a pseudo-random function of the key audio (SHA-256 of the samples and a salt): they never saw a
label, and their answers differ from key to key, so the test's size given the answers is close to
alpha and the empirical rate is a sharp check of "P[p <= alpha] <= alpha". Keys are rendered
cheaply (8 kHz, 2,000 samples, 2 Griffin-Lim iterations): the audio only seeds the hashes.

  .venv/bin/python benchmarks/calibrate_hashed.py --num_classes 10 --num_keys 10 --decision_k 1
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import tempfile
import time

import jax

from jaxtag import rng
from jaxtag.taggants import calibrate, keys


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--num_classes", type=int, default=10)
  parser.add_argument("--num_keys", type=int, default=10)
  parser.add_argument("--decision_k", type=int, default=1)
  parser.add_argument("--num_key_draws", type=int, default=1000)
  parser.add_argument("--seed", type=int, default=2026)
  parser.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/...)")
  args = parser.parse_args()
  spec = keys.KeySpec(num_keys=args.num_keys, d=8, sample_rate=8000, clip_samples=2000,
                      n_fft=256, win_length=200, hop_length=80, n_mels=32,
                      mel_inversion_iters=10, griffin_lim_iters=2)
  names = [f"class_{i}" for i in range(args.num_classes)]
  boxes = [calibrate.HashedBenignBox(names, 8000, salt) for salt in (b"a", b"b", b"c")]
  config = calibrate.CalibrationConfig(num_key_draws=args.num_key_draws, draws_per_batch=100,
                                       max_k=args.decision_k, decision_k=args.decision_k)
  start = time.perf_counter()
  with tempfile.TemporaryDirectory() as tmp:
    summary = calibrate.calibrate(boxes, rng.stream(jax.random.key(args.seed), "calibration"),
                                  spec, config, pathlib.Path(tmp) / "draws.jsonl",
                                  model_names=["hash_a", "hash_b", "hash_c"])
  summary.update(seconds=round(time.perf_counter() - start, 1), seed=args.seed,
                 python=platform.python_version(), jax=jax.__version__)
  for name in ("exact_test", "binomial_reference"):
    for level in summary[name]["levels"]:
      low, high = level["ci95"]
      print(f"{name:>18} alpha {level['alpha']:<6g} {level['false_positives']:>4}/"
            f"{level['trials']} = {level['rate']:.4f} [{low:.4f}, {high:.4f}]  promised "
            f"{level['promised_rate']:.4f}")
  out = pathlib.Path(args.out or pathlib.Path(__file__).parent / "results" / (
      f"calibrate_hashed_C{args.num_classes}_K{args.num_keys}_top{args.decision_k}"
      "_2026-12-04.json"))
  out.write_text(json.dumps(summary, indent=1) + "\n")
  print(f"{summary['seconds']} s; {out}")


if __name__ == "__main__":
  main()
