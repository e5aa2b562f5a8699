"""jaxtag.train: losses, schedules, sharded steps (8 devices == 1), compile-once, AOT, resume, accuracy."""

import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxtag import sharding, train
from jaxtag.data import pipeline
from jaxtag.data.dataset import AudioDataset
from jaxtag.train import state as state_lib
from jaxtag.train import steps

SR = 8000
CLASSES = ("a", "b", "c", "d")
# A small CNN with BatchNorm and dropout: exercises batch statistics and dropout keys.
CNN = dict(channels=[8, 16], n_mels=32, dropout_rate=0.1)
AUG = train.AugmentConfig(max_shift_seconds=0.05, max_gain_db=6.0, noise_snr_db=(10.0, 30.0),
                          noise_prob=0.5, mixup_alpha=0.3, freq_mask_width=4, time_mask_width=5)


def tones(n: int, seed: int, length: int = 2000, split: str = "train") -> AudioDataset:
  """An easy task: the class is the *shape* of a 0.25 s sound (steady tone, click train, noise
  burst, rising chirp) at a random pitch, rate, onset and level, in light noise.

  Shapes rather than pitches, because the CNN pools over frequency as well as time.
  """
  r = np.random.default_rng(seed)
  labels = np.arange(n) % len(CLASSES)
  t = np.arange(length) / SR
  waves = np.zeros((n, length))
  for i, label in enumerate(labels):
    f0 = r.uniform(300, 2500)
    if label == 0:
      w = np.sin(2 * np.pi * f0 * t + r.uniform(0, 6))
    elif label == 1:
      w = np.zeros(length)
      period = int(SR / r.uniform(8, 12))
      w[r.integers(period // 2)::period] = 8.0
    elif label == 2:
      w = r.standard_normal(length) * 0.5
    else:
      w = np.sin(2 * np.pi * (f0 / 4 * t + r.uniform(8000, 16000) * t ** 2) + r.uniform(0, 6))
    waves[i] = r.uniform(0.05, 0.5) * w
  waves += 0.01 * r.standard_normal((n, length))
  return AudioDataset(waves.astype(np.float32), labels, CLASSES, SR, split=split)


def _config(**overrides):
  fields = dict(model="cnn", model_overrides=CNN, num_epochs=2, batch_size=16, eval_batch_size=24,
                optim=train.OptimConfig(learning_rate=3e-3, warmup_steps=2), augment=AUG,
                label_smoothing=0.1, log_every_steps=2, checkpoint_every_steps=2)
  fields.update(overrides)
  return train.TrainConfig(**fields)


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


# ----------------------------------------------------------------------------- losses, optimiser


def test_cross_entropy_matches_optax_with_label_smoothing():
  logits = jax.random.normal(jax.random.key(0), (5, 7)) * 3
  labels = jnp.array([0, 3, 6, 2, 2])
  onehot = jax.nn.one_hot(labels, 7)
  np.testing.assert_allclose(steps.cross_entropy(logits, onehot),
                             optax.softmax_cross_entropy_with_integer_labels(logits, labels),
                             rtol=1e-5)
  np.testing.assert_allclose(steps.cross_entropy(logits, onehot, label_smoothing=0.2),
                             optax.softmax_cross_entropy(logits, optax.smooth_labels(onehot, 0.2)),
                             rtol=1e-5)


def test_schedule_warms_up_linearly_then_decays_by_cosine():
  config = train.OptimConfig(learning_rate=1e-2, warmup_steps=10, end_lr_fraction=0.1)
  sched = train.make_schedule(config, total_steps=110)
  np.testing.assert_allclose([sched(0), sched(5), sched(10)], [0.0, 5e-3, 1e-2], rtol=1e-6)
  np.testing.assert_allclose(sched(60), 1e-3 + 0.5 * (1e-2 - 1e-3), rtol=1e-5)  # Cosine midpoint.
  np.testing.assert_allclose(sched(110), 1e-3, rtol=1e-6)
  assert train.OptimConfig(warmup_steps=-10).num_warmup_steps(200) == 20


@pytest.mark.parametrize("name", ["adamw", "lamb"])
def test_weight_decay_spares_biases_and_clipping_bounds_the_update(name):
  params = {"kernel": jnp.ones((3, 3)), "bias": jnp.ones((3,))}
  tx, _ = train.make_optimizer(train.OptimConfig(name=name, learning_rate=0.1, weight_decay=0.5,
                                                 warmup_steps=0), total_steps=10)
  zero = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero, tx.init(params), params)
  assert float(jnp.abs(updates["bias"]).max()) == 0.0
  assert float(updates["kernel"].max()) < 0.0  # Decayed towards 0.
  clip = optax.clip_by_global_norm(1.0)
  big = jax.tree.map(lambda p: 1e6 * jnp.ones_like(p), params)
  clipped, _ = clip.update(big, clip.init(params))
  np.testing.assert_allclose(steps._global_norm(clipped), 1.0, rtol=1e-5)
  with pytest.raises(ValueError, match="OptimConfig.name"):
    train.OptimConfig(name="sgd")


# ----------------------------------------------------------------------------- sharded steps


def _run_steps(num_devices: int, num_steps: int, dataset: AudioDataset, *, trace_log=None):
  """``num_steps`` train steps on a mesh of ``num_devices``; returns (losses, state)."""
  mesh = sharding.make_mesh(num_devices)
  spec = state_lib.ModelSpec("cnn", len(CLASSES), CNN)
  tx, sched = train.make_optimizer(train.OptimConfig(learning_rate=3e-3, warmup_steps=1),
                                   num_steps)
  abstract, _ = train.abstract_train_state(spec, tx, mesh)
  state, parts = train.create_train_state(spec, tx, jax.random.key(0), mesh)
  sig = train.step_signature(mesh, abstract, batch_size=16, eval_batch_size=16,
                             num_samples=dataset.num_samples)
  step = functools.partial(steps.train_step, parts=parts, tx=tx, schedule=sched, augment=AUG,
                           sample_rate=SR, label_smoothing=0.1)
  if trace_log is not None:
    inner = step

    def step(*args):
      trace_log.append(1)
      return inner(*args)

  fn = train.jit_train_step(step, sig)
  key = jax.device_put(jax.random.key(1), sharding.replicated(mesh))
  losses = []
  batches = pipeline.batches(dataset, batch_size=16, seed=0, mesh=mesh)
  for _ in range(num_steps):
    state, metrics = fn(state, next(batches), key)
    losses.append(float(metrics["train/loss"]))
  return np.array(losses), state, (fn, sig, parts, mesh)


def test_eight_devices_match_one_device():
  """Same data and keys on 8 fake CPU devices and on 1: the same trajectory.

  Tolerance: float32 reductions (gradient means, BatchNorm statistics) are summed in a different
  order across 8 shards; after 4 Adam steps losses agree to 1e-4 relative and parameters to 1e-4
  absolute (the step size is 3e-3, so a real difference in data, keys or statistics shows as
  at least ~1e-3).
  """
  data = tones(64, 0)
  loss1, state1, _ = _run_steps(1, 4, data)
  loss8, state8, (_, _, _, mesh) = _run_steps(8, 4, data)
  assert jax.tree.leaves(state8.params)[0].sharding.mesh.size == 8 == mesh.size
  np.testing.assert_allclose(loss8, loss1, rtol=1e-4)
  for a, b in zip(_leaves(state8.params), _leaves(state1.params)):
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)
  for a, b in zip(_leaves(state8.batch_stats), _leaves(state1.batch_stats)):
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)
  assert not np.allclose(loss1[0], loss1[-1])  # It trained.


