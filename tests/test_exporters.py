"""Graphs as different exporters write them: opsets 11 to 21, the dynamo exporter,
Constant-node weights (Paddle), weights behind Identity/Cast, dynamic batch, QDQ."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper, version_converter

from onnxprune.analysis import analyze
from onnxprune.api import load
from onnxprune.prepare.normalize import prepare
from onnxprune.prepare.shapefold import MAX_ELEMENTS
from tests.equivalence import assert_matches_masked, prune_randomly_and_check
from tests.zoo_cache import zoo_path

torch = pytest.importorskip("torch")
from models import export_onnx  # noqa: E402


@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize("name", ["resnet18", "mobilenetv2", "shufflenetv2", "unet"])
def test_legacy_exporter_opsets(tmp_path, name, opset):
    path = export_onnx(name, tmp_path / "m.onnx", width=0.25, opset=opset)
    prune_randomly_and_check(load(path), seed=opset)


@pytest.mark.parametrize("name", ["resnet18", "yolo", "shufflenetv2"])
def test_converted_to_opset_21(name):
    model = onnx.load(zoo_path(name))
    converted = version_converter.convert_version(model, 21)
    prune_randomly_and_check(prepare(converted), seed=21)


@pytest.mark.parametrize("name", ["vgg", "unet", "yolo", "mlp", "resnet18", "mobilenetv3"])
def test_dynamo_exporter(name):
    try:
        path = zoo_path(name, dynamo=True)
    except Exception as exc:  # noqa: BLE001 - an exporter failure is not ours to test
        pytest.skip(f"dynamo export failed: {exc}")
    prune_randomly_and_check(load(path), seed=5)


def _to_constant_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Paddle style: every weight in a Constant node instead of an initializer."""
    consts = [onnx.helper.make_node("Constant", [], [t.name], value=t) for t in model.graph.initializer]
    nodes = consts + list(model.graph.node)
    del model.graph.initializer[:]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def test_constant_node_weights():
    model = _to_constant_nodes(onnx.load(zoo_path("mobilenetv3")))
    onnx.checker.check_model(model)
    prune_randomly_and_check(prepare(model), seed=2)


def test_weights_behind_identity_and_cast():
    model = onnx.load(zoo_path("resnet18"))
    g = model.graph
    extra = []
    for i, t in enumerate(list(g.initializer)[:12]):
        users = [(n, s) for n in g.node for s, x in enumerate(n.input) if x == t.name]
        if i % 2:
            extra.append(onnx.helper.make_node("Identity", [t.name], [t.name + "_id"]))
            new = t.name + "_id"
        else:  # stored as float16, cast at run time
            half = numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), t.name + "_h")
            g.initializer.append(half)
            extra.append(onnx.helper.make_node("Cast", [half.name], [t.name + "_c"], to=onnx.TensorProto.FLOAT))
            new = t.name + "_c"
        for n, s in users:
            n.input[s] = new
    nodes = extra + list(g.node)
    del g.node[:]
    g.node.extend(nodes)
    model = prepare(model)
    assert not any(n.op_type in ("Identity", "Cast") and n.input[0].endswith(("_h", "")) and
                   n.output[0].endswith(("_id", "_c")) for n in model.graph.node)
    prune_randomly_and_check(model, seed=4)


def test_weights_behind_layout_ops(tmp_path):
    """Weights stored in another layout and rearranged at run time (TensorFlow's transposed
    kernels, Caffe2's Unsqueeze'd BatchNorm scales, a Reshape'd classifier) are folded into
    plain initializers, whatever their size, in the model's own opset (opset 11's Unsqueeze
    takes an ``axes`` attribute): the model prunes as the plain export does."""
    path = export_onnx("resnet18", tmp_path / "m.onnx", width=1.0, opset=11)
    plain = analyze(load(path))
    model = onnx.load(path)
    g = model.graph

    def stored_as(name: str, value: np.ndarray, op: str, **attrs) -> onnx.NodeProto:
        g.initializer.append(numpy_helper.from_array(np.ascontiguousarray(value), name + "_t"))
        inputs = [name + "_t"]
        if op == "Reshape":
            g.initializer.append(numpy_helper.from_array(np.array(attrs.pop("shape"), dtype=np.int64), name + "_s"))
            inputs.append(name + "_s")
        return onnx.helper.make_node(op, inputs, [name + "_v"], **attrs)

    extra = []
    large = [t for t in g.initializer if np.prod(t.dims) > MAX_ELEMENTS]  # folded only as weight views
    for i, t in enumerate(large):
        w = numpy_helper.to_array(t)
        if w.ndim == 4 and w.shape[2:] == (1, 1):
            extra.append(stored_as(t.name, w[:, :, 0, 0], "Unsqueeze", axes=[2, 3]))
        elif i % 2 or w.ndim == 2:
            perm = list(range(w.ndim))[::-1]
            extra.append(stored_as(t.name, w.transpose(perm), "Transpose", perm=perm))
        else:
            extra.append(stored_as(t.name, w.reshape(-1), "Reshape", shape=w.shape))
        for n in g.node:
            for s, x in enumerate(n.input):
                if x == t.name:
                    n.input[s] = t.name + "_v"
    nodes = extra + list(g.node)
    del g.node[:]
    g.node.extend(nodes)
    onnx.checker.check_model(model, full_check=True)
    assert {n.op_type for n in extra} == {"Transpose", "Unsqueeze", "Reshape"}
    model = prepare(model)
    assert not any(n.output[0].endswith("_v") for n in model.graph.node)
    analysis = analyze(model)
    assert [g.size for g in analysis.prunable_groups] == [g.size for g in plain.prunable_groups]
    prune_randomly_and_check(model, seed=6)


def test_dynamic_batch_stays_dynamic(tmp_path):
    path = export_onnx("resnet18", tmp_path / "m.onnx", width=0.25, dynamic_batch=True)
    model = load(path)
    analysis, plan, result = prune_randomly_and_check(model, seed=3)
    dim0 = result.model.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param and not dim0.HasField("dim_value")
    assert_matches_masked(model, analysis, plan, result, seed=1, batch=3)


def test_qdq_graph_prunes_with_its_quantized_weights(tmp_path):
    """Issue 14: a QDQ graph prunes; quantized weights are sliced with their scales (more in
    tests/test_quantized.py)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    src = export_onnx("resnet18", tmp_path / "fp32.onnx", width=0.25)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(0)
            self.data = iter([{"input": rng.standard_normal((1, 3, 64, 64)).astype(np.float32)} for _ in range(4)])

        def get_next(self):  # noqa: ANN201
            return next(self.data, None)

    dst = tmp_path / "qdq.onnx"
    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ)
    model = load(dst)
    analysis = analyze(model)
    from onnxprune.graph import GraphIndex

    index = GraphIndex(model)
    quantized = {n.name for n in model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")
                 and getattr(index.producer.get(n.input[1]), "op_type", "") == "DequantizeLinear"}
    assert quantized
    in_groups = {name for g in analysis.prunable_groups for name in g.producers + g.consumers}
    assert len(quantized & in_groups) >= len(quantized) // 2
    prune_randomly_and_check(model, seed=0)
