"""The pass framework: one job per pass, a truthful ``modified``, idempotent.

Two kinds of pass: a ``Pass`` applies a pruning (``call(model, removal)``: ``removal`` is
the ``analysis.removal.Removal``, the analysis and the units a plan removes); a
``ModelPass`` is generic and sees only the model (``call(model)``: sort, refresh shapes,
check, remove dead nodes). Both may state onnx_ir-style contracts:
``requires(model)`` is checked before the pass runs and ``ensures(model)`` after it; either
raises to refuse. A pass that applies analysis fix-ups names the kinds it applies in
``fixup_handlers`` (fix-up type -> handler); ``check_fixup_handlers`` refuses a pipeline
in which some fix-up kind has no handler, when the pipeline is built.

``run_passes`` runs a pipeline: an error names the failing pass and the passes that ran
before it. In a debug run (``debug=True``, or the environment variable
``ONNXPRUNE_DEBUG_PASSES=1``) the framework also checks every pass's contract: ``modified``
is True exactly when the serialized model changed, a second run on a copy reports no change
and changes nothing (idempotence), the checker passes after every pass, and the full
checker with strict shape inference after every pass that leaves a consistent graph.
"""

from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import onnx

from onnxprune.analysis.removal import Removal
from onnxprune.analysis import context as analysis_context
from onnxprune.analysis.context import Fixup
from onnxprune.errors import PipelineError, RewriteError

log = logging.getLogger(__name__)

DEBUG_ENV = "ONNXPRUNE_DEBUG_PASSES"

PruneContext = Removal  # the former name (``onnxprune.analysis.removal.Removal``)


@dataclass(frozen=True)
class PassResult:
    model: onnx.ModelProto
    modified: bool


class BasePass(ABC):
    """What every pass has: a ``name``, contracts, and the fix-up kinds it applies."""

    name: ClassVar[str]
    # False for passes after which the graph is consistent only once later passes ran (the
    # slicing pass: shape constants such as Reshape targets are rewritten after it).
    consistent: ClassVar[bool] = True
    # The analysis fix-up kinds this pass applies (exact type -> the pass's handler for it).
    fixup_handlers: ClassVar[Mapping[type[Fixup], Callable[..., bool]]] = {}

    def requires(self, model: onnx.ModelProto) -> None:  # noqa: B027 (an optional hook)
        """Precondition, checked before the pass runs: raise to refuse the model."""

    def ensures(self, model: onnx.ModelProto) -> None:  # noqa: B027 (an optional hook)
        """Postcondition, checked after the pass ran: raise if the pass left it unmet."""

    @abstractmethod
    def apply(self, model: onnx.ModelProto, removal: Removal | None) -> PassResult:
        """The framework's entry: ``call`` with what this kind of pass takes."""


class Pass(BasePass):
    """A pruning pass: applies ``removal`` (the analysis and the removed units) to the model."""

    @abstractmethod
    def call(self, model: onnx.ModelProto, removal: Removal) -> PassResult:
        """Apply the pass in place; report whether anything changed."""

    def apply(self, model: onnx.ModelProto, removal: Removal | None) -> PassResult:
        if removal is None:
            raise RewriteError(f"pass '{self.name}' applies a pruning: it needs the Removal "
                               "(the analysis and the removed units)")
        return self.call(model, removal)


class ModelPass(BasePass):
    """A generic pass: a function of the model alone."""

    @abstractmethod
    def call(self, model: onnx.ModelProto) -> PassResult:
        """Apply the pass in place; report whether anything changed."""

    def apply(self, model: onnx.ModelProto, removal: Removal | None) -> PassResult:
        return self.call(model)


def check_fixup_handlers(passes: Iterable[BasePass], kinds: Iterable[type[Fixup]] | None = None) -> None:
    """Refuse a pipeline in which a fix-up kind (default: every ``Fixup`` subclass defined so
    far) has no handler: a model would otherwise be written with a stale attribute or shape."""
    passes = list(passes)
    handled = {kind for p in passes for kind in p.fixup_handlers}
    missing = [k for k in (analysis_context.FIXUP_KINDS if kinds is None else kinds) if k not in handled]
    if missing:
        names = ", ".join(f"{k.__module__}.{k.__qualname__}" for k in missing)
        raise PipelineError(f"no pass of the pipeline ({', '.join(p.name for p in passes) or 'empty'}) handles "
                            f"fix-up kind {names}: add it to a pass's fixup_handlers")


def debug_from_env() -> bool:
    """Whether ``ONNXPRUNE_DEBUG_PASSES`` asks every ``run_passes`` for the debug checks."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def run_passes(passes: Sequence[BasePass], model: onnx.ModelProto, removal: Removal | None = None, *,
               debug: bool = False) -> tuple[onnx.ModelProto, list[tuple[str, bool]]]:
    """Run passes in order; returns the model and (pass name, modified) per pass. ``removal`` is
    needed by pruning passes only; ``debug`` (or ``ONNXPRUNE_DEBUG_PASSES=1``) checks each
    pass's contract (see the module's docstring)."""
    debug = debug or debug_from_env()
    history: list[tuple[str, bool]] = []
    for p in passes:
        try:
            p.requires(model)
            before = _serialized(model) if debug else b""
            result = p.apply(model, removal)
            if result.model is not model:
                raise RewriteError("an in-place pass must return the model it was given")
            p.ensures(model)
            if debug:
                check_contract(p, model, removal, before, result.modified)
                _debug_check(result.model, full=p.consistent)
        except Exception as exc:
            before_names = ", ".join(name for name, _ in history) or "none"
            raise RewriteError(f"pass '{p.name}' failed (after: {before_names}): {exc}") from exc
        history.append((p.name, result.modified))
        log.debug("pass %s modified=%s", p.name, result.modified)
    return model, history


def check_contract(p: BasePass, model: onnx.ModelProto, removal: Removal | None, before: bytes,
                   modified: bool) -> None:
    """Raise unless ``modified`` is True exactly when the model changed from ``before`` (its
    serialized form), and a second run of ``p`` on a copy reports and makes no change."""
    after = _serialized(model)
    if modified != (after != before):
        raise RewriteError(f"pass reported modified={modified}, but the model "
                           f"{'changed' if after != before else 'did not change'}")
    again = onnx.ModelProto()
    again.CopyFrom(model)
    second = p.apply(again, removal)
    if second.modified or _serialized(again) != after:
        raise RewriteError("pass is not idempotent: a second run "
                           f"{'reported a change' if second.modified else 'changed the model'}")


def _serialized(model: onnx.ModelProto) -> bytes:
    return model.SerializeToString(deterministic=True)


def _debug_check(model: onnx.ModelProto, *, full: bool) -> None:
    """Basic checker after every pass; after passes that leave a consistent graph, also the
    full checker and strict shape inference, on a copy whose stale shapes are dropped (ops
    onnxruntime runs in the default domain are left to it: ``modelio.checker_view``)."""
    from onnxprune.io.modelio import checker_view

    onnx.checker.check_model(checker_view(model, model))
    if not full:
        return
    fresh = onnx.ModelProto()
    fresh.CopyFrom(model)
    del fresh.graph.value_info[:]
    fresh = checker_view(fresh, fresh)
    onnx.checker.check_model(fresh, full_check=True)
    onnx.shape_inference.infer_shapes(fresh, check_type=True, strict_mode=True, data_prop=True)
