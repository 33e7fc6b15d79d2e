"""CNN graphs onnxruntime's own graph optimizer wrote (a session's ``optimized_model_filepath``,
CPU provider): at ORT_ENABLE_EXTENDED, Conv + activation becomes com.microsoft ``FusedConv``
and Gemm + activation ``FusedGemm``; they prune like their unfused ops, equal the masked
reference in onnxruntime, and run in the torch execution. At ORT_ENABLE_ALL the NCHWc layout
transformer writes ``com.microsoft.nchwc`` ops, which are blocked with the reason."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.analysis import analyze
from onnxprune.analysis.accounting import CostModel
from onnxprune.analysis.flops import model_cost
from onnxprune.api import apply_plan, load, score_channels
from onnxprune.io.modelio import save_model
from onnxprune.runtime.session import random_inputs, run
from tests.equivalence import assert_matches_masked, check_pruned_model
from tests.plans import random_masking_plan
from tests.zoo_cache import zoo_path

ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")
MS = "com.microsoft"


def _optimize(src: onnx.ModelProto | str, dst, level: str = "EXTENDED") -> str:
    """``src`` as onnxruntime's CPU session saves it after its graph optimizations at ``level``."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, f"ORT_ENABLE_{level}")
    opts.optimized_model_filepath = str(dst)
    opts.log_severity_level = 3  # level ALL warns that the NCHWc layout is machine-specific
    ort.InferenceSession(src.SerializeToString() if isinstance(src, onnx.ModelProto) else str(src), opts,
                         providers=["CPUExecutionProvider"])
    return str(dst)


def _ops(model: onnx.ModelProto) -> set[str]:
    return {f"{n.domain}::{n.op_type}" if n.domain else n.op_type for n in model.graph.node}


def _torch_matches_onnxruntime(model: onnx.ModelProto) -> None:
    from onnxprune.torchexec import OnnxModule

    feeds = random_inputs(model, seed=3)
    want = run(model, feeds)
    with torch.no_grad():
        got = OnnxModule(model).eval()(*[torch.from_numpy(v) for v in feeds.values()])
    (name, value), = want.items()
    assert float(np.abs(got.numpy() - value).max()) <= 1e-5 * max(1.0, float(np.abs(value).max())), name


@pytest.mark.parametrize("name", ["resnet18", "mobilenetv2"])
def test_ort_optimized_cnn_prunes_and_equals_its_masked_reference(name, tmp_path):
    model = load(_optimize(zoo_path(name), tmp_path / f"{name}-optimized.onnx"))
    assert f"{MS}::FusedConv" in _ops(model), _ops(model)
    analysis = analyze(model)
    assert analysis.fused_ops[f"{MS}::FusedConv"] == sum(n.op_type == "FusedConv" for n in model.graph.node)
    assert not any("custom-domain" in b.reason for b in analysis.blocked), analysis.blocked
    # the channels of the unfused model: same groups (BatchNorm folded), same MACs
    original = load(zoo_path(name))
    want = analyze(original)
    assert sorted((g.size, g.channels) for g in analysis.prunable_groups) == \
        sorted((g.size, g.channels) for g in want.prunable_groups)
    fused = {n.name for n in model.graph.node if n.op_type == "FusedConv"}
    assert any(fused & set(g.producers) for g in analysis.prunable_groups)
    assert model_cost(model).macs == model_cost(original).macs
    plan = random_masking_plan(analysis, seed=0)
    result = apply_plan(model, analysis, plan)
    check_pruned_model(result.model, model)
    assert f"{MS}::FusedConv" in _ops(result.model)
    assert_matches_masked(model, analysis, plan, result)
    # costs: the summary's are a reload's and the cost model's; fewer than the original's
    assert result.after == model_cost(load(save_model(result.model, tmp_path / "pruned.onnx")))
    costs, removed = CostModel(model, analysis), plan.removed_units(analysis)
    assert (costs.params(removed), costs.macs(removed)) == (result.after.params, result.after.macs)
    assert result.after.params < result.before.params and result.after.macs < result.before.macs
    _torch_matches_onnxruntime(model)  # calibration runs on the optimized graph
    _torch_matches_onnxruntime(result.model)


def test_taylor_scores_of_an_ort_optimized_cnn_are_its_unfused_models(tmp_path):
    """Gradient scores flow through FusedConv's activation in the torch execution: those of
    the optimized ResNet-18 are those of the zoo model (BatchNorm folded into the Conv does
    not change a channel's Taylor score: the activation's gradient and value are the same)."""
    from onnxprune.io.calib_data import load_calibration

    model = load(_optimize(zoo_path("resnet18"), tmp_path / "resnet18-optimized.onnx"))
    original = load(zoo_path("resnet18"))
    x = np.random.default_rng(0).standard_normal((4, 3, 64, 64)).astype(np.float32)
    got = score_channels(model, analyze(model), "taylor-fo", calib=load_calibration([{"input": s} for s in x], model))
    want_analysis = analyze(original)
    want = score_channels(original, want_analysis, "taylor-fo",
                          calib=load_calibration([{"input": s} for s in x], original))
    assert sorted(len(v) for v in got.values()) == sorted(len(v) for v in want.values())
    np.testing.assert_allclose(sorted(float(np.sum(v)) for v in got.values()),
                               sorted(float(np.sum(v)) for v in want.values()), rtol=1e-3)


