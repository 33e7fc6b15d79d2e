"""Registries (criteria, recovery methods, torch op implementations): duplicates are refused, and
a plugin from outside the package registers a criterion and a recovery method that the CLI then
uses by name (``onnxprune --plugin MODULE ...``, or an ``onnxprune.plugins`` entry point)."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

import onnxprune
from onnxprune import extend
from onnxprune.extend import DuplicateRegistrationError
from onnxprune.recovery.methods import RECOVERY_METHODS, register_recovery_method
from onnxprune.scoring.criteria import CRITERIA, get_criterion, names, register_criterion
from tests.test_cli import cli

DATA = Path(onnxprune.__file__).parent / "data"
DIGITS = DATA / "digits_cnn.onnx"

# a plugin as a user would write it, outside the package: one data-free criterion (the unit's
# index: the last units of every group are kept), one data-driven criterion (from the number of
# samples, to show what it receives) and one recovery method (accepts a no-op edit of every consumer)
PLUGIN = textwrap.dedent('''
    import numpy as np

    from onnxprune.scoring.criteria import register_criterion
    from onnxprune.recovery.methods import register_recovery_method

    @register_criterion("toy-index", help="the unit's index (keeps the last units)")
    def toy_index(index, analysis):
        return {g.id: np.arange(g.size, dtype=float) for g in analysis.prunable_groups}

    @register_criterion("toy-data", help="the number of samples minus the unit's index", needs_data=True,
                        needs="calibration inputs")
    def toy_data(model, analysis, data, **options):
        assert "loss" in options and "batch_size" in options
        return {g.id: len(data) - np.arange(g.size, dtype=float) for g in analysis.prunable_groups}

    def toy_run(walk, node, note):
        op = [n for n in walk.model.graph.node if n.name == node][0].op_type
        walk.commit(node, op, "toy", lambda: {}, {"toy": True})

    register_recovery_method("toy", help="changes nothing, accepted", target="consumer", order=5, run=toy_run)
''')


@pytest.fixture()
def plugin(tmp_path, monkeypatch):
    """The plugin module on sys.path, and the registries as they were once the test is over."""
    names(), RECOVERY_METHODS.names()  # the built-ins are in before the snapshot
    monkeypatch.setattr(CRITERIA, "_entries", dict(CRITERIA._entries))
    monkeypatch.setattr(RECOVERY_METHODS, "_entries", dict(RECOVERY_METHODS._entries))
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "toy_onnxprune_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(folder))
    yield "toy_onnxprune_plugin"
    sys.modules.pop("toy_onnxprune_plugin", None)


def test_duplicate_criterion_and_recovery_method_are_refused(monkeypatch):
    names()
    monkeypatch.setattr(CRITERIA, "_entries", dict(CRITERIA._entries))
    monkeypatch.setattr(RECOVERY_METHODS, "_entries", dict(RECOVERY_METHODS._entries))
    before = get_criterion("l2")
    with pytest.raises(DuplicateRegistrationError, match="criterion 'l2' registered twice"):
        register_criterion("l2", help="again", score=lambda index, analysis: {})
    assert get_criterion("l2") is before
    with pytest.raises(DuplicateRegistrationError, match="recovery method 'lstsq' registered twice"):
        register_recovery_method("lstsq", help="again", target="consumer", run=lambda walk, node, note: None)
    with pytest.raises(ValueError, match="target must be one of"):
        register_recovery_method("other", help="", target="everything", run=lambda walk, node, note: None)


def test_duplicate_torch_op_is_refused():
    pytest.importorskip("torch")
    from onnxprune.torchexec.ops import OPS, op, supported_ops

    supported_ops()  # every family registered
    before = OPS["Relu"]
    with pytest.raises(DuplicateRegistrationError, match="Relu registered twice"):
        op("Relu")(lambda node, x: x)
    assert OPS["Relu"] is before


def test_builtin_registries_match_the_documented_lists():
    assert names(needs_data=False) == ("l1", "l2", "bn-scale", "random", "similarity")
    assert names(needs_data=True) == ("taylor-fo", "taylor-so", "taylor-act", "activation", "apoz", "oracle", "flap")
    assert RECOVERY_METHODS.names() == ("bn", "bias", "lstsq", "scale", "temperature")
    assert all(get_criterion(n).help for n in names())


def test_plugin_criterion_from_the_cli(monkeypatch, capsys, tmp_path, plugin):
    out, plan = tmp_path / "p.onnx", tmp_path / "plan.json"
    code, _, err = cli(monkeypatch, capsys, "--plugin", plugin, "prune", DIGITS, "-o", out, "--ratio", "0.5",
                       "--criterion", "toy-index", "--save-plan", plan, "--no-measure", "--align", "1")
    assert code == 0, err
    saved = json.loads(plan.read_text())
    assert saved["criterion"] == "toy-index" and saved["groups"]
    for group in saved["groups"].values():  # the last (highest-scoring) units of every group stay
        size, keep = group["size"], group["keep"]
        assert keep == list(range(size - len(keep), size)) and len(keep) < size

    scores = tmp_path / "scores.json"
    code, _, err = cli(monkeypatch, capsys, "--plugin", plugin, "score", DIGITS, "-o", scores,
                       "--criterion", "toy-data", "--calib", DATA / "digits_test.npz", "--calib-samples", "16")
    assert code == 0, err
    groups = json.loads(scores.read_text())["groups"]
    assert groups and all(v == [16.0 - i for i in range(len(v))] for v in groups.values())  # 16 samples seen

    code, _, err = cli(monkeypatch, capsys, "--plugin", plugin, "prune", DIGITS, "-o", tmp_path / "x.onnx",
                       "--ratio", "0.5", "--criterion", "toy-data")
    assert code == 1 and "toy-data needs calibration data" in err


def test_plugin_recovery_method_from_the_cli(monkeypatch, capsys, tmp_path, plugin):
    out, report = tmp_path / "r.onnx", tmp_path / "recovery.json"
    code, text, err = cli(monkeypatch, capsys, "--plugin", plugin, "prune", DIGITS, "-o", out, "--ratio", "0.3",
                          "--calib", DATA / "digits_test.npz", "--calib-samples", "32", "--recover", "toy,lstsq",
                          "--holdout", "0", "--recovery-report", report, "--no-measure")
    assert code == 0, err
    rep = json.loads(report.read_text())
    assert rep["methods"] == ["toy", "lstsq"]
    assert rep["updated"]["toy"]  # tried first (order 5) and accepted: lstsq never ran on those nodes
    assert not set(rep["updated"]["toy"]) & {s["node"] for s in rep["steps"] if s["method"] == "lstsq"}


def test_unknown_names_list_the_plugins(monkeypatch, capsys, tmp_path, plugin):
    code, _, err = cli(monkeypatch, capsys, "--plugin", plugin, "prune", DIGITS, "-o", tmp_path / "o.onnx",
                       "--ratio", "0.5", "--criterion", "nope")
    assert code == 1 and "unknown criterion 'nope'" in err and "toy-index" in err
    code, _, err = cli(monkeypatch, capsys, "--plugin", plugin, "prune", DIGITS, "-o", tmp_path / "o.onnx",
                       "--ratio", "0.5", "--calib", DATA / "digits_test.npz", "--recover", "magic")
    assert code == 1 and "unknown method(s) magic" in err and "toy" in err


def test_a_plugin_that_cannot_load_is_a_one_line_error(monkeypatch, capsys, tmp_path):
    code, _, err = cli(monkeypatch, capsys, "--plugin", "no_such_onnxprune_plugin", "analyze", DIGITS)
    assert code == 1 and "cannot load plugin 'no_such_onnxprune_plugin'" in err
    assert len(err.strip().splitlines()) == 1


def test_entry_point_plugins_load_on_first_use(monkeypatch, plugin):
    import importlib
    import importlib.metadata

    class EntryPoint:
        name, value = "toy", plugin

        def load(self):
            return importlib.import_module(self.value)

    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda group: [EntryPoint()] if group == extend.ENTRY_POINT_GROUP else [])
    monkeypatch.setattr(extend, "_plugins_loaded", False)
    assert "toy-index" in names() and "toy" in RECOVERY_METHODS.names()


def test_weighted_op_specs_are_one_entry_each(monkeypatch):
    """A weighted op is one spec: registering one makes its MACs count; a second spec of the same
    op type is refused; the readers agree with the table."""
    from onnx import TensorProto, helper

    from onnxprune.analysis.flops import node_macs
    from onnxprune.analysis.weighted_ops import WEIGHTED_OPS, WeightedOp, register_weighted_op, weighted_op
    from onnxprune.graph import GraphIndex

    monkeypatch.setattr(WEIGHTED_OPS, "_entries", dict(WEIGHTED_OPS._entries))
    node = helper.make_node("ToyMatMul", ["x", "w"], ["y"], name="toy", domain="com.example")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5])],
                              [helper.make_tensor("w", TensorProto.FLOAT, [3, 5], [0.0] * 15)])
    index = GraphIndex(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                               helper.make_opsetid("com.example", 1)]))
    assert node_macs(index, node) == 0
    register_weighted_op(WeightedOp("ToyMatMul", lambda index, node: 2 * 3 * 5, domain="com.example",
                                    output_axis=-1))
    assert node_macs(index, node) == 30 and weighted_op(node).output_axis == -1
    with pytest.raises(DuplicateRegistrationError, match="weighted op 'Conv' registered twice"):
        register_weighted_op(WeightedOp("Conv", lambda index, node: 0))
    conv = helper.make_node("Conv", ["x", "w"], ["y"], domain="com.microsoft.nchwc")
    assert weighted_op(conv) is WEIGHTED_OPS.get("Conv")  # a reused standard name counts as the op
    assert [s.op_type for s in WEIGHTED_OPS.values() if s.refit] == ["Conv", "Gemm", "MatMul"]


def test_a_plugin_whose_registration_fails_is_named(monkeypatch, capsys, tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "bad_onnxprune_plugin.py").write_text(
        "from onnxprune.recovery.methods import register_recovery_method\n"
        "register_recovery_method('odd', help='', target='everywhere', run=lambda walk, node, note: None)\n")
    monkeypatch.syspath_prepend(str(folder))
    try:
        code, _, err = cli(monkeypatch, capsys, "--plugin", "bad_onnxprune_plugin", "analyze", DIGITS)
    finally:
        sys.modules.pop("bad_onnxprune_plugin", None)
    assert code == 1 and "plugin 'bad_onnxprune_plugin' failed while loading" in err and "target" in err
