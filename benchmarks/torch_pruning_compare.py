"""onnxprune vs Torch-Pruning 1.6 on the same ResNet-50 / MobileNetV2.

    python -m benchmarks.torch_pruning_compare [--models resnet50,mobilenetv2]
        [--out benchmarks/results/torch_pruning.json] [--repeat 5] [--markdown FILE]

Both tools prune 50% of the channels of every prunable group by L2 weight magnitude with
round_to=8, per group (no global ranking), leaving the final classifier's outputs alone:

* Torch-Pruning builds its DependencyGraph on the torch module and prunes with
  ``GroupMagnitudeImportance(p=2, group_reduction="sum", normalizer=None)`` (within a
  group this ranks exactly as the default mean/mean: both are positive per-group scalings),
  ``ignored_layers=[classifier]``; the pruned module is exported to ONNX like the original.
* onnxprune prunes the exported ONNX, loaded with ``onnxprune.load(path, mapped=True)``
  (weights stay in the memory-mapped file until the rewrite; BatchNormalization kept: ``TrainingMode.PRESERVE``,
  so the Conv weights are the torch weights, not BN-folded ones) with
  ``plan_by_ratio(ratio=0.5, criterion="l2", round_to=8)``, in two variants: ``--ignore``
  on the classifier's Gemm (as one would write it on the command line) and without it
  (the classifier's outputs are a graph output, which onnxprune keeps anyway); see
  docs/benchmarks.md for why the two differ.

Each tool runs in its own fresh subprocess, so its wall time and peak RSS are its own;
``--repeat`` rounds run the tools interleaved, and the median and the minimum over the
rounds are reported (the time target is judged on the minima: on a shared machine noise
only ever adds time). The parent then compares the results (kept channel counts and
identities per Conv, parameters and MACs by ``onnxprune.analysis.flops``, output difference in
onnxruntime with optimisations off) and times the original and pruned models in
onnxruntime (CPU, optimisations on, batch 1, 2 threads: the sessions of
``onnxprune.runtime.session.latency_ms``, interleaved run by run). Diagnostic re-plans (not timed)
attribute every difference to its cause: they re-run onnxprune with Torch-Pruning's
rounding and/or its importance (depthwise Conv weights left out).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "torch_pruning.json"
VARIANTS = {
    "ignore_fc": "onnxprune --ignore (classifier Gemm)",
    "no_ignore": "onnxprune (no --ignore)",
}
TP = "Torch-Pruning 1.6"


# --------------------------------------------------------------------------- subprocesses
def run_worker(kind: str, args: dict[str, Any], workdir: Path) -> dict[str, Any]:
    out = workdir / f"worker-{kind}-{time.monotonic_ns()}.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks._workers", kind, json.dumps(args), str(out)],
                          cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"worker '{kind}' failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    result = json.loads(out.read_text())
    out.unlink()
    return result


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The last run's result with the median of the timings and of the peak memory over
    ``runs`` (each a fresh interpreter), ``min_total_s``, and every run's numbers under ``runs``."""
    res = dict(runs[-1])
    res["total_s"] = statistics.median(r["total_s"] for r in runs)
    res["min_total_s"] = min(r["total_s"] for r in runs)
    res["phases_s"] = {k: statistics.median(r["phases_s"][k] for r in runs) for k in runs[-1]["phases_s"]}
    res["memory"] = {k: int(statistics.median(r["memory"][k] for r in runs)) for k in runs[-1]["memory"]}
    if "phase_peak_increase" in res:
        res["phase_peak_increase"] = {k: int(statistics.median(r["phase_peak_increase"][k] for r in runs))
                                      for k in runs[-1]["phase_peak_increase"]}
    if "export_s" in res:
        res["export_s"] = statistics.median(r["export_s"] for r in runs)
    res["runs"] = [{"total_s": r["total_s"], "phases_s": r["phases_s"], "peak_increase": r["memory"]["peak_increase"],
                    "peak_rss": r["memory"]["peak_rss"], "loadavg_1min": r.get("loadavg_1min"),
                    "busy_before_round": r.get("busy_before_round")} for r in runs]
    return res


