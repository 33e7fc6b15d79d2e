"""Latency-aware pruning: measure what pruning each channel group buys in onnxruntime, then
allocate channels to a latency target.

1. ``runtime.timing.benchmark`` (the package's one timer) times a model on an execution
   provider: warm-up runs, a fixed number of intra-op threads, IO binding on CUDA / TensorRT
   (inputs and outputs stay on the device, so transfers are not timed), percentiles over the
   timed runs.
2. ``build_latency_table`` measures, for every prunable group, the latency of the model with
   only that group pruned to a few kept counts (75 %, 50 %, 25 % of its channels by default,
   rounded to ``round_to``; each timed in alternation with the unpruned model, so load
   changes cancel), plus one calibration point with every group pruned at once; the unpruned
   model gives the 100 % point. The table is saved as JSON, keyed by the model fingerprint,
   provider, input shapes and thread count, so a file can cache tables of several models
   and machines.
3. ``select_to_latency`` predicts a plan's latency as ``base - sum of per-group savings``
   (interpolated linearly in the kept count, monotone; corrected for overlapping savings
   with the MACs model and scaled by the calibration point: ``LatencyPredictor``). Along the
   global normalised-score order of ``onnxprune.selection.budget`` (or a greedy order by score lost
   per millisecond saved) it starts at the least pruning predicted to fit, measures the
   pruned model, and moves along the order (secant, then false position) while the
   measurement misses the target or falls far below it, a few times; it reports target vs
   predicted vs measured.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxprune.analysis import Analysis, Group
from onnxprune.analysis.query_heads import repair_keep
from onnxprune.selection.select import global_order
from onnxprune.errors import PlanError, SelectionError
from onnxprune.graph import static_batch  # noqa: F401  (tests patch it here)
from onnxprune.plan import Plan
from onnxprune.runtime.session import _ort, random_inputs
from onnxprune.runtime.session import feeds_for_batch  # noqa: F401  (re-exported: the timing lives in runtime/)
from onnxprune.runtime.timing import (  # noqa: F401  (benchmark_pair, percentiles, provider_chain: re-exported)
    GPU_PROVIDERS,
    benchmark,
    benchmark_pair,
    full_provider,
    interleaved,
    percentiles,
    provider_chain,
    timed_step,
    timing_session,
    warm_up,
)
from onnxprune.selection.select import SelectionOptions, legal_keep_count
from onnxprune.units import keep_rules, plan_options

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
DEFAULT_FRACTIONS = (0.75, 0.5, 0.25)


# ---------------------------------------------------------------------------------------
# timing


def default_threads() -> int:
    """The intra-op thread count for latency tables (fixed and recorded): ``ONNXPRUNE_LATENCY_THREADS``
    when set, else the CPUs this process may run on."""
    env = os.environ.get("ONNXPRUNE_LATENCY_THREADS", "").strip()
    if env:
        try:
            return max(1, int(env))
        except ValueError as exc:
            raise SelectionError(f"ONNXPRUNE_LATENCY_THREADS must be an integer, got {env!r}") from exc
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS / Windows
        return os.cpu_count() or 1


@functools.lru_cache(maxsize=None)
def channel_block(provider: str = "CPUExecutionProvider") -> int:
    """The channel block of ``provider``'s convolution kernels on this machine: kept channel
    counts that are not a multiple of it are padded up to one, so they cost the latency of the
    next multiple (use it as ``align`` / ``--align auto``).

    CPU: onnxruntime's NCHWc layout transformer (MLAS) reorders convolution weights into blocks
    of 16 output channels on AVX-512 machines, 8 on AVX2, and is not used elsewhere (1). The
    block is read off the optimised graph of a one-convolution probe with 4 output channels
    (the padded weight's first dimension). CUDA / TensorRT: 8 (the channel multiple of FP16
    tensor-core kernels)."""
    provider = full_provider(provider)
    if provider in GPU_PROVIDERS:
        return 8
    import tempfile

    from onnx import TensorProto, helper, numpy_helper

    ort = _ort()
    weight = numpy_helper.from_array(np.ones((4, 32, 1, 1), dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="probe")], "probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], [weight])
    probe = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    probe.ir_version = 7
    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        opts.optimized_model_filepath = str(Path(tmp) / "probe.onnx")
        ort.InferenceSession(probe.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"])
        optimized = onnx.load(opts.optimized_model_filepath)
    convs = [n for n in optimized.graph.node if n.op_type == "Conv" and n.domain == "com.microsoft.nchwc"]
    if not convs:
        return 1
    dims = {i.name: list(i.dims) for i in optimized.graph.initializer}
    padded = dims.get(convs[0].input[1])
    return int(padded[0]) if padded and padded[0] >= 4 else 1


def resolve_align(align: int | str | None, provider: str = "CPUExecutionProvider") -> int:
    """``align`` as given by a user: an integer >= 1, or 'auto' (``channel_block(provider)``)."""
    if align is None:
        return 1
    if isinstance(align, str):
        if align.strip().lower() == "auto":
            return channel_block(provider)
        try:
            align = int(align)
        except ValueError as exc:
            raise SelectionError(f"align must be a positive integer or 'auto', got {align!r}") from exc
    if align < 1:
        raise SelectionError(f"align must be a positive integer or 'auto', got {align}")
    return int(align)


# ---------------------------------------------------------------------------------------
# the table


def table_key(fingerprint: str, provider: str, feeds_shapes: str, threads: int) -> str:
    return f"{fingerprint}|{full_provider(provider)}|{feeds_shapes}|threads={threads}"


@dataclass
class LatencyTable:
    """Model latency (p50, ms) against each prunable group's kept unit count."""

    fingerprint: str
    provider: str
    inputs: dict[str, list[int]]
    threads: int
    base_ms: float
    # group id -> {"size": units, "unit_width": channels per unit, "points": [[kept units, p50 ms], ...]}
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    # one joint measurement that calibrates the sum of separate savings:
    # {"counts": {group id: kept units}, "ms": measured latency with all of them pruned at once}
    calibration: dict[str, Any] | None = None

    @property
    def key(self) -> str:
        shapes = ",".join(f"{k}={'x'.join(map(str, v))}" for k, v in sorted(self.inputs.items()))
        return table_key(self.fingerprint, self.provider, shapes, self.threads)

    # -- prediction ------------------------------------------------------
    def latency(self, gid: str, kept: int) -> float:
        """Predicted model latency with only group ``gid`` pruned to ``kept`` units: linear in the
        kept count between measured points, clamped outside them, never rising as channels go."""
        entry = self.groups.get(gid)
        if entry is None:
            return self.base_ms
        size = int(entry["size"])
        pts = sorted({int(k): float(ms) for k, ms in entry["points"] if int(k) < size}.items())
        ks = np.array([k for k, _ in pts] + [size], dtype=np.float64)
        ms = np.array([v for _, v in pts] + [self.base_ms], dtype=np.float64)
        ms = np.minimum.accumulate(ms[::-1])[::-1]  # fewer channels never predicted slower
        if kept < ks[0] and len(ks) > 1:  # below the smallest point: the last segment's slope, floored at 0
            slope = (ms[1] - ms[0]) / (ks[1] - ks[0])
            return float(max(0.0, ms[0] - slope * (ks[0] - kept)))
        return float(np.interp(kept, ks, ms))

    def saving(self, gid: str, kept: int) -> float:
        return max(0.0, self.base_ms - self.latency(gid, kept))

    def predict(self, keep_counts: Mapping[str, int]) -> float:
        """Predicted latency of a plan keeping ``keep_counts[gid]`` units of each group."""
        return self.base_ms - sum(self.saving(gid, k) for gid, k in keep_counts.items())

    def predict_plan(self, plan: Plan) -> float:
        return self.predict({gid: len(keep) for gid, keep in plan.keep.items()})

    def missing(self, analysis: Analysis) -> list[str]:
        return [g.id for g in analysis.prunable_groups if g.id not in self.groups]

    # -- serialisation ---------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"fingerprint": self.fingerprint, "provider": self.provider, "inputs": self.inputs,
                "threads": self.threads, "base_ms": self.base_ms, "groups": self.groups, "meta": self.meta,
                "calibration": self.calibration}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LatencyTable:
        try:
            return cls(fingerprint=str(data["fingerprint"]), provider=str(data["provider"]),
                       inputs={k: [int(d) for d in v] for k, v in data["inputs"].items()},
                       threads=int(data["threads"]), base_ms=float(data["base_ms"]),
                       groups={gid: {"size": int(g["size"]), "unit_width": int(g.get("unit_width", 1)),
                                     "points": [[int(k), float(ms)] for k, ms in g["points"]]}
                               for gid, g in data["groups"].items()},
                       meta=dict(data.get("meta") or {}),
                       calibration=({"counts": {k: int(v) for k, v in data["calibration"]["counts"].items()},
                                     "ms": float(data["calibration"]["ms"])} if data.get("calibration") else None))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise PlanError(f"malformed latency table: {exc!r}") from exc

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write (or add to) a JSON file of tables keyed by fingerprint, provider, inputs, threads."""
        from onnxprune.io.fileutil import write_text_atomic

        p = Path(path)
        tables = _read_tables(p) if p.exists() else {}
        tables[self.key] = self.to_dict()
        return write_text_atomic(p, json.dumps({"format_version": FORMAT_VERSION, "tables": tables}, indent=1))

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, fingerprint: str | None = None, provider: str | None = None,
             inputs: Mapping[str, Sequence[int]] | None = None, threads: int | None = None) -> LatencyTable | None:
        """The table in ``path`` matching every criterion given (None: any); None when none does."""
        p = Path(path)
        if not p.exists():
            raise PlanError(f"{p}: latency table not found")
        wanted_provider = full_provider(provider) if provider else None
        for data in _read_tables(p).values():
            table = cls.from_dict(data)
            if ((fingerprint is None or table.fingerprint == fingerprint)
                    and (wanted_provider is None or table.provider == wanted_provider)
                    and (inputs is None or table.inputs == {k: [int(d) for d in v] for k, v in inputs.items()})
                    and (threads is None or table.threads == threads)):
                return table
        return None


def _read_tables(p: Path) -> dict[str, Any]:
    try:
        data = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PlanError(f"{p}: not a JSON latency table ({exc})") from exc
    if not isinstance(data, dict) or data.get("format_version") != FORMAT_VERSION:
        raise PlanError(f"{p}: unsupported latency table format_version {data.get('format_version')!r}"
                        if isinstance(data, dict) else f"{p}: not a latency table")
    return dict(data.get("tables") or {})


def table_points(g: Group, fractions: Sequence[float] = DEFAULT_FRACTIONS, round_to: int = 1) -> list[int]:
    """Kept unit counts to measure for a group: each fraction of its units, rounded to round_to."""
    options = keep_rules(round_to=round_to)
    ks = {legal_keep_count(g, max(1, math.ceil(g.size * f)), options) for f in fractions}
    return sorted((k for k in ks if k < g.size), reverse=True)


def _first_k_plan(analysis: Analysis, gid: str, k: int) -> Plan:
    g = analysis.group(gid)
    return Plan(fingerprint=analysis.fingerprint, keep={gid: tuple(range(k))}, sizes={gid: g.size},
                criterion="latency-probe")


def _machine() -> dict[str, Any]:
    ort = _ort()
    return {"onnxruntime": getattr(ort, "__version__", "?"), "machine": platform.machine(),
            "processor": platform.processor() or platform.machine(), "system": platform.system(),
            "cpus": os.cpu_count(), "python": platform.python_version()}


def build_latency_table(model: onnx.ModelProto, analysis: Analysis, *, provider: str = "CPUExecutionProvider",
                        feeds: Mapping[str, np.ndarray] | None = None, fractions: Sequence[float] = DEFAULT_FRACTIONS,
                        round_to: int = 1, threads: int | None = None, warmup: int = 5, runs: int = 20,
                        device_id: int = 0, groups: Sequence[str] | None = None, table: LatencyTable | None = None,
                        paired: bool = True, calibrate: bool = True,
                        progress: Callable[[int, int], None] | None = None) -> LatencyTable:
    """Measure the latency table of ``model`` (prepared, analysed). With ``table`` given, only the
    groups it lacks (or ``groups``) are measured and added to it.

    ``paired`` (default): every point is timed in alternation with the unpruned model and stored
    as base_ms x (its p50 / the unpruned p50 of the same rounds), so a change in machine load
    while the table is measured does not show up as a saving or a cost (twice the timing work).
    ``calibrate``: also time every group at its middle point at once (see ``LatencyPredictor``)."""
    from onnxprune.api import apply_plan

    provider = full_provider(provider)
    threads = default_threads() if threads is None else threads
    feeds = dict(feeds) if feeds is not None else random_inputs(model)

    def measure(m: onnx.ModelProto) -> float:
        return benchmark(m, feeds, provider=provider, threads=threads, warmup=warmup, runs=runs,
                         device_id=device_id)["p50"]

    base_step = None
    if paired:
        base_step = timed_step(timing_session(model, provider=provider, threads=threads, device_id=device_id), feeds,
                          provider, device_id)
        warm_up(base_step, warmup, provider)

    def measure_point(m: onnx.ModelProto) -> float:
        if base_step is None:
            return measure(m)
        # Timed in alternation with the unpruned model: the ratio survives changes in machine load.
        step = timed_step(timing_session(m, provider=provider, threads=threads, device_id=device_id), feeds, provider,
                     device_id)
        warm_up(step, warmup, provider)
        base, pruned = interleaved(base_step, step, runs, rounds=4)
        return table.base_ms * pruned["p50"] / base["p50"]

    if table is None:
        table = LatencyTable(fingerprint=analysis.fingerprint, provider=provider,
                             inputs={k: list(np.asarray(v).shape) for k, v in feeds.items()}, threads=threads,
                             base_ms=measure(model),
                             meta={**_machine(), "warmup": warmup, "runs": runs, "round_to": round_to, "spinning": False,
                                   "fractions": list(fractions), "statistic": "p50", "paired": paired,
                                   "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
    todo = [g for g in analysis.prunable_groups
            if (g.id in groups if groups is not None else g.id not in table.groups)]
    total = sum(len(table_points(g, fractions, round_to)) for g in todo)
    done = 0
    for g in todo:
        points = []
        for k in table_points(g, fractions, round_to):
            pruned = apply_plan(model, analysis, _first_k_plan(analysis, g.id, k)).model
            points.append([k, measure_point(pruned)])
            done += 1
            if progress is not None:
                progress(done, total)
        table.groups[g.id] = {"size": g.size, "unit_width": g.unit_width, "points": points}
        log.debug("latency table: %s %s", g.id, points)
    if calibrate and (todo or table.calibration is None):
        # Every group at its middle point at once: how far the sum of separate savings is from
        # a joint measurement (per-op overheads do not shrink with channels).
        counts = {}
        for g in analysis.prunable_groups:
            ks = [k for k, _ in table.groups.get(g.id, {}).get("points", [])]
            if ks:
                counts[g.id] = ks[len(ks) // 2]
        if counts:
            keep = repair_keep(analysis, {gid: tuple(range(k)) for gid, k in counts.items()})  # a layer keeps a query head
            plan = Plan(fingerprint=analysis.fingerprint, keep=keep,
                        sizes={gid: analysis.group(gid).size for gid in keep}, criterion="latency-probe")
            table.calibration = {"counts": counts, "ms": measure_point(apply_plan(model, analysis, plan).model)}
    return table


def load_or_build_table(path: str | os.PathLike[str] | None, model: onnx.ModelProto, analysis: Analysis, *,
                        provider: str = "CPUExecutionProvider", feeds: Mapping[str, np.ndarray] | None = None,
                        threads: int | None = None, **build_options) -> LatencyTable:
    """The cached table for this model, provider, input shapes and threads from ``path`` (completed
    with any group it lacks), or a freshly measured one; written back to ``path`` when given."""
    feeds = dict(feeds) if feeds is not None else random_inputs(model)
    threads = default_threads() if threads is None else threads
    table = None
    if path is not None and Path(path).exists():
        table = LatencyTable.load(path, fingerprint=analysis.fingerprint, provider=provider,
                                  inputs={k: np.asarray(v).shape for k, v in feeds.items()}, threads=threads)
    if table is not None and not table.missing(analysis):
        return table
    table = build_latency_table(model, analysis, provider=provider, feeds=feeds, threads=threads, table=table,
                                **build_options)
    if path is not None:
        table.save(path)
    return table


# ---------------------------------------------------------------------------------------
# allocation


@dataclass(frozen=True)
class LatencyResult:
    """Target vs predicted vs measured for the chosen plan.

    ``measured_ms`` is the pruned model's p50 from ``original_ms``'s measurement, scaled by the
    ratio of the pruned model's p50 to the original's p50 timed in alternation with it (so
    machine-load changes between the two measurements cancel); ``raw_ms`` is that pruned
    p50 itself."""

    plan: Plan
    target_ms: float
    predicted_ms: float  # by the table, for the returned plan
    measured_ms: float | None  # None when measure=False
    original_ms: float | None  # p50 of the original (None when measure=False)
    table_base_ms: float
    met: bool  # measured (or, unmeasured, predicted) within target x (1 + tolerance)
    tries: tuple[dict[str, float], ...] = ()
    raw_ms: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"target_ms": self.target_ms, "predicted_ms": self.predicted_ms, "measured_ms": self.measured_ms,
                "raw_ms": self.raw_ms, "original_ms": self.original_ms, "table_base_ms": self.table_base_ms,
                "met": self.met, "tries": list(self.tries)}


class LatencyPredictor:
    """``table.predict`` corrected for interactions between groups: pruning two groups on the two
    sides of one convolution saves less than the sum of their separate savings (a product, not
    a sum, of kept fractions). The exact MACs model gives the correction: savings are scaled by
    (MACs saved by the plan) / (sum of MACs saved by each group pruned alone). Then, with the
    table's calibration measurement (every group at its middle point at once), by one factor:
    its measured saving / its predicted saving (per-op overheads that do not shrink)."""

    def __init__(self, model: onnx.ModelProto, analysis: Analysis, table: LatencyTable,
                 interactions: bool = True, calibrated: bool = True) -> None:
        from onnxprune.analysis.accounting import CostModel

        self.table, self.analysis, self.calibrated = table, analysis, calibrated
        self.costs = CostModel(model, analysis) if interactions else None
        self.base_macs = self.costs.macs(np.zeros(0, dtype=np.int64)) if self.costs else 0
        self._alone: dict[tuple[str, int], int] = {}

    def _removed(self, counts: Mapping[str, int]) -> np.ndarray:
        parts = [self.analysis.group(gid).units[k:] for gid, k in counts.items()
                 if k < self.analysis.group(gid).size]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def correction(self, counts: Mapping[str, int]) -> float:
        if self.costs is None:
            return 1.0
        alone = 0
        for gid, k in counts.items():
            if k < self.analysis.group(gid).size:
                if (gid, k) not in self._alone:
                    self._alone[(gid, k)] = self.base_macs - self.costs.macs(self._removed({gid: k}))
                alone += self._alone[(gid, k)]
        if alone <= 0:
            return 1.0
        joint = self.base_macs - self.costs.macs(self._removed(counts))
        return float(min(1.0, max(0.0, joint / alone)))

    def _raw_saving(self, counts: Mapping[str, int]) -> float:
        savings = sum(self.table.saving(gid, k) for gid, k in counts.items())
        return self.correction(counts) * savings if savings else 0.0

    @functools.cached_property
    def scale(self) -> float:
        """Measured / predicted saving of the table's calibration plan (1 without one), in [0.2, 1.5]."""
        cal = self.table.calibration
        if not self.calibrated or not cal:
            return 1.0
        counts = {gid: k for gid, k in cal["counts"].items() if gid in self.analysis.groups_by_id}
        predicted = self._raw_saving(counts)
        measured = self.table.base_ms - float(cal["ms"])
        return float(min(1.5, max(0.2, measured / predicted))) if predicted > 0 else 1.0

    def __call__(self, counts: Mapping[str, int]) -> float:
        return max(0.0, self.table.base_ms - self.scale * self._raw_saving(counts))


