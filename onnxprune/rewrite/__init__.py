"""Graph-rewrite passes that apply a pruning plan (the framework: ``rewrite.base``; what a
plan removes: ``analysis.removal.Removal``, also exported here under its former name
``PruneContext``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from onnxprune.analysis.removal import Removal
from onnxprune.rewrite.base import (BasePass, ModelPass, Pass, PassResult, PruneContext, check_fixup_handlers,
                                    run_passes)
from onnxprune.rewrite.check_model import CheckModelPass
from onnxprune.rewrite.merge_removed_channels import MergeRemovedChannelsPass
from onnxprune.rewrite.refresh_shapes import RefreshShapesPass
from onnxprune.rewrite.remove_blocks import RemoveBlocksPass
from onnxprune.rewrite.remove_dead_nodes import RemoveDeadNodesPass
from onnxprune.rewrite.rewrite_shape_constants import RewriteShapeConstantsPass
from onnxprune.rewrite.slice_weights import SliceWeightsPass
from onnxprune.rewrite.sort_topologically import SortTopologicallyPass

if TYPE_CHECKING:
    from onnxprune.plan import Plan


def default_pipeline(plan: Plan | None = None) -> list[BasePass]:
    """The passes ``prune`` runs, in order; removing residual blocks first when ``plan``
    removes some, then merging when it has merges. A PipelineError if some analysis fix-up
    kind has no handler in it (``check_fixup_handlers``)."""
    merge: list[BasePass] = []
    if plan is not None and plan.removed_blocks:
        merge.append(RemoveBlocksPass(plan.removed_blocks))
    if plan is not None and plan.merges:
        merge.append(MergeRemovedChannelsPass(plan.merges))
    passes = [
        *merge,
        SliceWeightsPass(),
        RewriteShapeConstantsPass(),
        RemoveDeadNodesPass(),
        SortTopologicallyPass(),
        RefreshShapesPass(),
        CheckModelPass(),
    ]
    check_fixup_handlers(passes)
    return passes


__all__ = [
    "BasePass", "CheckModelPass", "MergeRemovedChannelsPass", "ModelPass", "Pass", "PassResult", "PruneContext",
    "Removal",
    "RefreshShapesPass", "RemoveBlocksPass", "RemoveDeadNodesPass",
    "RewriteShapeConstantsPass", "SliceWeightsPass", "SortTopologicallyPass", "check_fixup_handlers",
    "default_pipeline", "run_passes",
]
