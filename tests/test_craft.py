"""Taggant crafting: constraint, quantisation, optimiser, selection, and the sharded, resumable craft."""

import dataclasses
import functools
import json
import shutil
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tiny_classifier as tc
from flax import nnx

from jaxtag import models, rng, sharding, train
from jaxtag.data.dataset import AudioDataset
from jaxtag.taggants.keys import Keys, KeySpec
from jaxtag.taggants import constraint, craft, protect, select

# ------------------------------------------------------------------ constraint and quantisation


def _clips(n, length=400, seed=0, amp=0.3):
  r = np.random.default_rng(seed)
  x = amp * r.standard_normal((n, length))
  return (np.round(np.clip(x, -1, 1) * 32768) / 32768).astype(np.float32)


def _snr(x, delta):
  return 10 * np.log10(np.sum(np.square(x, dtype=np.float64), -1)
                       / np.sum(np.square(delta, dtype=np.float64), -1))


def test_project_holds_the_snr_ball_and_the_box():
  x = _clips(6)
  x[0, :50] = 0.999            # near full scale: the box binds
  x[5] = 0.0                   # silent clip
  scale = craft.snr_scale(jnp.asarray(x), 30.0)
  u = 5.0 * jax.random.normal(jax.random.key(0), x.shape)
  p = np.asarray(craft.project(u, jnp.asarray(x), scale))
  rms = np.sqrt(np.mean(p**2, -1))
  assert np.all(rms <= 1 + 1e-5)
  delta = p * np.asarray(scale)[:, None]
  assert np.all(np.abs(x + delta) <= 1 + 1e-6)
  assert np.all(p[5] == 0)
  assert np.all(_snr(x[:5], delta[:5]) >= 30 - 1e-3)
  # Inside the feasible set the projection is the identity (away from the rails, where the
  # box allows only perturbations towards zero).
  small = 0.1 * np.asarray(u) / np.max(np.abs(np.asarray(u)))
  inside = np.abs(x) < 0.99
  proj = np.asarray(craft.project(jnp.asarray(small), jnp.asarray(x), scale))
  np.testing.assert_allclose(proj[:5][inside[:5]], small[:5][inside[:5]], rtol=1e-6)


def test_a_loud_perturbation_at_the_positive_rail_exports_exactly():
  """A clip near full scale pushed up by a loud perturbation (5 dB, as key insertion does) stays
  at or under 32767/32768, the largest 16-bit sample: the 16-bit export writes exactly what was
  crafted (+1 would be written one step lower, and the read-back refuses that)."""
  from jaxtag.audio import io as audio_io
  x = _clips(4, amp=0.3, seed=3)
  x[:, 100:140] = 32760 / 32768                  # the positive rail, on the 16-bit grid
  x[:, 200:240] = -1.0                           # and the negative one
  scale = craft.snr_scale(jnp.asarray(x), 5.0)
  u = jnp.asarray(np.sign(x) + 0.0 * x) * 3.0    # away from zero on both rails
  delta = np.asarray(craft.perturbation(craft.project(u, jnp.asarray(x), scale),
                                        craft.CraftInputs(jnp.asarray(x), None, None, scale, None),
                                        craft.CraftConfig(snr_db=5.0)))
  crafted = x + delta
  assert crafted.max() <= 32767 / 32768 and crafted.min() >= -1.0
  assert crafted.max() == 32767 / 32768          # the rail was reached: the test binds
  written = audio_io.to_pcm16(crafted).astype(np.float32) / 32768
  np.testing.assert_array_equal(written, crafted)


@pytest.mark.parametrize("snr_db", [40.0, 55.0, 70.0])
def test_quantised_perturbation_is_on_the_grid_and_keeps_the_floor(snr_db):
  x = _clips(64, amp=0.05, seed=1)
  scale = np.asarray(craft.snr_scale(jnp.asarray(x), snr_db))
  u = np.asarray(craft.project(jax.random.normal(jax.random.key(1), x.shape) * 3, jnp.asarray(x),
                               jnp.asarray(scale)))
  delta = u * scale[:, None]
  q = np.asarray(craft.quantize_perturbation(jnp.asarray(x), jnp.asarray(delta), snr_db))
  grid = q * craft.PCM16_SCALE
  np.testing.assert_array_equal(grid, np.round(grid))
  assert np.all(_snr(x, q) >= snr_db - 1e-6)
  # Where rounding keeps the floor it is used (closer to the crafted delta than truncation).
  rounded = np.round(delta * 32768) / 32768
  ok = _snr(x, rounded) >= snr_db
  assert ok.any() or snr_db > 60  # at 70 dB this delta is under half an LSB almost everywhere
  np.testing.assert_array_equal(q[ok], rounded[ok])


def test_sign_adam_is_adam_on_the_sign():
  tx = craft.sign_adam(0.1)
  ref = optax.adam(0.1)
  p = jnp.zeros(5)
  s, s_ref = tx.init(p), ref.init(p)
  for i in range(3):
    g = jnp.array([3.0, -0.01, 0.0, 1e-9, -7.0]) * (i + 1)
    u, s = tx.update(g, s, p)
    u_ref, s_ref = ref.update(jnp.sign(g), s_ref, p)
    np.testing.assert_allclose(u, u_ref, rtol=1e-6)


def test_schedule_milestones_scale_with_the_number_of_steps():
  sched = craft.CraftConfig(steps=250, learning_rate=0.1).schedule()
  assert float(sched(39)) == pytest.approx(0.1)
  assert float(sched(40)) == pytest.approx(0.03)
  assert float(sched(219)) == pytest.approx(0.1 * 0.3**4)
  short = craft.CraftConfig(steps=25, learning_rate=0.1).schedule()
  assert float(short(3)) == pytest.approx(0.1)
  assert float(short(4)) == pytest.approx(0.03)
  assert float(short(24)) == pytest.approx(0.1 * 0.3**4)


def test_config_errors_name_the_field():
  with pytest.raises(ValueError, match="objective"):
    craft.CraftConfig(objective="both")
  with pytest.raises(ValueError, match="views"):
    craft.CraftAugment(views=0)
  with pytest.raises(ValueError, match="alignment"):
    craft.CraftConfig(alignment="dot")


def test_tree_cosine_matches_numpy_and_excludes_leaves():
  a = {"head": {"kernel": jnp.arange(6.0).reshape(2, 3)}, "conv": jnp.array([1.0, -2.0])}
  b = {"head": {"kernel": jnp.ones((2, 3))}, "conv": jnp.array([0.5, 4.0])}
  fa = np.concatenate([np.ravel(a["conv"]), np.ravel(a["head"]["kernel"])])
  fb = np.concatenate([np.ravel(b["conv"]), np.ravel(b["head"]["kernel"])])
  want = fa @ fb / np.linalg.norm(fa) / np.linalg.norm(fb)
  assert float(craft.tree_cosine(a, b)) == pytest.approx(want, rel=1e-6)
  keep = craft.leaf_keep(a, ("head",))
  assert float(craft.tree_cosine(a, b, keep)) == pytest.approx(
      (1 * 0.5 - 2 * 4) / np.linalg.norm([1, -2]) / np.linalg.norm([0.5, 4]), rel=1e-6)
  with pytest.raises(ValueError, match="leaves no parameter"):
    craft.leaf_keep(a, ("head", "conv"))
  assert float(craft.tree_projection(a, b)) == pytest.approx(fa @ fb / (fb @ fb), rel=1e-6)
  assert float(craft.tree_projection(a, b, keep)) == pytest.approx(
      (1 * 0.5 - 2 * 4) / (0.5 ** 2 + 4 ** 2), rel=1e-6)
  twice = jax.tree.map(lambda x: 2 * x, a)           # unlike the cosine, it sees the size
  assert float(craft.tree_projection(twice, b)) == pytest.approx(2 * fa @ fb / (fb @ fb), rel=1e-6)


