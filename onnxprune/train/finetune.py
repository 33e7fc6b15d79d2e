"""Fine-tune an ONNX model's weights in torch and write them back into the same graph."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import onnx

from onnxprune.calib.data import CalibrationData
from onnxprune.train.config import TrainConfig, make_config
from onnxprune.train.loop import Trainer


@dataclass(frozen=True)
class FinetuneResult:
    model: onnx.ModelProto  # the input graph, unchanged, with the trained weights
    steps: int
    losses: tuple[float, ...]
    config: TrainConfig


def finetune(model: onnx.ModelProto, data: CalibrationData, *, teacher: onnx.ModelProto | None = None,
             config: TrainConfig | None = None, on_step: Callable[[int, float], None] | None = None,
             trainable: Callable[[str], bool] | None = None, **options) -> FinetuneResult:
    """Train the float weights of ``model`` (pruned or not) and return it with the new weights.

    Distillation from ``teacher`` (an ONNX model with the same inputs and outputs; no labels
    needed), cross-entropy with ``data.labels``, or both (``distill_weight``, ``ce_weight``).
    ``options`` override fields of ``config`` (see ``TrainConfig``): optimizer, lr, epochs or
    steps, batch_size, seed, device, checkpoint / checkpoint_every / resume, progress, ...
    BatchNorm stays in inference mode: running statistics are fixed, scale and shift train.
    ``on_step(step, loss)`` is called after every step (and after a checkpoint due then).
    """
    cfg = make_config(config, options)
    trainer = Trainer(model, data, cfg, teacher=teacher, trainable=trainable, on_step=on_step)
    trainer.run()
    return FinetuneResult(trainer.module.write_back(model), trainer.step, tuple(trainer.losses), cfg)
