"""The taggant key file: save, load, reuse, audit and listen to the secret keys.

The key file is a secret archive of ``jaxtag.secrets`` of kind ``KEY_FILE`` (tag
``jaxtag-keys``): one zip with ``spectrograms.npy``, ``waveforms.npy``, ``labels.npy`` and a
manifest (spec, class names, provenance, SHA-256/dtype/shape of each array, fingerprint), written
atomically with mode 0o600 and refused inside the dataset folder. See the
``jaxtag.taggants.keys`` module docstring for what the keys are and the permission policy; the
archive's checks are in ``jaxtag.secrets``, the key-specific ones (shapes against the spec,
label range, regeneration from the provenance) here.
"""

from __future__ import annotations

import os
import pathlib
import re
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from jaxtag import secrets
from jaxtag.audio import io as audio_io
from jaxtag.taggants.keys import (ARRAY_NAMES, FORMAT_NAME, FORMAT_VERSION, KeyFileError,
                                  Keys, KeySpec, make_keys)

KEY_FILE = secrets.SecretArchiveFormat(
    name=FORMAT_NAME, version=FORMAT_VERSION, noun="key file", holds="the secret keys",
    arrays={"spectrograms": "<f4", "waveforms": "<f4", "labels": "<i4"})


def save_keys(path: str | os.PathLike, keys: Keys, *, class_names: Sequence[str],
              provenance: Mapping[str, Any], overwrite: bool = False,
              dataset_root: str | os.PathLike | None = None) -> pathlib.Path:
  """Writes the key file atomically (temporary file + os.replace), mode 0o600.

  Args:
    path: destination, e.g. ``.../keys.npz``; its directory is created (0o700) if missing.
    keys: from ``make_keys``.
    class_names: the dataset's class names; label i means class_names[i].
    provenance: what generated the keys (see ``key_provenance``); JSON-serialisable. It
      regenerates the keys, so it is as secret as they are.
    overwrite: replace an existing file. Off by default: losing the keys that a published
      dataset was crafted for loses the ability to verify it.
    dataset_root: if given, refuse any path inside it (``jaxtag.secrets.check_outside``).

  Returns:
    The path written.

  Raises:
    KeyFileError: existing file, path inside the dataset, labels out of range for class_names,
      or a provenance that is not JSON-serialisable.
  """
  arrays = KEY_FILE.host_arrays(keys)
  labels = arrays["labels"]
  if labels.size and (labels.min() < 0 or labels.max() >= len(class_names)):
    raise KeyFileError(f"Keys have labels in [{labels.min()}, {labels.max()}] but only "
                       f"{len(class_names)} class names were given for {str(path)!r}.")
  return secrets.write_secret_archive(path, KEY_FILE, arrays, spec=keys.spec.to_dict(),
                                      class_names=class_names, provenance=provenance,
                                      overwrite=overwrite, dataset_root=dataset_root)


def load_keys(path: str | os.PathLike, *, expected_class_names: Sequence[str] | None = None,
              strict_permissions: bool = False) -> tuple[Keys, dict[str, Any]]:
  """Reads a key file and checks every array against the manifest.

  Args:
    path: a file written by ``save_keys``.
    expected_class_names: the classes of the model or dataset the keys will be used with; they
      must equal the file's class names, in order.
    strict_permissions: raise instead of warn when the file is group/world accessible.

  Returns:
    (Keys with numpy arrays, manifest dict).

  Raises:
    KeyFileError: missing or unreadable file, not a key file, truncated, missing fields, an
      array whose SHA-256/dtype/shape differs from the manifest (the array is named), a
      manifest edited after writing, or class names that differ from ``expected_class_names``.
  """
  arrays, manifest = secrets.read_secret_archive(path, KEY_FILE,
                                                 expected_class_names=expected_class_names,
                                                 strict_permissions=strict_permissions)
  spec = _check_key_arrays(manifest, arrays, KEY_FILE.describe(path))
  return Keys(spec=spec, **arrays), manifest


def make_or_reuse_keys(path: str | os.PathLike, key: jax.Array, spec: KeySpec, *,
                       class_names: Sequence[str], provenance: Mapping[str, Any],
                       dataset_root: str | os.PathLike | None = None
                       ) -> tuple[Keys, dict[str, Any], bool]:
  """The keys of ``key`` and ``spec`` in the key file at ``path``: written if it is missing,
  else reused as it is (never rewritten) when it was made with this spec, these classes and
  this provenance (``jaxtag.secrets.read_matching_archive``).

  A re-run of the stage that made the key file thus gets the same keys back, and a run with
  another seed, spec or dataset is refused instead of replacing a secret that a published
  dataset may depend on.

  Args:
    path: the key file.
    key: the PRNG key that draws the keys (used only when the file is missing).
    spec: the key spec.
    class_names: the dataset's classes, in label order.
    provenance: what generated the keys (``key_provenance``); compared with the file's.
    dataset_root: if given, refuse a path inside it (``jaxtag.secrets.check_outside``).

  Returns:
    (keys, manifest, reused): ``reused`` is True when the file existed.

  Raises:
    KeyFileError: an existing file made differently (the message names the fields and the
      fix), a corrupt or modified file, or a path inside the dataset.
  """
  path = pathlib.Path(path)
  if dataset_root is not None:
    secrets.check_outside(path, [dataset_root], what=KEY_FILE.noun)
  if path.exists():
    arrays, manifest = secrets.read_matching_archive(path, KEY_FILE, spec=spec.to_dict(),
                                                     class_names=class_names,
                                                     provenance=provenance)
    return Keys(spec=_check_key_arrays(manifest, arrays, KEY_FILE.describe(path)),
                **arrays), manifest, True
  save_keys(path, make_keys(key, spec, len(class_names)), class_names=class_names,
            provenance=provenance)
  keys, manifest = load_keys(path)   # What later stages will read, checked once here.
  return keys, manifest, False


