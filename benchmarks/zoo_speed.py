"""Is the default allocation ever slower than the original? The whole zoo at 0.75 and 0.5 of
the MACs, measured with the speed check that ends ``prune`` (``onnxprune.verify.speedcheck``).

    nice python -m benchmarks.zoo_speed [--models all|vgg,resnet18,...] [--targets 0.75,0.5]
                                        [--width 1.0] [--budget 8] [--repeat 3] [--threads 0]
                                        [--resnet50-size 224] [--out benchmarks/results/zoo_speed.json]

Each zoo model (``models.zoo``; the registry's input shapes, ``--width`` 1.0: the real
widths) is exported to ONNX (BatchNorm kept), scored with l2 and allocated to each FLOPs
target by the plain command without data (``onnxprune.compress.compress(model,
Recipe(target_flops=T))``: l2, aligned to ``latency.resolve_align('auto')``, falling back to
a finer block where the aligned counts cannot reach the target). The
original and the pruned model are timed by ``speedcheck.measure_speedup`` with a longer
budget (``--budget`` seconds of paired rounds, ``--repeat`` times; the median repeat is
reported, with the lowest and highest) on onnxruntime CPU. Rows say whether the pruned model
is slower beyond the noise margin, and what may explain it: kept counts off the CPU's
channel block, the share of the original's time outside convolutions and matrix products
(a tiny model is dominated by per-op overhead that pruning does not remove), and ops whose
layout changed. Finally ResNet-50 at ``--resnet50-size`` (224) and 0.5 of the MACs: speedup
against the MACs ratio (target: at least 0.85 of it).

Timings on a machine shared with other jobs are noisy: run with ``nice``; the paired rounds
and per-block fastest runs cancel most of it, the margins say how much is left.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx

HEAVY_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "FusedConv", "FusedGemm", "FusedMatMul", "LSTM")


def export(name: str, width: float, shapes: dict | None = None):  # noqa: ANN201
    from models import export_onnx
    from onnxprune.api import load

    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(name, Path(tmp) / f"{name}.onnx", width=width, input_shapes=shapes)
        return load(path)


def heavy_share(model, feeds, threads: int) -> float:  # noqa: ANN001
    """Share of one run's node time (onnxruntime profile, optimised graph) spent in
    convolutions and matrix products: what pruning channels makes cheaper."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / "p")
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        for _ in range(20):
            sess.run(None, feeds)
        events = json.loads(Path(sess.end_profiling()).read_text())
    total = heavy = 0.0
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        op = e.get("args", {}).get("op_name", "")
        total += e["dur"]
        heavy += e["dur"] if op in HEAVY_OPS or op.startswith("Conv") else 0.0
    return heavy / total if total else float("nan")


def off_block(analysis, plan, block: int) -> int:  # noqa: ANN001
    """Pruned groups whose kept channel count is not a multiple of the channel block."""
    return sum(1 for gid, keep in plan.keep.items()
               if block > 1 and (len(keep) * analysis.group(gid).unit_width) % block)


