"""What every training-time pruning method shares: the analysis, the unit numbering, costs
and budget, a Trainer with unit gates on its module, and the finish: fine-tuned weights
written into the original graph, the Plan, and the rewrite by ``onnxprune.api.apply_plan``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from onnxprune.analysis import Analysis, analyze
from onnxprune.api import PruneResult, apply_plan
from onnxprune.io.calib_data import CalibrationData
from onnxprune.errors import InternalError, ModelError
from onnxprune.plan import Plan
from onnxprune.train.config import TrainConfig, make_config
from onnxprune.train.costs import UnitCosts
from onnxprune.train.gates import UnitGates
from onnxprune.train.loop import Trainer
from onnxprune.train.units import UnitIndex

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainPruneResult:
    """A pruned, trained model and how it was reached."""

    model: onnx.ModelProto  # pruned by apply_plan, with the trained weights
    plan: Plan
    method: str
    original_flops: int
    target_flops: float
    achieved_flops: int  # predicted from the plan (accounting.CostModel), <= target_flops
    steps: int  # training steps run
    finetuned: onnx.ModelProto | None  # the unpruned graph with the trained weights (None for one-shot)
    prune: PruneResult
    history: tuple[dict[str, Any], ...] = ()
    notes: tuple[str, ...] = ()


def prunable_units(analysis: Analysis) -> UnitIndex:
    units = UnitIndex(analysis)
    if units.n_units == 0:
        raise ModelError("the model has no prunable channel group: nothing to prune")
    return units


class PruningSession:
    def __init__(self, model: onnx.ModelProto, data: CalibrationData, *, method: str, target_flops: float,
                 teacher: onnx.ModelProto | None, config: TrainConfig | None, options: dict[str, Any],
                 analysis: Analysis | None = None, round_to: int = 1, min_channels: int = 1,
                 max_ratio: float = 1.0, on_step: Callable[[int, float], None] | None = None,
                 description: str | None = None) -> None:
        self.model, self.method = model, method
        self.analysis = analysis if analysis is not None else analyze(model)
        self.units = prunable_units(self.analysis)
        self.costs = UnitCosts(model, self.analysis, self.units, round_to=round_to, min_channels=min_channels,
                               max_ratio=max_ratio)
        self.target = self.costs.target(target_flops)
        self.target_option = float(target_flops)
        self.config = make_config(config, options)
        self.trainer = Trainer(model, data, self.config, teacher=teacher if teacher is not None else model,
                               method=method, on_step=on_step, description=description or method)
        self.gates = UnitGates(self.trainer.module, self.analysis, self.units)
        self.notes: list[str] = []
        self.history: list[dict[str, Any]] = []

    @property
    def device(self):  # noqa: ANN201
        return self.trainer.device

    def note(self, text: str) -> None:
        log.warning("%s: %s", self.method, text)
        self.notes.append(text)

    def set_removed(self, removed: np.ndarray, *, recalibrate: bool = False) -> None:
        """Hard gates: removed units 0, all others 1; with ``recalibrate``, BatchNorm statistics
        re-estimated under the new mask (unless ``config.recalibrate_bn`` is False)."""
        self.gates.set_mask(~np.asarray(removed, dtype=bool), self.device)
        if recalibrate:
            self.trainer.recalibrate(default=True)

    def finish(self, removed: np.ndarray, *, criterion: str, options: dict[str, Any] | None = None
               ) -> TrainPruneResult:
        removed = np.asarray(removed, dtype=bool)
        achieved = self.costs.flops(removed)
        if achieved > self.target:
            raise InternalError(f"{self.method}: {achieved:,} FLOPs exceed the target {self.target:,.0f}")
        plan = self.costs.plan(removed, criterion=criterion, options={
            "method": self.method, "budget": "flops", "target": self.target_option, **(options or {})})
        finetuned = self.trainer.module.write_back(self.model)
        result = apply_plan(finetuned, self.analysis, plan)
        return TrainPruneResult(model=result.model, plan=plan, method=self.method,
                                original_flops=int(self.costs.original), target_flops=float(self.target),
                                achieved_flops=int(achieved), steps=self.trainer.step, finetuned=finetuned,
                                prune=result, history=tuple(self.history), notes=tuple(self.notes))
