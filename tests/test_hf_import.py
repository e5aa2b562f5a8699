"""Tests for jaxtag.models.hf_import (Hugging Face AST checkpoints).

The first group needs neither torch nor transformers: checkpoints are made
by exporting a jaxtag AST under HF names. The last group compares against
transformers' ``ASTForAudioClassification`` on the same random weights and
skips, saying why, where torch or transformers is not installed.
"""

import json
import struct
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtag import models
from jaxtag.models import hf_import

TINY_CONFIG = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
    intermediate_size=64, max_length=32, num_mel_bins=128, patch_size=16,
    frequency_stride=10, time_stride=10, layer_norm_eps=1e-12,
    hidden_act="gelu", qkv_bias=True,
    id2label={str(i): f"word{i}" for i in range(5)})


def _tiny_model(seed=0, **overrides):
  kwargs = hf_import.ast_kwargs_from_hf_config(TINY_CONFIG)
  kwargs.update(overrides)
  return models.AST(kwargs.pop("num_classes"), **kwargs,
                    rngs=nnx.Rngs(seed))


def _params(model):
  return nnx.state(model, nnx.Param)


def _assert_same_params(a, b):
  jax.tree.map(np.testing.assert_array_equal, _params(a), _params(b))


def _features(batch=2, frames=32, seed=0):
  rng = np.random.default_rng(seed)
  return rng.normal(size=(batch, frames, 128)).astype(np.float32)


def _to_v5_names(state_dict):
  """transformers 5 in-memory names (what torch.save(state_dict()) gives)."""
  out = {}
  for k, v in state_dict.items():
    k = (k.replace("encoder.layer.", "layers.")
         .replace("attention.attention.query", "attention.q_proj")
         .replace("attention.attention.key", "attention.k_proj")
         .replace("attention.attention.value", "attention.v_proj")
         .replace("attention.output.dense", "attention.o_proj")
         .replace("intermediate.dense", "mlp.fc1")
         .replace("output.dense", "mlp.fc2"))
    out[k] = v
  return out


def _write_safetensors(path, tensors):
  """Minimal safetensors writer (format spec), independent of the reader."""
  codes = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16"}
  header, blobs, offset = {}, [], 0
  for name, array in tensors.items():
    array = np.ascontiguousarray(array)
    code = "BF16" if array.dtype.name == "bfloat16" else codes[array.dtype]
    raw = array.tobytes()
    header[name] = {"dtype": code, "shape": list(array.shape),
                    "data_offsets": [offset, offset + len(raw)]}
    blobs.append(raw)
    offset += len(raw)
  encoded = json.dumps(header).encode()
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(encoded)) + encoded + b"".join(blobs))


def test_export_import_round_trip_and_v5_names():
  model = _tiny_model()
  state = hf_import.hf_state_dict_from_ast(model)
  assert "audio_spectrogram_transformer.encoder.layer.1.attention.attention" \
         ".query.weight" in state
  assert state["audio_spectrogram_transformer.embeddings.patch_embeddings"
               ".projection.weight"].shape == (32, 1, 16, 16)
  assert state["classifier.dense.weight"].shape == (5, 32)
  _assert_same_params(hf_import.ast_from_hf_state_dict(state, TINY_CONFIG),
                      model)
  _assert_same_params(
      hf_import.ast_from_hf_state_dict(_to_v5_names(state), TINY_CONFIG),
      model)


