"""Load Hugging Face ``ASTForAudioClassification`` checkpoints into `AST`.

Reads a checkpoint from disk, with no network access and nothing heavy at
import: a directory holding ``config.json`` and ``model.safetensors`` (or a
sharded ``model.safetensors.index.json``, or ``pytorch_model.bin``), or one
such weights file next to its ``config.json``. Safetensors are read with the
``safetensors`` numpy API when it is installed and with a small built-in
reader otherwise; ``pytorch_model.bin`` needs torch, imported only then.

Tensor names may be the on-disk names (transformers 4.x and 5.x
``save_pretrained``: ``encoder.layer.{i}.attention.attention.query`` ...) or
the in-memory names of transformers 5 (``layers.{i}.attention.q_proj``,
``mlp.fc1`` ...), with or without the ``audio_spectrogram_transformer.``
prefix (``ASTModel`` checkpoints have no prefix and no classifier). Conv
kernels go OIHW -> HWIO and Linear weights (out, in) -> (in, out); every
shape is checked, and missing or unexpected tensors raise `HFImportError`.

Changing ``max_length`` adapts the position embeddings as the AST authors
do for new input lengths: crop the centre of the patch grid when it shrinks,
interpolate (bilinear, half-pixel) when it grows.
"""

import json
import os
import re
import struct
from typing import Mapping, Optional

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxtag.models.ast import AST, patch_grid

_PREFIX = "audio_spectrogram_transformer."
# transformers 5 in-memory names -> on-disk names (after the prefix).
_V5_RENAMES = (
    (re.compile(r"^layers\.(\d+)\.attention\.q_proj\."),
     r"encoder.layer.\1.attention.attention.query."),
    (re.compile(r"^layers\.(\d+)\.attention\.k_proj\."),
     r"encoder.layer.\1.attention.attention.key."),
    (re.compile(r"^layers\.(\d+)\.attention\.v_proj\."),
     r"encoder.layer.\1.attention.attention.value."),
    (re.compile(r"^layers\.(\d+)\.attention\.o_proj\."),
     r"encoder.layer.\1.attention.output.dense."),
    (re.compile(r"^layers\.(\d+)\.mlp\.fc1\."),
     r"encoder.layer.\1.intermediate.dense."),
    (re.compile(r"^layers\.(\d+)\.mlp\.fc2\."),
     r"encoder.layer.\1.output.dense."),
    (re.compile(r"^layers\.(\d+)\.layernorm_"), r"encoder.layer.\1.layernorm_"),
)
_HEAD_DENSE = ("classifier.dense.weight", "classifier.dense.bias")
# ASTFeatureExtractor's defaults (AudioSet statistics).
_HF_FEATURE_MEAN = -4.2677393
_HF_FEATURE_STD = 4.5689974


class HFImportError(ValueError):
  """A Hugging Face AST checkpoint that cannot be loaded as asked."""


def _layer_map(i: int) -> list[tuple[str, tuple, str]]:
  hf = f"encoder.layer.{i}."
  ours = ("blocks", i)
  rows = []
  for name, part in (("attention.attention.query", "query"),
                     ("attention.attention.key", "key"),
                     ("attention.attention.value", "value"),
                     ("attention.output.dense", "out")):
    rows += [(hf + name + ".weight", ours + ("attention", part, "kernel"),
              "linear"),
             (hf + name + ".bias", ours + ("attention", part, "bias"), "copy")]
  for name, part in (("intermediate.dense", "mlp_in"),
                     ("output.dense", "mlp_out")):
    rows += [(hf + name + ".weight", ours + (part, "kernel"), "linear"),
             (hf + name + ".bias", ours + (part, "bias"), "copy")]
  for name, part in (("layernorm_before", "norm1"),
                     ("layernorm_after", "norm2")):
    rows += [(hf + name + ".weight", ours + (part, "scale"), "copy"),
             (hf + name + ".bias", ours + (part, "bias"), "copy")]
  return rows


