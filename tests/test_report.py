"""Verification reports and sweeps on the digits model shipped with onnxprune: the rich
table, the JSON (keys and consistent numbers), the Markdown / HTML report and the PNG plots."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

import onnxprune
from onnxprune.analysis import analyze
from onnxprune.api import apply_plan, load, plan_to_budget
from onnxprune.selection.budget import Budget
from onnxprune.io.modelio import load_model, save_model
from onnxprune.verify.compare import verify
from tests.graphs import pass_fixture
from tests.test_cli import cli

DATA = Path(onnxprune.__file__).parent / "data"
MODEL, TEST = DATA / "digits_cnn.onnx", DATA / "digits_test.npz"
HAVE_MPL = importlib.util.find_spec("matplotlib") is not None
needs_mpl = pytest.mark.skipif(not HAVE_MPL, reason="matplotlib is not installed (pip install 'onnxprune[report]')")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png_ok(path: Path) -> bool:
    return path.exists() and path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG_MAGIC


@pytest.fixture(scope="module")
def pruned_path(tmp_path_factory):
    m = load(MODEL)
    analysis = analyze(m)
    plan = plan_to_budget(m, analysis, Budget("flops", 0.5)).plan
    return save_model(apply_plan(m, analysis, plan).model, tmp_path_factory.mktemp("digits") / "pruned.onnx")


def test_a_model_agrees_with_itself():
    test = np.load(TEST)
    report = verify(load_model(MODEL), load_model(MODEL), {"input": test["input"][:100]},
                    labels=test["labels"][:100], runs=2, warmup=1, batch_sizes=[1, 4])
    out = report["outputs"]["logits"]
    assert out["original_shape"] == out["pruned_shape"] == [100, 10]
    assert out["max_abs_diff"] == 0.0 and out["mean_abs_diff"] == 0.0
    assert out["top1_agreement"] == 1.0 and out["top5_agreement"] == 1.0
    assert out["cosine"] == pytest.approx(1.0) and out["cosine_min"] == pytest.approx(1.0)
    acc = report["accuracy"]
    assert 0.9 <= acc["original"] == acc["pruned"] <= 1.0
    assert acc["top5_original"] == acc["top5_pruned"] == 1.0
    assert report["flops_ratio"] == report["params_ratio"] == report["size_ratio"] == 1.0
    assert set(report["original"]["latency"]["CPUExecutionProvider"]) == {"1", "4"}


def test_verify_cli_json_markdown_and_plot(monkeypatch, capsys, tmp_path, pruned_path):
    js, md, png = tmp_path / "r.json", tmp_path / "r.md", tmp_path / "p.png"
    code, out, err = cli(monkeypatch, capsys, "verify", MODEL, pruned_path, "--inputs", TEST, "--labels", "labels",
                         "--providers", "cpu", "--batch-sizes", "1,8", "--runs", "3", "--warmup", "1",
                         "--json", js, "--report", md, *(["--plot", png] if HAVE_MPL else []))
    assert code == 0, err
    for title in ("Cost", "Latency", "Outputs", "Accuracy", "speedup (p50)"):
        assert title in out
    r = json.loads(js.read_text())
    o, p = r["original"], r["pruned"]
    for side in (o, p):
        assert {"params", "macs", "flops", "size_bytes", "latency_ms", "latency"} <= set(side)
        assert side["flops"] == 2 * side["macs"]
        lat = side["latency"]["CPUExecutionProvider"]
        assert set(lat) == {"1", "8"}
        for stats in lat.values():
            assert 0 < stats["p50"] <= stats["p90"]
    assert r["flops_ratio"] == pytest.approx(p["flops"] / o["flops"]) and r["flops_ratio"] <= 0.5
    assert r["params_ratio"] == pytest.approx(p["params"] / o["params"]) and r["params_ratio"] < 1
    assert r["size_ratio"] == pytest.approx(p["size_bytes"] / o["size_bytes"]) and r["size_ratio"] < 1
    assert o["size_bytes"] == MODEL.stat().st_size
    assert r["speedup"] == pytest.approx(o["latency_ms"]["p50"] / p["latency_ms"]["p50"])
    assert r["speedups"]["CPUExecutionProvider"]["8"] == pytest.approx(
        o["latency"]["CPUExecutionProvider"]["8"]["p50"] / p["latency"]["CPUExecutionProvider"]["8"]["p50"])
    assert r["providers"] == ["CPUExecutionProvider"] and r["batch_sizes"] == [1, 8] and r["samples"] == 500
    out_entry = r["outputs"]["logits"]
    assert out_entry["original_shape"] == out_entry["pruned_shape"] == [500, 10]
    assert 0 <= out_entry["top1_agreement"] <= out_entry["top5_agreement"] <= 1
    assert -1 <= out_entry["cosine"] <= 1 and out_entry["max_abs_diff"] > 0
    assert sum(out_entry["diff_histogram"]["counts"]) == 500 * 10
    acc = r["accuracy"]
    assert 0 <= acc["pruned"] <= 1 and 0.98 <= acc["original"] <= 1
    text = md.read_text()
    assert text.startswith("# onnxprune verification report")
    for section in ("## Cost", "## Latency (ms)", "## Outputs", "## Accuracy", "| CPU | 8 |"):
        assert section in text
    if HAVE_MPL:
        assert "![plots](r.png)" in text and _png_ok(tmp_path / "r.png")
        assert _png_ok(png)


def test_verify_html_report_with_calib_data(monkeypatch, capsys, tmp_path, pruned_path):
    html = tmp_path / "r.html"
    code, _, err = cli(monkeypatch, capsys, "verify", MODEL, pruned_path, "--calib", TEST, "--labels", "labels",
                       "--samples", "64", "--runs", "2", "--warmup", "0", "--report", html)
    assert code == 0, err
    text = html.read_text()
    assert text.startswith("<!doctype html>") and "<table>" in text and "Accuracy" in text
    if HAVE_MPL:
        assert "data:image/png;base64," in text
    assert not (tmp_path / "r.png").exists()  # embedded, not beside


def test_report_without_matplotlib(monkeypatch, tmp_path):
    from onnxprune.report import plots
    from onnxprune.report.tables import write_verify_report

    monkeypatch.setattr(plots, "have_matplotlib", lambda: False)
    test = np.load(TEST)
    report = verify(load_model(MODEL), load_model(MODEL), {"input": test["input"][:10]}, runs=1, warmup=0)
    path, png = write_verify_report(report, tmp_path / "r.md")
    assert png is None and "matplotlib is not installed" in path.read_text()


def test_fixed_batch_model_skips_other_batch_sizes(monkeypatch, capsys, tmp_path):
    model = tmp_path / "m.onnx"
    onnx.save(pass_fixture(), model)
    js = tmp_path / "r.json"
    code, out, err = cli(monkeypatch, capsys, "verify", model, model, "--batch-sizes", "1,4", "--runs", "2",
                         "--json", js)
    assert code == 0, err
    r = json.loads(js.read_text())
    assert set(r["original"]["latency"]["CPUExecutionProvider"]) == {"1"}
    assert r["latency_skipped"] == ["batch 4: the model's batch size is fixed"]
    assert r["outputs"]["y"]["cosine"] == pytest.approx(1.0)


def test_fixed_batch_model_compares_every_sample(tmp_path):
    """A batch-1 model is run sample by sample over an inputs file holding many (the last chunk padded)."""
    m = pass_fixture()
    feeds = {"x": np.random.default_rng(0).standard_normal((5, 4, 6, 6)).astype(np.float32)}
    report = verify(m, pass_fixture(), feeds, runs=1, warmup=0)
    assert report["outputs"]["y"]["original_shape"] == [5, 3] and report["outputs"]["y"]["max_abs_diff"] == 0


def _stateful_model(batch: str | int = "batch") -> onnx.ModelProto:
    """y = x * gain + sum(state), a recurrent-style state [2, batch, 4] and a scalar option:
    only x has its batch on axis 0."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node("ReduceSum", ["state", "axes"], ["s"], keepdims=0, name="sum"),
             helper.make_node("Mul", ["x", "gain"], ["xg"], name="mul"),
             helper.make_node("Add", ["xg", "s"], ["y"], name="add")]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4]),
         helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, batch, 4]),
         helper.make_tensor_value_info("gain", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 4])],
        [onnx.numpy_helper.from_array(np.array([0], dtype=np.int64), "axes")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_inputs_without_a_leading_batch_axis_are_fed_whole():
    """Batching cuts every input along its own batch axis (axis 1 of a state [2, batch, 4]) and
    feeds a scalar whole, both for comparing outputs in chunks and for latency at other batch
    sizes."""
    from onnxprune.graph import batch_axes
    from onnxprune.selection.latency import feeds_for_batch
    from onnxprune.verify.compare import run_batched

    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal((300, 4)).astype(np.float32),
             "state": rng.standard_normal((2, 300, 4)).astype(np.float32), "gain": np.float32(2.0)}
    model = _stateful_model()
    assert batch_axes(model) == {"x": 0, "state": 1}
    out = run_batched(model, feeds, chunk=256)["y"]  # 300 samples: two chunks of x and of state
    assert out.shape == (300, 4)
    np.testing.assert_allclose(out, feeds["x"] * 2 + feeds["state"].sum(0), rtol=1e-6)
    cut = feeds_for_batch(model, feeds, 8)
    assert cut["x"].shape == (8, 4) and cut["state"].shape == (2, 8, 4) and cut["gain"].shape == ()
    np.testing.assert_array_equal(cut["state"], feeds["state"][:, :8])
    fixed = _stateful_model(batch=1)
    assert batch_axes(fixed) == {"x": 0}  # a fixed batch of 1: state's axis 0 (2) is not it