def test_missing_unexpected_and_misshaped_tensors_are_reported():
  state = hf_import.hf_state_dict_from_ast(_tiny_model())
  name = "audio_spectrogram_transformer.encoder.layer.0.output.dense.bias"
  missing = {k: v for k, v in state.items() if k != name}
  with pytest.raises(hf_import.HFImportError,
                     match=r"missing \['encoder.layer.0.output.dense.bias'\]"):
    hf_import.ast_from_hf_state_dict(missing, TINY_CONFIG)
  extra = dict(state, **{"audio_spectrogram_transformer.pooler.weight":
                         np.zeros((2, 2), np.float32)})
  with pytest.raises(hf_import.HFImportError,
                     match=r"unexpected \['pooler.weight'\]"):
    hf_import.ast_from_hf_state_dict(extra, TINY_CONFIG)
  deeper = dict(TINY_CONFIG, num_hidden_layers=3)
  with pytest.raises(hf_import.HFImportError, match="encoder.layer.2"):
    hf_import.ast_from_hf_state_dict(state, deeper)
  bad = dict(state, **{name: np.zeros((31,), np.float32)})
  with pytest.raises(hf_import.HFImportError,
                     match=r"Shape mismatch: encoder.layer.0.output.dense"):
    hf_import.ast_from_hf_state_dict(bad, TINY_CONFIG)


def test_new_head_for_fine_tuning_needs_rngs():
  model = _tiny_model()
  state = hf_import.hf_state_dict_from_ast(model)
  with pytest.raises(hf_import.HFImportError, match="pass rngs"):
    hf_import.ast_from_hf_state_dict(state, TINY_CONFIG, num_classes=35)
  tuned = hf_import.ast_from_hf_state_dict(state, TINY_CONFIG, num_classes=35,
                                           rngs=nnx.Rngs(3))
  assert tuned.head.kernel[...].shape == (32, 35)
  np.testing.assert_array_equal(tuned.blocks[1].mlp_in.kernel[...],
                                model.blocks[1].mlp_in.kernel[...])
  np.testing.assert_array_equal(tuned.head_norm.scale[...],
                                model.head_norm.scale[...])
  # An ASTModel checkpoint: no prefix, no classifier.
  backbone = {k[len("audio_spectrogram_transformer."):]: v
              for k, v in state.items()
              if k.startswith("audio_spectrogram_transformer.")}
  loaded = hf_import.ast_from_hf_state_dict(backbone, TINY_CONFIG,
                                            num_classes=7, rngs=nnx.Rngs(4))
  np.testing.assert_array_equal(loaded.pos_embed[...], model.pos_embed[...])
  np.testing.assert_array_equal(loaded.head_norm.scale[...], 1.0)


def test_position_embeddings_crop_centre_and_interpolate():
  grid = np.arange(12 * 10 * 3, dtype=np.float32).reshape(1, -1, 3)
  pos = np.concatenate([np.full((1, 2, 3), -1.0, np.float32), grid], axis=1)
  cropped = hf_import.adapt_position_embeddings(pos, (12, 10), (12, 4))
  ref = grid.reshape(12, 10, 3)[:, 3:7].reshape(1, -1, 3)
  np.testing.assert_array_equal(cropped[:, 2:], ref)
  np.testing.assert_array_equal(cropped[:, :2], -1.0)
  grown = hf_import.adapt_position_embeddings(pos, (12, 10), (12, 25))
  assert grown.shape == (1, 2 + 12 * 25, 3)
  # Half-pixel linear interpolation along time, rows unchanged along freq.
  old = grid.reshape(12, 10, 3)
  src = np.clip((np.arange(25) + 0.5) * 10 / 25 - 0.5, 0, 9)
  ref = np.stack([np.interp(src, np.arange(10), old[0, :, c])
                  for c in range(3)], axis=-1)
  np.testing.assert_allclose(grown[0, 2:].reshape(12, 25, 3)[0], ref,
                             rtol=1e-6)


def test_longer_input_model_from_shorter_checkpoint(tmp_path):
  model = _tiny_model()
  _write_safetensors(tmp_path / "model.safetensors",
                     hf_import.hf_state_dict_from_ast(model))
  (tmp_path / "config.json").write_text(json.dumps(TINY_CONFIG))
  longer = hf_import.load_hf_ast(str(tmp_path), max_length=64)
  assert longer.grid == (12, 5) and longer.max_length == 64
  logits, _ = nnx.jit(lambda m, f: m.classify(f))(longer,
                                                  _features(frames=64))
  assert logits.shape == (2, 5) and np.all(np.isfinite(logits))