def parameter_map(depth: int) -> list[tuple[str, tuple, str]]:
  """``(hf_name, jaxtag_param_path, kind)`` for every AST tensor.

  ``hf_name`` is the on-disk name with the ``audio_spectrogram_transformer.``
  prefix removed from backbone tensors; ``kind`` is "conv" (OIHW -> HWIO),
  "linear" ((out, in) -> (in, out)) or "copy".
  """
  emb = "embeddings."
  rows = [
      (emb + "cls_token", ("cls_token",), "copy"),
      (emb + "distillation_token", ("dist_token",), "copy"),
      (emb + "position_embeddings", ("pos_embed",), "copy"),
      (emb + "patch_embeddings.projection.weight", ("patch_embed", "kernel"),
       "conv"),
      (emb + "patch_embeddings.projection.bias", ("patch_embed", "bias"),
       "copy"),
  ]
  for i in range(depth):
    rows += _layer_map(i)
  rows += [
      ("layernorm.weight", ("norm", "scale"), "copy"),
      ("layernorm.bias", ("norm", "bias"), "copy"),
      ("classifier.layernorm.weight", ("head_norm", "scale"), "copy"),
      ("classifier.layernorm.bias", ("head_norm", "bias"), "copy"),
      ("classifier.dense.weight", ("head", "kernel"), "linear"),
      ("classifier.dense.bias", ("head", "bias"), "copy"),
  ]
  return rows


def _to_jaxtag(array: np.ndarray, kind: str) -> np.ndarray:
  if kind == "conv":
    return np.transpose(array, (2, 3, 1, 0))
  if kind == "linear":
    return np.transpose(array)
  return array


def _to_hf(array: np.ndarray, kind: str) -> np.ndarray:
  if kind == "conv":
    return np.transpose(array, (3, 2, 0, 1))
  if kind == "linear":
    return np.transpose(array)
  return array


def canonical_names(state_dict: Mapping[str, np.ndarray]
                    ) -> dict[str, np.ndarray]:
  """Strips the backbone prefix and maps transformers-5 names to disk names."""
  out = {}
  for name, value in state_dict.items():
    if name.startswith(_PREFIX):
      name = name[len(_PREFIX):]
    for pattern, replacement in _V5_RENAMES:
      name = pattern.sub(replacement, name)
    out[name] = value
  return out


# ------------------------------------------------------------------ reading


_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
    "U8": np.uint8, "BOOL": np.bool_,
}


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """Reads a ``.safetensors`` file into numpy (no extra dependency).

  Raises:
    HFImportError: for a truncated or malformed file or an unknown dtype.
  """
  with open(path, "rb") as f:
    raw = f.read()
  try:
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + header_len])
  except (struct.error, ValueError) as e:
    raise HFImportError(f"{path}: not a safetensors file ({e}).") from e
  data = memoryview(raw)[8 + header_len:]
  out = {}
  for name, info in header.items():
    if name == "__metadata__":
      continue
    code = info["dtype"]
    if code == "BF16":
      # jax depends on ml_dtypes, so this adds no requirement.
      import ml_dtypes  # pylint: disable=g-import-not-at-top
      dtype = ml_dtypes.bfloat16
    elif code in _SAFETENSORS_DTYPES:
      dtype = _SAFETENSORS_DTYPES[code]
    else:
      raise HFImportError(f"{path}: tensor {name!r} has unsupported dtype "
                          f"{code}.")
    start, end = info["data_offsets"]
    if end > len(data):
      raise HFImportError(f"{path}: truncated (tensor {name!r}).")
    out[name] = np.frombuffer(data[start:end], dtype).reshape(info["shape"])
  return out


def _load_safetensors(path: str) -> dict[str, np.ndarray]:
  try:
    # pylint: disable-next=g-import-not-at-top
    from safetensors.numpy import load_file
  except ImportError:
    return read_safetensors(path)
  return load_file(path)


