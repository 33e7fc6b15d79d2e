"""What the command line prints (issue 16): user text printed as it is, one-line errors,
output that fits 80 columns, one cost unit, and `verify` as a pipeline gate (tolerances,
random samples said so, output paths checked first, onnxruntime's details kept)."""

from __future__ import annotations

import json
import re

import numpy as np
import onnx
import pytest
from rich.console import Console

import onnxprune
from onnxprune.analysis import analyze
from onnxprune.api import apply_plan, plan_by_ratio
from onnxprune.errors import PlanError
from onnxprune.plan import Plan
from tests.test_cli import cli
from onnxprune.verify.compare import check_tolerances
from tests.graphs import pass_fixture

FAST = ("--runs", "1", "--warmup", "0", "--providers", "cpu")


@pytest.fixture()
def models(tmp_path):
    """The pass fixture and a copy with half its channels pruned."""
    original, pruned = tmp_path / "model.onnx", tmp_path / "pruned.onnx"
    onnx.save(pass_fixture(), original)
    m = onnxprune.load(original)
    a = analyze(m)
    onnxprune.save_model(apply_plan(m, a, plan_by_ratio(m, a, ratio=0.5)).model, pruned)
    return original, pruned


def _one_error_line(err: str) -> str:
    lines = err.strip("\n").splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "unexpected" not in lines[0]
    return lines[0]


# -- item 2: brackets in user text survive rich markup -----------------------------------------


def test_bracketed_paths_and_names_are_printed_as_they_are(monkeypatch, capsys, tmp_path, models):
    original, _ = models
    missing = tmp_path / "model[v2].onnx"
    code, _, err = cli(monkeypatch, capsys, "analyze", missing)
    assert code == 1 and f"{missing}: file not found" in _one_error_line(err)

    m = pass_fixture()
    m.graph.node[0].name = "conv[a]"
    named = tmp_path / "net[small].onnx"
    onnx.save(m, named)
    code, out, err = cli(monkeypatch, capsys, "analyze", named)
    assert code == 0, err
    assert str(named) in out and "conv[a]" in out
    code, out, _ = cli(monkeypatch, capsys, "analyze", named, "--wide")
    assert code == 0 and "conv[a]" in out

    scores = tmp_path / "scores[1].json"
    code, out, err = cli(monkeypatch, capsys, "score", original, "-o", scores)
    assert code == 0, err
    assert f"wrote {scores}" in out and scores.exists()

    report = tmp_path / "r[1].md"
    monkeypatch.setattr("onnxprune.report.plots.have_matplotlib", lambda: False)  # plotting is slow; not tested here
    code, out, err = cli(monkeypatch, capsys, "verify", original, original, *FAST, "--report", report)
    assert code == 0, err
    assert str(report) in out and report.exists()


# -- item 10: verify without inputs compares a few random samples, and says so ------------------


def test_verify_without_inputs_says_it_compares_random_samples(monkeypatch, capsys, tmp_path, models):
    original, pruned = models
    js = tmp_path / "r.json"
    code, out, err = cli(monkeypatch, capsys, "verify", original, pruned, *FAST, "--json", js)
    assert code == 0, err
    assert "compared on 8 random samples" in out
    report = json.loads(js.read_text())
    assert report["inputs"] == "random" and report["samples"] == 8
    assert report["outputs"]["y"]["original_shape"] == [8, 3]  # a batch-1 model, run sample by sample
    inputs = tmp_path / "in.npz"
    np.savez(inputs, x=np.zeros((2, 4, 6, 6), np.float32))
    code, out, _ = cli(monkeypatch, capsys, "verify", original, pruned, *FAST, "--inputs", inputs, "--json", js)
    assert code == 0 and "random samples" not in out
    assert json.loads(js.read_text())["inputs"] == "given"


# -- item 11: one cost unit, named -------------------------------------------------------------


def test_cost_tables_use_macs_only(monkeypatch, capsys, tmp_path, models):
    from onnxprune.analysis.flops import model_cost
    from onnxprune.report.tables import cost_table

    original, pruned = models
    con = Console(record=True, width=100)
    cost_table(model_cost(onnx.load(original)), model_cost(onnx.load(pruned)), con)
    text = con.export_text()
    assert "MACs" in text and "FLOPs" not in text
    code, out, err = cli(monkeypatch, capsys, "verify", original, pruned, *FAST)
    assert code == 0, err
    assert re.search(r"│ MACs\s", out) and "MACs ratio" in out and "FLOPs" not in out


# -- item 18: verify's output paths are checked before any work ----------------------------------


