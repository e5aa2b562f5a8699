"""CBW verification reports: a text verdict and a plot of matched against unmatched answers.

The verification record holds the suspect's answers to the secret's triggers; nothing here is
secret beyond what the record says, but the report is owner-only like the record's inputs.
"""

from __future__ import annotations

import pathlib
from typing import Any

import numpy as np

TEXT = "cbw_verify.txt"
PLOT = "cbw_verify.png"


def verify_text(result: dict[str, Any]) -> str:
  """The verdict and its numbers, one fact per line."""
  mode = result["mode"]
  lines = [f"CBW verification of {result.get('suspect', 'the suspect')} ({mode} mode)",
           f"  enrolled held-out speakers: {result['num_speakers']} in "
           f"{result['clusters_with_speakers']} of {result['num_clusters']} clusters",
           f"  mean answer, matched trigger:   {result['matched_mean']:.4f}",
           f"  mean answer, unmatched triggers: {result['unmatched_mean']:.4f}"]
  perm = result["permutation"]
  lines.append(f"  permutation test over trigger-cluster assignments (decides): one-sided "
               f"p = {result['p_value']:.3g} (floor {perm['floor']:.1g}, "
               f"{perm['num_permutations']} {'assignments' if perm['exact'] else 'draws'})")
  if mode == "score":
    t = result["t_test"]
    if t.get("untestable"):
      lines.append(f"  seed-style paired t-test over clusters: untestable ({t['untestable']})")
    else:
      lines.append(f"  seed-style paired t-test over clusters (reported, not deciding): mean "
                   f"difference {t['mean_difference']:+.4f} (margin {t['margin']}), "
                   f"t = {t['t']:.3f}, df = {t['df']}, one-sided p = {t['p_value']:.3g}")
  else:
    f = result["fisher"]
    lines.append(f"  acceptance: matched {f['hits_a']}/{f['trials_a']} ({f['rate_a']:.1%}), "
                 f"unmatched {f['hits_b']}/{f['trials_b']} ({f['rate_b']:.1%}); seed-style "
                 f"Fisher exact p = {f['p_value']:.3g} (reported, not deciding)")
    lines.append(f"  watermark success rate (matched trigger accepted): "
                 f"{result['watermark_success_rate']:.1%}; any trigger accepted: "
                 f"{result['any_trigger_rate']:.1%}")
  if mode == "decision" and result.get("threshold_source"):
    value = result.get("threshold")
    lines.append(f"  the verifier's threshold: {result['threshold_source']}"
                 + (f", cosine {value:.4f}" if value is not None else ""))
  verdict = "TRAINED ON THE PROTECTED DATA" if result["detected"] else "not detected"
  lines.append(f"  verdict at alpha = {result['alpha']}: {verdict}")
  return "\n".join(lines) + "\n"


def verify_figure(result: dict[str, Any]):
  """Per cluster: the matched trigger's mean answer against the unmatched triggers' mean."""
  from jaxtag import plots
  per = result["per_cluster"]
  fig = plots.figure(figsize=(6.5, 4))
  ax = fig.subplots()
  x = np.arange(len(per["cluster"]))
  ax.plot(x, per["unmatched"], "o", color="0.55", label="unmatched triggers (mean)")
  ax.plot(x, per["matched"], "o", color="C3", label="the cluster's own trigger")
  for i in x:
    ax.plot([i, i], [per["unmatched"][i], per["matched"][i]], color="0.8", zorder=0)
  ax.set_xticks(x, [str(c) for c in per["cluster"]], fontsize=7)
  ax.set_xlabel("cluster (enrolled held-out speakers)")
  ax.set_ylabel("cosine score" if result["mode"] == "score" else "acceptance rate")
  ax.set_title(f"CBW {result['mode']} mode: p = {result['p_value']:.3g}", fontsize=10)
  ax.legend(fontsize=8)
  fig.tight_layout()
  return fig


def write_verify_report(workdir: str | pathlib.Path, result: dict[str, Any]) -> None:
  """Writes the text and the plot (owner-only) into ``workdir``."""
  from jaxtag import plots, secrets
  workdir = pathlib.Path(workdir)
  secrets.write_text(workdir / TEXT, verify_text(result))
  secrets.write_bytes(workdir / PLOT, plots.png_bytes(verify_figure(result)))


