"""The ``onnxprune`` command line: analyze, prune, verify, demo."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from onnxprune.errors import OnnxPruneError, SelectionError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="A structured-pruning compiler for ONNX models.")
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
    from onnxprune.calib import load_calibration

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


def _parse_shapes(specs: list[str] | None) -> dict[str, list[str]]:
    shapes: dict[str, list[str]] = {}
    for spec in specs or ():
        name, sep, dims = spec.partition("=")
        if not sep or not dims:
            raise SelectionError(f"--input-shape expects NAME=d1,d2,...; got {spec!r}")
        shapes[name] = [d.strip() for d in dims.split(",")]
    return shapes


def _steps(debug: bool) -> Progress:
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                    console=err, transient=True, disable=debug or not err.is_terminal)


def _run_step(progress: Progress, label: str, fn: Callable, *args, **kwargs):  # noqa: ANN002, ANN003, ANN202
    task = progress.add_task(label, total=None)
    try:
        return fn(*args, **kwargs)
    finally:
        progress.remove_task(task)


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log details.")] = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(message)s",
                        handlers=[RichHandler(console=err, show_time=False, show_path=False)])


@app.command()
def analyze(
    model: ModelArg,
    json_out: Annotated[bool, typer.Option("--json", help="Print the analysis as JSON.")] = False,
    ignore: Annotated[Optional[list[str]], typer.Option(help="Node name or pattern whose channels stay.")] = None,
    show_all: Annotated[bool, typer.Option("--all", help="Also list groups with no producer.")] = False,
    input_shape: InputShapeOpt = None,
    prune_hidden: PruneHiddenOpt = False,
) -> None:
    """Find the coupled channel groups, what each accounts for, and what blocks the rest."""
    from onnxprune.analysis import analyze as run_analysis
    from onnxprune.api import load
    from onnxprune.report import analysis_tables

    with _steps(False) as progress:
        m = _run_step(progress, "loading and inferring shapes", load, model,
                      input_shapes=_parse_shapes(input_shape))
        analysis = _run_step(progress, "analysing channel groups", run_analysis, m, ignore=ignore or (),
                              prune_hidden=prune_hidden)
    if json_out:
        console.print_json(json.dumps(analysis.to_dict()))
    else:
        analysis_tables(analysis, console, show_all=show_all)


@app.command()
def prune(
    model: ModelArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the pruned model.")],
    ratio: Annotated[Optional[float], typer.Option(help="Fraction of channels to remove, in [0, 1).")] = None,
    target_flops: Annotated[Optional[float], typer.Option(
        help="Keep FLOPs at most this: a fraction of the original (<= 1) or an absolute count.")] = None,
    target_params: Annotated[Optional[float], typer.Option(
        help="Keep parameters at most this: a fraction of the original (<= 1) or an absolute count.")] = None,
    target_latency: Annotated[Optional[str], typer.Option(
        help="Keep p50 latency at most this: milliseconds (12.5), or 70% / 0.7x of the original's, "
             "measured on --provider.")] = None,
    latency_table: Annotated[Optional[Path], typer.Option(
        help="--target-latency: JSON cache of per-group latency tables (read, completed, written).")] = None,
    provider: Annotated[str, typer.Option(
        help="--target-latency: measure on auto (CUDA if available), cpu, cuda, tensorrt.")] = "auto",
    plan: Annotated[Optional[Path], typer.Option(help="Replay a saved plan instead of --ratio.")] = None,
    criterion: Annotated[str, typer.Option(help="Channel criterion: l1, l2, random.")] = "l2",
    mode: Annotated[str, typer.Option(help="per-group (same ratio everywhere) or global ranking.")] = "per-group",
    round_to: Annotated[int, typer.Option(help="Keep channel counts in multiples of N (8 for GPUs).")] = 1,
    align: Annotated[str, typer.Option(
        help="Hardware channel block: kept counts not a multiple of it are rounded down to one where legal "
             "(padded channels cost latency anyway); 'auto' = the block of --provider on this machine "
             "(CPU: 16 on AVX-512, 8 on AVX2). 1: off.")] = "1",
    ranking: Annotated[str, typer.Option(
        help="Global order (--mode global, --target-flops/--target-params): normalised (scores / group mean) "
             "or per-mac (raw score per MAC: for loss estimates such as taylor-so, Kwon et al. 2022).")
    ] = "normalised",
    min_channels: Annotated[int, typer.Option(help="Never keep fewer channels in a group.")] = 1,
    max_ratio: Annotated[float, typer.Option(help="Never remove more than this fraction of a group.")] = 1.0,
    ignore: Annotated[Optional[list[str]], typer.Option(help="Node name or pattern whose channels stay.")] = None,
    save_plan: Annotated[Optional[Path], typer.Option(help="Also write the plan used as JSON.")] = None,
    debug: Annotated[bool, typer.Option(help="Check the graph after every pass.")] = False,
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
    recover: Annotated[str, typer.Option(
        help="Post-training recovery on --calib data: comma list of bn, bias, lstsq, scale; 'all' or 'none'.")] = "none",
    ridge: Annotated[float, typer.Option(help="Ridge strength of the least-squares refit.")] = 1e-3,
    recovery_weighting: Annotated[str, typer.Option(
        help="Recovery fits: uniform rows, or fisher (rows and outputs weighted by their Fisher sensitivity; "
             "padded tokens count for nothing).")] = "uniform",
    recovery_report: Annotated[Optional[Path], typer.Option(help="Write what recovery did as JSON.")] = None,
    schedule: Annotated[str, typer.Option(
        help="oneshot, or iterative (Molchanov 2016: score, remove, fine-tune, repeat; needs --calib "
             "and --target-flops).")] = "oneshot",
    method: Annotated[str, typer.Option(
        help="criterion (score with --criterion), spp (Wang 2017) or learned-threshold (Manessi 2017): "
             "pruning during distillation fine-tuning; needs --calib and --target-flops.")] = "criterion",
    train_steps: Annotated[int, typer.Option(help="Fine-tuning steps of the training methods.")] = 200,
    lr: Annotated[float, typer.Option(help="Learning rate of the training methods.")] = 1e-3,
) -> None:
    """Prune MODEL by --ratio or a FLOPs/params budget (scored with --criterion, data-free or
    on --calib data), or replay a saved --plan; optionally recover without training; write OUTPUT."""
    from onnxprune.analysis import analyze as run_analysis
    from onnxprune.api import apply_plan, load, plan_by_ratio, plan_to_budget
    from onnxprune.budget import Budget
    from onnxprune.modelio import check_output_path, save_model
    from onnxprune.plan import Plan
    from onnxprune.report import cost_table

    chosen = [name for name, v in (("--ratio", ratio), ("--plan", plan), ("--target-flops", target_flops),
                                   ("--target-params", target_params), ("--target-latency", target_latency))
              if v is not None]
    if len(chosen) != 1:
        raise SelectionError("give exactly one of --ratio, --plan, --target-flops, --target-params or "
                             "--target-latency"
                             + (f" (got {', '.join(chosen)})" if chosen else ""))
    if ratio is not None and not 0.0 <= ratio < 1.0:
        raise SelectionError(f"--ratio must be in [0, 1), got {ratio}")
    methods = _recovery_methods(recover)
    if recovery_weighting not in ("uniform", "fisher"):
        raise SelectionError(f"--recovery-weighting: '{recovery_weighting}' is not uniform or fisher")
    if methods and calib is None:
        raise SelectionError("--recover needs calibration data (--calib)")
    training = {"iterative": "iterative"}.get(schedule) or {"spp": "spp", "learned-threshold": "learned-threshold"}.get(method)
    if schedule not in ("oneshot", "iterative") or method not in ("criterion", "spp", "learned-threshold"):
        raise SelectionError(f"unknown --schedule {schedule!r} or --method {method!r}")
    if training and (calib is None or target_flops is None):
        raise SelectionError(f"{training} pruning trains the model: it needs --calib data and --target-flops")
    if training:
        _train_prune(training, model, output, input_shape, target_flops, round_to, min_channels, max_ratio, calib,
                     labels, calib_samples, batch_size, train_steps, lr, device, save_plan)
        return
    if latency_table is not None and target_latency is None:
        raise SelectionError("--latency-table only applies with --target-latency")
    from onnxprune.latency import resolve_align
    from onnxprune.runtime import resolve_provider

    align_n = resolve_align(align, resolve_provider(provider) if align.strip().lower() == "auto" else "cpu")
    if align_n > 1 and plan is not None:
        raise SelectionError("--align applies when allocating (--ratio or a budget), not to a replayed --plan")
    check_output_path(model, output)
    if save_plan is not None:
        check_output_path(model, save_plan)
    # the weights stay in the memory-mapped file (read once to score, once to slice) unless
    # something runs the model (calibration, latency tables, recovery) or --debug checks it
    mapped = calib is None and target_latency is None and not methods and not debug
    with _steps(debug) as progress:
        m = _run_step(progress, "loading and inferring shapes", load, model,
                      input_shapes=_parse_shapes(input_shape), mapped=mapped)
        analysis = _run_step(progress, "analysing channel groups", run_analysis, m, ignore=ignore or (),
                              prune_hidden=prune_hidden)
        budget_note = ""
        scores = None
        if plan is None:
            scores = _scores(progress, m, analysis, criterion, calib, labels, calib_samples, batch_size, loss,
                             reduction, device, image_size, mean, std, layout, flops_reg, projections)
        if plan is not None:
            the_plan = Plan.load(plan)
        elif target_flops is not None or target_params is not None:
            budget = Budget("flops", target_flops) if target_flops is not None else Budget("params", target_params)
            reached = _run_step(progress, f"allocating to the {budget.metric} budget", plan_to_budget,
                                m, analysis, budget, criterion=criterion, scores=scores, round_to=round_to,
                                min_channels=min_channels, max_ratio=max_ratio, align=align_n, ranking=ranking)
            the_plan = reached.plan
            budget_note = (f"{budget.metric}: target {reached.target:,.0f} ({reached.target / reached.original:.1%}), "
                           f"achieved {reached.achieved:,} ({reached.achieved / reached.original:.1%})")
        elif target_latency is not None:
            from onnxprune.latency import latency_note, plan_to_latency
            from onnxprune.runtime import random_inputs, resolve_provider

            lat_task = progress.add_task("measuring per-group latency", total=None)
            try:
                reached_ms = plan_to_latency(
                    m, analysis, target_latency, scores=scores, provider=resolve_provider(provider),
                    table_path=latency_table, feeds=random_inputs(m), round_to=round_to,
                    min_channels=min_channels, max_ratio=max_ratio, criterion=criterion, align=align_n,
                    progress=lambda done, total: progress.update(lat_task, completed=done, total=total))
            finally:
                progress.remove_task(lat_task)
            the_plan = reached_ms.plan
            budget_note = latency_note(reached_ms)
        else:
            the_plan = plan_by_ratio(m, analysis, ratio=ratio, criterion=criterion, scores=scores, mode=mode,
                                     round_to=round_to, min_channels=min_channels, max_ratio=max_ratio,
                                     align=align_n, ranking=ranking)
        result = _run_step(progress, "rewriting the graph", apply_plan, m, analysis, the_plan, debug=debug,
                           inplace=not methods)
        recovery_note = ""
        if methods:
            result, recovery_note = _recover(progress, m, analysis, the_plan, result, methods, ridge,
                                             recovery_weighting, calib, calib_samples, image_size, mean, std,
                                             layout, recovery_report)
        _run_step(progress, f"writing {output}", save_model, result.model, output)
    if save_plan is not None:
        the_plan.save(save_plan)
    cost_table(result.before, result.after, console)
    if recovery_note:
        console.print(recovery_note)
    if budget_note:
        console.print(budget_note)
    console.print(f"removed {the_plan.removed_channels(analysis)} channels in {len(the_plan.keep)} groups "
                  f"({result.before.params - result.after.params} parameters); "
                  f"wrote [bold]{output}[/]")
    if plan is None and align_n == 1:
        hint = _alignment_hint(analysis, the_plan)
        if hint:
            console.print(hint)


def _alignment_hint(analysis, plan) -> str:  # noqa: ANN001
    """A hint when pruned groups keep channel counts that convolution kernels pad: to this
    CPU's onnxruntime block (16 on AVX-512, 8 on AVX2), or 8 (TensorRT) where it has none."""
    from onnxprune.latency import channel_block

    try:
        block = max(channel_block("cpu"), 8)
    except OnnxPruneError:  # onnxruntime missing
        block = 8
    groups = {g.id: g for g in analysis.groups}
    odd = [gid for gid, kept in plan.keep.items()
           if gid in groups and len(kept) < groups[gid].size and (len(kept) * groups[gid].unit_width) % block]
    if not odd:
        return ""
    return (f"[yellow]hint:[/] {len(odd)} of {len(plan.keep)} pruned groups keep a channel count that is not a "
            f"multiple of {block} (the channel block of convolution kernels here: onnxruntime CPU pads to it, "
            "TensorRT to 8); the padding and the layout changes around such layers can make the model slower "
            "than the original. Add --align auto (or --round-to 8 for TensorRT).")


