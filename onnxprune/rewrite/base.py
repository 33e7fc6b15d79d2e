"""The pass framework: one job per pass, a truthful ``modified``, idempotent.

``run_passes`` checks the contract: an error names the failing pass and the passes
that ran before it; with ``debug=True`` the checker runs after every pass, and the full
checker with strict shape inference after every pass that leaves a consistent graph.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import onnx

from onnxprune.analysis import Analysis
from onnxprune.errors import RewriteError

log = logging.getLogger(__name__)


@dataclass
class PruneContext:
    """What the passes apply: an analysis of the model and the units a plan removes."""

    analysis: Analysis
    removed_units: np.ndarray
    _removed_root: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        mask = np.zeros(len(self.analysis.roots), dtype=bool)
        mask[self.removed_units] = True
        self._removed_root = mask

    def kept(self, elems: np.ndarray) -> np.ndarray:
        """Boolean mask over ``elems``: True where the channel stays."""
        return ~self._removed_root[self.analysis.roots[elems]]

    def kept_count(self, elems: np.ndarray) -> int:
        return int(self.kept(elems).sum())


@dataclass(frozen=True)
class PassResult:
    model: onnx.ModelProto
    modified: bool


class Pass(ABC):
    """A graph rewrite with one job. Subclasses set ``name`` and implement ``call``."""

    name: ClassVar[str]
    # False for passes after which the graph is consistent only once later passes ran (the
    # slicing pass: shape constants such as Reshape targets are rewritten after it).
    consistent: ClassVar[bool] = True

    @abstractmethod
    def call(self, model: onnx.ModelProto, ctx: PruneContext) -> PassResult:
        """Apply the pass in place; report whether anything changed."""


def run_passes(passes: Sequence[Pass], model: onnx.ModelProto, ctx: PruneContext, *,
               debug: bool = False) -> tuple[onnx.ModelProto, list[tuple[str, bool]]]:
    """Run passes in order; returns the model and (pass name, modified) per pass."""
    history: list[tuple[str, bool]] = []
    for p in passes:
        try:
            result = p.call(model, ctx)
            if result.model is not model:
                raise RewriteError("an in-place pass must return the model it was given")
            if debug:
                _debug_check(result.model, full=p.consistent)
        except Exception as exc:
            before = ", ".join(name for name, _ in history) or "none"
            raise RewriteError(f"pass '{p.name}' failed (after: {before}): {exc}") from exc
        history.append((p.name, result.modified))
        log.debug("pass %s modified=%s", p.name, result.modified)
    return model, history


def _debug_check(model: onnx.ModelProto, *, full: bool) -> None:
    """Basic checker after every pass; after passes that leave a consistent graph, also the
    full checker and strict shape inference, on a copy whose stale shapes are dropped."""
    onnx.checker.check_model(model)
    if not full:
        return
    fresh = onnx.ModelProto()
    fresh.CopyFrom(model)
    del fresh.graph.value_info[:]
    onnx.checker.check_model(fresh, full_check=True)
    onnx.shape_inference.infer_shapes(fresh, check_type=True, strict_mode=True, data_prop=True)
