"""jaxtag.config and launch/configs/common.to_config: ConfigDicts generated from the library's
dataclasses, and back."""

import dataclasses
import json

import ml_collections
import pytest

from jaxtag import config as config_lib
from jaxtag.data import sources
from jaxtag.taggants import craft
from jaxtag.train import AugmentConfig, OptimConfig, TrainConfig
from launch.configs.common import to_config


def test_every_field_becomes_an_entry_with_its_default():
  config = to_config(TrainConfig)
  assert set(config.keys()) == {f.name for f in dataclasses.fields(TrainConfig)}
  assert config.num_epochs == TrainConfig().num_epochs
  assert set(config.optim.keys()) == {f.name for f in dataclasses.fields(OptimConfig)}
  assert config.augment.max_gain_db == AugmentConfig().max_gain_db


def test_a_none_default_can_be_set_like_a_flag():
  config = to_config(TrainConfig)
  assert config.init_from is None
  config.init_from = "workdirs/backbone"          # a typed FieldReference takes a str
  with pytest.raises(TypeError):
    config.init_from = 3
  config.augment.noise_snr_db = (10.0, 40.0)
  assert config_lib.from_config(TrainConfig, config).augment.noise_snr_db == (10.0, 40.0)


def test_round_trip_restores_tuples_nested_dataclasses_and_plain_mappings():
  cfg = TrainConfig(model="cnn", model_overrides={"channels": (8, 16)}, num_epochs=3,
                    optim=OptimConfig(learning_rate=3e-3),
                    augment=AugmentConfig(noise_snr_db=(5.0, 9.0)))
  config = to_config(cfg)
  back = config_lib.from_config(TrainConfig, config)
  assert back.optim == cfg.optim and back.augment == cfg.augment
  assert back.model_overrides == {"channels": [8, 16]}       # JSON-able, as recorded
  # Through JSON too (what a workdir records), e.g. the craft config's tuple fields.
  crafted = craft.CraftConfig(milestones=(1, 2), exclude_params=("head",),
                              augment=craft.CraftAugment(noise_snr_db=(10.0, 20.0)))
  recorded = json.loads(json.dumps(config_lib.to_json_dict(crafted)))
  assert config_lib.from_config(craft.CraftConfig, recorded) == crafted


def test_overrides_and_unknown_fields_are_named():
  config = to_config(sources.DataSource, kind="corpus", preset="tiny")
  assert config.preset == "tiny"
  with pytest.raises(TypeError, match="no field"):
    to_config(sources.DataSource, kind="corpus", presets="tiny")
  with pytest.raises(TypeError, match=r"config\.optim: OptimConfig has no field\(s\) \['lr'\]"):
    config_lib.from_config(TrainConfig, {"optim": {"lr": 1.0}})


def test_the_dataclass_checks_still_run():
  config = to_config(TrainConfig)
  config.num_epochs = 0
  with pytest.raises(ValueError, match="num_epochs"):
    config_lib.from_config(TrainConfig, config)


def test_a_field_without_default_must_be_given():
  @dataclasses.dataclass(frozen=True)
  class Needs:
    x: int
    y: tuple[int, ...] = ()

  assert [(n, v, t) for n, v, t in config_lib.field_values(Needs, x=1)] == [
      ("x", 1, int), ("y", (), tuple)]
  with pytest.raises(TypeError, match="Needs.x has no default"):
    to_config(Needs)
  assert isinstance(to_config(Needs, x=1), ml_collections.ConfigDict)
  assert config_lib.from_config(Needs, {"x": 1, "y": [2, 3]}) == Needs(1, (2, 3))


def test_a_union_field_gets_a_type_that_a_flag_can_parse():
  @dataclasses.dataclass(frozen=True)
  class Unions:
    unroll: bool | int | None = None
    level: float | int | None = None
    either: str | int | None = None

  types = {name: kind for name, _, kind in config_lib.field_values(Unions)}
  assert types == {"unroll": int, "level": float, "either": object}
  config = to_config(Unions)
  config.unroll = 2
  assert config_lib.from_config(Unions, config).unroll == 2
