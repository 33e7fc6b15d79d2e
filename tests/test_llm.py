"""LLaMA-architecture decoders as deployed (transformers' LlamaForCausalLM exported by torch's
dynamo exporter, input_ids -> logits, dynamic batch and sequence): tied embeddings stay shared,
the torch execution equals onnxruntime, attention heads (grouped-query: a KV head with its
query heads, and a query head alone) and SwiGLU neurons are prunable and equal the masked
reference, from the dynamo exporter and the legacy one. Small random-weight models of SmolLM2's
structure, exported once per session. Skipped without transformers."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from tests.plans import predicted_params
from onnxprune.analysis import analyze
from onnxprune.analysis.query_heads import repair_keep
from onnxprune.api import apply_plan, load
from onnxprune.analysis.flops import model_cost
from tests.plans import random_masking_plan
from onnxprune.plan import Plan
from onnxprune.runtime.session import run
from tests.equivalence import assert_matches_masked, check_pruned_model

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from models.llm import TINY_VOCAB, export_causal_lm, tiny_llama  # noqa: E402

# name -> tiny_llama options: SmolLM2's head counts coincide (3 KV heads repeated 3 times), as
# in "gqa"; "gqa_distinct" keeps every count apart (2 KV heads, each repeated 3 times)
CONFIGS = {"gqa": {}, "gqa_distinct": {"hidden": 96, "heads": 6, "kv_heads": 2}}


@pytest.fixture(scope="session")
def tiny_exports(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("llm")
    cache: dict[str, str] = {}

    def get(name: str) -> str:
        if name not in cache:
            cache[name] = str(export_causal_lm(tiny_llama(**CONFIGS[name]), folder / f"{name}.onnx"))
        return cache[name]

    return get  # type: ignore[return-value]


def _ids(batch: int, seq: int, seed: int = 0) -> dict[str, np.ndarray]:
    return {"input_ids": np.random.default_rng(seed).integers(0, TINY_VOCAB, (batch, seq)).astype(np.int64)}


def _group_kinds(analysis):  # noqa: ANN001, ANN202
    """(KV-head groups, FFN neuron groups): both made by two projections (k, v; gate, up), only
    the FFN's read by a weighted consumer (a KV head is read through its query heads). Removing
    a KV head removes the query heads that read it."""
    heads = [g for g in analysis.prunable_groups if len(g.producers) == 2 and not g.consumers]
    ffn = [g for g in analysis.prunable_groups if len(g.producers) == 2 and g.consumers]
    return heads, ffn


def _query_groups(analysis):  # noqa: ANN001, ANN202
    """Query-head groups: q_proj rows and o_proj columns of one head each."""
    return [g for g in analysis.prunable_groups if len(g.producers) == 1 and len(g.consumers) == 1
            and g.size < 64]


def test_tied_embedding_stays_shared(tiny_exports):
    path = tiny_exports("gqa")
    original = onnx.load(path)
    model = load(path)
    assert model_cost(model).params == model_cost(original).params  # the LM head's Transpose is not folded
    table = next(n.input[0] for n in model.graph.node if n.op_type == "Gather")
    readers = [n.op_type for n in model.graph.node if table in n.input]
    assert sorted(readers) == ["Gather", "Transpose"], readers


@pytest.mark.parametrize("seed", [0, 1])
def test_pruned_llm_never_has_more_parameters(tiny_exports, seed):
    path = tiny_exports("gqa")
    model = load(path)
    analysis = analyze(model, prune_hidden=bool(seed))
    plan = random_masking_plan(analysis, seed=seed)
    result = apply_plan(model, analysis, plan)
    assert model_cost(result.model).params < model_cost(onnx.load(path)).params
    assert result.after.params == predicted_params(model, analysis, plan)
    tables = [n.input[0] for n in result.model.graph.node if n.op_type in ("Gather", "Transpose")
              and n.input[0] in {t.name for t in result.model.graph.initializer}]
    assert len(set(tables)) == 1, f"the tied embedding table was copied: {tables}"


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_torch_execution_matches_onnxruntime(tiny_exports, name):
    from onnxprune.torchexec import OnnxModule

    model = load(tiny_exports(name))
    module = OnnxModule(model)
    for batch, seq in [(1, 1), (1, 16), (3, 7)]:
        feeds = _ids(batch, seq, seed=seq)
        reference = run(model, feeds)["logits"]
        with torch.no_grad():
            got = module(torch.from_numpy(feeds["input_ids"])).numpy()
        assert got.shape == reference.shape
        np.testing.assert_allclose(got, reference, rtol=1e-4, atol=1e-4 * float(np.abs(reference).max()))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_attention_heads_and_ffn_neurons_are_prunable(tiny_exports, name):
    options = {"heads": 4, "kv_heads": 2, **CONFIGS[name]}
    analysis = analyze(load(tiny_exports(name)))
    heads, ffn = _group_kinds(analysis)
    queries = _query_groups(analysis)
    assert len(heads) == 2 and len(ffn) == 2 and len(queries) == 2, [(g.id, g.size, g.reasons) for g in analysis.groups]
    head_dim = (options.get("hidden", 64)) // options["heads"]
    for g in heads:  # a unit: one KV head (k_proj and v_proj rows; its query heads go with it)
        assert g.size == options["kv_heads"] and g.unit_width == head_dim
    for g in queries:  # a unit: one query head (q_proj rows, o_proj columns)
        assert g.size == options["heads"] and g.unit_width == head_dim
    assert all(g.size == 128 for g in ffn)
    reasons = " ".join(b.reason for b in analysis.blocked)
    assert "Reshape moves a dynamic axis" not in reasons and "flattened together with a dynamic axis" not in reasons


def test_heads_are_found_from_inferred_shapes_alone(tiny_exports, monkeypatch):
    """Shape probing does not run every model (large ones): inference alone must carry the batch
    and sequence symbols through the rotary positions and the causal mask (Range(0, seq))."""
    import onnxprune.prepare.normalize

    monkeypatch.setattr(onnxprune.prepare.normalize, "probe_shapes", lambda model: {})
    heads, ffn = _group_kinds(analyze(load(tiny_exports("gqa"))))
    assert len(heads) == 2 and len(ffn) == 2


def _plan(analysis, groups, seed: int) -> Plan:  # noqa: ANN001
    rng = np.random.default_rng(seed)
    keep = {g.id: tuple(sorted(rng.choice(g.size, size=max(1, g.size // 2), replace=False).tolist())) for g in groups}
    keep = repair_keep(analysis, keep)  # a layer keeps a query head of a kept KV head
    return Plan(fingerprint=analysis.fingerprint, keep=keep, sizes={g.id: g.size for g in groups}, criterion="test")


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("kind", ["heads", "ffn", "both", "one_layer_heads", "queries", "all"])
def test_pruned_decoder_equals_masked_reference(tiny_exports, name, kind):
    """KV heads (with their query heads), neurons or both; "one_layer_heads": layers keep
    different head counts (the exporter builds the KV-repeat shapes once for all layers: each
    layer needs its own); "queries": query heads alone; "all": KV heads, query heads, neurons."""
    model = load(tiny_exports(name))
    analysis = analyze(model)
    heads, ffn = _group_kinds(analysis)
    queries = _query_groups(analysis)
    groups = {"heads": heads, "ffn": ffn, "both": heads + ffn, "one_layer_heads": heads[:1], "queries": queries,
              "all": heads + queries + ffn}[kind]
    plan = _plan(analysis, groups, seed=len(kind))
    result = apply_plan(model, analysis, plan)
    check_pruned_model(result.model, model)
    assert model_cost(result.model).params < model_cost(model).params
    assert result.after.params == predicted_params(model, analysis, plan)  # the analysis predicts the rewrite
    for batch in (1, 2):
        assert_matches_masked(model, analysis, plan, result, seed=batch, batch=batch)


def _query_plan(analysis, keep_per_layer):  # noqa: ANN001, ANN202
    """A plan keeping, in every query-head group, the heads ``keep_per_layer`` names."""
    queries = _query_groups(analysis)
    return Plan(fingerprint=analysis.fingerprint, keep={g.id: keep_per_layer for g in queries},
                sizes={g.id: g.size for g in queries}, criterion="test")


# name -> (query heads kept per layer, query heads per KV head kept uniformly or None, KV heads removed)
QUERY_PLANS = {
    "gqa": [((0, 2), 1, 0), ((0, 1, 3), None, 0), ((2, 3), 2, 1)],
    "gqa_distinct": [((0, 1, 3, 4), 2, 0), ((1, 3, 4, 5), None, 0), ((0,), 1, 1), ((1, 2, 5), None, 0)],
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_query_heads_inside_a_kv_group_go_alone(tiny_exports, name):
    """A query head goes without its KV head: q_proj rows and o_proj columns of that head only.
    When every kept KV head keeps as many query heads, the repeat stays an Expand with the kept
    count; otherwise a Gather picks each kept query head's KV head. Removing every query head of
    a KV head removes the KV head (k_proj, v_proj rows) too."""
    model = load(tiny_exports(name))
    analysis = analyze(model)
    options = {"heads": 4, "kv_heads": 2, "hidden": 64, **CONFIGS[name]}
    head_dim = options["hidden"] // options["heads"]
    per_query, per_kv = 2 * head_dim * options["hidden"], 2 * head_dim * options["hidden"]
    for keep, uniform, kv_removed in QUERY_PLANS[name]:
        plan = _query_plan(analysis, keep)
        result = apply_plan(model, analysis, plan)
        check_pruned_model(result.model, model)
        removed = 2 * ((options["heads"] - len(keep)) * per_query + kv_removed * per_kv)  # 2 layers
        assert result.before.params - result.after.params == removed == \
            result.before.params - predicted_params(model, analysis, plan)
        gathers = [n for n in result.model.graph.node if n.name.endswith("__kept_heads")]
        assert len(gathers) == (0 if uniform else 4), (keep, [n.name for n in gathers])  # K and V, 2 layers
        for batch in (1, 2):
            assert_matches_masked(model, analysis, plan, result, seed=batch, batch=batch)


def test_a_plan_without_query_heads_in_a_layer_is_refused(tiny_exports):
    """Query heads kept only under removed KV heads: the layer would keep none; refused."""
    from onnxprune.errors import PlanError

    model = load(tiny_exports("gqa"))
    analysis = analyze(model)
    heads, _ = _group_kinds(analysis)
    queries = _query_groups(analysis)
    plan = Plan(fingerprint=analysis.fingerprint, keep={heads[0].id: (1,), queries[0].id: (0, 1)},
                sizes={heads[0].id: 2, queries[0].id: 4}, criterion="test")
    with pytest.raises(PlanError, match="removes every query head"):
        apply_plan(model, analysis, plan)


@pytest.fixture(scope="module")
def legacy_export(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("llm_legacy")
    return str(export_causal_lm(tiny_llama(**CONFIGS["gqa_distinct"]), folder / "legacy.onnx", dynamo=False))


@pytest.mark.parametrize("kind", ["heads", "queries", "all"])
def test_legacy_export_prunes_and_equals_masked_reference(legacy_export, kind):
    """The legacy (TorchScript) exporter, with eager attention (``export_causal_lm``): KV heads,
    query heads alone, and both with FFN neurons, equal to the masked reference at batch 1 and 2."""
    model = load(legacy_export)
    analysis = analyze(model)
    heads, ffn = _group_kinds(analysis)
    queries = _query_groups(analysis)
    assert len(heads) == len(ffn) == len(queries) == 2, [(g.id, g.size, g.reasons) for g in analysis.groups]
    groups = {"heads": heads, "queries": queries, "all": heads + queries + ffn}[kind]
    plan = _plan(analysis, groups, seed=len(kind))
    result = apply_plan(model, analysis, plan)
    check_pruned_model(result.model, model)
    assert result.after.params == predicted_params(model, analysis, plan) < model_cost(model).params
    for batch in (1, 2):
        assert_matches_masked(model, analysis, plan, result, seed=batch, batch=batch)


# -- the torch execution: GatherND as causal masks use it, inputs a node cannot take ---------

def _gather_nd_model(data_shape: tuple[int, ...], index_shape: tuple[int, ...], batch_dims: int) -> onnx.ModelProto:
    """GatherND(data, indices) with inputs in the order indices, data."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("GatherND", ["data", "indices"], ["out"], name="gnd", batch_dims=batch_dims)], "g",
        [helper.make_tensor_value_info("indices", TensorProto.INT64, index_shape),
         helper.make_tensor_value_info("data", TensorProto.FLOAT, data_shape)],
        [helper.make_empty_tensor_value_info("out")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.parametrize("data_shape, index_shape, batch_dims", [
    ((3, 7), (3, 1, 7, 1, 2), 0),  # a causal mask's [batch, position] lookups, broadcast index grids
    ((2, 3, 4), (2, 5, 1), 1),
    ((2, 3, 4, 5), (2, 3, 6, 1), 2),
    ((2, 3, 4), (4, 2), 0),
])
def test_gather_nd_matches_onnxruntime(data_shape, index_shape, batch_dims):
    from onnxprune.torchexec import OnnxModule

    rng = np.random.default_rng(0)
    model = _gather_nd_model(data_shape, index_shape, batch_dims)
    data = rng.standard_normal(data_shape).astype(np.float32)
    k = index_shape[-1]
    bounds = np.array(data_shape[batch_dims:batch_dims + k])
    indices = rng.integers(-bounds, bounds, size=index_shape).astype(np.int64)  # negative indices too
    reference = run(model, {"data": data, "indices": indices})["out"]
    with torch.no_grad():
        got = OnnxModule(model)(torch.from_numpy(indices), torch.from_numpy(data)).numpy()
    np.testing.assert_array_equal(got, reference)


def test_inputs_a_node_cannot_take_are_a_clean_error():
    """An export traced at batch 1 can bake that batch into a causal mask's lookups: running it on
    a larger batch is the user's input error, named with the node and the shapes."""
    from onnxprune.errors import ModelRunError
    from onnxprune.torchexec import OnnxModule

    model = _gather_nd_model((1, 8), (2, 8, 2), 0)
    indices = np.stack(np.meshgrid(np.arange(2), np.arange(8), indexing="ij"), -1).astype(np.int64)
    with pytest.raises(ModelRunError, match=r"node 'gnd' \(GatherND\).*\[1, 8\], \[2, 8, 2\].*--batch-size 1"):
        OnnxModule(model)(torch.from_numpy(indices), torch.zeros(1, 8))


# -- language-model measurements ----------------------------------------------------------------

def test_perplexity_equals_the_torch_models(tiny_exports):
    from onnxprune.verify.lm_eval import perplexity

    windows = _ids(3, 24, seed=5)["input_ids"]
    with torch.no_grad():
        loss = tiny_llama()(input_ids=torch.from_numpy(windows), labels=torch.from_numpy(windows)).loss
    got = perplexity(tiny_exports("gqa"), windows, batch_size=2)
    assert got == pytest.approx(float(torch.exp(loss)), rel=1e-4)


def test_next_token_scores_rank_units_and_split_windows_are_disjoint(tiny_exports):
    from onnxprune.verify.lm_eval import next_token_taylor_scores, split_windows

    model = load(tiny_exports("gqa"))
    analysis = analyze(model)
    positions = np.arange(1000)  # token values = their positions in the stream
    calib, evaluate = split_windows(positions, 32, calib=4, evaluate=3)
    assert calib.shape == (4, 32) and evaluate.shape == (3, 32)
    assert np.array_equal(calib.reshape(-1), positions[:128]) and evaluate.reshape(-1)[-1] == 991
    assert not set(calib.reshape(-1).tolist()) & set(evaluate.reshape(-1).tolist())
    with pytest.raises(Exception, match="31 windows of 32"):
        split_windows(positions, 32, calib=30, evaluate=2)
    scores = next_token_taylor_scores(model, analysis, _ids(4, 16)["input_ids"], batch_size=2)
    assert set(scores) == {g.id for g in analysis.prunable_groups}
    for g in analysis.prunable_groups:
        assert scores[g.id].shape == (g.size,) and np.all(np.isfinite(scores[g.id])) and scores[g.id].max() > 0


# -- perplexity in verify ---------------------------------------------------------------------

def test_verify_reports_perplexity_and_tokens_per_second(tiny_exports, tmp_path, monkeypatch, capsys):
    """verify on token windows: perplexity of both models as lm_eval measures it (the torch
    model's loss, tested above) and tokens per second from the timed runs; through the CLI
    too (the 'Language model' table and the JSON report)."""
    import json
    import sys

    from onnxprune.cli import main
    from onnxprune.verify.lm_eval import perplexity
    from onnxprune.io.modelio import save_model
    from onnxprune.verify.compare import verify

    path = tiny_exports("gqa")
    model = load(path)
    analysis = analyze(model)
    heads, ffn = _group_kinds(analysis)
    pruned_path = save_model(apply_plan(model, analysis, _plan(analysis, heads + ffn, seed=3)).model, tmp_path / "p.onnx")
    windows = _ids(3, 20, seed=7)["input_ids"]
    report = verify(onnx.load(path), onnx.load(pruned_path), {"input_ids": windows}, runs=2, warmup=1,
                    batch_sizes=[2])
    lm = report["language_model"]
    assert (lm["input"], lm["output"], lm["attention_mask"]) == ("input_ids", "logits", None)
    assert (lm["windows"], lm["window_length"], lm["tokens_scored"]) == (3, 20, 3 * 19)
    assert lm["original"]["perplexity"] == pytest.approx(perplexity(path, windows), rel=1e-5)
    assert lm["pruned"]["perplexity"] == pytest.approx(perplexity(pruned_path, windows), rel=1e-5)
    assert lm["pruned"]["perplexity"] != pytest.approx(lm["original"]["perplexity"], rel=1e-5)  # random weights: close
    assert lm["perplexity_ratio"] == pytest.approx(lm["pruned"]["perplexity"] / lm["original"]["perplexity"])
    assert lm["throughput"] == {"provider": "CPUExecutionProvider", "batch": 2, "tokens_per_run": 40}
    for side in ("original", "pruned"):
        p50 = report[side]["latency"]["CPUExecutionProvider"]["2"]["p50"]
        assert lm[side]["tokens_per_s"] == pytest.approx(40 / (p50 / 1000))
    assert "language_model" not in verify(onnx.load(path), onnx.load(pruned_path), runs=1, warmup=0)  # random inputs

    np.savez(tmp_path / "windows.npz", input_ids=windows)
    monkeypatch.setattr(sys, "argv", ["onnxprune", "verify", path, str(pruned_path), "--inputs",
                                      str(tmp_path / "windows.npz"), "--runs", "2", "--warmup", "0",
                                      "--json", str(tmp_path / "r.json")])
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as exc:
        main()
        raise SystemExit(0)
    out = capsys.readouterr().out
    assert not exc.value.code, out
    assert "Language model" in out and "perplexity (3 windows of 20, 57 tokens predicted)" in out
    assert f"{lm['original']['perplexity']:.4g}" in out and "tokens per second" in out
    saved = json.loads((tmp_path / "r.json").read_text())["language_model"]
    assert saved["pruned"]["perplexity"] == pytest.approx(lm["pruned"]["perplexity"], rel=1e-6)


def test_perplexity_ignores_padded_positions():
    """With an attention mask, a position counts only when the token predicted and the one
    before it are real: left padding gives the same loss as the windows without it."""
    from onnxprune.verify.lm_eval import language_model_report, next_token_nll

    rng = np.random.default_rng(0)
    logits = rng.standard_normal((2, 10, 30)).astype(np.float32)
    ids = rng.integers(0, 30, (2, 10))
    mask = np.ones_like(ids)
    mask[0, :4] = 0  # the first window is left-padded by 4
    nll, count = next_token_nll(logits, ids, mask)
    tail = next_token_nll(logits[:1, 4:], ids[:1, 4:])
    full = next_token_nll(logits[1:], ids[1:])
    assert count == 5 + 9 == tail[1] + full[1]
    assert nll == pytest.approx(tail[0] + full[0])
    assert next_token_nll(logits, ids)[1] == 18  # without the mask every position counts
    report = language_model_report({"input_ids": ids, "attention_mask": mask}, {"logits": logits},
                                   {"logits": logits}, {}, {})
    assert report["attention_mask"] == "attention_mask" and report["tokens_scored"] == 14
    assert report["original"]["perplexity"] == pytest.approx(np.exp(nll / count))
    assert report["throughput"] is None
    # no token windows (float inputs) or no logits over the vocabulary: not a language model
    assert language_model_report({"x": logits[:, :, 0]}, {"logits": logits}, {"logits": logits}, {}, {}) is None
    assert language_model_report({"input_ids": ids + 30}, {"logits": logits}, {"logits": logits}, {}, {}) is None


# -- post-training recovery -------------------------------------------------------------------

@pytest.mark.parametrize("method", ["lstsq", "scale", "bias"])
def test_recovery_on_a_pruned_decoder(tiny_exports, method):
    """Every consumer that lost inputs (the attention output projections after head removal,
    the FFN down projections after neuron removal: MatMul with a constant [K, N] weight) is
    recovered, unless the held-out check refuses a step, and the logits get closer to the
    original's on held-out windows; the tied embedding stays one table."""
    from onnxprune.io.calib_data import CalibrationData
    from onnxprune.recovery import recover

    model = load(tiny_exports("gqa_distinct"))
    analysis = analyze(model)
    heads, ffn = _group_kinds(analysis)
    plan = _plan(analysis, heads + ffn, seed=4)
    pruned = apply_plan(model, analysis, plan).model
    windows = np.random.default_rng(2).integers(0, TINY_VOCAB, (24, 32)).astype(np.int64)
    recovered, report = recover(model, pruned, analysis, plan, CalibrationData({"input_ids": windows}),
                                methods=(method,), holdout=0.25)
    weighted = {c for g in analysis.prunable_groups for c in g.consumers}  # o_proj: its query heads go with their KV heads
    consumers = {ref.node for ref in analysis.consumers if ref.node in weighted}
    assert len(consumers) == 4, consumers
    steps = [(s["node"], s["method"], s["status"], s["reason"]) for s in report["steps"]]
    # the value repeats (where a removed KV head is masked, for scores) are listed, not refitted
    others = [s for s in steps if s[0] not in consumers]
    assert len(others) == 2 and all(s[2] == "skipped" and "Reshape is not refitted" in s[3] for s in others), others
    steps = [s for s in steps if s[0] in consumers]
    assert {s[0] for s in steps} == consumers and all(s[1] == method for s in steps), steps
    assert all(s[2] == "updated" or "held-out" in s[3] for s in steps), steps  # supported: none skipped
    assert sum(s[2] == "updated" for s in steps) >= 2, steps
    held = report["held_out"]
    assert held["recovered"]["output_mse"] < held["pruned"]["output_mse"] and not report.get("reverted")
    assert model_cost(recovered).params <= model_cost(pruned).params + 4 * 96  # at most a bias per consumer
    tables = {n.input[0] for n in recovered.graph.node if n.op_type in ("Gather", "Transpose")
              and n.input[0] in {t.name for t in recovered.graph.initializer}}
    assert len(tables) == 1
