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
  if mode == "score":
    t = result["t_test"]
    lines.append(f"  paired t-test over clusters: mean difference {t['mean_difference']:+.4f} "
                 f"(margin {t['margin']}), t = {t['t']:.3f}, df = {t['df']}, one-sided "
                 f"p = {result['p_value']:.3g}")
  else:
    f = result["fisher"]
    lines.append(f"  acceptance: matched {f['hits_a']}/{f['trials_a']} ({f['rate_a']:.1%}), "
                 f"unmatched {f['hits_b']}/{f['trials_b']} ({f['rate_b']:.1%}); Fisher exact "
                 f"one-sided p = {result['p_value']:.3g}")
    lines.append(f"  watermark success rate (matched trigger accepted): "
                 f"{result['watermark_success_rate']:.1%}; any trigger accepted: "
                 f"{result['any_trigger_rate']:.1%}")
  perm = result["permutation"]
  lines.append(f"  check: exact permutation p over trigger-cluster assignments = "
               f"{perm['p_value']:.3g} (floor {perm['floor']:.1g})")
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
