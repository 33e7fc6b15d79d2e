"""onnxruntime's fused transformer ops (com.microsoft), as its own tools write them: zoo
models through ``onnxruntime.transformers.optimizer`` (BERT, GPT-2, LLaMA-style) and
``onnxscript.rewriter.ort_fusions``. Heads and FFN neurons are found through the fused ops,
pruned models pass the checker and equal the masked reference in onnxruntime, the torch
execution matches onnxruntime, and fused attributes that disagree with the weights block."""

from __future__ import annotations

import os
import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnxprune.analysis import analyze
from onnxprune.analysis.rules.fused import understood
from onnxprune.api import apply_plan, load
from onnxprune.io.modelio import checker_view, save_model
from onnxprune.plan import Plan
from onnxprune.prepare.normalize import prepare
from onnxprune.runtime.session import random_inputs, run
from tests.equivalence import assert_matches_masked, check_pruned_model
from tests.plans import random_masking_plan

torch = pytest.importorskip("torch")
optimizer = pytest.importorskip("onnxruntime.transformers.optimizer")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
MS = "com.microsoft"


def _fused(model: onnx.ModelProto) -> set[str]:
    return {f"{n.domain}::{n.op_type}" if n.domain else n.op_type for n in model.graph.node
            if n.domain not in ("", "ai.onnx") or n.op_type == "SimplifiedLayerNormalization"}


def _optimize(src, dst, model_type: str, heads: int, hidden: int):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt = optimizer.optimize_model(str(src), model_type=model_type, num_heads=heads, hidden_size=hidden,
                                       opt_level=0)
    opt.save_model_to_file(str(dst))
    return dst


@pytest.fixture(scope="module")
def bert_fused(tmp_path_factory):
    from models.zoo import export_onnx

    d = tmp_path_factory.mktemp("fused_bert")
    src = export_onnx("bert", d / "bert.onnx", dynamic_batch=True)
    return _optimize(src, d / "bert_opt.onnx", "bert", 4, 128)


