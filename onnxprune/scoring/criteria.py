"""The criterion registry: one entry per channel criterion, with its help text and what it needs.

A criterion scores every prunable group's units (one score per unit, higher = keep):

- data-free: ``score(index: GraphIndex, analysis: Analysis) -> Scores``;
- data-driven (``needs_data=True``): ``score(model, analysis, data: CalibrationData,
  **options) -> Scores``, where ``options`` are the calibration options (``loss``,
  ``reduction``, ``batch_size``, ``device``, ``flops_reg``, ``seed``, ``projections``,
  ``progress(done, total)``; a criterion ignores those it has no use for).

The built-in entries are registered where they are implemented (``scoring.data_free``,
``scoring.calibrated``); adding one, in the package or from a plugin, is one call::

    @register_criterion("my-crit", help="...", needs="the weights")
    def my_crit(index, analysis): ...

A name registered twice is refused. The CLI's --criterion help and the recipe's checks read
this registry, so a plugin's criterion is usable by name everywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from onnxprune.errors import ScoringError
from onnxprune.extend import Registry

Scores = dict[str, np.ndarray]
ScoreFn = Callable[..., Scores]


@dataclass(frozen=True)
class Criterion:
    """A channel criterion: its name, one line of help, whether it needs calibration data,
    what it reads, and the function that scores."""

    name: str
    help: str
    score: ScoreFn
    needs_data: bool = False
    needs: str = "the weights"


CRITERIA: Registry[Criterion] = Registry("criterion", ("onnxprune.scoring.data_free", "onnxprune.scoring.calibrated"))


def register_criterion(name: str, *, help: str, needs_data: bool = False, needs: str | None = None,  # noqa: A002
                       score: ScoreFn | None = None) -> Any:
    """Register a criterion (see the module docstring for the two signatures of ``score``).

    With ``score`` given, registers it and returns the ``Criterion``; without, returns a
    decorator that registers the function it decorates (and returns it unchanged)."""
    what = needs if needs is not None else ("calibration data" if needs_data else "the weights")

    def add(fn: ScoreFn) -> Criterion:
        return CRITERIA.register(name, Criterion(name, help, fn, needs_data, what))

    if score is not None:
        return add(score)

    def deco(fn: ScoreFn) -> ScoreFn:
        add(fn)
        return fn

    return deco


def names(*, needs_data: bool | None = None, plugins: bool = True) -> tuple[str, ...]:
    """The registered criteria, in registration order: all, or only those that do (not) need data
    (``plugins=False``: without loading the installed plugins first)."""
    return tuple(c.name for c in CRITERIA.values(plugins=plugins) if needs_data is None or c.needs_data == needs_data)


def get_criterion(name: str) -> Criterion:
    """The criterion ``name``; a ScoringError naming the registered ones if there is none."""
    found = CRITERIA.get(name)
    if found is None:
        raise ScoringError(f"unknown criterion '{name}' (data-free: {', '.join(names(needs_data=False))}; "
                           f"with calibration data: {', '.join(names(needs_data=True))})")
    return found


def needs_data(name: str) -> bool:
    """Whether the criterion ``name`` needs calibration data (False for an unknown name)."""
    found = CRITERIA.get(name)
    return found is not None and found.needs_data


def cli_help(prefix: str = "Channel criterion.") -> str:
    """The --criterion help: the registered names, data-free and data-driven (built at import
    time, so without loading plugins: a plugin's criterion is listed in the unknown-name error)."""
    return (f"{prefix} Data-free: {', '.join(names(needs_data=False, plugins=False))}; "
            f"with --calib: {', '.join(names(needs_data=True, plugins=False))}.")
