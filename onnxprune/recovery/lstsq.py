"""Least-squares reconstruction (He et al. 2017; ThiNet, Luo et al. 2017), the solver.

Given rows X' [R, D] of the consumer's input in the current pruned model and rows Y [R, N]
of the original consumer's output, find W [N, D] and b [N] minimising

    ||Y - X' W^T - b||^2 + mu ||W - W0||^2,    mu = ridge * trace(Xc^T Xc) / D,

in float64, with Xc the centred rows (the bias is not regularised). W0 is the pruned
layer's current weights: where the calibration rows do not determine a direction (fewer
rows than features, a dense layer after Flatten; a dead input channel), the solution
stays at the pruned weights instead of shrinking towards zero. With W0 = 0 this is
plain ridge regression.
"""

from __future__ import annotations

import numpy as np


def ridge_fit(x: np.ndarray, y: np.ndarray, w0: np.ndarray, ridge: float) -> tuple[np.ndarray, np.ndarray]:
    """(W [N, D], b [N]) for rows x [R, D], targets y [R, N], prior w0 [N, D]."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    w0 = np.asarray(w0, dtype=np.float64)
    mx, my = x.mean(0), y.mean(0)
    xc, yc = x - mx, y - my
    gram = xc.T @ xc
    d = gram.shape[0]
    scale = float(np.trace(gram)) / max(d, 1)
    mu = ridge * scale if scale > 0 else ridge
    rhs = xc.T @ yc + mu * w0.T
    try:
        if mu <= 0:
            raise np.linalg.LinAlgError
        wt = np.linalg.solve(gram + mu * np.eye(d), rhs)
    except np.linalg.LinAlgError:
        wt = np.linalg.lstsq(gram + mu * np.eye(d), rhs, rcond=None)[0]
    return wt.T, my - mx @ wt


def relative_error(x: np.ndarray, y: np.ndarray, w: np.ndarray, b: np.ndarray) -> float:
    """||Y - X W^T - b|| / ||Y - mean(Y)|| on the given rows."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    res = y - x @ w.T - b
    den = float(np.linalg.norm(y - y.mean(0)))
    return float(np.linalg.norm(res)) / den if den > 0 else float(np.linalg.norm(res))
