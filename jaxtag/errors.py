"""How an error message names an option: as the library spells it, or as the running launcher's flag.

A message that tells the user what to change must name something the user can set. Called from
Python that is a keyword or a dataclass field (``mono='mean'``, ``TrainConfig.batch_size``);
under a launcher it is a flag (``--config.data.mono=mean``, ``--config.batch_size``). Library
code names options through :func:`option`; a launcher installs its config's flags with
:func:`launcher_flags` for the duration of the stage, and the same raise site then names the
flag. Nothing here is global state beyond a context variable, so library calls made outside a
launcher are unaffected.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

_UNSET = object()


class _Flags:
  """The option names a launcher can set: every leaf path of its config, and which library
  owners (dataclasses, functions) map onto which config block."""

  def __init__(self, leaf_paths: Iterable[str], owners: Mapping[str, str]):
    self.paths = frozenset(leaf_paths)
    self.owners = dict(owners)
    counts: dict[str, list[str]] = {}
    for path in self.paths:
      counts.setdefault(path.rsplit(".", 1)[-1], []).append(path)
    self.unique_leaves = {leaf: paths[0] for leaf, paths in counts.items() if len(paths) == 1}

  def path(self, name: str, owner: str | None) -> str | None:
    if owner is not None and owner in self.owners:
      prefix = self.owners[owner]
      candidate = f"{prefix}.{name}" if prefix else name
      if candidate in self.paths:
        return candidate
    return self.unique_leaves.get(name)


_ACTIVE: contextvars.ContextVar[_Flags | None] = contextvars.ContextVar("jaxtag_flags",
                                                                       default=None)


def _flag_value(value: Any) -> str:
  if isinstance(value, bool):
    return str(value)
  if isinstance(value, (list, tuple)):
    return ",".join(_flag_value(v) for v in value)
  return str(value)


def option(name: str, value: Any = _UNSET, *, owner: str | None = None) -> str:
  """``name`` spelled as the caller can set it, optionally with the value to set it to.

  Args:
    name: the keyword or field name, e.g. ``"mono"`` or ``"batch_size"``.
    value: a value to suggest (omitted: only the name).
    owner: the dataclass or function that takes the option (e.g. ``"TrainConfig"``,
      ``"DataSource"``); it disambiguates under a launcher and prefixes the library spelling of a
      field without a value.

  Returns:
    Under a launcher whose config has the option: ``--config.<path>`` or ``--config.<path>=<v>``.
    Otherwise: ``name=<repr(value)>``, ``Owner.name`` or ``name``.
  """
  flags = _ACTIVE.get()
  path = flags.path(name, owner) if flags is not None else None
  if path is not None:
    return f"--config.{path}" if value is _UNSET else f"--config.{path}={_flag_value(value)}"
  if value is not _UNSET:
    return f"{name}={value!r}"
  return f"{owner}.{name}" if owner else name


def leaf_paths(tree: Mapping[str, Any], prefix: str = "") -> list[str]:
  """Dotted paths of the leaves of a nested mapping (a ConfigDict's ``to_dict()``)."""
  out = []
  for key, value in tree.items():
    path = f"{prefix}.{key}" if prefix else str(key)
    if isinstance(value, Mapping) and value:
      out += leaf_paths(value, path)
    else:
      out.append(path)
  return out


@contextlib.contextmanager
def launcher_flags(config_tree: Mapping[str, Any],
                   owners: Mapping[str, str] | None = None) -> Iterator[None]:
  """Makes :func:`option` name the flags of a launcher's config inside the block.

  Args:
    config_tree: the launcher's config as a nested mapping.
    owners: library owner name -> config block path (``""`` for the top level), e.g.
      ``{"TrainConfig": "", "DataSource": "data"}``. Options of other owners are found by their
      name when it is unique in the config.
  """
  token = _ACTIVE.set(_Flags(leaf_paths(config_tree), owners or {}))
  try:
    yield
  finally:
    _ACTIVE.reset(token)
