"""Per-group sensitivity, measured, and the allocation it calibrates.

Gradient scores (Taylor, Fisher) rank the units *within* a group well, but their scale
across groups misleads on real networks: the Fisher estimate of the loss increase is
additive over units, while removing a quarter of a group that no skip connection bypasses
(the expansion channels of a strided inverted-residual block, a residual stream, the stem)
hurts the outputs tens of times more than the same Fisher mass removed from a block with an
identity shortcut (measured on EfficientNet-Lite0, ``benchmarks/efficientnet_lite.py``).
And with ``align`` a small group's count is rounded down to the channel block (32 -> 16 for
the stem on AVX-512) unless a limit forbids it.

So the damage is measured, per group: the ``ratios`` lowest-scoring units of that group
alone are zeroed where their consumers read them (the masked reference of
``onnxprune.rewrite.masking``, with the 0/1 masks fed at run time so one onnxruntime session
serves every group) on a few calibration samples, and the damage is the relative squared
error of the graph outputs against the unmasked model's (``measure``; ``Sensitivity.at``
interpolates a power law). ``calibrated_scores`` replaces each group's scores by the damage
each unit adds when the group is cut in the criterion's order: the global per-MAC order of
these (``ranking='per-mac'``) is the greedy knapsack that removes the least measured damage
per MAC saved. ``ratio_limits`` turns the same curves into per-group maximum ratios
(``budget.select_to_budget(max_ratios=...)``) at a damage tolerance; ``allocate`` does it
all, the tolerance a ``slack`` times the smallest one that still meets the budget.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from onnxprune.analysis import Analysis
from onnxprune.selection.budget import Budget, BudgetResult, select_to_budget
from onnxprune.io.calib_data import CalibrationData
from onnxprune.errors import SelectionError
from onnxprune.graph import GraphIndex, static_batch
from onnxprune.rewrite.masking import insert_before
from onnxprune.runtime.session import session

MASK_PREFIX = "__sensitivity_mask"
# removal ratios measured per group. The point at 3/4 matters: a budget of 0.75 of the MACs
# cuts the hidden channels of EfficientNet-Lite0's skip blocks by up to two thirds, past 1/2,
# where the curve through 1/4 and 1/2 alone is extrapolated (measured with the plain command,
# 96 evaluation crops: top-1 agreement 0.573 -> 0.656, logit cosine 0.703 -> 0.782)
RATIOS = (0.25, 0.5, 0.75)


@dataclass(frozen=True)
class Sensitivity:
    """Measured damage per group: relative squared output error when the group's ``ratios``
    lowest-scoring units are removed (the group alone), one value per ratio."""

    ratios: tuple[float, ...]
    damage: Mapping[str, tuple[float, ...]]
    samples: int

    def at(self, gid: str, ratio: float, exponent: float | None = None) -> float:
        """The damage of removing ``ratio`` of group ``gid``: a continuous power law through the
        damage measured at the largest ratio (the most reliable, and the one closest to large
        cuts), each segment's exponent the log-log slope between neighbouring measured points
        (clipped to [1, 4], so the curve is convex and errs high below a cliff; 2 with one
        point), the last segment's extended beyond; or, given ``exponent``, that power."""
        rs, ds = self.ratios, self.damage[gid]
        if ratio <= 0:
            return 0.0
        n = len(rs)
        value, anchor = ds[-1], rs[-1]
        for i in range(n - 2, -2, -1):  # segments from the last down; i = -1: below the first point
            p = exponent if exponent is not None else _slope(rs, ds, max(i, 0))
            if i < 0 or ratio >= rs[i] or exponent is not None:
                return float(value * (ratio / anchor) ** p)
            value, anchor = value * (rs[i] / anchor) ** p, rs[i]
        return float(value)


def _slope(rs: Sequence[float], ds: Sequence[float], i: int) -> float:
    """The log-log slope of the damage between measured points i and i + 1, in [1, 4] (2 when
    there is one point; 4 when the smaller damage is 0)."""
    if len(rs) < 2 or ds[i + 1] <= 0:
        return 2.0
    if ds[i] <= 0:
        return 4.0
    return float(np.clip(np.log(ds[i + 1] / ds[i]) / np.log(rs[i + 1] / rs[i]), 1.0, 4.0))


