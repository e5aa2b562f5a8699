"""The calibrate stage (jaxtag.taggants.jobs.run_calibrate_job) and jaxtag.taggants.calibrate: benign models against fresh key draws; the
empirical false-positive rate is within alpha (and the check catches an anti-conservative test);
the statistics are verify's; an interrupted run resumes."""

import json

import jax
import numpy as np
import pytest

from jaxtag import rng, stats
from jaxtag.data import sources
from jaxtag.taggants import blackbox, calibrate as calibrate_lib, verify
from jaxtag import config as config_lib
from jaxtag import workdir as workdir_lib
from jaxtag.taggants import jobs
from launch.configs import calibrate as calibrate_configs
from launch.configs import demo as demo_configs


def _run(config, workdir):
  """The calibrate stage as launch/calibrate.py runs it: the typed job from the config."""
  return jobs.run_calibrate_job(config_lib.from_config(jobs.CalibrateJob, config), workdir)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """The tiny calibration (2 benign models, 40 fresh key draws) run once: (config, workdir,
  summary)."""
  base = tmp_path_factory.mktemp("calibrate")
  corpus_root = base / "corpus"
  sources.dataset_root(sources.DataSource(kind="corpus", preset="tiny", root=str(corpus_root)),
                       progress=False)
  config = calibrate_configs.get_config("tiny")
  config.train.data.root = str(corpus_root)
  config.train.num_devices = 1
  workdir = base / "work"
  return config, workdir, _run(config, workdir)


def test_launcher_trains_benign_models_and_calibrates(run):
  config, workdir, summary = run
  assert json.loads((workdir / "calibration.json").read_text()) == json.loads(json.dumps(summary))
  assert summary["num_models"] == 2 and summary["num_key_draws"] == 40
  assert summary["num_keys"] == 8 and summary["num_classes"] == 4   # Two label blocks.
  records = calibrate_lib.read_finished(workdir / jobs.CALIBRATION_DRAWS)
  assert sorted(records) == list(range(40))
  p = np.asarray([[m["p_value"] for m in records[d]["models"]] for d in range(40)])
  for level in summary["exact_test"]["levels"]:
    alpha = level["alpha"]
    positives = int(np.sum(p <= alpha))
    assert level["false_positives"] == positives and level["trials"] == 80
    assert level["ci95"] == list(stats.clopper_pearson(positives, 80))
    assert level["ci95"][0] <= alpha   # The empirical rate is consistent with <= alpha.
    assert 0 <= level["promised_rate"] <= alpha
    assert sum(m["false_positives"] for m in level["per_model"]) == positives
  assert summary["design_floor"] == (1 / 24) ** 2 and summary["exact_test"]["methods"] == {
      "exact": 80}




def test_fresh_key_calibration_against_answering_benign_models(tiny_box, tmp_path):
  """Benign boxes whose answers vary with the key (the tiny trained classifier and two hashed
  rankings): the empirical rate is within alpha at every level, near what the exact test
  promises, and the same check rejects an anti-conservative p-value (p / 10)."""
  from tiny_classifier import CLASSES, CLIP, SR
  spec = calibrate_lib.KeySpec(num_keys=8, d=8, sample_rate=SR, clip_samples=CLIP, n_fft=256,
                               win_length=200, hop_length=80, n_mels=32, mel_inversion_iters=10,
                               griffin_lim_iters=2)
  boxes = [tiny_box, calibrate_lib.HashedBenignBox(CLASSES, SR, b"a"),
           calibrate_lib.HashedBenignBox(CLASSES, SR, b"b")]
  config = calibrate_lib.CalibrationConfig(num_key_draws=300, draws_per_batch=100, max_k=2)
  summary = calibrate_lib.calibrate(boxes, jax.random.key(11), spec, config,
                                    tmp_path / "draws.jsonl", progress=False)
  assert summary["num_keys"] == 8 and summary["num_classes"] == 6   # Blocks of 6 and 2 keys.
  records = [calibrate_lib.read_finished(tmp_path / "draws.jsonl")[d] for d in range(300)]
  for level in summary["exact_test"]["levels"]:
    assert level["trials"] == 900 and level["ci95"][0] <= level["alpha"], level
    assert level["promised_rate"] <= level["alpha"]
    low, high = stats.clopper_pearson(level["false_positives"], 900, 0.999)
    assert low <= level["promised_rate"] <= high   # The test does what it promises.
  assert summary["exact_test"]["levels"][0]["false_positives"] >= 10   # Not a vacuous check.
  for record in records:
    for m in record["models"]:
      m["cheat"] = m["p_value"] / 10
  cheat = calibrate_lib.summarise(records, config, summary["models"], "cheat")
  assert cheat["levels"][0]["ci95"][0] > 0.05 and cheat["levels"][1]["ci95"][0] > 0.01


