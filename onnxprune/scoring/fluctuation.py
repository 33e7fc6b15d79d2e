"""FLAP's fluctuation metric (An et al. 2024, "Fluctuation-based Adaptive Structured Pruning
for Large Language Models"): an input channel of a consumer matters as much as it fluctuates
over the calibration data, weighted by what the consumer does with it,

    S_j = Var(X_j) * ||W_j||^2,

the variance of input channel ``j`` over samples and positions (its mean is what FLAP's
bias compensation puts back when the channel goes: ``recovery.bias``) times the squared
norm of the consumer's weights on it (a MatMul's row ``j``, a Conv's input slice ``j``).
A unit's score is the sum over its channels and consumers; a consumer without a constant
weight on the channel (a MatMul of two activations) counts its variance alone.

One onnxruntime pass with every consumer input as an extra output; no gradients, no torch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnx

from onnxprune.analysis import Analysis
from onnxprune.graph import GraphIndex
from onnxprune.io.calib_data import CalibrationData


def fluctuation_scores(model: onnx.ModelProto, analysis: Analysis, data: CalibrationData, *, batch_size: int = 4,
                       threads: int = 0, progress: Callable[[int, int], None] | None = None,
                       **_: Any) -> dict[str, np.ndarray]:
    """Prunable group id -> FLAP fluctuation score per unit (higher = keep)."""
    from onnxprune.scoring.block_scores import outputs_session

    index = GraphIndex(model)
    wanted = {int(u) for g in analysis.prunable_groups for u in g.units}
    refs = [r for r in analysis.consumers if wanted & set(analysis.roots[r.elems].tolist())]
    tensors = list(dict.fromkeys(index.nodes[r.node].input[r.slot] for r in refs))
    sess = outputs_session(model, tensors, optimize=True, threads=threads)
    inputs = {i.name for i in sess.get_inputs()}
    sums: dict[int, np.ndarray] = {}
    squares: dict[int, np.ndarray] = {}
    counts: dict[int, int] = {}
    total = -(-len(data) // batch_size)
    for step, (feeds, _labels) in enumerate(data.batches(batch_size)):
        values = dict(zip(tensors, sess.run(tensors, {k: v for k, v in feeds.items() if k in inputs})))
        for k, ref in enumerate(refs):
            x = np.moveaxis(values[index.nodes[ref.node].input[ref.slot]].astype(np.float64), ref.axis, -1)
            x = x.reshape(-1, x.shape[-1])
            sums[k] = sums.get(k, 0.0) + x.sum(0)
            squares[k] = squares.get(k, 0.0) + (x * x).sum(0)
            counts[k] = counts.get(k, 0) + len(x)
        if progress:
            progress(step + 1, total)
    per_root = np.zeros(len(analysis.roots), dtype=np.float64)
    for k, ref in enumerate(refs):
        mean = sums[k] / max(counts[k], 1)
        variance = np.maximum(squares[k] / max(counts[k], 1) - mean * mean, 0.0)
        np.add.at(per_root, analysis.roots[ref.elems], variance * _weight_norms(index, analysis, ref))
    return {g.id: per_root[g.units] for g in analysis.prunable_groups}


def _weight_norms(index: GraphIndex, analysis: Analysis, ref: Any) -> np.ndarray:
    """Squared norm of the consumer's constant weight on each channel ``ref`` reads (1 without one)."""
    for p in analysis.params:
        if p.node == ref.node and p.role == "consumer" and p.is_weight and np.array_equal(p.elems, ref.elems):
            w = index.const(index.nodes[p.node].input[p.slot], unaligned_ok=True)
            if w is not None:
                w = np.moveaxis(np.asarray(w, dtype=np.float64), p.axis, 0)
                return (w.reshape(len(w), -1) ** 2).sum(1)
    return np.ones(len(ref.elems))


# samples per onnxruntime run at most: every consumer input of the batch is held at once
MAX_BATCH = 4


def criterion_score(model: onnx.ModelProto, analysis: Analysis, data: CalibrationData, *, batch_size: int = MAX_BATCH,
                    progress: Callable[[int, int], None] | None = None, **_: Any) -> dict[str, np.ndarray]:
    """``fluctuation_scores`` with the data-driven criterion signature (``scoring.criteria``), in
    batches of at most ``MAX_BATCH`` (registered as ``flap`` by ``scoring.calibrated``, after the
    gate criteria, so the registry's order does not depend on which module is imported first)."""
    return fluctuation_scores(model, analysis, data, batch_size=min(batch_size, MAX_BATCH), progress=progress)

