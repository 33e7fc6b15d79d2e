"""The ``onnxprune`` command line: analyze, prune, verify, demo."""

from __future__ import annotations

import errno
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from onnxprune.errors import (EXIT_COMMAND_LINE, EXIT_INTERNAL, EXIT_USER_ERROR, DataError, OnnxPruneError,
                              OptionError, OutputPathError, RuntimeUnavailableError, SelectionError, exit_code)
from onnxprune.recovery.methods import names as recovery_names
from onnxprune.scoring.criteria import cli_help as criteria_help

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="A structured-pruning compiler for ONNX models.",
                  epilog=f"Exit status: 0 success; {EXIT_USER_ERROR} an error in the options, the model or the "
                         f"data (one 'error: ...' line), or a failed verify gate; {EXIT_COMMAND_LINE} a "
                         f"command-line syntax error; {EXIT_INTERNAL} an internal failure (a bug: please "
                         "report it).")
console = Console(stderr=False)
err = Console(stderr=True)

ModelArg = Annotated[Path, typer.Argument(help="Input .onnx model (never modified).")]
InputShapeOpt = Annotated[Optional[list[str]], typer.Option(
    "--input-shape", help="Set an input's shape: NAME=1,3,224,224 (a name for a dynamic axis).")]


PruneHiddenOpt = Annotated[bool, typer.Option(
    help="Also prune a transformer's residual stream through LayerNorm (approximate: use recovery).")]
CalibOpt = Annotated[Optional[Path], typer.Option(
    help="Calibration data: .npz or folder of .npy named after the inputs, or an image folder.")]
LabelsOpt = Annotated[Optional[str], typer.Option(help="Name of the labels array in the calibration data.")]
SamplesOpt = Annotated[Optional[int], typer.Option("--calib-samples", help="Use at most N calibration samples.")]
BatchOpt = Annotated[int, typer.Option(help="Calibration batch size.")]
LossOpt = Annotated[str, typer.Option(help="auto, ce, mse, pseudo (own argmax) or fisher (random projection).")]
ReductionOpt = Annotated[str, typer.Option(help="Reduce a unit's scores over its consumers: sum, mean, max.")]
DeviceOpt = Annotated[str, typer.Option(help="Torch device for calibration: cpu, cuda, cuda:1, ...")]
ImageSizeOpt = Annotated[Optional[str], typer.Option(help="Image folder preprocessing: H,W.")]
MeanOpt = Annotated[str, typer.Option(help="Image folder preprocessing: per-channel mean (after /255).")]
StdOpt = Annotated[str, typer.Option(help="Image folder preprocessing: per-channel std.")]
LayoutOpt = Annotated[str, typer.Option(help="Image folder preprocessing: NCHW or NHWC.")]
FlopsRegOpt = Annotated[float, typer.Option(help="taylor-act: subtract this x the unit's FLOPs share.")]
ProjectionsOpt = Annotated[int, typer.Option(
    help="--loss fisher: random projections per sample (each a fresh draw; more = a finer Fisher estimate).")]


