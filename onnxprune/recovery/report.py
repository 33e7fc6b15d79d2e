"""What recovery did, as plain data: one record per node and method, and the output error
against the original before and after."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

METHODS = ("bn", "bias", "lstsq", "scale")


@dataclass
class Step:
    node: str
    op: str
    method: str
    status: str  # updated | skipped
    reason: str = ""
    details: dict = field(default_factory=dict)


@dataclass
class RecoveryReport:
    methods: tuple[str, ...]
    samples: int
    weighting: str = "uniform"
    steps: list[Step] = field(default_factory=list)
    mse: dict = field(default_factory=dict)

    def updated(self, node: str, op: str, method: str, **details) -> None:  # noqa: ANN003
        self.steps.append(Step(node, op, method, "updated", "", details))

    def skipped(self, node: str, op: str, method: str, reason: str, **details) -> None:  # noqa: ANN003
        self.steps.append(Step(node, op, method, "skipped", reason, details))

    def to_dict(self) -> dict:
        return {
            "methods": list(self.methods),
            "samples": self.samples,
            "weighting": self.weighting,
            "updated": {m: [s.node for s in self.steps if s.method == m and s.status == "updated"] for m in METHODS},
            "skipped": {m: [{"node": s.node, "reason": s.reason} for s in self.steps
                            if s.method == m and s.status == "skipped"] for m in METHODS},
            "steps": [asdict(s) for s in self.steps],
            "mse": self.mse,
        }