def test_each_draw_is_fresh_and_scored_as_verify_scores_it(run):
  config, workdir, summary = run
  records = calibrate_lib.read_finished(workdir / jobs.CALIBRATION_DRAWS)
  labels = {tuple(r["labels"]) for r in records.values()}
  assert len(labels) > 20   # New labels per draw, not one key file.
  box = blackbox.LocalBlackBox(workdir / "model_1")
  spec = calibrate_lib.KeySpec(**summary["key_spec"])
  stream = rng.stream(jax.random.key(config.seed), "calibration")
  keys = calibrate_lib.draw_keys(stream, np.asarray([7]), spec, 4)
  one = jax.tree.map(lambda x: x[0], keys)
  report = verify.verify(box, one)
  assert list(np.asarray(one.labels)) == records[7]["labels"]
  assert records[7]["models"][1]["p_value"] == pytest.approx(report.p_value, rel=1e-12)
  assert records[7]["models"][1]["hits"] == report.decision_hits


def test_a_rerun_resumes_the_missing_draws(run, monkeypatch):
  config, workdir, summary = run
  path = workdir / jobs.CALIBRATION_DRAWS
  lines = path.read_text().splitlines()
  path.write_text("\n".join(lines[:-3]) + "\n" + lines[-3][:10])   # Torn last line.
  drawn = []
  real = calibrate_lib.draw_keys
  monkeypatch.setattr(calibrate_lib, "draw_keys",
                      lambda s, d, *a: drawn.append(list(np.asarray(d))) or real(s, d, *a))
  again = _run(config, workdir)
  assert sorted(x for batch in drawn for x in batch) == sorted(
      json.loads(line)["draw"] for line in lines[-3:])
  assert not any(t["trained_now"] for t in again["trained"])
  assert again["exact_test"] == summary["exact_test"]
  config.calibration.num_key_draws = 41
  with pytest.raises(workdir_lib.ConfigChangedError, match="calibration.num_key_draws"):
    _run(config, workdir)


def test_calibrate_config_and_bad_arguments(tmp_path):
  assert calibrate_configs.get_config().train.model == "cnn"
  assert calibrate_configs.get_config().train.augment.mixup_alpha > 0  # The suspect's recipe.
  assert calibrate_configs.get_config("small").calibration.num_key_draws >= 1000
  assert calibrate_configs.get_config("small").num_models >= 3
  with pytest.raises(ValueError, match="unknown argument 'huge'"):
    calibrate_configs.get_config("huge")
  # `demo`: the demo's benign control (recipe, seed, backbone where `make demo` trains it), keys
  # and decision, taken from the demo's config rather than restated.
  demo_cfg, demo_calibration = demo_configs.get_config("default"), calibrate_configs.get_config(
      "demo")
  benign = demo_cfg.benign.to_dict()
  assert {**demo_calibration.train.to_dict(), "progress": benign["progress"],
          "init_from": None} == benign
  assert demo_calibration.train.init_from == "workdirs/demo/backbone"
  assert demo_calibration.first_seed == demo_cfg.benign.seed
  assert demo_calibration.key_spec.to_dict() == demo_cfg.key_spec.to_dict()
  assert demo_calibration.calibration.decision_k == demo_cfg.verify.decision_k == 3
  config = calibrate_configs.get_config("tiny")
  config.num_models = 0
  with pytest.raises(ValueError, match="num_models must be >= 1"):
    _run(config, tmp_path)
  with pytest.raises(ValueError, match="decision_k .3. exceeds max_k .2."):
    calibrate_lib.CalibrationConfig(max_k=2, decision_k=3)
  with pytest.raises(ValueError, match="alphas must be levels"):
    calibrate_lib.CalibrationConfig(alphas=(0.05, 1.0))
