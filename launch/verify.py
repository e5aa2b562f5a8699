r"""Stage: verify a suspect model (workdir or HTTP endpoint) against the secret key file.

  .venv/bin/python -m launch.verify --config=launch/configs/verify.py \
      --config.target=workdirs/suspect --config.key_file=workdirs/keys/keys.npz \
      --workdir=workdirs/verify

Queries the black box once with every key and writes `<workdir>/verify_report.json`,
`verify_report.txt` and `verify_report.png`, then `verify_summary.json`; prints the text report.
The workdir is owner-only (0700) and so is every report (0600): they name the keys' labels. A key
file that others can read is refused (`--allow_readable_secrets` accepts it).
A re-run with the same config reuses the finished verification (the black box is not queried
again; use a new workdir to verify anew).
"""

from __future__ import annotations

import pathlib
from typing import Any

from launch import app

REPORT_STEM = "verify_report"
SUMMARY = "verify_summary.json"   # written after the reports: the verification finished


def verify_target(target: str, key_file: str, *, max_k: int, decision_k: int, alpha: float):
  """Opens the black box at ``target``, loads ``key_file`` and verifies; returns the report."""
  from jaxtag.taggants import blackbox, keyfile, verify

  app.check_secret_input(key_file, "key file")
  secret, manifest = keyfile.load_keys(key_file)
  box = blackbox.open_blackbox(target)
  return verify.verify(box, secret, max_k=max_k, decision_k=decision_k, alpha=alpha,
                       class_names=manifest["class_names"], target=str(target),
                       fingerprint=manifest["fingerprint"])


def write_report(report, workdir: pathlib.Path) -> dict[str, str]:
  """Writes the report as JSON, text and PNG into ``workdir``, owner-only (they name the keys'
  labels and the suspect's answers); returns their paths."""
  from jaxtag import secrets
  from jaxtag.taggants import verify

  paths = {ext: workdir / f"{REPORT_STEM}.{ext}" for ext in ("json", "txt", "png")}
  app.write_json(paths["json"], report.to_json(), secret=True)
  secrets.write_text(paths["txt"], report.to_text())
  verify.plot_report(report, paths["png"])
  return {ext: str(path) for ext, path in paths.items()}


def run_stage(config: Any, workdir: pathlib.Path) -> dict[str, Any]:
  """Verifies ``config.target`` against ``config.key_file``; returns a summary (a finished
  verification of the same config is reused: ``reused`` in the summary)."""
  from jaxtag import secrets

  done = app.finished(config, workdir, SUMMARY)
  if done is not None:
    return done
  secrets.private_dir(workdir)
  report = verify_target(config.target, config.key_file, max_k=config.max_k,
                         decision_k=config.decision_k, alpha=config.alpha)
  paths = write_report(report, workdir)
  summary = {"target": report.target, "decision": report.decision, "p_value": report.p_value,
             "floor": report.floor, "answer_floor": report.answer_floor,
             "method": report.method, "decision_k": report.decision_k,
             "hits": report.decision_hits, "num_keys": report.num_keys,
             "holm_min_p_value": report.holm_min_p_value, "report": paths,
             "text": report.to_text()}
  app.write_json(workdir / SUMMARY, summary, secret=True)
  return {**summary, "reused": False}


def main(config, workdir):
  summary = run_stage(config, workdir)
  print(summary["text"], end="")
  print(f"report: {summary['report']['txt']} (json, png beside it)")


if __name__ == "__main__":
  app.run(main)
