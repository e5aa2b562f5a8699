"""Files that reveal a secret: owner-only, never inside a dataset, never read when others can.

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

The secret archive format (key file, PosCUDA secret) lives in ``jaxtag.keyfile``.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Iterable
from typing import Any

from jaxtag.audio import io as audio_io

FILE_MODE = 0o600
DIR_MODE = 0o700


class SecretFileError(ValueError):
  """A secret file in the wrong place (inside a dataset) or readable by others."""


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
