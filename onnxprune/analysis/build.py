"""Walk a prepared model with the per-op rules and turn the result into groups."""

from __future__ import annotations

import fnmatch
import logging
import math
from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import onnx

from onnxprune.analysis import rules as _rules  # noqa: F401 - registers the rules
from onnxprune.analysis.context import RuleContext
from onnxprune.analysis.registry import Unsupported, rule_for
from onnxprune.analysis.rules.fused import understood
from onnxprune.analysis.query_heads import block_parents, tie_parents
from onnxprune.interface import block_or_record_output
from onnxprune.analysis.result import Analysis, BlockedRegion, Group
from onnxprune.analysis.rules.quant import analysis_index, quantized_ops
from onnxprune.analysis.flops import model_cost, node_macs
from onnxprune.analysis.weighted_ops import weighted_op
from onnxprune.graph import GraphIndex, subgraph_inputs
from onnxprune.io.modelio import fingerprint

log = logging.getLogger(__name__)

MAX_REASONS = 4


def _distinct(ids: np.ndarray) -> np.ndarray:
    """The sorted distinct values of an integer array. (``np.unique`` without return_*
    options imports ``numpy.ma`` on its first call: 15 ms of a cold analysis.)"""
    s = np.sort(ids, axis=None)
    return s[np.concatenate(([True], s[1:] != s[:-1]))] if s.size else s


def analyze(model: onnx.ModelProto, *, ignore: Sequence[str] = (), prune_hidden: bool = False,
            allow_interface_change: bool = False, mac_shapes: onnx.ModelProto | None = None) -> Analysis:
    """Find the coupled channel groups of a prepared model (see ``onnxprune.prepare.normalize``).

    ``ignore`` holds node names or fnmatch patterns whose output channels must stay (their
    input channels follow their producers, as Torch-Pruning's ``ignored_layers``).
    ``prune_hidden`` lets channels through LayerNormalization over the last axis (a
    transformer's residual stream): pruning them changes LayerNorm's statistics, so the
    result is approximate (no longer equal to the masked model; use recovery).
    ``allow_interface_change`` lets graph inputs and outputs change shape where they carry
    channels (a KV cache's heads: ``onnxprune.interface``).
    ``mac_shapes``: the same graph with static input shapes (``prepare.normalize.shaped_copy``),
    whose shapes count the MACs; without it a dynamic axis counts as 1 (right for a batch, not
    for an image's height and width).
    """
    index = analysis_index(model)  # quantized (QDQ) weights read as the constants they dequantise
    ctx = RuleContext(index, prune_hidden=prune_hidden, allow_interface_change=allow_interface_change)
    for node in index.topo_nodes():
        ctx.node = node
        _block_subgraph_reads(ctx, node)
        rule, reason = rule_for(node)
        try:
            if rule is None:
                raise Unsupported(reason)
            rule(node, ctx)
        except Unsupported as exc:
            _left_alone(ctx, node, str(exc))
    ctx.node = None
    tie_parents(ctx)  # the key and value repeats of one layer repeat the same KV heads
    _block_ignored(ctx, index, ignore)
    for name in index.graph_outputs:
        for axis, elems in ctx.spaces_of(name).items():
            block_or_record_output(ctx, name, axis, elems)  # a KV cache's present.*: an interface change
    return _collect(ctx, index, model, analysis_index(mac_shapes) if mac_shapes is not None else index)


def _block_subgraph_reads(ctx: RuleContext, node: onnx.NodeProto) -> None:
    """Channels read from the outer scope inside an If/Loop/Scan body are left alone."""
    for name in subgraph_inputs(node):
        for elems in ctx.spaces_of(name).values():
            ctx.block(elems, f"'{name}' is read inside a subgraph of {node.op_type} "
                             f"'{node.name}' (control flow: subgraphs are not analysed)")


def _left_alone(ctx: RuleContext, node: onnx.NodeProto, reason: str) -> None:
    """Block what the node reads; for a weighted op, also its output channels (so they are
    reported, not silently missing)."""
    ctx.block_all_inputs(reason)
    ctx.block(np.zeros(0, dtype=np.int64), reason)  # the node is listed even when nothing live reached it
    spec = weighted_op(node)
    axis = spec.output_axis if spec is not None else None
    shape = ctx.shape(node.output[0]) if node.output else None
    if axis is not None and shape and isinstance(shape[axis], int) and not ctx.spaces_of(node.output[0]):
        ctx.opaque(node.output[0], axis % len(shape), int(shape[axis]), reason)


def _block_ignored(ctx: RuleContext, index: GraphIndex, patterns: Sequence[str]) -> None:
    for pattern in patterns:
        matched = [n for n in index.nodes.values() if fnmatch.fnmatchcase(n.name, pattern)]
        if not matched:
            log.warning("--ignore pattern %r matches no node", pattern)
        for node in matched:  # its output channels stay; its inputs follow their producers (as TP)
            ctx.node = node
            for name in node.output:
                for elems in ctx.spaces_of(name).values():
                    ctx.block(elems, f"node '{node.name}' is ignored by the user (pattern {pattern!r})")
    ctx.node = None


