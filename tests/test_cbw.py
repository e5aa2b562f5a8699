"""CBW: triggers, clustering, the secret, implanting, publishing, and the verification tests."""

import os

import jax
import numpy as np
import pytest
from scipy import stats as scipy_stats

from jaxtag import secrets, stats
from jaxtag.cbw import triggers as triggers_lib
from jaxtag.cbw import verify as verify_lib
from jaxtag.cbw import watermark as wm_lib
from jaxtag.data.dataset import AudioDataset, DatasetError
from jaxtag.speaker import data as data_lib

SR = 16000


def speaker_set(num_speakers=8, per_speaker=6, samples=SR, seed=0, prefix="spk"):
  rng = np.random.default_rng(seed)
  labels = np.repeat(np.arange(num_speakers), per_speaker).astype(np.int32)
  names = tuple(f"{prefix}{i:02d}" for i in range(num_speakers))
  wav = (0.05 * rng.standard_normal((len(labels), samples))).astype(np.float32)
  paths = tuple(f"{names[s]}/u{i}.wav" for i, s in enumerate(labels))
  return AudioDataset(wav, labels, names, SR, speaker_ids=np.asarray(names)[labels], paths=paths)


def embeddings(ds, dim=6, seed=0):
  """Speakers in two tight groups (even / odd index), so k=2 clusters are unambiguous."""
  rng = np.random.default_rng(seed)
  centres = np.stack([np.eye(dim)[0], np.eye(dim)[1]])
  return centres[ds.labels % 2] + 0.05 * rng.standard_normal((len(ds), dim))


def plan(key=0, k=2, train=None, test=None, **config):
  train = train or speaker_set()
  test = test or speaker_set(4, 5, seed=1, prefix="test")
  cfg = wm_lib.WatermarkConfig(num_clusters=k, **config)
  return wm_lib.plan_watermark(jax.random.key(key), cfg, train=train,
                               train_embeddings=embeddings(train), test=test,
                               test_embeddings=embeddings(test, seed=3)), train, test


# --- triggers ----------------------------------------------------------------------------------

