"""Ops with weights: Conv, ConvTranspose, Gemm, MatMul with a constant weight.

Their output channels are *produced* here (new elements, one per weight row); their
input channels are *consumed* (mixed by a reduction, so removing one only drops a
weight column). Weight algebra of a removal:

- Conv, W [Cout, Cin/G, k...]: output channel o -> W[o], B[o]; input channel c
  (group 1) -> W[:, c]. Grouped (1 < G, Cin/G > 1): the j-th channel of every group
  is tied into one unit, so each group keeps the same local indices and G is
  unchanged. Depthwise-like (Cin/G == 1, multiplier m): input channel g and output
  channels g*m..g*m+m-1 are one unit; G becomes the number of kept inputs.
- ConvTranspose, W [Cin, Cout/G, k...]: input c -> W[c]; output o -> W[:, o], B[o].
- Gemm: A's K axis -> B's K axis; output n -> B's N axis and C[n].
- MatMul(A, W[K, N]): A's last axis -> W[k, :]; output n -> W[:, n]. MatMul(A, Transpose(W'[N, K]))
  (a tied LM head reading the embedding table): the same on W' with the axes swapped.
"""

from __future__ import annotations

import numpy as np
import onnx

from onnxprune.analysis.context import GroupCount, RuleContext
from onnxprune.analysis.registry import Unsupported, register
from onnxprune.analysis.rules.common import rank_of, static_dim
from onnxprune.analysis.rules.elementwise import couple_axis
from onnxprune.graph import attr


def _weight_shape(node: onnx.NodeProto, ctx: RuleContext, slot: int) -> tuple[int, ...]:
    name = node.input[slot] if len(node.input) > slot else ""
    if not ctx.is_const(name):
        producer = ctx.index.producer.get(name)
        if producer is not None and producer.op_type == "DequantizeLinear":
            raise Unsupported(f"weight '{name}' of {node.op_type} is quantized (QDQ): "
                              "quantized weights and their scales are left alone")
        raise Unsupported(f"weight input '{name}' of {node.op_type} is computed, not a constant")
    shape = ctx.index.const_shape(name)
    assert shape is not None
    return shape


def _check_spatial_axes(ctx: RuleContext, x: str, allowed: set[int]) -> None:
    for axis, elems in ctx.spaces_of(x).items():
        if axis not in allowed:
            ctx.block(elems, f"channels on axis {axis} are mixed by the op's window")


@register("Conv")
def conv(node: onnx.NodeProto, ctx: RuleContext) -> None:
    x, y = node.input[0], node.output[0]
    w_shape = _weight_shape(node, ctx, 1)
    groups = int(attr(node, "group", 1))
    cout, cg = int(w_shape[0]), int(w_shape[1])
    cin = static_dim(ctx, x, 1)
    og = cout // groups
    has_bias = len(node.input) > 2 and bool(node.input[2])
    if has_bias and not ctx.is_const(node.input[2]):
        raise Unsupported(f"bias '{node.input[2]}' of Conv is computed, not a constant")
    _check_spatial_axes(ctx, x, {0, 1})
    xs = ctx.spaces_of(x).get(1)
    if cg == 1 and groups == cin and groups > 1:  # depthwise (with channel multiplier og)
        if xs is None:
            xs = ctx.opaque(x, 1, cin, f"'{x}' is not produced by a prunable op")
        out = np.repeat(xs, og)
        ctx.param(1, 0, out, "producer", is_weight=True)
        ctx.fixup(GroupCount, elems=xs)
    else:
        if xs is not None:
            if groups > 1:
                for g in range(1, groups):
                    ctx.union(xs[:cg], xs[g * cg:(g + 1) * cg])
            ctx.param(1, 1, xs[:cg], "consumer", is_weight=True)
            ctx.consumer(0, 1, xs)
        out = ctx.new_elements(cout)
        for g in range(1, groups):
            ctx.union(out[:og], out[g * og:(g + 1) * og])
        ctx.param(1, 0, out, "producer", is_weight=True)
    if has_bias:
        ctx.param(2, 0, out, "producer")
    ctx.set_space(y, 1, out)
    if xs is not None and 0 in ctx.spaces_of(x):
        ctx.set_space(y, 0, ctx.spaces_of(x)[0])


