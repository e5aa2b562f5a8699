"""One source of truth for configuration: the library's dataclasses.

Every setting of jaxtag lives in a frozen dataclass beside the code that uses it (``TrainConfig``,
``CraftConfig``, ``KeySpec``, ``DataSource``, ...), with its default and its check. The launchers'
``ml_collections`` configs are generated from those dataclasses (``launch/configs/common.py``'s
``to_config``, over :func:`field_values`: ConfigDicts stay in ``launch/``), so that every field is
a flag and no field list is written twice, and are turned back into the typed dataclass by one
helper, which takes a ConfigDict, a recorded ``config.json`` or any mapping:

    config = to_config(TrainConfig, num_epochs=12)         # launch/configs/common.py
    config.optim.learning_rate = 2e-3                       # nested dataclasses nest
    cfg = jaxtag.config.from_config(TrainConfig, config)    # typed, checked again

``from_config`` follows the annotations: a list becomes a tuple where the field is a tuple, a
nested ConfigDict becomes its dataclass, a mapping field becomes a plain ``dict`` (with lists, so
it survives JSON unchanged), and an unknown field is an error that names it.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["field_values", "from_config", "narrow", "to_json_dict"]


def _optional_inner(hint) -> Any:
  """``X | None`` -> X; any other hint unchanged."""
  if typing.get_origin(hint) in (typing.Union, types.UnionType):
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if len(args) == 1:
      return args[0]
  return hint


def _field_type(hint) -> type:
  """The ConfigDict type of a field's annotation: ``X | None`` -> X, ``Literal['a']`` -> str,
  ``tuple[str, ...]`` -> tuple, ``Mapping[str, Any]`` -> dict; a union of numbers (``bool | int``)
  -> the widest (int, or float), any other union -> object (parsed as a Python literal)."""
  hint = _optional_inner(hint)
  origin = typing.get_origin(hint)
  if origin in (typing.Union, types.UnionType):
    args = {a for a in typing.get_args(hint) if a is not type(None)}
    if args <= {bool, int, float}:
      return float if float in args else int
    return object
  if origin is typing.Literal:
    return type(typing.get_args(hint)[0])
  if origin in (Mapping, dict) or hint in (Mapping, dict):
    return dict
  if origin is not None:
    return origin
  return hint if isinstance(hint, type) else object


def _is_dataclass_type(hint) -> bool:
  return isinstance(hint, type) and dataclasses.is_dataclass(hint)


def _default(field: dataclasses.Field) -> Any:
  if field.default is not dataclasses.MISSING:
    return field.default
  if field.default_factory is not dataclasses.MISSING:
    return field.default_factory()
  return dataclasses.MISSING


def field_values(cls_or_instance: Any, **overrides: Any) -> list[tuple[str, Any, type]]:
  """``(name, value, type)`` of every field of a dataclass, in order: what a generated config
  holds.

  Args:
    cls_or_instance: a dataclass type (its defaults are used) or an instance (its values).
    **overrides: field values that replace those.

  Returns:
    One triple per field; ``type`` is the config-level type of the annotation (``X | None`` ->
    X, ``Literal['a']`` -> str, ``tuple[...]`` -> tuple, a mapping -> dict), what a flag that
    sets a None field must parse to.

  Raises:
    TypeError: not a dataclass, a field without a default (pass it in ``overrides``), or an
      unknown override.
  """
  cls = cls_or_instance if isinstance(cls_or_instance, type) else type(cls_or_instance)
  if not dataclasses.is_dataclass(cls):
    raise TypeError(f"field_values needs a dataclass; got {cls!r}.")
  hints = typing.get_type_hints(cls)
  overrides = dict(overrides)
  out = []
  for field in dataclasses.fields(cls):
    if field.name in overrides:
      value = overrides.pop(field.name)
    elif isinstance(cls_or_instance, type):
      value = _default(field)
    else:
      value = getattr(cls_or_instance, field.name)
    if value is dataclasses.MISSING:
      raise TypeError(f"{cls.__name__}.{field.name} has no default; pass it as an override.")
    out.append((field.name, value, _field_type(hints[field.name])))
  if overrides:
    raise TypeError(f"{cls.__name__} has no field(s) {sorted(overrides)}.")
  return out


def _as_mapping(value: Any) -> Any:
  """A ConfigDict (anything with ``to_dict``) as a plain dict; anything else unchanged."""
  return value.to_dict() if callable(getattr(value, "to_dict", None)) else value


def plain(value: Any) -> Any:
  """Tuples to lists and mappings to dicts, recursively (what JSON gives back)."""
  value = _as_mapping(value)
  if isinstance(value, Mapping):
    return {k: plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [plain(v) for v in value]
  return value


def _typed(value: Any, hint: Any, where: str) -> Any:
  """``value`` converted to the annotation ``hint`` where JSON or a ConfigDict lost the type."""
  if value is None:
    return None
  hint = _optional_inner(hint)
  origin = typing.get_origin(hint)
  if _is_dataclass_type(hint):
    if isinstance(value, hint):
      return value
    value = _as_mapping(value)
    if not isinstance(value, Mapping):
      raise TypeError(f"{where} must be a mapping of {hint.__name__}'s fields; got {value!r}.")
    return from_config(hint, value, where=where)
  if origin is tuple or hint is tuple:
    if not isinstance(value, (list, tuple)):
      raise TypeError(f"{where} must be a sequence; got {value!r}.")
    args = typing.get_args(hint)
    if len(args) == 2 and args[1] is Ellipsis:
      return tuple(_typed(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
    if args and len(args) == len(value):
      return tuple(_typed(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    return tuple(value)
  if origin in (Mapping, dict) or hint in (Mapping, dict):
    return plain(value)
  return value


def from_config(cls: type[T], config: Any, *, where: str | None = None) -> T:
  """The dataclass ``cls`` from a ConfigDict (or a mapping, e.g. a recorded ``config.json``).

  Fields missing from ``config`` keep their defaults; lists become tuples where the field is a
  tuple; nested ConfigDicts become their dataclasses; the dataclass's own checks run.

  Raises:
    TypeError: ``config`` has a field ``cls`` does not know (named, with the dotted path).
  """
  where = where or "config"
  config = _as_mapping(config)
  if not isinstance(config, Mapping):
    raise TypeError(f"{where} must be a mapping of {cls.__name__}'s fields; got {config!r}.")
  hints = typing.get_type_hints(cls)
  known = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(config) - known)
  if unknown:
    raise TypeError(f"{where}: {cls.__name__} has no field(s) {unknown}; known: {sorted(known)}.")
  values = {name: _typed(config[name], hints[name], f"{where}.{name}")
            for name in known if name in config}
  return cls(**values)


def to_json_dict(obj: Any) -> dict[str, Any]:
  """A dataclass as a JSON-able dict (tuples as lists, nested dataclasses as dicts)."""
  return plain(dataclasses.asdict(obj))


def narrow(obj: Any, cls: type[T]) -> T:
  """The ``cls`` part of a dataclass that extends ``cls`` (e.g. the bare ``TrainConfig`` of a
  ``TrainJob``): a ``cls`` built from ``obj``'s values of ``cls``'s fields."""
  return cls(**{f.name: getattr(obj, f.name) for f in dataclasses.fields(cls)})
