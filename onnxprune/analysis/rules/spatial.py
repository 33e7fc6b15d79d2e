"""Ops that work along spatial axes: pooling, Resize/Upsample, Pad, reductions,
Softmax-like ops, and Shape. Channels pass through as long as the op does not act
along a channel axis; when it does, the channels are blocked (a reduction or a
softmax over channels computes something else once a channel is gone).
"""

from __future__ import annotations

import numpy as np
import onnx

from onnxprune.analysis.context import RuleContext, ShapeEntry
from onnxprune.analysis.registry import Unsupported, register
from onnxprune.analysis.rules.shape_expr import resolve
from onnxprune.analysis.rules.common import int_list, norm_axis, passthrough, rank_of
from onnxprune.graph import attr

POOLS = ("MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool",
         "MaxRoiPool")


@register(*POOLS)
def pool(node: onnx.NodeProto, ctx: RuleContext) -> None:
    x = node.input[0]
    if len([o for o in node.output if o]) > 1:
        raise Unsupported(f"{node.op_type} with an indices output")
    for axis, elems in ctx.spaces_of(x).items():
        if axis > 1:
            ctx.block(elems, f"{node.op_type} pools along this channel axis")
    passthrough(ctx, x, node.output[0], {a: a for a in ctx.spaces_of(x) if a <= 1})


@register("Resize", "Upsample")
def resize(node: onnx.NodeProto, ctx: RuleContext) -> None:
    x, y = node.input[0], node.output[0]
    in_shape, out_shape = ctx.shape(x), ctx.shape(y)
    sizes_slot = 3 if node.op_type == "Resize" else None
    axes = attr(node, "axes")  # opset 18: sizes / scales are given for these axes only
    rank = len(in_shape) if in_shape is not None else 0
    axes = [norm_axis(int(a), rank) for a in axes] if axes is not None else None
    if not ctx.spaces_of(x):
        return  # no channels flow: nothing to check
    sizes = None
    if sizes_slot is not None and len(node.input) > sizes_slot and node.input[sizes_slot]:
        # constant, or built at run time: F.interpolate(x, size=...) writes Concat(Shape(x)[:2], size)
        sizes = resolve(ctx, node.input[sizes_slot], (node.name, sizes_slot))
        if sizes is None:
            raise Unsupported(f"{node.op_type} sizes are computed in a way that cannot be followed")
    for axis, elems in ctx.spaces_of(x).items():
        if in_shape is None or out_shape is None or in_shape[axis] != out_shape[axis]:
            raise Unsupported(f"{node.op_type} resizes along a channel axis (or its shape is unknown)")
        ctx.set_space(y, axis, elems)
        position = axis if axes is None else (axes.index(axis) if axis in axes else None)
        if sizes is None or position is None or position >= len(sizes):
            continue
        entry = sizes[position]
        if entry.ref is not None:  # the run-time channel count of these same units: follows by itself
            copied = ctx.spaces_of(entry.ref[0]).get(entry.ref[1])
            if copied is None or not ctx.uf.same(copied, elems):
                raise Unsupported(f"{node.op_type} sizes copy a channel count from another tensor's shape")
        elif entry.const_at is not None:
            at, slot, index = entry.const_at
            ctx.fixup(ShapeEntry, at=at, slot=slot, index=index, elems=elems)
        else:
            raise Unsupported(f"{node.op_type} size of a channel axis is computed")


@register("Pad")
def pad(node: onnx.NodeProto, ctx: RuleContext) -> None:
    x = node.input[0]
    rank = rank_of(ctx, x)
    pads = int_list(ctx, node, "pads", 1) or [0] * (2 * rank)
    axes = int_list(ctx, node, "axes", 3) if ctx.index.opset >= 18 else None
    axes = [norm_axis(a, rank) for a in axes] if axes else list(range(rank))
    n = len(axes)
    padded = {axes[i] for i in range(n) if pads[i] != 0 or pads[i + n] != 0}
    for axis in ctx.spaces_of(x):
        if axis in padded:
            raise Unsupported("Pad adds entries along a channel axis")
    passthrough(ctx, x, node.output[0])


REDUCE = ("ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceProd", "ReduceL1", "ReduceL2",
          "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare")


@register(*REDUCE)
def reduce(node: onnx.NodeProto, ctx: RuleContext) -> None:
    x = node.input[0]
    rank = rank_of(ctx, x)
    axes = int_list(ctx, node, "axes", 1)
    if not axes:
        if int(attr(node, "noop_with_empty_axes", 0)):
            passthrough(ctx, x, node.output[0])
            return
        axes = list(range(rank))
    reduced = {norm_axis(a, rank) for a in axes}
    _reduce_along(node, ctx, reduced, keepdims=bool(attr(node, "keepdims", 1)))


@register("ArgMax", "ArgMin")
def arg_reduce(node: onnx.NodeProto, ctx: RuleContext) -> None:
    rank = rank_of(ctx, node.input[0])
    reduced = {norm_axis(int(attr(node, "axis", 0)), rank)}
    _reduce_along(node, ctx, reduced, keepdims=bool(attr(node, "keepdims", 1)))


