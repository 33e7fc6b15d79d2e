"""One call from a prepared model and a recipe to a pruned (and recovered) model.

``compress(model, recipe, calib=...)`` is the whole run that the CLI's ``prune`` and Python
users share: resolve the recipe for this model and data, analyse, score, allocate (or
replay a plan), rewrite, recover on held-out-checked calibration data, and measure the
speed-up on the target runtime. It returns a ``CompressResult``; writing the model is the
caller's (``CompressResult.save``), so nothing is written when any step fails.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx

from onnxprune.analysis import Analysis, analyze
from onnxprune.analysis.flops import Cost, cost_at, model_cost
from onnxprune.errors import SelectionError
from onnxprune.io.compact import Parked, worth_compacting
from onnxprune.plan import Plan
from onnxprune.recipe import (
    Context,
    Recipe,
    RecipeError,
    is_causal_lm,
    is_transformer,
    provider_name,
    resolve,
)
from onnxprune.runtime.memory import release
from onnxprune.scoring.criteria import needs_data

if TYPE_CHECKING:
    from onnxprune.io.calib_data import CalibrationData
    from onnxprune.selection.budget import Budget
    from onnxprune.verify.speedcheck import SpeedResult

log = logging.getLogger(__name__)

#: ``progress(step, done, total)``: a new ``step`` label starts a step (done/total None
#: while its length is unknown); the same label with counts advances it.
Progress = Callable[[str, "int | None", "int | None"], None]


@dataclass(frozen=True)
class CompressResult:
    """What a run produced and how: the pruned model, its plan and resolved recipe, costs
    before and after, and one-line notes (budget reached, recovery on held-out data,
    measured speed-up) and warnings (nothing removed, slower, more parameters)."""

    model: onnx.ModelProto
    plan: Plan
    recipe: Recipe
    analysis: Analysis
    before: Cost
    after: Cost
    removed_channels: int
    total_channels: int
    notes: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    recovery: dict[str, Any] | None = None
    speed: SpeedResult | None = None  # when measured

    @property
    def changed(self) -> bool:
        return bool(self.plan.keep or self.plan.removed_blocks)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the pruned model atomically (``modelio.save_model``)."""
        from onnxprune.io.modelio import save_model

        return save_model(self.model, path)

    def summary(self) -> str:
        """One line: what was removed, in channels, parameters and MACs."""
        if not self.changed:
            return "nothing removed"
        pct = self.removed_channels / self.total_channels if self.total_channels else 0.0
        return (f"removed {self.removed_channels:,} of {self.total_channels:,} prunable channels ({pct:.1%}) in "
                f"{len(self.plan.keep)} groups{_blocks_phrase(self.plan)}; parameters {self.before.params:,} -> "
                f"{self.after.params:,}, "
                f"MACs {self.before.macs:,} -> {self.after.macs:,} ({_ratio(self.after.macs, self.before.macs)})")

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``--json``: the recipe, the costs, the notes, the measured speed."""
        out: dict[str, Any] = {
            "recipe": self.recipe.to_dict(),
            "groups_pruned": len(self.plan.keep),
            "blocks_removed": list(self.plan.removed_blocks),
            "channels": {"removed": self.removed_channels, "prunable": self.total_channels},
            "params": {"before": self.before.params, "after": self.after.params},
            "macs": {"before": self.before.macs, "after": self.after.macs},
            "notes": list(self.notes),
            "warnings": list(self.warnings),
        }
        if self.speed is not None:
            out["speed"] = self.speed.to_dict()
        if self.recovery is not None:
            out["recovery"] = self.recovery
        return out


def _ratio(after: float, before: float) -> str:
    return f"{after / before:.1%}" if before else "-"


def _human(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.1f}{unit}"
    return f"{n:.0f}"


def _quiet(label: str, done: int | None = None, total: int | None = None) -> None:
    """The default progress: log each step at debug level."""
    if done is None:
        log.debug("%s", label)


def resolve_for(recipe: Recipe, *, has_calib: bool, model: onnx.ModelProto | None = None) -> Recipe:
    """``resolve`` with this machine's context (the target provider's channel block) and, when
    given, the model's (a transformer gets Kwon et al.'s recipe)."""
    block = 1
    if recipe.align == "auto":
        from onnxprune.selection.latency import resolve_align

        try:
            block = resolve_align("auto", provider_name(recipe))
        except Exception as exc:  # noqa: BLE001 - onnxruntime missing or unusable: no alignment
            log.debug("no channel block for alignment: %s", exc)
            block = 1
    transformer = model is not None and is_transformer(model)
    causal_lm = model is not None and is_causal_lm(model)
    return resolve(recipe, Context(has_calib=has_calib, align_block=block, transformer=transformer,
                                   causal_lm=causal_lm))


def compress(model: onnx.ModelProto, recipe: Recipe, *, calib: CalibrationData | None = None,
             plan: Plan | None = None, analysis: Analysis | None = None, batch_size: int = 32,
             device: str = "cpu", latency_table: str | os.PathLike[str] | None = None,
             recovery_report: str | os.PathLike[str] | None = None, debug: bool = False,
             progress: Progress | None = None) -> CompressResult:
    """Prune a prepared model (``api.load``) by ``recipe``, or replay ``plan``.

    ``calib``: unlabelled (or labelled) calibration samples for data-driven scoring and
    recovery; ``batch_size``/``device``: for the torch calibration pass;
    ``latency_table``: cache for ``target_latency``; ``recovery_report``: also write what
    recovery did as JSON. ``model`` is not modified unless nothing later needs the
    original (no recovery, no measurement), in which case it is rewritten in place to save
    a copy of the weights."""
    step = progress or _quiet
    if plan is None:
        recipe.require_budget()
    elif recipe.budgets:
        raise RecipeError("a replayed --plan and a budget exclude each other")
    resolved = resolve_for(recipe, has_calib=calib is not None, model=model)
    if plan is not None and resolved.align not in (1, "auto") and recipe.align != "auto":
        raise RecipeError("--align applies when allocating (a budget or ratio), not to a replayed --plan")
    if plan is not None and resolved.unit_order != "criterion":
        raise RecipeError("--unit-order applies when allocating (a budget or ratio), not to a replayed --plan")
    if resolved.method != "criterion":
        return _train(model, resolved, calib, step, batch_size, device)
    notes: list[str] = []
    counted_at: dict[str, list[int]] = {}  # a caller's analysis counted MACs its own way
    if analysis is None:
        counted_at, counting_note = counting_shapes(model, calib)
        if counting_note:
            notes.append(counting_note)
        step("analysing channel groups", None, None)
        from onnxprune.analysis.rules.quant import requantize_nbits
        from onnxprune.prepare.normalize import shaped_copy

        mac_shapes = shaped_copy(model, counted_at, "the calibration data") if counted_at else None
        with requantize_nbits(resolved.requantize):
            analysis = analyze(model, ignore=resolved.ignore, prune_hidden=resolved.prune_hidden,
                               allow_interface_change=resolved.allow_interface_change, mac_shapes=mac_shapes)
        del mac_shapes
    if plan is None:
        plan, note = plan_for(model, resolved, analysis, calib=calib, batch_size=batch_size, device=device,
                              latency_table=latency_table, progress=step)
        if note:
            notes.append(note)
    plan = replace(plan, options={**plan.options, "recipe": resolved.to_dict()})
    from onnxprune.api import apply_plan

    methods = resolved.recover if calib is not None else ()
    measure = resolved.measure and bool(plan.keep or plan.removed_blocks)
    step("rewriting the graph", None, None)
    result = apply_plan(model, analysis, plan, debug=debug, inplace=not (methods or measure))
    pruned, after, before = result.model, cost_at(result.model, counted_at, result.after), result.before
    del result  # recovery returns a new model: the rewritten one must not outlive it here
    if pruned is not model and worth_compacting(pruned):  # the sliced copy's message still holds the
        parked = Parked(pruned)  # original's weights (``io.compact``): read back into a fresh one
        del pruned
        release()
        pruned = parked.take()
    release()
    from onnxprune.interface import kept_indices

    changed = kept_indices(analysis, plan)  # a KV cache's heads (allowed by allow_interface_change)
    if changed:
        notes.append("interface changed: " + ", ".join(
            f"{name} axis {axis} keeps {len(index)}" for name, (axis, index) in sorted(changed.items())))
    report = None
    if methods and (plan.keep or plan.removed_blocks):
        pruned, report = _recover(model, pruned, analysis, plan, resolved, calib, step)
        release()
        after = Cost(model_cost(pruned).params, after.macs)  # new weights (a bias added), the same shapes
        if recovery_report is not None:
            import json

            from onnxprune.io.fileutil import write_text_atomic

            write_text_atomic(recovery_report, json.dumps(report, indent=1, default=str))
        notes.append(_recovery_line(report))
    warnings = _warnings(analysis, plan, before, after, resolved)
    speed = None
    if measure:
        step("measuring the speed-up", None, None)
        speed, line, slower = _measure(model, pruned, resolved, calib)
        if line:
            notes.append(line)
        if slower:
            warnings.append(slower)
    return CompressResult(pruned, plan, resolved, analysis, before, after,
                          plan.removed_channels(analysis),
                          sum(g.size * g.unit_width for g in analysis.prunable_groups),
                          tuple(notes), tuple(warnings), report, speed)


def counting_shapes(model: onnx.ModelProto, calib: CalibrationData | None) -> tuple[dict[str, list[int]], str]:
    """Where to count MACs for a model whose float inputs have dynamic axes beyond the batch
    (an image's height and width, an audio clip's length), which would count as 1 and leave
    a FLOPs budget weighing layers by their parameters: at the calibration samples' size
    (batch 1), with a note saying so; without data, a note saying how. Token inputs (integer)
    keep counting per token."""
    from onnxprune.prepare.normalize import dynamic_axes

    dynamic = dynamic_axes(model, floats_only=True)
    if not dynamic:
        return {}, ""
    if calib is None or not all(name in calib.inputs for name in dynamic):
        return {}, dynamic_axes_note(dynamic, "--calib or --input-shape")
    shapes = {name: [1, *map(int, calib.inputs[name].shape[1:])] for name in dynamic}
    return shapes, "MACs counted at the calibration samples' size (" + ", ".join(
        f"{name} {'x'.join(map(str, dims))}" for name, dims in shapes.items()) + ")"


def dynamic_axes_note(dynamic: dict[str, list[int]], remedy: str) -> str:
    """The note for MACs counted with the dynamic axes ``dynamic`` (``normalize.dynamic_axes``) as 1."""
    axes = ", ".join(f"'{name}' axes {', '.join(map(str, a))}" for name, a in dynamic.items())
    return f"MACs count the dynamic axes of {axes} as 1: give {remedy} to count them at the size the model runs at"


def plan_for(model: onnx.ModelProto, resolved: Recipe, analysis: Analysis, *, calib: CalibrationData | None = None,
             batch_size: int = 32, device: str = "cpu", latency_table: str | os.PathLike[str] | None = None,
             progress: Progress | None = None) -> tuple[Plan, str]:
    """Score and allocate by a resolved recipe (``resolve_for``) without rewriting: the plan
    and a one-line note of what the budget reached (what ``analyze --recipe`` previews)."""
    step = progress or _quiet
    scores = _score(model, analysis, resolved, calib, step, batch_size, device)
    release()  # a calibration pass's torch module and activations: freed before the next step's peak
    plan, note = _allocate(model, analysis, resolved, scores, step, latency_table, calib)
    if resolved.unit_order != "criterion" and calib is not None:  # which units, the counts fixed
        plan, order_note = _reorder_units(model, analysis, resolved, plan, calib, step)
        note = f"{note}; {order_note}" if note else order_note
    if resolved.uniform_heads:  # every attention layer keeps as many heads
        from onnxprune.selection.uniform_heads import uniform_heads

        plan = uniform_heads(analysis, plan, scores)
        from onnxprune.analysis.accounting import CostModel

        costs, removed = CostModel(model, analysis), plan.removed_units(analysis)
        note = (f"{note}; " if note else "") + (
            f"with equal head counts in every layer: {costs.params(removed):,} parameters, "
            f"{costs.macs(removed):,} MACs")
    return plan, note


def _score(model: onnx.ModelProto, analysis: Analysis, r: Recipe, calib: CalibrationData | None, step: Progress,
           batch_size: int, device: str) -> dict:
    from onnxprune.api import score_channels

    label = f"scoring channels ({r.criterion})"
    step(label, None, None)
    if calib is None or not needs_data(r.criterion):
        return score_channels(model, analysis, r.criterion)
    if r.loss == "next-token":  # a causal LM's own text: next-token cross-entropy on the windows
        return _next_token_scores(model, analysis, r, calib, device)
    return score_channels(model, analysis, r.criterion, calib=calib, loss=r.loss, reduction=r.reduction,
                          batch_size=batch_size, device=device, flops_reg=r.flops_reg, projections=r.projections,
                          progress=lambda done, total: step(label, done, total))


def _reorder_units(model: onnx.ModelProto, analysis: Analysis, r: Recipe, plan: Plan, calib: CalibrationData,
                   step: Progress) -> tuple[Plan, str]:
    """``plan`` with the units kept inside each neuron group (``selection.budget.neuron_groups``:
    a decoder's FFNs) chosen by ``r.unit_order`` (FLAP's fluctuation: one onnxruntime pass),
    the kept counts and the cost unchanged; and a note of how many kept units changed."""
    from onnxprune.analysis.accounting import CostModel
    from onnxprune.scoring.fluctuation import MAX_BATCH, fluctuation_scores
    from onnxprune.selection.budget import neuron_groups, reorder_within_groups

    ids = [gid for gid in neuron_groups(analysis) if gid in plan.keep]
    if not ids:
        return plan, f"unit order {r.unit_order}: no neuron group is pruned"
    label = f"scoring units inside groups ({r.unit_order})"
    step(label, None, None)
    only = replace(analysis, groups=[analysis.group(gid) for gid in ids])  # the pass reads their consumers alone
    scores = fluctuation_scores(model, only, calib, batch_size=MAX_BATCH,
                                progress=lambda done, total: step(label, done, total))
    release()
    reordered = reorder_within_groups(plan, analysis, {gid: scores[gid] for gid in ids},
                                      costs=CostModel(model, analysis))
    moved = sum(len(set(plan.keep[gid]) - set(reordered.keep[gid])) for gid in ids)
    kept = sum(len(plan.keep[gid]) for gid in ids)
    return reordered, (f"units kept inside {len(ids)} neuron groups chosen by {r.unit_order}: {moved:,} of "
                       f"{kept:,} kept units differ from the {r.criterion} pick")


# token windows per backward pass when scoring a causal LM (activations over the vocabulary)
LM_SCORE_BATCH = 2
LM_RECOVERY_BATCH = 2  # token windows per onnxruntime run in a decoder LM's recovery (docs/llm.md)


def _next_token_scores(model: onnx.ModelProto, analysis: Analysis, r: Recipe, calib: CalibrationData,
                       device: str) -> dict:
    from onnxprune.verify.lm_eval import NEXT_TOKEN_CRITERIA, next_token_taylor_scores

    names = [k for k, v in calib.inputs.items() if getattr(v, "ndim", 0) == 2 and v.dtype.kind in "iu"]
    if r.criterion not in NEXT_TOKEN_CRITERIA or len(calib.inputs) != 1 or len(names) != 1:
        raise RecipeError(f"--loss next-token scores {' or '.join(NEXT_TOKEN_CRITERIA)} on a causal LM's token "
                          f"windows (one 2-D integer input in --calib; got criterion {r.criterion}, inputs "
                          f"{', '.join(calib.inputs)})")
    return next_token_taylor_scores(model, analysis, calib.inputs[names[0]], batch_size=LM_SCORE_BATCH,
                                    device=device, criterion=r.criterion)


def _allocate(model: onnx.ModelProto, analysis: Analysis, r: Recipe, scores: dict, step: Progress,
              latency_table: str | os.PathLike[str] | None, calib: CalibrationData | None = None
              ) -> tuple[Plan, str]:
    """The plan for the recipe's budget, and a one-line note of what the budget reached."""
    from onnxprune.api import plan_by_ratio, plan_to_budget
    from onnxprune.selection.budget import Budget

    common = dict(criterion=r.criterion, scores=scores, round_to=r.round_to, min_channels=r.min_channels,
                  max_ratio=r.max_ratio, align=int(r.align))
    if r.ratio is not None:
        step("selecting channels", None, None)
        return plan_by_ratio(model, analysis, ratio=r.ratio, mode=r.mode, ranking=r.ranking, **common), ""
    if r.target_latency is not None:
        from onnxprune.runtime.session import random_inputs
        from onnxprune.selection.latency import latency_note, plan_to_latency

        label = "measuring per-group latency"
        step(label, None, None)
        reached = plan_to_latency(model, analysis, r.target_latency, provider=provider_name(r),
                                  table_path=latency_table, feeds=random_inputs(model),
                                  progress=lambda done, total: step(label, done, total), **common)
        return reached.plan, latency_note(reached)
    metric, target = ("flops", r.target_flops) if r.target_flops is not None else ("params", r.target_params)
    step(f"allocating to the {metric} budget", None, None)
    budget = Budget(metric, float(target))
    unaligned = ""
    blocks = _depth_blocks(model, analysis, r, calib, step, budget) if r.depth != "off" and r.depth and calib else []
    release()
    try:
        if blocks:  # whole residual blocks first, channels for the rest of the budget
            reached = _fit_with_blocks(model, analysis, scores, budget, blocks, r.ranking, common)
        elif r.limits == "sensitivity" and calib is not None:
            from onnxprune.selection.sensitivity_limits import allocate

            step("measuring each group's sensitivity", None, None)
            reached = allocate(model, analysis, scores, calib, budget, round_to=r.round_to,
                               min_channels=r.min_channels, max_ratio=r.max_ratio, align=int(r.align),
                               criterion=r.criterion)[0]
        else:
            reached = plan_to_budget(model, analysis, budget, ranking=r.ranking, **common)
    except SelectionError:
        if int(r.align) == 1:
            raise
        reached, align = _fit_finer_aligned(model, analysis, scores, budget, blocks, r, common)
        unaligned = (f"; aligned counts (blocks of {r.align}) cannot reach this budget, so kept counts are "
                     + (f"aligned to {align} channels instead" if align > 1 else
                        "off the block and may run slower"))
    if not reached.original:  # nothing accounted (no prunable group): compress warns, nothing is removed
        note = f"{'MACs' if metric == 'flops' else 'parameter'} budget: nothing to allocate, no prunable group"
    elif metric == "flops":  # one unit everywhere: MACs (FLOPs = 2 x MACs)
        note = (f"MACs budget: target {_human(reached.target / 2)} ({reached.target / reached.original:.1%}), "
                f"achieved {_human(reached.achieved / 2)} ({reached.achieved / reached.original:.1%})")
    else:
        note = (f"parameter budget: target {_human(reached.target)} ({reached.target / reached.original:.1%}), "
                f"achieved {_human(reached.achieved)} ({reached.achieved / reached.original:.1%})")
    if blocks:
        n = len(reached.plan.removed_blocks)
        note += f"; {n} residual block{'s' if n > 1 else ''} removed whole"
    return reached.plan, note + unaligned


