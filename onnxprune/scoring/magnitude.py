"""Weight-magnitude criteria: a unit's score is the sum over the group's weight slices it
owns (producer rows, consumer columns, normalisation scales) of sum |w|^p, as
Torch-Pruning's GroupMagnitudeImportance with sum reduction.
"""

from __future__ import annotations

import math

import numpy as np

from onnxprune.analysis import Analysis
from onnxprune.graph import GraphIndex

NORMS = ("BatchNormalization", "InstanceNormalization", "GroupNormalization")


def magnitude_scores(index: GraphIndex, analysis: Analysis, p: int) -> dict[str, np.ndarray]:
    acc = np.zeros(len(analysis.roots), dtype=np.float64)
    by_tensor: dict[str, list] = {}  # a weight read along several axes (Conv rows and columns) is decoded once
    for ref in analysis.params:
        if ref.is_weight:
            by_tensor.setdefault(index.nodes[ref.node].input[ref.slot], []).append(ref)
    buf = np.empty(0, dtype=np.float64)  # one float64 scratch buffer, reused for every weight
    for name, refs in by_tensor.items():
        w = index.const(name, unaligned_ok=True)  # copied into the buffer right away
        if w is None:
            continue
        if w.size > buf.size:
            buf = np.empty(w.size, dtype=np.float64)
        powered = buf[: w.size].reshape(w.shape)
        np.copyto(powered, w, casting="unsafe")
        del w
        index.release(name)
        if p == 2:
            np.multiply(powered, powered, out=powered)
        else:
            np.abs(powered, out=powered)
            if p != 1:
                np.power(powered, p, out=powered)
        for ref in refs:
            axis = ref.axis % powered.ndim
            # sum over every other axis: leading axes first (contiguous adds), then the trailing block
            lead = powered.reshape(math.prod(powered.shape[:axis]), -1).sum(axis=0) if axis else powered
            per_index = lead.reshape(powered.shape[axis], -1).sum(axis=1)
            np.add.at(acc, analysis.roots[ref.elems], per_index)
    return {g.id: acc[g.units] for g in analysis.prunable_groups}


def bn_scale_scores(index: GraphIndex, analysis: Analysis) -> dict[str, np.ndarray]:
    """|gamma| of the normalisation layers a unit passes through (summed); 0 where there is none."""
    acc = np.zeros(len(analysis.roots), dtype=np.float64)
    for ref in analysis.params:
        node = index.nodes[ref.node]
        if ref.role == "param" and ref.is_weight and node.op_type in NORMS:
            gamma = index.const(node.input[ref.slot])
            if gamma is not None:
                np.add.at(acc, analysis.roots[ref.elems], np.abs(np.asarray(gamma, dtype=np.float64).reshape(-1)))
    return {g.id: acc[g.units] for g in analysis.prunable_groups}


def random_scores(analysis: Analysis, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {g.id: rng.random(g.size) for g in analysis.prunable_groups}
