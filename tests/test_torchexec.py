"""onnxprune.torchexec: the torch execution of an ONNX graph matches onnxruntime (zoo models,
legacy and dynamo exports, and single-op graphs for the op semantics), is differentiable,
gates channels through input hooks exactly like the masked reference, writes trained
values back, captures intermediates and names what it cannot run."""

from __future__ import annotations

import importlib
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

torch = pytest.importorskip("torch")

from onnxprune.rewrite import PruneContext

from models import make_inputs
from onnxprune.analysis import analyze
from onnxprune.api import load
from onnxprune.errors import RuntimeUnavailableError
from onnxprune.rewrite.masking import masked_model
from tests.plans import random_masking_plan
from onnxprune.runtime.session import run
from onnxprune.torchexec import OnnxModule
from tests.zoo_cache import ZOO_NAMES, zoo_path

RTOL = 1e-4


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """The test models are tiny: one intra-op thread is faster and immune to a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _assert_close(got: torch.Tensor, ref: np.ndarray, what: str) -> None:
    got_np = got.detach().cpu().numpy()
    assert got_np.shape == ref.shape, f"{what}: shape {got_np.shape} != {ref.shape}"
    if ref.dtype.kind in "fc":
        assert got_np.dtype == ref.dtype, f"{what}: dtype {got_np.dtype} != {ref.dtype}"
        if ref.size:
            finite = np.isfinite(ref)
            assert np.array_equal(finite, np.isfinite(got_np)), f"{what}: non-finite values differ"
            scale = max(1.0, float(np.abs(ref[finite]).max(initial=0.0)))
            err = float(np.abs(ref[finite].astype(np.float64) - got_np[finite]).max(initial=0.0)) / scale
            assert err <= RTOL, f"{what}: relative error {err:.3g} > {RTOL}"
    else:
        np.testing.assert_array_equal(got_np.astype(ref.dtype), ref, err_msg=what)
        assert got_np.dtype == ref.dtype, f"{what}: dtype {got_np.dtype} != {ref.dtype}"


def _outputs(module: OnnxModule, feeds: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        out = module(**{k: torch.from_numpy(v) for k, v in feeds.items()})
    out = out if isinstance(out, tuple) else (out,)
    return dict(zip(module.output_names, out))


def _check_against_ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray], what: str) -> None:
    reference = run(model, feeds)
    got = _outputs(OnnxModule(model), feeds)
    assert set(got) == set(reference)
    for name, ref in reference.items():
        _assert_close(got[name], ref, f"{what}: output {name}")


# -- zoo models ------------------------------------------------------------------------

@pytest.mark.parametrize("name", ZOO_NAMES)
def test_zoo_matches_onnxruntime(name):
    _check_against_ort(load(zoo_path(name)), make_inputs(name), name)


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_zoo_dynamo_export_matches_onnxruntime(name):
    try:
        path = zoo_path(name, dynamo=True)
    except Exception as exc:  # noqa: BLE001 - the exporter's failure is the reason to skip
        pytest.skip(f"dynamo export of {name} fails: {type(exc).__name__}: {str(exc)[:200]}")
    _check_against_ort(load(path), make_inputs(name), f"{name} (dynamo)")


# -- module behaviour ------------------------------------------------------------------

def _node_by_op(model: onnx.ModelProto, op_type: str) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type == op_type]


def test_gradients_reach_weights_and_statistics_stay_frozen():
    model = load(zoo_path("resnet18"))
    module = OnnxModule(model)
    x = torch.from_numpy(make_inputs("resnet18")["input"])
    loss = module(x).square().mean()
    loss.backward()
    for node in _node_by_op(model, "Conv"):
        w = module.parameter(node.input[1])
        assert isinstance(w, torch.nn.Parameter) and w.requires_grad
        assert w.grad is not None and w.grad.abs().sum() > 0, f"no gradient on {node.input[1]}"
    bn = _node_by_op(model, "BatchNormalization")[0]
    assert module.parameter(bn.input[1]).requires_grad and module.parameter(bn.input[2]).requires_grad
    assert not module.parameter(bn.input[3]).requires_grad and not module.parameter(bn.input[4]).requires_grad
    assert module.parameter(bn.input[1]).grad.abs().sum() > 0
    # a gate inserted with a hook gets its gradient too
    conv = _node_by_op(model, "Conv")[1]
    channels = module.parameter(conv.input[1]).shape[1]
    gate = torch.ones(channels, requires_grad=True)
    module.set_input_hook(conv.name, 0, lambda t: t * gate.reshape(1, -1, 1, 1))
    module(x).sum().backward()
    assert gate.grad is not None and gate.grad.abs().sum() > 0


def test_trainable_callback_and_buffers():
    model = load(zoo_path("shufflenetv2"))
    module = OnnxModule(model, trainable=lambda name: False)
    assert not any(p.requires_grad for p in module.parameters())
    reshape = _node_by_op(model, "Reshape")[0]
    shape = module.parameter(reshape.input[1])
    assert shape.dtype == torch.int64 and not isinstance(shape, torch.nn.Parameter)
    assert any(b is shape for b in module.buffers())
    with pytest.raises(KeyError, match="no initializer"):
        module.parameter("not-a-tensor")


@pytest.mark.parametrize("name", ["resnet18", "shufflenetv2", "mobilenetv3", "yolo", "unet", "densenet"])
def test_input_hooks_match_masked_reference(name):
    model = load(zoo_path(name))
    analysis = analyze(model)
    plan = random_masking_plan(analysis, seed=0)
    ctx = PruneContext(analysis, plan.removed_units(analysis))
    masks: dict[tuple[str, int], list[tuple[int, torch.Tensor]]] = {}
    for ref in analysis.consumers:
        keep = ctx.kept(ref.elems)
        if not keep.all():
            masks.setdefault((ref.node, ref.slot), []).append((ref.axis, torch.from_numpy(keep.astype(np.float32))))
    assert masks, "the random plan removes nothing"

    def gate(entries):
        def hook(t: torch.Tensor) -> torch.Tensor:
            for axis, keep in entries:
                shape = [1] * t.dim()
                shape[axis] = -1
                t = t * keep.to(t.dtype).reshape(shape)
            return t
        return hook

    module = OnnxModule(model)
    for (node, slot), entries in masks.items():
        module.set_input_hook(node, slot, gate(entries))
    feeds = make_inputs(name)
    reference = run(masked_model(model, analysis, plan), feeds)
    plain = run(model, feeds)
    got = _outputs(module, feeds)
    for out, ref in reference.items():
        _assert_close(got[out], ref, f"{name} masked: output {out}")
    assert any(not np.allclose(plain[k], reference[k]) for k in plain), "masking changed nothing"
    module.clear_input_hooks()
    for out, ref in plain.items():
        _assert_close(_outputs(module, feeds)[out], ref, f"{name} unhooked: output {out}")


def test_write_back_round_trips_through_onnxruntime():
    model = load(zoo_path("resnet18"))
    module = OnnxModule(model)
    conv, bn = _node_by_op(model, "Conv")[3], _node_by_op(model, "BatchNormalization")[2]
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        w = module.parameter(conv.input[1])
        w.add_(0.1 * torch.randn(w.shape, generator=gen))
        module.parameter(bn.input[1]).mul_(1.5)
    written = module.write_back(model)
    assert [n.SerializeToString() for n in written.graph.node] == [n.SerializeToString() for n in model.graph.node]
    before = {t.name: t for t in model.graph.initializer}
    for t in written.graph.initializer:
        assert (t.data_type, list(t.dims)) == (before[t.name].data_type, list(before[t.name].dims))
    changed = {t.name for t in written.graph.initializer
               if not np.array_equal(numpy_helper.to_array(t), numpy_helper.to_array(before[t.name]))}
    assert changed == {conv.input[1], bn.input[1]}
    feeds = make_inputs("resnet18")
    reference = run(written, feeds)
    assert not np.allclose(reference["output"], run(model, feeds)["output"])
    _assert_close(_outputs(module, feeds)["output"], reference["output"], "written-back model")


def test_write_back_refuses_other_shapes():
    model = load(zoo_path("mlp"))
    module = OnnxModule(model)
    other = onnx.ModelProto()
    other.CopyFrom(model)
    init = other.graph.initializer[0]
    init.CopyFrom(numpy_helper.from_array(np.zeros([d + 1 for d in init.dims], np.float32), init.name))
    with pytest.raises(ValueError, match=init.name):
        module.write_back(other)


def test_capture_returns_intermediates():
    model = load(zoo_path("resnet18"))
    wanted = [_node_by_op(model, "Conv")[0].output[0], _node_by_op(model, "Relu")[2].output[0],
              _node_by_op(model, "Add")[1].output[0]]
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in wanted)
    feeds = make_inputs("resnet18")
    reference = run(probe, feeds)
    module = OnnxModule(model)
    with module.capture(wanted + ["input"]) as seen, torch.no_grad():
        module(torch.from_numpy(feeds["input"]))
    assert set(seen) == set(wanted) | {"input"}
    for name in wanted:
        _assert_close(seen[name], reference[name], f"captured {name}")
    with torch.no_grad():
        module(torch.from_numpy(feeds["input"]))
    assert set(seen) == set(wanted) | {"input"}  # nothing recorded after the block
    with pytest.raises(KeyError, match="nope"), module.capture(["nope"]):
        pass


def _tiny(op_type: str, domain: str = "") -> onnx.ModelProto:
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node(op_type, ["r"], ["y"], name="mystery", domain=domain)]
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_empty_tensor_value_info("y")])
    return helper.make_model(graph, opset_imports=opsets)


def test_default_trainability_and_constant_nodes():
    """Weights read through a Transpose train, scalar elementwise constants do not; a
    Constant node's weight is a parameter and is written back into the node."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32))
    nodes = [
        helper.make_node("Constant", [], ["w"], name="w_const", value=weight),
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Mul", ["c", "half"], ["h"], name="scale"),
        helper.make_node("Add", ["h", "shift"], ["a"], name="shift_add"),
        helper.make_node("Flatten", ["a"], ["f"], name="flatten"),
        helper.make_node("Transpose", ["fc_w"], ["fc_wt"], name="fc_t"),
        helper.make_node("MatMul", ["f", "fc_wt"], ["y"], name="fc"),
    ]
    inits = [numpy_helper.from_array(np.array(0.5, np.float32), "half"),
             numpy_helper.from_array(rng.standard_normal((4, 1, 1)).astype(np.float32), "shift"),
             numpy_helper.from_array(rng.standard_normal((5, 4 * 5 * 5)).astype(np.float32), "fc_w")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 5, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    module = OnnxModule(model)
    trains = {name: t.requires_grad for name, t in module.named_initializers()}
    assert trains == {"w": True, "half": False, "shift": True, "fc_w": True}
    with torch.no_grad():
        module.parameter("w").mul_(-2.0)
    written = module.write_back(model)
    feeds = {"x": rng.standard_normal((2, 3, 5, 5)).astype(np.float32)}
    reference = run(written, feeds)["y"]
    assert not np.allclose(reference, run(model, feeds)["y"])
    _assert_close(_outputs(module, feeds)["y"], reference, "constant written back")


def test_unknown_op_is_named():
    with pytest.raises(NotImplementedError, match=r"node 'mystery'.*op FancyOp \(domain 'com.example'\)"):
        OnnxModule(_tiny("FancyOp", "com.example"))
    with pytest.raises(NotImplementedError, match=r"node 'mystery'.*op NonMaxSuppression"):
        OnnxModule(_tiny("NonMaxSuppression"))


def test_inputs_by_position_and_name():
    model = load(zoo_path("mlp"))
    module = OnnxModule(model)
    x = torch.from_numpy(make_inputs("mlp")["input"])
    assert torch.equal(module(x), module(input=x))
    with pytest.raises(TypeError, match="missing"):
        module()
    with pytest.raises(TypeError, match="unknown input"):
        module(x, other=x)


def test_missing_torch_raises_with_install_hint(monkeypatch):
    for mod in [m for m in sys.modules if m == "onnxprune.torchexec" or m.startswith("onnxprune.torchexec.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(RuntimeUnavailableError, match=r"pip install -c constraints.txt 'onnxprune\[torch\]'"):
        importlib.import_module("onnxprune.torchexec")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_runs_on_cuda():
    model = load(zoo_path("yolo"))
    feeds = make_inputs("yolo")
    reference = run(model, feeds)
    module = OnnxModule(model).to("cuda")
    with torch.no_grad():
        out = module(torch.from_numpy(feeds["input"]).cuda())
    for name, got in zip(module.output_names, out):
        _assert_close(got, reference[name], f"cuda {name}")


# -- single-op graphs: op semantics against onnxruntime -----------------------------------

class C:
    """An input given as an initializer (a constant) rather than a graph input."""

    def __init__(self, value) -> None:
        self.value = np.asarray(value)


_RNG = np.random.default_rng(0)


def R(*shape: int, dtype=np.float32) -> np.ndarray:
    return _RNG.standard_normal(shape).astype(dtype)


def I(*values: int) -> C:
    return C(np.array(values, dtype=np.int64))


def F(*values: float) -> C:
    return C(np.array(values, dtype=np.float32))


def _single_op(op_type: str, inputs: list, attrs: dict, opset: int, n_out: int) -> tuple[onnx.ModelProto, dict]:
    feeds, inits, names = {}, [], []
    for i, value in enumerate(inputs):
        name = f"in{i}"
        if value is None:
            names.append("")
            continue
        names.append(name)
        if isinstance(value, C):
            inits.append(numpy_helper.from_array(value.value, name))
        else:
            feeds[name] = value
    graph_inputs = [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
                    for k, v in feeds.items()]
    outs = [f"out{i}" for i in range(n_out)]
    node = helper.make_node(op_type, names, outs, name="the_node", **attrs)
    graph = helper.make_graph([node], "single", graph_inputs, [helper.make_empty_tensor_value_info(o) for o in outs],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = min(model.ir_version, 9)
    return model, feeds


def case(op_type: str, *inputs, opset: int = 17, n_out: int = 1, id: str | None = None,
         **attrs):
    return pytest.param(op_type, list(inputs), attrs, opset, n_out, id=id or op_type)


def _pos(*shape: int) -> np.ndarray:
    return np.abs(R(*shape)) + 0.1


_LSTM_W, _LSTM_R, _LSTM_B = R(2, 16, 3), R(2, 16, 4), R(2, 32)
_GRU_W, _GRU_R, _GRU_B = R(2, 12, 3), R(2, 12, 4), R(2, 24)
_X_SEQ = R(5, 2, 3)
_LENS = C(np.array([5, 3], dtype=np.int32))
_INT_A = np.array([[7, -7, 5, -5], [9, -9, 1, 0]], dtype=np.int64)
_INT_B = np.array([[2, 2, -3, -3], [4, 4, 3, 3]], dtype=np.int64)

OP_CASES = [
    # convolutions
    case("Conv", R(1, 4, 9, 9), C(R(6, 2, 3, 3)), C(R(6)), group=2, pads=[1, 0, 2, 1], strides=[2, 1],
         id="conv-asym"),
    case("Conv", R(1, 3, 10, 11), C(R(4, 3, 3, 3)), auto_pad="SAME_UPPER", strides=[2, 2], id="conv-same-upper"),
    case("Conv", R(1, 3, 10, 11), C(R(4, 3, 4, 4)), auto_pad="SAME_LOWER", strides=[3, 2], id="conv-same-lower"),
    case("Conv", R(1, 3, 10, 11), C(R(4, 3, 3, 3)), auto_pad="VALID", dilations=[2, 2], id="conv-valid-dil"),
    case("Conv", R(2, 4, 12), C(R(4, 1, 3)), C(R(4)), group=4, pads=[2, 2], dilations=[2], id="conv1d-dw"),
    case("Conv", R(1, 2, 5, 6, 7), C(R(3, 2, 2, 3, 3)), pads=[0, 1, 1, 1, 1, 0], id="conv3d"),
    case("ConvTranspose", R(1, 4, 5, 5), C(R(4, 3, 3, 3)), C(R(6)), group=2, strides=[2, 2], pads=[1, 1, 1, 1],
         output_padding=[1, 1], id="convT-outpad"),
    case("ConvTranspose", R(1, 4, 5, 6), C(R(4, 3, 3, 3)), strides=[2, 3], pads=[0, 2, 1, 0], dilations=[2, 1],
         id="convT-asym"),
    case("ConvTranspose", R(1, 4, 5, 5), C(R(4, 3, 3, 3)), strides=[2, 2], output_shape=[10, 11], id="convT-oshape"),
    case("ConvTranspose", R(1, 4, 5, 5), C(R(4, 3, 4, 4)), strides=[2, 2], auto_pad="SAME_UPPER", id="convT-same"),
    case("ConvTranspose", R(2, 3, 7), C(R(3, 2, 3)), strides=[3], id="convT-1d"),
    case("Gemm", R(3, 5), C(R(4, 5)), C(R(4)), transB=1, alpha=0.5, beta=2.0, id="gemm"),
    case("Gemm", R(5, 3), C(R(4, 5)), C(R(3, 1)), transA=1, transB=1, id="gemm-transA"),
    case("MatMul", R(2, 3, 4, 5), R(5, 6), id="matmul-batched"),
    case("MatMul", R(5), R(2, 5, 3), id="matmul-1d"),
    # normalisations
    case("BatchNormalization", R(2, 3, 4, 4), C(R(3)), C(R(3)), C(R(3)), C(_pos(3)), epsilon=1e-3),
    case("InstanceNormalization", R(2, 3, 4, 5), C(R(3)), C(R(3))),
    case("LayerNormalization", R(2, 3, 4), C(R(3, 4)), C(R(4)), axis=1, id="layernorm-axis1"),
    case("LayerNormalization", R(2, 3, 4), C(R(4)), opset=17, n_out=3, id="layernorm-outputs"),
    case("GroupNormalization", R(2, 6, 3, 3), C(R(6)), C(R(6)), num_groups=3, opset=21, id="groupnorm-21"),
    case("LpNormalization", R(2, 3, 4), axis=1, p=1, id="lpnorm-p1"),
    case("LpNormalization", R(2, 3, 4), id="lpnorm-p2"),
    case("PRelu", R(2, 3, 4, 4), C(R(3, 1, 1))),
    # unary
    *[case(o, R(3, 4)) for o in ("Relu", "Sigmoid", "Tanh", "Erf", "Neg", "Abs", "Floor", "Ceil", "Sign", "Sin",
                                  "Cos", "Identity", "Softsign", "Exp", "Softplus", "HardSwish")],
    case("Mish", R(3, 4), opset=18),
    case("Round", np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 0.4, 2.6], np.float32)),
    *[case(o, _pos(3, 4)) for o in ("Log", "Sqrt", "Reciprocal")],
    case("LeakyRelu", R(3, 4), alpha=0.2),
    case("HardSigmoid", 3 * R(3, 4), alpha=0.3, beta=0.4),
    case("Elu", R(3, 4), alpha=0.7),
    case("Selu", R(3, 4)),
    case("Celu", R(3, 4), alpha=1.5),
    case("Gelu", R(3, 4), opset=20, id="gelu"),
    case("Gelu", R(3, 4), opset=20, approximate="tanh", id="gelu-tanh"),
    case("ThresholdedRelu", R(3, 4), alpha=0.5),
    case("Dropout", R(3, 4), n_out=2, opset=13),
    case("Cast", 5 * R(3, 4), to=TensorProto.INT32, id="cast-trunc"),
    case("Cast", _INT_A, to=TensorProto.FLOAT, id="cast-float"),
    case("Cast", _INT_A, to=TensorProto.BOOL, id="cast-bool"),
    case("Clip", R(3, 4), F(-0.5), F(0.3), opset=13, id="clip-inputs"),
    case("Clip", R(3, 4), None, F(0.3), opset=13, id="clip-max-only"),
    case("Clip", R(3, 4), opset=6, min=-0.2, max=0.1, id="clip-attrs"),
    case("Not", R(3, 4) > 0),
    # binary, variadic, comparisons
    case("Add", R(2, 3, 4), R(3, 1)),
    case("Sub", R(2, 3, 4), R(4)),
    case("Mul", R(2, 1, 4), R(3, 1)),
    case("Div", R(2, 3), _pos(2, 3), id="div-float"),
    case("Div", _INT_A, _INT_B, id="div-int-trunc"),
    case("Pow", _pos(2, 3), R(2, 3)),
    case("Mod", _INT_A, _INT_B, id="mod-int"),
    case("Mod", _INT_A, _INT_B, fmod=1, id="mod-fmod"),
    case("Mod", R(2, 4), _pos(2, 4), fmod=1, id="mod-float"),
    case("Max", R(2, 3), R(3), R(1, 3)),
    case("Min", R(2, 3), R(3)),
    case("Sum", R(2, 3), R(3), R(2, 1)),
    case("Mean", R(2, 3), R(3), R(2, 1)),
    case("Where", R(2, 3) > 0, R(2, 3), R(3)),
    *[case(o, np.round(R(3, 4)), np.round(R(4))) for o in ("Equal", "Less", "Greater", "LessOrEqual",
                                                           "GreaterOrEqual")],
    case("And", R(3, 4) > 0, R(4) > 0),
    case("Or", R(3, 4) > 0, R(4) > 0),
    # layout and indexing
    case("Concat", R(2, 3), R(2, 1), R(2, 2), axis=-1),
    case("Split", R(2, 7), axis=1, split=[3, 4], opset=11, n_out=2, id="split-attr"),
    case("Split", R(2, 7), I(2, 5), axis=1, opset=13, n_out=2, id="split-input"),
    case("Split", R(6, 2), opset=13, n_out=3, id="split-equal"),
    case("Split", R(2, 7), axis=1, num_outputs=3, opset=18, n_out=3, id="split-num-outputs"),
    case("Slice", R(5, 6, 7), I(1, -1), I(4, -100), I(0, 2), I(1, -2), id="slice-neg-step"),
    case("Slice", R(5, 6, 7), I(-4, 2**62), I(2**62, 0), I(-1, 1), I(2, -1), id="slice-huge"),
    case("Slice", R(5, 6, 7), I(1), I(1000), id="slice-default-axes"),
    case("Slice", R(5, 6), opset=9, starts=[1, -3], ends=[4, 100], axes=[0, 1], id="slice-attrs"),
    case("Transpose", R(2, 3, 4), perm=[2, 0, 1]),
    case("Transpose", R(2, 3, 4), id="transpose-default"),
    case("Squeeze", R(1, 3, 1, 2), I(0, -2), opset=13, id="squeeze-input"),
    case("Squeeze", R(1, 3, 1, 2), opset=11, axes=[2], id="squeeze-attr"),
    case("Squeeze", R(1, 3, 1, 2), opset=13, id="squeeze-all"),
    case("Unsqueeze", R(3, 2), I(0, -1), opset=13, id="unsqueeze-input"),
    case("Unsqueeze", R(3, 2), opset=11, axes=[1, 3], id="unsqueeze-attr"),
    case("Flatten", R(2, 3, 4, 5), axis=2),
    case("Flatten", R(2, 3, 4, 5), axis=0, id="flatten-0"),
    case("Flatten", R(2, 3, 4, 5), axis=-1, id="flatten-neg"),
    case("Reshape", R(2, 3, 4), I(0, -1, 2), id="reshape-zero"),
    case("Reshape", R(0, 3, 4), I(0, 4, 3), allowzero=1, opset=14, id="reshape-allowzero"),
    case("Expand", R(3, 1), I(2, 1, 4)),
    case("Tile", R(2, 3), I(2, 3)),
    case("Gather", R(5, 4), I(-1, 0, 3), axis=0),
    case("Gather", R(3, 5, 2), C(np.array([[4, -5], [1, 2]], np.int64)), axis=1, id="gather-2d-idx"),
    case("Gather", R(3, 5, 2), C(np.array(2, np.int64)), axis=1, id="gather-scalar"),
    case("GatherElements", R(3, 4), C(np.array([[0, 3], [-1, 1], [2, 2]], np.int64)), axis=1),
    case("GatherND", R(2, 3, 4), C(np.array([[0, 1], [1, 2]], np.int64)), id="gathernd"),
    case("GatherND", R(2, 3, 4), C(np.array([[1], [2]], np.int64)), batch_dims=1, id="gathernd-batch"),
    case("ScatterND", R(4, 3), C(np.array([[1], [3]], np.int64)), R(2, 3)),
    case("ScatterElements", R(3, 4), C(np.array([[1, 0], [3, 2], [0, 1]], np.int64)), R(3, 2), axis=1),
    case("Shape", R(2, 3, 4), opset=15, start=1, end=-1, id="shape-slice"),
    case("Shape", R(2, 3, 4), id="shape"),
    case("Size", R(2, 3, 4)),
    case("ConstantOfShape", I(2, 3), value=numpy_helper.from_array(np.array([7], np.int32))),
    case("ConstantOfShape", I(2, 3), id="constantofshape-default"),
    case("Constant", value=numpy_helper.from_array(R(2, 3)), id="constant-tensor"),
    case("Constant", value_ints=[1, 2, 3], id="constant-ints"),
    case("Range", C(np.array(1.0, np.float32)), C(np.array(4.2, np.float32)), C(np.array(0.5, np.float32)),
         id="range-float"),
    case("Range", C(np.array(10, np.int64)), C(np.array(1, np.int64)), C(np.array(-3, np.int64)), id="range-int"),
    case("Range", C(np.array(5, np.int64)), C(np.array(1, np.int64)), C(np.array(2, np.int64)), id="range-empty"),
    case("DepthToSpace", R(1, 8, 2, 3), blocksize=2, id="d2s-dcr"),
    case("DepthToSpace", R(1, 8, 2, 3), blocksize=2, mode="CRD", id="d2s-crd"),
    case("SpaceToDepth", R(1, 2, 4, 6), blocksize=2),
    case("OneHot", C(np.array([0, 2, -1, 5], np.int64)), C(np.array(4, np.int64)), F(0.0, 3.0), axis=0),
    case("Trilu", R(4, 5), C(np.array(1, np.int64)), upper=0),
    case("NonZero", np.array([[1, 0, 2], [0, 3, 0]], np.float32)),
    case("CumSum", R(3, 4), C(np.array(1, np.int64)), exclusive=1, reverse=1),
    # pooling
    case("MaxPool", R(1, 2, 7, 8), kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], id="maxpool"),
    case("MaxPool", R(1, 2, 7, 8), kernel_shape=[3, 2], strides=[2, 2], ceil_mode=1, id="maxpool-ceil"),
    case("MaxPool", R(1, 2, 8, 8), kernel_shape=[3, 3], strides=[2, 2], pads=[0, 1, 2, 0], ceil_mode=1,
         id="maxpool-asym-ceil"),
    case("MaxPool", R(1, 2, 9, 9), kernel_shape=[2, 2], dilations=[2, 2], strides=[1, 2], id="maxpool-dil"),
    case("MaxPool", R(1, 2, 7, 7), kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER", id="maxpool-same"),
    case("MaxPool", R(2, 3, 6, 7), kernel_shape=[2, 2], strides=[2, 2], n_out=2, id="maxpool-indices"),
    case("MaxPool", R(2, 3, 6, 7), kernel_shape=[3, 3], strides=[2, 2], pads=[1, 0, 2, 1], n_out=2,
         id="maxpool-indices-padded"),
    case("MaxPool", R(1, 2, 10), kernel_shape=[3], strides=[3], ceil_mode=1, id="maxpool-1d"),
    case("AveragePool", R(1, 2, 7, 8), kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], id="avgpool"),
    case("AveragePool", R(1, 2, 7, 8), kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
         count_include_pad=1, id="avgpool-incl"),
    case("AveragePool", R(1, 2, 7, 8), kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1, id="avgpool-ceil"),
    case("AveragePool", R(1, 2, 7, 8), kernel_shape=[3, 3], strides=[2, 2], pads=[1, 0, 2, 1], ceil_mode=1,
         count_include_pad=1, id="avgpool-asym-ceil-incl"),
    case("AveragePool", R(1, 2, 7, 8), kernel_shape=[3, 3], strides=[2, 2], pads=[1, 0, 2, 1], ceil_mode=1,
         id="avgpool-asym-ceil"),
    case("GlobalAveragePool", R(2, 3, 4, 5)),
    case("GlobalMaxPool", R(2, 3, 4, 5)),
    # resampling
    case("Resize", R(1, 2, 3, 4), None, F(1, 1, 2, 2), mode="nearest", coordinate_transformation_mode="asymmetric",
         nearest_mode="floor", id="resize-nearest-asym-floor"),
    case("Resize", R(1, 2, 4, 5), None, F(1, 1, 1.7, 2.3), mode="nearest", id="resize-nearest-halfpixel"),
    case("Resize", R(1, 2, 6, 7), None, F(1, 1, 0.5, 0.6), mode="nearest", id="resize-nearest-down"),
    case("Resize", R(1, 2, 3, 4), None, None, I(1, 2, 7, 9), mode="nearest", nearest_mode="round_prefer_ceil",
         coordinate_transformation_mode="half_pixel", id="resize-nearest-sizes"),
    case("Resize", R(1, 2, 3, 4), None, F(1, 1, 2, 2), mode="linear", id="resize-linear-halfpixel"),
    case("Resize", R(1, 2, 3, 4), None, F(1, 1, 2, 2), mode="linear", coordinate_transformation_mode="align_corners",
         id="resize-linear-align"),
    case("Resize", R(1, 2, 3, 4), None, None, I(1, 2, 1, 9), mode="linear",
         coordinate_transformation_mode="pytorch_half_pixel", id="resize-linear-pytorch"),
    case("Resize", R(1, 2, 8, 9), None, F(1, 1, 0.5, 0.7), mode="linear", id="resize-linear-down"),
    case("Resize", R(1, 2, 4, 5), None, F(1, 1, 1.5, 2), mode="cubic", id="resize-cubic"),
    case("Resize", R(1, 2, 4, 5), None, F(1, 1, 1.5, 2), mode="cubic", exclude_outside=1, cubic_coeff_a=-0.5,
         coordinate_transformation_mode="asymmetric", id="resize-cubic-exclude"),
    case("Resize", R(1, 2, 3, 4), None, None, I(5, 5), mode="linear", axes=[2, 3], opset=18, id="resize-axes"),
    case("Resize", R(1, 2, 3, 4), F(1, 1, 2, 3), mode="nearest", opset=10, id="resize-opset10"),
    case("Resize", R(1, 2, 3, 4), F(1, 1, 2, 2), mode="linear", opset=10, id="resize-opset10-linear"),
    case("Upsample", R(1, 2, 3, 4), F(1, 1, 2, 3), mode="nearest", opset=9, id="upsample-nearest"),
    case("Upsample", R(1, 2, 3, 4), F(1, 1, 2, 2), mode="linear", opset=9, id="upsample-linear"),
    case("Pad", R(2, 3, 4), I(0, 1, 2, 1, 0, -1), F(0.5), id="pad-constant"),
    case("Pad", R(1, 2, 4, 5), I(0, 0, 2, 3, 0, 0, 1, 2), mode="reflect", id="pad-reflect"),
    case("Pad", R(1, 2, 4, 5), I(0, 1, 2, 3, 0, 0, 1, 2), mode="edge", id="pad-edge"),
    case("Pad", R(1, 2, 4, 5), I(2, 1, 3, 2), None, I(2, 3), mode="wrap", opset=19, id="pad-wrap-axes"),
    case("Pad", R(2, 3), opset=10, pads=[1, 0, 0, 2], value=1.5, id="pad-attrs"),
    case("MaxPool", R(1, 1, 6, 6), kernel_shape=[2, 2], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1,
         id="maxpool-ceil-window-in-pad"),
    case("MaxPool", R(2, 3, 6, 7), kernel_shape=[2, 3], strides=[2, 2], storage_order=1, n_out=2,
         id="maxpool-indices-colmajor"),
    case("AveragePool", R(1, 1, 6, 6), kernel_shape=[2, 2], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1,
         count_include_pad=1, id="avgpool-ceil-window-in-pad"),
    case("AveragePool", R(1, 2, 9, 9), kernel_shape=[2, 2], strides=[2, 1], dilations=[2, 2], pads=[1, 1, 0, 0],
         opset=19, id="avgpool-dilated"),
    case("AveragePool", R(1, 2, 7), kernel_shape=[3], strides=[2], auto_pad="SAME_LOWER", id="avgpool-1d-same"),
    case("AveragePool", R(1, 2, 4, 5, 6), kernel_shape=[2, 2, 2], strides=[2, 2, 2], id="avgpool-3d"),
    case("ConvTranspose", R(1, 4, 5, 5), C(R(4, 3, 4, 4)), strides=[2, 2], auto_pad="SAME_LOWER",
         id="convT-same-lower"),
    case("ConvTranspose", R(1, 4, 5, 5), C(R(4, 3, 3, 3)), strides=[2, 2], output_shape=[10, 10],
         auto_pad="SAME_UPPER", id="convT-oshape-same-upper"),
    case("GroupNormalization", R(2, 6, 3, 3), C(R(3)), C(R(3)), num_groups=3, opset=18, id="groupnorm-18"),
    case("LpNormalization", np.concatenate([R(2, 4), np.zeros((1, 4), np.float32)]), axis=1, id="lpnorm-zero"),
    case("LayerNormalization", R(2, 3, 4), C(R(4)), C(R(4)), axis=-1, epsilon=1e-3, id="layernorm-eps"),
    case("BatchNormalization", R(2, 3), C(R(3)), C(R(3)), C(R(3)), C(_pos(3)), opset=9, id="batchnorm-2d"),
    case("Shrink", R(3, 4), lambd=0.3, bias=0.1),
    case("Resize", R(1, 2, 6, 8), None, F(1, 1, 0.5, 0.5), mode="nearest", id="resize-nearest-half"),
    case("Resize", R(1, 2, 5, 5), C(np.array([0, 0, 0.2, 0.1, 1, 1, 0.9, 1.2], np.float32)), None, I(1, 2, 4, 6),
         mode="linear", coordinate_transformation_mode="tf_crop_and_resize", extrapolation_value=-3.0,
         id="resize-crop"),
    case("Resize", R(1, 2, 5, 6), None, F(1, 1, 1.6, 0.75), mode="linear", opset=19,
         coordinate_transformation_mode="half_pixel_symmetric", id="resize-symmetric"),
    case("Resize", R(1, 2, 4, 6), None, None, I(9, 9), axes=[2, 3], mode="nearest", opset=18,
         keep_aspect_ratio_policy="not_larger", id="resize-not-larger"),
    case("Resize", R(1, 2, 2, 3, 4), None, F(1, 1, 2, 2, 2), mode="linear", id="resize-trilinear"),
    case("Resize", R(1, 2, 4, 5), C(np.zeros(0, np.float32)), F(1, 1, 2, 3), mode="nearest", nearest_mode="ceil",
         coordinate_transformation_mode="tf_half_pixel_for_nn", opset=11, id="resize-tf-nn"),
    case("Pad", R(3, 4, 5), I(1, 0, 2, 1, 0, 2), mode="reflect", id="pad-reflect-leading"),
    case("Split", R(7, 2), num_outputs=3, opset=18, n_out=3, id="split-uneven"),
    case("Slice", R(6, 5), I(-1), I(-(2**62)), I(0), I(-2), id="slice-neg-to-start"),
    case("ReduceMax", R(2, 3, 4), I(-1, 0), keepdims=0, opset=18, id="reducemax-neg-axes"),
    case("TopK", R(3, 6), I(3), axis=0, largest=0, n_out=2, id="topk-smallest"),
    case("Einsum", R(3, 4), R(5, 4), equation="ij,kj->ik", id="einsum-transposed"),
    case("Expand", R(2, 1, 3), I(2, 4, 1), id="expand-both"),
    case("Where", np.array([True, False, True]), np.array([1, 2, 3], np.int64), np.array([7], np.int64),
         id="where-int"),
    case("Xor", R(3, 4) > 0, R(4) > 0),
    case("Celu", R(3, 4), id="celu-default"),
    # reductions and friends
    case("ReduceMean", R(2, 3, 4), axes=[1, -1], opset=13, id="reducemean-attr"),
    case("ReduceMean", R(2, 3, 4), I(1), keepdims=0, opset=18, id="reducemean-input"),
    case("ReduceSum", R(2, 3, 4), I(0, 2), opset=13, id="reducesum-input"),
    case("ReduceSum", R(2, 3, 4), C(np.zeros(0, np.int64)), noop_with_empty_axes=1, opset=13, id="reducesum-noop"),
    case("ReduceSum", R(2, 3, 4), opset=13, keepdims=0, id="reducesum-all"),
    case("ReduceMax", R(2, 3, 4), axes=[2], opset=13, id="reducemax"),
    case("ReduceSum", _INT_A.astype(np.int32), I(1), opset=13, id="reducesum-int32"),
    case("ReduceMean", _INT_A.astype(np.int32), axes=[1], opset=13, id="reducemean-int32"),
    case("ReduceMin", R(2, 3, 4), I(0), opset=18, id="reducemin"),
    case("ReduceProd", R(2, 3, 4), axes=[0, 2], opset=13, id="reduceprod"),
    case("ReduceL2", R(2, 3, 4), axes=[1], keepdims=0, opset=13, id="reducel2"),
    case("ReduceL1", R(2, 3, 4), axes=[1], opset=13, id="reducel1"),
    case("ReduceSumSquare", R(2, 3, 4), axes=[2], opset=13, id="reducesumsquare"),
    case("ReduceLogSumExp", R(2, 3, 4), axes=[2], opset=13, id="reducelogsumexp"),
    case("ArgMax", R(3, 4), axis=1, keepdims=0),
    case("ArgMin", np.array([[1, 0, 0, 2], [3, 3, 1, 1]], np.float32), axis=1, select_last_index=1,
         id="argmin-last"),
    case("Softmax", R(2, 3, 4), axis=1, opset=11, id="softmax-opset11-coerce"),
    case("Softmax", R(2, 3, 4), axis=1, opset=13, id="softmax-opset13"),
    case("LogSoftmax", R(2, 3, 4), opset=11, id="logsoftmax-opset11"),
    case("LogSoftmax", R(2, 3, 4), axis=-2, opset=13, id="logsoftmax-opset13"),
    case("Hardmax", R(2, 3, 4), axis=1, opset=13),
    case("Einsum", R(2, 3, 4), R(2, 4, 5), equation="bij,bjk->bik"),
    case("TopK", R(3, 6), I(2), axis=1, n_out=2),
    # recurrent
    case("LSTM", _X_SEQ, C(_LSTM_W[:1]), C(_LSTM_R[:1]), hidden_size=4, n_out=3, id="lstm-forward"),
    case("LSTM", _X_SEQ, C(_LSTM_W), C(_LSTM_R), C(_LSTM_B), None, C(R(2, 2, 4)), C(R(2, 2, 4)), hidden_size=4,
         direction="bidirectional", n_out=3, id="lstm-bidirectional"),
    case("LSTM", _X_SEQ, C(_LSTM_W[:1]), C(_LSTM_R[:1]), C(_LSTM_B[:1]), _LENS, None, None, C(R(1, 12)),
         hidden_size=4, direction="reverse", n_out=3, id="lstm-reverse-lens-peephole"),
    case("LSTM", _X_SEQ, C(_LSTM_W[:1]), C(_LSTM_R[:1]), C(_LSTM_B[:1]), hidden_size=4, clip=0.5, n_out=3,
         input_forget=1, id="lstm-clip-coupled"),
    case("GRU", _X_SEQ, C(_GRU_W), C(_GRU_R), C(_GRU_B), hidden_size=4, direction="bidirectional", n_out=2,
         id="gru-bidirectional"),
    case("GRU", _X_SEQ, C(_GRU_W[:1]), C(_GRU_R[:1]), C(_GRU_B[:1]), _LENS, C(R(1, 2, 4)), hidden_size=4,
         linear_before_reset=1, n_out=2, id="gru-lbr-lens"),
    case("LSTM", _X_SEQ, C(_LSTM_W), C(_LSTM_R), C(_LSTM_B), _LENS, C(R(2, 2, 4)), C(R(2, 2, 4)), C(R(2, 12)),
         hidden_size=4, direction="bidirectional", n_out=3, id="lstm-bidirectional-lens"),
    case("GRU", _X_SEQ, C(_GRU_W[1:]), C(_GRU_R[1:]), None, _LENS, hidden_size=4, direction="reverse", n_out=2,
         id="gru-reverse-lens-nobias"),
    case("GRU", _X_SEQ, C(_GRU_W[:1]), C(_GRU_R[:1]), C(_GRU_B[:1]), hidden_size=4,
         activations=["HardSigmoid", "Tanh"],
         activation_alpha=[0.3], activation_beta=[0.4], n_out=2, id="gru-activations"),
    case("RNN", _X_SEQ, C(R(1, 4, 3)), C(R(1, 4, 4)), C(R(1, 8)), hidden_size=4, n_out=2, id="rnn"),
]


@pytest.mark.parametrize("op_type, inputs, attrs, opset, n_out", OP_CASES)
def test_op_matches_onnxruntime(op_type, inputs, attrs, opset, n_out):
    model, feeds = _single_op(op_type, inputs, attrs, opset, n_out)
    _check_against_ort(model, feeds, op_type)
