"""White-box taggant diagnostics: key label log-probabilities, ranks and the paired effect."""

import numpy as np
import tiny_classifier as tc

from jaxtag import train
from jaxtag.keys import Keys, KeySpec
from jaxtag.taggants import diagnostics


def _keys(n=5):
  x, _ = tc.tone_clips(n, seed=11)
  return Keys(spectrograms=np.zeros((n, 4, 4), np.float32), waveforms=x,
              labels=np.arange(n, dtype=np.int32) % len(tc.CLASSES), spec=KeySpec(num_keys=n))


def test_ranks_agree_with_the_black_box_and_log_probs_are_probabilities(tiny_workdir, tiny_box):
  keys = _keys()
  scores = diagnostics.key_scores(train.restore_for_inference(tiny_workdir), keys, batch_size=2)
  assert np.all(scores.log_prob <= 0) and np.all(np.isfinite(scores.log_prob))
  answers = np.asarray(tiny_box.top_k(np.asarray(keys.waveforms), len(tc.CLASSES)))
  black_box_rank = 1 + np.argmax(answers == np.asarray(keys.labels)[:, None], axis=1)
  np.testing.assert_array_equal(scores.rank, black_box_rank)


def test_paired_effect():
  control = diagnostics.KeyScores(np.array([-3.0, -1.0]), np.array([5, 2]))
  treated = diagnostics.KeyScores(np.array([-2.5, -1.5]), np.array([3, 2]))
  effect = diagnostics.paired_effect(treated, control)
  np.testing.assert_allclose(effect["delta_log_prob"], [0.5, -0.5])
  assert effect["mean"] == 0.0 and effect["min"] == -0.5 and effect["max"] == 0.5
  assert effect["rank_treated"] == [3, 2] and effect["rank_control"] == [5, 2]


def test_script_scores_models_against_a_control(tiny_workdir, tmp_path):
  import os
  import sys
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from benchmarks import taggant_effect
  import jax
  from jaxtag import keys as keys_lib
  spec = keys_lib.KeySpec(num_keys=3, d=8, sample_rate=tc.SR, clip_samples=tc.CLIP, n_fft=256,
                          win_length=200, hop_length=80, n_mels=32, griffin_lim_iters=4)
  keys = keys_lib.make_keys(jax.random.key(0), spec, num_classes=len(tc.CLASSES))
  path = tmp_path / "secret" / "keys.npz"
  keys_lib.save_keys(path, keys, class_names=tc.CLASSES, provenance={"test": True})
  records = taggant_effect.main([str(tiny_workdir), "--key_file", str(path), "--control",
                                 str(tiny_workdir), "--json", str(tmp_path / "out.json")])
  assert records[0]["paired"]["delta_log_prob"] == [0.0, 0.0, 0.0]   # a model against itself
  assert (tmp_path / "out.json").exists()


def test_placebo_keeps_energy_and_spectrum_and_moves_only_the_poisons():
  from benchmarks import taggant_placebo
  from jaxtag.data.dataset import AudioDataset
  r = np.random.default_rng(0)
  clean = np.round(0.1 * r.standard_normal((6, 400)) * 32768) / 32768
  delta = np.round(1e-3 * r.standard_normal((2, 400)) * 32768) / 32768
  data = AudioDataset(clean.astype(np.float32), np.arange(6) % 2, ("a", "b"), 16000)
  record = {"indices": np.array([1, 4]), "delta": delta.astype(np.float32)}
  out = taggant_placebo.placebo_splits({"train": data}, record, seed=3, min_shift=40)
  moved = out["train"].waveforms.astype(np.float64) - clean
  assert np.all(moved[[0, 2, 3, 5]] == 0)
  got = moved[[1, 4]]
  np.testing.assert_allclose(np.sum(got**2, -1), np.sum(delta**2, -1), rtol=1e-5)
  np.testing.assert_allclose(np.abs(np.fft.rfft(got)), np.abs(np.fft.rfft(delta)), atol=1e-5)
  assert not np.allclose(got, delta)                       # the alignment is gone
  for g, d in zip(got, delta):                              # a circular shift of >= 40 samples
    shift = next(s for s in range(400) if np.allclose(np.roll(d, s), g, atol=1e-6))
    assert 40 <= shift <= 360
