"""Each pass: it made the expected change, reported ``modified`` truthfully, and is a
no-op when run again. The whole pipeline: outputs equal the masked reference."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from onnxprune.analysis import analyze
from onnxprune.graph import GraphIndex, attr
from tests.plans import random_masking_plan
from onnxprune.analysis.context import FIXUP_KINDS, Fixup, ShapeEntry
from onnxprune.rewrite import (
    BasePass, CheckModelPass, ModelPass, Pass, PassResult, RefreshShapesPass, Removal, RemoveDeadNodesPass,
    RewriteShapeConstantsPass, SliceWeightsPass, SortTopologicallyPass,
    check_fixup_handlers, default_pipeline, run_passes,
)
from onnxprune.plan import Plan
from onnxprune.errors import InternalError, PipelineError, RewriteError
from tests.equivalence import prune_randomly_and_check
from tests.graphs import pass_fixture

PIPELINE_ORDER = [type(p) for p in default_pipeline()]


def _setup(shared: bool = False):
    model = pass_fixture(shared_weight=shared)
    analysis = analyze(model)
    # remove channel 0 of every prunable group: deterministic and touches every pass
    keep = {g.id: tuple(range(1, g.size)) for g in analysis.prunable_groups}
    plan = Plan(analysis.fingerprint, keep, {g.id: g.size for g in analysis.prunable_groups})
    return model, analysis, Removal(analysis, plan.removed_units(analysis))


def _run_until(pass_type, model, ctx):
    """Run the pipeline's passes before ``pass_type``; return a copy of the model."""
    work = onnx.ModelProto()
    work.CopyFrom(model)
    before = [p() for p in PIPELINE_ORDER[:PIPELINE_ORDER.index(pass_type)]]
    run_passes(before, work, ctx)
    return work


def _shape(model, name):
    return tuple(next(t for t in model.graph.initializer if t.name == name).dims)


def _const(model, name):
    return numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == name))


def _twice(pass_, model, ctx):
    first = pass_.apply(model, ctx)  # a generic pass ignores ctx: it takes only the model
    snapshot = model.SerializeToString(deterministic=True)
    second = pass_.apply(model, ctx)
    assert not second.modified, f"{pass_.name} is not idempotent"
    assert model.SerializeToString(deterministic=True) == snapshot, f"{pass_.name} changed the model again"
    return first


def test_fixture_has_the_expected_groups():
    _, analysis, _ = _setup()
    ids = {g.id for g in analysis.prunable_groups}
    # conv_a's channels: split part 1, part 2 in the slice range, part 2 outside; conv_b's
    assert len(ids) == 4
    assert all(g.size >= 2 for g in analysis.prunable_groups)


def test_slice_weights():
    model, _, ctx = _setup()
    work = _run_until(SliceWeightsPass, model, ctx)
    result = _twice(SliceWeightsPass(), work, ctx)
    assert result.modified
    # output side. conv_a feeds three groups: split part 1 (3), and split part 2 (5) whose
    # depthwise outputs are cut by the slice into 3 kept in range and 2 dropped; each loses one
    assert _shape(work, "wa")[0] == 5
    assert _shape(work, "ba") == (5,)
    assert _shape(work, "wb")[0] == 5
    assert _shape(work, "wd")[0] == 3  # depthwise loses channels with its input
    assert _shape(work, "wg")[0] == 3  # graph output: untouched
    # per-channel parameters
    for name in ("bn_s", "bn_b", "bn_m", "bn_v"):
        assert _shape(work, name) == (5,)
    assert _shape(work, "scale") == (1, 5, 1, 1)
    # input side and the depthwise group count
    assert _shape(work, "wb")[1] == 2
    dw = next(n for n in work.graph.node if n.name == "conv_dw")
    assert attr(dw, "group") == 3
    # the slice keeps concat[0:9] = b (6 -> 5 kept) + d[0:3] (3 -> 2 kept)
    assert _shape(work, "wg")[1] == (5 + 2) * 36


def test_slice_weights_reads_each_weight_once(monkeypatch):
    """A weight sliced along two axes (rows and columns) is decoded once and written once."""
    from onnxprune.rewrite import constants

    model, _, ctx = _setup()
    work = _run_until(SliceWeightsPass, model, ctx)
    written: list[str] = []
    real = constants.set_tensor
    monkeypatch.setattr(constants, "set_tensor", lambda t, v, name=None: (written.append(name or t.name),
                                                                             real(t, v, name)))
    SliceWeightsPass().call(work, ctx)
    assert "wb" in written and len(written) == len(set(written))


def test_rewrite_shape_constants():
    model, analysis, ctx = _setup()
    work = _run_until(RewriteShapeConstantsPass, model, ctx)
    result = _twice(RewriteShapeConstantsPass(), work, ctx)
    assert result.modified
    index = GraphIndex(work)
    split = index.nodes["split"]
    sizes = _const(work, split.input[1]).tolist()
    assert sizes == [2, 3]
    sl = index.nodes["slice"]
    assert _const(work, sl.input[2]).tolist() == [int(_shape(work, "wg")[1] / 36)]
    assert _const(work, index.nodes["reshape"].input[1]).tolist() == [1, _shape(work, "wg")[1]]


