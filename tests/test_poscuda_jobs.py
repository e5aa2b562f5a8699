"""Tests for PosCUDA's stages as library jobs (jaxtag.poscuda.jobs, evaluate, report) on the tiny
corpus, their generated launcher configs, and their thin launchers."""

import ast
import dataclasses
import json
import pathlib
import stat

import jax
import numpy as np
import pytest

from jaxtag import config as config_lib
from jaxtag import poscuda, secrets
from jaxtag import workdir as workdir_lib
from jaxtag.data import sources
from jaxtag.poscuda import evaluate, jobs, report
from launch.configs import common

C = 6
SPEC = poscuda.PoscudaSpec(clip_samples=4000)
LAUNCH = pathlib.Path(__file__).resolve().parent.parent / "launch"


def _protect_job(preset="tiny", **fields):
  from launch.configs import poscuda_protect as protect_config
  return dataclasses.replace(
      config_lib.from_config(jobs.ProtectJob, protect_config.get_config(preset)), **fields)


def _eval_job(preset="tiny", **fields):
  from launch.configs import poscuda_eval as eval_config
  return dataclasses.replace(
      config_lib.from_config(jobs.EvalJob, eval_config.get_config(preset)), **fields)


# --- configs and launchers ----------------------------------------------------------------------


def test_configs_are_generated_from_the_jobs_and_keep_their_presets():
  from launch.configs import poscuda_eval as eval_config
  from launch.configs import poscuda_protect as protect_config
  for module, job_cls, preset in ((protect_config, jobs.ProtectJob, "small"),
                                  (eval_config, jobs.EvalJob, "tiny")):
    config = module.get_config(preset)
    # Every field of the job, and nothing else: the config is the job's ConfigDict.
    assert json.loads(config.to_json_best_effort()) == json.loads(
        common.to_config(config_lib.from_config(job_cls, config)).to_json_best_effort())
    assert config.data.preset == preset
  protect = _protect_job("default")
  assert protect == jobs.ProtectJob(output_root=None)
  assert protect.spec.resolve(sources.load_split(sources.DataSource(preset="tiny"), "train",
                                                 progress=False)) == poscuda.PoscudaSpec()
  assert _eval_job("default") == jobs.EvalJob()
  tiny = _eval_job("tiny")
  assert tiny.variants == "nopos:0.3,pos:0.3" and tiny.attack.modes == "blur"
  assert tiny.recipe("m5") == evaluate.EvalRecipe(
      "m5", {"n_channel": 8, "first_stride": 16, "channel_multipliers": [1, 1, 2, 2]}, 1, 8, 1e-2)
  assert tiny.recipe("lstm").model_overrides == {"hidden_size": 16, "pooling": "mean"}
  assert tiny.recipe("transformer") == evaluate.EvalRecipe(
      "transformer", {"width": 32, "num_heads": 2, "mlp_dim": 64}, 1, 8, 1e-3)
  with pytest.raises(ValueError, match="unknown argument"):
    eval_config.get_config("large")


@pytest.mark.parametrize("stage", ["poscuda_protect", "poscuda_eval"])
def test_launchers_are_thin_and_import_no_other_launcher(stage):
  source = (LAUNCH / f"{stage}.py").read_text()
  assert len(source.splitlines()) <= 120
  imported = set()
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.ImportFrom):
      imported |= {f"{node.module}.{a.name}" for a in node.names}
    elif isinstance(node, ast.Import):
      imported |= {a.name for a in node.names}
  assert {m for m in imported if m.startswith("launch")} == {"launch.app"}
  assert f"jaxtag.poscuda.jobs.run_{stage.split('_')[1]}_job" in source


# --- protect ------------------------------------------------------------------------------------


def test_spec_config_positions_active_uses_the_datas_window():
  train = sources.load_split(sources.DataSource(preset="tiny"), "train", progress=False)
  assert jobs.SpecConfig().resolve(train).position_window is None
  spec = jobs.SpecConfig(positions="active", active_level=0.7).resolve(train)
  assert spec.position_window == poscuda.active_window(train.waveforms, spec.patch, level=0.7)
  assert (spec.sample_rate, spec.clip_samples) == (train.sample_rate, train.num_samples)
  assert jobs.SpecConfig(positions="active", use_positions=False).resolve(
      train).position_window is None
  with pytest.raises(ValueError, match="SpecConfig.positions must be 'active' or 'anywhere'"):
    jobs.SpecConfig(positions="middle")
  with pytest.raises(ValueError, match="blur"):
    jobs.SpecConfig(blur=0.0).resolve(train)