# ------------------------------------------------------------------ selection


def _numpy_rng(seed: int = 0) -> np.random.Generator:
  return np.random.default_rng(seed)


def test_selection_from_a_key_draws_from_the_keys_numpy_seed():
  """A JAX key selects what numpy's generator of its 31-bit seed selects (the numbers protection
  has always drawn), and the mixup pool's generator is the next seed's."""
  labels = np.repeat(np.arange(5), 40)
  key = jax.random.key(3)
  seed = int(jax.random.randint(key, (), 0, 2**31 - 1))
  assert rng.numpy_seed(key) == seed
  by_key = select.select_poisons(key, labels, np.array([1, 3]), budget=0.1)
  by_seed = select.select_poisons(np.random.default_rng(seed), labels, np.array([1, 3]),
                                  budget=0.1)
  np.testing.assert_array_equal(by_key.indices, by_seed.indices)
  np.testing.assert_array_equal(rng.numpy_rng(key, offset=1).integers(0, 1000, 8),
                                np.random.default_rng(seed + 1).integers(0, 1000, 8))
  other = select.select_poisons(jax.random.key(4), labels, np.array([1, 3]), budget=0.1)
  assert not np.array_equal(other.indices, by_key.indices)


def test_selection_respects_budget_labels_and_disjointness():
  labels = np.repeat(np.arange(5), 40)
  key_labels = np.array([1, 3, 1])          # two keys share class 1
  sel = select.select_poisons(_numpy_rng(), labels, key_labels, budget=0.1)
  assert sel.num_poisons == 20
  assert sel.mask.sum(1).tolist() == [7, 7, 6]
  flat = sel.flat_indices()
  assert len(set(flat.tolist())) == flat.size
  for k in range(3):
    assert np.all(labels[sel.indices[k][sel.mask[k]]] == key_labels[k])
  padded = sel.pad_to(4)
  assert padded.indices.shape == (3, 8) and padded.num_poisons == 20
  assert np.array_equal(select.select_poisons(_numpy_rng(), labels, key_labels, budget=0.1).indices,
                        sel.indices)


@pytest.mark.parametrize("method", ["grad_norm", "loudest"])
def test_ranked_selection_takes_the_largest_scores(method):
  labels = np.repeat(np.arange(4), 25)
  scores = np.random.default_rng(0).random(100)
  sel = select.select_poisons(_numpy_rng(), labels, np.array([2]), budget=0.05, method=method,
                              scores=scores)
  pool = np.flatnonzero(labels == 2)
  want = pool[np.argsort(-scores[pool])[:5]]
  assert set(sel.flat_indices().tolist()) == set(want.tolist())


def test_selection_keeps_to_the_eligible_clips():
  labels = np.repeat(np.arange(4), 25)
  eligible = np.random.default_rng(1).random(100) < 0.5
  for seed in range(5):
    sel = select.select_poisons(_numpy_rng(seed), labels, np.array([0, 2]), budget=0.1,
                                eligible=eligible)
    assert sel.num_poisons == 10 and np.all(eligible[sel.flat_indices()])
  few = np.zeros(100, bool)
  few[:3] = True                                # 3 eligible clips of class 0, 5 needed
  with pytest.raises(ValueError, match="3 eligible training clips .22 left out"):
    select.select_poisons(_numpy_rng(), labels, np.array([0, 2]), budget=0.1, eligible=few)
  with pytest.raises(ValueError, match="eligible must have"):
    select.select_poisons(_numpy_rng(), labels, np.array([0]), budget=0.1, eligible=eligible[:10])


def test_poisons_must_be_loud_enough_to_survive_the_16_bit_export():
  config = protect.ProtectConfig(craft=craft.CraftConfig(snr_db=40.0))
  # At 40 dB the budget is rms / 100: one 16-bit step needs rms >= 100 / 32768.
  rms = np.array([0.5, 2.0, 8.0]) * 100 / 32768
  waves = np.sqrt(2) * rms[:, None] * np.sin(np.linspace(0, 200 * np.pi, 1600, endpoint=False))
  assert protect.carries_perturbation(waves, config).tolist() == [False, True, True]
  strict = dataclasses.replace(config, min_budget_lsb=4.0)
  assert protect.carries_perturbation(waves, strict).tolist() == [False, False, True]
  assert protect.carries_perturbation(waves, dataclasses.replace(config, min_budget_lsb=0)) is None
  float_export = dataclasses.replace(config, craft=craft.CraftConfig(snr_db=40.0, quantize=False))
  assert protect.carries_perturbation(waves, float_export) is None


def test_clip_rms_in_chunks_equals_the_whole_array_formula():
  waves = np.random.default_rng(0).normal(0, 0.1, (7, 300)).astype(np.float32)
  whole = np.sqrt(np.mean(np.square(waves, dtype=np.float64), axis=-1))
  for chunk in (1, 3, 7, 100):     # chunks that divide N, leave a remainder, or exceed it
    np.testing.assert_array_equal(protect.clip_rms(waves, chunk=chunk), whole)


@pytest.mark.parametrize("num_train, num_keys", [(523, 10), (1000, 10), (8, 2), (7, 3),
                                                  (56000, 10), (10, 10), (99991, 7)])
def test_budget_message_names_the_option_and_the_smallest_budget_that_works(num_train, num_keys):
  from jaxtag import errors
  smallest = select.smallest_budget(num_train, num_keys)
  counts = select.poisons_per_key(smallest, num_train, num_keys)     # it works...
  assert counts.min() == 1 and counts.sum() == num_keys
  unit = 10.0 ** (np.floor(np.log10(smallest)) - 3)                  # ...and one digit less fails
  with pytest.raises(ValueError, match="needs at least one"):
    select.poisons_per_key(smallest - unit, num_train, num_keys)
  if smallest <= 0.01:
    return
  with pytest.raises(ValueError, match=rf"pass budget={smallest} or more"):
    select.poisons_per_key(0.01, num_train, num_keys)
  with errors.launcher_flags({"budget": 0.01, "craft": {"steps": 6}}, {"ProtectConfig": ""}):
    with pytest.raises(ValueError, match=rf"pass --config\.budget={smallest} or more"):
      select.poisons_per_key(0.01, num_train, num_keys)


def test_budget_message_when_no_budget_can_work():
  assert select.smallest_budget(5, 10) is None
  with pytest.raises(ValueError, match="fewer training clips than keys"):
    select.poisons_per_key(1.0, 5, 10)


def test_selection_errors():
  labels = np.repeat(np.arange(4), 5)
  with pytest.raises(ValueError, match="budget"):
    select.select_poisons(_numpy_rng(), labels, np.array([0]), budget=0.0)
  with pytest.raises(ValueError, match="class 0 has 5"):
    select.select_poisons(_numpy_rng(), labels, np.array([0]), budget=0.5)
  with pytest.raises(ValueError, match="needs at least one"):
    select.select_poisons(_numpy_rng(), labels, np.arange(4), budget=0.1)
  with pytest.raises(ValueError, match="scores"):
    select.select_poisons(_numpy_rng(), labels, np.array([0]), budget=0.1, method="grad_norm")
  with pytest.raises(ValueError, match="loudest"):
    select.select_poisons(_numpy_rng(), labels, np.array([0]), budget=0.1, method="quietest")


