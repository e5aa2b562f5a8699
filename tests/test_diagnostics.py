"""White-box taggant diagnostics: key label log-probabilities, ranks and the paired effect."""

import numpy as np
import tiny_classifier as tc

from jaxtag import train
from jaxtag.taggants.keys import Keys, KeySpec
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
  np.testing.assert_allclose(np.diag(scores.cross), scores.log_prob, rtol=1e-6)


def test_paired_effect():
  control = diagnostics.KeyScores(np.array([-3.0, -1.0]), np.array([5, 2]))
  treated = diagnostics.KeyScores(np.array([-2.5, -1.5]), np.array([3, 2]))
  effect = diagnostics.paired_effect(treated, control)
  np.testing.assert_allclose(effect["delta_log_prob"], [0.5, -0.5])
  assert effect["mean"] == 0.0 and effect["min"] == -0.5 and effect["max"] == 0.5
  assert effect["rank_treated"] == [3, 2] and effect["rank_control"] == [5, 2]
  assert "specific" not in effect                   # no cross matrix: not claimed


def test_paired_effect_separates_a_general_lift_from_a_key_specific_one():
  control = np.log(np.full((3, 3), 0.1))
  general = control + 1.0                           # every key's label up on every key
  specific = control + np.diag([1.0, 1.0, 1.0])     # each key's own label only
  scores = lambda m: diagnostics.KeyScores(np.diag(m), np.ones(3, int), m)
  lift = diagnostics.paired_effect(scores(general), scores(control))
  assert lift["mean"] == pytest.approx(1.0) and lift["others"] == pytest.approx(1.0)
  assert lift["specific"] == pytest.approx(0.0, abs=1e-12)
  own = diagnostics.paired_effect(scores(specific), scores(control))
  assert own["others"] == pytest.approx(0.0) and own["specific"] == pytest.approx(1.0)


def test_script_scores_models_against_a_control(tiny_workdir, tmp_path):
  import os
  import sys
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from benchmarks import taggant_effect
  import jax
  from jaxtag.taggants import keyfile
  from jaxtag.taggants import keys as keys_lib
  spec = keys_lib.KeySpec(num_keys=3, d=8, sample_rate=tc.SR, clip_samples=tc.CLIP, n_fft=256,
                          win_length=200, hop_length=80, n_mels=32, griffin_lim_iters=4)
  keys = keys_lib.make_keys(jax.random.key(0), spec, num_classes=len(tc.CLASSES))
  path = tmp_path / "secret" / "keys.npz"
  keyfile.save_keys(path, keys, class_names=tc.CLASSES, provenance={"test": True})
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


# Where the taggant signal dies: per-checkpoint gradients (diagnostics.signal_at).

import json  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import pytest  # noqa: E402

from jaxtag.taggants import alignment  # noqa: E402


def _flat(tree) -> np.ndarray:
  """A parameter tree as one float64 vector (leaf order of jax.tree.leaves)."""
  return np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(tree)])


def _clip_gradient(clf, params, stats, wave, label) -> np.ndarray:
  """The gradient of one clip's cross-entropy, straight from jax.grad (the reference)."""
  def loss(p):
    logits = clf.classify(p, stats, clf.features(p, stats, jnp.asarray(wave)[None]))[0]
    return -jax.nn.log_softmax(logits)[0, label]
  return _flat(jax.grad(loss)(params))


@pytest.fixture(scope="module")
def tiny_model(tiny_workdir):
  trained = train.restore_for_inference(tiny_workdir)
  clf, params, stats = alignment.split_trained(trained)
  return trained, clf, params, stats


def test_restore_step_reads_each_kept_checkpoint(tiny_workdir, tiny_model):
  steps = train.checkpoint_steps(tiny_workdir)
  assert steps == [12, 16]                              # 4 epochs of 4 steps, max_to_keep=2
  last, earlier = train.restore_step(tiny_workdir, 16), train.restore_step(tiny_workdir, 12)
  assert (last.info.step, earlier.info.step) == (16, 12)
  np.testing.assert_array_equal(_flat(last.params), _flat(tiny_model[0].params))   # = final/
  np.testing.assert_array_equal(_flat(last.batch_stats), _flat(tiny_model[0].batch_stats))
  assert not np.allclose(_flat(earlier.params), _flat(last.params))   # one epoch earlier
  x, _ = tc.tone_clips(3, seed=5)
  np.testing.assert_allclose(np.asarray(last.model(jnp.asarray(x))[0]),
                             np.asarray(tiny_model[0].model(jnp.asarray(x))[0]), atol=1e-6)
  with pytest.raises(FileNotFoundError, match=r"keeps steps \[12, 16\]"):
    train.restore_step(tiny_workdir, 4)


