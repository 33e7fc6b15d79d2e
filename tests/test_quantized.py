"""Quantized graphs (issue 14), built in the tests with onnxruntime's own tools from zoo
models: QDQ from ``quantize_static`` (per-channel and per-tensor), 4-bit ``MatMulNBits``
from ``MatMulNBitsQuantizer``; QOperator forms blocked with their reason.

Each pruned model passes the full checker, runs in onnxruntime and equals its masked
reference: QDQ with graph optimisations off (every Q/DQ executed: the same float
computation, to float rounding) and on (onnxruntime fuses the QDQ pairs into integer
kernels; the reference then zeroes the removed input channels in the *quantized*
weights, code := zero point, which contributes exactly 0 to the integer accumulation);
MatMulNBits, whose kept blocks dequantise exactly as before, to float rounding.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnxprune.analysis import analyze
from onnxprune.analysis.flops import model_cost
from onnxprune.analysis.rules.quant import analysis_index, expand_weight_refs, quantized_ops
from onnxprune.api import apply_plan, load, score_channels
from onnxprune.graph import attr
from onnxprune.plan import Plan
from onnxprune.rewrite.masking import masked_model
from onnxprune.runtime.session import random_inputs, run
from tests.equivalence import assert_matches_masked, check_pruned_model
from tests.plans import random_masking_plan
from tests.zoo_cache import zoo_path

ort = pytest.importorskip("onnxruntime")
quantization = pytest.importorskip("onnxruntime.quantization")


class _Reader(quantization.CalibrationDataReader):
    """A few seeded standard-normal samples for a model's image input."""

    def __init__(self, name: str, shape: tuple[int, ...], n: int = 4) -> None:
        self._it = iter([{name: np.random.default_rng(i).standard_normal(shape).astype(np.float32)} for i in range(n)])

    def get_next(self):
        return next(self._it, None)


@pytest.fixture(scope="session")
def quantized(tmp_path_factory):
    """(zoo name, form) -> path of the quantized model, built once per session."""
    folder = tmp_path_factory.mktemp("quantized")
    cache: dict[tuple[str, str], str] = {}

    def get(name: str, form: str) -> str:
        if (name, form) not in cache:
            src = str(zoo_path(name))
            out = folder / f"{name}-{form}.onnx"
            shape = tuple(d.dim_value or 1 for d in onnx.load(src).graph.input[0].type.tensor_type.shape.dim)
            fmt = quantization.QuantFormat.QOperator if form == "qop" else quantization.QuantFormat.QDQ
            quantization.quantize_static(src, str(out), _Reader("input", shape), quant_format=fmt,
                                         per_channel=form != "qdq-tensor",
                                         activation_type=quantization.QuantType.QUInt8,
                                         weight_type=quantization.QuantType.QInt8)
            cache[(name, form)] = str(out)
        return cache[(name, form)]

    return get


def _ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def _check_qdq_params(model: onnx.ModelProto) -> None:
    """Every per-channel DequantizeLinear's scale and zero point fit its weight's axis."""
    inits = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in inits:
            continue
        dims = list(inits[node.input[0]].dims)
        scale = inits[node.input[1]]
        if int(np.prod(scale.dims)) > 1:
            assert list(scale.dims) == [dims[int(attr(node, "axis", 1)) % len(dims)]], node.name
        if len(node.input) > 2 and node.input[2]:
            assert int(np.prod(inits[node.input[2]].dims)) == int(np.prod(scale.dims)), node.name


def _fused_ops(model: onnx.ModelProto, tmp_path) -> set[str]:
    """The op types onnxruntime runs after its graph optimisations (what 'runs quantized' means)."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return {n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node}


def _output_step(model: onnx.ModelProto) -> float:
    """The quantization step of the model's output (the scale of the DequantizeLinear writing it)."""
    out = model.graph.output[0].name
    node = next(n for n in model.graph.node if out in n.output)
    assert node.op_type == "DequantizeLinear", node.op_type
    scale = next(t for t in model.graph.initializer if t.name == node.input[1])
    return float(onnx.numpy_helper.to_array(scale).max())


