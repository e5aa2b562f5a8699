"""Every launcher config loads, documents its command, and maps onto the library's typed configs."""

import importlib
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
  if "data" in config:
    from jaxtag.data import sources
    sources.DataSource(**config.data.to_dict())
  if "key_spec" in config:
    from jaxtag import keys
    keys.KeySpec(**config.key_spec.to_dict())


@pytest.mark.parametrize("preset", ["tiny", "default", "large"])
def test_corpus_config_argument_selects_preset(preset):
  module = importlib.import_module("launch.configs.corpus")
  assert module.get_config(preset).data.preset == preset
