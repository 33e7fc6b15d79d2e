"""Human-readable tables (rich) for analysis, pruning and verification results."""

from __future__ import annotations

import base64
import html
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

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
            (f" (+{len(g.producers) - 3})" if len(g.producers) > 3 else ""), "; ".join(g.why_not[:2]),
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


SHORT_PROVIDER = {"CPUExecutionProvider": "CPU", "CUDAExecutionProvider": "CUDA",
                  "TensorrtExecutionProvider": "TensorRT"}

Section = tuple[str, list[str], list[list[str]]]


def _num(v: Any, fmt: str = ".4g") -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and math.isnan(v):
        return "n/a"
    return format(v, fmt)


def _ratio(a: float | None, b: float | None) -> str:
    return f"{b / a:.3f}" if a and b is not None else "-"


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def verify_sections(report: Mapping) -> list[Section]:
    """The verification report as (title, header, rows) tables, shared by every output format."""
    o, p = report["original"], report["pruned"]
    cost = [["parameters", _human(o["params"]), _human(p["params"]), _ratio(o["params"], p["params"])],
            ["FLOPs (2 x MACs)", _human(o.get("flops", 2 * o["macs"])), _human(p.get("flops", 2 * p["macs"])),
             _ratio(o.get("flops", 2 * o["macs"]), p.get("flops", 2 * p["macs"]))]]
    if "size_bytes" in o:
        cost.append(["size on disk", _bytes(o["size_bytes"]), _bytes(p["size_bytes"]),
                     _ratio(o["size_bytes"], p["size_bytes"])])
    sections: list[Section] = [("Cost", ["", "original", "pruned", "pruned / original"], cost)]
    lat_rows = []
    latency_o = o.get("latency") or {report.get("provider", "CPUExecutionProvider"): {"-": o["latency_ms"]}}
    latency_p = p.get("latency") or {report.get("provider", "CPUExecutionProvider"): {"-": p["latency_ms"]}}
    for prov, per_batch in latency_o.items():
        for b, lo in per_batch.items():
            lp = latency_p.get(prov, {}).get(b)
            if lp is None:
                continue
            lat_rows.append([SHORT_PROVIDER.get(prov, prov), str(b), _num(lo["p50"], ".3f"), _num(lo["p90"], ".3f"),
                             _num(lp["p50"], ".3f"), _num(lp["p90"], ".3f"),
                             f"{lo['p50'] / lp['p50']:.2f}x" if lp["p50"] else "-"])
    for note in report.get("latency_skipped", ()):
        lat_rows.append(["-", note, "", "", "", "", ""])
    sections.append(("Latency (ms)", ["provider", "batch", "original p50", "original p90", "pruned p50",
                                      "pruned p90", "speedup"], lat_rows))
    out_rows = []
    for name, out in report["outputs"].items():
        out_rows.append([str(name), f"{out['original_shape']} / {out['pruned_shape']}",
                         _num(out.get("max_abs_diff")), _num(out.get("mean_abs_diff")), _num(out.get("cosine"), ".5f"),
                         _num(out.get("top1_agreement"), ".3f"), _num(out.get("top5_agreement"), ".3f")])
    sections.append(("Outputs (pruned vs original)", ["output", "shape (original / pruned)", "max |diff|",
                                                      "mean |diff|", "cosine", "top-1 agreement", "top-5 agreement"],
                     out_rows))
    if report.get("accuracy"):
        acc = report["accuracy"]
        rows = [["top-1", f"{acc['original']:.4f}", f"{acc['pruned']:.4f}", f"{acc['pruned'] - acc['original']:+.4f}"]]
        if "top5_original" in acc:
            rows.append(["top-5", f"{acc['top5_original']:.4f}", f"{acc['top5_pruned']:.4f}",
                         f"{acc['top5_pruned'] - acc['top5_original']:+.4f}"])
        sections.append(("Accuracy", ["", "original", "pruned", "change"], rows))
    return sections


