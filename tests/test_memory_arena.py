"""Memory of large models' protobuf messages and sessions (issue 13, seventh round): a model
moved into a fresh message (``io.compact``: upb keeps every replaced weight in the message's
arena), sessions whose weights onnxruntime maps from a data file (``io.external.write_split``).
Behaviour: the same messages, bytes and outputs as before; the memory itself where it is
measurable without flakiness (Linux, tens of megabytes)."""

from __future__ import annotations

import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.io import compact
from onnxprune.io.compact import Parked, compacted, worth_compacting
from onnxprune.io.external import SPLIT_ALIGN, write_split


def _mlp(width: int = 6, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.standard_normal((4, width)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal(width).astype(np.float32), "b1"),
             numpy_helper.from_array(rng.standard_normal((width, 3)).astype(np.float32), "w2"),
             numpy_helper.from_array(np.array([0], dtype=np.int64), "axes")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h0"], name="mm1"),
             helper.make_node("Add", ["h0", "b1"], ["h1"], name="add1"),
             helper.make_node("Relu", ["h1"], ["h"], name="relu"),
             helper.make_node("MatMul", ["h", "w2"], ["y0"], name="mm2"),
             helper.make_node("ReduceMean", ["y0", "axes"], ["y"], name="mean", keepdims=1)]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _x(n: int = 10) -> np.ndarray:
    return np.random.default_rng(7).standard_normal((n, 4)).astype(np.float32)


# -- io.compact ---------------------------------------------------------------------------------

def test_a_parked_model_reads_back_as_the_same_message(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    model = _mlp()
    model.graph.initializer[0].raw_data = np.ones((4, 6), np.float32).tobytes()  # an edited weight
    model.graph.initializer[1].data_location = TensorProto.DEFAULT  # set explicitly: kept so
    model.graph.initializer.append(helper.make_tensor("listed", TensorProto.FLOAT, [3], [1.0, 2.0, 3.0]))
    assert not model.graph.initializer[-1].HasField("raw_data")
    parked = Parked(model)
    assert parked.path.exists()
    back = parked.take()
    assert back is not model and back.SerializeToString() == model.SerializeToString()
    assert not list(tmp_path.iterdir())  # the file is gone once read back


def test_compacted_copies_large_in_memory_models_only(monkeypatch):
    model = _mlp()
    assert not worth_compacting(model) and compacted(model) is model  # small: not worth the round trip
    monkeypatch.setattr(compact, "COMPACT_BYTES", 0)
    copy = compacted(model)
    assert copy is not model and copy.SerializeToString() == model.SerializeToString()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="resident memory from /proc")