@pytest.fixture(scope="module")
def gpt2_fused(tmp_path_factory):
    transformers = pytest.importorskip("transformers")

    class _Hidden(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = transformers.GPT2Model(transformers.GPT2Config(
                vocab_size=100, n_embd=64, n_layer=2, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=0))

        def forward(self, ids, mask):
            return self.m(input_ids=ids, attention_mask=mask, use_cache=False)[0]

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("fused_gpt2")
    ids, mask = torch.randint(0, 100, (2, 8)), torch.ones(2, 8, dtype=torch.int64)
    dyn = {"ids": {0: "b", 1: "s"}, "mask": {0: "b", 1: "s"}, "out": {0: "b", 1: "s"}}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(_Hidden().eval(), (ids, mask), str(d / "gpt2.onnx"), dynamo=False, opset_version=17,
                          input_names=["ids", "mask"], output_names=["out"], dynamic_axes=dyn)
    return _optimize(d / "gpt2.onnx", d / "gpt2_opt.onnx", "gpt2", 4, 64)


@pytest.fixture(scope="module")
def llama_fused(tmp_path_factory):
    pytest.importorskip("transformers")
    from models.llm import export_causal_lm, tiny_llama

    d = tmp_path_factory.mktemp("fused_llama")
    src = export_causal_lm(tiny_llama(), d / "llama.onnx", dynamo=True)
    return _optimize(src, d / "llama_opt.onnx", "gpt2", 4, 64)


@pytest.fixture(scope="module")
def bert_onnxscript(tmp_path_factory):
    ort_fusions = pytest.importorskip("onnxscript.rewriter.ort_fusions")
    import onnx_ir as ir

    from models.zoo import export_onnx

    d = tmp_path_factory.mktemp("fused_bert_onnxscript")
    src = export_onnx("bert", d / "bert.onnx", dynamo=True)
    model, _ = ort_fusions.optimize_for_ort(ir.load(str(src)))
    ir.save(model, str(d / "bert_ort.onnx"))
    return d / "bert_ort.onnx"


def _heads_of(analysis, op: str, model: onnx.ModelProto) -> list:
    names = {n.name for n in model.graph.node if n.op_type == op}
    return [g for g in analysis.prunable_groups if names & set(g.producers) or
            any(t in {o for n in model.graph.node if n.name in names for o in n.output} for t, _ in g.spaces)]


def _prune_and_check(model: onnx.ModelProto, *, seed: int = 0, full_checker: bool = True,
                     unit_size: int | None = None):
    """A random plan (over the groups of ``unit_size`` units only, when given), applied and checked."""
    analysis = analyze(model)
    plan = random_masking_plan(analysis, seed=seed)
    if unit_size is not None:
        keep = {g: k for g, k in plan.keep.items() if plan.sizes[g] == unit_size}
        plan = Plan(fingerprint=plan.fingerprint, keep=keep, sizes={g: plan.sizes[g] for g in keep},
                    criterion=plan.criterion)
    result = apply_plan(model, analysis, plan, debug=True)  # checks after every pass, as --debug does
    if full_checker:
        check_pruned_model(result.model, model)
    else:  # default-domain ops only onnxruntime defines: the checker checks the rest
        onnx.checker.check_model(checker_view(result.model, result.model), full_check=True)
    assert_matches_masked(model, analysis, plan, result, seed=seed, batch=2)
    return analysis, plan, result


# -- the transformer optimizer -------------------------------------------------------------

def test_bert_optimizer_attention_heads_prune_exactly(bert_fused, tmp_path):
    model = load(bert_fused)
    assert _fused(model) == {f"{MS}::Attention", f"{MS}::SkipLayerNormalization", f"{MS}::BiasGelu"}
    assert understood(model) == {f"{MS}::Attention": 2, f"{MS}::SkipLayerNormalization": 4, f"{MS}::BiasGelu": 2}
    analysis, plan, result = _prune_and_check(model)
    assert analysis.fused_ops == understood(model) and analysis.to_dict()["fused_ops"] == analysis.fused_ops
    heads = [g for g in analysis.prunable_groups if any(p.startswith("Attention") for p in g.producers)]
    assert len(heads) == 2 and all(g.size == 4 and g.unit_width == 32 for g in heads)
    assert len(analysis.prunable_groups) == 4  # + the two BiasGelu FFNs
    assert not any("custom-domain" in b.reason for b in analysis.blocked)
    removed = sum(int(g.unit_macs.sum() - g.unit_macs[list(plan.keep[g.id])].sum()) for g in analysis.prunable_groups
                  if g.id in plan.keep)  # the pruned model is counted through its fused ops too
    predicted = result.before.macs - removed  # (per-unit shares of a node's MACs are rounded down)
    assert result.after.macs > 0 and abs(result.after.macs - predicted) <= 0.01 * result.before.macs
    # the summary's costs are a reload's (shapes after the fused ops filled after pruning) and the cost model's
    from onnxprune.analysis.accounting import CostModel
    from onnxprune.analysis.flops import model_cost

    assert result.after == model_cost(load(save_model(result.model, tmp_path / "pruned.onnx")))
    costs, removed_units = CostModel(model, analysis), plan.removed_units(analysis)
    assert (costs.params(removed_units), costs.macs(removed_units)) == (result.after.params, result.after.macs)
    for g in heads:  # num_heads follows the kept heads; the packed QKV weight loses 3 x 32 columns a head
        node = next(n for n in result.model.graph.node if n.name in g.producers)
        kept = len(plan.keep[g.id])
        assert helper.get_attribute_value(next(a for a in node.attribute if a.name == "num_heads")) == kept
        w = next(t for t in result.model.graph.initializer if t.name == node.input[1])
        assert list(w.dims) == [128, 3 * 32 * kept]
    sess_feeds = {"ids": np.arange(18, dtype=np.int64).reshape(2, 9) % 1000,
                  "attention_mask": np.ones((2, 9), np.int64)}
    assert run(result.model, sess_feeds)["output"].shape == (2, 128)


def test_gpt2_optimizer_skip_layernorm_and_fast_gelu(gpt2_fused):
    model = load(gpt2_fused)
    assert _fused(model) == {f"{MS}::SkipLayerNormalization", f"{MS}::FastGelu"}
    analysis, _, _ = _prune_and_check(model, seed=1)
    ffn = [g for g in analysis.prunable_groups if g.size == 256]
    heads = [g for g in analysis.prunable_groups if g.size == 4]
    assert len(ffn) == 2 and len(heads) == 2


def test_llama_optimizer_default_domain_rms_norm_is_accepted(llama_fused):
    raw = onnx.load(str(llama_fused))
    with pytest.raises(onnx.checker.ValidationError, match="SimplifiedLayerNormalization"):
        onnx.checker.check_model(raw)  # what refused the model before
    model = load(llama_fused)
    assert {"SimplifiedLayerNormalization", f"{MS}::SkipSimplifiedLayerNormalization"} <= _fused(model)
    assert set(understood(model)) == _fused(model)
    # the SwiGLU FFNs through SkipSimplifiedLayerNormalization (the attention is not fused here)
    analysis, plan, result = _prune_and_check(model, seed=2, full_checker=False, unit_size=128)
    assert len(analysis.prunable_groups) >= 4 and len(plan.keep) == 2
    assert any(n.op_type == "SimplifiedLayerNormalization" and not n.domain for n in result.model.graph.node)


def test_onnxscript_ort_fusions_multi_head_attention(bert_onnxscript):
    model = load(bert_onnxscript)
    assert _fused(model) == {f"{MS}::MultiHeadAttention", f"{MS}::SkipLayerNormalization", f"{MS}::BiasGelu"}
    analysis, _, result = _prune_and_check(model, seed=3)
    mha = [n.name for n in model.graph.node if n.op_type == "MultiHeadAttention"]
    heads = [g for g in analysis.prunable_groups if g.size == 4]
    assert len(heads) == len(mha) == 2
    kept = [helper.get_attribute_value(a) for n in result.model.graph.node if n.op_type == "MultiHeadAttention"
            for a in n.attribute if a.name == "num_heads"]
    assert kept and all(k < 4 for k in kept)


@pytest.mark.parametrize("which", ["bert_fused", "gpt2_fused", "llama_fused", "bert_onnxscript"])
def test_torch_execution_of_fused_graphs_matches_onnxruntime(which, request):
    from onnxprune.torchexec import OnnxModule

    model = load(request.getfixturevalue(which))
    feeds = random_inputs(model, seed=0, batch=2)
    for name, value in feeds.items():
        if "mask" in name:  # padded tails: the attention masks are exercised
            value[-1, -3:] = 0
    expected = run(model, feeds)
    module = OnnxModule(model)
    with torch.no_grad():
        got = module(**{k: torch.from_numpy(v) for k, v in feeds.items()})
    got = got if isinstance(got, tuple) else (got,)
    for name, value in zip(expected, got):
        np.testing.assert_allclose(value.numpy(), expected[name], rtol=1e-4, atol=1e-4)


# -- hand-built graphs: ops the optimizers above do not write, and bad input ------------------

def _model(nodes, inputs, outputs, inits, opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "fused", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(MS, 1)])
    model.ir_version = 8
    return model


