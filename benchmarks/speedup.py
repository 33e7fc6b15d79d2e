"""Measured onnxruntime CPU speedup at 2x fewer FLOPs (round_to 8) vs the FLOPs ratio.

    python -m benchmarks.speedup [--models resnet50,mobilenetv2] [--size 224] [--threads 2] [--runs 100]
                                 [--align 1,auto] [--spin]

Each model: the zoo's torch definition exported to ONNX (BatchNorm kept), scored by l2, pruned to
half its FLOPs with channel counts in multiples of 8 (global allocation, ``plan_to_budget``), once
per ``--align`` value (1: off, the plain allocation; auto: this machine's onnxruntime channel
block, ``onnxprune.selection.latency.channel_block``). Then the original and every pruned variant are timed
in onnxruntime the same way:

- one session per model, all graph optimisations on (ORT_ENABLE_ALL, so the NCHWc layout
  transformer runs), sequential execution, ``--threads`` intra-op threads (fixed), one inter-op;
  intra-op threads sleep when idle instead of spin-waiting unless ``--spin`` (spinning threads on
  a machine whose cores are shared with other jobs turn every timing into a measurement of the
  neighbours: see docs/benchmarks.md);
- the same random input, 10 warm-up runs per session;
- at least ``--runs`` rounds and ``--seconds`` of timing; each round runs every model once, in
  alternating order (forward, then backward), so a change in machine load hits all models alike;
- speedup = the median over rounds of (original time / pruned time) in the same round; the whole
  timing is repeated ``--repeat`` times (fresh rounds) and the median repeat is reported with the
  lowest and highest; median, minimum and p90 times and the load average are recorded too.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np


def sessions_for(models, threads: int, spin: bool):  # noqa: ANN001, ANN201
    import onnxruntime as ort

    out = []
    for m in models:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        opts.log_severity_level = 3
        out.append(ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"]))
    return out


def timed_rounds(sessions, feeds, runs: int, seconds: float = 0.0, warmup: int = 10) -> np.ndarray:  # noqa: ANN001
    """Seconds per run, shape (rounds, models): each round runs every model once, in alternating
    order; at least ``runs`` rounds and at least ``seconds`` of timing."""
    for s in sessions:
        for _ in range(warmup):
            s.run(None, feeds)
    times: list[list[float]] = []
    start = time.perf_counter()
    while len(times) < runs or time.perf_counter() - start < seconds:
        row = [0.0] * len(sessions)
        order = range(len(sessions)) if len(times) % 2 == 0 else reversed(range(len(sessions)))
        for i in order:
            t = time.perf_counter()
            sessions[i].run(None, feeds)
            row[i] = time.perf_counter() - t
        times.append(row)
    return np.asarray(times)


def kept_score_share(analysis, scores, plan) -> float:  # noqa: ANN001
    """Share of the (per-group normalised) l2 score kept: what the allocation gave up, model-free."""
    total = kept = 0.0
    for g in analysis.prunable_groups:
        s = np.asarray(scores[g.id], dtype=np.float64)
        s = s / s.mean() if s.mean() > 0 else s
        total += s.sum()
        kept += s[list(plan.keep[g.id])].sum() if g.id in plan.keep else s.sum()
    return kept / total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet50,mobilenetv2")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=100, help="least timed rounds (each runs every model once)")
    ap.add_argument("--seconds", type=float, default=20.0, help="least seconds of timed rounds per repeat")
    ap.add_argument("--repeat", type=int, default=3, help="independent timings per model (median reported)")
    ap.add_argument("--align", default="1,auto", help="comma list of --align values to compare (1: off)")
    ap.add_argument("--spin", action="store_true", help="let idle intra-op threads spin (onnxruntime's default)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/speedup.json"))
    args = ap.parse_args()
    import onnxruntime as ort

    from models import export_onnx
    from onnxprune.analysis import analyze
    from onnxprune.api import apply_plan, load, plan_to_budget, score_channels
    from onnxprune.selection.budget import Budget
    from onnxprune.selection.latency import channel_block, resolve_align

    aligns = [a.strip() for a in args.align.split(",")]
    rows = []
    load_before = os.getloadavg()
    for name in args.models.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            path = export_onnx(name, Path(tmp) / "m.onnx", input_shapes={"input": (1, 3, args.size, args.size)})
            model = load(path)
        analysis = analyze(model)
        scores = score_channels(model, analysis, "l2")
        variants = []
        for a in aligns:
            reached = plan_to_budget(model, analysis, Budget("flops", 0.5), scores=scores, round_to=8,
                                     align=resolve_align(a, "cpu"))
            variants.append((a, resolved := resolve_align(a, "cpu"), reached,
                             apply_plan(model, analysis, reached.plan).model))
        sessions = sessions_for([model] + [v[3] for v in variants], args.threads, args.spin)
        feeds = {"input": np.random.default_rng(0).standard_normal((1, 3, args.size, args.size)).astype(np.float32)}
        t0 = time.time()
        repeats = [timed_rounds(sessions, feeds, args.runs, args.seconds) for _ in range(args.repeat)]
        speedups = np.asarray([[np.median(t[:, 0] / t[:, j]) for j in range(1, len(sessions))] for t in repeats])
        pick = int(np.argsort(speedups[:, 0])[len(repeats) // 2])  # the median repeat (by the first variant)
        times = repeats[pick]
        ms = times * 1e3
        for j, (a, resolved, reached, _) in enumerate(variants, start=1):
            flops_ratio = reached.original / reached.achieved
            speedup = float(np.median(speedups[:, j - 1]))
            off_block = sum(1 for gid, k in reached.plan.keep.items()
                            if (len(k) * analysis.group(gid).unit_width) % channel_block("cpu"))
            rows.append({
                "model": name, "round_to": 8, "align": a, "align_channels": resolved,
                "flops_reduction": flops_ratio, "original_ms": float(np.median(ms[:, 0])),
                "pruned_ms": float(np.median(ms[:, j])), "original_min_ms": float(ms[:, 0].min()),
                "pruned_min_ms": float(ms[:, j].min()), "original_p90_ms": float(np.percentile(ms[:, 0], 90)),
                "pruned_p90_ms": float(np.percentile(ms[:, j], 90)),
                "speedup": speedup, "speedup_repeats": [float(v) for v in speedups[:, j - 1]],
                "rounds": [len(t) for t in repeats], "speedup_of_medians": float(np.median(ms[:, 0]) / np.median(ms[:, j])),
                "speedup_of_minima": float(ms[:, 0].min() / ms[:, j].min()),
                "speedup_over_flops_ratio": speedup / flops_ratio,
                "groups_off_channel_block": off_block, "pruned_groups": len(reached.plan.keep),
                "kept_l2_score_share": kept_score_share(analysis, scores, reached.plan),
                "timing_seconds": time.time() - t0})
            print(json.dumps(rows[-1]))
    meta = {"threads": args.threads, "size": args.size, "runs": args.runs, "seconds": args.seconds,
            "repeat": args.repeat, "warmup": 10, "spinning": args.spin,
            "statistic": "median over repeats of the median over rounds of the paired ratio", "onnxruntime": ort.__version__,
            "machine": platform.machine(), "cpus": os.cpu_count(), "channel_block": channel_block("cpu"),
            "loadavg_before": load_before, "loadavg_after": os.getloadavg()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**meta, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