@pytest.mark.parametrize("flag, name", [("--json", "r.json"), ("--report", "r.md"), ("--plot", "p.png")])
def test_verify_refuses_unwritable_outputs_before_running(monkeypatch, capsys, tmp_path, models, flag, name):
    import onnxprune.verify.compare

    def must_not_run(*args, **kwargs):
        raise AssertionError("the models ran before the output path was checked")

    monkeypatch.setattr(onnxprune.verify.compare, "verify", must_not_run)
    monkeypatch.setattr("onnxprune.report.plots.have_matplotlib", lambda: True)
    original, pruned = models
    target = tmp_path / "missing_dir" / name
    code, _, err = cli(monkeypatch, capsys, "verify", original, pruned, flag, target)
    assert code == 1 and "does not exist" in _one_error_line(err) and "missing_dir" in err
    if flag == "--json":
        code, _, err = cli(monkeypatch, capsys, "verify", original, pruned, flag, pruned)
        assert code == 1 and "input model" in _one_error_line(err)


# -- item 19: onnxruntime's reason is kept, on one line --------------------------------------------


def test_verify_keeps_what_onnxruntime_says_about_wrong_inputs(monkeypatch, capsys, tmp_path, models):
    original, pruned = models
    inputs = tmp_path / "in.npz"
    np.savez(inputs, x=np.zeros((1, 4, 9, 9), np.float32))
    code, _, err = cli(monkeypatch, capsys, "verify", original, pruned, "--inputs", inputs, *FAST, columns=60)
    line = _one_error_line(err)
    assert code == 1
    assert "Got: 9 Expected: 6" in line and "x [1, 4, 9, 9]" in line and "ONNXRuntimeError" not in line


def test_ort_error_text_keeps_every_informative_line():
    from onnxprune.runtime.session import ort_error_text

    exc = RuntimeError("[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Got invalid dimensions for input: input for "
                       "the following indices\n index: 2 Got: 100 Expected: 224\n index: 3 Got: 100 Expected: 224\n"
                       " Please fix either the inputs/outputs or the model.")
    assert ort_error_text(exc) == ("Got invalid dimensions for input: input for the following indices; "
                                   "index: 2 Got: 100 Expected: 224; index: 3 Got: 100 Expected: 224")


# -- item 21: one line, plain words ------------------------------------------------------------------


def test_errors_are_one_line_at_any_width(monkeypatch, capsys, tmp_path, models):
    original, _ = models
    deep = tmp_path.joinpath(*["a-rather-long-folder-name"] * 6) / "model.onnx"
    for columns in (40, 250):
        code, _, err = cli(monkeypatch, capsys, "analyze", deep, columns=columns)
        assert code == 1 and str(deep) in _one_error_line(err)
    # a message with line breaks of its own, and a usage error
    monkeypatch.setattr("onnxprune.api.load", lambda *a, **k: (_ for _ in ()).throw(PlanError("first\n  second")))
    code, _, err = cli(monkeypatch, capsys, "analyze", original, columns=40)
    assert code == 1 and _one_error_line(err) == "error: first second"
    code, _, err = cli(monkeypatch, capsys, "analyze", columns=40)
    assert code == 2 and "Missing argument" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("doc, words", [
    ([1, 2], "expected a JSON object"),
    ({"format_version": 1, "fingerprint": "f"}, "no groups"),
    ({"format_version": 1, "fingerprint": "f", "groups": "g"}, "groups must map"),
    ({"format_version": 1, "fingerprint": "f", "groups": {"g": {"size": 4}}}, "group 'g' needs"),
    ({"format_version": 1, "fingerprint": "f", "groups": {"g": {"size": "x", "keep": [0]}}}, "size must be"),
    ({"format_version": 1, "fingerprint": "f", "groups": {"g": {"size": 4, "keep": "01"}}}, "keep must be a list"),
    ({"format_version": 1, "fingerprint": "f", "groups": {}, "merges": {"g": [[1]]}}, "merges must map"),
    ({"format_version": 7}, "unsupported plan format_version 7"),
])
def test_malformed_plans_are_refused_in_plain_words(tmp_path, doc, words):
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(PlanError) as info:
        Plan.load(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and words in message
    assert not re.search(r"[A-Z]\w*Error\(", message)


def test_prune_with_a_malformed_plan_prints_one_plain_line(monkeypatch, capsys, tmp_path, models):
    original, _ = models
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"format_version": 1, "fingerprint": "f", "groups": {"g": {"size": 4, "keep": "01"}}}))
    code, _, err = cli(monkeypatch, capsys, "prune", original, "-o", tmp_path / "o.onnx", "--plan", plan)
    line = _one_error_line(err)
    assert code == 1 and "malformed plan" in line and "Error(" not in line