def _w(name: str, *shape: int, seed: int = 0) -> onnx.TensorProto:
    rng = np.random.default_rng(seed + len(name))
    return helper.make_tensor(name, TensorProto.FLOAT, list(shape),
                              (rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32).ravel())


def _attention_block(attn: onnx.NodeProto, extra_inits=(), extra_inputs=()) -> onnx.ModelProto:
    """x -> MatMul(8->16) -> ``attn`` (writes 'a', 16 wide) -> MatMul(16->8) -> y."""
    nodes = [helper.make_node("MatMul", ["x", "w_in"], ["h"], name="proj_in"), attn,
             helper.make_node("MatMul", ["a", "w_out"], ["y"], name="proj_out")]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 5, 8]), *extra_inputs],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 5, 8])],
                  [_w("w_in", 8, 16), _w("w_out", 16, 8), *extra_inits])


def test_attention_num_heads_not_dividing_the_hidden_size_is_blocked():
    attn = helper.make_node("Attention", ["h", "w", "bias"], ["a"], name="attn", domain=MS, num_heads=3)
    model = prepare(_attention_block(attn, [_w("w", 16, 48), _w("bias", 48)]))
    analysis = analyze(model)
    reasons = [b.reason for b in analysis.blocked if b.node == "attn"]
    assert reasons and "num_heads=3 does not divide" in reasons[0]
    assert not any("attn" in g.producers or "attn" in g.consumers for g in analysis.prunable_groups)
    plan = random_masking_plan(analysis, seed=0)  # whatever else is pruned, the attention stays whole
    result = apply_plan(model, analysis, plan)
    node = next(n for n in result.model.graph.node if n.name == "attn")
    w = next(t for t in result.model.graph.initializer if t.name == node.input[1])
    assert list(w.dims) == [16, 48] and helper.get_attribute_value(node.attribute[0]) == 3