def _collect(ctx: RuleContext, index: GraphIndex, model: onnx.ModelProto, mac_index: GraphIndex) -> Analysis:
    roots = ctx.uf.roots()
    reasons: dict[int, list[str]] = defaultdict(list)
    blocked_by: dict[tuple[str | None, str | None, str], list[np.ndarray]] = defaultdict(list)
    for rec in ctx.blocks:
        blocked_by[(rec.node, rec.op, rec.reason)].append(rec.elems)
        for r in _distinct(roots[rec.elems]).tolist():
            if len(reasons[r]) < MAX_REASONS and rec.reason not in reasons[r]:
                reasons[r].append(rec.reason)
    macs = {n.name: node_macs(mac_index, n) for n in model.graph.node}
    unit_params, unit_macs = _unit_costs(ctx, index, roots, macs)
    by_sig = _signatures(ctx, roots)
    group_of = np.full(len(roots), -1, dtype=np.int64)  # root -> index of its group
    sigs = sorted(by_sig)
    for gi, sig in enumerate(sigs):
        group_of[by_sig[sig]] = gi
    roles = _group_roles(ctx, roots, group_of, len(sigs))
    groups = [
        _make_group(ctx, sig, by_sig[sig], roots, reasons, roles[gi], unit_params, unit_macs)
        for gi, sig in enumerate(sigs)
    ]
    groups = block_parents(groups, roots, ctx.fixups)  # a KV head goes with its query heads
    blocked = [BlockedRegion(node, op, reason, len(_distinct(np.concatenate(elems))))
               for (node, op, reason), elems in blocked_by.items()]
    total_params = model_cost(model, index).params
    return Analysis(
        fingerprint=fingerprint(model), groups=groups, blocked=blocked, roots=roots, spaces=ctx.spaces,
        params=ctx.params, consumers=ctx.consumers, fixups=ctx.fixups, node_macs=macs,
        total_params=int(total_params), mac_axes=ctx.mac_axes, fused_ops={**understood(model), **quantized_ops(model)},
    )


def _signatures(ctx: RuleContext, roots: np.ndarray) -> dict[tuple[int, ...], np.ndarray]:
    """Units living in exactly the same channel spaces: space ids (ascending) -> roots."""
    if not ctx.spaces:
        return {}
    per_space = [_distinct(roots[space.elems]) for space in ctx.spaces]
    r_all = np.concatenate(per_space)
    s_all = np.repeat(np.arange(len(per_space), dtype=np.int64), [len(u) for u in per_space])
    order = np.lexsort((s_all, r_all))
    r_all, s_all = r_all[order], s_all[order]
    if not len(r_all):
        return {}
    starts = np.flatnonzero(np.concatenate(([True], r_all[1:] != r_all[:-1])))
    ends = np.append(starts[1:], len(r_all))
    sids = s_all.tolist()
    members: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for root, a, b in zip(r_all[starts].tolist(), starts.tolist(), ends.tolist()):
        members[tuple(sids[a:b])].append(root)
    return {sig: np.array(rs, dtype=np.int64) for sig, rs in members.items()}


def _unit_costs(ctx: RuleContext, index: GraphIndex, roots: np.ndarray,
                node_mac: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """Parameters and MACs each root accounts for (arrays indexed by element id)."""
    params = np.zeros(len(roots), dtype=np.int64)
    macs = np.zeros(len(roots), dtype=np.int64)
    nodes = index.nodes
    for ref in ctx.params:
        shape = index.const_shape(nodes[ref.node].input[ref.slot]) or ()
        per_index = math.prod(shape) // max(1, shape[ref.axis]) if shape else 0
        node_macs = node_mac.get(ctx.mac_of.get(ref.node, ref.node), 0) if ref.is_weight and ref.role != "param" else 0
        per_mac = node_macs // max(1, shape[ref.axis]) if shape else 0
        r = roots[ref.elems]
        if per_index:
            np.add.at(params, r, per_index)
        if per_mac:
            np.add.at(macs, r, per_mac)
    return params, macs


def _group_roles(ctx: RuleContext, roots: np.ndarray, group_of: np.ndarray,
                 n_groups: int) -> list[tuple[set[str], set[str]]]:
    """Per group: the nodes whose weights produce its channels, and those that consume them."""
    roles: list[tuple[set[str], set[str]]] = [(set(), set()) for _ in range(n_groups)]
    for ref in ctx.params:
        if ref.role == "param":
            continue
        side = 0 if ref.role == "producer" else 1
        for gi in _distinct(group_of[roots[ref.elems]]).tolist():
            if gi >= 0:
                roles[gi][side].add(ref.node)
    return roles


def _make_group(ctx: RuleContext, sig: tuple[int, ...], members: np.ndarray, roots: np.ndarray,
                reasons: dict[int, list[str]], roles: tuple[set[str], set[str]], unit_params: np.ndarray,
                unit_macs: np.ndarray) -> Group:
    anchor = ctx.spaces[sig[0]]
    anchor_roots = roots[anchor.elems]
    in_group = np.isin(anchor_roots, members)
    uniq, first = np.unique(anchor_roots[in_group], return_index=True)
    units = uniq[np.argsort(first)]
    positions = np.flatnonzero(in_group)
    gid = f"{anchor.tensor}:{anchor.axis}"
    if len(positions) != len(anchor.elems):
        gid += f"@{int(positions[0])}"
    group_reasons: list[str] = []
    if reasons:
        for r in units.tolist():
            for reason in reasons.get(r, ()):
                if reason not in group_reasons and len(group_reasons) < MAX_REASONS:
                    group_reasons.append(reason)
    spaces = tuple((ctx.spaces[s].tensor, ctx.spaces[s].axis) for s in sig)
    return Group(
        id=gid, units=units, channels=int(in_group.sum()), anchor=(anchor.tensor, anchor.axis), spaces=spaces,
        producers=tuple(sorted(roles[0])) if units.size else (), consumers=tuple(sorted(roles[1])) if units.size else (),
        unit_params=unit_params[units].astype(np.int64), unit_macs=unit_macs[units].astype(np.int64),
        reasons=tuple(group_reasons),
    )
