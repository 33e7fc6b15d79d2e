"""Helpers shared by the rules."""

from __future__ import annotations

import numpy as np
import onnx

from onnxprune.analysis.context import RuleContext
from onnxprune.analysis.registry import Unsupported
from onnxprune.graph import attr


def static_dim(ctx: RuleContext, tensor: str, axis: int) -> int:
    """A dimension that must be static for pruning; Unsupported otherwise."""
    d = ctx.dim(tensor, axis)
    if not isinstance(d, int):
        raise Unsupported(f"size of axis {axis} of '{tensor}' is unknown (shape inference could not resolve it)")
    return d


def rank_of(ctx: RuleContext, tensor: str) -> int:
    s = ctx.shape(tensor)
    if s is None:
        raise Unsupported(f"shape of '{tensor}' is unknown (shape inference could not resolve it)")
    return len(s)


def norm_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def passthrough(ctx: RuleContext, src: str, dst: str, axis_map: dict[int, int] | None = None) -> None:
    """Copy src's live spaces to dst; axis_map renumbers axes (a missing axis is an error)."""
    for axis, elems in ctx.spaces_of(src).items():
        out_axis = axis if axis_map is None else axis_map.get(axis)
        if out_axis is None:
            raise Unsupported(f"channel axis {axis} of '{src}' does not survive this op")
        ctx.set_space(dst, out_axis, elems)


def int_list(ctx: RuleContext, node: onnx.NodeProto, attr_name: str, slot: int) -> list[int] | None:
    """An int list given as an attribute (older opsets) or a constant input (newer ones)."""
    value = attr(node, attr_name)
    if value is not None:
        return [int(v) for v in value]
    if len(node.input) > slot and node.input[slot]:
        arr = ctx.const(node.input[slot])
        if arr is None:
            raise Unsupported(f"input '{node.input[slot]}' ({attr_name}) is computed, not constant")
        return [int(v) for v in np.asarray(arr).reshape(-1)]
    return None
