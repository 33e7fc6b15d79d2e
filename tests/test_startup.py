"""Start-up: data-free work never imports torch (the README's first set-up, ``'.[cpu]'``,
has none), and what needs torch says which extra to install.

Each check runs in a fresh interpreter: this test process has usually imported torch
already. "Without torch" is simulated with ``sys.modules['torch'] = None``, which makes
every ``import torch`` fail as it does where torch is not installed.

Start-up cost: shape probing runs only the nodes behind dimensions inference left unknown.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxprune
from onnxprune._optional import TORCH_EXTRA, require_torch
from onnxprune.errors import RuntimeUnavailableError
from onnxprune.graph import GraphIndex
from onnxprune.prepare.normalize import prepare

DATA = Path(onnxprune.__file__).parent / "data"
MODEL = DATA / "digits_cnn.onnx"
CALIB = DATA / "digits_test.npz"

# run CLI commands in one process; report each exit code, its stderr and whether torch was imported
RUNNER = """
import contextlib, io, json, sys
mode, report, commands = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
if mode == "hide-torch":
    sys.modules["torch"] = None
import onnxprune.api, onnxprune.scoring.calibrated, onnxprune.cli, onnxprune.recovery, onnxprune.train
from onnxprune.recovery import METHODS
assert METHODS
results = []
for argv in commands:
    sys.argv = ["onnxprune", *argv]
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            onnxprune.cli.main()
            code = 0
        except SystemExit as exc:
            code = exc.code or 0
    results.append({"argv": argv, "code": code, "stderr": err.getvalue()})
torch = sys.modules.get("torch")
with open(report, "w") as f:
    json.dump({"results": results, "torch_imported": torch is not None}, f)
