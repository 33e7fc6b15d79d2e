"""Data-free pruning by neuron similarity, with merging (Srinivas & Babu 2015, 1507.06149).

For a unit j and a partner i of the same group, the saliency of removing j by merging
it into i is ``s_ij = <a_j^2> * ||W_i - W_j||^2``: ``W`` are the units' incoming weight
vectors (bias included), ``a`` their outgoing weights (every consumer weight slice the
unit owns), ``<.>`` the mean. Units are removed greedily, the lowest ``min_i s_ij``
first, and j's outgoing weights are added to its partner's. The saliencies of the units
the merge touched are recomputed before the next removal.

Merging is exact when the activation between producer and consumers is positively
homogeneous (``f(c x) = c f(x)`` for ``c > 0``: ReLU, LeakyReLU, PReLU, max/average
pooling, and ops that only move channels): each unit's incoming vector is scaled to unit
norm ``W_u = n_u * U_u`` and the scale moved onto its outgoing weights ``A_u = n_u * a_u``.
Two units with proportional incoming weights then have ``U_i == U_j``, and
``a_i += (n_j / n_i) * a_j`` leaves the network's function unchanged.

A group merges when (1) its units are produced by exactly one weighted op (Conv with
group 1, Gemm, MatMul with a constant weight), one output index per unit, and (2) every
path from that op's output to the group's consumers goes through positively homogeneous
ops only. Per-channel affine ops directly after the producer, before anything else
(BatchNormalization in inference form, Add/Sub/Mul/Div by a per-channel constant: a
MatMul's bias, an unfolded BN), are folded into the effective incoming weights, since
merging only edits consumer weights. Every other group falls back to plain removal in
the same greedy order of ``min_i s_ij`` (raw vectors, no normalisation, no merge), and
the report says why.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import onnx

from onnxprune.analysis import Analysis, Group
from onnxprune.analysis.context import ParamRef
from onnxprune.analysis.query_heads import repair_keep
from onnxprune.analysis.weighted_ops import WEIGHTED_OPS, weighted_op
from onnxprune.graph import GraphIndex, attr
from onnxprune.plan import Plan
from onnxprune.selection.select import SelectionOptions, legal_keep_count
from onnxprune.units import plan_options

# Ops through which a per-channel positive scale passes unchanged (f(c x) = c f(x), c > 0),
# acting on every channel alike. MaxPool's Indices output is not allowed (checked below).
HOMOGENEOUS = frozenset({
    "Relu", "LeakyRelu", "PRelu", "MaxPool", "GlobalMaxPool", "AveragePool", "GlobalAveragePool",
    "Identity", "Dropout", "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze",
    "Concat", "Split", "Slice",
})
# Per-channel affine ops folded into the producer's effective weights (only right after it).
AFFINE = frozenset({"BatchNormalization", "Add", "Sub", "Mul", "Div"})


@dataclass
class GroupVectors:
    """Incoming (rows: units) and outgoing vectors of a group, and whether merging is valid."""

    incoming: np.ndarray  # [n, d]
    outgoing: np.ndarray  # [n, e]
    mergeable: bool
    reason: str | None  # why not mergeable
    folded: tuple[str, ...] = ()  # per-channel affine nodes folded into the incoming vectors


# -- public API ---------------------------------------------------------------------


def similarity_plan(model: onnx.ModelProto, analysis: Analysis, *, ratio: float, merge: bool = True,
                    round_to: int = 1, min_channels: int = 1) -> tuple[Plan, dict]:
    """Remove ``ratio`` of every prunable group's units greedily by merge saliency.

    Returns the plan (with ``merges`` for groups where merging is exact and ``merge`` is
    True) and a report: per group, whether it merged and, if not, why.
    """
    options = SelectionOptions(ratio=ratio, round_to=round_to, min_channels=min_channels)
    index = GraphIndex(model)
    lookup = Lookup(analysis)
    keep: dict[str, tuple[int, ...]] = {}
    merges: dict[str, tuple[tuple[int, int, float], ...]] = {}
    report: dict = {"groups": {}, "merged": [], "not_merged": {}}
    for g in analysis.prunable_groups:
        target = g.size - math.floor(g.size * ratio)
        k = legal_keep_count(g, target, options)
        vec = group_vectors(index, analysis, g, lookup)
        entry: dict = {"units": g.size, "kept": k, "mergeable": vec.mergeable, "merges": 0}
        if not vec.mergeable:
            entry["reason"] = vec.reason
        if vec.folded:
            entry["folded"] = list(vec.folded)
        report["groups"][g.id] = entry
        if k >= g.size:
            continue
        order, group_merges = greedy_removal(vec, stop_at=k)
        keep[g.id] = tuple(sorted(set(range(g.size)) - set(order)))
        if vec.mergeable and merge:
            recorded = tuple(m for m in group_merges if m[2] != 0.0)
            if recorded:
                merges[g.id] = recorded
            entry["merges"] = len(recorded)
            report["merged"].append(g.id)
        else:
            report["not_merged"][g.id] = vec.reason if not vec.mergeable else "merge=False"
    keep = repair_keep(analysis, keep)  # a layer keeps a query head of a kept KV head
    merges = {gid: kept for gid, ms in merges.items()  # a unit the repair kept is not merged away
              if (kept := tuple(m for m in ms if m[0] not in keep[gid] and m[1] in keep[gid]))}
    plan = Plan(
        fingerprint=analysis.fingerprint, keep=keep, sizes={gid: analysis.group(gid).size for gid in keep},
        criterion="similarity",
        options=plan_options(options, {"ratio": ratio, "mode": "per-group"}, {"merge": merge}),
        merges=merges,
    )
    plan.validate(analysis)
    return plan, report


def similarity_scores(index: GraphIndex, analysis: Analysis) -> dict[str, np.ndarray]:
    """A data-free scorer (higher = keep): each unit's position in the greedy removal order.

    The greedy order run to one survivor, so per-group selection with these scores keeps
    exactly the units ``similarity_plan`` keeps (its merges are not part of a score).
    """
    scores: dict[str, np.ndarray] = {}
    lookup = Lookup(analysis)
    for g in analysis.prunable_groups:
        order, _ = greedy_removal(group_vectors(index, analysis, g, lookup), stop_at=1)
        s = np.full(g.size, float(g.size), dtype=np.float64)
        s[order] = np.arange(len(order), dtype=np.float64)
        scores[g.id] = s
    return scores


# -- greedy removal -----------------------------------------------------------------


def greedy_removal(vec: GroupVectors, stop_at: int) -> tuple[list[int], list[tuple[int, int, float]]]:
    """Remove units until ``stop_at`` remain; returns the removal order and the composed
    merges (removed unit, kept unit, factor) of a mergeable group (empty otherwise).

    A merge of j into i adds j's (accumulated) normalised outgoing vector to i's; when i is
    later merged into k, everything i absorbed moves to k, so each removed unit ends up
    with one factor ``n_m / n_k`` onto its final kept unit k.
    """
    w = np.asarray(vec.incoming, dtype=np.float64)
    n = w.shape[0]
    a = np.asarray(vec.outgoing, dtype=np.float64 if vec.outgoing.size <= 1 << 24 else np.float32).copy()
    if vec.mergeable:
        norms = np.linalg.norm(w, axis=1)
        safe = np.where(norms > 0, norms, 1.0)
        w = w / safe[:, None]
        a *= norms[:, None].astype(a.dtype)
    else:
        norms = np.ones(n)
    sq = (w * w).sum(axis=1)
    dist = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (w @ w.T), 0.0)  # dist[i, j] = ||W_i - W_j||^2
    np.fill_diagonal(dist, np.inf)
    dead = norms == 0  # a unit with zero incoming weights outputs f(0) = 0: removable for free
    dist[dead, :] = np.inf  # never a merge target (its factor n_j / n_i would be infinite)
    msq = (a.astype(np.float64) ** 2).mean(axis=1) if a.shape[1] else np.zeros(n)
    best = dist.argmin(axis=0)
    best_val = dist[best, np.arange(n)]
    alive = np.ones(n, dtype=bool)
    absorbed: dict[int, list[int]] = {u: [u] for u in range(n)}
    order: list[int] = []

    def cost() -> np.ndarray:
        c = np.where((msq == 0) | dead, 0.0, msq * best_val)
        return np.where(alive, c, np.inf)

    while alive.sum() > stop_at:
        c = cost()
        j = int(np.lexsort((np.arange(n), c))[0])
        i = int(best[j])
        alive[j] = False
        order.append(j)
        dist[j, :] = np.inf
        if vec.mergeable and np.isfinite(best_val[j]) and not dead[j] and msq[j] > 0:
            a[i] += a[j]
            msq[i] = float((a[i].astype(np.float64) ** 2).mean())
            absorbed[i].extend(absorbed.pop(j))
        # columns whose best partner was j look for a new one among the living
        stale = np.flatnonzero(alive & (best == j))
        if stale.size:
            sub = dist[:, stale]
            best[stale] = sub.argmin(axis=0)
            best_val[stale] = sub[best[stale], np.arange(stale.size)]
    merges: list[tuple[int, int, float]] = []
    if vec.mergeable:
        for k in np.flatnonzero(alive).tolist():
            for m in absorbed[k]:
                if m != k:
                    merges.append((m, k, float(norms[m] / norms[k])))
        merges.sort()
    return order, merges


# -- vectors ------------------------------------------------------------------------


def _weight(index: GraphIndex, ref: ParamRef) -> np.ndarray | None:
    arr = index.const(index.nodes[ref.node].input[ref.slot])
    return None if arr is None else np.asarray(arr, dtype=np.float64)


def _unit_slices(analysis: Analysis, g: Group, refs: list[ParamRef], index: GraphIndex) -> np.ndarray:
    """Per unit, the concatenation over refs of the slices (along each ref's axis) it owns."""
    pos = {int(u): k for k, u in enumerate(g.units.tolist())}
    parts: list[list[np.ndarray]] = [[] for _ in range(g.size)]
    for ref in refs:
        w = _weight(index, ref)
        if w is None:
            continue
        flat = np.moveaxis(w, ref.axis, 0).reshape(w.shape[ref.axis], -1)
        for idx, root in enumerate(analysis.roots[ref.elems].tolist()):
            k = pos.get(int(root))
            if k is not None:
                parts[k].append(flat[idx])
    rows = [np.concatenate(p) if p else np.zeros(0) for p in parts]
    width = max((len(r) for r in rows), default=0)
    out = np.zeros((g.size, width))
    for k, r in enumerate(rows):
        out[k, : len(r)] = r
    return out


class Lookup:
    """Per analysis, what touches each group: ParamRefs by role, tensors carrying its
    channels, and the (node, slot) reads of its consumers. Built once, in one pass."""

    def __init__(self, analysis: Analysis) -> None:
        self.group_of = np.full(len(analysis.roots), -1, dtype=np.int64)
        ids = [g.id for g in analysis.prunable_groups]
        for k, g in enumerate(analysis.prunable_groups):
            self.group_of[g.units] = k
        self.refs: dict[tuple[str, str], list[ParamRef]] = defaultdict(list)
        self.carriers: dict[str, set[str]] = defaultdict(set)
        self.reads: dict[str, set[tuple[str, int]]] = defaultdict(set)
        for ref in analysis.params:
            for k in self._touched(analysis, ref.elems):
                self.refs[(ids[k], ref.role)].append(ref)
        for space in analysis.spaces:
            for k in self._touched(analysis, space.elems):
                self.carriers[ids[k]].add(space.tensor)
        for c in analysis.consumers:
            for k in self._touched(analysis, c.elems):
                self.reads[ids[k]].add((c.node, c.slot))

    def _touched(self, analysis: Analysis, elems: np.ndarray) -> list[int]:
        k = np.unique(self.group_of[analysis.roots[elems]])
        return k[k >= 0].tolist()


def group_vectors(index: GraphIndex, analysis: Analysis, g: Group, lookup: Lookup | None = None) -> GroupVectors:
    """Incoming and outgoing vectors of a group's units; effective (affine-folded) incoming
    vectors where merging is valid, raw concatenated producer slices otherwise."""
    lookup = lookup or Lookup(analysis)
    producers = lookup.refs.get((g.id, "producer"), [])
    consumers = lookup.refs.get((g.id, "consumer"), [])
    outgoing = _unit_slices(analysis, g, consumers, index)
    ok, reason, incoming, folded = _mergeable_incoming(index, analysis, g, producers, consumers, lookup)
    if not ok:
        incoming = _unit_slices(analysis, g, producers, index)
    return GroupVectors(incoming, outgoing, ok, reason, folded)


def _refuse(reason: str) -> tuple[bool, str, None, tuple[str, ...]]:
    return False, reason, None, ()


def _mergeable_incoming(index: GraphIndex, analysis: Analysis, g: Group, producers: list[ParamRef],
                        consumers: list[ParamRef], lookup: Lookup
                        ) -> tuple[bool, str | None, np.ndarray | None, tuple[str, ...]]:
    nodes = sorted({r.node for r in producers})
    if len(nodes) != 1:
        return _refuse(f"units are produced by {len(nodes)} ops ({', '.join(nodes)}), "
                       "not by one weighted op")
    node = index.nodes[nodes[0]]
    spec = weighted_op(node)
    if spec is None or not spec.mergeable:
        mergeable = ", ".join(s.op_type for s in WEIGHTED_OPS.values() if s.mergeable)
        return _refuse(f"producer '{node.name}' is a {node.op_type} (merging supports {mergeable})")
    if node.op_type == "Conv" and int(attr(node, "group", 1)) != 1:
        return _refuse(f"producer '{node.name}' is a grouped/depthwise Conv")
    if not consumers:
        return _refuse("no consumer weights to merge into")
    units = g.units
    roots = analysis.roots
    unit_pos = {int(u): k for k, u in enumerate(units.tolist())}
    # each unit must own exactly one output index of the producer, in every producer ref
    index_of: np.ndarray | None = None
    for ref in producers:
        owner = roots[ref.elems]
        idx = np.full(g.size, -1, dtype=np.int64)
        counts = np.zeros(g.size, dtype=np.int64)
        for p, r in enumerate(owner.tolist()):
            k = unit_pos.get(int(r))
            if k is not None:
                idx[k] = p
                counts[k] += 1
        if not np.all(counts == 1):
            return _refuse(f"a unit owns several output channels of '{node.name}' (tied channels)")
        if index_of is None:
            index_of = idx
        elif not np.array_equal(index_of, idx):
            return _refuse(f"output channels of '{node.name}' are laid out inconsistently")
    assert index_of is not None
    y = node.output[0]
    shape = index.shape(y)
    if shape is None:
        return _refuse(f"shape of '{y}' is unknown")
    assert spec.output_axis is not None
    axis = spec.output_axis % len(shape)
    channels = shape[axis]
    if not isinstance(channels, int):
        return _refuse(f"channel count of '{y}' is not static")
    # 1) fold per-channel affine ops right after the producer
    scale, shift = np.ones(channels), np.zeros(channels)
    tensor = y
    folded: list[str] = []
    while True:
        uses = index.users(tensor)
        if len(uses) != 1 or tensor in index.graph_outputs:
            break
        user, slot = uses[0]
        step = _affine_step(index, user, slot, axis, len(shape), channels)
        if step is None:
            break
        k, t = step
        scale, shift = scale * k, shift * k + t
        folded.append(user.name)
        tensor = user.output[0]
    # 2) every path to the consumers goes through positively homogeneous ops only
    problem = _check_paths(index, tensor, lookup.carriers[g.id],
                           {r for r in lookup.reads[g.id] if r[0] in {c.node for c in consumers}})
    if problem:
        return _refuse(problem)
    # effective incoming vectors: scale * [W_u, bias_u] (+ shift on the bias entries)
    weight_refs = [r for r in producers if r.slot == 1]
    bias_refs = [r for r in producers if r.slot != 1]
    w_rows = _rows(index, weight_refs, index_of)
    if bias_refs:
        b_rows = _rows(index, bias_refs, index_of)
    elif len(node.input) > 2 and node.input[2]:  # a broadcast Gemm bias, the same for every unit
        c = index.const(node.input[2])
        if c is None:
            return _refuse(f"bias of '{node.name}' is computed")
        b_rows = np.broadcast_to(np.asarray(c, dtype=np.float64).reshape(1, -1), (g.size, c.size)).copy()
    else:
        b_rows = np.zeros((g.size, 1))
    s, t = scale[index_of][:, None], shift[index_of][:, None]
    incoming = np.concatenate([w_rows * s, b_rows * s + t], axis=1)
    return True, None, incoming, tuple(folded)


def _rows(index: GraphIndex, refs: list[ParamRef], index_of: np.ndarray) -> np.ndarray:
    parts = []
    for ref in refs:
        w = _weight(index, ref)
        assert w is not None
        parts.append(np.moveaxis(w, ref.axis, 0).reshape(w.shape[ref.axis], -1)[index_of])
    return np.concatenate(parts, axis=1)


def _per_channel(value: np.ndarray, rank: int, axis: int, channels: int) -> np.ndarray | None:
    """A constant broadcast against a rank-``rank`` tensor, as one value per channel; None
    if it varies along any other axis."""
    v = np.asarray(value, dtype=np.float64)
    if v.ndim > rank:
        return None
    v = v.reshape((1,) * (rank - v.ndim) + v.shape)
    if any(d != 1 for a, d in enumerate(v.shape) if a != axis) or v.shape[axis] not in (1, channels):
        return None
    return np.broadcast_to(v.reshape(-1), (channels,)).copy()


def _affine_step(index: GraphIndex, node: onnx.NodeProto, slot: int, axis: int, rank: int,
                 channels: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(scale, shift) per channel if ``node`` applies a per-channel affine map to input ``slot``."""
    op = node.op_type
    if op not in AFFINE or len([o for o in node.output if o]) != 1:
        return None
    if op == "BatchNormalization":
        if slot != 0 or axis != 1 or len(node.input) < 5:
            return None
        consts = [index.const(name) for name in node.input[1:5]]
        if any(c is None for c in consts):
            return None
        s, b, m, v = (np.asarray(c, dtype=np.float64).reshape(-1) for c in consts)
        k = s / np.sqrt(v + float(attr(node, "epsilon", 1e-5)))
        return k, b - k * m
    if len(node.input) != 2 or slot not in (0, 1):
        return None
    other = node.input[1 - slot]
    c = index.const(other)
    if c is None:
        return None
    pc = _per_channel(c, rank, axis, channels)
    if pc is None:
        return None
    one, zero = np.ones(channels), np.zeros(channels)
    if op == "Add":
        return one, pc
    if op == "Sub":
        return (one, -pc) if slot == 0 else (-one, pc)
    if op == "Mul":
        return pc, zero
    if op == "Div" and slot == 0 and np.all(pc != 0):
        return 1.0 / pc, zero
    return None


def _check_paths(index: GraphIndex, start: str, carriers: set[str], reads: set[tuple[str, int]]) -> str | None:
    """None if every path from ``start`` (through tensors carrying the group's channels) to
    the group's weighted consumer reads is positively homogeneous; otherwise why not."""
    seen: set[str] = set()
    stack = [start]
    while stack:
        tensor = stack.pop()
        if tensor in seen:
            continue
        seen.add(tensor)
        if tensor in index.graph_outputs:
            return f"'{tensor}' is a graph output"
        for node, slot in index.users(tensor):
            if (node.name, slot) in reads:
                continue
            op = node.op_type
            where = f"{op} '{node.name}'"
            if op not in HOMOGENEOUS:
                if op == "BatchNormalization":
                    return (f"{where} between producer and consumers is not positively homogeneous "
                            "(only a BatchNormalization directly after the producer is folded; fold it first)")
                if slot < 0:
                    return f"{where} reads the channels inside a subgraph"
                return f"{where} between producer and consumers is not positively homogeneous"
            if op == "MaxPool" and len(node.output) > 1 and node.output[1]:
                return f"{where} also outputs indices"
            if slot != 0 and op not in ("Concat",):
                return f"{where} reads the channels as input {slot}"
            for out in node.output:
                if out and out in carriers:
                    stack.append(out)
    return None


__all__ = ["GroupVectors", "Lookup", "greedy_removal", "group_vectors", "similarity_plan", "similarity_scores"]
