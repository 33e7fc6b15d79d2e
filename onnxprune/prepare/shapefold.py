"""Fold shape computations into constants where the shapes they read are static.

PyTorch's exporter turns ``x.size(0)``, ``x.chunk(2, 1)`` or ``x.view(b, -1, ...)`` into
Shape -> Gather -> Unsqueeze -> Concat chains feeding Reshape, Slice or Split. When the
tensor's shape is fully static these are constants in disguise; folding them lets the
analysis see constant split points and reshape targets (and rewrite them).
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import numpy_helper

from onnxprune.graph import GraphIndex, attr, drop_initializers, subgraph_inputs

log = logging.getLogger(__name__)

FOLDABLE = {"Gather", "Unsqueeze", "Squeeze", "Concat", "Slice", "Cast", "Mul", "Div", "Add", "Sub",
            "Reshape", "Identity", "Floor", "Ceil", "Neg", "Abs", "Min", "Max", "Equal", "Where",
            "ConstantOfShape", "Range", "Mod", "ReduceProd", "ReduceSum", "Expand",
            # index plumbing of exporters' padding arithmetic (HF's TF-style "same" padding builds
            # Pad amounts with Reshape / Slice / Transpose of constants)
            "Transpose", "Flatten", "Tile", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "Not", "And",
            "Or", "ReduceMax", "ReduceMin", "Size"}
MAX_ELEMENTS = 1 << 16
# a weight stored in another dtype or layout (old exporters' Unsqueeze of a BatchNorm scale,
# Reshape of a classifier weight; TensorFlow's Transpose of a kernel): folded whatever its size,
# unless other nodes read the weight too (folding would duplicate it: ``_shared_weight``)
WEIGHT_VIEWS = {"Cast", "Identity", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Transpose"}


def fold_shape_computations(model: onnx.ModelProto) -> int:
    """Replace Shape of static tensors, and small computations on constants only (shape
    arithmetic, Paddle's Reshape of a bias to [1, C, 1, 1]), by initializers; collapse
    Reshape -> Transpose -> Reshape round trips that only swap the last two axes; give every
    Reshape / Expand / Resize its own copy of a shape computation several of them share."""
    changed = collapse_transpose_round_trips(model) + unshare_shape_computations(model)
    return changed + _fold_constants(model)


def _fold_constants(model: onnx.ModelProto) -> int:
    g = model.graph
    index = GraphIndex(model)
    outputs = set(index.graph_outputs)
    consts: dict[str, np.ndarray] = {}
    partial: dict[str, tuple] = {}  # Shape outputs with some dynamic entries
    folded: set[str] = set()
    for node in g.node:
        if node.domain not in ("", "ai.onnx") or any(o in outputs for o in node.output):
            continue
        value = None
        if node.op_type == "Shape":
            value = _shape_value(index, node, partial)
        elif node.op_type == "Gather" and node.input[0] in partial:
            value = _gather_static_entries(index, node, partial[node.input[0]])
        elif node.op_type in FOLDABLE and len(node.output) == 1:
            value = _evaluate(index, node, consts)
        if value is not None:
            consts[node.output[0]] = value
            folded.add(node.name)
    if not folded:
        return 0
    keep = [n for n in g.node if n.name not in folded]
    del g.node[:]
    g.node.extend(keep)
    used = set(GraphIndex(model).uses) | outputs  # includes names read inside subgraphs
    for name, value in consts.items():
        if name in used:
            g.initializer.append(numpy_helper.from_array(np.asarray(value), name))
    drop_initializers(g, used)  # inputs of folded nodes nothing else reads
    log.debug("folded %d shape computations", len(folded))
    return len(folded)


def _shape_value(index: GraphIndex, node: onnx.NodeProto, partial: dict[str, tuple]) -> np.ndarray | None:
    shape = index.shape(node.input[0])
    if shape is None:
        return None
    start, end = attr(node, "start", 0), attr(node, "end")
    dims = shape[start:end]
    if all(isinstance(d, int) for d in dims):
        return np.array(dims, dtype=np.int64)
    partial[node.output[0]] = dims
    return None


def _gather_static_entries(index: GraphIndex, node: onnx.NodeProto, dims: tuple) -> np.ndarray | None:
    """Gather of static entries of a partly dynamic shape (e.g. the channel count)."""
    idx = index.const(node.input[1])
    if idx is None or int(attr(node, "axis", 0)) != 0:
        return None
    picked = [dims[int(i)] for i in np.asarray(idx).reshape(-1)]
    if not all(isinstance(d, int) for d in picked):
        return None
    return np.array(picked, dtype=np.int64).reshape(np.asarray(idx).shape)


def _evaluate(index: GraphIndex, node: onnx.NodeProto, consts: dict[str, np.ndarray]) -> np.ndarray | None:
    feeds = {}
    for name in node.input:
        if not name:
            continue
        value = consts.get(name)
        if value is None:
            value = index.const(name) if index.is_const(name) else None
        if value is None or (value.size > MAX_ELEMENTS and node.op_type not in WEIGHT_VIEWS):
            return None
        if _shared_weight(index, name, value, node):
            return None
        feeds[name] = value
    from onnx.reference import ReferenceEvaluator  # imported when something folds (~0.1 s, 12 MiB)

    try:
        (out,) = ReferenceEvaluator(_one_node_model(node, index.model)).run(None, feeds)
    except Exception as exc:  # noqa: BLE001 - the reference evaluator raises many types; skip folding
        log.debug("could not fold %s '%s': %s", node.op_type, node.name, exc)
        return None
    out = np.asarray(out)
    return out if out.size <= MAX_ELEMENTS or node.op_type in WEIGHT_VIEWS else None


def _shared_weight(index: GraphIndex, name: str, value: np.ndarray, node: onnx.NodeProto) -> bool:
    """Whether ``value`` is a float tensor (a weight, not shape arithmetic) that other nodes or
    the graph outputs read too: folding this node would store a second copy of it (a tied
    LM head's Transpose of the embedding table), so the node stays."""
    if value.dtype.kind != "f" or value.size <= 1:
        return False
    return name in index.graph_outputs or any(user is not node for user, _ in index.uses.get(name, ()))


def _one_node_model(node: onnx.NodeProto, model: onnx.ModelProto) -> onnx.ModelProto:
    """``node`` alone, under the model's opsets (a bare node would be run as the newest opset's
    op: opset 11's Unsqueeze with an ``axes`` attribute would fail)."""
    def info(name: str) -> onnx.ValueInfoProto:
        return onnx.helper.make_tensor_value_info(name, onnx.TensorProto.UNDEFINED, None)

    graph = onnx.helper.make_graph([node], "fold", [info(n) for n in node.input if n], [info(n) for n in node.output])
    return onnx.helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)


# -- Reshape round trips -----------------------------------------------------------------

ShapeEntry = int | tuple[str, int]  # a constant, or the run-time size of (tensor, axis)
SHAPE_PLUMBING = {"Shape", "Slice", "Concat", "Gather", "Squeeze", "Unsqueeze", "Cast", "Identity", "Reshape"}


def collapse_transpose_round_trips(model: onnx.ModelProto) -> int:
    """Replace ``Reshape(Transpose(Reshape(x, [-1, d(-2), d(-1)]), [0, 2, 1]), [d(0..-3),
    d(-1), d(-2)])`` (where d(i) is x's size on axis i, read at run time or constant) by one
    ``Transpose`` of x's last two axes. torch's ONNX export of scaled_dot_product_attention
    transposes the keys this way; the round trip merges the heads with the dynamic batch,
    which analysis could not follow. The result is the same tensor. Returns how many."""
    g = model.graph
    index = GraphIndex(model)
    outputs = set(index.graph_outputs)
    replaced: dict[str, onnx.NodeProto] = {}  # name of the second Reshape -> its replacement
    dropped: set[str] = set()
    for node in g.node:
        found = _round_trip(index, node, outputs)
        if found is None:
            continue
        x, first, transpose, rank = found
        perm = [*range(rank - 2), rank - 1, rank - 2]
        replaced[node.name] = onnx.helper.make_node("Transpose", [x], [node.output[0]], name=transpose.name, perm=perm)
        dropped.update((first.name, transpose.name))
    if not replaced:
        return 0
    keep = [replaced.get(n.name, n) for n in g.node if n.name not in dropped]
    del g.node[:]
    g.node.extend(_without_dead_plumbing(keep, outputs))
    log.debug("collapsed %d Reshape/Transpose/Reshape round trips", len(replaced))
    return len(replaced)


def _round_trip(index: GraphIndex, node: onnx.NodeProto, outputs: set[str]):  # noqa: ANN202
    """(x, first Reshape, Transpose, rank of x) when ``node`` ends a round trip, else None."""
    if node.op_type != "Reshape" or node.domain not in ("", "ai.onnx"):
        return None
    transpose = index.producer.get(node.input[0])
    if transpose is None or transpose.op_type != "Transpose" or list(attr(transpose, "perm") or ()) != [0, 2, 1]:
        return None
    first = index.producer.get(transpose.input[0])
    if first is None or first.op_type != "Reshape":
        return None
    if any(len(index.users(t)) != 1 or t in outputs for t in (first.output[0], transpose.output[0])):
        return None
    x = first.input[0]
    shape = index.shape(x)
    if shape is None or len(shape) < 3:
        return None
    rank = len(shape)

    def size(axis: int) -> list[ShapeEntry]:
        return [(x, axis)] + ([shape[axis]] if isinstance(shape[axis], int) else [])

    def matches(entries: list[ShapeEntry] | None, wanted: list[list[ShapeEntry]]) -> bool:
        return entries is not None and len(entries) == len(wanted) and all(e in w for e, w in zip(entries, wanted))

    merged = [[-1], size(rank - 2), size(rank - 1)]
    back = [size(a) for a in range(rank - 2)] + [size(rank - 1), size(rank - 2)]
    if not matches(_entries(index, first.input[1]), merged) or not matches(_entries(index, node.input[1]), back):
        return None
    return x, first, transpose, rank


def _entries(index: GraphIndex, name: str, depth: int = 0) -> list[ShapeEntry] | None:
    """The entries of a 1-D shape tensor built from constants and Shape ops, or None."""
    if depth > 12:
        return None
    if index.is_const(name):
        value = index.const(name)
        return None if value is None or value.dtype.kind not in "iu" else [int(v) for v in value.reshape(-1)]
    node = index.producer.get(name)
    if node is None or node.domain not in ("", "ai.onnx"):
        return None
    if node.op_type == "Shape":
        shape = index.shape(node.input[0])
        if shape is None:
            return None
        return [(node.input[0], a) for a in list(range(len(shape)))[attr(node, "start", 0):attr(node, "end")]]
    if node.op_type == "Concat":
        parts = [_entries(index, part, depth + 1) for part in node.input]
        return None if any(p is None for p in parts) else [e for p in parts for e in p]  # type: ignore[union-attr]
    if node.op_type in ("Squeeze", "Unsqueeze", "Cast", "Identity"):
        return _entries(index, node.input[0], depth + 1)
    if node.op_type == "Gather":
        data, idx = _entries(index, node.input[0], depth + 1), index.const(node.input[1])
        if data is None or idx is None or idx.dtype.kind not in "iu" or int(attr(node, "axis", 0)) != 0:
            return None
        picks = [int(i) for i in idx.reshape(-1)]
        return [data[i] for i in picks] if all(-len(data) <= i < len(data) for i in picks) else None
    if node.op_type == "Slice":
        data = _entries(index, node.input[0], depth + 1)
        bounds = [index.const(n) if n else None for n in node.input[1:]]
        if data is None or len(bounds) < 2 or any(b is None or b.size != 1 for b in bounds):
            return None
        starts, ends, *rest = (int(b.reshape(-1)[0]) for b in bounds)  # type: ignore[union-attr]
        if rest and rest[0] != 0 or len(rest) > 1 and rest[1] != 1:
            return None
        return data[slice(starts, ends)]
    return None


def _without_dead_plumbing(nodes: list[onnx.NodeProto], outputs: set[str]) -> list[onnx.NodeProto]:
    """Drop shape plumbing (Shape, Slice, Concat, ...) nothing reads any more."""
    while True:
        read = {name for n in nodes for name in [*n.input, *subgraph_inputs(n)]} | outputs
        live = [n for n in nodes if n.op_type not in SHAPE_PLUMBING or any(o in read for o in n.output)]
        if len(live) == len(nodes):
            return live
        nodes = live


# -- lengths shape inference cannot see ----------------------------------------------------

def range_lengths(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Shapes of ``Range(0, n, 1)`` outputs where ``n`` is the run-time size of a tensor axis
    (torch's ``arange(x.size(i))``, the positions of rotary embeddings and causal masks): of
    length that axis's size. ONNX shape inference gives them a fresh symbol, and everything
    computed from them (the causal mask, the attention scores and context) loses the
    sequence and batch symbols; given these, inference keeps them. ``model`` must carry
    inferred shapes."""
    index = GraphIndex(model)
    known = {vi.name for vi in model.graph.value_info if vi.type.tensor_type.HasField("shape")
             and all(d.HasField("dim_param") or d.HasField("dim_value") for d in vi.type.tensor_type.shape.dim)
             and not any(d.dim_param.startswith("unk__") for d in vi.type.tensor_type.shape.dim)}
    found = []
    for node in model.graph.node:
        if node.op_type != "Range" or node.domain not in ("", "ai.onnx") or node.output[0] in known:
            continue
        start, delta = index.const(node.input[0]), index.const(node.input[2])
        if start is None or delta is None or start.size != 1 or delta.size != 1 or \
                start.item() != 0 or delta.item() != 1:
            continue
        entries = _entries(index, node.input[1])
        if entries is None or len(entries) != 1 or not isinstance(entries[0], tuple):
            continue
        tensor, axis = entries[0]
        dim = (index.shape(tensor) or ())[axis:axis + 1]
        if dim and dim[0] is not None and not (isinstance(dim[0], str) and dim[0].startswith("unk__")):
            elem = index.elem_type(node.output[0]) or onnx.TensorProto.INT64
            found.append(onnx.helper.make_tensor_value_info(node.output[0], elem, [dim[0]]))
    return found


# -- shape computations shared by several readers -------------------------------------------

SHAPE_SLOTS = {"Reshape": 1, "Expand": 1, "Resize": 3}  # inputs pruning may rewrite entry by entry
# ops a run-time shape is built of (the analysis follows them back to constants and Shape ops)
SHAPE_BUILDERS = {"Concat", "Where", "Equal", "Cast", "Identity", "Unsqueeze", "Squeeze", "Gather", "Slice", "Mul",
                  "ConstantOfShape"}
MAX_CHAIN = 32
SHAPE_TYPES = (onnx.TensorProto.INT64, onnx.TensorProto.INT32, onnx.TensorProto.BOOL)


def unshare_shape_computations(model: onnx.ModelProto) -> int:
    """Give each Reshape / Expand / Resize its own copy of a run-time shape computation it
    shares with others. torch's dynamo exporter builds ``[b, kv_heads * rep, s, d]`` once and
    feeds every layer's Reshape with it; pruning may keep a different number of heads per layer,
    and each layer's entry must be rewritten to its own count. The copies compute the same
    values. Returns how many readers got a copy."""
    g = model.graph
    index = GraphIndex(model)
    owned: set[str] = set()  # chain nodes a reader already uses
    before: dict[str, list[onnx.NodeProto]] = {}  # reader -> copies to insert before it
    for node in g.node:
        slot = SHAPE_SLOTS.get(node.op_type)
        if slot is None or len(node.input) <= slot or not node.input[slot] or node.domain not in ("", "ai.onnx"):
            continue
        chain = _builder_chain(index, node.input[slot])
        if chain is None:
            continue
        if owned.isdisjoint(n.name for n in chain):
            owned.update(n.name for n in chain)
            continue
        rename = {o: f"{o}__{node.name}" for n in chain for o in n.output}
        copies = []
        for n in chain:
            copy = onnx.NodeProto()
            copy.CopyFrom(n)
            copy.name = f"{n.name}__{node.name}"
            copy.input[:] = [rename.get(i, i) for i in n.input]
            copy.output[:] = [rename[o] for o in n.output]
            copies.append(copy)
        node.input[slot] = rename[node.input[slot]]
        before[node.name] = copies
    if not before:
        return 0
    nodes = []
    for node in g.node:
        nodes.extend(before.get(node.name, ()))
        nodes.append(node)
    del g.node[:]
    g.node.extend(nodes)
    return len(before)


def _builder_chain(index: GraphIndex, name: str) -> list[onnx.NodeProto] | None:
    """The shape-building nodes that compute ``name`` (up to Shape ops, constants and inputs),
    in graph order; None when there are none or too many."""
    found: dict[str, onnx.NodeProto] = {}
    stack = [name]
    while stack:
        node = index.producer.get(stack.pop())
        if node is None or node.name in found or node.op_type not in SHAPE_BUILDERS or \
                node.domain not in ("", "ai.onnx") or len(node.output) != 1 or \
                index.elem_type(node.output[0]) not in SHAPE_TYPES:
            continue
        found[node.name] = node
        if len(found) > MAX_CHAIN:
            return None
        stack.extend(i for i in node.input if i)
    if not found:
        return None
    order = {n.name: k for k, n in enumerate(index.graph.node)}
    return sorted(found.values(), key=lambda n: order[n.name])
