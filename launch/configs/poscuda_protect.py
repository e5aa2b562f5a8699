r"""Protect a dataset's train split with PosCUDA (class-wise positional blurs) and publish it.

  .venv/bin/python -m launch.poscuda_protect --config=launch/configs/poscuda_protect.py \
      --workdir=workdirs/poscuda_secret --config.output_root=workdirs/corpus_poscuda

Writes the protected dataset to `output_root` in the source's layout (train protected,
validation and test copied clean) and the secret file `<workdir>/poscuda.npz` (owner-only,
refused inside either dataset folder). The argument is the corpus preset (default `default`);
point `data.kind/root` at a SpeechCommands or ESC-50 folder to protect it instead.
"""

import ml_collections

from launch.configs import common


def spec_config(blur: float = 0.3, use_positions: bool = True) -> ml_collections.ConfigDict:
  """Mirrors jaxtag.poscuda.PoscudaSpec (sample_rate and clip_samples come from the data)."""
  return ml_collections.ConfigDict(dict(
      num_taps=80,            # k, counted at 16 kHz (scaled with the sample rate)
      blur=blur,              # b: taps ~ U(0, b)
      patch_samples=240,      # p, counted at 16 kHz
      use_positions=use_positions,
      center_tap=0.0,         # CUDA's centre parameter (0: off)
      normalisation="none",   # none | sum | l2 (see the jaxtag.poscuda docstring)
      positions="anywhere",   # anywhere | active: starts only where the clips carry sound
      #                         (measured worse on the default corpus: jaxtag.poscuda docstring)
      active_level=0.5,       # "active": starts covering >= this fraction of the peak energy
  ))


def get_config(arg: str = "default") -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.data = common.data_config("corpus", preset=arg or "default")
  config.spec = spec_config()
  config.output_root = ml_collections.FieldReference(None, field_type=str)  # required
  # replace an output_root that another run published (never a folder jaxtag did not publish),
  # and a secret file of another recipe
  config.overwrite = False
  # copy the input's other files (README, metadata, _background_noise_/) verbatim
  config.copy_extra_files = True
  config.batch_size = 256      # clips per jitted protection call
  config.progress = False
  return config
