"""Depth pruning: residual blocks ``y = x + f(x)`` removed whole (``analysis.blocks``,
``rewrite.remove_blocks``, ``scoring.block_scores``), alone or with channels, as one budget.

The pruned model equals the masked reference (the branch multiplied by 0 at its Add) on a
small random LLaMA (dynamo export) and on ResNet-18; only branches nothing else reads are
offered; weights a branch shares with kept nodes stay, whole and once; parameters never grow.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.analysis import analyze
from onnxprune.analysis.blocks import block_cost_model, find_blocks
from onnxprune.analysis.flops import model_cost
from onnxprune.analysis.removal import Removal
from onnxprune.api import apply_plan, load
from onnxprune.errors import OnnxPruneError, PlanError
from onnxprune.io.calib_data import CalibrationData
from onnxprune.plan import Plan
from onnxprune.rewrite import RemoveBlocksPass
from tests.equivalence import assert_matches_masked, check_pruned_model
from tests.plans import random_masking_plan

NONE = np.zeros(0, dtype=np.int64)


def _block_plan(analysis, names, base: Plan | None = None) -> Plan:
    base = base or Plan(fingerprint=analysis.fingerprint, keep={}, sizes={}, criterion="test")
    return replace(base, removed_blocks=tuple(names))


def _check(model, analysis, plan, *, batches=(1,)) -> onnx.ModelProto:
    """Rewrite (checking the graph after every pass), then: valid model, masked equivalence, the
    cost model's prediction, and never more parameters than the original."""
    result = apply_plan(model, analysis, plan, debug=True)
    check_pruned_model(result.model, model)
    for batch in batches:
        assert_matches_masked(model, analysis, plan, result, seed=batch, batch=batch)
    blocks = [b for b in find_blocks(model) if b.add in plan.removed_blocks]
    costs = block_cost_model(model, analysis, blocks)
    removed = plan.removed_units(analysis)
    assert result.after.params == costs.params(removed)
    assert result.after.params < model_cost(model).params
    return result.model


# -- small graphs built by hand ----------------------------------------------------------------

def _residual_model(tmp_path, scales=(1.0,), *, leak: str | None = None, tied: bool = False) -> onnx.ModelProto:
    """x [2, 8] -> per block k: y = y + MatMul(Relu(MatMul(y, A_k)), B_k * scales[k]) -> out.
    ``leak='hidden'``: block 0's hidden activation is also a graph output; ``leak='reader'``: it
    also feeds a node after the blocks. ``tied``: block 0's A also serves a final MatMul."""
    rng = np.random.default_rng(0)
    nodes, inits, y = [], [], "x"
    for k, s in enumerate(scales):
        a, b = rng.standard_normal((8, 8)).astype(np.float32), rng.standard_normal((8, 8)).astype(np.float32) * s
        inits += [numpy_helper.from_array(a, f"A{k}"), numpy_helper.from_array(b, f"B{k}")]
        nodes += [helper.make_node("MatMul", [y, f"A{k}"], [f"h{k}"], name=f"mm_a{k}"),
                  helper.make_node("Relu", [f"h{k}"], [f"r{k}"], name=f"relu{k}"),
                  helper.make_node("MatMul", [f"r{k}", f"B{k}"], [f"f{k}"], name=f"mm_b{k}"),
                  helper.make_node("Add", [y, f"f{k}"], [f"y{k}"], name=f"add{k}")]
        y = f"y{k}"
    outputs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2, 8])]
    if tied:
        nodes.append(helper.make_node("MatMul", [y, "A0"], ["out"], name="head"))
    elif leak == "reader":
        nodes += [helper.make_node("Mul", [y, "r0"], ["out"], name="reads_r0")]
    else:
        nodes.append(helper.make_node("Identity", [y], ["out"], name="final"))
    if leak == "hidden":
        outputs.append(helper.make_tensor_value_info("r0", TensorProto.FLOAT, [2, 8]))
    graph = helper.make_graph(nodes, "residual", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
                              outputs, inits)
    path = tmp_path / f"residual_{len(scales)}_{leak}_{tied}.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return load(path)