def _blocks_phrase(plan: Plan) -> str:
    n = len(plan.removed_blocks)
    return f" and {n} residual block{'s' if n > 1 else ''}" if n else ""


# how blocks are ranked (``scoring.block_scores``) and on how many calibration samples at most:
# Block Influence, one pass (SmolLM2 with a quarter of the budget in blocks: perplexity 35.4
# against 35.8 ranked by the loss when bypassed, which takes a pass per block; docs/llm.md)
DEPTH_CRITERION = "influence"
DEPTH_SAMPLES = 64


def _depth_blocks(model: onnx.ModelProto, analysis: Analysis, r: Recipe, calib: CalibrationData, step: Progress,
                  budget: Any) -> list:
    """The residual blocks to remove: the ``r.depth`` least important, or (a fraction) the
    least important while their savings stay within that share of what ``budget`` removes."""
    import numpy as np

    from onnxprune.analysis.accounting import CostModel
    from onnxprune.analysis.blocks import block_cost_model, find_blocks
    from onnxprune.scoring.block_scores import block_scores

    blocks = find_blocks(model)
    if isinstance(r.depth, int) and len(blocks) < r.depth:
        raise RecipeError(f"--depth {r.depth}: the model has {len(blocks)} removable residual block"
                          f"{'' if len(blocks) == 1 else 's'} (`onnxprune analyze --wide` lists them)")
    label = f"scoring residual blocks ({DEPTH_CRITERION})"
    step(label, None, None)
    scores = block_scores(model, blocks, calib.take(DEPTH_SAMPLES), criterion=DEPTH_CRITERION,
                          progress=lambda done, total: step(label, done, total))
    ranked = sorted(blocks, key=lambda b: (scores[b.add], b.add))
    if isinstance(r.depth, int):
        return ranked[:r.depth]
    none = np.zeros(0, dtype=np.int64)

    def cost(costs: CostModel) -> int:
        return costs.macs(none) if budget.metric == "flops" else costs.params(none)

    original = cost(CostModel(model, analysis))
    target = budget.absolute(2 * original if budget.metric == "flops" else original)
    allowed = r.depth * (original - (target / 2 if budget.metric == "flops" else target))
    chosen: list = []
    for block in ranked:
        if original - cost(block_cost_model(model, analysis, [*chosen, block])) > allowed:
            break
        chosen.append(block)
    return chosen