def measure(model: onnx.ModelProto, analysis: Analysis, scores: Mapping[str, np.ndarray], calib: CalibrationData,
            *, ratios: Sequence[float] = RATIOS, samples: int = 16, batch_size: int = 16,
            provider: str = "CPUExecutionProvider") -> Sensitivity:
    """Measure every scored prunable group's damage at each of ``ratios`` on the first
    ``samples`` calibration samples (one onnxruntime session, one run per group, ratio and batch)."""
    ratios = tuple(sorted(float(r) for r in ratios))
    if not ratios or not all(0.0 < r < 1.0 for r in ratios):
        raise SelectionError(f"sensitivity ratios must be in (0, 1), got {list(ratios)}")
    if samples < 1:
        raise SelectionError(f"sensitivity samples must be >= 1, got {samples}")
    groups = [g for g in analysis.prunable_groups if g.id in scores]
    masked, masks = _mask_inputs(model, analysis)
    sess = session(masked, optimize=True, provider=provider)
    outputs = [o.name for o in model.graph.output]
    data = calib.take(samples)
    batch = static_batch(model) or batch_size
    ones = {name: np.ones(shape, np.float32) for name, shape, _ in masks}
    reference = [sess.run(outputs, {**feeds, **ones}) for feeds, _ in data.batches(batch)]
    damage = {}
    for g in groups:
        order = np.lexsort((np.arange(g.size), -np.asarray(scores[g.id], dtype=np.float64)))
        values = []
        for ratio in ratios:
            removed = np.asarray(g.units)[order[g.size - max(1, math.floor(g.size * ratio)):]]
            feeds_masks = dict(ones)
            for name, shape, roots in masks:
                hit = np.isin(roots, removed)
                if hit.any():
                    feeds_masks[name] = (~hit).astype(np.float32).reshape(shape)
            values.append(_relative_error(sess, outputs, data, batch, feeds_masks, reference))
        damage[g.id] = tuple(values)
    return Sensitivity(ratios, damage, len(data))


def _relative_error(sess, outputs: list[str], data: CalibrationData, batch: int,
                    masks: Mapping[str, np.ndarray], reference: list[list[np.ndarray]]) -> float:
    """Mean over the float graph outputs of sum (y - y0)^2 / sum (y0 - mean y0)^2."""
    err = np.zeros(len(outputs))
    var = np.zeros(len(outputs))
    for (feeds, _), ref in zip(data.batches(batch), reference):
        out = sess.run(outputs, {**feeds, **masks})
        for i, (y, y0) in enumerate(zip(out, ref)):
            if np.issubdtype(np.asarray(y0).dtype, np.floating):
                y, y0 = np.asarray(y, np.float64), np.asarray(y0, np.float64)
                err[i] += float(((y - y0) ** 2).sum())
                var[i] += float(((y0 - y0.mean()) ** 2).sum())
    rel = [e / v for e, v in zip(err, var) if v > 0]
    return float(np.mean(rel)) if rel else 0.0


def _mask_inputs(model: onnx.ModelProto, analysis: Analysis
                 ) -> tuple[onnx.ModelProto, list[tuple[str, list[int], np.ndarray]]]:
    """A copy of ``model`` with a ``Mul`` by a 0/1 graph input before every consumer of
    prunable channels; per mask: (input name, its shape, the unit of each channel)."""
    prunable = np.concatenate([np.asarray(g.units) for g in analysis.prunable_groups] or [np.zeros(0, np.int64)])
    out = onnx.ModelProto()
    out.CopyFrom(model)
    index = GraphIndex(out)
    inserts: dict[str, list[onnx.NodeProto]] = {}
    masks = []
    for k, ref in enumerate(analysis.consumers):
        roots = analysis.roots[ref.elems]
        if not np.isin(roots, prunable).any():
            continue
        node = index.nodes[ref.node]
        src = node.input[ref.slot]
        shape = [1] * len(index.shape(src) or ())
        if not shape:
            continue
        shape[ref.axis] = len(roots)
        name = f"{MASK_PREFIX}{k}"
        out.graph.input.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, shape))
        masked = f"{src}{MASK_PREFIX}{k}"
        mul_in = name
        if (index.elem_type(src) or onnx.TensorProto.FLOAT) != onnx.TensorProto.FLOAT:
            mul_in = f"{name}__cast"
            inserts.setdefault(node.name, []).append(helper.make_node(
                "Cast", [name], [mul_in], to=index.elem_type(src), name=f"{name}__cast_node"))
        inserts.setdefault(node.name, []).append(helper.make_node("Mul", [src, mul_in], [masked], name=f"{name}__mul"))
        node.input[ref.slot] = masked
        masks.append((name, shape, roots))
    insert_before(out.graph, inserts)
    return out, masks


def calibrated_scores(analysis: Analysis, scores: Mapping[str, np.ndarray], sensitivity: Sensitivity,
                      exponent: float | None = None) -> dict[str, np.ndarray]:
    """Scores whose sum over a group's k lowest-scoring units is the damage of removing them,
    ``sensitivity.at(group, k / size)``: the unit removed k-th is worth the damage it adds.
    Within a group the order stays the criterion's; across groups the per-MAC order of these
    scores is the greedy knapsack on measured damage. Groups not measured keep their scores."""
    out = {}
    for gid, s in scores.items():
        if gid not in sensitivity.damage:
            out[gid] = np.asarray(s, dtype=np.float64)
            continue
        n = len(s)
        curve = np.array([sensitivity.at(gid, k / n, exponent) for k in range(n + 1)])
        marginal = np.maximum(np.diff(curve), 0.0)  # marginal[k]: the (k+1)-th unit removed
        order = np.lexsort((np.arange(n), -np.asarray(s, dtype=np.float64)))  # best first
        calibrated = np.empty(n)
        calibrated[order[::-1]] = marginal  # the lowest-scoring unit is removed first
        # strictly decreasing along the criterion's order, so the order within the group holds
        calibrated[order] = np.maximum.accumulate(calibrated[order][::-1])[::-1] + 1e-15 * np.arange(n, 0, -1)
        out[gid] = calibrated
    return out