def _keep_counts_by_score(groups: list[Group], order: list[tuple[str, int]], k: int,
                          options: SelectionOptions) -> dict[str, int]:
    """Kept units per group when the k least important units of the global order go
    (the allocation of ``onnxprune.selection.budget``)."""
    removed: dict[str, int] = {}
    for gid, _ in order[:k]:
        removed[gid] = removed.get(gid, 0) + 1
    return {g.id: legal_keep_count(g, g.size - removed.get(g.id, 0), options) for g in groups}


class _Path:
    """Allocations from no pruning (step 0) to every group at its limit (step ``n``), more
    pruning at every step: the one-dimensional space the latency search walks.

    'score': step k removes the k least important units of the global normalised-score order
    (``onnxprune.selection.budget``). 'efficiency': step k is the k-th greedy move, each the rounding step
    (in any group) that loses the least normalised score per predicted millisecond saved."""

    def __init__(self, groups: list[Group], scores: Mapping[str, np.ndarray], predictor: LatencyPredictor,
                 options: SelectionOptions, order: str) -> None:
        self.groups, self.options, self.predictor = groups, options, predictor
        self._cache: dict[int, float] = {}
        if order == "score":
            self._order = global_order(groups, scores)
            self._states: list[dict[str, int]] | None = None
            self.n = len(self._order)
        else:
            self._states = _efficiency_states(groups, scores, predictor.table, options)
            self.n = len(self._states) - 1

    def counts(self, k: int) -> dict[str, int]:
        k = min(max(int(k), 0), self.n)
        if self._states is not None:
            return self._states[k]
        return _keep_counts_by_score(self.groups, self._order, k, self.options)

    def predicted(self, k: int) -> float:
        if k not in self._cache:
            self._cache[k] = self.predictor(self.counts(k))
        return self._cache[k]

    def first_within(self, target: float) -> int:
        """The least pruning whose predicted latency fits ``target`` (the most pruning if none does)."""
        if self.predicted(self.n) > target:
            return self.n
        lo, hi = 0, self.n
        while lo < hi:
            mid = (lo + hi) // 2
            if self.predicted(mid) <= target:
                hi = mid
            else:
                lo = mid + 1
        return lo