def _fit_finer_aligned(model: onnx.ModelProto, analysis: Analysis, scores: dict, budget: Budget,
                       blocks: list, r: Recipe, common: dict) -> tuple[Any, int]:
    """The allocation at the coarsest channel block finer than ``r.align`` (halving it down to 1)
    that reaches a budget the aligned counts cannot: a half block keeps most of the speed an
    off-block count loses (the zoo's conv_lstm, 16 channels cut to 11 at block 16: 0.92x; to 8
    at block 8: faster)."""
    from onnxprune.api import plan_to_budget

    align = int(r.align) // 2
    while True:
        options = {**common, "align": max(align, 1)}
        try:
            return ((_fit_with_blocks(model, analysis, scores, budget, blocks, r.ranking, options) if blocks
                     else plan_to_budget(model, analysis, budget, ranking=r.ranking, **options)), max(align, 1))
        except SelectionError:
            if align <= 1:
                raise
            align //= 2


def _fit_with_blocks(model: onnx.ModelProto, analysis: Analysis, scores: dict, budget: Any, blocks: list,
                     ranking: str, common: dict) -> Any:
    from onnxprune.selection.budget import select_to_budget

    options = {k: v for k, v in common.items() if k != "scores"}
    return select_to_budget(model, analysis, scores, budget, ranking=ranking, removed_blocks=blocks, **options)