def test_rewrite_shape_constants_reports_modified():
    model, _, ctx = _setup()
    work = _run_until(RewriteShapeConstantsPass, model, ctx)
    before = work.SerializeToString(deterministic=True)
    result = RewriteShapeConstantsPass().call(work, ctx)
    assert result.modified == (work.SerializeToString(deterministic=True) != before)
    assert result.modified


def test_remove_dead_nodes_drops_unused_weights_after_copy_on_write():
    model, _, ctx = _setup(shared=True)
    work = _run_until(RemoveDeadNodesPass, model, ctx)
    names = {t.name for t in work.graph.initializer}
    assert "wa" in names  # still read by conv_shared, whose output is a graph output
    work.graph.initializer.append(numpy_helper.from_array(np.zeros(3, np.float32), "unused"))
    result = _twice(RemoveDeadNodesPass(), work, ctx)
    assert result.modified
    assert "unused" not in {t.name for t in work.graph.initializer}


def test_shared_weight_is_copied_not_sliced_in_place():
    model, _, ctx = _setup(shared=True)
    work = onnx.ModelProto()
    work.CopyFrom(model)
    run_passes(default_pipeline(), work, ctx)
    index = GraphIndex(work)
    assert index.nodes["conv_shared"].input[1] == "wa"
    assert _shape(work, "wa") == (8, 4, 3, 3)
    assert index.nodes["conv_a"].input[1] != "wa"


def test_sort_topologically():
    model, _, ctx = _setup()
    work = onnx.ModelProto()
    work.CopyFrom(model)
    nodes = list(work.graph.node)
    del work.graph.node[:]
    work.graph.node.extend(reversed(nodes))
    result = _twice(SortTopologicallyPass(), work, ctx)
    assert result.modified
    onnx.checker.check_model(work)
    assert [n.name for n in work.graph.node][0] == "conv_a"


def test_refresh_shapes():
    model, _, ctx = _setup()
    work = _run_until(RefreshShapesPass, model, ctx)
    result = _twice(RefreshShapesPass(), work, ctx)
    assert result.modified
    a_shape = GraphIndex(work).shape("a")
    assert a_shape == (1, 5, 6, 6)


def test_check_model_never_modifies_and_rejects_invalid():
    model, _, ctx = _setup()
    result = _twice(CheckModelPass(), model, ctx)
    assert not result.modified
    broken = onnx.ModelProto()
    broken.CopyFrom(model)
    broken.graph.node[0].input[1] = "missing"
    with pytest.raises(onnx.checker.ValidationError):
        CheckModelPass().call(broken)


def test_pipeline_error_names_failing_pass_and_previous():
    model, _, ctx = _setup()
    work = onnx.ModelProto()
    work.CopyFrom(model)
    next(t for t in work.graph.initializer if t.name == "wb").dims[0] = 7  # corrupt: not the analysed model
    with pytest.raises(RewriteError, match="slice_weights"):
        run_passes(default_pipeline(), work, ctx)


@pytest.mark.parametrize("opset", [11, 13, 17])
def test_pipeline_matches_masked_reference(opset):
    model = pass_fixture(opset=opset) if opset >= 13 else _opset11_fixture()
    for seed in range(3):
        prune_randomly_and_check(model, seed=seed)


@pytest.mark.parametrize("debug", [True, False])
def test_debug_mode_checks_after_every_pass(monkeypatch, debug):
    """debug=True runs the checks after every pass of the pipeline; debug=False runs none."""
    from onnxprune.api import apply_plan
    from onnxprune.rewrite import base

    monkeypatch.delenv(base.DEBUG_ENV, raising=False)
    checked, contracts = [], []
    real_check, real_contract = base._debug_check, base.check_contract
    monkeypatch.setattr(base, "_debug_check", lambda m, *, full: (checked.append(full), real_check(m, full=full)))
    monkeypatch.setattr(base, "check_contract", lambda p, *a: (contracts.append(p.name), real_contract(p, *a)))
    model, analysis, _ = _setup()
    plan = random_masking_plan(analysis, seed=1)
    result = apply_plan(model, analysis, plan, debug=debug)
    names = [p.name for p in default_pipeline()]
    assert [name for name, _ in result.history] == names
    assert contracts == (names if debug else [])
    assert checked == ([p.consistent for p in default_pipeline()] if debug else [])


def _opset11_fixture():
    model = pass_fixture(opset=13)
    # opset 11: Split sizes as an attribute
    split = next(n for n in model.graph.node if n.op_type == "Split")
    sizes = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == split.input[1]))
    del split.input[1]
    split.attribute.append(onnx.helper.make_attribute("split", sizes.tolist()))
    model.opset_import[0].version = 11
    from onnxprune.prepare.normalize import prepare

    return prepare(model)


# -- the pass framework's own checks ---------------------------------------------------

