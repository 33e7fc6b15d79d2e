"""The recovery-method registry: one entry per method, what it applies to, and how it runs.

``recovery.pipeline`` walks the pruned graph in topological order; at each node it tries
the selected methods registered for the node's *target*, in their ``order``, and the first
one that changes the node (records an ``updated`` step) ends it:

- ``consumer``: a node that lost input channels (built in: ``lstsq`` and ``scale`` refits,
  then the ``bias`` compensation as the fallback);
- ``batchnorm``: a BatchNormalization downstream of one (built in: ``bn``);
- ``logits``: a causal LM's logits, once the walk is over (built in: ``temperature``, see
  ``recovery.temperature``; ``node`` is the node computing them).

A method is ``run(walk, node, note) -> str | None``: ``walk`` is the recovery walk (the model
as recovered so far, ``walk.model``; the original, ``walk.original``; ``walk.layers(node)``:
the node as a ``layers.Layer`` in both; ``walk.commit(node, op, method, apply, details)``: run
``apply()`` on ``walk.model`` and keep it only if the held-out error drops, reported as
updated or refused; ``walk.report``: record a ``skipped`` step), ``node`` the node's name,
``note`` why the methods before it did not change the node. It returns the note for the
next method. Adding a method, in the package or from a plugin, is one call::

    register_recovery_method("my-method", help="...", target="consumer", order=25, run=my_run)

A name registered twice is refused; the CLI's --recover and the recipe read this registry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from onnxprune.extend import Registry

TARGETS = ("consumer", "batchnorm", "logits")
MethodFn = Callable[[Any, str, str], "str | None"]


@dataclass(frozen=True)
class RecoveryMethod:
    """A recovery method: its name, one line of help, the nodes it applies to (``target``),
    its place among the methods tried on one node (``order``: lower first), whether it refits
    the layer's weights (``refit``: counted as refitted, weighted by ``weighting='fisher'``)."""

    name: str
    help: str
    target: str
    run: MethodFn
    order: int = 50
    refit: bool = False


RECOVERY_METHODS: Registry[RecoveryMethod] = Registry("recovery method")  # the built-ins are below


def register_recovery_method(name: str, *, help: str, target: str, run: MethodFn, order: int = 50,  # noqa: A002
                             refit: bool = False) -> RecoveryMethod:
    """Register a recovery method (see the module docstring); returns its entry."""
    if target not in TARGETS:
        raise ValueError(f"recovery method '{name}': target must be one of {', '.join(TARGETS)}, got {target!r}")
    return RECOVERY_METHODS.register(name, RecoveryMethod(name, help, target, run, order, refit))


def names(*, plugins: bool = True) -> tuple[str, ...]:
    """Every registered method, in registration order (what ``--recover all`` selects;
    ``plugins=False``: without loading the installed plugins first)."""
    return tuple(m.name for m in RECOVERY_METHODS.values(plugins=plugins))


def refit_names() -> tuple[str, ...]:
    """The registered methods that refit a layer's weights."""
    return tuple(m.name for m in RECOVERY_METHODS.values() if m.refit)


def selected(chosen: Iterable[str], target: str) -> list[RecoveryMethod]:
    """The chosen methods that apply to ``target``, in the order they are tried on a node."""
    wanted = set(chosen)
    return sorted((m for m in RECOVERY_METHODS.values() if m.target == target and m.name in wanted),
                  key=lambda m: m.order)


# -- the built-in methods (they call the walk of recovery.pipeline) ------------------------------------------
register_recovery_method("bn", help="re-estimate BatchNorm running statistics on the pruned model's inputs",
                         target="batchnorm", order=10, run=lambda walk, node, note: walk.batchnorm_step(node))
register_recovery_method("bias", help="compensate the consumer's bias for the mean of its removed inputs (FLAP)",
                         target="consumer", order=30, run=lambda walk, node, note: walk.bias_step(node, note))
register_recovery_method("lstsq", help="least-squares refit of the consumer's kept weights and bias (ThiNet)",
                         target="consumer", order=10, refit=True,
                         run=lambda walk, node, note: walk.refit_step(node, "lstsq"))
register_recovery_method("scale", help="one scale per kept input channel and the bias (Kwon et al. 2022)",
                         target="consumer", order=20, refit=True,
                         run=lambda walk, node, note: walk.refit_step(node, "scale"))
register_recovery_method("temperature", help="one temperature on a causal LM's logits, fitted to the original's "
                         "next-token distribution on the held-out windows (cross-fitted)",
                         target="logits", order=10, run=lambda walk, node, note: walk.temperature_step(node))
