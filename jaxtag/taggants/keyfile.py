"""Secret archives (the taggant key file, PosCUDA's secret file) and the key file's functions.

A secret archive is ONE zip (stored, not compressed; ``numpy.load`` reads its arrays) holding
``{name}.npy`` for each of its arrays and a ``manifest.json``: its kind (``format``,
``format_version``), creation time, library versions, spec, class names, provenance, the
SHA-256/dtype/shape of every array, and a ``fingerprint`` over spec, class names and arrays.
``write_secret_archive`` writes it atomically with mode 0o600 and refuses a path inside the
dataset; ``read_secret_archive`` refuses another kind of archive and re-hashes everything.
``SecretArchiveFormat`` says which kind a module writes: ``KEY_FILE`` here, and
``jaxtag.poscuda.SECRET_FILE``.

See the ``jaxtag.keys`` module docstring for the key file and the permission policy. The key
file's functions here are re-exported by ``jaxtag.keys``.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import io
import json
import os
import pathlib
import re
import sys
import warnings
import zipfile
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxtag import secrets
from jaxtag.audio import io as audio_io
from jaxtag.keys import (ARRAY_NAMES, FORMAT_NAME, FORMAT_VERSION, KeyFileError,
                         KeyFilePermissionWarning, Keys, KeySpec, make_keys)

_MANIFEST_MEMBER = "manifest.json"
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # Fixed member dates: identical content gives identical bytes.
_REQUIRED_FIELDS = ("created", "versions", "spec", "num_classes", "class_names", "provenance",
                    "arrays", "fingerprint")


@dataclasses.dataclass(frozen=True)
class SecretArchiveFormat:
  """One kind of secret archive: its manifest tag, its arrays, and how messages name it.

  Attributes:
    name: the manifest's ``format`` tag, e.g. ``"jaxtag-keys"``; an archive with another tag
      is refused, so one kind of secret is never read as another.
    version: the manifest's ``format_version``; only this version is read.
    arrays: {array name: dtype} in member order; every array is stored with its dtype.
    noun: how messages name such a file, e.g. ``"key file"``.
    holds: what the file's reader learns, for the permission warning, e.g. ``"the secret keys"``.
  """
  name: str
  version: int
  arrays: Mapping[str, str]
  noun: str
  holds: str

  def describe(self, path: str | os.PathLike) -> str:
    """How messages name the file at ``path``, e.g. ``key file '/keys/keys.npz'``."""
    return f"{self.noun} {str(path)!r}"

  def host_arrays(self, source: Any) -> dict[str, np.ndarray]:
    """The archive's arrays of ``source`` (a mapping, or an object with those attributes) as
    contiguous numpy arrays of the archive's dtypes."""
    get = source.__getitem__ if isinstance(source, Mapping) else lambda n: getattr(source, n)
    return {name: np.ascontiguousarray(np.asarray(get(name)), np.dtype(dtype))
            for name, dtype in self.arrays.items()}


KEY_FILE = SecretArchiveFormat(
    name=FORMAT_NAME, version=FORMAT_VERSION, noun="key file", holds="the secret keys",
    arrays={"spectrograms": "<f4", "waveforms": "<f4", "labels": "<i4"})


def check_outside(path: str | os.PathLike, dataset_root: str | os.PathLike) -> None:
  """Raises KeyFileError if ``path`` lies inside ``dataset_root`` (symlinks resolved).

  Keys inside the published dataset would be published with it, and then anyone could fake
  or dodge a verification.
  """
  if secrets.is_inside(path, dataset_root):
    raise KeyFileError(f"Refusing key path {str(path)!r}: it is inside the dataset directory "
                       f"{str(dataset_root)!r}, which will be published. Keep the keys elsewhere.")


# --- secret archives ---------------------------------------------------------------------------


