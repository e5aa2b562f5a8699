r"""Stage: draw the secret taggant keys for a dataset's classes and write the key file.

  .venv/bin/python -m launch.make_keys --config=launch/configs/keys.py --workdir=workdirs/keys

The key file (`<workdir>/keys.npz`, owner-only permissions, SHA-256 manifest) must stay secret and
is refused inside the dataset folder; `<workdir>/keys_wav/` holds the keys as WAV for listening.
"""

from __future__ import annotations

import pathlib
from typing import Any

from launch import app

KEY_FILE = "keys.npz"


def check_key_location(config: Any, workdir: pathlib.Path) -> None:
  """Refuses a key file inside the dataset folder (it would be published with the data)."""
  from jaxtag import keys
  from jaxtag.data import sources

  root = sources.dataset_root(sources.DataSource(**config.data.to_dict()), progress=False)
  if root is not None:
    keys.check_outside(workdir / KEY_FILE, root)


def run_stage(config: Any, workdir: pathlib.Path) -> dict[str, Any]:
  """Makes the keys from the run's `keys` stream and writes them; returns a summary."""
  import numpy as np

  from jaxtag import keys, rng
  from jaxtag.data import sources

  source = sources.DataSource(**config.data.to_dict())
  class_names = sources.class_names(source)
  spec = keys.KeySpec(**config.key_spec.to_dict())
  key = rng.stream(app.root_key(config), "keys")
  secret = keys.make_keys(key, spec, num_classes=len(class_names))
  path = workdir / KEY_FILE
  check_key_location(config, workdir)
  provenance = {"seed": int(config.seed), "stream": "keys",
                "recipe": "jaxtag.keys.make_keys(jaxtag.rng.stream(jax.random.key(seed), 'keys'), spec, C)"}
  keys.save_keys(path, secret, class_names=class_names, provenance=provenance)
  if config.export_wav:
    keys.export_keys_wav(secret, workdir / "keys_wav", class_names=class_names)
  labels = np.asarray(secret.labels)
  return {
      "key_file": str(path),
      "num_keys": int(labels.size),
      "labels": [class_names[i] for i in labels],
      "spec": spec.to_dict(),
  }


def main(config, workdir):
  summary = run_stage(config, workdir)
  print(f"key file: {summary['key_file']} ({summary['num_keys']} keys)")
  print(f"key labels: {', '.join(summary['labels'])}")


if __name__ == "__main__":
  app.run(main, preflight=check_key_location)
