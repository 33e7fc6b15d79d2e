"""float16 and bfloat16 models (issue 14): MobileNetV2 converted by onnxruntime's own
``convert_float_to_float16`` (all float16, and mixed: float32 inputs and outputs with Cast
at the graph boundary) analyses like its float32 original, scores (l2 and Taylor through
the torch execution), prunes, recovers and verifies; bfloat16 weights Cast to float are
pruned, bfloat16 compute is refused (onnxruntime's CPU provider has no kernels for it:
tests/test_bad_inputs.py).

Tolerance: the pruned model and its masked reference run the same float16 kernels on the
same kept values, so they agree to a few float16 rounding steps of the output (float16
carries 11 significant bits: relative 2**-11 ~ 4.9e-4 per rounding); 1e-2 relative to the
output's scale bounds that with a wide margin and still fails on any wrong channel.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnxprune.analysis import analyze
from onnxprune.analysis.flops import model_cost
from onnxprune.api import apply_plan, load, score_channels
from onnxprune.rewrite.masking import masked_model
from onnxprune.runtime.session import random_inputs, run
from tests.equivalence import check_pruned_model
from tests.plans import random_masking_plan
from tests.zoo_cache import zoo_path

pytest.importorskip("onnxruntime")
float16 = pytest.importorskip("onnxruntime.transformers.float16")

RTOL_F16 = 1e-2


@pytest.fixture(scope="session")
def f16_models(tmp_path_factory) -> dict[str, str]:
    """'pure' (float16 throughout) and 'mixed' (float32 interface, Cast at the boundary)."""
    folder = tmp_path_factory.mktemp("float16")
    src = zoo_path("mobilenetv2")
    out = {}
    for kind, keep_io in (("pure", False), ("mixed", True)):
        model = float16.convert_float_to_float16(onnx.load(src), keep_io_types=keep_io)
        out[kind] = str(folder / f"mobilenetv2-{kind}.onnx")  # mixed: boundary Casts after their readers
        onnx.save(model, out[kind])
    return out


def _f16_weights(model: onnx.ModelProto) -> int:
    return sum(t.data_type == TensorProto.FLOAT16 and len(t.dims) > 1 for t in model.graph.initializer)


@pytest.mark.parametrize("kind", ["pure", "mixed"])
def test_float16_mobilenetv2_prunes_like_its_float32_original(f16_models, kind):
    original32 = load(zoo_path("mobilenetv2"))
    model = load(f16_models[kind])
    analysis, analysis32 = analyze(model), analyze(original32)
    assert sorted(g.size for g in analysis.prunable_groups) == sorted(g.size for g in analysis32.prunable_groups)
    assert len(analysis.prunable_groups) > 5
    # l2 scores are computed in float64 from the float16 weights: those of float32, rounded
    s16, s32 = score_channels(model, analysis, "l2"), score_channels(original32, analysis32, "l2")
    a = np.sort(np.concatenate([s16[g] for g in sorted(s16)]))
    b = np.sort(np.concatenate([s32[g] for g in sorted(s32)]))
    np.testing.assert_allclose(a, b, rtol=1e-2)
    plan = random_masking_plan(analysis, seed=0)
    result = apply_plan(model, analysis, plan)
    check_pruned_model(result.model, model)
    assert _f16_weights(result.model) == _f16_weights(model) > 0  # still float16 weights
    assert [i.type for i in result.model.graph.input] == [i.type for i in model.graph.input]
    assert model_cost(result.model).macs < model_cost(model).macs
    feeds = random_inputs(model, seed=0)
    want = run(masked_model(model, analysis, plan), feeds)
    got = run(result.model, feeds)
    for name, ref in want.items():
        assert got[name].dtype == ref.dtype == (np.float16 if kind == "pure" else np.float32)
        scale = max(1.0, float(np.abs(ref.astype(np.float32)).max()))
        err = float(np.abs(ref.astype(np.float32) - got[name].astype(np.float32)).max()) / scale
        assert err <= RTOL_F16, err


@pytest.mark.slow
def test_float16_calibrated_scores_recovery_and_verify(f16_models, tmp_path):
    torch = pytest.importorskip("torch")  # noqa: F841 - the torch execution scores and recovers
    from onnxprune.compress import compress
    from onnxprune.io.calib_data import load_calibration
    from onnxprune.recipe import Recipe
    from onnxprune.verify.compare import verify

    model = load(f16_models["pure"])
    x = np.random.default_rng(0).standard_normal((6, 3, 64, 64)).astype(np.float16)
    calib = load_calibration([{"input": s} for s in x], model)
    result = compress(model, Recipe(target_flops=0.8), calib=calib)  # data-driven scores through torch
    assert result.recipe.criterion.startswith("taylor"), result.recipe.describe()
    pruned = result.model
    check_pruned_model(pruned, model)
    assert _f16_weights(pruned) == _f16_weights(model)
    assert model_cost(pruned).macs <= 0.85 * model_cost(model).macs
    report = verify(model, pruned, {"input": x[:4]}, runs=2, warmup=1)
    (stats,) = report["outputs"].values()
    assert np.isfinite(stats["max_abs_diff"]) and stats["cosine"] > 0.5, stats


def test_float16_taylor_scores_are_computed_in_float32(f16_models, tmp_path):
    """The torch execution runs a float16 model in float32 (weights, inputs and Casts
    upcast): its Taylor scores equal those of the float32 model holding the same (float16-
    rounded) weights, fed the same inputs (measured: identical; computing in float16 they
    differ by up to 15% of a group's largest score), and follow the float32 original's
    (whose weights differ by float16 rounding: measured within 22% of a group's largest
    score, correlation 0.998)."""
    torch = pytest.importorskip("torch")
    from onnx import numpy_helper

    from onnxprune.io.calib_data import load_calibration
    from onnxprune.torchexec import OnnxModule

    model = load(f16_models["pure"])
    rounded = onnx.load(zoo_path("mobilenetv2"))
    for t in rounded.graph.initializer:
        if t.data_type == TensorProto.FLOAT:
            value = numpy_helper.to_array(t).astype(np.float16).astype(np.float32)
            t.CopyFrom(numpy_helper.from_array(value, t.name))
    onnx.save(rounded, tmp_path / "rounded.onnx")
    x = np.random.default_rng(0).standard_normal((8, 3, 64, 64)).astype(np.float16)
    labels = np.arange(8) % 10
    with torch.no_grad():
        assert OnnxModule(model)(torch.from_numpy(x[:1])).dtype == torch.float32
        assert OnnxModule(model, float32=False)(torch.from_numpy(x[:1])).dtype == torch.float16

    def taylor(m: onnx.ModelProto, dtype) -> tuple[object, dict[str, np.ndarray]]:
        analysis = analyze(m)
        calib = load_calibration([{"input": s.astype(dtype)} for s in x], m, labels=labels)
        return analysis, score_channels(m, analysis, "taylor-fo", calib=calib)

    analysis, got = taylor(model, np.float16)
    for other, tol in ((load(tmp_path / "rounded.onnx"), 1e-4), (load(zoo_path("mobilenetv2")), 0.5)):
        _, want = taylor(other, np.float32)
        assert set(want) == set(got) == {g.id for g in analysis.prunable_groups}
        for gid, w in want.items():
            scale = max(float(np.abs(w).max()), 1e-30)
            assert float(np.abs(got[gid] - w).max()) <= tol * scale, (gid, float(np.abs(got[gid] - w).max()) / scale)
        a, b = (np.concatenate([s[g] for g in sorted(s)]) for s in (got, want))
        assert np.corrcoef(a, b)[0, 1] > 0.99


def _bf16(a: np.ndarray) -> onnx.TensorProto:
    """bfloat16 initializer holding ``a`` rounded toward zero (the top half of each float32)."""
    bits = (a.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    return helper.make_tensor("", TensorProto.BFLOAT16, a.shape, bits.tobytes(), raw=True)


def _bf16_storage_model() -> onnx.ModelProto:
    """x -> Conv(Cast(w_bf16)) -> Relu -> Cast(bf16) -> Cast(f32) -> Conv(Cast(w2_bf16)) -> y: weights
    stored as bfloat16 and activations rounded through bfloat16, all computed in float32."""
    rng = np.random.default_rng(0)
    inits = []
    for name, shape in (("w", (8, 4, 3, 3)), ("w2", (4, 8, 1, 1))):
        t = _bf16(rng.standard_normal(shape))
        t.name = name
        inits.append(t)
    f32, bf = TensorProto.FLOAT, TensorProto.BFLOAT16
    nodes = [helper.make_node("Cast", ["w"], ["wf"], to=f32, name="w_cast"),
             helper.make_node("Cast", ["w2"], ["w2f"], to=f32, name="w2_cast"),
             helper.make_node("Conv", ["x", "wf"], ["a"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("Cast", ["r"], ["rb"], to=bf, name="to_bf16"),
             helper.make_node("Cast", ["rb"], ["rf"], to=f32, name="to_f32"),
             helper.make_node("Conv", ["rf", "w2f"], ["y"], name="conv2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", f32, [1, 4, 6, 6])],
                              [helper.make_tensor_value_info("y", f32, [1, 4, 6, 6])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_bfloat16_weights_and_casts_run_by_onnxruntime_are_pruned(tmp_path):
    path = tmp_path / "bf16.onnx"
    onnx.save(_bf16_storage_model(), path)
    model = load(path)
    analysis = analyze(model)
    (group,) = analysis.prunable_groups
    assert group.size == 8
    plan = random_masking_plan(analysis, seed=0)
    result = apply_plan(model, analysis, plan)
    check_pruned_model(result.model, model)
    assert any(n.op_type == "Cast" and n.attribute[0].i == TensorProto.BFLOAT16 for n in result.model.graph.node)
    feeds = random_inputs(model, seed=0)
    want = run(masked_model(model, analysis, plan), feeds)["y"]
    got = run(result.model, feeds)["y"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))
