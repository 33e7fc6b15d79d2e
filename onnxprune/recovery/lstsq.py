"""Least-squares reconstruction (He et al. 2017; ThiNet, Luo et al. 2017), the solver.

Given rows X' [R, D] of the consumer's input in the current pruned model and rows Y [R, N]
of the original consumer's output, find W [N, D] and b [N] minimising

    sum_r a_r ||Y_r - X'_r W^T - b||^2 + mu ||W - W0||^2,    mu = ridge * trace(Xc^T A Xc) / D,

in float64, with a_r optional row weights (mean 1; see ``sensitivity``) and Xc the rows
centred on their weighted mean (the bias is not regularised). W0 is the pruned
layer's current weights: where the calibration rows do not determine a direction (fewer
rows than features, a dense layer after Flatten; a dead input channel), the solution
stays at the pruned weights instead of shrinking towards zero. With W0 = 0 this is
plain ridge regression.
"""

from __future__ import annotations

import numpy as np


def ridge_fit(x: np.ndarray, y: np.ndarray, w0: np.ndarray, ridge: float,
              row_weight: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(W [N, D], b [N]) for rows x [R, D], targets y [R, N], prior w0 [N, D], optional row
    weights [R]."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    w0 = np.asarray(w0, dtype=np.float64)
    a = np.ones(len(x)) if row_weight is None else np.asarray(row_weight, dtype=np.float64)
    mx, my = weighted_mean(x, a), weighted_mean(y, a)
    xc, yc = x - mx, y - my
    xw = xc * a[:, None]
    gram = xw.T @ xc
    d = gram.shape[0]
    scale = float(np.trace(gram)) / max(d, 1)
    mu = ridge * scale if scale > 0 else ridge
    rhs = xw.T @ yc + mu * w0.T
    try:
        if mu <= 0:
            raise np.linalg.LinAlgError
        wt = np.linalg.solve(gram + mu * np.eye(d), rhs)
    except np.linalg.LinAlgError:
        wt = np.linalg.lstsq(gram + mu * np.eye(d), rhs, rcond=None)[0]
    return wt.T, my - mx @ wt


def weighted_mean(x: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Mean of the rows of ``x`` weighted by ``a`` (the plain mean if all weights are 0)."""
    total = float(a.sum())
    return (a @ x) / total if total > 0 else x.mean(0)


def relative_error(x: np.ndarray, y: np.ndarray, w: np.ndarray, b: np.ndarray,
                   row_weight: np.ndarray | None = None) -> float:
    """||Y - X W^T - b|| / ||Y - mean(Y)|| on the given rows (both weighted by ``row_weight``)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    a = np.ones(len(x)) if row_weight is None else np.asarray(row_weight, dtype=np.float64)
    res = float(a @ ((y - x @ w.T - b) ** 2).sum(1))
    den = float(a @ ((y - weighted_mean(y, a)) ** 2).sum(1))
    return float(np.sqrt(res / den)) if den > 0 else float(np.sqrt(res))