def test_summed_and_grouped_gradients_are_sums_of_per_clip_gradients(tiny_model):
  _, clf, params, stats = tiny_model
  x, y = tc.tone_clips(7, seed=21)
  y = (y + np.array([0, 1, 0, 2, 0, 0, 3])) % len(tc.CLASSES)   # some clips misclassified
  per_clip = np.stack([_clip_gradient(clf, params, stats, x[i], y[i]) for i in range(7)])
  total = diagnostics.summed_gradient(clf, params, stats, x, y, batch_size=3)   # padded chunk
  np.testing.assert_allclose(_flat(total.grad), per_clip.sum(0), rtol=2e-4, atol=1e-6)
  assert total.count == 7 and 0 < total.correct < 7 and total.loss_sum > 0
  groups = np.array([0, 2, 0, 2, 2, 0, 0])                      # group 1 is empty
  grouped = diagnostics.grouped_gradients(clf, params, stats, x, y, groups, 3)
  got = np.stack([_flat(jax.tree.map(lambda a, k=k: a[k], grouped.grad)) for k in range(3)])
  for k in range(3):
    np.testing.assert_allclose(got[k], per_clip[groups == k].sum(0), rtol=2e-4, atol=1e-6)
  np.testing.assert_array_equal(grouped.count, [4, 0, 3])
  assert np.all(got[1] == 0) and grouped.loss_sum[1] == 0
  np.testing.assert_allclose(grouped.loss_sum.sum(), total.loss_sum, rtol=1e-5)


def test_signal_statistics_match_numpy_on_flattened_gradients():
  r = np.random.default_rng(0)
  def tree(*lead):
    return {"a": r.standard_normal(lead + (3, 4)), "b": r.standard_normal(lead + (5,))}
  g, big_g, s = tree(3), tree(3), tree()
  big_g["a"][1] = -2.0 * g["a"][1]                                   # key 1: exactly opposed
  big_g["b"][1] = -2.0 * g["b"][1]
  stats = diagnostics.signal_statistics(g, big_g, s, jax.tree.map(lambda x: x.sum(0), big_g))
  fs = _flat(s)
  fc = fs - _flat(jax.tree.map(lambda x: x.sum(0), big_g))             # the clean clips' part
  for k in range(3):
    fg = _flat(jax.tree.map(lambda x, k=k: x[k], g))
    fp = _flat(jax.tree.map(lambda x, k=k: x[k], big_g))
    np.testing.assert_allclose(stats["poison_cos"][k], fp @ fg / np.linalg.norm(fp)
                               / np.linalg.norm(fg), rtol=1e-10)
    np.testing.assert_allclose(stats["poison_projection"][k], fp @ fg / np.linalg.norm(fg),
                               rtol=1e-10)
    np.testing.assert_allclose(stats["poison_share"][k], np.linalg.norm(fp) / np.linalg.norm(fs),
                               rtol=1e-10)
    np.testing.assert_allclose(stats["whole_cos"][k], fs @ fg / np.linalg.norm(fs)
                               / np.linalg.norm(fg), rtol=1e-10)
    np.testing.assert_allclose(stats["projection_share"][k], (fp @ fg) / (fs @ fg), rtol=1e-10)
    np.testing.assert_allclose(stats["clean_projection"][k], fc @ fg / np.linalg.norm(fg),
                               rtol=1e-10)
    np.testing.assert_allclose(stats["clean_cos"][k], fc @ fg / np.linalg.norm(fc)
                               / np.linalg.norm(fg), rtol=1e-10)
  np.testing.assert_allclose(stats["poison_cos"][1], -1.0, rtol=1e-12)
  np.testing.assert_allclose(stats["whole_grad_norm"], np.linalg.norm(fs), rtol=1e-12)
  cos = jax.vmap(alignment.tree_cosine)(jax.tree.map(jnp.asarray, big_g),
                                        jax.tree.map(jnp.asarray, g))
  np.testing.assert_allclose(stats["poison_cos"], np.asarray(cos), atol=1e-5)


def test_poison_set_maps_files_to_rows_of_a_reordered_split():
  paths = ("b/2.wav", "a/0.wav", "c/9.wav", "a/1.wav")
  got = diagnostics.poison_set([0, 3], [1, 0], files=["a/0.wav", "c/9.wav"], paths=paths)
  np.testing.assert_array_equal(got.rows, [1, 2])
  np.testing.assert_array_equal(got.keys, [1, 0])
  np.testing.assert_array_equal(diagnostics.poison_set([0, 3], [1, 0]).rows, [0, 3])
  with pytest.raises(ValueError, match="not in the training split"):
    diagnostics.poison_set([0], [0], files=["z/5.wav"], paths=paths)


