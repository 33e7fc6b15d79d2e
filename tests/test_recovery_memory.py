"""Memory bounds of recovery and scoring on large models (a decoder LM's weights and logits):
undoing a refused step without a copy of the model, sessions with other outputs without a
copy of the weights, reference outputs spilled to disk. Behaviour only: the same bytes and
values as the copying code paths."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

pytest.importorskip("onnxruntime")

from onnxprune.io.calib_data import CalibrationData
from onnxprune.recovery import activations
from onnxprune.recovery.activations import Probe, Stored, expose
from onnxprune.recovery.params import add_bias, set_constant
from onnxprune.recovery.snapshot import Snapshot, touching
from onnxprune.runtime.memory import release
from onnxprune.runtime.session import run, session, session_with_outputs


def _mlp(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 6)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal(6).astype(np.float32), "b1"),
             numpy_helper.from_array(rng.standard_normal((6, 3)).astype(np.float32), "w2")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h0"], name="mm1"),
             helper.make_node("Add", ["h0", "b1"], ["h1"], name="add1"),
             helper.make_node("Relu", ["h1"], ["h"], name="relu"),
             helper.make_node("MatMul", ["h", "w2"], ["y"], name="mm2")]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _x(n: int = 10) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((n, 4)).astype(np.float32)


@pytest.mark.parametrize("node", ["mm1", "mm2"])
def test_snapshot_restores_the_model_byte_for_byte(node):
    model = _mlp()
    before = model.SerializeToString()
    snap = Snapshot(model, node)
    # what the built-in methods do at a node: a new weight in place, a bias (the Add after mm1
    # is updated; mm2 gets a new Add node, initializer and value info)
    set_constant(model, node, 1, np.ones_like(numpy_helper.to_array(
        next(t for t in model.graph.initializer if t.name == model.graph.node[[n.name for n in model.graph.node]
                                                                               .index(node)].input[1]))))
    add_bias(model, node, np.full(6 if node == "mm1" else 3, 0.5))
    assert model.SerializeToString() != before
    assert snap.restore() is model
    assert model.SerializeToString() == before
    np.testing.assert_array_equal(run(model, {"x": _x()})["y"], run(_mlp(), {"x": _x()})["y"])


def test_snapshot_covers_the_built_in_methods_only():
    assert all(touching(m) for m in ("bias", "lstsq", "scale", "bn"))
    assert not touching("some-plugin-method")


def test_session_with_outputs_leaves_the_model_as_it_was():
    model = _mlp()
    before = model.SerializeToString()
    names = ["h", "y"]
    sess = session_with_outputs(model, activations.exposed_outputs(model, names))
    assert model.SerializeToString() == before
    got = sess.run(names, {"x": _x()})
    want = session(expose(model, names)).run(names, {"x": _x()})
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


def test_stored_outputs_spill_to_disk_and_read_back_in_order():
    batches = [{"y": np.full((2, 3), k, np.float32), "h": np.arange(4.0) + k} for k in range(3)]
    kept = Stored(iter(batches), spill_bytes=1 << 20)
    assert not kept.spilled
    spilled = Stored(iter(batches), spill_bytes=40)
    assert spilled.spilled
    folder = os.path.dirname(spilled.files[0])
    for stored in (kept, spilled):
        again = list(stored)
        assert [list(b) for b in again] == [list(b) for b in batches]
        for got, want in zip(again, batches):
            for name in want:
                np.testing.assert_array_equal(got[name], want[name])
    assert list(spilled) and os.path.isdir(folder)  # read as often as asked
    del spilled, stored
    release()
    assert not os.path.exists(folder)  # the temporary folder goes with the object


def test_probe_mse_is_the_same_with_spilled_reference_outputs(monkeypatch):
    original, other = _mlp(0), _mlp(1)
    calib = CalibrationData({"x": _x(12)}, None)
    want = Probe(calib, batch_size=5).mse(original, other)
    monkeypatch.setattr(activations, "SPILL_BYTES", 0)
    monkeypatch.setattr(activations, "DIFF_BYTES", 8)  # one row at a time
    probe = Probe(calib, batch_size=5)
    got = probe.mse(original, other)
    assert probe._reference is not None and probe._reference[1].spilled
    assert got == pytest.approx(want, rel=1e-12)
    assert probe.mse(original, other) == got  # the stored reference is read again
    assert probe.mse(original, original)["total"] == 0.0


def test_a_large_model_reaches_onnxruntime_through_a_temporary_file(monkeypatch, tmp_path):
    import tempfile

    from onnxprune.runtime import session as sessions

    model = _mlp()
    want = session(model).run(None, {"x": _x()})[0]
    monkeypatch.setattr(sessions, "STREAM_BYTES", 0)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert sessions._streamed(model)
    np.testing.assert_array_equal(session(model).run(None, {"x": _x()})[0], want)
    assert not list(tmp_path.iterdir())  # the temporary file is gone once the session is made
