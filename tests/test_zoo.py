"""Every zoo model: random channel choices in every prunable group keep the core
invariant (full checker, strict shape inference, outputs equal the masked reference)."""

from __future__ import annotations

import onnx
import pytest

from tests.plans import predicted_macs, predicted_params
from onnxprune.analysis import analyze
from onnxprune.api import load
from onnxprune.analysis.flops import model_cost
from onnxprune.prepare.normalize import promote_constants
from tests.equivalence import prune_randomly_and_check
from tests.zoo_cache import ZOO_NAMES, zoo_path

# What analysis must find prunable (at least) in each model, and what it must block.
EXPECT_BLOCKED = {"conv_lstm": "LSTM"}


def _file_params(path) -> int:  # noqa: ANN001
    """Parameters of the model file as written (Constant-node values counted as weights)."""
    raw = onnx.load(path)
    promote_constants(raw.graph)
    return model_cost(raw).params


@pytest.mark.parametrize("name", ZOO_NAMES)
@pytest.mark.parametrize("seed", [0, 1])
def test_random_pruning_matches_masked_reference(name, seed):
    model = load(zoo_path(name))
    analysis, plan, result = prune_randomly_and_check(model, seed=seed)
    assert plan.keep, f"{name}: the random plan removed nothing"
    assert result.after.params < result.before.params
    assert result.before.params <= _file_params(zoo_path(name))  # preparation copies no weight
    # what the plan predicts from the analysis alone is what the rewrite produced
    assert result.after.params == predicted_params(model, analysis, plan)
    assert result.after.macs == predicted_macs(model, analysis, plan)


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_analysis_finds_prunable_channels(name):
    analysis = analyze(load(zoo_path(name)))
    s = analysis.summary()
    assert s["prunable_channels"] > 0.3 * s["channels"] or name in EXPECT_BLOCKED, s
    if name in EXPECT_BLOCKED:
        assert any(EXPECT_BLOCKED[name] in b.reason for b in analysis.blocked)
