"""Query heads inside grouped-query attention: units that depend on other units.

Grouped-query attention repeats each key / value head for the query heads that read it
(``repeat_kv``: Unsqueeze, Expand [b, kv, rep, s, d], Reshape [b, kv * rep, s, d]). The
analysis gives every repeated copy a unit of its own (tied with its query head: q_proj rows,
o_proj columns), the *child*, and keeps the KV head (k_proj / v_proj rows) as its *parent*
(the layout rule records a ``repeat_kv`` fix-up per repeat). So a layer has a KV-head group
and a query-head group, with two rules between their units:

- a query head whose KV head is removed goes too (a KV head goes with its query heads);
- a KV head whose query heads are all removed goes too (nothing reads it), unless its group
  is not prunable (a KV cache's heads without ``--allow-interface-change``: it stays, unread
  by attention, still written to the cache).

``close_removed`` applies both to a set of removed units (every plan's ``removed_units``);
``check_plan`` refuses a plan that would remove every query head of a layer that way, and
``repair_keep`` (which every allocation goes through) turns a candidate plan into one that
does not. ``block_parents`` blocks a KV-head group whose query heads cannot go (their group
is not prunable): removing a KV head would remove them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from onnxprune.analysis.context import Fixup
from onnxprune.errors import PlanError

if TYPE_CHECKING:
    from onnxprune.analysis.context import RuleContext
    from onnxprune.analysis.result import Analysis, Group


@dataclass(frozen=True, eq=False)
class RepeatKV(Fixup):
    """A Reshape merging KV heads with their ``rep`` copies along ``axis`` of its output: copy
    ``children[k * rep + j]`` of KV head ``parents[k]``. ``expand_at`` / ``reshape_at``: the
    editable constants (node, slot, flat index) of the Expand's repeat count and of the
    Reshape's merged head count (None where there is none: a -1 entry)."""

    parents: np.ndarray
    children: np.ndarray
    rep: int
    axis: int
    expand_at: tuple[str, int, int] | None
    reshape_at: tuple[str, int, int] | None


def repeats(fixups: list[Fixup]) -> list[RepeatKV]:
    return [f for f in fixups if isinstance(f, RepeatKV)]


def links(analysis: Analysis) -> list[tuple[np.ndarray, np.ndarray]]:
    """(child roots, parent root of each child) per KV repeat, one entry per repeat."""
    return [(analysis.roots[fix.children], analysis.roots[np.repeat(fix.parents, fix.rep)])
            for fix in repeats(analysis.fixups)]


def close_removed(analysis: Analysis, removed: np.ndarray) -> np.ndarray:
    """``removed`` (unit roots) with the query heads of removed KV heads and the KV heads
    left without query heads added."""
    pairs = links(analysis)
    if not pairs:
        return removed
    mask = np.zeros(len(analysis.roots), dtype=bool)
    mask[removed] = True
    for children, parents in pairs:  # a KV head goes with its query heads
        mask[children[mask[parents]]] = True
    fixed = _fixed_units(analysis)
    for children, parents in pairs:  # a KV head that no kept query head reads goes
        for p in np.unique(parents).tolist():
            if p not in fixed and mask[children[parents == p]].all():
                mask[p] = True
    return np.flatnonzero(mask).astype(np.int64)


def _fixed_units(analysis: Analysis) -> set[int]:
    """Units of groups that are not prunable (they stay whatever the plan)."""
    return {r for g in analysis.groups if not g.prunable for r in g.units.tolist()}


def check_plan(analysis: Analysis, removed: np.ndarray) -> None:
    """Refuse a plan (its closed removed units) that leaves a layer without query heads."""
    mask = np.zeros(len(analysis.roots), dtype=bool)
    mask[removed] = True
    for fix, (children, _) in zip(repeats(analysis.fixups), links(analysis)):
        if mask[children].all():
            raise PlanError(f"the plan removes every query head read through '{fix.node}': it keeps query heads "
                            "only of KV heads it removes (a KV head goes with its query heads)")


