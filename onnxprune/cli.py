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


def _distributed_rank(device: str) -> int:
    """Under torchrun (WORLD_SIZE > 1) join the process group; returns this process's rank."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return dist.get_rank()


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def _scores(progress: Progress, m, analysis, criterion: str, calib: Path | None, labels: str | None,  # noqa: ANN001
            samples: int | None, batch_size: int, loss: str, reduction: str, device: str, image_size: str | None,
            mean: str, std: str, layout: str, flops_reg: float):  # noqa: ANN202
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
) -> None:
    """Find the coupled channel groups, what each accounts for, and what blocks the rest."""
    from onnxprune.analysis import analyze as run_analysis
    from onnxprune.api import load
    from onnxprune.report import analysis_tables

    with _steps(False) as progress:
        m = _run_step(progress, "loading and inferring shapes", load, model,
                      input_shapes=_parse_shapes(input_shape))
        analysis = _run_step(progress, "analysing channel groups", run_analysis, m, ignore=ignore or ())
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
    plan: Annotated[Optional[Path], typer.Option(help="Replay a saved plan instead of --ratio.")] = None,
    criterion: Annotated[str, typer.Option(help="Channel criterion: l1, l2, random.")] = "l2",
    mode: Annotated[str, typer.Option(help="per-group (same ratio everywhere) or global ranking.")] = "per-group",
    round_to: Annotated[int, typer.Option(help="Keep channel counts in multiples of N (8 for GPUs).")] = 1,
    min_channels: Annotated[int, typer.Option(help="Never keep fewer channels in a group.")] = 1,
    max_ratio: Annotated[float, typer.Option(help="Never remove more than this fraction of a group.")] = 1.0,
    ignore: Annotated[Optional[list[str]], typer.Option(help="Node name or pattern whose channels stay.")] = None,
    save_plan: Annotated[Optional[Path], typer.Option(help="Also write the plan used as JSON.")] = None,
    debug: Annotated[bool, typer.Option(help="Check the graph after every pass.")] = False,
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
) -> None:
    """Prune MODEL by --ratio or a FLOPs/params budget (scored with --criterion, data-free or
    on --calib data), or replay a saved --plan; write OUTPUT."""
    from onnxprune.analysis import analyze as run_analysis
    from onnxprune.api import apply_plan, load, plan_by_ratio, plan_to_budget
    from onnxprune.budget import Budget
    from onnxprune.modelio import check_output_path, save_model
    from onnxprune.plan import Plan
    from onnxprune.report import cost_table

    chosen = [name for name, v in (("--ratio", ratio), ("--plan", plan), ("--target-flops", target_flops),
                                   ("--target-params", target_params)) if v is not None]
    if len(chosen) != 1:
        raise SelectionError("give exactly one of --ratio, --plan, --target-flops or --target-params"
                             + (f" (got {', '.join(chosen)})" if chosen else ""))
    if ratio is not None and not 0.0 <= ratio < 1.0:
        raise SelectionError(f"--ratio must be in [0, 1), got {ratio}")
    check_output_path(model, output)
    if save_plan is not None:
        check_output_path(model, save_plan)
    with _steps(debug) as progress:
        m = _run_step(progress, "loading and inferring shapes", load, model,
                      input_shapes=_parse_shapes(input_shape))
        analysis = _run_step(progress, "analysing channel groups", run_analysis, m, ignore=ignore or ())
        budget_note = ""
        scores = None
        if plan is None:
            scores = _scores(progress, m, analysis, criterion, calib, labels, calib_samples, batch_size, loss,
                             reduction, device, image_size, mean, std, layout, flops_reg)
        if plan is not None:
            the_plan = Plan.load(plan)
        elif target_flops is not None or target_params is not None:
            budget = Budget("flops", target_flops) if target_flops is not None else Budget("params", target_params)
            reached = _run_step(progress, f"allocating to the {budget.metric} budget", plan_to_budget,
                                m, analysis, budget, criterion=criterion, scores=scores, round_to=round_to,
                                min_channels=min_channels, max_ratio=max_ratio)
            the_plan = reached.plan
            budget_note = (f"{budget.metric}: target {reached.target:,.0f} ({reached.target / reached.original:.1%}), "
                           f"achieved {reached.achieved:,} ({reached.achieved / reached.original:.1%})")
        else:
            the_plan = plan_by_ratio(m, analysis, ratio=ratio, criterion=criterion, scores=scores, mode=mode,
                                     round_to=round_to, min_channels=min_channels, max_ratio=max_ratio)
        result = _run_step(progress, "rewriting the graph", apply_plan, m, analysis, the_plan, debug=debug,
                           inplace=True)
        _run_step(progress, f"writing {output}", save_model, result.model, output)
    if save_plan is not None:
        the_plan.save(save_plan)
    cost_table(result.before, result.after, console)
    if budget_note:
        console.print(budget_note)
    console.print(f"removed {the_plan.removed_channels(analysis)} channels in {len(the_plan.keep)} groups "
                  f"({result.before.params - result.after.params} parameters); "
                  f"wrote [bold]{output}[/]")


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
                         reduction, device, image_size, mean, std, layout, flops_reg)
    payload = {"criterion": criterion, "fingerprint": analysis.fingerprint,
               "groups": {gid: [float(v) for v in vals] for gid, vals in scores.items()}}
    if _distributed_rank(device) != 0:
        return  # under torchrun every process holds the same all-reduced scores; rank 0 writes them
    write_text_atomic(output, json.dumps(payload, indent=1))
    console.print(f"scored {sum(len(v) for v in scores.values())} units in {len(scores)} groups; wrote {output}")


@app.command()
def verify(
    original: Annotated[Path, typer.Argument(help="The original model.")],
    pruned: Annotated[Path, typer.Argument(help="The pruned model.")],
    inputs: Annotated[Optional[Path], typer.Option(help=".npz with one array per model input.")] = None,
    labels: Annotated[Optional[str], typer.Option(help="Array name in --inputs holding class labels.")] = None,
    runs: Annotated[int, typer.Option(help="Timed runs per model.")] = 30,
    provider: Annotated[str, typer.Option(help="Latency on: auto (CUDA if available), cpu, cuda, tensorrt.")] = "auto",
    input_shape: InputShapeOpt = None,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Also write the report as JSON.")] = None,
) -> None:
    """Run ORIGINAL and PRUNED in onnxruntime and compare outputs, cost and latency."""
    import numpy as np

    from onnxprune.fileutil import write_text_atomic
    from onnxprune.modelio import load_model
    from onnxprune.report import verify_table
    from onnxprune.runtime import resolve_provider
    from onnxprune.verify import load_inputs
    from onnxprune.verify import verify as run_verify

    mo, mp = load_model(original, lazy=False), load_model(pruned, lazy=False)
    from onnxprune.runtime import random_inputs

    shapes = {k: [int(d) for d in v] for k, v in _parse_shapes(input_shape).items()}
    feeds = load_inputs(inputs, mo) if inputs is not None else random_inputs(mo, shapes=shapes)
    label_arr = np.load(inputs)[labels] if (inputs is not None and labels) else None
    with _steps(False) as progress:
        report = _run_step(progress, "running both models", run_verify, mo, mp, feeds, labels=label_arr, runs=runs,
                            provider=resolve_provider(provider))
    verify_table(report, console)
    if json_path is not None:
        write_text_atomic(json_path, json.dumps(report, indent=1))


@app.command()
def demo(
    ratio: Annotated[float, typer.Option(help="Fraction of channels to remove.")] = 0.2,
    output_dir: Annotated[Optional[Path], typer.Option(help="Keep the pruned model here.")] = None,
) -> None:
    """Prune the small digits classifier shipped with onnxprune and report what changed."""
    import tempfile

    from onnxprune.analysis import analyze as run_analysis
    from onnxprune.api import apply_plan, load, plan_by_ratio
    from onnxprune.modelio import load_model, save_model
    from onnxprune.report import analysis_tables, cost_table, verify_table
    from onnxprune.verify import verify as run_verify

    import numpy as np

    data = Path(__file__).parent / "data"
    model_path, test_path = data / "digits_cnn.onnx", data / "digits_test.npz"
    if True:
        test = np.load(test_path)
        m = load(model_path)
        analysis = run_analysis(m)
        analysis_tables(analysis, console)
        the_plan = plan_by_ratio(m, analysis, ratio=ratio, criterion="l2")
        result = apply_plan(m, analysis, the_plan)
        out_dir = output_dir or Path(tempfile.mkdtemp(prefix="onnxprune-demo-"))
        out_dir.mkdir(parents=True, exist_ok=True)
        out = save_model(result.model, out_dir / "digits_cnn_pruned.onnx")
        cost_table(result.before, result.after, console, title=f"Digits CNN, {ratio:.0%} of channels removed (l2)")
        report = run_verify(load_model(model_path), load_model(out), {"input": test["input"]},
                            labels=test["labels"])
        verify_table(report, console)
        console.print(f"pruned model written to [bold]{out}[/]")


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
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        err.print(f"[red]error:[/] unexpected {type(exc).__name__}: {exc}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
