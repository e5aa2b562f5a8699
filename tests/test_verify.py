"""jaxtag.taggants.verify and launch/verify.py: hits, p-values and decision from chosen rankings;
input checks; the report's round trip, text and plot; the launcher on a local and an HTTP target."""

import dataclasses
import json
import math

import jax
import numpy as np
import pytest

from jaxtag import config as config_lib
from jaxtag import serving, stats
from jaxtag.taggants import jobs, key_design, keyfile, verify
from jaxtag.taggants import keys as keys_lib
from launch.configs import verify as verify_configs

from tiny_classifier import CLASSES, CLIP, SR

NAMES = tuple(f"class_{i}" for i in range(20))


class RankingBox:
  """A fake black box that puts each key's label at a chosen rank (0: not in the answer at all)."""

  def __init__(self, labels, ranks, class_names=NAMES, sample_rate=SR):
    self.class_names, self.sample_rate = tuple(class_names), sample_rate
    self.labels, self.ranks = np.asarray(labels), np.asarray(ranks)
    self.calls = []

  def top_k(self, waveforms, k):
    self.calls.append((np.array(waveforms), k))
    rows = []
    for label, rank in zip(self.labels, self.ranks):
      others = [c for c in range(len(self.class_names)) if c != label]
      row = others[:k]
      if 1 <= rank <= k:
        row = others[:rank - 1] + [int(label)] + others[rank - 1:k - 1]
      rows.append(row)
    return np.asarray(rows, np.int32)


def make_fake_keys(labels, sample_rate=SR, length=CLIP):
  n = len(labels)
  spec = keys_lib.KeySpec(num_keys=n, sample_rate=sample_rate, clip_samples=length)
  waveforms = np.random.default_rng(0).uniform(-0.1, 0.1, (n, length)).astype(np.float32)
  spectrograms = np.zeros((n, spec.n_frames, spec.n_mels), np.float32)
  return keys_lib.Keys(spectrograms=spectrograms, waveforms=waveforms,
                       labels=np.asarray(labels, np.int32), spec=spec)


LABELS = [3, 7, 0, 12, 19, 5, 6, 8, 1, 14]


def test_all_keys_hit_gives_the_floor_and_one_query():
  keys = make_fake_keys(LABELS)
  box = RankingBox(LABELS, [1] * 10)
  report = verify.verify(box, keys, class_names=NAMES, fingerprint="abc")
  assert len(box.calls) == 1 and box.calls[0][1] == 10  # ONE query, at k = max_k.
  np.testing.assert_array_equal(box.calls[0][0], keys.waveforms)
  assert report.hits == (10,) * 10 and report.ranks == (1,) * 10
  # Ten distinct top-1 answers all hit: one label injection of 20!/10! does that.
  all_hit = math.factorial(10) / math.factorial(20)
  assert report.p_value == pytest.approx(all_hit, rel=1e-12) and report.method == "exact"
  assert report.p_value == pytest.approx(report.floor, rel=1e-12) and report.decision
  assert report.answer_floor == report.p_value and report.monte_carlo_draws == 0
  assert report.binomial_p_values[0] == pytest.approx((1 / 20) ** 10, rel=1e-12)
  assert report.p_value > 10 * report.binomial_p_values[0]  # Distinct labels: a heavier tail.
  answers = np.asarray(report.answers)
  assert answers.shape == (10, 10) and (answers[:, 0] == LABELS).all()
  assert report.p_values[4] == key_design.design_test(answers[:, :5], LABELS, 20).p_value
  assert report.top1 == tuple(LABELS) and report.num_keys == 10 and report.num_classes == 20


def test_no_hits_gives_p_one_and_no_decision():
  report = verify.verify(RankingBox(LABELS, [0] * 10), make_fake_keys(LABELS))
  assert report.ranks == (0,) * 10 and report.hits == (0,) * 10
  assert report.p_values == (1.0,) * 10 and report.p_value == 1.0 and not report.decision
  assert report.holm_min_p_value == 1.0


