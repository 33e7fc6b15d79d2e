"""Graph-rewrite passes that apply a pruning plan (installed as ``onnxprune.rewrite``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from onnxprune.rewrite.base import Pass, PassResult, PruneContext, run_passes
from onnxprune.rewrite.check_model import CheckModelPass
from onnxprune.rewrite.merge_removed_channels import MergeRemovedChannelsPass
from onnxprune.rewrite.refresh_shapes import RefreshShapesPass
from onnxprune.rewrite.remove_dead_nodes import RemoveDeadNodesPass
from onnxprune.rewrite.rewrite_shape_constants import RewriteShapeConstantsPass
from onnxprune.rewrite.slice_weights import SliceWeightsPass
from onnxprune.rewrite.sort_topologically import SortTopologicallyPass

if TYPE_CHECKING:
    from onnxprune.plan import Plan


def default_pipeline(plan: Plan | None = None) -> list[Pass]:
    """The passes ``prune`` runs, in order; merging first when ``plan`` has merges."""
    merge: list[Pass] = []
    if plan is not None and plan.merges:
        merge.append(MergeRemovedChannelsPass(plan.merges))
    return [
        *merge,
        SliceWeightsPass(),
        RewriteShapeConstantsPass(),
        RemoveDeadNodesPass(),
        SortTopologicallyPass(),
        RefreshShapesPass(),
        CheckModelPass(),
    ]


__all__ = [
    "CheckModelPass", "MergeRemovedChannelsPass", "Pass", "PassResult", "PruneContext",
    "RefreshShapesPass", "RemoveDeadNodesPass",
    "RewriteShapeConstantsPass", "SliceWeightsPass", "SortTopologicallyPass", "default_pipeline", "run_passes",
]