def test_fixup_kind_without_handler_is_refused_at_pipeline_build(monkeypatch):
    from dataclasses import dataclass

    from onnxprune.analysis import context

    monkeypatch.setattr(context, "FIXUP_KINDS", list(FIXUP_KINDS))  # the new kind stays in this test
    default_pipeline()  # every kind defined so far has a handler

    @dataclass(frozen=True, eq=False)
    class Stride(Fixup):
        """A toy kind: a strided op's stride follows the kept channels (no pass knows it)."""

        stride: int

    assert Stride in context.FIXUP_KINDS
    with pytest.raises(PipelineError, match=r"handles fix-up kind .*Stride") as exc:
        default_pipeline()
    assert isinstance(exc.value, InternalError)

    class StridePass(ModelPass):
        name = "stride"
        fixup_handlers = {Stride: lambda *args: False}

        def call(self, model):
            return PassResult(model, False)

    # a pass naming the kind in its handler table makes the pipeline whole again
    check_fixup_handlers([SliceWeightsPass(), RewriteShapeConstantsPass(), StridePass()])
    with pytest.raises(PipelineError, match="fix-up kind .*GroupCount"):
        check_fixup_handlers([StridePass()])  # the built-in kinds are then missing


def test_fixups_are_typed_per_kind():
    _, analysis, _ = _setup()
    kinds = {type(f) for f in analysis.fixups}
    assert ShapeEntry in kinds and all(issubclass(k, Fixup) and k is not Fixup for k in kinds)
    handled = {k for p in default_pipeline() for k in p.fixup_handlers}
    assert kinds <= handled
    with pytest.raises(TypeError):
        ShapeEntry("node", slot=1, index=0)  # a missing field is refused where the kind is built


class _Liar(ModelPass):
    """Renames the graph but reports no change."""

    name = "liar"

    def call(self, model):
        model.graph.name += "_x"
        return PassResult(model, False)


class _Grower(ModelPass):
    """Appends a node every run, and says so: truthful, but not idempotent."""

    name = "grower"

    def call(self, model):
        out = f"grown{len(model.graph.node)}"
        model.graph.node.append(onnx.helper.make_node("Identity", [model.graph.input[0].name], [out]))
        return PassResult(model, True)


class _Modest(ModelPass):
    """Changes nothing, yet reports a change."""

    name = "modest"

    def call(self, model):
        return PassResult(model, True)


def _copy_fixture():
    model, _, ctx = _setup()
    work = onnx.ModelProto()
    work.CopyFrom(model)
    return work, ctx


@pytest.mark.parametrize("toy, message", [(_Liar, "modified=False, but the model changed"),
                                          (_Modest, "modified=True, but the model did not change"),
                                          (_Grower, "not idempotent")])
def test_debug_run_catches_a_pass_that_breaks_its_contract(monkeypatch, toy, message):
    from onnxprune.rewrite import base

    monkeypatch.delenv(base.DEBUG_ENV, raising=False)
    work, ctx = _copy_fixture()
    run_passes([toy()], work, ctx)  # not a debug run: nothing checks the contract
    with pytest.raises(RewriteError, match=rf"pass '{toy.name}' failed .*{message}"):
        run_passes([toy()], work, ctx, debug=True)


def test_debug_environment_variable_turns_the_checks_on(monkeypatch):
    from onnxprune.rewrite import base

    monkeypatch.setenv(base.DEBUG_ENV, "1")
    work, _ = _copy_fixture()
    with pytest.raises(RewriteError, match="modified=False"):
        run_passes([_Liar()], work)
    monkeypatch.setenv(base.DEBUG_ENV, "0")
    run_passes([_Liar()], work)


def test_generic_passes_take_only_the_model():
    work, ctx = _copy_fixture()
    generic = [p for p in default_pipeline() if isinstance(p, ModelPass)]
    assert {type(p) for p in generic} == {SortTopologicallyPass, RefreshShapesPass, CheckModelPass,
                                          RemoveDeadNodesPass}
    _, history = run_passes(generic, work)  # no pruning context needed
    assert [name for name, _ in history] == [p.name for p in generic]
    with pytest.raises(RewriteError, match="needs the Removal"):
        run_passes([SliceWeightsPass()], work)
    assert all(isinstance(p, (Pass, ModelPass)) and isinstance(p, BasePass) for p in default_pipeline())


def test_requires_and_ensures_are_checked():
    calls = []

    class Guarded(ModelPass):
        name = "guarded"

        def requires(self, model):
            calls.append("requires")
            if not model.graph.node:
                raise ValueError("needs at least one node")

        def call(self, model):
            calls.append("call")
            return PassResult(model, False)

        def ensures(self, model):
            calls.append("ensures")

    work, _ = _copy_fixture()
    run_passes([Guarded()], work)
    assert calls == ["requires", "call", "ensures"]
    empty = onnx.ModelProto()
    empty.CopyFrom(work)
    del empty.graph.node[:]
    with pytest.raises(RewriteError, match="guarded.*needs at least one node"):
        run_passes([Guarded()], empty)
    # the sort's postcondition: a graph it could not order is refused, not written
    cyclic = onnx.ModelProto()
    cyclic.CopyFrom(work)
    with pytest.raises(ValueError, match="before it is produced"):
        SortTopologicallyPass().ensures(_reversed(cyclic))


def _reversed(model):
    nodes = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(reversed(nodes))
    return model
