"""FLAP's fluctuation metric (``scoring.fluctuation``): Var(X_j) * ||W_j||^2 per input channel
of each consumer, summed per unit, checked against numpy on a two-layer network."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxprune.analysis import analyze
from onnxprune.api import load
from onnxprune.io.calib_data import CalibrationData
from onnxprune.scoring.fluctuation import fluctuation_scores


def test_fluctuation_equals_variance_times_weight_norm(tmp_path):
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((4, 6)).astype(np.float32)
    w2 = rng.standard_normal((6, 3)).astype(np.float32) * np.array([[1], [2], [0.1], [1], [3], [0.5]], np.float32)
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"], name="up"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "W2"], ["y"], name="down")]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
                              [numpy_helper.from_array(w1, "W1"), numpy_helper.from_array(w2, "W2")])
    path = tmp_path / "mlp.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    model = load(path)
    analysis = analyze(model)
    (group,) = analysis.prunable_groups
    x = rng.standard_normal((10, 4)).astype(np.float32)
    scores = fluctuation_scores(model, analysis, CalibrationData({"x": x}), batch_size=3)
    r = np.maximum(x.astype(np.float64) @ w1, 0.0)
    expected = r.var(0) * (w2.astype(np.float64) ** 2).sum(1)
    np.testing.assert_allclose(scores[group.id], expected, rtol=1e-5)



def test_criterion_signature_caps_the_batch(monkeypatch):
    """The registry's signature (extra calibration options ignored); batches of at most MAX_BATCH."""
    from onnxprune.scoring import fluctuation

    seen = []
    monkeypatch.setattr(fluctuation, "fluctuation_scores", lambda *a, batch_size, progress: seen.append(batch_size))
    fluctuation.criterion_score(None, None, None, batch_size=32, loss="auto", device="cpu", seed=0)
    assert seen == [fluctuation.MAX_BATCH]
