"""What recovery did, as plain data: one record per node and method, the graph-output
error against the original on the held-out samples before and after (the quality
figures), and the same on the samples fitted on (not a quality figure: fits memorise)."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from onnxprune.recovery.methods import RECOVERY_METHODS, names, refit_names


def __getattr__(name: str) -> Any:
    """``METHODS`` and ``REFITS``: live views of the registry (``recovery.methods``)."""
    if name == "METHODS":
        return names()
    if name == "REFITS":
        return refit_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass
class Step:
    node: str
    op: str
    method: str
    status: str  # updated | skipped (not applicable) | refused (computed, rejected on held-out data)
    reason: str = ""
    details: dict = field(default_factory=dict)


@dataclass
class RecoveryReport:
    methods: tuple[str, ...]
    samples: int
    weighting: str = "uniform"
    steps: list[Step] = field(default_factory=list)
    mse: dict = field(default_factory=dict)
    holdout: dict = field(default_factory=dict)
    held_out: dict | None = None
    reverted: bool = False
    note: str = ""

    def updated(self, node: str, op: str, method: str, **details) -> None:  # noqa: ANN003
        self.steps.append(Step(node, op, method, "updated", "", details))

    def skipped(self, node: str, op: str, method: str, reason: str, **details) -> None:  # noqa: ANN003
        self.steps.append(Step(node, op, method, "skipped", reason, details))

    def refused(self, node: str, op: str, method: str, reason: str, **details) -> None:  # noqa: ANN003
        self.steps.append(Step(node, op, method, "refused", reason, details))

    def to_dict(self) -> dict:
        methods, refits = names(), refit_names()

        def by(status: str) -> dict:
            return {m: [{"node": s.node, "reason": s.reason} for s in self.steps
                        if s.method == m and s.status == status] for m in methods}

        updated_nodes = {s.node for s in self.steps if s.status == "updated"}
        return {
            "methods": list(self.methods),
            "samples": self.samples,
            "weighting": self.weighting,
            "holdout": self.holdout,
            "updated": {m: [s.node for s in self.steps if s.method == m and s.status == "updated"] for m in methods},
            "skipped": by("skipped"),
            "refused": by("refused"),
            "refitted": len({s.node for s in self.steps if s.status == "updated" and s.method in refits}),
            "refused_nodes": len({s.node for s in self.steps if s.status == "refused"} - updated_nodes),
            "steps": [asdict(s) for s in self.steps],
            "held_out": self.held_out,
            "reverted": self.reverted,
            "note": self.note,
            "mse": self.mse,
        }


def summary_line(report: dict) -> str:
    """One line for a console: the held-out figures before -> after (graph-output MSE, a causal
    LM's next-token KL divergence when recovery was judged on it, and
    top-1 agreement with the original for classifier outputs, else mean cosine), what was
    refitted and refused. Never the error on the samples fitted on."""
    held = report.get("held_out")
    if held:
        before, after = held["pruned"], held["recovered"]
        line = (f"recovery: output MSE on {held['samples']} held-out samples "
                f"{before['output_mse']:.3g} -> {after['output_mse']:.3g}")
        if before.get("kl") is not None:
            line += f", next-token KL {before['kl']:.3g} -> {after['kl']:.3g}"
        if before.get("mean_cosine") is not None:
            line += f", cosine {before['mean_cosine']:.3f} -> {after['mean_cosine']:.3f}"
        if before.get("top1") is not None:
            line += f", top-1 agreement {before['top1']:.2f} -> {after['top1']:.2f}"
        tempered = held.get("temperature")
        if tempered:
            line += (f", temperature {tempered['t']:.3g} (next-token KL {tempered['kl_at_1']:.3g} -> "
                     f"{tempered['kl_cross_fitted']:.3g} cross-fitted)")
    else:
        line = "recovery: no held-out samples, quality not measured"
    updated = report.get("updated", {})
    counts = [f"refitted {report.get('refitted', 0)} layers"]
    counts += [f"{m} {len(updated[m])}" for m in ("bias", "bn") if updated.get(m)]
    counts.append(f"refused {report.get('refused_nodes', 0)}")
    line += "; " + ", ".join(counts)
    refused = [s for s in report.get("steps", []) if s["method"] == "temperature" and s["status"] == "refused"]
    if refused:
        line += f"; temperature refused ({refused[0]['reason']})"
    line += _not_refittable(report)
    if report.get("reverted"):
        line += f"; {report.get('note') or 'kept the pruned model unchanged'}"
    return line


def _not_refittable(report: dict) -> str:
    """'; N consumers not refittable (REASON)' for the consumers no method could touch (a QDQ
    weight, a grouped convolution), the most frequent reason; '' when there are none."""
    consumers = {m.name for m in RECOVERY_METHODS.values() if m.target == "consumer"}
    steps = [s for s in report.get("steps", []) if s["method"] in consumers]
    touched = {s["node"] for s in steps if s["status"] != "skipped"}
    reasons: dict[str, list[str]] = {}
    for s in steps:
        if s["status"] == "skipped" and s["node"] not in touched:
            reasons.setdefault(s["node"], []).append(s["reason"])
    if not reasons:
        return ""
    common = Counter(r[0] for r in reasons.values()).most_common(1)[0][0]
    n = len(reasons)
    more = ", ..." if len({r[0] for r in reasons.values()}) > 1 else ""
    return f"; {n} consumer{'s' if n > 1 else ''} not refittable ({common}{more})"