def ratio_limits(sensitivity: Sensitivity, tolerance: float, *, exponent: float | None = None,
                 cap: float = 1.0) -> dict[str, float]:
    """Per-group maximum ratios: the largest ratio (to 1/256) whose estimated damage
    (``Sensitivity.at``) stays within ``tolerance``, at most ``cap``."""
    if tolerance <= 0:
        raise SelectionError(f"tolerance must be positive, got {tolerance}")
    grid = np.linspace(0.0, 1.0, 257)
    limits = {}
    for gid in sensitivity.damage:
        ok = [r for r in grid if sensitivity.at(gid, r, exponent) <= tolerance]
        limits[gid] = float(min(cap, max(ok)))
    return limits


def summary(sensitivity: Sensitivity) -> list[tuple[str, tuple[float, ...]]]:
    """(group, damages) from the most to the least sensitive (at the largest measured ratio)."""
    return sorted(sensitivity.damage.items(), key=lambda e: -e[1][-1])


def aligned_limits(analysis: Analysis, limits: Mapping[str, float], align: int) -> dict[str, float]:
    """``limits`` tightened so that each group's fewest kept channels is a multiple of
    ``align`` (or the whole group): then every count the allocation can choose rounds down to
    the channel block, and no group is left off the block (padded, and off onnxruntime's
    blocked-layout path, which made a model at 0.75 of the MACs run 0.86x)."""
    if align <= 1:
        return dict(limits)
    out = {}
    for gid, limit in limits.items():
        g = analysis.group(gid)
        step = align // math.gcd(align, g.unit_width)  # units per block
        floor = max(1, math.ceil(g.size * (1.0 - limit)))
        floor = min(g.size, math.ceil(floor / step) * step)
        out[gid] = 1.0 - floor / g.size
    return out


def feasible_tolerance(sensitivity: Sensitivity, fits: Callable[[Mapping[str, float]], bool], *,
                       exponent: float | None = None, cap: float = 1.0, lo: float = 1e-5, hi: float = 10.0,
                       steps: int = 24, align: tuple[Analysis, int] | None = None) -> float:
    """The smallest tolerance (geometric bisection between ``lo`` and ``hi``) whose
    ``ratio_limits`` (``aligned_limits`` with ``align``: (analysis, block)) still let the
    budget be met (``fits(limits)``); ``hi`` if none does."""

    def limits(tolerance: float) -> dict[str, float]:
        raw = ratio_limits(sensitivity, tolerance, exponent=exponent, cap=cap)
        return aligned_limits(align[0], raw, align[1]) if align else raw

    if not fits(limits(hi)):
        return hi
    for _ in range(steps):
        mid = math.sqrt(lo * hi)
        if fits(limits(mid)):
            hi = mid
        else:
            lo = mid
    return hi


def allocate(model: onnx.ModelProto, analysis: Analysis, scores: Mapping[str, np.ndarray], calib: CalibrationData,
             budget: Budget, *, ratios: Sequence[float] = RATIOS, samples: int = 16, slack: float = 2.0,
             round_to: int = 1, min_channels: int = 1, max_ratio: float = 1.0, align: int = 1,
             criterion: str | None = None) -> tuple[BudgetResult, Sensitivity, dict[str, float]]:
    """The sensitivity-limited allocation in one call: measure (``measure``), rescale the
    scores (``calibrated_scores``), limit every group at ``slack`` x the smallest tolerance
    that still meets the budget (``feasible_tolerance``, ``ratio_limits``: slack 1 prunes
    every group to the same estimated damage, larger lets the knapsack trade more), then the
    per-MAC knapsack (``budget.select_to_budget``). Returns (result, sensitivity, limits)."""
    if slack < 1.0:
        raise SelectionError(f"sensitivity slack must be >= 1, got {slack}")
    sens = measure(model, analysis, scores, calib, ratios=ratios, samples=samples)
    calibrated = calibrated_scores(analysis, scores, sens)
    options = {"round_to": round_to, "min_channels": min_channels, "max_ratio": max_ratio, "align": align,
               "ranking": "per-mac", "criterion": criterion}

    def fits(limits: Mapping[str, float]) -> bool:
        try:
            select_to_budget(model, analysis, calibrated, budget, max_ratios=limits, **options)
        except SelectionError:
            return False
        return True

    tolerance = feasible_tolerance(sens, fits, align=(analysis, align)) * slack
    limits = aligned_limits(analysis, ratio_limits(sens, tolerance), align)
    if not fits(limits):  # slack x the tolerance always fits unless none does: no limits then
        limits = {}
    return select_to_budget(model, analysis, calibrated, budget, max_ratios=limits, **options), sens, limits
