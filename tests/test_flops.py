"""MACs and parameters counted per op, checked against independent counts: torch forward
hooks on the zoo's modules, and runtime shapes of the pruned models in onnxruntime."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest

from onnxprune.api import load
from onnxprune.analysis.flops import model_cost
from tests.plans import random_masking_plan
from onnxprune.analysis import analyze
from onnxprune.api import apply_plan
from tests.zoo_cache import TEST_WIDTH, ZOO_NAMES, zoo_path

torch = pytest.importorskip("torch")
from models import ZOO, make_inputs  # noqa: E402


def torch_macs_and_params(name: str) -> tuple[int, int]:
    module = ZOO[name].build(width=TEST_WIDTH.get(name, 0.5))
    total = 0

    def hook(mod, inputs, output):  # noqa: ANN001, ANN202
        nonlocal total
        if isinstance(mod, torch.nn.Conv2d | torch.nn.Conv1d | torch.nn.Conv3d):
            total += output.numel() * (mod.in_channels // mod.groups) * math.prod(mod.kernel_size)
        elif isinstance(mod, torch.nn.ConvTranspose2d):
            total += inputs[0].numel() * (mod.out_channels // mod.groups) * math.prod(mod.kernel_size)
        elif isinstance(mod, torch.nn.Linear):
            total += output.numel() * mod.in_features

    handles = [m.register_forward_hook(hook) for m in module.modules()]
    feeds = {k: torch.from_numpy(v) for k, v in make_inputs(name).items()}
    with torch.no_grad():
        module(*feeds.values())
    for h in handles:
        h.remove()
    params = sum(p.numel() for n, p in module.named_parameters())
    return total, params


# MatMuls of two activations (attention scores and context) that no module hook sees:
# 2 x seq^2 x hidden per layer (2 layers).
ATTENTION_MACS = {"bert": 2 * 2 * 16 * 16 * 128 // 2, "bert_decomposed_ln": 2 * 2 * 16 * 16 * 128 // 2,
                  "vit": 2 * 2 * 65 * 65 * 32}


@pytest.mark.parametrize("name", [n for n in ZOO_NAMES if n != "conv_lstm"])
def test_macs_match_torch_hooks(name):
    expected, _ = torch_macs_and_params(name)
    assert model_cost(load(zoo_path(name))).macs == expected + ATTENTION_MACS.get(name, 0)


def _runtime_shapes(model: onnx.ModelProto, feeds) -> dict[str, tuple[int, ...]]:
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    names = [o for n in probe.graph.node for o in n.output if o]
    probe.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names)
    del probe.graph.value_info[:]
    sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    values = sess.run(names, feeds)
    shapes = {n: v.shape for n, v in zip(names, values)}
    shapes.update({k: v.shape for k, v in feeds.items()})
    return shapes


def independent_macs(model: onnx.ModelProto, feeds) -> int:
    """MACs from runtime tensor shapes (not from shape inference)."""
    shapes = _runtime_shapes(model, feeds)
    weights = {t.name: tuple(t.dims) for t in model.graph.initializer}
    total = 0
    for n in model.graph.node:
        if n.op_type == "Conv":
            total += math.prod(shapes[n.output[0]]) * math.prod(weights[n.input[1]][1:])
        elif n.op_type == "ConvTranspose":
            total += math.prod(shapes[n.input[0]]) * math.prod(weights[n.input[1]][1:])
        elif n.op_type in ("Gemm", "MatMul"):
            total += math.prod(shapes[n.output[0]]) * shapes[n.input[0]][-1]
    return total


@pytest.mark.parametrize("name", ["resnet18", "mobilenetv2", "unet", "yolo", "vgg", "densenet"])
def test_pruned_macs_match_runtime_shapes(name):
    from onnxprune.runtime.session import random_inputs

    model = load(zoo_path(name))
    analysis = analyze(model)
    result = apply_plan(model, analysis, random_masking_plan(analysis, seed=3))
    feeds = random_inputs(model)
    assert result.after.macs == independent_macs(result.model, feeds)
    assert result.after.macs < result.before.macs
    assert result.before.macs == independent_macs(model, feeds)


def test_params_count_is_every_used_initializer_element():
    model = load(zoo_path("mlp"))
    expected = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    assert model_cost(model).params == expected
    _, torch_params = torch_macs_and_params("mlp")
    assert expected == torch_params


def test_matmul_macs_take_the_reduced_size_from_a_constant_weight():
    """A MatMul whose input's last axis inference left unknown (Reshape to [b, s, -1] after
    attention) still counts K MACs per output element: K comes from the weight's shape."""
    from onnx import TensorProto, helper, numpy_helper

    from onnxprune.analysis.flops import node_macs
    from onnxprune.graph import GraphIndex

    w = numpy_helper.from_array(np.ones((12, 5), np.float32), "w")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, "k"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 5])
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g", [x], [y], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert node_macs(GraphIndex(model), model.graph.node[0]) == 2 * 3 * 5 * 12
