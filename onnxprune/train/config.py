"""Training options shared by ``finetune`` and the training-time pruning methods."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from onnxprune.train.errors import TrainingError

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine")
BN_MODES = ("running", "batch")


@dataclass(frozen=True)
class TrainConfig:
    """How to train. ``steps`` wins over ``epochs``; an epoch is ceil(samples / batch_size) steps.

    Losses: ``distill_weight`` x distillation from the teacher (KL with ``temperature`` on
    [batch, classes] outputs, MSE on the others) + ``ce_weight`` x cross-entropy with the
    labels (MSE for float labels). ``None`` weights mean: 1 when a teacher / labels are given.
    """

    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd only
    schedule: str = "cosine"  # of the learning rate over the (recovery) steps
    epochs: float | None = 1.0
    steps: int | None = None
    batch_size: int = 64
    seed: int = 0
    device: str = "cpu"
    temperature: float = 4.0
    distill_weight: float | None = None
    ce_weight: float | None = None
    grad_clip: float | None = None
    # Re-estimate BatchNorm mean/variance (see batchnorm.py) from this many samples before
    # training (finetune) or whenever the pruning methods fix a new mask; None: only in the
    # pruning methods, True/False: always/never.
    recalibrate_bn: bool | None = None
    bn_samples: int = 512
    # BatchNorm while training: "running" normalises with the stored statistics (the graph's
    # inference mode); "batch" with each batch's own, as torch's train mode, and re-estimates
    # the stored ones from ``bn_samples`` samples at the end (batchnorm.batch_statistics).
    bn_mode: str = "running"
    checkpoint: str | os.PathLike[str] | None = None
    checkpoint_every: int = 0  # steps; 0 = only at the end (when ``checkpoint`` is set)
    resume: str | os.PathLike[str] | None = None
    progress: bool = False

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise TrainingError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise TrainingError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if not self.lr > 0:
            raise TrainingError(f"lr must be positive, got {self.lr}")
        if self.batch_size < 1:
            raise TrainingError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.steps is not None and self.steps < 0:
            raise TrainingError(f"steps must be >= 0, got {self.steps}")
        if self.steps is None and (self.epochs is None or self.epochs < 0):
            raise TrainingError(f"give steps or epochs >= 0 (epochs={self.epochs})")
        if self.temperature <= 0:
            raise TrainingError(f"temperature must be positive, got {self.temperature}")
        for name in ("distill_weight", "ce_weight"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise TrainingError(f"{name} must be >= 0, got {value}")
        if self.bn_mode not in BN_MODES:
            raise TrainingError(f"bn_mode must be one of {', '.join(BN_MODES)}, got {self.bn_mode!r}")
        if self.bn_samples < 1:
            raise TrainingError(f"bn_samples must be >= 1, got {self.bn_samples}")
        if self.checkpoint_every < 0:
            raise TrainingError(f"checkpoint_every must be >= 0, got {self.checkpoint_every}")

    def total_steps(self, samples: int) -> int:
        if self.steps is not None:
            return int(self.steps)
        return int(math.ceil(float(self.epochs or 0.0) * math.ceil(samples / self.batch_size)))

    def with_options(self, options: Mapping[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(self)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise TrainingError(f"unknown training option(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        return replace(self, **options) if options else self


def make_config(config: TrainConfig | None, options: Mapping[str, Any]) -> TrainConfig:
    """``config`` (or the defaults) with keyword overrides."""
    return (config or TrainConfig()).with_options(options)
