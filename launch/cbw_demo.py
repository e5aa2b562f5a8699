r"""CBW end to end on the embedded corpus: protect a speaker dataset, train on it, prove it.

  make demo-cbw
  # = .venv/bin/python -m launch.cbw_demo --config=launch/configs/cbw_demo.py \
  #       --workdir=workdirs/cbw_demo

surrogate (owner's speaker model, clean data) -> protect (clusters, triggers, secret, protected
copy) -> suspect (trained on the protected copy) + benign (same recipe and seed, clean data) ->
verify both in score and decision mode -> false positives (fresh secrets against the clean
models). Each stage has its own sub-workdir and is reused when finished, so a stopped demo
resumes; another config on the same workdir is refused. `cbw_demo.py:tiny` runs the chain on
the tiny corpus in about a minute (tests). The library entry point: `jaxtag.cbw.demo.run_cbw_demo`.
"""

from launch import app


def main(job, workdir):
  from jaxtag.cbw import demo, report
  summary = demo.run_cbw_demo(job, workdir, runtime=app.runtime())
  print(report.demo_text(summary), end="")


if __name__ == "__main__":
  from jaxtag.cbw.demo import CbwDemoJob
  app.run(main, job=CbwDemoJob)
