"""Per-op analysis rules on small hand-built graphs: what is prunable, what is blocked (and
why), and, where prunable, that random pruning equals the masked reference.

Every model is built with onnx.helper, checked with the full checker and ``prepare``d.
Tests marked ``xfail(strict=True, reason="BUG: ...")`` reproduce library bugs; they start
passing (and then fail as XPASS) when the bug is fixed: remove the mark then.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.analysis import Analysis, Group, analyze
from onnxprune.api import apply_plan
from onnxprune.graph import GraphIndex, attr
from onnxprune.plan import Plan
from onnxprune.prepare.normalize import prepare
from onnxprune.runtime.session import random_inputs, run
from tests.equivalence import assert_matches_masked, check_pruned_model, prune_randomly_and_check

INT64_MAX = 2**63 - 1
SEEDS = range(4)


class Builder:
    """A tiny graph builder: named nodes, random float weights, int64 constants."""

    def __init__(self, opset: int = 17, seed: int = 0) -> None:
        self.opset = opset
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.opsets = {"": opset}

    def w(self, name: str, *shape: int, lo: float | None = None) -> str:
        if lo is None:
            value = self.rng.standard_normal(shape) / np.sqrt(max(1, int(np.prod(shape[1:]))))
        else:
            value = self.rng.uniform(lo, lo + 1.0, size=shape)
        self.inits.append(numpy_helper.from_array(value.astype(np.float32), name))
        return name

    def i64(self, name: str, values) -> str:  # noqa: ANN001
        self.inits.append(numpy_helper.from_array(np.array(values, dtype=np.int64), name))
        return name

    def f32(self, name: str, values) -> str:  # noqa: ANN001
        self.inits.append(numpy_helper.from_array(np.array(values, dtype=np.float32), name))
        return name

    def add(self, op: str, inputs: list[str], outputs: list[str] | str, name: str | None = None,
            domain: str = "", **attrs) -> onnx.NodeProto:
        outputs = [outputs] if isinstance(outputs, str) else outputs
        node = helper.make_node(op, inputs, outputs, name=name or outputs[0], domain=domain or None, **attrs)
        self.nodes.append(node)
        return node

    def conv(self, x: str, y: str, cin: int, cout: int, k: int = 3, group: int = 1, bias: bool = False,
             weight: str | None = None) -> onnx.NodeProto:
        w = weight or self.w(f"{y}_w", cout, cin // group, k, k)
        inputs = [x, w] + ([self.w(f"{y}_b", cout)] if bias else [])
        return self.add("Conv", inputs, y, pads=[k // 2] * 4, group=group)

    def build(self, outputs: list[str], inputs: dict[str, list] | None = None,
              input_types: dict[str, int] | None = None, *, output_shapes: dict[str, list] | None = None,
              prep: bool = True) -> onnx.ModelProto:
        """Inputs default to x: [1, 4, 6, 6]; output shapes are inferred unless given."""
        inputs = inputs or {"x": [1, 4, 6, 6]}
        input_types = input_types or {}
        output_shapes = output_shapes or {}
        graph = helper.make_graph(
            self.nodes, "rule_case",
            [helper.make_tensor_value_info(n, input_types.get(n, TensorProto.FLOAT), s) for n, s in inputs.items()],
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, output_shapes.get(n)) for n in outputs],
            self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in self.opsets.items()])
        model.ir_version = 8
        inferred = onnx.shape_inference.infer_shapes(model)
        for out, inf in zip(model.graph.output, inferred.graph.output):
            if out.name not in output_shapes:
                out.type.CopyFrom(inf.type)
        onnx.checker.check_model(model, full_check=True)
        return prepare(model) if prep else model


# -- helpers ------------------------------------------------------------------------------------

def groups_on(analysis: Analysis, tensor: str, axis: int = 1) -> list[Group]:
    """The groups owning channels of (tensor, axis), in anchor order."""
    return [g for g in analysis.groups if (tensor, axis) in g.spaces]


def group_on(analysis: Analysis, tensor: str, axis: int = 1) -> Group:
    found = groups_on(analysis, tensor, axis)
    assert len(found) == 1, f"{tensor}[{axis}] is in {len(found)} groups: {[g.id for g in found]}"
    return found[0]


def assert_blocked(analysis: Analysis, tensor: str, fragment: str, axis: int = 1) -> None:
    found = groups_on(analysis, tensor, axis)
    assert found, f"no group on {tensor}[{axis}]"
    for g in found:
        assert not g.prunable, f"group {g.id} on {tensor} is prunable"
        assert any(fragment.lower() in r.lower() for r in g.reasons), f"{fragment!r} not in {g.reasons}"
    assert any(fragment.lower() in b.reason.lower() for b in analysis.blocked), \
        f"{fragment!r} not among blocked regions {[b.reason for b in analysis.blocked]}"


def check_seeds(model: onnx.ModelProto, seeds=SEEDS) -> None:  # noqa: ANN001
    for seed in seeds:
        prune_randomly_and_check(model, seed=seed)


def prune_with(model: onnx.ModelProto, keep: dict[str, tuple[int, ...]]):  # noqa: ANN201
    """Apply an explicit plan (group id -> kept unit indices); check it and return (analysis, result)."""
    analysis = analyze(model)
    plan = Plan(analysis.fingerprint, keep, {gid: analysis.group(gid).size for gid in keep})
    result = apply_plan(model, analysis, plan)
    check_pruned_model(result.model, model)
    assert_matches_masked(model, analysis, plan, result)
    return analysis, result


def const_of(model: onnx.ModelProto, node_name: str, slot: int) -> np.ndarray:
    index = GraphIndex(model)
    value = index.const(index.nodes[node_name].input[slot])
    assert value is not None
    return value


def node_named(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.name == name)


# -- chains, residuals, dense heads ---------------------------------------------------------------

def test_conv_relu_conv_chain():
    b = Builder()
    b.conv("x", "a", 4, 6, bias=True)
    b.add("Relu", ["a"], "r")
    b.conv("r", "y", 6, 3)
    model = b.build(["y"])
    analysis = analyze(model)
    middle = group_on(analysis, "a")
    assert middle.prunable and middle.size == 6
    assert middle.producers == ("a",) and middle.consumers == ("y",)
    assert (("r", 1)) in middle.spaces
    assert_blocked(analysis, "y", "graph output")
    assert not groups_on(analysis, "x")  # nothing prunable produces the input's channels
    check_seeds(model)
    _, result = prune_with(model, {middle.id: (0, 2, 5)})
    assert const_of(result.model, "a", 1).shape == (3, 4, 3, 3)
    assert const_of(result.model, "a", 2).shape == (3,)
    np.testing.assert_array_equal(const_of(result.model, "y", 1), const_of(model, "y", 1)[:, [0, 2, 5]])


def test_residual_add_of_two_convs_is_one_group():
    b = Builder()
    b.conv("x", "a", 4, 5)
    b.conv("x", "c", 4, 5, k=1, bias=True)
    b.add("Add", ["a", "c"], "s")
    b.add("Relu", ["s"], "r")
    b.conv("r", "y", 5, 2)
    model = b.build(["y"])
    analysis = analyze(model)
    g = group_on(analysis, "s")
    assert g is group_on(analysis, "a") and g is group_on(analysis, "c")
    assert set(g.producers) == {"a", "c"}
    assert g.prunable and g.size == 5
    check_seeds(model)
    _, result = prune_with(model, {g.id: (1, 3)})
    assert const_of(result.model, "a", 1).shape[0] == const_of(result.model, "c", 1).shape[0] == 2


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("flatten", ["flatten", "reshape_minus1", "reshape_explicit"])
def test_dense_layer_after_conv(flatten: str, trans_b: int):
    b = Builder()
    b.conv("x", "a", 4, 5, bias=True)
    b.add("Relu", ["a"], "r")
    if flatten == "flatten":
        b.add("Flatten", ["r"], "f", axis=1)
    else:
        b.add("Reshape", ["r", b.i64("shape", [1, -1] if flatten == "reshape_minus1" else [1, 5 * 36])], "f")
    b.add("Gemm", ["f", b.w("wg", *((3, 180) if trans_b else (180, 3))), b.w("bg", 3)], "y", transB=trans_b)
    model = b.build(["y"])
    analysis = analyze(model)
    g = group_on(analysis, "a")
    assert g.prunable and g.size == 5 and g.consumers == ("y",)
    assert ("f", 1) in g.spaces  # the C*H*W axis carries the conv's channels
    check_seeds(model)
    _, result = prune_with(model, {g.id: (0, 3)})
    w = const_of(model, "y", 1)
    kept_rows = np.concatenate([np.arange(36) + 36 * c for c in (0, 3)])  # channel c owns a block of H*W
    expected = w[:, kept_rows] if trans_b else w[kept_rows]
    np.testing.assert_array_equal(const_of(result.model, "y", 1), expected)
    if flatten == "reshape_explicit":
        np.testing.assert_array_equal(const_of(result.model, "f", 1), [1, 2 * 36])


def test_dense_layer_after_nhwc_flatten():
    b = Builder()
    b.conv("x", "a", 4, 5)
    b.add("Transpose", ["a"], "t", perm=[0, 2, 3, 1])
    b.add("Flatten", ["t"], "f", axis=1)
    b.add("Gemm", ["f", b.w("wg", 180, 3)], "y")
    model = b.build(["y"])
    analysis = analyze(model)
    g = group_on(analysis, "a")
    assert g.prunable and ("t", 3) in g.spaces and ("f", 1) in g.spaces
    check_seeds(model)
    _, result = prune_with(model, {g.id: (1, 2, 4)})
    w = const_of(model, "y", 1)
    kept_rows = [p * 5 + c for p in range(36) for c in (1, 2, 4)]  # NHWC: channel is the fastest index
    np.testing.assert_array_equal(const_of(result.model, "y", 1), w[kept_rows])


def test_global_pool_matmul_head():
    b = Builder()
    b.conv("x", "a", 4, 6)
    b.add("GlobalAveragePool", ["a"], "p")
    b.add("Flatten", ["p"], "f")
    b.add("MatMul", ["f", b.w("wm", 6, 3)], "m")
    b.add("Add", ["m", b.w("bm", 3)], "y")
    model = b.build(["y"])
    g = group_on(analyze(model), "a")
    assert g.prunable and g.consumers == ("m",)
    check_seeds(model)


# -- Concat / Split / Slice ----------------------------------------------------------------------

def test_concat_offsets():
    b = Builder()
    b.conv("x", "a", 4, 3)
    b.conv("x", "c", 4, 5)
    b.add("Concat", ["a", "c"], "cat", axis=1)
    b.conv("cat", "y", 8, 2)
    model = b.build(["y"])
    analysis = analyze(model)
    ga, gc = group_on(analysis, "a"), group_on(analysis, "c")
    assert ga is not gc and ga.prunable and gc.prunable and (ga.size, gc.size) == (3, 5)
    assert [g.id for g in groups_on(analysis, "cat")] == [ga.id, gc.id]
    check_seeds(model)
    _, result = prune_with(model, {ga.id: (0, 2), gc.id: (0, 1, 3, 4)})
    # the consumer loses column 1 (a's channel 1) and column 3 + 2 (c's channel 2)
    np.testing.assert_array_equal(const_of(result.model, "y", 1), np.delete(const_of(model, "y", 1), [1, 5], axis=1))


def _split_model(opset: int, sizes: list[int] | None, style: str) -> onnx.ModelProto:
    b = Builder(opset=opset)
    b.conv("x", "a", 4, 8, bias=True)
    n = len(sizes) if sizes else 2
    outs = [f"s{i}" for i in range(n)]
    if style == "attr":
        b.add("Split", ["a"], outs, name="split", axis=1, **({"split": sizes} if sizes else {}))
    elif style == "input":
        b.add("Split", ["a", b.i64("sizes", sizes)], outs, name="split", axis=1)
    else:  # no sizes at all: equal parts
        b.add("Split", ["a"], outs, name="split", axis=1)
    b.add("Relu", ["s0"], "r0")
    b.add("Sigmoid", [outs[-1]], "r1")
    b.add("Concat", ["r1", "r0"] + outs[1:-1], "cat", axis=1)  # re-joined in another order
    b.conv("cat", "y", 8, 2)
    return b.build(["y"])


@pytest.mark.parametrize("opset,sizes,style", [
    (17, [4, 4], "input"), (17, [3, 5], "input"), (17, [1, 2, 5], "input"), (17, None, "none"),
    (13, [4, 4], "input"), (13, [2, 6], "input"), (13, None, "none"),
    (11, [4, 4], "attr"), (11, [5, 3], "attr"), (11, None, "attr"),
])
def test_split_on_channels(opset: int, sizes: list[int] | None, style: str):
    model = _split_model(opset, sizes, style)
    analysis = analyze(model)
    parts = groups_on(analysis, "a")
    expected = sizes or [4, 4]
    assert [g.size for g in parts] == expected
    assert all(g.prunable == (g.size >= 2) for g in parts)
    for i, g in enumerate(parts):
        assert (f"s{i}", 1) in g.spaces
    check_seeds(model)
    keep = {g.id: tuple(range(1, g.size)) for g in parts if g.prunable}
    _, result = prune_with(model, keep)
    kept = [g.size - 1 if g.prunable else g.size for g in parts]
    node = node_named(result.model, "split")
    if opset < 13:
        assert list(attr(node, "split")) == kept
    else:
        assert list(const_of(result.model, "split", 1)) == kept


@pytest.mark.parametrize("starts,ends,axes,kept_range", [
    ([2], [6], [1], (2, 6)),
    ([1], [INT64_MAX], [1], (1, 8)),
    ([-5], [-1], [1], (3, 7)),
    ([0], [-2], [-3], (0, 6)),
    ([0, 3], [INT64_MAX, 100], None, (3, 8)),  # axes omitted: starts cover axes 0 and 1
])
def test_slice_on_channel_axis(starts: list[int], ends: list[int], axes: list[int] | None, kept_range):
    b = Builder()
    b.conv("x", "a", 4, 8)
    inputs = ["a", b.i64("starts", starts), b.i64("ends", ends)] + ([b.i64("axes", axes)] if axes else [])
    b.add("Slice", inputs, "s", name="slice")
    b.conv("s", "y", kept_range[1] - kept_range[0], 2)
    model = b.build(["y"])
    analysis = analyze(model)
    g = group_on(analysis, "s")
    lo, hi = kept_range
    assert g.prunable and g.size == hi - lo
    # channels outside the slice form their own group(s): nothing reads them
    assert sum(x.size for x in groups_on(analysis, "a")) == 8
    check_seeds(model)
    outside = [x for x in groups_on(analysis, "a") if x is not g and x.prunable]
    keep = {g.id: tuple(range(1, g.size))}
    keep.update({x.id: (0,) for x in outside})
    _, result = prune_with(model, keep)
    pos = (axes or list(range(len(starts)))).index(axes[0] if axes else 1)
    new_start = int(const_of(result.model, "slice", 1)[pos])
    new_end = int(const_of(result.model, "slice", 2)[pos])
    assert new_end - new_start == g.size - 1


def test_slice_on_spatial_axis():
    b = Builder()
    b.conv("x", "a", 4, 6)
    b.add("Slice", ["a", b.i64("st", [1]), b.i64("en", [-1]), b.i64("ax", [2])], "s")
    b.conv("s", "y", 6, 2)
    model = b.build(["y"])
    analysis = analyze(model)
    g = group_on(analysis, "a")
    assert g.prunable and g.size == 6 and ("s", 1) in g.spaces
    check_seeds(model)


# -- grouped and depthwise convs, channel shuffle ---------------------------------------------------

def test_depthwise_conv_with_channel_multiplier_2():
    b = Builder()
    b.conv("x", "a", 4, 6, bias=True)
    b.conv("a", "d", 6, 12, group=6, bias=True)
    b.add("Relu", ["d"], "r")
    b.conv("r", "y", 12, 2)
    model = b.build(["y"])
    analysis = analyze(model)
    g = group_on(analysis, "a")
    assert g is group_on(analysis, "d")  # each input channel owns its two depthwise outputs
    assert g.prunable and g.size == 6 and g.unit_width == 1
    check_seeds(model)
    _, result = prune_with(model, {g.id: (0, 4, 5)})
    assert attr(node_named(result.model, "d"), "group") == 3
    np.testing.assert_array_equal(const_of(result.model, "d", 1), const_of(model, "d", 1)[[0, 1, 8, 9, 10, 11]])
    np.testing.assert_array_equal(const_of(result.model, "y", 1), const_of(model, "y", 1)[:, [0, 1, 8, 9, 10, 11]])


@pytest.mark.parametrize("groups", [2, 4])
def test_grouped_conv(groups: int):
    b = Builder()
    b.conv("x", "a", 4, 8)
    b.conv("a", "g", 8, 8, group=groups, bias=True)
    b.add("Relu", ["g"], "r")
    b.conv("r", "y", 8, 3)
    model = b.build(["y"])
    analysis = analyze(model)
    ga, gg = group_on(analysis, "a"), group_on(analysis, "g")
    # the j-th channel of every group is one unit, so every group keeps the same local channels
    assert (ga.size, ga.channels) == (8 // groups, 8)
    assert (gg.size, gg.channels) == (8 // groups, 8)
    assert ga.prunable and gg.prunable
    check_seeds(model)
    _, result = prune_with(model, {ga.id: (1,), gg.id: (0,)})
    assert attr(node_named(result.model, "g"), "group") == groups
    assert const_of(result.model, "g", 1).shape == (groups, 1, 3, 3)


@pytest.mark.parametrize("first_shape", [[1, 2, 3, 6, 6], [0, 2, -1, 6, 6]])
def test_channel_shuffle(first_shape: list[int]):
    b = Builder()
    b.conv("x", "a", 4, 6)
    b.add("Reshape", ["a", b.i64("s1", first_shape)], "r1", name="reshape1")
    b.add("Transpose", ["r1"], "t", perm=[0, 2, 1, 3, 4])
    b.add("Reshape", ["t", b.i64("s2", [1, 6, 6, 6])], "r2", name="reshape2")
    b.conv("r2", "y", 6, 2)
    model = b.build(["y"])
    analysis = analyze(model)
    g = group_on(analysis, "a")
    assert g.prunable and (g.size, g.channels) == (3, 6)  # channel j of both shuffle groups is one unit
    check_seeds(model)
    _, result = prune_with(model, {g.id: (0, 2)})
    assert list(const_of(result.model, "reshape2", 1)) == [1, 4, 6, 6]
    if first_shape[2] != -1:
        assert list(const_of(result.model, "reshape1", 1)) == [1, 2, 2, 6, 6]


@pytest.mark.parametrize("mode", ["CRD", "DCR"])
def test_depth_to_space(mode: str):
    """Pixel shuffle (PyTorch: CRD; TensorFlow: DCR): the 4 input channels that become one
    output channel are one unit, kept or removed together with that output channel."""
    b = Builder()
    b.conv("x", "a", 4, 12)
    b.add("DepthToSpace", ["a"], "d", blocksize=2, mode=mode)
    b.conv("d", "y", 3, 2)
    model = b.build(["y"])
    analysis = analyze(model)
    g = group_on(analysis, "a")
    assert g is group_on(analysis, "d") and g.prunable and (g.size, g.channels) == (3, 12)
    check_seeds(model)
    _, result = prune_with(model, {g.id: (0, 2)})
    rows = [0, 1, 2, 3, 8, 9, 10, 11] if mode == "CRD" else [0, 2, 3, 5, 6, 8, 9, 11]
    assert np.array_equal(const_of(result.model, "a", 1), const_of(model, "a", 1)[rows])
    assert const_of(result.model, "y", 1).shape == (2, 2, 3, 3)


def test_space_to_depth():
    """SpaceToDepth: output channel k*C + c is input channel c; its four copies follow it."""
    b = Builder()
    b.conv("x", "a", 4, 3)
    b.add("SpaceToDepth", ["a"], "s", blocksize=2)
    b.conv("s", "y", 12, 2)
    model = b.build(["y"])
    analysis = analyze(model)
    g = group_on(analysis, "a")
    assert g is group_on(analysis, "s") and g.prunable and g.size == 3
    check_seeds(model)
    _, result = prune_with(model, {g.id: (1,)})
    assert np.array_equal(const_of(result.model, "y", 1), const_of(model, "y", 1)[:, [1, 4, 7, 10]])


# -- what blocks pruning ----------------------------------------------------------------------

def test_lstm_after_conv_features_is_blocked():
    b = Builder()
    b.add("Conv", ["x", b.w("wa", 5, 4, 1, 1)], "a")  # [1, 5, 1, 6]
    b.add("Squeeze", ["a", b.i64("ax", [2])], "sq")  # [1, 5, 6]
    b.add("Transpose", ["sq"], "seq", perm=[2, 0, 1])  # [6, 1, 5]: time, batch, features
    b.add("LSTM", ["seq", b.w("W", 1, 12, 5), b.w("R", 1, 12, 3)], ["yl"], hidden_size=3)
    b.add("Flatten", ["yl"], "y", axis=1)
    model = b.build(["y"], {"x": [1, 4, 1, 6]})
    analysis = analyze(model)
    assert_blocked(analysis, "a", "recurrent")
    assert_blocked(analysis, "a", "LSTM")
    assert not analysis.prunable_groups


def test_custom_domain_op_is_blocked():
    b = Builder()
    b.opsets["com.example"] = 1
    b.conv("x", "a", 4, 5)
    b.add("MyActivation", ["a"], "m", domain="com.example")
    b.conv("a", "y", 5, 2)
    model = b.build(["y", "m"], output_shapes={"m": [1, 5, 6, 6]})
    analysis = analyze(model)
    assert_blocked(analysis, "a", "custom-domain")
    assert any(b.op == "MyActivation" for b in analysis.blocked)


def _if_model(capture: bool) -> onnx.ModelProto:
    """conv a -> If(cond) whose branches read ``a`` (or, without capture, ``x``) from the outer
    scope -> conv y. The condition is computed from the input (a rank-0 bool)."""
    b = Builder()
    b.conv("x", "a", 4, 5)
    b.add("ReduceMean", ["x"], "xm", keepdims=0)
    b.add("Greater", ["xm", b.f32("zero", 0.0)], "cond")
    src = "a" if capture else "x"
    channels = 5 if capture else 4
    then_g = helper.make_graph([helper.make_node("Relu", [src], ["t"])], "then", [],
                               [helper.make_tensor_value_info("t", TensorProto.FLOAT, [1, channels, 6, 6])])
    else_g = helper.make_graph([helper.make_node("Sigmoid", [src], ["e"])], "else", [],
                               [helper.make_tensor_value_info("e", TensorProto.FLOAT, [1, channels, 6, 6])])
    b.add("If", ["cond"], "i", then_branch=then_g, else_branch=else_g)
    b.conv("i", "y", channels, 2)
    if not capture:
        b.conv("a", "y2", 5, 2)
    return b.build(["y"] + ([] if capture else ["y2"]))


def test_if_reading_conv_output_is_blocked():
    model = _if_model(capture=True)
    analysis = analyze(model)
    assert_blocked(analysis, "a", "control flow")


def test_if_not_reading_conv_output_leaves_it_prunable():
    model = _if_model(capture=False)
    g = group_on(analyze(model), "a")
    assert g.prunable
    check_seeds(model)


def test_layer_normalization_over_channels_is_blocked():
    b = Builder()
    b.conv("x", "a", 4, 5)
    b.add("LayerNormalization", ["a", b.w("s", 5, 6, 6), b.w("bb", 5, 6, 6)], "n", axis=1)
    b.conv("n", "y", 5, 2)
    analysis = analyze(b.build(["y"]))
    assert_blocked(analysis, "a", "LayerNormalization")


def test_layer_normalization_over_nhwc_channels_is_blocked():
    b = Builder()
    b.conv("x", "a", 4, 5)
    b.add("Transpose", ["a"], "t", perm=[0, 2, 3, 1])
    b.add("LayerNormalization", ["t", b.w("s", 5), b.w("bb", 5)], "n", axis=-1)
    b.add("Transpose", ["n"], "tt", perm=[0, 3, 1, 2])
    b.conv("tt", "y", 5, 2)
    analysis = analyze(b.build(["y"]))
    assert_blocked(analysis, "a", "LayerNormalization")


def test_layer_normalization_over_width_keeps_channels_prunable():
    b = Builder()
    b.conv("x", "a", 4, 5)
    b.add("LayerNormalization", ["a", b.w("s", 6), b.w("bb", 6)], "n", axis=-1)
    b.conv("n", "y", 5, 2)
    model = b.build(["y"])
    assert group_on(analyze(model), "a").prunable
    check_seeds(model)


@pytest.mark.parametrize("opset,axis", [(17, 1), (13, -3), (11, 1)])
def test_softmax_over_channels_is_blocked(opset: int, axis: int):
    b = Builder(opset=opset)
    b.conv("x", "a", 4, 5)
    b.add("Softmax", ["a"], "s", axis=axis)
    b.conv("s", "y", 5, 2)
    assert_blocked(analyze(b.build(["y"])), "a", "Softmax")


def test_softmax_over_width_keeps_channels_prunable():
    b = Builder()
    b.conv("x", "a", 4, 5)
    b.add("Softmax", ["a"], "s", axis=-1)
    b.conv("s", "y", 5, 2)
    model = b.build(["y"])
    assert group_on(analyze(model), "a").prunable
    check_seeds(model)


@pytest.mark.parametrize("axes,keepdims", [([1], 1), ([1], 0), ([1, 2, 3], 1), (None, 1)])
def test_reduce_mean_over_channels_is_blocked(axes, keepdims: int):  # noqa: ANN001
    b = Builder()
    b.conv("x", "a", 4, 5)
    b.add("ReduceMean", ["a"], "m", keepdims=keepdims, **({"axes": axes} if axes else {}))
    b.add("Flatten", ["m"], "f", axis=0)
    b.add("MatMul", ["f", b.w("wm", 36 if axes == [1] else 1, 2)], "y")
    analysis = analyze(b.build(["y"]))
    assert_blocked(analysis, "a", "ReduceMean")


def test_reduce_mean_over_space_keeps_channels_prunable():
    b = Builder()
    b.conv("x", "a", 4, 5)
    b.add("ReduceMean", ["a"], "m", axes=[2, 3], keepdims=1)
    b.conv("m", "y", 5, 2, k=1)
    model = b.build(["y"])
    assert group_on(analyze(model), "a").prunable
    check_seeds(model)


@pytest.mark.parametrize("source", ["arithmetic", "graph_input"])
def test_reshape_with_computed_shape_is_blocked(source: str):
    """A Reshape target the analysis cannot follow back to constants and Shape entries:
    Shape -> Gather -> Mul -> Concat on a dynamic batch, or a shape fed in as a graph input."""
    b = Builder()
    b.conv("x", "a", 4, 5)
    inputs = {"x": ["N", 4, 6, 6]}
    if source == "arithmetic":
        b.add("Shape", ["a"], "sh")
        b.add("Gather", ["sh", b.i64("zero", [0])], "n", axis=0)
        b.add("Mul", ["n", b.i64("one", [1])], "n1")
        b.add("Concat", ["n1", b.i64("rest", [-1])], "target", axis=0)
    else:
        inputs["target"] = [2]
    b.add("Reshape", ["a", "target"], "f")
    b.add("Gemm", ["f", b.w("wg", 180, 3)], "y")
    model = b.build(["y"], inputs, {"target": TensorProto.INT64}, output_shapes={"y": ["N", 3]})
    analysis = analyze(model)
    assert_blocked(analysis, "a", "computed")
    assert not analysis.prunable_groups


def test_reshape_to_dynamic_view_is_resolved():
    """torch's x.view(x.size(0), -1) on a dynamic batch: Shape -> Gather -> Unsqueeze -> Concat
    stays in the graph (the batch is not static) and the target is followed, not guessed."""
    b = Builder()
    b.conv("x", "a", 4, 5)
    b.add("Shape", ["a"], "sh")
    b.add("Gather", ["sh", b.i64("zero", 0)], "n", axis=0)
    b.add("Unsqueeze", ["n", b.i64("ax", [0])], "n1")
    b.add("Concat", ["n1", b.i64("rest", [-1])], "target", axis=0)
    b.add("Reshape", ["a", "target"], "f")
    b.add("Gemm", ["f", b.w("wg", 180, 3)], "y")
    model = b.build(["y"], {"x": ["N", 4, 6, 6]})
    assert any(n.op_type == "Shape" for n in model.graph.node), "prepare must not fold a dynamic shape"
    g = group_on(analyze(model), "a")
    assert g.prunable and ("f", 1) in g.spaces
    check_seeds(model)


def test_reshape_copying_a_channel_count_from_shape_is_blocked():
    """reshape_as: Reshape(flat, Shape(a)) on a dynamic batch reads a's channel count at run time."""
    b = Builder()
    b.conv("x", "a", 4, 5)
    b.add("Flatten", ["a"], "f")
    b.add("Relu", ["f"], "r")
    b.add("Shape", ["a"], "sh")
    b.add("Reshape", ["r", "sh"], "back")
    b.conv("back", "y", 5, 2)
    model = b.build(["y"], {"x": ["N", 4, 6, 6]})
    assert any(n.op_type == "Shape" for n in model.graph.node)
    analysis = analyze(model)
    assert_blocked(analysis, "a", "shape")
    assert not group_on(analysis, "a").prunable