# ------------------------------------------------------------------ crafting on a trained model


@pytest.fixture(scope="module")
def surrogate(tiny_workdir):
  return train.restore_for_inference(tiny_workdir)


@pytest.fixture(scope="module")
def craft_inputs(surrogate):
  x, y = tc.tone_clips(48, seed=3)
  key_waves = _clips(2, length=tc.CLIP, seed=7, amp=0.2)
  key_labels = np.array([2, 4], np.int32)
  sel = select.select_poisons(_numpy_rng(), y, key_labels, budget=8 / 48).pad_to(8)
  return dict(key_waveforms=key_waves, key_labels=key_labels, poison_x=x[sel.indices],
              poison_labels=y[sel.indices], poison_mask=sel.mask, sample_rate=tc.SR,
              pool=x[:16], pool_labels=y[:16])


CONFIG = craft.CraftConfig(steps=8, restarts=2, snr_db=20.0, learning_rate=0.5,
                           augment=craft.CraftAugment(views=2, max_shift_seconds=0.01,
                                                      max_gain_db=3.0, mixup_alpha=0.4,
                                                      freq_mask_width=4, time_mask_width=2))


def _craft(surrogate, craft_inputs, mesh, **kwargs):
  """One craft, start to end, against ``surrogate`` alone (an ensemble of one)."""
  config = kwargs.pop("config", CONFIG)
  return craft.craft(craft.ensemble_from_trained([surrogate]), craft.Poisons(**craft_inputs),
                     config=config, key=jax.random.key(0),
                     options=craft.RunOptions(mesh=mesh, progress=False, **kwargs))


def _craft_members(clf, params, stats, craft_inputs, config=None, **options):
  """One craft against the ensemble of ``params``/``stats`` (lists, one entry per member)."""
  return craft.craft(craft.ensemble(clf, params, stats), craft.Poisons(**craft_inputs),
                     config=config or CONFIG, key=jax.random.key(0),
                     options=craft.RunOptions(mesh=sharding.make_mesh(1), progress=False,
                                              **options))


@pytest.fixture(scope="module")
def result_1dev(surrogate, craft_inputs):
  return _craft(surrogate, craft_inputs, sharding.make_mesh(1))


def test_craft_lowers_the_alignment_loss_and_holds_the_constraints(result_1dev, craft_inputs):
  r = result_1dev
  assert np.all(r.losses < r.initial_losses - 0.01), (r.initial_losses, r.losses)
  assert r.restart_losses.shape == (2, 2) and np.all(np.isfinite(r.restart_losses))
  np.testing.assert_allclose(r.losses, r.restart_losses.min(0), rtol=1e-6)
  mask = craft_inputs["poison_mask"]
  assert np.all(r.snr_db[mask] >= 20.0 - 1e-6)
  assert np.all(r.delta[~mask] == 0)
  grid = r.delta * craft.PCM16_SCALE
  np.testing.assert_array_equal(grid, np.round(grid))
  assert np.all(np.abs(craft_inputs["poison_x"] + r.delta) <= 1.0)
  assert len(r.history) == 16


def test_craft_on_8_devices_equals_1_device(surrogate, craft_inputs, result_1dev, num_devices):
  if num_devices < 8:
    pytest.skip("needs 8 (fake) devices")
  r8 = _craft(surrogate, craft_inputs, sharding.make_mesh(8))
  np.testing.assert_allclose(r8.losses, result_1dev.losses, atol=1e-4)
  # Sign steps amplify float noise in near-zero gradients; compare the perturbations as signals.
  a, b = r8.delta.ravel(), result_1dev.delta.ravel()
  assert a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) > 0.99


def test_craft_resumes_where_an_uninterrupted_run_ends(surrogate, craft_inputs, tmp_path):
  mesh = sharding.make_mesh(1)
  config = dataclasses.replace(CONFIG, restarts=2, steps=3)
  ckpt = tmp_path / "ckpt"
  full = _craft(surrogate, craft_inputs, mesh, config=config, checkpoint_dir=ckpt,
                checkpoint_every=2)
  steps = sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit())
  assert steps[-1] == 6
  # The crash: the last checkpoint never reached the disk; the re-run resumes at step 4, inside
  # the second restart, and must carry the first restart's best perturbation over.
  shutil.rmtree(ckpt / "6")
  resumed = _craft(surrogate, craft_inputs, mesh, config=config, checkpoint_dir=ckpt,
                   checkpoint_every=2)
  # The history covers every step: those before the resume come back from metrics.jsonl.
  assert [h["step"] for h in resumed.history] == list(range(6))
  assert resumed.history == full.history
  np.testing.assert_array_equal(resumed.delta, full.delta)
  np.testing.assert_array_equal(resumed.losses, full.losses)
  np.testing.assert_array_equal(resumed.restart_losses, full.restart_losses)


def test_an_interrupted_craft_rebuilt_from_its_checkpoint_equals_an_uninterrupted_one(
    surrogate, craft_inputs, tmp_path):
  """craft_run(until=k), then a new craft_init from the checkpoint (as a new process would):
  the same perturbations, losses and per-step history as one run, and a metrics.jsonl line per
  step."""
  config = dataclasses.replace(CONFIG, restarts=2, steps=3)
  surrogates = craft.ensemble_from_trained([surrogate])
  poisons = craft.Poisons(**craft_inputs)
  options = craft.RunOptions(mesh=sharding.make_mesh(1), progress=False,
                             checkpoint_dir=tmp_path / "ckpt", checkpoint_every=5, log_every=2)
  init = functools.partial(craft.craft_init, surrogates, poisons, config=config,
                           key=jax.random.key(0))
  whole = craft.craft_finish(craft.craft_run(init(options=dataclasses.replace(
      options, checkpoint_dir=None))))
  first = craft.craft_run(init(options=options), until=4)   # stops inside the second restart
  assert first.step == 4 and [h["step"] for h in first.history] == [0, 1, 2, 3]
  with pytest.raises(ValueError, match="step 4 of 6"):
    craft.craft_finish(first)
  rebuilt = init(options=options)
  assert rebuilt.step == 4 and rebuilt.history == first.history
  resumed = craft.craft_finish(craft.craft_run(rebuilt))
  assert [h["step"] for h in resumed.history] == list(range(6))
  assert [h["restart"] for h in resumed.history] == [0, 0, 0, 1, 1, 1]
  assert resumed.history == whole.history
  np.testing.assert_array_equal(resumed.delta, whole.delta)
  np.testing.assert_array_equal(resumed.losses, whole.losses)
  np.testing.assert_array_equal(resumed.restart_losses, whole.restart_losses)
  np.testing.assert_array_equal(resumed.initial_losses, whole.initial_losses)
  lines = [json.loads(line) for line in
           (tmp_path / "ckpt" / craft.METRICS_JSONL).read_text().splitlines()]
  assert lines == whole.history


def test_losses_are_fetched_every_log_every_steps_not_every_step(surrogate, craft_inputs):
  """The loop keeps the losses on the device between fetches: with a transfer guard that
  refuses implicit device-to-host transfers the steps between two fetches still run."""
  config = dataclasses.replace(CONFIG, restarts=1, steps=4)
  run = craft.craft_init(craft.ensemble_from_trained([surrogate]),
                         craft.Poisons(**craft_inputs), config=config, key=jax.random.key(0),
                         options=craft.RunOptions(mesh=sharding.make_mesh(1), progress=False,
                                                  log_every=4, checkpoint_every=4))
  with jax.transfer_guard_device_to_host("disallow"):
    run = craft.craft_run(run)
  assert [h["step"] for h in run.history] == [0, 1, 2, 3]