def test_protect_job_writes_the_layout_and_the_secret(tmp_path):
  from jaxtag.data import speechcommands
  job = _protect_job(output_root=str(tmp_path / "published"))
  workdir = tmp_path / "work"
  with pytest.raises(secrets.SecretFileError, match="inside the dataset"):
    jobs.check_protect_locations(job, tmp_path / "published" / "secret")
  with pytest.raises(ValueError, match="output_root"):
    jobs.run_protect_job(dataclasses.replace(job, output_root=None), workdir)
  summary = jobs.run_protect_job(job, workdir)
  root = pathlib.Path(summary["output_root"])
  secret, _ = poscuda.load_filters(summary["secret_file"],
                                   expected_class_names=sources.class_names(job.data))
  assert stat.S_IMODE(pathlib.Path(summary["secret_file"]).stat().st_mode) == 0o600
  for split in ("train", "validation", "test"):
    original = sources.load_split(job.data, split, progress=False)
    written = speechcommands.load_speech_commands(root, split)
    assert written.paths == original.paths
    if split != "train":
      np.testing.assert_array_equal(written.waveforms, original.waveforms)
      continue
    expected = poscuda.apply_in_batches(original.waveforms, original.labels, secret)
    np.testing.assert_allclose(written.waveforms, expected, atol=1 / 32768)  # 16-bit WAV
    for i, label in enumerate(original.labels):
      start = int(secret.positions[label])
      keep = np.ones(original.num_samples, bool)
      keep[start:start + secret.spec.patch] = False
      np.testing.assert_array_equal(written.waveforms[i][keep], original.waveforms[i][keep])
  assert (root / speechcommands.BACKGROUND_NOISE_DIR).is_dir()
  assert not (root / jobs.SECRET_FILENAME).exists()
  assert summary["snr_db"]["min"] <= summary["snr_db"]["median"]
  assert workdir_lib.read_recorded(workdir) == workdir_lib.as_json(job)

  # Re-run after an interruption (no summary yet): the secret file is reused untouched, the
  # dataset written again whole; the same summary.
  secret_file = pathlib.Path(summary["secret_file"])
  secret_bytes, secret_mtime = secret_file.read_bytes(), secret_file.stat().st_mtime_ns
  (workdir / jobs.PROTECT_SUMMARY).unlink()
  again = jobs.run_protect_job(job, workdir)
  assert again == summary
  assert secret_file.read_bytes() == secret_bytes and secret_file.stat().st_mtime_ns == secret_mtime
  assert sorted(p.name for p in root.parent.iterdir()) == ["published", "work"]  # no temp left
  # A finished run of the same job is reused outright.
  assert jobs.run_protect_job(job, workdir) == {**summary, "reused": True}
  other = dataclasses.replace(job, seed=7)
  with pytest.raises(workdir_lib.ConfigChangedError, match="differ .*: seed"):
    jobs.run_protect_job(other, workdir)
  (workdir / "config.json").unlink()   # Without the record, the secret file itself refuses.
  (workdir / jobs.PROTECT_SUMMARY).unlink()
  with pytest.raises(secrets.SecretFileError, match="provenance.seed"):
    jobs.run_protect_job(other, workdir)
  assert secret_file.read_bytes() == secret_bytes
  with pytest.raises(ValueError, match="not written by this workdir"):
    jobs.run_protect_job(other, tmp_path / "another")