def test_load_from_directory_without_optional_packages(tmp_path, monkeypatch):
  """The built-in safetensors reader, and the error when torch is needed."""
  monkeypatch.setitem(sys.modules, "safetensors", None)
  monkeypatch.setitem(sys.modules, "safetensors.numpy", None)
  monkeypatch.setitem(sys.modules, "torch", None)
  model = _tiny_model(seed=5)
  _write_safetensors(tmp_path / "model.safetensors",
                     hf_import.hf_state_dict_from_ast(model))
  (tmp_path / "config.json").write_text(json.dumps(TINY_CONFIG))
  (tmp_path / "preprocessor_config.json").write_text(
      json.dumps({"mean": -5.0, "std": 3.0, "do_normalize": True}))
  loaded = hf_import.load_hf_ast(str(tmp_path))
  _assert_same_params(loaded, model)
  assert (loaded.feature_mean, loaded.feature_std) == (-5.0, 3.0)
  names = hf_import.hf_class_names(hf_import.read_hf_config(str(tmp_path)))
  assert names == tuple(f"word{i}" for i in range(5))
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(hf_import.HFImportError, match="No config.json"):
    hf_import.load_hf_ast(str(empty))
  (empty / "config.json").write_text(json.dumps(TINY_CONFIG))
  with pytest.raises(hf_import.HFImportError, match="save_pretrained"):
    hf_import.load_hf_ast(str(empty))
  (empty / "pytorch_model.bin").write_bytes(b"")
  with pytest.raises(hf_import.HFImportError, match="needs torch"):
    hf_import.load_hf_ast(str(empty))


def test_builtin_safetensors_reader_dtypes(tmp_path):
  import ml_dtypes  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  tensors = {"a": rng.normal(size=(3, 4)).astype(np.float32),
             "b": rng.normal(size=(5,)).astype(np.float16),
             "c": rng.normal(size=(2, 2)).astype(ml_dtypes.bfloat16)}
  _write_safetensors(tmp_path / "x.safetensors", tensors)
  got = hf_import.read_safetensors(str(tmp_path / "x.safetensors"))
  for k, v in tensors.items():
    assert got[k].dtype == v.dtype
    np.testing.assert_array_equal(got[k], v)
  (tmp_path / "bad.safetensors").write_bytes(b"\x01\x00")
  with pytest.raises(hf_import.HFImportError, match="not a safetensors"):
    hf_import.read_safetensors(str(tmp_path / "bad.safetensors"))
  st = pytest.importorskip("safetensors.numpy",
                           reason="safetensors not installed")
  st.save_file({"a": tensors["a"]}, str(tmp_path / "y.safetensors"))
  np.testing.assert_array_equal(
      hf_import.read_safetensors(str(tmp_path / "y.safetensors"))["a"],
      tensors["a"])


# ------------------------------------------------ against transformers itself


def _reference():
  torch = pytest.importorskip(
      "torch", reason="torch is not installed: the HF reference comparison "
      "needs it (pip install torch transformers)")
  transformers = pytest.importorskip(
      "transformers", reason="transformers is not installed: the HF "
      "reference comparison needs it (pip install transformers)")
  return torch, transformers


def _hf_model(torch, transformers):
  torch.manual_seed(0)
  config = transformers.ASTConfig(
      hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
      intermediate_size=128, max_length=128, num_mel_bins=128,
      num_labels=35)
  model = transformers.ASTForAudioClassification(config).eval()
  with torch.no_grad():  # HF zero-initialises tokens; make every tensor count.
    for p in model.parameters():
      p.add_(0.1 * torch.randn_like(p))
  return model


