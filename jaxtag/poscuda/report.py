"""The PosCUDA evaluation's report: the paper's Table 1 as text, and as bars.

:func:`format_report` and :func:`plot_report` read the JSON report that
:func:`jaxtag.poscuda.jobs.run_eval_job` writes (``poscuda_eval.json``), so that a finished
evaluation can be shown again without recomputing anything.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

EMBEDDING_NOTE = ("Fréchet distance between Gaussians fitted to embeddings of clean and protected "
                  "train clips, from each row's clean-trained model (trained by jaxtag here; the "
                  "paper's PANN weights cannot be downloaded), so it is not comparable with FAD.")
_ARCHITECTURES = {"m5": "CNN (M5, raw audio)", "lstm": "LSTM (MFCC)",
                  "transformer": "Transformer (log-mel)"}


def _arch(model: str) -> str:
  return _ARCHITECTURES.get(model, model)


def _pct(x) -> str:
  return "—" if x is None else f"{100 * x:.2f}"


def _blur(variant: str) -> str:
  return variant.split("_b", 1)[1]


def _table(report: dict[str, Any], title: str, cell) -> list[str]:
  """One table in the paper's Table 1 layout; ``cell(run, variant or None)`` fills a column."""
  variants = list(report["variants"])
  nopos = [v for v in variants if v.startswith("nopos")]
  pos = [v for v in variants if v.startswith("pos")]
  rows = [["Dataset", "Architecture", "Clean"] + [f"w/o pos b={_blur(v)}" for v in nopos]
          + [f"PosCUDA b={_blur(v)}" for v in pos] + [f"FD b={_blur(v)}" for v in pos]]
  for row in report["rows"].values():
    runs = row["runs"]
    rows.append([report["dataset"], _arch(row["model"]), cell(runs["clean"], None)]
                + [cell(runs[v], v) for v in nopos + pos]
                + [f"{runs[v]['frechet']:.3g}" for v in pos])
  widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
  lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
  return [title, lines[0], "-+-".join("-" * w for w in widths), *lines[1:]]


def _clean_models_filter(report: dict[str, Any]) -> str | None:
  """The variant whose filters the clean model's filtered test uses in the report (last PosCUDA)."""
  pos = [v for v in report["variants"] if v.startswith("pos")]
  return pos[-1] if pos else None


def format_report(report: dict[str, Any]) -> str:
  """The paper's Table 1 layout (accuracy in %), the class-filtered test, quality and attack."""
  shown = _clean_models_filter(report)

  def filtered(run, variant):
    return _pct(run["filtered_test"] if variant else run["filtered_test"].get(shown))

  lines = [(f"PosCUDA evaluation: {report['dataset']}, {report['num_classes']} classes, "
            f"{report['train_clips']} train / {report['test_clips']} test clips "
            f"(chance {100 / report['num_classes']:.1f}%)."), ""]
  lines += _table(report, "Test accuracy (%) on the clean test set, by training set:",
                  lambda run, variant: _pct(run["test"]))
  lines += [""] + _table(report, (
      "Test accuracy (%) on the class-filtered test set (the variant's filters applied to the "
      f"test clips; 'Clean' column: the clean model on {shown}):"), filtered)
  mixes = [(row["model"], v, r["mixed_test"]) for row in report["rows"].values()
           for v, r in row["runs"].items() if "mixed_test" in r]
  if mixes:
    lines += ["", ("Which half of the secret the protected models read (test clips filtered "
                   "with each class given the next class's filter, or its patch position; "
                   "compare with the class-filtered test):")]
    for model, v, m in mixes:
      lines.append(f"  {_arch(model):22s} {v:10s} filters mixed {_pct(m['filters'])}%  "
                   f"positions mixed {_pct(m['positions'])}%")
  lines += ["", EMBEDDING_NOTE, "", "Quality of the protected train clips (SNR, dB):"]
  for v, q in report["variants"].items():
    lines.append(f"  {v:12s} min {q['snr_db']['min']:7.2f}  p5 {q['snr_db']['p5']:7.2f}  median "
                 f"{q['snr_db']['median']:7.2f}")
  if report.get("attack"):
    a = report["attack"]
    lines += ["", (f"Attacker check ({_arch(report['rows'][a['model']]['model'])} retrained on "
                   f"{a['variant']} after random patches; clean-trained "
                   f"{_pct(a['clean_trained_test'])}%, protected-trained "
                   f"{_pct(a['protected_trained_test'])}%):")]
    for mode, r in a["modes"].items():
      frac = r["recovered_fraction"]
      lines.append(f"  {mode:6s} clean test {_pct(r['test'])}%  recovered "
                   f"{'—' if frac is None else f'{100 * frac:.0f}%'} of the gap: learnability "
                   f"{'comes back' if r['learnable_again'] else 'does not come back'}")
  lines += ["", f"Total wall time {report['wall_seconds']:.0f} s."]
  return "\n".join(lines) + "\n"


def plot_report(report: dict[str, Any], path: str | os.PathLike) -> None:
  """Table 1 as bars: each model's accuracy by training set, on clean and class-filtered test.

  Written atomically; matplotlib's Agg renderer, no display.
  """
  from jaxtag import plots
  from jaxtag.audio import io as audio_io
  sets = ["clean"] + list(report["variants"])
  shown = _clean_models_filter(report)
  rows = list(report["rows"].values())
  fig = plots.figure(figsize=(min(14, max(8, 1 + 0.8 * len(rows) * len(sets))), 4.2),
                     layout="constrained")
  axes = fig.subplots(1, 2, sharey=True)
  width = 0.8 / len(sets)
  x = np.arange(len(rows))
  for ax, key, title in ((axes[0], "test", "clean test set"),
                         (axes[1], "filtered_test", "class-filtered test set")):
    for i, name in enumerate(sets):
      values = []
      for row in rows:
        value = row["runs"][name][key]
        values.append(100 * (value.get(shown, np.nan) if isinstance(value, dict) else value))
      ax.bar(x + (i - (len(sets) - 1) / 2) * width, values, width, label=name)
    ax.axhline(100 / report["num_classes"], color="black", linestyle=":", label="chance")
    ax.set_xticks(x, [_arch(row["model"]) for row in rows])
    ax.set_title(title)
    ax.set_ylim(0, 100)
  axes[0].set_ylabel("accuracy (%) by training set")
  handles, labels = axes[0].get_legend_handles_labels()
  fig.legend(handles, labels, loc="outside right upper", fontsize="small", title="trained on")
  fig.suptitle(f"PosCUDA on {report['dataset']} ({report['num_classes']} classes; the clean "
               f"model's filtered test uses {shown})")
  audio_io.write_bytes_atomic(path, plots.png_bytes(fig))