def _train_prune(name, model, output, input_shape, target_flops, round_to, min_channels, max_ratio,  # noqa: ANN001
                 calib, labels, samples, batch_size, steps, lr, device, save_plan) -> None:  # noqa: ANN001
    """--schedule iterative / --method spp|learned-threshold: prune while fine-tuning (distillation)."""
    from onnxprune.api import load
    from onnxprune.calib import load_calibration
    from onnxprune.modelio import check_output_path, save_model
    from onnxprune.report import cost_table
    from onnxprune.train import train_prune

    check_output_path(model, output)
    with _steps(False) as progress:
        m = _run_step(progress, "loading and inferring shapes", load, model, input_shapes=_parse_shapes(input_shape))
        data = _run_step(progress, "loading calibration data", load_calibration, calib, m, labels=labels,
                         samples=samples)
        result = _run_step(progress, f"{name} pruning with fine-tuning", train_prune, name, m, data,
                           target_flops=target_flops, round_to=round_to, min_channels=min_channels,
                           max_ratio=max_ratio, steps=steps, lr=lr, batch_size=batch_size, device=device)
        _run_step(progress, f"writing {output}", save_model, result.model, output)
    if save_plan is not None:
        result.plan.save(save_plan)
    cost_table(result.prune.before, result.prune.after, console)
    console.print(f"{name}: FLOPs target {result.target_flops:,.0f}, achieved {result.achieved_flops:,} "
                  f"({result.achieved_flops / result.original_flops:.1%}) after {result.steps} training steps")
    for note in result.notes:
        console.print(note)


