"""The PyTorch + transformers side of ``bench_craft.py``: the reference crafting step, timed.

``transformers.ASTForAudioClassification`` with math attention (``attn_implementation="eager"``:
fused kernels have no double backward) holding jaxtag's weights (ported with
``jaxtag.models.hf_import``), and the crafting step written as a PyTorch user would:
``torch.autograd.grad(loss, params, create_graph=True)``, the cosine to the key gradient,
``torch.autograd.grad`` back to ``u``, ``torch.optim.Adam`` on its sign, projection under
``no_grad``. Also the loss/gradient parity of the two sides on identical weights.

``bench_craft`` imports this module only when the PyTorch side is requested and torch and
transformers are installed (``bench_craft.torch_missing``); the problem, the sizes and the
record's units are ``bench_craft``'s.
"""

from __future__ import annotations

import gc
import time

import jax
import numpy as np
from flax import nnx
import torch
import transformers

from benchmarks import harness
from benchmarks.bench_craft import (FRAMES, INPUT_NOTE, MELS, NUM_CLASSES, SIZES, UNIT, Case,
                                    Problem, jax_loss_and_grad, make_problem)
from jaxtag.models import hf_import
from jaxtag.taggants import craft


def torch_model(model: nnx.Module, size: str | dict, device="cpu"):
  """``ASTForAudioClassification`` (math attention) of ``size`` (a name in
  ``bench_craft.SIZES``, or its dims) holding the weights of jaxtag ``model``."""
  dims = SIZES[size] if isinstance(size, str) else size
  config = transformers.ASTConfig(
      hidden_size=dims["width"], num_hidden_layers=dims["depth"],
      num_attention_heads=dims["num_heads"], intermediate_size=dims["mlp_dim"],
      max_length=FRAMES, num_mel_bins=MELS, patch_size=16, frequency_stride=10, time_stride=10,
      layer_norm_eps=1e-12, hidden_act="gelu", hidden_dropout_prob=0.0,
      attention_probs_dropout_prob=0.0, num_labels=NUM_CLASSES, attn_implementation="eager")
  hf = transformers.ASTForAudioClassification(config)
  if getattr(hf.config, "_attn_implementation", "eager") != "eager":
    raise RuntimeError(f"transformers gave attention {hf.config._attn_implementation!r}, not "
                       "'eager' (math attention, which has a double backward).")
  port_weights(model, hf)
  return hf.to(device).eval()


def port_weights(model: nnx.Module, hf) -> None:
  """Loads jaxtag ``model``'s weights into the transformers model ``hf`` (strict: every tensor,
  same shapes), matching names through ``hf_import.canonical_names``."""
  ours = hf_import.canonical_names(hf_import.hf_state_dict_from_ast(model))
  new, used = {}, set()
  for name, tensor in hf.state_dict().items():
    (canon,) = hf_import.canonical_names({name: None})
    if canon not in ours:
      raise ValueError(f"port_weights: no jaxtag tensor for transformers' {name!r}.")
    value = ours[canon]
    if tuple(value.shape) != tuple(tensor.shape):
      raise ValueError(f"port_weights: {name} is {tuple(tensor.shape)} in transformers but "
                       f"{value.shape} in jaxtag.")
    new[name] = torch.from_numpy(np.array(value, np.float32))  # a writable copy
    used.add(canon)
  if set(ours) - used:
    raise ValueError(f"port_weights: jaxtag tensors without a transformers twin: "
                     f"{sorted(set(ours) - used)}.")
  hf.load_state_dict(new, strict=True)


class TorchCraft:
  """The PyTorch crafting step, as a PyTorch user writes it (see the module docstring)."""

  def __init__(self, hf, problem: Problem, *, precision: str = "fp32", device="cpu",
               learning_rate: float = craft.CraftConfig.learning_rate):
    self.model = hf
    self.device = torch.device(device)
    batch = problem.x.shape[0]
    as_image = lambda a: torch.from_numpy(a).to(self.device).view(-1, FRAMES, MELS)
    self.x = as_image(problem.x)
    self.labels = torch.from_numpy(problem.labels).long().to(self.device)
    self.scale = torch.from_numpy(problem.scale).to(self.device).view(batch, 1, 1)
    self.u = as_image(problem.u0).clone().requires_grad_(True)
    self.params = [p for p in hf.parameters() if p.requires_grad]
    self.bf16 = precision == "bf16"
    self.optimizer = torch.optim.Adam([self.u], lr=learning_rate)
    key_loss = torch.nn.functional.cross_entropy(
        self._logits(as_image(problem.key_x)),
        torch.from_numpy(problem.key_labels).long().to(self.device))
    self.key_grads = [g.detach() for g in torch.autograd.grad(key_loss, self.params)]
    self.key_norm2 = sum(g.pow(2).sum() for g in self.key_grads)

  def _logits(self, features):
    with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
      return self.model(features).logits.float()

  def loss(self):
    """``1 - cos(sum of the poisons' parameter gradients, key gradient)``, differentiable."""
    logits = self._logits(self.x + self.u * self.scale)
    ce = torch.nn.functional.cross_entropy(logits, self.labels, reduction="sum")
    grads = torch.autograd.grad(ce, self.params, create_graph=True)
    dot = sum((g * k).sum() for g, k in zip(grads, self.key_grads))
    norm2 = sum(g.pow(2).sum() for g in grads)
    return 1.0 - dot / torch.sqrt(norm2 * self.key_norm2).clamp_min(1e-30)

  def step(self):
    """One sign-Adam step on ``u`` and the projection; returns the pre-update loss."""
    self.optimizer.zero_grad(set_to_none=True)
    align = self.loss()
    (grad,) = torch.autograd.grad(align, [self.u])
    self.u.grad = grad.sign()
    self.optimizer.step()
    with torch.no_grad():
      rms = self.u.pow(2).mean(dim=(-2, -1), keepdim=True).sqrt()
      u = self.u / rms.clamp_min(1.0)
      self.u.copy_(torch.clamp(u, (-1.0 - self.x) / self.scale, (1.0 - self.x) / self.scale))
    return align.detach()

  def loss_and_grad(self) -> tuple[float, np.ndarray]:
    """The loss at the current ``u`` and its gradient, flattened like ``Problem.u0``."""
    align = self.loss()
    (grad,) = torch.autograd.grad(align, [self.u])
    return float(align.detach()), grad.detach().float().cpu().numpy().reshape(grad.shape[0], -1)

  def sync(self, _=None) -> None:
    if self.device.type == "cuda":
      torch.cuda.synchronize()

  def count_flops(self) -> float | None:
    """FLOPs of one step by ``torch.utils.flop_counter`` (matmuls and convolutions only)."""
    try:
      from torch.utils.flop_counter import FlopCounterMode
    except ImportError:
      return None
    with FlopCounterMode(display=False) as counter:
      self.step()
    self.sync()
    return float(counter.get_total_flops()) or None


