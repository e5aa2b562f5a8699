"""GE2E training, resume, the speaker-train job and the embedder, on tiny synthetic speakers."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from jaxtag import rng, sharding
from jaxtag.data.dataset import AudioDataset, DatasetError
from jaxtag.speaker import embedder as embedder_lib
from jaxtag.speaker import job as job_lib
from jaxtag.speaker import model as model_lib
from jaxtag.speaker import train as train_lib
from jaxtag.speaker.data import SpeakerSource
from jaxtag.workdir import ConfigChangedError

SAMPLES = 4000   # 0.25 s at 16 kHz: 26 frames
TINY_MODEL = model_lib.SpeakerModelConfig(arch="ecapa", hidden_size=16, num_layers=1,
                                          embedding_dim=16, attention_dim=8)


def synthetic_speakers(num_speakers, utterances, *, seed, first=0):
  """Speaker s: a harmonic voice with its own pitch and formant; each utterance says one of three
  "vowels" (a louder formant shared by all speakers, so that the raw spectra group by vowel
  rather than by speaker), jitters the pitch, and has random phases, level and noise."""
  gen = np.random.default_rng(seed)
  t = np.arange(SAMPLES) / 16000.0
  waves, labels, names = [], [], []
  for s in range(num_speakers):
    f0 = 90.0 + (37.0 * (s + first)) % 180.0
    formant = 400.0 + 250.0 * ((s + first) * 7 % 11)
    for _ in range(utterances):
      f = f0 * (1.0 + 0.03 * gen.standard_normal())
      harmonics = np.arange(1, int(7000 // f))
      vowel = gen.choice([700.0, 1800.0, 2900.0])
      amps = (np.exp(-((harmonics * f - formant) / 300.0)**2) + 0.05 / harmonics
              + 2.0 * np.exp(-((harmonics * f - vowel) / 250.0)**2))
      phases = gen.uniform(0, 2 * np.pi, harmonics.size)
      x = (amps[:, None] * np.sin(2 * np.pi * f * harmonics[:, None] * t + phases[:, None])).sum(0)
      x = x / np.abs(x).max() * gen.uniform(0.2, 0.8) + 0.02 * gen.standard_normal(SAMPLES)
      waves.append(x.astype(np.float32))
      labels.append(s)
    names.append(f"spk{s + first:03d}")
  return AudioDataset(np.stack(waves), np.array(labels), tuple(names), 16000,
                      speaker_ids=np.array([names[i] for i in labels]),
                      paths=tuple(f"{names[i]}/{k}.wav" for k, i in enumerate(labels)))


@pytest.fixture(scope="module")
def splits():
  return {"train": synthetic_speakers(8, 6, seed=0),
          "test": synthetic_speakers(6, 6, seed=1, first=8)}


def _job(**kw):
  base = dict(model=TINY_MODEL, steps=6, speakers_per_batch=4, utterances_per_speaker=4,
              learning_rate=3e-3, checkpoint_every=3, log_every=1, enrol_utterances=2,
              eval_batch_size=8, num_devices=1, progress=False)
  return job_lib.SpeakerTrainJob(**{**base, **kw})


def _params(state):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get((state.params, state.ge2e)))]


def test_training_lowers_the_loss_and_separates_unseen_speakers(splits, tmp_path):
  job = _job(steps=40, checkpoint_every=40, log_every=5)
  summary = job_lib.run_speaker_train_job(job, tmp_path, splits=splits)
  losses = [json.loads(line)["train/loss"] for line in (tmp_path / "metrics.jsonl").open()]
  assert len(losses) == 8
  assert losses[-1] < 0.5 * losses[0]
  # Unseen speakers: well below chance, and well below the same network before training.
  _, init = train_lib.split_network(job.model, rng.stream(job.key(), "init"))
  untrained = job_lib.evaluate_speakers(
      embedder_lib.SpeakerEmbedder(job.model, init, clip_samples=SAMPLES), splits["test"],
      num_enrol=2)
  print(f"test EER {summary['test']['eer']:.3f}, untrained {untrained['eer']:.3f}")
  assert summary["test"]["eer"] <= 0.25
  assert summary["test"]["eer"] < untrained["eer"]
  assert summary["test"]["target_trials"] == 6 * 4
  assert summary["test"]["nontarget_trials"] == 6 * 4 * 5
  assert summary["speakers"] == {"train": 8, "test": 6}
  # The embedder reads the weights and the threshold back.
  emb = embedder_lib.load_embedder(tmp_path, batch_size=5)
  assert emb.threshold == pytest.approx(summary["test"]["threshold"])
  assert (emb.sample_rate, emb.clip_samples, emb.embedding_dim) == (16000, SAMPLES, 16)
  x = splits["test"].waveforms
  out = emb.embed(x[:7])
  assert out.shape == (7, 16) and out.dtype == np.float32
  np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
  # Padding the last batch changes nothing: each row alone, and in other batch sizes, agrees.
  np.testing.assert_allclose(emb.embed(x[6:7])[0], out[6], atol=1e-5)
  other = embedder_lib.load_embedder(tmp_path, batch_size=3)
  np.testing.assert_allclose(other.embed(x[:7]), out, atol=1e-5)
  assert emb.embed(x[:0]).shape == (0, 16)
  with pytest.raises(ValueError, match=f"\\(n, {SAMPLES}\\)"):
    emb.embed(x[:2, :100])
  # A finished job is reused, and another config on the workdir is refused.
  again = job_lib.run_speaker_train_job(job, tmp_path, splits=splits)
  assert again["reused"] and again["test"] == summary["test"]
  with pytest.raises(ConfigChangedError, match="steps"):
    job_lib.run_speaker_train_job(dataclasses.replace(job, steps=41), tmp_path, splits=splits)


def test_resumed_training_equals_an_uninterrupted_run(splits, tmp_path):
  config = _job().recipe
  mesh = sharding.make_mesh(1)
  key = jax.random.key(3)
  full = train_lib.train_speaker_model(config, splits["train"], key=key,
                                       workdir=tmp_path / "full", mesh=mesh)
  cut = train_lib.train_speaker_model(config, splits["train"], key=key,
                                      workdir=tmp_path / "cut", mesh=mesh, stop_at_step=4)
  assert not cut.finished and not (tmp_path / "cut" / train_lib.FINAL_DIR).exists()
  resumed = train_lib.train_speaker_model(config, splits["train"], key=key,
                                          workdir=tmp_path / "cut", mesh=mesh)
  assert resumed.start_step == 3 and resumed.finished
  for a, b in zip(_params(full.state), _params(resumed.state)):
    np.testing.assert_array_equal(a, b)
  assert _logged(tmp_path / "full") == _logged(tmp_path / "cut")
  assert [r["step"] for r in _logged(tmp_path / "cut")] == list(range(1, 7))


def _logged(workdir):
  """``metrics.jsonl`` without the timings."""
  return [{k: v for k, v in json.loads(line).items() if k != "train/steps_per_s"}
          for line in (workdir / "metrics.jsonl").open()]


def test_the_step_compiles_once(splits):
  config = _job().recipe
  mesh = sharding.make_mesh(1)
  state, _ = train_lib.create_state(config, jax.random.key(0), mesh)
  net, _ = train_lib.abstract_network(config.model)
  step_fn = train_lib.jit_train_step(config, net, 16000)
  rows = train_lib.check_train_data(config, splits["train"], mesh)
  for step in range(3):
    idx = train_lib.batch_indices(rows, jax.random.key(step), speakers=4, utterances=4)
    blocks = splits["train"].labels[idx].reshape(4, 4)   # speaker-major: one speaker per row
    assert (blocks == blocks[:, :1]).all() and len(set(blocks[:, 0].tolist())) == 4
    assert len(set(idx.tolist())) == 16
    state, _ = step_fn(state, sharding.shard_batch(mesh, splits["train"].waveforms[idx]),
                       jax.random.key(9))
  assert int(state.step) == 3
  assert step_fn._cache_size() == 1


def test_eight_devices_train_as_one(splits, tmp_path):
  """The batch is split over 8 devices, the GE2E loss still sees all N x M utterances."""
  config = _job(steps=2, max_shift_seconds=0.05, max_gain_db=3.0).recipe
  key = jax.random.key(0)
  records = []
  for n in (1, 8):
    train_lib.train_speaker_model(config, splits["train"], key=key, workdir=tmp_path / str(n),
                                  mesh=sharding.make_mesh(n))
    records.append([json.loads(line) for line in (tmp_path / str(n) / "metrics.jsonl").open()])
  one, eight = records
  # Step 1 (same weights): the loss and the gradient of the whole batch agree (float32 sums in
  # another order: the gradient norm to ~3e-4 measured).
  assert eight[0]["train/loss"] == pytest.approx(one[0]["train/loss"], rel=1e-4)
  assert eight[0]["train/grad_norm"] == pytest.approx(one[0]["train/grad_norm"], rel=2e-3)
  # Step 2 only loosely: Adam's first step moves a weight by +-lr whatever its gradient's size,
  # so weights whose gradient is ~0 (a bias in front of a LayerNorm) move by float noise.
  assert eight[1]["train/loss"] == pytest.approx(one[1]["train/loss"], rel=1e-3)
  assert eight[1]["train/loss"] < eight[0]["train/loss"]


def test_bad_data_and_recipes_are_refused_with_the_field_named(splits, tmp_path):
  mesh = sharding.make_mesh(1)
  key = jax.random.key(0)
  with pytest.raises(DatasetError, match="speakers_per_batch"):
    train_lib.train_speaker_model(_job(speakers_per_batch=9).recipe, splits["train"], key=key,
                                  workdir=tmp_path / "a", mesh=mesh)
  with pytest.raises(DatasetError, match="utterances_per_speaker"):
    train_lib.train_speaker_model(_job(utterances_per_speaker=7).recipe, splits["train"],
                                  key=key, workdir=tmp_path / "b", mesh=mesh)
  short = dataclasses.replace(splits["train"], waveforms=splits["train"].waveforms[:, :300])
  with pytest.raises(ValueError, match="shorter than one"):
    train_lib.train_speaker_model(_job().recipe, short, key=key, workdir=tmp_path / "c",
                                  mesh=mesh)
  with pytest.raises(ValueError, match="utterances_per_speaker"):
    _job(utterances_per_speaker=1)
  with pytest.raises(ValueError, match="unseen"):
    job_lib.run_speaker_train_job(_job(), tmp_path / "d",
                                  splits={"train": splits["train"], "test": splits["train"]})
  missing = SpeakerSource(kind="speaker_folders", root=str(tmp_path / "nowhere"))
  with pytest.raises(DatasetError, match="no such speaker folder"):
    job_lib.run_speaker_train_job(_job(data=missing), tmp_path / "e")
  with pytest.raises(FileNotFoundError, match="speaker_model.json"):
    embedder_lib.load_embedder(tmp_path / "e")
