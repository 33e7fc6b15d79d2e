"""Properties of analysis and pruning on random CNN graphs (see tests/strategies.py).

The number of examples per property is ``ONNXPRUNE_HYPOTHESIS_EXAMPLES`` (default 60).
A falsifying example prints as a list of blocks; rebuild it with hypothesis' reproduce
decorator or save ``generated.model`` from a debugger.
"""

from __future__ import annotations

import os
from collections import Counter

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from onnxprune.analysis import analyze
from onnxprune.api import apply_plan, prune
from onnxprune.plan import Plan
from onnxprune.runtime.session import random_inputs, run
from tests.equivalence import assert_matches_masked, check_pruned_model, prune_randomly_and_check
from tests.strategies import BLOCKS, GeneratedModel, random_models

EXAMPLES = int(os.environ.get("ONNXPRUNE_HYPOTHESIS_EXAMPLES", "60"))

SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    print_blob=True,
)


def _describe(analysis) -> str:  # noqa: ANN001
    lines = [f"{g.id}: size={g.size} prunable={g.prunable} reasons={list(g.reasons)}" for g in analysis.groups]
    return "groups:\n  " + "\n  ".join(lines)


@SETTINGS
@given(random_models(), st.sampled_from([(0, 1), (2, 3), (4, 5)]))
def test_random_pruning_matches_masked_reference(generated: GeneratedModel, seeds: tuple[int, int]) -> None:
    """Property 1: random channel removal in every prunable group gives a valid model that computes
    what the original computes with those channels zeroed at their consumers."""
    model = generated.model
    analysis = analyze(model)
    note(_describe(analysis))
    for seed in seeds:
        prune_randomly_and_check(model, seed=seed, require_prunable=bool(analysis.prunable_groups))


@SETTINGS
@given(random_models(dynamic_batch=True), st.sampled_from([(0, 1), (2, 3)]))
def test_random_pruning_with_dynamic_batch(generated: GeneratedModel, seeds: tuple[int, int]) -> None:
    """Property 1 on [N, C, H, W] inputs (symbolic N; reshape targets use 0 / -1 for it): the
    pruned model equals the masked reference at batch 1 and at batch 2."""
    model = generated.model
    analysis = analyze(model)
    note(_describe(analysis))
    for seed in seeds:
        analysis, plan, result = prune_randomly_and_check(model, seed=seed,
                                                          require_prunable=bool(analysis.prunable_groups))
        assert_matches_masked(model, analysis, plan, result, seed=seed, batch=2)


@SETTINGS
@given(random_models())
def test_analysis_is_deterministic(generated: GeneratedModel) -> None:
    """Property 2: the same model (or a byte-identical copy) always gives the same groups."""
    model = generated.model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    first, second, third = analyze(model), analyze(model), analyze(copy)
    for other in (second, third):
        assert other.fingerprint == first.fingerprint
        assert [(g.id, g.size, g.channels, g.prunable) for g in other.groups] == \
            [(g.id, g.size, g.channels, g.prunable) for g in first.groups]
        assert [(g.id, g.reasons) for g in other.groups] == [(g.id, g.reasons) for g in first.groups]
    # analysis reads the model, it never edits it
    assert model.SerializeToString(deterministic=True) == copy.SerializeToString(deterministic=True)


@SETTINGS
@given(random_models())
def test_empty_plan_changes_nothing(generated: GeneratedModel) -> None:
    """Property 3: a plan removing nothing leaves the graph and its outputs exactly as they were."""
    model = generated.model
    analysis = analyze(model)
    plan = Plan(fingerprint=analysis.fingerprint, keep={}, sizes={})
    result = apply_plan(model, analysis, plan)
    check_pruned_model(result.model, model)
    assert [n.SerializeToString(deterministic=True) for n in result.model.graph.node] == \
        [n.SerializeToString(deterministic=True) for n in model.graph.node]
    # initializers no node reads (prepare's shape folding leaves the inputs of folded nodes
    # behind) may be dropped; every other initializer stays byte-identical
    read = {name for node in model.graph.node for name in node.input}
    assert sorted(t.SerializeToString(deterministic=True) for t in result.model.graph.initializer) == \
        sorted(t.SerializeToString(deterministic=True) for t in model.graph.initializer if t.name in read)
    dead = any(t.name not in read for t in model.graph.initializer)
    assert not any(modified for name, modified in result.history
                   if not (name == "remove_dead_nodes" and dead)), result.history
    assert result.after == result.before
    feeds = random_inputs(model, seed=0)
    before, after = run(model, feeds), run(result.model, feeds)
    assert before.keys() == after.keys()
    for name in before:
        np.testing.assert_array_equal(before[name], after[name])


@SETTINGS
@given(random_models(), st.sampled_from([0.25, 0.5]))
def test_public_prune_by_ratio(generated: GeneratedModel, ratio: float) -> None:
    """Property 4: ``prune(model, ratio=r)`` (l2) gives a valid model with unchanged output shapes,
    equal to the masked reference of the plan it chose, and never costs more MACs."""
    model = generated.model
    result = prune(model, ratio=ratio, criterion="l2")
    check_pruned_model(result.model, model)
    feeds = random_inputs(model, seed=1)
    original, pruned = run(model, feeds), run(result.model, feeds)
    assert {k: v.shape for k, v in original.items()} == {k: v.shape for k, v in pruned.items()}
    analysis = analyze(model)
    note(_describe(analysis))
    assert_matches_masked(model, analysis, result.plan, result, seed=1)
    assert result.after.macs <= result.before.macs
    uses = Counter(name for node in model.graph.node for name in node.input)
    if not any(uses[t.name] > 1 for t in model.graph.initializer):
        # (a constant shared by differently pruned nodes is copied on write: it may grow)
        assert result.after.params <= result.before.params
        if result.plan.keep:
            assert result.after.params < result.before.params


@pytest.mark.parametrize("block", sorted(BLOCKS))
@settings(max_examples=max(3, EXAMPLES // 10), deadline=None, print_blob=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
@given(data=st.data())
def test_each_block_kind_prunes_correctly(block: str, data: st.DataObject) -> None:
    """Every block kind, surrounded by convs, so that each is exercised regardless of the draw."""
    generated = data.draw(random_models(min_blocks=3, max_blocks=5, blocks=("conv", block, block)))
    analysis = analyze(generated.model)
    note(_describe(analysis))
    prune_randomly_and_check(generated.model, seed=0, require_prunable=bool(analysis.prunable_groups))
