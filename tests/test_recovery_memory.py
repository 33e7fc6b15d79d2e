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


# -- streamed held-out outputs, recovery in place, sessions without the arena (issue 13) -------------

def _two_layer(tmp_path) -> tuple[onnx.ModelProto, object]:
    """x [N, 6] -> Gemm fc1 (8) -> Relu -> Gemm fc2 (5), loaded and analysed: fc1's 8 outputs
    are one prunable group read by fc2."""
    from onnxprune.analysis import analyze
    from onnxprune.api import load

    rng = np.random.default_rng(41)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 6)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b1"),
             numpy_helper.from_array(rng.standard_normal((5, 8)).astype(np.float32), "w2"),
             numpy_helper.from_array(rng.standard_normal(5).astype(np.float32), "b2")]
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1", transB=1),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], name="fc2", transB=1)]
    graph = helper.make_graph(nodes, "two", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])], inits)
    path = tmp_path / "two.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    model = load(path)
    return model, analyze(model)


def _pruned(model, analysis):  # noqa: ANN001, ANN202
    from onnxprune.api import apply_plan
    from onnxprune.plan import Plan

    group = next(g for g in analysis.groups if "fc1" in g.producers)
    plan = Plan(analysis.fingerprint, {group.id: (0, 2, 3, 5, 6)}, {group.id: group.size})
    return plan, apply_plan(model, analysis, plan).model


def _calib(n: int = 40) -> CalibrationData:
    return CalibrationData({"x": np.random.default_rng(42).standard_normal((n, 6)).astype(np.float32)})


def test_recovery_edits_pruned_in_place_and_puts_it_back(tmp_path, monkeypatch):
    """The built-in methods edit the caller's pruned model during the walk (no copy of every
    weight) and put it back byte for byte; the recovered model, its report and every decision
    are those of the walk on a copy (a method a snapshot does not cover)."""
    from onnxprune.recovery import pipeline, recover

    model, analysis = _two_layer(tmp_path)
    plan, pruned = _pruned(model, analysis)
    before = pruned.SerializeToString()
    recovered, report = recover(model, pruned, analysis, plan, _calib(), methods=("bias", "lstsq"), batch_size=7)
    assert pruned.SerializeToString() == before
    assert report["updated"]["lstsq"] == ["fc2"] and recovered.SerializeToString() != before
    monkeypatch.setattr(pipeline, "touching", lambda method: False)  # as for a plug-in method: work on a copy
    copied, copied_report = recover(model, pruned, analysis, plan, _calib(), methods=("bias", "lstsq"), batch_size=7)
    assert pruned.SerializeToString() == before
    assert copied.SerializeToString() == recovered.SerializeToString()
    assert copied_report == report


def test_recovery_puts_pruned_back_when_a_step_fails(tmp_path, monkeypatch):
    from onnxprune.recovery import pipeline, recover

    model, analysis = _two_layer(tmp_path)
    plan, pruned = _pruned(model, analysis)
    before = pruned.SerializeToString()
    apply_fit = pipeline._Recovery._apply_fit

    def failing(self, layer, fit):  # noqa: ANN001, ANN202
        apply_fit(self, layer, fit)  # the model is edited, then the step fails
        raise RuntimeError("boom")

    monkeypatch.setattr(pipeline._Recovery, "_apply_fit", failing)
    with pytest.raises(RuntimeError, match="boom"):
        recover(model, pruned, analysis, plan, _calib(), methods=("lstsq",))
    assert pruned.SerializeToString() == before