def test_blocks_of_a_plain_residual_chain(tmp_path):
    model = _residual_model(tmp_path, (1.0, 1.0))
    blocks = find_blocks(model)
    assert [(b.add, b.skip, b.branch, b.nodes) for b in blocks] == [
        ("add0", "x", "f0", ("mm_a0", "relu0", "mm_b0")), ("add1", "y0", "f1", ("mm_a1", "relu1", "mm_b1"))]
    assert all(b.params == 128 and b.macs == 2 * 2 * 8 * 8 for b in blocks)


@pytest.mark.parametrize("leak", ["hidden", "reader"])
def test_a_branch_that_feeds_elsewhere_is_not_offered(tmp_path, leak):
    """Block 0's hidden activation is a graph output, or is read after the blocks: removing the
    branch would change something else, so only block 1 is offered; a plan naming block 0 is
    refused with the node's name."""
    model = _residual_model(tmp_path, (1.0, 1.0), leak=leak)
    assert [b.add for b in find_blocks(model)] == ["add1"]
    analysis = analyze(model)
    with pytest.raises(OnnxPruneError, match="'add0' is not a removable residual block"):
        apply_plan(model, analysis, _block_plan(analysis, ["add0"]))


def test_broadcast_and_downsampling_adds_are_not_blocks(tmp_path):
    """Add(x, bias) (a constant), Add of two branches neither of which reads the other's input
    (a ResNet downsampling block), and an Add that broadcasts the skip are not offered."""
    w = numpy_helper.from_array(np.ones((8, 8), np.float32), "W")
    bias = numpy_helper.from_array(np.ones((8,), np.float32), "bias")
    row = numpy_helper.from_array(np.ones((1, 8), np.float32), "row")
    nodes = [helper.make_node("Add", ["x", "bias"], ["xb"], name="bias_add"),
             helper.make_node("MatMul", ["xb", "W"], ["p"], name="proj"),  # the "downsample" path
             helper.make_node("Relu", ["xb"], ["q"], name="relu"),
             helper.make_node("MatMul", ["q", "W"], ["f"], name="branch"),
             helper.make_node("Add", ["p", "f"], ["y"], name="two_paths"),
             helper.make_node("MatMul", ["row", "W"], ["r"], name="row_mm"),
             helper.make_node("Add", ["r", "y"], ["out"], name="broadcast_skip")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2, 8])], [w, bias, row])
    path = tmp_path / "adds.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    assert find_blocks(load(path)) == []


def test_a_weight_shared_with_kept_nodes_stays_whole(tmp_path):
    """Block 0's first weight also serves the head: removing block 0 drops only B0; A0 stays,
    unsliced, once."""
    model = _residual_model(tmp_path, (1.0, 1.0), tied=True)
    analysis = analyze(model)
    block = find_blocks(model)[0]
    assert block.add == "add0" and block.params == 64  # B0 only: A0 is shared
    pruned = _check(model, analysis, _block_plan(analysis, ["add0"]))
    inits = {t.name: tuple(t.dims) for t in pruned.graph.initializer}
    assert inits == {"A0": (8, 8), "A1": (8, 8), "B1": (8, 8)}
    assert model_cost(pruned).params == model_cost(model).params - 64


def test_the_pass_is_idempotent_and_truthful(tmp_path):
    model = _residual_model(tmp_path, (1.0, 1.0, 1.0))
    analysis = analyze(model)
    ctx = Removal(analysis, NONE)
    step = RemoveBlocksPass(["add0", "add1"])
    assert step.call(model, ctx).modified
    assert [n.input[0] for n in model.graph.node if n.name in ("mm_a2", "add2")] == ["x", "x"]
    assert not step.call(model, ctx).modified
    assert not RemoveBlocksPass(["add2"]).call(onnx.ModelProto(), ctx).modified  # gone: nothing to do


def test_a_block_whose_output_is_a_graph_output_keeps_its_name(tmp_path):
    model = _residual_model(tmp_path, (1.0, 1.0))
    model.graph.output.append(helper.make_tensor_value_info("y1", TensorProto.FLOAT, [2, 8]))
    analysis = analyze(model)
    pruned = _check(model, analysis, _block_plan(analysis, ["add0", "add1"]))
    assert [o.name for o in pruned.graph.output] == ["out", "y1"]
    assert {n.op_type for n in pruned.graph.node} == {"Identity"}


