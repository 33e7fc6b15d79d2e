"""A pruning plan: for each channel group, the unit indices it keeps.

Plans are frozen, validated data: they can be saved, inspected, edited, loaded and
replayed. A plan names the model it was made for by fingerprint and is refused for
any other model.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from onnxprune.analysis import Analysis
from onnxprune.errors import PlanError

FORMAT_VERSION = 1


@dataclass(frozen=True)
class Plan:
    """Group id -> sorted kept unit indices. Groups absent from ``keep`` keep everything."""

    fingerprint: str
    keep: Mapping[str, tuple[int, ...]]
    sizes: Mapping[str, int]
    criterion: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    # Recovery by merging (Srinivas & Babu): group id -> (removed unit j, kept unit i, factor):
    # before j is removed, factor * (j's outgoing weights) are added to i's.
    merges: Mapping[str, tuple[tuple[int, int, float], ...]] = field(default_factory=dict)
    # Depth pruning: the residual blocks removed, named by their Add node
    # (``analysis.blocks``); absent from older plans (none removed).
    removed_blocks: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "keep", MappingProxyType(
            {k: tuple(sorted(int(i) for i in v)) for k, v in self.keep.items()}))
        object.__setattr__(self, "sizes", MappingProxyType({k: int(v) for k, v in self.sizes.items()}))
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))
        object.__setattr__(self, "merges", MappingProxyType(
            {k: tuple((int(j), int(i), float(f)) for j, i, f in v) for k, v in self.merges.items()}))
        object.__setattr__(self, "removed_blocks", tuple(sorted(set(self.removed_blocks))))

    # -- serialisation ---------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "fingerprint": self.fingerprint,
            "criterion": self.criterion,
            "options": dict(self.options),
            "groups": {gid: {"size": self.sizes[gid], "keep": list(keep)} for gid, keep in self.keep.items()},
            "merges": {gid: [list(m) for m in merges] for gid, merges in self.merges.items()},
            **({"removed_blocks": list(self.removed_blocks)} if self.removed_blocks else {}),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "plan") -> Plan:
        """A plan from ``to_dict``'s form; anything else is refused in words that name the field
        (``source``, the file, starts the message)."""
        def bad(what: str) -> PlanError:
            return PlanError(f"{source}: malformed plan: {what}")

        if not isinstance(data, Mapping):
            raise bad("expected a JSON object with format_version, fingerprint and groups")
        if data.get("format_version") != FORMAT_VERSION:
            raise PlanError(f"{source}: unsupported plan format_version {data.get('format_version')!r} "
                            f"(this onnxprune reads {FORMAT_VERSION})")
        missing = [k for k in ("fingerprint", "groups") if k not in data]
        if missing:
            raise bad(f"no {' or '.join(missing)}")
        groups = data["groups"]
        if not isinstance(groups, Mapping):
            raise bad("groups must map each group id to its size and kept indices")
        for gid, g in groups.items():
            if not isinstance(g, Mapping) or "size" not in g or "keep" not in g:
                raise bad(f"group '{gid}' needs a size and a keep list")
            if not _is_int(g["size"]):
                raise bad(f"group '{gid}': size must be a whole number, got {g['size']!r}")
            if not isinstance(g["keep"], list) or not all(_is_int(i) for i in g["keep"]):
                raise bad(f"group '{gid}': keep must be a list of whole numbers")
        merges = data.get("merges") or {}
        if not isinstance(merges, Mapping) or not all(
                isinstance(ms, list) and all(isinstance(m, list) and len(m) == 3 and _is_int(m[0]) and _is_int(m[1])
                                             and _is_number(m[2]) for m in ms) for ms in merges.values()):
            raise bad("merges must map group ids to lists of [removed, kept, factor]")
        options = data.get("options") or {}
        if not isinstance(options, Mapping):
            raise bad("options must be a JSON object")
        criterion = data.get("criterion")
        if criterion is not None and not isinstance(criterion, str):
            raise bad(f"criterion must be a name, got {criterion!r}")
        blocks = data.get("removed_blocks") or []
        if not isinstance(blocks, list) or not all(isinstance(b, str) for b in blocks):
            raise bad("removed_blocks must be a list of Add node names")
        return cls(fingerprint=str(data["fingerprint"]),
                   keep={gid: tuple(g["keep"]) for gid, g in groups.items()},
                   sizes={gid: int(g["size"]) for gid, g in groups.items()},
                   criterion=criterion, options=options,
                   merges={gid: tuple(tuple(m) for m in ms) for gid, ms in merges.items()},
                   removed_blocks=tuple(blocks))

    def save(self, path: str | os.PathLike[str]) -> Path:
        from onnxprune.io.fileutil import write_text_atomic

        return write_text_atomic(path, json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Plan:
        p = Path(path)
        try:
            data = json.loads(p.read_text())
        except FileNotFoundError as exc:
            raise PlanError(f"{p}: plan file not found") from exc
        except IsADirectoryError as exc:
            raise PlanError(f"{p}: is a directory, not a plan file") from exc
        except OSError as exc:
            raise PlanError(f"{p}: cannot read the plan ({exc.strerror or 'I/O error'})") from exc
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            reason = (f"line {exc.lineno} column {exc.colno}: {exc.msg}" if isinstance(exc, json.JSONDecodeError)
                      else "not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else "nested too deeply")
            raise PlanError(f"{p}: not a JSON plan ({reason})") from exc
        return cls.from_dict(data, source=str(p))

    # -- checks ----------------------------------------------------------
    def validate(self, analysis: Analysis) -> None:
        """Refuse a plan for another model, unknown or unprunable groups, bad indices."""
        if self.fingerprint != analysis.fingerprint:
            raise PlanError(
                f"plan was made for another model (fingerprint {self.fingerprint}, "
                f"this model is {analysis.fingerprint})")
        for gid, keep in self.keep.items():
            group = analysis.groups_by_id.get(gid)
            if group is None:
                raise PlanError(f"plan names group '{gid}', which this model does not have")
            if self.sizes.get(gid) != group.size:
                raise PlanError(f"group '{gid}' has {group.size} units, plan expects {self.sizes.get(gid)}")
            if not keep:
                raise PlanError(f"group '{gid}' keeps no channel; at least one must stay")
            if keep[0] < 0 or keep[-1] >= group.size or len(set(keep)) != len(keep):
                raise PlanError(f"group '{gid}': kept indices must be distinct and in [0, {group.size})")
            if len(keep) < group.size and not group.prunable:
                raise PlanError(f"group '{gid}' cannot be pruned: {'; '.join(group.why_not)}")
        for gid, merges in self.merges.items():
            kept = set(self.keep.get(gid, ()))
            for j, i, _ in merges:
                if gid not in self.keep or j in kept or i not in kept:
                    raise PlanError(f"group '{gid}': merge ({j} -> {i}) must move a removed unit into a kept one")
        from onnxprune.analysis.query_heads import check_plan

        check_plan(analysis, self.removed_units(analysis))
        for name in self.removed_blocks:  # that each is a removable block is checked where the graph is
            if name not in analysis.node_macs:
                raise PlanError(f"plan removes block '{name}', which is not a node of this model")

    def removed_units(self, analysis: Analysis) -> np.ndarray:
        """Union-find roots of the units this plan removes (with the query heads of removed KV
        heads and the KV heads left without query heads: ``analysis.query_heads``)."""
        from onnxprune.analysis.query_heads import close_removed

        removed: list[np.ndarray] = []
        for gid, keep in self.keep.items():
            units = analysis.group(gid).units
            mask = np.ones(len(units), dtype=bool)
            mask[list(keep)] = False
            removed.append(units[mask])
        return close_removed(analysis, np.concatenate(removed) if removed else np.zeros(0, dtype=np.int64))

    def removed_channels(self, analysis: Analysis) -> int:
        total = 0
        for gid, keep in self.keep.items():
            g = analysis.group(gid)
            total += (g.size - len(keep)) * g.unit_width
        return total


def _is_int(v: object) -> bool:
    return (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer())


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)