def _check_key_arrays(manifest, arrays, where):
  try:
    spec = KeySpec.from_dict(manifest["spec"])
  except (ValueError, TypeError) as e:
    raise KeyFileError(f"{where}: invalid spec in manifest: {e}") from e
  k = spec.num_keys
  shapes = {"spectrograms": (k, spec.n_frames, spec.n_mels), "waveforms": (k, spec.clip_samples),
            "labels": (k,)}
  for name, shape in shapes.items():
    if arrays[name].shape != shape:
      raise KeyFileError(f"{where}: array {name!r} has shape {arrays[name].shape}, the spec "
                         f"implies {shape}.")
  labels = arrays["labels"]
  if labels.min() < 0 or labels.max() >= manifest["num_classes"]:
    raise KeyFileError(f"{where}: labels outside [0, {manifest['num_classes']}).")
  return spec


def regenerate_and_check(keys: Keys, manifest: Mapping[str, Any], *,
                         atol: float = 1e-4) -> dict[str, str]:
  """Audits a key file: re-runs make_keys from the recorded provenance and compares arrays.

  Args:
    keys, manifest: as returned by ``load_keys`` (provenance made with ``key_provenance``).
    atol: max abs difference tolerated in the float arrays when their bits differ (another
      backend or XLA version rounds Griffin-Lim differently; the random draws never change).

  Returns:
    {array name: "identical" or "close (max abs diff ...)"}.

  Raises:
    KeyFileError: provenance lacking the key data, or regenerated arrays that do not match.
  """
  prov = manifest.get("provenance", {})
  if "key_data" not in prov or "key_impl" not in prov:
    raise KeyFileError("Manifest provenance has no key_data/key_impl (not made with "
                       "key_provenance): the keys cannot be regenerated.")
  flag = bool(jax.config.jax_threefry_partitionable)
  if prov.get("threefry_partitionable", flag) != flag:
    raise KeyFileError(f"These keys were drawn with jax_threefry_partitionable="
                       f"{prov['threefry_partitionable']}; set it so to regenerate them.")
  key = secrets.provenance_key(prov)
  regenerated = KEY_FILE.host_arrays(make_keys(key, keys.spec, int(manifest["num_classes"])))
  stored = KEY_FILE.host_arrays(keys)
  report = {}
  for name in ARRAY_NAMES:
    new, old = regenerated[name], stored[name]
    if new.shape == old.shape and np.array_equal(new, old):
      report[name] = "identical"
      continue
    diff = float(np.max(np.abs(new.astype(np.float64) - old))) if new.shape == old.shape else None
    if name == "labels" or diff is None or not diff <= atol:
      raise KeyFileError(f"Regenerated {name!r} differ from the key file's (max abs diff "
                         f"{diff}): the provenance does not reproduce these keys.")
    report[name] = f"close (max abs diff {diff:.3g})"
  return report


def export_keys_wav(keys: Keys, directory: str | os.PathLike, *,
                    class_names: Sequence[str] | None = None) -> list[pathlib.Path]:
  """Writes each key as a 16-bit WAV for listening, mode 0o600 (they are as secret as the file).

  Files are named ``key{index:02d}_label{label}[_{class name}].wav``. soundfile writes into a
  file that ``mkstemp`` created 0o600, then os.replace: the audio is never readable by others.

  Args:
    keys: the keys.
    directory: output directory, created 0o700 if missing. Never inside the dataset.
    class_names: optional names for the labels, used in the file names.

  Returns:
    The paths written, in key order.
  """
  import soundfile  # pylint: disable=import-outside-toplevel  (host-side only)
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True, mode=secrets.DIR_MODE)
  arrays = KEY_FILE.host_arrays(keys)
  waveforms, labels = arrays["waveforms"], arrays["labels"]
  paths = []
  for i, (audio, label) in enumerate(zip(waveforms, labels)):
    name = f"key{i:02d}_label{int(label)}"
    if class_names is not None:
      name += "_" + re.sub(r"[^A-Za-z0-9._-]+", "-", str(class_names[int(label)])).strip("-.")
    path = directory / f"{name}.wav"
    with audio_io.atomic_file(path, "wb", permissions=secrets.FILE_MODE, fsync=True) as f:
      soundfile.write(f, audio, keys.spec.sample_rate, subtype="PCM_16", format="WAV")
    paths.append(path)
  return paths