def _signal_inputs(n=18, seed=31):
  x, y = tc.tone_clips(n, seed=seed)
  keys_x, _ = tc.tone_clips(3, seed=seed + 1)
  return x, y, keys_x, np.array([1, 4, 2], np.int32)


def test_signal_at_agrees_with_direct_gradients_and_the_subset_estimate(tiny_model):
  trained, clf, params, stats = tiny_model
  x, y, keys_x, keys_y = _signal_inputs()
  poisons = diagnostics.PoisonSet(np.array([1, 4, 7, 10, 13]), np.array([0, 1, 1, 2, 0]))
  before = 0.5 * x[poisons.rows]                                 # "the clips before crafting"
  out = diagnostics.signal_at(clf, params, stats, key_waveforms=keys_x, key_labels=keys_y,
                              train_waveforms=x, train_labels=y, poisons=poisons, batch_size=4,
                              unperturbed_poisons=before)
  per_clip = np.stack([_clip_gradient(clf, params, stats, x[i], y[i]) for i in range(len(x))])
  per_before = np.stack([_clip_gradient(clf, params, stats, w, y[i])
                         for w, i in zip(before, poisons.rows)])
  fs = per_clip.sum(0)
  for k, rec in enumerate(out["keys"]):
    fg = _clip_gradient(clf, params, stats, keys_x[k], keys_y[k])
    fp = per_clip[poisons.rows[poisons.keys == k]].sum(0)
    np.testing.assert_allclose(rec["poison_cos"], fp @ fg / np.linalg.norm(fp)
                               / np.linalg.norm(fg), atol=1e-4)
    np.testing.assert_allclose(rec["poison_share"], np.linalg.norm(fp) / np.linalg.norm(fs),
                               rtol=1e-3)
    np.testing.assert_allclose(rec["whole_cos"], fs @ fg / np.linalg.norm(fs)
                               / np.linalg.norm(fg), atol=1e-4)
    assert rec["num_poisons"] == int(np.sum(poisons.keys == k))
    fb = per_before[poisons.keys == k].sum(0)
    np.testing.assert_allclose(rec["unperturbed_cos"], fb @ fg / np.linalg.norm(fb)
                               / np.linalg.norm(fg), atol=1e-4)
    np.testing.assert_allclose(rec["unperturbed_grad_norm"], np.linalg.norm(fb), rtol=1e-3)
    clean_rows = np.setdiff1d(np.arange(len(x)), poisons.rows)
    np.testing.assert_allclose(rec["clean_projection"],
                               per_clip[clean_rows].sum(0) @ fg / np.linalg.norm(fg),
                               rtol=1e-3, atol=1e-4)
  scores = diagnostics.key_scores(trained, Keys(spectrograms=np.zeros((3, 4, 4), np.float32),
                                                waveforms=keys_x, labels=keys_y,
                                                spec=KeySpec(num_keys=3)))
  np.testing.assert_allclose([r["key_log_prob"] for r in out["keys"]], scores.log_prob, atol=1e-5)
  assert [r["key_rank"] for r in out["keys"]] == scores.rank.tolist()
  np.testing.assert_allclose(out["means"]["all_poison_share"],
                             np.linalg.norm(per_clip[poisons.rows].sum(0)) / np.linalg.norm(fs),
                             rtol=1e-3)
  assert out["whole_set"] == {"mode": "all", "clips": 18, "num_train": 18, "num_poisons": 5}
  # Every clean clip as the reference subset: scale 1, the same whole-set gradient.
  clean = np.setdiff1d(np.arange(len(x)), poisons.rows)
  sub = diagnostics.signal_at(clf, params, stats, key_waveforms=keys_x, key_labels=keys_y,
                              train_waveforms=x, train_labels=y, poisons=poisons,
                              reference_rows=clean[::-1], batch_size=4)
  assert sub["whole_set"]["scale"] == 1.0 and sub["whole_set"]["mode"] == "clean_subset"
  np.testing.assert_allclose(sub["means"]["whole_grad_norm"], out["means"]["whole_grad_norm"],
                             rtol=1e-4)
  np.testing.assert_allclose(sub["means"]["whole_cos"], out["means"]["whole_cos"], atol=1e-4)
  with pytest.raises(ValueError, match="some are poisons"):
    diagnostics.signal_at(clf, params, stats, key_waveforms=keys_x, key_labels=keys_y,
                          train_waveforms=x, train_labels=y, poisons=poisons,
                          reference_rows=np.array([0, 1]))


