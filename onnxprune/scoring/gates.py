"""Channel gates in the torch execution of a model.

A gate multiplies a unit's channels where consumers read them (the analysis's
ConsumerRefs): gate 0 is exactly the unit's removal (the masked reference), so the
gradient of the loss with respect to a gate is the first-order change of loss when
the unit goes. Each (consumer, unit) pair is one gate *entry*; entries of a unit are
summed for the unit's shared gate (Molchanov 2019: one gate across a residual group).
Gates are per example ([batch, entries]) so one backward pass yields per-example
gradients for the second-order (Fisher) estimate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from onnxprune.analysis import Analysis
from onnxprune.units import UnitIndex

if TYPE_CHECKING:
    import torch


@dataclass
class GateLayout:
    """Where each gate entry sits: entry -> (global unit index), per consumer the channel -> entry map."""

    unit_offsets: dict[str, int]  # group id -> first global unit index
    n_units: int
    entry_unit: np.ndarray  # [E] global unit index of each entry
    consumers: list[tuple[str, int, int, np.ndarray]]  # (node, slot, axis, channel -> entry or -1)
    positions: np.ndarray  # [E] positions each entry's channels span per example (set during the first pass)


def gate_layout(analysis: Analysis, group_ids: list[str] | None = None) -> GateLayout:
    """The gate entries of the prunable units (of ``group_ids`` only, when given), numbered as
    ``onnxprune.units.UnitIndex`` numbers them, at the consumer reads it lists."""
    index = UnitIndex(analysis, group_ids)
    entry_unit: list[int] = []
    consumers = []
    for ref, units in index.consumer_reads():
        uniq = np.unique(units[units >= 0])
        first = len(entry_unit)
        entry_unit.extend(uniq.tolist())
        lookup = {int(u): first + i for i, u in enumerate(uniq)}
        channel_entry = np.array([lookup.get(int(u), -1) for u in units], dtype=np.int64)
        consumers.append((ref.node, ref.slot, ref.axis, channel_entry))
    e = len(entry_unit)
    return GateLayout(index.group_offsets, index.n_units, np.array(entry_unit, dtype=np.int64), consumers,
                      np.zeros(e))


class Gates:
    """Installs per-example gates on an OnnxModule for one batch at a time."""

    def __init__(self, module, layout: GateLayout) -> None:  # noqa: ANN001 - OnnxModule (torch optional)
        import torch

        self.module, self.layout = module, layout
        self.values: torch.Tensor | None = None
        self.masked_units: np.ndarray | None = None  # for the oracle: units whose gate is 0
        self.record_stats = False  # accumulate per-entry activation statistics
        e = len(layout.entry_unit)
        self.act_sum = torch.zeros(e + 1, dtype=torch.float64)
        self.zero_sum = torch.zeros(e + 1, dtype=torch.float64)
        self.example_count = torch.zeros(e + 1, dtype=torch.float64)
        self._index = [torch.as_tensor(np.where(c < 0, len(layout.entry_unit), c)) for *_, c in layout.consumers]
        for k, (node, slot, axis, _) in enumerate(layout.consumers):
            module.set_input_hook(node, slot, self._hook(k, axis))

    def remove(self) -> None:
        for node, slot, _, _ in self.layout.consumers:
            self.module.set_input_hook(node, slot, None)

    def new_batch(self, batch: int, device: torch.device, requires_grad: bool = True) -> torch.Tensor:
        import torch

        values = torch.ones(batch, len(self.layout.entry_unit), dtype=torch.float32, device=device)
        if self.masked_units is not None:
            values[:, np.isin(self.layout.entry_unit, self.masked_units)] = 0.0
        self.values = values.requires_grad_(requires_grad)
        return self.values

    def _hook(self, k: int, axis: int):  # noqa: ANN202
        import torch

        def fn(x: torch.Tensor) -> torch.Tensor:
            g = self.values
            assert g is not None, "call new_batch() before running the module"
            ones = torch.ones(g.shape[0], 1, dtype=g.dtype, device=g.device)
            per_channel = torch.cat([g, ones], dim=1)[:, self._index[k].to(g.device)]  # [B, C]
            if x.shape[0] != g.shape[0] or axis == 0:
                per_channel = per_channel.mean(0, keepdim=True)
            shape = [per_channel.shape[0]] + [1] * (x.dim() - 1)
            shape[axis] = per_channel.shape[1]
            if self.layout.positions[self._first_entry(k)] == 0:
                self._record_positions(k, x, axis)
            if self.record_stats:
                self._record_stats(k, x.detach(), axis)
            return x * per_channel.reshape(shape).to(x.dtype)

        return fn

    def _record_stats(self, k: int, x: torch.Tensor, axis: int) -> None:
        """Per channel: mean activation and fraction of zeros, summed over examples."""
        import torch

        moved = x.movedim(axis, -1).reshape(-1, x.shape[axis]).double() if x.dim() > 1 else x.double()[:, None]
        examples = x.shape[0] if axis != 0 else 1
        mean = moved.mean(0) * examples
        zeros = (moved == 0).double().mean(0) * examples
        idx = self._index[k]
        self.act_sum.index_add_(0, idx, mean.cpu())
        self.zero_sum.index_add_(0, idx, zeros.cpu())
        self.example_count.index_add_(0, idx, torch.full_like(mean, float(examples)).cpu())

    def _first_entry(self, k: int) -> int:
        c = self.layout.consumers[k][3]
        return int(c[c >= 0][0])

    def _record_positions(self, k: int, x: torch.Tensor, axis: int) -> None:
        """Positions per channel per example (H*W for a feature map; 1 for a dense input)."""
        per_example = x[0].numel() if x.dim() > 1 else 1
        per_channel = per_example // max(1, x.shape[axis])
        c = self.layout.consumers[k][3]
        counts = np.bincount(c[c >= 0], minlength=len(self.layout.entry_unit))
        self.layout.positions = np.maximum(self.layout.positions, counts * per_channel)