def _recovery_methods(text: str) -> tuple[str, ...]:
    from onnxprune.recovery import METHODS

    text = text.strip().lower()
    if text in ("", "none"):
        return ()
    if text == "all":
        return METHODS
    methods = tuple(m.strip() for m in text.split(",") if m.strip())
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SelectionError(f"--recover: unknown method(s) {', '.join(unknown)} (choose from {', '.join(METHODS)})")
    return methods


def _recover(progress: Progress, original, analysis, plan, result, methods, ridge, weighting, calib, samples,  # noqa: ANN001
             image_size, mean, std, layout, report_path):  # noqa: ANN001, ANN202
    """Run post-training recovery on the pruned model; returns the updated result and a summary line."""
    from dataclasses import replace

    from onnxprune.calib import load_calibration
    from onnxprune.fileutil import write_text_atomic
    from onnxprune.flops import model_cost
    from onnxprune.recovery import recover

    data = _run_step(progress, "loading calibration data", load_calibration, calib, original, samples=samples,
                     image_size=[int(v) for v in image_size.split(",")] if image_size else None,
                     mean=_floats(mean), std=_floats(std), layout=layout)
    model, report = _run_step(progress, f"recovering ({', '.join(methods)})", recover, original, result.model,
                              analysis, plan, data, methods=methods, ridge=ridge, weighting=weighting)
    if report_path is not None:
        write_text_atomic(report_path, json.dumps(report, indent=1, default=str))
    mse = report.get("mse", {})
    counts = ", ".join(f"{m} {len(report.get('updated', {}).get(m, []))}" for m in methods)
    note = (f"recovery: output MSE vs the original {mse.get('pruned', float('nan')):.4g} -> "
            f"{mse.get('recovered', float('nan')):.4g} (updated: {counts})")
    return replace(result, model=model, after=model_cost(model)), note


