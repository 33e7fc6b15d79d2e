"""Subprocess workers of ``benchmarks.torch_pruning_compare``.

Each tool is measured in a fresh interpreter so that its wall time starts cold (no
warm caches from the other tool) and its peak memory is its own:

    python -m benchmarks._workers KIND ARGS_JSON OUT_JSON

KIND is ``export`` (build a zoo model and export it to ONNX with BatchNormalization
kept), ``onnxprune`` (load, mapped, + analyze + plan + rewrite + save) or ``torch_pruning``
(build the dependency graph + importance + prune, then export the pruned module to ONNX,
timed separately). The ``onnxprune`` worker never imports torch.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import resource
import sys
import threading
import time
import warnings
from typing import Any

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    """Current resident set size of this process."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def maxrss_bytes() -> int:
    """Peak resident set size of this process so far (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakRss:
    """Peak RSS over a section: a sampling thread (every ``interval`` s) plus ru_maxrss.

    ``peak`` is the highest RSS seen between ``start`` and ``stop``; when the process-wide
    ru_maxrss grew during the section the true peak was inside it and ru_maxrss is used
    (it catches spikes shorter than the sampling interval). ru_maxrss alone would not do:
    on Linux a freshly exec'd child starts with its parent's high-water mark, which is why
    ``process_maxrss`` can exceed ``peak_rss``.
    """

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.peak = 0
        self.baseline = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._maxrss_before = 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            self._stop.wait(self.interval)

    def start(self) -> PeakRss:
        self.baseline = rss_bytes()
        self.peak = self.baseline
        self._maxrss_before = maxrss_bytes()
        self._thread.start()
        return self

    def stop(self) -> dict[str, int]:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())
        after = maxrss_bytes()
        if after > self._maxrss_before:
            self.peak = max(self.peak, after)
        return {"baseline_rss": self.baseline, "peak_rss": self.peak, "peak_increase": self.peak - self.baseline,
                "process_maxrss": after}


@contextlib.contextmanager
def quiet():
    """Silence exporter warnings, log records and prints."""
    names = ("torch", "torch.onnx", "torch.export", "torch._dynamo", "onnxscript", "onnx_ir", "onnxprune")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lvl in zip(loggers, levels):
            lg.setLevel(lvl)


def export_module(module: Any, example: Any, path: str, opset: int = 17) -> None:
    """Export a torch module exactly as ``models.export_onnx(..., keep_bn=True)`` does:
    legacy exporter, eval-mode module, ``TrainingMode.PRESERVE`` (BatchNormalization
    nodes stay; Conv weights are not folded with BN), constant folding on."""
    import torch

    module.eval()
    with quiet(), torch.no_grad():
        torch.onnx.export(module, (example,), path, dynamo=False, opset_version=opset, do_constant_folding=True,
                          input_names=["input"], output_names=["output"],
                          training=torch.onnx.TrainingMode.PRESERVE)


# --------------------------------------------------------------------------- workers
def work_export(args: dict[str, Any]) -> dict[str, Any]:
    """Export the original zoo model (BatchNormalization kept)."""
    import onnx

    from models import export_onnx

    t0 = time.perf_counter()
    with quiet():
        export_onnx(args["model"], args["path"], width=args["width"], input_shapes={"input": tuple(args["shape"])},
                    keep_bn=True)
    dt = time.perf_counter() - t0
    m = onnx.load(args["path"], load_external_data=False)
    ops: dict[str, int] = {}
    for n in m.graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    return {"export_s": dt, "ops": ops, "file_bytes": os.path.getsize(args["path"])}


def work_onnxprune(args: dict[str, Any]) -> dict[str, Any]:
    """onnxprune: load + analyze + plan + rewrite + save, each phase timed."""
    import onnx  # noqa: F401 - counted in the import baseline, not in the pruning

    import onnxprune
    from onnxprune.analysis import analyze

    # a fresh output path, as for a user's new file (replacing the last round's output would
    # add the kernel's freeing of its pages to the save)
    if os.path.exists(args["out"]):
        os.unlink(args["out"])
    mem = PeakRss().start()
    phase_mem = PeakRss(interval=0.005).start()
    times: dict[str, float] = {}
    peaks: dict[str, int] = {}
    t = t0 = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t, phase_mem
        now = time.perf_counter()
        times[name] = now - t
        peaks[name] = phase_mem.stop()["peak_rss"] - mem.baseline
        phase_mem = PeakRss(interval=0.005).start()
        t = time.perf_counter()

    with quiet():
        # mapped: the weights stay in the memory-mapped file until the rewrite needs them (the
        # pipeline's documented fast path; nothing here runs the model)
        model = onnxprune.load(args["path"], mapped=args.get("mapped", True))
        lap("load")
        ignore = list(args["ignore"])
        if args.get("ignore_classifier"):
            # the last Gemm/MatMul of the graph is the classifier
            ignore.append([n.name for n in model.graph.node if n.op_type in ("Gemm", "MatMul")][-1])
        analysis = analyze(model, ignore=ignore)
        lap("analyze")
        plan = onnxprune.plan_by_ratio(model, analysis, ratio=args["ratio"], criterion=args["criterion"],
                                       round_to=args["round_to"])
        lap("plan")
        result = onnxprune.apply_plan(model, analysis, plan, inplace=True)
        lap("rewrite")
        onnxprune.save_model(result.model, args["out"])
        lap("save")
    total = time.perf_counter() - t0
    phase_mem.stop()
    memory = mem.stop()
    return {
        "total_s": total, "phases_s": times, "memory": memory, "ignore": ignore,
        "phase_peak_increase": peaks,  # peak RSS over the post-import baseline, per phase
        "groups": len(analysis.groups), "prunable_groups": len(analysis.prunable_groups),
        "pruned_groups": len(plan.keep), "removed_channels": plan.removed_channels(analysis),
        "params_before": result.before.params, "macs_before": result.before.macs,
        "params_after": result.after.params, "macs_after": result.after.macs,
        "file_bytes": os.path.getsize(args["out"]),
    }


def work_torch_pruning(args: dict[str, Any]) -> dict[str, Any]:
    """Torch-Pruning: MetaPruner (builds the DependencyGraph) + step (importance + prune);
    the ONNX export of the pruned module is timed separately."""
    import torch
    import torch_pruning as tp

    from models import ZOO, make_inputs

    torch.set_num_threads(args["threads"])
    mem = PeakRss().start()  # baseline: interpreter + torch + torch_pruning imported, no model yet
    t = time.perf_counter()
    model = ZOO[args["model"]].build(width=args["width"])
    build_model_s = time.perf_counter() - t
    rss_model = rss_bytes()
    example = torch.from_numpy(make_inputs(args["model"], {"input": tuple(args["shape"])}, seed=0)["input"])
    classifier = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    imp = tp.importance.GroupMagnitudeImportance(p=2, group_reduction="sum", normalizer=None, bias=False)
    with quiet():
        t0 = time.perf_counter()
        pruner = tp.pruner.MetaPruner(model, example, importance=imp, pruning_ratio=args["ratio"],
                                      round_to=args["round_to"], ignored_layers=[classifier], global_pruning=False)
        t1 = time.perf_counter()
        pruner.step()
        t2 = time.perf_counter()
    memory = mem.stop()
    memory["rss_after_model_build"] = rss_model
    memory["peak_increase_over_model"] = memory["peak_rss"] - rss_model
    with quiet():
        macs, params = tp.utils.count_ops_and_params(model, example)
    t = time.perf_counter()
    export_module(model, example, args["out"])
    export_s = time.perf_counter() - t
    return {
        "total_s": t2 - t0, "phases_s": {"dependency_graph": t1 - t0, "importance_and_prune": t2 - t1},
        "build_model_s": build_model_s, "export_s": export_s, "memory": memory,
        "tp_count_params": int(params), "tp_count_macs": int(macs),
        "torch_threads": torch.get_num_threads(), "file_bytes": os.path.getsize(args["out"]),
    }


WORKERS = {"export": work_export, "onnxprune": work_onnxprune, "torch_pruning": work_torch_pruning}


def main(argv: list[str]) -> int:
    kind, args_json, out_json = argv
    args = json.loads(args_json)
    result = WORKERS[kind](args)
    result["torch_imported"] = "torch" in sys.modules
    with open(out_json, "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