def test_recovery_reverted_in_place_returns_the_pruned_model(tmp_path, monkeypatch):
    """When recovery as a whole raised the held-out error, the pruned model comes back (a copy,
    byte for byte), and the caller's is as it was."""
    from onnxprune.recovery import holdout, recover

    model, analysis = _two_layer(tmp_path)
    plan, pruned = _pruned(model, analysis)
    before = pruned.SerializeToString()
    metrics = holdout.HeldOut.metrics
    calls = []

    def worse_at_the_end(self, m, outputs=None):  # noqa: ANN001, ANN202
        calls.append(1)
        out = metrics(self, m, outputs)
        worse = 1e9 if len(calls) > 1 else 0.0
        return {**out, "output_mse": out["output_mse"] + worse, "criterion": out["criterion"] + worse}

    monkeypatch.setattr(holdout.HeldOut, "metrics", worse_at_the_end)
    recovered, report = recover(model, pruned, analysis, plan, _calib(), methods=("bias", "lstsq"))
    assert report["reverted"] and report["updated"]["lstsq"] == ["fc2"]
    assert recovered is not pruned and recovered.SerializeToString() == before
    assert pruned.SerializeToString() == before


def test_edits_record_only_what_committed_steps_changed():
    from onnxprune.recovery.snapshot import Edits

    model = _mlp()
    before = model.SerializeToString()
    edits = Edits(model)
    for node in ("mm1", "mm2"):
        snap = Snapshot(model, node)
        weight = next(t for t in model.graph.initializer if t.name == ("w1" if node == "mm1" else "w2"))
        set_constant(model, node, 1, np.zeros_like(numpy_helper.to_array(weight)))
        add_bias(model, node, np.ones(6 if node == "mm1" else 3))
        assert edits.keep(snap)
    assert sorted(t.name for t in edits.originals.values()) == ["b1", "w1", "w2"]  # copies of the originals only
    assert model.SerializeToString() != before
    assert edits.restore() is model and model.SerializeToString() == before


def _two_outputs() -> onnx.ModelProto:
    model = _mlp()
    model.graph.output.append(helper.make_tensor_value_info("h", TensorProto.FLOAT, ["n", 6]))
    return model


def _old_error(reference: dict, outputs: dict) -> float:
    """``HeldOut.error`` as it was computed on whole arrays."""
    per = [activations.squared_error(outputs[n], reference[n]) / reference[n].size for n in ("y", "h")]
    return float(np.mean(per))


@pytest.mark.parametrize("diff_bytes", [8, 8 * 6 * 3, activations.DIFF_BYTES])
def test_held_out_error_of_batches_is_the_whole_arrays_error_to_the_bit(monkeypatch, diff_bytes):
    """The error of a stream of batches (chunks crossing the batches' edges) equals the one on
    whole arrays exactly: the same chunks, summed in the same order."""
    from onnxprune.recovery.holdout import HeldOut

    monkeypatch.setattr(activations, "DIFF_BYTES", diff_bytes)  # 1, 3 rows per chunk, or all
    original, other = _two_outputs(), _mlp(1)
    other.graph.output.append(helper.make_tensor_value_info("h", TensorProto.FLOAT, ["n", 6]))
    calib = CalibrationData({"x": _x(11)})
    held = HeldOut(original, calib, batch_size=4)
    whole_ref = {n: session(original).run([n], {"x": _x(11)})[0] for n in ("y", "h")}
    whole_out = {n: session(other).run([n], {"x": _x(11)})[0] for n in ("y", "h")}
    want = _old_error(whole_ref, whole_out)
    assert held.error(other) == want
    assert held.error(other, whole_out) == want
    batches = [{n: v[lo: lo + 4] for n, v in whole_out.items()} for lo in range(0, 11, 4)]
    assert held.error(other, iter(batches)) == want
    assert all(len(b["y"]) <= 4 for b in held._reference)  # the reference is kept as batches


