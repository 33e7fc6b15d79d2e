"""Interface changes: graph inputs and outputs whose shapes a plan changes.

A decoder exported with a KV cache (Hugging Face's exporters: ``past_key_values.{i}.key``
inputs [batch, kv_heads, past, head_dim], ``present.{i}.key`` outputs) reads and writes the
KV heads of every layer: removing a KV head changes those shapes, and whatever runs the
model (onnxruntime-genai, an inference server) must then allocate its cache for the kept
heads. That is allowed only when asked (``analyze(..., allow_interface_change=True)``,
``prune --allow-interface-change``, the recipe's ``allow_interface_change``). Without it
the KV heads stay and the analysis names the inputs and outputs that would change; query
heads and FFN neurons change no input or output and need no flag.

- ``cache_input``: the Concat rule's hook for a graph input concatenated with computed
  channels (the past keys / values and the new ones, along the sequence axis);
- ``block_or_record_output``: the graph outputs that carry the same channels (``present.*``);
- ``InterfaceShape``: the fix-up the rewrite applies (the declared dim becomes the kept count);
- ``interface_changes``: what changed between two models, for the report;
- ``kept_indices``: per changed input / output, the original indices kept on its axis (to
  carry a cache over, and for the masked reference of a KV-cache model).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import onnx

from onnxprune.analysis.context import Fixup

if TYPE_CHECKING:
    from onnxprune.analysis.context import RuleContext
    from onnxprune.analysis.result import Analysis
    from onnxprune.graph import GraphIndex
    from onnxprune.plan import Plan
    from onnxprune.rewrite.base import PruneContext

FLAG = "--allow-interface-change"


@dataclass(frozen=True, eq=False)
class InterfaceShape(Fixup):
    """Axis ``axis`` of graph input or output ``tensor`` holds the channels ``elems``: its
    declared dim becomes their kept count (``node``: the node that reads or writes it)."""

    tensor: str
    axis: int
    elems: np.ndarray


def reason(name: str, kind: str) -> str:
    return f"graph {kind} '{name}' would change shape (an interface change: allow it with {FLAG})"


def cache_input(ctx: RuleContext, name: str, axis: int, size: int) -> np.ndarray | None:
    """Channels for axis ``axis`` of graph input ``name`` that the current node joins with
    computed channels (a KV cache's past heads): recorded as an interface dim, and blocked
    unless interface changes are allowed. None when ``name`` is not a graph input."""
    if name not in ctx.index.graph_inputs:
        return None
    elems = ctx.new_elements(size)
    ctx.set_space(name, axis, elems)
    ctx.fixup(InterfaceShape, tensor=name, axis=axis, elems=elems)
    if not ctx.allow_interface_change:
        ctx.block(elems, reason(name, "input"))
    return elems


def block_or_record_output(ctx: RuleContext, name: str, axis: int, elems: np.ndarray) -> None:
    """A graph output's channel axis: an interface dim when it carries the channels of a
    changeable graph input (``present.*`` of ``past_key_values.*``) and changes are allowed;
    otherwise blocked (outputs keep their shapes), naming the flag where it would help."""
    cached = any(isinstance(f, InterfaceShape) and f.tensor in ctx.index.graph_inputs and ctx.uf.same(f.elems, elems)
                 for f in ctx.fixups)
    if cached and ctx.allow_interface_change:
        producer = ctx.index.producer.get(name)
        ctx.fixups.append(InterfaceShape(producer.name if producer is not None else name, name, axis, elems))
    elif cached:
        ctx.block(elems, reason(name, "output"))
    else:
        ctx.block(elems, f"reaches graph output '{name}' (outputs keep their shapes)")


def apply_interface_shape(fix: InterfaceShape, ctx: PruneContext, index: GraphIndex, entries: object) -> bool:
    """Set the declared dim of the input / output to the kept count (a RewriteShapeConstants handler)."""
    kept = ctx.kept_count(fix.elems)
    if kept == len(fix.elems):
        return False
    graph = index.model.graph
    modified = False
    for vi in (*graph.input, *graph.output):
        if vi.name == fix.tensor:
            dim = vi.type.tensor_type.shape.dim[fix.axis]
            if not dim.HasField("dim_value") or dim.dim_value != kept:
                dim.Clear()
                dim.dim_value = kept
                modified = True
    return modified


def kept_indices(analysis: Analysis, plan: Plan) -> dict[str, tuple[int, np.ndarray]]:
    """Changed graph input / output -> (axis, the original indices kept along it)."""
    from onnxprune.rewrite.base import PruneContext

    ctx = PruneContext(analysis, plan.removed_units(analysis))
    out = {}
    for fix in analysis.fixups:
        if isinstance(fix, InterfaceShape):
            keep = ctx.kept(fix.elems)
            if not keep.all():
                out[fix.tensor] = (fix.axis, np.flatnonzero(keep))
    return out


def _declared(vi: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in vi.type.tensor_type.shape.dim]


def interface_changes(original: onnx.ModelProto, pruned: onnx.ModelProto) -> list[str]:
    """'name: [old] -> [new]' for every graph input and output whose declared shape differs."""
    changes = []
    for kind in ("input", "output"):
        before = {vi.name: _declared(vi) for vi in getattr(original.graph, kind)}
        for vi in getattr(pruned.graph, kind):
            old, new = before.get(vi.name), _declared(vi)
            if old is not None and old != new:
                changes.append(f"{vi.name}: {old} -> {new}")
    return changes
