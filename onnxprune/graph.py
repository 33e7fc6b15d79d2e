"""The one place that knows how the ONNX protobuf is laid out.

GraphIndex answers the questions analysis and passes ask: who produces a tensor,
who uses it (node and input slot, so ``Add(x, x)`` is two uses), its static shape,
and the value of a constant input.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator

import numpy as np
import onnx

from onnxprune.io.external import is_mapped, read_tensor, release_all, source_of, tensor_nbytes

Dim = int | str | None
SMALL_CONST_BYTES = 64 * 1024
# mapped weights read and done with are dropped from the resident set in batches of this
# size: one madvise per weight made ResNet-50's compile 15% slower for the same peak memory;
# 64 MiB batches doubled its peak
RELEASE_BATCH_BYTES = 4 << 20


class GraphIndex:
    """A read-only index over a model's main graph. Rebuild it after editing the graph."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        g = model.graph
        self.graph = g
        self.initializers: dict[str, onnx.TensorProto] = {t.name: t for t in g.initializer}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.uses: dict[str, list[tuple[onnx.NodeProto, int]]] = defaultdict(list)
        self.nodes: dict[str, onnx.NodeProto] = {}
        producer, uses, nodes = self.producer, self.uses, self.nodes
        for node in g.node:
            nodes[node.name] = node
            for out in node.output:
                if out:
                    producer[out] = node
            for slot, name in enumerate(node.input):
                if name:
                    uses[name].append((node, slot))
            if node.attribute and _has_subgraph(node):
                for name in subgraph_inputs(node):
                    self.uses[name].append((node, -1))
        self.graph_inputs = {vi.name for vi in g.input if vi.name not in self.initializers}
        self.graph_outputs = [vi.name for vi in g.output]
        self._vi: dict[str, onnx.ValueInfoProto] | None = None  # built on the first shape question
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
        self._arrays: dict[str, np.ndarray] = {}
        self._source = source_of(model)  # where weights still in files live
        self._unreleased = 0  # bytes of mapped weights read since the last release

    @property
    def _value_info(self) -> dict[str, onnx.ValueInfoProto]:
        if self._vi is None:
            g = self.graph
            self._vi = {vi.name: vi for vi in (*g.input, *g.value_info, *g.output)}
        return self._vi

    # -- values -----------------------------------------------------------
    def is_const(self, name: str) -> bool:
        return name in self.initializers

    def const(self, name: str, *, unaligned_ok: bool = False) -> np.ndarray | None:
        """The value of an initializer (read-only), or None for a computed tensor.

        Small constants (shapes, split sizes) are cached; weights are decoded on each call
        so that a pass over every weight never holds a second copy of the model. A weight
        mapped from the model file is a view of the file; ``unaligned_ok`` accepts a view
        whose data is not aligned (fine to copy or slice, slow to compute on).
        """
        cached = self._arrays.get(name)
        if cached is not None:
            return cached
        init = self.initializers.get(name)
        if init is None:
            return None
        value = read_tensor(init, self.model, self._source, unaligned_ok=unaligned_ok)
        if value.nbytes <= SMALL_CONST_BYTES and value.flags.aligned:
            self._arrays[name] = value
        return value

    def forget(self, name: str) -> None:
        """Initializer ``name`` was edited: drop its cached value."""
        self._arrays.pop(name, None)

    def release(self, name: str) -> None:
        """Done reading initializer ``name`` for now: a weight mapped from the model file
        leaves this process's resident memory (``onnxprune.io.external.release_all``) once
        ``RELEASE_BATCH_BYTES`` of such weights were read, all at once."""
        init = self.initializers.get(name)
        if init is None or not is_mapped(init, self._source[1]):
            return
        self._unreleased += tensor_nbytes(init)
        if self._unreleased >= RELEASE_BATCH_BYTES:
            release_all(self.model)
            self._unreleased = 0

    def const_shape(self, name: str) -> tuple[int, ...] | None:
        init = self.initializers.get(name)
        return tuple(init.dims) if init is not None else None

    def shape(self, name: str) -> tuple[Dim, ...] | None:
        """The tensor's shape: ints for static dims, strings for symbolic ones, None when unknown."""
        if name in self.initializers:
            return tuple(int(d) for d in self.initializers[name].dims)
        vi = self._value_info.get(name)
        if vi is None or not vi.type.HasField("tensor_type") or not vi.type.tensor_type.HasField("shape"):
            return None
        dims: list[Dim] = []
        for d in vi.type.tensor_type.shape.dim:
            if d.HasField("dim_value") and d.dim_value >= 0:
                dims.append(int(d.dim_value))
            elif d.HasField("dim_param"):
                dims.append(d.dim_param)
            else:
                dims.append(None)
        return tuple(dims)

    def rank(self, name: str) -> int | None:
        s = self.shape(name)
        return None if s is None else len(s)

    def elem_type(self, name: str) -> int | None:
        if name in self.initializers:
            return self.initializers[name].data_type
        vi = self._value_info.get(name)
        if vi is None or not vi.type.HasField("tensor_type"):
            return None
        return vi.type.tensor_type.elem_type

    def users(self, name: str) -> list[tuple[onnx.NodeProto, int]]:
        return self.uses.get(name, [])

    def topo_nodes(self) -> Iterator[onnx.NodeProto]:
        return iter(self.graph.node)


