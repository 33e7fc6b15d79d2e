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

from onnxprune.graph import GraphIndex, sync_initializer_inputs

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
    if not by_tensor:
        return False
    inits = index.initializers
    taken: set[str] | None = None  # names in use, built only when a shared weight needs a copy
    modified = False
    for name, wanted in by_tensor.items():
        users = [(n.name, s) for n, s in index.users(name)]
        keys = {u: wanted[u][0] if u in wanted else None for u in users}
        old = index.const(name, unaligned_ok=True)  # the edits copy what they keep
        assert old is not None
        results: dict[Hashable, np.ndarray | None] = {}
        for user, (key, fn) in wanted.items():
            if key not in results:
                new = fn(old)
                results[key] = None if _same(old, new) else new  # None: unchanged
        del old
        index.release(name)
        if len(set(keys.values())) == 1 and None not in keys.values():
            new = results[next(iter(keys.values()))]
            if new is not None:
                set_tensor(inits[name], new)
                index.forget(name)
                modified = True
            continue
        for key, new in results.items():
            if new is None:
                continue
            if taken is None:
                taken = {t.name for t in model.graph.initializer} | {o for n in model.graph.node for o in n.output} | index.graph_inputs
            new_name = _fresh(f"{name}__pruned", taken)
            set_tensor(model.graph.initializer.add(), new, new_name)
            for (node_name, slot), k in keys.items():
                if k == key:
                    index.nodes[node_name].input[slot] = new_name
            modified = True
    if modified:
        sync_initializer_inputs(model)  # IR < 4: the new and the sliced initializers' input entries
    return modified


def set_tensor(t: onnx.TensorProto, value: np.ndarray, name: str | None = None) -> None:
    """Make ``t`` hold ``value`` (in place; name kept unless given), as
    ``numpy_helper.from_array`` would build it, without building a second message."""
    name = t.name if name is None else name
    dtype = value.dtype
    if dtype.kind not in "biuf" or dtype.byteorder == ">" or dtype.type not in _PLAIN_TYPES:
        t.CopyFrom(numpy_helper.from_array(value, name))
        return
    t.Clear()
    t.name = name
    t.dims.extend(value.shape)
    t.data_type = _PLAIN_TYPES[dtype.type]
    t.raw_data = np.ascontiguousarray(value).tobytes()


_PLAIN_TYPES = {np.dtype(d).type: onnx.helper.np_dtype_to_tensor_dtype(np.dtype(d))
                for d in (np.float32, np.float64, np.float16, np.int8, np.uint8, np.int16, np.uint16, np.int32,
                          np.uint32, np.int64, np.uint64, np.bool_)}


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and bool(np.array_equal(a, b))


def _fresh(base: str, taken: set[str]) -> str:
    k = 0
    while f"{base}{k}" in taken:
        k += 1
    taken.add(f"{base}{k}")
    return f"{base}{k}"
