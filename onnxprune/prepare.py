"""Normalise a loaded model before analysis.

Real exports are messy; this makes them uniform without changing what they compute:
unique node names, Constant-node weights promoted to initializers, Identity nodes on
weights folded away, initializers removed from the graph inputs (IR >= 4), and every
intermediate shape dropped and re-inferred (stale annotations are common), what inference
leaves unknown probed by running the model (see ``onnxprune.probe``), and shape arithmetic
over static shapes folded into constants.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
import onnx
from onnx import numpy_helper

from onnxprune.errors import ShapeInferenceError
from onnxprune.graph import sync_initializer_inputs
from onnxprune.modelio import has_file_weights, light_copy, materialize, weight_bytes
from onnxprune.probe import MAX_PROBE_BYTES, _has_unknown, annotate, probe_shapes
from onnxprune.shapefold import fold_shape_computations

log = logging.getLogger(__name__)


def prepare(model: onnx.ModelProto) -> onnx.ModelProto:
    """Normalise ``model`` in place and return it."""
    set_input_shapes(model, {}, "<model>")
    fix_negative_dims(model.graph)
    name_nodes(model.graph)
    promote_constants(model.graph)
    fold_identity_on_weights(model.graph)
    drop_initializer_inputs(model)
    infer_shapes(model)
    probed = probe_shapes(_runnable(model))
    annotate(model, probed)
    if fold_shape_computations(model):
        infer_shapes(model)
        annotate(model, probed)
    return model


def _runnable(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model, or an in-memory copy of it when probing would run it with weights still in
    files (probing skips models over MAX_PROBE_BYTES and models with every shape known)."""
    if not has_file_weights(model) or weight_bytes(model) > MAX_PROBE_BYTES or not _has_unknown(model):
        return model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return materialize(copy)


def set_input_shapes(model: onnx.ModelProto, shapes: Mapping[str, Sequence[int | str]], source: str) -> None:
    """Apply user-given input shapes; refuse inputs whose rank is unknown."""
    inits = {t.name for t in model.graph.initializer}
    inputs = {vi.name: vi for vi in model.graph.input if vi.name not in inits}
    for name, dims in shapes.items():
        if name not in inputs:
            raise ShapeInferenceError(f"{source}: --input-shape names '{name}', which is not a model input "
                                      f"(inputs: {', '.join(inputs)})")
        tt = inputs[name].type.tensor_type
        tt.ClearField("shape")
        for d in dims:
            dim = tt.shape.dim.add()
            if isinstance(d, int) or str(d).isdigit():
                dim.dim_value = int(d)
            else:
                dim.dim_param = str(d)
    for name, vi in inputs.items():
        if vi.type.HasField("tensor_type") and not vi.type.tensor_type.HasField("shape"):
            raise ShapeInferenceError(
                f"{source}: input '{name}' has no shape information, so channel sizes cannot be inferred; "
                f"give it with --input-shape {name}=1,3,224,224 (use a name for a dynamic axis)")


def fix_negative_dims(graph: onnx.GraphProto) -> None:
    """Some exporters (Paddle) write a dynamic axis as dim_value -1; make it symbolic."""
    for vi in list(graph.input) + list(graph.output):
        if not vi.type.HasField("tensor_type"):
            continue
        for i, dim in enumerate(vi.type.tensor_type.shape.dim):
            if dim.HasField("dim_value") and dim.dim_value < 0:
                dim.dim_param = f"{vi.name}_dim{i}"


def name_nodes(graph: onnx.GraphProto) -> None:
    """Give every node a unique, deterministic name (unnamed ones get ``<op>_<index>``)."""
    used: set[str] = set()
    for i, node in enumerate(graph.node):
        base = node.name or f"{node.op_type}_{i}"
        name, k = base, 1
        while name in used:
            name, k = f"{base}__{k}", k + 1
        used.add(name)
        node.name = name


def promote_constants(graph: onnx.GraphProto) -> int:
    """Turn ``Constant`` nodes into initializers (Paddle and TF exporters store weights this way)."""
    outputs = {o.name for o in graph.output}
    keep: list[onnx.NodeProto] = []
    promoted = 0
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and node.output[0] not in outputs:
            tensor = _constant_value(node)
            if tensor is not None:
                tensor.name = node.output[0]
                graph.initializer.append(tensor)
                promoted += 1
                continue
        keep.append(node)
    if promoted:
        del graph.node[:]
        graph.node.extend(keep)
    return promoted


def _constant_value(node: onnx.NodeProto) -> onnx.TensorProto | None:
    for a in node.attribute:
        if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
            t = onnx.TensorProto()
            t.CopyFrom(a.t)
            return t
        if a.name in ("value_float", "value_floats", "value_int", "value_ints"):
            import numpy as np

            value = onnx.helper.get_attribute_value(a)
            dtype = np.float32 if "float" in a.name else np.int64
            return numpy_helper.from_array(np.array(value, dtype=dtype))
    return None


def fold_identity_on_weights(graph: onnx.GraphProto) -> int:
    """Remove Identity nodes whose input is an initializer, rewiring their users to it."""
    inits = {t.name for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    rename: dict[str, str] = {}
    keep: list[onnx.NodeProto] = []
    for node in graph.node:
        src = node.input[0] if node.input else ""
        src = rename.get(src, src)
        if node.op_type == "Identity" and src in inits and node.output[0] not in outputs:
            rename[node.output[0]] = src
            continue
        keep.append(node)
    if not rename:
        return 0
    for node in keep:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    del graph.node[:]
    graph.node.extend(keep)
    return len(rename)


def drop_initializer_inputs(model: onnx.ModelProto) -> None:
    """IR >= 4 models need not list initializers as inputs; doing so makes weights overridable."""
    if model.ir_version < 4:
        return
    inits = {t.name for t in model.graph.initializer}
    kept = [vi for vi in model.graph.input if vi.name not in inits]
    if len(kept) != len(model.graph.input):
        del model.graph.input[:]
        model.graph.input.extend(kept)


def infer_shapes(model: onnx.ModelProto, *, strict: bool = False) -> onnx.ModelProto:
    """Drop every intermediate shape annotation and infer them again, in place (the input
    entries of initializers in IR < 4 models included).

    Inference runs on a light copy (see ``modelio.light_copy``): the weights' values do
    not change any shape, and serialising them for onnx's C++ inference would copy them.
    """
    del model.graph.value_info[:]
    sync_initializer_inputs(model)
    source = light_copy(model)
    try:
        inferred = onnx.shape_inference.infer_shapes(source, strict_mode=strict, data_prop=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as exc:
        raise ShapeInferenceError(f"shape inference failed: {str(exc).splitlines()[0]}") from exc
    model.graph.value_info.extend(inferred.graph.value_info)
    for out, inf in zip(model.graph.output, inferred.graph.output):
        if not out.type.tensor_type.HasField("shape") and inf.type.tensor_type.HasField("shape"):
            out.type.CopyFrom(inf.type)
    return model