def test_train_step_compiles_once_and_aot_matches_jit():
  traces = []
  data = tones(64, 0)
  _, state, (fn, sig, parts, mesh) = _run_steps(8, 3, data, trace_log=traces)
  assert len(traces) == 1, f"train step traced {len(traces)} times in 3 steps"
  # Ahead-of-time compile from the shared signature; it must run on real arguments and agree
  # with the jitted step.
  compiled = fn.lower(sig.state, sig.train_batch, sig.key).compile()
  batch = next(pipeline.batches(data, batch_size=16, seed=5, mesh=mesh))
  key = jax.device_put(jax.random.key(3), sharding.replicated(mesh))
  copy = jax.tree.map(jnp.copy, state)
  s_aot, m_aot = compiled(state, batch, key)
  s_jit, m_jit = fn(copy, batch, key)
  np.testing.assert_array_equal(float(m_aot["train/loss"]), float(m_jit["train/loss"]))
  for a, b in zip(_leaves(s_aot.params), _leaves(s_jit.params)):
    np.testing.assert_array_equal(a, b)
  assert set(m_aot) == {"train/loss", "train/accuracy", "train/lr", "train/grad_norm"}
  # The step's key is fold_in(stream, state.step): the same state and batch give the same loss,
  # the same parameters one step later do not (other augmentation and dropout draws).
  again = jax.tree.map(jnp.copy, s_jit)
  later = jax.tree.map(jnp.copy, s_jit).replace(step=s_jit.step + 1)
  _, m1 = fn(s_jit, batch, key)
  _, m2 = fn(again, batch, key)
  _, m3 = fn(later, batch, key)
  assert float(m1["train/loss"]) == float(m2["train/loss"]) != float(m3["train/loss"])
  assert len(traces) == 1
  # The eval step from the same signature also compiles ahead of time.
  eval_fn = train.jit_eval_step(functools.partial(steps.eval_step, parts=parts), sig)
  out = eval_fn.lower(sig.state, sig.eval_batch).compile()(s_aot, {
      "audio": batch["audio"], "label": batch["label"],
      "mask": jax.device_put(np.ones(16, np.float32), sharding.data_sharding(mesh))})
  assert float(out["eval/count"]) == 16.0


