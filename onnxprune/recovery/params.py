"""Writing recovered values back into the pruned model.

A constant input is rewritten in place only when this (node, slot) is its only user;
a shared initializer is copied on write (this node gets its own copy, the other users
keep theirs). A missing bias is added: a new input for Conv (slot 2) and Gemm (C), an
``Add`` after a MatMul (unless the MatMul's only user is already an Add with a constant
per-output operand, which then holds the bias).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from onnxprune.graph import GraphIndex, attr, set_attr


def _taken(model: onnx.ModelProto) -> set[str]:
    g = model.graph
    names = {t.name for t in g.initializer} | {vi.name for vi in g.input} | {vi.name for vi in g.output}
    names |= {vi.name for vi in g.value_info} | {n.name for n in g.node}
    for n in g.node:
        names.update(n.input)
        names.update(n.output)
    return names


def fresh_name(model: onnx.ModelProto, base: str) -> str:
    taken = _taken(model)
    k = 0
    while f"{base}{k}" in taken:
        k += 1
    return f"{base}{k}"


def set_constant(model: onnx.ModelProto, node_name: str, slot: int, value: np.ndarray) -> str:
    """Give input ``slot`` of ``node_name`` the value ``value``; returns the initializer's name."""
    index = GraphIndex(model)
    node = index.nodes[node_name]
    name = node.input[slot] if slot < len(node.input) else ""
    if name and name in index.initializers:
        others = [(n.name, s) for n, s in index.users(name) if (n.name, s) != (node_name, slot)]
        if not others and name not in index.graph_outputs:
            index.initializers[name].CopyFrom(numpy_helper.from_array(value, name))
            return name
    new = fresh_name(model, f"{name or node_name}__recovered")
    model.graph.initializer.append(numpy_helper.from_array(value, new))
    while len(node.input) <= slot:
        node.input.append("")
    node.input[slot] = new
    return new


def add_bias(model: onnx.ModelProto, node_name: str, delta: np.ndarray) -> str:
    """Add ``delta`` (one value per output channel) to the node's bias, creating one if needed.

    Returns what was done: 'updated', 'added input' or 'added Add node'."""
    index = GraphIndex(model)
    node = index.nodes[node_name]
    op = node.op_type
    if op == "Conv":
        return _add_to_input(model, index, node, 2, delta, index.const(node.input[1]).dtype)
    if op == "Gemm":
        beta = float(attr(node, "beta", 1.0))
        if beta == 0.0:
            set_attr(node, "beta", 1.0)
            if len(node.input) > 2 and node.input[2]:
                node.input[2] = ""
            beta = 1.0
        return _add_to_input(model, index, node, 2, delta / beta, index.const(node.input[1]).dtype)
    if op == "MatMul":
        return _matmul_bias(model, index, node, delta)
    raise ValueError(f"cannot add a bias to {op} '{node_name}'")


def _add_to_input(model: onnx.ModelProto, index: GraphIndex, node: onnx.NodeProto, slot: int, delta: np.ndarray,
                  dtype: np.dtype) -> str:
    name = node.input[slot] if slot < len(node.input) else ""
    old = index.const(name) if name else None
    if old is None:
        set_constant(model, node.name, slot, delta.astype(dtype))
        return "added input"
    if old.size == 1 and delta.size > 1:
        new = (old.reshape(-1).astype(np.float64) + delta).astype(old.dtype)
    else:
        new = (old.astype(np.float64) + delta.reshape(old.shape)).astype(old.dtype)
    set_constant(model, node.name, slot, new)
    return "updated"


def _matmul_bias(model: onnx.ModelProto, index: GraphIndex, node: onnx.NodeProto, delta: np.ndarray) -> str:
    out = node.output[0]
    uses = index.users(out)
    n = delta.size
    if len(uses) == 1 and uses[0][0].op_type == "Add" and out not in index.graph_outputs:
        add, slot = uses[0]
        other = add.input[1 - slot]
        c = index.const(other)
        if c is not None and c.shape and c.shape[-1] == n and int(np.prod(c.shape)) == n:
            set_constant(model, add.name, 1 - slot, (c.astype(np.float64) + delta.reshape(c.shape)).astype(c.dtype))
            return "updated"
    dtype = index.const(node.input[1]).dtype
    bias_name = fresh_name(model, f"{node.name}__recovered_bias")
    mid = fresh_name(model, f"{out}__matmul")
    add_name = fresh_name(model, f"{node.name}__recovered_add")
    model.graph.initializer.append(numpy_helper.from_array(delta.astype(dtype), bias_name))
    node.output[0] = mid
    add = onnx.helper.make_node("Add", [mid, bias_name], [out], name=add_name)
    nodes = list(model.graph.node)
    pos = next(i for i, m in enumerate(nodes) if m.name == node.name)
    model.graph.node.insert(pos + 1, add)
    for vi in model.graph.value_info:
        if vi.name == out:
            copy = onnx.ValueInfoProto()
            copy.CopyFrom(vi)
            copy.name = mid
            model.graph.value_info.append(copy)
            break
    return "added Add node"