def _efficiency_states(groups: list[Group], scores: Mapping[str, np.ndarray], table: LatencyTable,
                       options: SelectionOptions) -> list[dict[str, int]]:
    normed, counts = {}, {}
    for g in groups:
        s = np.asarray(scores[g.id], dtype=np.float64)
        mean = s.mean()
        normed[g.id] = np.sort(s / mean if mean > 0 else np.zeros_like(s))[::-1]  # best first
        counts[g.id] = legal_keep_count(g, g.size, options)
    eps = 1e-6 * max(table.base_ms, 1e-9)

    def next_step(g: Group) -> tuple[float, int] | None:
        cur = counts[g.id]
        step = options.round_to // math.gcd(options.round_to, g.unit_width)
        nxt = legal_keep_count(g, cur - step, options)
        if nxt >= cur:
            return None
        lost = float(normed[g.id][nxt:cur].sum())
        gain = table.latency(g.id, cur) - table.latency(g.id, nxt)
        return lost / max(gain, eps), nxt

    states = [dict(counts)]
    while True:
        best = None
        for g in groups:
            cand = next_step(g)
            if cand is not None and (best is None or cand[0] < best[0]):
                best = (cand[0], g.id, cand[1])
        if best is None:
            return states
        counts[best[1]] = best[2]
        states.append(dict(counts))