def test_run_batched_keeps_each_run_s_outputs_small(monkeypatch):
    """A dynamic batch whose outputs are large per sample (a causal LM's logits) runs in chunks
    of at most RUN_BYTES of outputs, and gives what one run gives."""
    import onnxprune.verify.compare as compare

    rng = np.random.default_rng(1)
    feeds = {"x": rng.standard_normal((30, 4)).astype(np.float32),
             "state": rng.standard_normal((2, 30, 4)).astype(np.float32), "gain": np.float32(3.0)}
    whole = compare.run_batched(_stateful_model(), feeds)["y"]
    runs = []
    real_session = compare.session

    def counting_session(*args, **kwargs):
        sess = real_session(*args, **kwargs)

        class Counted:
            def get_outputs(self):
                return sess.get_outputs()

            def run(self, names, feed):
                runs.append(len(feed["x"]))
                return sess.run(names, feed)

        return Counted()

    monkeypatch.setattr(compare, "session", counting_session)
    monkeypatch.setattr(compare, "RUN_BYTES", 7 * 4 * 4)  # one sample's y is 4 floats: 7 samples a run
    chunked = compare.run_batched(_stateful_model(), feeds)["y"]
    np.testing.assert_array_equal(chunked, whole)
    assert runs == [1, 7, 7, 7, 7, 7]  # the one-sample probe, then chunks of 7 (the last padded, then cut)


