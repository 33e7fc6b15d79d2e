"""Bad inputs a new user meets (issue 16, items 5, 12-17 and 20): each is refused up front
with one line naming the file, node or option at fault, exit 1, nothing written, the input
unchanged."""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.api import load
from onnxprune.errors import ModelLoadError, OutputPathError, SelectionError, ShapeInferenceError
from onnxprune.io.fileutil import write_text_atomic
from onnxprune.io.modelio import check_runtime, load_model, save_model
from onnxprune.prepare.normalize import parse_input_shapes
from tests.graphs import pass_fixture
from tests.test_cli import cli as run_cli

DIGITS = Path(__file__).parent.parent / "onnxprune" / "data" / "digits_cnn.onnx"


def cli(monkeypatch, capsys, *args: object) -> tuple[int, str, str]:
    return run_cli(monkeypatch, capsys, *args, columns=1000)


def refused(monkeypatch, capsys, *args: object) -> str:
    """Run the CLI, expect a clean refusal; returns the one error line."""
    code, _, err = cli(monkeypatch, capsys, *args)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1, err
    assert lines[0].startswith("error: ") and "unexpected" not in lines[0], err
    return lines[0]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def conv_model(*, weight_shape=(8, 4, 3, 3), x_shape=(1, 4, 6, 6), elem=TensorProto.FLOAT, dtype=np.float32,
               opset: int = 17) -> onnx.ModelProto:
    """x -> Conv(w) -> Relu -> Conv(w2, 1x1) -> y: one prunable group of 8 channels."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal(weight_shape).astype(dtype), "w")
    w2 = numpy_helper.from_array(rng.standard_normal((4, 8, 1, 1)).astype(dtype), "w2")
    nodes = [helper.make_node("Conv", ["x", "w"], ["a"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w2"], ["y"], name="conv2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", elem, list(x_shape))],
                              [helper.make_tensor_value_info("y", elem, [x_shape[0], 4, *x_shape[2:]])], [w, w2])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


@pytest.fixture()
def model_path(tmp_path):
    path = tmp_path / "model.onnx"
    onnx.save(pass_fixture(), path)
    return path


# -- 5: --input-shape ---------------------------------------------------------------------------
def test_input_shape_parsing_accepts_brackets_and_refuses_what_is_not_a_dimension():
    assert parse_input_shapes(["x=[1,3,224,224]"]) == {"x": [1, 3, 224, 224]}
    assert parse_input_shapes([" x = N, 3 ,h,w"]) == {"x": ["N", 3, "h", "w"]}
    for bad in ("x=[1,3,8", "x=1,3]", "x=1,,3", "x=1,0,8,8", "x=1,-1,8,8", "x=1.5,3", "x=", "=1,3", "x",
                "x=1 3 8 8"):
        with pytest.raises(SelectionError, match="--input-shape"):
            parse_input_shapes([bad])
    with pytest.raises(SelectionError, match="twice"):
        parse_input_shapes(["x=1,3", "x=1,4"])


def test_input_shape_is_validated_against_the_model(monkeypatch, capsys, model_path, tmp_path):
    out = tmp_path / "out.onnx"
    line = refused(monkeypatch, capsys, "prune", model_path, "-o", out, "--ratio", "0.3", "--input-shape", "x=1,4,6")
    assert "'x'" in line and "rank 3" in line and "rank 4" in line
    line = refused(monkeypatch, capsys, "prune", model_path, "-o", out, "--ratio", "0.3",
                   "--input-shape", "image=1,4,6,6")
    assert "'image'" in line and "not a model input" in line
    line = refused(monkeypatch, capsys, "analyze", model_path, "--input-shape", "x=[1,4,6,6")
    assert "'[1'" in line
    assert not out.exists()
    # brackets are accepted and mean the same shape
    code, plain, _ = cli(monkeypatch, capsys, "analyze", model_path, "--json", "--input-shape", "x=1,4,6,6")
    code2, bracketed, _ = cli(monkeypatch, capsys, "analyze", model_path, "--json", "--input-shape", "x=[1,4,6,6]")
    assert code == code2 == 0 and plain == bracketed
    with pytest.raises(ShapeInferenceError, match="rank 2"):
        load(model_path, input_shapes={"x": [1, 4]})


# -- 12: models onnxruntime cannot load -----------------------------------------------------------
def _custom_op() -> onnx.ModelProto:
    m = conv_model()
    m.graph.node[1].op_type, m.graph.node[1].domain = "MyRelu", "my.domain"
    m.opset_import.append(helper.make_opsetid("my.domain", 1))
    return m


def _no_outputs() -> onnx.ModelProto:
    m = conv_model()
    del m.graph.output[:]
    return m


def _opset(version: int) -> onnx.ModelProto:
    m = conv_model()
    m.opset_import[0].version = version
    return m


def _kernel_mismatch() -> onnx.ModelProto:
    m = conv_model()
    m.graph.node[0].attribute.append(helper.make_attribute("kernel_shape", [5, 5]))  # the weight is 3x3
    return m


UNRUNNABLE = {
    "kernel_shape_mismatch": (_kernel_mismatch, "onnxruntime cannot run the model: .*conv1.*kernel_shape"),
    "opset99": (lambda: _opset(99), "onnxruntime cannot load the model: .*[Oo]pset 99"),
    "conv_weight_rank3": (lambda: conv_model(weight_shape=(8, 4, 3)), "node 'conv1' \\(Conv\\).*rank 3"),
    "input_dim0": (lambda: conv_model(x_shape=(1, 0, 6, 6), weight_shape=(8, 0, 3, 3)),
                   "input 'x' has a dimension of size 0"),
    "no_outputs": (_no_outputs, "no outputs"),
    "custom_op": (_custom_op, "onnxruntime cannot load the model: .*MyRelu"),
    "float64_conv": (lambda: conv_model(elem=TensorProto.DOUBLE, dtype=np.float64),
                     "onnxruntime cannot load the model: .*Conv"),
}


@pytest.mark.parametrize("case", sorted(UNRUNNABLE))
def test_models_onnxruntime_cannot_load_are_refused_with_its_reason(monkeypatch, capsys, tmp_path, case):
    build, reason = UNRUNNABLE[case]
    path, out = tmp_path / f"{case}.onnx", tmp_path / "out.onnx"
    onnx.save(build(), path)
    before = _digest(path)
    line = refused(monkeypatch, capsys, "prune", path, "-o", out, "--ratio", "0.3")
    assert str(path) in line
    with pytest.raises(ModelLoadError, match=reason):
        load(path)
    assert not out.exists() and _digest(path) == before


def test_runtime_check_can_be_skipped_and_is_skipped_without_onnxruntime(monkeypatch, tmp_path):
    path = tmp_path / "custom.onnx"
    onnx.save(_custom_op(), path)
    with pytest.raises(ModelLoadError, match="MyRelu"):
        load(path)
    from onnxprune.analysis import analyze

    analysis = analyze(load(path, runtime_check=False))  # the unknown op blocks its group, as before
    assert analysis.to_dict()["summary"]["prunable_groups"] == 0
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # "not installed": import fails
    check_runtime(load_model(path), path)


def test_the_run_check_runs_only_what_random_inputs_can_run_conclusively():
    from onnxprune.io.modelio import _run_check_feeds

    feeds = _run_check_feeds(conv_model(x_shape=("N", 4, 6, 6)))  # a symbolic batch runs as 1
    assert feeds is not None and feeds["x"].shape == (1, 4, 6, 6)
    assert _run_check_feeds(conv_model(x_shape=(1, 4, "h", "w"))) is None  # sizes unknown
    int_input = conv_model()
    int_input.graph.input[0].type.tensor_type.elem_type = TensorProto.INT64  # may be indices
    assert _run_check_feeds(int_input) is None


def test_runtime_check_of_a_large_model_uses_its_light_copy(monkeypatch, tmp_path):
    """Weights that stay in files are not read to check loading (only a small model is run)."""
    from onnxprune.io import modelio

    monkeypatch.setattr(modelio, "RUN_CHECK_BYTES", 0)  # as for a model too large to run
    path = tmp_path / "ext.onnx"
    onnx.save(conv_model(), path, save_as_external_data=True, location="ext.onnx.data", size_threshold=0)
    model = load_model(path)  # lazy: weights stay in ext.onnx.data
    (tmp_path / "ext.onnx.data").unlink()
    check_runtime(model, path)  # nothing read
    bad = tmp_path / "bad.onnx"
    onnx.save(_custom_op(), bad, save_as_external_data=True, location="bad.onnx.data", size_threshold=0)
    with pytest.raises(ModelLoadError, match="MyRelu"):
        check_runtime(load_model(bad), bad, bad)


# -- 13, 14: external data ----------------------------------------------------------------------
def _external(tmp_path: Path, name: str = "m") -> Path:
    folder = tmp_path / name
    folder.mkdir()
    path = folder / "m.onnx"
    onnx.save(onnx.load(DIGITS), path, save_as_external_data=True, all_tensors_to_one_file=True,
              location="m.onnx.data", size_threshold=0)
    return path


def _relocate(path: Path, location: str) -> None:
    m = onnx.load(path, load_external_data=False)
    for t in m.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = location
    onnx.save(m, path)


@pytest.mark.parametrize("fault", ["missing", "renamed", "truncated", "emptied", "directory"])
def test_external_data_faults_are_clean_refusals(monkeypatch, capsys, tmp_path, fault):
    path = _external(tmp_path)
    data = path.parent / "m.onnx.data"
    if fault == "missing":
        data.unlink()
    elif fault == "renamed":
        data.rename(path.parent / "weights.bin")
    elif fault == "truncated":
        data.write_bytes(data.read_bytes()[:-100])
    elif fault == "emptied":
        data.write_bytes(b"")
    else:
        data.unlink()
        data.mkdir()
    out = tmp_path / "out.onnx"
    line = refused(monkeypatch, capsys, "prune", path, "-o", out, "--ratio", "0.3")
    assert str(path) in line and "m.onnx.data" in line
    line = refused(monkeypatch, capsys, "verify", path, path, "--runs", "1")
    assert "m.onnx.data" in line
    assert not out.exists()


@pytest.mark.parametrize("where", ["dotdot", "absolute", "symlink"])
def test_external_data_outside_the_model_folder_is_never_read(monkeypatch, capsys, tmp_path, where):
    path = _external(tmp_path)
    outside = tmp_path / "outside.data"  # valid weights, so following the reference would succeed
    shutil.move(path.parent / "m.onnx.data", outside)
    if where == "dotdot":
        _relocate(path, "../outside.data")
    elif where == "absolute":
        _relocate(path, str(outside))
    else:
        os.symlink(outside, path.parent / "m.onnx.data")
    line = refused(monkeypatch, capsys, "prune", path, "-o", tmp_path / "out.onnx", "--ratio", "0.3")
    assert "outside the model's folder" in line or "link out of the model's folder" in line
    for lazy in (True, False):
        with pytest.raises(ModelLoadError, match="refusing to read it"):
            load_model(path, lazy=lazy)


def test_a_symlink_inside_the_model_folder_is_followed(tmp_path):
    path = _external(tmp_path)
    (path.parent / "m.onnx.data").rename(path.parent / "real.data")
    os.symlink("real.data", path.parent / "m.onnx.data")
    for lazy in (True, False):
        load_model(path, lazy=lazy)


def test_private_metadata_in_a_file_cannot_redirect_weights(tmp_path):
    """onnxprune's own (never saved) metadata entries, planted in a file, are ignored."""
    path = _external(tmp_path)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.move(path.parent / "m.onnx.data", outside / "m.onnx.data")
    m = onnx.load(path, load_external_data=False)
    helper.set_model_props(m, {"onnxprune.external_base": str(outside)})
    onnx.save(m, path)
    with pytest.raises(ModelLoadError, match="missing beside the model"):
        load_model(path)


