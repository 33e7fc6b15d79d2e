"""Slicing constant inputs along channel axes: the machinery behind
``SliceWeightsPass``.

For every ParamRef of the wanted roles, index i along the ref's axis is kept iff its
channel's unit is kept. An axis already at its kept size is left alone (idempotence);
any other size means the model is not the one analysed, which is an error.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection

import numpy as np
import onnx

from onnxprune.analysis.rules.quant import analysis_index, expand_weight_refs
from onnxprune.graph import GraphIndex
from onnxprune.analysis.removal import Removal
from onnxprune.rewrite.constants import apply_constant_edits


def slice_params(model: onnx.ModelProto, removal: Removal, roles: Collection[str]) -> bool:
    index = GraphIndex(model)
    per_input: dict[tuple[str, int], dict[int, np.ndarray]] = defaultdict(dict)
    for ref in expand_weight_refs(removal.analysis.params, analysis_index(model, index)):  # QDQ weights: constants
        if ref.role in roles:
            keep = removal.kept(ref.elems)
            if not keep.all():
                per_input[(ref.node, ref.slot)][ref.axis] = keep
    edits = {}
    for key, axes in per_input.items():
        spec = tuple(sorted((axis, np.flatnonzero(mask).tobytes(), len(mask)) for axis, mask in axes.items()))
        edits[key] = (spec, _slicer(axes, key))
    return apply_constant_edits(model, index, edits)


def _slicer(axes: dict[int, np.ndarray], key: tuple[str, int]):  # noqa: ANN202
    def fn(arr: np.ndarray) -> np.ndarray:
        for axis, mask in sorted(axes.items()):
            size = arr.shape[axis]
            if size == len(mask):
                arr = np.compress(mask, arr, axis=axis)
            elif size != int(mask.sum()):
                raise ValueError(f"input {key[1]} of node '{key[0]}' has {size} entries on axis {axis}; "
                                 f"expected {len(mask)} (original) or {int(mask.sum())} (pruned)")
        return arr

    return fn
