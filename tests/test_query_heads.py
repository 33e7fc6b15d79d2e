"""Query heads inside grouped-query attention (``analysis.query_heads``): every plan the
allocation builds is realizable, on every GQA form of the tiny LLaMA (float, 4-bit
MatMulNBits at block 32 and 128, heads of two KV heads in one block unit, a KV-cache export,
onnxruntime's optimizer form). A KV-head group whose query heads cannot go is blocked itself
(removing a KV head removes its query heads). Skipped without transformers."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnxprune.analysis import analyze
from onnxprune.analysis.query_heads import check_plan, close_removed, group_parents, repair_keep
from onnxprune.api import apply_plan, load
from onnxprune.errors import PlanError, SelectionError
from onnxprune.plan import Plan
from onnxprune.rewrite.masking import masked_model
from onnxprune.runtime.session import random_inputs, run
from tests.equivalence import assert_matches_masked, check_pruned_model

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from models.llm import export_causal_lm, export_causal_lm_with_cache, tiny_llama

# "gqa": 4 query heads of 16 over 2 KV heads, FFN of 256 (two blocks of 128); "distinct": 6 query
# heads over 2 KV heads (3 each)
CONFIGS = {"gqa": {"ffn": 256}, "distinct": {"hidden": 96, "heads": 6, "kv_heads": 2}}
# form -> (config, MatMulNBits block size or 0 for float, how it is built); at block 32 the
# distinct model's query units are pairs of heads, one of them reading both KV heads
FORMS = {"float": ("gqa", 0), "nbits32": ("gqa", 32), "nbits128": ("gqa", 128), "distinct": ("distinct", 0),
         "distinct_nbits32": ("distinct", 32)}


@pytest.fixture(scope="module")
def forms(tmp_path_factory):
    """form name -> path of the tiny LLaMA in that form (built on first use)."""
    folder = tmp_path_factory.mktemp("query_heads")
    cache: dict[str, str] = {}

    def get(name: str) -> str:
        if name in cache:
            return cache[name]
        if name == "kv_cache":
            cache[name] = str(export_causal_lm_with_cache(tiny_llama(**CONFIGS["distinct"]), folder / "kv.onnx"))
        elif name == "optimized":
            from onnxruntime.transformers import optimizer

            src = get("float")
            opt = optimizer.optimize_model(src, model_type="gpt2", num_heads=4, hidden_size=64, opt_level=0)
            opt.save_model_to_file(str(folder / "optimized.onnx"))
            cache[name] = str(folder / "optimized.onnx")
        else:
            config, block = FORMS[name]
            src = folder / f"{config}.onnx"
            if not src.exists():
                export_causal_lm(tiny_llama(**CONFIGS[config]), src)
            if block == 0:
                cache[name] = str(src)
            else:
                quantizer_module = pytest.importorskip("onnxruntime.quantization.matmul_nbits_quantizer")
                quantizer = quantizer_module.MatMulNBitsQuantizer(onnx.load(src), block_size=block,
                                                                  is_symmetric=False)
                quantizer.process()
                quantizer.model.save_model_to_file(str(folder / f"{name}.onnx"))
                cache[name] = str(folder / f"{name}.onnx")
        return cache[name]

    return get


def _layers(analysis):
    """(query-head group, KV-head group) per attention layer."""
    return [(analysis.group(q), analysis.group(kv)) for q, kv in group_parents(analysis).items()]


def _equal_to_masked(model: onnx.ModelProto, analysis, plan: Plan, output: onnx.ModelProto) -> None:
    feeds = random_inputs(model, seed=1, batch=2)
    want, got = run(masked_model(model, analysis, plan), feeds), run(output, feeds)
    for name, ref in want.items():
        assert ref.shape == got[name].shape, name
        assert float(np.abs(ref - got[name]).max()) <= 1e-4 * max(1.0, float(np.abs(ref).max())), name


# -- 1. blocked query heads block their KV heads ---------------------------------------------------

def test_kv_heads_whose_query_heads_cannot_go_are_blocked(forms):
    """o_proj as MatMulNBits of block 128 reads 64 channels: one partial block, so the query heads
    cannot go; a KV head cannot either (its query heads go with it). Its reason names theirs,
    and a plan removing a KV head is refused (onnxruntime failed on it with a dimension mismatch)."""
    model = load(forms("nbits128"))
    analysis = analyze(model)
    layers = _layers(analysis)
    assert len(layers) == 2
    for q, kv in layers:
        assert not q.prunable and "block_size 128" in q.why_not[0]
        assert not kv.prunable, (kv.id, kv.reasons)
        assert f"removes its query heads (group '{q.id}')" in kv.why_not[0]
        assert "block_size 128" in kv.why_not[0]
    kv = layers[0][1]
    plan = Plan(fingerprint=analysis.fingerprint, keep={kv.id: (0,)}, sizes={kv.id: kv.size}, criterion="test")
    with pytest.raises(PlanError, match="cannot be pruned: removing a KV head removes its query heads"):
        apply_plan(model, analysis, plan)
    assert any(g.prunable for g in analysis.groups)  # the FFN neurons still go


def test_ignoring_the_query_projection_blocks_the_kv_heads(forms):
    """Any reason the query heads stay (here ``--ignore`` of q_proj) keeps their KV heads."""
    model = load(forms("float"))
    q, kv = _layers(analyze(model))[0]
    assert q.prunable and kv.prunable
    node = q.producers[0]
    analysis = analyze(model, ignore=[node])
    assert not analysis.group(q.id).prunable
    why = analysis.group(kv.id).why_not
    assert why and "removing a KV head removes its query heads" in why[0] and f"'{node}' is ignored" in why[0]
    assert all(g.prunable for g in (analysis.group(q2.id) for q2, _ in _layers(analyze(model))[1:]))


# -- 2. the repair: query units that read two KV heads ---------------------------------------------

def test_repair_keeps_a_query_unit_whose_kv_heads_stay(forms):
    """6 query heads of 16 over 2 KV heads, o_proj in blocks of 32: query units are head pairs
    {0, 1}, {2, 3}, {4, 5}, and {2, 3} reads both KV heads. Keeping KV head 0 and only that unit
    removes it with KV head 1 (the plan removes every query head); the repair keeps a unit whose
    KV heads all stay, the best-scored one."""
    model = load(forms("distinct_nbits32"))
    analysis = analyze(model)
    q, kv = _layers(analysis)[0]
    assert q.size == 3 and kv.size == 2 and q.unit_width == 32
    keep = {kv.id: (0,), q.id: (1,)}
    with pytest.raises(PlanError, match="removes every query head"):
        Plan(fingerprint=analysis.fingerprint, keep=keep, sizes={kv.id: 2, q.id: 3}).validate(analysis)
    repaired = repair_keep(analysis, keep)
    assert repaired == {kv.id: (0,), q.id: (0, 1)}
    assert repair_keep(analysis, {kv.id: (1,), q.id: (1,)}) == {kv.id: (1,), q.id: (1, 2)}
    # no unit under the kept KV head left: the best-scored unit and the KV heads it reads come back
    scores = {q.id: np.array([0.0, 5.0, 1.0])}
    assert repair_keep(analysis, {kv.id: (0,), q.id: (2,)}, scores) == {kv.id: (0,), q.id: (0, 2)}
    plan = Plan(fingerprint=analysis.fingerprint, keep=repaired, sizes={kv.id: 2, q.id: 3}, criterion="test")
    result = apply_plan(model, analysis, plan)
    check_pruned_model(result.model, model)
    assert_matches_masked(model, analysis, plan, result, seed=1, batch=2)


# name -> (form, options, expected error or None); distinct_nbits32's blocks leave 54% of the MACs at most
CLI_CASES = {
    "float-flops0.8": ("float", ["--target-flops", "0.8"], None),
    "float-flops0.5": ("float", ["--target-flops", "0.5"], None),
    "float-params0.7": ("float", ["--target-params", "0.7"], None),
    "float-ratio0.5": ("float", ["--ratio", "0.5"], None),
    "nbits32-flops0.8": ("nbits32", ["--target-flops", "0.8"], None),
    "nbits32-flops0.5": ("nbits32", ["--target-flops", "0.5"], None),
    "nbits32-params0.7": ("nbits32", ["--target-params", "0.7"], None),
    "nbits32-ratio0.5": ("nbits32", ["--ratio", "0.5"], None),
    "distinct_nbits32-flops0.8": ("distinct_nbits32", ["--target-flops", "0.8"], None),
    "distinct_nbits32-flops0.5": ("distinct_nbits32", ["--target-flops", "0.5"], None),
    "distinct_nbits32-params0.7": ("distinct_nbits32", ["--target-params", "0.7"], None),
    "distinct_nbits32-ratio0.5": ("distinct_nbits32", ["--ratio", "0.5"], None),
    "distinct_nbits32-uniform": ("distinct_nbits32", ["--target-params", "0.8", "--uniform-heads"], None),
    "nbits128-params0.7": ("nbits128", ["--target-params", "0.7"], None),
    "nbits128-ratio0.5": ("nbits128", ["--ratio", "0.5"], None),
    "optimized-flops0.8": ("optimized", ["--target-flops", "0.8"], None),
}


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_cli_budgets_give_realizable_plans_on_every_gqa_form(forms, case, tmp_path, monkeypatch, capsys):
    """The default recipe's allocation (``prune`` with a budget or ratio) on each form: a model
    that runs and equals its masked reference (it stopped with "the plan removes every query
    head" on the distinct model at block 32, and failed in onnxruntime at block 128)."""
    from tests.test_cli import cli

    form, options, error = CLI_CASES[case]
    src = forms(form)
    out, plan_path = tmp_path / "out.onnx", tmp_path / "plan.json"
    code, _, stderr = cli(monkeypatch, capsys, "prune", src, "-o", out, *options, "--no-measure",
                               "--save-plan", plan_path)
    if error is not None:
        assert code == 1 and error in stderr and "unexpected" not in stderr, stderr
        return
    assert code == 0, stderr
    model = load(src)
    analysis = analyze(model)
    plan = Plan.load(plan_path)
    plan.validate(analysis)
    assert plan.keep
    _equal_to_masked(model, analysis, plan, onnx.load(out))


# -- 3. random plans through the public selection functions ---------------------------------------

def _synthetic_table(analysis, base_ms: float = 10.0):
    """A latency table linear in every prunable group's kept units (no measurement)."""
    from onnxprune.selection.latency import LatencyTable

    total = sum(g.macs for g in analysis.prunable_groups) or 1
    groups = {g.id: {"size": g.size, "unit_width": g.unit_width,
                     "points": [[k, base_ms * (1 - (g.size - k) / g.size * g.macs / total)] for k in range(1, g.size)]}
              for g in analysis.prunable_groups}
    return LatencyTable(fingerprint=analysis.fingerprint, provider="CPUExecutionProvider", inputs={}, threads=1,
                        base_ms=base_ms, groups=groups)


def _random_plans(model: onnx.ModelProto, analysis, rng: np.random.Generator):
    """Plans from every public selection function on random scores (unreachable budgets skipped)."""
    from onnxprune.scoring.similarity import similarity_plan
    from onnxprune.selection.budget import Budget, select_to_budget
    from onnxprune.selection.latency import select_to_latency
    from onnxprune.selection.select import SelectionOptions, select
    from onnxprune.selection.uniform_heads import uniform_heads
    from onnxprune.units import UnitIndex

    scores = {g.id: rng.random(g.size) * rng.choice([1e-3, 1.0, 1e3]) for g in analysis.prunable_groups}
    ratio = float(rng.uniform(0.1, 0.9))
    yield select(analysis, scores, SelectionOptions(ratio=ratio, mode=str(rng.choice(["per-group", "global"]))))
    for metric in ("flops", "params"):
        try:
            plan = select_to_budget(model, analysis, scores, Budget(metric, float(rng.uniform(0.3, 0.95))),
                                    align=int(rng.choice([1, 16])), ranking=str(rng.choice(["normalised", "per-mac"])),
                                    max_ratios={g.id: float(rng.uniform(0.2, 1.0)) for g in analysis.prunable_groups
                                                if rng.random() < 0.3}).plan
        except SelectionError as exc:
            assert "cannot be reached" in str(exc)
            continue
        yield plan
        yield uniform_heads(analysis, plan, scores)
    yield similarity_plan(model, analysis, ratio=ratio, merge=bool(rng.random() < 0.5))[0]
    table = _synthetic_table(analysis)
    yield select_to_latency(model, analysis, scores, float(rng.uniform(6.0, 9.5)), table, measure=False,
                            order=str(rng.choice(["score", "efficiency"]))).plan
    units = UnitIndex(analysis)
    removed = rng.random(units.n_units) < rng.uniform(0.2, 0.9)
    for gi in range(len(units.groups)):  # a group keeps a unit (the training loops' masks do)
        removed[units.units_of(gi)[0]] = False
    yield units.plan(removed, criterion="random", options={})


@pytest.mark.parametrize("form", ["float", "distinct", "distinct_nbits32", "nbits128", "kv_cache", "optimized"])
def test_random_plans_from_public_selection_are_realizable(forms, form):
    """Seeded random scores through ``select``, ``select_to_budget``, ``uniform_heads``,
    ``similarity_plan``, ``select_to_latency`` and ``UnitIndex.plan``: every plan validates and
    keeps a query head in every layer; one per seed is applied and equals its masked reference
    (a KV cache's heads prunable with ``allow_interface_change``)."""
    model = load(forms(form))
    analysis = analyze(model, allow_interface_change=form == "kv_cache")
    assert group_parents(analysis)
    for seed in range(4):
        rng = np.random.default_rng(seed)
        plans = list(_random_plans(model, analysis, rng))
        assert len(plans) >= 4
        for plan in plans:
            plan.validate(analysis)
            check_plan(analysis, close_removed(analysis, plan.removed_units(analysis)))
        plan = plans[seed % len(plans)]
        if not plan.keep:
            continue
        result = apply_plan(model, analysis, plan)
        if form == "kv_cache":  # prefill and a decode step, each model on its own cache
            from tests.test_llm_kvcache import assert_cache_model_matches_masked

            assert_cache_model_matches_masked(model, analysis, plan, result.model, batch=1 + seed % 2, seed=seed)
        else:
            assert_matches_masked(model, analysis, plan, result, seed=seed, batch=1 + seed % 2)
