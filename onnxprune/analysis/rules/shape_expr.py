"""Reading computed shape tensors entry by entry.

Exporters build Reshape targets at run time (``Concat(Unsqueeze(Gather(Shape(x), 0)),
[-1])`` for ``x.view(x.size(0), -1)``). ``resolve`` follows such a chain through Concat,
Cast, Identity, (Un)Squeeze, Gather and Slice back to constants and Shape ops, and says
for each entry either its constant value and where that constant can be edited, or which
tensor axis it copies at run time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from onnxprune.analysis.context import RuleContext
from onnxprune.graph import Dim, attr

PASS_THROUGH = ("Cast", "Identity", "Unsqueeze", "Squeeze")


@dataclass(frozen=True)
class Entry:
    value: Dim  # the entry's value when known (an int), or a symbolic dim
    const_at: tuple[str, int, int] | None = None  # (node, input slot, flat index) of an editable constant
    ref: tuple[str, int] | None = None  # (tensor, axis) whose run-time size this entry copies


def resolve(ctx: RuleContext, name: str, reader: tuple[str, int], depth: int = 0) -> list[Entry] | None:
    """Entries of a 1-D int shape tensor, or None when it cannot be followed."""
    if depth > 16:
        return None
    if ctx.is_const(name):
        values = np.asarray(ctx.const(name)).reshape(-1)
        return [Entry(int(v), const_at=(reader[0], reader[1], i)) for i, v in enumerate(values)]
    node = ctx.index.producer.get(name)
    if node is None:
        return None
    op = node.op_type
    if op == "Shape":
        shape = ctx.shape(node.input[0])
        if shape is None:
            return None
        start, end = attr(node, "start", 0), attr(node, "end")
        axes = list(range(len(shape)))[start:end]
        return [Entry(shape[a], ref=(node.input[0], a)) for a in axes]
    if op == "Concat":
        entries: list[Entry] = []
        for slot, part in enumerate(node.input):
            got = resolve(ctx, part, (node.name, slot), depth + 1)
            if got is None:
                return None
            entries.extend(got)
        return entries
    if op in PASS_THROUGH:
        return resolve(ctx, node.input[0], (node.name, 0), depth + 1)
    if op == "Reshape":  # a 1-D shape tensor reshaped to 1-D ([-1] or [n]): the same entries
        target = ctx.const(node.input[1])
        if target is None or np.asarray(target).size != 1:
            return None
        return resolve(ctx, node.input[0], (node.name, 0), depth + 1)
    if op == "Where":
        return _expand_sizes(ctx, node, depth)
    if op in ("Gather", "Slice"):
        data = resolve(ctx, node.input[0], (node.name, 0), depth + 1)
        if data is None:
            return None
        return _select(ctx, node, data)
    return None


def _expand_sizes(ctx: RuleContext, node: onnx.NodeProto, depth: int) -> list[Entry] | None:
    """torch's export of ``t.expand(sizes)``: ``Where(sizes == -1, ones, sizes)``, -1 meaning
    "keep this dim" (an Expand size of 1). Entries of ``sizes``, with -1 turned into 1."""
    cond, ones, sizes = node.input
    test = ctx.index.producer.get(cond)
    if test is None or test.op_type != "Equal" or test.input[0] != sizes or not _all_equal(ctx, test.input[1], -1):
        return None
    if not _all_equal(ctx, ones, 1):
        return None
    entries = resolve(ctx, sizes, (node.name, 2), depth + 1)
    if entries is None:
        return None
    return [Entry(1) if e.ref is None and e.value == -1 else e for e in entries]


def _all_equal(ctx: RuleContext, name: str, value: int, depth: int = 0) -> bool:
    """Whether a tensor is ``value`` everywhere: a constant, or ConstantOfShape(value), or that
    times a constant (torch writes -1s as ConstantOfShape(shape) * -1)."""
    if ctx.is_const(name):
        return bool(np.all(np.asarray(ctx.const(name)) == value))
    node = ctx.index.producer.get(name)
    if node is None or depth > 4:
        return False
    if node.op_type == "ConstantOfShape":
        fill = next((a.t for a in node.attribute if a.name == "value"), None)
        filled = 0 if fill is None else np.asarray(onnx.numpy_helper.to_array(fill)).reshape(-1)[0]
        return bool(filled == value)
    if node.op_type == "Mul":
        for one, other in ((0, 1), (1, 0)):
            if _all_equal(ctx, node.input[one], 1, depth + 1) and ctx.is_const(node.input[other]):
                return bool(np.all(np.asarray(ctx.const(node.input[other])) == value))
    if node.op_type in PASS_THROUGH:
        return _all_equal(ctx, node.input[0], value, depth + 1)
    return False


def _select(ctx: RuleContext, node, data: list[Entry]) -> list[Entry] | None:  # noqa: ANN001
    if node.op_type == "Gather":
        idx = ctx.const(node.input[1])
        if idx is None:
            return None
        return [data[int(i)] for i in np.asarray(idx).reshape(-1)]
    starts, ends = ctx.const(node.input[1]), ctx.const(node.input[2])
    if starts is None or ends is None or (len(node.input) > 3 and node.input[3] and
                                          int(np.asarray(ctx.const(node.input[3])).reshape(-1)[0]) != 0):
        return None
    if len(node.input) > 4 and node.input[4]:
        steps = ctx.const(node.input[4])
        if steps is None or int(np.asarray(steps).reshape(-1)[0]) != 1:
            return None
    lo, hi, _ = slice(int(np.asarray(starts).reshape(-1)[0]), int(np.asarray(ends).reshape(-1)[0])).indices(len(data))
    return data[lo:hi]


def effective_shape(in_shape: tuple[Dim, ...], entries: list[Entry]) -> list[Dim] | None:
    """The output shape a Reshape with these target entries produces (0 and -1 resolved)."""
    out: list[Dim] = []
    minus_one = None
    for i, e in enumerate(entries):
        if e.ref is not None:
            out.append(e.value)
        elif e.value == 0:
            out.append(in_shape[i] if i < len(in_shape) else None)
        elif e.value == -1:
            minus_one = i
            out.append(None)
        else:
            out.append(e.value)
    if minus_one is not None:
        sym_in = sorted(str(d) for d in in_shape if not isinstance(d, int))
        sym_out = sorted(str(d) for j, d in enumerate(out) if j != minus_one and not isinstance(d, int))
        if sym_in != sym_out:
            return None
        vol_in = int(np.prod([d for d in in_shape if isinstance(d, int)]))
        vol_out = int(np.prod([d for j, d in enumerate(out) if j != minus_one and isinstance(d, int)]))
        if vol_out == 0 or vol_in % vol_out:
            return None
        out[minus_one] = vol_in // vol_out
    return out