def attr(node: onnx.NodeProto, name: str, default=None):  # noqa: ANN001, ANN201 - mirrors onnx helper
    """An attribute's value, or default when absent."""
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def set_attr(node: onnx.NodeProto, name: str, value) -> None:  # noqa: ANN001
    """Set (replace) an attribute on a node."""
    for i, a in enumerate(node.attribute):
        if a.name == name:
            del node.attribute[i]
            break
    node.attribute.append(onnx.helper.make_attribute(name, value))


_GRAPH_TYPES = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)


def _has_subgraph(node: onnx.NodeProto) -> bool:
    return any(a.type in _GRAPH_TYPES for a in node.attribute)


def subgraph_inputs(node: onnx.NodeProto) -> set[str]:
    """Names a node's subgraphs (If/Loop/Scan bodies) read from the outer scope."""
    names: set[str] = set()
    for a in node.attribute:
        graphs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
        for sub in graphs:
            local = {t.name for t in sub.initializer} | {vi.name for vi in sub.input}
            for n in sub.node:
                local.update(n.output)
            for n in sub.node:
                for name in n.input:
                    if name and name not in local:
                        names.add(name)
                names.update(subgraph_inputs(n) - local)
    return names


def drop_initializers(graph: onnx.GraphProto, keep: set[str]) -> bool:
    """Remove the initializers not named in ``keep``, with their graph-input entries (IR < 4
    lists every initializer among the inputs: left behind, one would become an input to feed).
    True when any was removed."""
    gone = {t.name for t in graph.initializer} - keep
    if not gone:
        return False
    live = [t for t in graph.initializer if t.name not in gone]
    del graph.initializer[:]
    graph.initializer.extend(live)
    inputs = [vi for vi in graph.input if vi.name not in gone]
    if len(inputs) != len(graph.input):
        del graph.input[:]
        graph.input.extend(inputs)
    return True


def sync_initializer_inputs(model: onnx.ModelProto) -> None:
    """IR < 4 lists every initializer among the graph inputs: give each listed one its
    initializer's current type (a sliced weight's entry would be stale) and list new ones."""
    if model.ir_version >= 4:
        return
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    listed = set()
    for vi in g.input:
        t = inits.get(vi.name)
        if t is not None:
            listed.add(vi.name)
            vi.type.CopyFrom(onnx.helper.make_tensor_type_proto(t.data_type, list(t.dims)))
    for t in g.initializer:
        if t.name not in listed:
            g.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))


def static_batch(model: onnx.ModelProto) -> int | None:
    """The first input's batch size when it is fixed in the graph, else None."""
    initializers = {t.name for t in model.graph.initializer}
    for vi in model.graph.input:
        if vi.name in initializers:
            continue
        dims = vi.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value"):
            return int(dims[0].dim_value)
        return None
    return None


def batch_axes(model: onnx.ModelProto) -> dict[str, int]:
    """Graph input -> the axis that holds the batch, for the inputs that have one.

    The first input's batch is its axis 0. Another input's is the first axis named like it
    (a recurrent state [layers, batch, hidden] has it on axis 1); when the batch size is a
    fixed number, axis 0 if it has that size. Inputs without it (a scalar option, a fixed
    state) are fed whole; inputs of unknown shape are assumed to have it on axis 0."""
    initializers = {t.name for t in model.graph.initializer}
    inputs = [vi for vi in model.graph.input if vi.name not in initializers]

    def dims(vi: onnx.ValueInfoProto) -> list[str | int | None] | None:
        t = vi.type.tensor_type
        if not t.HasField("shape"):
            return None
        return [d.dim_param if d.HasField("dim_param") else (int(d.dim_value) if d.HasField("dim_value") else None)
                for d in t.shape.dim]

    if not inputs:
        return {}
    first = dims(inputs[0])
    batch = first[0] if first else None
    out: dict[str, int] = {}
    for vi in inputs:
        d = dims(vi)
        if d is None or (vi is inputs[0] and d):
            out[vi.name] = 0
        elif isinstance(batch, str) and batch in d:
            out[vi.name] = d.index(batch)
        elif d and (batch is None or (isinstance(batch, int) and d[0] == batch)):
            out[vi.name] = 0
    return out