def test_multi_head_attention_num_heads_not_dividing_is_blocked():
    nodes = [helper.make_node("MatMul", ["x", f"w_{c}"], [c], name=f"proj_{c}") for c in "qkv"]
    nodes += [helper.make_node("MultiHeadAttention", ["q", "k", "v"], ["a"], name="mha", domain=MS, num_heads=5),
              helper.make_node("MatMul", ["a", "w_out"], ["y"], name="proj_out")]
    model = prepare(_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 5, 8])],
                           [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5, 8])],
                           [_w("w_q", 8, 16), _w("w_k", 8, 16), _w("w_v", 8, 16), _w("w_out", 16, 8)]))
    analysis = analyze(model)
    assert any(b.node == "mha" and "num_heads=5 does not divide" in b.reason for b in analysis.blocked)
    assert not analysis.prunable_groups


def test_attention_kv_cache_heads_go_only_with_the_interface_flag():
    attn = helper.make_node("Attention", ["h", "w", "bias", "", "past"], ["a", "present"], name="attn", domain=MS,
                            num_heads=2, unidirectional=1)
    past = helper.make_tensor_value_info("past", TensorProto.FLOAT, [2, 1, 2, 3, 8])
    model = _attention_block(attn, [_w("w", 16, 48), _w("bias", 48)], [past])
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1  # the cache's batch
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_value = 1
    model.graph.output.append(helper.make_tensor_value_info("present", TensorProto.FLOAT, [2, 1, 2, 8, 8]))
    model = prepare(model)
    analysis = analyze(model)  # the cache's heads are the interface: only with the flag
    assert any(b.node == "attn" and "'past' would change shape" in b.reason and "--allow-interface-change" in b.reason
               for b in analysis.blocked)
    assert not any("attn" in g.producers for g in analysis.prunable_groups)
    computed = onnx.ModelProto()
    computed.CopyFrom(model)  # a cache computed in the graph: left alone, whatever the flag
    computed.graph.node.insert(0, helper.make_node("Identity", ["past"], ["past_copy"], name="copy"))
    next(n for n in computed.graph.node if n.name == "attn").input[4] = "past_copy"
    blocked = analyze(prepare(computed), allow_interface_change=True)
    assert any(b.node == "attn" and "is computed, not a graph input" in b.reason for b in blocked.blocked)
    assert not any("attn" in g.producers for g in blocked.prunable_groups)
    analysis = analyze(model, allow_interface_change=True)
    (heads,) = [g for g in analysis.prunable_groups if "attn" in g.producers]
    plan = Plan(fingerprint=analysis.fingerprint, keep={heads.id: (1,)}, sizes={heads.id: 2}, criterion="test")
    _run_cache_plan(model, analysis, plan, {"x": (1, 5, 8), "past": (2, 1, 2, 3, 8)})


def _run_cache_plan(model: onnx.ModelProto, analysis, plan, shapes: dict) -> dict:
    """Apply ``plan`` to a model with a KV cache; the pruned model (fed the kept cache heads)
    equals the masked reference on every output, on the kept heads of the present cache."""
    from onnxprune.interface import kept_indices
    from onnxprune.rewrite.masking import masked_model

    result = apply_plan(model, analysis, plan)
    onnx.checker.check_model(result.model, full_check=True)
    rng = np.random.default_rng(0)
    feeds = {k: rng.standard_normal(v).astype(np.float32) for k, v in shapes.items()}
    kept = kept_indices(analysis, plan)
    reference = run(masked_model(model, analysis, plan), feeds)
    pruned = run(result.model, {k: np.take(v, kept[k][1], axis=kept[k][0]) if k in kept else v
                                for k, v in feeds.items()})
    for name, value in reference.items():
        want = np.take(value, kept[name][1], axis=kept[name][0]) if name in kept else value
        np.testing.assert_allclose(pruned[name], want, rtol=1e-5, atol=1e-5)
    return {"result": result, "kept": kept, "feeds": feeds}