def busy_processes(threshold: float = 10.0) -> list[str]:
    """Other processes that used more than ``threshold`` % of a core over the last second."""
    def ticks() -> dict[int, tuple[int, str]]:
        out = {}
        for d in Path("/proc").iterdir():
            if not d.name.isdigit() or int(d.name) == os.getpid():
                continue
            try:
                stat = (d / "stat").read_text()
                fields = stat[stat.rindex(")") + 2:].split()
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
                comm = stat[stat.index("(") + 1:stat.rindex(")")]
                out[int(d.name)] = (int(fields[11]) + int(fields[12]), cmd or comm)
            except (OSError, ValueError, IndexError):
                continue
        return out

    try:
        hz = os.sysconf("SC_CLK_TCK")
        before = ticks()
        time.sleep(1.0)
        after = ticks()
    except OSError:
        return []
    busy = []
    for pid, (t, cmd) in after.items():
        if pid in before and 100.0 * (t - before[pid][0]) / hz > threshold:
            busy.append(f"{pid} {100.0 * (t - before[pid][0]) / hz:.0f}% {cmd[:100]}")
    return busy


def wait_idle(max_wait: float, log) -> list[str]:  # noqa: ANN001
    """Wait up to ``max_wait`` s until no other process is busy; returns those still busy."""
    deadline = time.monotonic() + max_wait
    busy = busy_processes()
    if busy and max_wait > 0:
        log(f"  waiting up to {max_wait:.0f} s for other processes to finish: {'; '.join(busy)}")
        while busy and time.monotonic() < deadline:
            time.sleep(4.0)
            busy = busy_processes()
    return busy


def loadavg() -> float:
    try:
        with open("/proc/loadavg") as f:
            return float(f.read().split()[0])
    except OSError:
        return float("nan")


# --------------------------------------------------------------------------- comparison helpers
def convs(path: Path | str) -> dict[str, dict[str, Any]]:
    """Conv nodes by node name: weight, group, and the running mean of the BatchNormalization
    that reads the Conv's output (it identifies each output channel of the original model)."""
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {t.name: t for t in model.graph.initializer}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    out: dict[str, dict[str, Any]] = {}
    for n in model.graph.node:
        if n.op_type != "Conv":
            continue
        w = numpy_helper.to_array(inits[n.input[1]])
        group = next((a.i for a in n.attribute if a.name == "group"), 1)
        bn = next((r for r in readers.get(n.output[0], []) if r.op_type == "BatchNormalization"), None)
        mean = numpy_helper.to_array(inits[bn.input[3]]) if bn is not None and bn.input[3] in inits else None
        out[n.name] = {"weight_name": n.input[1], "w": w, "group": group, "mean": mean}
    return out


def kept_indices(orig_mean: np.ndarray | None, pruned_mean: np.ndarray | None) -> list[int] | None:
    """Original output-channel indices of a pruned Conv, found by matching BN running means
    (random, so unique); None when they cannot be matched uniquely."""
    if orig_mean is None or pruned_mean is None:
        return None
    pos: dict[bytes, int] = {}
    for i, v in enumerate(orig_mean.astype(np.float32)):
        key = v.tobytes()
        if key in pos:
            return None
        pos[key] = i
    idx = [pos.get(v.tobytes()) for v in pruned_mean.astype(np.float32)]
    return None if any(i is None for i in idx) else idx


