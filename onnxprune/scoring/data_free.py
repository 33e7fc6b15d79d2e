"""Channel importance criteria. Each returns, per group id, one score per unit (higher = keep)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from onnxprune.analysis import Analysis
from onnxprune.scoring.similarity import similarity_scores
from onnxprune.scoring.magnitude import bn_scale_scores, magnitude_scores, random_scores
from onnxprune.errors import SelectionError
from onnxprune.graph import GraphIndex

Scores = dict[str, np.ndarray]
Criterion = Callable[[GraphIndex, Analysis], Scores]

DATA_FREE: dict[str, Criterion] = {
    "l1": lambda index, analysis: magnitude_scores(index, analysis, p=1),
    "l2": lambda index, analysis: magnitude_scores(index, analysis, p=2),
    "bn-scale": lambda index, analysis: bn_scale_scores(index, analysis),
    "random": lambda index, analysis: random_scores(analysis, seed=0),
    "similarity": lambda index, analysis: similarity_scores(index, analysis),
}


def score(name: str, index: GraphIndex, analysis: Analysis) -> Scores:
    """Score every prunable group's units with a data-free criterion."""
    try:
        fn = DATA_FREE[name]
    except KeyError:
        raise SelectionError(f"unknown criterion '{name}' (choose from {', '.join(sorted(DATA_FREE))})") from None
    return fn(index, analysis)