def _plan_from_counts(analysis: Analysis, groups: list[Group], scores: Mapping[str, np.ndarray],
                      counts: Mapping[str, int], options: SelectionOptions, criterion: str | None,
                      target_ms: float, provider: str) -> Plan:
    keep = {}
    for g in groups:
        n_keep = counts.get(g.id, g.size)
        if n_keep < g.size:
            ranked = np.lexsort((np.arange(g.size), -np.asarray(scores[g.id], dtype=np.float64)))
            keep[g.id] = tuple(sorted(ranked[:n_keep].tolist()))
    keep = repair_keep(analysis, keep, scores)  # a layer keeps a query head of a kept KV head
    plan = Plan(fingerprint=analysis.fingerprint, keep=keep, sizes={gid: analysis.group(gid).size for gid in keep},
                criterion=criterion,
                options=plan_options(options, {"budget": "latency", "target_ms": target_ms, "provider": provider}))
    plan.validate(analysis)
    return plan


def select_to_latency(model: onnx.ModelProto, analysis: Analysis, scores: Mapping[str, np.ndarray],
                      target_ms: float, table: LatencyTable, *, round_to: int = 1, min_channels: int = 1,
                      max_ratio: float = 1.0, criterion: str | None = None, order: str = "score",
                      feeds: Mapping[str, np.ndarray] | None = None, measure: bool = True, tolerance: float = 0.05,
                      max_tries: int = 4, slack: float = 0.15, warmup: int | None = None,
                      runs: int | None = None, device_id: int = 0, interactions: bool = True,
                      original_ms: float | None = None, align: int = 1) -> LatencyResult:
    """The plan that keeps the best units and whose latency fits ``target_ms``.

    Allocations are ordered from no pruning to the most (``order``: 'score', the global
    normalised-score order of ``onnxprune.selection.budget``, or 'efficiency', greedy by score lost per
    predicted millisecond saved). The table (see ``LatencyPredictor``) picks the first: the
    least pruning predicted to fit. Then the pruned model is measured (on the table's provider
    and threads, in alternation with the original) and, up to ``max_tries`` measurements in
    all, the search moves along the order (secant, then false position once the target is
    bracketed) while the measurement exceeds target x (1 + tolerance) (more pruning) or falls
    below target x (1 - slack) (less). The result is the least pruned plan that met the
    target, else the fastest one measured. ``original_ms``: the original's p50 if already
    measured (as when the target was given relative to it). ``align``: kept counts aligned down
    to multiples of this many channels where legal (``selection.legal_keep_count``)."""
    from onnxprune.api import apply_plan

    if target_ms <= 0:
        raise SelectionError(f"latency target must be positive, got {target_ms}")
    if table.fingerprint != analysis.fingerprint:
        raise PlanError(f"latency table was measured for another model (fingerprint {table.fingerprint}, "
                        f"this model is {analysis.fingerprint})")
    if order not in ("score", "efficiency"):
        raise SelectionError(f"order must be 'score' or 'efficiency', got {order!r}")
    missing = table.missing(analysis)
    if missing:
        log.warning("latency table has no entry for %d group(s) (%s); they are predicted to save nothing",
                    len(missing), ", ".join(missing[:3]))
    options = keep_rules(round_to=round_to, min_channels=min_channels, max_ratio=max_ratio, align=align)
    groups = [g for g in analysis.prunable_groups if g.id in scores]
    predictor = LatencyPredictor(model, analysis, table, interactions=interactions)
    path = _Path(groups, scores, predictor, options, order)
    feeds = dict(feeds) if feeds is not None else random_inputs(model)
    warmup = warmup if warmup is not None else int(table.meta.get("warmup", 5))
    runs = runs if runs is not None else int(table.meta.get("runs", 20))

    def timed(m: onnx.ModelProto) -> float:
        return benchmark(m, feeds, provider=table.provider, threads=table.threads, warmup=warmup, runs=runs,
                         device_id=device_id)["p50"]

    if not measure:
        original_ms = None
    elif original_ms is None:
        original_ms = timed(model)
    # The table's milliseconds may be from another moment (cache): predictions are rescaled to now.
    scale = table.base_ms / original_ms if original_ms else 1.0
    ceiling = target_ms * (1.0 + tolerance)
    step = 0 if original_ms is not None and original_ms <= ceiling else path.first_within(target_ms * scale)
    tries: list[dict[str, float]] = []
    best: tuple[Plan, float, float | None, float | None] | None = None
    measured_at: dict[tuple, tuple[int, float]] = {}  # plan signature -> (step, latency)
    points: list[tuple[int, float]] = [(0, original_ms)] if original_ms else []
    for attempt in range(max(1, max_tries)):
        counts = path.counts(step)
        plan = _plan_from_counts(analysis, groups, scores, counts, options, criterion, target_ms, table.provider)
        predicted = path.predicted(step) / scale
        measured = raw = original_now = None
        if measure:
            o, p = benchmark_pair(model, apply_plan(model, analysis, plan).model, feeds, provider=table.provider,
                                  threads=table.threads, warmup=warmup, runs=runs, device_id=device_id)
            original_now, raw = o["p50"], p["p50"]
            measured = original_ms * raw / original_now  # load changes cancel in the ratio
        measured_at[_signature(counts)] = (step, measured if measured is not None else predicted)
        tries.append({"step": step, "of": path.n, "predicted_ms": predicted,
                      **({"measured_ms": measured, "raw_ms": raw, "original_ms": original_now} if measure else {})})
        log.info("latency try %d: step %d/%d, target %.4g ms, predicted %.4g ms, measured %s", attempt + 1, step,
                 path.n, target_ms, predicted, "-" if measured is None else
                 f"{measured:.4g} ms (raw {raw:.4g}, original now {original_now:.4g})")
        value = measured if measured is not None else predicted
        if best is None or _better(value, best, target_ms, tolerance):
            best = (plan, predicted, measured, raw)
        if measured is None or (value <= ceiling and (value >= target_ms * (1.0 - slack) or step == 0)):
            break  # within the target and not far below it (or nothing to measure)
        points.append((step, value))
        nxt = _next_step(points, target_ms, ceiling, path.n)
        nxt = _unmeasured(path, nxt, measured_at, points, ceiling)
        if nxt is None:
            break
        step = nxt
    assert best is not None
    plan, predicted, measured, raw = best
    value = measured if measured is not None else predicted
    return LatencyResult(plan=plan, target_ms=float(target_ms), predicted_ms=float(predicted),
                         measured_ms=measured, original_ms=original_ms, table_base_ms=table.base_ms,
                         met=bool(value <= ceiling), tries=tuple(tries), raw_ms=raw)


