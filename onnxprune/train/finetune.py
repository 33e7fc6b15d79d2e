"""Fine-tune an ONNX model's weights in torch and write them back into the same graph."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import onnx

from onnxprune.io.calib_data import CalibrationData
from onnxprune.train.config import TrainConfig, make_config
from onnxprune.train.loop import Trainer

# What ``finetune`` trains with unless told otherwise (``TrainConfig``'s own defaults serve the
# pruning methods), chosen on CNNs cut to 30% of their MACs by l2 magnitude and recovered by
# distillation alone (tests/test_finetune_defaults.py, docs/training.md): batch statistics in
# BatchNorm, a high learning rate made safe by clipping the gradient norm, T = 1.
FINETUNE_DEFAULTS: dict[str, object] = {"epochs": 5.0, "bn_mode": "batch", "temperature": 1.0, "grad_clip": 1.0}
CONV_LR, OTHER_LR = 1e-2, 1e-3  # the default learning rate of convolutional networks / others


@dataclass(frozen=True)
class FinetuneResult:
    model: onnx.ModelProto  # the input graph, unchanged, with the trained weights
    steps: int
    losses: tuple[float, ...]
    config: TrainConfig


def default_lr(model: onnx.ModelProto) -> float:
    """``CONV_LR`` for a network of mostly convolutions (more Conv / ConvTranspose nodes than
    MatMul / Gemm), else ``OTHER_LR``: transformers (a ViT's patch convolution included) and
    MLPs were not tuned here and keep the previous default."""
    ops = [n.op_type for n in model.graph.node]
    convs = sum(op in ("Conv", "ConvTranspose") for op in ops)
    return CONV_LR if convs > sum(op in ("MatMul", "Gemm") for op in ops) else OTHER_LR


def finetune_config(model: onnx.ModelProto, config: TrainConfig | None = None, **options) -> TrainConfig:
    """``config`` with keyword overrides; without ``config``, ``TrainConfig`` with
    ``FINETUNE_DEFAULTS`` and ``default_lr(model)`` under the overrides."""
    if config is None:
        options = {**FINETUNE_DEFAULTS, "lr": default_lr(model), **options}
    return make_config(config, options)


def finetune(model: onnx.ModelProto, data: CalibrationData, *, teacher: onnx.ModelProto | None = None,
             config: TrainConfig | None = None, on_step: Callable[[int, float], None] | None = None,
             trainable: Callable[[str], bool] | None = None, **options) -> FinetuneResult:
    """Train the float weights of ``model`` (pruned or not) and return it with the new weights.

    Distillation from ``teacher`` (an ONNX model with the same inputs and outputs; no labels
    needed), cross-entropy with ``data.labels``, or both (``distill_weight``, ``ce_weight``).
    ``options`` override fields of ``config`` (see ``TrainConfig``; without ``config`` the
    defaults are ``finetune_config``'s): optimizer, lr, epochs or steps,
    batch_size, seed, device, bn_mode, checkpoint / checkpoint_every / resume, progress, ...
    With ``bn_mode='batch'`` BatchNorm normalises with batch statistics while training and its
    stored statistics are re-estimated at the end; with 'running' it stays in inference mode.
    ``on_step(step, loss)`` is called after every step (and after a checkpoint due then).
    """
    cfg = finetune_config(model, config, **options)
    trainer = Trainer(model, data, cfg, teacher=teacher, trainable=trainable, on_step=on_step)
    if cfg.bn_mode == "batch":
        from onnxprune.train.batchnorm import batch_statistics, recalibrate_batchnorm

        with batch_statistics(trainer.module) as count:
            trainer.run()
        if count:
            recalibrate_batchnorm(trainer.module, data.inputs, samples=cfg.bn_samples, seed=cfg.seed,
                                  device=trainer.device)
    else:
        trainer.run()
    return FinetuneResult(trainer.module.write_back(model), trainer.step, tuple(trainer.losses), cfg)
