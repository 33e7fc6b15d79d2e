"""Compare a pruned model with its original in onnxruntime: shapes, outputs, cost, latency."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxprune.errors import ModelLoadError
from onnxprune.flops import model_cost
from onnxprune.prepare import prepare
from onnxprune.runtime import Feeds, latency_ms, random_inputs, run


def load_inputs(path: str | os.PathLike[str], model: onnx.ModelProto) -> Feeds:
    """Feeds from an .npz whose arrays are named after the model's inputs."""
    p = Path(path)
    if not p.exists():
        raise ModelLoadError(f"{p}: inputs file not found")
    try:
        data = dict(np.load(p))
    except (ValueError, OSError) as exc:
        raise ModelLoadError(f"{p}: not a readable .npz file ({exc})") from exc
    names = [vi.name for vi in model.graph.input if vi.name not in {t.name for t in model.graph.initializer}]
    missing = [n for n in names if n not in data]
    if missing:
        raise ModelLoadError(f"{p}: no array for model input(s) {', '.join(missing)} (has: {', '.join(data)})")
    return {n: data[n] for n in names}


def verify(original: onnx.ModelProto, pruned: onnx.ModelProto, feeds: Feeds | None = None, *,
           labels: np.ndarray | None = None, runs: int = 30, provider: str = "CPUExecutionProvider"
           ) -> dict[str, Any]:
    """Run both models on the same inputs and report agreement, cost and latency.

    Both models are normalised in place first (see ``onnxprune.prepare``)."""
    for m in (original, pruned):
        prepare(m)  # count Constant-node weights as parameters, fresh shapes for MACs
    feeds = feeds if feeds is not None else random_inputs(original)
    out_o, out_p = run(original, feeds), run(pruned, feeds)
    outputs: dict[str, Any] = {}
    for name, a in out_o.items():
        b = out_p.get(name)
        entry: dict[str, Any] = {"original_shape": list(a.shape), "pruned_shape": None if b is None else list(b.shape)}
        if b is not None and a.shape == b.shape:
            diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
            entry["max_abs_diff"] = float(diff.max()) if diff.size else 0.0
            entry["mean_abs_diff"] = float(diff.mean()) if diff.size else 0.0
            entry["top1_agreement"] = (float((a.argmax(-1) == b.argmax(-1)).mean())
                                       if a.ndim == 2 and a.shape[-1] > 1 else None)
        else:
            entry["max_abs_diff"] = float("nan")
        outputs[name] = entry
    co, cp = model_cost(original), model_cost(pruned)
    lat_o = latency_ms(original, feeds, runs=runs, provider=provider)
    lat_p = latency_ms(pruned, feeds, runs=runs, provider=provider)
    report: dict[str, Any] = {
        "original": {"params": co.params, "macs": co.macs, "latency_ms": lat_o},
        "pruned": {"params": cp.params, "macs": cp.macs, "latency_ms": lat_p},
        "outputs": outputs,
        "provider": provider,
        "macs_ratio": cp.macs / co.macs if co.macs else 1.0,
        "speedup": lat_o["p50"] / lat_p["p50"] if lat_p["p50"] else float("nan"),
    }
    if labels is not None:
        first = next(iter(out_o))
        report["accuracy"] = {
            "original": float((out_o[first].argmax(-1) == labels).mean()),
            "pruned": float((out_p[first].argmax(-1) == labels).mean()),
        }
    return report
