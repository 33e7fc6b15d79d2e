"""Choosing a consumer's refit on held-out data: the ridge strength, where its rows come
from, and whether to refit at all.

A refit ('lstsq': the weights; 'scale': one scale per kept input channel; both with the
bias) is solved on the rows of the samples it may see (``Rows``; one or more sources of
rows for the same layer, see ``pipeline``), for every ridge strength of ``RIDGE_GRID``
(relative, see ``lstsq``) unless the caller fixes one. The candidate with the lowest
relative error of the layer's output on the held-out rows wins, and is returned only if
that error is lower than the pruned layer's own; otherwise ``Refused`` says why, with
the figures. Without held-out rows nothing can be checked: the default ridge is used,
and a fit with fewer independent rows than unknowns is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from onnxprune.recovery.lstsq import RidgeProblem, relative_error
from onnxprune.recovery.scales import ScaleProblem

RIDGE_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
DEFAULT_RIDGE = 1e-3  # without held-out data to choose on
EVAL_ROWS = 5000  # rows the reported fit errors are measured on (a spread subset)


class Refused(Exception):
    """A refit was computed (or could not be checked) and is not applied: ``reason`` and
    ``details`` say why, with the held-out figures."""

    def __init__(self, reason: str, details: dict) -> None:
        super().__init__(reason)
        self.reason, self.details = reason, details


@dataclass
class Rows:
    """Rows x [R, D] of a consumer's input, targets y [R, N], optional row weights a [R];
    ``samples`` calibration samples gave them, ``source`` says how ('samples': the layer's
    own rows; 'positions': one per spatial position before a global average pooling)."""

    x: np.ndarray
    y: np.ndarray
    a: np.ndarray | None
    samples: int
    source: str = "samples"


@dataclass
class Fit:
    w: np.ndarray  # [N, D] effective weights
    b: np.ndarray  # [N] effective bias
    details: dict = field(default_factory=dict)


def fit_layer(method: str, sources: list[Rows], held: Rows | None, w0: np.ndarray, b0: np.ndarray,
              channel_of: np.ndarray, ridge: float | None, out_weight: np.ndarray | None = None) -> Fit:
    """The refit of one layer (pruned weights ``w0`` [N, D], bias ``b0``), chosen on ``held``."""
    train = sources[0]
    base = None if held is None else relative_error(held.x, held.y, w0, b0, held.a)
    grid = (ridge,) if ridge is not None else RIDGE_GRID if held is not None else (DEFAULT_RIDGE,)
    details: dict = {"features": int(w0.shape[1]), "samples": train.samples,
                     "held_out_rows": 0 if held is None else len(held.x),
                     "ridge_chosen_on": "fixed" if ridge is not None else "held-out" if held is not None else "default"}
    best: tuple[float, Fit] | None = None
    errors: dict[str, float] = {}
    for rows in sources:
        problem = RidgeProblem(rows.x, rows.y, w0, rows.a) if method == "lstsq" else \
            ScaleProblem(rows.x, rows.y, w0, channel_of, rows.a, out_weight)
        unknowns = (w0.shape[1] if method == "lstsq" else problem.channels) + 1  # + the bias
        independent = min(problem.rank + 1, len(rows.x))
        shape = {"rows": len(rows.x), "rows_from": rows.source, "unknowns": int(unknowns),
                 "independent_rows": int(independent), "underdetermined": bool(independent < unknowns)}
        if held is None and independent < unknowns:
            details.setdefault("candidates", []).append(shape)
            continue
        for strength in grid:
            w, b, extra = _weights(method, problem, strength, w0, channel_of)
            err = 0.0 if held is None else relative_error(held.x, held.y, w, b, held.a)
            errors[f"{rows.source} {strength:g}"] = err
            if best is None or err < best[0]:
                best = (err, Fit(w, b, {**shape, "ridge": strength, **extra}))
        if held is None:
            break  # nothing to choose between sources on: the layer's own rows when they suffice
    if held is not None:
        details["held_out_layer_errors"] = errors
    if best is None:
        c = details["candidates"][0]
        raise Refused(f"{c['independent_rows']} independent rows for {c['unknowns']} unknowns, and no held-out "
                      "data to check an underdetermined fit", details)
    err, fit = best
    details.update(fit.details)
    sub = _spread(len(train.x), EVAL_ROWS)
    ta = None if train.a is None else train.a[sub]
    details["rel_error_before"] = relative_error(train.x[sub], train.y[sub], w0, b0, ta)
    details["rel_error_after"] = relative_error(train.x[sub], train.y[sub], fit.w, fit.b, ta)
    if held is not None:
        details.update(held_out_error_before=base, held_out_error_after=err)
        if not err < base:
            raise Refused(f"the fit does not generalise: held-out layer error {base:.4g} -> {err:.4g} "
                          f"(best of {len(errors)} fits)", details)
    fit.details = details
    return fit


def _spread(n: int, most: int) -> np.ndarray:
    """At most ``most`` indices of ``n``, evenly spread."""
    return np.arange(n) if n <= most else np.linspace(0, n - 1, most).round().astype(np.int64)


def _weights(method: str, problem: RidgeProblem | ScaleProblem, strength: float, w0: np.ndarray,
             channel_of: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
    if method == "lstsq":
        w, b = problem.fit(strength)
        return w, b, {}
    s, b = problem.fit(strength)
    return w0 * s[channel_of][None, :], b, {"scale_min": float(s.min(initial=1.0)),
                                            "scale_max": float(s.max(initial=1.0))}
