"""Which units a group keeps, apart from how many (``selection.budget.reorder_within_groups``,
the recipe's ``unit_order``): the allocation fixes each group's kept count by the criterion,
then the units kept inside each neuron group are the top-k by a second score (FLAP's
fluctuation), at the same counts and cost, legal for query heads, and the pruned model still
equals the original with the same units masked."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnxprune.analysis import analyze
from onnxprune.analysis.accounting import CostModel
from onnxprune.analysis.query_heads import group_parents, links
from onnxprune.api import apply_plan, load
from onnxprune.errors import SelectionError
from onnxprune.io.calib_data import CalibrationData
from onnxprune.plan import Plan
from onnxprune.recipe import Recipe, RecipeError
from onnxprune.selection.budget import Budget, neuron_groups, reorder_within_groups, select_to_budget
from tests.equivalence import assert_matches_masked, check_pruned_model
from tests.test_cli import cli

pytest.importorskip("torch")
pytest.importorskip("transformers")

from models.llm import TINY_VOCAB, export_causal_lm, tiny_llama  # noqa: E402


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> str:
    """A tiny LLaMA export (2 layers, 4 query heads on 2 KV heads, SwiGLU of 128 neurons)."""
    return str(export_causal_lm(tiny_llama(), tmp_path_factory.mktemp("unit_order") / "llama.onnx"))


def _windows(n: int = 8, seq: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, TINY_VOCAB, (n, seq)).astype(np.int64)


def _random_scores(analysis, seed: int) -> dict[str, np.ndarray]:  # noqa: ANN001
    rng = np.random.default_rng(seed)
    return {g.id: rng.random(g.size) for g in analysis.prunable_groups}


def _top_k(score: np.ndarray, k: int) -> tuple[int, ...]:
    return tuple(sorted(np.lexsort((np.arange(len(score)), -score))[:k].tolist()))


def _cost(model, analysis, plan: Plan) -> tuple[int, int]:  # noqa: ANN001
    costs, removed = CostModel(model, analysis), plan.removed_units(analysis)
    return costs.params(removed), costs.macs(removed)


def test_neuron_groups_are_the_ffns_not_the_heads(llama):
    """FFN neurons (gate and up rows, down_proj columns: one channel a unit) and no query-head
    or KV-head group."""
    analysis = analyze(load(llama))
    ffn = {g.id for g in analysis.prunable_groups if len(g.producers) == 2 and g.consumers}
    heads = set(group_parents(analysis)) | set(group_parents(analysis).values())
    assert len(ffn) == 2 and len(heads) == 4
    assert set(neuron_groups(analysis)) == ffn


def test_reorder_keeps_the_top_k_by_order_score_at_the_same_counts_and_cost(llama):
    model = load(llama)
    analysis = analyze(model)
    base = select_to_budget(model, analysis, _random_scores(analysis, 0), Budget("params", 0.7),
                            ranking="per-mac").plan
    ffn = [gid for gid in neuron_groups(analysis) if gid in base.keep]
    assert ffn, "the budget prunes no FFN"
    order = {gid: s for gid, s in _random_scores(analysis, 1).items() if gid in ffn}
    picked = reorder_within_groups(base, analysis, order, costs=CostModel(model, analysis))
    assert set(picked.keep) == set(base.keep)
    for gid, kept in base.keep.items():
        assert len(picked.keep[gid]) == len(kept)
        assert picked.keep[gid] == (_top_k(order[gid], len(kept)) if gid in order else kept)
    assert any(picked.keep[gid] != base.keep[gid] for gid in ffn), "the order score changed nothing"
    assert _cost(model, analysis, picked) == _cost(model, analysis, base)
    # the same through the allocation, which reports the same achieved cost
    budget = Budget("params", 0.7)
    plain = select_to_budget(model, analysis, _random_scores(analysis, 0), budget, ranking="per-mac")
    ordered = select_to_budget(model, analysis, _random_scores(analysis, 0), budget, ranking="per-mac",
                               order_scores=order)
    assert dict(ordered.plan.keep) == dict(picked.keep) and ordered.achieved == plain.achieved


def test_ties_go_to_the_lower_index_and_a_wrong_length_is_refused(llama):
    analysis = analyze(load(llama))
    gid = neuron_groups(analysis)[0]
    size = analysis.group(gid).size
    plan = Plan(fingerprint=analysis.fingerprint, keep={gid: tuple(range(size - 10, size))}, sizes={gid: size})
    assert reorder_within_groups(plan, analysis, {gid: np.zeros(size)}).keep[gid] == tuple(range(10))
    with pytest.raises(SelectionError, match=gid):
        reorder_within_groups(plan, analysis, {gid: np.zeros(size + 1)})


def test_query_heads_are_re_picked_only_where_legal_at_the_same_cost(llama):
    """A query-head group keeps one head per KV head; an order that keeps another head under
    each KV head is taken, one that keeps both heads of one KV head (its other KV head would
    then be read by none and go: another cost) is not."""
    model = load(llama)
    analysis = analyze(model)
    q_id, kv_id = next(iter(group_parents(analysis).items()))
    q, kv = analysis.group(q_id), analysis.group(kv_id)
    parent = {}  # query unit index -> KV unit index
    q_pos, kv_pos = {int(r): i for i, r in enumerate(q.units)}, {int(r): i for i, r in enumerate(kv.units)}
    for children, parents in links(analysis):
        for c, p in zip(children.tolist(), parents.tolist()):
            if c in q_pos and p in kv_pos:
                parent[q_pos[c]] = kv_pos[p]
    under = [[i for i in range(q.size) if parent[i] == k] for k in range(kv.size)]
    assert all(len(u) == 2 for u in under), under
    first = tuple(sorted(u[0] for u in under))
    plan = Plan(fingerprint=analysis.fingerprint, keep={q_id: first}, sizes={q_id: q.size})
    costs = CostModel(model, analysis)
    other = np.zeros(q.size)
    other[[u[1] for u in under]] = 1.0
    moved = reorder_within_groups(plan, analysis, {q_id: other}, costs=costs)
    assert moved.keep[q_id] == tuple(sorted(u[1] for u in under))
    assert _cost(model, analysis, moved) == _cost(model, analysis, plan)
    one_kv = np.zeros(q.size)
    one_kv[under[0]] = 1.0
    for given in (costs, None):  # refused by the cost check and, without one, by the closure check
        assert reorder_within_groups(plan, analysis, {q_id: one_kv}, costs=given).keep[q_id] == first


def test_a_plan_with_fluctuation_order_equals_the_masked_reference(llama):
    from onnxprune.scoring.fluctuation import fluctuation_scores

    model = load(llama)
    analysis = analyze(model)
    flap = fluctuation_scores(model, analysis, CalibrationData({"input_ids": _windows()}))
    scores = _random_scores(analysis, 2)
    ffn = neuron_groups(analysis)
    budget = Budget("params", 0.6)
    plain = select_to_budget(model, analysis, scores, budget, ranking="per-mac").plan
    plan = select_to_budget(model, analysis, scores, budget, ranking="per-mac",
                            order_scores={gid: flap[gid] for gid in ffn}).plan
    assert any(plan.keep[gid] != plain.keep[gid] for gid in ffn if gid in plan.keep)
    result = apply_plan(model, analysis, plan)
    check_pruned_model(result.model, model)
    for batch in (1, 2):
        assert_matches_masked(model, analysis, plan, result, seed=batch, batch=batch)


def test_compress_with_unit_order_keeps_counts_and_picks_by_fluctuation(llama):
    from onnxprune.compress import compress
    from onnxprune.scoring.fluctuation import fluctuation_scores

    calib = CalibrationData({"input_ids": _windows()})
    common = {"target_params": 0.7, "criterion": "l2", "recover": "none", "measure": False, "align": 1}
    plain = compress(load(llama), Recipe(**common), calib=calib)
    ordered = compress(load(llama), Recipe(**common, unit_order="fluctuation"), calib=calib)
    analysis = ordered.analysis
    flap = fluctuation_scores(load(llama), analysis, calib)
    assert {g: len(k) for g, k in ordered.plan.keep.items()} == {g: len(k) for g, k in plain.plan.keep.items()}
    assert (ordered.after.params, ordered.after.macs) == (plain.after.params, plain.after.macs)
    ffn = [gid for gid in neuron_groups(analysis) if gid in plain.plan.keep]
    assert ffn
    for gid, kept in ordered.plan.keep.items():
        want = _top_k(flap[gid], len(kept)) if gid in ffn else plain.plan.keep[gid]
        assert kept == want, gid
    assert any("chosen by fluctuation" in n for n in ordered.notes), ordered.notes
    assert ordered.plan.options["recipe"]["unit_order"] == "fluctuation"


def test_recipe_field_is_validated_and_needs_data(llama):
    from onnxprune.compress import compress

    assert Recipe().unit_order == "criterion" and "units kept inside" not in Recipe(ratio=0.3).describe()
    r = Recipe.from_dict({"ratio": 0.3, "unit_order": "fluctuation"})
    assert r.needs_data and "units kept inside neuron groups by fluctuation" in r.describe()
    assert Recipe.from_dict(r.to_dict()) == r
    with pytest.raises(RecipeError, match="unit order 'taylor'.*--unit-order"):
        Recipe(ratio=0.3, unit_order="taylor")
    with pytest.raises(RecipeError, match="--unit-order fluctuation needs calibration data"):
        compress(load(llama), r)
    analysis = analyze(load(llama))
    replay = Plan(fingerprint=analysis.fingerprint, keep={}, sizes={})
    with pytest.raises(RecipeError, match="not to a replayed --plan"):
        compress(load(llama), Recipe(unit_order="fluctuation", measure=False, recover="none"),
                 calib=CalibrationData({"input_ids": _windows()}), plan=replay)
    with pytest.raises(RecipeError, match="--method spp"):
        compress(load(llama), Recipe(target_flops=0.5, method="spp", unit_order="fluctuation"),
                 calib=CalibrationData({"input_ids": _windows()}))


def test_cli_prints_the_unit_order_in_the_recipe_line(llama, tmp_path, monkeypatch, capsys):
    windows = tmp_path / "windows.npz"
    np.savez(windows, input_ids=_windows())
    out_path = tmp_path / "out.onnx"
    args = ("prune", llama, "-o", out_path, "--target-params", "0.8", "--criterion", "l2", "--recover", "none",
            "--no-measure")
    code, out, err = cli(monkeypatch, capsys, *args, "--unit-order", "fluctuation", "--calib", windows)
    assert code == 0, out + err
    recipe_line = next(line for line in out.splitlines() if line.startswith("recipe:"))
    assert "units kept inside neuron groups by fluctuation" in recipe_line, out
    assert "chosen by fluctuation" in out
    onnx.checker.check_model(onnx.load(out_path))
    code, out, err = cli(monkeypatch, capsys, *args, "--calib", windows)
    assert code == 0 and "units kept inside" not in out, out + err
    code, out, err = cli(monkeypatch, capsys, *args, "--unit-order", "fluctuation")
    assert code == 1 and "--unit-order fluctuation needs calibration data: give --calib" in out + err, out + err


class _RootCost:
    """A cost model in which removing a unit costs its root's number (units of unequal cost
    that the per-unit figures do not show): the check of the whole plan's cost."""

    def __init__(self, roots: set[int]) -> None:
        self.roots = roots

    def params(self, removed: np.ndarray) -> int:
        return int(sum(r for r in removed.tolist() if r in self.roots))

    def macs(self, removed: np.ndarray) -> int:
        return 0


def test_a_group_whose_re_pick_changes_the_cost_keeps_its_pick(llama):
    analysis = analyze(load(llama))
    first, second = (analysis.group(gid) for gid in neuron_groups(analysis))
    plan = Plan(fingerprint=analysis.fingerprint, keep={first.id: tuple(range(64)), second.id: tuple(range(64))},
                sizes={first.id: first.size, second.id: second.size})
    order = {g.id: np.arange(g.size, dtype=np.float64) for g in (first, second)}  # the last 64 units best
    picked = reorder_within_groups(plan, analysis, order, costs=_RootCost({int(r) for r in first.units}))
    assert picked.keep[first.id] == tuple(range(64))  # its cost changed: the original pick
    assert picked.keep[second.id] == tuple(range(64, 128))
