"""CBW's stages on a tiny speaker-folder dataset: protect, verify (local and HTTP), the demo chain,
and the resumption of each."""

import dataclasses
import os
import pathlib

import numpy as np
import pytest

from jaxtag import secrets
from jaxtag import workdir as workdir_lib
from jaxtag.cbw import jobs, watermark
from jaxtag.data.dataset import DatasetError
from jaxtag.speaker import data as data_lib
from jaxtag.speaker.job import SpeakerTrainJob, run_speaker_train_job
from jaxtag.speaker.model import preset

SR = 16000
CLIP = 0.5


def _voice(rng, f0, n):
  t = np.arange(n) / SR
  x = sum(np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 6.3)) / k for k in range(1, 6))
  return (0.1 * x + 0.01 * rng.standard_normal(n)).astype(np.float32)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
  """8 speakers (distinct pitches) x 5 utterances; 3 held out."""
  root = tmp_path_factory.mktemp("speakers")
  rng = np.random.default_rng(0)
  utts = {f"s{s}/u{u}.wav": _voice(rng, 110 + 35 * s, int(CLIP * SR))
          for s in range(8) for u in range(5)}
  data_lib.write_speaker_folders(root, utts, SR)
  (root / data_lib.TEST_SPEAKERS_FILE).write_text("s1\ns4\ns6\n")
  return data_lib.SpeakerSource(kind="speaker_folders", root=str(root), clip_seconds=CLIP)


def tiny_train_job(source, seed=0):
  model = dataclasses.replace(preset("dvector-small"), hidden_size=16, embedding_dim=8)
  return SpeakerTrainJob(model=model, steps=3, speakers_per_batch=2, utterances_per_speaker=2,
                         checkpoint_every=3, log_every=1, enrol_utterances=2, seed=seed,
                         data=source, num_devices=1, progress=False)


