"""The core invariant, as a reusable check: a pruned model computes what the original
computes with the same channels zeroed where consumers read them."""

from __future__ import annotations

import numpy as np
import onnx

from onnxprune.analysis import Analysis, analyze
from onnxprune.api import PruneResult, apply_plan
from onnxprune.rewrite.masking import masked_model
from tests.plans import random_masking_plan
from onnxprune.plan import Plan
from onnxprune.runtime.session import random_inputs, run

RTOL = 1e-4


def check_pruned_model(pruned: onnx.ModelProto, original: onnx.ModelProto) -> None:
    """Full checker, strict shape inference, and unchanged output names and shapes."""
    onnx.checker.check_model(pruned, full_check=True)
    fresh = onnx.ModelProto()
    fresh.CopyFrom(pruned)
    del fresh.graph.value_info[:]
    onnx.shape_inference.infer_shapes(fresh, check_type=True, strict_mode=True, data_prop=True)
    assert [o.name for o in pruned.graph.output] == [o.name for o in original.graph.output]
    for a, b in zip(original.graph.output, pruned.graph.output):
        assert a.type == b.type, f"output {a.name} changed type/shape"


def assert_matches_masked(original: onnx.ModelProto, analysis: Analysis, plan: Plan,
                          result: PruneResult, *, seed: int = 0, batch: int = 1) -> float:
    """Outputs of the pruned model equal the masked reference within RTOL (relative to scale)."""
    feeds = random_inputs(original, seed=seed, batch=batch)
    reference = run(masked_model(original, analysis, plan), feeds)
    pruned = run(result.model, feeds)
    assert set(reference) == set(pruned)
    worst = 0.0
    for name, ref in reference.items():
        got = pruned[name]
        assert ref.shape == got.shape, f"output {name}: {got.shape} != {ref.shape}"
        if ref.dtype.kind == "f":
            scale = max(1.0, float(np.abs(ref).max()))
            err = float(np.abs(ref.astype(np.float64) - got).max()) / scale if ref.size else 0.0
            worst = max(worst, err)
            assert err <= RTOL, f"output {name}: relative error {err:.3g} > {RTOL}"
        else:
            np.testing.assert_array_equal(ref, got)
    return worst


def prune_randomly_and_check(model: onnx.ModelProto, *, seed: int = 0, max_ratio: float = 0.6,
                             require_prunable: bool = True) -> tuple[Analysis, Plan, PruneResult]:
    """Random channel choices in every prunable group; check validity and masked equivalence."""
    analysis = analyze(model)
    if require_prunable:
        assert analysis.prunable_groups, "expected at least one prunable group"
    plan = random_masking_plan(analysis, seed=seed, max_ratio=max_ratio)
    result = apply_plan(model, analysis, plan)
    check_pruned_model(result.model, model)
    assert_matches_masked(model, analysis, plan, result, seed=seed)
    return analysis, plan, result