def _mlp(act: str, **attrs) -> onnx.ModelProto:
    """x [2, 8] -> Gemm(w1 [8, 16], b1) -> act -> Gemm(w2 [4, 16] transposed, b2) -> y."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 16)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal(16).astype(np.float32), "b1"),
             numpy_helper.from_array(rng.standard_normal((4, 16)).astype(np.float32), "w2"),
             numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b2")]
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1"),
             helper.make_node(act, ["h"], ["a"], name="act", **attrs),
             helper.make_node("Gemm", ["a", "w2", "b2"], ["y"], name="fc2", transB=1)]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("act,attrs", [("Relu", {}), ("LeakyRelu", {"alpha": 0.2}),
                                       ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}), ("Tanh", {})])
def test_fused_gemm_prunes_with_its_activation(act, attrs, tmp_path):
    model = load(_optimize(_mlp(act, **attrs), tmp_path / "mlp.onnx"))
    assert [n.op_type for n in model.graph.node] == ["FusedGemm", "Gemm"]
    analysis = analyze(model)
    (group,) = analysis.prunable_groups
    assert group.size == 16 and group.producers == ("fused fc1",) and group.consumers == ("fc2",)
    assert model_cost(model).macs == 2 * 8 * 16 + 2 * 16 * 4
    plan = random_masking_plan(analysis, seed=1)
    result = apply_plan(model, analysis, plan)
    check_pruned_model(result.model, model)
    kept = len(plan.keep[group.id])
    assert {t.name: list(t.dims) for t in result.model.graph.initializer}["w1"] == [8, kept]
    assert result.after.macs == 2 * 8 * kept + 2 * kept * 4
    assert_matches_masked(model, analysis, plan, result)
    _torch_matches_onnxruntime(model)


def _fused_conv_with_sum(z_from: str) -> onnx.ModelProto:
    """x -> conv_a (8 channels) -> FusedConv(conv_a's output, w, b, Z=z) with Relu -> conv_c -> y.
    ``z_from`` 'conv': Z is another Conv of x (its channels couple with FusedConv's); 'input':
    Z is a graph input (the output channels cannot be pruned)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 4, 1, 1)).astype(np.float32), "wa"),
             numpy_helper.from_array(rng.standard_normal((6, 8, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(6).astype(np.float32), "b"),
             numpy_helper.from_array(rng.standard_normal((6, 4, 1, 1)).astype(np.float32), "wz"),
             numpy_helper.from_array(rng.standard_normal((2, 6, 1, 1)).astype(np.float32), "wc")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 6, 6])]
    nodes = [helper.make_node("Conv", ["x", "wa"], ["a"], name="conv_a")]
    if z_from == "conv":
        nodes.append(helper.make_node("Conv", ["x", "wz"], ["z"], name="conv_z"))
    else:
        inputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 6, 6, 6]))
    nodes += [helper.make_node("FusedConv", ["a", "w", "b", "z"], ["f"], name="fused", domain=MS,
                               activation="Clip", activation_params=[0.0, 6.0], pads=[1, 1, 1, 1],
                               kernel_shape=[3, 3]),
              helper.make_node("Conv", ["f", "wc"], ["y"], name="conv_c")]
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT,
                                                                                  [1, 2, 6, 6])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)])


def test_fused_conv_sum_input_couples_its_channels(tmp_path):
    path = tmp_path / "sum.onnx"
    onnx.save(_fused_conv_with_sum("conv"), path)
    model = load(path)
    analysis = analyze(model)
    by_producers = {tuple(sorted(g.producers)): g for g in analysis.prunable_groups}
    assert set(by_producers) == {("conv_a",), ("conv_z", "fused")}, by_producers
    plan = random_masking_plan(analysis, seed=2)
    result = apply_plan(model, analysis, plan)
    check_pruned_model(result.model, model)
    assert_matches_masked(model, analysis, plan, result)
    _torch_matches_onnxruntime(model)

    onnx.save(_fused_conv_with_sum("input"), path)
    analysis = analyze(load(path))
    assert [g.producers for g in analysis.prunable_groups] == [("conv_a",)]
    assert any(b.node == "fused" and "sum input 'z' is not produced by a prunable op" in b.reason
               for b in analysis.blocked), analysis.blocked


def test_fused_op_with_an_activation_it_cannot_run_is_blocked(tmp_path):
    model = _fused_conv_with_sum("conv")
    node = next(n for n in model.graph.node if n.op_type == "FusedConv")
    for a in node.attribute:
        if a.name == "activation":
            a.s = b"Softsign"
    del node.attribute[[a.name for a in node.attribute].index("activation_params")]
    path = tmp_path / "softsign.onnx"
    onnx.save(model, path)
    analysis = analyze(load(path, runtime_check=False))
    mine = [b for b in analysis.blocked if b.node == "fused"]
    assert mine and "activation Softsign is not supported" in mine[0].reason, analysis.blocked
    assert all("fused" not in g.producers for g in analysis.prunable_groups)


def test_nchwc_layout_ops_are_blocked_with_their_reason(tmp_path):
    model = load(_optimize(zoo_path("resnet18"), tmp_path / "resnet18-all.onnx", "ALL"))
    assert any(n.domain == "com.microsoft.nchwc" for n in model.graph.node)
    analysis = analyze(model)
    assert not analysis.prunable_groups
    reasons = {b.reason for b in analysis.blocked}
    assert any("NCHWc layout op com.microsoft.nchwc::Conv" in r and "ORT_ENABLE_EXTENDED" in r for r in reasons), reasons
    assert not analysis.fused_ops.get("com.microsoft.nchwc::Conv")  # not listed as understood