@pytest.mark.parametrize("name,form", [("resnet18", "qdq-channel"), ("mobilenetv2", "qdq-channel"),
                                       ("resnet18", "qdq-tensor")])
def test_qdq_model_prunes_and_equals_its_masked_reference(quantized, tmp_path, name, form):
    model = load(quantized(name, form))
    assert "QuantizeLinear" in _ops(model) and "DequantizeLinear" in _ops(model)
    analysis = analyze(model)
    assert analysis.prunable_groups
    producers = {p for g in analysis.prunable_groups for p in g.producers}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert sum(n.name in producers for n in convs) >= len(convs) // 2, producers
    assert not any("quantized" in b.reason or "Quantize" in b.reason for b in analysis.blocked), analysis.blocked
    ops = quantized_ops(model)
    assert ops["DequantizeLinear (weight)"] >= len(convs) and ops["QuantizeLinear (activation)"] > 0
    assert analysis.fused_ops["DequantizeLinear (weight)"] == ops["DequantizeLinear (weight)"]  # analyze lists them
    if form == "qdq-channel":  # per-channel scales are sliced with their weights
        dq = {n.name for n in model.graph.node if n.op_type == "DequantizeLinear"}
        refs = expand_weight_refs(analysis.params, analysis_index(model))
        assert any(ref.node in dq and ref.slot == 1 for ref in refs)
    # l2 scores read the dequantised weights: those of the float model, up to quantization error
    float_model = load(zoo_path(name))
    float_analysis = analyze(float_model)
    assert {g.id for g in analysis.prunable_groups} == {g.id for g in float_analysis.prunable_groups}
    scores_q, scores_f = score_channels(model, analysis, "l2"), score_channels(float_model, float_analysis, "l2")
    for gid, want in scores_f.items():  # measured within 1.1% (ResNet-18, MobileNetV2)
        np.testing.assert_allclose(scores_q[gid], want, rtol=0.03 if form == "qdq-channel" else 0.2)
    plan = random_masking_plan(analysis, seed=0)
    result = apply_plan(model, analysis, plan)
    pruned = result.model
    check_pruned_model(pruned, model)
    _check_qdq_params(pruned)
    assert _ops(pruned).count("DequantizeLinear") == _ops(model).count("DequantizeLinear")
    assert model_cost(pruned).macs < model_cost(model).macs
    # every Q/DQ executed (optimisations off): the masked float computation, to float rounding
    assert_matches_masked(model, analysis, plan, result)
    # onnxruntime runs the pruned model quantized, as it runs the original
    fused = _fused_ops(pruned, tmp_path)
    assert "QLinearConv" in fused and "Conv" not in fused, fused
    feeds = random_inputs(model, seed=1)
    reference = masked_model(model, analysis, plan, quantized=True)
    want = run(reference, feeds, optimize=True)
    got = run(pruned, feeds, optimize=True)
    step = _output_step(model)
    for key, value in want.items():
        diff = np.abs(value.astype(np.float64) - got[key])
        # integer accumulation gives the kept channels identical sums (measured bit-identical);
        # one output step allows a float requantisation multiplier rounding at a tie
        assert float(diff.max()) <= step * (1 + 1e-6), (float(diff.max()), step)
        assert float(np.mean(diff > step / 2)) <= 0.2


def test_analyze_lists_the_quantized_ops_it_understood(quantized, monkeypatch, capsys):
    from tests.test_cli import cli

    code, out, err = cli(monkeypatch, capsys, "analyze", quantized("resnet18", "qdq-channel"))
    assert code == 0, err
    assert "DequantizeLinear (weight) x" in out and "QuantizeLinear (activation) x" in out, out


