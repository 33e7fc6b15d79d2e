"""FLOPs of any set of removed units, the legal removal counts (round_to, min_channels,
max_ratio, as ``onnxprune.selection.select``), the budget's reachability, a differentiable
("soft") FLOPs count for masks in [0, 1], and the Plan of a removed set.

Removed sets are boolean [n_units] masks over ``UnitIndex``; FLOPs = 2 x MACs of
``onnxprune.analysis.accounting.CostModel`` (exact for Conv, ConvTranspose, Gemm and MatMul).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx

from onnxprune.analysis.accounting import WEIGHT_SLOT, CostModel
from onnxprune.analysis import Analysis
from onnxprune.selection.budget import Budget
from onnxprune.errors import SelectionError
from onnxprune.plan import Plan
from onnxprune.selection.select import legal_keep_count
from onnxprune.units import UnitIndex, keep_rules, plan_options


class UnitCosts:
    def __init__(self, model: onnx.ModelProto, analysis: Analysis, units: UnitIndex, *, round_to: int = 1,
                 min_channels: int = 1, max_ratio: float = 1.0) -> None:
        self.analysis, self.units = analysis, units
        self.options = keep_rules(round_to=round_to, min_channels=min_channels, max_ratio=max_ratio)
        self._costs = CostModel(model, analysis)
        self.original = self.flops(np.zeros(units.n_units, dtype=bool))
        refs: dict[tuple[str, int], list[np.ndarray]] = defaultdict(list)
        for ref in analysis.params:
            refs[(ref.node, ref.slot)].append(analysis.roots[ref.elems])
        self._soft_terms = []  # (macs, [unit index per channel of each tracked weight axis])
        for node, macs in analysis.node_macs.items():
            axes = [units.unit_of_root[r] for r in refs.get((node, WEIGHT_SLOT), [])]
            axes = [np.where(a < 0, units.n_units, a) for a in axes if (a >= 0).any()]
            if macs and axes:
                self._soft_terms.append((float(macs), axes))
        self._fixed_macs = sum(float(m) for n, m in analysis.node_macs.items() if m) - sum(
            m for m, _ in self._soft_terms)

    # -- exact costs ---------------------------------------------------------------------
    def flops(self, removed: np.ndarray) -> int:
        return 2 * self._costs.macs(self.units.root[np.asarray(removed, dtype=bool)])

    def allowed(self, gi: int, n_removed: int) -> int:
        """The most units group ``gi`` may lose when ``n_removed`` are asked for (legal counts only)."""
        g = self.units.groups[gi]
        return g.size - legal_keep_count(g, g.size - n_removed, self.options)

    def max_removable(self, gi: int) -> int:
        return self.allowed(gi, self.units.groups[gi].size)

    def floor(self) -> int:
        """FLOPs with every group pruned to its limit (costs depend only on counts per group)."""
        removed = np.zeros(self.units.n_units, dtype=bool)
        for gi in range(self.units.n_groups):
            removed[self.units.units_of(gi)[: self.max_removable(gi)]] = True
        return self.flops(removed)

    def target(self, target_flops: float) -> float:
        """The absolute FLOPs target (a fraction <= 1 of the original, or a count); refused when unreachable."""
        budget = Budget("flops", target_flops)
        target = budget.absolute(self.original)
        floor = self.floor()
        if floor > target:
            raise SelectionError(
                f"the flops budget {target:,.0f} cannot be reached: pruning every prunable group to its limit "
                f"still leaves {floor:,.0f} ({floor / max(1, self.original):.1%} of {self.original:,.0f})")
        return target

    def legal(self, removed: np.ndarray, priority: np.ndarray) -> np.ndarray:
        """``removed`` cut back to legal counts per group, giving back the units with the highest ``priority``."""
        out = np.asarray(removed, dtype=bool).copy()
        for gi in range(self.units.n_groups):
            idx = self.units.units_of(gi)
            gone = idx[out[idx]]
            allowed = self.allowed(gi, len(gone))
            if allowed < len(gone):
                order = gone[np.lexsort((gone, -priority[gone]))]  # highest priority first
                out[order[: len(gone) - allowed]] = False
        return out

    def lowest(self, counts: Mapping[int, int], saliency: np.ndarray) -> np.ndarray:
        """The removed set taking ``counts[gi]`` lowest-``saliency`` units of each group."""
        removed = np.zeros(self.units.n_units, dtype=bool)
        for gi, n in counts.items():
            idx = self.units.units_of(gi)
            order = idx[np.lexsort((idx, saliency[idx]))]
            removed[order[:n]] = True
        return removed

    # -- differentiable cost -------------------------------------------------------------
    def soft_flops(self, keep):  # noqa: ANN001, ANN201 - torch.Tensor [n_units] in [0, 1] -> scalar tensor
        """FLOPs when unit u is kept with weight keep[u] (exact for 0/1 masks)."""
        import torch

        ext = torch.cat([keep.reshape(-1), keep.new_ones(1)])
        total = keep.new_tensor(self._fixed_macs)
        for macs, axes in self._soft_terms:
            frac = keep.new_ones(())
            for a in axes:
                frac = frac * ext[torch.as_tensor(a, device=keep.device)].mean()
            total = total + macs * frac
        return 2 * total

    # -- plan --------------------------------------------------------------------------------
    def plan(self, removed: np.ndarray, *, criterion: str, options: Mapping[str, Any] | None = None) -> Plan:
        """The plan removing ``removed`` (its options: the keep rules, then ``options``)."""
        return self.units.plan(removed, criterion=criterion, options=plan_options(self.options, tail=options))