def test_reshape_copying_its_own_channel_count_to_another_axis_is_blocked():
    """A target that copies the input's own channel count is fine only where that channel
    axis lands: [N, C, H, W] -> [N, H*W, C] with C copied last would move data, not channels."""
    b = Builder()
    b.conv("x", "a", 4, 5)
    b.add("Shape", ["a"], "sh")
    b.add("Gather", ["sh", b.i64("one", [1])], "c", axis=0)
    b.add("Concat", [b.i64("lead", [0, -1]), "c"], "target", axis=0)
    b.add("Reshape", ["a", "target"], "r")
    b.add("Relu", ["r"], "y")
    model = b.build(["y"], {"x": ["N", 4, 6, 6]})
    analysis = analyze(model)
    assert not group_on(analysis, "a").prunable


def test_merged_dynamic_axes_on_one_side_of_a_channel_axis():
    """[N, C, T, U] -> [N, C, T*U] (a flatten of dynamic spatial axes) keeps the channel axis:
    everything in front of it matches. Runs of dynamic axes regrouped on both sides of it
    cannot be checked and block it."""
    from onnxprune.analysis.rules.layout import _match_blocks

    b = Builder()
    b.conv("x", "a", 4, 5)
    b.add("Reshape", ["a", b.i64("target", [0, 5, -1])], "f")
    b.add("Transpose", ["f"], "t", perm=[0, 2, 1])
    b.add("MatMul", ["t", b.w("wm", 5, 3)], "y")
    model = b.build(["y"], {"x": ["N", 4, "T", "U"]})
    g = group_on(analyze(model), "a")
    assert g.prunable and ("f", 1) in g.spaces
    check_seeds(model)
    assert _match_blocks(("b", "s", 8), ("bs", 8)) == [([0, 1], [0], False), ([2], [1], True)]
    assert _match_blocks(("b", "s", 8, "t", "u"), ("bs", 8, "tu"))[1] == ([2], [1], True)