def _tone_data_and_keys():
  """60 tone clips as a training set and two keys (labels 0 and 3) for ``protect_dataset``."""
  x, y = tc.tone_clips(60, seed=5)
  data = AudioDataset(x, y, tc.CLASSES, tc.SR)
  keys = Keys(spectrograms=np.zeros((2, 4, 4), np.float32),
              waveforms=_clips(2, length=tc.CLIP, seed=9, amp=0.2),
              labels=np.array([0, 3], np.int32), spec=KeySpec(num_keys=2))
  return x, y, data, keys


def test_protect_dataset_applies_exactly_the_crafted_perturbation(surrogate):
  x, y, data, keys = _tone_data_and_keys()
  config = protect.ProtectConfig(budget=0.1, craft=dataclasses.replace(CONFIG, restarts=1,
                                                                       steps=3))
  protected, report = protect.protect_dataset([surrogate], keys, data, config=config,
                                              key=jax.random.key(0), mesh=sharding.make_mesh(1),
                                              progress=False)
  changed = np.flatnonzero(np.any(protected.waveforms != data.waveforms, axis=1))
  assert set(changed.tolist()) <= set(report.poison_indices.tolist())
  assert report.poison_indices.size == 6
  np.testing.assert_array_equal(protected.labels, data.labels)
  assert np.all(y[report.poison_indices] == np.array([0, 3])[report.poison_keys])
  assert np.all(report.snr_db >= 20.0 - 1e-6)
  assert report.mask_margin_db is None and "mask_margin_db_max" not in report.summary()
  assert np.all(np.isfinite(report.alignment_before)) and np.all(np.isfinite(report.alignment_after))
  bad = dataclasses.replace(data, class_names=tuple(reversed(tc.CLASSES)))
  with pytest.raises(ValueError, match="classes"):
    protect.protect_dataset([surrogate], keys, bad, config=config, key=jax.random.key(0),
                            progress=False)


# ------------------------------------------------------------------ the STFT-mask constraint

# 10 dB: on these tones a 20 dB mask leaves ~41 dB SNR (noise bins allow little), too little for a
# 4-step craft to move the loss clearly; 10 dB leaves ~30 dB.
MASK_CONFIG = dataclasses.replace(CONFIG, constraint="stft_mask", mask_db=10.0, steps=4,
                                  restarts=1)


@pytest.fixture(scope="module")
def mask_result_1dev(surrogate, craft_inputs):
  return _craft(surrogate, craft_inputs, sharding.make_mesh(1), config=MASK_CONFIG)


def test_stft_mask_craft_lowers_the_loss_and_its_export_holds_the_bound(mask_result_1dev,
                                                                        craft_inputs):
  r = mask_result_1dev
  assert np.all(r.losses < r.initial_losses - 0.005), (r.initial_losses, r.losses)
  mask = craft_inputs["poison_mask"]
  assert np.all(r.delta[~mask] == 0)
  x, delta = craft_inputs["poison_x"][mask], r.delta[mask]
  stft_mask = MASK_CONFIG.stft_mask()
  bound = constraint.mask_bound(jnp.asarray(x), stft_mask)
  crafted = np.asarray(constraint.mask_margin_db(jnp.asarray(delta), bound, stft_mask))
  # 4 steps of 4 rounds from a white start: still far from the bound (a 250-step craft ends
  # within a dB); the export must make it exact anyway.
  assert np.all(crafted > 0), crafted
  q = protect.export_under_mask(x, delta, stft_mask)
  margins = protect.mask_margins(x, x + q, stft_mask)
  assert np.all(margins <= 0) and np.all(np.isfinite(margins)), margins   # every poison carries
  np.testing.assert_array_equal(q * craft.PCM16_SCALE, np.round(q * craft.PCM16_SCALE))
  np.testing.assert_allclose(
      np.asarray(constraint.mask_margin_db(jnp.asarray(q), bound, stft_mask)), margins, atol=1e-4)
  assert np.all(np.isfinite(r.snr_db[mask]))      # the SNR is still reported


def test_stft_mask_craft_on_8_devices_equals_1_device(surrogate, craft_inputs, mask_result_1dev,
                                                      num_devices):
  if num_devices < 8:
    pytest.skip("needs 8 (fake) devices")
  r8 = _craft(surrogate, craft_inputs, sharding.make_mesh(8), config=MASK_CONFIG)
  a, b = r8.delta.ravel(), mask_result_1dev.delta.ravel()
  cos = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
  # Sign steps amplify float noise (here the per-device products of the mask's DFT): compare the
  # losses loosely and the perturbations as signals.
  np.testing.assert_allclose(r8.losses, mask_result_1dev.losses, atol=2e-3)
  assert cos > 0.98, cos


def test_protect_dataset_under_the_stft_mask_exports_within_the_bound(surrogate):
  _, _, data, keys = _tone_data_and_keys()
  config = protect.ProtectConfig(budget=0.1, diagnostics=False,
                                 craft=dataclasses.replace(MASK_CONFIG, steps=2))
  protected, report = protect.protect_dataset([surrogate], keys, data, config=config,
                                              key=jax.random.key(0), mesh=sharding.make_mesh(1),
                                              progress=False)
  idx = report.poison_indices
  clean, perturbed = data.waveforms[idx], protected.waveforms[idx]
  assert report.mask_margin_db.shape == (idx.size,) == (6,)
  assert np.all(report.mask_margin_db <= 0) and np.all(np.isfinite(report.mask_margin_db))
  with warnings.catch_warnings():
    warnings.simplefilter("error")   # no "mean of empty slice" for the diagnostics left off
    summary = report.summary()
  assert summary["mask_margin_db_max"] == pytest.approx(float(report.mask_margin_db.max()))
  # diagnostics=False measures no alignment: None (JSON has no NaN), not a NaN mean.
  assert summary["alignment_before_mean"] is None and summary["alignment_after_mean"] is None
  assert len(report.to_json()["mask_margin_db"]) == idx.size
  # Measured on what was exported: the protected clips' own perturbations.
  stft_mask = config.craft.stft_mask()
  np.testing.assert_allclose(protect.mask_margins(clean, perturbed, stft_mask),
                             report.mask_margin_db, atol=1e-6)
  delta = perturbed.astype(np.float64) - clean
  np.testing.assert_allclose(report.snr_db, 10 * np.log10(np.sum(clean.astype(np.float64)**2, -1)
                                                          / np.sum(delta**2, -1)), rtol=1e-9)
  changed = np.flatnonzero(np.any(protected.waveforms != data.waveforms, axis=1))
  assert set(changed.tolist()) <= set(idx.tolist())


# ------------------------------------------------------------------ surrogate ensembles


def _other_member(params, seed, scale=0.3):
  """Another 'surrogate' of the same architecture: the weights with noise of ``scale`` x their
  own spread (a stand-in for another seed; what matters here is that the members differ)."""
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(treedef, [
      x + scale * (jnp.std(x) + 1e-3) * jax.random.normal(k, x.shape, x.dtype)
      for x, k in zip(leaves, keys)])


def _group_inputs(clf, craft_inputs, key_grads, snr_db):
  x = jnp.asarray(craft_inputs["poison_x"])
  targets = jax.nn.one_hot(craft_inputs["poison_labels"], clf.num_classes, dtype=jnp.float32)
  weights = jnp.asarray(craft_inputs["poison_mask"], jnp.float32)
  scale = craft.snr_scale(x, snr_db) * weights
  return craft.CraftInputs(x, targets, weights, scale, key_grads)


