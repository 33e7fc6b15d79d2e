"""Budgets: achieved FLOPs / parameters land within one rounding step of the target."""

from __future__ import annotations

import numpy as np
import pytest

from onnxprune.analysis.accounting import CostModel
from onnxprune.analysis import analyze
from onnxprune.api import apply_plan, load, plan_to_budget
from onnxprune.selection.budget import Budget
from onnxprune.errors import SelectionError
from tests.zoo_cache import zoo_path


def _step_cost(model, analysis, plan, metric, round_to):
    """The most one group's rounding step (round_to channels kept back) can cost."""
    costs = CostModel(model, analysis)
    cost = (lambda r: 2 * costs.macs(r)) if metric == "flops" else costs.params
    removed = plan.removed_units(analysis)
    base = cost(removed)
    worst = 0
    for gid, keep in plan.keep.items():
        g = analysis.group(gid)
        dropped = np.setdiff1d(np.arange(g.size), keep)
        step = max(1, round_to // g.unit_width)
        back = g.units[dropped[:step]]
        worst = max(worst, cost(np.setdiff1d(removed, back)) - base)
    return worst


@pytest.mark.parametrize("name", ["resnet18", "mobilenetv2"])
@pytest.mark.parametrize("metric", ["flops", "params"])
@pytest.mark.parametrize("target", [0.75, 0.5, 0.33])
@pytest.mark.parametrize("round_to", [1, 8])
def test_budget_lands_within_one_rounding_step(name, metric, target, round_to):
    model = load(zoo_path(name))
    analysis = analyze(model)
    reached = plan_to_budget(model, analysis, Budget(metric, target), round_to=round_to)
    result = apply_plan(model, analysis, reached.plan)
    achieved = 2 * result.after.macs if metric == "flops" else result.after.params
    assert achieved == reached.achieved  # the cost model is exact
    assert achieved <= reached.target
    assert reached.target - achieved <= _step_cost(model, analysis, reached.plan, metric, round_to)
    for gid, keep in reached.plan.keep.items():
        g = analysis.group(gid)
        assert (len(keep) * g.unit_width) % round_to == 0 or len(keep) == g.size


def test_absolute_target_and_unreachable_budget():
    model = load(zoo_path("resnet18"))
    analysis = analyze(model)
    original = 2 * analysis.total_macs
    reached = plan_to_budget(model, analysis, Budget("flops", original * 0.6))
    assert reached.achieved <= original * 0.6
    with pytest.raises(SelectionError, match="cannot be reached"):
        plan_to_budget(model, analysis, Budget("flops", 0.001))


# -- align: the hardware channel block ---------------------------------------------------------


def test_legal_keep_count_aligns_down_only_where_legal():
    from onnxprune.analysis.result import Group
    from onnxprune.selection.select import SelectionOptions, legal_keep_count

    def group(size, width=1):
        return Group(id="g", units=np.arange(size), channels=size * width, anchor=("t", 1), spaces=(("t", 1),),
                     producers=(), consumers=(), unit_params=np.ones(size), unit_macs=np.ones(size), reasons=())

    g = group(64)

    def keep(k, **kw):
        return legal_keep_count(g, k, SelectionOptions(ratio=0.0, round_to=8, **kw))

    assert [keep(k) for k in (33, 40, 48, 60)] == [40, 40, 48, 64]
    assert [keep(k, align=16) for k in (33, 40, 48, 60)] == [32, 32, 48, 64]  # 64 = the whole group
    # where no aligned count below is legal, the count goes *up* to the block (padded channels
    # cost as much as kept ones; the budget allocation takes the MACs elsewhere)
    assert keep(5, align=16) == 16  # 0 is not a legal count
    assert keep(40, align=16, min_channels=40) == 48  # 32 would break min_channels
    assert keep(40, align=16, max_ratio=0.4) == 48  # 32 would remove more than 40 %
    assert keep(44, align=12) == 48  # 48 is already a multiple of 12
    assert keep(40, align=12) == 48  # 36 is not a multiple of round_to 8; 48 is (and of 12)
    assert keep(40, align=24) == 24  # down where legal, as before
    assert legal_keep_count(g, 40, SelectionOptions(ratio=0.0, round_to=8, align=1)) == keep(40)
    heads = group(12, width=4)  # units of 4 channels (tied): 16 channels = 4 units
    assert legal_keep_count(heads, 6, SelectionOptions(ratio=0.0, round_to=8, align=16)) == 4
    assert legal_keep_count(heads, 6, SelectionOptions(ratio=0.0, round_to=8)) == 6
    with pytest.raises(SelectionError, match="align"):
        SelectionOptions(ratio=0.0, align=0)
    # a group of one aligned block stays whole: an off-block count loses the blocked kernels
    block = group(16)
    assert legal_keep_count(block, 11, SelectionOptions(ratio=0.0, align=16)) == 16
    assert legal_keep_count(block, 11, SelectionOptions(ratio=0.0, align=8)) == 8
    assert legal_keep_count(group(12), 5, SelectionOptions(ratio=0.0, align=16)) == 5  # already off the block


def test_budget_out_of_aligned_reach_takes_the_coarsest_finer_block(tmp_path):
    """conv_lstm's only prunable group is one block of 16 channels: at block 16 no cut is possible,
    so the allocation falls back to block 8 (not to off-block counts, which ran 0.92x) and says so."""
    from models.zoo import export_onnx
    from onnxprune.compress import compress
    from onnxprune.recipe import Recipe

    export_onnx("conv_lstm", tmp_path / "conv_lstm.onnx")  # the real widths: a first conv of 16 channels
    model = load(tmp_path / "conv_lstm.onnx")
    result = compress(model, Recipe(target_flops=0.75, align=16, measure=False))
    kept = {gid: len(k) for gid, k in result.plan.keep.items()}
    assert kept and all(n % 8 == 0 for n in kept.values()), kept
    assert any("aligned to 8 channels instead" in n for n in result.notes), result.notes
    half = compress(load(tmp_path / "conv_lstm.onnx"), Recipe(target_flops=0.5, align=16, measure=False))
    assert all(len(k) % 4 == 0 for k in half.plan.keep.values()), (half.plan.keep, half.notes)
    assert 2 * half.after.macs <= 0.5 * 2 * result.before.macs


@pytest.mark.parametrize("name", ["resnet18", "mobilenetv2"])
def test_aligned_budget_keeps_block_multiples_and_fits(name):
    from tests.equivalence import assert_matches_masked, check_pruned_model

    model = load(zoo_path(name))
    analysis = analyze(model)
    # 0.6: the test widths (0.5) leave 16-channel groups, one block each, which aligned plans keep whole
    plain = plan_to_budget(model, analysis, Budget("flops", 0.6), round_to=8)
    aligned = plan_to_budget(model, analysis, Budget("flops", 0.6), round_to=8, align=16)
    assert aligned.achieved <= aligned.target and aligned.plan.options["align"] == 16
    assert "align" not in plain.plan.options  # default plans are unchanged
    result = apply_plan(model, analysis, aligned.plan)
    assert 2 * result.after.macs == aligned.achieved
    off_block = 0
    for g in analysis.prunable_groups:
        kept = len(aligned.plan.keep.get(g.id, range(g.size))) * g.unit_width
        assert kept % 8 == 0 or kept == g.size * g.unit_width
        if kept % 16 and kept < g.size * g.unit_width:
            off_block += 1
            assert (g.size * g.unit_width) % 16, (g.id, kept)  # only groups already off the block
        if g.size * g.unit_width == 16:
            assert kept == 16  # one aligned block stays whole
    plain_off = sum(1 for gid, k in plain.plan.keep.items() if (len(k) * analysis.group(gid).unit_width) % 16)
    assert plain_off > off_block
    check_pruned_model(result.model, model)
    assert_matches_masked(model, analysis, aligned.plan, result)  # pruned model == masked original


def test_cli_prune_align(monkeypatch, capsys, tmp_path):
    import json

    from onnxprune.selection.latency import channel_block
    from tests.test_cli import cli

    out, plan = tmp_path / "small.onnx", tmp_path / "plan.json"
    code, _, err = cli(monkeypatch, capsys, "prune", zoo_path("mobilenetv2"), "-o", out, "--target-flops", "0.5",
                       "--round-to", "8", "--align", "16", "--save-plan", plan)
    assert code == 0, err
    assert json.loads(plan.read_text())["options"]["align"] == 16
    code, _, err = cli(monkeypatch, capsys, "prune", zoo_path("mobilenetv2"), "-o", out, "--ratio", "0.3",
                       "--round-to", "8", "--align", "auto", "--provider", "cpu", "--save-plan", plan)
    assert code == 0, err
    assert json.loads(plan.read_text())["options"].get("align", 1) == channel_block("cpu")
    code, _, err = cli(monkeypatch, capsys, "prune", zoo_path("mobilenetv2"), "-o", out, "--plan", plan,
                       "--align", "16")
    assert code != 0 and "--align" in err
    code, _, err = cli(monkeypatch, capsys, "prune", zoo_path("mobilenetv2"), "-o", out, "--ratio", "0.3",
                       "--align", "many")
    assert code != 0 and "align" in err


def _dynamic_cnn(path, height="H", width="W"):
    """x [N, 3, H, W] -> conv 3->16 (stride 1) -> conv 16->32 (stride 2) -> conv 32->64 (stride 2)
    -> GlobalAveragePool -> Gemm 64->10: layers whose MACs per channel differ 4x and 16x by
    their resolution, which a count with the dynamic axes as 1 cannot see."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32) * 0.3, n) for n, s in (
        ("w1", (16, 3, 3, 3)), ("w2", (32, 16, 3, 3)), ("w3", (64, 32, 3, 3)), ("fc", (10, 64)))]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a1"], name="c1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["a2"], name="c2", pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["a2"], ["r2"]),
             helper.make_node("Conv", ["r2", "w3"], ["a3"], name="c3", pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["a3"], ["r3"]),
             helper.make_node("GlobalAveragePool", ["r3"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "fc"], ["y"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, height, width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def test_dynamic_spatial_axes_are_counted_at_the_calibration_size(tmp_path):
    """A CNN exported with dynamic height and width counted its MACs with those axes as 1,
    so a FLOPs budget weighed every layer by its parameters. With calibration data the MACs
    are counted at the samples' size: the same plan and the same MACs as the model with
    that size fixed, and a note that says so."""
    from onnxprune.compress import compress
    from onnxprune.io.calib_data import CalibrationData
    from onnxprune.recipe import Recipe

    path = tmp_path / "dyn.onnx"
    _dynamic_cnn(path)
    calib = CalibrationData({"x": np.random.default_rng(1).standard_normal((8, 3, 32, 32)).astype(np.float32)})
    recipe = Recipe(target_flops=0.6, criterion="l2", limits="none", recover=(), measure=False)
    dynamic = compress(load(path), recipe, calib=calib)
    static = compress(load(path, input_shapes={"x": [1, 3, 32, 32]}), recipe, calib=calib)
    assert dynamic.before.macs == static.before.macs == 16 * 27 * 32 * 32 + 32 * 144 * 16 * 16 + 64 * 288 * 8 * 8 + 640
    assert dynamic.after.macs == static.after.macs
    assert {g: list(k) for g, k in dynamic.plan.keep.items()} == {g: list(k) for g, k in static.plan.keep.items()}
    assert "MACs counted at the calibration samples' size (x 1x3x32x32)" in dynamic.notes
    assert not any("MACs counted" in n for n in static.notes)
    assert [d.dim_param for d in dynamic.model.graph.input[0].type.tensor_type.shape.dim] == ["N", "", "H", "W"]
    # without data the count stays per position, and says how to count at a size
    plain = compress(load(path), Recipe(target_flops=0.6, measure=False))
    assert plain.before.macs == 16 * 27 + 32 * 144 + 64 * 288 + 640
    assert any("MACs count the dynamic axes of 'x' axes 2, 3 as 1: give --calib or --input-shape" in n
               for n in plain.notes)


def test_analyze_says_how_dynamic_spatial_axes_are_counted(monkeypatch, capsys, tmp_path):
    from tests.test_cli import cli

    path = tmp_path / "dyn.onnx"
    _dynamic_cnn(path)
    code, out, err = cli(monkeypatch, capsys, "analyze", path, columns=200)
    assert code == 0, err
    assert "MACs count the dynamic axes of 'x' axes 2, 3 as 1: give --input-shape" in out
    code, out, err = cli(monkeypatch, capsys, "analyze", path, "--input-shape", "x=1,3,32,32", columns=200)
    assert code == 0 and "dynamic axes" not in out, err


def test_sweep_counts_dynamic_spatial_axes_at_the_data_size(monkeypatch, capsys, tmp_path):
    import json

    from tests.test_cli import cli

    path, data = tmp_path / "dyn.onnx", tmp_path / "calib.npz"
    _dynamic_cnn(path)
    np.savez(data, x=np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32))
    code, out, err = cli(monkeypatch, capsys, "sweep", path, "--targets", "0.7", "--calib", data, "-o",
                         tmp_path / "sweep", "--runs", "2", "--align", "1", columns=200)  # fine steps: near 0.7
    assert code == 0, err
    assert "MACs counted at the calibration samples' size (x 1x3x32x32)" in out
    points = json.loads((tmp_path / "sweep" / "sweep.json").read_text())["points"]
    assert points[0]["macs"] == 16 * 27 * 32 * 32 + 32 * 144 * 16 * 16 + 64 * 288 * 8 * 8 + 640
    assert 0.6 < points[1]["flops_ratio"] <= 0.7


def test_sweep_aligns_kept_counts_as_prune_does(monkeypatch, capsys, tmp_path):
    """sweep allocated without prune's default alignment: off-block counts that run slower."""
    import json

    from onnxprune.selection.latency import resolve_align
    from tests.test_cli import cli

    path = tmp_path / "cnn.onnx"
    _dynamic_cnn(path, 32, 32)
    block = resolve_align("auto")
    for args, step in (((), block), (("--align", "1"), 1)):
        out_dir = tmp_path / f"sweep{step}"
        code, out, err = cli(monkeypatch, capsys, "sweep", path, "--targets", "0.6", "-o", out_dir, "--runs", "2",
                             "--save-models", *args, columns=200)
        assert code == 0, err
        plans = list(out_dir.glob("*.json"))
        plan = json.loads(next(p for p in plans if p.name != "sweep.json").read_text())
        kept = {gid: len(g["keep"]) for gid, g in plan["groups"].items()}
        sizes = {gid: g["size"] for gid, g in plan["groups"].items()}
        assert kept and all(k % step == 0 or k == sizes[gid] for gid, k in kept.items()), (step, kept)
        if step == 1:
            assert any(k % block for k in kept.values()), kept  # unaligned counts, so the first check meant something
