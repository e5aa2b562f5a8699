r"""Evaluate PosCUDA: Table 1 of the paper (M5, LSTM, Transformer; clean vs protected training).

  nice -n 15 .venv/bin/python -m launch.poscuda_eval --config=launch/configs/poscuda_eval.py \
      --workdir=workdirs/poscuda_eval
  .venv/bin/python -m launch.poscuda_eval --config=launch/configs/poscuda_eval.py:tiny \
      --workdir=/tmp/poscuda_eval_tiny

Trains each model on the clean train split and on every protected variant (`variants`:
`pos` = PosCUDA, `nopos` = the whole clip filtered, each at a blur b), tests on the clean test
split and on the test split with the class filters applied, measures SNR and a Fréchet distance
between embeddings of clean and protected train clips (from the clean-trained models: jaxtag
trains them itself, pretrained PANN weights cannot be downloaded), and retrains M5 on the
protected set after an attacker's random patches. Writes `poscuda_eval.json`,
`poscuda_eval.txt` and `poscuda_eval.png` (the tables as bars). Finished runs under
`<workdir>/runs/` are reused when rerun.
`tiny`: the tiny corpus and tiny models, one epoch each (seconds; for tests).

Recipes (measured on the 2-core CPU VM, see benchmarks/RESULTS.md): no augmentation, AdamW with
no warm-up and cosine decay, batch 64; M5 (PyTorch-tutorial width: 32 channels, stride 16)
lr 1e-2 (the paper's), 12 epochs; LSTM lr 1e-2 with mean pooling over frames (the last hidden
state generalised poorly: 14% test after 6 epochs at lr 3e-3, 27% at 1e-2, 81% with mean
pooling), 6 epochs; Transformer lr 1e-3, 2 epochs. Epochs are cut to fit CPU time (the paper
trains 100).
"""

import ml_collections

from launch.configs import common



def get_config(arg: str = "default") -> ml_collections.ConfigDict:
  """Every field of jaxtag.poscuda.jobs.EvalJob (defaults and meaning there; the default recipes
  are ``jaxtag.poscuda.jobs.default_recipes``); ``tiny``: seconds-long, for tests."""
  from jaxtag.poscuda import jobs

  arg = arg or "default"
  if arg not in ("default", "tiny"):
    raise ValueError(f"launch/configs/poscuda_eval.py: unknown argument {arg!r}; use default or "
                     "tiny.")
  config = common.to_config(jobs.EvalJob)
  if arg == "tiny":
    config.data.preset = "tiny"
    config.variants = "nopos:0.3,pos:0.3"
    config.recipes.m5.model_overrides.n_channel = 8
    config.recipes.lstm.model_overrides.hidden_size = 16
    config.recipes.transformer.model_overrides = ml_collections.ConfigDict(
        dict(width=32, num_heads=2, mlp_dim=64))
    for recipe in config.recipes.values():
      recipe.num_epochs = 1
      recipe.batch_size = 8
    config.attack.modes = "blur"
    config.attack.num_patches = 2
    config.fd_clips = 64
    config.eval_batch_size = 16
  return config
