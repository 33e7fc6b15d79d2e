"""Mapped loading (``load(..., mapped=True)``): weights stay in the memory-mapped model
file, the pipeline reads and writes them from there, and the result is byte for byte the
model the in-memory pipeline writes. Saving streams weights and round-trips exactly."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxprune
from onnxprune.analysis import analyze
from onnxprune.errors import ModelLoadError
from onnxprune.io.external import embedded_file, is_external, read_tensor
from onnxprune.io.modelio import load_model, materialize, save_model
from tests.graphs import pass_fixture


def _write(model: onnx.ModelProto, path) -> str:  # noqa: ANN001
    onnx.save_model(model, str(path))
    return str(path)


def _big_model(shared: bool = False) -> onnx.ModelProto:
    """Conv -> BN -> Relu -> Conv -> Gemm with weights over the mapping threshold; the
    odd-sized bias makes later weights start at unaligned offsets in the file."""
    rng = np.random.default_rng(0)
    w = lambda name, *s: numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), name)  # noqa: E731
    inits = [
        w("c1.w", 32, 3, 3, 3), numpy_helper.from_array(rng.standard_normal(33).astype(np.float32)[:32], "c1.b"),
        numpy_helper.from_array(rng.integers(0, 5, 3).astype(np.int8), "odd"),
        w("bn.s", 32), w("bn.b", 32), w("bn.m", 32), numpy_helper.from_array(
            rng.random(32).astype(np.float32) + 0.5, "bn.v"),
        w("c2.w", 64, 32, 3, 3), w("c2.b", 64), w("fc.w", 10, 64 * 8 * 8), w("fc.b", 10),
        numpy_helper.from_array(np.array([1, -1], dtype=np.int64), "shape"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "c1.w", "c1.b"], ["a"], name="c1", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["a", "bn.s", "bn.b", "bn.m", "bn.v"], ["b"], name="bn"),
        helper.make_node("Relu", ["b"], ["c"], name="relu"),
        helper.make_node("Conv", ["c", "c2.w", "c2.b"], ["d"], name="c2", pads=[1, 1, 1, 1]),
        helper.make_node("Reshape", ["d", "shape"], ["e"], name="flat"),
        helper.make_node("Gemm", ["e", "fc.w", "fc.b"], ["y"], name="fc", transB=1),
    ]
    if shared:  # a second reader of c2.w's input channels keeps c1's group whole; still valid
        nodes[4].input[0] = "d3"
        nodes[4:4] = [helper.make_node("Conv", ["c", "c2.w"], ["d2"], name="c2b", pads=[1, 1, 1, 1]),
                      helper.make_node("Add", ["d", "d2"], ["d3"], name="add")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    model.metadata_props.add(key="author", value="test")
    return model


def test_mapped_load_reads_the_same_values(tmp_path):
    src = _write(_big_model(), tmp_path / "m.onnx")
    model = load_model(src, mapped=True)
    ref = onnx.load(src)
    assert embedded_file(model) == "m.onnx"
    mapped = [t.name for t in model.graph.initializer if is_external(t)]
    assert "c2.w" in mapped and "fc.w" in mapped and "shape" not in mapped
    for t, r in zip(model.graph.initializer, ref.graph.initializer):
        value = read_tensor(t, model)
        assert value.flags.aligned and not value.flags.writeable
        np.testing.assert_array_equal(value, numpy_helper.to_array(r))
    assert materialize(model) == ref  # in memory again, private metadata gone


@pytest.mark.parametrize("mapped", [False, True])
def test_save_round_trips_byte_for_byte(tmp_path, mapped):
    src = _write(_big_model(), tmp_path / "m.onnx")
    out = save_model(load_model(src, mapped=mapped), tmp_path / "copy.onnx")
    assert out.read_bytes() == (tmp_path / "m.onnx").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.onnx", "m.onnx"]  # no temporary left


@pytest.mark.parametrize("shared", [False, True])
def test_mapped_pipeline_writes_the_same_model(tmp_path, shared):
    src = _write(_big_model(shared), tmp_path / "m.onnx")
    outs = []
    for mapped in (False, True):
        model = onnxprune.load(src, mapped=mapped)
        analysis = analyze(model)
        plan = onnxprune.plan_by_ratio(model, analysis, ratio=0.5, criterion="l2")
        assert plan.keep
        result = onnxprune.apply_plan(model, analysis, plan, inplace=True)
        outs.append(save_model(result.model, tmp_path / f"out{int(mapped)}.onnx").read_bytes())
    assert outs[0] == outs[1]
    onnx.checker.check_model(str(tmp_path / "out1.onnx"), full_check=True)
    pruned = onnx.load(str(tmp_path / "out1.onnx"))
    assert not pruned.metadata_props or all(not e.key.startswith("onnxprune.") for e in pruned.metadata_props)


def test_mapped_pipeline_leaves_the_input_alone(tmp_path):
    src = _write(_big_model(), tmp_path / "m.onnx")
    before = (tmp_path / "m.onnx").read_bytes()
    model = onnxprune.load(src, mapped=True)
    analysis = analyze(model)
    plan = onnxprune.plan_by_ratio(model, analysis, ratio=0.5, criterion="l1")
    result = onnxprune.apply_plan(model, analysis, plan)  # on a copy
    save_model(result.model, tmp_path / "out.onnx")
    assert (tmp_path / "m.onnx").read_bytes() == before
    # the mapped model itself still reads the original weights
    ref = onnx.load(src)
    for t, r in zip(model.graph.initializer, ref.graph.initializer):
        np.testing.assert_array_equal(read_tensor(t, model), numpy_helper.to_array(r))


def test_small_model_mapped_matches(tmp_path):
    src = _write(pass_fixture(), tmp_path / "small.onnx")
    a, b = onnxprune.load(src), onnxprune.load(src, mapped=True)
    assert analyze(a).to_dict() == analyze(b).to_dict()
    assert materialize(b) == a


def test_mapped_load_refuses_garbage(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x3a\xff\xff\xff\xff\x0fnot a model")
    with pytest.raises(ModelLoadError):
        load_model(bad, mapped=True)


def test_inconsistent_weight_is_reported_by_the_checker(tmp_path):
    model = _big_model()
    t = next(t for t in model.graph.initializer if t.name == "c2.w")
    t.raw_data = t.raw_data[:-4]
    src = _write(model, tmp_path / "m.onnx")
    for mapped in (False, True):
        with pytest.raises(ModelLoadError, match="raw_data size"):
            onnxprune.load(src, mapped=mapped)


# -- running mapped models (issue 13: the plain command with --calib keeps the original mapped) --

def _x(n: int = 3) -> np.ndarray:
    return np.random.default_rng(5).standard_normal((n, 3, 8, 8)).astype(np.float32)


def _batched(model: onnx.ModelProto) -> onnx.ModelProto:
    """``_big_model`` with a dynamic batch (the Reshape keeps it: [-1, ...] -> [n, -1] is kept)."""
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "n"
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_param = "n"
    shape = next(t for t in model.graph.initializer if t.name == "shape")
    shape.CopyFrom(numpy_helper.from_array(np.array([0, -1], dtype=np.int64), "shape"))
    return model


def test_a_session_of_a_mapped_model_reads_its_weights_from_the_file(tmp_path, monkeypatch):
    """A session of a mapped model copies its weights from the mapping into the session's data
    file (never a whole copy in memory): the outputs of the in-memory model, bit for bit; a
    sub-model sharing the source (``share_source``) reads the parent's mapped weights too."""
    pytest.importorskip("onnxruntime")
    from onnxprune.io import external
    from onnxprune.io.external import share_source
    from onnxprune.runtime import session as sessions

    src = _write(_batched(_big_model()), tmp_path / "m.onnx")
    mapped, plain = load_model(src, mapped=True), load_model(src)
    assert sessions._streamed(mapped) and not sessions._streamed(plain)
    copied = []
    monkeypatch.setattr(external, "read_tensor", lambda t, *a, f=external.read_tensor, **k: copied.append(t.name)
                        or f(t, *a, **k))
    want = sessions.session(plain).run(None, {"x": _x()})[0]
    got = sessions.session(mapped).run(None, {"x": _x()})[0]
    np.testing.assert_array_equal(got, want)
    assert {"c2.w", "fc.w"} <= set(copied)
    # a sub-model holding none of the weights, given the parent's mapped tensors
    sub = onnx.ModelProto()
    sub.CopyFrom(mapped)
    weights = list(sub.graph.initializer)
    del sub.graph.initializer[:]
    del sub.metadata_props[:]
    share_source(mapped, sub)
    np.testing.assert_array_equal(sessions.session(sub, initializers=weights).run(None, {"x": _x()})[0], want)
    assert materialize(load_model(src, mapped=True)) == plain


