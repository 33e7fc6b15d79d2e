"""The data-free channel criteria, each one registry entry (``scoring.criteria``). Each
returns, per group id, one score per unit (higher = keep)."""

from __future__ import annotations

from typing import Any

from onnxprune.analysis import Analysis
from onnxprune.errors import ScoringError
from onnxprune.graph import GraphIndex
from onnxprune.scoring.criteria import Scores, get_criterion, names, register_criterion
from onnxprune.scoring.magnitude import bn_scale_scores, magnitude_scores, random_scores
from onnxprune.scoring.similarity import similarity_scores

register_criterion("l1", help="sum of |w| over the unit's weight slices (producer rows, consumer columns, norm scales)",
                   score=lambda index, analysis: magnitude_scores(index, analysis, p=1))
register_criterion("l2", help="sum of w^2 over the unit's weight slices",
                   score=lambda index, analysis: magnitude_scores(index, analysis, p=2))
register_criterion("bn-scale", help="|gamma| of the normalisation the unit passes through",
                   score=lambda index, analysis: bn_scale_scores(index, analysis))
register_criterion("random", help="a fixed-seed random baseline",
                   score=lambda index, analysis: random_scores(analysis, seed=0))
register_criterion("similarity", help="Srinivas & Babu 2015: saliency of merging the unit into its most similar "
                                      "sibling", score=lambda index, analysis: similarity_scores(index, analysis))


def score(name: str, index: GraphIndex, analysis: Analysis) -> Scores:
    """Score every prunable group's units with a registered data-free criterion."""
    criterion = get_criterion(name)
    if criterion.needs_data:
        raise ScoringError(f"criterion '{name}' needs calibration data (--calib)")
    return criterion.score(index, analysis)


def __getattr__(name: str) -> Any:
    if name == "DATA_FREE":  # the registered data-free criteria (a live view of the registry)
        return names(needs_data=False)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