def test_reshape_blocks_from_the_two_shape_probes():
    """A dynamic axis split into a dynamic and a static one ([b*16, C] -> [b, 16, C]) is matched
    on the sizes of the two probe runs (dims named d<run0>_<run1>) when both runs agree."""
    from onnxprune.analysis.registry import Unsupported
    from onnxprune.analysis.rules.layout import _match_blocks

    assert _match_blocks(("d48_32", 32), ("d3_2", 16, 32)) == [([0], [0, 1], True), ([1], [2], True)]
    with pytest.raises(Unsupported):  # run 1 disagrees: 32 is not 4 x 16
        _match_blocks(("d48_32", 32), ("d3_4", 16, 32))
    with pytest.raises(Unsupported):  # an exporter's name carries no sizes
        _match_blocks(("batch", 32), ("d3_2", 16, 32))


def test_pad_amounts_built_from_constants_are_folded():
    """HF's TF-style "same" padding builds the pads with Reshape / Slice / Transpose / Cast of
    constants: prepare folds them, so the Pad is seen to leave the channel axis alone."""
    b = Builder()
    b.conv("x", "a", 4, 6)
    b.add("Reshape", [b.i64("raw", [0, 1, 0, 1, 0, 1, 0, 1]), b.i64("two", [2, 4])], "p2")  # -> [0, 0, 1, 1] * 2
    b.add("Transpose", ["p2"], "p2t", perm=[1, 0])
    b.add("Reshape", ["p2t", b.i64("flat", [-1])], "p1")
    b.add("Cast", ["p1"], "pads", to=TensorProto.INT64)
    b.add("Pad", ["a", "pads"], "padded")
    b.conv("padded", "y", 6, 3)
    model = b.build(["y"], {"x": ["N", 4, 6, 6]})
    assert not any(n.op_type == "Transpose" for n in model.graph.node)
    assert group_on(analyze(model), "a").prunable
    check_seeds(model)


