"""Weight-magnitude criteria: a unit's score is the sum over the group's weight slices it
owns (producer rows, consumer columns, normalisation scales) of sum |w|^p, as
Torch-Pruning's GroupMagnitudeImportance with sum reduction.
"""

from __future__ import annotations

import numpy as np

from onnxprune.analysis import Analysis
from onnxprune.graph import GraphIndex

NORMS = ("BatchNormalization", "InstanceNormalization", "GroupNormalization")


def magnitude_scores(index: GraphIndex, analysis: Analysis, p: int) -> dict[str, np.ndarray]:
    acc = np.zeros(len(analysis.roots), dtype=np.float64)
    for ref in analysis.params:
        if not ref.is_weight:
            continue
        w = index.const(index.nodes[ref.node].input[ref.slot])
        if w is None:
            continue
        w = np.moveaxis(np.abs(np.asarray(w, dtype=np.float64)), ref.axis, 0).reshape(w.shape[ref.axis], -1)
        np.add.at(acc, analysis.roots[ref.elems], (w**p).sum(axis=1))
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
