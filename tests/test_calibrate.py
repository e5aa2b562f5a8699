"""launch/calibrate.py: benign models trained, verified, summarised; a rerun trains nothing."""

import json

import numpy as np
import pytest

from jaxtag import keys as keys_lib
from jaxtag import stats
from jaxtag.data import sources
from jaxtag.taggants import blackbox
from launch import calibrate, make_keys
from launch.configs import calibrate as calibrate_configs
from launch.configs import keys as keys_configs


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  """A tiny corpus and a key file made for its classes by the make_keys stage."""
  base = tmp_path_factory.mktemp("calibrate")
  corpus_root = base / "corpus"
  sources.dataset_root(sources.DataSource(kind="corpus", preset="tiny", root=str(corpus_root)),
                       progress=False)
  config = keys_configs.get_config("tiny")
  config.data.root = str(corpus_root)
  config.key_spec.griffin_lim_iters = 4
  config.export_wav = False
  key_file = make_keys.run_stage(config, base / "keys")["key_file"]
  return corpus_root, key_file


def _config(corpus_root, key_file):
  config = calibrate_configs.get_config("tiny")
  config.key_file = key_file
  config.train.data.root = str(corpus_root)
  config.train.num_devices = 1
  return config


def test_calibrate_trains_verifies_and_resumes(setup, tmp_path, monkeypatch):
  corpus_root, key_file = setup
  config = _config(corpus_root, key_file)
  assert config.num_models == 2 and config.train.model == "cnn"
  summary = calibrate.run_stage(config, tmp_path)
  assert json.loads((tmp_path / "calibration.json").read_text()) == json.loads(
      json.dumps(summary))

  secret, _ = keys_lib.load_keys(key_file)
  num_keys, num_classes = len(secret.labels), 4
  assert summary["num_models"] == 2 and summary["num_keys"] == num_keys
  assert summary["num_classes"] == num_classes and summary["decision_k"] == 1
  for i, model in enumerate(summary["models"]):
    model_dir = tmp_path / f"model_{i}"
    assert model["seed"] == 100 + i and model["trained_now"]
    assert json.loads((model_dir / "config.json").read_text())["seed"] == 100 + i
    # The hits, recomputed from the model's own answers.
    top1 = blackbox.LocalBlackBox(model_dir).top_k(secret.waveforms, 1)[:, 0]
    hits = int(np.sum(top1 == secret.labels))
    assert model["hits"] == hits == summary["hits"][i]
    assert model["p_value"] == summary["p_values"][i] == stats.binomial_p_value(
        hits, num_keys, 1 / num_classes)
    assert model["decision"] == (model["p_value"] <= 1e-3)
    assert len(model["hits_per_k"]) == num_classes and model["hits_per_k"][-1] == num_keys
    assert (model_dir / "verify_report.json").is_file()
  positives = sum(m["decision"] for m in summary["models"])
  assert summary["false_positives"] == positives
  assert summary["false_positive_rate"] == positives / 2
  assert summary["false_positive_rate_ci95"] == list(stats.clopper_pearson(positives, 2))
  assert summary["h0_false_positive_rate"] == stats.exact_size(num_keys, 0.25, 1e-3)
  assert summary["h0_mean_hits"] == num_keys / num_classes

  # A rerun trains nothing; one whose run lost its summary (interrupted) is trained again.
  calls = []
  real_run_stage = calibrate.train_launcher.run_stage
  monkeypatch.setattr(calibrate.train_launcher, "run_stage",
                      lambda c, w: calls.append(w.name) or real_run_stage(c, w))
  again = calibrate.run_stage(config, tmp_path)
  assert calls == [] and not any(m["trained_now"] for m in again["models"])
  assert again["p_values"] == summary["p_values"]
  (tmp_path / "model_1" / "train_summary.json").unlink()
  third = calibrate.run_stage(config, tmp_path)
  assert calls == ["model_1"] and [m["trained_now"] for m in third["models"]] == [False, True]
  assert third["p_values"] == summary["p_values"]


def test_calibrate_config_and_bad_arguments(tmp_path):
  assert calibrate_configs.get_config().train.model == "cnn"
  assert calibrate_configs.get_config().train.augment.mixup_alpha > 0  # The suspect's recipe.
  with pytest.raises(ValueError, match="unknown argument 'huge'"):
    calibrate_configs.get_config("huge")
  config = calibrate_configs.get_config("tiny")
  config.num_models = 0
  with pytest.raises(ValueError, match="num_models must be >= 1"):
    calibrate.run_stage(config, tmp_path)
