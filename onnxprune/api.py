"""The public pipeline: load -> analyze -> score -> select -> rewrite -> save.

Each step is a function of plain data; only ``apply_plan`` edits a graph, and only
through the passes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import onnx

from typing import TYPE_CHECKING

from onnxprune.analysis import Analysis, analyze
from onnxprune.analysis.rules.quant import analysis_index
from onnxprune.selection.budget import Budget, BudgetResult, select_to_budget
from onnxprune.scoring.criteria import Scores, get_criterion
from onnxprune.analysis.flops import Cost, model_cost
from onnxprune.errors import ScoringError
from onnxprune.io.modelio import check_basic, fingerprint, load_model
from onnxprune.analysis.removal import Removal
from onnxprune.rewrite import default_pipeline, run_passes
from onnxprune.plan import Plan
from onnxprune.prepare.normalize import prepare, set_input_shapes
from onnxprune.selection.select import SelectionOptions, select

if TYPE_CHECKING:
    from onnxprune.io.calib_data import CalibrationData

log = logging.getLogger(__name__)


def load(path: str | os.PathLike[str], *, input_shapes: Mapping[str, Sequence[int | str]] | None = None,
         mapped: bool = False, runtime_check: bool = True) -> onnx.ModelProto:
    """Load, check and normalise a model for pruning (see ``onnxprune.prepare.normalize``).

    ``mapped`` leaves the weights of a single-file model in the memory-mapped file (only
    the structure is parsed; see ``modelio.load_model``): the fastest and leanest way
    through analyze, scoring, apply_plan, recovery and save_model, which read and write such
    a model directly (``runtime.session`` hands its weights to onnxruntime from the file).
    Call ``modelio.materialize`` on it before handing it to other tools.
    ``runtime_check``: refuse a model onnxruntime cannot load, with its reason
    (``modelio.check_runtime``; skipped when onnxruntime is not installed).
    """
    from onnxprune.io.modelio import check_prunable, check_runtime, check_weight_shapes

    model = load_model(path, check=False, mapped=mapped)
    set_input_shapes(model, input_shapes or {}, str(path))
    _sort_nodes(model)
    check_basic(model, path)
    check_prunable(model, path)
    if runtime_check:
        check_runtime(model, path, path)
    prepare(model)
    check_weight_shapes(model, path)  # what onnxruntime would refuse at run time, on the inferred shapes
    return model


def _sort_nodes(model: onnx.ModelProto) -> None:
    """Put nodes in topological order: onnxruntime runs graphs whose nodes are listed out of
    order (its float16 converter with keep_io_types appends the boundary Casts after their
    readers), onnx's checker refuses them. A cycle or an input nothing produces is left for
    the checker to name."""
    from onnxprune.rewrite.sort_topologically import SortTopologicallyPass

    try:
        SortTopologicallyPass().call(model)
    except (ValueError, KeyError):
        pass


def score_channels(model: onnx.ModelProto, analysis: Analysis, criterion: str = "l2", *,
                   calib: CalibrationData | None = None, **calib_options) -> Scores:
    """Scores per prunable group's units (higher = keep) by a registered criterion
    (``onnxprune.scoring.criteria``): data-free (l1, l2, bn-scale, random, similarity) or, with
    calibration data, data-driven (see ``onnxprune.scoring.calibrated``)."""
    found = get_criterion(criterion)
    if not found.needs_data:
        return found.score(analysis_index(model), analysis)  # QDQ weights scored dequantised
    if calib is None:
        raise ScoringError(f"criterion '{criterion}' needs calibration data (--calib)")
    from onnxprune.scoring.calibrated import calibration_scores

    return calibration_scores(model, analysis, calib, criterion, **calib_options)


def plan_by_ratio(model: onnx.ModelProto, analysis: Analysis, *, ratio: float, criterion: str = "l2",
                  scores: Scores | None = None, mode: str = "per-group", round_to: int = 1, min_channels: int = 1,
                  max_ratio: float = 1.0, align: int = 1, ranking: str = "normalised") -> Plan:
    """Keep the best (1 - ratio) units per group or globally, by ``scores`` or a data-free criterion.

    ``similarity`` per group also records Srinivas & Babu merges in the plan (recovery).
    ``align``: hardware channel block (``selection.legal_keep_count``; 1: off).
    ``ranking``: the global order (``selection.global_order``), for ``mode='global'``."""
    options = SelectionOptions(ratio=ratio, mode=mode, round_to=round_to, min_channels=min_channels,
                               max_ratio=max_ratio, align=align, ranking=ranking)
    if criterion == "similarity" and scores is None and mode == "per-group" and max_ratio == 1.0 and align == 1:
        from onnxprune.scoring.similarity import similarity_plan

        return similarity_plan(model, analysis, ratio=ratio, merge=True, round_to=round_to,
                               min_channels=min_channels)[0]
    scores = scores if scores is not None else score_channels(model, analysis, criterion)
    return select(analysis, scores, options, criterion=criterion)


def plan_to_budget(model: onnx.ModelProto, analysis: Analysis, budget: Budget, *, criterion: str = "l2",
                   scores: Scores | None = None, round_to: int = 1, min_channels: int = 1,
                   max_ratio: float = 1.0, align: int = 1, ranking: str = "normalised") -> BudgetResult:
    """Keep the best units globally within a FLOPs / parameters budget (``align``: hardware
    channel block, kept counts aligned down to its multiples where legal; 1: off;
    ``ranking``: 'normalised' or 'per-mac', see ``selection.global_order``)."""
    scores = scores if scores is not None else score_channels(model, analysis, criterion)
    return select_to_budget(model, analysis, scores, budget, round_to=round_to, min_channels=min_channels,
                            max_ratio=max_ratio, criterion=criterion, align=align, ranking=ranking)


@dataclass(frozen=True)
class PruneResult:
    model: onnx.ModelProto
    plan: Plan
    before: Cost
    after: Cost
    history: tuple[tuple[str, bool], ...]


def apply_plan(model: onnx.ModelProto, analysis: Analysis, plan: Plan, *, debug: bool = False,
               inplace: bool = False) -> PruneResult:
    """Validate a plan against the analysed model and rewrite a copy (or the model itself)."""
    plan.validate(analysis)
    if fingerprint(model) == analysis.fingerprint:  # the analysed model: its cost is known
        before = Cost(analysis.total_params, sum(analysis.node_macs.values()))
    else:
        before = model_cost(model)
    if not inplace:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        model = copy
    removal = Removal(analysis, plan.removed_units(analysis))
    model, history = run_passes(default_pipeline(plan), model, removal, debug=debug)
    return PruneResult(model, plan, before, model_cost(model), tuple(history))


def prune(model: onnx.ModelProto, *, ratio: float | None = None, plan: Plan | None = None,
          criterion: str = "l2", ignore: Sequence[str] = (), debug: bool = False, **select_options) -> PruneResult:
    """One call: analyse a prepared model, plan (or replay ``plan``) and rewrite a copy."""
    analysis = analyze(model, ignore=ignore)
    if plan is None:
        if ratio is None:
            raise ValueError("give either ratio or plan")
        plan = plan_by_ratio(model, analysis, ratio=ratio, criterion=criterion, **select_options)
    return apply_plan(model, analysis, plan, debug=debug)
