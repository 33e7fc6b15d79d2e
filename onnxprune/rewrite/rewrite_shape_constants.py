"""Rewrite the shape constants that encode channel counts: Split sizes, Slice bounds,
Reshape / Expand targets and Resize sizes, so they match the kept channels.

Per fix-up kind (recorded by analysis; the handler table ``FIXUP_HANDLERS`` is keyed by type):
- SplitSizes: each output's size becomes the number of kept channels in its range;
- SliceBounds: start -> kept channels before start, end -> start + kept in range;
- ShapeEntry: the entry becomes the kept channel count (entries 0 and -1 stay: they
  already follow the input);
- RepeatKV: grouped-query attention's key / value repeat (``rewrite.repeat_kv``);
- InterfaceShape: a graph input / output's declared dim (a KV cache: ``onnxprune.interface``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from onnxprune.analysis.context import Fixup, ShapeEntry, SliceBounds, SplitSizes
from onnxprune.analysis.query_heads import RepeatKV
from onnxprune.graph import GraphIndex, attr, set_attr
from onnxprune.analysis.removal import Removal
from onnxprune.rewrite.base import Pass, PassResult
from onnxprune.rewrite.constants import apply_constant_edits
from onnxprune.rewrite.repeat_kv import rewrite_repeat_kv
from onnxprune.interface import InterfaceShape, apply_interface_shape

Entries = dict[tuple[str, int], dict[int, int]]


class RewriteShapeConstantsPass(Pass):
    name = "rewrite_shape_constants"

    def call(self, model: onnx.ModelProto, removal: Removal) -> PassResult:
        index = GraphIndex(model)
        entries: Entries = defaultdict(dict)
        modified = False
        for fix in removal.analysis.fixups:
            handler = self.fixup_handlers.get(type(fix))
            if handler is not None:  # a kind another pass handles (check_fixup_handlers)
                modified |= handler(fix, removal, index, entries)
        edits = {key: (tuple(sorted(vals.items())), _setter(vals)) for key, vals in entries.items()}
        modified |= apply_constant_edits(model, index, edits)
        return PassResult(model, modified)


def _setter(values: dict[int, int]):  # noqa: ANN202
    def fn(arr: np.ndarray) -> np.ndarray:
        out = np.array(arr, copy=True)
        flat = out.reshape(-1)
        for i, v in values.items():
            flat[i] = v
        return out

    return fn


def _split_sizes(fix: SplitSizes, removal: Removal, index: GraphIndex, entries: Entries) -> bool:
    parts = fix.parts
    sizes = [removal.kept_count(p) for p in parts]
    if sizes == [len(p) for p in parts]:
        return False
    node = index.nodes[fix.node]
    if index.opset < 13:
        if list(attr(node, "split", [])) == sizes:
            return False
        set_attr(node, "split", sizes)
        return True
    if len(node.input) > 1 and node.input[1]:
        entries[(fix.node, 1)].update(enumerate(sizes))
        return False
    name = f"{fix.node}__split_sizes"
    index.model.graph.initializer.append(numpy_helper.from_array(np.array(sizes, dtype=np.int64), name))
    while len(node.input) < 2:
        node.input.append("")
    node.input[1] = name
    for i, a in enumerate(node.attribute):
        if a.name == "num_outputs":
            del node.attribute[i]
            break
    return True


def _slice_bounds(fix: SliceBounds, removal: Removal, index: GraphIndex, entries: Entries) -> bool:
    elems, start, stop, pos = fix.elems, fix.start, fix.stop, fix.position
    if removal.kept_count(elems) == len(elems):
        return False
    new_start = removal.kept_count(elems[:start])
    new_stop = new_start + removal.kept_count(elems[start:stop])
    node = index.nodes[fix.node]
    if index.opset < 10:
        changed = False
        for name, value in (("starts", new_start), ("ends", new_stop)):
            values = list(attr(node, name))
            if values[pos] != value:
                values[pos] = value
                set_attr(node, name, values)
                changed = True
        return changed
    entries[(fix.node, 1)][pos] = new_start
    entries[(fix.node, 2)][pos] = new_stop
    return False


def _shape_entry(fix: ShapeEntry, removal: Removal, index: GraphIndex, entries: Entries) -> bool:
    elems, slot, pos = fix.elems, fix.slot, fix.index
    if removal.kept_count(elems) == len(elems):
        return False
    current = index.const(index.nodes[fix.node].input[slot])
    if current is None:
        raise ValueError(f"shape input {slot} of node '{fix.node}' is not a constant")
    value = int(np.asarray(current).reshape(-1)[pos])
    if value in (0, -1):
        return False
    entries[(fix.node, slot)][pos] = removal.kept_count(elems)
    return False


Handler = Callable[[Any, Removal, GraphIndex, Entries], bool]
FIXUP_HANDLERS: dict[type[Fixup], Handler] = {
    SplitSizes: _split_sizes,
    SliceBounds: _slice_bounds,
    ShapeEntry: _shape_entry,
    RepeatKV: rewrite_repeat_kv,
    InterfaceShape: apply_interface_shape,
}
RewriteShapeConstantsPass.fixup_handlers = FIXUP_HANDLERS
