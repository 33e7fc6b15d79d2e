"""The result of analysis: coupled channel groups, what blocks the rest, and the
records the rewrite passes need. Plain data; nothing here touches the graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from onnxprune.analysis.context import ConsumerRef, Fixup, ParamRef, SpaceRecord


@dataclass(frozen=True)
class Group:
    """Channels that must be removed together, as ``len(units)`` atomic units.

    ``units`` are union-find roots ordered by their first position in the anchor space;
    a plan keeps a subset of unit indices 0..len(units)-1.
    """

    id: str
    units: np.ndarray
    channels: int  # channels in the anchor space (a unit may span several: tied groups)
    anchor: tuple[str, int]
    spaces: tuple[tuple[str, int], ...]
    producers: tuple[str, ...]
    consumers: tuple[str, ...]
    unit_params: np.ndarray  # parameters each unit accounts for
    unit_macs: np.ndarray  # multiply-accumulates each unit accounts for
    reasons: tuple[str, ...]

    @property
    def size(self) -> int:
        return len(self.units)

    @property
    def unit_width(self) -> int:
        return self.channels // max(1, self.size)

    @property
    def prunable(self) -> bool:
        return not self.reasons and self.size >= 2

    @property
    def why_not(self) -> tuple[str, ...]:
        """Why the group is not prunable (empty when it is)."""
        if self.reasons or self.size >= 2:
            return self.reasons
        if self.channels <= 1:
            return ("a single channel",)
        return (f"its {self.channels} channels form one unit: the ops they pass through (grouped convolutions, "
                "reshapes) tie them together, so they could only all go at once",)

    @property
    def params(self) -> int:
        return int(self.unit_params.sum())

    @property
    def macs(self) -> int:
        return int(self.unit_macs.sum())


@dataclass(frozen=True)
class BlockedRegion:
    node: str | None
    op: str | None
    reason: str
    channels: int


@dataclass
class Analysis:
    """Everything analysis found out about one (prepared) model."""

    fingerprint: str
    groups: list[Group]
    blocked: list[BlockedRegion]
    roots: np.ndarray  # element id -> unit (root) id
    spaces: list[SpaceRecord]
    params: list[ParamRef]
    consumers: list[ConsumerRef]
    fixups: list[Fixup]
    node_macs: dict[str, int]
    total_params: int
    mac_axes: dict[str, list[np.ndarray]] = field(default_factory=dict)
    groups_by_id: dict[str, Group] = field(default_factory=dict)
    fused_ops: dict[str, int] = field(default_factory=dict)  # onnxruntime's fused ops understood -> nodes

    def __post_init__(self) -> None:
        self.groups_by_id = {g.id: g for g in self.groups}

    @property
    def total_macs(self) -> int:
        return sum(self.node_macs.values())

    @property
    def prunable_groups(self) -> list[Group]:
        return [g for g in self.groups if g.prunable]

    def group(self, group_id: str) -> Group:
        return self.groups_by_id[group_id]

    def summary(self) -> dict[str, int]:
        prunable = self.prunable_groups
        return {
            "groups": len(self.groups),
            "prunable_groups": len(prunable),
            "channels": sum(g.channels for g in self.groups),
            "prunable_channels": sum(g.channels for g in prunable),
            "params": self.total_params,
            "macs": self.total_macs,
        }

    def to_dict(self) -> dict:
        """A JSON-friendly report (what ``analyze --json`` prints)."""
        return {
            "fingerprint": self.fingerprint,
            "summary": self.summary(),
            "groups": [
                {
                    "id": g.id, "channels": g.channels, "units": g.size, "prunable": g.prunable,
                    "params": g.params, "macs": g.macs, "producers": list(g.producers),
                    "consumers": list(g.consumers), "spaces": [f"{t}[{a}]" for t, a in g.spaces],
                    "reasons": list(g.why_not),
                }
                for g in self.groups
            ],
            "blocked": [
                {"node": b.node, "op": b.op, "reason": b.reason, "channels": b.channels} for b in self.blocked
            ],
            "fused_ops": dict(self.fused_ops),
        }