def test_reshape_as_a_tensor_with_the_same_channels():
    """LeViT's bn(y.flatten(0, 1)).reshape_as(y): the target copies y's channel count, and y's
    channel axis holds the same units as the Reshape's input: it follows the kept count."""
    b = Builder()
    b.add("MatMul", ["x", b.w("w1", 8, 12)], "y")
    b.add("Relu", ["y"], "r")
    b.add("Shape", ["y"], "sh")
    b.add("Reshape", ["r", "sh"], "back")
    b.add("MatMul", ["back", b.w("w2", 12, 3)], "out")
    model = b.build(["out"], {"x": ["N", 5, 8]})
    analysis = analyze(model)
    g = group_on(analysis, "y", axis=2)
    assert g.prunable, [blk.reason for blk in analysis.blocked]
    check_seeds(model)


def test_resize_sizes_built_from_its_own_input_shape():
    """F.interpolate(a, size=(12, 12)) on a dynamic batch: sizes = Concat(Shape(a)[0:2], [12, 12])
    copies a's own channel count, which follows the kept count by itself."""
    b = Builder()
    b.conv("x", "a", 4, 5)
    b.add("Shape", ["a"], "sh")
    b.add("Slice", ["sh", b.i64("s0", [0]), b.i64("s2", [2])], "nc")
    b.add("Concat", ["nc", b.i64("hw", [12, 12])], "sizes", axis=0)
    b.add("Resize", ["a", "", "", "sizes"], "up", mode="nearest")
    b.conv("up", "y", 5, 2)
    model = b.build(["y"], {"x": ["N", 4, 6, 6]})
    assert any(n.op_type == "Shape" for n in model.graph.node)
    g = group_on(analyze(model), "a")
    assert g.prunable and ("up", 1) in g.spaces
    check_seeds(model)


