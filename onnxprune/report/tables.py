"""Human-readable tables (rich) for analysis, pruning and verification results.

Every cost is given in MACs (multiply-accumulates; FLOPs = 2 x MACs), named in each table.
User text (paths, node and output names, messages) is escaped: brackets are printed as they are.
"""

from __future__ import annotations

import base64
import html
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from onnxprune.analysis import Analysis
from onnxprune.analysis.flops import Cost


def _human(n: float) -> str:
    for unit in ("", "K", "M", "G", "T"):
        if abs(n) < 1000:
            return f"{n:.1f}{unit}" if unit else f"{n:.0f}"
        n /= 1000
    return f"{n:.1f}P"


def middle_ellipsis(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters in the middle ("/features/fe…/conv.0/Conv"), whole
    when it fits: names keep their start and their end, never broken across lines."""
    if len(text) <= width:
        return text
    if width <= 1:
        return "\u2026"[:width]
    head = width // 2
    return text[:head] + "\u2026" + text[len(text) - (width - 1 - head):]


def _wrap(text: str, width: int, indent: int) -> list[str]:
    """Words wrapped to ``width`` (the first line keeps ``text``'s leading blanks, later lines
    are indented by ``indent``); a word longer than a line is cut in the middle, never split."""
    import textwrap

    room = max(8, width - indent)
    text = re.sub(rf"\S{{{room + 1},}}", lambda m: middle_ellipsis(m.group(0), room), text)
    return textwrap.wrap(text, width=width, subsequent_indent=" " * indent, drop_whitespace=True,
                         break_long_words=False, break_on_hyphens=False) or [""]


def _label(g: Any, width: int) -> str:
    """A group by its first producer node (its id when it has none), '(+N)' for the others."""
    more = f" (+{len(g.producers) - 1})" if len(g.producers) > 1 else ""
    return middle_ellipsis(g.producers[0] if g.producers else g.id, max(1, width - len(more))) + more


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def analysis_summary(analysis: Analysis, console: Console, *, name: str | None = None, top: int = 10) -> None:
    """The analysis in a few lines that fit the console (80 columns and up): what is prunable,
    the model's MACs and parameters, why the other groups are blocked, and the prunable
    groups that account for the most MACs by producer node (a name too long for the line is
    cut in the middle, never broken). ``analysis_tables`` prints every group."""
    width = max(60, console.width)
    s = analysis.summary()
    blocked = [g for g in analysis.groups if not g.prunable]
    lines: list[Text] = [Text.assemble(("Channel groups", "bold"), f" of {name}" if name else "")]
    rows = [("prunable", (f"{s['prunable_groups']:,} of {_plural(s['groups'], 'group')}, "
                          f"{s['prunable_channels']:,} of {_plural(s['channels'], 'channel')}")),
            ("blocked", f"{_plural(len(blocked), 'group')}, "
                        f"{_plural(sum(g.channels for g in blocked), 'channel')}"
                        + (f" ({_plural(len(analysis.blocked), 'blocked node')})" if analysis.blocked else "")),
            ("accounted", f"{_human(s['macs'])} MACs, {_human(s['params'])} parameters")]
    if analysis.fused_ops:  # onnxruntime's fused ops the analysis understood
        rows.append(("fused ops", ", ".join(f"{op.split('::')[-1]} x{n}" for op, n in sorted(analysis.fused_ops.items()))))
    for label, text in rows:
        for line in _wrap(f"  {label:<11}{text}", width, 13):
            lines.append(Text(line))
    reasons: dict[str, list[int]] = {}
    for g in blocked:
        entry = reasons.setdefault(g.why_not[0] if g.why_not else "-", [0, 0])
        entry[0] += 1
        entry[1] += g.channels
    if reasons:
        lines.append(Text("Why groups are blocked", style="bold"))
        ranked = sorted(reasons.items(), key=lambda kv: (-kv[1][1], -kv[1][0], kv[0]))
        for reason, (n, ch) in ranked[:5]:
            for line in _wrap(f"  {_plural(n, 'group')}, {_plural(ch, 'channel')}: {reason}", width, 4):
                lines.append(Text(line))
        if len(ranked) > 5:
            lines.append(Text(f"  ... and {_plural(len(ranked) - 5, 'other reason')}"))
    prunable = sorted(analysis.prunable_groups, key=lambda g: (-g.macs, g.id))
    if prunable:
        shown = prunable[:top]
        lines.append(Text.assemble(("Largest prunable groups", "bold"),
                                   f" by MACs ({len(shown)} of {len(prunable)})"))
        name_w = width - 2 - 2 * 3 - 8 - 7 - 7
        name_w = min(name_w, max(len("producer"), *(len(_label(g, 10**6)) for g in shown)))
        lines.append(Text(f"  {'producer':<{name_w}}  {'channels':>8}  {'MACs':>7}  {'params':>7}", style="dim"))
        for g in shown:
            lines.append(Text(f"  {_label(g, name_w):<{name_w}}  {g.channels:>8,}  "
                              f"{_human(g.macs):>7}  {_human(g.params):>7}"))
    for line in _wrap("Every group and blocked node: --wide (--all adds groups with no producer); all of it: --json",
                      width, 0):
        lines.append(Text(line, style="dim"))
    for line in lines:
        console.print(line, soft_wrap=True, highlight=False)


def _print_wide(console: Console, table: Table) -> None:
    """A table at its natural width (up to ``WIDE_MAX`` columns), wider than the console if it
    needs: names stay whole on one line (for a file, a pager with -S, or a wide terminal)."""
    from rich.segment import Segments

    natural = console.measure(table, options=console.options.update_width(WIDE_MAX)).maximum
    width = max(console.width, min(natural, WIDE_MAX))
    # console.print caps a width at the console's: render at ours, print the segments uncropped
    console.print(Segments(console.render(table, console.options.update_width(width))), crop=False)


WIDE_MAX = 400


def analysis_tables(analysis: Analysis, console: Console, *, show_all: bool = False) -> None:
    """Every channel group and blocked node as tables (``analyze --wide``), as wide as they
    need: numbers, headers and names are not split (beyond ``WIDE_MAX`` columns names fold)."""
    groups = Table(title="Channel groups", show_lines=False)
    for col in ("group", "channels", "units", "params", "MACs", "prunable", "producers", "why not"):
        folds = col in ("group", "producers", "why not")
        groups.add_column(col, overflow="fold" if folds else "ellipsis", no_wrap=not folds,
                          justify="left" if folds or col == "prunable" else "right")
    for g in analysis.groups:
        if not show_all and not g.prunable and not g.producers:
            continue
        groups.add_row(
            escape(g.id), str(g.channels), str(g.size), _human(g.params), _human(g.macs),
            "[green]yes[/]" if g.prunable else "[red]no[/]", escape(", ".join(g.producers[:3]) +
            (f" (+{len(g.producers) - 3})" if len(g.producers) > 3 else "")), escape("; ".join(g.why_not[:2])),
        )
    _print_wide(console, groups)
    if analysis.blocked:
        blocked = Table(title="Blocked regions (channels left alone)")
        for col in ("node", "op", "channels", "reason"):
            blocked.add_column(col, overflow="fold", no_wrap=col == "channels",
                               justify="right" if col == "channels" else "left")
        for b in sorted(analysis.blocked, key=lambda b: (b.node or "", b.reason)):
            blocked.add_row(escape(b.node or "-"), escape(b.op or "-"), str(b.channels), escape(b.reason))
        _print_wide(console, blocked)
    s = analysis.summary()
    console.print(
        f"[bold]{s['prunable_groups']}[/] of {s['groups']} groups prunable; "
        f"{s['prunable_channels']} of {s['channels']} channels; "
        f"{_human(s['params'])} parameters, {_human(s['macs'])} MACs")


def cost_table(before: Cost, after: Cost, console: Console, title: str = "Pruning result") -> None:
    """Parameters and MACs before and after (the title is printed as given, brackets included)."""
    t = Table(title=escape(title))
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
            ["MACs", _human(o["macs"]), _human(p["macs"]), _ratio(o["macs"], p["macs"])]]
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
    if report.get("language_model"):
        sections.append(_language_model_section(report["language_model"]))
    return sections


def _language_model_section(lm: Mapping) -> Section:
    """Perplexity over the token windows and prompt throughput, original vs pruned."""
    o, p = lm["original"], lm["pruned"]
    mask = f", padding ignored ({lm['attention_mask']})" if lm.get("attention_mask") else ""
    label = (f"perplexity ({lm['windows']} windows of {lm['window_length']}, "
             f"{lm['tokens_scored']:,} tokens predicted{mask})")
    rows = [[label, _num(o["perplexity"]), _num(p["perplexity"]), _ratio(o["perplexity"], p["perplexity"])]]
    thr = lm.get("throughput")
    if thr:
        where = SHORT_PROVIDER.get(thr["provider"], thr["provider"])
        label = f"tokens per second ({where}, batch {thr['batch']} x {lm['window_length']} tokens)"
        rows.append([label, _num(o["tokens_per_s"], ".1f"), _num(p["tokens_per_s"], ".1f"),
                     _ratio(o["tokens_per_s"], p["tokens_per_s"])])
    return ("Language model", ["", "original", "pruned", "pruned / original"], rows)


def verify_summary(report: Mapping) -> str:
    macs = report.get("macs_ratio", report.get("flops_ratio", float("nan")))
    text = f"speedup (p50): {report['speedup']:.2f}x for a MACs ratio of {macs:.3f}"
    if macs:
        text += f" (ideal {1 / macs:.2f}x)"
    return text


def verify_table(report: Mapping, console: Console) -> None:
    providers = ", ".join(SHORT_PROVIDER.get(p, p) for p in report.get("providers", [report.get("provider", "CPU")]))
    for title, header, rows in verify_sections(report):
        t = Table(title=escape(f"Verification: {title}" + (f" ({providers})" if title.startswith("Latency") else "")))
        for col in header:
            t.add_column(escape(col))
        for row in rows:
            t.add_row(*map(escape, row))
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
    from onnxprune.errors import OptionError

    raise OptionError(f"{path}: report must end in .md or .html")


def _write_document(path: str | os.PathLike[str], title: str, meta: Sequence[str], sections: Sequence[Section],
                    summary: str, png_fn: Any, plot: bool, notes: Sequence[str] = ()) -> tuple[Path, Path | None]:
    """Write the document and, for Markdown, its PNG beside it (``<stem>.png``)."""
    from onnxprune.io.fileutil import write_text_atomic
    from onnxprune.report.plots import _write, have_matplotlib

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
    from onnxprune.report.plots import verify_png

    meta = []
    if names:
        meta += [f"original: `{names[0]}`", f"pruned: `{names[1]}`"]
    random = " (random inputs)" if report.get("inputs") == "random" else ""
    meta += [f"providers: {', '.join(SHORT_PROVIDER.get(p, p) for p in report.get('providers', []))}",
             (f"samples compared: {report.get('samples', '-')}{random}; timed runs: {report.get('runs', '-')} "
              f"after {report.get('warmup', '-')} warm-up; intra-op threads: {report.get('threads') or 'default'}")]
    checks = report.get("checks")
    if checks:
        meta.append(tolerance_line(checks))
    if _report_format(Path(path)) == "html":
        meta = [m.replace("`", "") for m in meta]
    return _write_document(path, "onnxprune verification report", meta, verify_sections(report),
                           verify_summary(report), lambda: verify_png(report), plot)


def tolerance_line(checks: Mapping) -> str:
    """One line for a verdict of ``verify.check_tolerances``: what was asked, what failed."""
    asked = ", ".join(f"{label} {checks[key]:g}" for key, label in (
        ("atol", "atol"), ("rtol", "rtol"), ("min_cosine", "min cosine"), ("min_top1", "min top-1 agreement"))
        if checks.get(key) is not None)
    failures = checks.get("failures") or []
    return f"tolerances ({asked}): " + ("passed" if not failures else "FAILED: " + "; ".join(failures))


# -- sweeps ---------------------------------------------------------------------------------


def sweep_sections(sweep: Mapping) -> list[Section]:
    has_acc = any(p.get("accuracy") is not None for p in sweep["points"])
    header = ["target", "MACs (ratio)", "params (ratio)", "accuracy" if has_acc else "top-1 agr.", "cosine",
              "p50 ms", "speedup"]
    rows = []
    for pt in sweep["points"]:
        if pt.get("error"):
            rows.append([_num(pt.get("target"), "g"), "unreachable", *[""] * (len(header) - 2)])
            continue
        quality = pt.get("accuracy") if has_acc else pt.get("top1_agreement")
        rows.append([
            "original" if pt.get("target") is None else f"{pt['target']:g}",
            f"{_human(pt.get('macs', pt['flops'] / 2))} ({pt['flops_ratio']:.3f})",
            f"{_human(pt['params'])} ({pt['params_ratio']:.3f})",
            _num(quality, ".4f"), _num(pt.get("cosine"), ".4f"), _num(pt["latency_ms"]["p50"], ".3f"),
            f"{pt['speedup']:.2f}x" if pt.get("speedup") else "-",
        ])
    return [("Sweep", header, rows)]


def sweep_notes(sweep: Mapping) -> list[str]:
    return [f"target {pt['target']:g}: {pt['error']}" for pt in sweep["points"] if pt.get("error")]


def sweep_table(sweep: Mapping, console: Console) -> None:
    for title, header, rows in sweep_sections(sweep):
        provider = SHORT_PROVIDER.get(sweep.get("provider", ""), sweep.get("provider", ""))
        t = Table(title=escape(f"{title}: {sweep.get('criterion', '')}, {sweep.get('metric', 'flops')} budgets, "
                               f"latency on {provider}"))
        for col in header:
            t.add_column(escape(col))
        for row in rows:
            t.add_row(*map(escape, row))
        console.print(t)
    for note in sweep_notes(sweep):
        console.print(f"[yellow]{escape(note)}[/]")


def write_sweep_report(sweep: Mapping, path: str | os.PathLike[str], *, plot: bool = True
                       ) -> tuple[Path, Path | None]:
    from onnxprune.report.plots import sweep_png

    meta = [f"model: {sweep.get('model', '-')}", f"criterion: {sweep.get('criterion')}; metric: {sweep.get('metric')}; "
            f"round-to: {sweep.get('round_to')}",
            f"evaluated on {sweep.get('samples', '-')} samples ({sweep.get('eval', '-')}); latency: "
            f"{SHORT_PROVIDER.get(sweep.get('provider', ''), sweep.get('provider'))}, batch "
            f"{sweep.get('latency_batch', '-')}, {sweep.get('runs', '-')} runs"]
    summary = "quality and latency against the MACs kept; pick the point with the best trade-off"
    return _write_document(path, "onnxprune sweep", meta, sweep_sections(sweep), summary,
                           lambda: sweep_png(sweep), plot, notes=sweep_notes(sweep))
