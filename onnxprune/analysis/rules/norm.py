"""Normalisation ops.

Per-channel normalisations (BatchNormalization, InstanceNormalization, GroupNormalization
with one channel per group) pass channels through and own per-channel parameters that
are sliced with them. Normalisations whose statistics are taken *over* the channel axis
(LayerNormalization over it, GroupNormalization with several channels per group,
LpNormalization along it) would compute different values once a channel is gone, so
those channels are blocked.
"""

from __future__ import annotations

import onnx

from onnxprune.analysis.context import RuleContext
from onnxprune.analysis.registry import Unsupported, register
from onnxprune.analysis.rules.common import norm_axis, passthrough, rank_of, static_dim
from onnxprune.graph import attr


@register("BatchNormalization")
def batch_norm(node: onnx.NodeProto, ctx: RuleContext) -> None:
    if len([o for o in node.output if o]) > 1:
        raise Unsupported("BatchNormalization in training mode (running statistics as outputs)")
    _per_channel(node, ctx, param_slots=(1, 2, 3, 4))


@register("InstanceNormalization")
def instance_norm(node: onnx.NodeProto, ctx: RuleContext) -> None:
    _per_channel(node, ctx, param_slots=(1, 2))


@register("GroupNormalization")
def group_norm(node: onnx.NodeProto, ctx: RuleContext) -> None:
    x = node.input[0]
    if 1 in ctx.spaces_of(x) and int(attr(node, "num_groups")) != static_dim(ctx, x, 1):
        raise Unsupported("GroupNormalization takes statistics over several channels per group")
    _per_channel(node, ctx, param_slots=(1, 2))


def _per_channel(node: onnx.NodeProto, ctx: RuleContext, param_slots: tuple[int, ...]) -> None:
    x, y = node.input[0], node.output[0]
    passthrough(ctx, x, y)
    elems = ctx.spaces_of(x).get(1)
    if elems is None:
        return
    for slot in param_slots:
        if len(node.input) > slot and node.input[slot]:
            if not ctx.is_const(node.input[slot]):
                raise Unsupported(f"parameter '{node.input[slot]}' of {node.op_type} is computed")
            ctx.param(slot, 0, elems, "param", is_weight=(slot == 1))


@register("LayerNormalization")
def layer_norm(node: onnx.NodeProto, ctx: RuleContext) -> None:
    x = node.input[0]
    rank = rank_of(ctx, x)
    first = norm_axis(int(attr(node, "axis", -1)), rank)
    for axis, elems in ctx.spaces_of(x).items():
        if axis < first:
            continue
        if ctx.prune_hidden and axis == rank - 1 and first == rank - 1:
            # approximate by design (statistics change): allowed only when asked for
            for slot in (1, 2):
                if len(node.input) > slot and node.input[slot] and ctx.is_const(node.input[slot]):
                    ctx.param(slot, len(ctx.index.const_shape(node.input[slot]) or (0,)) - 1, elems, "param",
                              is_weight=(slot == 1))
            continue
        ctx.block(elems, "LayerNormalization takes its statistics over this channel axis "
                         "(--prune-hidden prunes it approximately)")
    for out in node.output[:1]:
        passthrough(ctx, x, out)


@register("LpNormalization")
def lp_norm(node: onnx.NodeProto, ctx: RuleContext) -> None:
    x = node.input[0]
    axis = norm_axis(int(attr(node, "axis", -1)), rank_of(ctx, x))
    if axis in ctx.spaces_of(x):
        ctx.block(ctx.spaces_of(x)[axis], "LpNormalization normalises over this channel axis")
    passthrough(ctx, x, node.output[0])