def test_verify_explains_inputs_the_model_cannot_run_on():
    from onnxprune.errors import ModelRunError

    model = _stateful_model()
    feeds = {"x": np.zeros((3, 4), np.float32), "state": np.zeros((2, 5, 4), np.float32), "gain": np.float32(1)}
    with pytest.raises(ModelRunError, match=r"x \[3, 4\], state \[2, 5, 4\].*--input-shape"):
        verify(model, _stateful_model(), feeds, runs=1, warmup=0)


@pytest.mark.parametrize("args, fragment", [
    (["--report", "r.txt"], ".md or .html"),
    (["--batch-sizes", "1,x"], "--batch-sizes"),
    (["--batch-sizes", "0"], "positive"),
    (["--inputs", "a.npz", "--calib", "b.npz"], "at most one"),
])
def test_verify_bad_options(monkeypatch, capsys, tmp_path, args, fragment):
    code, _, err = cli(monkeypatch, capsys, "verify", MODEL, MODEL, *args)
    assert code != 0 and fragment in err


# -- sweep -------------------------------------------------------------------------------------


def test_sweep_api_points_are_consistent():
    from onnxprune.selection.sweep import sweep

    test = np.load(TEST)
    m = load(MODEL)
    analysis = analyze(m)
    result = sweep(m, analysis, [1.0, 0.6, 0.3], metric="flops", eval_feeds={"input": test["input"][:200]},
                   labels=test["labels"][:200], runs=3, warmup=1)
    orig, full, p60, p30 = result["points"]
    assert orig["target"] is None and orig["flops_ratio"] == 1.0 and orig["top1_agreement"] == 1.0
    assert full["target"] == 1.0 and full["top1_agreement"] == 1.0 and full["cosine"] == pytest.approx(1.0)
    assert full["accuracy"] == orig["accuracy"]  # nothing pruned at 100 %
    for pt in (p60, p30):
        assert pt["flops_ratio"] == pytest.approx(pt["flops"] / orig["flops"]) and pt["flops_ratio"] <= pt["target"]
        assert pt["achieved_ratio"] == pytest.approx(pt["flops_ratio"])
        assert 0 <= pt["accuracy"] <= 1 and 0 <= pt["top1_agreement"] <= 1
        assert pt["latency_ms"]["p50"] > 0 and pt["speedup"] == pytest.approx(
            orig["latency_ms"]["p50"] / pt["latency_ms"]["p50"])
    assert p30["flops"] < p60["flops"] < orig["flops"]
    assert result["samples"] == 200 and result["latency_batch"] == 1 and result["labels"] is True