def test_ensemble_loss_is_the_mean_of_its_members_losses(surrogate, craft_inputs):
  clf, params, stats = craft.split_trained(surrogate)
  other = _other_member(params, 1)
  kw = jnp.asarray(craft_inputs["key_waveforms"])
  kl = jnp.asarray(craft_inputs["key_labels"])
  keep = craft.leaf_keep(params, ())
  u = craft.project(jax.random.normal(jax.random.key(2), craft_inputs["poison_x"].shape),
                    jnp.asarray(craft_inputs["poison_x"]),
                    _group_inputs(clf, craft_inputs, None, CONFIG.snr_db).scale)
  kwargs = dict(clf=clf, config=CONFIG, keep=keep, sample_rate=tc.SR)
  single = []
  for p in (params, other):
    inputs = _group_inputs(clf, craft_inputs, craft.key_gradients(clf, p, stats, kw, kl),
                           CONFIG.snr_db)
    single.append(np.asarray(craft.eval_losses(u, inputs, p, stats, **kwargs)))
  assert np.all(np.abs(single[0] - single[1]) > 1e-4), single   # the members do differ
  stacked_p = craft.stack_members([params, other])
  stacked_s = craft.stack_members([stats, stats])
  g = craft.ensemble_key_gradients(clf, stacked_p, stacked_s, kw, kl)
  assert jax.tree.leaves(g)[0].shape[:2] == (2, 2)     # (groups, members, ...)
  inputs = _group_inputs(clf, craft_inputs, g, CONFIG.snr_db)
  both = np.asarray(craft.eval_losses(u, inputs, stacked_p, stacked_s, ensemble=True, **kwargs))
  np.testing.assert_allclose(both, (single[0] + single[1]) / 2, rtol=1e-5, atol=1e-6)


def test_ensemble_of_one_surrogate_twice_crafts_as_that_surrogate(surrogate, craft_inputs,
                                                                   result_1dev):
  clf, params, stats = craft.split_trained(surrogate)
  twice = _craft_members(clf, [params, params], [stats, stats], craft_inputs)
  np.testing.assert_allclose(twice.initial_losses, result_1dev.initial_losses, atol=1e-5)
  np.testing.assert_allclose(twice.losses, result_1dev.losses, atol=1e-4)
  a, b = twice.delta.ravel(), result_1dev.delta.ravel()
  assert a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) > 0.99


def test_an_ensemble_of_one_steps_exactly_as_its_surrogate_alone(surrogate, craft_inputs):
  """The driver always crafts against a stacked ensemble; one member must give the numbers of
  the single-surrogate step bit for bit (the published results were crafted that way)."""
  clf, params, stats = craft.split_trained(surrogate)
  kw = jnp.asarray(craft_inputs["key_waveforms"])
  kl = jnp.asarray(craft_inputs["key_labels"])
  keep = craft.leaf_keep(params, ())
  single = _group_inputs(clf, craft_inputs, craft.key_gradients(clf, params, stats, kw, kl),
                         CONFIG.snr_db)
  one_p, one_s = craft.stack_members([params]), craft.stack_members([stats])
  one = single._replace(key_grads=craft.ensemble_key_gradients(clf, one_p, one_s, kw, kl))
  for a, b in zip(jax.tree.leaves(single.key_grads), jax.tree.leaves(one.key_grads)):
    np.testing.assert_array_equal(a, b[:, 0])
  u0 = craft.project(jax.random.normal(jax.random.key(5), single.x.shape), single.x, single.scale)
  pool = jnp.asarray(craft_inputs["pool"])
  pool_targets = jax.nn.one_hot(craft_inputs["pool_labels"], clf.num_classes)
  out = []
  for ensemble, inputs, p, s in ((False, single, params, stats), (True, one, one_p, one_s)):
    step, tx = craft.make_craft_step(clf, CONFIG, keep=keep, sample_rate=tc.SR,
                                     ensemble=ensemble)
    u = jnp.array(u0)
    state = craft.CraftState(u=u, opt_state=tx.init(u), step=jnp.zeros((), jnp.int32),
                             best_u=jnp.zeros_like(u), best_loss=jnp.full((2,), jnp.inf),
                             restart_losses=jnp.full((1, 2), jnp.nan))
    state, losses = step(state, inputs, p, s, pool, pool_targets, jax.random.key(1))
    evals = craft.eval_losses(state.u, inputs, p, s, clf=clf, config=CONFIG, keep=keep,
                              sample_rate=tc.SR, ensemble=ensemble)
    out.append((np.asarray(losses), np.asarray(state.u), np.asarray(evals)))
  for a, b in zip(*out):
    np.testing.assert_array_equal(a, b)


def test_ensemble_craft_lowers_the_mean_loss_and_protect_takes_a_list(surrogate, craft_inputs):
  clf, params, stats = craft.split_trained(surrogate)
  other = surrogate._replace(params=_other_member(params, 3))
  config = dataclasses.replace(CONFIG, restarts=1, steps=6)
  r = _craft_members(clf, [params, other.params], [stats, stats], craft_inputs, config)
  assert np.all(r.losses < r.initial_losses - 0.01), (r.initial_losses, r.losses)
  mask = craft_inputs["poison_mask"]
  assert np.all(r.snr_db[mask] >= config.snr_db - 1e-6)

  _, _, data, keys = _tone_data_and_keys()
  pconfig = protect.ProtectConfig(budget=0.1, selection="grad_norm",
                                  craft=dataclasses.replace(config, steps=2))
  protected, report = protect.protect_dataset([surrogate, other], keys, data, config=pconfig,
                                              key=jax.random.key(0), mesh=sharding.make_mesh(1),
                                              progress=False)
  changed = np.flatnonzero(np.any(protected.waveforms != data.waveforms, axis=1))
  assert set(changed.tolist()) <= set(report.poison_indices.tolist())
  assert np.all(np.isfinite(report.alignment_after))
  # The mean of the members' diagnostics, not the first member's alone.
  _, report_0 = protect.protect_dataset([surrogate], keys, data, config=pconfig,
                                        key=jax.random.key(0), mesh=sharding.make_mesh(1),
                                        progress=False)
  np.testing.assert_array_equal(report_0.poison_indices.size, report.poison_indices.size)
  assert not np.allclose(report_0.alignment_before, report.alignment_before)


def test_grad_norm_scores_do_not_depend_on_the_chunking(surrogate):
  clf, params, stats = craft.split_trained(surrogate)
  _, _, data, _ = _tone_data_and_keys()
  classes = np.array([0, 3])
  whole = protect.grad_norm_scores(clf, params, stats, data, classes, batch_size=len(data))
  chunked = protect.grad_norm_scores(clf, params, stats, data, classes, batch_size=7)
  inside = np.isin(data.labels, classes)
  assert inside.sum() % 7, "the test needs a last chunk that is padded"
  assert np.all(np.isnan(whole[~inside])) and np.all(np.isnan(chunked[~inside]))
  assert np.all(whole[inside] > 0)
  np.testing.assert_allclose(chunked[inside], whole[inside], rtol=1e-4)


def test_ensemble_members_must_share_one_architecture(surrogate):
  _, params, _ = craft.split_trained(surrogate)
  leaves, treedef = jax.tree.flatten(params)
  wrong = jax.tree.unflatten(treedef, [leaves[0][..., :1]] + leaves[1:])
  with pytest.raises(ValueError, match="architecture"):
    craft.stack_members([params, wrong])


