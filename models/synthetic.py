"""Synthetic large models built directly in ONNX (no torch), written with external data.

Used by the >2 GB round-trip test and the scale benchmark; never committed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def mlp_chain(path: str | Path, *, width: int, layers: int, batch: int = 1, seed: int = 0) -> Path:
    """x[batch, width] -> (MatMul W[width, width] -> Add b -> Relu) x layers -> MatMul -> y[batch, 16].

    Size ~ layers * width^2 * 4 bytes, saved with external data in ``<name>.data``.
    """
    rng = np.random.default_rng(seed)
    nodes, inits, x = [], [], "x"
    scale = np.float32(1.0 / np.sqrt(width))
    for i in range(layers):
        w = (rng.standard_normal((width, width), dtype=np.float32) * scale)
        inits += [numpy_helper.from_array(w, f"w{i}"),
                  numpy_helper.from_array(rng.standard_normal(width, dtype=np.float32) * 0.1, f"b{i}")]
        nodes += [helper.make_node("MatMul", [x, f"w{i}"], [f"mm{i}"], name=f"fc{i}"),
                  helper.make_node("Add", [f"mm{i}", f"b{i}"], [f"add{i}"], name=f"bias{i}"),
                  helper.make_node("Relu", [f"add{i}"], [f"h{i}"], name=f"relu{i}")]
        x = f"h{i}"
    inits.append(numpy_helper.from_array(rng.standard_normal((width, 16), dtype=np.float32) * scale, "w_out"))
    nodes.append(helper.make_node("MatMul", [x, "w_out"], ["y"], name="head"))
    return _save(nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, width])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 16])], path)


def transformer_like(path: str | Path, *, hidden: int = 1024, layers: int = 24, seq: int = 16,
                     seed: int = 0) -> Path:
    """A transformer-sized encoder stack: LayerNorm, single-head attention (MatMul of two
    computed tensors, Softmax), output projection, residual adds, and a 4x feed-forward
    block with Gelu. Parameters ~ 12 * hidden^2 per layer."""
    rng = np.random.default_rng(seed)
    s = np.float32(1.0 / np.sqrt(hidden))
    nodes, inits = [], []

    def w(name: str, *shape: int) -> str:
        inits.append(numpy_helper.from_array(rng.standard_normal(shape, dtype=np.float32) * s, name))
        return name

    def node(op: str, inputs: list[str], name: str, **attrs) -> str:  # noqa: ANN003
        nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    x = "x"
    for i in range(layers):
        ln1 = node("LayerNormalization", [x, w(f"l{i}.ln1.g", hidden), w(f"l{i}.ln1.b", hidden)], f"l{i}.ln1", axis=-1)
        q = node("MatMul", [ln1, w(f"l{i}.wq", hidden, hidden)], f"l{i}.q")
        k = node("MatMul", [ln1, w(f"l{i}.wk", hidden, hidden)], f"l{i}.k")
        v = node("MatMul", [ln1, w(f"l{i}.wv", hidden, hidden)], f"l{i}.v")
        kt = node("Transpose", [k], f"l{i}.kt", perm=[0, 2, 1])
        att = node("Softmax", [node("MatMul", [q, kt], f"l{i}.qk")], f"l{i}.att", axis=-1)
        ctx = node("MatMul", [att, v], f"l{i}.ctx")
        o = node("Add", [node("MatMul", [ctx, w(f"l{i}.wo", hidden, hidden)], f"l{i}.o"), w(f"l{i}.bo", hidden)],
                 f"l{i}.ob")
        r1 = node("Add", [x, o], f"l{i}.res1")
        ln2 = node("LayerNormalization", [r1, w(f"l{i}.ln2.g", hidden), w(f"l{i}.ln2.b", hidden)], f"l{i}.ln2",
                   axis=-1)
        h = node("Add", [node("MatMul", [ln2, w(f"l{i}.w1", hidden, 4 * hidden)], f"l{i}.f1"),
                         w(f"l{i}.b1", 4 * hidden)], f"l{i}.f1b")
        g = node("Gelu", [h], f"l{i}.gelu")
        f2 = node("Add", [node("MatMul", [g, w(f"l{i}.w2", 4 * hidden, hidden)], f"l{i}.f2"), w(f"l{i}.b2", hidden)],
                  f"l{i}.f2b")
        x = node("Add", [r1, f2], f"l{i}.res2")
    nodes.append(helper.make_node("Identity", [x], ["y"], name="out"))
    io = ([helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", seq, hidden])],
          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", seq, hidden])])
    return _save(nodes, inits, *io, path, opset=20)


def _save(nodes, inits, inputs, outputs, path, opset: int = 17) -> Path:  # noqa: ANN001
    graph = helper.make_graph(nodes, "synthetic", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    path = Path(path)
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=path.name + ".data", size_threshold=1024)
    return path
