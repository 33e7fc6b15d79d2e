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

``order_scores`` (off by default) separates how many units a group keeps from which ones:
the allocation fixes each group's kept count by ``scores``, then ``reorder_within_groups``
keeps, in each group that has an order score, the top units by that score instead (the
recipe's ``unit_order = "fluctuation"``: FLAP's fluctuation inside a decoder's FFNs, kept
counts by Taylor per MAC; docs/llm.md, *Toward 1.3x*). Only groups whose units all cost the
same are re-picked, and a re-pick that would change the plan's cost or legality is dropped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import onnx

from onnxprune.analysis.accounting import CostModel
from onnxprune.analysis.blocks import ResidualBlock, block_cost_model, removed_nodes
from onnxprune.analysis import Analysis
from onnxprune.analysis.query_heads import links, repair_keep
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
                     removed_blocks: Sequence[ResidualBlock] = (),
                     order_scores: Mapping[str, np.ndarray] | None = None) -> BudgetResult:
    """The plan that keeps the best units and whose cost is the largest that fits the budget
    (kept counts aligned down to multiples of ``align`` channels where legal, when > 1;
    ``ranking``: the global order, see ``selection.global_order``; ``max_ratios``: per-group
    limits, group id -> the largest fraction of its units to remove, on top of ``max_ratio``,
    e.g. from ``sensitivity_limits.ratio_limits``; ``removed_blocks``: residual blocks the
    plan also removes (``analysis.blocks``): their savings count towards the budget and the
    groups inside them are left alone; ``order_scores``: group id -> a second score per unit
    that picks which units each of those groups keeps once its count is fixed, see
    ``reorder_within_groups``)."""
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
    if order_scores:
        plan = Plan(fingerprint=analysis.fingerprint, keep={gid: tuple(k.tolist()) for gid, k in keep.items()},
                    sizes={gid: analysis.group(gid).size for gid in keep})
        picked = reorder_within_groups(plan, analysis, order_scores, costs=costs)
        keep = {gid: np.asarray(k, dtype=np.int64) for gid, k in picked.keep.items()}
    plan = Plan(fingerprint=analysis.fingerprint, keep={gid: tuple(k.tolist()) for gid, k in keep.items()},
                sizes={gid: analysis.group(gid).size for gid in keep}, criterion=criterion,
                removed_blocks=tuple(b.add for b in removed_blocks),
                options=plan_options(options, {"budget": budget.metric, "target": budget.target},
                                     {**({"max_ratios": limits} if limits else {}),
                                      **({"ranking": STANDARDISED} if standardised else {})} or None))
    plan.validate(analysis)
    return BudgetResult(plan, int(original), float(target), int(cost(removed_units(keep))))



def neuron_groups(analysis: Analysis) -> tuple[str, ...]:
    """Ids of the prunable groups whose units are single channels outside attention's query and
    KV heads (``analysis.query_heads``): a decoder's FFN neurons (gate / up rows, down columns),
    a CNN's channels; not heads (a unit of head_dim channels), whose fluctuation says nothing
    of the query heads a KV head serves."""
    heads = {int(r) for children, parents in links(analysis) for r in (*children.tolist(), *parents.tolist())}
    return tuple(g.id for g in analysis.prunable_groups
                 if g.unit_width == 1 and not heads & set(g.units.tolist()))


def reorder_within_groups(plan: Plan, analysis: Analysis, order_scores: Mapping[str, np.ndarray], *,
                          costs: CostModel | None = None) -> Plan:
    """``plan`` with the units kept inside each group of ``order_scores`` re-picked as the top-k
    by that score (k: the plan's kept count; ties: the lower index), the kept counts unchanged.

    A group keeps its original pick where its units do not all cost the same (parameters and
    MACs per unit), where the plan records merges for it (``similarity``), or, for query and KV
    heads, where the re-pick would make the plan need ``repair_keep`` (a layer's last query
    head) or change what else goes with it (``close_removed``: a KV head no kept query head
    reads). With ``costs``, the re-picked plan must cost what the original does (parameters
    and MACs, ``CostModel``); where it does not, each group that changes it keeps its
    original pick."""
    heads = {int(r) for children, parents in links(analysis) for r in (*children.tolist(), *parents.tolist())}
    keep = {gid: tuple(sorted(int(i) for i in k)) for gid, k in plan.keep.items()}
    changed: list[str] = []
    closed = _removed_per_group(analysis, plan, keep) if heads else {}
    for gid, kept in plan.keep.items():
        if gid not in order_scores or gid in plan.merges:
            continue
        g = analysis.group(gid)
        score = np.asarray(order_scores[gid], dtype=np.float64)
        if score.shape != (g.size,):
            raise SelectionError(f"order scores of group '{gid}' have shape {score.shape}, the group has {g.size} units")
        if np.ptp(g.unit_params) or np.ptp(g.unit_macs):  # units of unequal cost: the count alone fixes no cost
            continue
        ranked = np.lexsort((np.arange(g.size), -score))
        picked = tuple(sorted(ranked[:len(kept)].tolist()))
        if picked == keep[gid]:
            continue
        candidate = {**keep, gid: picked}
        if heads & set(g.units.tolist()) and (repair_keep(analysis, candidate) != candidate
                                              or _removed_per_group(analysis, plan, candidate) != closed):
            continue  # a layer left without a query head, or a KV head going with its last: the original stays
        keep, changed = candidate, [*changed, gid]
    if costs is not None and changed:
        keep = _same_cost(analysis, plan, keep, changed, costs)
    return replace(plan, keep=keep)


def _removed_per_group(analysis: Analysis, plan: Plan, keep: Mapping[str, tuple[int, ...]]) -> dict[str, int]:
    """Group id -> how many of its units ``keep`` removes, query heads of removed KV heads and
    KV heads without query heads included (``Plan.removed_units``)."""
    removed = set(replace(plan, keep=keep).removed_units(analysis).tolist())
    return {g.id: n for g in analysis.groups if (n := sum(int(r) in removed for r in g.units.tolist()))}


def _same_cost(analysis: Analysis, plan: Plan, keep: dict[str, tuple[int, ...]], changed: list[str],
               costs: CostModel) -> dict[str, tuple[int, ...]]:
    """``keep`` with each re-picked group in ``changed`` that alters the cost of ``plan`` (its
    parameters or MACs) back at its original pick."""
    def cost(k: Mapping[str, tuple[int, ...]]) -> tuple[int, int]:
        removed = replace(plan, keep=k).removed_units(analysis)
        return costs.params(removed), costs.macs(removed)

    original = {gid: tuple(sorted(int(i) for i in k)) for gid, k in plan.keep.items()}
    want = cost(original)
    if cost(keep) == want:
        return keep
    out = dict(original)
    for gid in changed:
        if cost({**original, gid: keep[gid]}) == want:
            out[gid] = keep[gid]
    return out if cost(out) == want else original