def _check_small(model: onnx.ModelProto, seed: int = 0) -> None:
    """Prune randomly, check, compare with the masked reference, and the torch execution with ORT."""
    from onnxprune.torchexec import OnnxModule

    model = prepare(model)
    analysis, _, result = _prune_and_check(model, seed=seed)
    assert analysis.prunable_groups
    feeds = random_inputs(model, seed=seed, batch=2)
    expected = run(model, feeds)
    with torch.no_grad():
        got = OnnxModule(model)(**{k: torch.from_numpy(v) for k, v in feeds.items()})
    np.testing.assert_allclose(got.numpy(), expected["y"], rtol=1e-4, atol=1e-5)
    assert result.model is not model


def test_multi_head_attention_with_bias_and_rotary_embedding():
    nodes = [helper.make_node("MatMul", ["x", f"w_{c}"], [f"{c}0"], name=f"proj_{c}") for c in "qkv"]
    nodes += [helper.make_node("RotaryEmbedding", [f"{c}0", "pos", "cos", "sin"], [f"{c}"], name=f"rope_{c}",
                               domain=MS, num_heads=4) for c in "qk"]
    nodes += [helper.make_node("Identity", ["v0"], ["v"], name="v_id"),
              helper.make_node("MultiHeadAttention", ["q", "k", "v", "mha_bias"], ["a"], name="mha", domain=MS,
                               num_heads=4),
              helper.make_node("MatMul", ["a", "w_out"], ["y"], name="proj_out")]
    angles = np.arange(16)[:, None] * (1.0 / 10000 ** (np.arange(2) / 2))[None, :]
    inits = [_w("w_q", 8, 16), _w("w_k", 8, 16), _w("w_v", 8, 16), _w("w_out", 16, 8), _w("mha_bias", 48),
             helper.make_tensor("pos", TensorProto.INT64, [1, 5], np.arange(5)),
             helper.make_tensor("cos", TensorProto.FLOAT, [16, 2], np.cos(angles).astype(np.float32).ravel()),
             helper.make_tensor("sin", TensorProto.FLOAT, [16, 2], np.sin(angles).astype(np.float32).ravel())]
    _check_small(_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 5, 8])],
                        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5, 8])], inits))


def test_fused_matmul_quick_gelu_fast_gelu_and_embed_layer_norm():
    nodes = [
        helper.make_node("EmbedLayerNormalization", ["ids", "", "word", "position", "", "gamma", "beta"],
                         ["e", "mask_index"], name="embed", domain=MS, epsilon=1e-5),
        helper.make_node("FusedMatMul", ["e", "w1t"], ["h"], name="fc1", domain=MS, transB=1, alpha=0.5),
        helper.make_node("Add", ["h", "b1"], ["h1"], name="bias"),
        helper.make_node("QuickGelu", ["h1"], ["g"], name="qgelu", domain=MS, alpha=1.702),
        helper.make_node("FastGelu", ["g", "b2"], ["g2"], name="fgelu", domain=MS),
        helper.make_node("FusedMatMul", ["g2", "w2"], ["y0"], name="fc2", domain=MS),
        helper.make_node("SkipSimplifiedLayerNormalization", ["y0", "e", "gamma"], ["y"], name="skip", domain=MS),
    ]
    inits = [_w("word", 20, 8), _w("position", 16, 8), _w("gamma", 8), _w("beta", 8), _w("w1t", 24, 8),
             _w("b1", 24), _w("b2", 24), _w("w2", 24, 8)]
    model = _model(nodes, [helper.make_tensor_value_info("ids", TensorProto.INT32, [1, 5])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5, 8])], inits)
    _check_small(model)
    analysis = analyze(prepare(model))
    assert [g.size for g in analysis.prunable_groups] == [24]  # the FFN; the hidden axis is normalised
    assert any(b.op == "EmbedLayerNormalization" and "--prune-hidden" in b.reason for b in analysis.blocked)