def test_sweep_cli_writes_json_table_plot_and_models(monkeypatch, capsys, tmp_path):
    out = tmp_path / "sweep"
    code, text, err = cli(monkeypatch, capsys, "sweep", MODEL, "--criterion", "taylor-fo", "--calib", TEST,
                          "--labels", "labels", "--calib-samples", "200", "--targets", "0.9,0.5,0.0001",
                          "--runs", "3", "--save-models", "-o", out)
    assert code == 0, err
    assert "Sweep" in text and "accuracy" in text and "unreachable" in text
    data = json.loads((out / "sweep.json").read_text())
    assert data["criterion"] == "taylor-fo" and data["metric"] == "flops" and data["labels"] is True
    targets = [p["target"] for p in data["points"]]
    assert targets == [None, 0.9, 0.5, 0.0001]
    assert "cannot be reached" in data["points"][-1]["error"]
    for pt in data["points"][1:3]:
        assert pt["flops_ratio"] <= pt["target"] and 0 <= pt["accuracy"] <= 1
        model_path = Path(pt["model_path"])
        assert model_path.exists() and model_path.with_suffix(".plan.json").exists()
        onnx.checker.check_model(onnx.load(model_path), full_check=True)
    md = (out / "sweep.md").read_text()
    assert "| target |" in md and "| original |" in md and "cannot be reached" in md
    if HAVE_MPL:
        assert _png_ok(out / "sweep.png") and "![plots](sweep.png)" in md


def test_sweep_cli_without_data_reports_agreement(monkeypatch, capsys, tmp_path):
    out = tmp_path / "sweep"
    code, text, err = cli(monkeypatch, capsys, "sweep", MODEL, "--targets", "0.7", "--metric", "params",
                          "--round-to", "4", "--runs", "2", "-o", out)
    assert code == 0, err
    data = json.loads((out / "sweep.json").read_text())
    pt = data["points"][1]
    assert data["labels"] is False and pt["accuracy"] is None
    assert pt["params_ratio"] <= 0.7 and 0 <= pt["top1_agreement"] <= 1
    assert not any(p.name.endswith(".onnx") for p in out.iterdir())  # no --save-models


@needs_mpl
def test_plot_functions_write_png(tmp_path):
    from onnxprune.report.plots import write_sweep_plot, write_verify_plot

    test = np.load(TEST)
    report = verify(load_model(MODEL), load_model(MODEL), {"input": test["input"][:8]}, runs=1, warmup=0,
                    batch_sizes=[1, 2])
    assert _png_ok(write_verify_plot(report, tmp_path / "v.png"))
    pt = {"target": 0.5, "flops": 10, "flops_ratio": 0.5, "accuracy": None, "top1_agreement": 0.9, "cosine": 0.95,
          "latency_ms": {"p50": 1.0, "p90": 1.2}}
    sweep = {"points": [{**pt, "target": None, "flops_ratio": 1.0, "top1_agreement": 1.0}, pt],
             "original": {"flops": 20}, "provider": "CPUExecutionProvider"}
    assert _png_ok(write_sweep_plot(sweep, tmp_path / "s.png"))
