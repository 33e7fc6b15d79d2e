"""Which original channels survive at a node: the masks that line up tensors and weights of
the original model with those of the pruned one.

Everything comes from the analysis records (``ConsumerRef`` for the input side of a mixing
op, ``ParamRef`` for its output side and for per-channel parameters), evaluated with the
plan's removed units. A node the analysis recorded nothing for keeps all its channels.
"""

from __future__ import annotations

import numpy as np

from onnxprune.analysis import Analysis
from onnxprune.analysis.context import ConsumerRef
from onnxprune.analysis.removal import Removal
from onnxprune.plan import Plan


class ChannelMap:
    """Kept-channel masks of one plan, by node."""

    def __init__(self, analysis: Analysis, plan: Plan) -> None:
        self.removal = Removal(analysis, plan.removed_units(analysis))
        self.consumers: dict[str, ConsumerRef] = {}
        for ref in analysis.consumers:
            self.consumers.setdefault(ref.node, ref)
        self._params: dict[tuple[str, int, str], np.ndarray] = {}
        for p in analysis.params:
            self._params.setdefault((p.node, p.slot, p.role), p.elems)

    def consumer(self, node: str) -> ConsumerRef | None:
        return self.consumers.get(node)

    def input_kept(self, node: str) -> np.ndarray | None:
        """Mask over the original input channels (features) of a mixing node, or None if it mixes none."""
        ref = self.consumers.get(node)
        return None if ref is None else self.removal.kept(ref.elems)

    def loses_inputs(self, node: str) -> bool:
        mask = self.input_kept(node)
        return mask is not None and not bool(mask.all())

    def output_kept(self, node: str, size: int) -> np.ndarray:
        """Mask over the original output channels of a weighted node (all kept if not recorded)."""
        elems = self._params.get((node, 1, "producer"))
        if elems is None or len(elems) != size:
            return np.ones(size, dtype=bool)
        return self.removal.kept(elems)

    def param_kept(self, node: str, slot: int, size: int) -> np.ndarray:
        """Mask over a per-channel parameter (a BatchNorm's scale, mean, ...)."""
        elems = self._params.get((node, slot, "param"))
        if elems is None or len(elems) != size:
            return np.ones(size, dtype=bool)
        return self.removal.kept(elems)