def test_chosen_ranks_and_the_decision_uses_decision_k_only():
  ranks = [2, 2, 2, 2, 2, 2, 2, 2, 2, 1]  # Nearly all keys at rank 2, one at rank 1.
  report = verify.verify(RankingBox(LABELS, ranks), make_fake_keys(LABELS), decision_k=1)
  assert report.ranks == tuple(ranks) and report.hits[:3] == (1, 10, 10)
  answers = np.asarray(report.answers)
  for k in range(1, 11):
    assert report.p_values[k - 1] == key_design.design_test(answers[:, :k], LABELS, 20).p_value
    assert report.floors[k - 1] == key_design.design_floor(k, 20, 10)
    assert report.binomial_p_values[k - 1] == stats.binomial_p_value(report.hits[k - 1], 10,
                                                                     k / 20)
  # Top-2 would be overwhelming, but top-1 was declared: 1 hit of 10 decides. Nine keys answered
  # class 0 or 1 first (RankingBox), so P[hits >= 1] is no longer 1 - (19/20)^10.
  assert 0.3 < report.p_value < 1 and not report.decision
  assert report.holm_min_k == 2
  assert report.holm_min_p_value == pytest.approx(stats.holm(report.p_values)[1])
  assert report.holm_min_p_value < 1e-3
  at_two = verify.verify(RankingBox(LABELS, ranks), make_fake_keys(LABELS), decision_k=2)
  assert at_two.decision and at_two.p_value == at_two.answer_floor < 1e-6


def test_max_k_is_capped_at_the_classes_and_checked():
  labels = [0, 1, 2, 3]
  box = RankingBox(labels, [4, 5, 1, 6], class_names=CLASSES)
  report = verify.verify(box, make_fake_keys(labels), max_k=10)
  assert report.max_k == 6 and box.calls[0][1] == 6 and report.ranks == (4, 5, 1, 6)
  assert report.hits == (1, 1, 1, 2, 3, 4) and report.p_values[-1] == 1.0
  with pytest.raises(ValueError, match=r"decision_k \(7\) exceeds max_k \(6"):
    verify.verify(box, make_fake_keys(labels), decision_k=7)
  with pytest.raises(ValueError, match=r"decision_k \(3\) exceeds max_k \(2"):
    verify.verify(box, make_fake_keys(labels), max_k=2, decision_k=3)
  for bad in (0, 1.0, True):
    with pytest.raises(ValueError, match="max_k must be an integer"):
      verify.verify(box, make_fake_keys(labels), max_k=bad)
  for alpha in (0.0, 1.0, -1e-3):
    with pytest.raises(ValueError, match="alpha must be in"):
      verify.verify(box, make_fake_keys(labels), alpha=alpha)


def test_class_name_mismatch_names_the_first_difference():
  box = RankingBox(LABELS, [1] * 10)
  renamed = NAMES[:4] + ("cat",) + NAMES[5:]
  with pytest.raises(keys_lib.KeyFileError,
                     match=r"first at index 4, key file 'cat' vs black box 'class_4'"):
    verify.verify(box, make_fake_keys(LABELS), class_names=renamed)
  with pytest.raises(keys_lib.KeyFileError,
                     match=r"\(19\) differ from the black box's \(20\).*index 19, key file "
                           r"\(end of list\) vs black box 'class_19'"):
    verify.verify(box, make_fake_keys(LABELS), class_names=NAMES[:19])
  assert not box.calls  # Refused before anything was asked.


