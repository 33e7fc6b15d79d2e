"""Budgets: achieved FLOPs / parameters land within one rounding step of the target."""

from __future__ import annotations

import numpy as np
import pytest

from onnxprune.accounting import CostModel
from onnxprune.analysis import analyze
from onnxprune.api import apply_plan, load, plan_to_budget
from onnxprune.budget import Budget
from onnxprune.errors import SelectionError
from tests.zoo_cache import zoo_path


def _step_cost(model, analysis, plan, metric, round_to):
    """The most one group's rounding step (round_to channels kept back) can cost."""
    costs = CostModel(model, analysis)
    cost = (lambda r: 2 * costs.macs(r)) if metric == "flops" else costs.params
    removed = plan.removed_units(analysis)
    base = cost(removed)
    worst = 0
    for gid, keep in plan.keep.items():
        g = analysis.group(gid)
        dropped = np.setdiff1d(np.arange(g.size), keep)
        step = max(1, round_to // g.unit_width)
        back = g.units[dropped[:step]]
        worst = max(worst, cost(np.setdiff1d(removed, back)) - base)
    return worst


@pytest.mark.parametrize("name", ["resnet18", "mobilenetv2"])
@pytest.mark.parametrize("metric", ["flops", "params"])
@pytest.mark.parametrize("target", [0.75, 0.5, 0.33])
@pytest.mark.parametrize("round_to", [1, 8])
def test_budget_lands_within_one_rounding_step(name, metric, target, round_to):
    model = load(zoo_path(name))
    analysis = analyze(model)
    reached = plan_to_budget(model, analysis, Budget(metric, target), round_to=round_to)
    result = apply_plan(model, analysis, reached.plan)
    achieved = 2 * result.after.macs if metric == "flops" else result.after.params
    assert achieved == reached.achieved  # the cost model is exact
    assert achieved <= reached.target
    assert reached.target - achieved <= _step_cost(model, analysis, reached.plan, metric, round_to)
    for gid, keep in reached.plan.keep.items():
        g = analysis.group(gid)
        assert (len(keep) * g.unit_width) % round_to == 0 or len(keep) == g.size


def test_absolute_target_and_unreachable_budget():
    model = load(zoo_path("resnet18"))
    analysis = analyze(model)
    original = 2 * analysis.total_macs
    reached = plan_to_budget(model, analysis, Budget("flops", original * 0.6))
    assert reached.achieved <= original * 0.6
    with pytest.raises(SelectionError, match="cannot be reached"):
        plan_to_budget(model, analysis, Budget("flops", 0.001))