@register("ConvTranspose")
def conv_transpose(node: onnx.NodeProto, ctx: RuleContext) -> None:
    x, y = node.input[0], node.output[0]
    w_shape = _weight_shape(node, ctx, 1)
    groups = int(attr(node, "group", 1))
    cin, og = int(w_shape[0]), int(w_shape[1])
    cg = cin // groups
    has_bias = len(node.input) > 2 and bool(node.input[2])
    if has_bias and not ctx.is_const(node.input[2]):
        raise Unsupported(f"bias '{node.input[2]}' of ConvTranspose is computed, not a constant")
    _check_spatial_axes(ctx, x, {0, 1})
    xs = ctx.spaces_of(x).get(1)
    if cg == 1 and groups > 1:  # depthwise-like: input g -> outputs g*og .. g*og+og-1
        if xs is None:
            xs = ctx.opaque(x, 1, cin, f"'{x}' is not produced by a prunable op")
        out = np.repeat(xs, og)
        ctx.param(1, 0, xs, "producer", is_weight=True)
        ctx.fixup(GroupCount, elems=xs)
    else:
        if xs is not None:
            for g in range(1, groups):
                ctx.union(xs[:cg], xs[g * cg:(g + 1) * cg])
            ctx.param(1, 0, xs, "consumer", is_weight=True)
            ctx.consumer(0, 1, xs)
        out = ctx.new_elements(og * groups)
        for g in range(1, groups):
            ctx.union(out[:og], out[g * og:(g + 1) * og])
        ctx.param(1, 1, out[:og], "producer", is_weight=True)
    if has_bias:
        ctx.param(2, 0, out, "producer")
    if attr(node, "output_shape") is not None and len(attr(node, "output_shape")) == len(w_shape):
        raise Unsupported("ConvTranspose output_shape attribute includes the channel count")
    ctx.set_space(y, 1, out)


@register("Gemm")
def gemm(node: onnx.NodeProto, ctx: RuleContext) -> None:
    a, y = node.input[0], node.output[0]
    trans_a, trans_b = int(attr(node, "transA", 0)), int(attr(node, "transB", 0))
    b_shape = _weight_shape(node, ctx, 1)
    k_axis_a, m_axis_a = (0, 1) if trans_a else (1, 0)
    k_axis_b, n_axis_b = (1, 0) if trans_b else (0, 1)
    spaces = ctx.spaces_of(a)
    if k_axis_a in spaces:
        ctx.param(1, k_axis_b, spaces[k_axis_a], "consumer", is_weight=True)
        ctx.consumer(0, k_axis_a, spaces[k_axis_a])
    if m_axis_a in spaces:
        ctx.set_space(y, 0, spaces[m_axis_a])
    n = int(b_shape[n_axis_b])
    out = ctx.new_elements(n)
    ctx.param(1, n_axis_b, out, "producer", is_weight=True)
    if len(node.input) > 2 and node.input[2]:
        c = node.input[2]
        if not ctx.is_const(c):
            raise Unsupported(f"bias '{c}' of Gemm is computed, not a constant")
        c_shape = ctx.index.const_shape(c) or ()
        if len(c_shape) >= 1 and c_shape[-1] == n and n > 1:
            ctx.param(2, len(c_shape) - 1, out, "producer")
        if len(c_shape) == 2 and c_shape[0] != 1 and 0 in ctx.spaces_of(y):
            ctx.param(2, 0, ctx.spaces_of(y)[0], "param")
    ctx.set_space(y, 1, out)


