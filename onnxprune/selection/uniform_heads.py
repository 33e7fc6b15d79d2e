"""Equal head counts in every attention layer (``--uniform-heads``, the recipe's ``uniform_heads``).

Runtimes that build one attention kernel or one KV cache shape for all layers
(onnxruntime-genai's GroupQueryAttention with ``num_key_value_heads`` in its config, most
KV-cache servers) need every layer to keep the same number of KV heads and of query heads
per KV head. ``uniform_heads`` turns a plan into one that does: the counts whose attention
parameters come closest to the plan's, and in each layer the best-scored KV heads and,
under each, the best-scored query heads stay. The repeat of the kept KV heads then
stays an Expand (``rewrite.repeat_kv``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import numpy as np

from onnxprune.analysis import Analysis
from onnxprune.analysis.query_heads import group_parents, links, repair_keep
from onnxprune.plan import Plan


def _uniform_counts(analysis: Analysis, plan: Plan, layers: Mapping[str, str]) -> tuple[int | None, int]:
    """(KV heads per layer or None for all, query heads per KV head) whose parameters come
    closest to what ``plan`` keeps in the attention layers (ties: the larger counts)."""
    removed = set(plan.removed_units(analysis).tolist())
    kept = 0
    for q_id, kv_id in layers.items():
        for g in (analysis.group(q_id), analysis.group(kv_id)):
            kept += sum(int(p) for r, p in zip(g.units.tolist(), g.unit_params) if r not in removed)
    q, kv = analysis.group(next(iter(layers))), analysis.group(next(iter(layers.values())))
    kv_size, rep = kv.size, q.size // kv.size
    per_q, per_kv_head = float(q.unit_params.mean()), float(kv.unit_params.mean())
    kv_prunable = all(analysis.group(kv).prunable for kv in layers.values())
    choices = [(n, r) for n in (range(1, kv_size + 1) if kv_prunable else [kv_size]) for r in range(1, rep + 1)]
    best = min(choices, key=lambda c: (abs(len(layers) * c[0] * (per_kv_head + c[1] * per_q) - kept), -c[0], -c[1]))
    return (best[0] if kv_prunable else None), best[1]


def _best(scores: np.ndarray | None, candidates: list[int], k: int) -> list[int]:
    """The ``k`` best candidates by score (ties: the lower index), all when no scores."""
    if scores is None:
        return candidates[:k]
    return sorted(sorted(candidates, key=lambda i: (-float(scores[i]), i))[:k])


def uniform_heads(analysis: Analysis, plan: Plan, scores: Mapping[str, np.ndarray]) -> Plan:
    """``plan`` with every attention layer keeping the same number of KV heads and of query
    heads per KV head (a KV-head group that is not prunable, e.g. a KV cache without
    ``--allow-interface-change``, keeps all its heads in every layer)."""
    layers = group_parents(analysis)  # query-head group -> KV-head group
    if not layers:
        return plan
    n_kv, per_kv = _uniform_counts(analysis, plan, layers)
    keep = dict(plan.keep)
    sizes = dict(plan.sizes)
    position = {}
    for g in analysis.groups:
        for i, r in enumerate(g.units.tolist()):
            position[r] = i
    parents_of: dict[int, set[int]] = {}  # query unit -> the KV heads it reads (two where one unit spans them)
    for children, parents in links(analysis):
        for c, p in zip(children.tolist(), parents.tolist()):
            parents_of.setdefault(c, set()).add(p)
    for q_id, kv_id in layers.items():
        kv, q = analysis.group(kv_id), analysis.group(q_id)
        if not q.prunable:  # its KV heads are blocked too (``query_heads.block_parents``)
            continue
        kv_keep = _best(scores.get(kv_id), list(range(kv.size)), n_kv if n_kv is not None else kv.size)
        kv_roots = {int(kv.units[i]) for i in kv_keep}
        q_keep: set[int] = set()
        for kv_root in sorted(kv_roots, key=lambda r: position[r]):
            under = [i for i, r in enumerate(q.units.tolist())
                     if kv_root in parents_of.get(r, ()) and parents_of[r] <= kv_roots and i not in q_keep]
            q_keep.update(_best(scores.get(q_id), under, per_kv))
        for gid, g, kept in ((kv_id, kv, kv_keep), (q_id, q, sorted(q_keep))):
            if len(kept) < g.size:
                keep[gid], sizes[gid] = tuple(kept), g.size
            else:
                keep.pop(gid, None)
                sizes.pop(gid, None)
    keep = repair_keep(analysis, keep, scores)  # a layer keeps a query head of a kept KV head
    sizes = {gid: analysis.group(gid).size for gid in keep}
    merges = {gid: kept for gid, ms in plan.merges.items()  # merges into units still kept, of units now removed
              if gid in keep and (kept := tuple(m for m in ms if m[0] not in keep[gid] and m[1] in keep[gid]))}
    out = replace(plan, keep=keep, sizes=sizes, merges=merges, options={**plan.options, "uniform_heads": True})
    out.validate(analysis)
    return out