def measure(original, pruned, feeds, args) -> dict[str, Any]:  # noqa: ANN001
    from onnxprune.verify.speedcheck import measure_speedup

    runs = [measure_speedup(original, pruned, feeds, budget_s=args.budget, threads=args.threads)
            for _ in range(args.repeat)]
    runs.sort(key=lambda r: r.speedup)
    mid = runs[len(runs) // 2]
    return {**mid.to_dict(), "slower": mid.slower, "speedup_low": runs[0].speedup,
            "speedup_high": runs[-1].speedup, "repeats": [r.speedup for r in runs]}


def zoo_rows(args, names: list[str]) -> list[dict[str, Any]]:  # noqa: ANN001
    from models import make_inputs
    from onnxprune.compress import compress
    from onnxprune.errors import OnnxPruneError
    from onnxprune.recipe import Recipe
    from onnxprune.selection.latency import resolve_align

    block = resolve_align("auto")
    targets = [float(t) for t in args.targets.split(",")]
    rows = []
    for name in names:
        model = export(name, args.width)
        feeds = make_inputs(name)
        share = heavy_share(model, feeds, args.threads)
        for target in targets:
            row: dict[str, Any] = {"model": name, "target": target, "align": block, "heavy_share": share}
            copy = onnx.ModelProto()
            copy.CopyFrom(model)  # compress rewrites its input in place when it neither recovers nor measures
            try:  # the plain command without data: `prune model.onnx --target-flops T`
                result = compress(copy, Recipe(target_flops=target, measure=False))
            except OnnxPruneError as exc:
                row.update(status="unreachable", note=str(exc))
                rows.append(row)
                print(json.dumps(row), flush=True)
                continue
            row.update(status="measured", prunable_groups=len(result.analysis.prunable_groups),
                       macs_ratio=result.after.macs / result.before.macs, pruned_groups=len(result.plan.keep),
                       off_block=off_block(result.analysis, result.plan, block), notes=list(result.notes),
                       **measure(model, result.model, feeds, args))
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def resnet50_row(args) -> dict[str, Any]:  # noqa: ANN001
    from onnxprune.analysis import analyze
    from onnxprune.api import apply_plan, plan_to_budget
    from onnxprune.selection.budget import Budget
    from onnxprune.selection.latency import resolve_align

    size = args.resnet50_size
    model = export("resnet50", 1.0, {"input": (1, 3, size, size)})
    analysis = analyze(model)
    reached = plan_to_budget(model, analysis, Budget("flops", 0.5), criterion="l2", align=resolve_align("auto"))
    pruned = apply_plan(model, analysis, reached.plan).model
    feeds = {"input": np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)}
    row = {"model": f"resnet50@{size}", "target": 0.5, "macs_ratio": reached.achieved / reached.original,
           **measure(model, pruned, feeds, args)}
    row["macs_reduction"] = reached.original / reached.achieved
    row["speedup_over_macs_reduction"] = row["speedup"] / row["macs_reduction"]
    print(json.dumps(row), flush=True)
    return row


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| model | target | MACs kept | speedup (low-high) | margin | verdict | original ms | pruned ms | "
             "off-block groups | conv/matmul share |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("status") == "unreachable":
            lines.append(f"| {r['model']} | {r['target']} | - | unreachable | | | | | | |")
            continue
        lines.append(f"| {r['model']} | {r['target']} | {r['macs_ratio']:.3f} | {r['speedup']:.2f}x "
                     f"({r['speedup_low']:.2f}-{r['speedup_high']:.2f}) | {r['margin']:.0%} | {r['verdict']} | "
                     f"{r['original_ms']:.3g} | {r['pruned_ms']:.3g} | {r.get('off_block', '')} | "
                     f"{r.get('heavy_share', float('nan')):.0%} |")
    return "\n".join(lines)


def caveat(before: tuple[float, ...], after: tuple[float, ...]) -> str:
    """A warning to keep with the figures when the machine was busy (load above its CPU count)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if max(before[0], after[0]) <= cpus:
        return ""
    return (f"measured while the machine was busy (load average {before[0]:.1f} -> {after[0]:.1f} on {cpus} CPUs): "
            "paired rounds cancel most of it, but re-run on a quiet machine before quoting")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="all", help="comma list of zoo names, or 'all'")
    ap.add_argument("--targets", default="0.75,0.5", help="FLOPs targets (fractions of the original)")
    ap.add_argument("--width", type=float, default=1.0, help="zoo width multiplier")
    ap.add_argument("--budget", type=float, default=8.0, help="seconds of paired rounds per measurement")
    ap.add_argument("--repeat", type=int, default=3, help="measurements per model and target (median reported)")
    ap.add_argument("--threads", type=int, default=0, help="intra-op threads (0: onnxruntime's default)")
    ap.add_argument("--resnet50-size", type=int, default=224, help="ResNet-50 input size (0: skip)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/zoo_speed.json"))
    args = ap.parse_args()
    import onnxruntime as ort

    from models import ZOO
    from onnxprune.selection.latency import channel_block

    names = sorted(ZOO) if args.models == "all" else [n.strip() for n in args.models.split(",")]
    load_before, t0 = os.getloadavg(), time.time()
    rows = zoo_rows(args, names)
    r50 = resnet50_row(args) if args.resnet50_size else None
    result = {
        "command": "python -m benchmarks.zoo_speed " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out"),
        "allocation": "compress(model, Recipe(target_flops=T)): the plain command without data",
        "timing": "speedcheck.measure_speedup: paired rounds, fastest run per block, median ratio; "
                  "median of --repeat measurements",
        "onnxruntime": ort.__version__, "machine": platform.machine(), "cpus": os.cpu_count(),
        "channel_block": channel_block("cpu"), "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
        "seconds": time.time() - t0, "caveat": caveat(load_before, os.getloadavg()), "rows": rows, "resnet50": r50,
        "slower": [f"{r['model']}@{r['target']}" for r in rows if r.get("slower")],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(table(rows))
    if r50:
        print(f"\nResNet-50 {args.resnet50_size}x{args.resnet50_size} at 0.5 of the MACs: {r50['speedup']:.2f}x "
              f"for {r50['macs_reduction']:.2f}x fewer MACs = {r50['speedup_over_macs_reduction']:.2f} of the MACs "
              f"ratio (target >= 0.85)")
    print("slower than the original:", ", ".join(result["slower"]) or "none")


if __name__ == "__main__":
    main()
