"""Copy-on-write edits of constant inputs, shared by the slicing and shape passes.

A constant used by several (node, slot) pairs is edited in place only when every
user wants the same edit; otherwise each distinct edit gets its own new initializer,
so no other user ever sees a slice meant for someone else.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Hashable

import numpy as np
import onnx
from onnx import numpy_helper

from onnxprune.graph import GraphIndex

Edit = Callable[[np.ndarray], np.ndarray]


def apply_constant_edits(model: onnx.ModelProto, index: GraphIndex,
                         edits: dict[tuple[str, int], tuple[Hashable, Edit]]) -> bool:
    """Apply edits keyed by (node name, slot) -> (edit key, function old -> new array).

    Users of the same initializer with equal edit keys share one result. Returns True
    if any initializer changed.
    """
    by_tensor: dict[str, dict[tuple[str, int], tuple[Hashable, Edit]]] = defaultdict(dict)
    for (node_name, slot), edit in edits.items():
        by_tensor[index.nodes[node_name].input[slot]][(node_name, slot)] = edit
    inits = {t.name: t for t in model.graph.initializer}
    taken = set(inits) | {o for n in model.graph.node for o in n.output} | index.graph_inputs
    modified = False
    for name, wanted in by_tensor.items():
        users = [(n.name, s) for n, s in index.users(name)]
        keys = {u: wanted[u][0] if u in wanted else None for u in users}
        old = index.const(name)
        assert old is not None
        results: dict[Hashable, np.ndarray] = {}
        for user, (key, fn) in wanted.items():
            if key not in results:
                results[key] = fn(old)
        if len(set(keys.values())) == 1 and None not in keys.values():
            new = results[next(iter(keys.values()))]
            if not _same(old, new):
                inits[name].CopyFrom(numpy_helper.from_array(new, name))
                modified = True
            continue
        for key, new in results.items():
            if _same(old, new):
                continue
            new_name = _fresh(f"{name}__pruned", taken)
            model.graph.initializer.append(numpy_helper.from_array(new, new_name))
            for (node_name, slot), k in keys.items():
                if k == key:
                    index.nodes[node_name].input[slot] = new_name
            modified = True
    return modified


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and bool(np.array_equal(a, b))


def _fresh(base: str, taken: set[str]) -> str:
    k = 0
    while f"{base}{k}" in taken:
        k += 1
    taken.add(f"{base}{k}")
    return f"{base}{k}"