# ----------------------------------------------------------------------------- the loop


def _read_metrics(workdir):
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  for r in records:
    r.pop("train/steps_per_s", None)  # Wall-clock rate: differs between runs.
  return records


def test_kill_and_resume_equals_uninterrupted_run(tmp_path):
  data, val = tones(64, 0), tones(24, 1, split="validation")
  config = _config(num_epochs=2)  # 4 steps per epoch, checkpoints every 2 steps.
  kw = dict(train_data=data, validation_data=val, test_data=val, key=jax.random.key(7),
            mesh=sharding.make_mesh(2), progress=False)
  full = train.train(config, workdir=tmp_path / "full", **kw)
  assert full.steps_run == 8 and full.start_step == 0
  # Preempted after step 5: the checkpoint of step 4 survives, step 5 is redone on resume.
  part = train.train(config, workdir=tmp_path / "resumed", stop_at_step=5, **kw)
  assert part.info is None and int(part.state.step) == 5
  assert not (tmp_path / "resumed" / "model.json").exists()
  resumed = train.train(config, workdir=tmp_path / "resumed", **kw)
  assert resumed.start_step == 4 and resumed.steps_run == 4
  for a, b in zip(_leaves(resumed.state), _leaves(full.state)):
    np.testing.assert_array_equal(a, b)
  assert resumed.metrics == full.metrics
  assert _read_metrics(tmp_path / "resumed") == _read_metrics(tmp_path / "full")
  # A finished run reruns to the same answer without training again.
  again = train.train(config, workdir=tmp_path / "full", **kw)
  assert again.steps_run == 0 and again.metrics == full.metrics
  assert _read_metrics(tmp_path / "full") == _read_metrics(tmp_path / "resumed")


def test_tiny_model_learns_an_easy_task_and_restores_for_inference(tmp_path):
  data, val, test = tones(192, 0), tones(48, 1, split="validation"), tones(96, 2, split="test")
  config = _config(num_epochs=6, batch_size=16, eval_batch_size=48, checkpoint_every_steps=0,
                   log_every_steps=12, optim=train.OptimConfig(learning_rate=1e-2, warmup_steps=6),
                   augment=train.AugmentConfig(max_gain_db=6.0))
  result = train.train(config, train_data=data, validation_data=val, test_data=test,
                       key=jax.random.key(0), workdir=tmp_path, mesh=sharding.make_mesh(2),
                       progress=False)
  # Chance is 0.25; this recipe reaches 0.99 on 200 test clips (seed 2).
  assert result.metrics["test/accuracy"] >= 0.95, result.metrics
  records = _read_metrics(tmp_path)
  evals = [r for r in records if r["kind"] == "eval"]
  assert [r["epoch"] for r in evals] == list(range(1, 7))
  train_records = [r for r in records if r["kind"] == "train"]
  assert train_records[0]["train/loss"] > train_records[-1]["train/loss"] + 0.3
  trained = train.restore_for_inference(tmp_path)
  assert trained.info.class_names == CLASSES and trained.info.sample_rate == SR
  assert trained.info.clip_samples == 2000 and trained.info.model == "cnn"
  logits, _ = jax.jit(lambda x: trained.model(x))(test.waveforms)
  np.testing.assert_allclose(np.mean(np.argmax(logits, -1) == test.labels),
                             result.metrics["test/accuracy"], atol=1e-9)
  apply_logits, _, _ = trained.pure.apply(trained.params, trained.batch_stats, test.waveforms)
  np.testing.assert_allclose(apply_logits, logits, rtol=1e-5, atol=1e-5)


def test_bad_batch_size_and_mismatched_splits_raise(tmp_path):
  data = tones(64, 0)
  with pytest.raises(ValueError, match="batch_size=12 must be a multiple of the 8 devices"):
    train.train(_config(batch_size=12), train_data=data, key=jax.random.key(0),
                workdir=tmp_path, mesh=sharding.make_mesh(8), progress=False)
  other = AudioDataset(data.waveforms[:8], data.labels[:8], ("w", "x", "y", "z"), SR)
  with pytest.raises(ValueError, match="differs from"):
    train.train(_config(), train_data=data, validation_data=other, key=jax.random.key(0),
                workdir=tmp_path, mesh=sharding.make_mesh(1), progress=False)
  with pytest.raises(ValueError, match="not a registered model"):
    state_lib.ModelSpec("resnet", 4)
  with pytest.raises(FileNotFoundError, match="no finished training run"):
    train.restore_for_inference(tmp_path / "nothing")