def _gqa(past: bool) -> onnx.ModelProto:
    """x -> Q/K/V MatMuls -> GroupQueryAttention (4 query heads, 2 KV heads of 8) -> MatMul -> y,
    with a past cache of 3 positions as graph inputs when ``past``."""
    nodes = [helper.make_node("MatMul", ["x", f"w_{c}"], [c], name=f"proj_{c}") for c in "qkv"]
    caches = ["past_k", "past_v"] if past else ["", ""]
    nodes += [helper.make_node("GroupQueryAttention", ["q", "k", "v", *caches, "seqlens", "total"],
                               ["a", "present_k", "present_v"], name="gqa", domain=MS, num_heads=4, kv_num_heads=2),
              helper.make_node("MatMul", ["a", "w_out"], ["y"], name="proj_out")]
    length = 8 if past else 5
    inits = [_w("w_q", 8, 32), _w("w_k", 8, 16), _w("w_v", 8, 16), _w("w_out", 32, 8),
             helper.make_tensor("seqlens", TensorProto.INT32, [1], [length - 1]),
             helper.make_tensor("total", TensorProto.INT32, [], [length])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 5, 8])]
    inputs += [helper.make_tensor_value_info(c, TensorProto.FLOAT, [1, 2, 3, 8]) for c in caches if c]
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5, 8])]
    outs += [helper.make_tensor_value_info(c, TensorProto.FLOAT, [1, 2, length, 8]) for c in ("present_k", "present_v")]
    return _model(nodes, inputs, outs, inits)


def test_group_query_attention_writing_a_cache_it_did_not_read_is_left_alone():
    analysis = analyze(prepare(_gqa(past=False)), allow_interface_change=True)
    assert not analysis.prunable_groups
    assert any("present_k" in b.reason for b in analysis.blocked)


def test_group_query_attention_kv_heads_go_with_the_interface_flag():
    model = prepare(_gqa(past=True))
    without = analyze(model)
    assert not without.prunable_groups
    assert any(b.node == "gqa" and "--allow-interface-change" in b.reason for b in without.blocked)
    analysis = analyze(model, allow_interface_change=True)
    (group,) = analysis.prunable_groups  # one unit: a KV head with its 2 query heads
    assert group.size == 2
    plan = Plan(fingerprint=analysis.fingerprint, keep={group.id: (1,)}, sizes={group.id: 2}, criterion="test")
    ran = _run_cache_plan(model, analysis, plan, {"x": (1, 5, 8), "past_k": (1, 2, 3, 8), "past_v": (1, 2, 3, 8)})
    result, kept, feeds = ran["result"], ran["kept"], ran["feeds"]
    assert [d.dim_value for d in result.model.graph.input[1].type.tensor_type.shape.dim] == [1, 1, 3, 8]
    node = next(n for n in result.model.graph.node if n.op_type == "GroupQueryAttention")
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["num_heads"] == 2 and attrs["kv_num_heads"] == 1
    assert {name: list(ix) for name, (_, ix) in kept.items()} == {
        "past_k": [1], "past_v": [1], "present_k": [1], "present_v": [1]}
    from onnxprune.torchexec import OnnxModule

    with torch.no_grad():  # the torch execution with a past cache, against onnxruntime
        got = OnnxModule(model)(**{k: torch.from_numpy(v) for k, v in feeds.items()})
    for value, name in zip(got, ("y", "present_k", "present_v")):
        np.testing.assert_allclose(value.numpy(), run(model, feeds)[name], rtol=1e-4, atol=1e-5)


def test_saved_pruned_optimizer_model_loads_again(bert_fused, tmp_path):
    model = load(bert_fused)
    _, _, result = _prune_and_check(model, seed=4)
    path = save_model(result.model, tmp_path / "pruned.onnx")
    again = load(path)
    assert understood(again)[f"{MS}::Attention"] == 2


