"""What a plan removes, beside the plan: the global numbering of the prunable units, removed
masks over it, where consumers read the units (where gates go), and the options a plan records.

- ``UnitIndex``: unit u belongs to group ``group_of[u]`` at local index ``local[u]`` (the index
  a Plan keeps), with union-find root ``root[u]``; ``removed_mask(plan)`` and ``plan(removed)``
  convert between plans and boolean [n_units] removed masks; ``consumer_reads()`` lists every
  consumer input that reads units, with the unit of each channel (the masked reference's 0/1
  Mul positions: the gates of scoring and of training are hooked there).
- ``keep_rules``: the legal-count rules of a selection that has no ratio of its own (a FLOPs
  budget, a latency target, training): ``SelectionOptions`` with ratio 0.
- ``plan_options``: the options a plan records (how it was chosen, then the keep rules).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from onnxprune.analysis import Analysis, Group
from onnxprune.analysis.context import ConsumerRef
from onnxprune.plan import Plan
from onnxprune.selection.select import SelectionOptions, align_option, ranking_option


class UnitIndex:
    """One global numbering of the prunable units (of ``group_ids`` only, when given)."""

    def __init__(self, analysis: Analysis, group_ids: Sequence[str] | None = None) -> None:
        self.analysis = analysis
        self.groups: list[Group] = [g for g in analysis.prunable_groups if group_ids is None or g.id in group_ids]
        self.offsets: list[int] = []
        self.unit_of_root = np.full(len(analysis.roots), -1, dtype=np.int64)
        group_of, local, roots = [], [], []
        total = 0
        for gi, g in enumerate(self.groups):
            self.offsets.append(total)
            self.unit_of_root[g.units] = np.arange(total, total + g.size)
            group_of.append(np.full(g.size, gi, dtype=np.int64))
            local.append(np.arange(g.size, dtype=np.int64))
            roots.append(np.asarray(g.units, dtype=np.int64))
            total += g.size
        self.n_units = total
        empty = np.zeros(0, dtype=np.int64)
        self.group_of = np.concatenate(group_of) if group_of else empty
        self.local = np.concatenate(local) if local else empty
        self.root = np.concatenate(roots) if roots else empty

    @property
    def n_groups(self) -> int:
        return len(self.groups)

    @property
    def group_offsets(self) -> dict[str, int]:
        """Group id -> its first global unit index."""
        return {g.id: off for g, off in zip(self.groups, self.offsets)}

    def units_of(self, gi: int) -> np.ndarray:
        return np.arange(self.offsets[gi], self.offsets[gi] + self.groups[gi].size)

    def channel_units(self, elems: np.ndarray) -> np.ndarray:
        """For each channel (element), its global unit index, or -1 where it is no prunable unit."""
        return self.unit_of_root[self.analysis.roots[np.asarray(elems)]]

    def consumer_reads(self) -> Iterator[tuple[ConsumerRef, np.ndarray]]:
        """Every consumer input that reads at least one unit, with each channel's unit (-1: none)."""
        for ref in self.analysis.consumers:
            units = self.channel_units(ref.elems)
            if not (units < 0).all():
                yield ref, units

    def per_group(self, values: np.ndarray) -> dict[str, np.ndarray]:
        """A [n_units] array split into {group id: [size]}."""
        return {g.id: np.asarray(values[self.units_of(gi)]) for gi, g in enumerate(self.groups)}

    def from_groups(self, scores: Mapping[str, np.ndarray], fill: float = 0.0) -> np.ndarray:
        out = np.full(self.n_units, fill, dtype=np.float64)
        for gi, g in enumerate(self.groups):
            if g.id in scores:
                out[self.units_of(gi)] = np.asarray(scores[g.id], dtype=np.float64)
        return out

    # -- kept masks beside the plan -------------------------------------------------------
    def removed_mask(self, plan: Plan) -> np.ndarray:
        """The boolean [n_units] mask of the units ``plan`` removes."""
        removed = np.zeros(self.n_units, dtype=bool)
        for gi, g in enumerate(self.groups):
            if g.id in plan.keep:
                idx = self.units_of(gi)
                removed[idx] = True
                removed[idx[list(plan.keep[g.id])]] = False
        return removed

    def plan(self, removed: np.ndarray, *, criterion: str | None, options: Mapping[str, Any]) -> Plan:
        """The validated plan that removes the units of the boolean [n_units] mask ``removed``."""
        removed = np.asarray(removed, dtype=bool)
        keep, sizes = {}, {}
        for gi, g in enumerate(self.groups):
            idx = self.units_of(gi)
            if removed[idx].any():
                keep[g.id] = tuple(np.flatnonzero(~removed[idx]).tolist())
                sizes[g.id] = g.size
        from onnxprune.analysis.query_heads import repair_keep

        keep = repair_keep(self.analysis, keep)  # a layer keeps a query head of a kept KV head
        plan = Plan(fingerprint=self.analysis.fingerprint, keep=keep, sizes=sizes, criterion=criterion,
                    options=options)
        plan.validate(self.analysis)
        return plan


def keep_rules(*, round_to: int = 1, min_channels: int = 1, max_ratio: float = 1.0, align: int = 1,
               ranking: str = "normalised") -> SelectionOptions:
    """The legal-count rules (``selection.legal_keep_count``) of a selection with no ratio of its
    own: a FLOPs or parameter budget, a latency target, pruning while training."""
    return SelectionOptions(ratio=0.0, round_to=round_to, min_channels=min_channels, max_ratio=max_ratio,
                            align=align, ranking=ranking)


def plan_options(rules: SelectionOptions, head: Mapping[str, Any] | None = None,
                 tail: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The options a plan records: ``head`` (how it was chosen: ratio and mode, budget and
    target, ...), the keep rules (``align`` and ``ranking`` only when not the default, so default
    plans are unchanged), then ``tail``."""
    return {**(head or {}), "round_to": rules.round_to, "min_channels": rules.min_channels,
            "max_ratio": rules.max_ratio, **align_option(rules.align), **ranking_option(rules.ranking),
            **(tail or {})}