# -- plans -------------------------------------------------------------------------------------

def test_plan_json_round_trip_with_removed_blocks(tmp_path):
    model = _residual_model(tmp_path, (1.0, 1.0))
    analysis = analyze(model)
    plan = _block_plan(analysis, ["add1", "add0"])
    assert plan.removed_blocks == ("add0", "add1")
    path = plan.save(tmp_path / "plan.json")
    again = Plan.load(path)
    assert again == plan and again.removed_blocks == ("add0", "add1")
    older = {k: v for k, v in plan.to_dict().items() if k != "removed_blocks"}  # a plan from before depth
    assert Plan.from_dict(older).removed_blocks == ()
    assert "removed_blocks" not in Plan.from_dict(older).to_dict()
    with pytest.raises(PlanError, match="removed_blocks must be a list"):
        Plan.from_dict({**plan.to_dict(), "removed_blocks": "add0"})
    with pytest.raises(PlanError, match="removes block 'nope', which is not a node"):
        _block_plan(analysis, ["nope"]).validate(analysis)


# -- scoring -----------------------------------------------------------------------------------

@pytest.mark.parametrize("criterion", ["influence", "loss"])
def test_an_identity_like_block_scores_lowest(tmp_path, criterion):
    from onnxprune.scoring.block_scores import block_scores

    model = _residual_model(tmp_path, (1.0, 1e-3, 1.0))  # block 1 barely changes its input
    data = CalibrationData({"x": np.random.default_rng(1).standard_normal((4, 8)).astype(np.float32)})  # 2 batches
    scores = block_scores(model, find_blocks(model), data, criterion=criterion, batch_size=2)
    assert set(scores) == {"add0", "add1", "add2"}
    assert min(scores, key=scores.__getitem__) == "add1", scores
    assert scores["add1"] < 0.01 * min(scores["add0"], scores["add2"])


def test_greedy_removal_picks_the_identity_like_block_first(tmp_path):
    from onnxprune.scoring.block_scores import greedy_blocks

    model = _residual_model(tmp_path, (1.0, 1.0, 1e-3))
    data = CalibrationData({"x": np.random.default_rng(2).standard_normal((2, 8)).astype(np.float32)})
    chosen = greedy_blocks(model, find_blocks(model), data, 2, batch_size=2)
    assert chosen[0] == "add2" and len(set(chosen)) == 2


# -- real architectures ------------------------------------------------------------------------

def test_resnet18_blocks_equal_the_masked_reference():
    pytest.importorskip("torch")
    from tests.zoo_cache import zoo_path

    model = load(zoo_path("resnet18"))
    analysis = analyze(model)
    blocks = find_blocks(model)
    assert len(blocks) == 5, [b.add for b in blocks]  # the basic blocks whose skip is the identity
    nodes = {n.name: n.op_type for n in model.graph.node}
    assert all(sorted(nodes[n] for n in b.nodes if nodes[n] == "Conv") == ["Conv", "Conv"] for b in blocks)
    _check(model, analysis, _block_plan(analysis, [blocks[0].add, blocks[-1].add]))
    channels = random_masking_plan(analysis, seed=3)
    _check(model, analysis, _block_plan(analysis, [b.add for b in blocks[1:4]], channels))