@register("MatMul")
def matmul(node: onnx.NodeProto, ctx: RuleContext) -> None:
    a, b, y = node.input[0], node.input[1], node.output[0]
    transposed = _transposed_weight(ctx, b)
    if not ctx.is_const(b) and transposed is None:
        _dynamic_matmul(node, ctx)
        return
    b_shape = ctx.index.const_shape(b) if transposed is None else tuple(reversed(ctx.index.const_shape(
        transposed.input[0]) or ()))
    if len(b_shape or ()) != 2:
        raise Unsupported(f"MatMul weight '{b}' has rank {len(b_shape or ())}; only rank-2 weights are supported")
    ra = rank_of(ctx, a)
    if ra < 2:
        raise Unsupported("MatMul with a rank-1 left operand")
    # W[K, N] itself, or Transpose(W'[N, K]) (a tied LM head reads the embedding table): the
    # table is sliced under the Transpose, never copied
    at, k_axis, n_axis = (None, 0, 1) if transposed is None else (transposed.name, 1, 0)
    slot = 1 if transposed is None else 0
    k_elems = None
    for axis, elems in ctx.spaces_of(a).items():
        if axis == ra - 1:
            ctx.param(slot, k_axis, elems, "consumer", is_weight=True, at=at)
            ctx.consumer(0, axis, elems)
            k_elems = elems
        else:
            ctx.set_space(y, axis, elems)
    out = ctx.new_elements(int(b_shape[1]))
    ctx.param(slot, n_axis, out, "producer", is_weight=True, at=at)
    ctx.set_space(y, ra - 1, out)
    if transposed is not None:  # the MACs are the MatMul's, the weight the Transpose's input
        ctx.mac_axes[node.name] = [out] + ([k_elems] if k_elems is not None else [])
        ctx.mac_of[transposed.name] = node.name


def _transposed_weight(ctx: RuleContext, name: str) -> onnx.NodeProto | None:
    """The Transpose node when ``name`` is a 2-D constant transposed (perm [1, 0]) and read
    by nothing else (preparation leaves such Transposes of weights other nodes read too)."""
    node = ctx.index.producer.get(name)
    if node is None or node.op_type != "Transpose" or not ctx.is_const(node.input[0]):
        return None
    shape = ctx.index.const_shape(node.input[0]) or ()
    perm = attr(node, "perm")
    if len(shape) != 2 or (perm is not None and list(perm) != [1, 0]) or len(ctx.index.uses.get(name, ())) != 1:
        return None
    return node


def _dynamic_matmul(node: onnx.NodeProto, ctx: RuleContext, transpose_b: bool = False) -> None:
    """MatMul of two computed tensors (attention scores, context): batch axes (heads)
    pass through and couple A with B; the contracted axis is mixed (a consumer of both
    sides, coupled); A's rows and B's columns pass through. ``transpose_b``: A @ B^T
    (FusedMatMul's transB), B's last axis is contracted and its rows pass."""
    a, b, y = node.input[0], node.input[1], node.output[0]
    if ctx.is_const(a):
        raise Unsupported(f"{node.op_type} with a constant left operand")
    ra, rb, ry = rank_of(ctx, a), rank_of(ctx, b), rank_of(ctx, y)
    if ra < 2 or rb < 2:
        raise Unsupported(f"{node.op_type} with a rank-1 operand")
    b_in, b_out = (rb - 1, rb - 2) if transpose_b else (rb - 2, rb - 1)
    batch_axes = {ax + ry - ra for ax in ctx.spaces_of(a) if ax < ra - 2}
    batch_axes |= {ax + ry - rb for ax in ctx.spaces_of(b) if ax < rb - 2}
    for out_axis in sorted(batch_axes):
        ctx.set_space(y, out_axis, couple_axis(node, ctx, out_axis, ry))
    ka, kb = ctx.spaces_of(a).get(ra - 1), ctx.spaces_of(b).get(b_in)
    if ka is not None or kb is not None:
        size = len(ka if ka is not None else kb)
        reason = f"the other operand of this {node.op_type} is not produced by a prunable op"
        ka = ka if ka is not None else ctx.opaque(a, ra - 1, size, reason)
        kb = kb if kb is not None else ctx.opaque(b, b_in, size, reason)
        ctx.union(ka, kb)
        ctx.consumer(0, ra - 1, ka)
        ctx.consumer(1, b_in, kb)
    if ra - 2 in ctx.spaces_of(a):
        ctx.set_space(y, ry - 2, ctx.spaces_of(a)[ra - 2])
    if b_out in ctx.spaces_of(b):
        ctx.set_space(y, ry - 1, ctx.spaces_of(b)[b_out])
    # MACs = |output| x K: they scale with every live output axis and the contracted one
    ctx.mac_axes[node.name] = list(ctx.spaces_of(y).values()) + ([ka] if ka is not None else [])

