"""One-shot pruning to a FLOPs budget, then distillation fine-tuning of the pruned model.

The baseline the training-time methods are compared with: score once (default
taylor-fo on the calibration data), allocate globally to the budget
(``onnxprune.selection.budget.select_to_budget``), rewrite with ``apply_plan``, then ``finetune`` the
pruned (smaller) model against the original as teacher, after re-estimating its
BatchNorm statistics (``recalibrate_bn``). ``steps=0`` skips the training (and the
re-estimation: the result is the plain one-shot pruned model).
"""

from __future__ import annotations

from collections.abc import Callable

import onnx

from onnxprune.analysis import Analysis, analyze
from onnxprune.api import apply_plan, plan_to_budget, score_channels
from onnxprune.selection.budget import Budget
from onnxprune.io.calib_data import CalibrationData
from onnxprune.scoring.criteria import needs_data
from onnxprune.train.config import TrainConfig, make_config
from onnxprune.train.finetune import finetune
from onnxprune.train.iterative import score_subset
from onnxprune.train.session import TrainPruneResult, prunable_units
from onnxprune.train.costs import UnitCosts


def oneshot_prune(model: onnx.ModelProto, data: CalibrationData, *, target_flops: float,
                  criterion: str = "taylor-fo", steps: int | None = None, score_samples: int | None = 256,
                  score_batch_size: int = 64, teacher: onnx.ModelProto | None = None,
                  analysis: Analysis | None = None, round_to: int = 1, min_channels: int = 1,
                  max_ratio: float = 1.0, config: TrainConfig | None = None,
                  on_step: Callable[[int, float], None] | None = None, **options) -> TrainPruneResult:
    if steps is not None:
        options["steps"] = steps
    cfg = make_config(config, options)
    analysis = analysis if analysis is not None else analyze(model)
    costs = UnitCosts(model, analysis, prunable_units(analysis), round_to=round_to, min_channels=min_channels,
                      max_ratio=max_ratio)
    target = costs.target(target_flops)
    calib_options = {} if not needs_data(criterion) else dict(
        calib=score_subset(data, score_samples, cfg.seed), batch_size=score_batch_size, device=cfg.device,
        seed=cfg.seed)
    scores = score_channels(model, analysis, criterion, **calib_options)
    reached = plan_to_budget(model, analysis, Budget("flops", target_flops), criterion=criterion, scores=scores,
                             round_to=round_to, min_channels=min_channels, max_ratio=max_ratio)
    pruned = apply_plan(model, analysis, reached.plan)
    out, steps_run = pruned.model, 0
    if cfg.total_steps(len(data)) > 0:
        if cfg.recalibrate_bn is None:  # the pruned network's BatchNorm inputs have shifted
            cfg = cfg.with_options({"recalibrate_bn": True})
        tuned = finetune(pruned.model, data, teacher=teacher if teacher is not None else model, config=cfg,
                         on_step=on_step)
        out, steps_run = tuned.model, tuned.steps
    return TrainPruneResult(model=out, plan=reached.plan, method="oneshot", original_flops=int(costs.original),
                            target_flops=float(target), achieved_flops=int(reached.achieved), steps=steps_run,
                            finetuned=None, prune=pruned)