def _recover(original: onnx.ModelProto, pruned: onnx.ModelProto, analysis: Analysis, plan: Plan, r: Recipe,
             calib: CalibrationData, step: Progress) -> tuple[onnx.ModelProto, dict]:
    from onnxprune.recovery import recover

    label = f"recovering ({', '.join(r.recover)})"
    step(label, None, None)
    options: dict[str, Any] = {"methods": r.recover, "weighting": r.recovery_weighting}
    options.update(_recovery_options(r))
    return recover(original, pruned, analysis, plan, calib,
                   progress=lambda done, total, node: step(label, done, total), **options)


def _recovery_options(r: Recipe) -> dict[str, Any]:
    """The recipe's held-out recovery settings, as ``recovery.recover`` takes them (ridge
    None: chosen on the held-out samples)."""
    options = {"ridge": None if r.ridge == "auto" else float(r.ridge), "holdout": r.holdout, "augment": r.augment,
               "residual": r.refit_target == "stream"}
    if r.loss == "next-token":  # a decoder LM: logits are [batch, seq, vocab], so few windows per run,
        # FLAP's bias compensation from the original's means, and every step judged on the held-out
        # next-token KL divergence (as docs/llm.md measured them)
        options.update(batch_size=LM_RECOVERY_BATCH, bias_means="original", held_metric="kl")
    return options


