"""One global numbering of the prunable units: unit u belongs to group ``group_of[u]`` at
local index ``local[u]`` (the index a Plan keeps), with union-find root ``root[u]``."""

from __future__ import annotations

import numpy as np

from onnxprune.analysis import Analysis, Group


class UnitIndex:
    def __init__(self, analysis: Analysis) -> None:
        self.analysis = analysis
        self.groups: list[Group] = analysis.prunable_groups
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

    def units_of(self, gi: int) -> np.ndarray:
        return np.arange(self.offsets[gi], self.offsets[gi] + self.groups[gi].size)

    def channel_units(self, elems: np.ndarray) -> np.ndarray:
        """For each channel (element), its global unit index, or -1 where it is no prunable unit."""
        return self.unit_of_root[self.analysis.roots[np.asarray(elems)]]

    def per_group(self, values: np.ndarray) -> dict[str, np.ndarray]:
        """A [n_units] array split into {group id: [size]}."""
        return {g.id: np.asarray(values[self.units_of(gi)]) for gi, g in enumerate(self.groups)}

    def from_groups(self, scores: dict[str, np.ndarray], fill: float = 0.0) -> np.ndarray:
        out = np.full(self.n_units, fill, dtype=np.float64)
        for gi, g in enumerate(self.groups):
            if g.id in scores:
                out[self.units_of(gi)] = np.asarray(scores[g.id], dtype=np.float64)
        return out