# ------------------------------------------------------------------ loop unrolling


def test_unrolled_and_rolled_loops_give_the_same_step(surrogate, craft_inputs):
  """``CraftConfig.unroll`` changes how XLA runs the loops over keys and members, not the maths."""
  clf, params, stats = craft.split_trained(surrogate)
  members = craft.stack_members([params, _other_member(params, 4)])
  member_stats = craft.stack_members([stats, stats])
  g = craft.ensemble_key_gradients(clf, members, member_stats,
                                   jnp.asarray(craft_inputs["key_waveforms"]),
                                   jnp.asarray(craft_inputs["key_labels"]))
  inputs = _group_inputs(clf, craft_inputs, g, CONFIG.snr_db)
  keep = craft.leaf_keep(params, ())
  u0 = craft.project(jax.random.normal(jax.random.key(5), inputs.x.shape), inputs.x, inputs.scale)
  out = {}
  for unroll in (1, True):
    config = dataclasses.replace(CONFIG, unroll=unroll)
    step, tx = craft.make_craft_step(clf, config, keep=keep, sample_rate=tc.SR, ensemble=True)
    u = jnp.array(u0)
    state = craft.CraftState(u=u, opt_state=tx.init(u), step=jnp.zeros((), jnp.int32),
                             best_u=jnp.zeros_like(u), best_loss=jnp.full((2,), jnp.inf),
                             restart_losses=jnp.full((1, 2), jnp.nan))
    state, losses = step(state, inputs, members, member_stats,
                         jnp.asarray(craft_inputs["pool"]),
                         jax.nn.one_hot(craft_inputs["pool_labels"], clf.num_classes),
                         jax.random.key(1))
    evals = craft.eval_losses(state.u, inputs, members, member_stats, clf=clf, config=config,
                              keep=keep, sample_rate=tc.SR, ensemble=True)
    out[unroll] = (np.asarray(losses), np.asarray(state.u), np.asarray(evals))
  for a, b in zip(out[1], out[True]):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  assert np.any(out[True][1] != np.asarray(u0))     # the step did move the perturbation


@pytest.mark.parametrize("unroll", [0, -2, 1.5])
def test_craft_config_refuses_a_bad_unroll(unroll):
  with pytest.raises(ValueError, match="unroll"):
    craft.CraftConfig(unroll=unroll)


# ------------------------------------------------------------------ retraining during the craft


def test_new_surrogates_mid_craft_take_over_the_key_gradients(surrogate, craft_inputs):
  """craft_run(until=2), with_surrogates, craft_run: the same weights go on seamlessly; other
  weights change the last steps; current_delta is what would be published."""
  clf, params, stats = craft.split_trained(surrogate)
  other = _other_member(params, 6)
  config = dataclasses.replace(CONFIG, restarts=1, steps=4)
  start = functools.partial(craft.craft_init, craft.ensemble(clf, [params], [stats]),
                            craft.Poisons(**craft_inputs), config=config, key=jax.random.key(0),
                            options=craft.RunOptions(mesh=sharding.make_mesh(1), progress=False))
  plain = craft.craft_finish(craft.craft_run(start()))
  # craft_run donates the run's state to the step: a run is used once, as a train state is.
  same = craft.with_surrogates(craft.craft_run(start(), until=2),
                               craft.ensemble(clf, [params], [stats]))
  same = craft.craft_finish(craft.craft_run(same))
  np.testing.assert_array_equal(same.delta, plain.delta)
  np.testing.assert_array_equal(same.losses, plain.losses)

  half = craft.craft_run(start(), until=2)
  delta = craft.current_delta(half)
  mask = craft_inputs["poison_mask"]
  assert delta.shape == craft_inputs["poison_x"].shape and np.all(delta[~mask] == 0)
  grid = delta * craft.PCM16_SCALE
  np.testing.assert_array_equal(grid, np.round(grid))            # what would be published
  assert np.any(delta[mask] != 0)
  swapped = craft.craft_finish(craft.craft_run(
      craft.with_surrogates(half, craft.ensemble(clf, [other], [stats]))))
  np.testing.assert_array_equal(swapped.initial_losses, plain.initial_losses)
  assert np.any(swapped.losses != plain.losses)  # the last steps aligned with the new surrogate
  assert np.all(swapped.snr_db[mask] >= config.snr_db - 1e-6)
  with pytest.raises(ValueError, match="2 surrogates for a craft against an ensemble of 1"):
    craft.with_surrogates(half, craft.ensemble(clf, [params, other], [stats, stats]))


def _fake_retraining(monkeypatch, models):
  """Replaces the training in protect.retrain_surrogates by ``models`` and records its calls
  ``(round, training set)``."""
  calls = []

  def retrain(plan, data, round_index, *, mesh=None):
    calls.append((round_index, data))
    return list(models)

  monkeypatch.setattr(protect, "retrain_surrogates", retrain)
  return calls


def _plan(members=1, root="unused"):
  return protect.RetrainPlan(
      surrogates=tuple(protect.RetrainSurrogate(config=None, key=jax.random.key(i))
                       for i in range(members)), root=root, progress=False)


def test_retraining_settings_are_checked(surrogate):
  _, _, data, keys = _tone_data_and_keys()
  run = functools.partial(protect.protect_dataset, [surrogate], keys, data,
                          key=jax.random.key(0), mesh=sharding.make_mesh(1), progress=False)
  config = protect.ProtectConfig(budget=0.1, retrain_rounds=1, craft=CONFIG)   # restarts=2
  with pytest.raises(ValueError, match="restarts=1"):
    run(config=config, retrain=_plan())
  config = dataclasses.replace(config, craft=dataclasses.replace(CONFIG, restarts=1))
  with pytest.raises(ValueError, match="needs a retrain plan"):
    run(config=config)
  with pytest.raises(ValueError, match="2 surrogates for an ensemble of 1"):
    run(config=config, retrain=_plan(2))
  with pytest.raises(ValueError, match="retrain_rounds"):
    protect.ProtectConfig(retrain_rounds=-1)
  with pytest.raises(ValueError, match="retrain_rounds"):
    protect.ProtectConfig(retrain_rounds=8, craft=CONFIG)           # not before step 8 of 8
  assert protect.ProtectConfig(retrain_rounds=3).retrain_steps() == (62, 125, 188)


def test_protect_dataset_retrains_on_the_protected_training_set(surrogate, monkeypatch):
  _, _, data, keys = _tone_data_and_keys()
  config = protect.ProtectConfig(budget=0.1, retrain_rounds=1, diagnostics=False,
                                 craft=dataclasses.replace(CONFIG, restarts=1, steps=4))
  seen = _fake_retraining(monkeypatch, [surrogate])
  protected, report = protect.protect_dataset([surrogate], keys, data, config=config,
                                              key=jax.random.key(0), mesh=sharding.make_mesh(1),
                                              progress=False, retrain=_plan())
  assert [r for r, _ in seen] == [0]
  mid = seen[0][1]
  np.testing.assert_array_equal(mid.labels, data.labels)
  changed = np.flatnonzero(np.any(mid.waveforms != data.waveforms, axis=1))
  assert changed.size > 0 and set(changed.tolist()) <= set(report.poison_indices.tolist())
  assert np.any(mid.waveforms[changed] != protected.waveforms[changed])   # crafting went on


