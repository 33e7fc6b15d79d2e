"""The temperature recovery step on a causal LM's logits (``recovery.temperature``): the KL
terms against direct computations, the cross-fitted fit, where the scalar is folded (an
RMSNorm weight, the head's own weight, or a Mul), and the step inside ``recover``."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.recovery.temperature import (
    Fold,
    apply_temperature,
    fit_temperature,
    fold_point,
    kl_at,
    logit_terms,
    reference_terms,
)
from onnxprune.runtime.session import run


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def _kl(reference: np.ndarray, logits: np.ndarray) -> float:
    """Summed over positions KL(softmax(reference) || softmax(logits)), whole arrays."""
    lp, lq = _log_softmax(reference), _log_softmax(logits)
    return float((np.exp(lp) * (lp - lq)).sum())


def _terms_of(windows: list[np.ndarray]):
    def terms(asked):
        return [[logit_terms(z, t) for t in ts] for z, ts in zip(windows, asked)]
    return terms


def test_kl_terms_match_a_direct_computation_and_its_derivatives():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(3, 70, 50)).astype(np.float32) * 3  # more positions than one float64 chunk
    r = (z * 1.1 + rng.normal(size=z.shape)).astype(np.float32)
    ref = reference_terms(z, r)
    assert ref[2] == 210
    for t in (0.5, 0.9, 1.0, 1.7):
        value, grad, hess = kl_at(ref, logit_terms(z, t), t)
        assert value == pytest.approx(_kl(r, z.astype(np.float64) * t), rel=1e-9)
        h = 1e-4
        up, down = (kl_at(ref, logit_terms(z, t + s), t + s)[0] for s in (h, -h))
        assert grad == pytest.approx((up - down) / (2 * h), rel=1e-5, abs=1e-7)
        assert hess > 0 and hess == pytest.approx((up - 2 * value + down) / h ** 2, rel=1e-3)


def test_fit_recovers_a_known_temperature_and_cross_fits():
    rng = np.random.default_rng(1)
    windows = [rng.normal(size=(1, 40, 30)) * 2 for _ in range(6)]
    reference = [z * 0.8 for z in windows]  # softmax(0.8 z): t = 0.8 is exact
    fit = fit_temperature(_terms_of(windows), [reference_terms(z, r) for z, r in zip(windows, reference)])
    assert fit.t == pytest.approx(0.8, abs=1e-5) and fit.folds == pytest.approx((0.8, 0.8), abs=1e-5)
    assert fit.kl_cross_fitted < 1e-9 < fit.kl_at_one and fit.helps
    positions = sum(z.shape[1] for z in windows)
    assert fit.kl_at_one == pytest.approx(sum(_kl(r, z) for z, r in zip(windows, reference)) / positions, rel=1e-9)


def test_cross_fitted_figure_is_each_fold_at_the_other_folds_temperature():
    rng = np.random.default_rng(2)
    windows = [rng.normal(size=(1, 30, 25)) * 2 for _ in range(5)]
    reference = [z * s + rng.normal(size=z.shape) for z, s in zip(windows, (0.6, 1.3, 0.7, 1.2, 0.9))]
    fit = fit_temperature(_terms_of(windows), [reference_terms(z, r) for z, r in zip(windows, reference)])
    # each fold's t minimises its own windows' KL (a fine grid around it is never lower)
    for fold, t in enumerate(fit.folds):
        mine = [w for w in range(5) if w % 2 == fold]

        def loss(s: float) -> float:
            return sum(_kl(reference[w], windows[w] * s) for w in mine)  # noqa: B023
        assert all(loss(t) <= loss(t + d) + 1e-12 for d in (-1e-2, -1e-3, 1e-3, 1e-2))
    want = sum(_kl(reference[w], windows[w] * fit.folds[1 - w % 2]) for w in range(5)) / 150
    assert fit.kl_cross_fitted == pytest.approx(want, rel=1e-9)
    assert fit.helps == (fit.kl_cross_fitted < fit.kl_at_one)
    with pytest.raises(ValueError):
        fit_temperature(_terms_of(windows[:1]), [reference_terms(windows[0], reference[0])])


def _head(shared: bool, gemm_bias: bool = False, scaled_input: bool = False) -> onnx.ModelProto:
    """x [2, 3, 4] -> (Mul by g) -> MatMul with W [4, 5] -> logits; ``shared``: W also read by
    a second output."""
    rng = np.random.default_rng(3)
    w = numpy_helper.from_array(rng.normal(size=(4, 5)).astype(np.float32), "W")
    g = numpy_helper.from_array(rng.normal(size=(4,)).astype(np.float32), "g")
    nodes, inits = [], [w]
    a = "x"
    if scaled_input:
        nodes.append(helper.make_node("Mul", ["x", "g"], ["xg"], name="norm_scale"))
        inits.append(g)
        a = "xg"
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [2, 3, 5])]
    if gemm_bias:
        nodes = [helper.make_node("Flatten", ["x"], ["x2"], name="flat", axis=2),
                 helper.make_node("Gemm", ["x2", "W", "b"], ["logits"], name="head")]
        inits.append(numpy_helper.from_array(np.ones(5, np.float32), "b"))
        outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [6, 5])]
    else:
        nodes.append(helper.make_node("MatMul", [a, "W"], ["logits"], name="head"))
    if shared:
        nodes.append(helper.make_node("MatMul", ["x", "W"], ["other"], name="other_head"))
        outputs.append(helper.make_tensor_value_info("other", TensorProto.FLOAT, [2, 3, 5]))
    graph = helper.make_graph(nodes, "head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])],
                              outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("shared, scaled_input, kind, tensor", [
    (False, False, "initializer", "W"),  # the head's own weight, read only by it
    (True, True, "initializer", "g"),  # a tied head: the RMSNorm-like scale before it
    (True, False, "insert", "x"),  # nothing to fold into: a Mul by a scalar
])
def test_fold_point_and_apply_scale_the_logits_only(shared, scaled_input, kind, tensor):
    model = _head(shared, scaled_input=scaled_input)
    fold = fold_point(model, "logits")
    assert isinstance(fold, Fold) and (fold.kind, fold.tensor) == (kind, tensor)
    x = {"x": np.random.default_rng(4).normal(size=(2, 3, 4)).astype(np.float32)}
    before = run(model, x)
    params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    apply_temperature(model, fold, 0.7)
    onnx.checker.check_model(model)
    after = run(model, x)
    np.testing.assert_allclose(after["logits"], 0.7 * before["logits"], rtol=1e-5, atol=1e-6)
    if shared:
        np.testing.assert_array_equal(after["other"], before["other"])  # the shared weight is untouched
    grown = sum(int(np.prod(t.dims)) for t in model.graph.initializer) - params
    assert grown == (1 if kind == "insert" else 0)


def test_fold_point_refuses_what_it_cannot_fold():
    assert "Gemm with a bias" in fold_point(_head(False, gemm_bias=True), "logits")
    model = _head(False)
    model.graph.node[-1].op_type = "Add"
    assert "Add 'head'" in fold_point(model, "logits")


# -- inside recovery, on a small random-weight LLaMA -----------------------------------------------------

@pytest.fixture(scope="module")
def decoder(tiny_lm):
    """(model, analysis, plan, pruned): half of every FFN's neurons removed."""
    from onnxprune.api import apply_plan
    from onnxprune.plan import Plan

    model, analysis = tiny_lm
    rng = np.random.default_rng(5)
    groups = [g for g in analysis.prunable_groups if len(g.producers) == 2]
    keep = {g.id: tuple(sorted(rng.choice(g.size, size=max(1, g.size // 2), replace=False).tolist())) for g in groups}
    plan = Plan(fingerprint=analysis.fingerprint, keep=keep, sizes={g.id: g.size for g in groups}, criterion="test")
    return model, analysis, plan, apply_plan(model, analysis, plan).model


def _windows(vocab: int, n: int = 16) -> np.ndarray:
    return np.random.default_rng(6).integers(0, vocab, (n, 24)).astype(np.int64)


def _vocab(model: onnx.ModelProto) -> int:
    return int(model.graph.output[0].type.tensor_type.shape.dim[-1].dim_value)


def test_held_out_temperature_finds_a_scaled_head(decoder):
    """A copy of the original with its final norm's weight 1.5 times larger: t = 1 / 1.5."""
    from onnxprune.io.calib_data import CalibrationData
    from onnxprune.recovery.holdout import HeldOut

    model = decoder[0]
    fold = fold_point(model, "logits")
    assert isinstance(fold, Fold) and fold.kind == "initializer"
    hot = onnx.ModelProto()
    hot.CopyFrom(model)
    apply_temperature(hot, fold, 1.5)
    held = HeldOut(model, CalibrationData({"input_ids": _windows(_vocab(model), 6)}), batch_size=4, metric="kl")
    fit = held.temperature(hot)
    assert fit.t == pytest.approx(1 / 1.5, rel=1e-4) and fit.helps and fit.kl_cross_fitted < 1e-8


def test_recovery_temperature_scales_the_recovered_logits(decoder):
    from onnxprune.io.calib_data import CalibrationData
    from onnxprune.recovery import recover, summary_line

    model, analysis, plan, pruned = decoder
    weights = {t.name: t.SerializeToString() for t in pruned.graph.initializer}
    calib = CalibrationData({"input_ids": _windows(_vocab(model))})
    options = {"holdout": 0.25, "held_metric": "kl", "residual": True, "batch_size": 4}
    plain, _ = recover(model, pruned, analysis, plan, calib, methods=("lstsq", "bias"), **options)
    tempered, report = recover(model, pruned, analysis, plan, calib, methods=("lstsq", "bias", "temperature"),
                               **options)
    assert {t.name: t.SerializeToString() for t in pruned.graph.initializer} == weights  # the input is put back
    step = next(s for s in report["steps"] if s["method"] == "temperature")
    details = step["details"]
    assert details["held_out_kl_at_1"] == pytest.approx(report["held_out"]["recovered"]["kl"], rel=1e-9)
    ids = {"input_ids": _windows(_vocab(model), 3)}
    got, want = run(tempered, ids)["logits"], run(plain, ids)["logits"]
    if step["status"] == "updated":
        assert details["held_out_kl_cross_fitted"] < details["held_out_kl_at_1"]
        np.testing.assert_allclose(got, details["t"] * want, rtol=1e-4, atol=1e-4)
        assert report["held_out"]["temperature"]["t"] == details["t"]
        assert f"temperature {details['t']:.3g}" in summary_line(report)
    else:
        assert step["status"] == "refused" and details["held_out_kl_cross_fitted"] >= details["held_out_kl_at_1"]
        np.testing.assert_array_equal(got, want)
        assert "temperature refused (does not lower the cross-fitted" in summary_line(report)


def test_temperature_skipped_without_the_kl_metric(decoder):
    from onnxprune.io.calib_data import CalibrationData
    from onnxprune.recovery import recover, summary_line

    model, analysis, plan, pruned = decoder
    calib = CalibrationData({"input_ids": _windows(_vocab(model), 8)})
    _, report = recover(model, pruned, analysis, plan, calib, methods=("bias", "temperature"), holdout=0.25,
                        batch_size=4)
    step = next(s for s in report["steps"] if s["method"] == "temperature")
    assert step["status"] == "skipped" and "next-token KL" in step["reason"]
    _, without = recover(model, pruned, analysis, plan, calib, methods=("bias",), holdout=0.25, batch_size=4)
    assert summary_line(report) == summary_line(without)  # the skipped step is not a consumer "not refittable"
    _, report = recover(model, pruned, analysis, plan, calib, methods=("temperature",), holdout=0.0,
                        held_metric="kl", batch_size=4)
    step = next(s for s in report["steps"] if s["method"] == "temperature")
    assert step["status"] == "skipped" and "held-out" in step["reason"]
