"""Files that reveal a secret: owner-only, never inside a dataset, never read when others can;
and the secret archive that every method's secret is stored in.

What the owner must keep to themselves: the keys (key file, key WAVs), the keys' labels, which
clips are poisons, the perturbations, the crafting checkpoints, verification reports (they list
the keys' labels and the suspect's answers), and PosCUDA's filters. Anyone holding them could
fake a verification or strip the taggants. Every such file is written here:

* **owner-only**: files ``0o600`` from their creation (``jaxtag.audio.io.atomic_file`` creates
  the temporary file owner-only and renames it), folders ``0o700``;
* **outside every dataset**: :func:`check_outside` refuses a secret path equal to or inside the
  input dataset or the dataset about to be published (symlinks resolved);
* **private to read**: :func:`check_private` refuses a secret file that users other than its
  owner can read, unless the caller allows it explicitly (the launchers' documented
  ``--allow_readable_secrets`` flag).

Secret archive (the taggant key file, PosCUDA's secret file): ONE zip (stored, not compressed;
``numpy.load`` reads its arrays) holding ``{name}.npy`` for each of its arrays and a
``manifest.json``: its kind (``format``, ``format_version``), creation time, library versions,
spec, class names, provenance, the SHA-256/dtype/shape of every array, and a ``fingerprint`` over
spec, class names and arrays. :func:`write_secret_archive` writes it atomically with mode 0o600
and refuses a path inside the dataset; :func:`read_secret_archive` refuses another kind of
archive and re-hashes everything; a readable archive only warns
(:class:`SecretFilePermissionWarning`) unless ``strict_permissions``. A
:class:`SecretArchiveFormat` says which kind a method writes:
``jaxtag.taggants.keyfile.KEY_FILE``, ``jaxtag.poscuda.SECRET_FILE``. :func:`prng_provenance`
records the PRNG key that drew a secret, :func:`provenance_key` gets it back.

This module imports nothing from the methods (taggants, poscuda): they build on it.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import io
import json
import os
import pathlib
import sys
import warnings
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxtag.audio import io as audio_io

FILE_MODE = 0o600
DIR_MODE = 0o700
_MANIFEST_MEMBER = "manifest.json"
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # Fixed member dates: identical content gives identical bytes.
_REQUIRED_FIELDS = ("created", "versions", "spec", "num_classes", "class_names", "provenance",
                    "arrays", "fingerprint")


class SecretFileError(ValueError):
  """A secret file in the wrong place (inside a dataset) or readable by others; or a secret
  archive that is missing, corrupt, modified, of another kind, or made for other classes."""


class SecretFilePermissionWarning(UserWarning):
  """A secret archive that users other than its owner can read."""


def _resolved(path: str | os.PathLike) -> pathlib.Path:
  return pathlib.Path(path).expanduser().resolve()


def is_inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
  """Whether ``path`` is ``folder`` or lies inside it (symlinks resolved; neither need exist)."""
  target, root = _resolved(path), _resolved(folder)
  return target == root or root in target.parents


def check_outside(path: str | os.PathLike, dataset_roots: Iterable[str | os.PathLike | None], *,
                  what: str = "secret file") -> None:
  """Refuses a secret ``path`` that is, or lies inside, any of ``dataset_roots``.

  Args:
    path: the secret file or the folder that will hold secret files.
    dataset_roots: the input dataset, the dataset to be published...; None entries are skipped.
    what: how the message names ``path`` (e.g. ``"key file"``, ``"craft workdir"``).

  Raises:
    SecretFileError: naming the path, the dataset and the fix.
  """
  for root in dataset_roots:
    if root is not None and is_inside(path, root):
      raise SecretFileError(
          f"Refusing {what} {str(path)!r}: it is inside the dataset folder {str(root)!r}, which "
          "is published or shared; anyone with the data would hold the secret. Keep it outside "
          "every dataset folder.")


def check_private(path: str | os.PathLike, *, allow_readable: bool = False,
                  what: str = "secret file", allow_flag: str = "allow_readable=True") -> None:
  """Refuses a secret file (or folder) that users other than its owner can access.

  Args:
    path: an existing secret file.
    allow_readable: accept it anyway (the caller decided the machine is private).
    what: how the message names ``path``.
    allow_flag: how the caller overrides the refusal (a launcher names its flag).

  Raises:
    SecretFileError: the file's mode grants group or other access, naming the fix.
    FileNotFoundError: ``path`` does not exist.
  """
  mode = os.stat(path).st_mode & 0o777
  if mode & 0o077 and not allow_readable:
    raise SecretFileError(
        f"{what} {str(path)!r} has mode {oct(mode)}: users other than its owner can read it. Run "
        f"`chmod 600 {path}` (or pass {allow_flag} if this machine has no other users).")


def private_dir(path: str | os.PathLike) -> pathlib.Path:
  """Creates ``path`` (and its parents) with the folder itself ``0o700``; an existing folder is
  narrowed to ``0o700`` (a folder of secrets must be ours alone). Returns it."""
  path = pathlib.Path(path)
  path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
  if os.stat(path).st_mode & 0o077:
    os.chmod(path, DIR_MODE)
  return path


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
  """Writes a secret file atomically, owner-only from its creation."""
  with audio_io.atomic_file(path, "wb", permissions=FILE_MODE) as f:
    f.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
  """Writes a secret UTF-8 text file atomically, owner-only from its creation."""
  with audio_io.atomic_file(path, "w", permissions=FILE_MODE, encoding="utf-8", newline="") as f:
    f.write(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
  """Writes a secret JSON file (sorted keys, indented) atomically, owner-only."""
  write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


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
    SecretFileError: existing file, path inside the dataset, or a spec or provenance that is not
      JSON-serialisable.
  """
  path = pathlib.Path(path)
  if dataset_root is not None:
    check_outside(path, [dataset_root], what=fmt.noun)
  if path.exists() and not overwrite:
    raise SecretFileError(f"{fmt.describe(path)} already exists; pass overwrite=True only if "
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
    raise SecretFileError(f"provenance for {str(path)!r} is not JSON-serialisable: {e}") from e
  if not path.parent.exists():
    path.parent.mkdir(parents=True, mode=DIR_MODE)
  members = {_MANIFEST_MEMBER: manifest_bytes}
  for name, array in arrays.items():
    buf = io.BytesIO()
    np.lib.format.write_array(buf, array, allow_pickle=False)
    members[f"{name}.npy"] = buf.getvalue()
  with audio_io.atomic_file(path, "wb", permissions=FILE_MODE, fsync=True) as f:
    _write_zip(f, members)
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
    SecretFileError: missing or unreadable file, not a zip, another kind or version of archive,
      missing fields, an array whose SHA-256/dtype/shape differs from the manifest (the array
      is named), a manifest edited after writing, class names that disagree with
      ``num_classes`` or differ from ``expected_class_names``.
  """
  path = pathlib.Path(path)
  where = fmt.describe(path)
  try:
    mode = os.stat(path).st_mode
  except OSError as e:
    raise SecretFileError(f"Cannot read {where}: {e.strerror}.") from e
  if mode & 0o077:
    msg = (f"{where} has mode {oct(mode & 0o777)}: users other than its owner can read "
           f"{fmt.holds}. Run `chmod 600 {path}`.")
    if strict_permissions:
      raise SecretFileError(msg)
    warnings.warn(msg, SecretFilePermissionWarning, stacklevel=3)  # The loader's caller.
  try:
    with zipfile.ZipFile(path) as zf:
      manifest = _read_manifest(zf, fmt, where)
      arrays = {name: _read_array(zf, name, manifest, where) for name in fmt.arrays}
  except (zipfile.BadZipFile, EOFError, OSError) as e:
    raise SecretFileError(f"{where} is not a readable jaxtag {fmt.noun} (not a readable zip "
                          f"archive: {e}). It may be truncated or another file; restore it from "
                          "your backup.") from e
  if manifest["fingerprint"] != _fingerprint(manifest):
    raise SecretFileError(f"{where}: manifest was modified after writing (fingerprint mismatch).")
  num_classes, names = manifest["num_classes"], manifest["class_names"]
  if not isinstance(names, list) or not isinstance(num_classes, int) or (
      len(names) != num_classes):
    raise SecretFileError(f"{where}: class_names {names!r} do not match num_classes "
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
    SecretFileError: an unreadable or modified file (``read_secret_archive``), or one made with
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
    raise SecretFileError(
        f"{fmt.describe(path)} already exists and was made differently from this run: "
        f"{'; '.join(mismatched)} differ. It is never overwritten ({fmt.holds} may already "
        "protect a published dataset): use a new workdir, or, only if this file was never "
        "published or used, delete it and re-run.")
  return arrays, manifest


def spec_from_dict(cls, d: Mapping[str, Any]):
  """A (frozen) spec dataclass from the dict its ``to_dict`` wrote, e.g. in a secret file's
  manifest: missing fields take their defaults, unknown fields are an error that names them."""
  known = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(d) - known)
  if unknown:
    raise ValueError(f"{cls.__name__} has no field(s) {unknown}; known fields: {sorted(known)}. "
                     "Was it written by a newer jaxtag?")
  return cls(**d)


def prng_provenance(key: jax.Array, *, function: str, **extra: Any) -> dict[str, Any]:
  """What a secret archive records to regenerate its arrays: as secret as they are.

  Args:
    key: the PRNG key (typed or raw) that drew the secret.
    function: the name of the function that drew it from ``key`` (recorded as given).
    **extra: JSON-serialisable context, e.g. ``seed=..., stream="keys", config="..."``.

  Returns:
    A JSON-serialisable dict with the function, the key data, the PRNG implementation, and the
    flags that change what that key draws; :func:`provenance_key` gives the key back.
  """
  if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
    data, impl = jax.random.key_data(key), str(jax.random.key_impl(key))
  else:
    data, impl = key, str(jax.config.jax_default_prng_impl)
  return {"function": function, "key_data": np.asarray(data).tolist(), "key_impl": impl,
          "threefry_partitionable": bool(jax.config.jax_threefry_partitionable), **extra}


def provenance_key(provenance: Mapping[str, Any]) -> jax.Array:
  """The typed PRNG key recorded by :func:`prng_provenance` (``key_data`` and ``key_impl``)."""
  return jax.random.wrap_key_data(jnp.asarray(provenance["key_data"], jnp.uint32),
                                  impl=provenance["key_impl"])


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


def _read_manifest(zf, fmt, where):
  try:
    manifest = json.loads(zf.read(_MANIFEST_MEMBER))
  except KeyError as e:
    raise SecretFileError(f"{where} has no {_MANIFEST_MEMBER}: not a jaxtag {fmt.noun}.") from e
  except (ValueError, UnicodeDecodeError) as e:
    raise SecretFileError(f"{where}: {_MANIFEST_MEMBER} is not valid JSON ({e}).") from e
  found = manifest.get("format") if isinstance(manifest, dict) else None
  if found != fmt.name:
    raise SecretFileError(f"{where}: manifest format is {found!r}, not {fmt.name!r}: not a "
                          f"{fmt.noun}.")
  if manifest.get("format_version") != fmt.version:
    raise SecretFileError(f"{where}: format_version {manifest.get('format_version')!r} is not "
                          f"{fmt.version}; use the jaxtag version that wrote it.")
  missing = [k for k in _REQUIRED_FIELDS if k not in manifest]
  missing += [f"arrays.{n}" for n in fmt.arrays if n not in manifest.get("arrays", {})]
  if missing:
    raise SecretFileError(f"{where}: manifest is missing field(s) {missing}.")
  return manifest


def _read_array(zf, name, manifest, where):
  try:
    data = zf.read(f"{name}.npy")
  except KeyError as e:
    raise SecretFileError(f"{where} has no array {name!r} ({name}.npy).") from e
  except zipfile.BadZipFile as e:  # CRC mismatch: bytes of this member were changed.
    raise SecretFileError(f"{where}: array {name!r} is corrupt or was modified ({e}).") from e
  try:
    array = np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)
  except (ValueError, EOFError) as e:
    raise SecretFileError(f"{where}: array {name!r} cannot be parsed ({e}).") from e
  expected, actual = manifest["arrays"][name], _array_record(array)
  if not isinstance(expected, dict):
    raise SecretFileError(f"{where}: manifest entry arrays.{name} is not a record.")
  for field in ("dtype", "shape", "sha256"):
    if expected.get(field) != actual[field]:
      raise SecretFileError(f"{where}: array {name!r} was modified: its {field} is "
                            f"{actual[field]!r}, the manifest says {expected.get(field)!r}.")
  return array


def _compare_class_names(stored, expected, where):
  if stored == expected:
    return
  diffs = [f"{i}: file {a!r} vs expected {b!r}"
           for i, (a, b) in enumerate(zip(stored, expected)) if a != b][:5]
  if len(stored) != len(expected):
    diffs.insert(0, f"file has {len(stored)} classes, expected {len(expected)}")
  raise SecretFileError(f"{where} was made for other classes ({'; '.join(diffs)}). Labels index "
                        "class names by position, so the keys would be scored against the wrong "
                        "classes: use the key file made for this dataset, or pass its class list "
                        "in the same order.")