def test_a_craft_resumed_after_retraining_retrains_on_the_same_data(surrogate, monkeypatch,
                                                                    tmp_path):
  _, _, data, keys = _tone_data_and_keys()
  _, params, _ = craft.split_trained(surrogate)
  other = surrogate._replace(params=_other_member(params, 6))
  config = protect.ProtectConfig(budget=0.1, retrain_rounds=1, diagnostics=False,
                                 craft=dataclasses.replace(CONFIG, restarts=1, steps=4))
  seen = _fake_retraining(monkeypatch, [other])
  ckpt = tmp_path / "ckpt"
  run = functools.partial(protect.protect_dataset, [surrogate], keys, data, config=config,
                          key=jax.random.key(0), mesh=sharding.make_mesh(1), progress=False,
                          retrain=_plan(), checkpoint_dir=ckpt, checkpoint_every=1)
  _, full = run()
  _, plain = protect.protect_dataset([surrogate], keys, data,
                                     config=dataclasses.replace(config, retrain_rounds=0),
                                     key=jax.random.key(0), mesh=sharding.make_mesh(1),
                                     progress=False)
  assert np.any(full.final_losses != plain.final_losses)   # the retrained surrogate took over
  first = seen[0][1].waveforms
  # Crash after the retraining: the resumed craft retrains on the same data and ends the same.
  for step in (3, 4):
    shutil.rmtree(ckpt / str(step))
  seen.clear()
  protected, resumed = run()
  assert [r for r, _ in seen] == [0]
  np.testing.assert_array_equal(seen[0][1].waveforms, first)
  np.testing.assert_array_equal(resumed.final_losses, full.final_losses)
  assert resumed.history == full.history and len(resumed.history) == 4


def test_retrain_surrogates_trains_each_surrogate_into_its_round_folder(tmp_path):
  x, y = tc.tone_clips(16, seed=2)
  data = AudioDataset(x, y, tc.CLASSES, tc.SR)
  recipe = train.TrainConfig(
      model="cnn", model_overrides={"channels": [4, 8], "n_mels": 16, "sample_rate": tc.SR,
                                    "dropout_rate": 0.0},
      num_epochs=1, batch_size=8, eval_batch_size=8, log_every_steps=1,
      optim=train.OptimConfig(learning_rate=1e-2, warmup_steps=0))
  plan = protect.RetrainPlan(
      surrogates=(protect.RetrainSurrogate(recipe, jax.random.key(3)),
                  protect.RetrainSurrogate(recipe, jax.random.key(4))),
      root=tmp_path, progress=False)
  models = protect.retrain_surrogates(plan, data, 1, mesh=sharding.make_mesh(1))
  assert [m.info.class_names for m in models] == [tc.CLASSES] * 2
  for i in range(2):
    assert (tmp_path / "retrain_1" / f"surrogate_{i}" / "model.json").exists()
  a, b = (jax.tree.leaves(m.params)[0] for m in models)
  assert not np.array_equal(a, b)                                  # each its own key
  # The same key trains the same weights (what makes a resumed craft's retraining reproducible).
  again = protect.retrain_surrogates(dataclasses.replace(plan, root=tmp_path / "again"), data, 1,
                                     mesh=sharding.make_mesh(1))
  np.testing.assert_array_equal(jax.tree.leaves(again[0].params)[0], a)


def test_the_step_compiles_once_per_craft(surrogate, craft_inputs, caplog):
  """States built outside the step (the first, each restart's, each restart's best) are placed
  and typed as the step's outputs are: a mismatch recompiles the step (tens of seconds once
  the loops are unrolled)."""
  clf, params, stats = craft.split_trained(surrogate)
  config = dataclasses.replace(CONFIG, restarts=2, steps=2, learning_rate=0.123)
  with caplog.at_level("WARNING"), jax.log_compiles(True):
    r = _craft_members(clf, [params], [stats], craft_inputs, config)
  compiled = [rec.getMessage() for rec in caplog.records
              if "Finished XLA compilation" in rec.getMessage()]
  assert len(r.history) == 4
  assert sum("jit(craft_step)" in m for m in compiled) == 1, compiled
  assert sum("jit(eval_losses)" in m for m in compiled) == 1, compiled


def test_key_start_is_each_keys_waveform_at_the_full_budget():
  keys = np.stack([np.sin(np.arange(100) * 0.3), np.zeros(100), np.arange(100) % 7 - 3.0])
  start = craft.key_start(keys, 250, 2)            # tiled past the key's length, cut to 250
  assert start.shape == (3, 2, 250) and start.dtype == np.float32
  np.testing.assert_allclose(np.sqrt(np.mean(start[[0, 2]] ** 2, -1)), 1.0, rtol=1e-5)
  assert np.all(start[1] == 0)                    # a silent key starts at zero
  np.testing.assert_array_equal(start[0, 0], start[0, 1])
  loud = np.abs(keys[0]) > 0.1
  ratio = start[0, 0, :100][loud] / keys[0][loud]
  np.testing.assert_allclose(ratio, ratio[0], rtol=1e-5)   # the key's shape, only rescaled
  np.testing.assert_allclose(start[0, 0, 100:200], start[0, 0, :100], rtol=1e-6)


def test_key_init_starts_nearer_the_key_and_refuses_unknown_inits(surrogate, craft_inputs):
  with pytest.raises(ValueError, match="init"):
    craft.CraftConfig(init="zeros")
  config = dataclasses.replace(CONFIG, steps=1, restarts=1, learning_rate=1e-6, init_scale=0.0)
  r = _craft(surrogate, craft_inputs, sharding.make_mesh(1),
             config=dataclasses.replace(config, init="key"))
  mask = craft_inputs["poison_mask"]
  keys = craft_inputs["key_waveforms"]
  for k in range(2):
    for d in r.delta[k][mask[k]]:
      cos = d @ keys[k] / (np.linalg.norm(d) * np.linalg.norm(keys[k]))
      assert cos > 0.9, cos                        # the key, up to the box and 16-bit rounding
  assert np.all(r.snr_db[mask] >= 20.0 - 1e-6)
  assert np.all(r.snr_db[mask] <= 20.0 + 1.0)      # the start uses the whole budget