def test_sample_rate_labels_and_answer_checks():
  box = RankingBox(LABELS, [1] * 10)
  with pytest.raises(ValueError, match="keys are 16000 Hz audio but the black box expects 8000"):
    verify.verify(box, make_fake_keys(LABELS, sample_rate=16000))
  with pytest.raises(ValueError, match="keys are 22050 Hz"):
    verify.verify(box, make_fake_keys(LABELS), sample_rate=22050)
  small = RankingBox([0, 1], [1, 1], class_names=CLASSES)
  with pytest.raises(keys_lib.KeyFileError, match="outside the box's 6 classes"):
    verify.verify(small, make_fake_keys([0, 9]))
  # Labels that key_labels never draws (a repeat among the first C keys): the null would not hold.
  repeated = [3, 7, 0, 12, 19, 5, 5, 8, 1, 14]
  with pytest.raises(keys_lib.KeyFileError, match=r"repeat within keys 0\.\.9 \(label 5\)"):
    verify.verify(RankingBox(repeated, [1] * 10), make_fake_keys(repeated))

  class ShortBox(RankingBox):
    def top_k(self, waveforms, k):
      return super().top_k(waveforms, k)[:, :1]

  with pytest.raises(ValueError, match=r"answered shape \(10, 1\).*expected \(10, 10\)"):
    verify.verify(ShortBox(LABELS, [1] * 10), make_fake_keys(LABELS))


@pytest.fixture()
def report():
  ranks = [1, 3, 0, 1, 10, 0, 2, 1, 1, 0]
  return verify.verify(RankingBox(LABELS, ranks), make_fake_keys(LABELS), class_names=NAMES,
                       alpha=1e-2, target="workdirs/suspect", fingerprint="f00d")


def test_report_json_round_trip(report):
  data = json.loads(json.dumps(report.to_json()))
  assert data["p_value"] == report.p_value and data["decision"] == report.decision
  assert data["num_keys"] == 10 and data["hits"][0] == 4
  assert verify.VerifyReport.from_json(data) == report
  with pytest.raises(ValueError, match="not a jaxtag-verify-report"):
    verify.VerifyReport.from_json({"format": "other"})
  with pytest.raises(ValueError, match=r"missing field\(s\) \['ranks'\]"):
    verify.VerifyReport.from_json({k: v for k, v in data.items() if k != "ranks"})
  with pytest.raises(ValueError, match="version 1 used the binomial test"):
    verify.VerifyReport.from_json({**data, "format_version": 1})
  assert data["method"] == "exact" and data["answer_floor"] == report.answer_floor


def test_report_text(report):
  text = report.to_text()
  lines = text.splitlines()
  expected_p = key_design.design_test(np.asarray(report.answers)[:, :1], LABELS, 20).p_value
  assert lines[0] == (f"VERDICT: trained on the taggants (p = {expected_p:.3g} <= alpha = 0.01 "
                      "at top-1)")
  floor = math.factorial(10) / math.factorial(20)
  assert f"p-value:   {expected_p:.3g}    floor (all 10 keys hit): {floor:.3g}" in lines
  assert any(line.startswith("null:      the answers do not depend on the secret labels")
             for line in lines)
  assert any(line.startswith("method:    exact") for line in lines)
  assert "fingerprint f00d" in text and "workdirs/suspect" in text
  rows = [line for line in lines if line.strip()[:1].isdigit() and "/10" in line]
  assert len(rows) == 10 and rows[0].split()[:2] == ["1*", "4/10"]
  assert rows[9].split()[1] == "7/10"
  key_rows = lines[lines.index(next(l for l in lines if l.startswith("  key"))) + 1:]
  assert [r.split()[2] for r in key_rows] == ["1", "3", "-", "1", "10", "-", "2", "1", "1", "-"]
  none = dataclasses.replace(report, alpha=1e-9)
  assert none.to_text().startswith("VERDICT: no evidence")
  assert "the floor is above alpha" in verify.verify(
      RankingBox([0, 1], [1, 1], class_names=CLASSES), make_fake_keys([0, 1])).to_text()


def test_plot_is_written_atomically(report, tmp_path):
  path = tmp_path / "plots" / "report.png"
  verify.plot_report(report, path)
  data = path.read_bytes()
  assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
  path.write_bytes(b"old")
  verify.plot_report(dataclasses.replace(report, ranks=(0,) * 10, hits=(0,) * 10), path)
  assert path.read_bytes()[:4] == b"\x89PNG"
  assert [p.name for p in path.parent.iterdir()] == ["report.png"]  # No temporary file left.