def write_secret_archive(path: str | os.PathLike, fmt: SecretArchiveFormat,
                         arrays: Mapping[str, Any], *, spec: Mapping[str, Any],
                         class_names: Sequence[str], provenance: Mapping[str, Any],
                         overwrite: bool = False,
                         dataset_root: str | os.PathLike | None = None) -> pathlib.Path:
  """Writes a secret archive atomically (temporary file + os.replace), mode 0o600.

  Args:
    path: destination; its directory is created (0o700) if missing.
    fmt: the kind of archive, which names and types its arrays.
    arrays: {name: array} for every array of ``fmt`` (converted to its dtype).
    spec: the JSON-serialisable spec that made the arrays.
    class_names: the dataset's class names, in label order.
    provenance: what generated the arrays; JSON-serialisable and as secret as they are.
    overwrite: replace an existing file. Off by default: losing the secret of a published
      dataset loses the ability to verify or undo its protection.
    dataset_root: if given, refuse any path inside it (``check_outside``).

  Returns:
    The path written.

  Raises:
    KeyFileError: existing file, path inside the dataset, or a spec or provenance that is not
      JSON-serialisable.
  """
  path = pathlib.Path(path)
  if dataset_root is not None:
    check_outside(path, dataset_root)
  if path.exists() and not overwrite:
    raise KeyFileError(f"{fmt.describe(path)} already exists; pass overwrite=True only if "
                       f"{fmt.holds} it holds are no longer needed.")
  arrays = fmt.host_arrays(arrays)
  class_names = [str(c) for c in class_names]
  manifest = {
      "format": fmt.name, "format_version": fmt.version,
      "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "versions": _versions(), "spec": dict(spec), "num_classes": len(class_names),
      "class_names": class_names, "provenance": dict(provenance),
      "arrays": {name: _array_record(array) for name, array in arrays.items()},
  }
  manifest["fingerprint"] = _fingerprint(manifest)
  try:
    manifest_bytes = json.dumps(manifest, indent=2, sort_keys=True, allow_nan=False).encode()
  except (TypeError, ValueError) as e:
    raise KeyFileError(f"provenance for {str(path)!r} is not JSON-serialisable: {e}") from e
  if not path.parent.exists():
    path.parent.mkdir(parents=True, mode=0o700)
  members = {_MANIFEST_MEMBER: manifest_bytes}
  for name, array in arrays.items():
    buf = io.BytesIO()
    np.lib.format.write_array(buf, array, allow_pickle=False)
    members[f"{name}.npy"] = buf.getvalue()
  _atomic_write(path, lambda f: _write_zip(f, members))
  return path