def test_a_torch_module_of_a_mapped_model_holds_the_same_weights(tmp_path):
    torch = pytest.importorskip("torch")
    from onnxprune.torchexec import OnnxModule

    src = _write(_batched(_big_model()), tmp_path / "m.onnx")
    a, b = OnnxModule(load_model(src)), OnnxModule(load_model(src, mapped=True))
    for (name, x), (name2, y) in zip(a.named_initializers(), b.named_initializers()):
        assert name == name2 and torch.equal(x, y), name
    x = torch.from_numpy(_x())
    assert torch.equal(a(x), b(x))


def test_pruning_with_calibration_and_recovery_on_a_mapped_model_writes_the_same_model(tmp_path):
    """Scores from a torch pass, recovery's sessions and refits, the speed check: run on the
    mapped original, they write the bytes the in-memory pipeline writes, and the input file is
    left alone."""
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    from onnxprune.compress import compress
    from onnxprune.io.calib_data import CalibrationData
    from onnxprune.recipe import Recipe

    src = _write(_batched(_big_model()), tmp_path / "m.onnx")
    before = (tmp_path / "m.onnx").read_bytes()
    calib = CalibrationData({"x": np.random.default_rng(3).standard_normal((24, 3, 8, 8)).astype(np.float32)})
    outs, lines = [], []
    for mapped in (False, True):
        model = onnxprune.load(src, mapped=mapped)
        result = compress(model, Recipe(target_params=0.6, criterion="taylor-fo", recover=("lstsq", "bias")),
                          calib=calib)
        assert result.recovery is not None and result.plan.keep
        outs.append(result.save(tmp_path / f"out{int(mapped)}.onnx").read_bytes())
        lines.append(result.notes)
    assert outs[0] == outs[1]
    assert [n for n in lines[0] if not n.startswith("speed")] == [n for n in lines[1] if not n.startswith("speed")]
    assert (tmp_path / "m.onnx").read_bytes() == before