def _reduce_along(node: onnx.NodeProto, ctx: RuleContext, reduced: set[int], keepdims: bool) -> None:
    x, rank = node.input[0], rank_of(ctx, node.input[0])
    norm_statistic = (keepdims and reduced == {rank - 1} and node.op_type == "ReduceMean"
                      and _layer_norm_statistic(node, ctx))
    statistic = ctx.prune_hidden and norm_statistic
    for axis, elems in ctx.spaces_of(x).items():
        if axis in reduced and not statistic:
            ctx.block(elems, f"{node.op_type} reduces over this channel axis"
                      + (" (a LayerNorm / RMSNorm statistic: --prune-hidden prunes it approximately)"
                         if norm_statistic else ""))
    kept = [a for a in range(rank) if keepdims or a not in reduced]
    if statistic:  # approximate by design, as LayerNormalization under --prune-hidden: the mean / variance
        for axis, elems in ctx.spaces_of(x).items():  # is over the kept channels; nothing flows on
            if axis not in reduced:
                ctx.set_space(node.output[0], kept.index(axis), elems)
        return
    mapping = {a: kept.index(a) for a in ctx.spaces_of(x) if a not in reduced}
    passthrough(ctx, x, node.output[0], mapping)


def _layer_norm_statistic(node: onnx.NodeProto, ctx: RuleContext) -> bool:
    """Whether a ReduceMean over the last axis is one of a LayerNorm or RMSNorm written out in
    primitive ops (Paddle's LayerNorm, T5 / LLaMA RMSNorm): the mean that ``Sub(x, mean)``
    centres x with, or a mean of squares (squared by Pow 2 or Mul): the variance
    ``mean((x - mean(x))^2)`` or RMSNorm's ``mean(x^2)``."""
    index, x = ctx.index, node.input[0]
    if any(u.op_type == "Sub" and slot == 1 and u.input[0] == x for u, slot in index.users(node.output[0])):
        return True
    square = index.producer.get(x)
    if square is None:
        return False
    if square.op_type == "Pow":
        exponent = ctx.const(square.input[1])
        if exponent is None or np.asarray(exponent).size != 1 or float(np.asarray(exponent).reshape(-1)[0]) != 2.0:
            return False
    elif not (square.op_type == "Mul" and square.input[0] == square.input[1]):
        return False
    return True


@register("Softmax", "LogSoftmax", "Hardmax")
def softmax(node: onnx.NodeProto, ctx: RuleContext) -> None:
    x = node.input[0]
    rank = rank_of(ctx, x)
    axis = norm_axis(int(attr(node, "axis", -1 if ctx.index.opset >= 13 else 1)), rank)
    along = {axis} if ctx.index.opset >= 13 else set(range(axis, rank))
    for a, elems in ctx.spaces_of(x).items():
        if a in along:
            ctx.block(elems, f"{node.op_type} normalises over this channel axis")
    passthrough(ctx, x, node.output[0])


@register("Shape")
def shape(node: onnx.NodeProto, ctx: RuleContext) -> None:
    """Shape reads sizes; harmless unless a channel count flows into the computation.

    The Shape's value is followed through shape plumbing (Cast, Gather, Slice, Concat,
    (Un)Squeeze) to where it is used. A Reshape target and Resize sizes are checked by their
    rules (entry by entry); any other use of a live channel count blocks those channels.
    """
    x = node.input[0]
    live = ctx.spaces_of(x)
    if not live:
        return
    rank = rank_of(ctx, x)
    start = norm_axis(int(attr(node, "start", 0)), rank)
    end = attr(node, "end")
    end = rank if end is None else norm_axis(int(end), rank)
    axes = list(range(start, min(end, rank)))
    for user, slot, read in _terminal_uses(ctx, node.output[0], axes):
        if (user.op_type == "Reshape" and slot == 1) or (user.op_type == "Resize" and slot == 3):
            continue  # a target / sizes input: the Reshape / Resize rule follows it entry by entry
        for axis in set(read) & set(live):
            ctx.block(live[axis], f"its channel count is read by Shape node '{node.name}' "
                                  f"and used by {user.op_type} '{user.name}'")


def _terminal_uses(ctx: RuleContext, name: str, axes: list[int], depth: int = 0):  # noqa: ANN202
    """(node, slot, axes it may read) for the uses of a shape value, past shape plumbing."""
    for user, slot in ctx.index.users(name):
        picked = _picked(ctx, user, slot, axes)
        if picked is None or depth > 16 or not user.output:
            yield user, slot, axes
        else:
            yield from _terminal_uses(ctx, user.output[0], picked, depth + 1)


def _picked(ctx: RuleContext, user: onnx.NodeProto, slot: int, axes: list[int]) -> list[int] | None:
    op = user.op_type
    if op == "Concat":
        return axes  # positions shift; a Reshape target behind it is resolved entry by entry
    if slot != 0:
        return None
    if op in ("Cast", "Identity", "Unsqueeze", "Squeeze"):
        return axes
    if op == "Gather" and int(attr(user, "axis", 0)) == 0:
        idx = ctx.const(user.input[1])
        if idx is None:
            return None
        return [axes[int(i)] for i in np.asarray(idx).reshape(-1)]
    if op == "Slice" and ctx.is_const(user.input[1]) and ctx.is_const(user.input[2]):
        steps = ctx.const(user.input[4]) if len(user.input) > 4 and user.input[4] else np.ones(1)
        if steps is None or int(np.asarray(steps).reshape(-1)[0]) != 1:
            return None
        lo, hi, _ = slice(int(ctx.const(user.input[1]).reshape(-1)[0]),
                          int(ctx.const(user.input[2]).reshape(-1)[0])).indices(len(axes))
        return axes[lo:hi]
    return None