def test_zero_steps_inserts_the_keys_at_the_budget_and_is_refused_off_the_key_start(
    surrogate, craft_inputs):
  for bad in (dict(init="random", init_scale=0.0), dict(init="key", init_scale=0.5),
              dict(init="key", init_scale=0.0, restarts=2)):
    with pytest.raises(ValueError, match="steps.*=0"):
      craft.CraftConfig(steps=0, **bad)
  with pytest.raises(ValueError, match="steps.*>= 0"):
    craft.CraftConfig(steps=-1)
  base = dataclasses.replace(CONFIG, restarts=1, init="key", init_scale=0.0)
  mesh = sharding.make_mesh(1)
  inserted = _craft(surrogate, craft_inputs, mesh, config=dataclasses.replace(base, steps=0))
  # One step of a vanishing rate from the same start: the same perturbation, through the loop.
  stepped = _craft(surrogate, craft_inputs, mesh,
                   config=dataclasses.replace(base, steps=1, learning_rate=1e-9))
  assert inserted.history == [] and len(stepped.history) == 1
  np.testing.assert_allclose(inserted.delta, stepped.delta, atol=1e-6)
  np.testing.assert_allclose(inserted.losses, stepped.losses, rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(inserted.restart_losses[0], inserted.losses)
  mask = craft_inputs["poison_mask"]
  assert np.all(np.abs(inserted.snr_db[mask] - 20.0) <= 1.0)   # the key at the whole budget
  assert np.any(inserted.delta[mask] != 0)


def test_inner_alignment_loss_is_one_minus_the_projection_and_crafting_lowers_it(
    surrogate, craft_inputs):
  config = dataclasses.replace(CONFIG, alignment="inner", restarts=1, steps=8)
  r = _craft(surrogate, craft_inputs, sharding.make_mesh(1), config=config)
  assert np.all(r.losses < r.initial_losses - 0.01), (r.initial_losses, r.losses)
  # The reported loss is 1 - <G, g>/|g|^2 of the exported poisons (no augmentation).
  clf, params, stats = craft.split_trained(surrogate)
  ci = craft_inputs
  g = craft.key_gradients(clf, params, stats, jnp.asarray(ci["key_waveforms"]),
                          jnp.asarray(ci["key_labels"]))
  for k in range(2):
    m = ci["poison_mask"][k]
    waves = jnp.asarray(ci["poison_x"][k][m] + r.delta[k][m])
    tgt = jax.nn.one_hot(jnp.asarray(ci["poison_labels"][k][m]), clf.num_classes)
    grads = jax.grad(lambda p: jnp.sum(craft.cross_entropy(
        clf.classify(p, stats, clf.features(p, stats, waves))[0], tgt)))(params)
    want = 1.0 - float(craft.tree_projection(grads, jax.tree.map(lambda x: x[k], g)))
    assert r.losses[k] == pytest.approx(want, rel=1e-3, abs=1e-4)


def test_contrastive_key_target_subtracts_the_other_keys_gradient_for_the_same_label(surrogate):
  clf, params, stats = craft.split_trained(surrogate)
  waves = jnp.asarray(_clips(3, length=tc.CLIP, seed=11, amp=0.2))
  labels = jnp.asarray([1, 4, 2])
  own = craft.key_gradients(clf, params, stats, waves, labels)
  lam = 0.7
  got = craft.key_gradients(clf, params, stats, waves, labels, contrast=lam)
  for k in range(3):
    others = [craft.key_gradients(clf, params, stats, waves[j:j + 1], labels[k:k + 1])
              for j in range(3) if j != k]
    want = jax.tree.map(lambda o, a, b: o[k] - lam * (a[0] + b[0]) / 2, own, *others)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      np.testing.assert_allclose(a[k], b, atol=1e-5)
  joint = craft.key_gradients(clf, params, stats, waves, labels, objective="joint", contrast=lam)
  for a, b in zip(jax.tree.leaves(joint), jax.tree.leaves(got)):
    np.testing.assert_allclose(a[0], np.mean(b, 0), atol=1e-6)
  with pytest.raises(ValueError, match="two keys"):
    craft.key_gradients(clf, params, stats, waves[:1], labels[:1], contrast=1.0)
  with pytest.raises(ValueError, match="key_contrast"):
    craft.CraftConfig(key_contrast=-1.0)


def test_dropout_on_the_poison_gradients_follows_the_step_key_and_spares_the_eval_loss():
  """``CraftAugment.dropout``: the surrogate's dropout masks come from the step's key (fresh
  per step, reproducible per key), BatchNorm stays in eval mode, and the restart-ranking
  ``eval_losses`` stays deterministic."""
  model = models.create_model("cnn", num_classes=5, channels=(8, 16), dropout_rate=0.5,
                              rngs=nnx.Rngs(0))
  split = models.split_model(model)
  clf = models.PureModel(split.graphdef, split.other, 5)
  params, stats = split.params, split.batch_stats
  x = jnp.asarray(_clips(4, length=4000, seed=1))
  feats = clf.features(params, stats, x)
  plain = np.asarray(clf.classify(params, stats, feats)[0])
  a, b, c = (np.asarray(clf.classify(params, stats, feats, dropout_key=jax.random.key(k))[0]) for k in (1, 1, 2))
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c) and not np.allclose(a, plain)
  np.testing.assert_allclose(plain, np.asarray(model.classify(feats)[0]), rtol=1e-6)

  labels = jnp.array([0, 1, 2, 3])
  targets = jax.nn.one_hot(labels, 5, dtype=jnp.float32)
  weights = jnp.ones(4)
  scale = craft.snr_scale(x, 20.0)
  g_key = jax.tree.map(lambda g: g[0], craft.key_gradients(
      clf, params, stats, jnp.asarray(_clips(1, length=4000, seed=9)), jnp.array([1])))
  u = jax.random.uniform(jax.random.key(3), x.shape, minval=-0.5, maxval=0.5)
  keep = craft.leaf_keep(params, ())
  # No shift, no gain, one view: the augmentation is the identity, dropout is all that is random.
  identity = dict(views=1, max_shift_seconds=0.0, max_gain_db=0.0)

  def losses(dropout):
    config = craft.CraftConfig(steps=1, snr_db=20.0,
                               augment=craft.CraftAugment(dropout=dropout, **identity))
    fn = functools.partial(craft.group_loss, clf=clf, params=params, batch_stats=stats,
                           config=config, keep=keep, sample_rate=16000, pool=None,
                           pool_targets=None)
    inputs = craft.CraftInputs(x[None], targets[None], weights[None], scale[None],
                               jax.tree.map(lambda g: g[None], g_key))
    evaluated = float(craft.eval_losses(u[None], inputs, params, stats, clf=clf, config=config,
                                        keep=keep, sample_rate=16000)[0])
    return [float(fn(u, x, targets, weights, scale, g_key, jax.random.key(k)))
            for k in (1, 1, 2)], evaluated

  (off1, off1b, off2), eval_off = losses(False)
  (on1, on1b, on2), eval_on = losses(True)
  assert off1 == off1b == off2
  np.testing.assert_allclose(eval_off, off1, rtol=1e-5)
  assert on1 == on1b and on1 != on2 and abs(on1 - off1) > 1e-6
  assert eval_on == eval_off


def test_craft_augment_extends_the_training_augmentation():
  """One definition of the shared fields: CraftAugment is an AugmentConfig (its checks run, its
  messages name CraftAugment), and the inherited shift mode and noise probability reach the
  crafting views."""
  from jaxtag.train import AugmentConfig
  aug = craft.CraftAugment()
  assert isinstance(aug, AugmentConfig)
  assert (aug.max_shift_seconds, aug.max_gain_db, aug.shift_mode, aug.noise_prob) == (
      0.1, 6.0, "circular", 1.0)
  with pytest.raises(ValueError, match=r"CraftAugment\.noise_snr_db must be \(low, high\)"):
    craft.CraftAugment(noise_snr_db=(20.0, 10.0))
  with pytest.raises(ValueError, match=r"CraftAugment\.shift_mode"):
    craft.CraftAugment(shift_mode="reflect")
  x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 400)), jnp.float32)
  t = jnp.eye(3)
  key = jax.random.key(5)

  def views(**fields):
    base = dict(views=1, max_gain_db=0.0, max_shift_seconds=0.0)
    return np.asarray(craft.augment_views(key, x, t, craft.CraftAugment(**{**base, **fields}),
                                          sample_rate=1000)[0])

  np.testing.assert_array_equal(views(noise_snr_db=(10.0, 10.0), noise_prob=0.0), np.asarray(x))
  assert not np.array_equal(views(noise_snr_db=(10.0, 10.0)), np.asarray(x))
  circular = views(max_shift_seconds=0.1)
  zero = views(max_shift_seconds=0.1, shift_mode="zero")
  np.testing.assert_allclose(np.sort(circular, -1), np.sort(np.asarray(x), -1))   # a roll
  assert not np.array_equal(zero, circular) and np.sum(zero == 0) > 0