def _signature(counts: Mapping[str, int]) -> tuple:
    return tuple(sorted(counts.items()))


def _next_step(points: list[tuple[int, float]], target: float, ceiling: float, n: int) -> int:
    """The next step along the path from measured (step, latency) points."""
    met = [p for p in points if p[1] <= ceiling]
    missed = [p for p in points if p[1] > ceiling]
    lo = max(missed) if missed else None  # the most pruning still too slow
    hi = min(met) if met else None  # the least pruning fast enough
    if lo is not None and hi is not None and hi[0] > lo[0]:
        span = hi[0] - lo[0]
        k = lo[0] + (lo[1] - target) * span / (lo[1] - hi[1]) if lo[1] != hi[1] else lo[0] + span / 2
        return int(round(min(max(k, lo[0] + 0.15 * span), hi[0] - 0.15 * span)))  # false position, guarded
    pts = sorted(missed) if len(missed) > 1 else sorted(points)
    if missed and len(pts) > 1:  # more pruning: secant through the two most pruned, at most doubling the step
        a, b = pts[-2], pts[-1]
        slope = (a[1] - b[1]) / (b[0] - a[0]) if b[0] != a[0] else 0.0  # latency saved per step
        k = b[0] + (b[1] - target) / slope if slope > 0 else 2 * b[0] + 1
        return int(round(min(k, b[0] + 2 * max(b[0] - a[0], 1), n)))
    if missed:
        return min(2 * missed[0][0] + 1, n)
    return int(min(points)[0] // 2)  # far below the target only: less pruning, halfway back


def _unmeasured(path: _Path, k: int, measured_at: Mapping[tuple, tuple[int, float]],
                points: list[tuple[int, float]], ceiling: float) -> int | None:
    """``k``, or the nearest step past it (away from the measured plan it rounds to) whose plan is
    new; None when there is none between the bracketing points."""
    met = [p[0] for p in points if p[1] <= ceiling]
    missed = [p[0] for p in points if p[1] > ceiling]
    lo = max(missed) if missed else 0
    hi = min([m for m in met if m > lo], default=path.n + 1)
    k = min(max(k, lo + 1), hi - 1)
    if k < 0 or k > path.n or lo + 1 > hi - 1:
        return None
    if _signature(path.counts(k)) not in measured_at:
        return k
    for delta in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096):
        for cand in (k + delta, k - delta):
            if lo < cand < hi and cand <= path.n and _signature(path.counts(cand)) not in measured_at:
                return cand
    return None


