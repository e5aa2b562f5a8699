"""Cost of the poisons' perceptual quality report: PESQ wideband and STOI per clip.

``launch.craft`` scores every poison (up to ``quality_max_clips``) against its clean clip with
``jaxtag.audio.quality.perturbation_quality``. This measures what that adds, on the embedded
corpus's training clips (espeak-ng speech, 1 s at 16 kHz) with a white-noise perturbation at
``--snr_db`` rounded to the 16-bit grid (as crafted poisons are exported):

* ``pesq``: ``quality.pesq_wb`` over ``--clips`` clips, per clip;
* ``pystoi``: ``quality.stoi`` over the same clips, per clip;
* ``report``: the whole ``perturbation_quality`` call (SNRs too) over those clips, per clip;

and prints the extrapolated cost of the demo's 56 poisons and of a 1% SpeechCommands v2 budget
(~850 poisons).

Commands (from the repository root)::

  nice -n 10 .venv/bin/python benchmarks/bench_quality.py                     # tiny corpus
  nice -n 10 .venv/bin/python benchmarks/bench_quality.py --preset default --clips 56
"""

from __future__ import annotations

import argparse
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)

import numpy as np  # noqa: E402

from benchmarks import harness  # noqa: E402

UNIT = "clips/s"
VERSIONS = ("pesq", "pystoi", "numpy", "scipy")


def poisons(preset: str, num_clips: int, snr_db: float) -> tuple[np.ndarray, np.ndarray, int]:
  """``num_clips`` training clips of the corpus (cycled if it has fewer) and their copies with
  white noise at ``snr_db``, on the 16-bit grid; and the sample rate."""
  from jaxtag.data import sources

  train = sources.load_splits(sources.DataSource(kind="corpus", preset=preset),
                              progress=False)["train"]
  clean = train.waveforms[np.arange(num_clips) % len(train)].astype(np.float32)
  rng = np.random.default_rng(0)
  noise = rng.standard_normal(clean.shape)
  scale = np.sqrt(np.sum(clean.astype(np.float64) ** 2, axis=1, keepdims=True)
                  / np.sum(noise**2, axis=1, keepdims=True) / 10 ** (snr_db / 10))
  perturbed = np.round((clean + scale * noise) * 32768) / 32768
  return clean, perturbed.astype(np.float32), train.sample_rate


def main(argv=None) -> list[dict]:
  from jaxtag.audio import quality

  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--preset", default="tiny", help="corpus preset (tiny, small, default)")
  parser.add_argument("--clips", type=int, default=24)
  parser.add_argument("--snr_db", type=float, default=55.0)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--out", default="benchmarks/results.jsonl",
                      help="JSONL file the records are appended to ('' for none)")
  args = parser.parse_args(argv)

  clean, perturbed, sr = poisons(args.preset, args.clips, args.snr_db)
  env = harness.environment()
  env["versions"] = {**env["versions"], **harness.package_versions(VERSIONS)}
  device = {"device": "host", "device_kind": "", "platform": "host"}
  calls = {
      "pesq": lambda: quality.pesq_wb(clean, perturbed, sr),
      "pystoi": lambda: quality.stoi(clean, perturbed, sr),
      "report": lambda: quality.perturbation_quality(
          clean, perturbed, np.arange(len(clean)), sample_rate=sr, max_perceptual_clips=None),
  }
  records = []
  for impl, call in calls.items():
    result = call()
    if impl != "report" and result[0] is None:
      print(f"{impl}: not measured ({result[1]})")
      continue
    timing = harness.time_calls(call, repeats=args.repeats, warmup=0, sync=lambda _: None)
    records.append(harness.make_record(
        bench="perceptual_quality", impl=impl, timing=timing, items_per_call=len(clean),
        unit=UNIT, device=device, env=env, preset=args.preset, snr_db=args.snr_db,
        clip_seconds=clean.shape[1] / sr, sample_rate=sr))
    per_clip = timing.median_s / len(clean)
    if impl == "report":
      summary = result.summary()
      scores = {k: summary[k] for k in ("pesq_wb", "pesq_wb_failures", "stoi", "stoi_failures")}
    else:
      scores = {"scored": int(np.sum(np.isfinite(result[0]))), "failures": result[2],
                "median": float(np.nanmedian(result[0]))}
    print(f"{impl:<7} {1e3 * per_clip:6.1f} ms/clip (median of {args.repeats} x {len(clean)} "
          f"clips): 56 poisons {56 * per_clip:5.2f} s, 850 poisons {850 * per_clip:5.1f} s; "
          f"{scores}")
  harness.append_jsonl(args.out, records)
  return records


if __name__ == "__main__":
  main()