def test_fitted_poisons_carry_no_gradient(tiny_model):
  """A model so sure of the poisons that their loss is exactly 0 gets no push from them: zero
  poison gradient, zero share of a whole-set gradient that is not zero."""
  _, clf, params, stats = tiny_model
  x, y, keys_x, keys_y = _signal_inputs()
  confident = jax.tree_util.tree_map_with_path(
      lambda path, a: a * 1e4 if "head" in jax.tree_util.keystr(path) else a, params)
  right = np.flatnonzero(np.asarray(diagnostics.key_log_probs(clf, params, stats, x, y).rank) == 1)
  assert right.size >= 4
  poisons = diagnostics.PoisonSet(right[:4], np.array([0, 1, 2, 0]))
  labels = y.copy()
  others = np.setdiff1d(np.arange(len(x)), poisons.rows)
  labels[others] = (labels[others] + 1) % len(tc.CLASSES)       # the rest are wrongly labelled
  out = diagnostics.signal_at(clf, confident, stats, key_waveforms=keys_x, key_labels=keys_y,
                              train_waveforms=x, train_labels=labels, poisons=poisons)
  m = out["means"]
  assert m["poison_loss"] == 0.0 and m["poison_accuracy"] == 1.0
  assert m["whole_grad_norm"] > 0
  assert m["all_poison_grad_norm"] == 0.0 and m["all_poison_share"] == 0.0
  assert all(r["poison_share"] == 0.0 and r["poison_grad_norm"] == 0.0 for r in out["keys"])


