"""Tests for jaxtag.models: shapes, determinism, gradients, pure apply_fn.

Every model runs in a tiny configuration on 0.3 s clips so that the file
stays fast on two CPU cores; the full-size AST is only shape-evaluated.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtag import models
from jaxtag.models import layers

NUM_CLASSES = 5
NUM_SAMPLES = 4800  # 0.3 s at 16 kHz.
BATCH = 3

TINY = {
    "ast_tiny": dict(depth=1, width=32, num_heads=2, mlp_dim=64,
                     max_length=32),
    "m5": dict(n_channel=8),
    "cnn": dict(channels=(8, 16)),
    "lstm": dict(hidden_size=16),
    "transformer": dict(width=32, num_heads=4, mlp_dim=64),
}
# One AST is enough for the sweeps: the sizes differ only in width/depth
# (their parameter counts are checked below without allocating them).
SWEEP = ["ast_tiny", "m5", "cnn", "lstm", "transformer"]
BN_MODELS = {"m5", "cnn", "lstm", "transformer"}


def _waveforms(batch=BATCH, seed=0):
  rng = np.random.default_rng(seed)
  t = np.arange(NUM_SAMPLES) / 16000.0
  tone = np.sin(2 * np.pi * rng.uniform(200, 2000, (batch, 1)) * t)
  return jnp.asarray(0.3 * tone + 0.05 * rng.normal(size=(batch, NUM_SAMPLES)),
                     jnp.float32)


@functools.lru_cache(maxsize=None)
def _built(name):
  """(model, graphdef, params, batch_stats, other, jitted eval apply)."""
  model = models.create_model(name, num_classes=NUM_CLASSES,
                              rngs=nnx.Rngs(0), **TINY[name])
  split = models.split_model(model)
  apply_fn = models.PureModel(split.graphdef, split.other, NUM_CLASSES).apply
  return model, split, apply_fn


def _loss_fn(apply_fn, batch_stats):
  def loss(params, waveform, label):
    logits, _, _ = apply_fn(params, batch_stats, waveform[None])
    return -jax.nn.log_softmax(logits)[0, label]
  return loss


@pytest.mark.parametrize("name", SWEEP)
def test_output_shape_finite_and_deterministic(name):
  _, split, apply_fn = _built(name)
  x = _waveforms()
  fn = jax.jit(apply_fn)
  logits, inter, bs = fn(split.params, split.batch_stats, x)
  assert logits.shape == (BATCH, NUM_CLASSES)
  assert logits.dtype == jnp.float32
  assert np.all(np.isfinite(logits))
  assert inter["embedding"].shape[0] == BATCH
  assert inter["embedding"].ndim == 2
  # Samples must not be mixed up: distinct inputs give distinct outputs.
  assert not np.allclose(logits[0], logits[1])
  again, _, _ = fn(split.params, split.batch_stats, x)
  np.testing.assert_array_equal(logits, again)
  assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)),
                                   bs, split.batch_stats))


@pytest.mark.parametrize("name", SWEEP)
def test_apply_fn_matches_module_call(name):
  model, split, apply_fn = _built(name)
  x = _waveforms()
  expected, expected_inter = nnx.jit(lambda m, w: m(w))(model, x)
  got, got_inter, _ = jax.jit(apply_fn)(split.params, split.batch_stats, x)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got_inter["embedding"],
                             expected_inter["embedding"], rtol=1e-5, atol=1e-6)
  # __call__ is classify(features(.)).
  split_call = nnx.jit(lambda m, w: m.classify(m.features(w))[0])(model, x)
  np.testing.assert_allclose(split_call, expected, rtol=1e-6, atol=1e-6)
  # The pure form's features and classify compose to the same logits, in float32, and eval
  # mode returns the batch statistics it was given.
  pure = models.PureModel(split.graphdef, split.other, NUM_CLASSES)
  logits, stats = jax.jit(lambda p, b, w: pure.classify(p, b, pure.features(p, b, w)))(
      split.params, split.batch_stats, x)
  assert logits.dtype == jnp.float32
  np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)
  assert jax.tree.structure(stats) == jax.tree.structure(split.batch_stats)


@pytest.mark.parametrize("name", SWEEP)
def test_per_sample_gradients_match_one_at_a_time(name):
  _, split, apply_fn = _built(name)
  x = _waveforms()
  labels = jnp.arange(BATCH) % NUM_CLASSES
  grad = jax.grad(_loss_fn(apply_fn, split.batch_stats))
  batched = jax.jit(jax.vmap(grad, in_axes=(None, 0, 0)))(split.params, x,
                                                          labels)
  single = jax.jit(grad)
  for i in range(BATCH):
    one = single(split.params, x[i], labels[i])
    # Tolerance relative to the largest gradient entry of the sample: vmap
    # reorders float32 sums, and some gradients are exactly zero in exact
    # arithmetic (e.g. the attention key bias, by softmax shift invariance).
    scale = max(float(jnp.max(jnp.abs(a))) for a in jax.tree.leaves(one))
    jax.tree.map(
        lambda b, s: np.testing.assert_allclose(b[i], s, rtol=1e-4,
                                                atol=1e-5 * scale),
        batched, one)
  norms = [float(jnp.linalg.norm(g[0])) for g in jax.tree.leaves(batched)]
  assert max(norms) > 0


@pytest.mark.parametrize("name", SWEEP)
def test_waveform_gradient_finite_and_nonzero(name):
  _, split, apply_fn = _built(name)
  x = _waveforms()
  def loss(w):
    logits, _, _ = apply_fn(split.params, split.batch_stats, w)
    return jnp.sum(jax.nn.log_softmax(logits)[:, 0])
  g = jax.jit(jax.grad(loss))(x)
  assert g.shape == x.shape
  assert np.all(np.isfinite(g))
  # Every clip's gradient must be non-zero (the front end passes gradients).
  assert np.all(np.linalg.norm(np.asarray(g), axis=-1) > 0)


# AST (attention, LayerNorm, conv, Kaldi fbank) and the LSTM (nnx.RNN scan,
# BatchNorm, MFCC) cover every op kind; the others reuse them.
@pytest.mark.parametrize("name", ["ast_tiny", "lstm"])
def test_second_order_gradients(name):
  """Crafting's objective 1 - cos(grad_params loss(x + delta), g_fixed),
  differentiated w.r.t. the waveform perturbation and w.r.t. the params."""
  _, split, apply_fn = _built(name)
  x = _waveforms()
  labels = jnp.arange(BATCH) % NUM_CLASSES
  def batch_loss(params, w):
    logits, _, _ = apply_fn(params, split.batch_stats, w)
    return -jnp.mean(jnp.take_along_axis(
        jax.nn.log_softmax(logits), labels[:, None], axis=1))
  flat = lambda tree: jnp.concatenate([a.ravel() for a in
                                       jax.tree.leaves(tree)])
  target = flat(jax.grad(batch_loss)(split.params, _waveforms(seed=1)))
  def craft_loss(params, delta):
    g = flat(jax.grad(batch_loss)(params, x + delta))
    return 1 - jnp.dot(g, target) / (jnp.linalg.norm(g)
                                     * jnp.linalg.norm(target))
  value, (g_params, g_delta) = jax.jit(jax.value_and_grad(
      craft_loss, argnums=(0, 1)))(split.params, jnp.zeros_like(x))
  assert 0 < float(value) < 2
  assert np.all(np.isfinite(g_delta))
  assert np.all(np.linalg.norm(np.asarray(g_delta), axis=-1) > 0)
  leaves = jax.tree.leaves(g_params)
  assert all(np.all(np.isfinite(a)) for a in leaves)
  assert sum(float(jnp.sum(a**2)) for a in leaves) > 0


@pytest.mark.parametrize("name", sorted(BN_MODELS))
def test_train_mode_updates_batch_stats_like_the_module(name):
  model, split, apply_fn = _built(name)
  x = _waveforms()
  key = jax.random.key(1)
  logits, _, new_bs = jax.jit(functools.partial(apply_fn, train=True))(
      split.params, split.batch_stats, x, key=key)
  assert np.all(np.isfinite(logits))
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), new_bs,
                         split.batch_stats)
  assert all(jax.tree.leaves(changed))
  # The module in train mode (same dropout key) ends with the same stats.
  twin = models.merge_model(*split)
  nnx.jit(lambda m, w: m(w, train=True, rngs=nnx.Rngs(dropout=key)))(twin, x)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5,
                                                       atol=1e-6),
               nnx.state(twin, nnx.BatchStat), new_bs)


@pytest.mark.parametrize("name", ["cnn", "transformer"])
def test_dropout_follows_the_key(name):
  _, split, apply_fn = _built(name)
  x = _waveforms()
  fn = jax.jit(functools.partial(apply_fn, train=True))
  a, _, _ = fn(split.params, split.batch_stats, x, key=jax.random.key(1))
  b, _, _ = fn(split.params, split.batch_stats, x, key=jax.random.key(1))
  c, _, _ = fn(split.params, split.batch_stats, x, key=jax.random.key(2))
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)
  with pytest.raises(ValueError, match="needs a key"):
    apply_fn(split.params, split.batch_stats, x, train=True)


def test_jit_traces_once_per_shape():
  _, split, apply_fn = _built("m5")
  traces = []
  def counted(params, batch_stats, w):
    traces.append(w.shape)
    return apply_fn(params, batch_stats, w)[0]
  fn = jax.jit(counted)
  for seed in range(3):
    fn(split.params, split.batch_stats, _waveforms(seed=seed))
  assert len(traces) == 1
  fn(split.params, split.batch_stats, _waveforms(batch=2))
  fn(split.params, split.batch_stats, _waveforms(batch=2, seed=5))
  assert len(traces) == 2


def _count(abstract_model):
  return sum(int(np.prod(a.shape)) for a in
             jax.tree.leaves(nnx.state(abstract_model, nnx.Param)))


def _ast_formula(width, depth, mlp, classes, tokens=146, patch=16):
  embed = patch * patch * width + width + 2 * width + tokens * width
  block = (4 * (width * width + width) + 2 * width * mlp + mlp + width
           + 4 * width)
  return embed + depth * block + 4 * width + width * classes + classes


def test_ast_base_parameter_count():
  abstract = nnx.eval_shape(lambda: models.create_model(
      "ast_base", num_classes=35, rngs=nnx.Rngs(0)))
  count = _count(abstract)
  # Equal to HF ASTForAudioClassification(ASTConfig(max_length=128,
  # num_labels=35)), counted with transformers 5.23.
  assert count == 85_395_491
  assert count == _ast_formula(768, 12, 3072, 35)
  # The paper's "about 87M" is the AudioSet model: 1024 frames (12 x 101
  # patches) and 527 classes.
  assert 86.5e6 < _ast_formula(768, 12, 3072, 527, tokens=1214) < 87e6


def test_ast_patch_grid_and_layout():
  model, _, _ = _built("ast_tiny")
  assert model.grid == (12, 2)
  assert model.pos_embed[...].shape == (1, 12 * 2 + 2, 32)
  # HF layout: the conv sees (mel, frames). A feature image that varies only
  # along frames must give patch embeddings that vary only along time.
  frames = jnp.broadcast_to(jnp.linspace(-1, 1, 32)[:, None], (1, 32, 128))
  image = jnp.swapaxes(frames, -1, -2)[..., None]
  patches = model.patch_embed(image)[0]  # (freq, time, width)
  np.testing.assert_allclose(patches[0], patches[5], rtol=1e-5, atol=1e-6)
  assert not np.allclose(patches[:, 0], patches[:, 1])


def test_ast_bfloat16_compute_keeps_float32_params():
  x = _waveforms()
  f32, split, apply_fn = _built("ast_tiny")
  bf16 = models.create_model("ast_tiny", num_classes=NUM_CLASSES,
                             dtype=jnp.bfloat16, rngs=nnx.Rngs(0),
                             **TINY["ast_tiny"])
  params = nnx.state(bf16, nnx.Param)
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(params))
  jax.tree.map(np.testing.assert_array_equal, params, split.params)
  a, _, _ = jax.jit(apply_fn)(split.params, split.batch_stats, x)
  b, inter = nnx.jit(lambda m, w: m(w))(bf16, x)
  assert b.dtype == jnp.float32 and inter["embedding"].dtype == jnp.bfloat16
  np.testing.assert_allclose(b, a, atol=0.05 * float(jnp.max(jnp.abs(a))))


def test_registry_errors_are_clear():
  with pytest.raises(ValueError, match="ast_base, ast_small, ast_tiny, cnn"):
    models.create_model("resnet", num_classes=3, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"no option\(s\) \['n_layers'\].*depth"):
    models.create_model("ast_tiny", num_classes=3, rngs=nnx.Rngs(0),
                        n_layers=2)
  with pytest.raises(ValueError, match="num_classes"):
    models.create_model("m5", num_classes=0, rngs=nnx.Rngs(0))
  assert set(models.available_models()) == {
      "ast_tiny", "ast_small", "ast_base", "m5", "cnn", "lstm", "transformer"}


def test_mfcc_matches_librosa():
  librosa = pytest.importorskip("librosa", reason="librosa is the reference")
  x = np.asarray(_waveforms(batch=2))
  kw = dict(n_mfcc=20, n_mels=40, n_fft=512, win_length=400, hop_length=160)
  ours = layers.mfcc(jnp.asarray(x), sample_rate=16000, pad_mode="constant",
                     **kw)
  ref = np.stack([librosa.feature.mfcc(y=x[i], sr=16000, **kw).T
                  for i in range(2)])
  assert ours.shape == ref.shape
  np.testing.assert_allclose(ours, ref, atol=2e-3 * np.abs(ref).max())


def test_dct_matrix_is_scipy_ortho_dct():
  scipy_fft = pytest.importorskip("scipy.fft")
  x = np.random.default_rng(0).normal(size=(4, 24))
  np.testing.assert_allclose(x @ layers.dct_matrix(24, 10),
                             scipy_fft.dct(x, type=2, norm="ortho")[:, :10],
                             rtol=1e-5, atol=1e-5)


def test_max_pool_floor_mode():
  x = jnp.arange(2 * 9 * 1, dtype=jnp.float32).reshape(2, 9, 1)
  out = layers.max_pool(x, (4,))
  np.testing.assert_array_equal(out[0, :, 0], [3, 7])
  with pytest.raises(ValueError, match="smaller than the pooling window"):
    layers.max_pool(x[:, :3], (4,))


@pytest.mark.parametrize("name", SWEEP)
def test_dropout_alone_keeps_normalisation_in_eval_mode(name):
  """``classify(train=False, dropout=True)``: the eval model with dropout on (what crafting
  uses to expect the suspect's dropout): masks from the key, batch statistics untouched."""
  rates = {"ast_tiny": dict(dropout_rate=0.3), "lstm": dict(dropout_rate=0.3)}
  model = models.create_model(name, num_classes=NUM_CLASSES, rngs=nnx.Rngs(0),
                              **TINY[name], **rates.get(name, {}))
  feats = model.features(_waveforms())
  stats_before = jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat))
  plain, plain_out = model.classify(feats)
  a, a_out = model.classify(feats, dropout=True, rngs=nnx.Rngs(dropout=jax.random.key(1)))
  b, _ = model.classify(feats, dropout=True, rngs=nnx.Rngs(dropout=jax.random.key(1)))
  c, _ = model.classify(feats, dropout=True, rngs=nnx.Rngs(dropout=jax.random.key(2)))
  jax.tree.map(np.testing.assert_array_equal, stats_before,
               jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat)))
  np.testing.assert_array_equal(a, b)
  if name == "ast_tiny":   # no batch statistics: train without dropout is the eval model
    np.testing.assert_allclose(model.classify(feats, train=True, dropout=False)[0], plain,
                               rtol=1e-6)
  if name == "m5":   # no dropout layer: nothing changes
    np.testing.assert_allclose(a, plain, rtol=1e-6)
    return
  assert not np.allclose(a, plain) and not np.allclose(a, c)
  if name in ("cnn", "lstm"):   # dropout sits after the embedding: normalisation was eval's
    np.testing.assert_allclose(a_out["embedding"], plain_out["embedding"], rtol=1e-6)