# -- item 22: analyze fits 80 columns, the full table on request; help texts current -----------------


def test_analyze_fits_80_columns_with_names_whole(monkeypatch, capsys):
    pytest.importorskip("torch")
    from tests.zoo_cache import zoo_path

    path = zoo_path("mobilenetv2")
    a = analyze(onnxprune.load(path))
    biggest = max(a.prunable_groups, key=lambda g: g.macs)
    code, out, err = cli(monkeypatch, capsys, "analyze", path, columns=80)
    assert code == 0, err
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 80 and len(lines) <= 40
    assert "Channel groups" in out and "graph output" in out
    assert any(biggest.producers[0] in line for line in lines)  # a node name, unbroken
    code, wide, _ = cli(monkeypatch, capsys, "analyze", path, "--wide", columns=80)
    assert code == 0
    for g in a.groups:
        if g.producers:
            assert g.id in wide  # every group, its id on one line
    code, js, _ = cli(monkeypatch, capsys, "analyze", path, "--json")
    assert code == 0 and json.loads(js) == json.loads(json.dumps(a.to_dict()))


@pytest.mark.parametrize("command", ["score", "sweep"])
def test_criterion_help_lists_every_criterion(monkeypatch, capsys, command):
    from onnxprune.scoring.calibrated import DATA_DRIVEN
    from onnxprune.scoring.data_free import DATA_FREE

    code, out, _ = cli(monkeypatch, capsys, command, "--help")
    assert code == 0
    for name in (*DATA_FREE, *DATA_DRIVEN):
        assert re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", out), name


# -- item 24: verify's tolerances gate a pipeline ------------------------------------------------------


def _report(**out):
    base = {"original_shape": [4, 10], "pruned_shape": [4, 10], "max_abs_diff": 0.5, "max_abs_original": 10.0,
            "cosine": 0.99, "top1_agreement": 0.75}
    return {"outputs": {"logits": {**base, **out}}}


def test_check_tolerances():
    r = _report()
    assert check_tolerances(r) == []
    assert check_tolerances(r, atol=0.5, min_cosine=0.99, min_top1=0.75) == []
    assert check_tolerances(r, rtol=0.05) == []  # 0.5 <= 0.05 x 10
    assert check_tolerances(r, atol=0.1, rtol=0.04) == []  # 0.5 <= 0.1 + 0.04 x 10
    (fail,) = check_tolerances(r, atol=0.1, rtol=0.01)
    assert "logits" in fail and "0.5 > 0.2" in fail
    assert len(check_tolerances(r, atol=0.4, min_cosine=0.999, min_top1=0.8)) == 3
    assert check_tolerances(_report(max_abs_diff=float("nan")), atol=1e9)  # NaN fails
    assert "shape" in check_tolerances(_report(pruned_shape=[4, 9], cosine=None), min_cosine=0.0)[0]
    (no_classifier,) = check_tolerances(_report(top1_agreement=None), min_top1=0.5)
    assert "classifier" in no_classifier


def test_verify_tolerances_exit_1_with_one_line(monkeypatch, capsys, tmp_path, models):
    original, pruned = models
    js = tmp_path / "r.json"
    code, out, err = cli(monkeypatch, capsys, "verify", original, pruned, *FAST, "--min-cosine", "0.999999",
                         "--atol", "1e-6", "--json", js)
    assert code == 1
    (line,) = err.strip().splitlines()
    assert "FAILED" in line and "cosine" in line and "max |diff|" in line
    checks = json.loads(js.read_text())["checks"]  # the report is written all the same
    assert checks["passed"] is False and len(checks["failures"]) == 2
    code, out, err = cli(monkeypatch, capsys, "verify", original, original, *FAST, "--atol", "0", "--rtol", "0",
                         "--min-cosine", "0.9999", "--min-top1", "1")
    assert code == 0, err
    assert "tolerances (atol 0, rtol 0, min cosine 0.9999, min top-1 agreement 1): passed" in out
    code, _, err = cli(monkeypatch, capsys, "verify", original, pruned, "--min-top1", "1.5")
    assert code == 1 and "--min-top1" in _one_error_line(err)
    code, _, err = cli(monkeypatch, capsys, "verify", original, pruned, "--atol", "-1")
    assert code == 1 and "--atol" in _one_error_line(err)
