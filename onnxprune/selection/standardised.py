"""FLAP's adaptive structure search (An et al. 2024): per-layer pruning ratios from one
global threshold on standardised scores (recipe ``ranking = "standardised"``).

The units of one kind of structure (attention heads, FFN neurons, ...: groups with the
same number of producers and the same unit width and cost, in every layer) are scored on
one scale: their scores are standardised together over all layers, ``(s - mean) / std``
over every unit of that kind. Kinds then compare on one scale while the layers of one kind
keep their relative scale, so a layer whose units matter less loses more of them. One
global order from the lowest standardised score up; the budget search
(``selection.budget.select_to_budget``) removes from the bottom until the budget is met
(FLAP's threshold, where the removed parameters reach the target).

Grouped-query attention: a KV head is not ranked on its own (its score says nothing about
the query heads that go with it); it goes when all its query heads have gone
(``analysis.query_heads.close_removed``), so its units are ordered last.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from onnxprune.analysis import Analysis, Group

STANDARDISED = "standardised"
# what the scores are standardised over: each layer's units (FLAP's released code:
# ``(x - mean(x, axis=1)) / std(x, axis=1)`` over [layers, units]) or each kind's units in all layers
BY = "layer"


def kind_of(g: Group) -> tuple[int, int, int]:
    """What makes units comparable: producers per unit, channels per unit, parameters per unit."""
    params = int(np.max(g.unit_params)) if len(g.unit_params) else 0
    return len(g.producers), int(g.unit_width), params


def standardise(groups: list[Group], scores: Mapping[str, np.ndarray], by: str = BY) -> dict[str, np.ndarray]:
    """Group id -> its scores standardised over its own units (``by="layer"``, FLAP's code) or
    over every unit of its kind (``kind_of``) in ``groups`` (``by="kind"``)."""
    kinds: dict[object, list[Group]] = {}
    for g in groups:
        kinds.setdefault(g.id if by == "layer" else kind_of(g), []).append(g)
    out: dict[str, np.ndarray] = {}
    for members in kinds.values():
        values = np.concatenate([np.asarray(scores[g.id], dtype=np.float64) for g in members])
        mean, std = float(values.mean()), float(values.std())
        for g in members:
            s = np.asarray(scores[g.id], dtype=np.float64)
            out[g.id] = (s - mean) / std if std > 0 else np.zeros_like(s)
    return out


def standardised_order(groups: list[Group], scores: Mapping[str, np.ndarray],
                       analysis: Analysis | None = None, by: str = BY) -> list[tuple[str, int]]:
    """(group id, unit) pairs from the lowest standardised score to the highest; the KV heads
    of grouped-query attention (parents in ``analysis``) last, in their groups' score order."""
    from onnxprune.analysis.query_heads import links

    parents = {int(p) for _, ps in (links(analysis) if analysis is not None else ()) for p in ps.tolist()}
    parent_groups = [g for g in groups if parents and set(np.asarray(g.units).tolist()) <= parents]
    ranked = [g for g in groups if g not in parent_groups]
    standard = standardise(ranked, scores, by)
    entries = [(0, float(v), g.id, i) for g in ranked for i, v in enumerate(standard[g.id])]
    entries += [(1, float(v), g.id, i) for g in parent_groups for i, v in enumerate(np.asarray(scores[g.id]))]
    entries.sort()
    return [(gid, i) for _, _, gid, i in entries]
