"""Config blocks shared by several stages (data source, key specification)."""

import dataclasses
import types
import typing

import ml_collections


def _field_type(hint) -> type:
  """The ConfigDict type of a dataclass field's annotation: ``X | None`` -> X, ``Literal['a']``
  -> str, ``tuple[str, ...]`` -> tuple."""
  args = [a for a in typing.get_args(hint) if a is not type(None)]
  if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
    return _field_type(args[0])
  if typing.get_origin(hint) is typing.Literal:
    return type(args[0])
  return typing.get_origin(hint) or hint


def dataclass_config(cls, **overrides) -> ml_collections.ConfigDict:
  """A ConfigDict with one entry per field of the dataclass ``cls`` (its defaults, then
  ``overrides``), so that every field is a launcher flag and none can be forgotten. A None
  default becomes a typed ``FieldReference`` so that a flag can set it."""
  hints = typing.get_type_hints(cls)
  fields = {}
  for field in dataclasses.fields(cls):
    value = overrides.pop(field.name, field.default)
    if value is dataclasses.MISSING and field.default_factory is not dataclasses.MISSING:
      value = field.default_factory()
    if value is dataclasses.MISSING:
      raise TypeError(f"{cls.__name__}.{field.name} has no default; pass it to dataclass_config.")
    if value is None:
      value = ml_collections.FieldReference(None, field_type=_field_type(hints[field.name]))
    fields[field.name] = value
  if overrides:
    raise TypeError(f"{cls.__name__} has no field(s) {sorted(overrides)}.")
  return ml_collections.ConfigDict(fields)


def data_config(kind: str = "corpus", preset: str = "default") -> ml_collections.ConfigDict:
  """The ``data`` block: every field of jaxtag.data.sources.DataSource (documented there), e.g.
  ``--config.data.mono=mean --config.data.on_missing_file=skip``."""
  from jaxtag.data import sources  # The library dataclass is the one source of the fields.
  return dataclass_config(sources.DataSource, kind=kind, preset=preset)


def keys_config(num_keys: int = 10, d: int = 64, griffin_lim_iters: int = 64) -> ml_collections.ConfigDict:
  """Mirrors the main fields of jaxtag.keys.KeySpec (the rest keep their defaults)."""
  return ml_collections.ConfigDict(dict(
      num_keys=num_keys,
      d=d,
      distribution="uniform",    # uniform | bernoulli
      p=0.5,                     # Bernoulli mask probability
      interpolation="bilinear",  # nearest | bilinear
      griffin_lim_iters=griffin_lim_iters,
  ))


def keys_config_for(preset: str) -> ml_collections.ConfigDict:
  """The key spec of a corpus preset: the tiny corpus (8 training clips of 4 words) gets 2 keys."""
  if preset == "tiny":
    return keys_config(num_keys=2, griffin_lim_iters=16)
  return keys_config()