def demo_text(summary: dict[str, Any]) -> str:
  """The demo's headline numbers."""
  eer, p = summary["eer"], summary["p_value"]
  fp = summary["false_positives"]
  lines = ["CBW demo: a speaker verifier trained on the protected data, and a clean one",
           f"  EER on unseen speakers: protected (suspect) {eer['suspect']:.2%}, clean "
           f"(benign, same seed) {eer['benign']:.2%}, clean (surrogate, another seed) "
           f"{eer['surrogate']:.2%}; cost {summary['eer_cost_points']:+.2f} points, paired (the "
           f"two clean seeds differ by {summary['eer_clean_seed_spread_points']:.2f}; "
           "benchmarks/cbw_seeds.py gives the cost over seeds)",
           f"  watermark: {summary['num_clusters']} clusters, {summary['triggered']} triggered "
           f"utterances ({summary['triggered_fraction']:.1%}), trigger "
           f"{summary['trigger']['mode']} at {summary['trigger']['level_dbfs']} dBFS; "
           f"SNR median {summary['trigger_snr_db_median']} dB, PESQ median "
           f"{summary['trigger_pesq_median']}",
           f"  watermark success rate (own trigger accepted): suspect "
           f"{summary['watermark_success_rate']['suspect']:.1%}, benign "
           f"{summary['watermark_success_rate']['benign']:.1%}"]
  for key in sorted(p):
    verdict = "detected" if summary["detected"][key] else "not detected"
    seed = "t-test" if key.endswith("score") else "Fisher"
    lines.append(f"  {key:18s} p = {p[key]:.3g} (permutation)  {verdict} at alpha "
                 f"{summary['alpha']}  [seed-style {seed} p = {summary['seed_style_p'][key]:.3g}]")
  for mode in ("score", "decision"):
    entry = fp.get(f"{mode}/p_value")
    if entry:
      a = entry["alpha=0.05"]
      lines.append(f"  false positives ({mode}): {a['rejections']}/{entry['tests']} clean tests "
                   f"rejected at 0.05 (rate {a['rate']:.3f}, 95% CI [{a['interval95'][0]:.3f}, "
                   f"{a['interval95'][1]:.3f}]) over {fp['draws']} fresh secrets")
  lines.append("  wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in
                                           summary["seconds"].items()))
  return "\n".join(lines) + "\n"


def demo_figure(verdicts: dict[str, dict[str, Any]], null_p: dict[str, list[float]]):
  """Left: per-cluster own-trigger vs other-trigger scores of suspect and benign (score mode).
  Right: the clean models' p-values over fresh secrets against the uniform line."""
  from jaxtag import plots
  fig = plots.figure(figsize=(11, 4))
  left, right = fig.subplots(1, 2)
  for name, colour in (("suspect", "C3"), ("benign", "C0")):
    per = verdicts[f"{name}/score"]["per_cluster"]
    diff = np.asarray(per["matched"]) - np.asarray(per["unmatched"])
    left.plot(np.arange(len(diff)), diff, "o-", color=colour,
              label=f"{name} (p = {verdicts[f'{name}/score']['p_value']:.2g})")
  left.axhline(0, color="0.6", lw=0.8)
  left.set_xlabel("cluster")
  left.set_ylabel("own trigger minus other triggers (cosine)")
  left.set_title("score mode, per cluster", fontsize=10)
  left.legend(fontsize=8)
  for mode, colour in (("score", "C2"), ("decision", "C1")):
    p = np.sort(np.asarray(null_p.get(mode, []), float))
    if p.size:
      right.step(p, np.arange(1, p.size + 1) / p.size, where="post", color=colour,
                 label=f"{mode} ({p.size} clean tests)")
  right.plot([0, 1], [0, 1], color="0.6", lw=0.8, ls="--", label="uniform (valid test)")
  right.set_xlabel("p-value")
  right.set_ylabel("fraction of clean tests <= p")
  right.set_title("clean models, fresh secrets", fontsize=10)
  right.legend(fontsize=8)
  fig.tight_layout()
  return fig


def write_demo_report(workdir: str | pathlib.Path, summary: dict[str, Any],
                      verdicts: dict[str, dict[str, Any]], *,
                      false_positives_records: str | pathlib.Path) -> None:
  """``cbw_demo.txt`` and ``cbw_demo.png`` in ``workdir``."""
  import json

  from jaxtag import plots
  from jaxtag.audio import io as audio_io
  workdir = pathlib.Path(workdir)
  null_p: dict[str, list[float]] = {}
  for line in pathlib.Path(false_positives_records).read_text().splitlines():
    for key, value in json.loads(line)["results"].items():
      null_p.setdefault(key.split("/", 1)[1], []).append(value["p_value"])
  audio_io.write_text_atomic(workdir / "cbw_demo.txt", demo_text(summary))
  audio_io.write_bytes_atomic(workdir / "cbw_demo.png",
                              plots.png_bytes(demo_figure(verdicts, null_p)))