def repair_keep(analysis: Analysis, keep: Mapping[str, tuple[int, ...]],
                scores: Mapping[str, np.ndarray] | None = None) -> dict[str, tuple[int, ...]]:
    """Per-group kept unit indices made realizable: wherever the closed plan (``close_removed``)
    leaves a repeat without a query head, keep one more query unit (the one needing the fewest
    removed KV heads back, then the best-scored, then the first) and the KV heads it reads.
    Every allocation builds its plans through this (``selection``, ``scoring.similarity``,
    ``units.UnitIndex.plan``)."""
    out = {gid: tuple(sorted(int(i) for i in k)) for gid, k in keep.items()}
    pairs = links(analysis)
    if not pairs:
        return out
    position = {}  # root -> (group id, unit index)
    for g in analysis.groups:
        for i, r in enumerate(g.units.tolist()):
            position[r] = (g.id, i)
    parents_of: dict[int, set[int]] = defaultdict(set)  # query unit -> the KV heads it reads
    for children, parents in pairs:
        for c, p in zip(children.tolist(), parents.tolist()):
            parents_of[c].add(p)
    for _ in range(len(pairs) + 1):
        planned, mask = np.zeros(len(analysis.roots), dtype=bool), np.zeros(len(analysis.roots), dtype=bool)
        planned[_plan_removed(analysis, out)] = True  # KV heads the plan removes (others follow their query heads)
        mask[close_removed(analysis, np.flatnonzero(planned))] = True
        broken = next((children for children, _ in pairs if mask[children].all()), None)
        if broken is None:
            return out

        def rank(c: int, planned: np.ndarray = planned) -> tuple[int, float, int]:
            gid, i = position.get(c, (None, -1))
            score = float(scores[gid][i]) if scores is not None and gid in scores else 0.0
            return sum(bool(planned[p]) for p in parents_of[c]), -score, i

        child = min(dict.fromkeys(broken.tolist()), key=rank)
        for root in (child, *(p for p in parents_of[child] if planned[p])):
            gid, i = position.get(root, (None, -1))
            if gid in out:
                out[gid] = tuple(sorted({*out[gid], i}))
    raise PlanError("cannot keep a query head in every attention layer (the query-head and KV-head groups "
                    "depend on each other in a way this repair does not resolve)")


def _plan_removed(analysis: Analysis, keep: Mapping[str, tuple[int, ...]]) -> np.ndarray:
    """Roots of the units ``keep`` removes, before ``close_removed``."""
    parts = []
    for gid, k in keep.items():
        units = analysis.group(gid).units
        mask = np.ones(len(units), dtype=bool)
        mask[list(k)] = False
        parts.append(units[mask])
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def block_parents(groups: list[Group], roots: np.ndarray, fixups: list[Fixup]) -> list[Group]:
    """``groups`` with each KV-head group blocked whose query heads cannot all go with it
    (removing a KV head removes its query heads): when the query-head group is not prunable
    (an o_proj cut only in whole blocks, an ignored node, one unit, ...) or the query heads are
    in no group. The reason names the query-head group's."""
    group_of = {r: gi for gi, g in enumerate(groups) for r in g.units.tolist()}
    extra: dict[int, list[str]] = defaultdict(list)
    for fix in repeats(fixups):
        child_groups = list(dict.fromkeys(group_of.get(int(c)) for c in roots[fix.children].tolist()))
        reasons = []
        for cg in child_groups:
            if cg is None:
                reasons.append(f"the query heads read through '{fix.node}' are in no channel group: "
                               "removing a KV head would remove them")
            elif not groups[cg].prunable:
                why = groups[cg].why_not[0] if groups[cg].why_not else "not prunable"
                reasons.append(f"removing a KV head removes its query heads (group '{groups[cg].id}'), "
                               f"which cannot be pruned: {why}")
        for pg in dict.fromkeys(group_of.get(int(p)) for p in roots[fix.parents].tolist()):
            if pg is None or pg in child_groups or not groups[pg].prunable:
                continue
            extra[pg] += [r for r in reasons if r not in extra[pg]]
    return [replace(g, reasons=tuple(extra[gi][:4])) if extra.get(gi) else g for gi, g in enumerate(groups)]


def tie_parents(ctx: RuleContext) -> None:
    """Repeats whose copies are the same units (the key and value repeats of one layer, tied by
    the query heads reading both) repeat the same KV heads: k_proj and v_proj rows go together."""
    by_children: dict[tuple[int, ...], list[np.ndarray]] = defaultdict(list)
    found = repeats(ctx.fixups)
    roots = ctx.uf.roots() if found else None
    for fix in found:
        by_children[tuple(roots[fix.children].tolist())].append(fix.parents)
    for parents in by_children.values():
        for other in parents[1:]:
            if len(other) == len(parents[0]):
                ctx.union(parents[0], other)


def group_parents(analysis: Analysis) -> dict[str, str]:
    """Query-head group id -> the id of the KV-head group its heads depend on."""
    group_of = {}
    for g in analysis.groups:
        for r in g.units.tolist():
            group_of[r] = g.id
    out = {}
    for children, parents in links(analysis):
        child, parent = group_of.get(int(children[0])), group_of.get(int(parents[0]))
        if child is not None and parent is not None:
            out[child] = parent
    return out