def _load_torch(path: str) -> dict[str, np.ndarray]:
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise HFImportError(
        f"{path} is a PyTorch checkpoint and reading it needs torch, which "
        "is not installed. Install torch (CPU is enough), or convert the "
        "checkpoint to model.safetensors.") from e
  state = torch.load(path, map_location="cpu", weights_only=True)
  if not isinstance(state, Mapping):
    raise HFImportError(f"{path} holds a {type(state).__name__}, not a state "
                        "dict of tensors.")
  return {k: v.detach().to(torch.float32).numpy() for k, v in state.items()
          if torch.is_tensor(v) and v.is_floating_point()}


def _weights_files(path: str) -> list[str]:
  if os.path.isfile(path):
    return [path]
  if not os.path.isdir(path):
    raise HFImportError(f"{path} does not exist.")
  single = os.path.join(path, "model.safetensors")
  index = single + ".index.json"
  legacy = os.path.join(path, "pytorch_model.bin")
  if os.path.exists(single):
    return [single]
  if os.path.exists(index):
    with open(index) as f:
      shards = sorted(set(json.load(f)["weight_map"].values()))
    return [os.path.join(path, s) for s in shards]
  if os.path.exists(legacy):
    return [legacy]
  raise HFImportError(
      f"{path} holds no model.safetensors, model.safetensors.index.json or "
      "pytorch_model.bin; save the model with save_pretrained().")


def load_hf_state_dict(path: str) -> dict[str, np.ndarray]:
  """Reads the weights of a checkpoint directory or file into numpy float32.

  Args:
    path: a ``save_pretrained`` directory, or a ``.safetensors``/``.bin``
      file.

  Returns:
    ``{tensor name: float32 array}`` with the names as stored.
  """
  out = {}
  for file in _weights_files(path):
    if file.endswith(".safetensors"):
      out.update(_load_safetensors(file))
    else:
      out.update(_load_torch(file))
  return {k: np.asarray(v, np.float32) for k, v in out.items()}


def read_hf_config(path: str) -> dict:
  """``config.json`` (plus ``preprocessor_config.json`` under the key
  ``"preprocessor"`` if present) of a checkpoint directory or weights file."""
  folder = path if os.path.isdir(path) else os.path.dirname(path)
  config_path = os.path.join(folder, "config.json")
  if not os.path.exists(config_path):
    raise HFImportError(f"No config.json next to {path}; it defines the model "
                        "size and must come with the weights.")
  with open(config_path) as f:
    config = json.load(f)
  pre = os.path.join(folder, "preprocessor_config.json")
  if os.path.exists(pre):
    with open(pre) as f:
      config["preprocessor"] = json.load(f)
  return config


def hf_class_names(config: Mapping) -> tuple[str, ...]:
  """Class names in label order from a config's ``id2label``."""
  id2label = config.get("id2label") or {}
  return tuple(id2label[k] for k in sorted(id2label, key=int))


def ast_kwargs_from_hf_config(config: Mapping) -> dict:
  """`AST` constructor arguments (with ``num_classes``) from ``config.json``.

  Raises:
    HFImportError: for a config this AST cannot reproduce.
  """
  if config.get("hidden_act", "gelu") != "gelu":
    raise HFImportError(f"hidden_act={config['hidden_act']!r} is not supported"
                        " (jaxtag's AST uses exact GELU, HF's 'gelu').")
  if not config.get("qkv_bias", True):
    raise HFImportError("qkv_bias=False is not supported.")
  num_classes = config.get("num_labels") or len(config.get("id2label") or {})
  pre = config.get("preprocessor", {})
  mean, std = _HF_FEATURE_MEAN, _HF_FEATURE_STD
  if "mean" in pre:
    mean, std = pre["mean"], pre["std"]
  if pre.get("do_normalize") is False:
    mean, std = 0.0, 0.5  # (x - 0) / (2 * 0.5) = x.
  return dict(
      num_classes=int(num_classes or 2),
      width=config["hidden_size"], depth=config["num_hidden_layers"],
      num_heads=config["num_attention_heads"],
      mlp_dim=config["intermediate_size"],
      patch_size=config.get("patch_size", 16),
      frequency_stride=config.get("frequency_stride", 10),
      time_stride=config.get("time_stride", 10),
      num_mel_bins=config.get("num_mel_bins", 128),
      max_length=config.get("max_length", 1024),
      layer_norm_eps=config.get("layer_norm_eps", 1e-12),
      dropout_rate=config.get("hidden_dropout_prob", 0.0),
      attention_dropout_rate=config.get("attention_probs_dropout_prob", 0.0),
      feature_mean=float(mean), feature_std=float(std))


