"""The PosCUDA secret file: save, load and audit the class filters and positions.

Secret file (``save_filters``/``load_filters``): a ``jaxtag.secrets`` secret archive of kind
``SECRET_FILE``, tagged ``jaxtag-poscuda`` so that it and a taggant key file are never read as
each other: one zip with ``filters.npy``, ``positions.npy`` and a manifest (spec, class names,
provenance, SHA-256/dtype/shape of each array, fingerprint), written atomically with mode 0o600
and refused inside the dataset folder. Whoever holds it can undo the shortcut, so it is as secret
as taggant keys.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from jaxtag.poscuda.filters import ARRAY_NAMES, PoscudaFilters, PoscudaSpec, make_filters
from jaxtag.secrets import (SecretArchiveFormat, SecretFileError, provenance_key,
                            read_matching_archive, read_secret_archive, write_secret_archive)

FORMAT_NAME = "jaxtag-poscuda"
FORMAT_VERSION = 1
SECRET_FILE = SecretArchiveFormat(
    name=FORMAT_NAME, version=FORMAT_VERSION, noun="PosCUDA secret file",
    holds="the secret filters", arrays={"filters": "<f4", "positions": "<i4"})


def save_filters(path: str | os.PathLike, secret: PoscudaFilters, *,
                 class_names: Sequence[str], provenance: Mapping[str, Any],
                 overwrite: bool = False, dataset_root: str | os.PathLike | None = None
                 ) -> pathlib.Path:
  """Writes the secret file atomically with mode 0o600 (format: module docstring).

  Args:
    path: destination, e.g. ``.../poscuda.npz``; its directory is created (0o700) if missing.
    secret: from ``make_filters``.
    class_names: the dataset's classes, in label order (one per filter).
    provenance: what made the filters (``filter_provenance``); JSON-serialisable.
    overwrite: replace an existing file.
    dataset_root: if given, refuse any path inside it (``jaxtag.secrets.check_outside``).

  Returns:
    The path written.

  Raises:
    SecretFileError: existing file, path inside the dataset, a class count that differs from the
      filters', or a provenance that is not JSON-serialisable.
  """
  if len(class_names) != secret.num_classes:
    raise SecretFileError(f"{len(class_names)} class names for {secret.num_classes} filters in "
                          f"{str(path)!r}.")
  return write_secret_archive(path, SECRET_FILE, SECRET_FILE.host_arrays(secret),
                              spec=secret.spec.to_dict(), class_names=class_names,
                              provenance=provenance, overwrite=overwrite,
                              dataset_root=dataset_root)


def make_or_reuse_filters(path: str | os.PathLike, key: jax.Array, spec: PoscudaSpec, *,
                          class_names: Sequence[str], provenance: Mapping[str, Any],
                          dataset_root: str | os.PathLike | None = None,
                          overwrite: bool = False) -> tuple[PoscudaFilters, bool]:
  """The filters of ``key`` and ``spec`` in the secret file at ``path``: drawn and written when
  the file is missing (or ``overwrite``), else reused as they are when the file was made with
  this spec, these classes and this provenance (``jaxtag.secrets.read_matching_archive``), so
  a re-run of the protection gets its own secret back and another recipe is refused.

  Returns:
    (filters, reused).

  Raises:
    SecretFileError: an existing file made differently (fields and fix named), a modified file, or
      a path inside ``dataset_root``.
  """
  if pathlib.Path(path).exists() and not overwrite:
    read_matching_archive(path, SECRET_FILE, spec=spec.to_dict(), class_names=class_names,
                          provenance=provenance)
    return load_filters(path, expected_class_names=class_names)[0], True
  secret = make_filters(key, spec, len(class_names))
  save_filters(path, secret, class_names=class_names, provenance=provenance, overwrite=overwrite,
               dataset_root=dataset_root)
  return secret, False


def load_filters(path: str | os.PathLike, *, expected_class_names: Sequence[str] | None = None,
                 strict_permissions: bool = False) -> tuple[PoscudaFilters, dict[str, Any]]:
  """Reads a secret file and checks every array against its manifest.

  Args:
    path: a file written by ``save_filters``.
    expected_class_names: the dataset's classes; must equal the file's, in order.
    strict_permissions: raise instead of warn when others can read the file.

  Returns:
    (PoscudaFilters with numpy arrays, manifest dict).

  Raises:
    SecretFileError: missing, unreadable or foreign file (a taggant key file included); an array
      or manifest changed after writing (the array or field is named); arrays that disagree
      with the spec; other classes.
  """
  arrays, manifest = read_secret_archive(path, SECRET_FILE,
                                         expected_class_names=expected_class_names,
                                         strict_permissions=strict_permissions)
  where = SECRET_FILE.describe(path)
  try:
    spec = PoscudaSpec.from_dict(manifest["spec"])
  except (ValueError, TypeError) as e:
    raise SecretFileError(f"{where}: invalid spec in manifest: {e}") from e
  num_classes = manifest["num_classes"]
  expected = {"filters": (num_classes, spec.taps), "positions": (num_classes,)}
  for name, shape in expected.items():
    if arrays[name].shape != shape:
      raise SecretFileError(f"{where}: array {name!r} has shape {arrays[name].shape}, the spec and "
                            f"{num_classes} classes imply {shape}.")
  positions = arrays["positions"]
  first, last = spec.starts
  if spec.use_positions and positions.size and (positions.min() < first or
                                                positions.max() > last):
    raise SecretFileError(f"{where}: patch positions outside [{first}, {last}] (the spec's "
                          "starts).")
  return PoscudaFilters(spec=spec, **arrays), manifest


def regenerate_and_check(secret: PoscudaFilters, manifest: Mapping[str, Any]) -> None:
  """Audits a secret file: re-draws the filters from its provenance and compares them exactly.

  Raises:
    SecretFileError: no key data in the provenance, or regenerated arrays that differ.
  """
  prov = manifest.get("provenance", {})
  if "key_data" not in prov or "key_impl" not in prov:
    raise SecretFileError("The manifest's provenance has no key_data/key_impl (not made with "
                          "filter_provenance): the filters cannot be regenerated.")
  key = provenance_key(prov)
  again = SECRET_FILE.host_arrays(make_filters(key, secret.spec, secret.num_classes))
  stored = SECRET_FILE.host_arrays(secret)
  for name in ARRAY_NAMES:
    if not np.array_equal(again[name], stored[name]):
      raise SecretFileError(f"Regenerated {name!r} differ from the secret file's: the provenance "
                            "does not reproduce these filters.")