@pytest.fixture(scope="module")
def tiny_llama_path(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from models.llm import export_causal_lm, tiny_llama

    return export_causal_lm(tiny_llama(layers=3), tmp_path_factory.mktemp("depth") / "tiny.onnx")


def _decoder_blocks(model):
    """(attention blocks, MLP blocks): an attention branch holds the Softmax."""
    blocks = find_blocks(model)
    ops = {n.name: n.op_type for n in model.graph.node}
    attention = [b for b in blocks if any(ops[n] == "Softmax" for n in b.nodes)]
    mlp = [b for b in blocks if b not in attention]
    return attention, mlp


def test_decoder_layers_are_blocks(tiny_llama_path):
    model = load(tiny_llama_path)
    attention, mlp = _decoder_blocks(model)
    assert len(attention) == 3 and len(mlp) == 3
    hidden, heads, kv, ffn = 64, 4, 2, 128
    norm = hidden
    for b in attention:  # q, o: hidden x hidden; k, v: hidden x (kv heads x head dim); the RMSNorm scale
        assert b.params == 2 * hidden * hidden + 2 * hidden * (kv * hidden // heads) + norm
    for b in mlp:
        assert b.params == 3 * hidden * ffn + norm


@pytest.mark.parametrize("which", ["one_attention", "one_mlp", "every_block", "blocks_and_channels"])
def test_decoder_block_removal_equals_the_masked_reference(tiny_llama_path, which):
    model = load(tiny_llama_path)
    analysis = analyze(model)
    attention, mlp = _decoder_blocks(model)
    names = {"one_attention": [attention[1].add], "one_mlp": [mlp[0].add],
             "every_block": [b.add for b in attention + mlp],
             "blocks_and_channels": [attention[0].add, mlp[2].add]}[which]
    base = random_masking_plan(analysis, seed=1) if which == "blocks_and_channels" else None
    pruned = _check(model, analysis, _block_plan(analysis, names, base), batches=(1, 2))
    tables = {n.input[0] for n in pruned.graph.node if n.op_type in ("Gather", "Transpose")
              and n.input[0] in {t.name for t in pruned.graph.initializer}}
    assert len(tables) == 1, f"the tied embedding table was copied or lost: {tables}"


@pytest.fixture(scope="module")
def tiny_llama_legacy_path(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from models.llm import export_causal_lm, tiny_llama

    return export_causal_lm(tiny_llama(layers=3), tmp_path_factory.mktemp("depth_legacy") / "tiny.onnx", dynamo=False)


def test_legacy_export_decoder_block_removal_equals_the_masked_reference(tiny_llama_legacy_path):
    """The legacy (TorchScript) exporter's decoder: the same six blocks (its attention leaves
    Shape nodes that nothing reads: they do not keep a branch alive), and removing an attention
    and an MLP block (with random channels elsewhere) equals the masked reference."""
    model = load(tiny_llama_legacy_path)
    analysis = analyze(model)
    attention, mlp = _decoder_blocks(model)
    assert len(attention) == 3 and len(mlp) == 3
    plan = _block_plan(analysis, [attention[1].add, mlp[2].add], random_masking_plan(analysis, seed=3))
    _check(model, analysis, plan, batches=(1, 2))


def test_budget_with_blocks_and_compress_depth(tiny_llama_path):
    """A parameter budget met partly by blocks: the blocks' savings count, groups inside removed
    blocks are left alone, and the result fits the budget; ``compress`` with ``depth=1`` removes
    the block that changes its input least (Block Influence)."""
    from onnxprune.compress import compress
    from onnxprune.graph import GraphIndex
    from onnxprune.recipe import Recipe, RecipeError
    from onnxprune.scoring.data_free import score
    from onnxprune.selection.budget import Budget, select_to_budget

    model = load(tiny_llama_path)
    analysis = analyze(model)
    _, mlp = _decoder_blocks(model)
    scores = score("l2", GraphIndex(model), analysis)
    reached = select_to_budget(model, analysis, scores, Budget("params", 0.7), removed_blocks=[mlp[1]])
    assert reached.plan.removed_blocks == (mlp[1].add,)
    inside = set(mlp[1].nodes)
    assert not any(set(analysis.group(g).producers) <= inside for g in reached.plan.keep)
    result = apply_plan(model, analysis, reached.plan)
    assert result.after.params == reached.achieved <= reached.target

    windows = np.random.default_rng(0).integers(0, 256, (4, 16)).astype(np.int64)
    calib = CalibrationData({"input_ids": windows})
    recipe = Recipe(target_params=0.75, depth=1, criterion="l2", recover="none", measure=False)
    out = compress(load(tiny_llama_path), recipe, calib=calib)
    assert len(out.plan.removed_blocks) == 1 and out.after.params <= 0.75 * out.before.params
    assert "1 residual block" in out.summary() and out.to_dict()["blocks_removed"] == list(out.plan.removed_blocks)
    share = compress(load(tiny_llama_path), replace(recipe, depth=0.9), calib=calib)  # blocks: <= 90% of the cut
    chosen = [b for b in find_blocks(model) if b.add in share.plan.removed_blocks]
    saved = share.before.params - block_cost_model(model, analysis, chosen).params(NONE)
    assert chosen and saved <= 0.9 * 0.25 * share.before.params and share.after.params <= 0.75 * share.before.params
    with pytest.raises(RecipeError, match="give --calib"):
        compress(load(tiny_llama_path), recipe)
    with pytest.raises(RecipeError, match="--target-flops or --target-params"):
        compress(load(tiny_llama_path), replace(recipe, target_params=None, ratio=0.3), calib=calib)
    with pytest.raises(RecipeError, match="has 6 removable residual blocks"):
        compress(load(tiny_llama_path), replace(recipe, depth=7), calib=calib)


def test_cli_depth_flag_and_analyze_listing(tiny_llama_path, tmp_path, monkeypatch, capsys):
    """``analyze`` counts the removable blocks (``--wide`` names them); ``prune --depth 1`` removes
    one, records it in the saved plan, and the plan replays to the same model; a bad --depth is
    one line naming the option."""
    from tests.test_cli import cli

    code, out, err = cli(monkeypatch, capsys, "analyze", tiny_llama_path, "--wide")
    assert code == 0, err
    assert "residual blocks removable whole (--depth N): 6" in out
    names = [b.add for b in find_blocks(load(tiny_llama_path))]
    assert all(f"  {n}: " in out for n in names)
    np.savez(tmp_path / "calib.npz", input_ids=np.random.default_rng(0).integers(0, 256, (4, 16)).astype(np.int64))
    pruned, plan = tmp_path / "pruned.onnx", tmp_path / "plan.json"
    code, out, err = cli(monkeypatch, capsys, "prune", tiny_llama_path, "-o", pruned, "--target-params", "0.75",
                         "--depth", "1", "--criterion", "l2", "--recover", "none", "--no-measure",
                         "--calib", tmp_path / "calib.npz", "--save-plan", plan)
    assert code == 0, out + err
    assert "1 residual block" in out
    saved = Plan.load(plan)
    assert len(saved.removed_blocks) == 1 and saved.removed_blocks[0] in names
    assert model_cost(onnx.load(pruned)).params <= 0.75 * model_cost(load(tiny_llama_path)).params
    replayed = tmp_path / "replayed.onnx"
    code, out, err = cli(monkeypatch, capsys, "prune", tiny_llama_path, "-o", replayed, "--plan", plan, "--no-measure")
    assert code == 0, out + err
    assert model_cost(onnx.load(replayed)).params == model_cost(onnx.load(pruned)).params
    code, out, err = cli(monkeypatch, capsys, "prune", tiny_llama_path, "-o", pruned, "--target-params", "0.75",
                         "--depth", "two")
    assert code == 1 and "depth" in (out + err) and "unexpected" not in (out + err)


def test_depth_in_recipes():
    """A count, a fraction of the budget, 'off' or 'auto' (off: measured on SmolLM2, docs/llm.md);
    text from a flag or file is parsed; anything else is refused naming the key."""
    from onnxprune.recipe import Context, Recipe, RecipeError, resolve

    assert [Recipe(depth=d).depth for d in ("3", "0.25", 0.25, "off", "auto", 2.0)] == [3, 0.25, 0.25, "off", "auto", 2]
    assert Recipe(depth="0").depth == 0  # no block: off
    for bad in ("two", 1.5, -1):
        with pytest.raises(RecipeError, match="'depth' must be"):
            Recipe(depth=bad)
    assert Recipe.from_dict(Recipe(target_params=0.8, depth=0.25).to_dict()).depth == 0.25
    for transformer in (False, True):
        assert resolve(Recipe(target_params=0.8), Context(has_calib=True, transformer=transformer)).depth == "off"
    assert "whole residual blocks for 25% of the budget" in resolve(
        Recipe(target_params=0.8, depth=0.25), Context(has_calib=True)).describe()