@pytest.fixture(scope="module")
def surrogate(source, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("surrogate")
  run_speaker_train_job(tiny_train_job(source), workdir)
  return str(workdir)


def protect_job(source, surrogate, out, **overrides):
  return jobs.CbwProtectJob(data=source, surrogate_workdir=surrogate, output_root=str(out),
                            watermark=watermark.WatermarkConfig(num_clusters=2,
                                                                utterance_fraction=0.2),
                            perceptual=False, **overrides)


def test_protect_writes_the_secret_and_the_copy_and_resumes(source, surrogate, tmp_path):
  job = protect_job(source, surrogate, tmp_path / "out")
  summary = jobs.run_cbw_protect_job(job, tmp_path / "wd")
  secret = pathlib.Path(summary["secret_file"])
  assert os.stat(secret).st_mode & 0o077 == 0
  assert summary["triggered"] == 5 and summary["num_clusters"] == 2   # 1 of 5 per speaker
  wm = watermark.read_watermark(secret)
  protected = data_lib.load_speaker_splits(dataclasses.replace(source, root=str(tmp_path / "out")),
                                           progress=False)["train"]
  clean = data_lib.load_speaker_splits(source, progress=False)["train"]
  changed = np.flatnonzero(np.any(protected.waveforms != clean.waveforms, axis=1))
  np.testing.assert_array_equal(changed, wm.triggered)
  # Finished: reused. Interrupted after the secret: the secret is reused untouched.
  assert jobs.run_cbw_protect_job(job, tmp_path / "wd")["reused"]
  before = secret.read_bytes()
  (tmp_path / "wd" / jobs.PROTECT_SUMMARY).unlink()
  again = jobs.run_cbw_protect_job(job, tmp_path / "wd")
  assert secret.read_bytes() == before and again["triggered"] == summary["triggered"]
  with pytest.raises(workdir_lib.ConfigChangedError):
    jobs.run_cbw_protect_job(dataclasses.replace(job, seed=1), tmp_path / "wd")


def test_protect_never_overwrites_a_secret_it_did_not_record(source, surrogate, tmp_path):
  (tmp_path / "wd").mkdir()
  (tmp_path / "wd" / jobs.SECRET_FILENAME).write_bytes(b"someone's secret")
  for _ in range(2):   # refused again on a re-run: the refusal recorded nothing
    with pytest.raises(secrets.SecretFileError, match="exists but this workdir recorded no run"):
      jobs.run_cbw_protect_job(protect_job(source, surrogate, tmp_path / "out"), tmp_path / "wd")
  assert (tmp_path / "wd" / jobs.SECRET_FILENAME).read_bytes() == b"someone's secret"


def test_protect_refuses_more_clusters_than_speakers(source, surrogate, tmp_path):
  job = dataclasses.replace(protect_job(source, surrogate, tmp_path / "out"),
                            watermark=watermark.WatermarkConfig(num_clusters=6))
  with pytest.raises(DatasetError, match="larger than the number of training speakers"):
    jobs.run_cbw_protect_job(job, tmp_path / "wd")


@pytest.fixture(scope="module")
def protected(source, surrogate, tmp_path_factory):
  base = tmp_path_factory.mktemp("protected")
  return jobs.run_cbw_protect_job(protect_job(source, surrogate, base / "out"), base / "wd")


@pytest.mark.parametrize("mode", ["score", "decision"])
def test_verify_job_writes_its_report_and_is_reused(source, surrogate, protected, tmp_path, mode):
  job = jobs.CbwVerifyJob(data=source, secret_file=protected["secret_file"],
                          model_workdir=surrogate, mode=mode)
  result = jobs.run_cbw_verify_job(job, tmp_path)
  assert 0.0 <= result["p_value"] <= 1.0 and result["mode"] == mode
  assert np.asarray(result["matrix"]).shape == (3, 2)
  if mode == "decision":
    assert set(np.unique(result["matrix"])) <= {0.0, 1.0}
    from jaxtag.speaker.embedder import load_embedder
    assert result["threshold"] == pytest.approx(load_embedder(surrogate).threshold)
  else:
    assert result["threshold"] is None
  for name in (jobs.VERIFY_SUMMARY, "cbw_verify.txt", "cbw_verify.png"):
    assert (tmp_path / name).stat().st_size > 0
  assert jobs.run_cbw_verify_job(job, tmp_path)["reused"]


def test_verify_refuses_a_secret_of_another_dataset(source, surrogate, protected, tmp_path):
  other = dataclasses.replace(source, kind="speaker_folders")
  root = pathlib.Path(source.root)
  (tmp_path / "copy").mkdir()
  for speaker in ("s0", "s1", "s2", "s3", "s4"):
    (tmp_path / "copy" / speaker).symlink_to(root / speaker)
  (tmp_path / "copy" / data_lib.TEST_SPEAKERS_FILE).write_text("s2\ns3\n")
  job = jobs.CbwVerifyJob(data=dataclasses.replace(other, root=str(tmp_path / "copy")),
                          secret_file=protected["secret_file"], model_workdir=surrogate)
  with pytest.raises(DatasetError, match="does not match"):
    jobs.run_cbw_verify_job(job, tmp_path / "wd")


def test_verify_over_http_equals_local(source, surrogate, protected, tmp_path):
  from jaxtag import serving
  from jaxtag.speaker import blackbox
  from jaxtag.speaker.embedder import load_embedder
  box = blackbox.LocalSpeakerBlackBox(load_embedder(surrogate), mode="score")
  local = jobs.run_cbw_verify_job(jobs.CbwVerifyJob(
      data=source, secret_file=protected["secret_file"], model_workdir=surrogate), tmp_path / "l")
  with serving.running(serving.make_speaker_server(box)) as server:
    remote = jobs.run_cbw_verify_job(jobs.CbwVerifyJob(
        data=source, secret_file=protected["secret_file"], url=server.url), tmp_path / "r")
  np.testing.assert_allclose(remote["matrix"], local["matrix"], atol=1e-3)
  assert remote["suspect"].startswith("http")


def test_demo_chain_on_a_tiny_configuration_and_its_resumption(source, tmp_path):
  from jaxtag.cbw import demo
  job = demo.CbwDemoJob(data=source, model=tiny_train_job(source),
                        watermark=watermark.WatermarkConfig(num_clusters=2,
                                                            utterance_fraction=0.2),
                        false_positive_draws=2, progress=False)
  summary = demo.run_cbw_demo(job, tmp_path)
  assert set(summary["p_value"]) == {"suspect/score", "suspect/decision", "benign/score",
                                     "benign/decision"}
  assert summary["false_positives"]["draws"] == 2
  assert summary["false_positives"]["score/p_value"]["tests"] == 4   # 2 clean models x 2 draws
  for name in ("cbw_demo.json", "cbw_demo.txt", "cbw_demo.png"):
    assert (tmp_path / name).stat().st_size > 0
  # A stopped demo resumes: every stage is reused and the numbers are the same.
  (tmp_path / demo.SUMMARY).unlink()
  lines = (tmp_path / "false_positives" / "draws.jsonl").read_text().splitlines()
  (tmp_path / "false_positives" / "draws.jsonl").write_text(lines[0] + "\n")
  again = demo.run_cbw_demo(job, tmp_path)
  assert again["p_value"] == summary["p_value"] and again["eer"] == summary["eer"]
  assert again["false_positives"] == summary["false_positives"]
