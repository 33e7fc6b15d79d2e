"""Sensitivity-limited allocation: the run-time masks equal the masked reference, calibrated
scores reproduce the measured damage curve, limits hold in the budget's plan."""

from __future__ import annotations

import numpy as np
import pytest

from onnxprune.selection import sensitivity_limits as sl
from onnxprune.analysis import analyze
from onnxprune.api import load, score_channels
from onnxprune.selection.budget import Budget, select_to_budget
from onnxprune.io.calib_data import CalibrationData
from onnxprune.errors import SelectionError
from onnxprune.rewrite.masking import masked_model
from onnxprune.plan import Plan
from onnxprune.runtime.session import session
from tests.zoo_cache import zoo_path


@pytest.fixture(scope="module")
def case():
    model = load(zoo_path("mobilenetv2"))
    analysis = analyze(model)
    x = np.random.default_rng(0).standard_normal((8, 3, 64, 64)).astype(np.float32)
    calib = CalibrationData({model.graph.input[0].name: x})
    scores = score_channels(model, analysis, "l2")
    return model, analysis, calib, scores


def test_runtime_masks_equal_the_masked_reference(case) -> None:
    model, analysis, calib, _ = case
    masked, masks = sl._mask_inputs(model, analysis)
    name = model.graph.input[0].name
    x = calib.inputs[name][:1]  # the zoo export's batch is static
    rng = np.random.default_rng(1)
    keep = {g.id: tuple(sorted(rng.choice(g.size, size=max(1, g.size // 2), replace=False).tolist()))
            for g in analysis.prunable_groups[:3]}
    plan = Plan(fingerprint=analysis.fingerprint, keep=keep, sizes={g: analysis.group(g).size for g in keep})
    removed = plan.removed_units(analysis)
    feeds = {n: (~np.isin(roots, removed)).astype(np.float32).reshape(shape) for n, shape, roots in masks}
    ones = {n: np.ones(shape, np.float32) for n, shape, _ in masks}
    got = session(masked).run(None, {name: x, **feeds})[0]
    want = session(masked_model(model, analysis, plan)).run(None, {name: x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    unmasked = session(masked).run(None, {name: x, **ones})[0]
    np.testing.assert_allclose(unmasked, session(model).run(None, {name: x})[0], rtol=1e-5, atol=1e-5)
    assert not np.allclose(got, unmasked)


def test_measure_and_calibrated_scores_follow_the_damage_curve(case) -> None:
    model, analysis, calib, scores = case
    sens = sl.measure(model, analysis, scores, calib, ratios=(0.25, 0.5), samples=4)
    assert set(sens.damage) == {g.id for g in analysis.prunable_groups if g.id in scores}
    assert all(len(d) == 2 and min(d) >= 0 for d in sens.damage.values())
    assert any(d[1] > 0 for d in sens.damage.values())
    calibrated = sl.calibrated_scores(analysis, scores, sens)
    for gid, s in scores.items():
        g = analysis.group(gid)
        c = calibrated[gid]
        # the criterion's order within the group is kept
        assert list(np.lexsort((np.arange(g.size), -c))) == list(np.lexsort((np.arange(g.size), -s)))
        low = np.sort(c)
        for k in (g.size // 4, g.size // 2):
            assert low[:k].sum() == pytest.approx(sens.at(gid, k / g.size), rel=1e-6, abs=1e-12)


def test_ratio_limits_grow_with_the_tolerance_and_hold_in_the_plan(case) -> None:
    model, analysis, _, scores = case
    sens = sl.Sensitivity((0.25, 0.5), {gid: (0.01 * (i + 1), 0.04 * (i + 1)) for i, gid in enumerate(scores)}, 4)
    tight, loose = sl.ratio_limits(sens, 0.005), sl.ratio_limits(sens, 0.05)
    assert all(tight[g] <= loose[g] for g in tight) and any(tight[g] < loose[g] for g in tight)
    assert sl.ratio_limits(sens, 1e6, cap=0.6) == {g: 0.6 for g in scores}
    limits = {gid: 0.2 for gid in scores}
    result = select_to_budget(model, analysis, scores, Budget("flops", 0.9), max_ratios=limits)
    for gid, keep in result.plan.keep.items():
        g = analysis.group(gid)
        assert g.size - len(keep) <= 0.2 * g.size
    assert result.plan.options["max_ratios"] == limits
    with pytest.raises(SelectionError, match="cannot be reached"):
        select_to_budget(model, analysis, scores, Budget("flops", 0.5), max_ratios=limits)
    with pytest.raises(SelectionError, match="max ratio of group"):
        select_to_budget(model, analysis, scores, Budget("flops", 0.9), max_ratios={next(iter(scores)): 1.5})


def test_allocate_meets_the_budget_within_its_limits(case) -> None:
    model, analysis, calib, scores = case
    result, sens, limits = sl.allocate(model, analysis, scores, calib, Budget("flops", 0.7), samples=4)
    assert result.achieved <= 0.7 * result.original
    assert limits and set(limits) <= set(sens.damage)
    for gid, keep in result.plan.keep.items():
        g = analysis.group(gid)
        assert g.size - len(keep) <= limits[gid] * g.size + 1e-9
    with pytest.raises(SelectionError, match="slack"):
        sl.allocate(model, analysis, scores, calib, Budget("flops", 0.7), slack=0.5)


def test_aligned_limits_leave_every_count_on_the_channel_block(case) -> None:
    model, analysis, _, scores = case
    limits = {gid: 0.3 for gid in scores}
    aligned = sl.aligned_limits(analysis, limits, 8)
    assert sl.aligned_limits(analysis, limits, 1) == limits
    for gid, limit in aligned.items():
        g = analysis.group(gid)
        floor = round(g.size * (1 - limit))
        assert limit <= 0.3 + 1e-12 and (floor % 8 == 0 or floor == g.size)
    result = select_to_budget(model, analysis, scores, Budget("flops", 0.85), max_ratios=aligned, align=8)
    for gid, keep in result.plan.keep.items():
        assert len(keep) % 8 == 0 or len(keep) == analysis.group(gid).size
