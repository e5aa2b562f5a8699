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

from launch.configs import common, poscuda_protect


def model_config(model: str, num_epochs: int, learning_rate: float, **overrides
                 ) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      model=model, model_overrides=ml_collections.ConfigDict(overrides), num_epochs=num_epochs,
      batch_size=64, learning_rate=learning_rate, weight_decay=1e-4))


def get_config(arg: str = "default") -> ml_collections.ConfigDict:
  arg = arg or "default"
  if arg not in ("default", "tiny"):
    raise ValueError(f"launch/configs/poscuda_eval.py: unknown argument {arg!r}; use default or "
                     "tiny.")
  tiny = arg == "tiny"
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.data = common.data_config("corpus", preset="tiny" if tiny else "default")
  config.spec = poscuda_protect.spec_config()   # blur and use_positions are set per variant
  config.variants = "nopos:0.01,nopos:0.3,pos:0.01,pos:0.3"   # kind:b, Table 1 columns
  config.models = "m5,lstm,transformer"          # rows, in order
  config.recipes = ml_collections.ConfigDict(dict(
      m5=model_config("m5", 12, 1e-2, n_channel=32, first_stride=16,
                      channel_multipliers=(1, 1, 2, 2)),
      lstm=model_config("lstm", 6, 1e-2, pooling="mean"),
      transformer=model_config("transformer", 2, 1e-3),
  ))
  config.attack = ml_collections.ConfigDict(dict(
      model="m5", variant="pos:0.3",   # retrain this model on this protected variant, attacked
      modes="blur,noise",              # random blurs / Gaussian noise at random positions
      num_patches=16, noise_snr_db=20.0))
  config.fd_clips = 2000          # train clips whose embeddings enter the Fréchet distance
  config.eval_batch_size = 256
  config.num_devices = 0          # 0: every device
  config.progress = False
  if tiny:
    config.variants = "nopos:0.3,pos:0.3"
    config.recipes = ml_collections.ConfigDict(dict(
        m5=model_config("m5", 1, 1e-2, n_channel=8, first_stride=16,
                        channel_multipliers=(1, 1, 2, 2)),
        lstm=model_config("lstm", 1, 1e-2, hidden_size=16, pooling="mean"),
        transformer=model_config("transformer", 1, 1e-3, width=32, num_heads=2, mlp_dim=64),
    ))
    for recipe in config.recipes.values():
      recipe.batch_size = 8
    config.attack.modes = "blur"
    config.attack.num_patches = 2
    config.fd_clips = 64
    config.eval_batch_size = 16
  return config
