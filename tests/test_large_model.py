"""A model over 2 GB with external data: load, prune and save with external data.

Marked slow (about a minute and ~6 GB of memory); it runs in CI."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from models.synthetic import mlp_chain
from onnxprune.api import apply_plan, load, plan_by_ratio
from onnxprune.analysis import analyze
from onnxprune.io.modelio import has_external_data, save_model

WIDTH, LAYERS = 8192, 9  # 9 x 256 MiB of weights: 2.3 GiB


@pytest.mark.slow
def test_over_2gb_round_trip(tmp_path):
    src = mlp_chain(tmp_path / "big.onnx", width=WIDTH, layers=LAYERS)
    assert (tmp_path / "big.onnx.data").stat().st_size > 2**31
    model = load(src)
    analysis = analyze(model)
    plan = plan_by_ratio(model, analysis, ratio=0.5, criterion="l2")
    removed = {gid: sorted(set(range(analysis.group(gid).size)) - set(keep)) for gid, keep in plan.keep.items()}
    result = apply_plan(model, analysis, plan, inplace=True)
    out = save_model(result.model, tmp_path / "pruned.onnx", external_data=True)
    del model, result
    assert has_external_data(out) and (tmp_path / "pruned.onnx.data").exists()
    pruned = onnx.load(out)
    onnx.checker.check_model(str(out), full_check=True)
    assert [t.dims[0] for t in pruned.graph.initializer if t.name == "w1"] == [WIDTH // 2]

    import onnxruntime as ort

    x = np.random.default_rng(0).standard_normal((1, WIDTH)).astype(np.float32)
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    # the masked reference, layer by layer in numpy from the original's external data
    original = onnx.load(src)
    weights = {t.name: t for t in original.graph.initializer}
    masks = {}
    for g in analysis.prunable_groups:
        layer = int(g.producers[0][2:])  # producers are fc<i>
        keep = np.ones(WIDTH, bool)
        keep[removed.get(g.id, [])] = False
        masks[layer] = keep
    h = x.astype(np.float64)
    for i in range(LAYERS):
        h = np.maximum(h @ numpy_helper.to_array(weights[f"w{i}"]) + numpy_helper.to_array(weights[f"b{i}"]), 0)
        h = h * masks.get(i, 1.0)
    ref = h @ numpy_helper.to_array(weights["w_out"])
    assert np.abs(got - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())