@app.command()
def score(
    model: ModelArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the scores (JSON).")],
    criterion: Annotated[str, typer.Option(help="l1, l2, bn-scale, random; with --calib: taylor-fo, taylor-so, "
                                                "taylor-act, activation, apoz, oracle.")] = "l2",
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
    from onnxprune.fileutil import write_text_atomic
    from onnxprune.modelio import check_output_path

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
    console.print(f"scored {sum(len(v) for v in scores.values())} units in {len(scores)} groups; wrote {output}")


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
) -> None:
    """Run ORIGINAL and PRUNED in onnxruntime and compare outputs, accuracy, cost, size and latency."""
    import numpy as np

    from onnxprune.fileutil import write_text_atomic
    from onnxprune.modelio import load_model
    from onnxprune.report import verify_table, write_verify_report
    from onnxprune.runtime import random_inputs, resolve_provider
    from onnxprune.verify import load_inputs
    from onnxprune.verify import verify as run_verify

    if inputs is not None and calib is not None:
        raise SelectionError("give at most one of --inputs and --calib")
    if report_path is not None and report_path.suffix.lower() not in (".md", ".markdown", ".html", ".htm"):
        raise SelectionError(f"{report_path}: --report must end in .md or .html")
    if plot is not None:
        from onnxprune.plots import have_matplotlib

        if not have_matplotlib():
            raise SelectionError("--plot needs matplotlib: pip install 'onnxprune[report]'")
    try:
        sizes = [int(b) for b in batch_sizes.split(",") if b.strip()] if batch_sizes else None
    except ValueError as exc:
        raise SelectionError(f"--batch-sizes expects integers like 1,8; got {batch_sizes!r}") from exc
    if sizes is not None and (not sizes or min(sizes) < 1):
        raise SelectionError(f"--batch-sizes expects positive integers, got {batch_sizes!r}")
    provider_list = list(dict.fromkeys(resolve_provider(p.strip()) for p in providers.split(",") if p.strip()))
    mo, mp = load_model(original, lazy=False), load_model(pruned, lazy=False)
    shapes = {k: [int(d) for d in v] for k, v in _parse_shapes(input_shape).items()}
    if shapes:  # both models at the same input shapes: the random inputs, and their costs compared
        from onnxprune.prepare import set_input_shapes

        set_input_shapes(mo, shapes, str(original))
        set_input_shapes(mp, shapes, str(pruned))
    label_arr = None
    if calib is not None:
        from onnxprune.calib import load_calibration

        data = load_calibration(calib, mo, labels=labels, samples=samples)
        feeds, label_arr = dict(data.inputs), data.labels
    elif inputs is not None:
        feeds = load_inputs(inputs, mo)
        if labels:
            arrays = np.load(inputs)
            if labels not in arrays:
                raise SelectionError(f"{inputs}: no labels array '{labels}' (has: {', '.join(arrays.files)})")
            label_arr = arrays[labels]
        if samples is not None:
            feeds = {k: v[:samples] for k, v in feeds.items()}
            label_arr = None if label_arr is None else label_arr[:samples]
    else:
        feeds = random_inputs(mo, shapes=shapes)
    with _steps(False) as progress:
        report = _run_step(progress, "running both models", run_verify, mo, mp, feeds, labels=label_arr, runs=runs,
                           providers=provider_list, batch_sizes=sizes, warmup=warmup, threads=threads,
                           original_path=original, pruned_path=pruned)
    verify_table(report, console)
    if json_path is not None:
        write_text_atomic(json_path, json.dumps(report, indent=1))
    if report_path is not None:
        written, png = write_verify_report(report, report_path, names=(str(original), str(pruned)))
        console.print(f"wrote report [bold]{written}[/]" + (f" (plots {png})" if png else ""))
    if plot is not None:
        from onnxprune.plots import write_verify_plot

        write_verify_plot(report, plot)
        console.print(f"wrote plot [bold]{plot}[/]")


