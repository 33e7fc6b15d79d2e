"""Unit masks during training: every prunable unit's channels are multiplied by its gate
value where consumers read them (the analysis's ConsumerRefs), exactly where the masked
reference inserts its 0/1 Mul. A gate of 0 is therefore exactly the unit's removal, and a
model trained with 0 gates equals, once pruned, the pruned model with the same weights.

Unlike ``onnxprune.scoring.gates`` (per-example gates for scoring), one [n_units] vector
applies to the whole batch; it may be a hard 0/1 mask, a Bernoulli sample (SPP) or a soft,
differentiable mask (learned thresholds).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from onnxprune.analysis import Analysis
from onnxprune.units import UnitIndex


class UnitGates:
    def __init__(self, module, analysis: Analysis, units: UnitIndex) -> None:  # noqa: ANN001 - OnnxModule
        import torch

        self.module, self.units = module, units
        self.values: torch.Tensor | None = None
        self._extended: torch.Tensor | None = None
        reads: dict[tuple[str, int], list[tuple[int, torch.Tensor]]] = defaultdict(list)
        for ref, cu in units.consumer_reads():  # where the masked reference's 0/1 Muls go (onnxprune.units)
            reads[(ref.node, ref.slot)].append((ref.axis, torch.as_tensor(np.where(cu < 0, units.n_units, cu))))
        self._reads = dict(reads)
        for (node, slot), entries in self._reads.items():
            module.set_input_hook(node, slot, self._hook(entries))

    def set(self, values) -> None:  # noqa: ANN001 - torch.Tensor [n_units] or None (all ones)
        import torch

        self.values = values
        if values is None:
            self._extended = None
        else:
            self._extended = torch.cat([values.reshape(-1), values.new_ones(1)])

    def set_mask(self, keep: np.ndarray, device) -> None:  # noqa: ANN001
        import torch

        self.set(torch.as_tensor(np.asarray(keep, dtype=np.float32), device=device))

    def remove(self) -> None:
        for node, slot in self._reads:
            self.module.set_input_hook(node, slot, None)

    def _hook(self, entries):  # noqa: ANN001, ANN202
        cache: dict = {}

        def fn(x):  # noqa: ANN001, ANN202
            ext = self._extended
            if ext is None:
                return x
            for axis, index in entries:
                key = (axis, ext.device)
                if key not in cache:
                    cache[key] = index.to(ext.device)
                per_channel = ext[cache[key]]
                shape = [1] * x.dim()
                shape[axis] = per_channel.shape[0]
                x = x * per_channel.reshape(shape).to(x.dtype)
            return x

        return fn
