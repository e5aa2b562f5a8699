r"""Stage: draw the secret taggant keys for a dataset's classes and write the key file.

  .venv/bin/python -m launch.make_keys --config=launch/configs/keys.py --workdir=workdirs/keys

The key file (`<workdir>/keys.npz`, owner-only permissions, SHA-256 manifest) must stay secret and
is refused inside the dataset folder; `<workdir>/keys_wav/` holds the keys as WAV for listening.
A re-run reuses the key file, untouched, when its manifest records this run's spec, seed and
classes, and refuses it otherwise: a key file is never overwritten.
"""

from __future__ import annotations

import pathlib
from typing import Any

from launch import app

KEY_FILE = "keys.npz"


def check_key_location(config: Any, workdir: pathlib.Path) -> None:
  """Refuses a key file inside the dataset folder (it would be published with the data)."""
  from jaxtag import secrets
  from jaxtag.data import sources

  root = sources.dataset_root(sources.DataSource(**config.data.to_dict()), progress=False)
  if root is not None:
    secrets.check_outside(workdir / KEY_FILE, [root], what="key file")


def run_stage(config: Any, workdir: pathlib.Path) -> dict[str, Any]:
  """Makes the keys from the run's `keys` stream and writes them; returns a summary."""
  import numpy as np

  from jaxtag import rng, secrets
  from jaxtag.taggants import keyfile, keys
  from jaxtag.data import sources

  source = sources.DataSource(**config.data.to_dict())
  class_names = sources.class_names(source)
  spec = keys.KeySpec(**config.key_spec.to_dict())
  key = rng.stream(app.root_key(config), "keys")
  path = workdir / KEY_FILE
  check_key_location(config, workdir)
  secrets.private_dir(workdir)
  if path.exists():   # a re-run reuses it: it must still be private
    app.check_secret_input(path, "key file")
  provenance = {"seed": int(config.seed), "stream": "keys",
                "recipe": "jaxtag.keys.make_keys(jaxtag.rng.stream(jax.random.key(seed), 'keys'), spec, C)"}
  secret, _, reused = keyfile.make_or_reuse_keys(path, key, spec, class_names=class_names,
                                                 provenance=provenance)
  wav_dir = workdir / "keys_wav"
  exported = reused and len(list(wav_dir.glob("*.wav"))) == spec.num_keys
  if config.export_wav and not exported:   # Atomic per file: a killed export is redone whole.
    keyfile.export_keys_wav(secret, wav_dir, class_names=class_names)
  labels = np.asarray(secret.labels)
  return {
      "key_file": str(path),
      "num_keys": int(labels.size),
      "labels": [class_names[i] for i in labels],
      "spec": spec.to_dict(), "reused": reused,
  }


def main(config, workdir):
  summary = run_stage(config, workdir)
  print(f"key file: {summary['key_file']} ({summary['num_keys']} keys"
        f"{', reused: made by an earlier run' if summary['reused'] else ''})")
  print(f"key labels: {', '.join(summary['labels'])}")


if __name__ == "__main__":
  app.run(main, preflight=check_key_location)
