"""The corpus stage: make sure a dataset is on disk and summarise its splits.

``launch/make_corpus.py`` is a thin main over :func:`run_corpus_job`; the demo calls it too.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any

from jaxtag import workdir as workdir_lib
from jaxtag.data import sources

DATA_JSON = "data.json"


@dataclasses.dataclass(frozen=True)
class CorpusJob:
  """Locate (or synthesise, for the embedded corpus) a dataset.

  Attributes:
    seed: unused (the corpus has its own ``data.corpus_seed``); kept so every stage has one.
    data: the dataset source.
  """

  seed: int = 0
  data: sources.DataSource = dataclasses.field(default_factory=sources.DataSource)


def run_corpus_job(job: CorpusJob, workdir: str | os.PathLike) -> dict[str, Any]:
  """Synthesises or locates the dataset, loads each split and writes ``data.json`` (its root and
  a summary per split); a re-run reuses it while the dataset is still there."""
  workdir = pathlib.Path(workdir)
  workdir_lib.record(job, workdir)
  done = workdir_lib.finished(job, workdir, DATA_JSON)
  if done is not None and done["root"] and pathlib.Path(done["root"]).is_dir():
    return done
  root = sources.dataset_root(job.data)
  summary = {"root": str(root) if root else None, "splits": {}}
  for split in ("train", "validation", "test"):
    try:
      dataset = sources.load_split(job.data, split, progress=False)
    except sources.DatasetError as e:
      summary["splits"][split] = {"error": str(e)}
      continue
    summary["splits"][split] = dataset.summary()
  workdir_lib.write_json(workdir / DATA_JSON, summary)
  return {**summary, "reused": False}