def _recovery_line(report: dict) -> str:
    """What recovery did, in held-out figures (never calibration error as quality)."""
    from onnxprune.recovery import summary_line

    return summary_line(report)


def _warnings(analysis: Analysis, plan: Plan, before: Cost, after: Cost, r: Recipe) -> list[str]:
    out: list[str] = []
    if not plan.keep and not plan.removed_blocks:
        why = ("no group is prunable (see `onnxprune analyze`)" if not analysis.prunable_groups else
               "the budget is already met by the original" if r.ratio is None else
               "--min-channels / --max-ratio / --round-to leave every group whole")
        out.append(f"nothing was removed: {why}; the output is a copy of the input")
    if after.params > before.params:
        out.append(f"the pruned model has MORE parameters than the original ({after.params:,} > {before.params:,})")
    return out


def _measure(original: onnx.ModelProto, pruned: onnx.ModelProto, r: Recipe, calib: CalibrationData | None
             ) -> tuple[SpeedResult | None, str, str]:
    """The measured speed-up on the target provider: (result, note, warning if slower)."""
    from onnxprune.errors import OnnxPruneError
    from onnxprune.verify.speedcheck import measure_speedup

    feeds = None
    if calib is not None:
        feeds = {k: v[:1] for k, v in calib.inputs.items()}
    a, b = _in_memory(original), _in_memory(pruned)
    try:
        speed = measure_speedup(a, b, feeds, provider=provider_name(r))
    except OnnxPruneError as exc:
        return None, f"speed not measured: {exc}", ""
    where = speed.provider.replace("ExecutionProvider", "")
    line = f"speed: {speed.summary()}"
    slower = ""
    if speed.slower:
        slower = (f"the pruned model is SLOWER than the original on {where} ({speed.speedup:.2f}x): try "
                  "--target-latency (measured allocation), --round-to 8, or a smaller cut")
    return speed, line, slower