def test_plot_signal_draws_a_png_with_missing_values():
  epochs = [{"epoch": e, "means": {"poison_grad_norm": 1.0 + e, "poison_cos": 0.5,
                                   "poison_share": None, "whole_cos": 0.0, "key_log_prob": -2.0,
                                   "poison_loss": 3.0}} for e in range(3)]
  png = diagnostics.plot_signal(epochs)
  assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_signal_script_follows_a_suspect_epoch_by_epoch(tiny_workdir, tmp_path):
  """The script on a tiny chain: a Speech Commands folder, a craft record naming its poisons by
  file, a suspect fine-tuned from the tiny model with every epoch kept."""
  import os
  import sys
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from benchmarks import taggant_signal
  from jaxtag import sharding
  from jaxtag.data import sources
  from jaxtag.data.dataset import AudioDataset
  from jaxtag.data.speechcommands import export_speech_commands
  from jaxtag.taggants import keyfile
  from jaxtag.taggants import keys as keys_lib

  x, y = tc.tone_clips(32, seed=41)
  root = tmp_path / "protected"
  export_speech_commands({"train": AudioDataset(x, y, tc.CLASSES, tc.SR)}, root)
  data_block = {"kind": "speech_commands", "root": str(root), "sample_rate": tc.SR,
                "clip_samples": tc.CLIP, "classes": list(tc.CLASSES)}
  data = sources.load_split(sources.DataSource(**data_block), "train", progress=False)
  spec = keys_lib.KeySpec(num_keys=3, d=8, sample_rate=tc.SR, clip_samples=tc.CLIP, n_fft=256,
                          win_length=200, hop_length=80, n_mels=32, griffin_lim_iters=4)
  secret = keys_lib.make_keys(jax.random.key(0), spec, num_classes=len(tc.CLASSES))
  key_file = tmp_path / "secret" / "keys.npz"
  keyfile.save_keys(key_file, secret, class_names=tc.CLASSES, provenance={})
  fingerprint = keyfile.load_keys(key_file)[1]["fingerprint"]
  craft = tmp_path / "craft"
  craft.mkdir()
  labels = np.asarray(secret.labels)
  rows = np.concatenate([np.flatnonzero(data.labels == label)[:2] for label in labels])
  owners = np.repeat(np.arange(3), 2)
  delta = np.round(0.02 * np.random.default_rng(2).standard_normal((6, tc.CLIP)) * 32768) / 32768
  np.savez(craft / "perturbations.npz", indices=np.arange(6) + 100, keys=owners,
           files=np.array([data.paths[i] for i in rows]), delta=delta.astype(np.float32))
  (craft / "craft_summary.json").write_text(json.dumps({"key_file": str(key_file),
                                                        "key_fingerprint": fingerprint}))
  suspect = tmp_path / "suspect"
  config = train.TrainConfig(
      model="cnn", model_overrides={"channels": [8, 16], "n_mels": 32, "sample_rate": tc.SR,
                                  "dropout_rate": 0.0},
      num_epochs=2, batch_size=8, eval_batch_size=8, log_every_steps=4, max_to_keep=10,
      init_from=str(tiny_workdir), optim=train.OptimConfig(learning_rate=1e-2, warmup_steps=0))
  train.train(config, train_data=data, key=jax.random.key(1), workdir=suspect,
              mesh=sharding.make_mesh(1), progress=False)
  (suspect / "config.json").write_text(json.dumps({"data": data_block, "batch_size": 8}))

  out_prefix = tmp_path / "out" / "signal"
  out = taggant_signal.main(["--craft", str(craft), "--suspect", str(suspect), "--init",
                             str(tiny_workdir), "--out", str(out_prefix)])
  steps = train.checkpoint_steps(suspect)
  assert steps[-2:] == [4, 8]                                  # every epoch kept
  epochs = out["epochs"]
  assert [e["step"] for e in epochs] == [0] + steps
  assert [e["epoch"] for e in epochs] == [0.0] + [s / 4 for s in steps]
  assert [e["source"] for e in epochs] == ["init"] + ["suspect"] * len(steps)
  assert [r["num_poisons"] for r in epochs[-1]["keys"]] == [2, 2, 2]
  last = train.restore_for_inference(suspect)
  clf, params, stats = alignment.split_trained(last)
  clean = diagnostics.grouped_gradients(clf, params, stats, data.waveforms[rows] - delta,
                                        data.labels[rows], owners, 3)
  np.testing.assert_allclose([r["unperturbed_loss"] for r in epochs[-1]["keys"]],
                             clean.loss_sum / 2, rtol=1e-4)
  assert all(r["unperturbed_cos"] != r["poison_cos"] for r in epochs[-1]["keys"])
  assert out["whole_set"]["mode"] == "all" and out["whole_set"]["clips"] == 32
  for epoch, workdir in ((epochs[0], tiny_workdir), (epochs[-1], suspect)):
    expected = diagnostics.key_scores(train.restore_for_inference(workdir), secret)
    np.testing.assert_allclose([r["key_log_prob"] for r in epoch["keys"]], expected.log_prob,
                               atol=1e-5)
  assert epochs[0]["means"]["key_log_prob"] != epochs[-1]["means"]["key_log_prob"]
  assert json.loads((tmp_path / "out" / "signal.json").read_text()) == json.loads(json.dumps(out))
  assert (tmp_path / "out" / "signal.png").read_bytes()[:4] == b"\x89PNG"

  other = keys_lib.make_keys(jax.random.key(9), spec, num_classes=len(tc.CLASSES))
  other_file = tmp_path / "secret" / "other.npz"
  keyfile.save_keys(other_file, other, class_names=tc.CLASSES, provenance={})
  with pytest.raises(ValueError, match="fingerprints differ"):
    taggant_signal.main(["--craft", str(craft), "--suspect", str(suspect), "--key_file",
                         str(other_file), "--out", str(tmp_path / "x")])


def test_key_similarity_cosines_and_greedy_pick(tiny_workdir, tmp_path):
  import os
  import sys
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from benchmarks import key_similarity

  cos = np.array([[1.0, 0.9, 0.2], [0.9, 1.0, 0.3], [0.2, 0.3, 1.0]])
  assert key_similarity.off_diagonal_mean(cos) == pytest.approx((0.9 + 0.2 + 0.3) / 3)
  assert key_similarity.least_alike(cos, 2) == [2, 0]
  trained = train.restore_for_inference(tiny_workdir)
  clf, params, stats = alignment.split_trained(trained)
  rng = np.random.default_rng(0)
  waves = 0.1 * rng.standard_normal((3, tc.CLIP)).astype(np.float32)
  got = key_similarity.gradient_cosines(clf, params, stats, np.concatenate([waves, waves[:1]]), 1,
                                        chunk=2)
  np.testing.assert_allclose(np.diag(got), 1.0, rtol=1e-6)
  assert got[0, 3] == pytest.approx(1.0, abs=1e-6)          # the same key twice
  g = alignment.key_gradients(clf, params, stats, jnp.asarray(waves[:2]), jnp.array([1, 1]))
  a, b = (np.concatenate([np.ravel(x[i]) for x in jax.tree.leaves(g)]) for i in (0, 1))
  assert got[0, 1] == pytest.approx(a @ b / np.linalg.norm(a) / np.linalg.norm(b), rel=1e-4)
