"""What a plan will cost, computed from the analysis alone (no rewrite).

Parameters: every initializer's parameters (``flops.parameter_count``: float weights,
quantized codes, MatMulNBits' K x N) with its tracked axes cut to their kept counts (a
shared weight sliced two ways counts once per distinct slice, as the rewrite copies it;
a QDQ weight's codes are cut as its dequantised weight). MACs: every weighted node's MACs times the kept fraction of each tracked axis of its
weight (output rows, input columns), which is exact for Conv, ConvTranspose, Gemm and
MatMul; a MatMul of two activations scales with its live output axes (heads) and its
contracted axis.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx

from onnxprune.analysis import Analysis
from onnxprune.analysis.flops import parameter_count
from onnxprune.analysis.query_heads import close_removed
from onnxprune.analysis.rules.quant import MatMulNBitsCut, analysis_index, expand_weight_refs
from onnxprune.graph import GraphIndex

WEIGHT_SLOT = 1


class CostModel:
    """Parameters and MACs of the model for any set of removed units, quickly."""

    def __init__(self, model: onnx.ModelProto, analysis: Analysis) -> None:
        self.analysis = analysis
        index = GraphIndex(model)
        refs: dict[tuple[str, int], list[tuple[int, np.ndarray]]] = defaultdict(list)
        for ref in analysis.params:
            refs[(ref.node, ref.slot)].append((ref.axis, analysis.roots[ref.elems]))
        for ref in expand_weight_refs(analysis.params, analysis_index(model, index)):
            if index.nodes[ref.node].op_type in ("DequantizeLinear", "QuantizeLinear"):  # QDQ codes: their weight's cut
                refs[(ref.node, ref.slot)].append((ref.axis, analysis.roots[ref.elems]))
        self._index = index
        # MatMulNBits weights requantized on their input side: K x N with K the kept channels
        self._requantized = {index.nodes[f.node].input[WEIGHT_SLOT]: analysis.roots[f.channels]
                             for f in analysis.fixups if isinstance(f, MatMulNBitsCut) and f.channels is not None}
        self._inits: list[tuple[str, tuple[int, ...], list[list[tuple[int, np.ndarray]]]]] = []
        for name in index.initializers:
            users = index.users(name)
            if users and parameter_count(index, name):
                shape = index.const_shape(name) or ()
                self._inits.append((name, shape, [refs.get((n.name, s), []) for n, s in users]))
        self._macs: list[tuple[int, list[np.ndarray]]] = []
        for node_name, macs in analysis.node_macs.items():
            if macs:
                axes = [roots for _, roots in refs.get((node_name, WEIGHT_SLOT), [])]
                axes += [analysis.roots[elems] for elems in analysis.mac_axes.get(node_name, [])]
                self._macs.append((macs, axes))

    def _removed_mask(self, removed_units: np.ndarray) -> np.ndarray:
        mask = np.zeros(len(self.analysis.roots), dtype=bool)
        mask[close_removed(self.analysis, removed_units)] = True
        return mask

    def params(self, removed_units: np.ndarray) -> int:
        removed = self._removed_mask(removed_units)
        total = 0
        for name, shape, uses in self._inits:
            variants = set()
            for axes in uses:
                dims = list(shape)
                for axis, roots in axes:
                    dims[axis] = int((~removed[roots]).sum())
                variants.add(tuple(dims))
            k_roots = self._requantized.get(name)
            if k_roots is not None:
                total += sum(v[0] * int((~removed[k_roots]).sum()) for v in variants)
                continue
            total += sum(parameter_count(self._index, name, v) for v in variants)
        return total

    def macs(self, removed_units: np.ndarray) -> int:
        removed = self._removed_mask(removed_units)
        total = 0.0
        for macs, axes in self._macs:
            frac = 1.0
            for roots in axes:
                frac *= float((~removed[roots]).sum()) / len(roots)
            total += macs * frac
        return int(round(total))
