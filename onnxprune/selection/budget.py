"""Global allocation to a budget: keep the highest-scoring units across all groups
such that the model's MACs (FLOPs = 2 x MACs) or parameters fit a target.

Scores are normalised per group (divided by the group's mean) so one global ranking
works across groups. Units are removed in order of normalised score; each group's kept
count is rounded up to ``round_to`` channels and kept within ``min_channels`` /
``max_ratio``; the number of units removed is found by bisection on the exact cost model
(``accounting.CostModel``), so the achieved cost is the largest one that fits.

``align`` (off by default) makes the allocation hardware-aware: kept counts that are not a
multiple of the hardware's channel block are rounded down to one where legal (see
``selection.legal_keep_count``), so no group pays for padded channels it does not keep; the
FLOPs freed that way go, through the same bisection, to the best units elsewhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from onnxprune.analysis.accounting import CostModel
from onnxprune.analysis.blocks import ResidualBlock, block_cost_model, removed_nodes
from onnxprune.analysis import Analysis
from onnxprune.analysis.query_heads import repair_keep
from onnxprune.errors import SelectionError
from onnxprune.plan import Plan
from onnxprune.selection.select import global_order, legal_keep_count
from onnxprune.selection.standardised import STANDARDISED, standardised_order
from onnxprune.units import keep_rules, plan_options


@dataclass(frozen=True)
class Budget:
    """A target for ``metric`` ('flops' or 'params'): a fraction of the original (<= 1) or absolute."""

    metric: str
    target: float

    def __post_init__(self) -> None:
        if self.metric not in ("flops", "params"):
            raise SelectionError(f"budget metric must be 'flops' or 'params', got {self.metric!r}")
        if self.target <= 0:
            raise SelectionError(f"budget target must be positive, got {self.target}")

    def absolute(self, original: int) -> float:
        return self.target * original if self.target <= 1.0 else self.target


@dataclass(frozen=True)
class BudgetResult:
    plan: Plan
    original: int
    target: float
    achieved: int


def select_to_budget(model: onnx.ModelProto, analysis: Analysis, scores: Mapping[str, np.ndarray],
                     budget: Budget, *, round_to: int = 1, min_channels: int = 1, max_ratio: float = 1.0,
                     criterion: str | None = None, align: int = 1, ranking: str = "normalised",
                     max_ratios: Mapping[str, float] | None = None,
                     removed_blocks: Sequence[ResidualBlock] = ()) -> BudgetResult:
    """The plan that keeps the best units and whose cost is the largest that fits the budget
    (kept counts aligned down to multiples of ``align`` channels where legal, when > 1;
    ``ranking``: the global order, see ``selection.global_order``; ``max_ratios``: per-group
    limits, group id -> the largest fraction of its units to remove, on top of ``max_ratio``,
    e.g. from ``sensitivity_limits.ratio_limits``; ``removed_blocks``: residual blocks the
    plan also removes (``analysis.blocks``): their savings count towards the budget and the
    groups inside them are left alone)."""
    standardised = ranking == STANDARDISED  # FLAP's adaptive structure search (selection.standardised)
    options = keep_rules(round_to=round_to, min_channels=min_channels, max_ratio=max_ratio, align=align,
                         ranking="normalised" if standardised else ranking)
    limits = dict(max_ratios or {})
    for gid, r in limits.items():
        if not 0.0 <= r <= 1.0:
            raise SelectionError(f"max ratio of group '{gid}' must be in [0, 1], got {r}")
    full = CostModel(model, analysis)
    costs = block_cost_model(model, analysis, removed_blocks) if removed_blocks else full
    cost = (lambda removed: 2 * costs.macs(removed)) if budget.metric == "flops" else costs.params
    gone = removed_nodes(removed_blocks)
    groups = [g for g in analysis.prunable_groups if g.id in scores and not set(g.producers) <= gone]
    order = (standardised_order(groups, scores, analysis) if standardised
             else global_order(groups, scores, ranking))
    none = np.zeros(0, dtype=np.int64)
    original = 2 * full.macs(none) if budget.metric == "flops" else full.params(none)
    target = budget.absolute(original)

    def plan_for(k: int) -> dict[str, np.ndarray]:
        removed_per_group: dict[str, int] = {}
        for gid, _ in order[:k]:
            removed_per_group[gid] = removed_per_group.get(gid, 0) + 1
        keep = {}
        for g in groups:
            n_keep = legal_keep_count(g, g.size - removed_per_group.get(g.id, 0), options, limits.get(g.id))
            if n_keep < g.size:
                ranked = np.lexsort((np.arange(g.size), -np.asarray(scores[g.id], dtype=np.float64)))
                keep[g.id] = np.sort(ranked[:n_keep])
        repaired = repair_keep(analysis, {gid: tuple(k.tolist()) for gid, k in keep.items()}, scores)  # a layer keeps a query head
        return {gid: np.asarray(k, dtype=np.int64) for gid, k in repaired.items()}

    def removed_units(keep: dict[str, np.ndarray]) -> np.ndarray:
        parts = [np.delete(analysis.group(gid).units, k) for gid, k in keep.items()]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    lo, hi = 0, len(order)  # invariant: cost(plan_for(lo)) > target or lo == 0
    if cost(removed_units(plan_for(hi))) > target:
        floor = cost(removed_units(plan_for(hi)))
        raise SelectionError(
            f"the {budget.metric} budget {target:,.0f} cannot be reached: pruning every prunable group to its "
            f"limit still leaves {floor:,.0f} ({floor / original:.1%} of {original:,.0f})")
    while lo < hi:
        mid = (lo + hi) // 2
        if cost(removed_units(plan_for(mid))) <= target:
            hi = mid
        else:
            lo = mid + 1
    keep = plan_for(lo)
    plan = Plan(fingerprint=analysis.fingerprint, keep={gid: tuple(k.tolist()) for gid, k in keep.items()},
                sizes={gid: analysis.group(gid).size for gid in keep}, criterion=criterion,
                removed_blocks=tuple(b.add for b in removed_blocks),
                options=plan_options(options, {"budget": budget.metric, "target": budget.target},
                                     {**({"max_ratios": limits} if limits else {}),
                                      **({"ranking": STANDARDISED} if standardised else {})} or None))
    plan.validate(analysis)
    return BudgetResult(plan, int(original), float(target), int(cost(removed_units(keep))))

