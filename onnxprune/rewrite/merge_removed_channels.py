"""Merge removed units into kept ones before anything is sliced (Srinivas & Babu 2015).

For every plan merge (removed unit j -> kept unit i, factor) of a group and every
consumer weight of that group (ParamRefs with role ``consumer``), ``factor`` times j's
slice along the ref's axis is added to i's slice. A unit may own several indices of a
consumer weight (a channel flattened into H*W features of a dense layer): its indices
are paired in order. The removed unit's slice is then zeroed, which changes nothing
the pruned model computes (slice_weights drops it) and makes the pass
idempotent: a second run adds zeros. A weight already at its kept size along the axis
(sliced) is left alone. Shared weights are copied on write.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping

import numpy as np
import onnx

from onnxprune.graph import GraphIndex
from onnxprune.analysis.removal import Removal
from onnxprune.rewrite.base import Pass, PassResult
from onnxprune.rewrite.constants import apply_constant_edits

# (axis, source indices, target indices, factor, original size along axis, kept size)
MergeOp = tuple[int, tuple[int, ...], tuple[int, ...], float, int, int]


class MergeRemovedChannelsPass(Pass):
    consistent = True  # shapes are unchanged
    name = "merge_removed_channels"

    def __init__(self, merges: Mapping[str, tuple] | None = None) -> None:
        self.merges = {gid: tuple((int(j), int(i), float(f)) for j, i, f in ms)
                       for gid, ms in (merges or {}).items()}

    def call(self, model: onnx.ModelProto, removal: Removal) -> PassResult:
        if not self.merges:
            return PassResult(model, False)
        index = GraphIndex(model)
        analysis = removal.analysis
        ops: dict[tuple[str, int], list[MergeOp]] = defaultdict(list)
        for gid, merges in self.merges.items():
            group = analysis.groups_by_id.get(gid)
            if group is None:
                raise ValueError(f"merge names group '{gid}', which this model does not have")
            units = group.units
            unit_set = set(units.tolist())
            for ref in analysis.params:
                if ref.role != "consumer":
                    continue
                owner = analysis.roots[ref.elems]
                if not unit_set.intersection(owner.tolist()):
                    continue
                kept = removal.kept(ref.elems)
                for j, i, factor in merges:
                    src = np.flatnonzero(owner == units[j])
                    dst = np.flatnonzero(owner == units[i])
                    if len(src) != len(dst):
                        raise ValueError(f"group '{gid}': units {j} and {i} own {len(src)} and {len(dst)} "
                                         f"indices of input {ref.slot} of '{ref.node}'")
                    if kept[src].any() or not kept[dst].all():
                        raise ValueError(f"group '{gid}': merge ({j} -> {i}) must move a removed unit "
                                         "into a kept one")
                    if len(src):
                        ops[(ref.node, ref.slot)].append(
                            (ref.axis, tuple(src.tolist()), tuple(dst.tolist()), factor, len(owner),
                             int(kept.sum())))
        edits = {key: (tuple(sorted(key_ops)), _merger(key_ops, key)) for key, key_ops in ops.items()}
        return PassResult(model, apply_constant_edits(model, index, edits))


def _merger(ops: list[MergeOp], key: tuple[str, int]):  # noqa: ANN202
    def fn(old: np.ndarray) -> np.ndarray:
        arr = np.array(old, copy=True)
        sources: dict[int, set[int]] = defaultdict(set)
        for axis, src, dst, factor, size, kept in ops:
            if arr.shape[axis] == kept and kept != size:
                continue  # already sliced: the merge was applied before slicing
            if arr.shape[axis] != size:
                raise ValueError(f"input {key[1]} of node '{key[0]}' has {arr.shape[axis]} entries on axis "
                                 f"{axis}; expected {size} (original) or {kept} (pruned)")
            view = np.moveaxis(arr, axis, 0)  # a view: writes go to arr
            s, d = list(src), list(dst)
            view[d] = (view[d].astype(np.float64) + factor * view[s].astype(np.float64)).astype(arr.dtype)
            sources[axis].update(s)
        for axis, s in sources.items():
            np.moveaxis(arr, axis, 0)[sorted(s)] = 0
        return arr

    return fn
