"""Verification latency per key query: ``LocalBlackBox`` and ``HttpBlackBox`` on localhost.

Verification asks a black box for the top-k labels of every key. This measures the seconds per
key query three ways, on random key clips of the model's length:

* ``local-batched``: ``LocalBlackBox.top_k`` of all K keys at once (what ``verify`` does with a
  local workdir), divided by K;
* ``local-single``: one key per ``top_k`` call (the compiled batch-of-one path that the server
  uses);
* ``http``: ``HttpBlackBox.top_k`` of all K keys against the server of ``launch/serve.py``
  (``jaxtag.serving.job.build_server``, in a thread on 127.0.0.1): one WAV POST per key.

Without ``--workdir`` a throwaway CNN is trained for a few steps on synthetic tones first
(latency does not depend on accuracy).

Commands (from the repository root)::

  nice -n 10 .venv/bin/python benchmarks/bench_verify.py                       # throwaway CNN
  nice -n 10 .venv/bin/python benchmarks/bench_verify.py --workdir workdirs/demo/suspect
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)

import numpy as np  # noqa: E402

from benchmarks import harness  # noqa: E402

UNIT = "key queries/s"


def train_throwaway(workdir: str, *, num_classes: int = 35, sample_rate: int = 16000) -> None:
  """A 1 s, 16 kHz CNN trained for a few steps on tones (only its latency matters)."""
  import jax

  from jaxtag import sharding, train
  from jaxtag.data.dataset import AudioDataset

  rng = np.random.default_rng(0)
  labels = np.arange(2 * num_classes) % num_classes
  t = np.arange(sample_rate) / sample_rate
  x = np.stack([0.3 * np.sin(2 * np.pi * (200 + 40 * c) * t) for c in labels])
  x = (x + 0.02 * rng.standard_normal(x.shape)).astype(np.float32)
  config = train.TrainConfig(model="cnn", num_epochs=1, batch_size=8, eval_batch_size=8,
                             log_every_steps=4)
  data = AudioDataset(x, labels, tuple(f"class{c}" for c in range(num_classes)), sample_rate)
  train.train(config, train_data=data, key=jax.random.key(0), workdir=workdir,
              mesh=sharding.make_mesh(1), progress=False)


def _serve_config(workdir: str):
  from jaxtag.serving import job
  return job.ServeJob(model_workdir=str(workdir), port=0)


def measure(workdir: str, *, num_keys: int, k: int, repeats: int, warmup: int, env) -> list[dict]:
  """The three records for ``workdir``."""
  from jaxtag import serving
  from jaxtag.taggants import blackbox
  from jaxtag.serving import job as serve_job

  local = blackbox.LocalBlackBox(workdir)
  rng = np.random.default_rng(1)
  keys = (0.1 * rng.standard_normal((num_keys, local.clip_samples))).astype(np.float32)
  no_sync = lambda _: None
  device = {"device": f"host:{local!r}", "device_kind": "", "platform": "host"}
  common = dict(bench="verify_query", unit=UNIT, device=device, env=env, k=k, num_keys=num_keys,
                workdir=str(workdir), clip_samples=local.clip_samples)
  records = []
  timing = harness.time_calls(lambda: local.top_k(keys, k), repeats=repeats, warmup=warmup,
                              sync=no_sync)
  records.append(harness.make_record(impl="local-batched", timing=timing,
                                     items_per_call=num_keys, **common))
  timing = harness.time_calls(lambda: local.top_k(keys[:1], k), repeats=repeats, warmup=warmup,
                              sync=no_sync)
  records.append(harness.make_record(impl="local-single", timing=timing, items_per_call=1,
                                     **common))
  server = serve_job.build_server(_serve_config(workdir))
  with serving.running(server):
    remote = blackbox.HttpBlackBox(server.url)
    timing = harness.time_calls(lambda: remote.top_k(keys, k), repeats=repeats, warmup=warmup,
                                sync=no_sync)
    answers = remote.top_k(keys, k)
  if not np.array_equal(answers, local.top_k(keys, k)):
    raise AssertionError("HttpBlackBox and LocalBlackBox disagree on the same keys.")
  records.append(harness.make_record(impl="http", timing=timing, items_per_call=num_keys,
                                     url=server.url, **common))
  return records


COLUMNS = (
    ("impl", lambda r: r["impl"]),
    ("keys/call", lambda r: str(r["items_per_call"])),
    ("ms per key median (min-max)", lambda r: (
        f"{1e3 * r['median_s'] / r['items_per_call']:.2f} "
        f"({1e3 * r['min_s'] / r['items_per_call']:.2f}-"
        f"{1e3 * r['max_s'] / r['items_per_call']:.2f})")),
    (UNIT, lambda r: harness.fmt(r["throughput"], ".1f")),
)


def main(argv=None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default="", help="a finished training workdir (default: "
                      "train a throwaway CNN)")
  parser.add_argument("--num_keys", type=int, default=64)
  parser.add_argument("--k", type=int, default=5)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--warmup", type=int, default=1)
  parser.add_argument("--out", default="benchmarks/results.jsonl",
                      help="JSON-lines file to append to ('' = none)")
  args = parser.parse_args(argv)
  env = harness.environment()
  with tempfile.TemporaryDirectory(prefix="bench_verify_") as tmp:
    workdir = args.workdir
    if not workdir:
      workdir = os.path.join(tmp, "cnn")
      print(f"training a throwaway CNN in {workdir} ...", flush=True)
      train_throwaway(workdir)
    records = measure(workdir, num_keys=args.num_keys, k=args.k, repeats=args.repeats,
                      warmup=args.warmup, env=env)
  harness.append_jsonl(args.out, records)
  print(f"verification queries, top-{args.k}, {args.num_keys} keys, {records[0]['workdir']}; "
        f"load {env['load_average_1m']}")
  print(harness.format_table(records, COLUMNS))
  return records


if __name__ == "__main__":
  main()