def torch_device_info(device) -> dict:
  device = torch.device(device)
  if device.type == "cuda":
    kind = torch.cuda.get_device_name(device)
  else:
    kind = f"cpu ({torch.get_num_threads()} threads)"
  return {"device": f"torch-{device.type}:{kind}", "device_kind": kind,
          "platform": device.type}


def prepare_torch(hf, size: str, precision: str, batch: int, *, device, env,
                  seed: int = 0) -> Case:
  """The PyTorch step set up and run once (``hf`` already on ``device``)."""
  torch.backends.cuda.matmul.allow_tf32 = precision != "fp32"
  torch.backends.cudnn.allow_tf32 = precision != "fp32"
  cuda = torch.device(device).type == "cuda"
  if cuda:
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
  start = time.perf_counter()
  runner = TorchCraft(hf, make_problem(batch, seed=seed), precision=precision, device=device)
  first_loss = float(runner.step())
  runner.sync()
  first_s = time.perf_counter() - start

  def finish(timing: harness.Timing) -> dict:
    memory = torch.cuda.max_memory_allocated(device) if cuda else None
    flops = runner.count_flops()
    return harness.make_record(
        bench="craft_step", impl="pytorch", timing=timing, items_per_call=batch, unit=UNIT,
        device=torch_device_info(device), env=env, precision=precision, flops_per_call=flops,
        flops_source="torch.utils.flop_counter (matmul/conv only)", compile_s=None,
        memory_bytes=memory, memory_source="torch.cuda.max_memory_allocated" if cuda else None,
        size=size, batch=batch, num_params=sum(p.numel() for p in hf.parameters()),
        input=INPUT_NOTE, first_loss=first_loss, first_call_s=first_s,
        attn_implementation="eager")

  return Case(runner.step, runner.sync, finish)


def release_memory(device) -> None:
  """Frees what a deleted model and its steps held (and, on a GPU, PyTorch's cached blocks, so
  that JAX's pool can grow)."""
  gc.collect()
  if torch.device(device).type == "cuda":
    torch.cuda.empty_cache()


def parity(model: nnx.Module, hf, problem: Problem, device="cpu") -> dict:
  """Loss and ``u``-gradient of both sides at ``u0`` on identical weights (float32)."""
  loss_jax, grad_jax = jax_loss_and_grad(model, problem)
  loss_torch, grad_torch = TorchCraft(hf, problem, device=device).loss_and_grad()
  cos = float(np.vdot(grad_jax, grad_torch) /
              (np.linalg.norm(grad_jax) * np.linalg.norm(grad_torch) + 1e-30))
  rel = float(np.linalg.norm(grad_jax - grad_torch) / (np.linalg.norm(grad_torch) + 1e-30))
  return {"loss_jax": loss_jax, "loss_torch": loss_torch, "grad_cosine": cos,
          "grad_rel_error": rel}


def check_parity(model: nnx.Module, hf, *, jax_device, torch_device, seed: int = 0) -> dict:
  """``parity`` in strict float32 (no TF32 on either side) on a batch of 2, printed."""
  torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
  with jax.default_device(jax_device), jax.default_matmul_precision("float32"):
    check = parity(model, hf, make_problem(2, seed=seed + 1), torch_device)
  print(f"parity (fp32, batch 2, identical weights): loss jaxtag {check['loss_jax']:.6f} / "
        f"PyTorch {check['loss_torch']:.6f}; u-gradient cosine {check['grad_cosine']:.6f}, "
        f"relative error {check['grad_rel_error']:.2e}", flush=True)
  return check
