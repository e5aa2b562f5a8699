"""Benchmark jaxtag's audio DSP against librosa and kaldi_native_fbank on one device.

Measures, for a batch of 1 s, 16 kHz clips:

* Griffin-Lim (jaxtag, jitted, fori_loop) vs ``librosa.griffinlim`` at the same
  number of iterations, momentum and geometry, plus the spectral convergence
  each reaches;
* Kaldi fbank (jaxtag ``kaldi_fbank``, jitted) vs ``kaldi_native_fbank``
  (C++, one clip at a time, as it is used) and ``librosa`` mel spectrograms
  (the librosa baseline), plus jaxtag's own ``mel_spectrogram``.

Compile time is reported separately (``jit(...).lower(...).compile()``); steady
state is the median (and min/max) over ``--repeats`` timed calls after one
warm-up call, each ended by ``block_until_ready``. Results are printed as a
table and appended as JSON lines to ``--out``.

Run from the repository root::

  .venv/bin/python benchmarks/bench_dsp.py --batch 16 --repeats 5
"""

import argparse
import datetime
import functools
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

try:
  import jaxtag  # noqa: F401
except ImportError:  # Running from a checkout without `pip install -e .`.
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import librosa  # noqa: E402

from jaxtag.audio import fbank as fbank_lib  # noqa: E402
from jaxtag.audio import reconstruction as gl_lib  # noqa: E402
from jaxtag.audio import mel as mel_lib  # noqa: E402
from jaxtag.audio import spectral as stft_lib  # noqa: E402

SAMPLE_RATE = 16000


def _clips(batch: int, seed: int = 0) -> np.ndarray:
  """Chirps + harmonics + noise, different per clip, in [-1, 1]."""
  rng = np.random.default_rng(seed)
  t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
  clips = []
  for _ in range(batch):
    f0 = rng.uniform(100, 300)
    y = 0.4 * np.sin(2 * np.pi * (f0 * t + rng.uniform(200, 800) * t**2))
    y += sum(0.15 / k * np.sin(2 * np.pi * 1.5 * f0 * k * t) for k in range(1, 6))
    clips.append(y + 0.01 * rng.standard_normal(t.size))
  return np.asarray(clips, np.float32)


def _time(fn, repeats: int) -> dict:
  """Median/min/max wall time of `fn()` after one warm-up call."""
  fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return {"median_s": statistics.median(times), "min_s": min(times),
          "max_s": max(times)}


def _jax_case(fn, args, repeats):
  """Compiles `fn` ahead of time, then times the compiled executable."""
  start = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  compile_s = time.perf_counter() - start
  timing = _time(lambda: jax.block_until_ready(compiled(*args)), repeats)
  return dict(timing, compile_s=compile_s), compiled(*args)


def bench_griffin_lim(clips, *, n_fft, hop, n_iter, repeats):
  """Griffin-Lim rows for one geometry."""
  geometry = dict(n_fft=n_fft, hop_length=hop)
  length = clips.shape[-1]
  magnitude = np.abs(np.asarray(stft_lib.stft(clips, **geometry)))
  rows = []
  for init in ("zeros", "random"):
    fn = functools.partial(gl_lib.griffin_lim, n_iter=n_iter, momentum=0.99,
                           length=length, init=init, **geometry)
    key = jax.random.key(0)
    stats, waves = _jax_case(lambda m, k: fn(m, key=k), (magnitude, key),
                             repeats)
    sc = np.asarray(gl_lib.spectral_convergence(magnitude, waves, **geometry))
    rows.append(dict(stats, bench="griffin_lim", impl="jaxtag", init=init,
                     spectral_convergence=float(sc.mean())))

    lib_init = None if init == "zeros" else "random"
    run_librosa = lambda: librosa.griffinlim(
        np.swapaxes(magnitude, -1, -2), n_iter=n_iter, momentum=0.99,
        init=lib_init, random_state=0, length=length, pad_mode="reflect",
        **geometry)
    stats = _time(run_librosa, repeats)
    sc = np.asarray(gl_lib.spectral_convergence(magnitude, run_librosa(),
                                                **geometry))
    rows.append(dict(stats, bench="griffin_lim", impl="librosa", init=init,
                     spectral_convergence=float(sc.mean())))
  for row in rows:
    row.update(n_fft=n_fft, hop_length=hop, n_iter=n_iter)
  return rows


def _knf_fbank(clip):
  import kaldi_native_fbank as knf  # Optional reference; imported lazily.
  opts = knf.FbankOptions()
  opts.frame_opts.dither = 0.0
  opts.frame_opts.window_type = "hanning"
  opts.frame_opts.samp_freq = SAMPLE_RATE
  # Kaldi refuses 128 bins on a 512-point FFT (one empty triangle), so the
  # C++ reference runs 80 bins; its cost barely depends on the bin count.
  opts.mel_opts.num_bins = 80
  opts.use_energy = False
  computer = knf.OnlineFbank(opts)
  computer.accept_waveform(SAMPLE_RATE, clip)
  computer.input_finished()
  return np.stack([computer.get_frame(i)
                   for i in range(computer.num_frames_ready)])