def verify_summary(report: Mapping) -> str:
    flops = report.get("flops_ratio", report.get("macs_ratio", float("nan")))
    text = f"speedup (p50): {report['speedup']:.2f}x for a FLOPs ratio of {flops:.3f}"
    if flops:
        text += f" (ideal {1 / flops:.2f}x)"
    return text


def verify_table(report: Mapping, console: Console) -> None:
    providers = ", ".join(SHORT_PROVIDER.get(p, p) for p in report.get("providers", [report.get("provider", "CPU")]))
    for title, header, rows in verify_sections(report):
        t = Table(title=f"Verification: {title}" + (f" ({providers})" if title.startswith("Latency") else ""))
        for col in header:
            t.add_column(col)
        for row in rows:
            t.add_row(*row)
        console.print(t)
    summary = verify_summary(report)
    head, _, tail = summary.partition(": ")
    speed, _, rest = tail.partition(" for")
    console.print(f"{head}: [bold]{speed}[/] for{rest}")


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def esc(v: str) -> str:
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(esc(h) or " " for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_CSS = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:0.5em 0 1.5em}th,td{border:1px solid #ccc;padding:4px 10px;"
        "text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}"
        "img{max-width:100%}code{background:#f3f3f3;padding:1px 4px}")


def render_document(title: str, meta: Sequence[str], sections: Sequence[Section], summary: str, fmt: str,
                    png: bytes | None = None, png_name: str | None = None, note: str | None = None) -> str:
    """A Markdown (png linked by ``png_name``) or HTML (png embedded) document of tables."""
    if fmt == "html":
        parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                 f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>",
                 "<ul>" + "".join(f"<li>{html.escape(m)}</li>" for m in meta) + "</ul>",
                 f"<p><b>{html.escape(summary)}</b></p>"]
        for name, header, rows in sections:
            parts.append(f"<h2>{html.escape(name)}</h2>{_html_table(header, rows)}")
        if png:
            parts.append("<h2>Plots</h2><img alt='plots' src='data:image/png;base64,"
                         + base64.b64encode(png).decode() + "'>")
        if note:
            parts.append(f"<p><i>{html.escape(note)}</i></p>")
        parts.append("</body></html>\n")
        return "\n".join(parts)
    parts = [f"# {title}", "", *[f"- {m}" for m in meta], "", f"**{summary}**", ""]
    for name, header, rows in sections:
        parts += [f"## {name}", "", _md_table(header, rows), ""]
    if png_name:
        parts += ["## Plots", "", f"![plots]({png_name})", ""]
    if note:
        parts += [f"_{note}_", ""]
    return "\n".join(parts)


def _report_format(path: Path) -> str:
    ext = path.suffix.lower()
    if ext in (".html", ".htm"):
        return "html"
    if ext in (".md", ".markdown"):
        return "md"
    from onnxprune.errors import SelectionError

    raise SelectionError(f"{path}: report must end in .md or .html")


def _write_document(path: str | os.PathLike[str], title: str, meta: Sequence[str], sections: Sequence[Section],
                    summary: str, png_fn: Any, plot: bool, notes: Sequence[str] = ()) -> tuple[Path, Path | None]:
    """Write the document and, for Markdown, its PNG beside it (``<stem>.png``)."""
    from onnxprune.fileutil import write_text_atomic
    from onnxprune.plots import _write, have_matplotlib

    out = Path(path)
    fmt = _report_format(out)
    png, png_path, note = None, None, None
    if plot and have_matplotlib():
        png = png_fn()
        if fmt == "md":
            png_path = _write(png, out.with_suffix(".png"))
    elif plot:
        note = "plots omitted: matplotlib is not installed (pip install 'onnxprune[report]')"
    note = "; ".join([*notes, *([note] if note else [])]) or None
    write_text_atomic(out, render_document(title, meta, sections, summary, fmt, png=png,
                                           png_name=png_path.name if png_path else None, note=note))
    return out, png_path


