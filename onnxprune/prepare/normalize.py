"""Normalise a loaded model before analysis.

Real exports are messy; this makes them uniform without changing what they compute:
unique node names, Constant-node weights promoted to initializers, Identity nodes on
weights folded away, initializers removed from the graph inputs (IR >= 4), and every
intermediate shape dropped and re-inferred (stale annotations are common), what inference
leaves unknown probed by running the nodes that compute it (see ``onnxprune.prepare.shape_probe``), and shape arithmetic
over static shapes folded into constants.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence

import onnx
from onnx import numpy_helper

from onnxprune.errors import SelectionError, ShapeInferenceError
from onnxprune.graph import sync_initializer_inputs
from onnxprune.io.modelio import light_copy
from onnxprune.prepare.shape_probe import annotate, probe_shapes
from onnxprune.prepare.shapefold import fold_shape_computations, range_lengths

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
    probed = probe_shapes(model)
    annotate(model, probed)
    if fold_shape_computations(model):
        infer_shapes(model)
        annotate(model, probed)
    return model


_DIM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def parse_input_shapes(specs: Sequence[str] | None) -> dict[str, list[int | str]]:
    """``NAME=d1,d2,...`` specs (``--input-shape``) as {name: dims}.

    A dimension is a positive integer or a name (a dynamic axis, ``[A-Za-z_][A-Za-z0-9_]*``);
    the list may be wrapped in one pair of brackets (``x=[1,3,224,224]``). Anything else, an
    empty name or a name given twice is refused with a SelectionError quoting the spec."""
    shapes: dict[str, list[int | str]] = {}
    for spec in specs or ():
        name, sep, text = spec.partition("=")
        name, text = name.strip(), text.strip()
        if text[:1] in "[(" and text[-1:] == {"[": "]", "(": ")"}.get(text[:1]):
            text = text[1:-1].strip()
        if not sep or not name or not text:
            raise SelectionError(f"--input-shape expects NAME=d1,d2,... (for example x=1,3,224,224); got {spec!r}")
        if name in shapes:
            raise SelectionError(f"--input-shape gives input '{name}' twice")
        shapes[name] = [_parse_dim(d.strip(), spec) for d in text.split(",")]
    return shapes


def _parse_dim(text: str, spec: str) -> int | str:
    if text.isdigit() and int(text) > 0:
        return int(text)
    if _DIM_NAME.fullmatch(text):
        return text
    raise SelectionError(f"--input-shape {spec!r}: dimension {text!r} is neither a positive integer nor a name "
                         "(use a name such as N for a dynamic axis)")


def set_input_shapes(model: onnx.ModelProto, shapes: Mapping[str, Sequence[int | str]], source: str) -> None:
    """Apply user-given input shapes; refuse unknown inputs, invalid dimensions, a rank other
    than the model's, and inputs whose rank is unknown."""
    inits = {t.name for t in model.graph.initializer}
    inputs = {vi.name: vi for vi in model.graph.input if vi.name not in inits}
    for name, dims in shapes.items():
        if name not in inputs:
            raise ShapeInferenceError(f"{source}: --input-shape names '{name}', which is not a model input "
                                      f"(inputs: {', '.join(inputs) or 'none'})")
        spec = f"{name}={','.join(map(str, dims))}"
        parsed = [d if isinstance(d, int) and not isinstance(d, bool) and d > 0 else _parse_dim(str(d).strip(), spec)
                  for d in dims]
        if not inputs[name].type.HasField("tensor_type"):
            raise ShapeInferenceError(f"{source}: --input-shape names '{name}', which is not a tensor input")
        tt = inputs[name].type.tensor_type
        if tt.HasField("shape") and len(tt.shape.dim) != len(parsed):
            raise ShapeInferenceError(f"{source}: --input-shape gives input '{name}' rank {len(parsed)} "
                                      f"({spec}), but the model's input has rank {len(tt.shape.dim)}")
        tt.ClearField("shape")
        tt.shape.SetInParent()
        for d in parsed:
            dim = tt.shape.dim.add()
            if isinstance(d, int):
                dim.dim_value = d
            else:
                dim.dim_param = d
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


def dynamic_axes(model: onnx.ModelProto, *, floats_only: bool = False) -> dict[str, list[int]]:
    """Per graph input (optionally only float ones), the axes after the first whose size is not
    fixed: an image's height and width, an audio clip's length, a token sequence."""
    inits = {t.name for t in model.graph.initializer}
    out = {}
    for vi in model.graph.input:
        tt = vi.type.tensor_type
        if vi.name in inits or not vi.type.HasField("tensor_type") or not tt.HasField("shape"):
            continue
        if floats_only and tt.elem_type not in FLOAT_ELEM_TYPES:
            continue
        axes = [i for i, d in enumerate(tt.shape.dim) if i > 0 and not d.HasField("dim_value")]
        if axes:
            out[vi.name] = axes
    return out


FLOAT_ELEM_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16,
                    onnx.TensorProto.DOUBLE)


def shaped_copy(model: onnx.ModelProto, shapes: Mapping[str, Sequence[int]], source: str) -> onnx.ModelProto:
    """The structure of a prepared ``model`` with the given static input ``shapes`` and every
    shape inferred again; its initializers keep their names, types and dims but no values
    (nothing large is copied). The sizes to count a model with dynamic axes at
    (``analysis.analyze(mac_shapes=...)``, ``flops.node_macs``); not a runnable model."""
    light = light_copy(model)
    set_input_shapes(light, shapes, source)
    infer_shapes(light)
    stub = onnx.ModelProto()
    stub.ir_version = light.ir_version
    stub.opset_import.extend(model.opset_import)
    graph = stub.graph
    graph.node.extend(model.graph.node)
    inits = {t.name for t in model.graph.initializer}
    graph.input.extend(vi for vi in light.graph.input if vi.name not in inits)
    graph.output.extend(light.graph.output)
    graph.value_info.extend(light.graph.value_info)
    for t in model.graph.initializer:
        graph.initializer.add(name=t.name, data_type=t.data_type, dims=t.dims)
    return stub


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
        lengths = range_lengths(inferred)  # arange(x.size(i)): inference again, with their lengths given
        if lengths:
            source.graph.value_info.extend(lengths)
            inferred = onnx.shape_inference.infer_shapes(source, strict_mode=strict, data_prop=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as exc:
        raise ShapeInferenceError(f"shape inference failed: {str(exc).splitlines()[0]}") from exc
    model.graph.value_info.extend(inferred.graph.value_info)
    for out, inf in zip(model.graph.output, inferred.graph.output):
        if not out.type.tensor_type.HasField("shape") and inf.type.tensor_type.HasField("shape"):
            out.type.CopyFrom(inf.type)
    return model
