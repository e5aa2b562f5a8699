"""Every launcher config loads, documents its command, and maps onto the library's typed configs."""

import importlib
import json
import pathlib

import pytest

CONFIG_DIR = pathlib.Path(__file__).resolve().parent.parent / "launch" / "configs"
CONFIGS = sorted(p.stem for p in CONFIG_DIR.glob("*.py") if p.stem not in ("__init__", "common"))


def test_there_are_configs():
  assert {"corpus", "keys", "demo"} <= set(CONFIGS)


@pytest.mark.parametrize("name", CONFIGS)
def test_config_loads_and_documents_its_command(name):
  module = importlib.import_module(f"launch.configs.{name}")
  doc = module.__doc__ or ""
  assert "launch/" in doc or "make " in doc, f"{name}.py docstring must show the command that runs it"
  config = module.get_config()
  assert isinstance(config.seed, int)
  if "data" in config:   # a classifier's DataSource, or a speaker dataset's SpeakerSource
    from jaxtag.data import sources
    from jaxtag.speaker import data as speaker_data
    speaker = "min_utterances" in config.data
    (speaker_data.SpeakerSource if speaker else sources.DataSource)(**config.data.to_dict())
  if "key_spec" in config:
    from jaxtag.taggants import keys
    keys.KeySpec(**config.key_spec.to_dict())


@pytest.mark.parametrize("preset", ["tiny", "default", "large"])
def test_corpus_config_argument_selects_preset(preset):
  module = importlib.import_module("launch.configs.corpus")
  assert module.get_config(preset).data.preset == preset


def test_data_config_has_exactly_the_data_source_fields_and_defaults():
  import dataclasses

  from jaxtag.data import sources
  from launch.configs import common
  config = common.data_config("speech_commands", preset="tiny")
  names = [f.name for f in dataclasses.fields(sources.DataSource)]
  assert sorted(config.keys()) == sorted(names)
  assert {"mono", "on_bad_file", "on_missing_file", "on_rate_mismatch", "clip_samples"} <= set(
      names)
  defaults = sources.DataSource()
  for name in names:
    if name not in ("kind", "preset"):
      assert config[name] == getattr(defaults, name), name
  assert (config.kind, config.preset) == ("speech_commands", "tiny")
  # A None default is typed, so that a flag can set it: an int field refuses a string.
  config.clip_samples = 800
  with pytest.raises(TypeError):
    config.clip_samples = "long"


# Each launcher's config is generated from its library job (the one source of its fields).
JOBS = {"train": "jaxtag.train.job:TrainJob", "corpus": "jaxtag.data.job:CorpusJob",
        "keys": "jaxtag.taggants.jobs:KeysJob", "verify": "jaxtag.taggants.jobs:VerifyJob",
        "craft": "jaxtag.taggants.jobs:CraftJob",
        "calibrate": "jaxtag.taggants.jobs:CalibrateJob", "demo": "jaxtag.taggants.demo:DemoJob",
        "poscuda_protect": "jaxtag.poscuda.jobs:ProtectJob",
        "poscuda_eval": "jaxtag.poscuda.jobs:EvalJob", "serve": "jaxtag.serving.job:ServeJob",
        "cbw_protect": "jaxtag.cbw.jobs:CbwProtectJob", "cbw_verify": "jaxtag.cbw.jobs:CbwVerifyJob",
        "cbw_demo": "jaxtag.cbw.demo:CbwDemoJob",
        "speaker_train": "jaxtag.speaker.job:SpeakerTrainJob"}


def test_every_config_has_its_job():
  assert set(CONFIGS) == set(JOBS)


@pytest.mark.parametrize("name", sorted(JOBS))
def test_config_is_generated_from_its_job_and_converts_back(name):
  from jaxtag import config as config_lib
  from launch.configs import common
  module_name, _, cls_name = JOBS[name].partition(":")
  job_type = getattr(importlib.import_module(module_name), cls_name)
  config = importlib.import_module(f"launch.configs.{name}").get_config()
  # Nothing but the job's fields (an unknown one raises) and every check passes ...
  job = config_lib.from_config(job_type, config)
  assert isinstance(job, job_type)
  # ... and all of them, nested ones included: the config is the job's own ConfigDict.
  assert json.loads(config.to_json_best_effort()) == json.loads(
      common.to_config(job).to_json_best_effort())


def _none_fields(config, prefix=""):
  """``(dotted name, FieldReference type)`` of every field of ``config`` that holds None."""
  import ml_collections
  out = []
  for name in config.keys():
    value = config[name]
    if isinstance(value, ml_collections.ConfigDict):
      out += _none_fields(value, f"{prefix}{name}.")
    elif value is None:   # a plain None (no FieldReference) has no type: a flag cannot set it
      ref = config._fields[name]
      out.append((f"{prefix}{name}", ref.get_type() if isinstance(
          ref, ml_collections.FieldReference) else type(None)))
  return out


@pytest.mark.parametrize("name", CONFIGS)
def test_every_unset_field_can_be_set_by_a_flag(name):
  """A None field is a typed FieldReference whose type the flag parser knows (a union such as
  ``CraftConfig.unroll: bool | int | None`` must not reach it as a union)."""
  import ml_collections
  from ml_collections.config_flags import config_flags
  parsable = set(config_flags._FIELD_TYPE_TO_PARSER) | {ml_collections.ConfigDict}
  config = importlib.import_module(f"launch.configs.{name}").get_config()
  bad = [(field, kind) for field, kind in _none_fields(config) if kind not in parsable]
  assert not bad, bad