def test_reshape_with_static_shape_computation_is_folded_and_prunable():
    """The same chain on a static shape: prepare folds it into a constant the rewrite can edit."""
    b = Builder()
    b.conv("x", "a", 4, 5)
    b.add("Shape", ["a"], "sh")
    b.add("Gather", ["sh", b.i64("zero", [0])], "n", axis=0)
    b.add("Concat", ["n", b.i64("rest", [-1])], "target", axis=0)
    b.add("Reshape", ["a", "target"], "f")
    b.add("Gemm", ["f", b.w("wg", 180, 3)], "y")
    model = b.build(["y"])
    assert not any(n.op_type == "Shape" for n in model.graph.node)
    assert group_on(analyze(model), "a").prunable
    check_seeds(model)


def test_conv_weight_as_graph_input_is_blocked():
    b = Builder()
    b.conv("x", "a", 4, 5)
    b.add("Relu", ["a"], "r")
    b.add("Conv", ["r", "w_in"], "y", pads=[1, 1, 1, 1])
    model = b.build(["y"], {"x": [1, 4, 6, 6], "w_in": [2, 5, 3, 3]})
    analysis = analyze(model)
    assert_blocked(analysis, "a", "weight input 'w_in'")
    assert not analysis.prunable_groups


def test_graph_output_in_the_middle_is_blocked():
    b = Builder()
    b.conv("x", "a", 4, 5)
    b.add("Relu", ["a"], "r")
    b.conv("r", "c", 5, 6)
    b.conv("c", "y", 6, 2)
    model = b.build(["y", "r"])
    analysis = analyze(model)
    assert_blocked(analysis, "a", "graph output 'r'")
    assert group_on(analysis, "c").prunable
    check_seeds(model)


