"""Unary activations and broadcasting elementwise ops: channels pass through unchanged.

Broadcasting follows numpy: axes align from the right. On an output channel axis,
each input either carries the same channels (live: coupled by union), broadcasts
(size 1: nothing to do), is a constant (a per-channel parameter: sliced), or is a
computed tensor nothing prunable produced (its channels cannot be removed: blocked).
"""

from __future__ import annotations

import numpy as np
import onnx

from onnxprune.analysis.context import RuleContext
from onnxprune.analysis.registry import Unsupported, register
from onnxprune.analysis.rules.common import passthrough, rank_of

UNARY = (
    "Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu", "Celu", "Gelu",
    "Erf", "Softplus", "Softsign", "Mish", "ThresholdedRelu", "Shrink", "Neg", "Abs", "Exp", "Log",
    "Sqrt", "Reciprocal", "Floor", "Ceil", "Round", "Sign", "Sin", "Cos", "Tan", "Not", "IsNaN",
    "IsInf", "Identity", "Cast", "CastLike", "Dropout", "Swish",
)


@register(*UNARY)
def unary(node: onnx.NodeProto, ctx: RuleContext) -> None:
    """Elementwise on one data input: every output keeps the input's channel spaces."""
    for out in node.output:
        if out:
            passthrough(ctx, node.input[0], out)


@register("Clip")
def clip(node: onnx.NodeProto, ctx: RuleContext) -> None:
    for slot in (1, 2):
        if len(node.input) > slot and node.input[slot] and ctx.spaces_of(node.input[slot]):
            raise Unsupported("Clip bounds carry channels")
    passthrough(ctx, node.input[0], node.output[0])


BROADCAST = ("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "PRelu", "Where",
             "Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "And", "Or", "Xor", "Mod",
             "BitShift")


@register(*BROADCAST)
def broadcast(node: onnx.NodeProto, ctx: RuleContext) -> None:
    """Couple every input that carries an output channel axis; slice constant per-channel operands."""
    out = node.output[0]
    out_rank = max(rank_of(ctx, name) for name in node.input if name)
    axes: set[int] = set()
    for name in node.input:
        if name:
            r = rank_of(ctx, name)
            axes.update(a + out_rank - r for a in ctx.spaces_of(name))
    for out_axis in sorted(axes):
        ctx.set_space(out, out_axis, couple_axis(node, ctx, out_axis, out_rank))


def couple_axis(node: onnx.NodeProto, ctx: RuleContext, out_axis: int, out_rank: int) -> np.ndarray:
    """The element ids of output axis ``out_axis``, coupling every input that carries it (numpy
    broadcasting: axes align from the right)."""
    size = _axis_size(node, ctx, out_axis, out_rank)
    live: list[np.ndarray] = []
    for name in node.input:
        if not name:
            continue
        in_axis = out_axis - (out_rank - rank_of(ctx, name))
        elems = ctx.spaces_of(name).get(in_axis) if in_axis >= 0 else None
        if elems is not None and len(elems) == size:
            live.append(elems)
        elif elems is not None:  # a live channel space broadcast against a larger one
            ctx.block(elems, f"channels of '{name}' are broadcast against {size} channels")
    base = live[0]
    for elems in live[1:]:
        ctx.union(base, elems)
    for slot, name in enumerate(node.input):
        if not name:
            continue
        in_axis = out_axis - (out_rank - rank_of(ctx, name))
        if in_axis < 0 or ctx.spaces_of(name).get(in_axis) is not None:
            continue
        d = ctx.dim(name, in_axis)
        if d == 1:
            continue
        if ctx.is_const(name):
            ctx.param(slot, in_axis, base, "param")
        elif d == size:
            ctx.union(base, ctx.opaque(name, in_axis, size, f"'{name}' is not produced by a prunable op"))
        else:
            raise Unsupported(f"cannot tell how '{name}' broadcasts on channel axis {out_axis}")
    return base


def _axis_size(node: onnx.NodeProto, ctx: RuleContext, out_axis: int, out_rank: int) -> int:
    for name in node.input:
        if name:
            in_axis = out_axis - (out_rank - rank_of(ctx, name))
            elems = ctx.spaces_of(name).get(in_axis) if in_axis >= 0 else None
            if elems is not None and len(elems) > 1:
                return len(elems)
    for name in node.input:
        if name:
            elems = ctx.spaces_of(name).get(out_axis - (out_rank - rank_of(ctx, name)))
            if elems is not None:
                return len(elems)
    raise Unsupported("no channel axis")  # unreachable: called only for live axes