@app.command()
def sweep(
    model: ModelArg,
    output_dir: Annotated[Path, typer.Option("--output", "-o", help="Directory for sweep.json, .md and .png.")],
    targets: Annotated[str, typer.Option(
        help="Budgets, comma-separated: fractions of the original (<= 1) or absolute counts.")] = "0.9,0.8,0.6,0.4",
    metric: Annotated[str, typer.Option(help="Budget metric: flops or params.")] = "flops",
    criterion: Annotated[str, typer.Option(help="Channel criterion (see `onnxprune score`).")] = "l2",
    round_to: Annotated[int, typer.Option(help="Keep channel counts in multiples of N (8 for GPUs).")] = 1,
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
    sweep.md (table) and sweep.png (quality and latency against FLOPs)."""
    from onnxprune.analysis import analyze as run_analysis
    from onnxprune.api import load
    from onnxprune.budget import Budget
    from onnxprune.calib import load_calibration
    from onnxprune.graph import static_batch
    from onnxprune.latency import feeds_for_batch
    from onnxprune.report import sweep_table
    from onnxprune.runtime import random_inputs, resolve_provider
    from onnxprune.sweep import sweep as run_sweep
    from onnxprune.sweep import write_sweep

    try:
        target_list = _floats(targets)
    except ValueError as exc:
        raise SelectionError(f"--targets expects numbers like 0.9,0.8,0.6; got {targets!r}") from exc
    if not target_list:
        raise SelectionError("--targets is empty")
    for t in target_list:
        Budget(metric, t)  # validates the metric and every target before any work
    if latency_batch < 1:
        raise SelectionError(f"--latency-batch must be >= 1, got {latency_batch}")
    if output_dir.exists() and not output_dir.is_dir():
        raise SelectionError(f"{output_dir}: --output must be a directory")
    provider_name = resolve_provider(provider)
    with _steps(False) as progress:
        m = _run_step(progress, "loading and inferring shapes", load, model, input_shapes=_parse_shapes(input_shape))
        analysis = _run_step(progress, "analysing channel groups", run_analysis, m, ignore=ignore or (),
                              prune_hidden=prune_hidden)
        scores = _scores(progress, m, analysis, criterion, calib, labels, calib_samples, batch_size, loss,
                         reduction, device, image_size, mean, std, layout, flops_reg, projections)
        source = eval_data or calib
        if source is not None:
            data = _run_step(progress, "loading evaluation data", load_calibration, source, m, labels=labels,
                             samples=calib_samples,
                             image_size=[int(v) for v in image_size.split(",")] if image_size else None,
                             mean=_floats(mean), std=_floats(std), layout=layout)
            eval_feeds, eval_labels = dict(data.inputs), data.labels
        else:
            eval_feeds, eval_labels = None, None  # the sweep draws random samples
        lat_feeds = feeds_for_batch(m, eval_feeds if eval_feeds is not None else random_inputs(m),
                                    static_batch(m) or latency_batch)
        task = progress.add_task(f"pruning at {len(target_list)} budgets", total=len(target_list))
        result = run_sweep(m, analysis, target_list, metric=metric, criterion=criterion, scores=scores,
                           eval_feeds=eval_feeds, labels=eval_labels, latency_feeds=lat_feeds, round_to=round_to,
                           min_channels=min_channels, max_ratio=max_ratio, provider=provider_name, threads=threads,
                           runs=runs, save_dir=output_dir if save_models else None,
                           progress=lambda done, total: progress.update(task, completed=done))
        progress.remove_task(task)
    result["model"] = str(model)
    result["eval"] = str(source) if source is not None else "random inputs"
    paths = write_sweep(result, output_dir)
    sweep_table(result, console)
    console.print("wrote " + ", ".join(f"[bold]{p}[/]" for p in paths.values()))


@app.command()
def demo(
    ratio: Annotated[float, typer.Option(help="Fraction of channels to remove.")] = 0.2,
    output_dir: Annotated[Optional[Path], typer.Option(help="Keep the pruned model here.")] = None,
) -> None:
    """Prune the small digits classifier shipped with onnxprune and report what changed."""
    import tempfile

    import numpy as np

    from onnxprune.analysis import analyze as run_analysis
    from onnxprune.api import apply_plan, load, plan_by_ratio
    from onnxprune.latency import resolve_align
    from onnxprune.modelio import load_model, save_model
    from onnxprune.report import analysis_tables, cost_table, verify_table
    from onnxprune.verify import verify as run_verify

    data = Path(__file__).parent / "data"
    model_path, test_path = data / "digits_cnn.onnx", data / "digits_test.npz"
    test = np.load(test_path)
    m = load(model_path)
    analysis = run_analysis(m)
    analysis_tables(analysis, console)
    block = resolve_align("auto")  # kept counts in whole blocks of this CPU's convolution kernels
    the_plan = plan_by_ratio(m, analysis, ratio=ratio, criterion="l2", align=block)
    result = apply_plan(m, analysis, the_plan)
    out_dir = output_dir or Path(tempfile.mkdtemp(prefix="onnxprune-demo-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    out = save_model(result.model, out_dir / "digits_cnn_pruned.onnx")
    cost_table(result.before, result.after, console,
               title=f"Digits CNN, {ratio:.0%} of channels removed (l2, --align auto = {block})")
    report = run_verify(load_model(model_path), load_model(out), {"input": test["input"]}, labels=test["labels"])
    verify_table(report, console)
    console.print(f"pruned model written to [bold]{out}[/]")


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
    epochs: Annotated[Optional[float], typer.Option(help="Epochs over the data (default 1).")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Training steps (instead of --epochs).")] = None,
    lr: Annotated[float, typer.Option(help="Learning rate.")] = 1e-3,
    batch_size: Annotated[int, typer.Option(help="Training batch size.")] = 64,
    optimizer: Annotated[str, typer.Option(help="sgd, adam or adamw.")] = "adam",
    weight_decay: Annotated[float, typer.Option(help="Weight decay.")] = 0.0,
    schedule: Annotated[str, typer.Option(help="Learning rate: cosine or constant.")] = "cosine",
    temperature: Annotated[float, typer.Option(help="Distillation temperature.")] = 4.0,
    distill_weight: Annotated[Optional[float], typer.Option(help="Weight of distillation (default 1 with "
                                                                 "--teacher).")] = None,
    ce_weight: Annotated[Optional[float], typer.Option(help="Weight of the label loss (default 1 with "
                                                            "--labels).")] = None,
    recalibrate_bn: Annotated[bool, typer.Option(help="Re-estimate BatchNorm statistics on the data first.")
                              ] = False,
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
    OUTPUT: the same graph with the new weights. BatchNorm stays in inference mode."""
    from onnxprune.calib import load_calibration
    from onnxprune.modelio import check_output_path, load_model, save_model
    from onnxprune.train import finetune as run_finetune

    check_output_path(model, output)
    if teacher is not None:
        check_output_path(teacher, output)
    m = load_model(model, lazy=False)
    t = load_model(teacher, lazy=False) if teacher is not None else None
    data = load_calibration(calib, m, labels=labels, samples=calib_samples)
    result = run_finetune(m, data, teacher=t, optimizer=optimizer, lr=lr, weight_decay=weight_decay,
                          schedule=schedule, epochs=1.0 if epochs is None and steps is None else epochs,
                          steps=steps, batch_size=batch_size, seed=seed, device=device, temperature=temperature,
                          distill_weight=distill_weight, ce_weight=ce_weight, recalibrate_bn=recalibrate_bn,
                          checkpoint=checkpoint, checkpoint_every=checkpoint_every, resume=resume,
                          progress=err.is_terminal)
    save_model(result.model, output)
    losses = result.losses
    summary = f"loss {losses[0]:.4f} -> {losses[-1]:.4f}; " if losses else ""
    console.print(f"fine-tuned {result.steps} steps ({summary}{len(data)} samples); wrote [bold]{output}[/]")


def main() -> None:
    """Console entry point: one-line errors and a non-zero exit on failure."""
    try:
        app(standalone_mode=False)
    except OnnxPruneError as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False)
        sys.exit(1)
    except (typer.Exit, typer.Abort) as exc:
        sys.exit(getattr(exc, "exit_code", 1))
    except Exception as exc:  # click usage errors and the unexpected
        # click's ClickException (typer >= 0.20 raises those of its own vendored copy of click)
        if any(c.__name__ == "ClickException" for c in type(exc).__mro__):
            exc.show()  # type: ignore[attr-defined]
            sys.exit(exc.exit_code)  # type: ignore[attr-defined]
        err.print(f"[red]error:[/] unexpected {type(exc).__name__}: {exc}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