# -- shared initializers ---------------------------------------------------------------------------

def _shared_weight_model(both_prunable: bool) -> onnx.ModelProto:
    """conv p and conv q read the same weight tensor ``w`` (on different inputs)."""
    b = Builder()
    b.w("w", 6, 4, 3, 3)
    b.conv("x", "p", 4, 6, weight="w")
    b.conv("x", "x2", 4, 4, k=1)
    b.conv("x2", "q", 4, 6, weight="w")
    b.add("Relu", ["p"], "rp")
    b.conv("rp", "y", 6, 2)
    if both_prunable:
        b.add("Sigmoid", ["q"], "sq")
        b.conv("sq", "y2", 6, 3)
        return b.build(["y", "y2"])
    return b.build(["y", "q"])


def test_shared_weight_pruned_differently_by_two_convs():
    model = _shared_weight_model(both_prunable=True)
    analysis = analyze(model)
    gp, gq, gx2 = group_on(analysis, "p"), group_on(analysis, "q"), group_on(analysis, "x2")
    assert gp is not gq and gp.prunable and gq.prunable and gx2.prunable
    check_seeds(model)
    _, result = prune_with(model, {gp.id: (0, 1, 5), gq.id: (2, 3), gx2.id: (0, 3)})
    w = const_of(model, "p", 1)
    np.testing.assert_array_equal(const_of(result.model, "p", 1), w[[0, 1, 5]])
    np.testing.assert_array_equal(const_of(result.model, "q", 1), w[[2, 3]][:, [0, 3]])
    p_in, q_in = node_named(result.model, "p").input[1], node_named(result.model, "q").input[1]
    assert p_in != q_in  # copy on write: each user got its own slice


