"""What recovery's steps must lower on the held-out samples: the graph outputs' MSE, or for a
causal LM the mean next-token KL divergence from the original's distribution
(``recover(held_metric="kl")``, ``holdout.HeldOut``). The KL figure is checked against a
direct computation on whole arrays; every step kept lowered it, every step refused at the
graph level did not. Small random-weight LLaMA of SmolLM2's structure; skipped without
transformers."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from models.llm import TINY_VOCAB, export_causal_lm, tiny_llama  # noqa: E402
from onnxprune.analysis import analyze  # noqa: E402
from onnxprune.api import apply_plan, load  # noqa: E402
from onnxprune.io.calib_data import CalibrationData  # noqa: E402
from onnxprune.plan import Plan  # noqa: E402
from onnxprune.recovery import recover, summary_line  # noqa: E402
from onnxprune.recovery.errors import RecoveryError  # noqa: E402
from onnxprune.recovery.holdout import HeldOut  # noqa: E402
from onnxprune.runtime.session import run  # noqa: E402


@pytest.fixture(scope="module")
def decoder(tmp_path_factory):  # noqa: ANN201
    """(model, analysis, plan, pruned): half of every FFN's neurons and one KV head removed."""
    path = export_causal_lm(tiny_llama(hidden=96, heads=6, kv_heads=2), tmp_path_factory.mktemp("kl") / "m.onnx")
    model = load(path)
    analysis = analyze(model)
    rng = np.random.default_rng(4)
    groups = [g for g in analysis.prunable_groups if len(g.producers) == 2]  # KV heads (k, v), FFN (gate, up)
    keep = {g.id: tuple(sorted(rng.choice(g.size, size=max(1, g.size // 2), replace=False).tolist())) for g in groups}
    plan = Plan(fingerprint=analysis.fingerprint, keep=keep, sizes={g.id: g.size for g in groups}, criterion="test")
    return model, analysis, plan, apply_plan(model, analysis, plan).model


def _windows(n: int = 24, seed: int = 2) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, TINY_VOCAB, (n, 32)).astype(np.int64)


def _kl(p_logits: np.ndarray, q_logits: np.ndarray) -> float:
    """Mean over token positions of KL(softmax(p) || softmax(q)), float64, whole arrays."""
    def log_softmax(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float64)
        m = x.max(-1, keepdims=True)
        return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))

    lp, lq = log_softmax(p_logits), log_softmax(q_logits)
    return float((np.exp(lp) * (lp - lq)).sum(-1).mean())


def test_held_out_kl_is_the_mean_next_token_kl_divergence(decoder):
    model, _, _, pruned = decoder
    ids = _windows(10)
    held = HeldOut(model, CalibrationData({"input_ids": ids}), batch_size=3, metric="kl")
    want = _kl(run(model, {"input_ids": ids})["logits"], run(pruned, {"input_ids": ids})["logits"])
    assert want > 1e-4
    assert held.error(pruned) == pytest.approx(want, rel=1e-9)
    assert held.error(model) == 0.0
    metrics = held.metrics(pruned)
    assert metrics["kl"] == pytest.approx(want, rel=1e-9) and metrics["criterion"] == metrics["kl"]
    mse = HeldOut(model, CalibrationData({"input_ids": ids}), batch_size=3).metrics(pruned)
    assert "kl" not in mse and mse["criterion"] == mse["output_mse"] == pytest.approx(metrics["output_mse"])


def test_recovery_judged_on_next_token_kl(decoder):
    """Every step kept lowered the held-out KL, every step refused at the graph level did not;
    the report and its line give the KL before and after."""
    model, analysis, plan, pruned = decoder
    recovered, report = recover(model, pruned, analysis, plan, CalibrationData({"input_ids": _windows()}),
                                methods=("lstsq", "bias"), holdout=0.25, held_metric="kl", residual=True)
    held = report["held_out"]
    assert report["holdout"]["metric"] == "kl"
    assert held["recovered"]["kl"] < held["pruned"]["kl"] and not report.get("reverted")
    steps = [s for s in report["steps"] if "held_out_kl_before" in s["details"]]
    assert any(s["status"] == "updated" for s in steps)
    for s in steps:
        d = s["details"]
        assert (d["held_out_kl_after"] < d["held_out_kl_before"]) == (s["status"] == "updated"), s
        if s["status"] == "refused":
            assert "next-token KL" in s["reason"]
    check = HeldOut(model, CalibrationData({"input_ids": _windows()[[2, 6, 10, 14, 18, 22]]}), 4, "kl")
    assert check.error(recovered) == pytest.approx(held["recovered"]["kl"], rel=1e-9)
    assert "next-token KL" in summary_line(report)


def test_kl_needs_a_causal_lm_and_known_metrics_only(decoder):
    from tests.test_recovery_memory import _mlp

    model, analysis, plan, pruned = decoder
    with pytest.raises(RecoveryError, match="unknown held_metric 'ce'"):
        recover(model, pruned, analysis, plan, CalibrationData({"input_ids": _windows()}), held_metric="ce")
    mlp = _mlp()
    x = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
    with pytest.raises(RecoveryError, match="needs a causal LM.*outputs: y"):
        HeldOut(mlp, CalibrationData({"x": x}), 4, "kl").error(mlp)