def _compare(torch, hf_model, ours):
  x = _features(batch=3, frames=128)
  with torch.no_grad():
    out = hf_model(torch.from_numpy(x))
    ref = out.logits.numpy()
    pooled = hf_model.audio_spectrogram_transformer(
        torch.from_numpy(x)).pooler_output.numpy()
  logits, inter = nnx.jit(lambda m, f: m.classify(f))(ours, jnp.asarray(x))
  assert logits.shape == ref.shape == (3, 35)
  scale = np.abs(ref).max()
  assert np.abs(np.asarray(logits) - ref).max() <= 1e-4 * scale
  np.testing.assert_allclose(inter["embedding"], pooled,
                             atol=1e-4 * np.abs(pooled).max())


def test_logits_match_transformers_safetensors(tmp_path):
  torch, transformers = _reference()
  hf_model = _hf_model(torch, transformers)
  hf_model.save_pretrained(str(tmp_path))
  ours = hf_import.load_hf_ast(str(tmp_path))
  assert ours.grid == (12, 12) and len(ours.blocks) == 2
  _compare(torch, hf_model, ours)


def test_logits_match_transformers_pytorch_bin(tmp_path):
  torch, transformers = _reference()
  hf_model = _hf_model(torch, transformers)
  hf_model.config.to_json_file(str(tmp_path / "config.json"))
  # In-memory names (transformers 5 renames them on save).
  torch.save(hf_model.state_dict(), str(tmp_path / "pytorch_model.bin"))
  _compare(torch, hf_model, hf_import.load_hf_ast(str(tmp_path)))


def test_exported_weights_load_into_transformers(tmp_path):
  torch, transformers = _reference()
  st = pytest.importorskip("safetensors.numpy",
                           reason="safetensors not installed")
  hf_model = _hf_model(torch, transformers)
  hf_model.save_pretrained(str(tmp_path / "a"))
  ours = hf_import.load_hf_ast(str(tmp_path / "a"))
  (tmp_path / "b").mkdir()
  st.save_file(hf_import.hf_state_dict_from_ast(ours),
               str(tmp_path / "b" / "model.safetensors"))
  hf_model.config.to_json_file(str(tmp_path / "b" / "config.json"))
  back = transformers.ASTForAudioClassification.from_pretrained(
      str(tmp_path / "b")).eval()
  for (k, a), (_, b) in zip(sorted(hf_model.state_dict().items()),
                            sorted(back.state_dict().items())):
    np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=k)


# HF's numpy mel bank warns that 128 bins over a 512-point FFT leave one empty.
@pytest.mark.filterwarnings("ignore:At least one mel filter")
def test_waveform_pipeline_matches_feature_extractor_and_model(tmp_path):
  """End to end: HF's ASTFeatureExtractor + model vs jaxtag's model(wave)."""
  torch, transformers = _reference()
  hf_model = _hf_model(torch, transformers)
  hf_model.save_pretrained(str(tmp_path))
  extractor = transformers.ASTFeatureExtractor(
      max_length=128, mean=-6.845978, std=5.5654526)
  extractor.save_pretrained(str(tmp_path))  # preprocessor_config.json
  ours = hf_import.load_hf_ast(str(tmp_path))
  assert (ours.feature_mean, ours.feature_std) == (-6.845978, 5.5654526)
  rng = np.random.default_rng(1)
  t = np.arange(16000) / 16000
  wave = (0.3 * np.sin(2 * np.pi * 440 * t)
          + 0.05 * rng.normal(size=16000)).astype(np.float32)
  feats = extractor(wave, sampling_rate=16000,
                    return_tensors="np")["input_values"]
  with torch.no_grad():
    ref = hf_model(torch.from_numpy(feats)).logits.numpy()
  ours_feats = nnx.jit(lambda m, w: m.features(w))(ours, wave[None])
  # Kaldi fbank in float32 by two implementations: ~1e-4 of the feature range.
  np.testing.assert_allclose(ours_feats, feats, atol=5e-4)
  logits, _ = nnx.jit(lambda m, w: m(w))(ours, jnp.asarray(wave[None]))
  assert np.abs(np.asarray(logits) - ref).max() <= 1e-3 * np.abs(ref).max()