# -- 15: Conv weight of the wrong rank ----------------------------------------------------------
def test_conv_weight_of_wrong_rank_is_refused_naming_the_node(monkeypatch, capsys, tmp_path):
    m = onnx.load(DIGITS)
    for i, t in enumerate(m.graph.initializer):
        if t.name == "3.weight":  # [32, 16, 3, 3] -> [32, 144]
            m.graph.initializer[i].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).reshape(32, 144), t.name))
    path = tmp_path / "rank2.onnx"
    onnx.save(m, path)
    for args in (("prune", path, "-o", tmp_path / "o.onnx", "--ratio", "0.3"), ("analyze", path)):
        line = refused(monkeypatch, capsys, *args)
        assert "node '/3/Conv' (Conv)" in line and "'3.weight' of rank 2 [32, 144]" in line


def _edit_digits(edit) -> onnx.ModelProto:  # noqa: ANN001
    m = onnx.load(DIGITS)
    edit(m)
    return m


def _reshape_init(name: str, shape: tuple[int, ...]):  # noqa: ANN202
    def edit(m: onnx.ModelProto) -> None:
        for t in m.graph.initializer:
            if t.name == name:
                t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).reshape(shape), name))
    return edit


def _set_strides(m: onnx.ModelProto) -> None:
    conv = next(n for n in m.graph.node if n.name == "/3/Conv")
    next(a for a in conv.attribute if a.name == "strides").ints[:] = [1]


