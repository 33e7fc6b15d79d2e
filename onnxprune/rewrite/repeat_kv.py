"""Grouped-query attention's key / value repeat after query heads went (``repeat_kv`` fix-up).

The export repeats each KV head ``rep`` times (Expand [b, kv, rep, s, d], Reshape
[b, kv * rep, s, d]). When every kept KV head keeps the same number r of query heads, the
Expand repeats r times and the Reshape target becomes kv' * r: the graph keeps its form.
Otherwise the repeat stays at ``rep`` over the kept KV heads and a Gather on the head axis
picks, for each kept query head, the copy it reads.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from onnxprune.analysis.query_heads import RepeatKV
from onnxprune.analysis.removal import Removal
from onnxprune.graph import GraphIndex

Entries = dict[tuple[str, int], dict[int, int]]


def kept_copies(fix: RepeatKV, removal: Removal) -> np.ndarray:
    """[kept KV heads, rep]: which repeated copies (query heads) each kept KV head keeps."""
    parents_kept = removal.kept(fix.parents)
    return removal.kept(fix.children).reshape(len(parents_kept), -1)[parents_kept]


def rewrite_repeat_kv(fix: RepeatKV, removal: Removal, index: GraphIndex, entries: Entries) -> bool:
    rep = fix.rep
    rows = kept_copies(fix, removal)
    if rows.all() and rows.size == len(fix.children):
        return False  # nothing removed
    counts = rows.sum(axis=1)
    uniform = bool((counts == counts[0]).all()) and (counts[0] == rep or fix.expand_at is not None)
    per_head = int(counts[0]) if uniform else rep
    if per_head != rep:
        at, slot, i = fix.expand_at
        entries[(at, slot)][i] = per_head
    if fix.reshape_at is not None:
        at, slot, i = fix.reshape_at
        entries[(at, slot)][i] = len(rows) * per_head
    if uniform:
        return False
    name = f"{fix.node}__kept_heads"
    if name in index.nodes:
        return False
    node = index.nodes[fix.node]
    out, full = node.output[0], f"{node.output[0]}__all_heads"
    node.output[0] = full
    graph = index.model.graph
    graph.initializer.append(numpy_helper.from_array(np.flatnonzero(rows.reshape(-1)).astype(np.int64),
                                                     f"{name}__indices"))
    graph.node.append(onnx.helper.make_node("Gather", [full, f"{name}__indices"], [out], name=name,
                                            axis=fix.axis))
    return True