def compare_convs(orig: dict, ours: dict, theirs: dict) -> dict[str, Any]:
    """Per Conv: output channel counts, kept channel identities, weight equality."""
    rows = []
    for name, o in orig.items():
        a, b = ours.get(name), theirs.get(name)
        if a is None or b is None:
            rows.append({"conv": name, "missing": True})
            continue
        ka, kb = kept_indices(o["mean"], a["mean"]), kept_indices(o["mean"], b["mean"])
        same_shape = a["w"].shape == b["w"].shape
        rows.append({
            "conv": name, "weight": o["weight_name"], "depthwise": o["group"] > 1 and o["w"].shape[1] == 1,
            "orig_out": int(o["w"].shape[0]), "ours_out": int(a["w"].shape[0]), "tp_out": int(b["w"].shape[0]),
            "ours_in": int(a["w"].shape[1]), "tp_in": int(b["w"].shape[1]),
            "same_out_count": a["w"].shape[0] == b["w"].shape[0],
            "same_kept": (ka == kb) if ka is not None and kb is not None else None,
            "common_kept": len(set(ka) & set(kb)) if ka is not None and kb is not None else None,
            "identical_weight": bool(same_shape and np.array_equal(a["w"], b["w"])),
        })
    ok = [r for r in rows if not r.get("missing")]
    summary = {
        "convs": len(rows), "missing": len(rows) - len(ok),
        "same_out_count": sum(r["same_out_count"] for r in ok),
        "same_kept": sum(bool(r["same_kept"]) for r in ok),
        "kept_unknown": sum(r["same_kept"] is None for r in ok),
        "identical_weight": sum(r["identical_weight"] for r in ok),
    }
    diffs = [r for r in rows if r.get("missing") or not (r["same_kept"] and r["identical_weight"])]
    return {"summary": summary, "differences": diffs}


def cost(path: Path) -> dict[str, int]:
    import onnxprune
    from onnxprune.analysis.flops import model_cost

    c = model_cost(onnxprune.load(str(path)))
    return {"params": c.params, "macs": c.macs}