def test_shared_weight_other_user_unaffected():
    model = _shared_weight_model(both_prunable=False)
    analysis = analyze(model)
    gp = group_on(analysis, "p")
    assert gp.prunable and not group_on(analysis, "q").prunable
    gx2 = group_on(analysis, "x2")
    assert not gx2.prunable or gx2.size == 4
    _, result = prune_with(model, {gp.id: (1, 4)})
    np.testing.assert_array_equal(const_of(result.model, "q", 1), const_of(model, "q", 1))
    np.testing.assert_array_equal(const_of(result.model, "p", 1), const_of(model, "p", 1)[[1, 4]])
    feeds = random_inputs(model, seed=3)
    np.testing.assert_array_equal(run(model, feeds)["q"], run(result.model, feeds)["q"])
    check_seeds(model)


def test_shared_per_channel_constant_in_two_groups():
    """One [1, C, 1, 1] scale multiplied into two independent branches."""
    b = Builder()
    b.w("scale", 1, 5, 1, 1)
    b.conv("x", "a", 4, 5)
    b.conv("x", "c", 4, 5, k=1)
    b.add("Mul", ["a", "scale"], "ma")
    b.add("Mul", ["scale", "c"], "mc")
    b.conv("ma", "y1", 5, 2)
    b.conv("mc", "y2", 5, 2)
    model = b.build(["y1", "y2"])
    analysis = analyze(model)
    ga, gc = group_on(analysis, "a"), group_on(analysis, "c")
    assert ga is not gc and ga.prunable and gc.prunable
    check_seeds(model)
    _, result = prune_with(model, {ga.id: (0, 1), gc.id: (3,)})
    np.testing.assert_array_equal(const_of(result.model, "ma", 1).reshape(-1), const_of(model, "ma", 1).reshape(-1)[[0, 1]])
    np.testing.assert_array_equal(const_of(result.model, "mc", 0).reshape(-1), const_of(model, "mc", 0).reshape(-1)[[3]])


# -- opset variants: Squeeze / Unsqueeze -------------------------------------------------------------

@pytest.mark.parametrize("opset", [11, 13, 17])
def test_squeeze_unsqueeze_around_pooled_features(opset: int):
    """conv -> GAP -> Squeeze(2, 3) -> Gemm, and conv -> GAP -> Squeeze -> Unsqueeze -> Conv."""
    b = Builder(opset=opset)
    b.conv("x", "a", 4, 6)
    b.add("GlobalAveragePool", ["a"], "p")
    if opset < 13:
        b.add("Squeeze", ["p"], "sq", axes=[2, 3])
        b.add("Unsqueeze", ["sq"], "us", axes=[-1, 2])
    else:
        b.add("Squeeze", ["p", b.i64("sq_axes", [2, 3])], "sq")
        b.add("Unsqueeze", ["sq", b.i64("us_axes", [-1, 2])], "us")
    b.add("Gemm", ["sq", b.w("wg", 6, 3)], "y1")
    b.conv("us", "y2", 6, 2, k=1)
    model = b.build(["y1", "y2"])
    analysis = analyze(model)
    g = group_on(analysis, "a")
    assert g.prunable and ("sq", 1) in g.spaces and ("us", 1) in g.spaces
    assert set(g.consumers) == {"y1", "y2"}
    check_seeds(model)


@pytest.mark.parametrize("opset", [11, 13])
def test_squeeze_unsqueeze_channel_axis_moves(opset: int):
    """Unsqueeze in front moves the channel axis to 2; Squeeze brings it back."""
    b = Builder(opset=opset)
    b.conv("x", "a", 4, 6)
    if opset < 13:
        b.add("Unsqueeze", ["a"], "u", axes=[0])
        b.add("Relu", ["u"], "r")
        b.add("Squeeze", ["r"], "s", axes=[0])
    else:
        b.add("Unsqueeze", ["a", b.i64("ax", [0])], "u")
        b.add("Relu", ["u"], "r")
        b.add("Squeeze", ["r", "ax"], "s")
    b.conv("s", "y", 6, 2)
    model = b.build(["y"])
    g = group_on(analyze(model), "a")
    assert g.prunable and ("u", 2) in g.spaces and ("s", 1) in g.spaces
    check_seeds(model)


def test_squeeze_without_axes_when_channels_are_pruned_to_one():
    b = Builder(opset=13)
    b.conv("x", "a", 4, 2)
    b.add("Unsqueeze", ["a", b.i64("ax", [0])], "u")  # [1, 1, 2, 6, 6]
    b.add("Squeeze", ["u"], "s")  # no axes: [2, 6, 6]
    b.add("Unsqueeze", ["s", "ax"], "b")  # [1, 2, 6, 6]
    b.conv("b", "y", 2, 3)
    model = b.build(["y"])
    g = group_on(analyze(model), "a")
    # the channel axis could be pruned to size one and then squeezed away: left alone
    assert not g.prunable and any("Squeeze" in r for r in g.reasons)


# -- other ops whose shape constants hold channel counts -----------------------------------------------