def test_trigger_is_a_tone_at_its_band_centre_at_the_asked_level():
  spec = triggers_lib.TriggerSpec(level_dbfs=-30.0, seconds=0.5)
  x = triggers_lib.tones(spec, [5, 30], [0.0, 1.0], sample_rate=SR, clip_samples=SR)
  assert x.shape == (2, SR) and np.all(x[:, SR // 2:] == 0)
  centres = triggers_lib.band_centres_hz(40, SR)
  for row, band in zip(x, (5, 30)):
    body = row[:SR // 2]
    assert 20 * np.log10(np.sqrt(np.mean(body ** 2))) == pytest.approx(-30.0, abs=1e-3)
    spectrum = np.abs(np.fft.rfft(body, n=8 * len(body)))
    peak = np.fft.rfftfreq(8 * len(body), 1 / SR)[np.argmax(spectrum)]
    assert peak == pytest.approx(centres[band], abs=3.0)


def test_band_centres_are_the_filterbank_peaks():
  from jaxtag.audio.mel import mel_filterbank
  bank = np.asarray(mel_filterbank(sample_rate=SR, n_fft=4096, n_mels=40))
  peaks = np.fft.rfftfreq(4096, 1 / SR)[np.argmax(bank, axis=0)]
  np.testing.assert_allclose(triggers_lib.band_centres_hz(40, SR), peaks, atol=SR / 4096)


def test_trigger_spec_refuses_bad_values():
  for bad in (dict(mode="loud"), dict(level_dbfs=3.0), dict(band_low=30, band_high=20),
              dict(seconds=0.01, fade_ms=10.0)):
    with pytest.raises(DatasetError):
      triggers_lib.TriggerSpec(**bad)


# --- clustering, choice, implanting ------------------------------------------------------------

def test_clustering_and_triggers_are_deterministic_from_the_key():
  a, _, _ = plan(key=7)
  b, _, _ = plan(key=7)
  c, _, _ = plan(key=8)
  for name in ("train_cluster", "test_cluster", "bands", "phases", "triggered"):
    np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
  assert not np.array_equal(a.phases, c.phases)
  # The two groups of speakers are the two clusters; held-out speakers follow their group.
  assert len(set(a.train_cluster[0::2])) == 1 and len(set(a.train_cluster[1::2])) == 1
  assert a.train_cluster[0] != a.train_cluster[1]
  assert a.test_cluster[0] == a.train_cluster[0] and a.test_cluster[1] == a.train_cluster[1]


def test_triggers_touch_only_the_chosen_utterances():
  wm, train, _ = plan(utterance_fraction=0.34)
  out = wm_lib.watermark_waveforms(wm, train)
  changed = np.flatnonzero(np.any(out != train.waveforms, axis=1))
  np.testing.assert_array_equal(changed, wm.triggered)
  counts = np.bincount(train.labels[wm.triggered], minlength=len(train.class_names))
  assert np.all(counts == 2)   # round(0.34 * 6) per speaker, every speaker
  trig = wm.triggers()
  for i in wm.triggered:   # replace mode: the utterance is its speaker's cluster's trigger
    np.testing.assert_array_equal(out[i], trig[wm.train_cluster[train.labels[i]]])


def test_mix_mode_adds_the_trigger():
  wm, train, _ = plan(trigger=triggers_lib.TriggerSpec(mode="mix", level_dbfs=-50.0))
  out = wm_lib.watermark_waveforms(wm, train)
  i = wm.triggered[0]
  np.testing.assert_allclose(out[i] - train.waveforms[i],
                             wm.triggers()[wm.train_cluster[train.labels[i]]], atol=1e-6)


def test_bad_input_is_refused_with_a_clear_error():
  train = speaker_set(3, 4)
  with pytest.raises(DatasetError, match="larger than the number of training speakers"):
    plan(k=4, train=train)
  lonely = speaker_set(4, 1)
  with pytest.raises(DatasetError, match="fewer than two utterances"):
    plan(train=lonely)
  with pytest.raises(DatasetError, match="distinct trigger bands"):
    plan(k=3, train=speaker_set(6, 3),
         trigger=triggers_lib.TriggerSpec(band_low=38))


# --- the secret file ---------------------------------------------------------------------------

def test_secret_round_trips_and_is_protected(tmp_path):
  wm, train, test = plan()
  path = tmp_path / "secret" / "cbw.npz"
  wm_lib.write_watermark(path, wm, provenance={"seed": 0})
  assert os.stat(path).st_mode & 0o077 == 0
  back = wm_lib.read_watermark(path)
  np.testing.assert_array_equal(back.triggers(), wm.triggers())
  assert back.triggered_paths == wm.triggered_paths and back.config == wm.config
  with pytest.raises(secrets.SecretFileError, match="already exists"):
    wm_lib.write_watermark(path, wm, provenance={})
  with pytest.raises(secrets.SecretFileError):
    wm_lib.write_watermark(tmp_path / "data" / "cbw.npz", wm, provenance={},
                           dataset_roots=[tmp_path / "data"])


def test_a_secret_of_another_dataset_is_refused():
  wm, train, test = plan()
  other = speaker_set(8, 6, prefix="other")
  with pytest.raises(DatasetError, match="does not match"):
    wm.check_dataset(other)
  shuffled = AudioDataset(train.waveforms[::-1], train.labels[::-1], train.class_names, SR,
                          paths=train.paths[::-1])
  with pytest.raises(DatasetError, match="same positions"):
    wm.check_dataset(shuffled)


# --- the statistics against scipy --------------------------------------------------------------

def test_paired_t_matches_scipy():
  rng = np.random.default_rng(0)
  for margin in (0.0, 0.1):
    x, y = rng.normal(0.2, 1, 9), rng.normal(0, 1, 9)
    ours = stats.paired_t_greater(x, y, margin=margin)
    ref = scipy_stats.ttest_rel(x - margin, y, alternative="greater")
    assert ours["p_value"] == pytest.approx(ref.pvalue, rel=1e-12)
    assert ours["t"] == pytest.approx(ref.statistic, rel=1e-12)
  assert stats.paired_t_greater([1, 1], [0, 0])["p_value"] == 0.0
  assert stats.paired_t_greater([0, 0], [0, 0])["p_value"] == 1.0


def test_fisher_matches_scipy():
  for table in ((7, 20, 10, 100), (0, 5, 0, 40), (5, 5, 1, 40), (3, 10, 30, 90)):
    a, n_a, b, n_b = table
    ref = scipy_stats.fisher_exact([[a, n_a - a], [b, n_b - b]], alternative="greater")
    assert stats.fisher_greater(*table)["p_value"] == pytest.approx(ref[1], rel=1e-10)


def test_permutation_p_matches_scipy_exactly_when_enumerated():
  m = np.random.default_rng(2).normal(size=(5, 5))
  ours = stats.assignment_permutation_p(m, np.arange(5), num_permutations=999)
  ref = scipy_stats.permutation_test(
      (np.arange(5), np.arange(5)), lambda a, b: m[a, b].mean(), permutation_type="pairings",
      alternative="greater", n_resamples=np.inf)
  assert ours["exact"] and ours["p_value"] == pytest.approx(ref.pvalue, rel=1e-12)
  sampled = stats.assignment_permutation_p(m, np.arange(5), num_permutations=100)
  assert not sampled["exact"] and sampled["p_value"] >= 1 / 101


# --- verification on synthetic black boxes -----------------------------------------------------

class FakeBox:
  """Scores = base[speaker's cluster, trigger band] + noise; a backdoor adds ``boost`` to the
  trigger of the cluster whose band the secret gave it."""

  def __init__(self, wm, test, *, boost=0.0, mode="score", threshold=0.5, seed=0):
    self.wm, self.test, self.mode, self.threshold = wm, test, mode, threshold
    self.sample_rate, self.clip_samples, self.boost = SR, SR, boost
    self.rng = np.random.default_rng(seed)
    self.affinity = self.rng.normal(0.1, 0.1, size=(len(test.class_names), 40))

  def verify(self, enrol, queries):
    match = np.flatnonzero([np.array_equal(self.test.waveforms[np.flatnonzero(
        self.test.labels == s)[0]], enrol[0]) for s in range(len(self.test.class_names))])
    s = int(match[0])
    bands = self.wm.bands
    score = self.affinity[s, bands] + 0.02 * self.rng.standard_normal(len(bands))
    score[self.wm.test_cluster[s]] += self.boost
    return score if self.mode == "score" else score >= self.threshold


def test_verification_detects_a_backdoor_and_not_a_clean_model():
  train = speaker_set(14, 4)
  test = speaker_set(14, 4, seed=5, prefix="held")
  cfg = wm_lib.WatermarkConfig(num_clusters=7, trigger=triggers_lib.TriggerSpec(band_low=10))
  rng = np.random.default_rng(0)
  emb_train, emb_test = (np.eye(7)[ds.labels % 7] + 0.05 * rng.standard_normal((len(ds), 7))
                         for ds in (train, test))
  wm = wm_lib.plan_watermark(jax.random.key(0), cfg, train=train, train_embeddings=emb_train,
                             test=test, test_embeddings=emb_test)
  config = verify_lib.VerifyConfig(enrol_utterances=2, num_permutations=9999)
  for mode in ("score", "decision"):
    hit = verify_lib.verify(FakeBox(wm, test, boost=0.6, mode=mode), wm, test, config)
    clean = verify_lib.verify(FakeBox(wm, test, boost=0.0, mode=mode), wm, test, config)
    assert hit["detected"] and hit["p_value"] < 1e-3, hit["p_value"]
    assert not clean["detected"], clean["p_value"]
    # 7! = 5040 assignments, enumerated: the secret one is the best of them.
    assert hit["permutation"]["exact"]
    assert hit["permutation"]["p_value"] == pytest.approx(1 / 5040)
    assert hit["p_value"] == hit["permutation"]["p_value"]   # the permutation test decides
  decided = verify_lib.verify(FakeBox(wm, test, boost=0.6, mode="decision"), wm, test, config)
  assert decided["watermark_success_rate"] == 1.0 and decided["fisher"]["p_value"] < 1e-6


def test_verification_false_positive_rate_is_at_most_alpha_on_clean_boxes():
  """H0 by construction: random keys against boxes that ignore the secret."""
  train = speaker_set(16, 3)
  test = speaker_set(24, 3, seed=5, prefix="held")
  rng = np.random.default_rng(0)
  emb_train, emb_test = (np.eye(8)[ds.labels % 8] + 0.05 * rng.standard_normal((len(ds), 8))
                         for ds in (train, test))
  config = verify_lib.VerifyConfig(enrol_utterances=1, num_permutations=199, alpha=0.1)
  rejections = 0
  draws = 60
  for d in range(draws):
    wm = wm_lib.plan_watermark(jax.random.key(100 + d), wm_lib.WatermarkConfig(num_clusters=8),
                               train=train, train_embeddings=emb_train, test=test,
                               test_embeddings=emb_test)
    result = verify_lib.verify(FakeBox(wm, test, seed=d % 3), wm, test, config)
    rejections += result["detected"]
  low, _ = stats.clopper_pearson(rejections, draws)
  assert low <= 0.1, rejections


# --- the speaker-folder loader and the published copy ------------------------------------------

def write_folders(root, lengths, seed=0):
  rng = np.random.default_rng(seed)
  utts = {}
  for s, speaker_lengths in enumerate(lengths):
    for u, n in enumerate(speaker_lengths):
      utts[f"sp{s}/session{u % 2}/utt{u}.wav"] = (0.1 * rng.standard_normal(n)).astype(np.float32)
  data_lib.write_speaker_folders(root, utts, SR)
  return utts


def test_speaker_folders_load_with_unseen_test_speakers(tmp_path):
  utts = write_folders(tmp_path, [[SR, SR // 2, 2 * SR]] * 5)
  (tmp_path / data_lib.TEST_SPEAKERS_FILE).write_text("sp1\nsp3\n")
  splits = data_lib.load_speaker_splits(data_lib.SpeakerSource(
      kind="speaker_folders", root=str(tmp_path), clip_seconds=1.0), progress=False)
  assert splits["test"].class_names == ("sp1", "sp3")
  assert splits["train"].class_names == ("sp0", "sp2", "sp4")
  train = splits["train"]
  i = train.paths.index("sp2/session1/utt1.wav")
  np.testing.assert_allclose(train.waveforms[i, :SR // 2], utts["sp2/session1/utt1.wav"],
                             atol=1 / 32768)
  assert np.all(train.waveforms[i, SR // 2:] == 0)   # zero-padded to the clip length
  assert train.labels[i] == 1


def test_speaker_folder_errors_name_the_file_or_speaker(tmp_path):
  write_folders(tmp_path / "short", [[SR, SR], [SR, 800]])
  source = data_lib.SpeakerSource(kind="speaker_folders", root=str(tmp_path / "short"),
                                  test_fraction=0.5)
  with pytest.raises(DatasetError, match=r"utt1\.wav: utterance is 0\.050 s"):
    data_lib.load_speaker_splits(source, progress=False)
  write_folders(tmp_path / "single", [[SR, SR], [SR], [SR, SR]])
  source = data_lib.SpeakerSource(kind="speaker_folders", root=str(tmp_path / "single"),
                                  test_fraction=0.34, split_seed=1)
  with pytest.raises(DatasetError, match="'sp1' \\(1\\)"):
    data_lib.load_speaker_splits(source, progress=False)
  with pytest.raises(DatasetError, match="no such speaker folder"):
    data_lib.load_speaker_splits(data_lib.SpeakerSource(kind="speaker_folders",
                                                        root=str(tmp_path / "nope")))


def test_protected_copy_keeps_the_layout_and_changes_only_triggered_files(tmp_path):
  write_folders(tmp_path / "in", [[SR] * 4] * 6)
  (tmp_path / "in" / "README.txt").write_text("owner's readme")
  source = data_lib.SpeakerSource(kind="speaker_folders", root=str(tmp_path / "in"),
                                  test_fraction=0.34)
  splits = data_lib.load_speaker_splits(source, progress=False)
  wm, train, _ = plan(train=splits["train"], test=splits["test"], utterance_fraction=0.25)
  protected = wm_lib.watermark_waveforms(wm, train)
  changed = {train.paths[i]: protected[i] for i in wm.triggered}
  data_lib.publish_changed(source, changed, tmp_path / "out")
  assert (tmp_path / "out" / "README.txt").read_text() == "owner's readme"
  back = data_lib.load_speaker_splits(
      data_lib.SpeakerSource(kind="speaker_folders", root=str(tmp_path / "out"),
                             test_fraction=0.34), progress=False)
  assert back["train"].paths == train.paths
  diff = np.abs(back["train"].waveforms - protected).max()
  assert diff <= 1 / 32768
  same = np.setdiff1d(np.arange(len(train)), wm.triggered)
  assert np.array_equal(back["train"].waveforms[same], train.waveforms[same])
  with pytest.raises(Exception, match="not empty|input"):
    data_lib.publish_changed(source, changed, tmp_path / "in" / "inside")


def test_null_summary_counts_rejections_per_mode_and_test():
  from jaxtag.cbw import null
  rows = [{"draw": d, "results": {
      "m/score": {"p_value": p, "seed_style_p": p},
      "m/decision": {"p_value": 1.0, "seed_style_p": q}}}
      for d, (p, q) in enumerate([(0.001, 0.2), (0.03, 0.04), (0.2, 0.6), (0.9, 0.01)])]
  out = null.summarize(rows, alpha=0.01)
  assert out["draws"] == 4
  assert out["score/p_value"]["alpha=0.05"]["rejections"] == 2
  assert out["score/p_value"]["alpha=0.01"]["rejections"] == 1
  assert out["decision/p_value"]["alpha=0.05"]["rejections"] == 0
  assert out["decision/seed_style_p"]["alpha=0.05"]["rejections"] == 2
  low, high = out["score/p_value"]["alpha=0.05"]["interval95"]
  assert (low, high) == pytest.approx(stats.clopper_pearson(2, 4))


def test_the_corpus_as_a_speaker_dataset_and_its_protected_copy(tmp_path):
  source = data_lib.SpeakerSource(preset="tiny")
  splits = data_lib.load_speaker_splits(source, progress=False)
  train, test = splits["train"], splits["test"]
  assert not set(train.class_names) & set(test.class_names)   # held-out speakers are unseen
  for ds in (train, test):
    np.testing.assert_array_equal(np.asarray(ds.class_names)[ds.labels], ds.speaker_ids)
    assert all(p.split("/")[1].startswith(s) for p, s in zip(ds.paths, ds.speaker_ids))
    assert all(p.startswith(w + "/") for p, w in zip(ds.paths, ds.metadata["word"]))
  changed = {train.paths[0]: np.full(train.num_samples, 0.25, np.float32)}
  data_lib.publish_changed(source, changed, tmp_path / "copy")
  copy = data_lib.load_speaker_splits(data_lib.SpeakerSource(
      kind="speech_commands", root=str(tmp_path / "copy")), progress=False)
  assert copy["test"].class_names == test.class_names and copy["train"].paths == train.paths
  np.testing.assert_allclose(copy["train"].waveforms[0], 0.25, atol=1 / 32768)
  np.testing.assert_array_equal(copy["train"].waveforms[1:], train.waveforms[1:])
