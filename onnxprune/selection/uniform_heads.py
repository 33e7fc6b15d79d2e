"""Equal head counts in every attention layer (``--uniform-heads``, the recipe's ``uniform_heads``).

Runtimes that build one attention kernel or one KV cache shape for all layers
(onnxruntime-genai's GroupQueryAttention with ``num_key_value_heads`` in its config, most
KV-cache servers) need every layer to keep the same number of KV heads and of query heads
per KV head. ``uniform_heads`` turns a plan into one that does: the counts are the plan's
averages over the layers (rounded, at least 1), and in each layer the best-scored KV heads
and, under each, the best-scored query heads stay. The repeat of the kept KV heads then
stays an Expand (``rewrite.repeat_kv``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import numpy as np

from onnxprune.analysis import Analysis
from onnxprune.analysis.query_heads import group_parents, links
from onnxprune.plan import Plan


def _kept_counts(analysis: Analysis, plan: Plan, q_id: str, kv_id: str) -> tuple[int, int]:
    """(KV heads kept, query heads kept per kept KV head, rounded) of one layer under ``plan``."""
    removed = set(plan.removed_units(analysis).tolist())
    kv = analysis.group(kv_id)
    kv_kept = [r for r in kv.units.tolist() if r not in removed]
    q = analysis.group(q_id)
    q_kept = sum(r not in removed for r in q.units.tolist())
    return len(kv_kept), max(1, round(q_kept / max(1, len(kv_kept))))


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
    counts = [_kept_counts(analysis, plan, q, kv) for q, kv in layers.items()]
    kv_prunable = all(analysis.group(kv).prunable for kv in layers.values())
    n_kv = max(1, round(float(np.mean([c[0] for c in counts])))) if kv_prunable else None
    per_kv = max(1, round(float(np.mean([c[1] for c in counts]))))
    keep = dict(plan.keep)
    sizes = dict(plan.sizes)
    position = {}
    for g in analysis.groups:
        for i, r in enumerate(g.units.tolist()):
            position[r] = i
    parent_of_child = {}
    for children, parents in links(analysis):
        for c, p in zip(children.tolist(), parents.tolist()):
            parent_of_child[c] = p
    for q_id, kv_id in layers.items():
        kv, q = analysis.group(kv_id), analysis.group(q_id)
        kv_keep = _best(scores.get(kv_id), list(range(kv.size)), n_kv if n_kv is not None else kv.size)
        kv_roots = {int(kv.units[i]) for i in kv_keep}
        q_keep: list[int] = []
        for kv_root in sorted(kv_roots, key=lambda r: position[r]):
            under = [i for i, r in enumerate(q.units.tolist()) if parent_of_child.get(r) == kv_root]
            q_keep += _best(scores.get(q_id), under, per_kv)
        for gid, g, kept in ((kv_id, kv, kv_keep), (q_id, q, sorted(q_keep))):
            if len(kept) < g.size:
                keep[gid], sizes[gid] = tuple(kept), g.size
            else:
                keep.pop(gid, None)
                sizes.pop(gid, None)
    out = replace(plan, keep=keep, sizes=sizes, options={**plan.options, "uniform_heads": True})
    out.validate(analysis)
    return out