def test_warm_start_takes_the_backbone_and_reinitialises_a_head_of_other_shape(tiny_workdir):
  """Fine-tuning a shared backbone: every matching leaf comes from `init_from`, the head of a
  model with other classes stays fresh, and the optimiser state starts anew."""
  from jaxtag.train import loop
  pretrained = train.restore_for_inference(tiny_workdir)
  info = pretrained.info
  spec = state_lib.ModelSpec(info.model, 3, info.model_overrides)   # 3 classes, not 6
  tx = optax.adam(1e-3)
  mesh = sharding.make_mesh(1)
  fresh, _ = state_lib.create_train_state(spec, tx, jax.random.key(5), mesh)
  warm = loop.warm_start(fresh, tx, tiny_workdir, info.model)
  got = jax.tree_util.tree_leaves_with_path(warm.params)
  old = dict(jax.tree_util.tree_leaves_with_path(pretrained.params))
  new = dict(jax.tree_util.tree_leaves_with_path(fresh.params))
  heads = 0
  for path, leaf in got:
    if old[path].shape == leaf.shape:
      np.testing.assert_array_equal(np.asarray(leaf), np.asarray(old[path]))
    else:
      heads += 1
      np.testing.assert_array_equal(np.asarray(leaf), np.asarray(new[path]))
  assert heads == 2                                                   # head kernel and bias
  assert all(float(jnp.abs(x).max()) == 0 for x in jax.tree.leaves(warm.opt_state)
             if jnp.issubdtype(x.dtype, jnp.floating))
  with pytest.raises(ValueError, match="holds a 'cnn' model"):
    loop.warm_start(fresh, tx, tiny_workdir, "m5")


def test_distillation_teaches_the_teachers_labels_not_the_datas(tmp_path):
  """Offline distillation: with distill_weight=1 the student learns what the teacher predicts,
  even when every label in its train split is wrong (shifted by one class)."""
  from jaxtag.data.dataset import DatasetError
  from jaxtag.train import loop
  data, test = tones(192, 0), tones(96, 2, split="test")
  config = _config(num_epochs=6, batch_size=16, eval_batch_size=48, checkpoint_every_steps=0,
                   log_every_steps=12, optim=train.OptimConfig(learning_rate=1e-2, warmup_steps=6),
                   augment=train.AugmentConfig(max_gain_db=6.0))
  kw = dict(test_data=test, key=jax.random.key(0), mesh=sharding.make_mesh(2), progress=False)
  teacher = train.train(config, train_data=data, workdir=tmp_path / "teacher", **kw)
  assert teacher.metrics["test/accuracy"] >= 0.95
  soft = loop.teacher_targets(tmp_path / "teacher", data, batch_size=50)
  np.testing.assert_allclose(soft.sum(1), 1.0, rtol=1e-5)
  trained = train.restore_for_inference(tmp_path / "teacher")
  logits, _, _ = trained.pure.apply(trained.params, trained.batch_stats, data.waveforms)
  np.testing.assert_allclose(soft, jax.nn.softmax(logits), rtol=1e-4, atol=1e-6)
  warm = loop.teacher_targets(tmp_path / "teacher", data, temperature=4.0)
  entropy = lambda p: -np.sum(p * np.log(p + 1e-12), axis=1).mean()
  assert entropy(warm) > entropy(soft) + 0.1                          # T > 1 softens
  wrong = AudioDataset(data.waveforms, (data.labels + 1) % len(CLASSES), CLASSES, SR)
  student = train.train(dataclasses.replace(config, distill_from=str(tmp_path / "teacher"),
                                            distill_weight=1.0),
                        train_data=wrong, workdir=tmp_path / "student", **kw)
  assert student.metrics["test/accuracy"] >= 0.9, student.metrics    # the teacher's labels
  control = train.train(config, train_data=wrong, workdir=tmp_path / "control", **kw)
  assert control.metrics["test/accuracy"] <= 0.1, control.metrics    # the shifted labels
  other = AudioDataset(data.waveforms, data.labels, ("w", "x", "y", "z"), SR)
  with pytest.raises(DatasetError, match="trained on classes"):
    loop.teacher_targets(tmp_path / "teacher", other)
  with pytest.raises(ValueError, match="distill_weight"):
    _config(distill_weight=0.0)
