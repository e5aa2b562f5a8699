"""Speaker models, the GE2E loss and the EER against direct reference computations."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtag.speaker import ge2e, metrics
from jaxtag.speaker import model as model_lib

TINY = {
    "dvector": model_lib.SpeakerModelConfig(arch="dvector", hidden_size=16, num_layers=2,
                                            embedding_dim=8),
    "ecapa": model_lib.SpeakerModelConfig(arch="ecapa", hidden_size=16, num_layers=2,
                                          embedding_dim=8, attention_dim=8),
}


def _ge2e_loop(e, w, b):
  """Wan et al. (2018) Eqs. 6-9, one utterance and one centroid at a time (float64)."""
  e = e / np.linalg.norm(e, axis=-1, keepdims=True)
  n, m, _ = e.shape
  cos = lambda x, y: float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))
  total = 0.0
  for j, i in itertools.product(range(n), range(m)):
    row = []
    for k in range(n):
      if k == j:
        c = (e[j].sum(0) - e[j, i]) / (m - 1)
      else:
        c = e[k].mean(0)
      row.append(max(w, 1e-6) * cos(e[j, i], c) + b)
    row = np.array(row)
    total += -row[j] + np.log(np.sum(np.exp(row)))
  return total / (n * m)


@pytest.mark.parametrize("w,b", [(10.0, -5.0), (3.0, 1.0), (-2.0, 0.5)])
def test_ge2e_equals_the_loop_over_utterances_and_centroids(w, b):
  e = np.random.default_rng(0).standard_normal((3, 4, 5))
  got = float(ge2e.ge2e_loss(jnp.asarray(e, jnp.float32), jnp.float32(w), jnp.float32(b)))
  assert got == pytest.approx(_ge2e_loop(e, w, b), rel=1e-5, abs=1e-6)


def test_ge2e_is_low_for_separated_speakers_and_refuses_a_single_utterance():
  centres = np.eye(4)[:3]
  separated = centres[:, None, :] + 0.01 * np.random.default_rng(1).standard_normal((3, 5, 4))
  mixed = np.random.default_rng(2).standard_normal((3, 5, 4))
  low = float(ge2e.ge2e_loss(jnp.asarray(separated), 10.0, -5.0))
  high = float(ge2e.ge2e_loss(jnp.asarray(mixed), 10.0, -5.0))
  assert low < 0.01 < high
  with pytest.raises(ValueError, match="M >= 2"):
    ge2e.ge2e_loss(jnp.zeros((3, 1, 4)), 10.0, -5.0)


def _eer_brute(scores, labels):
  best = 2.0
  for t in list(np.unique(scores)) + [np.inf]:
    far = np.mean(scores[~labels] >= t)
    frr = np.mean(scores[labels] < t)
    best = min(best, max(far, frr))
  return best


@pytest.mark.parametrize("seed,ties", [(0, False), (1, True), (2, True), (3, False)])
def test_eer_equals_brute_force_over_all_thresholds(seed, ties):
  gen = np.random.default_rng(seed)
  labels = gen.random(200) < 0.3
  scores = gen.standard_normal(200) + 1.2 * labels
  if ties:
    scores = np.round(scores, 0)
  value, threshold = metrics.eer(scores, labels)
  assert value == pytest.approx(_eer_brute(scores, labels), abs=1e-12)
  far, frr = metrics.far_frr(scores, labels, threshold)
  assert max(far, frr) == pytest.approx(value, abs=1e-12)


def test_eer_of_separable_scores_is_zero_and_of_reversed_scores_is_one():
  labels = np.array([True] * 5 + [False] * 7)
  scores = np.where(labels, 1.0, 0.0) + np.linspace(0, 0.1, 12)
  assert metrics.eer(scores, labels)[0] == 0.0
  assert metrics.eer(-scores, labels)[0] == 1.0
  with pytest.raises(ValueError, match="non-target"):
    metrics.eer(scores[:5], labels[:5])


def test_enrol_cosine_and_trials():
  gen = np.random.default_rng(0)
  e = gen.standard_normal((3, 6))
  c = metrics.enrol(e * np.array([[1.0], [5.0], [0.1]]))   # row scale does not matter
  np.testing.assert_allclose(c, metrics.enrol(e), rtol=1e-5)
  assert np.linalg.norm(c) == pytest.approx(1.0, abs=1e-6)
  s = metrics.cosine_scores(e, e)
  np.testing.assert_allclose(np.diag(s), 1.0, rtol=1e-5)
  speakers = np.repeat(["a", "b", "c"], 4)
  emb = np.repeat(np.eye(3), 4, axis=0) + 0.05 * gen.standard_normal((12, 3))
  scores, labels = metrics.verification_trials(emb, speakers, num_enrol=2)
  assert scores.shape == labels.shape == (3 * 2 * 3,)
  assert labels.sum() == 6
  assert metrics.verification_eer(emb, speakers, num_enrol=2)["eer"] == 0.0
  with pytest.raises(ValueError, match="num_enrol"):
    metrics.verification_trials(emb, speakers, num_enrol=4)


@pytest.mark.parametrize("arch", sorted(TINY))
def test_models_give_unit_embeddings_independent_of_the_batch(arch):
  config = TINY[arch]
  model = model_lib.build_speaker_model(config, jax.random.key(0))
  graphdef, state = nnx.split(model)
  apply = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))
  model = lambda x: apply(state, x)
  x = jax.random.normal(jax.random.key(1), (3, 4000)) * 0.1
  e, inter = model(x)
  assert e.shape == (3, 8) and inter["frames"].shape[0] == 3
  np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, rtol=1e-5)
  alone, _ = model(x[1:2])
  np.testing.assert_allclose(alone[0], e[1], atol=1e-5)
  # The per-utterance mean normalisation of the log-mel frames removes a constant gain.
  scaled, _ = model(x * 0.25)
  np.testing.assert_allclose(scaled, e, atol=2e-3)
  assert not np.allclose(e[0], e[1], atol=1e-3)


def test_model_config_checks_and_short_clips_are_refused():
  with pytest.raises(ValueError, match="arch"):
    model_lib.SpeakerModelConfig(arch="xvector")
  with pytest.raises(ValueError, match="res2_scale"):
    model_lib.SpeakerModelConfig(arch="ecapa", hidden_size=30, res2_scale=4)
  with pytest.raises(ValueError, match="unknown speaker model preset"):
    model_lib.preset("huge")
  model = model_lib.build_speaker_model(TINY["dvector"], jax.random.key(0))
  with pytest.raises(ValueError, match="shorter than one"):
    model(jnp.zeros((2, 200)))
  assert {"dvector", "dvector-small", "ecapa-small"} <= set(model_lib.PRESETS)
  full = model_lib.PRESETS["dvector"]
  assert (full.num_layers, full.hidden_size, full.embedding_dim) == (3, 768, 256)
  assert (full.win_length, full.hop_length, full.n_fft) == (400, 160, 512)