def _set_group(m: onnx.ModelProto) -> None:
    conv = next(n for n in m.graph.node if n.name == "/3/Conv")
    next(a for a in conv.attribute if a.name == "group").i = 2


SHAPE_CLASHES = {  # each runs in onnxruntime only as far as a kernel: the static check names it first
    "inner_conv_rank5": (_reshape_init("3.weight", (32, 16, 3, 3, 1)), "node '/3/Conv'.*rank 5"),
    "conv_group": (_set_group, "node '/3/Conv'.*with group 2 does not fit 16 input channels"),
    "strides_length": (_set_strides, "node '/3/Conv'.*strides \\[1\\] should hold 2 values"),
    "gemm_inner_size": (_reshape_init("8.weight", (512, 64)), "node '/8/Gemm'.*inner size of 64, its input gives 512"),
}


@pytest.mark.parametrize("case", sorted(SHAPE_CLASHES))
def test_weights_that_clash_with_inferred_shapes_are_refused_without_the_runtime_check(tmp_path, case):
    edit, reason = SHAPE_CLASHES[case]
    path = tmp_path / f"{case}.onnx"
    onnx.save(_edit_digits(edit), path)
    with pytest.raises(ModelLoadError, match=reason):
        load(path, runtime_check=False)  # as for a model too large for the run check
    with pytest.raises(ModelLoadError):
        load(path)