def _resize_axis(grid: np.ndarray, new: int, axis: int) -> np.ndarray:
  """Centre crop, or half-pixel linear interpolation (torch bilinear with
  ``align_corners=False``) along one axis."""
  old = grid.shape[axis]
  if new <= old:
    start = old // 2 - new // 2
    return np.take(grid, np.arange(start, start + new), axis=axis)
  src = np.maximum((np.arange(new) + 0.5) * old / new - 0.5, 0.0)
  lo = np.floor(src).astype(int)
  hi = np.minimum(lo + 1, old - 1)
  shape = [1] * grid.ndim
  shape[axis] = new
  frac = (src - lo).reshape(shape)
  return (np.take(grid, lo, axis=axis) * (1 - frac)
          + np.take(grid, hi, axis=axis) * frac)


def adapt_position_embeddings(pos: np.ndarray, old_grid: tuple[int, int],
                              new_grid: tuple[int, int]) -> np.ndarray:
  """Position embeddings ``(1, 2 + F*T, D)`` for a new patch grid.

  The two special tokens keep theirs; the patch grid is cropped around its
  centre or interpolated, separately along frequency and time.
  """
  width = pos.shape[-1]
  grid = pos[:, 2:].reshape(1, old_grid[0], old_grid[1], width)
  grid = _resize_axis(grid, new_grid[0], axis=1)
  grid = _resize_axis(grid, new_grid[1], axis=2)
  return np.concatenate([pos[:, :2], grid.reshape(1, -1, width)],
                        axis=1).astype(pos.dtype)


# ------------------------------------------------------------------ building


