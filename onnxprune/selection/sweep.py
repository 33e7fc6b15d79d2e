"""Prune at several budgets and measure each result: the accuracy (or agreement) vs latency
vs FLOPs curve a user picks an operating point from.

Scores are computed once; for every target, ``plan_to_budget`` allocates, ``apply_plan``
rewrites a copy, and the pruned model is evaluated on the same samples as the original
(accuracy with labels, else top-1 agreement and cosine similarity with the original's
outputs) and timed with ``onnxprune.selection.latency.benchmark``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxprune.analysis import Analysis
from onnxprune.errors import SelectionError

log = logging.getLogger(__name__)

RANDOM_SAMPLES = 32


def _quality(out_o: Mapping[str, np.ndarray], out_p: Mapping[str, np.ndarray],
             labels: np.ndarray | None) -> dict[str, Any]:
    from onnxprune.verify.compare import accuracy, compare_outputs

    first = next(iter(out_o))
    cmp = compare_outputs(out_o[first], out_p.get(first))
    q: dict[str, Any] = {"top1_agreement": cmp.get("top1_agreement"), "top5_agreement": cmp.get("top5_agreement"),
                         "cosine": cmp.get("cosine"), "max_abs_diff": cmp.get("max_abs_diff")}
    if labels is not None and out_p.get(first) is not None:
        acc = accuracy(out_p[first], labels)
        q["accuracy"] = acc["top1"]
        if "top5" in acc:
            q["accuracy_top5"] = acc["top5"]
    else:
        q["accuracy"] = None
    return q


def sweep(model: onnx.ModelProto, analysis: Analysis, targets: Sequence[float], *, metric: str = "flops",
          criterion: str = "l2", scores: Mapping[str, np.ndarray] | None = None,
          eval_feeds: Mapping[str, np.ndarray] | None = None, labels: np.ndarray | None = None,
          latency_feeds: Mapping[str, np.ndarray] | None = None, round_to: int = 1, min_channels: int = 1,
          max_ratio: float = 1.0, align: int = 1, provider: str = "CPUExecutionProvider", threads: int = 0,
          runs: int = 20, warmup: int = 5, save_dir: str | os.PathLike[str] | None = None,
          progress: Callable[[int, int], None] | None = None,
          counted_at: Mapping[str, Sequence[int]] | None = None) -> dict[str, Any]:
    """Prune ``model`` (prepared, analysed) to every budget in ``targets`` (fractions of the
    original or absolute counts of ``metric``) and measure each result. Returns the sweep as a
    JSON-serialisable dict: ``original`` and one entry per target in ``points`` (the original
    first, with ``target`` None); a budget that cannot be reached gets an ``error``. ``counted_at``:
    static input shapes to count MACs at (``compress.counting_shapes``; as the analysis did);
    ``align``: kept counts rounded down to this channel block where legal (prune's default)."""
    from onnxprune.api import apply_plan, plan_to_budget, score_channels
    from onnxprune.selection.budget import Budget
    from onnxprune.analysis.flops import cost_at
    from onnxprune.graph import static_batch
    from onnxprune.selection.latency import benchmark, feeds_for_batch, full_provider
    from onnxprune.io.modelio import save_model
    from onnxprune.runtime.session import random_inputs
    from onnxprune.verify.compare import run_batched

    if not targets:
        raise SelectionError("give at least one target")
    provider = full_provider(provider)
    scores = scores if scores is not None else score_channels(model, analysis, criterion)
    if eval_feeds is None:  # random samples (agreement only), several so that top-1 agreement means something
        draws = [random_inputs(model, seed=i) for i in range(RANDOM_SAMPLES)]
        eval_feeds = {k: np.concatenate([d[k] for d in draws]) for k in draws[0]}
    eval_feeds = dict(eval_feeds)
    if latency_feeds is None:
        latency_feeds = feeds_for_batch(model, eval_feeds, static_batch(model) or 1) or random_inputs(model)
    out_o = run_batched(model, eval_feeds)
    cost_o = cost_at(model, counted_at)
    lat_o = benchmark(model, latency_feeds, provider=provider, threads=threads, warmup=warmup, runs=runs)
    out_dir = Path(save_dir) if save_dir is not None else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)

    def point(m: onnx.ModelProto, outs: Mapping[str, np.ndarray], lat: dict[str, float]) -> dict[str, Any]:
        c = cost_at(m, counted_at)
        return {"params": c.params, "macs": c.macs, "flops": c.flops,
                "params_ratio": c.params / cost_o.params if cost_o.params else 1.0,
                "flops_ratio": c.flops / cost_o.flops if cost_o.flops else 1.0,
                "latency_ms": lat, "speedup": lat_o["p50"] / lat["p50"] if lat["p50"] else None,
                **_quality(out_o, outs, labels)}

    points = [{"target": None, "achieved_ratio": None, **point(model, out_o, lat_o)}]
    for i, t in enumerate(targets):
        entry: dict[str, Any] = {"target": float(t)}
        try:
            reached = plan_to_budget(model, analysis, Budget(metric, float(t)), criterion=criterion, scores=scores,
                                     round_to=round_to, min_channels=min_channels, max_ratio=max_ratio, align=align)
        except SelectionError as exc:
            entry["error"] = str(exc)
            log.info("target %g: %s", t, exc)
            points.append(entry)
            continue
        pruned = apply_plan(model, analysis, reached.plan).model
        lat = benchmark(pruned, latency_feeds, provider=provider, threads=threads, warmup=warmup, runs=runs)
        entry.update(achieved=reached.achieved, achieved_ratio=reached.achieved / reached.original,
                     removed_channels=reached.plan.removed_channels(analysis),
                     **point(pruned, run_batched(pruned, eval_feeds), lat))
        if out_dir is not None:
            path = out_dir / f"{metric}_{t:g}.onnx"
            save_model(pruned, path)
            reached.plan.save(path.with_suffix(".plan.json"))
            entry["model_path"] = str(path)
        points.append(entry)
        if progress is not None:
            progress(i + 1, len(targets))
    return {
        "metric": metric, "criterion": criterion, "round_to": round_to, "min_channels": min_channels,
        "max_ratio": max_ratio, "provider": provider, "threads": threads, "runs": runs, "warmup": warmup,
        "latency_batch": int(len(next(iter(latency_feeds.values())))) if latency_feeds else 1,
        "samples": int(len(next(iter(eval_feeds.values())))) if eval_feeds else 0,
        "labels": labels is not None, "fingerprint": analysis.fingerprint,
        "original": points[0], "points": points,
    }


def write_sweep(result: Mapping[str, Any], out_dir: str | os.PathLike[str], *, plot: bool = True
                ) -> dict[str, Path]:
    """``sweep.json``, ``sweep.md`` (table) and ``sweep.png`` (plot, when matplotlib is there) in
    ``out_dir``; returns the paths written."""
    import json

    from onnxprune.io.fileutil import write_text_atomic
    from onnxprune.report.tables import write_sweep_report

    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    paths = {"json": write_text_atomic(d / "sweep.json", json.dumps(result, indent=1))}
    md, png = write_sweep_report(result, d / "sweep.md", plot=plot)
    paths["report"] = md
    if png is not None:
        paths["plot"] = png
    return paths