def bench_features(clips, *, repeats):
  """Front-end rows: Kaldi fbank and mel spectrograms."""
  rows = []
  stats, _ = _jax_case(fbank_lib.kaldi_fbank, (clips,), repeats)
  rows.append(dict(stats, bench="fbank", impl="jaxtag.kaldi_fbank",
                   num_mel_bins=128))
  mel_kwargs = dict(sample_rate=SAMPLE_RATE, n_fft=512, hop_length=160,
                    win_length=400, n_mels=128)
  stats, _ = _jax_case(functools.partial(mel_lib.mel_spectrogram, **mel_kwargs),
                       (clips,), repeats)
  rows.append(dict(stats, bench="fbank", impl="jaxtag.mel_spectrogram",
                   num_mel_bins=128))
  try:
    stats = _time(lambda: [_knf_fbank(c) for c in clips], repeats)
    rows.append(dict(stats, bench="fbank", impl="kaldi_native_fbank",
                     num_mel_bins=80))
  except ImportError:
    print("kaldi_native_fbank not installed; skipping it.")
  stats = _time(lambda: librosa.feature.melspectrogram(
      y=clips, sr=SAMPLE_RATE, n_fft=512, hop_length=160, win_length=400,
      n_mels=128, pad_mode="reflect"), repeats)
  rows.append(dict(stats, bench="fbank", impl="librosa.melspectrogram",
                   num_mel_bins=128))
  return rows


def _environment():
  device = jax.devices()[0]
  return {
      "device": f"{device.platform}:{getattr(device, 'device_kind', '')}",
      "cpu_count": os.cpu_count(), "machine": platform.machine(),
      "jax": jax.__version__, "librosa": librosa.__version__,
      "numpy": np.__version__,
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec="seconds"),
  }


def _print_table(rows):
  header = (f"{'bench':12s} {'impl':26s} {'geometry':16s} {'init':6s} "
            f"{'clips/s':>9s} {'median ms':>10s} {'min-max ms':>15s} "
            f"{'compile s':>9s} {'SC':>7s}")
  print(header)
  print("-" * len(header))
  for row in rows:
    geometry = (f"{row['n_fft']}/{row['hop_length']} x{row['n_iter']}"
                if row["bench"] == "griffin_lim" else f"{row['num_mel_bins']} bins")
    compile_s = f"{row['compile_s']:.2f}" if "compile_s" in row else "-"
    sc = (f"{row['spectral_convergence']:.4f}"
          if "spectral_convergence" in row else "-")
    spread = f"{row['min_s'] * 1e3:.1f}-{row['max_s'] * 1e3:.1f}"
    print(f"{row['bench']:12s} {row['impl']:26s} {geometry:16s} "
          f"{row.get('init', '-'):6s} {row['clips_per_s']:9.1f} "
          f"{row['median_s'] * 1e3:10.1f} {spread:>15s} {compile_s:>9s} "
          f"{sc:>7s}")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=16,
                      help="clips per call (1 s at 16 kHz each)")
  parser.add_argument("--repeats", type=int, default=5,
                      help="timed calls after warm-up")
  parser.add_argument("--n_iter", type=int, default=32,
                      help="Griffin-Lim iterations")
  parser.add_argument("--n_fft", type=int, nargs="+", default=[512, 400],
                      help="Griffin-Lim FFT sizes (hop 160)")
  parser.add_argument("--out", default="benchmarks/results.jsonl",
                      help="JSON-lines file to append results to ('' = none)")
  args = parser.parse_args(argv)

  clips = _clips(args.batch)
  rows = []
  for n_fft in args.n_fft:
    rows += bench_griffin_lim(clips, n_fft=n_fft, hop=160, n_iter=args.n_iter,
                              repeats=args.repeats)
  rows += bench_features(clips, repeats=args.repeats)
  env = _environment()
  for row in rows:
    row.update(env, batch=args.batch, repeats=args.repeats,
               clips_per_s=args.batch / row["median_s"])
  print(f"{env['device']}, {env['cpu_count']} CPUs, jax {env['jax']}, "
        f"librosa {env['librosa']}, batch {args.batch} x 1 s @ 16 kHz, "
        f"{args.repeats} repeats")
  _print_table(rows)
  if args.out:
    with open(args.out, "a") as f:
      for row in rows:
        f.write(json.dumps(row) + "\n")
    print(f"appended {len(rows)} rows to {args.out}")


if __name__ == "__main__":
  main()