# -- 16: unwritable output folder ---------------------------------------------------------------
@pytest.fixture()
def unwritable(tmp_path) -> Path:
    """A folder this process cannot create files in (root ignores modes: /sys then)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    candidates = [folder, Path("/sys")]
    for c in candidates:
        try:
            (c / ".probe").touch()
            (c / ".probe").unlink()
        except OSError:
            yield c
            break
    else:
        pytest.skip("no unwritable folder here")
    folder.chmod(0o755)


def test_unwritable_output_folder_is_refused_up_front(monkeypatch, capsys, model_path, unwritable):
    line = refused(monkeypatch, capsys, "prune", model_path, "-o", unwritable / "out.onnx", "--ratio", "0.3")
    assert f"cannot write to directory {unwritable}" in line
    model = load(model_path)
    with pytest.raises(OutputPathError, match="out.onnx"):
        save_model(model, unwritable / "out.onnx")
    with pytest.raises(OutputPathError, match="plan.json"):
        write_text_atomic(unwritable / "plan.json", "{}")


# -- 17: calibration and input files are never unpickled ----------------------------------------
class _Planted:
    """Unpickling this would create a marker file: the test sees whether anything unpickled."""

    marker: Path

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_npz_files_are_never_unpickled_and_bad_ones_named(monkeypatch, capsys, model_path, tmp_path):
    marker = tmp_path / "unpickled"
    planted = _Planted()
    planted.marker = marker
    obj = tmp_path / "objects.npz"
    np.savez(obj, x=np.array([planted, 1], dtype=object))
    text = tmp_path / "notes.npz"
    text.write_text("x = 1, 2, 3\n")
    good = tmp_path / "good.npz"
    np.savez(good, x=np.zeros((2, 4, 6, 6), np.float32))
    broken = tmp_path / "broken.npz"
    broken.write_bytes(good.read_bytes()[:200])
    for bad, words in ((obj, "Python objects"), (text, "not an .npz"), (broken, "not a readable")):
        for option in ("--inputs", "--calib"):
            line = refused(monkeypatch, capsys, "verify", model_path, model_path, option, bad, "--runs", "1")
            assert str(bad) in line and words in line, line
    assert not marker.exists()
    code, _, err = cli(monkeypatch, capsys, "verify", model_path, model_path, "--inputs", good, "--runs", "1")
    assert code == 0, err


# -- 20: bfloat16 ---------------------------------------------------------------------------------
def _bfloat16() -> onnx.ModelProto:
    m = conv_model()
    for t in m.graph.initializer:
        a = numpy_helper.to_array(t)
        bits = (a.view(np.uint32) >> 16).astype(np.uint16)  # bfloat16: the top half of a float32
        t.CopyFrom(helper.make_tensor(t.name, TensorProto.BFLOAT16, a.shape, bits.tobytes(), raw=True))
    for vi in list(m.graph.input) + list(m.graph.output):
        vi.type.tensor_type.elem_type = TensorProto.BFLOAT16
    return m


def test_bfloat16_compute_is_refused_up_front_and_float16_is_pruned(monkeypatch, capsys, tmp_path):
    """onnxruntime's CPU provider has no bfloat16 Conv (nor MatMul, Gemm, Add, Relu): such a
    model is refused naming the first node computing in bfloat16 (tests/test_float16.py prunes
    bfloat16 weights Cast to float, and a round trip through bfloat16)."""
    bf16, f16 = tmp_path / "bf16.onnx", tmp_path / "f16.onnx"
    onnx.save(_bfloat16(), bf16)
    onnx.save(conv_model(elem=TensorProto.FLOAT16, dtype=np.float16), f16)
    line = refused(monkeypatch, capsys, "prune", bf16, "-o", tmp_path / "o.onnx", "--ratio", "0.3")
    assert "bfloat16" in line and str(bf16) in line and "node 'conv1' (Conv)" in line, line
    assert not (tmp_path / "o.onnx").exists()
    code, _, err = cli(monkeypatch, capsys, "prune", f16, "-o", tmp_path / "o16.onnx", "--ratio", "0.3")
    assert code == 0, err
    pruned = onnx.load(tmp_path / "o16.onnx")
    assert pruned.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    # a bfloat16 tensor read by an op other than Cast inside a float32 model is refused too
    m = conv_model()
    m.graph.node.insert(2, helper.make_node("Cast", ["r"], ["rb"], to=TensorProto.BFLOAT16, name="to_bf16"))
    m.graph.node.insert(3, helper.make_node("Relu", ["rb"], ["rr"], name="relu_bf16"))
    m.graph.node.insert(4, helper.make_node("Cast", ["rr"], ["rf"], to=TensorProto.FLOAT, name="to_f32"))
    m.graph.node[5].input[0] = "rf"
    cast = tmp_path / "cast.onnx"
    onnx.save(m, cast)
    with pytest.raises(ModelLoadError, match=r"node 'relu_bf16' \(Relu\) computes in bfloat16"):
        load(cast)


def test_no_runtime_check_flag_skips_the_check_from_the_cli(monkeypatch, capsys, tmp_path):
    """`--no-runtime-check` reaches `load`: a model with an op onnxruntime does not know is
    analysed (its op blocks its group, and analyze says why) instead of refused."""
    path = tmp_path / "custom.onnx"
    onnx.save(_custom_op(), path)
    line = refused(monkeypatch, capsys, "analyze", path)
    assert "--no-runtime-check" in line
    code, out, err = cli(monkeypatch, capsys, "analyze", path, "--no-runtime-check", "--json")
    assert code == 0, err
    import json

    assert json.loads(out)["summary"]["prunable_groups"] == 0


def test_verify_refuses_labels_of_another_length_and_named_sizes(monkeypatch, capsys, tmp_path):
    data = tmp_path / "d.npz"
    np.savez(data, input=np.zeros((4, 1, 8, 8), np.float32), labels=np.zeros(7, np.int64))
    line = refused(monkeypatch, capsys, "verify", DIGITS, DIGITS, "--inputs", data, "--labels", "labels")
    assert "7 entries for 4 samples" in line
    line = refused(monkeypatch, capsys, "verify", DIGITS, DIGITS, "--input-shape", "input=N,1,8,8")
    assert "whole sizes" in line


def _all_in_if() -> onnx.ModelProto:
    """x -> If(const true){Conv -> Relu -> Conv} -> y: every op inside a subgraph (silero-vad's
    form), so the analysis accounts nothing and no group is prunable."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 4, 3, 3)).astype(np.float32), "w")
    w2 = numpy_helper.from_array(rng.standard_normal((4, 8, 1, 1)).astype(np.float32), "w2")

    def branch(name: str, out: str) -> onnx.GraphProto:
        nodes = [helper.make_node("Conv", ["x", "w"], [f"{name}_a"], pads=[1, 1, 1, 1]),
                 helper.make_node("Relu", [f"{name}_a"], [f"{name}_r"]),
                 helper.make_node("Conv", [f"{name}_r", "w2"], [out])]
        return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(out, TensorProto.FLOAT,
                                                                                   [1, 4, 6, 6])])

    nodes = [helper.make_node("Constant", [], ["cond"], value=numpy_helper.from_array(np.array(True), "c")),
             helper.make_node("If", ["cond"], ["y"], name="branch", then_branch=branch("then", "t_y"),
                              else_branch=branch("else", "e_y"))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])], [w, w2])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_budget_on_a_model_with_nothing_prunable_writes_a_copy_or_refuses(monkeypatch, capsys, tmp_path):
    """silero-vad keeps every op inside an If. A MACs budget there divided by the zero MACs
    the analysis accounts; now it gives the ratio path's answer (a copy of the input, and
    why). Its weights here sit in the main graph: a parameter budget is cleanly refused."""
    path, out = tmp_path / "if.onnx", tmp_path / "out.onnx"
    onnx.save(_all_in_if(), path)
    code, stdout, err = cli(monkeypatch, capsys, "prune", path, "-o", out, "--target-flops", "0.75")
    assert code == 0, err
    text = " ".join((stdout + err).split())
    assert "unexpected" not in text
    assert "nothing was removed: no group is prunable" in text
    assert "nothing to allocate, no prunable group" in text
    assert out.exists() and [n.op_type for n in onnx.load(out).graph.node].count("If") == 1
    line = refused(monkeypatch, capsys, "prune", path, "-o", tmp_path / "out2.onnx", "--target-params", "0.75")
    assert "the params budget 240 cannot be reached" in line
    assert not (tmp_path / "out2.onnx").exists()


