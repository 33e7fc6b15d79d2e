"""Core rule cases checked by hand: grouped conv tying, params accounting."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxprune.analysis import analyze
from onnxprune.prepare.normalize import prepare
from tests.equivalence import prune_randomly_and_check


def grouped_conv_model(groups: int = 4) -> onnx.ModelProto:
    """conv_a (4 -> 16) -> grouped conv_g (16 -> 16, groups) -> Relu -> conv_c (16 -> 8) = y."""
    rng = np.random.default_rng(1)
    inits = [
        numpy_helper.from_array(rng.standard_normal((16, 4, 1, 1)).astype(np.float32), "wa"),
        numpy_helper.from_array(rng.standard_normal((16, 16 // groups, 3, 3)).astype(np.float32), "wg"),
        numpy_helper.from_array(rng.standard_normal(16).astype(np.float32), "bg"),
        numpy_helper.from_array(rng.standard_normal((8, 16, 1, 1)).astype(np.float32), "wc"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "wa"], ["a"], name="conv_a"),
        helper.make_node("Conv", ["a", "wg", "bg"], ["g"], name="conv_g", group=groups, pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["g"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "wc"], ["y"], name="conv_c"),
    ]
    graph = helper.make_graph(nodes, "grouped", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 6, 6])], inits)
    return prepare(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_grouped_conv_ties_slots_across_groups():
    analysis = analyze(grouped_conv_model(4))
    groups = {g.producers: g for g in analysis.prunable_groups}
    a = groups[("conv_a",)]
    g = groups[("conv_g",)]
    assert (a.size, a.channels) == (4, 16)
    assert (g.size, g.channels) == (4, 16)
    for seed in range(4):
        prune_randomly_and_check(grouped_conv_model(4), seed=seed)


def test_group_params_and_macs_accounting():
    analysis = analyze(grouped_conv_model(4))
    a = next(g for g in analysis.prunable_groups if g.producers == ("conv_a",))
    # each of conv_a's 16 channels owns 4 weights in wa and, as input of conv_g, 4*9 weights in wg
    assert a.params == 16 * 4 + 16 * (16 // 4) * 9
    # MACs: conv_a 16*4*36 (all of its output) + conv_g's input side 16*4*9*36 (all of it)
    assert a.macs == 16 * 4 * 36 + 16 * 4 * 9 * 36