def _distributed_rank(device: str) -> int:
    """Under torchrun (WORLD_SIZE > 1) join the process group; returns this process's rank."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return dist.get_rank()


def _distributed_done() -> None:
    """Leave the process group cleanly (gloo aborts at exit otherwise)."""
    if sys.modules.get("torch") is None:  # no process group without torch: do not import it for nothing
        return
    try:
        import torch.distributed as dist
    except ImportError:
        return
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def _scores(progress: Progress, m, analysis, criterion: str, calib: Path | None, labels: str | None,  # noqa: ANN001
            samples: int | None, batch_size: int, loss: str, reduction: str, device: str, image_size: str | None,
            mean: str, std: str, layout: str, flops_reg: float, projections: int = 1):  # noqa: ANN202
    """Scores for a criterion, loading calibration data when one is given or needed."""
    from onnxprune.api import score_channels
    from onnxprune.io.calib_data import load_calibration

    data = None
    if calib is not None:
        _distributed_rank(device)
        data = _run_step(progress, "loading calibration data", load_calibration, calib, m, labels=labels,
                         samples=samples, image_size=[int(v) for v in image_size.split(",")] if image_size else None,
                         mean=_floats(mean), std=_floats(std), layout=layout)
    task = progress.add_task(f"scoring channels ({criterion})", total=None)

    def advance(done: int, total: int) -> None:
        progress.update(task, completed=done, total=total)

    try:
        return score_channels(m, analysis, criterion, calib=data, **({} if data is None else dict(
            loss=loss, reduction=reduction, batch_size=batch_size, device=device, flops_reg=flops_reg,
            projections=projections,
            progress=advance)))
    finally:
        progress.remove_task(task)


def _parse_shapes(specs: list[str] | None) -> dict[str, list[int | str]]:
    from onnxprune.prepare.normalize import parse_input_shapes

    return parse_input_shapes(specs)


def _steps(debug: bool) -> Progress:
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                    console=err, transient=True, disable=debug or not err.is_terminal)


def _run_step(progress: Progress, label: str, fn: Callable, *args, **kwargs):  # noqa: ANN002, ANN003, ANN202
    task = progress.add_task(label, total=None)
    try:
        return fn(*args, **kwargs)
    finally:
        progress.remove_task(task)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            v = version("onnxprune")
        except PackageNotFoundError:  # run from a source tree
            from onnxprune import __version__ as v
        console.print(f"onnxprune {v}", highlight=False)
        raise typer.Exit(0)


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log details.")] = False,
          version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                                help="Print the version and exit.")] = False,
          plugin: Annotated[Optional[list[str]], typer.Option(
              "--plugin", help="Import this module first: its criteria and recovery methods can then be named "
                               "(repeatable; installed 'onnxprune.plugins' entry points load by themselves).")
          ] = None) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(message)s",
                        handlers=[RichHandler(console=err, show_time=False, show_path=False)])
    from onnxprune.extend import load_plugin

    for module in plugin or ():
        load_plugin(module)


@app.command()
def analyze(
    model: ModelArg,
    json_out: Annotated[bool, typer.Option("--json", help="Print the analysis as JSON.")] = False,
    ignore: Annotated[Optional[list[str]], typer.Option(help="Node name or pattern whose channels stay.")] = None,
    wide: Annotated[bool, typer.Option("--wide", help="Every group and blocked node in full tables "
                                                      "(default: a summary that fits 80 columns).")] = False,
    show_all: Annotated[bool, typer.Option("--all", help="--wide, also listing groups with no producer.")] = False,
    input_shape: InputShapeOpt = None,
    prune_hidden: PruneHiddenOpt = False,
    allow_interface_change: Annotated[bool, typer.Option(
        help="Let input / output shapes change where they carry channels (a KV cache's heads).")] = False,
    runtime_check: Annotated[bool, typer.Option(
        "--runtime-check/--no-runtime-check",
        help="Refuse a model onnxruntime cannot load, with its reason (default on).")] = True,
    recipe: Annotated[Optional[Path], typer.Option(
        help="Preview what this recipe file would remove (data-free recipes; no file is written).")] = None,
    ratio: Annotated[Optional[float], typer.Option(help="Preview --ratio with the default recipe.")] = None,
    target_flops: Annotated[Optional[float], typer.Option(
        help="Preview a MACs (FLOPs) budget with the default recipe.")] = None,
    target_params: Annotated[Optional[float], typer.Option(
        help="Preview a parameter budget with the default recipe.")] = None,
) -> None:
    """Find the coupled channel groups, what each accounts for, and what blocks the rest.

    By default a summary that fits 80 columns (the largest prunable groups, why the others
    are blocked) and the recipe `prune` would run; every group with --wide; all of it as
    JSON with --json. With --recipe or a budget, also what that recipe would remove. Costs
    in MACs."""
    from onnxprune.analysis import analyze as run_analysis
    from onnxprune.api import load
    from onnxprune.recipe import Recipe
    from onnxprune.report.tables import analysis_summary, analysis_tables

    the_recipe = (Recipe.load(recipe) if recipe is not None else Recipe()).merged(
        ratio=ratio, target_flops=target_flops, target_params=target_params,
        ignore=tuple(ignore) if ignore else None, prune_hidden=prune_hidden or None,
        allow_interface_change=allow_interface_change or None)
    with _steps(False) as progress:
        m = _run_step(progress, "loading and inferring shapes", load, model,
                      input_shapes=_parse_shapes(input_shape), mapped=True, runtime_check=runtime_check)
        analysis = _run_step(progress, "analysing channel groups", run_analysis, m, ignore=ignore or (),
                              prune_hidden=prune_hidden, allow_interface_change=allow_interface_change)
        preview = _run_step(progress, "planning", _recipe_preview, m, analysis, the_recipe)
    if json_out:
        console.print_json(json.dumps({**analysis.to_dict(), **({"preview": preview} if preview else {})}))
        return
    from onnxprune.analysis.blocks import find_blocks

    blocks = find_blocks(m)
    if wide or show_all:
        analysis_tables(analysis, console, show_all=show_all)
    else:
        analysis_summary(analysis, console, name=str(model))
    from rich.markup import escape

    from onnxprune.compress import dynamic_axes_note
    from onnxprune.prepare.normalize import dynamic_axes

    dynamic = dynamic_axes(m, floats_only=True)
    if dynamic:  # prune counts them at the calibration samples' size
        console.print(escape(dynamic_axes_note(dynamic, "--input-shape")), highlight=False)

    if blocks:
        console.print(f"residual blocks removable whole (--depth N): {len(blocks)}, "
                      f"{sum(b.params for b in blocks):,} parameters", highlight=False)
        for b in blocks if wide or show_all else ():
            console.print(f"  {escape(b.add)}: {b.params:,} parameters, {b.macs:,} MACs", highlight=False)
    for line in preview.get("lines", []) if preview else _default_recipe_lines(the_recipe, m):
        console.print(escape(line), highlight=False)


def _default_recipe_lines(recipe, model) -> list[str]:  # noqa: ANN001
    """What `prune` would run on this model, without and with calibration data."""
    from dataclasses import replace

    from onnxprune.compress import resolve_for

    budget = replace(recipe, target_flops=0.5) if not recipe.budgets else recipe
    free = resolve_for(budget, has_calib=False, model=model).describe()
    data = resolve_for(budget, has_calib=True, model=model).describe()
    return [f"prune recipe, without data: {free}", f"prune recipe, with --calib: {data}"]


def _recipe_preview(model, analysis, recipe) -> dict:  # noqa: ANN001
    """What a budget or recipe would remove (data-free scoring only: nothing is rewritten)."""
    if not recipe.budgets:
        return {}
    from onnxprune.analysis.accounting import CostModel
    from onnxprune.compress import plan_for, resolve_for

    if recipe.needs_data:
        resolved = resolve_for(recipe, has_calib=True, model=model)
        return {"recipe": resolved.to_dict(),
                "lines": [f"recipe: {resolved.describe()}", "preview needs --calib data to score: run prune"]}
    resolved = resolve_for(recipe, has_calib=False, model=model)
    plan, note = plan_for(model, resolved, analysis)
    costs = CostModel(model, analysis)
    removed = plan.removed_units(analysis)
    macs = (costs.macs(removed), costs.macs(removed[:0]))
    params = (costs.params(removed), costs.params(removed[:0]))
    lines = [f"recipe: {resolved.describe()}", *([note] if note else []),
             f"would remove {plan.removed_channels(analysis):,} channels in {len(plan.keep)} groups: MACs "
             f"{macs[1]:,} -> {macs[0]:,} ({macs[0] / max(macs[1], 1):.1%}), parameters {params[1]:,} -> "
             f"{params[0]:,}"]
    return {"recipe": resolved.to_dict(), "keep": {gid: len(k) for gid, k in plan.keep.items()},
            "macs": {"before": int(macs[1]), "after": int(macs[0])},
            "params": {"before": int(params[1]), "after": int(params[0])}, "lines": lines}


_BUDGET, _RECIPE, _SCORING, _ALLOCATION = "Budget (give one)", "Recipe", "Scoring", "Allocation"
_RECOVERY, _TRAINING, _RUN = "Recovery", "Pruning while training", "Runtime and outputs"
_DATA = "Calibration data"


def _opt(panel: str, *names: str, **kwargs):  # noqa: ANN003, ANN202
    """A prune option in its help panel."""
    return typer.Option(*names, rich_help_panel=panel, **kwargs)


@app.command()
def prune(
    model: ModelArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the pruned model.")],
    ratio: Annotated[Optional[float], _opt(_BUDGET, help="Fraction of channels to remove, in [0, 1).")] = None,
    target_flops: Annotated[Optional[float], _opt(
        _BUDGET, help="Keep MACs (FLOPs) at most this: a fraction of the original (<= 1) or an absolute "
                      "FLOP count.")] = None,
    target_params: Annotated[Optional[float], _opt(
        _BUDGET, help="Keep parameters at most this: a fraction of the original (<= 1) or a count.")] = None,
    target_latency: Annotated[Optional[str], _opt(
        _BUDGET, help="Keep p50 latency at most this: milliseconds (12.5), or 70% / 0.7x of the "
                      "original's, measured on --provider.")] = None,
    plan: Annotated[Optional[Path], _opt(_BUDGET, help="Replay a saved plan instead of a budget.")] = None,
    recipe: Annotated[Optional[Path], _opt(
        _RECIPE, help="Read the recipe from this TOML (or .json) file; flags given here override it.")] = None,
    save_recipe: Annotated[Optional[Path], _opt(
        _RECIPE, help="Also write the resolved recipe (TOML, or JSON for .json) to replay or edit.")] = None,
    calib: Annotated[Optional[Path], _opt(
        _DATA, help="Calibration data: .npz or folder of .npy named after the inputs, or an image folder. "
                    "Turns on data-driven scoring and recovery.")] = None,
    labels: Annotated[Optional[str], _opt(_DATA, help="Name of the labels array in the data (optional).")] = None,
    calib_samples: Annotated[Optional[int], _opt(_DATA, "--calib-samples", help="Use at most N samples.")] = None,
    batch_size: Annotated[int, _opt(_DATA, help="Calibration batch size.")] = 32,
    device: Annotated[str, _opt(_DATA, help="Torch device for calibration: cpu, cuda, cuda:1, ...")] = "cpu",
    image_size: Annotated[Optional[str], _opt(_DATA, help="Image folder preprocessing: H,W.")] = None,
    mean: Annotated[str, _opt(_DATA, help="Image folder preprocessing: per-channel mean (after /255).")] = "0",
    std: Annotated[str, _opt(_DATA, help="Image folder preprocessing: per-channel std.")] = "1",
    layout: Annotated[str, _opt(_DATA, help="Image folder preprocessing: NCHW or NHWC.")] = "NCHW",
    criterion: Annotated[Optional[str], _opt(
        _SCORING, help=criteria_help("Default auto: taylor-fo with --calib, l2 without."))] = None,
    loss: Annotated[Optional[str], _opt(
        _SCORING, help="auto (labels if given, else the model's own predictions or a Fisher estimate), ce, "
                       "mse, pseudo, fisher or next-token (taylor-fo on a causal LM's windows; its auto).")] = None,
    reduction: Annotated[Optional[str], _opt(
        _SCORING, help="A unit's score over its consumers: sum (default), mean, max.")] = None,
    flops_reg: Annotated[Optional[float], _opt(_SCORING, help="taylor-act: minus this x the FLOPs share.")] = None,
    projections: Annotated[Optional[int], _opt(_SCORING, help="--loss fisher: projections per sample.")] = None,
    mode: Annotated[Optional[str], _opt(
        _ALLOCATION, help="--ratio: per-group or global. Default auto: global with data-driven scores.")] = None,
    ranking: Annotated[Optional[str], _opt(
        _ALLOCATION, help="normalised (score / group mean), per-mac (score per MAC saved) or standardised "
                          "(FLAP: each layer's scores standardised, one global threshold; budgets). Default auto: "
                          "per-mac with data-driven scores.")] = None,
    unit_order: Annotated[Optional[str], _opt(
        _ALLOCATION, help="Which units a group keeps once its kept count is fixed: criterion (default: the "
                          "criterion's best) or fluctuation (FLAP's, inside groups of single channels such as a "
                          "decoder's FFN neurons; needs --calib).")] = None,
    round_to: Annotated[Optional[int], _opt(
        _ALLOCATION, help="Kept counts in multiples of N (8 for TensorRT). Default 1.")] = None,
    align: Annotated[Optional[str], _opt(
        _ALLOCATION, help="Hardware channel block: kept counts rounded down to a multiple where legal. "
                          "Default auto: --provider's block here (onnxruntime CPU: 16 on AVX-512, 8 on AVX2); "
                          "1: off.")] = None,
    min_channels: Annotated[Optional[int], _opt(_ALLOCATION, help="Never keep fewer channels in a group.")] = None,
    max_ratio: Annotated[Optional[float], _opt(
        _ALLOCATION, help="Never remove more than this fraction of a group.")] = None,
    ignore: Annotated[Optional[list[str]], _opt(
        _ALLOCATION, help="Node name or pattern whose channels stay (repeatable).")] = None,
    prune_hidden: Annotated[Optional[bool], _opt(
        _ALLOCATION, "--prune-hidden/--no-prune-hidden",
        help="Also prune a transformer's residual stream (approximate: use recovery).")] = None,
    allow_interface_change: Annotated[Optional[bool], _opt(
        _ALLOCATION, "--allow-interface-change/--no-allow-interface-change",
        help="Let input / output shapes change where they carry channels (a KV cache's past_key_values.* / "
             "present.*: KV heads). Default off: those heads stay.")] = None,
    requantize: Annotated[Optional[bool], _opt(
        _ALLOCATION, "--requantize/--no-requantize",
        help="4-bit MatMulNBits: prune input channels inside quantization blocks (the weight dequantised, "
             "sliced and quantized again: within quantization error). Default off: whole blocks only.")] = None,
    uniform_heads: Annotated[Optional[bool], _opt(
        _ALLOCATION, "--uniform-heads/--no-uniform-heads",
        help="Every attention layer keeps as many KV heads and query heads per KV head (onnxruntime-genai, "
             "KV-cache runtimes).")] = None,
    depth: Annotated[Optional[str], _opt(
        _ALLOCATION, help="Also remove whole residual blocks (decoder layers' attention / MLP, ResNet blocks), "
                          "those that change their input least on --calib: N blocks, or a fraction F of what "
                          "the budget removes (0.25 on SmolLM2); channels take the rest. auto (default: off), "
                          "off, N or F.")] = None,
    recover: Annotated[Optional[str], _opt(
        _RECOVERY, help=f"Comma list of {', '.join(recovery_names(plugins=False))}; all; none. Default auto: "
                        "with --calib, the recipe's methods (printed on its line), each step kept only if it helps on "
                        "held-out samples.")] = None,
    ridge: Annotated[Optional[str], _opt(
        _RECOVERY, help="Ridge strength of the refits. Default auto: chosen on held-out samples.")] = None,
    holdout: Annotated[Optional[float], _opt(
        _RECOVERY, help="Fraction of --calib samples held out to check every refit. Default 0.25.")] = None,
    augment: Annotated[Optional[bool], _opt(
        _RECOVERY, "--augment/--no-augment", help="More rows from flips and crops of image inputs.")] = None,
    refit_target: Annotated[Optional[str], _opt(
        _RECOVERY, help="What a refit of a residual branch's last layer matches: stream (default: the original's "
                        "residual stream, so each block also corrects the drift of the blocks before it) or layer "
                        "(the original layer's output).")] = None,
    recovery_weighting: Annotated[Optional[str], _opt(
        _RECOVERY, help="uniform (default) or fisher (rows weighted by their sensitivity).")] = None,
    recovery_report: Annotated[Optional[Path], _opt(_RECOVERY, help="Write what recovery did as JSON.")] = None,
    schedule: Annotated[Optional[str], _opt(
        _TRAINING, help="oneshot, or iterative (Molchanov 2016: score, remove, fine-tune, repeat).")] = None,
    method: Annotated[Optional[str], _opt(
        _TRAINING, help="criterion (score and cut), spp (Wang 2017) or learned-threshold (Manessi 2017).")] = None,
    train_steps: Annotated[Optional[int], _opt(_TRAINING, help="Fine-tuning steps. Default 200.")] = None,
    lr: Annotated[Optional[float], _opt(_TRAINING, help="Learning rate. Default 1e-3.")] = None,
    provider: Annotated[Optional[str], _opt(
        _RUN, help="Target runtime: auto (CUDA if available), cpu, cuda, tensorrt.")] = None,
    measure: Annotated[Optional[bool], _opt(
        _RUN, "--measure/--no-measure", help="End with the measured speed-up (default on).")] = None,
    latency_table: Annotated[Optional[Path], _opt(
        _RUN, help="--target-latency: JSON cache of per-group latency tables.")] = None,
    save_plan: Annotated[Optional[Path], _opt(_RUN, help="Also write the plan used as JSON.")] = None,
    json_out: Annotated[Optional[Path], _opt(
        _RUN, "--json", help="Also write what was done (recipe, costs, notes, speed) as JSON.")] = None,
    input_shape: Annotated[Optional[list[str]], _opt(
        _RUN, "--input-shape", help="Set an input's shape: NAME=1,3,224,224 (a name for a dynamic axis).")
    ] = None,
    debug: Annotated[bool, _opt(_RUN, help="Check the graph after every pass.")] = False,
    runtime_check: Annotated[bool, _opt(
        _RUN, "--runtime-check/--no-runtime-check",
        help="Refuse a model onnxruntime cannot load, with its reason (default on).")] = True,
) -> None:
    """Prune MODEL to a budget, or replay a saved --plan, and write OUTPUT.

    The default recipe is chosen for the model and the data (give --calib when you have a
    few hundred unlabelled samples) and printed before it runs; every choice can be
    overridden by a flag or a --recipe file."""
    from onnxprune.api import load
    from onnxprune.compress import compress
    from onnxprune.io.modelio import check_output_path
    from onnxprune.plan import Plan as PlanData
    from onnxprune.recipe import Recipe
    from onnxprune.report.tables import cost_table

    base = Recipe.load(recipe) if recipe is not None else Recipe()
    if schedule is not None and schedule not in ("oneshot", "iterative"):
        raise OptionError(f"--schedule must be oneshot or iterative, got {schedule!r}")
    if schedule == "iterative" and method not in (None, "criterion"):
        raise OptionError("give --schedule iterative or --method, not both")
    the_recipe = base.merged(
        ratio=ratio, target_flops=target_flops, target_params=target_params, target_latency=target_latency,
        criterion=criterion, loss=loss, reduction=reduction, projections=projections, flops_reg=flops_reg,
        mode=mode, ranking=ranking, unit_order=unit_order, round_to=round_to, align=align, min_channels=min_channels,
        max_ratio=max_ratio, ignore=tuple(ignore) if ignore else None, prune_hidden=prune_hidden, depth=depth,
        allow_interface_change=allow_interface_change, uniform_heads=uniform_heads, requantize=requantize,
        recover=recover, ridge=_ridge(ridge), holdout=holdout, augment=augment, refit_target=refit_target,
        recovery_weighting=recovery_weighting, method="iterative" if schedule == "iterative" else method,
        train_steps=train_steps, lr=lr, provider=provider, measure=measure)
    if plan is not None and the_recipe.budgets:
        raise SelectionError(f"give one of --plan or a budget ({', '.join(the_recipe.budgets)}), not both")
    if plan is None:
        the_recipe.require_budget()
    if latency_table is not None and the_recipe.target_latency is None:
        raise SelectionError("--latency-table only applies with --target-latency")
    if plan is not None and align not in (None, "1"):
        raise SelectionError("--align applies when allocating (--ratio or a budget), not to a replayed --plan")
    for path in (output, save_plan, save_recipe, json_out, recovery_report):
        if path is not None:
            check_output_path(model, path)
    from rich.markup import escape

    resolved = resolve_for_cli(the_recipe, calib, plan)  # refuses what needs data before any work
    the_plan = PlanData.load(plan) if plan is not None else None
    # the weights stay in the memory-mapped file (read when scored, sliced, run: a session or a
    # torch pass copies them from the file, and their pages leave the process as it goes)
    # unless latency tables time the model or --debug checks it
    mapped = resolved.target_latency is None and not debug
    with _Steps(debug) as steps:
        steps("loading and inferring shapes")
        m = load(model, input_shapes=_parse_shapes(input_shape), mapped=mapped, runtime_check=runtime_check)
        resolved = resolve_for_cli(the_recipe, calib, plan, m)
        console.print(f"recipe: {escape(resolved.describe())}", soft_wrap=True, highlight=False)
        data = None
        if calib is not None:
            _distributed_rank(device)
            steps("loading calibration data")
            from onnxprune.io.calib_data import load_calibration

            data = load_calibration(calib, m, labels=labels, samples=calib_samples,
                                    image_size=[int(v) for v in image_size.split(",")] if image_size else None,
                                    mean=_floats(mean), std=_floats(std), layout=layout)
        result = compress(m, the_recipe, calib=data, plan=the_plan, batch_size=batch_size, device=device,
                          latency_table=latency_table, recovery_report=recovery_report, debug=debug,
                          progress=steps)
        steps(f"writing {output}")
        written = result.save(output)
        from onnxprune.io.hf_config import write_configs

        configs, config_warnings = write_configs(model, written, m, result.analysis, result.plan)
    if save_plan is not None:
        result.plan.save(save_plan)
    if save_recipe is not None:
        result.recipe.save(save_recipe)
    if json_out is not None:
        from onnxprune.io.fileutil import write_text_atomic

        write_text_atomic(json_out, json.dumps({"model": str(model), "output": str(written), **result.to_dict()},
                                               indent=1))
    cost_table(result.before, result.after, console)
    for note in result.notes:
        console.print(escape(note), soft_wrap=True, highlight=False)
    console.print(f"{escape(result.summary())}; wrote [bold]{escape(str(written))}[/]", soft_wrap=True,
                  highlight=False)
    for path in configs:
        console.print(f"wrote {escape(str(path))} (the pruned model's configuration)", soft_wrap=True, highlight=False)
    for warning in (*result.warnings, *config_warnings):
        err.print(f"[yellow]warning:[/] {escape(warning)}", soft_wrap=True, highlight=False)


def resolve_for_cli(recipe, calib: Path | None, plan: Path | None, model=None):  # noqa: ANN001, ANN201
    """The recipe as it will run (for the line printed before the run)."""
    from dataclasses import replace

    from onnxprune.compress import resolve_for

    if plan is not None:  # a replay allocates nothing: the plan's own options stand
        recipe = replace(recipe, align=1 if recipe.align == "auto" else recipe.align)
    return resolve_for(recipe, has_calib=calib is not None, model=model)


def _ridge(text: str | None) -> float | str | None:
    if text is None or text.strip().lower() == "auto":
        return None if text is None else "auto"
    try:
        return float(text)
    except ValueError:
        raise OptionError(f"--ridge expects a number or auto, got {text!r}") from None


PLAIN_STEPS_AFTER_S = 10  # ``_Steps`` without a terminal: steps starting later than this get a line


class _Steps:
    """Progress of a long run on stderr: one line per step with its counts, bar and ETA when
    the step reports them (layers refitted, batches scored, groups measured). Where stderr is
    not a terminal (a log file, CI), each step is one plain line with the elapsed time when it
    started, printed from the first step that starts once the run has taken
    ``PLAIN_STEPS_AFTER_S`` (with the earlier steps' lines), so a long run's log shows where it
    is while a quick run, or a refusal, prints nothing more than its result or one error line."""

    def __init__(self, debug: bool) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, TimeRemainingColumn

        self._progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(bar_width=20),
                                  MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("eta"),
                                  TimeRemainingColumn(), console=err, transient=True,
                                  disable=debug or not err.is_terminal)
        self._lines = not debug and not err.is_terminal  # --debug logs each step instead
        self._start = time.monotonic()
        self._held: list[str] = []  # step lines not printed yet (the run is still short)
        self._label: str | None = None
        self._task = None

    def __enter__(self) -> _Steps:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:  # noqa: ANN002
        self._progress.__exit__(*exc)

    def __call__(self, label: str, done: int | None = None, total: int | None = None) -> None:
        from rich.markup import escape

        if label != self._label:
            if self._task is not None:
                self._progress.remove_task(self._task)
            self._label = label
            self._task = self._progress.add_task(escape(label), total=None)
            logging.getLogger(__name__).debug("%s", label)
            if self._lines:
                seconds = int(time.monotonic() - self._start)
                self._held.append(f"[{seconds // 60}:{seconds % 60:02d}] {escape(label)}")
                if seconds >= PLAIN_STEPS_AFTER_S:
                    for line in self._held:
                        err.print(line, soft_wrap=True, highlight=False)
                    self._held = []
        if done is not None:
            self._progress.update(self._task, completed=done, total=total)


@app.command()
def score(
    model: ModelArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the scores (JSON).")],
    criterion: Annotated[str, typer.Option(help=criteria_help())] = "l2",
    input_shape: InputShapeOpt = None,
    calib: CalibOpt = None,
    labels: LabelsOpt = None,
    calib_samples: SamplesOpt = None,
    batch_size: BatchOpt = 32,
    loss: LossOpt = "auto",
    reduction: ReductionOpt = "sum",
    device: DeviceOpt = "cpu",
    image_size: ImageSizeOpt = None,
    mean: MeanOpt = "0",
    std: StdOpt = "1",
    layout: LayoutOpt = "NCHW",
    flops_reg: FlopsRegOpt = 0.0,
    projections: ProjectionsOpt = 1,
) -> None:
    """Score every prunable channel (per group) and write the scores as JSON, to inspect them.

    Data-parallel: ``torchrun --nproc_per_node=N -m onnxprune.cli score ...`` shards every
    global batch (N x --batch-size samples) across processes and all-reduces the scores."""
    from onnxprune.analysis import analyze as run_analysis
    from onnxprune.api import load
    from onnxprune.io.fileutil import write_text_atomic
    from onnxprune.io.modelio import check_output_path

    check_output_path(model, output)
    with _steps(False) as progress:
        m = _run_step(progress, "loading and inferring shapes", load, model, input_shapes=_parse_shapes(input_shape))
        analysis = run_analysis(m)
        scores = _scores(progress, m, analysis, criterion, calib, labels, calib_samples, batch_size, loss,
                         reduction, device, image_size, mean, std, layout, flops_reg, projections)
    payload = {"criterion": criterion, "fingerprint": analysis.fingerprint,
               "groups": {gid: [float(v) for v in vals] for gid, vals in scores.items()}}
    rank = _distributed_rank(device)
    if rank == 0:  # under torchrun every process holds the same all-reduced scores; rank 0 writes them
        write_text_atomic(output, json.dumps(payload, indent=1))
    _distributed_done()
    if rank != 0:
        return
    from rich.markup import escape

    console.print(f"scored {sum(len(v) for v in scores.values())} units in {len(scores)} groups; "
                  f"wrote {escape(str(output))}")


VERIFY_LINES_AFTER_S = 2.0  # verify without a terminal: a progress line per step once it has run this long


@app.command()
def verify(
    original: Annotated[Path, typer.Argument(help="The original model.")],
    pruned: Annotated[Path, typer.Argument(help="The pruned model.")],
    inputs: Annotated[Optional[Path], typer.Option(help=".npz with one array per model input.")] = None,
    calib: Annotated[Optional[Path], typer.Option(
        help="Evaluation data in any calibration format (.npz, .npy folder, image folder) instead of --inputs.")
    ] = None,
    labels: Annotated[Optional[str], typer.Option(
        help="Array name in --inputs / --calib holding class labels (reports accuracy).")] = None,
    samples: Annotated[Optional[int], typer.Option(help="Compare on at most N samples.")] = None,
    runs: Annotated[int, typer.Option(help="Timed runs per model, provider and batch size.")] = 30,
    warmup: Annotated[int, typer.Option(help="Untimed warm-up runs before timing.")] = 5,
    threads: Annotated[int, typer.Option(help="onnxruntime intra-op threads for timing (0: its default).")] = 0,
    providers: Annotated[str, typer.Option(
        "--providers", "--provider",
        help="Latency on these, comma-separated: auto (CUDA if available), cpu, cuda, tensorrt.")] = "auto",
    batch_sizes: Annotated[Optional[str], typer.Option(
        help="Time these batch sizes, comma-separated (default: the batch of the inputs).")] = None,
    input_shape: InputShapeOpt = None,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Also write the report as JSON.")] = None,
    report_path: Annotated[Optional[Path], typer.Option(
        "--report", help="Also write a report: OUT.md (plots in OUT.png beside it) or OUT.html (embedded).")] = None,
    plot: Annotated[Optional[Path], typer.Option(
        help="Also write the plots (latency per batch size, output differences) as PNG.")] = None,
    atol: Annotated[Optional[float], typer.Option(
        help="Fail (exit 1) when an output's max |pruned - original| exceeds ATOL + RTOL x its largest "
             "|original|.")] = None,
    rtol: Annotated[Optional[float], typer.Option(help="Relative tolerance (see --atol).")] = None,
    min_cosine: Annotated[Optional[float], typer.Option(
        help="Fail (exit 1) when an output's mean cosine similarity to the original is below this.")] = None,
    min_top1: Annotated[Optional[float], typer.Option(
        help="Fail (exit 1) when a classifier output's top-1 agreement with the original is below this "
             "(0 to 1).")] = None,
) -> None:
    """Run ORIGINAL and PRUNED in onnxruntime and compare outputs, accuracy, cost, size and latency.

    Without --inputs or --calib, 8 random samples are compared (agreement only). Costs are in
    MACs. With --atol, --rtol, --min-cosine or --min-top1 it gates a pipeline: exit 1 and one
    line saying what failed when a tolerance is not met."""
    from rich.markup import escape

    from onnxprune.io.fileutil import write_text_atomic
    from onnxprune.io.modelio import check_output_path, load_model
    from onnxprune.report.tables import tolerance_line, verify_table, write_verify_report
    from onnxprune.runtime.session import resolve_provider
    from onnxprune.verify.compare import check_tolerances, load_inputs
    from onnxprune.verify.compare import verify as run_verify

    if inputs is not None and calib is not None:
        raise OptionError("give at most one of --inputs and --calib")
    if report_path is not None and report_path.suffix.lower() not in (".md", ".markdown", ".html", ".htm"):
        raise OptionError(f"{report_path}: --report must end in .md or .html")
    for path in (json_path, report_path, plot):  # refused now, not after the whole run
        if path is not None:
            check_output_path(original, path)
            check_output_path(pruned, path)
    tolerances = {"atol": atol, "rtol": rtol, "min_cosine": min_cosine, "min_top1": min_top1}
    for name, value in tolerances.items():
        low, high = (-1.0, 1.0) if name == "min_cosine" else (0.0, 1.0) if name == "min_top1" else (0.0, float("inf"))
        if value is not None and not low <= value <= high:
            flag = "--" + name.replace("_", "-")
            raise OptionError(f"{flag} must be in [{low:g}, {high:g}], got {value:g}"
                              if high != float("inf") else f"{flag} must be >= 0, got {value:g}")
    if plot is not None:
        from onnxprune.report.plots import have_matplotlib

        if not have_matplotlib():
            raise RuntimeUnavailableError("--plot needs matplotlib: pip install 'onnxprune[report]'")
    try:
        sizes = [int(b) for b in batch_sizes.split(",") if b.strip()] if batch_sizes else None
    except ValueError as exc:
        raise OptionError(f"--batch-sizes expects integers like 1,8; got {batch_sizes!r}") from exc
    if sizes is not None and (not sizes or min(sizes) < 1):
        raise OptionError(f"--batch-sizes expects positive integers, got {batch_sizes!r}")
    provider_list = list(dict.fromkeys(resolve_provider(p.strip()) for p in providers.split(",") if p.strip()))
    mo, mp = load_model(original, lazy=False), load_model(pruned, lazy=False)
    shapes = _parse_shapes(input_shape)
    named = [f"{k}={','.join(map(str, v))}" for k, v in shapes.items() if any(isinstance(d, str) for d in v)]
    if named:
        raise OptionError(f"verify runs the models: --input-shape needs whole sizes, got {', '.join(named)}")
    if shapes:  # both models at the same input shapes: the random inputs, and their costs compared
        from onnxprune.prepare.normalize import set_input_shapes

        set_input_shapes(mo, shapes, str(original))
        set_input_shapes(mp, shapes, str(pruned))
    label_arr = None
    if calib is not None:
        from onnxprune.io.calib_data import load_calibration

        data = load_calibration(calib, mo, labels=labels, samples=samples)
        feeds, label_arr = dict(data.inputs), data.labels
    elif inputs is not None:
        feeds = load_inputs(inputs, mo)
        if labels:
            from onnxprune.io.fileutil import read_arrays

            arrays = read_arrays(inputs)
            if labels not in arrays:
                raise DataError(f"{inputs}: no labels array '{labels}' (has: {', '.join(arrays)})")
            label_arr = arrays[labels]
            n = len(next(iter(feeds.values())))
            if label_arr.ndim == 0 or len(label_arr) != n:
                count = 1 if label_arr.ndim == 0 else len(label_arr)
                raise DataError(f"{inputs}: labels array '{labels}' has {count} entries for {n} samples")
        if samples is not None:
            feeds = {k: v[:samples] for k, v in feeds.items()}
            label_arr = None if label_arr is None else label_arr[:samples]
    else:
        feeds = None  # verify draws random samples (at the --input-shape set above)
    with _steps(False) as progress:
        task = progress.add_task("running both models", total=None)
        started = time.perf_counter()

        def advance(what: str, done: int, total: int) -> None:  # without a live display: a line per step of
            progress.update(task, description=escape(what), completed=done, total=total)  # a long run
            if progress.disable and time.perf_counter() - started >= VERIFY_LINES_AFTER_S:
                err.print(escape(f"verify: {what}: {done}/{total}"), highlight=False, soft_wrap=True)

        try:
            report = run_verify(mo, mp, feeds, labels=label_arr, runs=runs, providers=provider_list,
                                batch_sizes=sizes, warmup=warmup, threads=threads, original_path=original,
                                pruned_path=pruned, progress=advance)
        finally:
            progress.remove_task(task)
    if report.get("inputs") == "random":
        console.print(f"note: compared on {report['samples']} random samples (no --inputs or --calib): "
                      "agreement only", highlight=False)
    verify_table(report, console)
    failures: list[str] = []
    if any(v is not None for v in tolerances.values()):
        failures = check_tolerances(report, **tolerances)
        report["checks"] = {**tolerances, "failures": failures, "passed": not failures}
    if json_path is not None:
        write_text_atomic(json_path, json.dumps(report, indent=1))
    if report_path is not None:
        written, png = write_verify_report(report, report_path, names=(str(original), str(pruned)))
        plots = f" (plots {escape(str(png))})" if png else ""
        console.print(f"wrote report [bold]{escape(str(written))}[/]{plots}")
    if plot is not None:
        from onnxprune.report.plots import write_verify_plot

        write_verify_plot(report, plot)
        console.print(f"wrote plot [bold]{escape(str(plot))}[/]")
    if "checks" in report:
        line = escape(tolerance_line(report["checks"]))
        if failures:
            err.print(f"[red]{line}[/]", highlight=False, soft_wrap=True)
            raise typer.Exit(1)
        console.print(f"[green]{line}[/]", highlight=False, soft_wrap=True)


@app.command()
def sweep(
    model: ModelArg,
    output_dir: Annotated[Path, typer.Option("--output", "-o", help="Directory for sweep.json, .md and .png.")],
    targets: Annotated[str, typer.Option(
        help="Budgets, comma-separated: fractions of the original (<= 1) or absolute counts.")] = "0.9,0.8,0.6,0.4",
    metric: Annotated[str, typer.Option(help="Budget metric: flops or params.")] = "flops",
    criterion: Annotated[str, typer.Option(help=criteria_help())] = "l2",
    round_to: Annotated[int, typer.Option(help="Keep channel counts in multiples of N (8 for GPUs).")] = 1,
    align: Annotated[str, typer.Option(
        help="Hardware channel block, as prune's: kept counts rounded down to a multiple where legal. "
             "auto: --provider's block (onnxruntime CPU: 16 on AVX-512, 8 on AVX2); 1: off.")] = "auto",
    min_channels: Annotated[int, typer.Option(help="Never keep fewer channels in a group.")] = 1,
    max_ratio: Annotated[float, typer.Option(help="Never remove more than this fraction of a group.")] = 1.0,
    ignore: Annotated[Optional[list[str]], typer.Option(help="Node name or pattern whose channels stay.")] = None,
    eval_data: Annotated[Optional[Path], typer.Option(
        "--eval", help="Evaluation data (default: --calib; without either, random inputs and agreement only).")
    ] = None,
    provider: Annotated[str, typer.Option(help="Latency on: auto (CUDA if available), cpu, cuda, tensorrt.")] = "auto",
    runs: Annotated[int, typer.Option(help="Timed runs per model.")] = 20,
    threads: Annotated[int, typer.Option(help="onnxruntime intra-op threads for timing (0: its default).")] = 0,
    latency_batch: Annotated[int, typer.Option(help="Batch size for latency (a fixed-batch model uses its own).")
                             ] = 1,
    save_models: Annotated[bool, typer.Option(help="Also write each pruned model and its plan to OUTDIR.")] = False,
    input_shape: InputShapeOpt = None,
    prune_hidden: PruneHiddenOpt = False,
    calib: CalibOpt = None,
    labels: LabelsOpt = None,
    calib_samples: SamplesOpt = None,
    batch_size: BatchOpt = 32,
    loss: LossOpt = "auto",
    reduction: ReductionOpt = "sum",
    device: DeviceOpt = "cpu",
    image_size: ImageSizeOpt = None,
    mean: MeanOpt = "0",
    std: StdOpt = "1",
    layout: LayoutOpt = "NCHW",
    flops_reg: FlopsRegOpt = 0.0,
    projections: ProjectionsOpt = 1,
) -> None:
    """Prune MODEL at several budgets; measure accuracy or agreement, and latency, of each.

    Scores are computed once; for every --targets budget the pruned model is evaluated (accuracy
    with --labels, else agreement with the original) and timed. Writes OUTDIR/sweep.json,
    sweep.md (table, costs in MACs) and sweep.png (quality and latency against the cost kept)."""
    from onnxprune.analysis import analyze as run_analysis
    from onnxprune.api import load
    from onnxprune.selection.budget import Budget
    from onnxprune.io.calib_data import load_calibration
    from onnxprune.graph import static_batch
    from onnxprune.selection.latency import feeds_for_batch
    from onnxprune.report.tables import sweep_table
    from onnxprune.runtime.session import random_inputs, resolve_provider
    from onnxprune.selection.sweep import sweep as run_sweep
    from onnxprune.selection.sweep import write_sweep
    from onnxprune.compress import counting_shapes
    from onnxprune.prepare.normalize import shaped_copy

    try:
        target_list = _floats(targets)
    except ValueError as exc:
        raise SelectionError(f"--targets expects numbers like 0.9,0.8,0.6; got {targets!r}") from exc
    if not target_list:
        raise SelectionError("--targets is empty")
    for t in target_list:
        Budget(metric, t)  # validates the metric and every target before any work
    if latency_batch < 1:
        raise OptionError(f"--latency-batch must be >= 1, got {latency_batch}")
    if output_dir.exists() and not output_dir.is_dir():
        raise OutputPathError(f"{output_dir}: --output must be a directory")
    import os

    existing = next(d for d in (output_dir.absolute(), *output_dir.absolute().parents) if d.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise OutputPathError(f"{output_dir}: --output cannot be created or written ({existing} is "
                              f"{'not a directory' if not existing.is_dir() else 'not writable'})")
    provider_name = resolve_provider(provider)
    from onnxprune.selection.latency import resolve_align

    block = resolve_align(align, provider_name)
    with _steps(False) as progress:
        m = _run_step(progress, "loading and inferring shapes", load, model, input_shapes=_parse_shapes(input_shape))
        source = eval_data or calib
        data = None
        if source is not None:
            data = _run_step(progress, "loading evaluation data", load_calibration, source, m, labels=labels,
                             samples=calib_samples,
                             image_size=[int(v) for v in image_size.split(",")] if image_size else None,
                             mean=_floats(mean), std=_floats(std), layout=layout)
        counted_at, counting_note = counting_shapes(m, data)  # dynamic height/width: at the data's size
        analysis = _run_step(progress, "analysing channel groups", run_analysis, m, ignore=ignore or (),
                              prune_hidden=prune_hidden,
                              mac_shapes=shaped_copy(m, counted_at, str(source)) if counted_at else None)
        scores = _scores(progress, m, analysis, criterion, calib, labels, calib_samples, batch_size, loss,
                         reduction, device, image_size, mean, std, layout, flops_reg, projections)
        eval_feeds, eval_labels = (dict(data.inputs), data.labels) if data is not None else (None, None)
        lat_feeds = feeds_for_batch(m, eval_feeds if eval_feeds is not None else random_inputs(m),
                                    static_batch(m) or latency_batch)
        task = progress.add_task(f"pruning at {len(target_list)} budgets", total=len(target_list))
        result = run_sweep(m, analysis, target_list, metric=metric, criterion=criterion, scores=scores,
                           eval_feeds=eval_feeds, labels=eval_labels, latency_feeds=lat_feeds, round_to=round_to,
                           min_channels=min_channels, max_ratio=max_ratio, align=block, provider=provider_name, threads=threads,
                           runs=runs, save_dir=output_dir if save_models else None, counted_at=counted_at,
                           progress=lambda done, total: progress.update(task, completed=done))
        progress.remove_task(task)
    result["model"] = str(model)
    result["eval"] = str(source) if source is not None else "random inputs"
    paths = write_sweep(result, output_dir)
    sweep_table(result, console)
    from rich.markup import escape

    if counting_note:
        console.print(escape(counting_note), highlight=False)

    console.print("wrote " + ", ".join(f"[bold]{escape(str(p))}[/]" for p in paths.values()))


@app.command()
def demo(
    ratio: Annotated[float, typer.Option(help="Fraction of channels to remove.")] = 0.2,
    output_dir: Annotated[Optional[Path], typer.Option(help="Keep the pruned model here.")] = None,
) -> None:
    """Prune the small digits classifier shipped with onnxprune and report what changed."""
    import tempfile

    import numpy as np
    from rich.markup import escape

    from onnxprune.analysis import analyze as run_analysis
    from onnxprune.api import load
    from onnxprune.compress import compress, resolve_for
    from onnxprune.io.modelio import load_model
    from onnxprune.recipe import Recipe
    from onnxprune.report.tables import analysis_summary, cost_table, verify_table
    from onnxprune.verify.compare import verify as run_verify

    data = Path(__file__).parent / "data"
    model_path, test_path = data / "digits_cnn.onnx", data / "digits_test.npz"
    test = np.load(test_path)
    m = load(model_path)
    analysis = run_analysis(m)
    analysis_summary(analysis, console, name=model_path.name)
    recipe = Recipe(ratio=ratio, measure=False)  # verify below times both models
    console.print(f"recipe: {escape(resolve_for(recipe, has_calib=False).describe())}", soft_wrap=True,
                  highlight=False)
    result = compress(m, recipe, analysis=analysis)
    out_dir = output_dir or Path(tempfile.mkdtemp(prefix="onnxprune-demo-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    out = result.save(out_dir / "digits_cnn_pruned.onnx")
    pct = result.removed_channels / result.total_channels
    cost_table(result.before, result.after, console, title="Digits CNN")
    console.print(f"{pct:.0%} of prunable channels removed (asked {ratio:.0%}; kept counts aligned to "
                  f"{result.recipe.align}): {escape(result.summary())}", soft_wrap=True, highlight=False)
    report = run_verify(load_model(model_path), load_model(out), {"input": test["input"]}, labels=test["labels"])
    verify_table(report, console)
    console.print(f"pruned model written to [bold]{escape(str(out))}[/]", soft_wrap=True)


@app.command()
def finetune(
    model: Annotated[Path, typer.Argument(help="The (pruned) .onnx model to train (never modified).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the fine-tuned model.")],
    calib: Annotated[Path, typer.Option(help="Training data: .npz or folder of .npy named after the inputs, "
                                              "or an image folder.")],
    teacher: Annotated[Optional[Path], typer.Option(
        help="Distil from this model (the original): same inputs and outputs. No labels needed.")] = None,
    labels: Annotated[Optional[str], typer.Option(
        help="Name of the labels array in the data: adds cross-entropy (MSE for float labels).")] = None,
    epochs: Annotated[Optional[float], typer.Option(help="Epochs over the data (default 5).")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Training steps (instead of --epochs).")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Learning rate (default 1e-2 for convolutional networks, "
                                                     "1e-3 for others).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Training batch size (default 64).")] = None,
    optimizer: Annotated[Optional[str], typer.Option(help="sgd, adam (default) or adamw.")] = None,
    weight_decay: Annotated[Optional[float], typer.Option(help="Weight decay (default 0).")] = None,
    schedule: Annotated[Optional[str], typer.Option(help="Learning rate: cosine (default) or constant.")] = None,
    temperature: Annotated[Optional[float], typer.Option(help="Distillation temperature (default 1).")] = None,
    grad_clip: Annotated[Optional[float], typer.Option(help="Clip the gradient norm to this (default 1; 0: off).")
                         ] = None,
    bn_mode: Annotated[Optional[str], typer.Option(
        help="BatchNorm while training: batch (default: batch statistics, stored ones re-estimated at the end) "
             "or running (the stored statistics, inference mode).")] = None,
    distill_weight: Annotated[Optional[float], typer.Option(help="Weight of distillation (default 1 with "
                                                                 "--teacher).")] = None,
    ce_weight: Annotated[Optional[float], typer.Option(help="Weight of the label loss (default 1 with "
                                                            "--labels).")] = None,
    recalibrate_bn: Annotated[Optional[bool], typer.Option(
        help="Re-estimate BatchNorm statistics on the data first (with --bn-mode running).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the data order.")] = 0,
    checkpoint: Annotated[Optional[Path], typer.Option(help="Write a checkpoint here (at the end, and every "
                                                             "--checkpoint-every steps).")] = None,
    checkpoint_every: Annotated[int, typer.Option(help="Checkpoint every N steps (0: only at the end).")] = 0,
    resume: Annotated[Optional[Path], typer.Option(help="Continue from this checkpoint.")] = None,
    calib_samples: Annotated[Optional[int], typer.Option("--calib-samples", help="Use at most N samples.")
                             ] = None,
    device: Annotated[str, typer.Option(help="Torch device: cpu, cuda, cuda:1, ...")] = "cpu",
) -> None:
    """Fine-tune MODEL's weights in torch (distillation from --teacher and/or --labels) and write
    OUTPUT: the same graph with the new weights. Unset options take onnxprune.train.finetune's
    defaults (5 epochs, Adam, cosine schedule, gradient norm clipped to 1, T = 1, BatchNorm on
    batch statistics)."""
    from rich.markup import escape

    from onnxprune.io.calib_data import load_calibration
    from onnxprune.io.modelio import check_output_path, load_model, save_model
    from onnxprune.train import finetune as run_finetune

    check_output_path(model, output)
    if teacher is not None:
        check_output_path(teacher, output)
    m = load_model(model, lazy=False)
    t = load_model(teacher, lazy=False) if teacher is not None else None
    data = load_calibration(calib, m, labels=labels, samples=calib_samples)
    given = dict(optimizer=optimizer, lr=lr, weight_decay=weight_decay, schedule=schedule, epochs=epochs,
                 steps=steps, batch_size=batch_size, temperature=temperature, grad_clip=grad_clip, bn_mode=bn_mode,
                 recalibrate_bn=recalibrate_bn)
    result = run_finetune(m, data, teacher=t, seed=seed, device=device, distill_weight=distill_weight,
                          ce_weight=ce_weight, checkpoint=checkpoint, checkpoint_every=checkpoint_every,
                          resume=resume, progress=err.is_terminal,
                          **{k: v for k, v in given.items() if v is not None})
    save_model(result.model, output)
    losses = result.losses
    summary = f"loss {losses[0]:.4f} -> {losses[-1]:.4f}; " if losses else ""
    console.print(f"fine-tuned {result.steps} steps ({summary}{len(data)} samples); "
                  f"wrote [bold]{escape(str(output))}[/]", soft_wrap=True)


def _print_error(message: object) -> None:
    """``error: MESSAGE`` on exactly one line, whatever the terminal's width: the message's own
    line breaks become spaces, rich never wraps it, and its text is printed as it is (brackets
    in paths are not taken for markup)."""
    from rich.markup import escape

    text = " ".join(line.strip() for line in str(message).splitlines() if line.strip())
    err.print(f"[red]error:[/] {escape(text)}", highlight=False, soft_wrap=True)


_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}


def _disk_full(exc: OSError) -> str:
    """A full disk (the output, or the temporary files large models reach onnxruntime through,
    ``runtime.session``) on one line: where, and where temporary files go."""
    import tempfile

    where = f": {exc.filename}" if exc.filename else ""
    return (f"{exc.strerror or 'no space left on device'}{where} (temporary files go to "
            f"{tempfile.gettempdir()}: set TMPDIR to a folder with room for the model's weights)")


def main() -> None:
    """Console entry point: one-line errors and a non-zero exit on failure (``onnxprune.errors``):
    1 for the caller's errors (usage, model, data, a full disk), 2 for command-line syntax, 70 for internal
    failures (an ``InternalError`` or any exception that is not an ``OnnxPruneError``)."""
    try:
        code = app(standalone_mode=False)  # a command's typer.Exit(n) comes back as n here
    except OnnxPruneError as exc:
        _print_error(exc if exit_code(exc) == EXIT_USER_ERROR else f"internal error: {exc}")
        sys.exit(exit_code(exc))
    except (typer.Exit, typer.Abort) as exc:
        sys.exit(getattr(exc, "exit_code", 1))
    except Exception as exc:  # click usage errors and the unexpected
        # click's ClickException (typer >= 0.20 raises those of its own vendored copy of click)
        names = {c.__name__ for c in type(exc).__mro__}
        if "NoArgsIsHelpError" in names:  # no arguments: the help, not an error
            exc.show()  # type: ignore[attr-defined]
            sys.exit(exc.exit_code)  # type: ignore[attr-defined]
        if "ClickException" in names:
            ctx = getattr(exc, "ctx", None)
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            _print_error(exc.format_message() + hint)  # type: ignore[attr-defined]
            sys.exit(exc.exit_code)  # type: ignore[attr-defined]
        if isinstance(exc, OSError) and exc.errno in _DISK_FULL:  # the machine's limit, not a bug
            _print_error(_disk_full(exc))
            sys.exit(EXIT_USER_ERROR)
        _print_error(f"unexpected {type(exc).__name__}: {exc}")
        sys.exit(EXIT_INTERNAL)
    if isinstance(code, int) and code:
        sys.exit(code)


if __name__ == "__main__":
    main()