def test_the_decoder_recipe_on_a_mapped_model_writes_the_same_model(tiny_lm, tmp_path):
    """The plain command on a decoder LM (next-token Taylor scores, residual blocks, stretches of
    recovery with sub-model sessions, the temperature) keeps the original mapped: the same
    bytes as in memory."""
    from models.llm import TINY_VOCAB
    from onnxprune.analysis.flops import model_cost
    from onnxprune.compress import compress
    from onnxprune.io.calib_data import CalibrationData
    from onnxprune.recipe import Recipe

    src = _write(tiny_lm[0], tmp_path / "lm.onnx")
    windows = np.random.default_rng(2).integers(0, TINY_VOCAB, (8, 16)).astype(np.int64)
    calib = CalibrationData({"input_ids": windows})
    outs = []
    for mapped in (False, True):
        model = onnxprune.load(src, mapped=mapped)
        target = int(model_cost(model).params * 0.85)
        result = compress(model, Recipe(target_params=target, measure=False), calib=calib)
        assert result.recovery is not None and (result.plan.keep or result.plan.removed_blocks)
        outs.append(result.save(tmp_path / f"out{int(mapped)}.onnx").read_bytes())
    assert outs[0] == outs[1]


def test_a_parked_mapped_model_keeps_its_mapped_weights(tmp_path):
    """``io.compact.Parked`` of a pruned copy of a mapped model: in-memory weights move into a
    fresh message, mapped ones stay references into the source file, still readable."""
    from onnxprune.io.compact import Parked, worth_compacting
    from onnxprune.io.modelio import has_file_weights

    src = _write(_big_model(), tmp_path / "m.onnx")
    model = onnxprune.load(src, mapped=True)
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.ones((32, 3, 3, 3), np.float32), "c1.w"))
    want = [read_tensor(t, model).copy() for t in model.graph.initializer]
    back = Parked(model).take()
    assert has_file_weights(back) and embedded_file(back) == "m.onnx"
    assert [t.name for t in back.graph.initializer if is_external(t)] == [
        t.name for t in model.graph.initializer if is_external(t)]
    for t, w in zip(back.graph.initializer, want):
        np.testing.assert_array_equal(read_tensor(t, back), w)
    assert not worth_compacting(model)  # 4 KB in memory
