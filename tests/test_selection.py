"""Selection: ratios per group and global, round_to, min_channels, max_ratio, ignore."""

from __future__ import annotations

import numpy as np
import pytest

from onnxprune.analysis import analyze
from onnxprune.api import plan_by_ratio
from onnxprune.errors import SelectionError
from onnxprune.selection.select import SelectionOptions, select
from tests.graphs import pass_fixture
from tests.test_rules_core import grouped_conv_model


def _kept_channels(analysis, plan, gid):
    g = analysis.group(gid)
    return len(plan.keep.get(gid, range(g.size))) * g.unit_width


@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.5, 0.75])
def test_per_group_ratio(ratio):
    model = pass_fixture()
    analysis = analyze(model)
    plan = plan_by_ratio(model, analysis, ratio=ratio)
    for g in analysis.prunable_groups:
        kept = len(plan.keep.get(g.id, range(g.size)))
        assert kept == max(1, g.size - int(np.floor(g.size * ratio)))


@pytest.mark.parametrize("round_to", [2, 4])
def test_round_to_multiples(round_to):
    model = grouped_conv_model(4)
    analysis = analyze(model)
    plan = plan_by_ratio(model, analysis, ratio=0.6, round_to=round_to)
    for g in analysis.prunable_groups:
        kept = _kept_channels(analysis, plan, g.id)
        assert kept % round_to == 0 or kept == g.channels


def test_round_to_rounds_up_kept_count():
    model = pass_fixture()
    analysis = analyze(model)
    g = max(analysis.prunable_groups, key=lambda g: g.size)  # conv_b: 6 channels
    plan = plan_by_ratio(model, analysis, ratio=0.5, round_to=4)
    assert _kept_channels(analysis, plan, g.id) == 4  # 3 rounded up to 4


def test_min_channels_and_max_ratio():
    model = pass_fixture()
    analysis = analyze(model)
    plan = plan_by_ratio(model, analysis, ratio=0.9, min_channels=2)
    for g in analysis.prunable_groups:
        assert _kept_channels(analysis, plan, g.id) >= min(2, g.channels)
    plan = plan_by_ratio(model, analysis, ratio=0.9, max_ratio=0.5)
    for g in analysis.prunable_groups:
        assert len(plan.keep.get(g.id, range(g.size))) >= int(np.ceil(g.size * 0.5))


def test_lowest_scores_are_removed():
    model = pass_fixture()
    analysis = analyze(model)
    scores = {g.id: np.arange(g.size, dtype=float)[::-1] for g in analysis.prunable_groups}
    plan = select(analysis, scores, SelectionOptions(ratio=0.5))
    for g in analysis.prunable_groups:
        k = len(plan.keep[g.id])
        assert plan.keep[g.id] == tuple(range(k))  # highest scores are the first units


def test_global_mode_removes_the_requested_share_of_channels():
    model = pass_fixture()
    analysis = analyze(model)
    plan = plan_by_ratio(model, analysis, ratio=0.5, mode="global")
    total = sum(g.channels for g in analysis.prunable_groups)
    removed = plan.removed_channels(analysis)
    assert 0 < removed <= 0.5 * total
    assert removed >= 0.5 * total - max(g.unit_width for g in analysis.prunable_groups) * len(
        analysis.prunable_groups)


def test_global_mode_follows_scores_across_groups():
    model = pass_fixture()
    analysis = analyze(model)
    groups = analysis.prunable_groups
    # one unit scores far below its group mean: a budget of one channel removes exactly it
    scores = {g.id: np.ones(g.size) for g in groups}
    low = groups[-1]
    scores[low.id] = np.array([0.01] + [1.0] * (low.size - 1))
    plan = select(analysis, scores, SelectionOptions(ratio=0.1, mode="global"))
    assert plan.removed_channels(analysis) == 1
    assert 0 not in plan.keep.get(low.id, range(low.size))


def test_ignore_keeps_a_node_untouched():
    model = pass_fixture()
    analysis = analyze(model, ignore=["conv_b"])
    assert all("conv_b" not in g.producers for g in analysis.prunable_groups)
    blocked = [b for b in analysis.blocked if "ignored" in b.reason]
    assert blocked and blocked[0].node == "conv_b"
    analysis = analyze(model, ignore=["conv_*"])
    assert not any(set(g.producers) & {"conv_a", "conv_b", "conv_dw"} for g in analysis.prunable_groups)


@pytest.mark.parametrize("kwargs", [dict(ratio=1.0), dict(ratio=-0.1), dict(ratio=0.5, round_to=0),
                                    dict(ratio=0.5, min_channels=0), dict(ratio=0.5, max_ratio=0.0),
                                    dict(ratio=0.5, mode="best")])
def test_invalid_options(kwargs):
    with pytest.raises(SelectionError):
        SelectionOptions(**kwargs)


def test_per_mac_ranking_removes_the_cheapest_loss_per_mac_first():
    """'per-mac' divides raw scores by each unit's MACs (Kwon et al.'s knapsack order): with
    equal scores, units of the costliest group go first; 'normalised' ignores cost."""
    from onnxprune.selection.select import global_order
    from tests.zoo_cache import zoo_path

    from onnxprune.api import load

    analysis = analyze(load(zoo_path("bert")))
    groups = [g for g in analysis.prunable_groups if g.size > 1]
    per_unit = {g.id: float(g.unit_macs.max()) for g in groups}
    assert len(set(per_unit.values())) > 1
    ones = {g.id: np.ones(g.size) for g in groups}
    first = global_order(groups, ones, "per-mac")[0][0]
    assert per_unit[first] == max(per_unit.values())
    scores = {g.id: np.full(g.size, per_unit[g.id]) for g in groups}  # loss proportional to cost
    order = global_order(groups, scores, "per-mac")
    assert [gid for gid, _ in order] == [gid for gid, _ in global_order(groups, ones, "normalised")]
    with pytest.raises(SelectionError, match="ranking"):
        global_order(groups, ones, "by-magic")
    with pytest.raises(SelectionError, match="ranking"):
        SelectionOptions(ratio=0.1, ranking="by-magic")