def test_a_compacted_copy_does_not_keep_replaced_weights(monkeypatch):
    """upb keeps every bytes value a message held until the message goes: a weight of 32 MB
    replaced four times holds 160 MB; its compacted copy holds 32 MB."""
    from onnxprune.runtime.memory import release

    def rss() -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))

    monkeypatch.setattr(compact, "COMPACT_BYTES", 0)
    model = _mlp()
    weight = model.graph.initializer[0]
    size = 32 << 20
    for k in range(5):
        weight.raw_data = np.full(size // 4, k, np.float32).tobytes()
    release()
    before = rss()
    parked = Parked(model)
    del model, weight
    release()
    fresh = parked.take()
    release()
    assert before - rss() > 3 * size  # at least three of the four replaced copies went
    assert np.frombuffer(fresh.graph.initializer[0].raw_data, np.float32)[0] == 4


def test_compress_gives_the_same_model_with_and_without_compaction(monkeypatch, tiny_lm):
    """The pruned model moved into a fresh message before recovery: the same bytes out."""
    from onnxprune.compress import compress
    from onnxprune.io.calib_data import CalibrationData
    from onnxprune.recipe import Recipe

    windows = np.random.default_rng(0).integers(0, 256, (8, 16)).astype(np.int64)
    calib = CalibrationData({"input_ids": windows})
    recipe = Recipe(target_params=0.85, criterion="l2", recover=("bias", "lstsq"), measure=False)
    model = tiny_lm[0]
    before = model.SerializeToString()
    plain = compress(model, recipe, calib=calib)
    parked = []
    monkeypatch.setattr(compact, "COMPACT_BYTES", 0)
    monkeypatch.setattr(Parked, "take", lambda self, take=Parked.take: parked.append(1) or take(self))
    again = compress(model, recipe, calib=calib)
    assert parked  # it went through the file
    assert again.model.SerializeToString() == plain.model.SerializeToString()
    assert model.SerializeToString() == before  # the caller's model untouched


# -- sessions from a mapped data file -----------------------------------------------------------

def test_write_split_puts_large_weights_in_an_aligned_data_file(tmp_path):
    model = _mlp(width=4096)  # w1, w2: 64 KB and 48 KB; b1 16 KB
    path = write_split(model, tmp_path, min_bytes=32 << 10)
    shell = onnx.load_model(str(path), load_external_data=False)
    external = {t.name: {e.key: e.value for e in t.external_data} for t in shell.graph.initializer
                if t.data_location == TensorProto.EXTERNAL}
    assert set(external) == {"w1", "w2"}  # b1 and the axes stay in the model file
    assert all(int(info["offset"]) % SPLIT_ALIGN == 0 and info["location"] == "weights.bin"
               for info in external.values())
    loaded = onnx.load_model(str(path))
    for want, got in zip(model.graph.initializer, loaded.graph.initializer):
        np.testing.assert_array_equal(numpy_helper.to_array(got), numpy_helper.to_array(want))


@pytest.mark.parametrize("optimize", [False, True])
def test_a_session_from_a_split_file_gives_the_same_outputs(monkeypatch, tmp_path, optimize):
    """Large models reach onnxruntime as a model file and a data file it maps: the same outputs,
    bit for bit, as a session of the serialised model (other initializers too); nothing left."""
    import tempfile

    pytest.importorskip("onnxruntime")
    from onnxprune.io import external
    from onnxprune.runtime import session as sessions
    from onnxprune.runtime import timing

    model = _mlp(width=64)
    shell = onnx.ModelProto()
    shell.CopyFrom(model)
    kept = shell.graph.initializer.pop(2)  # w2 read from elsewhere (a stretch of a larger model)
    want = sessions.session(model, optimize=optimize).run(None, {"x": _x()})[0]
    timed = timing.timing_session(model).run(None, {"x": _x()})[0]
    monkeypatch.setattr(sessions, "STREAM_BYTES", 0)
    monkeypatch.setattr(external, "SPLIT_MIN_BYTES", 64)  # every weight but the axes in the data file
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    split = []
    monkeypatch.setattr(external, "write_split",
                        lambda *a, f=external.write_split, **k: split.append(1) or f(*a, **k))
    got = sessions.session(shell, optimize=optimize, initializers=[kept]).run(None, {"x": _x()})[0]
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(timing.timing_session(model).run(None, {"x": _x()})[0], timed)
    assert len(split) == 2 and not list(tmp_path.iterdir())


# -- the Taylor pass ----------------------------------------------------------------------------

def test_the_taylor_pass_drops_the_logits_before_its_backward_pass(tiny_lm, monkeypatch):
    """The backward pass reads the loss's saved values, not the logits: they are freed before it
    (0.1 GB at its peak on SmolLM2), the scores unchanged."""
    import weakref

    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from models.llm import TINY_VOCAB
    from onnxprune.torchexec import OnnxModule
    from onnxprune.verify import lm_eval

    model, analysis = tiny_lm
    windows = np.random.default_rng(1).integers(0, TINY_VOCAB, (4, 16)).astype(np.int64)
    want = lm_eval.next_token_taylor_scores(model, analysis, windows, batch_size=2)
    made, alive = [], []
    call = OnnxModule.__call__

    def recorded(self, *args, **kwargs):  # noqa: ANN001, ANN202
        out = call(self, *args, **kwargs)
        made.append(weakref.ref(out[0] if isinstance(out, tuple) else out))
        return out

    grad = torch.autograd.grad
    monkeypatch.setattr(OnnxModule, "__call__", recorded)
    monkeypatch.setattr(torch.autograd, "grad", lambda *a, **k: alive.append(made[-1]() is not None) or grad(*a, **k))
    got = lm_eval.next_token_taylor_scores(model, analysis, windows, batch_size=2)
    assert len(alive) == 2 and not any(alive)
    for gid in want:
        assert np.array_equal(got[gid], want[gid]), gid
