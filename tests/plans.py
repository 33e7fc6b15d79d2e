"""Plans and predictions only the tests use: random masking plans, and the pruned model's
parameters and MACs predicted from a plan (compared with what the rewrite produced)."""

from __future__ import annotations

import numpy as np
import onnx

from onnxprune.analysis import Analysis
from onnxprune.analysis.accounting import CostModel
from onnxprune.analysis.query_heads import repair_keep
from onnxprune.plan import Plan


def random_masking_plan(analysis: Analysis, seed: int, max_ratio: float = 0.6) -> Plan:
    """A plan removing a random, non-empty subset (at least one unit kept) of every prunable group."""
    rng = np.random.default_rng(seed)
    keep, sizes = {}, {}
    for g in analysis.prunable_groups:
        n_keep = int(rng.integers(max(1, int(np.ceil(g.size * (1 - max_ratio)))), g.size))
        keep[g.id] = tuple(sorted(rng.choice(g.size, size=n_keep, replace=False).tolist()))
        sizes[g.id] = g.size
    keep = repair_keep(analysis, keep)  # a layer keeps a query head of a kept KV head
    return Plan(fingerprint=analysis.fingerprint, keep=keep, sizes=sizes, criterion="random-test")


def predicted_params(model: onnx.ModelProto, analysis: Analysis, plan: Plan) -> int:
    """Parameters of the pruned model, predicted from the plan."""
    return CostModel(model, analysis).params(plan.removed_units(analysis))


def predicted_macs(model: onnx.ModelProto, analysis: Analysis, plan: Plan) -> int:
    """MACs of the pruned model, predicted from the plan."""
    return CostModel(model, analysis).macs(plan.removed_units(analysis))