def outputs(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    from onnxprune.runtime.session import run

    res = run(onnx.load(str(path)), feeds, optimize=False)  # graph optimisations off
    return next(iter(res.values()))


def latency_interleaved(paths: dict[str, Path], feeds: dict[str, np.ndarray], *, runs: int, warmup: int,
                        threads: int) -> dict[str, dict[str, float]]:
    """ORT CPU latency of several models, interleaved run by run (A B C A B C ...).

    Each model gets exactly the session ``onnxprune.runtime.session.latency_ms`` uses
    (``runtime.session(optimize=True, threads=...)``: all graph optimisations, intra-op
    threads fixed, one inter-op thread) and is timed the same way (warm-up, then
    perf_counter around ``sess.run``); only the order differs: alternating models run by run
    means a busy moment of a shared machine slows every model alike, so the p50s stay
    comparable where model-after-model timing (``latency_ms`` per model) would not.
    """
    from onnxprune.runtime.session import session

    sessions = {k: session(onnx.load(str(p)), optimize=True, threads=threads) for k, p in paths.items()}
    for sess in sessions.values():
        for _ in range(warmup):
            sess.run(None, feeds)
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(runs):
        for k, sess in sessions.items():
            t = time.perf_counter()
            sess.run(None, feeds)
            times[k].append((time.perf_counter() - t) * 1e3)
    out = {}
    for k, ts in times.items():
        arr = np.array(ts)
        out[k] = {"p50": float(np.percentile(arr, 50)), "p90": float(np.percentile(arr, 90)),
                  "min": float(arr.min()), "mean": float(arr.mean()), "runs": len(ts)}
    return out


# --------------------------------------------------------------------------- diagnostics
def diagnostic_plan(orig_path: Path, out_path: Path, *, ratio: float, round_to: int, exclude_depthwise: bool,
                    round_down: bool) -> dict[str, Any]:
    """Re-plan the unignored model with Torch-Pruning's conventions switched on one at a time:
    ``exclude_depthwise`` leaves depthwise Conv weights out of the L2 score (Torch-Pruning's
    GroupMagnitudeImportance only scores prune_conv_* / prune_linear_* / BN members, and a
    depthwise Conv's member is prune_depthwise_conv_*); ``round_down`` keeps
    ``int(C*(1-ratio))`` rounded *down* to a multiple of round_to (Torch-Pruning's
    ``_round_to``) instead of onnxprune's round-up."""
    import onnxprune
    from onnxprune.analysis import analyze
    from onnxprune.graph import GraphIndex, attr
    from onnxprune.plan import Plan

    model = onnxprune.load(str(orig_path))
    analysis = analyze(model)
    index = GraphIndex(model)
    acc = np.zeros(len(analysis.roots), dtype=np.float64)
    for ref in analysis.params:
        if not ref.is_weight:
            continue
        node = index.nodes[ref.node]
        w = index.const(node.input[ref.slot])
        if w is None:
            continue
        if exclude_depthwise and node.op_type == "Conv" and int(attr(node, "group", 1)) > 1 and w.shape[1] == 1:
            continue
        w = np.moveaxis(np.asarray(w, dtype=np.float64), ref.axis, 0).reshape(w.shape[ref.axis], -1)
        np.add.at(acc, analysis.roots[ref.elems], (w**2).sum(axis=1))
    keep: dict[str, tuple[int, ...]] = {}
    for g in analysis.prunable_groups:
        s = acc[g.units]
        if round_down:
            k = int(g.size * (1.0 - ratio))
            k -= k % round_to
            if k == 0:  # Torch-Pruning would remove every channel; its group check refuses that
                continue
        else:
            k = g.size - math.floor(g.size * ratio)
            k = min(g.size, math.ceil(k / round_to) * round_to)
        if k < g.size:
            order = np.lexsort((np.arange(g.size), -s))
            keep[g.id] = tuple(sorted(order[:k].tolist()))
    plan = Plan(fingerprint=analysis.fingerprint, keep=keep, sizes={gid: analysis.group(gid).size for gid in keep},
                criterion="l2-diagnostic")
    result = onnxprune.apply_plan(model, analysis, plan, inplace=True)
    onnxprune.save_model(result.model, str(out_path))
    return {"exclude_depthwise": exclude_depthwise, "round_down": round_down}


# --------------------------------------------------------------------------- per model
def bench_model(name: str, args: argparse.Namespace, workdir: Path, log) -> dict[str, Any]:  # noqa: ANN001
    shape = [1, 3, args.input_size, args.input_size]
    orig = workdir / f"{name}.onnx"
    log(f"[{name}] exporting {shape} (BatchNormalization kept)")
    exp = run_worker("export", {"model": name, "path": str(orig), "width": args.width, "shape": shape}, workdir)
    if not exp["ops"].get("BatchNormalization"):
        raise RuntimeError(f"{name}: the export has no BatchNormalization node (BN was folded); comparison unfair")
    common = {"ratio": args.ratio, "round_to": args.round_to}
    res: dict[str, Any] = {"model": name, "input_shape": shape, "width": args.width, "export": exp,
                           "model_bytes": exp["file_bytes"], "onnxprune": {}}
    paths: dict[str, Path] = {"original": orig}
    jobs: dict[str, tuple[str, dict[str, Any]]] = {}
    for variant in args.variants:
        paths[variant] = workdir / f"{name}.onnxprune.{variant}.onnx"
        jobs[variant] = ("onnxprune", {**common, "path": str(orig), "out": str(paths[variant]), "criterion": "l2",
                                       "ignore": [], "ignore_classifier": variant == "ignore_fc"})
    paths["torch_pruning"] = tp_out = workdir / f"{name}.torch_pruning.onnx"
    jobs["torch_pruning"] = ("torch_pruning", {**common, "model": name, "width": args.width, "shape": shape,
                                               "out": str(tp_out), "threads": args.torch_threads})
    # Interleaved (A B C A B C ...), each run a fresh interpreter: a busy moment of the machine
    # then slows every tool alike instead of one tool's whole series.
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in jobs}
    for i in range(args.repeat):
        busy = wait_idle(args.wait_idle, log)
        log(f"[{name}] round {i + 1}/{args.repeat}: {', '.join(jobs)} (load average {loadavg():.2f})")
        for key, (kind, wargs) in jobs.items():
            r = run_worker(kind, wargs, workdir)
            r["loadavg_1min"] = loadavg()
            r["busy_before_round"] = busy
            runs[key].append(r)
    for variant in args.variants:
        res["onnxprune"][variant] = summarize(runs[variant])
    res["torch_pruning"] = summarize(runs["torch_pruning"])

    log(f"[{name}] comparing")
    res["cost"] = {k: cost(p) for k, p in paths.items()}
    c_orig, c_tp = convs(orig), convs(tp_out)
    res["channels"] = {v: compare_convs(c_orig, convs(paths[v]), c_tp) for v in args.variants}
    feeds = {"input": np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
    y_tp = outputs(tp_out, feeds)
    res["output_diff"] = {"output_max_abs": float(np.abs(y_tp).max())}
    for v in args.variants:
        res["output_diff"][v] = float(np.abs(outputs(paths[v], feeds) - y_tp).max())

    diags = {}
    for key, exclude_dw, round_down in (("tp_rounding", False, True), ("tp_importance", True, False),
                                        ("tp_rounding_and_importance", True, True)):
        out = workdir / f"{name}.diag.{key}.onnx"
        info = diagnostic_plan(orig, out, ratio=args.ratio, round_to=args.round_to, exclude_depthwise=exclude_dw,
                               round_down=round_down)
        cmp = compare_convs(c_orig, convs(out), c_tp)
        info.update({"channels": cmp["summary"], "cost": cost(out),
                     "output_diff": float(np.abs(outputs(out, feeds) - y_tp).max())})
        diags[key] = info
        if not args.keep:
            out.unlink()
    res["diagnostics"] = diags

    busy = wait_idle(args.wait_idle, log)
    log(f"[{name}] ORT latency ({len(paths)} models interleaved run by run, {args.latency_runs} runs each, "
        f"{args.threads} threads)")
    res["latency_ms"] = latency_interleaved(paths, feeds, runs=args.latency_runs, warmup=10, threads=args.threads)
    res["latency_busy_before"] = busy

    tp_total = res["torch_pruning"]["total_s"]
    targets = {}
    for v in args.variants:
        o = res["onnxprune"][v]
        targets[v] = {
            "time_ratio": o["total_s"] / tp_total,
            "time_ratio_of_minima": o["min_total_s"] / res["torch_pruning"]["min_total_s"],
            # judged on the minima: on a shared machine noise only ever adds time (both medians are reported)
            "time_quarter_of_tp": o["min_total_s"] <= res["torch_pruning"]["min_total_s"] / 4,
            "peak_increase_over_model": o["memory"]["peak_increase"] / res["model_bytes"],
            "peak_increase_le_2x_model": o["memory"]["peak_increase"] <= 2 * res["model_bytes"],
            "peak_rss_over_model": o["memory"]["peak_rss"] / res["model_bytes"],
            "params_equal_tp": res["cost"][v]["params"] == res["cost"]["torch_pruning"]["params"],
            "macs_equal_tp": res["cost"][v]["macs"] == res["cost"]["torch_pruning"]["macs"],
        }
    res["targets"] = targets
    return res


# --------------------------------------------------------------------------- reporting
def source_digest() -> str:
    """sha256 over onnxprune's sources (onnxprune/): ties the numbers to the code measured."""
    import hashlib

    h = hashlib.sha256()
    for d in ("onnxprune",):
        for f in sorted((ROOT / d).rglob("*.py")):
            h.update(str(f.relative_to(ROOT)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def machine() -> dict[str, Any]:
    def ver(pkg: str) -> str | None:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return None

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    mem_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    return {
        "cpu": cpu, "cores": os.cpu_count(), "memory_gib": mem_gib, "onnxprune_source_sha256": source_digest(),
        "platform": platform.platform(), "python": platform.python_version(),
        "versions": {p: ver(p) for p in ("onnxprune", "torch", "torch-pruning", "onnx", "onnxruntime", "numpy")},
    }


def _mb(b: float) -> str:
    return f"{b / 2**20:.0f} MiB"


def rows_for(res: dict[str, Any], variants: list[str]) -> tuple[list[str], list[list[str]]]:
    """The side-by-side table of one model: header and rows of strings."""
    tp = res["torch_pruning"]
    header = ["", *[VARIANTS[v] for v in variants], TP]
    rows: list[list[str]] = []

    def row(label: str, per_variant, tp_value: str) -> None:  # noqa: ANN001
        rows.append([label, *[per_variant(v) for v in variants], tp_value])

    op = res["onnxprune"]
    row("pruning wall time: median (min)", lambda v: f"{op[v]['total_s']:.2f} s ({op[v]['min_total_s']:.2f} s)",
        f"{tp['total_s']:.2f} s ({tp['min_total_s']:.2f} s)")
    row("  phases", lambda v: " + ".join(f"{k} {t:.2f}" for k, t in op[v]["phases_s"].items()),
        " + ".join(f"{k} {t:.2f}" for k, t in tp["phases_s"].items()))
    row("  ONNX export of the result", lambda v: "(the save above)", f"{tp['export_s']:.2f} s")
    row("  time / Torch-Pruning's: medians (minima)",
        lambda v: f"{res['targets'][v]['time_ratio']:.2f}x ({res['targets'][v]['time_ratio_of_minima']:.2f}x)", "1x")
    row("peak RSS of the subprocess", lambda v: _mb(op[v]["memory"]["peak_rss"]), _mb(tp["memory"]["peak_rss"]))
    row("  increase over post-import RSS", lambda v: f"{_mb(op[v]['memory']['peak_increase'])} "
        f"({res['targets'][v]['peak_increase_over_model']:.2f}x model)",
        f"{_mb(tp['memory']['peak_increase'])} ({tp['memory']['peak_increase'] / res['model_bytes']:.2f}x model; "
        f"{_mb(tp['memory']['peak_increase_over_model'])} over the built module)")
    row("  peak increase by phase",
        lambda v: ", ".join(f"{k} {_mb(b)}" for k, b in op[v]["phase_peak_increase"].items()), "-")
    c = res["cost"]
    row("params after (orig " + f"{c['original']['params']:,})", lambda v: f"{c[v]['params']:,}",
        f"{c['torch_pruning']['params']:,}")
    row("MACs after (orig " + f"{c['original']['macs'] / 1e9:.3f} G)", lambda v: f"{c[v]['macs'] / 1e9:.4f} G",
        f"{c['torch_pruning']['macs'] / 1e9:.4f} G")
    ch = res["channels"]
    n = lambda v, k: f"{ch[v]['summary'][k]}/{ch[v]['summary']['convs']}"  # noqa: E731
    row("Convs with TP's output count", lambda v: n(v, "same_out_count"), "-")
    row("Convs keeping TP's channels", lambda v: n(v, "same_kept"), "-")
    row("Convs with identical weights", lambda v: n(v, "identical_weight"), "-")
    row("max |output - TP output|", lambda v: f"{res['output_diff'][v]:.3g}",
        f"(max |output| {res['output_diff']['output_max_abs']:.3g})")
    lat = res["latency_ms"]
    fmt = lambda k: f"{lat[k]['p50']:.1f} / {lat[k]['p90']:.1f} ms (min {lat[k]['min']:.1f})"  # noqa: E731
    row(f"ORT latency p50 / p90 (orig {fmt('original')})", fmt, fmt("torch_pruning"))
    return header, rows


def diag_rows(res: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["onnxprune (no --ignore) re-planned with", "same kept", "identical W", "params", "MACs",
              "max |out - TP|"]
    labels = {"tp_rounding": "TP's rounding (kept count rounded down)",
              "tp_importance": "TP's importance (depthwise W not scored)",
              "tp_rounding_and_importance": "both"}
    tp_cost = res["cost"]["torch_pruning"]
    rows = []
    for key, d in res["diagnostics"].items():
        s = d["channels"]
        rows.append([labels[key], f"{s['same_kept']}/{s['convs']}", f"{s['identical_weight']}/{s['convs']}",
                     f"{d['cost']['params']:,}" + (" (= TP)" if d["cost"]["params"] == tp_cost["params"] else ""),
                     f"{d['cost']['macs']:,}" + (" (= TP)" if d["cost"]["macs"] == tp_cost["macs"] else ""),
                     f"{d['output_diff']:.3g}"])
    return header, rows


def target_rows(res: dict[str, Any], variants: list[str]) -> tuple[list[str], list[list[str]]]:
    header = ["target", *[VARIANTS[v] for v in variants]]
    t = res["targets"]
    yes = lambda b: "met" if b else "NOT met"  # noqa: E731
    rows = [
        ["time <= 1/4 of Torch-Pruning's", *[f"{yes(t[v]['time_quarter_of_tp'])} ({t[v]['time_ratio_of_minima']:.2f}x "
                                             f"of the minimum, {t[v]['time_ratio']:.2f}x of the median)"
                                             for v in variants]],
        ["peak memory <= 2x model size", *[f"{yes(t[v]['peak_increase_le_2x_model'])} (increase "
                                           f"{t[v]['peak_increase_over_model']:.2f}x, process peak "
                                           f"{t[v]['peak_rss_over_model']:.2f}x)" for v in variants]],
        ["params == Torch-Pruning's", *[yes(t[v]["params_equal_tp"]) for v in variants]],
        ["MACs == Torch-Pruning's", *[yes(t[v]["macs_equal_tp"]) for v in variants]],
    ]
    return header, rows


def difference_rows(res: dict[str, Any], variant: str, limit: int = 12) -> tuple[list[str], list[list[str]]]:
    header = ["Conv", "orig out", "onnxprune out", "TP out", "common kept", "identical W"]
    rows = []
    for r in res["channels"][variant]["differences"][:limit]:
        if r.get("missing"):
            rows.append([r["conv"], "missing", "", "", "", ""])
            continue
        rows.append([r["conv"] + (" (dw)" if r["depthwise"] else ""), str(r["orig_out"]), str(r["ours_out"]),
                     str(r["tp_out"]), "?" if r["common_kept"] is None else str(r["common_kept"]),
                     "yes" if r["identical_weight"] else "no"])
    return header, rows


def print_tables(results: list[dict[str, Any]], variants: list[str]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(width=200)

    def show(title: str, header: list[str], rows: list[list[str]]) -> None:
        table = Table(title=escape(title), show_lines=False)
        for h in header:
            table.add_column(escape(h), overflow="fold")
        for r in rows:
            table.add_row(*map(escape, r))
        console.print(table)

    for res in results:
        m = res["model"]
        shape = "x".join(map(str, res["input_shape"]))
        show(f"{m} {shape}: prune 50% L2, round_to 8, classifier kept (model {_mb(res['model_bytes'])})",
             *rows_for(res, variants))
        show(f"{m}: targets", *target_rows(res, variants))
        if "no_ignore" in variants:
            n = len(res["channels"]["no_ignore"]["differences"])
            if n:
                show(f"{m}: Convs that differ from Torch-Pruning, onnxprune (no --ignore) ({n}, first 12)",
                     *difference_rows(res, "no_ignore"))
        show(f"{m}: diagnostic re-plans (untimed)", *diag_rows(res))


def markdown(results: list[dict[str, Any]], variants: list[str]) -> str:
    def md(header: list[str], rows: list[list[str]]) -> str:
        esc = lambda s: s.replace("|", "\\|")  # noqa: E731
        lines = ["| " + " | ".join(map(esc, header)) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(map(esc, r)) + " |" for r in rows]
        return "\n".join(lines)

    parts = []
    for res in results:
        m = res["model"]
        parts.append(f"### {m} ({'x'.join(map(str, res['input_shape']))}, model {_mb(res['model_bytes'])})\n")
        parts.append(md(*rows_for(res, variants)) + "\n")
        parts.append(md(*target_rows(res, variants)) + "\n")
        if "no_ignore" in variants and res["channels"]["no_ignore"]["differences"]:
            n = len(res["channels"]["no_ignore"]["differences"])
            parts.append(f"Convs that differ from Torch-Pruning, onnxprune (no --ignore): {n}"
                         + (" (first 12; all in the JSON)" if n > 12 else "") + "\n")
            parts.append(md(*difference_rows(res, "no_ignore")) + "\n")
        parts.append(md(*diag_rows(res)) + "\n")
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.torch_pruning_compare", description=__doc__.split("\n")[0])
    p.add_argument("--models", default="resnet50,mobilenetv2", help="comma-separated zoo names")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="JSON results file")
    p.add_argument("--markdown", default=None, help="also write the tables as Markdown to this file")
    p.add_argument("--input-size", type=int, default=224, help="H = W of the 1x3xHxW input")
    p.add_argument("--width", type=float, default=1.0, help="width multiplier of the zoo models")
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--round-to", type=int, default=8)
    p.add_argument("--repeat", type=int, default=5,
                   help="rounds; each runs every tool once in a fresh subprocess (median and min reported)")
    p.add_argument("--variants", default="ignore_fc,no_ignore", help=f"onnxprune variants: {', '.join(VARIANTS)}")
    p.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads for latency")
    p.add_argument("--torch-threads", type=int, default=2, help="torch threads in the Torch-Pruning worker")
    p.add_argument("--latency-runs", type=int, default=200, help="timed runs per model (after 10 warm-up runs)")
    p.add_argument("--wait-idle", type=float, default=60.0,
                   help="before each timing round, wait up to this many seconds for other busy processes to finish")
    p.add_argument("--workdir", default=None, help="keep the ONNX files here (default: a temporary directory)")
    p.add_argument("--keep", action="store_true", help="keep diagnostic models too")
    args = p.parse_args(argv)
    args.variants = [v for v in args.variants.split(",") if v]
    for v in args.variants:
        if v not in VARIANTS:
            p.error(f"unknown variant {v!r} (choose from {', '.join(VARIANTS)})")
    try:
        import torch_pruning  # noqa: F401
    except ImportError:
        p.error("torch-pruning is not installed: pip install -c constraints.txt -r benchmarks/requirements.txt")

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    tmp = None
    if args.workdir:
        workdir = Path(args.workdir).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="onnxprune-tpbench-")
        workdir = Path(tmp.name)
    busy = busy_processes()
    if busy:
        log("warning: other processes are using the CPU; timings will be inflated, multi-threaded torch and "
            "onnxruntime far more than single-threaded onnxprune:\n  " + "\n  ".join(busy))
    t0 = time.perf_counter()
    try:
        results = [bench_model(m.strip(), args, workdir, log) for m in args.models.split(",") if m.strip()]
    finally:
        if tmp is not None:
            tmp.cleanup()
    report = {
        "benchmark": "torch_pruning_compare",
        "command": "python -m benchmarks.torch_pruning_compare " + " ".join(sys.argv[1:] if argv is None else argv),
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "markdown", "workdir", "keep")},
        "machine": machine(), "wall_s": time.perf_counter() - t0, "busy_processes_at_start": busy,
        "loadavg_at_end": os.getloadavg(),
        "results": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=str))
    print_tables(results, args.variants)
    if args.markdown:
        Path(args.markdown).write_text(markdown(results, args.variants))
    log(f"wrote {out} ({report['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