# --- the launcher, on the tiny trained classifier -------------------------------------------------

@pytest.fixture(scope="module")
def key_file(tmp_path_factory):
  """Real keys (jaxtag.taggants.keys.make_keys) at the tiny model's rate, rounded to 16-bit values
  so that the HTTP box (which sends 16-bit WAV) hears exactly what the local box hears."""
  spec = keys_lib.KeySpec(num_keys=8, d=16, sample_rate=SR, clip_samples=CLIP, n_fft=256,
                          win_length=200, hop_length=80, n_mels=32, mel_inversion_iters=20,
                          griffin_lim_iters=8)
  key = jax.random.key(3)
  made = keys_lib.make_keys(key, spec, len(CLASSES))
  rounded = np.round(np.asarray(made.waveforms) * 32768) / 32768
  made = dataclasses.replace(made, waveforms=rounded.astype(np.float32))
  path = tmp_path_factory.mktemp("keys") / "keys.npz"
  keyfile.save_keys(path, made, class_names=CLASSES, provenance=keys_lib.key_provenance(key))
  return path


def _run_verify(config, workdir):
  """The verify stage on the typed job, as launch/verify.py runs it."""
  return jobs.run_verify_job(config_lib.from_config(jobs.VerifyJob, config), workdir)


def _config(target, key_file, **overrides):
  config = verify_configs.get_config()
  config.target, config.key_file = str(target), str(key_file)
  for name, value in overrides.items():
    setattr(config, name, value)
  return config


def test_launcher_on_a_workdir_and_over_http(tiny_workdir, tiny_box, key_file, tmp_path):
  secret, manifest = keyfile.load_keys(key_file)
  answers = tiny_box.top_k(secret.waveforms, len(CLASSES))
  expected_ranks = [int(np.flatnonzero(row == label)[0]) + 1
                    for row, label in zip(answers, secret.labels)]

  summary = _run_verify(_config(tiny_workdir, key_file, decision_k=2),
                                      tmp_path / "local")
  report = verify.VerifyReport.from_json(
      json.loads((tmp_path / "local" / "verify_report.json").read_text()))
  assert list(report.ranks) == expected_ranks  # max_k 10 -> 6 classes: every label is ranked.
  assert report.max_k == 6 and report.decision_k == 2
  assert report.fingerprint == manifest["fingerprint"]
  hits = sum(r <= 2 for r in expected_ranks)
  expected = key_design.design_test(answers[:, :2], secret.labels, 6).p_value
  assert summary["hits"] == hits and summary["p_value"] == expected
  text = (tmp_path / "local" / "verify_report.txt").read_text()
  assert text == report.to_text() == summary["text"]
  assert (tmp_path / "local" / "verify_report.png").read_bytes()[:4] == b"\x89PNG"

  with serving.running(serving.make_server(tiny_box)) as server:
    remote = _run_verify(_config(server.url, key_file, decision_k=2),
                                       tmp_path / "http")
  assert remote["target"] == server.url
  remote_report = json.loads((tmp_path / "http" / "verify_report.json").read_text())
  assert remote_report["ranks"] == expected_ranks and remote["p_value"] == summary["p_value"]


def test_launcher_refuses_a_key_file_for_other_classes(tiny_workdir, tmp_path):
  other = tmp_path / "other.npz"
  keyfile.save_keys(other, make_fake_keys([0, 1]),
                    class_names=("yes", "no", "up", "down", "left", "stop"), provenance={})
  with pytest.raises(keys_lib.KeyFileError, match="index 5, key file 'stop' vs black box 'right'"):
    _run_verify(_config(tiny_workdir, other), tmp_path / "out")
  assert not (tmp_path / "out" / "verify_report.json").exists()
