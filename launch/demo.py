r"""The README's main command: runs every pipeline stage on the embedded corpus and summarises.

  make demo
  # = .venv/bin/python -m launch.demo --config=launch/configs/demo.py --workdir=workdirs/demo

corpus -> keys -> [backbone] -> surrogate -> craft -> suspect (protected data) + benign (clean
data) -> verify. In the default `finetune` scenario a public backbone is trained first on another
draw of the corpus and every model fine-tunes it; `demo.py:default,scratch` trains from scratch.
Each stage writes its own sub-workdir and is the same code as its own launcher, so a stage can be
re-run alone. Re-running the demo on the same workdir, after an interruption or a finished run,
continues where it stopped: a finished stage is reused (its summary is written last), training
and crafting resume from their checkpoints, the key file is reused untouched, and another config
is refused. A `[demo] stage <name>: start` / `: done (ran|reused)` line marks each stage.
The library entry points: `jaxtag.taggants.demo.run_demo` and `demo_text`.
"""

from launch import app


def main(job, workdir):
  from jaxtag.taggants import demo
  report = demo.run_demo(job, workdir, runtime=app.runtime())
  print(demo.demo_text(job, report, workdir))


if __name__ == "__main__":
  from jaxtag.taggants.demo import DemoJob
  app.run(main, job=DemoJob)