def test_protect_job_publishes_a_tfds_source_as_tfds(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  from jaxtag.data import tfds as jtfds
  corpus = sources.load_splits(sources.DataSource(preset="tiny"), progress=False)
  jtfds.export_tfds(corpus, tmp_path / "tfds", name="tiny_words")
  source = sources.DataSource(kind="tfds", name="tiny_words", data_dir=str(tmp_path / "tfds"))
  job = jobs.ProtectJob(data=source, output_root=str(tmp_path / "published"))
  with pytest.raises(secrets.SecretFileError, match="inside the dataset"):
    jobs.check_protect_locations(job, tmp_path / "tfds" / "tiny_words" / "work")
  summary = jobs.run_protect_job(job, tmp_path / "work")
  secret, _ = poscuda.load_filters(summary["secret_file"])
  published = dataclasses.replace(source, name="tiny_words_protected",
                                  data_dir=summary["output_root"])
  for split, original in sources.load_splits(source, progress=False).items():
    written = sources.load_split(published, split, progress=False)
    np.testing.assert_array_equal(written.labels, original.labels)
    if split == "train":
      expected = poscuda.apply_in_batches(original.waveforms, original.labels, secret)
      np.testing.assert_allclose(written.waveforms, expected, atol=1 / 32768)
      assert not np.allclose(written.waveforms, original.waveforms, atol=1 / 32768)
    else:
      np.testing.assert_array_equal(written.waveforms, original.waveforms)


# --- evaluate -----------------------------------------------------------------------------------


def test_eval_job_runs_on_the_tiny_config_and_reuses_runs(tmp_path):
  job = _eval_job(models="m5", variants="pos:0.3", num_devices=1)
  workdir = tmp_path / "eval"
  result = jobs.run_eval_job(job, workdir)
  assert set(result["variants"]) == {"pos_b0.3"}
  runs = result["rows"]["m5"]["runs"]
  assert set(runs) == {"clean", "pos_b0.3"}
  for name, run in runs.items():
    assert 0.0 <= run["test"] <= 1.0
    if name != "clean":
      assert 0.0 <= run["filtered_test"] <= 1.0 and run["frechet"] >= 0.0
  assert set(runs["clean"]["filtered_test"]) == {"pos_b0.3"}
  assert set(runs["pos_b0.3"]["mixed_test"]) == {"filters", "positions"}
  assert all(0.0 <= v <= 1.0 for v in runs["pos_b0.3"]["mixed_test"].values())
  q = result["variants"]["pos_b0.3"]["snr_db"]
  assert q["min"] <= q["p5"] <= q["median"]
  assert "blur" in result["attack"]["modes"]
  text = (workdir / "poscuda_eval.txt").read_text()
  assert text == report.format_report(result)
  assert "| PosCUDA b=0.3 |" in text and "PANN" in text and "learnability" in text
  assert "positions mixed" in text
  assert json.loads((workdir / jobs.EVAL_REPORT).read_text())["rows"]["m5"]["runs"] == runs
  from matplotlib import image
  png = image.imread(workdir / "poscuda_eval.png")
  assert png.ndim == 3 and png.shape[0] > 200 and png.shape[1] > 500
  assert png[..., :3].std() > 0.05, "the plot is blank"
  # A finished evaluation of the same job is returned as it is.
  assert jobs.run_eval_job(job, workdir) == {**result, "reused": True}
  (workdir / jobs.EVAL_REPORT).unlink()   # As if interrupted: finished runs are reused.
  again = jobs.run_eval_job(job, workdir)
  assert again["rows"] == result["rows"]
  assert again["wall_seconds"] < result["wall_seconds"]
  m5 = {**job.recipes["m5"], "num_epochs": 2}
  stale = dataclasses.replace(job, recipes={**job.recipes, "m5": m5})
  with pytest.raises(workdir_lib.ConfigChangedError, match="recipes.m5.num_epochs"):
    jobs.run_eval_job(stale, workdir)
  (workdir / "config.json").unlink()      # A stale run is never silently reused.
  (workdir / jobs.EVAL_REPORT).unlink()
  with pytest.raises(ValueError, match="another recipe"):
    jobs.run_eval_job(stale, workdir)


def test_eval_mixing_gives_each_class_the_next_class_filter_or_position():
  secret = poscuda.make_filters(jax.random.key(0), SPEC, C)
  r = np.random.default_rng(0)
  x = (0.05 * r.standard_normal((12, SPEC.clip_samples))).astype(np.float32)
  y = (np.arange(12) % C).astype(np.int32)
  f, pos = np.asarray(secret.filters), np.asarray(secret.positions)
  by_filter = evaluate.mixed(secret, "filters")
  by_position = evaluate.mixed(secret, "positions")
  np.testing.assert_array_equal(by_filter.positions, pos)
  np.testing.assert_array_equal(by_filter.filters[1:], f[:-1])
  np.testing.assert_array_equal(by_position.filters, f)
  np.testing.assert_array_equal(by_position.positions[0], pos[-1])
  out = np.asarray(poscuda.apply_poscuda(x, y, by_position))
  for i in range(len(x)):          # the class's own filter, at the previous class's position
    start = int(pos[(y[i] - 1) % C])
    np.testing.assert_array_equal(out[i], np.asarray(poscuda.filter_patch(x[i], f[y[i]], start,
                                                                          SPEC.patch)))
  with pytest.raises(ValueError, match="part"):
    evaluate.mixed(secret, "taps")


def test_eval_job_variants_parse_and_reject_typos():
  assert evaluate.parse_variants("pos:0.3, nopos:0.01") == [
      ("pos_b0.3", True, 0.3), ("nopos_b0.01", False, 0.01)]
  with pytest.raises(ValueError, match="posx"):
    evaluate.parse_variants("posx:0.3")
  job = _eval_job("default")
  with pytest.raises(ValueError, match="attack.variant"):
    dataclasses.replace(job, variants="pos:0.01")   # the attacked pos:0.3 is no longer trained
  with pytest.raises(ValueError, match="missing: \\['cnn'\\]"):
    dataclasses.replace(job, models="m5,cnn")
  with pytest.raises(ValueError, match="posx"):
    dataclasses.replace(job, variants="posx:0.3", attack=jobs.AttackConfig(modes=""))
  with pytest.raises(TypeError, match="recipes.lstm.*epochs"):
    dataclasses.replace(job, recipes={**job.recipes, "lstm": {"epochs": 3}})
  # With the attack off, the attacked names need not match.
  dataclasses.replace(job, variants="pos:0.01", attack=jobs.AttackConfig(modes=""))
