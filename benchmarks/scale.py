"""Scale benchmark: a synthetic transformer-sized model (~1.5 GB, external data) through
analyze + prune + save, timed and memory-measured in a fresh subprocess.

    python -m benchmarks.scale [--hidden 1024] [--layers 32] [--ratio 0.3] [--out benchmarks/results/scale.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

WORKER = """
import sys, time, json


def peak_mb():  # VmHWM is this process image's own peak (ru_maxrss also counts the parent before exec)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024

t0 = time.perf_counter()
import onnxprune
from onnxprune.analysis import analyze
from onnxprune.io.modelio import save_model
t_import = time.perf_counter()
model = onnxprune.load(sys.argv[1]); t_load = time.perf_counter()
analysis = analyze(model); t_analyze = time.perf_counter()
plan = onnxprune.plan_by_ratio(model, analysis, ratio=float(sys.argv[3])); t_plan = time.perf_counter()
result = onnxprune.apply_plan(model, analysis, plan, inplace=True); t_rewrite = time.perf_counter()
save_model(result.model, sys.argv[2], external_data=True); t_save = time.perf_counter()
print(json.dumps({"import_s": t_import - t0, "load_s": t_load - t_import, "analyze_s": t_analyze - t_load,
                  "plan_s": t_plan - t_analyze, "rewrite_s": t_rewrite - t_plan, "save_s": t_save - t_rewrite,
                  "total_s": t_save - t_import, "params_before": result.before.params,
                  "params_after": result.after.params, "nodes": len(model.graph.node),
                  "groups": len(analysis.groups), "prunable_groups": len(analysis.prunable_groups),
                  "peak_rss_mb": peak_mb()}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--ratio", type=float, default=0.3)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/scale.json"))
    args = ap.parse_args()
    from models.synthetic import transformer_like

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "transformer.onnx"
        t = time.perf_counter()
        transformer_like(src, hidden=args.hidden, layers=args.layers)
        build_s = time.perf_counter() - t
        size_mb = sum(p.stat().st_size for p in Path(tmp).iterdir()) / 2**20
        out = subprocess.run([sys.executable, "-c", WORKER, str(src), str(Path(tmp) / "pruned.onnx"),
                              str(args.ratio)], check=True, capture_output=True, text=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        out_mb = sum(p.stat().st_size for p in Path(tmp).glob("pruned*")) / 2**20
    result.update({"model_mb": size_mb, "pruned_mb": out_mb, "build_s": build_s, "hidden": args.hidden,
                   "layers": args.layers, "ratio": args.ratio,
                   "peak_over_model": result["peak_rss_mb"] / size_mb})
    table = Table(title=f"Scale: transformer-like, hidden {args.hidden}, {args.layers} layers")
    table.add_column("metric")
    table.add_column("value")
    for key, value in result.items():
        table.add_row(key, f"{value:.2f}" if isinstance(value, float) else str(value))
    Console().print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
