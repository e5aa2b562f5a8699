"""The pure half of benchmarks/taggant_map.py: a map point from its stages' summaries, the lines
of the plot (median over seeds), the plot and the printed table. No JAX, no files."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

CONSTRAINTS = {"snr": "snr_db", "stft_mask": "mask_db"}   # constraint -> the craft field swept


def point_name(constraint: str, db: float, budget: float | None = None) -> str:
  """A grid point's sub-workdir name, e.g. ``snr_20`` or ``stft_mask_12.5``; with a swept
  ``budget`` (the fraction of training clips perturbed), e.g. ``snr_5_b0.08``."""
  return f"{constraint}_{db:g}" + ("" if budget is None else f"_b{budget:g}")


def key_accuracy(report: dict[str, Any], k: int) -> float:
  """The fraction of keys whose label is among the suspect's top ``k`` (a verify report's
  cumulative ``hits``; k beyond the labels read is capped)."""
  hits = report["hits"]
  return hits[min(k, len(hits)) - 1] / report["num_keys"]


def model_record(verdict: dict[str, Any], report: dict[str, Any],
                 trained: dict[str, Any]) -> dict[str, Any]:
  """What one verified model contributes to a point (no key labels)."""
  return {"p_value": verdict["p_value"], "floor": verdict["floor"],
          "decision": bool(verdict["decision"]), "decision_k": verdict["decision_k"],
          "key_top1": key_accuracy(report, 1), "key_top5": key_accuracy(report, 5),
          "test_accuracy": trained.get("test/accuracy")}


def _stat(block: dict[str, Any] | None, field: str) -> float | None:
  return None if not block else block.get(field)


def point_record(*, scenario: str, seed: int, constraint: str, grid_db: float,
                 crafted: dict[str, Any], suspect: dict[str, Any], benign: dict[str, Any],
                 effect: dict[str, Any], cost: dict[str, Any] | None = None) -> dict[str, Any]:
  """One point of the map from the stages' summaries.

  Args:
    scenario, seed, constraint, grid_db: where the point lies in the grid.
    crafted: the craft summary (its ``quality`` block; the crafted SNRs without one).
    suspect, benign: :func:`model_record` of each model.
    effect: ``diagnostics.paired_effect`` of the suspect against the benign control.
    cost: ``jaxtag.stats.accuracy_cost`` of the suspect against it (None: not measured).

  Returns:
    A flat-ish JSON-able dict; ``snr_db_median`` (the measured per-poison median SNR) is the
    map's x-axis.
  """
  quality = crafted.get("quality") or {}
  clip = quality.get("clip_snr_db") or {"min": crafted.get("snr_db_min"),
                                         "median": crafted.get("snr_db_median")}
  finite = {k: (v if v is None or math.isfinite(v) else None) for k, v in clip.items()}
  return {
      "scenario": scenario, "seed": seed, "constraint": constraint, "grid_db": grid_db,
      "grid_field": f"craft.craft.{CONSTRAINTS[constraint]}",
      "snr_db_median": finite.get("median"), "snr_db_min": finite.get("min"),
      "dataset_snr_db": quality.get("dataset_snr_db"),
      "pesq_wb_median": _stat(quality.get("pesq_wb"), "median"),
      "stoi_median": _stat(quality.get("stoi"), "median"),
      "num_poisons": crafted.get("num_poisons"), "num_train": crafted.get("num_train"),
      "budget": crafted.get("budget"), "mask_margin_db_max": crafted.get("mask_margin_db_max"),
      "loss_initial_mean": crafted.get("loss_initial_mean"),
      "loss_final_mean": crafted.get("loss_final_mean"),
      "suspect": suspect, "benign": benign,
      "key_label_shift": {k: effect.get(k) for k in ("mean", "others", "specific", "min", "max")},
      "accuracy_cost": cost,
  }


def series(points: Sequence[dict[str, Any]]
           ) -> dict[tuple[str, str, float | None], list[dict[str, float]]]:
  """Per (constraint, scenario, budget), one entry per grid value, in order of the measured SNR: the
  median over seeds of the measured median per-poison SNR and of the suspect's p-value, and
  the mean key top-1/top-5 accuracy. Points without a measured SNR (nothing perturbed) are left
  out."""
  groups: dict[tuple[str, str, float | None], dict[float, list[dict]]] = {}
  for p in points:
    if p["snr_db_median"] is None:
      continue
    line = (p["constraint"], p["scenario"], p.get("budget"))
    groups.setdefault(line, {}).setdefault(p["grid_db"], []).append(p)
  out = {}
  for line, by_db in groups.items():
    rows = [{"grid_db": db, "snr_db": statistics.median(p["snr_db_median"] for p in ps),
             "p_value": statistics.median(p["suspect"]["p_value"] for p in ps),
             "key_top1": statistics.fmean(p["suspect"]["key_top1"] for p in ps),
             "key_top5": statistics.fmean(p["suspect"]["key_top5"] for p in ps),
             "seeds": len(ps)} for db, ps in by_db.items()]
    out[line] = sorted(rows, key=lambda r: r["snr_db"])
  return out


def plot_map(points: Sequence[dict[str, Any]], *, alpha: float, title: str = "") -> bytes:
  """The map as PNG bytes: p-value (log) and key accuracy against the measured SNR."""
  from jaxtag import plots

  markers = "osD^vP*X"
  seeds = sorted({p["seed"] for p in points})
  fig = plots.figure(figsize=(12, 4.5))
  ax_p, ax_acc = fig.subplots(1, 2, sharex=True)
  colors = plots.color_cycle()
  budgets = {p.get("budget") for p in points}
  lines = sorted(series(points).items(), key=lambda item: tuple(map(str, item[0])))
  for i, ((constraint, scenario, budget), rows) in enumerate(lines):
    color, label = colors[i % len(colors)], f"{constraint}, {scenario}"
    if len(budgets) > 1:
      label += f", {100 * budget:g}%"
    x = [r["snr_db"] for r in rows]
    ax_p.plot(x, [max(r["p_value"], 1e-300) for r in rows], color=color, lw=1.2, label=label)
    ax_acc.plot(x, [r["key_top1"] for r in rows], color=color, lw=1.2, label=f"{label}: top-1")
    ax_acc.plot(x, [r["key_top5"] for r in rows], color=color, lw=1.2, ls="--",
                label=f"{label}: top-5")
    for p in points:
      if ((p["constraint"], p["scenario"], p.get("budget")) != (constraint, scenario, budget)
          or p["snr_db_median"] is None):
        continue
      marker = markers[seeds.index(p["seed"]) % len(markers)]
      s = p["suspect"]
      ax_p.scatter(p["snr_db_median"], max(s["p_value"], 1e-300), color=color, marker=marker,
                   s=24, zorder=3)
      ax_p.scatter(p["snr_db_median"], max(p["benign"]["p_value"], 1e-300), color=color,
                   marker=marker, s=24, facecolors="none", zorder=3)
      ax_acc.scatter([p["snr_db_median"]] * 2, [s["key_top1"], s["key_top5"]], color=color,
                     marker=marker, s=24, zorder=3)
  ax_p.axhline(alpha, color="black", ls=":", lw=1, label=f"alpha {alpha:g}")
  ax_p.set(yscale="log", xlabel="measured median per-poison SNR (dB)",
           ylabel="p-value (filled: suspect, hollow: benign)", title="verification p-value")
  ax_acc.set(xlabel="measured median per-poison SNR (dB)", ylabel="fraction of keys",
             ylim=(-0.03, 1.03), title="suspect's key accuracy (solid top-1, dashed top-5)")
  if len(seeds) > 1:
    for j, seed in enumerate(seeds):
      ax_acc.scatter([], [], color="grey", marker=markers[j % len(markers)], label=f"seed {seed}")
  for ax in (ax_p, ax_acc):
    ax.legend(fontsize=7)
  fig.suptitle(title or "taggant map")
  fig.tight_layout()
  return plots.png_bytes(fig)


def format_table(points: Sequence[dict[str, Any]]) -> str:
  """The points as a text table (the budget, the suspect's verdict, the benign control's
  p-value, the key-specific key-label shift and the accuracy cost in points with its paired
  interval)."""
  lines = [f"{'scenario':<9}{'seed':>5} {'point':<15}{'budget':>7}{'SNR med':>8}{'p suspect':>11}"
           f"{'top-1':>7}{'top-5':>7}{'p benign':>10}{'specific':>9}  cost (points)"]
  for p in points:
    snr, spec = p["snr_db_median"], p["key_label_shift"]["specific"]
    cost = p.get("accuracy_cost")
    budget = p.get("budget")
    lines.append(f"{p['scenario']:<9}{p['seed']:>5} {point_name(p['constraint'], p['grid_db']):<15}"
                 f"{'n/a' if budget is None else format(100 * budget, 'g') + '%':>7}"
                 f"{'n/a' if snr is None else format(snr, '.1f'):>8}"
                 f"{p['suspect']['p_value']:>11.2e}{p['suspect']['key_top1']:>7.2f}"
                 f"{p['suspect']['key_top5']:>7.2f}{p['benign']['p_value']:>10.2e}"
                 f"{'n/a' if spec is None else format(spec, '+.3f'):>9}  "
                 + ("n/a" if not cost else f"{100 * cost['cost']:+.1f} [{100 * cost['low']:+.1f}, "
                    f"{100 * cost['high']:+.1f}]"))
  return "\n".join(lines)
