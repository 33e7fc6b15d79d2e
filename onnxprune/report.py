"""Human-readable tables (rich) for analysis, pruning and verification results."""

from __future__ import annotations

from collections.abc import Mapping

from rich.console import Console
from rich.table import Table

from onnxprune.analysis import Analysis
from onnxprune.flops import Cost


def _human(n: float) -> str:
    for unit in ("", "K", "M", "G", "T"):
        if abs(n) < 1000:
            return f"{n:.1f}{unit}" if unit else f"{n:.0f}"
        n /= 1000
    return f"{n:.1f}P"


def analysis_tables(analysis: Analysis, console: Console, *, show_all: bool = False) -> None:
    groups = Table(title="Channel groups", show_lines=False)
    for col in ("group", "channels", "units", "params", "MACs", "prunable", "producers", "why not"):
        groups.add_column(col, overflow="fold")
    for g in analysis.groups:
        if not show_all and not g.prunable and not g.producers:
            continue
        groups.add_row(
            g.id, str(g.channels), str(g.size), _human(g.params), _human(g.macs),
            "[green]yes[/]" if g.prunable else "[red]no[/]", ", ".join(g.producers[:3]) +
            (f" (+{len(g.producers) - 3})" if len(g.producers) > 3 else ""), "; ".join(g.reasons[:2]),
        )
    console.print(groups)
    if analysis.blocked:
        blocked = Table(title="Blocked regions (channels left alone)")
        for col in ("node", "op", "channels", "reason"):
            blocked.add_column(col, overflow="fold")
        for b in sorted(analysis.blocked, key=lambda b: (b.node or "", b.reason)):
            blocked.add_row(b.node or "-", b.op or "-", str(b.channels), b.reason)
        console.print(blocked)
    s = analysis.summary()
    console.print(
        f"[bold]{s['prunable_groups']}[/] of {s['groups']} groups prunable; "
        f"{s['prunable_channels']} of {s['channels']} channels; "
        f"{_human(s['params'])} parameters, {_human(s['macs'])} MACs")


def cost_table(before: Cost, after: Cost, console: Console, title: str = "Pruning result") -> None:
    t = Table(title=title)
    for col in ("", "before", "after", "ratio"):
        t.add_column(col)
    for label, b, a in (("parameters", before.params, after.params), ("MACs", before.macs, after.macs)):
        t.add_row(label, _human(b), _human(a), f"{a / b:.3f}" if b else "-")
    console.print(t)


def verify_table(report: Mapping, console: Console) -> None:
    t = Table(title=f"Verification ({report.get('provider', 'CPUExecutionProvider')})")
    for col in ("", "original", "pruned"):
        t.add_column(col)
    o, p = report["original"], report["pruned"]
    t.add_row("parameters", _human(o["params"]), _human(p["params"]))
    t.add_row("MACs", _human(o["macs"]), _human(p["macs"]))
    t.add_row("latency p50 (ms)", f"{o['latency_ms']['p50']:.3f}", f"{p['latency_ms']['p50']:.3f}")
    t.add_row("latency p90 (ms)", f"{o['latency_ms']['p90']:.3f}", f"{p['latency_ms']['p90']:.3f}")
    for name, out in report["outputs"].items():
        t.add_row(f"output {name} shape", str(out["original_shape"]), str(out["pruned_shape"]))
        t.add_row(f"output {name} max |diff|", "", f"{out['max_abs_diff']:.4g}")
        if out.get("top1_agreement") is not None:
            t.add_row(f"output {name} top-1 agreement", "", f"{out['top1_agreement']:.3f}")
    if report.get("accuracy"):
        acc = report["accuracy"]
        t.add_row("accuracy", f"{acc['original']:.4f}", f"{acc['pruned']:.4f}")
    console.print(t)
    console.print(f"speedup (p50): [bold]{report['speedup']:.2f}x[/] for a MACs ratio of {report['macs_ratio']:.3f}")
