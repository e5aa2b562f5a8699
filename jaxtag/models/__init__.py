"""Flax NNX audio classifiers on raw 16 kHz waveforms, and their pure apply_fn.

Every model maps ``(batch, num_samples)`` float32 audio to ``(logits,
intermediates)`` through a fixed, differentiable front end (``features``)
and a trainable body (``classify``). Build them by name with `create_model`;
turn them into pure functions with `split_model` and `PureModel`.
Checkpoints of the Hugging Face AST port load with
``jaxtag.models.hf_import.load_hf_ast`` (imported on demand).
"""

from jaxtag.models.ast import AST, AST_SIZES
from jaxtag.models.cnn import LogMelCNN
from jaxtag.models.layers import mfcc
from jaxtag.models.lstm import MFCCLSTM
from jaxtag.models.m5 import M5
from jaxtag.models.registry import (PureModel, SplitModel, available_models, create_model,
                                    has_active_dropout, merge_model, split_model)
from jaxtag.models.transformer import FrameTransformer

__all__ = [
    "AST", "AST_SIZES", "FrameTransformer", "LogMelCNN", "M5", "MFCCLSTM",
    "PureModel", "SplitModel", "available_models", "create_model", "has_active_dropout",
    "merge_model", "mfcc", "split_model",
]