def _in_memory(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` itself, or a copy with the weights it keeps in files read in, where a session
    cannot read them from their files (``runtime.session``); the model itself stays
    file-backed, so it is saved as it was loaded."""
    from onnxprune.io.modelio import has_file_weights, materialize
    from onnxprune.runtime.session import _streamed

    if not has_file_weights(model) or _streamed(model):
        return model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return materialize(copy)


def _train(model: onnx.ModelProto, r: Recipe, calib: CalibrationData | None, step: Progress, batch_size: int,
           device: str) -> CompressResult:
    """Pruning while training (iterative, spp, learned-threshold): distillation on ``calib``."""
    from onnxprune.train import train_prune

    if r.target_flops is None:
        raise RecipeError(f"{r.method} pruning trains the model: it needs --calib data and --target-flops")
    assert calib is not None  # resolve() refused a training method without data
    step(f"{r.method} pruning with fine-tuning", None, None)
    result = train_prune(r.method, model, calib, target_flops=r.target_flops, round_to=r.round_to,
                         min_channels=r.min_channels, max_ratio=r.max_ratio, steps=r.train_steps, lr=r.lr,
                         batch_size=batch_size, device=device)
    analysis = analyze(model, ignore=r.ignore)
    plan = replace(result.plan, options={**result.plan.options, "recipe": r.to_dict()})
    note = (f"{r.method}: MACs target {_human(result.target_flops / 2)}, achieved "
            f"{_human(result.achieved_flops / 2)} ({result.achieved_flops / result.original_flops:.1%}) "
            f"after {result.steps} training steps")
    return CompressResult(result.model, plan, r, analysis, result.prune.before, result.prune.after,
                          plan.removed_channels(analysis),
                          sum(g.size * g.unit_width for g in analysis.prunable_groups),
                          (note, *result.notes))
