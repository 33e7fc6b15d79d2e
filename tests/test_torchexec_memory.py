"""Memory of the torch execution on large models (issue 13): a Where whose condition holds
nowhere (or everywhere) hands on the selected tensor itself, so that a backward pass keeps no
copy of it (the NaN guard after every attention Softmax of a dynamo export); values and
gradients are those of ``torch.where``."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

torch = pytest.importorskip("torch")

from onnxprune.runtime.session import run  # noqa: E402
from onnxprune.torchexec import OnnxModule  # noqa: E402
from onnxprune.torchexec.ops_math import where  # noqa: E402


def test_where_hands_on_the_selected_tensor_when_the_condition_is_uniform():
    p = torch.rand(2, 3, requires_grad=True)
    zero = torch.tensor(0.0)
    nowhere = torch.isnan(p)
    assert where(None, nowhere, zero, p) is p
    assert where(None, ~nowhere, p, zero) is p
    somewhere = nowhere.clone()
    somewhere[0, 1] = True
    assert torch.equal(where(None, somewhere, zero, p), torch.where(somewhere, zero, p))
    # broadcast to a larger shape, or promoted to another type: computed as torch.where does
    small = torch.rand(3)
    got = where(None, torch.zeros(2, 3, dtype=torch.bool), zero, small)
    assert got.shape == (2, 3) and torch.equal(got, small.expand(2, 3))
    ints = torch.arange(3)
    assert where(None, torch.zeros(3, dtype=torch.bool), torch.tensor(1.5), ints).dtype == torch.float32


def _guarded_softmax():  # noqa: ANN202
    """x [N, 4, 6] -> Softmax -> Where(IsNaN(p), 0, p) -> MatMul w [6, 5] -> y."""
    w = np.random.default_rng(3).standard_normal((6, 5)).astype(np.float32)
    nodes = [helper.make_node("Softmax", ["x"], ["p"], name="softmax", axis=-1),
             helper.make_node("IsNaN", ["p"], ["nan"], name="isnan"),
             helper.make_node("Where", ["nan", "zero", "p"], ["q"], name="where"),
             helper.make_node("MatMul", ["q", "w"], ["y"], name="mm")]
    graph = helper.make_graph(nodes, "guard", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 5])],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.zeros((), np.float32), "zero")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_nan_guarded_softmax_keeps_one_copy_for_backward():
    model = _guarded_softmax()
    x = np.random.default_rng(4).standard_normal((2, 4, 6)).astype(np.float32)
    module = OnnxModule(model, trainable=lambda name: False)
    saved: dict[int, tuple[int, ...]] = {}

    def pack(t):  # noqa: ANN001, ANN202
        saved[t.untyped_storage().data_ptr()] = tuple(t.shape)
        return t

    xt = torch.tensor(x, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = module(xt)
    assert sum(shape == (2, 4, 6) for shape in saved.values()) == 1  # Softmax's output, read by MatMul too
    np.testing.assert_allclose(y.detach().numpy(), run(model, {"x": x})["y"], rtol=1e-5, atol=1e-6)
    (grad,) = torch.autograd.grad(y.sum(), xt)
    ref = torch.tensor(x, requires_grad=True)
    p = torch.softmax(ref, -1)
    want = torch.where(torch.isnan(p), torch.tensor(0.0), p) @ torch.tensor(numpy_helper.to_array(model.graph.initializer[0]))
    (ref_grad,) = torch.autograd.grad(want.sum(), ref)
    assert torch.equal(y, want) and torch.equal(grad, ref_grad)