def read_secret_archive(path: str | os.PathLike, fmt: SecretArchiveFormat, *,
                        expected_class_names: Sequence[str] | None = None,
                        strict_permissions: bool = False
                        ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """Reads a secret archive and checks its kind, every array and the manifest's fingerprint.

  What the arrays mean (their shapes against the spec, their value ranges) is for the caller
  to check; ``fmt.describe(path)`` names the file in its messages.

  Args:
    path: a file written by ``write_secret_archive`` with the same ``fmt``.
    fmt: the kind of archive expected; an archive of another kind is refused.
    expected_class_names: the classes of the model or dataset the secret will be used with;
      they must equal the file's class names, in order.
    strict_permissions: raise instead of warn when the file is group/world accessible.

  Returns:
    ({array name: numpy array}, manifest dict).

  Raises:
    KeyFileError: missing or unreadable file, not a zip, another kind or version of archive,
      missing fields, an array whose SHA-256/dtype/shape differs from the manifest (the array
      is named), a manifest edited after writing, class names that disagree with
      ``num_classes`` or differ from ``expected_class_names``.
  """
  path = pathlib.Path(path)
  where = fmt.describe(path)
  try:
    mode = os.stat(path).st_mode
  except OSError as e:
    raise KeyFileError(f"Cannot read {where}: {e.strerror}.") from e
  if mode & 0o077:
    msg = (f"{where} has mode {oct(mode & 0o777)}: users other than its owner can read "
           f"{fmt.holds}. Run `chmod 600 {path}`.")
    if strict_permissions:
      raise KeyFileError(msg)
    warnings.warn(msg, KeyFilePermissionWarning, stacklevel=3)  # The loader's caller.
  try:
    with zipfile.ZipFile(path) as zf:
      manifest = _read_manifest(zf, fmt, where)
      arrays = {name: _read_array(zf, name, manifest, where) for name in fmt.arrays}
  except (zipfile.BadZipFile, EOFError, OSError) as e:
    raise KeyFileError(f"{where} is not a readable jaxtag {fmt.noun} (not a readable zip "
                       f"archive: {e}). It may be truncated or another file; restore it from "
                       "your backup.") from e
  if manifest["fingerprint"] != _fingerprint(manifest):
    raise KeyFileError(f"{where}: manifest was modified after writing (fingerprint mismatch).")
  num_classes, names = manifest["num_classes"], manifest["class_names"]
  if not isinstance(names, list) or not isinstance(num_classes, int) or (
      len(names) != num_classes):
    raise KeyFileError(f"{where}: class_names {names!r} do not match num_classes "
                       f"{num_classes!r}.")
  if expected_class_names is not None:
    _compare_class_names(names, list(expected_class_names), where)
  return arrays, manifest


def read_matching_archive(path: str | os.PathLike, fmt: SecretArchiveFormat, *,
                          spec: Mapping[str, Any], class_names: Sequence[str],
                          provenance: Mapping[str, Any]
                          ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """Reads an existing secret archive that must have been made by the same recipe.

  For re-running a stage that writes a secret: the file is reused, never rewritten, when its
  manifest records this ``spec``, these ``class_names`` (in order) and this ``provenance``
  (what generated the secret: the same provenance and spec give the same arrays), and refused
  otherwise. The file is only read.

  Args:
    path: the existing archive.
    fmt: its kind.
    spec, class_names, provenance: what this run would write (as for ``write_secret_archive``).

  Returns:
    ({array name: numpy array}, manifest), as ``read_secret_archive``.

  Raises:
    KeyFileError: an unreadable or modified file (``read_secret_archive``), or one made with
      another spec, classes or provenance; the message names the file, the fields that differ
      (provenance values are not shown: they are as secret as the arrays) and the fix.
  """
  arrays, manifest = read_secret_archive(path, fmt)
  want = _json_plain({"spec": dict(spec), "class_names": [str(c) for c in class_names],
                      "provenance": dict(provenance)})
  mismatched = _changed_fields("spec", manifest["spec"], want["spec"])
  if manifest["class_names"] != want["class_names"]:
    mismatched.append(f"class_names (file {manifest['class_names']}, this run "
                      f"{want['class_names']})")
  mismatched += _changed_fields("provenance", manifest["provenance"], want["provenance"])
  if mismatched:
    raise KeyFileError(
        f"{fmt.describe(path)} already exists and was made differently from this run: "
        f"{'; '.join(mismatched)} differ. It is never overwritten ({fmt.holds} may already "
        "protect a published dataset): use a new workdir, or, only if this file was never "
        "published or used, delete it and re-run.")
  return arrays, manifest


def _changed_fields(prefix: str, recorded: Mapping[str, Any], wanted: Mapping[str, Any]
                    ) -> list[str]:
  """``prefix.name`` of every field that one mapping lacks or that the two hold differently."""
  return [f"{prefix}.{k}" for k in sorted(set(recorded) | set(wanted))
          if recorded.get(k, "<missing>") != wanted.get(k, "<missing>")]


def _json_plain(obj):
  """``obj`` as it reads back from the manifest's JSON (tuples become lists, and so on)."""
  return json.loads(json.dumps(obj, sort_keys=True, allow_nan=False))


def _array_record(array):
  return {"sha256": hashlib.sha256(array.tobytes()).hexdigest(), "dtype": array.dtype.str,
          "shape": list(array.shape)}


def _fingerprint(manifest):
  committed = {k: manifest[k] for k in ("spec", "num_classes", "class_names", "arrays")}
  blob = json.dumps(committed, sort_keys=True, separators=(",", ":")).encode()
  return hashlib.sha256(blob).hexdigest()


def _versions():
  import jaxtag  # pylint: disable=import-outside-toplevel  (parent package, always loaded)
  return {"jaxtag": jaxtag.__version__, "jax": jax.__version__, "numpy": np.__version__,
          "python": sys.version.split()[0]}


def _write_zip(f, members):
  with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as zf:
    for name, data in members.items():
      zf.writestr(zipfile.ZipInfo(name, date_time=_ZIP_DATE), data)


def _atomic_write(path, write_fn):
  with audio_io.atomic_file(path, "wb", permissions=0o600, fsync=True) as f:
    write_fn(f)


def _read_manifest(zf, fmt, where):
  try:
    manifest = json.loads(zf.read(_MANIFEST_MEMBER))
  except KeyError as e:
    raise KeyFileError(f"{where} has no {_MANIFEST_MEMBER}: not a jaxtag {fmt.noun}.") from e
  except (ValueError, UnicodeDecodeError) as e:
    raise KeyFileError(f"{where}: {_MANIFEST_MEMBER} is not valid JSON ({e}).") from e
  found = manifest.get("format") if isinstance(manifest, dict) else None
  if found != fmt.name:
    raise KeyFileError(f"{where}: manifest format is {found!r}, not {fmt.name!r}: not a "
                       f"{fmt.noun}.")
  if manifest.get("format_version") != fmt.version:
    raise KeyFileError(f"{where}: format_version {manifest.get('format_version')!r} is not "
                       f"{fmt.version}; use the jaxtag version that wrote it.")
  missing = [k for k in _REQUIRED_FIELDS if k not in manifest]
  missing += [f"arrays.{n}" for n in fmt.arrays if n not in manifest.get("arrays", {})]
  if missing:
    raise KeyFileError(f"{where}: manifest is missing field(s) {missing}.")
  return manifest


def _read_array(zf, name, manifest, where):
  try:
    data = zf.read(f"{name}.npy")
  except KeyError as e:
    raise KeyFileError(f"{where} has no array {name!r} ({name}.npy).") from e
  except zipfile.BadZipFile as e:  # CRC mismatch: bytes of this member were changed.
    raise KeyFileError(f"{where}: array {name!r} is corrupt or was modified ({e}).") from e
  try:
    array = np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)
  except (ValueError, EOFError) as e:
    raise KeyFileError(f"{where}: array {name!r} cannot be parsed ({e}).") from e
  expected, actual = manifest["arrays"][name], _array_record(array)
  if not isinstance(expected, dict):
    raise KeyFileError(f"{where}: manifest entry arrays.{name} is not a record.")
  for field in ("dtype", "shape", "sha256"):
    if expected.get(field) != actual[field]:
      raise KeyFileError(f"{where}: array {name!r} was modified: its {field} is "
                         f"{actual[field]!r}, the manifest says {expected.get(field)!r}.")
  return array


def _compare_class_names(stored, expected, where):
  if stored == expected:
    return
  diffs = [f"{i}: file {a!r} vs expected {b!r}"
           for i, (a, b) in enumerate(zip(stored, expected)) if a != b][:5]
  if len(stored) != len(expected):
    diffs.insert(0, f"file has {len(stored)} classes, expected {len(expected)}")
  raise KeyFileError(f"{where} was made for other classes ({'; '.join(diffs)}). Labels index "
                     "class names by position, so the keys would be scored against the wrong "
                     "classes: use the key file made for this dataset, or pass its class list "
                     "in the same order.")


# --- the taggant key file ----------------------------------------------------------------------


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
    dataset_root: if given, refuse any path inside it (``check_outside``).

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
  return write_secret_archive(path, KEY_FILE, arrays, spec=keys.spec.to_dict(),
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
  arrays, manifest = read_secret_archive(path, KEY_FILE,
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
  this provenance (``read_matching_archive``).

  A re-run of the stage that made the key file thus gets the same keys back, and a run with
  another seed, spec or dataset is refused instead of replacing a secret that a published
  dataset may depend on.

  Args:
    path: the key file.
    key: the PRNG key that draws the keys (used only when the file is missing).
    spec: the key spec.
    class_names: the dataset's classes, in label order.
    provenance: what generated the keys (``key_provenance``); compared with the file's.
    dataset_root: if given, refuse a path inside it (``check_outside``).

  Returns:
    (keys, manifest, reused): ``reused`` is True when the file existed.

  Raises:
    KeyFileError: an existing file made differently (the message names the fields and the
      fix), a corrupt or modified file, or a path inside the dataset.
  """
  path = pathlib.Path(path)
  if dataset_root is not None:
    check_outside(path, dataset_root)
  if path.exists():
    arrays, manifest = read_matching_archive(path, KEY_FILE, spec=spec.to_dict(),
                                             class_names=class_names, provenance=provenance)
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
  key = jax.random.wrap_key_data(jnp.asarray(prov["key_data"], jnp.uint32),
                                 impl=prov["key_impl"])
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
  directory.mkdir(parents=True, exist_ok=True, mode=0o700)
  arrays = KEY_FILE.host_arrays(keys)
  waveforms, labels = arrays["waveforms"], arrays["labels"]
  paths = []
  for i, (audio, label) in enumerate(zip(waveforms, labels)):
    name = f"key{i:02d}_label{int(label)}"
    if class_names is not None:
      name += "_" + re.sub(r"[^A-Za-z0-9._-]+", "-", str(class_names[int(label)])).strip("-.")
    path = directory / f"{name}.wav"
    _atomic_write(path, lambda f, a=audio: soundfile.write(
        f, a, keys.spec.sample_rate, subtype="PCM_16", format="WAV"))
    paths.append(path)
  return paths