def _reflect_padded() -> onnx.ModelProto:
    """x [1, 4, L] -> Pad(reflect, 40 each side) -> Conv1d(4->8) -> Relu -> Conv1d(8->4) -> y:
    runs only for L > 40 (silero-vad's STFT padding), so the speed check's made-up length of
    32 is refused by onnxruntime."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 4, 3)).astype(np.float32), "w")
    w2 = numpy_helper.from_array(rng.standard_normal((4, 8, 1)).astype(np.float32), "w2")
    pads = numpy_helper.from_array(np.array([0, 0, 40, 0, 0, 40], np.int64), "pads")
    nodes = [helper.make_node("Pad", ["x", "pads"], ["p"], name="pad", mode="reflect"),
             helper.make_node("Conv", ["p", "w"], ["a"], name="conv1", pads=[1, 1]),
             helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w2"], ["y"], name="conv2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, "L"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, None])], [w, w2, pads])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_speed_check_the_model_cannot_run_is_reported_not_a_crash(monkeypatch, capsys, tmp_path):
    """The closing speed check feeds made-up inputs; where onnxruntime refuses them (a dynamic
    axis too short for the model) the prune still succeeds and says what to give instead."""
    path, out = tmp_path / "pad.onnx", tmp_path / "out.onnx"
    onnx.save(_reflect_padded(), path)
    code, stdout, err = cli(monkeypatch, capsys, "prune", path, "-o", out, "--ratio", "0.5")
    assert code == 0, err
    text = " ".join((stdout + err).split())
    assert "unexpected" not in text
    assert "speed not measured: the model does not run on the inputs the speed check made up (x [1, 4, 32])" in text
    assert "--input-shape" in text and "Pad" in text
    assert out.exists()
    code, stdout, err = cli(monkeypatch, capsys, "prune", path, "-o", tmp_path / "out2.onnx", "--ratio", "0.5",
                            "--input-shape", "x=1,4,100")
    text = " ".join((stdout + err).split())
    assert code == 0 and "speed not measured" not in text and "speed:" in text, text


def test_random_inputs_give_a_recurrent_state_the_batch_on_its_own_batch_axis():
    """silero-vad: input [batch, samples], state [2, batch, 128]. The state's batch axis got 32
    (dynamic axes past position 0 did), so the LSTM refused its initial state; it takes the
    batch now, as the verify samples already did (``graph.batch_axes``)."""
    from onnxprune.runtime.session import random_inputs, random_samples

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "samples"])
    state = helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "batch", 8])
    nodes = [helper.make_node("ReduceSum", ["state"], ["s"], keepdims=0),
             helper.make_node("Identity", ["x"], ["y"])]
    graph = helper.make_graph(nodes, "g", [x, state], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
                                                       helper.make_tensor_value_info("s", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    feeds = random_inputs(model)
    assert feeds["x"].shape == (1, 32) and feeds["state"].shape == (2, 1, 8)
    assert random_inputs(model, batch=3)["state"].shape == (2, 3, 8)
    samples = random_samples(model, 4)
    assert samples["x"].shape == (4, 32) and samples["state"].shape == (2, 4, 8)
