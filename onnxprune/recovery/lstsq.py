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

``RidgeProblem`` prepares the normal equations once for a grid of ridge strengths. With at
least as many rows as features (R >= D) each strength is one D x D solve of
(G + mu I) W^T = Xc^T A Yc + mu W0^T, G = Xc^T A Xc. With fewer rows it solves the dual
problem instead: with B = A^(1/2) Xc, Z = A^(1/2) (Yc - Xc W0^T) and K = B B^T = U diag(s) U^T
(R x R, factored once), W^T = W0^T + B^T U diag(1 / (s + mu)) U^T Z, the same minimiser;
directions with s + mu numerically zero (mu = 0 with dependent rows) keep W0. Its
``rank`` (independent centred rows) is exact there, where it decides whether a fit is
underdetermined; with R >= D it is the number of features that vary (an upper bound).
"""

from __future__ import annotations

import numpy as np

RANK_TOL = 1e-10  # eigenvalues of a Gram matrix below this fraction of the largest count as zero


class RidgeProblem:
    """The normal equations of one refit, prepared once for a grid of ridge strengths."""

    def __init__(self, x: np.ndarray, y: np.ndarray, w0: np.ndarray, row_weight: np.ndarray | None = None) -> None:
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        self.w0 = np.asarray(w0, dtype=np.float64)
        a = np.ones(len(x)) if row_weight is None else np.asarray(row_weight, dtype=np.float64)
        self.mx, self.my = weighted_mean(x, a), weighted_mean(y, a)
        xc, yc = x - self.mx, y - self.my
        d = x.shape[1]
        self.dual = len(x) < d
        if self.dual:
            root = np.sqrt(a)[:, None]
            self.b = xc * root
            kernel = self.b @ self.b.T
            self.scale = float(np.trace(kernel)) / max(d, 1)
            s, self.u = np.linalg.eigh(kernel)
            self.s = np.maximum(s, 0.0)
            self.tol = RANK_TOL * float(self.s.max(initial=0.0))
            self.rank = int((self.s > self.tol).sum()) if self.tol > 0 else 0
            self.p = self.u.T @ ((yc - xc @ self.w0.T) * root)
        else:
            xw = xc * a[:, None]
            self.gram = xw.T @ xc
            self.rhs = xw.T @ yc
            diag = np.diag(self.gram)
            self.scale = float(diag.sum()) / max(d, 1)
            self.tol = RANK_TOL * float(diag.max(initial=0.0))
            self.rank = int((diag > self.tol).sum()) if self.tol > 0 else 0

    def fit(self, ridge: float) -> tuple[np.ndarray, np.ndarray]:
        """(W [N, D], b [N]) for the relative ridge ``ridge``."""
        mu = ridge * self.scale if self.scale > 0 else ridge
        if self.dual:
            den = self.s + mu
            ok = den > self.tol if self.tol > 0 else den > 0
            coef = np.where(ok[:, None], self.p / np.where(ok, den, 1.0)[:, None], 0.0)
            wt = self.w0.T + self.b.T @ (self.u @ coef)
        else:
            system = self.gram + mu * np.eye(len(self.gram))
            rhs = self.rhs + mu * self.w0.T
            try:
                if mu <= 0:
                    raise np.linalg.LinAlgError
                wt = np.linalg.solve(system, rhs)
            except np.linalg.LinAlgError:
                wt = np.linalg.lstsq(system, rhs, rcond=None)[0]
        return wt.T, self.my - self.mx @ wt


def ridge_fit(x: np.ndarray, y: np.ndarray, w0: np.ndarray, ridge: float,
              row_weight: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(W [N, D], b [N]) for rows x [R, D], targets y [R, N], prior w0 [N, D], optional row
    weights [R]."""
    return RidgeProblem(x, y, w0, row_weight).fit(ridge)


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
