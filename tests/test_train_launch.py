"""launch/train.py: the configs map onto TrainConfig; the stage runs end to end, survives SIGKILL."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jaxtag import config as config_lib
from jaxtag import train
from jaxtag.data import sources
from jaxtag.train import job as train_job
from launch.configs import train as train_configs

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("arg", ["surrogate", "suspect", "tiny"])
def test_config_variants_map_onto_train_config(arg):
  config = train_configs.get_config(arg)
  tc = config_lib.from_config(train_job.TrainJob, config)
  assert isinstance(tc, train.TrainConfig) and isinstance(tc.optim, train.OptimConfig)
  assert isinstance(tc.data, sources.DataSource) and tc.recipe == train.TrainConfig(
      **{f: getattr(tc, f) for f in train.TrainConfig.__dataclass_fields__})
  if arg == "suspect":
    assert config.seed != train_configs.get_config("surrogate").seed
    assert tc.augment.uses_features and tc.augment.mixup_alpha > 0
    assert tc.augment.noise_snr_db == (10.0, 40.0)
  else:
    assert not tc.augment.uses_features and tc.augment.mixup_alpha == 0
  with pytest.raises(ValueError, match="unknown recipe"):
    train_configs.get_config("teacher")
  other = train_configs.get_config(f"{arg},m5")
  other_job = config_lib.from_config(train_job.TrainJob, other)
  assert other.model == "m5" and other_job.model_overrides == {}


def _tiny_config(corpus_root, **overrides):
  config = train_configs.get_config("tiny")
  config.data.root = str(corpus_root)
  for key, value in overrides.items():
    setattr(config, key, value)
  return config


@pytest.fixture(scope="module")
def corpus_root(tmp_path_factory):
  root = tmp_path_factory.mktemp("corpus") / "tiny"
  sources.dataset_root(sources.DataSource(kind="corpus", preset="tiny", root=str(root)),
                       progress=False)
  return root


def _final_params(workdir):
  trained = train.restore_for_inference(workdir)
  return [np.asarray(x) for x in jax.tree.leaves((trained.params, trained.batch_stats))]


def _check_workdir(workdir, summary, corpus_root, epochs):
  """What a finished run leaves: model.json, metrics.jsonl, checkpoints, loadable final weights."""
  assert summary["steps"] == epochs
  info = json.loads((workdir / "model.json").read_text())
  assert info["model"] == "cnn" and info["class_names"] == ["down", "no", "up", "yes"]
  assert info["sample_rate"] == 16000 and info["clip_samples"] == 16000
  assert info["model_overrides"] == {"channels": [8, 16], "n_mels": 32}
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["kind"] for r in records].count("eval") == epochs and records[-1]["kind"] == "final"
  assert (workdir / "checkpoints" / str(epochs)).is_dir() and (workdir / "final").is_dir()
  # The restored model scores the test split exactly as the run reported.
  trained = train.restore_for_inference(workdir)
  test = sources.load_split(sources.DataSource(kind="corpus", preset="tiny",
                                               root=str(corpus_root)), "test", progress=False)
  logits, _ = jax.jit(lambda x: trained.model(x))(test.waveforms)
  accuracy = float(np.mean(np.argmax(logits, -1) == test.labels))
  assert accuracy == pytest.approx(summary["test/accuracy"], abs=1e-6)


def _command(corpus_root, workdir, epochs):
  return [sys.executable, "-m", "launch.train",
          "--config=" + str(ROOT / "launch" / "configs" / "train.py") + ":tiny",
          f"--workdir={workdir}", f"--config.data.root={corpus_root}",
          f"--config.num_epochs={epochs}", "--config.checkpoint_every_steps=2",
          "--config.num_devices=1"]


def test_sigkill_rerun_equals_uninterrupted_run_and_artifacts_load(corpus_root, tmp_path):
  """A launcher process killed with SIGKILL mid-run, then rerun, ends where an uninterrupted
  in-process ``run_stage`` of the same config ends; that run's artifacts are complete and load.

  Tolerance: the subprocesses see 1 CPU device, this process 8 fake ones, and XLA:CPU rounds a
  few float32 reductions differently between the two (max |diff| ~4e-7 after 40 steps, measured);
  an off-by-one step or key on resume moves parameters by ~1e-3 (lr 3e-3). The in-process
  resume test in test_train.py checks bit-exactness within one process.
  """
  epochs = 40  # 40 steps of 8 clips: long enough to be killed after the first checkpoints.
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
  killed = tmp_path / "killed"
  proc = subprocess.Popen(_command(corpus_root, killed, epochs), env=env, cwd=ROOT,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 120
  try:
    while not (killed / "checkpoints" / "4").is_dir() and time.time() < deadline:
      assert proc.poll() is None, "the launcher exited before its first checkpoints"
      time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
  finally:
    proc.wait()
  assert proc.returncode == -signal.SIGKILL
  assert not (killed / "model.json").exists(), "killed too late: the run had finished"
  rerun = subprocess.run(_command(corpus_root, killed, epochs), env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  resumed_from = int(json.loads((killed / "train_summary.json").read_text())["resumed_from"])
  assert 4 <= resumed_from < epochs

  reference = tmp_path / "reference"
  config = _tiny_config(corpus_root, num_epochs=epochs, num_devices=1, checkpoint_every_steps=2)
  summary = train_job.run_train_job(config_lib.from_config(train_job.TrainJob, config), reference)
  assert summary["resumed_from"] == 0
  _check_workdir(reference, summary, corpus_root, epochs)
  for a, b in zip(_final_params(killed), _final_params(reference)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)

  def rows(workdir):
    out = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "train/steps_per_s"} for r in out]

  got, want = rows(killed), rows(reference)
  assert [(r["kind"], r["step"]) for r in got] == [(r["kind"], r["step"]) for r in want]
  for g, w in zip(got, want):
    assert g.keys() == w.keys()
    np.testing.assert_allclose([g[k] for k in sorted(g) if k != "kind"],
                               [w[k] for k in sorted(w) if k != "kind"], rtol=1e-4, atol=1e-5)


# --- data options and split lists from the launcher's flags --------------------------------------

def _stereo_speech_commands(root: pathlib.Path) -> pathlib.Path:
  """Two classes of six one-second clips, one of them stereo; a validation list naming one clip
  that exists and one that does not; no test list (the source has no test split)."""
  import soundfile as sf

  from jaxtag.audio import io as audio_io
  t = np.arange(16000) / 16000
  for c, word in enumerate(("no", "yes")):
    for n in range(6):
      tone = (0.3 * np.sin(2 * np.pi * (300 + 200 * c + 20 * n) * t)).astype(np.float32)
      audio_io.write_wav(root / word / f"spk{n}_nohash_0.wav", tone, 16000)
  sf.write(root / "yes" / "spk5_nohash_0.wav", np.stack([tone, tone], axis=1), 16000)
  (root / "validation_list.txt").write_text("no/spk0_nohash_0.wav\nyes/gone_nohash_0.wav\n")
  return root


def _launch_train(data_root, workdir, *flags):
  cmd = [sys.executable, "-m", "launch.train", "--config=launch/configs/train.py:tiny",
         f"--workdir={workdir}", "--config.data.kind=speech_commands",
         f"--config.data.root={data_root}", "--config.num_epochs=1", "--config.num_devices=1",
         *flags]
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  return proc, [line for line in proc.stderr.splitlines() if line.startswith("error: ")]


def test_loader_options_and_split_lists_from_the_launcher_flags(tmp_path):
  """`--config.data.mono=mean` reaches the loader; a split list naming a missing file stops the
  launcher with one line naming the list, the line and the file, unless
  `--config.data.on_missing_file=skip`, which the summary then records."""
  data = _stereo_speech_commands(tmp_path / "sc")
  proc, errors = _launch_train(data, tmp_path / "stereo")
  assert proc.returncode == 1 and len(errors) == 1, proc.stderr[-2000:]
  assert "spk5_nohash_0.wav" in errors[0] and "2 channels" in errors[0]
  assert "--config.data.mono=mean" in errors[0] and "--config.data.on_bad_file=skip" in errors[0]

  proc, errors = _launch_train(data, tmp_path / "missing", "--config.data.mono=mean")
  assert proc.returncode == 1 and len(errors) == 1, proc.stderr[-2000:]
  assert f"{data / 'validation_list.txt'} line 2: names {data / 'yes' / 'gone_nohash_0.wav'}" \
      in errors[0] and "--config.data.on_missing_file=skip" in errors[0]
  assert not (tmp_path / "missing" / "checkpoints").exists()

  workdir = tmp_path / "trained"
  proc, errors = _launch_train(data, workdir, "--config.data.mono=mean",
                               "--config.data.on_missing_file=skip")
  assert proc.returncode == 0 and not errors, proc.stderr[-3000:]
  summary = json.loads((workdir / train_job.SUMMARY).read_text())
  assert summary["splits"] == {
      "train": {"num_clips": 11, "skipped_missing": 0, "skipped_bad": 0},
      "validation": {"num_clips": 1, "skipped_missing": 1, "skipped_bad": 0},
      "test": {"absent": True}}
  assert summary["steps"] == 1 and summary["val/count"] == 1 and "test/count" not in summary
  assert "validation_list.txt: 1 listed file(s) do not exist" in proc.stderr
  assert "No 'test' split" in proc.stderr
  assert json.loads((workdir / "config.json").read_text())["data"]["mono"] == "mean"


def test_train_config_messages_name_the_launcher_flags():
  from jaxtag import errors
  config = train_configs.get_config("tiny")
  config.batch_size = 0
  with pytest.raises(ValueError, match=r"^TrainConfig\.batch_size must be positive"):
    config_lib.from_config(train_job.TrainJob, config)
  with errors.launcher_flags(config.to_dict(), train_job.FLAG_OWNERS):
    with pytest.raises(ValueError, match=r"^--config\.batch_size must be positive"):
      config_lib.from_config(train_job.TrainJob, config)
    config.batch_size, config.optim.learning_rate = 8, 0.0
    with pytest.raises(ValueError, match=r"^--config\.optim\.learning_rate must be positive"):
      config_lib.from_config(train_job.TrainJob, config)
