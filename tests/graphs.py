"""Small hand-built ONNX graphs shared by the tests (no torch needed)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxprune.prepare.normalize import prepare


def _w(rng: np.random.Generator, name: str, *shape: int) -> onnx.TensorProto:
    return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)


def pass_fixture(opset: int = 17, shared_weight: bool = False) -> onnx.ModelProto:
    """Conv -> BN -> Mul(const) -> Relu -> Split[3,5] -> (Conv | depthwise Conv) -> Concat
    -> Slice[0:9] -> Reshape[1,-1 as 9*36] -> Gemm. Exercises every pass.

    With ``shared_weight``, a second Conv reuses conv A's weight on the input.
    """
    rng = np.random.default_rng(0)
    inits = [
        _w(rng, "wa", 8, 4, 3, 3), _w(rng, "ba", 8),
        numpy_helper.from_array(rng.random(8).astype(np.float32) + 0.5, "bn_s"), _w(rng, "bn_b", 8),
        _w(rng, "bn_m", 8), numpy_helper.from_array(rng.random(8).astype(np.float32) + 0.5, "bn_v"),
        _w(rng, "scale", 1, 8, 1, 1),
        numpy_helper.from_array(np.array([3, 5], dtype=np.int64), "split"),
        _w(rng, "wb", 6, 3, 1, 1), _w(rng, "wd", 5, 1, 3, 3),
        numpy_helper.from_array(np.array([0], dtype=np.int64), "s_start"),
        numpy_helper.from_array(np.array([9], dtype=np.int64), "s_end"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "s_axes"),
        numpy_helper.from_array(np.array([1, 9 * 36], dtype=np.int64), "shape"),
        _w(rng, "wg", 3, 9 * 36), _w(rng, "bg", 3),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "wa", "ba"], ["a"], name="conv_a", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["a", "bn_s", "bn_b", "bn_m", "bn_v"], ["bn"], name="bn"),
        helper.make_node("Mul", ["bn", "scale"], ["sc"], name="mul_scale"),
        helper.make_node("Relu", ["sc"], ["r"], name="relu"),
        helper.make_node("Split", ["r", "split"], ["s1", "s2"], name="split", axis=1),
        helper.make_node("Conv", ["s1", "wb"], ["b"], name="conv_b"),
        helper.make_node("Conv", ["s2", "wd"], ["d"], name="conv_dw", group=5, pads=[1, 1, 1, 1]),
        helper.make_node("Concat", ["b", "d"], ["c"], name="concat", axis=1),
        helper.make_node("Slice", ["c", "s_start", "s_end", "s_axes"], ["sl"], name="slice"),
        helper.make_node("Reshape", ["sl", "shape"], ["flat"], name="reshape"),
        helper.make_node("Gemm", ["flat", "wg", "bg"], ["y"], name="gemm", transB=1),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])]
    if shared_weight:
        nodes.append(helper.make_node("Conv", ["x", "wa"], ["y2"], name="conv_shared", pads=[1, 1, 1, 1]))
        outputs.append(helper.make_tensor_value_info("y2", TensorProto.FLOAT, [1, 8, 6, 6]))
    graph = helper.make_graph(nodes, "fixture", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 6, 6])],
                              outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return prepare(model)
