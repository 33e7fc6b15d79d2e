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


# -- stretches of steps recomputed in the backward pass ------------------------------------------------

def _mlp_chain(depth: int = 5):  # noqa: ANN202
    """x [N, 6] -> (MatMul w_k, Tanh) x depth -> y, and a second output read from the middle."""
    rng = np.random.default_rng(5)
    nodes, inits, prev = [], [], "x"
    for k in range(depth):
        inits.append(numpy_helper.from_array(rng.standard_normal((6, 6)).astype(np.float32), f"w{k}"))
        nodes += [helper.make_node("MatMul", [prev, f"w{k}"], [f"m{k}"], name=f"mm{k}"),
                  helper.make_node("Tanh", [f"m{k}"], [f"t{k}"], name=f"tanh{k}")]
        prev = f"t{k}"
    nodes.append(helper.make_node("Add", [prev, "t1"], ["y"], name="skip"))  # t1 is read far after it is made
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 6]),
                               helper.make_tensor_value_info("m2", TensorProto.FLOAT, ["n", 6])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("every", [1, 3, 4, 100])
def test_recomputed_stretches_give_the_same_values_and_gradients_to_the_bit(every):
    model = _mlp_chain()
    x = torch.as_tensor(np.random.default_rng(6).standard_normal((3, 6)).astype(np.float32))
    gates = []

    def run_once(recompute: int):  # noqa: ANN202
        module = OnnxModule(model, trainable=lambda name: name == "w0")
        gate = torch.ones(6, requires_grad=True)
        module.set_input_hook("mm3", 0, lambda t: t * gate)
        with module.recompute(recompute):
            y, m2 = module(x)
        gates.append(gate)
        (y.square().sum() + m2.sum()).backward()
        return y.detach(), m2.detach(), gate.grad.clone(), module.parameter("w0").grad.clone()

    want = run_once(0)
    got = run_once(every)
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    module = OnnxModule(model)
    plan = module.stretches(every)
    assert [hi - lo for lo, hi, _, _ in plan][:-1] == [every] * (len(plan) - 1)
    assert sum(hi - lo for lo, hi, _, _ in plan) == len(module.node_names)
    first = plan[0]
    assert first[2] == ["x"]  # a stretch reads the graph input, and from before itself only what it must
    if every == 3:  # mm0 tanh0 mm1 | tanh1 mm2 tanh2 | ...: t1 is read by the last step, m2 is an output
        assert plan[1][3] == ["t1", "m2", "t2"]


def test_recompute_keeps_fewer_tensors_for_the_backward_pass():
    """What the autograd graph keeps through a forward pass: with stretches, only their inputs."""
    model = _mlp_chain(8)
    x = torch.as_tensor(np.random.default_rng(7).standard_normal((4, 6)).astype(np.float32), ).requires_grad_()

    def kept(every: int) -> int:
        module = OnnxModule(model, trainable=lambda name: False)
        count = [0]

        def pack(t):  # noqa: ANN001, ANN202
            count[0] += 1
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), module.recompute(every):
            y, _ = module(x)
        y.sum().backward()
        return count[0]

    assert 0 < kept(4) < kept(0)
    module = OnnxModule(model)
    with module.recompute(4):
        assert module.recompute_every == 4
    assert module.recompute_every == 0
