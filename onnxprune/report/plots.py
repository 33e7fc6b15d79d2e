"""PNG plots for verification reports and sweeps (matplotlib, optional: ``onnxprune[report]``).

Figures are drawn with ``matplotlib.figure.Figure`` directly (no pyplot, no global backend
switch), so importing this module never changes a user's interactive matplotlib state.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from pathlib import Path

from onnxprune.io.fileutil import write_bytes_atomic
from typing import Any

from onnxprune.errors import RuntimeUnavailableError

SHORT = {"CPUExecutionProvider": "CPU", "CUDAExecutionProvider": "CUDA", "TensorrtExecutionProvider": "TensorRT"}


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _figure(width: float, height: float):  # noqa: ANN202
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise RuntimeUnavailableError("plots need matplotlib: pip install 'onnxprune[report]'") from exc
    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _png(fig) -> bytes:  # noqa: ANN001
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _write(data: bytes, path: str | os.PathLike[str]) -> Path:
    return write_bytes_atomic(path, data)


def verify_png(report: Mapping[str, Any]) -> bytes:
    """Two panels: p50 latency against batch size for both models on every provider (p90 as
    error bars), and the histogram of pruned - original output differences."""
    fig = _figure(11, 4)
    ax_lat, ax_hist = fig.subplots(1, 2)
    for prov in report.get("providers", [report.get("provider")]):
        for which, style in (("original", "o-"), ("pruned", "s--")):
            per_batch = report[which].get("latency", {}).get(prov, {})
            if not per_batch:
                continue
            bs = sorted(per_batch, key=int)
            p50 = [per_batch[b]["p50"] for b in bs]
            p90 = [per_batch[b]["p90"] for b in bs]
            ax_lat.errorbar([int(b) for b in bs], p50, yerr=[[0] * len(bs), [h - m for h, m in zip(p90, p50)]],
                            fmt=style, capsize=3, label=f"{which} ({SHORT.get(prov, prov)})")
    ax_lat.set_xlabel("batch size")
    ax_lat.set_ylabel("latency p50 (ms), bar to p90")
    ax_lat.set_title(f"Latency: speedup {report.get('speedup', float('nan')):.2f}x, "
                     f"MACs ratio {report.get('flops_ratio', float('nan')):.3f}")
    if len({int(b) for prov in report["original"].get("latency", {}).values() for b in prov}) > 1:
        from matplotlib.ticker import FormatStrFormatter, NullFormatter

        ax_lat.set_xscale("log", base=2)
        ax_lat.set_yscale("log")
        ax_lat.xaxis.set_major_formatter(FormatStrFormatter("%d"))
        ax_lat.yaxis.set_major_formatter(FormatStrFormatter("%.3g"))
        ax_lat.yaxis.set_minor_formatter(NullFormatter())
    ax_lat.grid(alpha=0.3)
    ax_lat.legend(fontsize=8)
    drawn = False
    for name, out in report.get("outputs", {}).items():
        hist = out.get("diff_histogram")
        if not hist:
            continue
        edges, counts = hist["edges"], hist["counts"]
        ax_hist.stairs(counts, edges, fill=True, alpha=0.5, label=str(name))
        drawn = True
    ax_hist.set_xlabel("pruned - original (output value)")
    ax_hist.set_ylabel("count")
    ax_hist.set_title("Output differences")
    if drawn:
        ax_hist.set_yscale("symlog")
        ax_hist.legend(fontsize=8)
    else:
        ax_hist.text(0.5, 0.5, "no comparable outputs", ha="center", va="center", transform=ax_hist.transAxes)
    ax_hist.grid(alpha=0.3)
    return _png(fig)


def sweep_png(sweep: Mapping[str, Any]) -> bytes:
    """Quality (accuracy, or top-1 agreement / cosine with the original) and p50 latency
    against the FLOPs kept, one point per budget: the curve to pick an operating point from."""
    fig = _figure(8, 4.5)
    ax = fig.subplots()
    points = [p for p in sweep.get("points", []) if not p.get("error")]
    points.sort(key=lambda p: p["flops_ratio"])
    x = [100.0 * p["flops_ratio"] for p in points]
    if points and points[0].get("accuracy") is not None:
        ax.plot(x, [p["accuracy"] for p in points], "o-", color="tab:blue", label="accuracy (top-1)")
        ax.set_ylabel("accuracy")
    else:
        ax.plot(x, [p.get("top1_agreement") if p.get("top1_agreement") is not None else float("nan")
                    for p in points], "o-", color="tab:blue", label="top-1 agreement")
        ax.plot(x, [p.get("cosine", float("nan")) for p in points], "^:", color="tab:cyan", label="cosine")
        ax.set_ylabel("agreement with the original")
    ax.set_xlabel(f"MACs kept (% of {sweep.get('original', {}).get('flops', 0) / 2e6:.1f} M MACs)")
    ax.grid(alpha=0.3)
    ax2 = ax.twinx()
    ax2.plot(x, [p["latency_ms"]["p50"] for p in points], "s--", color="tab:red", label="latency p50")
    ax2.set_ylabel(f"latency p50 (ms, {SHORT.get(sweep.get('provider', ''), sweep.get('provider', ''))})",
                   color="tab:red")
    for p, xi in zip(points, x):
        if p.get("target") is not None:
            ax.annotate(f"{p['target']:g}", (xi, ax.get_ylim()[0]), textcoords="offset points", xytext=(0, 3),
                        ha="center", fontsize=7, color="grey")
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=8, loc="lower right")
    ax.set_title(f"Sweep over {sweep.get('metric', 'flops')} budgets ({sweep.get('criterion', '')})")
    return _png(fig)


def write_verify_plot(report: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    return _write(verify_png(report), path)


def write_sweep_plot(sweep: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    return _write(sweep_png(sweep), path)