def test_held_out_metrics_of_batches_are_the_whole_arrays_metrics(monkeypatch):
    from onnxprune.recovery import holdout
    from onnxprune.recovery.holdout import HeldOut

    monkeypatch.setattr(holdout, "CHUNK_ELEMENTS", 12)  # 2 samples of 'h', 4 of 'y' per chunk
    original, other = _two_outputs(), _mlp(1)
    other.graph.output.append(helper.make_tensor_value_info("h", TensorProto.FLOAT, ["n", 6]))
    x = _x(11)
    r = {n: session(original).run([n], {"x": x})[0] for n in ("y", "h")}
    o = {n: session(other).run([n], {"x": x})[0] for n in ("y", "h")}
    got = HeldOut(original, CalibrationData({"x": x}), batch_size=3).metrics(other)
    for n in ("y", "h"):  # the formulas on whole arrays, chunk by chunk as before
        step = max(1, 12 // r[n][:1].size)
        sq, agree, cos = 0.0, [], []
        for lo in range(0, 11, step):
            r64, o64 = r[n][lo: lo + step].astype(np.float64), o[n][lo: lo + step].astype(np.float64)
            sq += float(np.sum((o64 - r64) ** 2))
            agree.append(r64.argmax(1) == o64.argmax(1))
            den = np.linalg.norm(r64, axis=1) * np.linalg.norm(o64, axis=1)
            cos.append(np.where(den > 0, (r64 * o64).sum(1) / np.where(den > 0, den, 1), 1.0))
        assert got["per_output"][n] == sq / r[n].size
        assert got["top1_agreement"][n] == float(np.concatenate(agree).mean())
        assert got["cosine"][n] == float(np.concatenate(cos).mean())


def test_rechunk_cuts_batches_as_the_joined_array():
    from onnxprune.recovery.holdout import _rechunk

    parts = [np.arange(k, k + n) for k, n in ((0, 3), (3, 1), (4, 5))]
    joined = np.concatenate(parts)
    for rows in (1, 2, 4, 20):
        got = list(_rechunk(iter(parts), rows))
        want = [joined[lo: lo + rows] for lo in range(0, len(joined), rows)]
        assert [g.tolist() for g in got] == [w.tolist() for w in want]


def test_cursor_suffix_batches_are_the_suffix_batch_by_batch():
    from onnxprune.recovery.segments import Cursor

    model, calib = _two_outputs(), CalibrationData({"x": _x(10)})
    cursor = Cursor(calib, batch_size=4)
    assert cursor.tensors(model, "relu", []) is not None
    whole = cursor.suffix(model)
    batches = list(cursor.suffix_batches(model))
    assert [len(b["y"]) for b in batches] == [4, 4, 2]
    for name in ("y", "h"):  # 'h' is cached by the cursor, 'y' is run
        np.testing.assert_array_equal(np.concatenate([b[name] for b in batches]), whole[name])


def test_cursor_joins_a_stretch_without_a_list_of_batches():
    """A stretch's batch-major values are written into one array as the batches come, and equal
    a whole-model run's."""
    from onnxprune.recovery.segments import Cursor

    model, calib = _mlp(), CalibrationData({"x": _x(10)})
    cursor = Cursor(calib, batch_size=3)
    got = cursor.tensors(model, "mm2", ["h"])
    assert got["h"].shape == (10, 6) and got["h"].flags.c_contiguous
    want = run(expose(model, ["h"]), {"x": _x(10)})["h"]
    np.testing.assert_array_equal(got["h"], want)


def test_large_models_run_without_the_cpu_memory_arena(monkeypatch):
    from onnxprune.runtime import session as sessions

    model = _mlp()
    assert session(model).get_session_options().enable_cpu_mem_arena
    monkeypatch.setattr(sessions, "STREAM_BYTES", 0)
    assert not session(model).get_session_options().enable_cpu_mem_arena


def test_a_large_model_is_timed_from_a_temporary_file(monkeypatch, tmp_path):
    """A timing session of a large model is read from a file written one initializer at a time
    (no serialised copy of the weights in memory): the same outputs, nothing left behind."""
    import tempfile

    from onnxprune.runtime import session as sessions
    from onnxprune.runtime import timing

    model = _mlp()
    want = timing.timing_session(model).run(None, {"x": _x()})[0]
    monkeypatch.setattr(sessions, "STREAM_BYTES", 0)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    read = []
    monkeypatch.setattr(timing, "from_file", lambda *a, **k: read.append(1) or sessions.from_file(*a, **k))
    np.testing.assert_array_equal(timing.timing_session(model).run(None, {"x": _x()})[0], want)
    assert read and not list(tmp_path.iterdir())


def test_cursors_do_not_cache_what_weights_alone_make():
    """A tensor made from initializers alone (a tied embedding's Transpose, made first and read
    by the LM head last) is not cached by a cursor: the stretch that reads it makes it again,
    with the same values."""
    from onnxprune.recovery.segments import Cursor, _constants

    rng = np.random.default_rng(43)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 6)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal((3, 6)).astype(np.float32), "table")]
    nodes = [helper.make_node("Transpose", ["table"], ["head"], name="tr", perm=[1, 0]),
             helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "head"], ["y"], name="mm2")]
    graph = helper.make_graph(nodes, "tied", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert _constants(model) == {"head": 0}
    calib = CalibrationData({"x": _x(10)})
    want = run(model, {"x": _x(10)})["y"]
    cursor = Cursor(calib, batch_size=4)
    assert cursor.tensors(model, "relu", ["h"]) is not None
    assert "head" not in cursor.values and "h" in cursor.values
    np.testing.assert_array_equal(cursor.suffix(model)["y"], want)
    np.testing.assert_array_equal(np.concatenate([b["y"] for b in cursor.suffix_batches(model)]), want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sum_of_squares_is_the_float64_formula_to_the_bit(dtype):
    rng = np.random.default_rng(44)
    got, want = (rng.standard_normal((3, 5, 700)) * 30).astype(dtype), (rng.standard_normal((3, 5, 700)) * 30).astype(dtype)
    diff = np.asarray(got, np.float64) - np.asarray(want, np.float64)
    assert activations.sum_of_squares(got, want) == float(np.sum(diff * diff))
    assert got.dtype == dtype and np.isfinite(got).all()  # the inputs are left as they were


# -- spilled reference outputs read a few samples at a time; one float64 array per metrics chunk ------

def test_spilled_outputs_are_read_back_a_few_samples_at_a_time():
    from onnxprune.recovery.activations import OnDisk

    batches = [{"y": np.arange(k * 30, k * 30 + 30, dtype=np.float32).reshape(5, 2, 3), "s": np.float32(k)}
               for k in range(3)]
    spilled = Stored(iter(batches), spill_bytes=0)
    assert spilled.spilled and spilled.sizes == {"y": 90, "s": 3}
    assert spilled.first == {"y": ((5, 2, 3), np.dtype(np.float32)), "s": ((), np.dtype(np.float32))}
    lazy = list(spilled.lazy())
    assert all(isinstance(b["y"], OnDisk) for b in lazy)
    part = lazy[1]["y"][1:3]
    assert isinstance(part, np.ndarray) and part.shape == (2, 2, 3)
    np.testing.assert_array_equal(part, batches[1]["y"][1:3])
    np.testing.assert_array_equal(lazy[2]["y"][4:9], batches[2]["y"][4:])  # past the end: as numpy slices
    np.testing.assert_array_equal(np.asarray(lazy[0]["y"], np.float64), batches[0]["y"].astype(np.float64))
    chunks = list(spilled.rows("y", 2))
    assert [len(c) for c in chunks] == [2, 2, 1] * 3
    np.testing.assert_array_equal(np.concatenate(chunks), np.concatenate([b["y"] for b in batches]))
    assert [float(v) for v in spilled.rows("s", 2)] == [0.0, 1.0, 2.0]
    kept = Stored(iter(batches), spill_bytes=1 << 20)  # in memory: each batch's array itself
    assert [c is b["y"] for c, b in zip(kept.rows("y", 2), batches)] == [True] * 3


@pytest.mark.parametrize("diff_bytes", [8, 8 * 6 * 3])
def test_probe_mse_reads_a_spilled_reference_by_rows_with_the_same_value(monkeypatch, diff_bytes):
    """The fit-set MSE from a spilled reference read a chunk of rows at a time is the one from the
    reference in memory, to the bit (the same chunks, summed in the same order)."""
    original, other = _mlp(0), _mlp(1)
    calib = CalibrationData({"x": _x(13)}, None)
    monkeypatch.setattr(activations, "DIFF_BYTES", diff_bytes)
    want = Probe(calib, batch_size=5).mse(original, other)
    monkeypatch.setattr(activations, "SPILL_BYTES", 0)
    read = []
    getitem = activations.OnDisk.__getitem__
    monkeypatch.setattr(activations.OnDisk, "__getitem__", lambda self, key: read.append(key) or getitem(self, key))
    probe = Probe(calib, batch_size=5)
    assert probe.mse(original, other) == want
    assert probe._reference[1].spilled and read  # read back by slices of rows, not whole batches
    assert all((k.stop - k.start) <= max(1, diff_bytes // (8 * 3)) for k in read)


@pytest.mark.parametrize("diff_bytes", [8, 8 * 6 * 3])
def test_held_out_figures_from_a_spilled_reference_are_the_same_to_the_bit(monkeypatch, diff_bytes):
    """The held-out error and metrics with the original's outputs in a temporary folder (read a
    chunk of samples at a time) equal those with them in memory."""
    from onnxprune.recovery import holdout
    from onnxprune.recovery.holdout import HeldOut

    monkeypatch.setattr(activations, "DIFF_BYTES", diff_bytes)
    monkeypatch.setattr(holdout, "CHUNK_ELEMENTS", 12)
    original, other = _two_outputs(), _mlp(1)
    other.graph.output.append(helper.make_tensor_value_info("h", TensorProto.FLOAT, ["n", 6]))
    calib = CalibrationData({"x": _x(11)})
    kept = HeldOut(original, calib, batch_size=4)
    want_error, want_metrics = kept.error(other), kept.metrics(other)
    assert not kept._reference.spilled
    monkeypatch.setattr(activations, "SPILL_BYTES", 0)
    spilled = HeldOut(original, calib, batch_size=4)
    assert spilled.error(other) == want_error
    assert spilled._reference.spilled and not spilled._reference.memory
    assert spilled.metrics(other) == want_metrics
    folder = os.path.dirname(spilled._reference.files[0])
    spilled.drop_reference()
    release()
    assert not os.path.exists(folder)


def test_held_out_metrics_of_a_3d_output_are_the_float64_formulas_to_the_bit():
    """``metrics`` on a chunk of [samples, tokens, vocab] logits in one float64 array: the values of
    the float64 copies' norms, products and squared differences, exactly."""
    from onnxprune.recovery.holdout import _chunk_metrics

    rng = np.random.default_rng(45)
    for shape in [(1, 16, 4999), (3, 7, 5), (4, 9)]:
        r = (rng.standard_normal(shape) * 5).astype(np.float32)
        o = (r + rng.standard_normal(shape).astype(np.float32)).astype(np.float32)
        r64, o64 = r.astype(np.float64), o.astype(np.float64)
        a, b = r64.reshape(len(r64), -1), o64.reshape(len(o64), -1)
        den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
        cos = np.where(den > 0, (a * b).sum(1) / np.where(den > 0, den, 1), 1.0)
        sq, agree, got_cos = _chunk_metrics(o, r)
        assert sq == float(np.sum((o64 - r64) ** 2))
        assert np.array_equal(got_cos, cos)
        if len(shape) == 2:
            assert np.array_equal(agree, r64.argmax(1) == o64.argmax(1))
        else:
            assert agree is None
