"""Training: typed configs, pure train/eval steps, keyed augmentation, the loop, checkpoints.

    from jaxtag import train
    from jaxtag.train import infer
    result = train.train(train.TrainConfig(model="cnn"), train_data=ds, key=key, workdir=wd)
    trained = train.restore_for_inference(wd)   # model, params, class names, sample rate
    epoch_2 = train.restore_step(wd, train.checkpoint_steps(wd)[1])   # a kept checkpoint
    logits = infer.map_padded(jitted_fn, waveforms, batch_size=128)   # one compilation for N clips

Orbax and tqdm are imported only when a checkpoint is written or a loop runs, and the loop
itself (with the grain input pipeline behind it) only when one of its names is first used, so
that code needing only the steps or the augmentation (e.g. taggant crafting) does not pull grain.
"""

from jaxtag.train.augment import AugmentConfig
from jaxtag.train.checkpoint import (ModelInfo, TrainedModel, checkpoint_steps, load_trained,
                                     read_model_info, restore_for_inference, restore_step)
from jaxtag.train.optim import OptimConfig, make_optimizer, make_schedule
from jaxtag.train.state import (ModelSpec, StepSignature, TrainState,
                                abstract_train_state, create_train_state, jit_eval_step,
                                jit_train_step, step_signature)
from jaxtag.train.steps import cross_entropy, eval_step, forward, train_step

__all__ = [
    "AugmentConfig", "ModelInfo", "ModelSpec", "OptimConfig", "StepSignature",
    "TrainConfig", "TrainResult", "TrainState", "TrainedModel", "abstract_train_state",
    "checkpoint_steps", "create_train_state", "cross_entropy", "eval_step", "evaluate", "forward", "jit_eval_step",
    "jit_train_step", "load_trained", "make_optimizer", "make_schedule", "read_model_info",
    "restore_for_inference", "restore_step", "step_signature", "train", "train_step",
]

_LAZY_LOOP = ("TrainConfig", "TrainResult", "evaluate", "train")


def __getattr__(name):
  if name in _LAZY_LOOP:
    from jaxtag.train import loop
    return getattr(loop, name)
  raise AttributeError(f"module 'jaxtag.train' has no attribute {name!r}")
