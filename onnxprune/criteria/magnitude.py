"""Weight-magnitude criteria: a unit's score is the sum over the group's weight slices it
owns (producer rows, consumer columns, normalisation scales) of sum |w|^p, as
Torch-Pruning's GroupMagnitudeImportance with sum reduction.
"""

from __future__ import annotations

import numpy as np

from onnxprune.analysis import Analysis
from onnxprune.graph import GraphIndex


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


def random_scores(analysis: Analysis, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {g.id: rng.random(g.size) for g in analysis.prunable_groups}