@pytest.mark.parametrize("opset", [11, 13, 17])
def test_resize_with_sizes(opset: int):
    b = Builder(opset=opset)
    b.conv("x", "a", 4, 5)
    roi = b.f32("roi", []) if opset == 11 else ""
    scales = b.f32("scales", []) if opset == 11 else ""
    b.add("Resize", ["a", roi, scales, b.i64("sizes", [1, 5, 12, 12])], "r", name="resize", mode="nearest")
    b.conv("r", "y", 5, 2)
    model = b.build(["y"])
    g = group_on(analyze(model), "a")
    assert g.prunable
    check_seeds(model)
    _, result = prune_with(model, {g.id: (0, 2, 3)})
    assert list(const_of(result.model, "resize", 3)) == [1, 3, 12, 12]


def test_resize_opset18_with_axes_and_sizes():
    b = Builder(opset=18)
    b.conv("x", "a", 4, 5)
    b.add("Resize", ["a", "", "", b.i64("sizes", [12, 12])], "r", name="resize", mode="nearest", axes=[2, 3])
    b.conv("r", "y", 5, 2)
    model = b.build(["y"])
    g = group_on(analyze(model), "a")
    assert g.prunable
    _, result = prune_with(model, {g.id: (0, 2, 3)})
    assert list(const_of(result.model, "resize", 3)) == [12, 12]


def test_expand_target_holds_channel_count():
    b = Builder()
    b.conv("x", "a", 4, 5)
    b.add("GlobalAveragePool", ["a"], "p")
    b.add("Sigmoid", ["p"], "s")
    b.add("Expand", ["s", b.i64("shape", [1, 5, 6, 6])], "e", name="expand")
    b.add("Mul", ["a", "e"], "m")
    b.conv("m", "y", 5, 2)
    model = b.build(["y"])
    g = group_on(analyze(model), "a")
    assert g.prunable
    check_seeds(model)
    _, result = prune_with(model, {g.id: (1, 2)})
    assert list(const_of(result.model, "expand", 1)) == [1, 2, 6, 6]


def test_batchnorm_prelu_instancenorm_params_are_sliced():
    b = Builder()
    b.conv("x", "a", 4, 5)
    b.add("BatchNormalization", ["a", b.w("bs", 5, lo=0.5), b.w("bb", 5), b.w("bm", 5), b.w("bv", 5, lo=0.5)], "bn")
    b.add("PRelu", ["bn", b.w("slope", 5, 1, 1, lo=0.0)], "pr")
    b.add("InstanceNormalization", ["pr", b.w("is", 5, lo=0.5), b.w("ib", 5)], "inn", name="inorm")
    b.conv("inn", "y", 5, 2)
    model = b.build(["y"])
    g = group_on(analyze(model), "a")
    assert g.prunable
    check_seeds(model)
    _, result = prune_with(model, {g.id: (0, 4)})
    for node, slot in (("bn", 1), ("bn", 4), ("pr", 1), ("inorm", 2)):
        assert const_of(result.model, node, slot).shape[0] == 2


def test_conv_transpose_consumes_and_produces():
    b = Builder()
    b.conv("x", "a", 4, 5)
    b.add("ConvTranspose", ["a", b.w("wt", 5, 3, 2, 2), b.w("bt", 3)], "t", strides=[2, 2])
    b.add("Relu", ["t"], "r")
    b.conv("r", "y", 3, 2)
    model = b.build(["y"])
    analysis = analyze(model)
    ga, gt = group_on(analysis, "a"), group_on(analysis, "t")
    assert ga.prunable and gt.prunable and ga.consumers == ("t",) and gt.producers == ("t",)
    check_seeds(model)


# -- prepare and the test harness ----------------------------------------------------------------------------------

def test_prepare_keeps_folded_shape_read_by_a_subgraph():
    b = Builder()
    b.add("Shape", ["x"], "sh")
    then_g = helper.make_graph([helper.make_node("Reshape", ["x", "sh"], ["t"])], "then", [],
                               [helper.make_tensor_value_info("t", TensorProto.FLOAT, [1, 4, 6, 6])])
    else_g = helper.make_graph([helper.make_node("Relu", ["x"], ["e"])], "else", [],
                               [helper.make_tensor_value_info("e", TensorProto.FLOAT, [1, 4, 6, 6])])
    b.add("If", ["cond"], "y", then_branch=then_g, else_branch=else_g)
    model = b.build(["y"], {"x": [1, 4, 6, 6], "cond": []}, {"cond": TensorProto.BOOL})
    onnx.checker.check_model(model, full_check=True)


def test_prepare_keeps_initializers_read_by_a_subgraph():
    b = Builder()
    b.f32("k", 2.0)
    b.add("ReduceMean", ["x"], "xm", keepdims=0)
    b.add("Greater", ["xm", b.f32("zero", 0.0)], "cond")
    then_g = helper.make_graph([helper.make_node("Mul", ["x", "k"], ["t"])], "then", [],
                               [helper.make_tensor_value_info("t", TensorProto.FLOAT, [1, 4, 6, 6])])
    else_g = helper.make_graph([helper.make_node("Relu", ["x"], ["e"])], "else", [],
                               [helper.make_tensor_value_info("e", TensorProto.FLOAT, [1, 4, 6, 6])])
    b.add("If", ["cond"], "i", then_branch=then_g, else_branch=else_g)
    b.add("Shape", ["i"], "sh")  # static: folded into a constant
    b.add("Reshape", ["i", "sh"], "y")
    model = b.build(["y"])
    onnx.checker.check_model(model, full_check=True)
    feeds = random_inputs(model, seed=0)
    np.testing.assert_allclose(run(model, feeds)["y"], run(b.build(["y"], prep=False), feeds)["y"])


def test_random_inputs_for_a_scalar_bool_input_run():
    b = Builder()
    b.then = helper.make_graph([helper.make_node("Relu", ["x"], ["t"])], "then", [],
                               [helper.make_tensor_value_info("t", TensorProto.FLOAT, [1, 4, 6, 6])])
    b.add("If", ["cond"], "y", then_branch=b.then,
          else_branch=helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [],
                                        [helper.make_tensor_value_info("e", TensorProto.FLOAT, [1, 4, 6, 6])]))
    model = b.build(["y"], {"x": [1, 4, 6, 6], "cond": []}, {"cond": TensorProto.BOOL})
    feeds = random_inputs(model, seed=0)
    assert isinstance(feeds["cond"], np.ndarray) and feeds["cond"].shape == ()
    run(model, feeds)