def write_verify_report(report: Mapping, path: str | os.PathLike[str], *, plot: bool = True,
                        names: tuple[str, str] | None = None) -> tuple[Path, Path | None]:
    """Markdown (.md, plots in ``<stem>.png`` beside it) or HTML (.html, plots embedded) report;
    returns the report's path and the PNG's (None when embedded or not drawn)."""
    from onnxprune.plots import verify_png

    meta = []
    if names:
        meta += [f"original: `{names[0]}`", f"pruned: `{names[1]}`"]
    meta += [f"providers: {', '.join(SHORT_PROVIDER.get(p, p) for p in report.get('providers', []))}",
             f"samples compared: {report.get('samples', '-')}; timed runs: {report.get('runs', '-')} "
             f"after {report.get('warmup', '-')} warm-up; intra-op threads: {report.get('threads') or 'default'}"]
    if _report_format(Path(path)) == "html":
        meta = [m.replace("`", "") for m in meta]
    return _write_document(path, "onnxprune verification report", meta, verify_sections(report),
                           verify_summary(report), lambda: verify_png(report), plot)


# -- sweeps ---------------------------------------------------------------------------------


def sweep_sections(sweep: Mapping) -> list[Section]:
    has_acc = any(p.get("accuracy") is not None for p in sweep["points"])
    header = ["target", "FLOPs (ratio)", "params (ratio)", "accuracy" if has_acc else "top-1 agr.", "cosine",
              "p50 ms", "speedup"]
    rows = []
    for pt in sweep["points"]:
        if pt.get("error"):
            rows.append([_num(pt.get("target"), "g"), "unreachable", *[""] * (len(header) - 2)])
            continue
        quality = pt.get("accuracy") if has_acc else pt.get("top1_agreement")
        rows.append([
            "original" if pt.get("target") is None else f"{pt['target']:g}",
            f"{_human(pt['flops'])} ({pt['flops_ratio']:.3f})", f"{_human(pt['params'])} ({pt['params_ratio']:.3f})",
            _num(quality, ".4f"), _num(pt.get("cosine"), ".4f"), _num(pt["latency_ms"]["p50"], ".3f"),
            f"{pt['speedup']:.2f}x" if pt.get("speedup") else "-",
        ])
    return [("Sweep", header, rows)]


def sweep_notes(sweep: Mapping) -> list[str]:
    return [f"target {pt['target']:g}: {pt['error']}" for pt in sweep["points"] if pt.get("error")]


def sweep_table(sweep: Mapping, console: Console) -> None:
    for title, header, rows in sweep_sections(sweep):
        t = Table(title=f"{title}: {sweep.get('criterion', '')}, {sweep.get('metric', 'flops')} budgets, "
                        f"latency on {SHORT_PROVIDER.get(sweep.get('provider', ''), sweep.get('provider', ''))}")
        for col in header:
            t.add_column(col)
        for row in rows:
            t.add_row(*row)
        console.print(t)
    for note in sweep_notes(sweep):
        console.print(f"[yellow]{note}[/]")


def write_sweep_report(sweep: Mapping, path: str | os.PathLike[str], *, plot: bool = True
                       ) -> tuple[Path, Path | None]:
    from onnxprune.plots import sweep_png

    meta = [f"model: {sweep.get('model', '-')}", f"criterion: {sweep.get('criterion')}; metric: {sweep.get('metric')}; "
            f"round-to: {sweep.get('round_to')}",
            f"evaluated on {sweep.get('samples', '-')} samples ({sweep.get('eval', '-')}); latency: "
            f"{SHORT_PROVIDER.get(sweep.get('provider', ''), sweep.get('provider'))}, batch "
            f"{sweep.get('latency_batch', '-')}, {sweep.get('runs', '-')} runs"]
    summary = "quality and latency against FLOPs; pick the point with the best trade-off"
    return _write_document(path, "onnxprune sweep", meta, sweep_sections(sweep), summary,
                           lambda: sweep_png(sweep), plot, notes=sweep_notes(sweep))