def test_bias_add_slices_its_bias_and_runs_in_torch():
    """BiasAdd has only a CUDA kernel in onnxruntime: the pruned model is compared with the
    masked reference through the torch execution instead."""
    from onnxprune.rewrite.masking import masked_model
    from onnxprune.torchexec import OnnxModule

    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("MatMul", ["x", "w_skip"], ["s"], name="fc_skip"),
             helper.make_node("BiasAdd", ["h", "b1", "s"], ["h1"], name="bias_add", domain=MS),
             helper.make_node("Relu", ["h1"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2")]
    model = prepare(_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 5, 8])],
                           [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5, 8])],
                           [_w("w1", 8, 24), _w("w_skip", 8, 24), _w("b1", 24), _w("w2", 24, 8)]))
    # onnxruntime's CPU provider cannot run BiasAdd, so probing cannot measure what follows it
    listed = {vi.name for vi in model.graph.value_info}
    model.graph.value_info.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 5, 24])
                                  for n in ("h1", "r") if n not in listed)
    analysis = analyze(model)
    (group,) = analysis.prunable_groups
    assert group.size == 24 and {"fc1", "fc_skip"} <= set(group.producers)
    plan = random_masking_plan(analysis, seed=0)
    result = apply_plan(model, analysis, plan)
    bias = next(t for t in result.model.graph.initializer if t.name == "b1")
    assert list(bias.dims) == [len(plan.keep[group.id])]
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 5, 8)).astype(np.float32))
    with torch.no_grad():
        want = OnnxModule(masked_model(model, analysis, plan))(x=x)
        got = OnnxModule(result.model)(x=x)
        plain = OnnxModule(model)(x=x).numpy()
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-6)
    h = x.numpy() @ onnx.numpy_helper.to_array(_w("w1", 8, 24))
    s = x.numpy() @ onnx.numpy_helper.to_array(_w("w_skip", 8, 24))
    ref = np.maximum(h + onnx.numpy_helper.to_array(_w("b1", 24)) + s, 0) @ onnx.numpy_helper.to_array(_w("w2", 24, 8))
    np.testing.assert_allclose(plain, ref, rtol=1e-5, atol=1e-5)


def test_calibrated_scores_on_an_optimized_graph(bert_fused):
    """Gradient criteria run through the torch execution of the fused ops: every head scored."""
    from onnxprune.api import score_channels
    from onnxprune.io.calib_data import CalibrationData

    model = load(bert_fused)
    analysis = analyze(model)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 1000, (16, 12)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[:, 9:] = 0
    scores = score_channels(model, analysis, "taylor-fo", calib=CalibrationData({"ids": ids, "attention_mask": mask}))
    heads = [g.id for g in analysis.prunable_groups if g.size == 4]
    assert len(heads) == 2
    for gid in heads:
        values = np.asarray(scores[gid], dtype=np.float64)
        assert values.shape == (4,) and np.isfinite(values).all() and values.max() > 0


def test_prune_hidden_slices_skip_layer_norm_parameters(bert_fused):
    """--prune-hidden: the residual stream through SkipLayerNormalization is prunable
    (approximately, by design): gamma, beta and the skip bias are sliced with it."""
    model = load(bert_fused)
    assert not any(g.size == 128 and g.prunable for g in analyze(model).groups)
    analysis = analyze(model, prune_hidden=True)
    (hidden,) = [g for g in analysis.prunable_groups if g.size == 128]
    plan = Plan(fingerprint=analysis.fingerprint, keep={hidden.id: tuple(range(0, 128, 2))}, sizes={hidden.id: 128},
                criterion="test")
    result = apply_plan(model, analysis, plan, debug=True)
    check_pruned_model(result.model, model)
    inits = {t.name: list(t.dims) for t in result.model.graph.initializer}
    for node in result.model.graph.node:
        if node.op_type == "SkipLayerNormalization":
            assert all(inits[name] == [64] for name in node.input[2:] if name)
        if node.op_type == "Attention":
            assert inits[node.input[1]] == [64, 384]
    feeds = random_inputs(model, seed=0, batch=2)
    assert run(result.model, feeds)["output"].shape == (2, 128)