def ast_from_hf_state_dict(state_dict: Mapping[str, np.ndarray],
                           config: Mapping, *,
                           num_classes: Optional[int] = None,
                           max_length: Optional[int] = None,
                           feature_mean: Optional[float] = None,
                           feature_std: Optional[float] = None,
                           dtype=None,
                           rngs: Optional[nnx.Rngs] = None) -> AST:
  """Builds an `AST` holding the weights of an HF state dict.

  Args:
    state_dict: HF tensor names -> arrays (see module docstring for names).
    config: the checkpoint's ``config.json`` as a dict.
    num_classes: classes of the new model; when it differs from the
      checkpoint's, or the checkpoint has no classifier, the head's Linear
      is freshly initialised from ``rngs`` (fine-tuning a public backbone).
    max_length: input frames of the new model (default: the config's);
      position embeddings are adapted when it differs.
    feature_mean: log-fbank mean for the front end (default: the
      checkpoint's preprocessor config, else the HF extractor's AudioSet
      value).
    feature_std: log-fbank standard deviation (same defaults).
    dtype: compute dtype of the model.
    rngs: randomness for a re-initialised head (required then).

  Returns:
    The model.

  Raises:
    HFImportError: for missing, unexpected or mis-shaped tensors, or a head
      that must be re-initialised without ``rngs``.
  """
  kwargs = ast_kwargs_from_hf_config(config)
  ckpt_classes = kwargs.pop("num_classes")
  ckpt_grid = patch_grid(
      num_mel_bins=kwargs["num_mel_bins"], max_length=kwargs["max_length"],
      patch_size=kwargs["patch_size"],
      frequency_stride=kwargs["frequency_stride"],
      time_stride=kwargs["time_stride"])
  if max_length is not None:
    kwargs["max_length"] = max_length
  if feature_mean is not None:
    kwargs["feature_mean"] = feature_mean
  if feature_std is not None:
    kwargs["feature_std"] = feature_std
  num_classes = ckpt_classes if num_classes is None else num_classes

  weights = canonical_names(state_dict)
  rows = parameter_map(kwargs["depth"])
  has_head = all(k in weights for k in _HEAD_DENSE)
  reinit_head = (not has_head) or num_classes != ckpt_classes
  if has_head and weights[_HEAD_DENSE[0]].shape[0] != ckpt_classes:
    raise HFImportError(
        f"classifier.dense has {weights[_HEAD_DENSE[0]].shape[0]} outputs but "
        f"config.json says {ckpt_classes} labels.")
  if reinit_head and rngs is None:
    raise HFImportError(
        f"The classifier must be re-initialised (checkpoint: "
        f"{ckpt_classes if has_head else 'no'} classes, requested "
        f"{num_classes}); pass rngs=nnx.Rngs(...) for it.")
  optional = set(_HEAD_DENSE) if reinit_head else set()
  if not has_head:  # ASTModel checkpoint: the head LayerNorm starts at 1/0.
    optional |= {"classifier.layernorm.weight", "classifier.layernorm.bias"}
  expected = {hf for hf, _, _ in rows}
  missing = sorted(expected - set(weights) - optional)
  unexpected = sorted(set(weights) - expected)
  if missing or unexpected:
    raise HFImportError(
        f"Checkpoint does not match an AST with depth {kwargs['depth']}: "
        f"missing {missing or 'none'}; unexpected {unexpected or 'none'}.")

  model = AST(num_classes, **kwargs, dtype=dtype,
              rngs=rngs if rngs is not None else nnx.Rngs(0))
  flat = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
  updates, errors = [], []
  for hf, path, kind in rows:
    if hf in optional and (reinit_head or hf not in weights):
      continue
    value = _to_jaxtag(weights[hf], kind)
    if path == ("pos_embed",) and model.grid != ckpt_grid:
      value = adapt_position_embeddings(value, ckpt_grid, model.grid)
    variable = flat[path]
    want = np.shape(variable[...])
    if value.shape != want:
      errors.append(f"{hf}: checkpoint {weights[hf].shape} -> {value.shape}, "
                    f"model {'.'.join(map(str, path))} {want}")
      continue
    updates.append((path, variable.replace(jnp.asarray(value, jnp.float32))))
  if errors:
    raise HFImportError("Shape mismatch: " + "; ".join(errors))
  nnx.update(model, nnx.from_flat_state(updates))
  return model


def load_hf_ast(path: str, **kwargs) -> AST:
  """Loads an HF AST checkpoint from disk (see `ast_from_hf_state_dict`).

  Args:
    path: a ``save_pretrained`` directory, or a weights file with its
      ``config.json`` alongside.
    **kwargs: keyword arguments of `ast_from_hf_state_dict`.

  Returns:
    The model; its class names are ``hf_class_names(read_hf_config(path))``.
  """
  config = read_hf_config(path)
  return ast_from_hf_state_dict(load_hf_state_dict(path), config, **kwargs)


def hf_state_dict_from_ast(model: AST) -> dict[str, np.ndarray]:
  """Exports an `AST` under HF on-disk names (inverse of the import).

  Returns:
    ``{name: float32 array}`` loadable by ``ASTForAudioClassification``
    with the matching config.
  """
  flat = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
  out = {}
  for hf, path, kind in parameter_map(len(model.blocks)):
    name = hf if hf.startswith("classifier.") else _PREFIX + hf
    out[name] = np.ascontiguousarray(
        _to_hf(np.asarray(flat[path][...], np.float32), kind))
  return out
