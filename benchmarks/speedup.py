"""Measured onnxruntime CPU speedup at 2x fewer FLOPs (round_to 8) vs the FLOPs ratio.

    python -m benchmarks.speedup [--models resnet50,mobilenetv2] [--size 224] [--threads 2]

Each model: the zoo's torch definition exported to ONNX (BatchNorm kept), pruned by l2 to
half its FLOPs with channel counts in multiples of 8, then original and pruned timed
alternately in onnxruntime (all graph optimisations on, fixed threads, batch 1).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def timed(sessions, feeds, runs: int) -> list[float]:  # noqa: ANN001
    times = [[] for _ in sessions]
    for _ in range(5):
        for s in sessions:
            s.run(None, feeds)
    for _ in range(runs):
        for i, s in enumerate(sessions):
            t = time.perf_counter()
            s.run(None, feeds)
            times[i].append(time.perf_counter() - t)
    return [float(np.median(t)) * 1e3 for t in times]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", default="resnet50,mobilenetv2")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/speedup.json"))
    args = ap.parse_args()
    import onnxruntime as ort

    from models import export_onnx
    from onnxprune.analysis import analyze
    from onnxprune.api import apply_plan, load, plan_to_budget
    from onnxprune.budget import Budget

    rows = []
    for name in args.models.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            path = export_onnx(name, Path(tmp) / "m.onnx", input_shapes={"input": (1, 3, args.size, args.size)})
            model = load(path)
        analysis = analyze(model)
        reached = plan_to_budget(model, analysis, Budget("flops", 0.5), round_to=8)
        pruned = apply_plan(model, analysis, reached.plan).model
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = args.threads, 1
        sessions = [ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
                    for m in (model, pruned)]
        feeds = {"input": np.random.default_rng(0).standard_normal((1, 3, args.size, args.size)).astype(np.float32)}
        base, small = timed(sessions, feeds, args.runs)
        flops_ratio = reached.original / reached.achieved
        rows.append({"model": name, "flops_reduction": flops_ratio, "original_ms": base, "pruned_ms": small,
                     "speedup": base / small, "speedup_over_flops_ratio": base / small / flops_ratio})
        print(json.dumps(rows[-1]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"threads": args.threads, "size": args.size, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
