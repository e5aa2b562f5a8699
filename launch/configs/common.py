"""ConfigDicts generated from the library's dataclasses (the one source of every field and
default: jaxtag.config), and the blocks several stages share (data source, key specification)."""

import dataclasses
from collections.abc import Mapping
from typing import Any

import ml_collections

from jaxtag import config as config_lib


def to_config(cls_or_instance: Any, **overrides: Any) -> ml_collections.ConfigDict:
  """A ConfigDict with one entry per field of a dataclass (a type: its defaults; an instance:
  its values; then ``overrides``), nested where a field is a dataclass, so that every field is a
  flag and none can be forgotten. A None value becomes a typed ``FieldReference`` so that a flag
  can set it; ``jaxtag.config.from_config`` turns the ConfigDict back into the dataclass."""
  entries = {}
  for name, value, kind in config_lib.field_values(cls_or_instance, **overrides):
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
      value = to_config(value)
    elif value is None:
      value = ml_collections.FieldReference(None, field_type=kind)
    elif isinstance(value, Mapping):
      value = ml_collections.ConfigDict(config_lib.plain(value))
    entries[name] = value
  return ml_collections.ConfigDict(entries)


def data_config(kind: str = "corpus", preset: str = "default") -> ml_collections.ConfigDict:
  """The ``data`` block: every field of jaxtag.data.sources.DataSource (documented there), e.g.
  ``--config.data.mono=mean --config.data.on_missing_file=skip``."""
  from jaxtag.data import sources
  return to_config(sources.DataSource, kind=kind, preset=preset)


def keys_config_for(preset: str) -> ml_collections.ConfigDict:
  """The launchers' key spec: every field of jaxtag.taggants.keys.KeySpec, with bilinear resizing (the
  launchers' default since the first keys; KeySpec's own default is nearest); the tiny corpus (8
  training clips of 4 words) gets 2 keys with 16 Griffin-Lim iterations."""
  from jaxtag.taggants import keys
  if preset == "tiny":
    return to_config(keys.KeySpec, interpolation="bilinear", num_keys=2,
                                griffin_lim_iters=16)
  return to_config(keys.KeySpec, interpolation="bilinear")
