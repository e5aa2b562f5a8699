r"""Stage: make sure the dataset is on disk (synthesising the embedded corpus if needed).

  .venv/bin/python -m launch.make_corpus --config=launch/configs/corpus.py:default \
      --workdir=workdirs/corpus

Writes `<workdir>/data.json` with the dataset root and a summary of every split. The corpus is
built in a temporary folder and moved into place (`jaxtag.data.corpus.synthesize_corpus`), so an
interrupted synthesis starts over; a re-run with the same config reuses `data.json` while the
dataset is still there.
"""

from __future__ import annotations

import pathlib
from typing import Any

from launch import app

DATA_JSON = "data.json"


def run_stage(config: Any, workdir: pathlib.Path) -> dict[str, Any]:
  """Synthesises or locates the dataset, loads each split and summarises it."""
  from jaxtag.data import sources

  done = app.finished(config, workdir, DATA_JSON)
  if done is not None and done["root"] and pathlib.Path(done["root"]).is_dir():
    return done
  source = sources.DataSource(**config.data.to_dict())
  root = sources.dataset_root(source)
  summary = {"root": str(root) if root else None, "splits": {}}
  for split in ("train", "validation", "test"):
    try:
      dataset = sources.load_split(source, split, progress=False)
    except sources.DatasetError as e:
      summary["splits"][split] = {"error": str(e)}
      continue
    summary["splits"][split] = dataset.summary()
  app.write_json(workdir / DATA_JSON, summary)
  return {**summary, "reused": False}


def main(config, workdir):
  summary = run_stage(config, workdir)
  print(f"dataset root: {summary['root']}")
  for split, info in summary["splits"].items():
    print(f"  {split:>10}: {info}")


if __name__ == "__main__":
  app.run(main)
