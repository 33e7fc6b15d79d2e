"""Shape probing: resolve what static shape inference leaves unknown by running the model.

Exporters often leave intermediate dimensions unknown (a Reshape to ``[b, s, -1, 64]``
gives ``unk__18`` heads). The part of the graph that computes such tensors is run twice
in onnxruntime on random inputs with different sizes for the dynamic input axes; a
dimension equal in both runs is static, one that varies is dynamic and is named after its
two values (``d3_2``), so dimensions that vary together (batch, sequence) share a name
across the graph. Only unknown or symbolic dimensions are replaced; static shapes from
inference are kept.

Nothing runs for what inference resolved: a dimension inference carried over from a graph
input's symbolic axis (the batch axis of most CNNs) is named from the size each probe run
feeds that axis, which is what running would give. When every non-static dimension is of
that kind (ResNet-50 with a dynamic batch) no session is created and no weight is read.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

import numpy as np
import onnx

from onnxprune.graph import GraphIndex, subgraph_inputs

log = logging.getLogger(__name__)

MAX_PROBE_BYTES = 512 * 2**20  # skip models whose weights exceed this (probing runs them twice)
PROBES = ({"batch": 3, "spatial": 96, "seq": 11}, {"batch": 2, "spatial": 160, "seq": 13})

Shape = tuple  # ints for static dims, 'dA_B' for dynamic ones


def probe_shapes(model: onnx.ModelProto) -> dict[str, Shape]:
    """Tensor name -> probed shape (ints for static dims, 'dA_B' for dynamic ones) of every
    node output with a dimension that is not static; {} if not possible.

    Dimensions that are a graph input's symbol are named without running anything; tensors
    with other unknown dimensions, or none inferred, are measured by running only the nodes
    that compute them, twice."""
    from onnxprune.io.modelio import weight_bytes

    if weight_bytes(model) > MAX_PROBE_BYTES or not _has_unknown(model):
        return {}
    symbols = input_symbols(model)
    shapes: dict[str, Shape] = {}
    unresolved: list[str] = []
    for vi in _annotatable(model):
        shape = _from_symbols(vi, symbols)
        if shape is None:
            unresolved.append(vi.name)
        elif any(isinstance(d, str) for d in shape):
            shapes[vi.name] = shape
    # outputs inference gave nothing (unknown ops): annotated once a later inference lists them
    listed = {vi.name for vi in list(model.graph.value_info) + list(model.graph.output)}
    unresolved += [o for n in model.graph.node for o in n.output if o and o not in listed]
    if not unresolved:
        return shapes
    dtypes: dict[str, np.dtype] = {}
    try:
        runs = _run_twice(model, unresolved, dtypes)
    except Exception as exc:  # noqa: BLE001 - probing is best effort; inference results stand
        log.info("shape probing skipped: %s", exc)
        return {}
    # outputs of ops onnx cannot infer (onnxruntime's com.microsoft ops): annotate lists them
    # with the type they were measured with
    shapes = Probed(shapes, {n: d for n, d in dtypes.items() if n not in listed and d != np.dtype(object)})
    for name, a in runs[0].items():
        b = runs[1].get(name)
        if b is None or len(a) != len(b):
            continue
        shapes[name] = tuple(x if x == y else f"d{x}_{y}" for x, y in zip(a, b))
    return shapes


class Probed(dict):
    """Probed shapes, with the dtypes of tensors shape inference does not list (outputs of
    ops it does not know: onnxruntime's com.microsoft ops)."""

    def __init__(self, shapes: dict[str, Shape], dtypes: dict[str, np.dtype]) -> None:
        super().__init__(shapes)
        self.dtypes = dtypes


def annotate(model: onnx.ModelProto, shapes: dict[str, tuple]) -> int:
    """Fill unknown/symbolic dims of value_info (adding entries where missing) from probed shapes."""
    known = {vi.name: vi for vi in list(model.graph.value_info) + list(model.graph.output)}
    for name, dtype in getattr(shapes, "dtypes", {}).items():
        if name not in known and name in shapes:
            known[name] = onnx.helper.make_tensor_value_info(name, onnx.helper.np_dtype_to_tensor_dtype(dtype), None)
            model.graph.value_info.append(known[name])
            known[name] = model.graph.value_info[-1]
    inits = {t.name for t in model.graph.initializer}
    inputs = {vi.name for vi in model.graph.input}
    changed = 0
    for name, shape in shapes.items():
        if name in inits or name in inputs:
            continue
        vi = known.get(name)
        if vi is None:
            continue
        tt = vi.type.tensor_type
        if not tt.HasField("shape") or len(tt.shape.dim) != len(shape):
            tt.ClearField("shape")
            for d in shape:
                tt.shape.dim.add()
        for dim, value in zip(tt.shape.dim, shape):
            if dim.HasField("dim_value") and dim.dim_value >= 0:
                continue
            if isinstance(value, int):
                dim.dim_value = value
            else:
                dim.dim_param = value
            changed += 1
    return changed


def input_symbols(model: onnx.ModelProto) -> dict[str, str]:
    """Symbolic axis of a graph input -> its probed name ('d3_2': the sizes the two runs feed
    it). A symbol fed different sizes at different places is left out (running decides)."""
    index = GraphIndex(model)
    names: dict[str, str | None] = {}
    for vi in _fed_inputs(model, index):
        dims = index.shape(vi.name) or ()
        try:
            floating = _is_floating(vi)
        except (KeyError, TypeError, ValueError):  # not a plain tensor: running decides
            return {}
        for i, d in enumerate(dims):
            if not isinstance(d, str):
                continue
            name = "d{}_{}".format(*(_input_size(i, dims, floating, sizes) for sizes in PROBES))
            names[d] = name if names.get(d, name) == name else None
    return {symbol: name for symbol, name in names.items() if name is not None}


def _annotatable(model: onnx.ModelProto) -> Iterable[onnx.ValueInfoProto]:
    """The value infos ``annotate`` may fill: intermediates and graph outputs, tensors only."""
    skip = {t.name for t in model.graph.initializer} | {vi.name for vi in model.graph.input}
    for vi in list(model.graph.value_info) + list(model.graph.output):
        if vi.name not in skip and vi.type.HasField("tensor_type"):
            yield vi


def _from_symbols(vi: onnx.ValueInfoProto, symbols: Mapping[str, str]) -> Shape | None:
    """The shape with input symbols named as probing would name them; None when a dim is
    unknown or another symbol (inference left it for probing to resolve)."""
    tt = vi.type.tensor_type
    if not tt.HasField("shape"):
        return None
    out: list[int | str] = []
    for d in tt.shape.dim:
        if d.HasField("dim_value") and d.dim_value >= 0:
            out.append(int(d.dim_value))
        elif d.HasField("dim_param") and d.dim_param in symbols:
            out.append(symbols[d.dim_param])
        else:
            return None
    return tuple(out)


def _has_unknown(model: onnx.ModelProto) -> bool:
    listed = {vi.name for vi in list(model.graph.value_info) + list(model.graph.output)}
    if any(o and o not in listed for n in model.graph.node for o in n.output):  # ops inference does not know
        return True
    for vi in model.graph.value_info:
        if not vi.type.HasField("tensor_type"):
            continue
        if not vi.type.tensor_type.HasField("shape"):
            return True
        if any(not d.HasField("dim_value") for d in vi.type.tensor_type.shape.dim):
            return True
    return False


def _run_twice(model: onnx.ModelProto, names: list[str],
               dtypes: dict[str, np.dtype] | None = None) -> list[dict[str, tuple[int, ...]]]:
    """Shapes of ``names`` in both probe runs of the subgraph that computes them (their
    dtypes into ``dtypes`` when given)."""
    from onnxprune.io.modelio import has_file_weights, materialize
    from onnxprune.runtime.session import session

    sub = _subgraph(model, names)
    if has_file_weights(sub):
        materialize(sub)
    index = GraphIndex(sub)
    outputs = [vi.name for vi in sub.graph.output]
    sess = session(sub, quiet=True)  # a failed probe is expected and handled: no log
    runs = []
    for seed, sizes in enumerate(PROBES):
        values = sess.run(outputs, _feeds(sub, index, sizes, seed))
        runs.append({n: tuple(int(d) for d in np.shape(v)) for n, v in zip(outputs, values)})
        if dtypes is not None:
            dtypes.update((n, np.asarray(v).dtype) for n, v in zip(outputs, values))
    return runs


def _subgraph(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of the nodes, initializers and inputs that compute ``names``, with those as outputs."""
    graph = model.graph
    producer = {o: i for i, n in enumerate(graph.node) for o in n.output if o}
    needed: set[int] = set()
    read: set[str] = set()
    stack = [n for n in names if n in producer]
    while stack:
        k = producer.get(stack.pop())
        if k is None or k in needed:
            continue
        needed.add(k)
        node = graph.node[k]
        for name in [*node.input, *subgraph_inputs(node)]:
            if name and name not in read:
                read.add(name)
                stack.append(name)
    index = GraphIndex(model)
    sub = _shell(model)
    sub.graph.node.extend(graph.node[k] for k in sorted(needed))
    sub.graph.initializer.extend(t for t in graph.initializer if t.name in read)
    sub.graph.input.extend(vi for vi in graph.input if vi.name in read)
    made = {o for k in needed for o in graph.node[k].output}
    sub.graph.value_info.extend(vi for vi in graph.value_info if vi.name in made)
    sub.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names
                            if n in made and _is_tensor(index, n))
    return sub


def _shell(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model without its graph's contents: IR version, opsets, functions and metadata
    (where weights still in files are found)."""
    shell = onnx.ModelProto(ir_version=model.ir_version)
    shell.opset_import.extend(model.opset_import)
    shell.functions.extend(model.functions)
    shell.metadata_props.extend(model.metadata_props)
    shell.graph.name = model.graph.name
    return shell


def _feeds(model: onnx.ModelProto, index: GraphIndex, sizes: dict[str, int], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for vi in _fed_inputs(model, index):
        dims = index.shape(vi.name) or ()
        dtype = onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
        floating = np.issubdtype(dtype, np.floating)
        shape = [_input_size(i, dims, floating, sizes) for i in range(len(dims))]
        if floating:
            feeds[vi.name] = rng.standard_normal(shape).astype(dtype)
        elif "mask" in vi.name.lower() or dtype == np.bool_:
            feeds[vi.name] = np.ones(shape, dtype=dtype)
        else:
            feeds[vi.name] = rng.integers(0, 4, size=shape).astype(dtype)
    return feeds


def _fed_inputs(model: onnx.ModelProto, index: GraphIndex) -> list[onnx.ValueInfoProto]:
    return [vi for vi in model.graph.input if vi.name not in index.initializers]


def _is_floating(vi: onnx.ValueInfoProto) -> bool:
    return np.issubdtype(onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type), np.floating)


def _input_size(i: int, dims: tuple, floating: bool, sizes: dict[str, int]) -> int:
    """The size a probe run feeds axis ``i`` of an input: its static size, else the batch
    size on axis 0, the spatial size on the other axes of a float input of rank >= 3, else
    the sequence length."""
    d = dims[i]
    if isinstance(d, int):
        return d
    if i == 0:
        return sizes["batch"]
    return sizes["spatial"] if floating and len(dims) >= 3 else sizes["seq"]


def _is_tensor(index: GraphIndex, name: str) -> bool:
    vi_type = index.elem_type(name)
    return vi_type is None or vi_type != 0
