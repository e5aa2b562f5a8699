"""Tests for the AST recipe options (feature_norm, readout, kernel_init).

The options change how a from-scratch AST trains, never its tensors: the HF
layout (tests/test_hf_import.py) must load into every variant.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtag import models
from jaxtag.models import ast as ast_lib

TINY = dict(depth=1, width=32, num_heads=2, mlp_dim=64, max_length=32)


def _waveforms(batch=2, seed=0):
  rng = np.random.default_rng(seed)
  t = np.arange(4800) / 16000.0
  tone = np.sin(2 * np.pi * rng.uniform(200, 2000, (batch, 1)) * t)
  return jnp.asarray(0.3 * tone + 0.05 * rng.normal(size=(batch, 4800)),
                     jnp.float32)


def _model(**options):
  return models.create_model("ast_tiny", num_classes=5, rngs=nnx.Rngs(0),
                             **TINY, **options)


def test_per_clip_features_ignore_the_level_and_pad_with_zeros():
  x = _waveforms()
  per_clip = _model(feature_norm="per_clip")
  dataset = _model()
  quiet, loud = per_clip.features(0.05 * x), per_clip.features(x)
  # 4800 samples = 28 frames; 4 padded rows of zeros (the clip's mean).
  np.testing.assert_array_equal(loud[:, 28:], 0.0)
  real = np.asarray(loud[:, :28])
  np.testing.assert_allclose(real.mean(axis=(1, 2)), 0.0, atol=1e-5)
  np.testing.assert_allclose(real.std(axis=(1, 2)), 0.5, rtol=1e-4)
  # The HF (dataset-statistics) features move with the level: 26 dB is
  # 2 * ln(20) = 6 nats of log power, / (2 * 5.57) = 0.54 after scaling,
  # except where a bin is floored at log(eps) (empty or near-silent bins).
  shift = np.asarray(dataset.features(x) - dataset.features(0.05 * x))[:, :28]
  level = 2 * np.log(20) / (2 * ast_lib.SPEECHCOMMANDS_STD)
  assert np.median(shift) == pytest.approx(level, rel=1e-3)
  # Per clip, only those floored bins move (by ~0.03 on average).
  per_clip_shift = np.abs(np.asarray(loud - quiet)[:, :28]).mean()
  assert per_clip_shift < 0.1 * level


@pytest.mark.parametrize("readout", ["cls_dist", "mean", "mean_max"])
def test_readout_pools_the_named_tokens(readout):
  model = _model(readout=readout)
  logits, inter = model(_waveforms())
  tokens, patches = inter["tokens"], inter["tokens"][:, 2:]
  expected = {"cls_dist": (tokens[:, 0] + tokens[:, 1]) / 2,
              "mean": patches.mean(1),
              "mean_max": patches.mean(1) + patches.max(1)}[readout]
  np.testing.assert_allclose(inter["embedding"], expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(
      logits, model.head(model.head_norm(expected)), rtol=1e-5, atol=1e-5)


def test_options_keep_the_parameter_layout_and_xavier_scales_the_kernels():
  default, variant = _model(), _model(kernel_init="xavier", readout="mean",
                                      feature_norm="per_clip")
  shapes = lambda m: jax.tree.map(jnp.shape, nnx.state(m, nnx.Param))
  assert shapes(default) == shapes(variant)
  query = lambda m: float(np.std(m.blocks[0].attention.query.kernel[...]))
  mlp_in = lambda m: float(np.std(m.blocks[0].mlp_in.kernel[...]))
  assert 0.015 < query(default) < 0.025 and 0.015 < mlp_in(default) < 0.025
  # Xavier-uniform: std sqrt(2 / (fan_in + fan_out)).
  assert query(variant) == pytest.approx(np.sqrt(2 / 64), rel=0.15)
  assert mlp_in(variant) == pytest.approx(np.sqrt(2 / 96), rel=0.15)
  # LeCun-normal patch embedding: std 1 / sqrt(16 * 16).
  patch = float(np.std(variant.patch_embed.kernel[...]))
  assert patch == pytest.approx(1 / 16, rel=0.15)
  # The head keeps the truncated normal (a small initial logit scale).
  np.testing.assert_array_equal(variant.head.kernel[...], default.head.kernel[...])


@pytest.mark.parametrize("option", ["feature_norm", "readout", "kernel_init"])
def test_unknown_option_values_are_rejected(option):
  with pytest.raises(ValueError, match=option):
    _model(**{option: "nonsense"})