def _better(value: float, best: tuple[Plan, float, float | None, float | None], target: float,
            tolerance: float) -> bool:
    """A later try replaces the best so far if it meets the target and the best does not; if
    both meet it, if it is slower (closer to the target: less pruned); if neither, if it is faster."""
    best_value = best[2] if best[2] is not None else best[1]
    ok, best_ok = value <= target * (1 + tolerance), best_value <= target * (1 + tolerance)
    if ok != best_ok:
        return ok
    return value > best_value if ok else value < best_value


def parse_latency_target(text: str, original_ms: Callable[[], float]) -> float:
    """'12.5' (ms), '12.5ms', or '70%' / '0.7x' of the original's measured p50."""
    t = text.strip().lower()
    try:
        if t.endswith("%"):
            return float(t[:-1]) / 100.0 * original_ms()
        if t.endswith("x"):
            return float(t[:-1]) * original_ms()
        return float(t[:-2] if t.endswith("ms") else t)
    except ValueError as exc:
        raise SelectionError(f"--target-latency expects milliseconds (12.5), a percentage (70%) or a "
                             f"factor (0.7x) of the original's latency; got {text!r}") from exc


def plan_to_latency(model: onnx.ModelProto, analysis: Analysis, target: str | float, *,
                    scores: Mapping[str, np.ndarray], provider: str = "CPUExecutionProvider",
                    table_path: str | os.PathLike[str] | None = None, threads: int | None = None,
                    feeds: Mapping[str, np.ndarray] | None = None, round_to: int = 1, min_channels: int = 1,
                    max_ratio: float = 1.0, criterion: str | None = None, runs: int = 20, warmup: int = 5,
                    progress: Callable[[int, int], None] | None = None, **select_options) -> LatencyResult:
    """One call for the command line: load or measure the table, then ``select_to_latency``."""
    feeds = dict(feeds) if feeds is not None else random_inputs(model)
    table = load_or_build_table(table_path, model, analysis, provider=provider, feeds=feeds, threads=threads,
                                round_to=round_to, runs=runs, warmup=warmup, progress=progress)
    original: list[float] = []

    def original_ms() -> float:
        original.append(benchmark(model, feeds, provider=table.provider, threads=table.threads, warmup=warmup,
                                  runs=runs)["p50"])
        return original[-1]

    target_ms = target if isinstance(target, (int, float)) else parse_latency_target(target, original_ms)
    return select_to_latency(model, analysis, scores, float(target_ms), table, round_to=round_to,
                             min_channels=min_channels, max_ratio=max_ratio, criterion=criterion, feeds=feeds,
                             warmup=warmup, runs=runs, original_ms=original[-1] if original else None,
                             **select_options)


def latency_note(result: LatencyResult) -> str:
    """One line: target vs predicted vs measured (and the original), for the command line."""
    from onnxprune.report.tables import SHORT_PROVIDER

    provider = result.plan.options.get("provider") or ""
    parts = [f"latency p50{f' ({SHORT_PROVIDER.get(provider, provider)})' if provider else ''}: "
             f"target {result.target_ms:.4g} ms, predicted {result.predicted_ms:.4g} ms"]
    if result.measured_ms is not None:
        parts.append(f", measured {result.measured_ms:.4g} ms")
    if result.original_ms:
        ref = result.measured_ms if result.measured_ms is not None else result.predicted_ms
        parts.append(f" (original {result.original_ms:.4g} ms, {ref / result.original_ms:.2f}x)")
    parts.append(f"; {len(result.tries)} tr{'y' if len(result.tries) == 1 else 'ies'}")
    if not result.met:
        parts.append(" - [yellow]target missed[/]: the table's floor or the measurement noise; "
                     "try --round-to 8, more pruning headroom (--max-ratio) or a looser target")
    return "".join(parts)