def test_calibration_scores_flow_through_qdq_pairs(quantized):
    """The torch execution fake-quantizes with a straight-through gradient: Taylor scores of
    a QDQ model are finite and not all zero, and its forward pass equals onnxruntime's."""
    torch = pytest.importorskip("torch")
    from onnxprune.io.calib_data import load_calibration
    from onnxprune.torchexec import OnnxModule

    model = load(quantized("resnet18", "qdq-channel"))
    x = np.random.default_rng(0).standard_normal((4, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        mine = OnnxModule(model).eval()(torch.from_numpy(x[:1])).numpy()
    want = run(model, {"input": x[:1]})["output"]
    assert float(np.abs(mine - want).max()) <= 1e-5 * max(1.0, float(np.abs(want).max()))
    analysis = analyze(model)
    scores = score_channels(model, analysis, "taylor-fo", calib=load_calibration([{"input": s} for s in x], model))
    values = np.concatenate([scores[g.id] for g in analysis.prunable_groups])
    assert np.isfinite(values).all() and (values > 0).mean() > 0.5


def _reloaded_cost(model: onnx.ModelProto, tmp_path):
    """The cost of ``model`` saved and loaded again (shapes measured afresh at load)."""
    from onnxprune.io.modelio import save_model

    return model_cost(load(save_model(model, tmp_path / "reloaded.onnx")))


def _check_pruned_costs(model: onnx.ModelProto, analysis, plan: Plan, result, tmp_path) -> None:
    """The summary's costs (``result.after``) are the reloaded model's and the cost model's
    prediction, and the pruned model has fewer parameters and MACs than the original."""
    from onnxprune.analysis.accounting import CostModel

    before, after = model_cost(model), result.after
    assert after == _reloaded_cost(result.model, tmp_path), (after, _reloaded_cost(result.model, tmp_path))
    costs, removed = CostModel(model, analysis), plan.removed_units(analysis)
    assert (costs.params(removed), costs.macs(removed)) == (after.params, after.macs)
    assert after.params < before.params and after.macs < before.macs, (before, after)


def test_quantized_weights_count_as_parameters(quantized, tmp_path):
    """A QDQ model's parameters are its float original's: the int8 weights and int32 biases
    the DequantizeLinears read (scales and zero points are not parameters); pruning lowers
    them, as the summary, a reload and the cost model agree (measured ResNet-18: 705,786 ->
    326,430 params, 11,060,480 -> 6,541,850 MACs, equal to the float model's 705,786)."""
    model = load(quantized("resnet18", "qdq-channel"))
    float_model = onnx.load(zoo_path("resnet18"))
    biases = sum(int(np.prod(t.dims)) for t in float_model.graph.initializer if len(t.dims) == 1)
    q, f = model_cost(model).params, model_cost(load(zoo_path("resnet18"))).params
    assert abs(q - f) <= biases and q > 10 * biases, (q, f, biases)
    analysis = analyze(model)
    assert analysis.total_params == q
    plan = random_masking_plan(analysis, seed=0)
    result = apply_plan(model, analysis, plan)
    _check_pruned_costs(model, analysis, plan, result, tmp_path)


def test_qoperator_forms_are_blocked_with_their_reason(quantized):
    model = load(quantized("resnet18", "qop"))
    analysis = analyze(model)
    assert not analysis.prunable_groups
    reasons = " | ".join(b.reason for b in analysis.blocked)
    assert "QOperator form (QLinearConv)" in reasons and "QuantFormat.QDQ" in reasons, reasons


# -- MatMulNBits -----------------------------------------------------------------------------------

torch = pytest.importorskip("torch")


@pytest.fixture(scope="session")
def nbits(tmp_path_factory):
    """block size -> path of the tiny LLaMA with its MatMuls as 4-bit MatMulNBits."""
    pytest.importorskip("transformers")
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    from models.llm import export_causal_lm, tiny_llama

    folder = tmp_path_factory.mktemp("nbits")
    src = export_causal_lm(tiny_llama(ffn=256), folder / "llama.onnx")
    cache: dict[int, str] = {}

    def get(block: int) -> str:
        """block 0: the float model itself."""
        if block == 0:
            return str(src)
        if block not in cache:
            quantizer = MatMulNBitsQuantizer(onnx.load(src), block_size=block, is_symmetric=False)
            quantizer.process()
            out = folder / f"llama-nbits{block}.onnx"
            quantizer.model.save_model_to_file(str(out))
            cache[block] = str(out)
        return cache[block]

    return get


def _ids(seed: int = 0) -> dict[str, np.ndarray]:
    return {"input_ids": np.random.default_rng(seed).integers(0, 200, (2, 8)).astype(np.int64)}


def _check_nbits_layout(model: onnx.ModelProto) -> None:
    inits = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type != "MatMulNBits":
            continue
        k, n, bs = int(attr(node, "K")), int(attr(node, "N")), int(attr(node, "block_size"))
        kb = -(-k // bs)
        assert list(inits[node.input[1]].dims) == [n, kb, bs // 2], node.name
        assert int(np.prod(inits[node.input[2]].dims)) == n * kb, node.name
        if len(node.input) > 3 and node.input[3]:
            assert int(np.prod(inits[node.input[3]].dims)) == n * -(-kb // 2), node.name


@pytest.mark.parametrize("block", [32, 128])
def test_matmul_nbits_prunes_whole_blocks_and_equals_its_masked_reference(nbits, block):
    model = load(nbits(block))
    assert quantized_ops(model)["com.microsoft::MatMulNBits"] == 14
    analysis = analyze(model)
    # the FFN's intermediate channels: gate/up produce them (N), down reads them (K) in whole blocks
    ffn = [g for g in analysis.prunable_groups if g.channels == 256]
    assert ffn, [(g.id, g.channels, g.size, g.reasons) for g in analysis.groups]
    assert all(g.size == 256 // block for g in ffn)
    plan = random_masking_plan(analysis, seed=3)
    if block == 128:  # o_proj's K (64) is one partial block: blocked, so prune the FFNs only
        # (removing a KV head would remove query heads o_proj reads: the GQA tie, tested elsewhere)
        plan = Plan(fingerprint=plan.fingerprint, keep={g.id: plan.keep[g.id] for g in ffn},
                    sizes={g.id: g.size for g in ffn}, criterion=plan.criterion)
    result = apply_plan(model, analysis, plan)
    check_pruned_model(result.model, model)
    _check_nbits_layout(result.model)
    assert model_cost(result.model).macs < model_cost(model).macs
    feeds = _ids()
    want = run(masked_model(model, analysis, plan), feeds)["logits"]
    got = run(result.model, feeds)["logits"]
    assert float(np.abs(want - got).max()) <= 1e-4 * max(1.0, float(np.abs(want).max()))
    # the torch execution (calibration) dequantises the same weights
    from onnxprune.torchexec import OnnxModule

    with torch.no_grad():
        mine = OnnxModule(result.model).eval()(torch.from_numpy(feeds["input_ids"]))
    assert float(np.abs(mine.numpy() - got).max()) <= 1e-4 * max(1.0, float(np.abs(got).max()))


def test_matmul_nbits_weights_count_as_k_by_n_parameters_and_summary_macs_match_a_reload(nbits, tmp_path):
    """A MatMulNBits weight counts K x N parameters (its packed bytes do not; scales and zero
    points are not parameters): the 4-bit LLaMA has its float original's parameters and MACs.
    After pruning, the ops after each MatMulNBits (onnx's inference stops there) have their
    shapes, so the summary's MACs equal a reload's (measured 73,792 vs 90,240 before
    onnxruntime's symbolic shapes replaced onnx's shape-less entries; now 90,240 both)."""
    model = load(nbits(32))
    float_cost = model_cost(load(nbits(0)))
    assert model_cost(model) == float_cost, (model_cost(model), float_cost)
    analysis = analyze(model)
    plan = random_masking_plan(analysis, seed=3)
    result = apply_plan(model, analysis, plan)
    _check_pruned_costs(model, analysis, plan, result, tmp_path)


def _nbits_weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """MatMulNBits node name -> its weight dequantised, float32 [N, K]."""
    from onnxprune.analysis.rules.quant import dequantize_nbits

    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    out = {}
    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            n, k = int(attr(node, "N")), int(attr(node, "K"))
            zeros = inits[node.input[3]] if len(node.input) > 3 and node.input[3] else None
            w = dequantize_nbits(inits[node.input[1]], inits[node.input[2]], zeros, int(attr(node, "bits")), n)
            out[node.name] = (w.reshape(n, -1)[:, :k], inits[node.input[2]].reshape(n, -1))
    return out


@pytest.mark.parametrize("block", [32, 128])
def test_matmul_nbits_requantized_input_channels_are_within_quantization_error(nbits, block, tmp_path):
    """Within ``requantize_nbits`` (recipe ``requantize``, ``--requantize``) MatMulNBits' input
    channels go one by one: the FFN has 256 units, not 256 / block_size; the down projection
    is dequantised, sliced and quantized again by onnxruntime's block quantizer, so each kept
    weight is within half a quantization step of its dequantised original, and the model
    within the quantization error of its masked (dequantised) reference (measured 0.8% of the
    largest logit at block 32)."""
    from onnxprune.analysis.rules.quant import requantize_nbits

    model = load(nbits(block))
    with requantize_nbits():
        analysis = analyze(model)
    ffn = [g for g in analysis.prunable_groups if g.channels == 256]
    assert ffn and all(g.size == 256 for g in ffn), [(g.id, g.size) for g in analysis.prunable_groups]
    plan = random_masking_plan(analysis, seed=3)
    result = apply_plan(model, analysis, plan)
    check_pruned_model(result.model, model)
    _check_nbits_layout(result.model)
    _check_pruned_costs(model, analysis, plan, result, tmp_path)
    before, after = _nbits_weights(model), _nbits_weights(result.model)
    downs = [n.name for n in model.graph.node if n.op_type == "MatMulNBits" and attr(n, "K") == 256]
    assert len(downs) == 2
    for name, group in zip(downs, ffn):  # layer order: the FFN groups of layers 0 and 1
        keep = np.asarray(plan.keep[group.id])
        assert 0 < len(keep) < 256
        (w_old, _), (w_new, s_new) = before[name], after[name]
        assert w_new.shape == (w_old.shape[0], len(keep))
        step = np.repeat(np.abs(s_new), block, axis=1)[:, :len(keep)]  # the new block's scale, per weight
        assert np.all(np.abs(w_new - w_old[:, keep]) <= 0.5 * step * (1 + 1e-5) + 1e-7)
        assert not np.array_equal(w_new, w_old[:, keep[:len(keep)]] * 0)  # weights kept, not zeroed
    feeds = _ids()
    want = run(masked_model(model, analysis, plan), feeds)["logits"]
    got = run(result.model, feeds)["logits"]
    assert float(np.abs(want - got).max()) <= 0.05 * float(np.abs(want).max())
    # without the option: whole blocks, as before
    assert all(g.size == 256 // block for g in analyze(model).prunable_groups if g.channels == 256)


def test_requantize_is_a_recipe_field_and_a_cli_flag(nbits, monkeypatch, capsys, tmp_path):
    from onnxprune.recipe import Recipe
    from tests.test_cli import cli

    assert Recipe().requantize is False and "requantized" in Recipe(requantize=True).describe()
    out_path = tmp_path / "pruned.onnx"
    code, _, err = cli(monkeypatch, capsys, "prune", nbits(32), "-o", str(out_path), "--ratio", "0.3",
                         "--criterion", "l2", "--requantize")
    assert code == 0, err
    pruned = onnx.load(out_path)
    ks = sorted(int(attr(n, "K")) for n in pruned.graph.node if n.op_type == "MatMulNBits")
    assert any(k % 32 for k in ks), ks  # an input side cut inside a block: requantized


def test_matmul_nbits_whose_attributes_disagree_with_its_weights_is_blocked(nbits, tmp_path):
    model = onnx.load(nbits(32))
    node = next(n for n in model.graph.node if n.op_type == "MatMulNBits" and attr(n, "K") == 256)
    for a in node.attribute:
        if a.name == "K":
            a.i = 224  # 7 blocks of 32, its weight holds 8
    path = tmp_path / "bad.onnx"
    onnx.save(model, path)
    analysis = analyze(load(path, runtime_check=False))
    mine = [b for b in analysis.blocked if b.node == node.name]
    assert mine and "disagrees with its attributes K=224" in mine[0].reason, analysis.blocked
    assert all(node.name not in g.consumers + g.producers for g in analysis.prunable_groups)


def _fake_quant_model() -> onnx.ModelProto:
    """x -> Conv(DQ(Q(w))) -> Relu -> Q/DQ per channel (axis 1) -> Conv(DQ(Q(w2))) -> y: weights
    fake-quantized from float constants (as a QAT export writes them), per-channel on the
    output axis, and a per-channel activation quantization on the channels pruned."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 4, 3, 3)).astype(np.float32)
    w2 = rng.standard_normal((4, 8, 1, 1)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(w2, "w2"),
             numpy_helper.from_array((np.abs(w).reshape(8, -1).max(1) / 127).astype(np.float32), "ws"),
             numpy_helper.from_array(np.zeros(8, np.int8), "wz"),
             numpy_helper.from_array((np.abs(w2).reshape(4, -1).max(1) / 127).astype(np.float32), "w2s"),
             numpy_helper.from_array(np.zeros(4, np.int8), "w2z"),
             numpy_helper.from_array(rng.uniform(0.02, 0.05, 8).astype(np.float32), "as"),
             numpy_helper.from_array(rng.integers(0, 5, 8).astype(np.uint8), "az")]
    nodes = [helper.make_node("QuantizeLinear", ["w", "ws", "wz"], ["wq"], name="w_q", axis=0),
             helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], name="w_dq", axis=0),
             helper.make_node("Conv", ["x", "wd"], ["a"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("QuantizeLinear", ["r", "as", "az"], ["rq"], name="r_q", axis=1),
             helper.make_node("DequantizeLinear", ["rq", "as", "az"], ["rd"], name="r_dq", axis=1),
             helper.make_node("QuantizeLinear", ["w2", "w2s", "w2z"], ["w2q"], name="w2_q", axis=0),
             helper.make_node("DequantizeLinear", ["w2q", "w2s", "w2z"], ["w2d"], name="w2_dq", axis=0),
             helper.make_node("Conv", ["rd", "w2d"], ["y"], name="conv2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_fake_quantized_weights_and_per_channel_activations_are_sliced(tmp_path):
    path = tmp_path / "fake_quant.onnx"
    onnx.save(_fake_quant_model(), path)
    model = load(path)
    analysis = analyze(model)
    (group,) = analysis.prunable_groups
    assert group.size == 8 and group.producers == ("conv1",) and group.consumers == ("conv2",)
    plan = random_masking_plan(analysis, seed=1)
    kept = len(plan.keep[group.id])
    result = apply_plan(model, analysis, plan)
    check_pruned_model(result.model, model)
    sizes = {t.name: list(t.dims) for t in result.model.graph.initializer}
    # conv1's rows with their scales (Q and DQ share them), the activation's per-channel
    # scale / zero point, conv2's columns (its per-channel scales are on the other axis)
    assert sizes["w"][0] == sizes["ws"][0] == sizes["wz"][0] == sizes["as"][0] == sizes["az"][0] == kept
    assert sizes["w2"] == [4, kept, 1, 1] and sizes["w2s"] == [4]
    assert_matches_masked(model, analysis, plan, result)
    feeds = random_inputs(model, seed=2)
    want = run(masked_model(model, analysis, plan, quantized=True), feeds)["y"]
    np.testing.assert_allclose(run(result.model, feeds)["y"], want, rtol=1e-5, atol=1e-5)