"""


def run_commands(tmp_path: Path, commands: list[list[str]], *, hide_torch: bool) -> dict:
    report = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-c", RUNNER, "hide-torch" if hide_torch else "keep-torch", str(report),
                           json.dumps(commands)], capture_output=True, text=True, cwd=tmp_path, check=False,
                          env={**os.environ, "COLUMNS": "200"}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(report.read_text())


@pytest.fixture()
def model(tmp_path) -> Path:
    """A copy of the shipped digits CNN (the commands under test never see the original)."""
    path = tmp_path / "digits_cnn.onnx"
    shutil.copyfile(MODEL, path)
    return path


def data_free_commands(model: Path) -> list[list[str]]:
    small = model.with_name("small.onnx")
    return [
        ["prune", str(model), "-o", str(small), "--ratio", "0.3"],
        ["prune", str(model), "-o", str(model.with_name("half.onnx")), "--target-flops", "0.5"],
        ["analyze", str(model)],
        ["verify", str(model), str(small)],
    ]


def test_data_free_commands_work_without_torch(tmp_path, model):
    report = run_commands(tmp_path, data_free_commands(model), hide_torch=True)
    for r in report["results"]:
        assert r["code"] == 0, (r["argv"], r["stderr"])
    assert not report["torch_imported"]
    assert (tmp_path / "small.onnx").is_file() and (tmp_path / "half.onnx").is_file()


def test_data_free_commands_never_import_torch(tmp_path, model):
    """torch installed: importing the CLI, the API, calib, recovery and train, and running
    every data-free command (l2 scores and a data-free sweep included) leaves it unimported."""
    commands = [*data_free_commands(model),
                ["score", str(model), "-o", str(tmp_path / "scores.json"), "--criterion", "l2"],
                ["sweep", str(model), "--targets", "0.5", "-o", str(tmp_path / "sweep")]]
    report = run_commands(tmp_path, commands, hide_torch=False)
    for r in report["results"]:
        assert r["code"] == 0, (r["argv"], r["stderr"])
    assert (tmp_path / "scores.json").is_file()
    assert not report["torch_imported"]


def test_what_needs_torch_names_the_extra(tmp_path, model):
    out = tmp_path / "out.onnx"
    tuned = tmp_path / "tuned.onnx"
    commands = [
        ["prune", str(model), "-o", str(out), "--ratio", "0.3", "--calib", str(CALIB), "--criterion", "taylor-fo"],
        ["score", str(model), "-o", str(tmp_path / "s.json"), "--calib", str(CALIB), "--criterion", "taylor-fo"],
        ["finetune", str(model), "--teacher", str(model), "--calib", str(CALIB), "-o", str(tuned)],
        ["prune", str(tmp_path / "nope.onnx"), "-o", str(out), "--ratio", "0.3"],  # not masked by torch
    ]
    prune, score, finetune, missing = run_commands(tmp_path, commands, hide_torch=True)["results"]
    for r, feature in ((prune, "scoring with 'taylor-fo'"), (score, "scoring with 'taylor-fo'"),
                       (finetune, "fine-tuning")):
        assert r["code"] == 1, (r["argv"], r["stderr"])
        assert r["stderr"].strip().splitlines()[-1] == f"error: {feature} needs torch: {TORCH_EXTRA}", r["stderr"]
        assert "unexpected" not in r["stderr"]
    assert not out.exists() and not tuned.exists()
    assert missing["code"] == 1
    assert missing["stderr"].strip() == f"error: {tmp_path / 'nope.onnx'}: file not found"


def test_require_torch(monkeypatch):
    pytest.importorskip("torch")
    assert require_torch("x").__name__ == "torch"
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(RuntimeUnavailableError, match=r"^fine-tuning needs torch: pip install -c constraints.txt "
                                                      r"'onnxprune\[torch\]'$"):
        require_torch("fine-tuning")


# start-up cost: shape probing runs only what inference leaves unknown (issue 16)

def _probe_model(with_flatten: bool) -> onnx.ModelProto:
    """x[N, 4] -> Relu -> h -> Relu -> y (inference keeps N); with_flatten also x -> Reshape
    [-1] -> f -> Relu -> r, whose length (4N) inference leaves unknown."""
    nodes = [helper.make_node("Relu", ["x"], ["h"], name="relu_h"),
             helper.make_node("Relu", ["h"], ["y"], name="relu_y")]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    inits = []
    if with_flatten:
        nodes += [helper.make_node("Reshape", ["x", "flat"], ["f"], name="flatten"),
                  helper.make_node("Relu", ["f"], ["r"], name="relu_r")]
        outputs.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, None))
        inits = [numpy_helper.from_array(np.array([-1], np.int64), "flat")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _sessions(monkeypatch) -> list[onnx.ModelProto]:
    """Record every model the probe hands to onnxruntime."""
    import onnxprune.runtime.session

    seen: list[onnx.ModelProto] = []
    real = onnxprune.runtime.session.session

    def spy(model: onnx.ModelProto, *args: object, **kwargs: object) -> object:
        seen.append(model)
        return real(model, *args, **kwargs)

    monkeypatch.setattr(onnxprune.runtime.session, "session", spy)
    return seen


def test_probe_runs_nothing_when_inference_kept_the_input_symbols(monkeypatch):
    sessions = _sessions(monkeypatch)
    model = prepare(_probe_model(with_flatten=False))
    assert sessions == []
    # named as a probe run would name it: batch 3 in the first run, 2 in the second
    assert GraphIndex(model).shape("h") == GraphIndex(model).shape("y") == ("d3_2", 4)


def test_probe_runs_only_the_nodes_behind_unknown_dims(monkeypatch):
    pytest.importorskip("onnxruntime")
    sessions = _sessions(monkeypatch)
    model = prepare(_probe_model(with_flatten=True))
    assert len(sessions) == 1
    assert [n.name for n in sessions[0].graph.node] == ["flatten", "relu_r"]
    index = GraphIndex(model)
    assert index.shape("f") == index.shape("r") == ("d12_8",)  # measured: 4 x 3, then 4 x 2
    assert index.shape("h") == index.shape("y") == ("d3_2", 4)  # derived, named alike
